//! `minerva bench`: submit a benchmark job to the daemon, follow it with a progress bar, print
//! a table (or JSON / CSV), optionally run the llama.cpp peer on the same tests and print the
//! ratios; `show`, `list`, `cancel`, `compare`, `chart`.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use minerva_proto::scenarios::{self, TestKind};
use minerva_proto::v1 as pb;
use minerva_proto::v1::benchmark_service_client::BenchmarkServiceClient;
use serde::Serialize;

use crate::{client, render, CliError, CliResult, Global};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Models to benchmark (store names, .gguf paths or model folders).
    #[arg(required = true)]
    pub models: Vec<String>,
    /// Tests, comma-separated: standard, greeting, knowledge, code, long, ppN, tgN, ppN+tgM
    /// [default: standard].
    #[arg(long, value_delimiter = ',')]
    pub tests: Vec<String>,
    /// JSONL prompts file ({"prompt": "...", "max_tokens": N} per line), read by the daemon.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Measured runs per test.
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
    /// Unmeasured warm-up runs per test.
    #[arg(long, default_value_t = 1)]
    pub warmup: u32,
    /// Clients at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: u32,
    #[arg(long)]
    pub threads: Option<u32>,
    #[arg(long)]
    pub ctx: Option<u32>,
    /// Layers on the GPU [default: the daemon's, all of them when it has a GPU].
    #[arg(long)]
    pub gpu_layers: Option<u32>,
    /// Backends to run every model on, comma-separated (llama.cpp, candle, mlx) [default: each
    /// model's default backend].
    #[arg(long, value_delimiter = ',')]
    pub backend: Vec<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Let requests reuse prompt prefixes cached by earlier ones, as clients' requests do
    /// [default: off, every request computes its whole prompt].
    #[arg(long, conflicts_with = "peer")]
    pub prompt_cache: bool,
    /// Also run this peer on the same model file and tests, and print Minerva/peer ratios.
    #[arg(long, value_parser = ["llama.cpp"])]
    pub peer: Option<String>,
    /// CSV instead of a table: one row per request, then one row per test and metric.
    #[arg(long, conflicts_with = "json")]
    pub csv: bool,
    /// Also write the JSON result to this file.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Perplexity of a model on a text file (chunks scored as llama.cpp's perplexity tool does).
    Perplexity {
        model: String,
        file: PathBuf,
        /// Tokens per chunk.
        #[arg(long, default_value_t = 512)]
        chunk: u32,
        #[arg(long)]
        threads: Option<u32>,
        #[arg(long)]
        ctx: Option<u32>,
        /// Layers on the GPU [default: the daemon's, all of them when it has a GPU].
        #[arg(long)]
        gpu_layers: Option<u32>,
        /// Backend (llama.cpp, candle, mlx) [default: by format].
        #[arg(long)]
        backend: Option<String>,
    },
    /// A job's result (running or finished).
    Show { id: String },
    /// Jobs, newest first.
    List,
    /// Stop a running job.
    Cancel { id: String },
    /// Ratio table B/A per test and metric, from two result files.
    Compare { a: PathBuf, b: PathBuf },
    /// An SVG chart of decode tokens/s and TTFT per model and test (peer beside it if present).
    Chart {
        result: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
    },
}

/// `--json` output when a peer ran: both results and the ratios.
#[derive(Serialize, serde::Deserialize)]
pub struct Comparison {
    pub minerva: pb::BenchResult,
    pub peer: pb::BenchResult,
    /// Minerva / peer.
    pub ratio: Vec<Ratio>,
}

#[derive(Serialize, serde::Deserialize, Debug, Clone)]
pub struct Ratio {
    pub model: String,
    pub test: String,
    pub metric: String,
    /// Which summary figure: "mean" for rates, "p50" for latencies.
    pub stat: String,
    pub a: f64,
    pub b: f64,
    /// b / a: for `--peer`, Minerva / peer.
    pub ratio: f64,
}

