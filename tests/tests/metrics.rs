//! `minervad --metrics`: Prometheus text on loopback, parsed with the Prometheus project's own
//! parser (Python prometheus-client), and counters that move by exactly the tokens of the
//! requests made between two scrapes.

use std::collections::HashMap;
use std::process::{Command, Stdio};

use minerva_e2e::{
    client_python, free_loopback_addr, generate_ids, output_with_stdin, scrape_metrics, Daemon,
    MODEL,
};
use minerva_proto::v1 as pb;

/// Samples by name and sorted labels, as the Prometheus parser read them.
struct Parsed {
    types: HashMap<String, String>,
    samples: HashMap<(String, Vec<(String, String)>), f64>,
}

fn parse(text: &str) -> Parsed {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/parse_metrics.py");
    let out = output_with_stdin(
        Command::new(client_python())
            .arg(script)
            .stderr(Stdio::piped()),
        text.as_bytes(),
    );
    assert!(
        out.status.success(),
        "the Prometheus parser refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let types = v["types"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, t)| (k.clone(), t.as_str().unwrap().to_string()))
        .collect();
    let samples = v["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let mut labels: Vec<(String, String)> = s[1]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            labels.sort();
            (
                (s[0].as_str().unwrap().to_string(), labels),
                s[2].as_f64().unwrap(),
            )
        })
        .collect();
    Parsed { types, samples }
}

impl Parsed {
    /// The model's sample `name` (labels model and backend, plus `extra`); 0 when absent.
    fn get(&self, name: &str, extra: &[(&str, &str)]) -> f64 {
        let mut labels: Vec<(String, String)> = [("model", MODEL), ("backend", "llama.cpp")]
            .iter()
            .chain(extra)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        labels.sort();
        self.samples
            .get(&(name.to_string(), labels))
            .copied()
            .unwrap_or(0.0)
    }
}

fn request(prompt: &str, max_tokens: u32) -> pb::GenerateRequest {
    pb::GenerateRequest {
        model: MODEL.into(),
        input: Some(pb::generate_request::Input::Prompt(prompt.into())),
        max_tokens: Some(max_tokens),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_by_exactly_the_requests_tokens() {
    let addr = free_loopback_addr();
    let d = Daemon::start(&["--metrics", &addr]);
    // Load the model and make one request, so every series exists before the first scrape.
    generate_ids(&d, request("Hello", 2)).await;
    let before = parse(&scrape_metrics(&addr));
    assert_eq!(
        before.types["minerva:time_to_first_token_seconds"],
        "histogram"
    );
    assert_eq!(before.types["minerva:generation_tokens"], "counter");
    assert_eq!(before.get("minerva:model_load_seconds_count", &[]), 1.0);

    let mut generated = 0.0;
    let mut prompt = 0.0;
    let mut gaps = 0.0;
    for (p, n) in [("The three primary colors are", 6), ("Two plus two is", 4)] {
        let (ids, stats) = generate_ids(&d, request(p, n)).await;
        assert_eq!(ids.len(), n as usize);
        generated += f64::from(stats.generated_tokens);
        prompt += f64::from(stats.prompt_tokens - stats.cached_prompt_tokens);
        gaps += f64::from(stats.generated_tokens - 1);
    }
    // Counters move before each request's last event; the gauges settle once the worker has
    // retired the sequences, a moment after.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let after = loop {
        let after = parse(&scrape_metrics(&addr));
        let settled = after.get("minerva:num_requests_running", &[]) == 0.0
            && after.get("minerva:kv_cache_used_cells", &[]) == 0.0;
        if settled || std::time::Instant::now() > deadline {
            break after;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let moved =
        |name: &str, extra: &[(&str, &str)]| after.get(name, extra) - before.get(name, extra);
    assert_eq!(moved("minerva:generation_tokens_total", &[]), generated);
    assert_eq!(moved("minerva:prompt_tokens_total", &[]), prompt);
    let finished = [("finished_reason", "max_tokens")];
    assert_eq!(moved("minerva:request_success_total", &finished), 2.0);
    for h in [
        "time_to_first_token_seconds",
        "e2e_request_latency_seconds",
        "request_queue_time_seconds",
    ] {
        assert_eq!(moved(&format!("minerva:{h}_count"), &[]), 2.0, "{h}");
        assert!(
            moved(&format!("minerva:{h}_sum"), &[]) > 0.0 || h.contains("queue"),
            "{h}"
        );
    }
    assert_eq!(
        moved("minerva:inter_token_latency_seconds_count", &[]),
        gaps
    );
    assert_eq!(after.get("minerva:num_requests_running", &[]), 0.0);
    assert_eq!(after.get("minerva:num_requests_waiting", &[]), 0.0);
    assert_eq!(after.get("minerva:kv_cache_total_cells", &[]), 4096.0);
    // Nothing is cached without cache_prompt: the cells are all free again.
    assert_eq!(after.get("minerva:kv_cache_used_cells", &[]), 0.0);
    assert_eq!(moved("minerva:model_load_seconds_count", &[]), 0.0);
}

#[test]
fn metrics_only_on_loopback() {
    let out = Command::new(minerva_e2e::bin("minervad"))
        .args([
            "--metrics",
            "0.0.0.0:9090",
            "--socket",
            "/nonexistent/x.sock",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--metrics") && err.contains("loopback"),
        "{err}"
    );
}
