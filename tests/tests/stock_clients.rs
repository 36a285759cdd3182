//! Stock gRPC clients, as users in other languages write them: stubs generated from proto/, a
//! channel with no options, over the Unix socket and over loopback TCP.
//!
//! Python's grpcio (gRPC's C core, as Ruby, PHP, C++ and C# use) sends the socket path as the
//! HTTP/2 `:authority` of a `unix:` target, which the daemon's HTTP/2 layer refused until
//! minervad put a front before it (minervad/src/api/authority.rs).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use minerva_e2e::{bin, client_python as python, models_dir, token_ids, Daemon, MODEL};

const PROMPT: &str = "The capital of France is";

/// Python stubs for proto/minerva/v1, made with grpcio-tools' protoc.
fn stubs(python: &Path, dir: &Path) {
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let files: Vec<PathBuf> = std::fs::read_dir(proto.join("minerva/v1"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    let out = Command::new(python)
        .args(["-m", "grpc_tools.protoc"])
        .arg(format!("-I{}", proto.display()))
        .arg(format!("--python_out={}", dir.display()))
        .arg(format!("--grpc_python_out={}", dir.display()))
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "protoc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn python_client(python: &Path, stubs: &Path, target: &str) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python_client.py");
    let out = Command::new(python)
        .arg(script)
        .arg(stubs)
        .arg(target)
        .arg(MODEL)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the Python client failed on {target}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The token ids the Python client saw, in order.
fn client_ids(r: &serde_json::Value) -> Vec<u64> {
    r["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t.as_u64().expect("token id"))
        .collect()
}

/// The client's second request (the prompt as ids, logprobs, logit bias, stop token ids): the
/// same greedy tokens, each the likeliest of its sorted alternatives, and the prompt's ids echoed.
fn check_token_input_and_logprobs(r: &serde_json::Value, expected: &[u64]) {
    let scored = r["by_ids"].as_array().expect("by_ids");
    let ids: Vec<u64> = scored.iter().map(|t| t["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, expected, "{r}");
    for t in scored {
        let top = t["top"].as_array().unwrap();
        assert_eq!(top.len(), 3, "{r}");
        assert_eq!(top[0][0], t["id"], "greedy takes the likeliest: {r}");
        assert!(t["logprob"].as_f64().unwrap() <= 0.0);
        let lps: Vec<f64> = top.iter().map(|a| a[1].as_f64().unwrap()).collect();
        assert!(lps.windows(2).all(|w| w[0] >= w[1]), "sorted: {r}");
    }
    let prompt = r["prompt_ids"].as_array().unwrap();
    assert_eq!(
        r["prompt_logprob_ids"].as_array().unwrap()[..],
        prompt[1..],
        "{r}"
    );
}

#[test]
fn a_stock_python_grpcio_client_works_on_the_socket_and_on_tcp() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    stubs(&python, dir.path());

    let d = Daemon::start(&[]);
    // What the CLI gets for the same greedy request.
    let expected = d.cli_json(&["run", MODEL, PROMPT, "--raw", "--max-tokens", "8"]);
    let expected_ids = token_ids(&expected);
    assert_eq!(expected_ids.len(), 8);
    let socket = d.socket.display().to_string();
    for target in [format!("unix://{socket}"), format!("unix:{socket}")] {
        let r = python_client(&python, dir.path(), &target);
        assert_eq!(r["version"], env!("CARGO_PKG_VERSION"), "{r}");
        assert_eq!(client_ids(&r), expected_ids, "{target}: {r}");
        assert_eq!(r["text"], expected["text"], "{target}");
        assert_eq!(r["generated_tokens"], 8);
        assert_eq!(r["bad_model"], "NOT_FOUND", "{target}: {r}");
        check_token_input_and_logprobs(&r, &expected_ids);
    }
    drop(d);

    // Loopback TCP: the authority is host:port, as HTTP/2 expects.
    let addr = minerva_e2e::free_loopback_addr();
    let mut daemon = Command::new(bin("minervad"))
        .args(["--listen", &addr, "--threads", "2", "--models-dir"])
        .arg(models_dir())
        .env("MINERVA_HOME", dir.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "no daemon on {addr}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = python_client(&python, dir.path(), &addr);
    assert_eq!(client_ids(&r), expected_ids, "tcp: {r}");
    // SAFETY: stopping the daemon this test started.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    assert!(daemon.wait().unwrap().success());
}