pub async fn bench(global: &Global, args: BenchArgs) -> CliResult {
    match args.command {
        Some(BenchCommand::Compare { a, b }) => return compare_files(global, &a, &b),
        Some(BenchCommand::Chart { result, output }) => return chart_file(&result, &output),
        _ => {}
    }
    let mut client = BenchmarkServiceClient::new(client::connect(global, true).await?);
    match args.command {
        Some(BenchCommand::Perplexity {
            model,
            file,
            chunk,
            threads,
            ctx,
            gpu_layers,
            backend,
        }) => {
            let options = pb::LoadOptions {
                threads,
                context_length: ctx,
                gpu_layers,
                backend,
            };
            perplexity(global, &mut client, model, &file, chunk, options).await
        }
        Some(BenchCommand::Show { id }) => {
            let r = client.get(pb::BenchJobRef { id }).await?.into_inner();
            print_result(global, &r)
        }
        Some(BenchCommand::List) => {
            let l = client.list(pb::ListBenchJobsRequest {}).await?.into_inner();
            if global.json {
                println!("{}", serde_json::to_string_pretty(&l)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = l
                .jobs
                .iter()
                .map(|j| {
                    let spec = j.spec.clone().unwrap_or_default();
                    vec![
                        j.id.clone(),
                        j.status.clone(),
                        spec.models.join(","),
                        j.tests
                            .iter()
                            .map(|t| t.test.as_str())
                            .collect::<Vec<_>>()
                            .join(","),
                    ]
                })
                .collect();
            print!(
                "{}",
                render::table(&["ID", "STATUS", "MODELS", "TESTS"], &rows)
            );
            Ok(())
        }
        Some(BenchCommand::Cancel { id }) => {
            let r = client
                .cancel(pb::BenchJobRef { id: id.clone() })
                .await?
                .into_inner();
            if global.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else if r.cancelled {
                println!("cancelled {id}");
            } else {
                println!("{id} was not running");
            }
            Ok(())
        }
        Some(BenchCommand::Compare { .. } | BenchCommand::Chart { .. }) => Ok(()),
        None => run(global, &mut client, args.run).await,
    }
}

async fn run(
    global: &Global,
    client: &mut BenchmarkServiceClient<tonic::transport::Channel>,
    args: RunArgs,
) -> CliResult {
    if args.peer.is_some() && args.concurrency != 1 {
        return Err(CliError(
            "--peer llama.cpp runs one client at a time: use --concurrency 1".into(),
        ));
    }
    // With a peer, the two take turns test by test (a Minerva job of one test and the peer on
    // it), so a slow minute on a shared machine falls on both sides instead of on one, and who
    // goes first alternates (Minerva on the first test, the peer on the second, ...), so
    // whatever running first or second does to a side's figures falls on both alike.
    let units = if args.peer.is_some() {
        interleave_units(&args)
    } else {
        vec![(args.tests.clone(), args.prompts.clone())]
    };
    // The whole list is checked, and the peer installed (or found cached), before any job runs.
    let peer_tests = match args.peer {
        Some(_) => Some(
            units
                .iter()
                .map(|(names, prompts)| unit_tests(names, prompts.as_deref()))
                .collect::<CliResult<Vec<_>>>()?,
        ),
        None => None,
    };
    let python = match args.peer {
        Some(_) => Some(install_peer().await?),
        None => None,
    };
    let (mut results, mut peers) = (Vec::new(), Vec::new());
    for (i, (tests, prompts)) in units.into_iter().enumerate() {
        let (Some(python), Some(peer_tests)) = (&python, &peer_tests) else {
            results.push(run_job(global, client, &args, tests, prompts).await?);
            continue;
        };
        // The peer needs Minerva's load (file, threads, context, flash attention): the first
        // test runs Minerva first.
        if i % 2 == 1 {
            let loads = &results[0].loads;
            peers.push(run_peer(global, python, loads, &peer_tests[i], &args).await?);
            results.push(run_job(global, client, &args, tests, prompts).await?);
        } else {
            results.push(run_job(global, client, &args, tests, prompts).await?);
            let loads = &results[0].loads;
            peers.push(run_peer(global, python, loads, &peer_tests[i], &args).await?);
        }
    }
    let result = merge_results(results);
    let peer = (!peers.is_empty()).then(|| merge_results(peers));
    let out = match &peer {
        Some(p) => serde_json::to_string_pretty(&Comparison {
            minerva: result.clone(),
            peer: p.clone(),
            ratio: ratios(p, &result),
        })?,
        None => serde_json::to_string_pretty(&result)?,
    };
    if let Some(path) = &args.output {
        std::fs::write(path, &out)?;
    }
    if global.json {
        println!("{out}");
    } else if args.csv {
        print!("{}", csv(&result));
        if let Some(p) = &peer {
            print!("{}", csv_rows(p, false));
        }
    } else {
        print_result(global, &result)?;
        if let Some(p) = &peer {
            println!();
            print_result(global, p)?;
            println!("\nMinerva / llama.cpp (same file, threads, flash attention, tests, taking turns test by test, alternating who goes first; rates by mean, latencies by p50):");
            print!("{}", ratio_table(&ratios(p, &result)));
        }
    }
    Ok(())
}

/// Submits one job (these tests and prompt file, the rest from `args`) and follows it to its end.
async fn run_job(
    global: &Global,
    client: &mut BenchmarkServiceClient<tonic::transport::Channel>,
    args: &RunArgs,
    tests: Vec<String>,
    prompts: Option<PathBuf>,
) -> CliResult<pb::BenchResult> {
    let spec = pb::BenchJobSpec {
        models: args.models.clone(),
        tests,
        prompts_file: prompts
            .as_ref()
            .map(|p| {
                std::path::absolute(p)
                    .unwrap_or_else(|_| p.clone())
                    .display()
                    .to_string()
            })
            .unwrap_or_default(),
        runs: Some(args.runs),
        warmup_runs: Some(args.warmup),
        concurrency: Some(args.concurrency),
        options: (args.threads.is_some() || args.ctx.is_some() || args.gpu_layers.is_some())
            .then_some(pb::LoadOptions {
                threads: args.threads,
                context_length: args.ctx,
                gpu_layers: args.gpu_layers,
                backend: None,
            }),
        seed: Some(args.seed),
        backends: args.backend.clone(),
        prompt_cache: args.prompt_cache,
    };
    let id = client.submit(spec).await?.into_inner().id;
    let result = follow(client, &id, !global.json && !args.csv).await?;
    if result.status != "done" {
        return Err(CliError(format!(
            "benchmark {id} {}: {}",
            result.status, result.error
        )));
    }
    Ok(result)
}

/// The jobs of an interleaved `--peer` run: one per test ("standard" is its four scenarios;
/// no tests and no prompt file means "standard", as in the daemon), and the prompt file as one.
fn interleave_units(args: &RunArgs) -> Vec<(Vec<String>, Option<PathBuf>)> {
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

/// One result from the results of several jobs run one after another: their tests in order,
/// each model's first load record, resources over all of them (peaks the highest, means
/// weighted by samples). The id lists every job's.
fn merge_results(mut parts: Vec<pb::BenchResult>) -> pb::BenchResult {
    let mut out = parts.remove(0);
    for r in parts {
        out.id = format!("{},{}", out.id, r.id);
        for load in r.loads {
            if !out
                .loads
                .iter()
                .any(|l| l.model == load.model && l.backend == load.backend)
            {
                out.loads.push(load);
            }
        }
        out.tests.extend(r.tests);
        if let (Some(a), Some(b)) = (out.resources.as_mut(), r.resources) {
            merge_resources(a, b);
        }
        if let (Some(a), Some(b)) = (out.spec.as_mut(), r.spec) {
            a.tests.extend(b.tests);
            if a.prompts_file.is_empty() {
                a.prompts_file = b.prompts_file;
            }
        }
        out.finished_unix_s = r.finished_unix_s;
    }
    out
}

fn merge_resources(a: &mut pb::BenchResources, b: pb::BenchResources) {
    let weighted = |x: f64, nx: u32, y: f64, ny: u32| {
        let n = f64::from(nx) + f64::from(ny);
        if n > 0.0 {
            (x * f64::from(nx) + y * f64::from(ny)) / n
        } else {
            0.0
        }
    };
    a.rss_peak_bytes = a.rss_peak_bytes.max(b.rss_peak_bytes);
    a.rss_mean_bytes = weighted(
        a.rss_mean_bytes as f64,
        a.samples,
        b.rss_mean_bytes as f64,
        b.samples,
    ) as u64;
    a.cpu_percent_mean = weighted(a.cpu_percent_mean, a.samples, b.cpu_percent_mean, b.samples);
    a.cpu_percent_peak = a.cpu_percent_peak.max(b.cpu_percent_peak);
    a.samples += b.samples;
    for g in b.gpus {
        match a.gpus.iter_mut().find(|x| x.index == g.index) {
            Some(x) => {
                let (nx, ng) = (x.samples, g.samples);
                x.memory_used_peak_bytes = x.memory_used_peak_bytes.max(g.memory_used_peak_bytes);
                x.memory_used_mean_bytes = weighted(
                    x.memory_used_mean_bytes as f64,
                    nx,
                    g.memory_used_mean_bytes as f64,
                    ng,
                ) as u64;
                x.utilization_percent_mean = weighted(
                    x.utilization_percent_mean,
                    nx,
                    g.utilization_percent_mean,
                    ng,
                );
                x.utilization_percent_peak =
                    x.utilization_percent_peak.max(g.utilization_percent_peak);
                x.power_watts_mean = match (x.power_watts_mean, g.power_watts_mean) {
                    (Some(p), Some(q)) => Some(weighted(p, nx, q, ng)),
                    (p, q) => p.or(q),
                };
                x.power_watts_peak = match (x.power_watts_peak, g.power_watts_peak) {
                    (Some(p), Some(q)) => Some(p.max(q)),
                    (p, q) => p.or(q),
                };
                x.samples += ng;
            }
            None => a.gpus.push(g),
        }
    }
}

async fn perplexity(
    global: &Global,
    client: &mut BenchmarkServiceClient<tonic::transport::Channel>,
    model: String,
    file: &Path,
    chunk: u32,
    options: pb::LoadOptions,
) -> CliResult {
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError(format!("cannot read {}: {e}", file.display())))?;
    let mut stream = client
        .perplexity(pb::PerplexityRequest {
            model,
            text,
            chunk_tokens: Some(chunk),
            options: Some(options),
        })
        .await?
        .into_inner();
    let bar = (!global.json).then(|| {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template(
                "perplexity [{bar:30}] {pos}/{len} chunks {msg} ({elapsed})",
            )
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    });
    while let Some(p) = stream.message().await? {
        if let Some(b) = &bar {
            b.set_length(u64::from(p.chunks_total));
            b.set_position(u64::from(p.chunks_done));
            b.set_message(format!("ppl {:.4}", p.perplexity));
        }
        if p.done {
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            if global.json {
                println!("{}", serde_json::to_string_pretty(&p)?);
            } else {
                println!(
                    "perplexity {:.4} over {} tokens ({} chunks of {}, second halves scored; text {} tokens) in {:.1} s",
                    p.perplexity,
                    p.tokens_scored,
                    p.chunks_total,
                    p.chunk_tokens,
                    p.text_tokens,
                    p.elapsed_ms / 1e3
                );
            }
            return Ok(());
        }
    }
    Err(CliError(
        "the daemon ended the perplexity stream without a result".into(),
    ))
}

/// Watches the job to its end with a progress bar; Ctrl-C cancels it.
async fn follow(
    client: &mut BenchmarkServiceClient<tonic::transport::Channel>,
    id: &str,
    show: bool,
) -> CliResult<pb::BenchResult> {
    let mut stream = client
        .watch(pb::BenchJobRef { id: id.into() })
        .await?
        .into_inner();
    let bar = if show {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} bench {prefix} [{bar:30}] {pos}/{len} requests {msg} ({elapsed})",
            )
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.set_prefix(id.to_string());
        b.enable_steady_tick(std::time::Duration::from_millis(200));
        Some(b)
    } else {
        None
    };
    loop {
        let msg = tokio::select! {
            m = stream.message() => m?,
            _ = tokio::signal::ctrl_c() => {
                let _ = client.cancel(pb::BenchJobRef { id: id.into() }).await;
                if let Some(b) = &bar { b.abandon_with_message("cancelled"); }
                return Err(CliError(format!("cancelled benchmark {id}")));
            }
        };
        let Some(p) = msg else {
            return Err(CliError(format!(
                "the daemon ended the watch of {id} without a result"
            )));
        };
        if let Some(b) = &bar {
            b.set_length(u64::from(p.requests_total));
            b.set_position(u64::from(p.requests_done));
            b.set_message(format!("{} {} {}", p.model, p.test, p.message));
        }
        if let Some(done) = p.done {
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            return Ok(done);
        }
    }
}

