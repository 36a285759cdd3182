//! Pulls from Hugging Face, against a local stand-in for the Hub (tests/src/hub.rs) that serves
//! the real test model: a full pull by quantization tag that then generates, the cache reused
//! (no second download) and read offline, a download cut mid-file and resumed with a Range
//! request, a corrupt download rejected and never loadable, an unknown repository, and a whole
//! safetensors repository with its side files, then removed.

use std::path::{Path, PathBuf};

use minerva_e2e::hub::{ServedFile, StandInHub};
use minerva_e2e::{model_path, token_ids, Daemon};

const REPO: &str = "stand-in/SmolLM2-135M-Instruct-GGUF";
const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn model_bytes() -> Vec<u8> {
    std::fs::read(model_path()).expect("read the test model")
}

fn gguf_repo(hub: &StandInHub) -> ServedFile {
    let model = ServedFile::new(FILE, model_bytes(), true);
    hub.add_repo(
        REPO,
        COMMIT,
        vec![
            ServedFile::new("README.md", b"# SmolLM2 135M, Q4_1\n".to_vec(), false),
            model.clone(),
        ],
    );
    model
}

/// A daemon whose Hugging Face endpoint is the stand-in and whose cache is `hf_home`.
fn daemon(hub: &StandInHub, hf_home: &Path, extra_env: &[(&str, &str)]) -> Daemon {
    let endpoint = hub.endpoint();
    let home = hf_home.display().to_string();
    let mut env = vec![
        ("HF_ENDPOINT", endpoint.as_str()),
        ("HF_HOME", home.as_str()),
    ];
    env.extend_from_slice(extra_env);
    Daemon::start_with_env(&[], &env)
}

