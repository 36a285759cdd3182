//! The daemon as a service: cancellation, keep-alive, model management, socket, health and
//! reflection, autostart, graceful shutdown.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use minerva_e2e::{
    assert_success, bin, generate_ids, model_path, models_dir, output_with_stdin, Daemon, MODEL,
};
use minerva_proto::v1 as pb;
use pb::generate_service_client::GenerateServiceClient;

fn long_request() -> pb::GenerateRequest {
    pb::GenerateRequest {
        model: MODEL.into(),
        input: Some(pb::generate_request::Input::Prompt(
            "Once upon a time".into(),
        )),
        max_tokens: Some(2000),
        ..Default::default()
    }
}

/// The `generated=N` of the daemon's "generation cancelled" log line, once it appears.
fn cancelled_after(d: &Daemon) -> Option<u64> {
    let log = d.log_text();
    let line = log.lines().find(|l| l.contains("generation cancelled"))?;
    line.split("generated=")
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_by_id_from_another_connection_ends_the_stream_within_two_tokens() {
    model_path();
    let d = Daemon::start(&[]);
    let mut a = GenerateServiceClient::new(d.channel().await);
    let named = pb::GenerateRequest {
        request_id: "story-1".into(),
        ..long_request()
    };
    let mut stream = a.generate(named.clone()).await.unwrap().into_inner();
    let mut seen = 0u32;
    while seen < 5 {
        if let Some(pb::generate_response::Event::Token(t)) =
            stream.message().await.unwrap().and_then(|m| m.event)
        {
            seen = t.index + 1;
        }
    }
    // Another connection: the id is taken while the first runs; then abort it.
    let mut b = GenerateServiceClient::new(d.channel().await);
    let taken = b.generate(named.clone()).await.expect_err("a duplicate id");
    assert_eq!(taken.code(), tonic::Code::AlreadyExists, "{taken:?}");
    assert!(taken.message().contains("story-1"), "{taken:?}");
    let abort = pb::AbortRequest {
        request_ids: vec!["story-1".into(), "no-such-request".into()],
    };
    let r = b.abort(abort).await.unwrap().into_inner();
    assert_eq!(r.aborted, ["story-1"]);
    assert_eq!(r.unknown, ["no-such-request"]);
    let mut after = 0;
    let done = loop {
        match stream.message().await.unwrap().and_then(|m| m.event) {
            Some(pb::generate_response::Event::Token(_)) => after += 1,
            Some(pb::generate_response::Event::Done(s)) => break s,
            _ => panic!("the stream ended without its final event"),
        }
    };
    eprintln!("{after} tokens arrived after the abort was answered");
    assert_eq!(done.stop_reason, pb::StopReason::Aborted as i32);
    assert_eq!(done.request_id, "story-1");
    assert!(after <= 2, "{after} tokens after the abort");
    assert!(done.generated_tokens < 2000);

    // The id is free again, and the daemon serves it to the end; the log names it.
    let mut short = named;
    short.max_tokens = Some(3);
    let (_, last) = generate_ids(&d, short).await;
    assert_eq!(last.generated_tokens, 3);
    assert_eq!(last.request_id, "story-1");
    assert!(d.log_text().contains("story-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_cancels_its_generation_and_the_worker_serves_the_next() {
    model_path();
    let d = Daemon::start(&[]);
    let mut c = GenerateServiceClient::new(d.channel().await);
    let mut stream = c.generate(long_request()).await.unwrap().into_inner();
    let mut seen = 0u64;
    while seen < 5 {
        if let Some(pb::generate_response::Event::Token(t)) =
            stream.message().await.unwrap().and_then(|m| m.event)
        {
            seen = u64::from(t.index) + 1;
        }
    }
    drop(stream);
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(30);
    let generated = loop {
        if let Some(n) = cancelled_after(&d) {
            break n;
        }
        assert!(
            Instant::now() < deadline,
            "no cancellation logged: {}",
            d.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The client may lag the worker by a token or two of buffering; beyond that the worker
    // must notice within a token or two that the client is gone.
    assert!(
        generated <= seen + 4,
        "generation went on after the client left: {generated} tokens, the client read {seen}"
    );
    eprintln!("client read {seen} tokens; the worker stopped after {generated}");

    // The same worker serves the next request, complete.
    let mut req = long_request();
    req.max_tokens = Some(8);
    let (_, stats) = generate_ids(&d, req).await;
    assert_eq!(stats.generated_tokens, 8);
    assert!(stats.load_ms.is_none(), "the model stayed loaded");
}

fn loaded(d: &Daemon) -> Vec<String> {
    let s = d.cli_json(&["status"]);
    s["loaded_models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn idle_models_unload_after_their_keep_alive_and_negative_means_forever() {
    model_path();
    let d = Daemon::start(&["--keep-alive", "1s"]);
    d.cli_json(&["run", MODEL, "Hi", "--max-tokens", "2"]);
    assert_eq!(loaded(&d), vec![MODEL.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !loaded(&d).is_empty() {
        assert!(Instant::now() < deadline, "model never unloaded");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Per request: negative keeps it loaded past the daemon's 1 s default.
    d.cli_json(&[
        "run",
        MODEL,
        "Hi",
        "--max-tokens",
        "2",
        "--keep-alive",
        "-1",
    ]);
    std::thread::sleep(Duration::from_millis(2500));
    let s = d.cli_json(&["models", "show", MODEL]);
    assert_eq!(s["loaded"], true);
    assert_eq!(s["keep_alive_forever"], true);
    // Unload on request.
    let r = d.cli_json(&["models", "unload", MODEL]);
    assert_eq!(r["unloaded"], true);
    assert!(loaded(&d).is_empty());
}

#[test]
fn models_can_be_listed_shown_loaded_and_unloaded() {
    let path = model_path();
    let d = Daemon::start(&[]);
    let m = d.listed(MODEL);
    assert_eq!(
        m["file_size_bytes"],
        std::fs::metadata(&path).unwrap().len()
    );
    assert_eq!(m["quantization"], "Q4_1");
    assert_eq!(m["loaded"], false);

    let show = d.cli_json(&["models", "show", MODEL]);
    assert_eq!(show["architecture"], "llama");
    assert_eq!(show["format"], "gguf");
    assert_eq!(show["context_length"], 8192);
    assert_eq!(show["layer_count"], 30);
    assert_eq!(show["has_chat_template"], true);
    let params = show["parameter_count"].as_u64().unwrap();
    assert!((130_000_000..140_000_000).contains(&params), "{params}");
    assert!(
        show["estimated_memory_bytes"].as_u64().unwrap()
            > show["file_size_bytes"].as_u64().unwrap()
    );

    // By path as well as by name.
    let by_path = d.cli_json(&["models", "show", path.to_str().unwrap()]);
    assert_eq!(by_path["parameter_count"], show["parameter_count"]);

    let load = d.cli_json(&["models", "load", MODEL, "--ctx", "1024", "--threads", "1"]);
    assert_eq!(load["loaded_now"], true);
    assert!(load["load_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(load["model"]["loaded_options"]["context_length"], 1024);
    let again = d.cli_json(&["models", "load", MODEL]);
    assert_eq!(again["loaded_now"], false, "already loaded: no reload");
    let show = d.cli_json(&["models", "show", MODEL]);
    assert_eq!(show["loaded"], true);
    assert_eq!(show["estimated_for_context"], 1024);
    assert_eq!(d.cli_json(&["models", "unload", MODEL])["unloaded"], true);
    assert_eq!(d.cli_json(&["models", "unload", MODEL])["unloaded"], false);

    // The human table names the model and its quantization.
    let out = d.cli(&["models", "list"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("NAME") && table.contains(MODEL) && table.contains("Q4_1"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_is_private_and_health_and_reflection_answer() {
    let d = Daemon::start(&[]);
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");

    let ch = d.channel().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    for service in ["", "minerva.v1.GenerateService", "minerva.v1.ModelService"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }

    // Reflection lists the services, as `grpcurl list` does.
    use tonic_reflection_client::*;
    let services = list_services(ch).await;
    for s in [
        "minerva.v1.GenerateService",
        "minerva.v1.ModelService",
        "minerva.v1.DaemonService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.iter().any(|x| x == s),
            "{s} missing from {services:?}"
        );
    }
}

/// A minimal reflection client (the request/response types come from the .proto the
/// reflection service itself publishes, compiled by tonic-reflection).
mod tonic_reflection_client {
    pub async fn list_services(ch: tonic::transport::Channel) -> Vec<String> {
        use tonic_reflection_pb::server_reflection_client::ServerReflectionClient;
        use tonic_reflection_pb::server_reflection_request::MessageRequest;
        use tonic_reflection_pb::server_reflection_response::MessageResponse;
        use tonic_reflection_pb::ServerReflectionRequest;
        let mut client = ServerReflectionClient::new(ch);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut resp = client
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .unwrap()
            .into_inner();
        let msg = resp.message().await.unwrap().expect("a reflection answer");
        match msg.message_response {
            Some(MessageResponse::ListServicesResponse(l)) => {
                l.service.into_iter().map(|s| s.name).collect()
            }
            other => panic!("unexpected reflection answer {other:?}"),
        }
    }
    use tonic_reflection::pb::v1 as tonic_reflection_pb;
}

#[test]
fn sigterm_shuts_down_cleanly_and_removes_the_socket() {
    let mut d = Daemon::start(&[]);
    assert!(
        d.stop(),
        "minervad did not exit 0 on SIGTERM: {}",
        d.log_text()
    );
    assert!(!d.socket.exists());
    assert!(d.log_text().contains("shut down cleanly"));
}

#[test]
fn minerva_run_starts_a_daemon_when_none_answers() {
    model_path();
    let home = tempfile::tempdir().unwrap();
    let socket = home.path().join("auto.sock");
    let run = |args: &[&str]| {
        std::process::Command::new(bin("minerva"))
            .arg("--addr")
            .arg(&socket)
            .args(args)
            .env("MINERVA_HOME", home.path())
            .env("MINERVA_MODELS", models_dir())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let out = run(&["--no-autostart", "status"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no daemon answers"));
    let out = run(&["run", MODEL, "Hi", "--max-tokens", "4"]);
    assert_success(&out, "minerva run");
    assert!(String::from_utf8_lossy(&out.stderr).contains("started minervad"));
    assert!(!out.stdout.is_empty());
    let status = run(&["--json", "status"]);
    assert!(status.status.success());
    let s: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let pid = s["pid"].as_u64().unwrap() as i32;
    // SAFETY: stopping the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while socket.exists() {
        assert!(Instant::now() < deadline, "autostarted daemon did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn loopback_tcp_works_when_asked_and_other_addresses_are_refused() {
    let addr = minerva_e2e::free_loopback_addr();
    let mut daemon = std::process::Command::new(bin("minervad"))
        .args(["--listen", &addr, "--models-dir"])
        .arg(models_dir())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://{addr}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let out = std::process::Command::new(bin("minerva"))
            .args(["--addr", &url, "--json", "status"])
            .output()
            .unwrap();
        if out.status.success() {
            break serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap();
        }
        assert!(Instant::now() < deadline, "no answer on {url}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status["listen"], url.as_str());
    // SAFETY: stopping the daemon this test started.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    assert!(daemon.wait().unwrap().success());

    let out = std::process::Command::new(bin("minervad"))
        .args(["--listen", "0.0.0.0:50123"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only loopback"));
}

#[test]
fn run_reads_a_piped_prompt_and_chats_on_a_terminal() {
    let d = Daemon::start(&[]);
    // Piped stdin is the prompt.
    let out = output_with_stdin(
        std::process::Command::new(bin("minerva"))
            .arg("--addr")
            .arg(&d.socket)
            .args([
                "--no-autostart",
                "--json",
                "run",
                MODEL,
                "--max-tokens",
                "8",
            ]),
        b"Hello, how are you?",
    );
    assert!(out.status.success());
    let piped: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let direct = d.cli_json(&["run", MODEL, "Hello, how are you?", "--max-tokens", "8"]);
    assert_eq!(piped["text"], direct["text"]);

    // On a terminal (script(1) gives it one): a chat loop with history, left with /bye.
    let cmd = format!(
        "{} --addr {} --no-autostart run {MODEL} --max-tokens 8",
        bin("minerva").display(),
        d.socket.display()
    );
    let mut child = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("script(1) from util-linux");
    use std::io::Write;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"Hello, how are you?\n").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    stdin.write_all(b"/bye\n").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(screen.contains(">>> "), "{screen}");
    let first_line = direct["text"]
        .as_str()
        .unwrap()
        .trim()
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        screen.contains(&first_line),
        "chat answer {first_line:?} not on screen: {screen}"
    );
}