/// Where the peer scripts live: $MINERVA_BENCH_DIR, else bench/ of the source tree this
/// binary was built in (target/<profile>/minerva → ../../bench).
fn peer_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MINERVA_BENCH_DIR") {
        return PathBuf::from(d).join("peers");
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| {
            e.parent()
                .and_then(Path::parent)
                .and_then(Path::parent)
                .map(|r| r.join("bench/peers"))
        })
        .filter(|d| d.is_dir())
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/peers"))
}

/// Runs the llama.cpp peer on the same model file, tests (same prompt tokens for prompt
/// tests), threads, context, runs and warm-ups as the Minerva result.
/// Installs the llama.cpp peer (a no-op once cached) and returns its Python.
async fn install_peer() -> CliResult<String> {
    let install = peer_dir().join("install-llama-cpp-python.sh");
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
fn unit_tests(names: &[String], prompts: Option<&Path>) -> CliResult<Vec<TestKind>> {
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
async fn run_peer(
    global: &Global,
    python: &str,
    loads: &[pb::BenchModelLoad],
    unit: &[TestKind],
    args: &RunArgs,
) -> CliResult<pb::BenchResult> {
    let script = peer_dir().join("llama_cpp_bench.py");
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
        let out = tokio::process::Command::new(python)
            .arg(&script)
            .arg(&spec_file)
            .output()
            .await?;
        let _ = std::fs::remove_file(&spec_file);
        if !out.status.success() {
            return Err(CliError(format!(
                "the llama.cpp peer failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        peer_results.push(serde_json::from_slice(&out.stdout)?);
    }
    Ok(merge_results(peer_results))
}

fn metric<'a>(t: &'a pb::BenchTest, name: &str) -> Option<&'a pb::BenchSummary> {
    t.metrics
        .iter()
        .find(|m| m.name == name)
        .and_then(|m| m.summary.as_ref())
}

/// Ratios b/a for every test both results have.
pub fn ratios(a: &pb::BenchResult, b: &pb::BenchResult) -> Vec<Ratio> {
    let mut out = Vec::new();
    for tb in &b.tests {
        let Some(ta) = a
            .tests
            .iter()
            .find(|t| t.test == tb.test && (t.model == tb.model || a.tests.len() == b.tests.len()))
        else {
            continue;
        };
        for (name, stat) in [
            ("decode_tokens_per_s", "mean"),
            ("prompt_tokens_per_s", "mean"),
            ("ttft_ms", "p50"),
            ("tpot_ms", "p50"),
            ("e2e_ms", "p50"),
        ] {
            let (Some(sa), Some(sb)) = (metric(ta, name), metric(tb, name)) else {
                continue;
            };
            let pick = |s: &pb::BenchSummary| if stat == "mean" { s.mean } else { s.p50 };
            let (va, vb) = (pick(sa), pick(sb));
            if va > 0.0 && sa.n > 0 && sb.n > 0 {
                out.push(Ratio {
                    model: tb.model.clone(),
                    test: tb.test.clone(),
                    metric: name.into(),
                    stat: stat.into(),
                    a: va,
                    b: vb,
                    ratio: vb / va,
                });
            }
        }
    }
    out
}

fn ratio_table(r: &[Ratio]) -> String {
    let rows: Vec<Vec<String>> = r
        .iter()
        .map(|x| {
            vec![
                x.test.clone(),
                format!("{} ({})", x.metric, x.stat),
                format!("{:.2}", x.a),
                format!("{:.2}", x.b),
                format!("{:.3}", x.ratio),
            ]
        })
        .collect();
    render::table(&["TEST", "METRIC", "A", "B", "B/A"], &rows)
}

fn load_result(path: &Path) -> CliResult<pb::BenchResult> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError(format!("cannot read {}: {e}", path.display())))?;
    // A `--peer` output holds both systems: take Minerva's side.
    if let Ok(c) = serde_json::from_str::<Comparison>(&text) {
        return Ok(c.minerva);
    }
    serde_json::from_str(&text)
        .map_err(|e| CliError(format!("{} is not a benchmark result: {e}", path.display())))
}

fn compare_files(global: &Global, a: &Path, b: &Path) -> CliResult {
    let (ra, rb) = (load_result(a)?, load_result(b)?);
    let r = ratios(&ra, &rb);
    if r.is_empty() {
        return Err(CliError("the two results share no test".into()));
    }
    if global.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "A = {} ({})\nB = {} ({})",
            a.display(),
            system(&ra),
            b.display(),
            system(&rb)
        );
        print!("{}", ratio_table(&r));
    }
    Ok(())
}

