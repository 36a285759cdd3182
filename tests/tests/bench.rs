//! Benchmark jobs on the real model: the JSON is well-formed and self-consistent (never a
//! speed threshold), results can be listed, shown after a restart, compared and charted, bad
//! specs are refused, jobs can be cancelled, and the daemon serves clients while a job runs.

use minerva_e2e::{assert_success, Daemon, MODEL};
use minerva_proto::v1 as pb;
use pb::benchmark_service_client::BenchmarkServiceClient;
use serde_json::Value;

fn metric<'a>(test: &'a Value, name: &str) -> &'a Value {
    test["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .map(|m| &m["summary"])
        .unwrap_or_else(|| panic!("no {name} in {test}"))
}

fn check_summary(s: &Value, what: &str) {
    let f = |k: &str| {
        s[k].as_f64()
            .unwrap_or_else(|| panic!("{what}.{k} missing: {s}"))
    };
    assert!(
        f("min") <= f("p50")
            && f("p50") <= f("p90")
            && f("p90") <= f("p99")
            && f("p99") <= f("max"),
        "{what}: {s}"
    );
    assert!(
        f("min") <= f("mean") && f("mean") <= f("max"),
        "{what}: {s}"
    );
    assert!(f("stddev") >= 0.0);
}

#[test]
fn a_job_runs_and_its_json_is_self_consistent() {
    let d = Daemon::start(&[]);
    let r = d.cli_json(&[
        "bench",
        MODEL,
        "--tests",
        "tg8,pp16+tg4,greeting",
        "--runs",
        "2",
        "--warmup",
        "1",
    ]);
    assert_eq!(r["status"], "done", "{r}");
    let tests = r["tests"].as_array().unwrap();
    assert_eq!(
        tests
            .iter()
            .map(|t| t["test"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["tg8", "pp16+tg4", "greeting"]
    );
    for t in tests {
        let new = t["new_tokens"].as_u64().unwrap();
        let runs = t["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 2);
        for run in runs {
            // Fixed token counts: generation ignores end-of-sequence in benchmarks.
            assert_eq!(run["generated_tokens"].as_u64(), Some(new), "{run}");
            assert_eq!(run["prompt_tokens"], t["prompt_tokens"]);
            assert!(run["e2e_ms"].as_f64().unwrap() >= run["ttft_ms"].as_f64().unwrap());
            assert_eq!(run["tokens_sha256"].as_str().unwrap().len(), 64);
            // Without --prompt-cache every run computes its whole prompt.
            assert_eq!(
                run["cached_prompt_tokens"].as_u64().unwrap_or(0),
                0,
                "{run}"
            );
        }
        for m in [
            "ttft_ms",
            "tpot_ms",
            "e2e_ms",
            "prompt_tokens_per_s",
            "decode_tokens_per_s",
            "itl_ms",
        ] {
            check_summary(metric(t, m), m);
        }
        assert_eq!(metric(t, "ttft_ms")["n"], 2);
        // Inter-token gaps: one fewer than the tokens, per run.
        assert_eq!(metric(t, "itl_ms")["n"].as_u64(), Some(2 * (new - 1)));
        assert_eq!(
            t["deterministic"], true,
            "greedy with one seed must repeat: {t}"
        );
        assert!(t["aggregate_tokens_per_s"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(tests[0]["prompt_tokens"], 1);
    assert_eq!(tests[1]["prompt_tokens"], 16);
    assert_eq!(tests[2]["new_tokens"], 20);
    let load = &r["loads"][0];
    assert_eq!(load["model"], MODEL);
    assert_eq!(load["loaded_by_job"], true);
    // llama.cpp's flash-attention setting as it ran (a `--peer` run takes the same).
    let fa = std::env::var("MINERVA_FLASH_ATTN").unwrap_or_else(|_| "auto".into());
    assert_eq!(load["settings"]["flash_attn"], fa.as_str(), "{load}");
    let (l, m, c) = (
        load["load_ms"].as_f64().unwrap(),
        load["mmap_ms"].as_f64().unwrap(),
        load["context_ms"].as_f64().unwrap(),
    );
    assert!(l > 0.0 && m > 0.0 && c > 0.0 && m + c <= l + 1.0, "{load}");
    let res = &r["resources"];
    assert!(res["rss_peak_bytes"].as_u64().unwrap() >= res["rss_mean_bytes"].as_u64().unwrap());
    assert!(res["rss_mean_bytes"].as_u64().unwrap() > 0);
    // With a GPU, one NVML record per device with real samples; without, "absent" and no
    // records (never zeros).
    let gpus = res["gpus"].as_array().cloned().unwrap_or_default();
    if res["gpu"].as_str().unwrap().starts_with("present") {
        assert!(!gpus.is_empty(), "{res}");
        for g in &gpus {
            assert!(g["samples"].as_u64().unwrap() > 0, "{g}");
            assert!(g["memory_total_bytes"].as_u64().unwrap() > 0, "{g}");
            assert!(
                g["memory_used_peak_bytes"].as_u64().unwrap()
                    >= g["memory_used_mean_bytes"].as_u64().unwrap(),
                "{g}"
            );
        }
    } else {
        assert!(res["gpu"].as_str().unwrap().starts_with("absent"), "{res}");
        assert!(gpus.is_empty(), "GPU figures without a GPU: {res}");
    }
    let machine = &r["machine"];
    assert!(machine["cpu_threads"].as_u64().unwrap() >= 1);
    assert!(machine["system"].as_str().unwrap().starts_with("minerva"));
    assert!(machine["build"].as_str().unwrap().contains("llama.cpp"));
    assert!(!machine["git_commit"].as_str().unwrap().is_empty());

    // --prompt-cache: after the warm-up, each run finds all but the prompt's last token cached,
    // and (nothing evicted) generates the same tokens as the cold runs.
    let c = d.cli_json(&[
        "bench",
        MODEL,
        "--tests",
        "greeting",
        "--runs",
        "2",
        "--prompt-cache",
    ]);
    assert_eq!(c["spec"]["prompt_cache"], true, "{}", c["spec"]);
    let t = &c["tests"][0];
    for run in t["runs"].as_array().unwrap() {
        let prompt = run["prompt_tokens"].as_u64().unwrap();
        assert_eq!(
            run["cached_prompt_tokens"].as_u64(),
            Some(prompt - 1),
            "{run}"
        );
        assert_eq!(run["tokens_sha256"], tests[2]["runs"][0]["tokens_sha256"]);
    }
}

#[test]
fn results_are_listed_shown_after_a_restart_compared_and_charted() {
    let mut d = Daemon::start(&[]);
    let r = d.cli_json(&[
        "bench", MODEL, "--tests", "tg4", "--runs", "2", "--warmup", "0",
    ]);
    let id = r["id"].as_str().unwrap().to_string();
    let list = d.cli_json(&["bench", "list"]);
    assert!(list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|j| j["id"] == id.as_str()));
    // compare and chart read result files.
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.json");
    std::fs::write(&a, serde_json::to_vec(&r).unwrap()).unwrap();
    let cmp = d.cli_json(&["bench", "compare", a.to_str().unwrap(), a.to_str().unwrap()]);
    let ratios = cmp.as_array().unwrap();
    assert!(!ratios.is_empty());
    assert!(
        ratios
            .iter()
            .all(|x| (x["ratio"].as_f64().unwrap() - 1.0).abs() < 1e-12),
        "{cmp}"
    );
    let svg = dir.path().join("c.svg");
    let out = d.cli(&[
        "bench",
        "chart",
        a.to_str().unwrap(),
        "-o",
        svg.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.contains("tg4") && text.contains("decode tokens/s"));

    // CSV: a header, one row per request, a blank line, the summary table.
    let out = d.cli(&[
        "bench", MODEL, "--tests", "tg4", "--runs", "2", "--warmup", "0", "--csv",
    ]);
    assert!(out.status.success());
    let csv = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("system,model,test,run,client,"));
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains(",tg4,") && !l.contains("_ms,") && !l.contains("_s,"))
            .count(),
        2,
        "{csv}"
    );
    assert_eq!(lines[3], "");
    assert!(lines[4].starts_with("system,model,test,metric,n,"));
    // Saved under MINERVA_HOME: a new daemon on the same home still shows it.
    let home = d.dir.path().to_path_buf();
    assert!(d.stop());
    let out = std::process::Command::new(minerva_e2e::bin("minervad"))
        .arg("--socket")
        .arg(home.join("again.sock"))
        .arg("--models-dir")
        .arg(minerva_e2e::models_dir())
        .env("MINERVA_HOME", &home)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut child = out;
    let sock = home.join("again.sock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let shown = std::process::Command::new(minerva_e2e::bin("minerva"))
        .arg("--addr")
        .arg(&sock)
        .args(["--json", "bench", "show", &id])
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_success(&shown, "minerva bench show");
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["tests"], r["tests"]);
}

#[test]
fn concurrency_and_prompt_files() {
    let d = Daemon::start(&[]);
    let r = d.cli_json(&[
        "bench",
        MODEL,
        "--tests",
        "tg6",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--concurrency",
        "2",
    ]);
    let t = &r["tests"][0];
    assert_eq!(t["concurrency"], 2);
    let clients: Vec<u64> = t["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["client"].as_u64().unwrap())
        .collect();
    assert_eq!(clients, [0, 1]);
    assert!(t["requests_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(t["deterministic"], true);

    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.jsonl");
    std::fs::write(&f, "{\"prompt\": \"Name a color.\", \"max_tokens\": 5}\n{\"prompt\": \"Count to three.\", \"max_tokens\": 7}\n").unwrap();
    let r = d.cli_json(&[
        "bench",
        MODEL,
        "--prompts",
        f.to_str().unwrap(),
        "--runs",
        "1",
        "--warmup",
        "0",
    ]);
    let tests: Vec<(String, u64)> = r["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["test"].as_str().unwrap().to_string(),
                t["new_tokens"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        tests,
        [("file:1".to_string(), 5), ("file:2".to_string(), 7)]
    );
}

/// `--speculative`: every test runs again as TEST/spec, with its drafts, its speedup over TEST
/// and whether its tokens were TEST's; the table and the CSV show them too.
#[test]
fn a_speculative_job_runs_each_test_with_and_without_drafts() {
    let d = Daemon::start(&[]);
    let args = [
        "bench",
        MODEL,
        "--tests",
        "json,tg8",
        "--runs",
        "2",
        "--warmup",
        "0",
        "--speculative",
    ];
    let r = d.cli_json(&args);
    assert_eq!(r["status"], "done", "{r}");
    let tests = r["tests"].as_array().unwrap();
    let names: Vec<&str> = tests.iter().map(|t| t["test"].as_str().unwrap()).collect();
    assert_eq!(names, ["json", "json/spec", "tg8", "tg8/spec"]);
    for t in tests {
        let name = t["test"].as_str().unwrap();
        let spec = name.ends_with("/spec");
        let runs = t["runs"].as_array().unwrap();
        let drafted: u64 = runs
            .iter()
            .map(|x| x["drafted_tokens"].as_u64().unwrap_or(0))
            .sum();
        let accepted: u64 = runs
            .iter()
            .map(|x| x["accepted_tokens"].as_u64().unwrap_or(0))
            .sum();
        assert_eq!(t["drafted_tokens"].as_u64().unwrap_or(0), drafted, "{name}");
        assert_eq!(
            t["accepted_tokens"].as_u64().unwrap_or(0),
            accepted,
            "{name}"
        );
        assert!(accepted <= drafted, "{name}");
        if spec {
            assert_eq!(t["max_draft"], 8, "{name}");
            assert!(t["speedup"].as_f64().unwrap() > 0.0, "{name}: {t}");
            assert!(t["same_tokens_as_plain"].is_boolean(), "{name}: {t}");
            let rate = t["acceptance_rate"].as_f64().unwrap_or(0.0);
            assert!((rate - accepted as f64 / drafted.max(1) as f64).abs() < 1e-9);
        } else {
            assert_eq!(drafted, 0, "{name} drafted without speculation");
            assert!(t["speedup"].is_null() && t["max_draft"].as_u64().unwrap_or(0) == 0);
        }
    }
    // A JSON list continued in its format: drafts are taken.
    assert!(
        tests[1]["accepted_tokens"].as_u64().unwrap_or(0) > 0,
        "{}",
        tests[1]
    );
    // The table has the drafts column; the CSV the per-run counts.
    let mut args = args.to_vec();
    args[3] = "tg8";
    let table = d.cli_ok(&args);
    assert!(
        table.contains("DRAFTS TAKEN") && table.contains("tg8/spec"),
        "{table}"
    );
    args.push("--csv");
    let csv = d.cli_ok(&args);
    assert!(
        csv.lines()
            .next()
            .unwrap()
            .ends_with(",drafted_tokens,accepted_tokens"),
        "{csv}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_specs_are_refused_jobs_cancel_and_clients_are_served_meanwhile() {
    let d = Daemon::start(&[]);
    let mut c = BenchmarkServiceClient::new(d.channel().await);
    let spec = |f: &dyn Fn(&mut pb::BenchJobSpec)| {
        let mut s = pb::BenchJobSpec {
            models: vec![MODEL.into()],
            tests: vec!["tg4".into()],
            ..Default::default()
        };
        f(&mut s);
        s
    };
    let cases: Vec<(pb::BenchJobSpec, tonic::Code, &str)> = vec![
        (
            spec(&|s| s.models = vec!["nope".into()]),
            tonic::Code::NotFound,
            "nope",
        ),
        (
            spec(&|s| s.models.clear()),
            tonic::Code::InvalidArgument,
            "model",
        ),
        (
            spec(&|s| s.tests = vec!["pp0".into()]),
            tonic::Code::InvalidArgument,
            "pp0",
        ),
        (
            spec(&|s| s.tests = vec!["fast".into()]),
            tonic::Code::InvalidArgument,
            "unknown test",
        ),
        (
            spec(&|s| s.runs = Some(0)),
            tonic::Code::InvalidArgument,
            "runs",
        ),
        (
            spec(&|s| s.concurrency = Some(0)),
            tonic::Code::InvalidArgument,
            "concurrency",
        ),
        (
            spec(&|s| s.concurrency = Some(65)),
            tonic::Code::InvalidArgument,
            "concurrency",
        ),
        (
            spec(&|s| s.speculative = Some(17)),
            tonic::Code::InvalidArgument,
            "1 to 16",
        ),
        (
            spec(&|s| s.prompts_file = "/no/such/prompts.jsonl".into()),
            tonic::Code::InvalidArgument,
            "/no/such/prompts.jsonl",
        ),
    ];
    for (s, code, needle) in cases {
        let e = c.submit(s).await.expect_err("bad spec accepted");
        assert_eq!(e.code(), code, "{}", e.message());
        assert!(
            e.message().contains(needle),
            "{} lacks {needle}",
            e.message()
        );
    }
    let e = c
        .get(pb::BenchJobRef {
            id: "no-such-job".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    // A long job; a generate request is served while it runs; then it is cancelled.
    let id = c
        .submit(spec(&|s| {
            s.tests = vec!["tg300".into()];
            s.runs = Some(50);
            s.warmup_runs = Some(0);
        }))
        .await
        .unwrap()
        .into_inner()
        .id;
    let mut watch = c
        .watch(pb::BenchJobRef { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    while c
        .get(pb::BenchJobRef { id: id.clone() })
        .await
        .unwrap()
        .into_inner()
        .status
        != "running"
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut g = pb::generate_service_client::GenerateServiceClient::new(d.channel().await);
    let mut s = g
        .generate(pb::GenerateRequest {
            model: MODEL.into(),
            input: Some(pb::generate_request::Input::Prompt("Hi".into())),
            max_tokens: Some(3),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut done = false;
    while let Some(m) = s.message().await.unwrap() {
        done |= matches!(m.event, Some(pb::generate_response::Event::Done(_)));
    }
    assert!(done, "a client was not served while a benchmark ran");
    assert!(
        c.cancel(pb::BenchJobRef { id: id.clone() })
            .await
            .unwrap()
            .into_inner()
            .cancelled
    );
    let mut status = String::new();
    while let Some(p) = watch.message().await.unwrap() {
        if let Some(r) = p.done {
            status = r.status;
        }
    }
    assert_eq!(status, "cancelled");
}

/// Perplexity computed with llama-cpp-2 alone, in this process, the same way minervad does:
/// chunks from an empty cache, second halves scored.
fn llama_cpp_perplexity(text: &str, chunk: usize) -> f64 {
    use llama_cpp_2::context::params::LlamaContextParams;
    use llama_cpp_2::llama_backend::LlamaBackend;
    use llama_cpp_2::llama_batch::LlamaBatch;
    use llama_cpp_2::model::params::LlamaModelParams;
    use llama_cpp_2::model::LlamaModel;
    llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default().with_logs_enabled(false));
    let backend = LlamaBackend::init().expect("backend");
    let model = LlamaModel::load_from_file(
        &backend,
        minerva_e2e::model_path(),
        &LlamaModelParams::default(),
    )
    .unwrap();
    let params = LlamaContextParams::default()
        .with_n_ctx(std::num::NonZeroU32::new(4096))
        .with_n_batch(2048)
        .with_n_ubatch(512)
        .with_n_threads(2)
        .with_n_threads_batch(2);
    let mut ctx = model.new_context(&backend, params).unwrap();
    let tokens = model.vocab().tokenize(text.as_bytes(), true, true);
    let (mut nll, mut n) = (0.0f64, 0u64);
    for c in 0..tokens.len() / chunk {
        let t = &tokens[c * chunk..(c + 1) * chunk];
        ctx.clear_kv_cache();
        let mut batch = LlamaBatch::new(2048, 1);
        for (j, tok) in t.iter().enumerate() {
            batch.add(*tok, j as i32, &[0], true).unwrap();
        }
        ctx.decode(&mut batch).unwrap();
        for j in chunk / 2..chunk - 1 {
            let row = ctx.get_logits_ith(j as i32);
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let sum: f64 = row.iter().map(|&l| (l as f64 - max).exp()).sum();
            nll += max + sum.ln() - row[t[j + 1].0 as usize] as f64;
            n += 1;
        }
    }
    (nll / n as f64).exp()
}

#[test]
fn perplexity_matches_llama_cpp_in_process_and_bad_input_is_refused() {
    let d = Daemon::start(&[]);
    let sample = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../bench/perplexity.txt"
    ))
    .unwrap();
    let text: String = sample.chars().take(3000).collect();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("text.txt");
    std::fs::write(&f, &text).unwrap();
    let r = d.cli_json(&[
        "bench",
        "perplexity",
        MODEL,
        f.to_str().unwrap(),
        "--chunk",
        "128",
    ]);
    assert_eq!(r["done"], true);
    let ppl = r["perplexity"].as_f64().unwrap();
    let chunks = r["chunks_total"].as_u64().unwrap();
    assert!(chunks >= 3, "{r}");
    assert_eq!(r["tokens_scored"].as_u64(), Some(chunks * 63));
    let direct = llama_cpp_perplexity(&text, 128);
    assert!(ppl.is_finite() && ppl > 1.0);
    assert!(
        (ppl - direct).abs() / direct < 1e-6,
        "minervad {ppl} vs llama-cpp-2 {direct}"
    );
    eprintln!("perplexity: minervad {ppl:.6}, llama-cpp-2 in process {direct:.6}");

    std::fs::write(&f, "").unwrap();
    let out = d.cli(&["bench", "perplexity", MODEL, f.to_str().unwrap()]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("empty"));
    std::fs::write(&f, "A short text.").unwrap();
    let out = d.cli(&["bench", "perplexity", MODEL, f.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("at least one chunk"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = d.cli(&[
        "bench",
        "perplexity",
        MODEL,
        f.to_str().unwrap(),
        "--chunk",
        "8",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("chunk_tokens"));
}
