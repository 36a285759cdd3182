//! Harness for the end-to-end tests: builds and finds the real binaries, fetches the real test
//! model once (through `minerva pull`, cached under target/), and runs daemons on temporary
//! sockets.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use minerva_proto::addr::DaemonAddr;

pub mod hub;

/// The default test model, as the store names it.
pub const MODEL: &str = "smollm2-135m";

/// Directory holding the test binaries' own build (target/debug or target/release).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test binary>
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// Builds minervad and minerva (same profile as the tests) once per test process, so a plain
/// `cargo test` never runs stale binaries.
fn ensure_built() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--bins", "-p", "minervad", "-p", "minerva-cli"]);
        if cfg!(feature = "mlx") {
            cmd.args(["--features", "minervad/mlx"]);
        }
        if profile_dir().ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building minervad and minerva failed");
    });
}

pub fn bin(name: &str) -> PathBuf {
    ensure_built();
    let p = profile_dir().join(name);
    assert!(p.is_file(), "{} is missing", p.display());
    p
}

/// Where the tests keep pulled models between runs (ignored by git).
pub fn cache_home() -> PathBuf {
    std::env::var_os("MINERVA_TEST_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            profile_dir()
                .parent()
                .expect("target dir")
                .join("minerva-test-home")
        })
}

pub fn models_dir() -> PathBuf {
    cache_home().join("models")
}

/// Path of the test model's GGUF, pulled with the real `minerva pull` the first time.
pub fn model_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let path = models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
        if !path.is_file() {
            let daemon = Daemon::spawn(&[], &[], None);
            let out = daemon.cli(&["pull", MODEL]);
            assert!(
                out.status.success(),
                "minerva pull {MODEL} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(path.is_file(), "pull did not produce {}", path.display());
        path
    })
    .clone()
}

/// A minervad process on a temporary socket; stopped with SIGTERM when dropped.
///
/// Daemons of one test process run one at a time: llama.cpp's threads spin while they wait,
/// so two busy daemons on a 2-core machine would mostly measure each other.
pub struct Daemon {
    _turn: Option<std::sync::MutexGuard<'static, ()>>,
    child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts a daemon with the test models directory (the test model pulled), 2 threads, and
    /// `extra` arguments.
    pub fn start(extra: &[&str]) -> Self {
        Self::start_with_env(extra, &[])
    }

    /// As [`Daemon::start`], with environment variables set for the daemon (e.g. HF_ENDPOINT).
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Self {
        static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
        model_path();
        let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        Self::spawn(extra, env, Some(turn))
    }