fn system(r: &pb::BenchResult) -> String {
    r.machine
        .as_ref()
        .map(|m| m.system.clone())
        .unwrap_or_default()
}

fn print_result(global: &Global, r: &pb::BenchResult) -> CliResult {
    if global.json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    let m = r.machine.clone().unwrap_or_default();
    println!(
        "{} — job {} {}{}",
        m.system,
        r.id,
        r.status,
        if r.error.is_empty() {
            String::new()
        } else {
            format!(": {}", r.error)
        }
    );
    for l in &r.loads {
        let mut settings: Vec<String> = l
            .settings
            .iter()
            .map(|(k, v)| format!(", {k} {v}"))
            .collect();
        settings.sort();
        println!(
            "  {}: {} {}, load {:.0} ms (map {:.0} ms, context {:.0} ms){}, {} threads, ctx {}{}",
            l.model,
            l.quantization,
            render::bytes(l.file_size_bytes),
            l.load_ms,
            l.mmap_ms,
            l.context_ms,
            if l.loaded_by_job {
                ""
            } else {
                " [already loaded]"
            },
            l.threads,
            l.context_length,
            settings.concat()
        );
    }
    let rows: Vec<Vec<String>> = r
        .tests
        .iter()
        .map(|t| {
            let f = |name: &str, pick: fn(&pb::BenchSummary) -> f64| {
                metric(t, name).map_or("-".into(), |s| format!("{:.1}", pick(s)))
            };
            let sd = |name: &str| {
                metric(t, name).map_or("-".into(), |s| format!("{:.1}±{:.1}", s.mean, s.stddev))
            };
            vec![
                t.test.clone(),
                format!("{}+{}", t.prompt_tokens, t.new_tokens),
                t.concurrency.to_string(),
                f("ttft_ms", |s| s.p50),
                f("ttft_ms", |s| s.p99),
                f("tpot_ms", |s| s.p50),
                sd("prompt_tokens_per_s"),
                sd("decode_tokens_per_s"),
                format!("{:.1}", t.aggregate_tokens_per_s),
                t.deterministic
                    .map_or("-".into(), |d| if d { "yes".into() } else { "NO".into() }),
            ]
        })
        .collect();
    print!(
        "{}",
        render::table(
            &[
                "TEST",
                "PP+TG",
                "CONC",
                "TTFT p50",
                "TTFT p99",
                "TPOT p50",
                "PROMPT tok/s",
                "DECODE tok/s",
                "AGG tok/s",
                "DETERMINISTIC"
            ],
            &rows
        )
    );
    if r.spec.as_ref().is_some_and(|s| s.prompt_cache) {
        println!("  prompt cache on: runs reused the prompt prefix earlier requests left in the KV cache (cached_prompt_tokens per run in --json and --csv)");
    }
    if let Some(res) = r.resources.as_ref().filter(|r| r.samples == 0) {
        // The peer's result: its process is not sampled.
        println!("  RSS and CPU not sampled; GPU {}", res.gpu);
    } else if let Some(res) = &r.resources {
        println!(
            "  daemon RSS peak {} mean {}, CPU mean {:.0}% peak {:.0}% ({} samples); GPU {}",
            render::bytes(res.rss_peak_bytes),
            render::bytes(res.rss_mean_bytes),
            res.cpu_percent_mean,
            res.cpu_percent_peak,
            res.samples,
            res.gpu
        );
        for g in &res.gpus {
            let power = match (g.power_watts_mean, g.power_watts_peak) {
                (Some(mean), Some(peak)) => format!(", power mean {mean:.0} W peak {peak:.0} W"),
                _ => ", power not reported".into(),
            };
            println!(
                "  GPU {} {}: utilisation mean {:.0}% peak {:.0}%, memory used peak {} of {}{power} ({} samples)",
                g.index,
                g.name,
                g.utilization_percent_mean,
                g.utilization_percent_peak,
                render::bytes(g.memory_used_peak_bytes),
                render::bytes(g.memory_total_bytes),
                g.samples
            );
        }
    }
    Ok(())
}