fn repo_dir(hf_home: &Path, repo: &str) -> PathBuf {
    hf_home
        .join("hub")
        .join(format!("models--{}", repo.replace('/', "--")))
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn resolve_gets(hub: &StandInHub) -> Vec<minerva_e2e::hub::Logged> {
    hub.log()
        .into_iter()
        .filter(|l| l.method == "GET" && l.target.contains("/resolve/"))
        .collect()
}

#[test]
fn pull_by_quant_tag_runs_reuses_the_cache_and_works_offline() {
    let hub = StandInHub::start();
    let model = gguf_repo(&hub);
    let hf_home = tempfile::tempdir().unwrap();
    let name = format!("hf:{REPO}:Q4_1");
    {
        let d = daemon(&hub, hf_home.path(), &[]);
        let done = d.cli_json(&["pull", &name]);
        assert_eq!(done["architecture"], "llama", "{done}");
        assert_eq!(done["quantization"], "Q4_1", "{done}");
        assert_eq!(done["file_size_bytes"], model.data.len() as u64);
        // The Hugging Face cache layout: a snapshot link to a blob named by the sha256.
        let snapshot = repo_dir(hf_home.path(), REPO)
            .join("snapshots")
            .join(COMMIT)
            .join(FILE);
        assert_eq!(done["path"], snapshot.display().to_string());
        assert_eq!(
            std::fs::read_link(&snapshot).unwrap(),
            PathBuf::from(format!("../../blobs/{}", model.sha256()))
        );
        assert_eq!(
            std::fs::read_to_string(repo_dir(hf_home.path(), REPO).join("refs/main")).unwrap(),
            COMMIT
        );
        // README.md is not part of a GGUF pull.
        assert!(!repo_dir(hf_home.path(), REPO)
            .join("snapshots")
            .join(COMMIT)
            .join("README.md")
            .exists());
        let gets = resolve_gets(&hub);
        assert_eq!(gets.len(), 1, "one download: {gets:?}");

        // It runs under its hf: name.
        let run = d.cli_json(&["run", &name, "Hello", "--max-tokens", "6"]);
        assert_eq!(token_ids(&run).len(), 6, "{run}");

        // Listed with its size on disk and source.
        let listed = d.listed(&format!("hf:{REPO}:{FILE}"));
        assert_eq!(listed["file_size_bytes"], model.data.len() as u64);
        assert_eq!(listed["source"], format!("hf:{REPO}@{COMMIT}"));

        // A second pull finds the blob and downloads nothing.
        d.cli_json(&["pull", &name]);
        assert_eq!(
            resolve_gets(&hub).len(),
            1,
            "the second pull downloaded again"
        );
    }
    // Offline: the cache answers, the stand-in is not asked.
    let before = hub.log().len();
    let d = daemon(&hub, hf_home.path(), &[("HF_HUB_OFFLINE", "1")]);
    let done = d.cli_json(&["pull", &name]);
    assert_eq!(done["quantization"], "Q4_1");
    assert_eq!(hub.log().len(), before, "offline pull made requests");
    let out = d.cli(&["pull", "hf:stand-in/not-cached:Q4_1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("HF_HUB_OFFLINE"), "{}", stderr(&out));
}

#[test]
fn a_cut_download_resumes_from_where_it_stopped() {
    let hub = StandInHub::start();
    let model = gguf_repo(&hub);
    let hf_home = tempfile::tempdir().unwrap();
    let d = daemon(&hub, hf_home.path(), &[]);
    let name = format!("hf:{REPO}:{FILE}");
    // Every attempt of the first pull (the first try and its resumes) is cut after 10 MB.
    let chunk = 10 << 20;
    hub.cut_downloads(chunk, 3);
    let out = d.cli(&["pull", &name]);
    assert!(!out.status.success(), "the cut pull succeeded");
    assert!(
        stderr(&out).contains("pull again to resume"),
        "{}",
        stderr(&out)
    );
    let partial = repo_dir(hf_home.path(), REPO)
        .join("blobs")
        .join(format!("{}.incomplete", model.sha256()));
    let kept = std::fs::metadata(&partial)
        .expect("partial download kept")
        .len();
    assert_eq!(kept, 3 * chunk, "each attempt appended what it got");
    // An incomplete file is never loadable.
    let out = d.cli(&["run", &name, "Hello", "--max-tokens", "2"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not pulled"), "{}", stderr(&out));

    let done = d.cli_json(&["pull", &name]);
    assert_eq!(done["file_size_bytes"], model.data.len() as u64);
    let gets = resolve_gets(&hub);
    let last = gets.last().unwrap();
    assert_eq!(
        last.range.as_deref(),
        Some(format!("bytes={kept}-{}", model.data.len() - 1).as_str()),
        "the resumed download asked for the rest only: {gets:?}"
    );
    assert!(!partial.exists());
    let blob = repo_dir(hf_home.path(), REPO)
        .join("blobs")
        .join(model.sha256());
    assert!(
        std::fs::read(blob).unwrap() == *model.data,
        "resumed file differs"
    );
}

#[test]
fn a_corrupt_download_is_rejected_and_never_loadable() {
    let hub = StandInHub::start();
    let model = gguf_repo(&hub);
    hub.corrupt(FILE);
    let hf_home = tempfile::tempdir().unwrap();
    let d = daemon(&hub, hf_home.path(), &[]);
    let name = format!("hf:{REPO}:Q4_1");
    let out = d.cli(&["pull", &name]);
    assert!(!out.status.success(), "a corrupt file was accepted");
    let err = stderr(&out);
    assert!(err.contains("DataLoss"), "{err}");
    assert!(
        err.contains(&model.sha256()),
        "names the expected sha256: {err}"
    );
    let blobs = repo_dir(hf_home.path(), REPO).join("blobs");
    let left: Vec<_> = std::fs::read_dir(&blobs)
        .map(|r| r.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "corrupt bytes kept: {left:?}");
    let out = d.cli(&["run", &name, "Hello", "--max-tokens", "2"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not pulled"), "{}", stderr(&out));
}

#[test]
fn unknown_repositories_and_files_are_not_found() {
    let hub = StandInHub::start();
    gguf_repo(&hub);
    let hf_home = tempfile::tempdir().unwrap();
    let d = daemon(&hub, hf_home.path(), &[]);
    let out = d.cli(&["pull", "hf:nobody/nothing:Q4_K_M"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("NotFound") && err.contains("nobody/nothing"),
        "{err}"
    );
    let out = d.cli(&["pull", &format!("hf:{REPO}:Q8_0")]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("NotFound") && err.contains(FILE),
        "lists what exists: {err}"
    );
    let out = d.cli(&["pull", "hf:no-owner"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("InvalidArgument"), "{}", stderr(&out));
    // The daemon still serves.
    d.cli_json(&["models", "list"]);
}

/// A minimal, valid safetensors file: one f32 tensor [2, 2].
fn tiny_safetensors() -> Vec<u8> {
    let header = br#"{"model.norm.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#;
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header);
    for v in [1.0f32, 2.0, 3.0, 4.0] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

#[test]
fn a_whole_safetensors_repository_is_pulled_listed_and_removed() {
    let hub = StandInHub::start();
    let repo = "stand-in/tiny-llama";
    let weights = ServedFile::new("model.safetensors", tiny_safetensors(), true);
    let config = ServedFile::new("config.json", br#"{"model_type":"llama"}"#.to_vec(), false);
    hub.add_repo(
        repo,
        COMMIT,
        vec![
            config.clone(),
            ServedFile::new("tokenizer.json", br#"{"version":"1.0"}"#.to_vec(), false),
            ServedFile::new("README.md", b"readme".to_vec(), false),
            ServedFile::new("onnx/model.onnx", vec![0; 64], true),
            weights.clone(),
        ],
    );
    let hf_home = tempfile::tempdir().unwrap();
    let d = daemon(&hub, hf_home.path(), &[]);
    let name = format!("hf:{repo}");
    let done = d.cli_json(&["pull", &name]);
    let snapshot = repo_dir(hf_home.path(), repo)
        .join("snapshots")
        .join(COMMIT);
    assert_eq!(done["path"], snapshot.display().to_string(), "{done}");
    assert_eq!(done["format"], "safetensors");
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        assert!(snapshot.join(f).is_file(), "{f} missing");
    }
    for f in ["README.md", "onnx/model.onnx"] {
        assert!(!snapshot.join(f).exists(), "{f} should not be pulled");
    }
    // Plain git files are named and checked by their git blob id.
    assert!(repo_dir(hf_home.path(), repo)
        .join("blobs")
        .join(config.git_oid())
        .is_file());
    assert_eq!(
        std::fs::read(snapshot.join("model.safetensors")).unwrap(),
        *weights.data
    );

    let listed = d.listed(&name);
    let on_disk = weights.data.len() + config.data.len() + br#"{"version":"1.0"}"#.len();
    assert_eq!(listed["file_size_bytes"], on_disk as u64, "{listed}");

    let removed = d.cli_json(&["models", "rm", &name]);
    assert_eq!(removed["freed_bytes"], on_disk as u64, "{removed}");
    assert!(!repo_dir(hf_home.path(), repo).exists());
    let list = d.cli_json(&["models", "list"]);
    assert!(
        !list["models"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == name),
        "still listed after rm: {list}"
    );
}

#[test]
fn a_gated_repository_needs_hf_token() {
    let hub = StandInHub::start();
    let model = gguf_repo(&hub);
    hub.gate(REPO, "hf_test_token");
    let name = format!("hf:{REPO}:Q4_1");
    let hf_home = tempfile::tempdir().unwrap();
    {
        let d = daemon(&hub, hf_home.path(), &[]);
        let out = d.cli(&["pull", &name]);
        assert!(
            !out.status.success(),
            "a gated repo was pulled without a token"
        );
        assert!(stderr(&out).contains("HF_TOKEN"), "{}", stderr(&out));
    }
    {
        let d = daemon(&hub, hf_home.path(), &[("HF_TOKEN", "hf_wrong")]);
        let out = d.cli(&["pull", &name]);
        assert!(!out.status.success(), "a wrong token was accepted");
        assert!(stderr(&out).contains("HF_TOKEN"), "{}", stderr(&out));
    }
    let d = daemon(&hub, hf_home.path(), &[("HF_TOKEN", "hf_test_token")]);
    let done = d.cli_json(&["pull", &name]);
    assert_eq!(done["file_size_bytes"], model.data.len() as u64);
}
