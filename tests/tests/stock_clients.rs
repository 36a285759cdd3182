//! Stock gRPC clients, as users in other languages write them, over the Unix socket and over
//! loopback TCP, each with no channel options: Python's grpcio with stubs generated from proto/,
//! grpcurl (Go's grpc-go) with no stubs at all through server reflection, and Node's
//! @grpc/grpc-js (pure JavaScript) with the .proto files loaded at run time.
//!
//! Python's grpcio (gRPC's C core, as Ruby, PHP, C++ and C# use) sends the socket path as the
//! HTTP/2 `:authority` of a `unix:` target, which the daemon's HTTP/2 layer refused until
//! minervad put a front before it (minervad/src/api/authority.rs). The three clients are three
//! HTTP/2 and gRPC implementations, each with its own idea of a socket's authority.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use minerva_e2e::{
    assert_success, bin, client_node, client_python as python, grpcurl, models_dir, token_ids,
    Daemon, MODEL,
};

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
    assert_success(&out, "protoc");
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
    assert_success(&out, &format!("the Python client on {target}"));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn node_client(target: &str) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/node_client.js");
    let out = Command::new("node")
        .arg(script)
        .arg(target)
        .arg(MODEL)
        .env("NODE_PATH", client_node())
        .output()
        .expect("run node (Node.js)");
    assert_success(&out, &format!("the Node client on {target}"));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The token ids a client saw, in order.
