//! The llama.cpp peer of `minerva bench --peer llama.cpp`: installing it, splitting a run
//! into units the two sides take turns on, and running it on Minerva's model files.

use std::path::{Path, PathBuf};

use minerva_proto::scenarios::{self, TestKind};
use minerva_proto::v1 as pb;

use super::job::merge_results;
use super::sampler::{TreeSampler, PEER_SAMPLE_EVERY};
use super::RunArgs;
use crate::{client, CliError, CliResult, Global};

/// The jobs of an interleaved `--peer` run: one per test ("standard" is its four scenarios;
/// no tests and no prompt file means "standard", as in the daemon), and the prompt file as one.
pub(crate) fn interleave_units(args: &RunArgs) -> Vec<(Vec<String>, Option<PathBuf>)> {
    let mut names = args.tests.clone();
    if names.is_empty() && args.prompts.is_none() {
        names.push("standard".into());
    }
    let mut units = Vec::new();
    for name in names {
        if name == "standard" {
            use minerva_proto::scenarios::STANDARD;
            units.extend(STANDARD.iter().map(|(n, _, _)| (vec![n.to_string()], None)));
        } else {
            units.push((vec![name], None));
        }
    }
    if let Some(p) = &args.prompts {
        units.push((Vec::new(), Some(p.clone())));
    }
    units
}

/// The peer scripts, built into the binary so that an installed `minerva` runs `--peer`
/// without the source tree: (path under the scripts folder, contents). The layout is bench/'s,
/// since llama_cpp_bench.py imports summary.py from its parent folder.
const SCRIPTS: &[(&str, &str)] = &[
    (
        "peers/install-llama-cpp-python.sh",
        include_str!("../../../bench/peers/install-llama-cpp-python.sh"),
    ),
    (
        "peers/llama_cpp_bench.py",
        include_str!("../../../bench/peers/llama_cpp_bench.py"),
    ),
    ("summary.py", include_str!("../../../bench/summary.py")),
];

/// Where the peer scripts live: $MINERVA_BENCH_DIR/peers when set (a bench/ folder of one's
/// own), else the built-in scripts written to
/// ${MINERVA_PEER_CACHE:-${XDG_CACHE_HOME:-~/.cache}/minerva/peers}/scripts-VERSION/peers,
/// beside the venvs the install script caches there.
pub(crate) fn peer_dir() -> CliResult<PathBuf> {
    if let Some(d) = std::env::var_os("MINERVA_BENCH_DIR") {
        return Ok(PathBuf::from(d).join("peers"));
    }
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let cache = env("MINERVA_PEER_CACHE")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("minerva/peers")))
        .or_else(|| env("HOME").map(|d| d.join(".cache/minerva/peers")))
        .unwrap_or_else(|| std::env::temp_dir().join("minerva-peers"));
    let dir = cache.join(format!("scripts-{}", env!("CARGO_PKG_VERSION")));
    write_scripts(&dir).map_err(|e| {
        CliError(format!(
            "cannot write the peer scripts to {}: {e}",
            dir.display()
        ))
    })?;
    Ok(dir.join("peers"))
}

/// Writes the built-in scripts under `dir`, each file only when it differs, through a
/// temporary file and a rename, so a run beside this one never reads half a script.
fn write_scripts(dir: &Path) -> std::io::Result<()> {
    for (name, text) in SCRIPTS {
        let path = dir.join(name);
        if std::fs::read(&path).is_ok_and(|old| old == text.as_bytes()) {
            continue;
        }
        let parent = path.parent().unwrap_or(dir);
        std::fs::create_dir_all(parent)?;
        let tmp = parent.join(format!(
            ".{}.{}.tmp",
            name.replace('/', "_"),
            std::process::id()
        ));
        std::fs::write(&tmp, text)?;
        #[cfg(unix)]
        if name.ends_with(".sh") || name.ends_with(".py") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        }
        std::fs::rename(&tmp, &path)?;
    }
    Ok(())
}