const CSV_RUN_HEADER: &str = "system,model,test,run,client,prompt_tokens,generated_tokens,ttft_ms,tpot_ms,e2e_ms,prompt_tokens_per_s,decode_tokens_per_s,queue_ms,tokens_sha256,cached_prompt_tokens\n";
const CSV_SUMMARY_HEADER: &str = "system,model,test,metric,n,mean,stddev,min,p50,p90,p99,max\n";

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Two CSV tables, separated by a blank line: one row per request, then one row per test
/// and metric (the schema is in the README).
fn csv(r: &pb::BenchResult) -> String {
    csv_rows(r, true)
}

fn csv_rows(r: &pb::BenchResult, headers: bool) -> String {
    let sys = csv_field(&system(r));
    let mut out = String::new();
    if headers {
        out.push_str(CSV_RUN_HEADER);
    }
    for t in &r.tests {
        for x in &t.runs {
            out.push_str(&format!(
                "{sys},{},{},{},{},{},{},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{},{}\n",
                csv_field(&t.model),
                csv_field(&t.test),
                x.run,
                x.client,
                x.prompt_tokens,
                x.generated_tokens,
                x.ttft_ms,
                x.tpot_ms,
                x.e2e_ms,
                x.prompt_tokens_per_s,
                x.decode_tokens_per_s,
                x.queue_ms,
                x.tokens_sha256,
                x.cached_prompt_tokens
            ));
        }
    }
    out.push('\n');
    if headers {
        out.push_str(CSV_SUMMARY_HEADER);
    }
    for t in &r.tests {
        for m in &t.metrics {
            let s = m.summary.unwrap_or_default();
            out.push_str(&format!(
                "{sys},{},{},{},{},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3}\n",
                csv_field(&t.model),
                csv_field(&t.test),
                m.name,
                s.n,
                s.mean,
                s.stddev,
                s.min,
                s.p50,
                s.p90,
                s.p99,
                s.max
            ));
        }
    }
    out
}