fn client_ids(r: &serde_json::Value) -> Vec<u64> {
    r["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t.as_u64().expect("token id"))
        .collect()
}

/// The Python client's second request (the prompt as ids, logprobs, logit bias, stop token ids):
/// the same greedy tokens, each the likeliest of its sorted alternatives, and the prompt's ids
/// echoed.
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
    // Its third request: two samples under a JSON Schema, named; each answer parses and is
    // complete, and the id is free once both are done (Abort finds nothing).
    let samples = r["samples"].as_array().expect("samples");
    assert_eq!(samples.len(), 2, "{r}");
    for s in samples {
        let answer: serde_json::Value = serde_json::from_str(s["text"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("not JSON: {e}: {r}"));
        assert!(
            ["yes", "no"].contains(&answer["answer"].as_str().unwrap()),
            "{r}"
        );
        assert_eq!(s["complete"], true, "{r}");
        assert_eq!(s["request_id"], "python-samples", "{r}");
    }
    assert_eq!(r["ignore_eos_tokens"], 3, "{r}");
    let year = r["regex_text"].as_str().unwrap();
    assert!(
        year.len() == 4 && (year.starts_with("19") || year.starts_with("20")),
        "{r}"
    );
    assert!(
        ["red", "blue"].contains(&r["choice_text"].as_str().unwrap()),
        "{r}"
    );
    assert_eq!(
        r["abort_after_end"],
        serde_json::json!({"aborted": [], "unknown": ["python-samples"]}),
        "{r}"
    );
}

/// grpcurl with no stubs, on `address` (`-unix PATH` or `HOST:PORT`): reflection lists the
/// services, Status and a greedy Generate answer as for the CLI (`expected`, from
/// `minerva run --json`), and a missing model is NotFound.
fn check_grpcurl(address: &[&str], expected: &serde_json::Value) {
    let grpcurl = grpcurl();
    let what = address.join(" ");
    // grpcurl's flags come before the address, the service or method after it.
    let run = |flags: &[&str], after: &[&str]| {
        Command::new(&grpcurl)
            .args(["-plaintext", "-max-time", "300"])
            .args(flags)
            .args(address)
            .args(after)
            .output()
            .unwrap()
    };
    let ok = |out: std::process::Output, call: &str| {
        assert_success(&out, &format!("grpcurl {what} {call}"));
        out.stdout
    };

    let listed = String::from_utf8(ok(run(&[], &["list"]), "list")).unwrap();
    let listed: Vec<&str> = listed.lines().collect();
    for service in [
        "minerva.v1.BenchmarkService",
        "minerva.v1.DaemonService",
        "minerva.v1.GenerateService",
        "minerva.v1.ModelService",
        "grpc.health.v1.Health",
    ] {
        assert!(listed.contains(&service), "{what}: {listed:?}");
    }

    let status = ok(run(&[], &["minerva.v1.DaemonService/Status"]), "Status");
    let status: serde_json::Value = serde_json::from_slice(&status).unwrap();
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"), "{what}");

    // Each streamed message is one JSON object, with proto3 JSON's lowerCamelCase names.
    let request = serde_json::json!({"model": MODEL, "prompt": PROMPT, "maxTokens": 8});
    let call = "minerva.v1.GenerateService/Generate";
    let out = ok(run(&["-d", &request.to_string()], &[call]), call);
    let events: Vec<serde_json::Value> = serde_json::Deserializer::from_slice(&out)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    let ids: Vec<u64> = events
        .iter()
        .filter_map(|e| e.get("token"))
        // proto3 JSON leaves out zeros.
        .map(|t| t.get("id").map_or(0, |id| id.as_u64().unwrap()))
        .collect();
    assert_eq!(ids, token_ids(expected), "{what}: {events:?}");
    let done = &events.last().expect("events")["done"];
    assert_eq!(done["text"], expected["text"], "{what}: {done}");
    assert_eq!(done["generatedTokens"], 8, "{what}: {done}");

    // grpcurl exits with 64 + the status code.
    let out = run(
        &["-d", r#"{"model": "no-such-model", "prompt": "x"}"#],
        &["minerva.v1.GenerateService/Tokenize"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64 + 5), "{what}: {stderr}");
    assert!(stderr.contains("Code: NotFound"), "{what}: {stderr}");
}

/// A daemon on loopback TCP ([`Daemon`] listens on a socket); stopped when dropped.
struct TcpDaemon {
    child: Child,
    addr: String,
    _home: tempfile::TempDir,
}

impl TcpDaemon {
    fn start() -> Self {
        let home = tempfile::tempdir().unwrap();
        let addr = minerva_e2e::free_loopback_addr();
        let child = Command::new(bin("minervad"))
            .args(["--listen", &addr, "--threads", "2", "--models-dir"])
            .arg(models_dir())
            .env("MINERVA_HOME", home.path())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let d = TcpDaemon {
            child,
            addr,
            _home: home,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&d.addr).is_err() {
            assert!(Instant::now() < deadline, "no daemon on {}", d.addr);
            std::thread::sleep(Duration::from_millis(100));
        }
        d
    }

    /// Sends SIGTERM and waits; returns whether it exited cleanly.
    fn stop(mut self) -> bool {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap().success()
    }
}

impl Drop for TcpDaemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The three clients against one daemon on the socket, then one on TCP (one test: each client
/// starts in a second or two, and CI has two cores).
#[test]
fn stock_clients_in_python_go_and_node_work_on_the_socket_and_on_tcp() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    stubs(&python, dir.path());

    let d = Daemon::start(&[]);
    // What the CLI gets for the same greedy request.
    let expected = d.cli_json(&["run", MODEL, PROMPT, "--raw", "--max-tokens", "8"]);
    let expected_ids = token_ids(&expected);
    assert_eq!(expected_ids.len(), 8);
    let check = |client: &str, target: &str, r: &serde_json::Value| {
        assert_eq!(r["version"], env!("CARGO_PKG_VERSION"), "{client}: {r}");
        assert_eq!(client_ids(r), expected_ids, "{client} on {target}: {r}");
        assert_eq!(r["text"], expected["text"], "{client} on {target}");
        assert_eq!(r["generated_tokens"], 8, "{client} on {target}: {r}");
        assert_eq!(r["bad_model"], "NOT_FOUND", "{client} on {target}: {r}");
    };
    let socket = d.socket.display().to_string();
    for target in [format!("unix://{socket}"), format!("unix:{socket}")] {
        let r = python_client(&python, dir.path(), &target);
        check("Python", &target, &r);
        check_token_input_and_logprobs(&r, &expected_ids);
        check("Node", &target, &node_client(&target));
    }
    check_grpcurl(&["-unix", &socket], &expected);
    drop(d);

    // Loopback TCP: the authority is host:port, as HTTP/2 expects.
    let tcp = TcpDaemon::start();
    let r = python_client(&python, dir.path(), &tcp.addr);
    check("Python", &tcp.addr, &r);
    check_token_input_and_logprobs(&r, &expected_ids);
    check("Node", &tcp.addr, &node_client(&tcp.addr));
    check_grpcurl(&[&tcp.addr], &expected);
    assert!(tcp.stop(), "minervad on TCP did not exit cleanly");
}