/// Installs the llama.cpp peer (a no-op once cached) and returns its Python.
pub(crate) async fn install_peer() -> CliResult<String> {
    let install = peer_dir()?.join("install-llama-cpp-python.sh");
    let out = tokio::process::Command::new("bash")
        .arg(&install)
        .output()
        .await?;
    if !out.status.success() {
        return Err(CliError(format!(
            "installing the llama.cpp peer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The tests of one `--peer` unit (test names, or a prompt file), parsed here as the daemon
/// parses them: a bad name or file is refused before anything runs.
pub(crate) fn unit_tests(names: &[String], prompts: Option<&Path>) -> CliResult<Vec<TestKind>> {
    let mut tests = Vec::new();
    for name in names {
        tests.extend(scenarios::parse_test(name).map_err(CliError)?);
    }
    if let Some(p) = prompts {
        tests.extend(scenarios::read_prompts_file(p).map_err(CliError)?);
    }
    Ok(tests)
}

/// Runs the peer on `tests` for every model file in `loads` (Minerva's load records of this
/// run, which give the file, threads, context and flash-attention setting).
pub(crate) async fn run_peer(
    global: &Global,
    python: &str,
    loads: &[pb::BenchModelLoad],
    unit: &[TestKind],
    args: &RunArgs,
) -> CliResult<pb::BenchResult> {
    let script = peer_dir()?.join("llama_cpp_bench.py");
    let mut gen = minerva_proto::v1::generate_service_client::GenerateServiceClient::new(
        client::connect(global, false).await?,
    );
    let mut peer_results: Vec<pb::BenchResult> = Vec::new();
    // Once per model file, whichever backends Minerva ran it on.
    let mut paths = std::collections::HashSet::new();
    for load in loads.iter().filter(|l| paths.insert(&l.path)) {
        let mut tests = Vec::new();
        for t in unit {
            let (name, prompt, prompt_tokens, new_tokens) = match t {
                // Prompt tests: the exact tokens Minerva processes (the chat template applied).
                TestKind::Prompt {
                    name,
                    prompt,
                    new_tokens,
                } => {
                    let r = gen
                        .tokenize(pb::TokenizeRequest {
                            model: load.model.clone(),
                            input: Some(pb::tokenize_request::Input::Chat(pb::Chat {
                                messages: vec![pb::ChatMessage {
                                    role: "user".into(),
                                    content: prompt.clone(),
                                }],
                            })),
                            options: None,
                        })
                        .await?
                        .into_inner();
                    let n = r.tokens.len();
                    (name, serde_json::to_value(r.tokens)?, n as u32, *new_tokens)
                }
                TestKind::Synthetic {
                    name,
                    prompt_tokens,
                    new_tokens,
                } => (name, serde_json::Value::Null, *prompt_tokens, *new_tokens),
            };
            tests.push(serde_json::json!({
                "test": name, "prompt": prompt, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
            }));
            // Its speculative variant, as the daemon runs it after the plain one.
            if let Some(n) = args.speculative {
                tests.push(serde_json::json!({
                    "test": format!("{name}/spec"), "prompt": prompt, "prompt_tokens": prompt_tokens,
                    "new_tokens": new_tokens, "max_draft": n,
                }));
            }
        }
        // llama.cpp's flash attention as Minerva's llama.cpp backend ran it, so the peer runs
        // alike (without a llama.cpp run: the peer's own default).
        let flash_attn = loads
            .iter()
            .filter(|l| l.path == load.path)
            .find_map(|l| l.settings.get("flash_attn"))
            .map_or("off", String::as_str);
        let spec = serde_json::json!({
            "model": load.model, "path": load.path, "threads": load.threads,
            "context_length": load.context_length, "runs": args.runs, "warmup_runs": args.warmup,
            "seed": args.seed, "flash_attn": flash_attn, "tests": tests,
        });
        let spec_file =
            std::env::temp_dir().join(format!("minerva-peer-{}.json", std::process::id()));
        std::fs::write(&spec_file, serde_json::to_vec(&spec)?)?;
        if !global.json && !args.csv {
            eprintln!(
                "running the llama.cpp peer on {} ({} tests)...",
                load.path,
                tests.len()
            );
        }
        let child = tokio::process::Command::new(python)
            .arg(&script)
            .arg(&spec_file)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        // The peer's memory and CPU, as the daemon samples its own (its tests run in children
        // of the script, which count too); not on systems without /proc.
        let sampler = child
            .id()
            .and_then(|pid| TreeSampler::start(pid, PEER_SAMPLE_EVERY));
        let out = child.wait_with_output().await;
        let samples = sampler.map(TreeSampler::finish);
        let _ = std::fs::remove_file(&spec_file);
        let out = out?;
        if !out.status.success() {
            return Err(CliError(format!(
                "the llama.cpp peer failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let mut result: pb::BenchResult = serde_json::from_slice(&out.stdout)?;
        if let Some(s) = samples {
            s.fill(result.resources.get_or_insert_with(Default::default));
        }
        peer_results.push(result);
    }
    Ok(merge_results(peer_results))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_scripts_are_written_out_and_match_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        write_scripts(dir.path()).unwrap();
        // Twice: a second run finds them in place.
        write_scripts(dir.path()).unwrap();
        let tree = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench");
        for name in [
            "peers/install-llama-cpp-python.sh",
            "peers/llama_cpp_bench.py",
            "summary.py",
        ] {
            let written = std::fs::read(dir.path().join(name)).unwrap();
            assert_eq!(written, std::fs::read(tree.join(name)).unwrap(), "{name}");
        }
        // Only the scripts: no temporary file left behind.
        let mut names: Vec<String> = std::fs::read_dir(dir.path().join("peers"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["install-llama-cpp-python.sh", "llama_cpp_bench.py"]);
        // The script imports summary.py from its parent folder, as in the tree.
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg("import sys; sys.path.insert(0, sys.argv[1]); from summary import summarize; print(summarize([1.0, 3.0])['mean'])")
            .arg(dir.path())
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2.0");
    }

    #[test]
    fn a_peer_run_takes_turns_test_by_test() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            run: RunArgs,
        }
        let args = |a: &[&str]| Cli::parse_from([&["bench", "m"], a].concat()).run;
        let names = |u: Vec<(Vec<String>, Option<PathBuf>)>| -> Vec<String> {
            u.into_iter()
                .map(|(t, p)| match p {
                    Some(p) => format!("file {}", p.display()),
                    None => t.join(","),
                })
                .collect()
        };
        assert_eq!(
            names(interleave_units(&args(&[]))),
            ["greeting", "knowledge", "code", "long"]
        );
        assert_eq!(
            names(interleave_units(&args(&[
                "--tests",
                "tg128,standard,pp512",
                "--prompts",
                "p.jsonl"
            ]))),
            [
                "tg128",
                "greeting",
                "knowledge",
                "code",
                "long",
                "pp512",
                "file p.jsonl"
            ]
        );
        assert_eq!(
            names(interleave_units(&args(&["--prompts", "p.jsonl"]))),
            ["file p.jsonl"]
        );
        // Each unit's tests are known before anything runs (the peer may go first), and a bad
        // name anywhere in the list is refused up front.
        assert_eq!(
            unit_tests(&["pp8+tg4".into()], None).unwrap(),
            [TestKind::Synthetic {
                name: "pp8+tg4".into(),
                prompt_tokens: 8,
                new_tokens: 4
            }]
        );
        let e = unit_tests(&["bogus".into()], None).unwrap_err();
        assert!(e.0.contains("unknown test \"bogus\""), "{}", e.0);
        assert!(unit_tests(&[], Some(Path::new("/nonexistent.jsonl"))).is_err());
    }
}