    fn spawn(
        extra: &[&str],
        env: &[(&str, &str)],
        turn: Option<std::sync::MutexGuard<'static, ()>>,
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("minerva-e2e-")
            .tempdir()
            .expect("tempdir");
        let socket = dir.path().join("d.sock");
        let log = dir.path().join("minervad.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        std::fs::create_dir_all(models_dir()).expect("models dir");
        let child = Command::new(bin("minervad"))
            .arg("--socket")
            .arg(&socket)
            .arg("--models-dir")
            .arg(models_dir())
            .args(["--threads", "2"])
            .args(extra)
            .env("RUST_LOG", "info")
            .env("MINERVA_HOME", dir.path())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start minervad");
        let d = Daemon {
            _turn: turn,
            child,
            dir,
            socket,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !d.socket.exists() || std::os::unix::net::UnixStream::connect(&d.socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "minervad did not start: {}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    pub fn addr(&self) -> DaemonAddr {
        DaemonAddr::Socket(self.socket.clone())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs the real `minerva` CLI against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("minerva"))
            .arg("--addr")
            .arg(&self.socket)
            .arg("--no-autostart")
            .args(args)
            .env("MINERVA_HOME", self.dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("run minerva")
    }

    /// `minerva --json ...`, parsed; panics with stderr when it fails.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.cli(&all);
        assert!(
            out.status.success(),
            "minerva {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "minerva {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    pub async fn channel(&self) -> tonic::transport::Channel {
        minerva_proto::addr::connect(&self.addr())
            .await
            .expect("connect to minervad")
    }

    /// Sends SIGTERM and waits; returns whether it exited cleanly.
    pub fn stop(&mut self) -> bool {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// Token ids from a `minerva run --json` result.
pub fn token_ids(run: &serde_json::Value) -> Vec<u64> {
    run["tokens"]
        .as_array()
        .expect("tokens array")
        .iter()
        .map(|t| t["id"].as_u64().expect("token id"))
        .collect()
}

/// A committed test fixture: `tests/fixtures/NAME`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// One prompt of a fixture's `reference.json` (written by tests/fixtures/generate*.py).
pub struct Reference {
    pub text: String,
    pub input_ids: Vec<u32>,
    /// Logits at the prompt's last position.
    pub last_logits: Vec<f32>,
    /// Argmax at every prompt position (empty where the generator did not record it).
    pub argmax: Vec<u32>,
    /// Greedy continuation.
    pub greedy: Vec<u32>,
}

/// The prompts of `dir/reference.json`.
pub fn reference(dir: &Path) -> Vec<Reference> {
    use base64::Engine as _;
    let text = std::fs::read_to_string(dir.join("reference.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids = |x: &serde_json::Value| -> Vec<u32> {
        x.as_array()
            .into_iter()
            .flatten()
            .map(|n| n.as_u64().unwrap() as u32)
            .collect()
    };
    v["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(p["last_logits_f32_le_base64"].as_str().unwrap())
                .unwrap();
            Reference {
                text: p["text"].as_str().unwrap().to_string(),
                input_ids: ids(&p["input_ids"]),
                last_logits: raw
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
                argmax: ids(&p["argmax_per_position"]),
                greedy: ids(&p["greedy"]),
            }
        })
        .collect()
}

/// Context options for a direct (no daemon) test: one sequence, a batch of the whole context.
pub fn options(ctx: u32) -> minerva_core::ContextOptions {
    minerva_core::ContextOptions {
        context_length: ctx,
        threads: 2,
        batch_size: ctx,
        max_sequences: 1,
        kv_per_sequence: false,
    }
}

/// Index of the largest logit.
pub fn argmax(v: &[f32]) -> u32 {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i as u32)
        .unwrap()
}

/// A copy of a fixture folder (links followed), so a test may edit it.
pub fn copy_fixture(name: &str, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in std::fs::read_dir(fixture(name)).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
    }
}

/// Edits a model folder's config.json in place.
pub fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(p, v.to_string()).unwrap();
}

/// Generates 4 tokens from "Hello" on `model` (on `backend` when given); the generated-token
/// count from the final stats, or the call's error status.
pub async fn generate_count(
    c: &mut minerva_proto::v1::generate_service_client::GenerateServiceClient<
        tonic::transport::Channel,
    >,
    model: &str,
    backend: Option<&str>,
) -> Result<u32, tonic::Status> {
    use minerva_proto::v1 as pb;
    let req = pb::GenerateRequest {
        model: model.into(),
        input: Some(pb::generate_request::Input::Prompt("Hello".into())),
        max_tokens: Some(4),
        options: backend.map(|b| pb::LoadOptions {
            backend: Some(b.into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut s = c.generate(req).await?.into_inner();
    while let Some(m) = s.message().await? {
        if let Some(pb::generate_response::Event::Done(stats)) = m.event {
            return Ok(stats.generated_tokens);
        }
    }
    Err(tonic::Status::internal("stream ended without stats"))
}

/// Runs one Generate request on the daemon: the streamed token ids and the final stats.
pub async fn generate_ids(
    d: &Daemon,
    req: minerva_proto::v1::GenerateRequest,
) -> (Vec<u32>, minerva_proto::v1::GenerationStats) {
    use minerva_proto::v1 as pb;
    let mut c = pb::generate_service_client::GenerateServiceClient::new(d.channel().await);
    let mut s = c.generate(req).await.expect("generate").into_inner();
    let mut ids = Vec::new();
    while let Some(m) = s.message().await.expect("stream") {
        match m.event {
            Some(pb::generate_response::Event::Token(t)) => ids.push(t.id),
            Some(pb::generate_response::Event::Done(stats)) => return (ids, stats),
            None => {}
        }
    }
    panic!("the stream ended without stats");
}