fn chart_file(result: &Path, output: &Path) -> CliResult {
    let text = std::fs::read_to_string(result)
        .map_err(|e| CliError(format!("cannot read {}: {e}", result.display())))?;
    let (minerva, peer) = match serde_json::from_str::<Comparison>(&text) {
        Ok(c) => (c.minerva, Some(c.peer)),
        Err(_) => (load_result(result)?, None),
    };
    if output.extension().is_some_and(|e| e != "svg") {
        return Err(CliError("only .svg output is supported".into()));
    }
    let svg = crate::chart::render(&minerva, peer.as_ref());
    std::fs::write(output, svg)?;
    println!("wrote {}", output.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(system: &str, tps: f64) -> pb::BenchResult {
        pb::BenchResult {
            machine: Some(pb::BenchMachine {
                system: system.into(),
                ..Default::default()
            }),
            tests: vec![pb::BenchTest {
                model: "m".into(),
                test: "tg8".into(),
                metrics: vec![pb::BenchMetric {
                    name: "decode_tokens_per_s".into(),
                    summary: Some(pb::BenchSummary {
                        n: 3,
                        mean: tps,
                        p50: tps,
                        ..Default::default()
                    }),
                }],
                runs: vec![pb::BenchRun {
                    tokens_sha256: "ab".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_chart_of_two_backends_shows_each_backends_own_figures() {
        let mut r = result("minerva (llama.cpp, candle)", 200.0);
        r.tests[0].backend = "llama.cpp".into();
        let mut other = r.tests[0].clone();
        other.backend = "candle".into();
        other.metrics[0].summary.as_mut().unwrap().mean = 80.0;
        r.tests.push(other);
        let svg = crate::chart::render(&r, None);
        assert!(
            svg.contains("(llama.cpp)</text>") && svg.contains("(candle)</text>"),
            "{svg}"
        );
        assert!(
            svg.contains(">200.0</text>") && svg.contains(">80.0</text>"),
            "{svg}"
        );
        assert_eq!(
            svg.matches(">tg8</text>").count(),
            2,
            "one group per test and panel: {svg}"
        );
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

    #[test]
    fn results_of_several_jobs_merge_into_one() {
        let load = |backend: &str, ms: f64| pb::BenchModelLoad {
            model: "m".into(),
            backend: backend.into(),
            load_ms: ms,
            ..Default::default()
        };
        let res = |peak: u64, mean: u64, cpu: f64, samples: u32| pb::BenchResources {
            rss_peak_bytes: peak,
            rss_mean_bytes: mean,
            cpu_percent_mean: cpu,
            cpu_percent_peak: cpu,
            samples,
            ..Default::default()
        };
        let mut a = result("minerva", 100.0);
        a.id = "1".into();
        a.loads = vec![load("llama.cpp", 50.0)];
        a.resources = Some(res(300, 200, 100.0, 1));
        a.finished_unix_s = 1.0;
        let mut b = result("minerva", 90.0);
        b.id = "2".into();
        b.tests[0].test = "pp8".into();
        b.loads = vec![load("llama.cpp", 0.0), load("candle", 20.0)];
        b.resources = Some(res(100, 100, 200.0, 3));
        b.finished_unix_s = 2.0;
        let m = merge_results(vec![a, b]);
        assert_eq!(m.id, "1,2");
        let tests: Vec<&str> = m.tests.iter().map(|t| t.test.as_str()).collect();
        assert_eq!(tests, ["tg8", "pp8"]);
        // Each model and backend once, with the load that loaded it.
        assert_eq!(m.loads.len(), 2);
        assert_eq!(
            (m.loads[0].backend.as_str(), m.loads[0].load_ms),
            ("llama.cpp", 50.0)
        );
        assert_eq!(m.loads[1].backend, "candle");
        let r = m.resources.unwrap();
        assert_eq!(
            (r.rss_peak_bytes, r.rss_mean_bytes, r.samples),
            (300, 125, 4)
        );
        assert_eq!((r.cpu_percent_mean, r.cpu_percent_peak), (175.0, 200.0));
        assert_eq!(m.finished_unix_s, 2.0);
    }

    #[test]
    fn ratios_are_b_over_a() {
        let r = ratios(&result("peer", 100.0), &result("minerva", 97.0));
        assert_eq!(r.len(), 1);
        assert!((r[0].ratio - 0.97).abs() < 1e-12);
    }

    #[test]
    fn csv_has_a_row_per_request_and_per_metric() {
        let c = csv(&result("minerva 0.1.0 (llama.cpp)", 10.0));
        let lines: Vec<&str> = c.lines().collect();
        assert_eq!(lines[0], CSV_RUN_HEADER.trim_end());
        assert!(lines[1].starts_with("minerva 0.1.0 (llama.cpp),m,tg8,0,0,"));
        assert_eq!(lines[2], "");
        assert_eq!(lines[3], CSV_SUMMARY_HEADER.trim_end());
        assert!(lines[4].contains(",decode_tokens_per_s,3,10.000,"));
    }
}
