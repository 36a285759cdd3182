//! Pulls from the Hugging Face Hub into the standard Hugging Face cache layout, so files other
//! tools downloaded are used in place and files Minerva downloads serve them too:
//!
//! ```text
//! $HF_HUB_CACHE (or $HF_HOME/hub, or ~/.cache/huggingface/hub)
//!   models--OWNER--REPO/
//!     blobs/<sha256 for LFS files, git blob sha1 otherwise>   file contents, written once verified
//!     blobs/<name>.incomplete                                 a download in progress (resumed)
//!     snapshots/<commit>/<path in repo> -> ../../blobs/<name>
//!     refs/<revision>                                         the commit the revision resolved to
//! ```
//!
//! hf-hub supplies the endpoint (`HF_ENDPOINT`), the token (`HF_TOKEN`), the cache directory,
//! repository info, tree listings and ranged (or Xet) byte streams. Minerva does the rest itself,
//! because hf-hub's cached download neither resumes nor checks content: a download appends to
//! `<blob>.incomplete` from where it stopped, hashes as it goes, and becomes the blob only when
//! its size and hash match the Hub's metadata (the LFS sha256 for LFS files, the git blob sha1
//! otherwise). Nothing else ever reads an `.incomplete` file, so a cut or corrupt download can't
//! be loaded.
//!
//! Names: `hf:OWNER/REPO` (a whole safetensors/MLX repo), `hf:OWNER/REPO:FILE` (one file) or
//! `hf:OWNER/REPO:Q4_K_M` (the GGUF with that quantization tag), each with an optional
//! `@REVISION` after the repo. `HF_HUB_OFFLINE=1` resolves from the cache only.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use futures::StreamExt;
use hf_hub::repository::RepoTreeEntry;
use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::error::{DaemonError, Result};
use crate::pull::PullEvent;

/// How many times one pull resumes a download whose connection broke, before giving up (a later
/// pull resumes again from the bytes already on disk).
const RESUMES_PER_PULL: u32 = 2;

/// Files a whole-repo pull fetches besides the weights.
const REPO_SIDE_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "chat_template.jinja",
];

/// What an `hf:` name asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRef {
    pub owner: String,
    pub repo: String,
    pub revision: String,
    pub selector: Option<Selector>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// A path in the repo.
    File(String),
    /// A GGUF quantization tag such as `Q4_K_M`, matched against GGUF file names.
    Quant(String),
}

impl HubRef {
    /// Parses `hf:OWNER/REPO[@REV][:FILE|:QUANT]`; `None` when `name` is not an `hf:` name.
    pub fn parse(name: &str) -> Option<Result<HubRef>> {
        let rest = name.strip_prefix("hf:")?;
        Some(
            Self::parse_rest(rest).map_err(|detail| DaemonError::InvalidRequest {
                field: "model",
                detail: format!(
                    "{name:?}: {detail}; expected hf:OWNER/REPO[@REVISION][:FILE or :QUANT]"
                ),
            }),
        )
    }

    fn parse_rest(rest: &str) -> std::result::Result<HubRef, String> {
        let (repo_part, selector) = match rest.split_once(':') {
            Some((r, "")) => return Err(format!("nothing after ':' in {r:?}")),
            Some((r, s)) => (r, Some(s)),
            None => (rest, None),
        };
        let (id, revision) = match repo_part.split_once('@') {
            Some((id, rev)) if !rev.is_empty() => (id, rev.to_string()),
            Some(_) => return Err("empty revision after '@'".into()),
            None => (repo_part, "main".to_string()),
        };
        let (owner, repo) = id
            .split_once('/')
            .ok_or_else(|| "the repository needs an owner: OWNER/REPO".to_string())?;
        let valid = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if !valid(owner) || !valid(repo) {
            return Err(format!("{id:?} is not a repository id"));
        }
        if !revision
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
            || revision.split('/').any(|p| p.is_empty() || p == "..")
        {
            return Err(format!("{revision:?} is not a revision"));
        }
        let selector = match selector {
            None => None,
            Some(s) if s.contains('.') || s.contains('/') => {
                if s.split('/').any(|p| p.is_empty() || p == "." || p == "..") {
                    return Err(format!("{s:?} is not a path inside the repository"));
                }
                Some(Selector::File(s.to_string()))
            }
            Some(s) => {
                if !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!(
                        "{s:?} is neither a file name nor a quantization tag"
                    ));
                }
                Some(Selector::Quant(s.to_ascii_uppercase()))
            }
        };
        Ok(HubRef {
            owner: owner.to_string(),
            repo: repo.to_string(),
            revision,
            selector,
        })
    }

    pub fn repo_id(&self) -> String {
        format!("{}/{}", self.owner, self.repo)
    }

    /// The cache folder name huggingface_hub uses.
    fn folder(&self) -> String {
        format!("models--{}--{}", self.owner, self.repo)
    }
}

/// Does the GGUF file name carry this quantization tag (`...-Q4_K_M.gguf`, `...Q4_K_M-00001-of-00002.gguf`)?
fn has_quant_tag(path: &str, tag: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path).to_ascii_uppercase();
    if !name.ends_with(".GGUF") {
        return false;
    }
    let stem = &name[..name.len() - 5];
    stem.split(['.', '-'])
        .any(|part| part == tag || part.trim_start_matches('_') == tag)
}

/// The Hub's word on what a file must be.
#[derive(Debug, Clone)]
struct Expected {
    path: String,
    size: u64,
    check: Check,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Check {
    /// LFS files: the sha256 of the contents (the LFS oid).
    Sha256(String),
    /// Plain git files: the git blob id, sha1("blob <len>\0" + contents).
    GitSha1(String),
}

impl Check {
    /// The blob file name, the same one huggingface_hub gives it (its ETag).
    fn blob_name(&self) -> &str {
        match self {
            Check::Sha256(h) | Check::GitSha1(h) => h,
        }
    }
}

enum Hasher {
    Sha256(Sha256),
    GitSha1(Sha1),
}

impl Hasher {
    fn new(check: &Check, size: u64) -> Self {
        match check {
            Check::Sha256(_) => Hasher::Sha256(Sha256::new()),
            Check::GitSha1(_) => {
                let mut h = Sha1::new();
                h.update(format!("blob {size}\0").as_bytes());
                Hasher::GitSha1(h)
            }
        }
    }
    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::GitSha1(h) => h.update(data),
        }
    }
    fn finish(self) -> String {
        match self {
            Hasher::Sha256(h) => hex(&h.finalize()),
            Hasher::GitSha1(h) => hex(&h.finalize()),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A repository in the cache, as `minerva models list` shows it.
#[derive(Debug, Clone)]
pub struct CachedModel {
    /// `hf:OWNER/REPO:FILE` for a GGUF file, `hf:OWNER/REPO` for a safetensors/MLX folder.
    pub name: String,
    pub path: PathBuf,
    pub size_bytes: u64,
    /// `hf:OWNER/REPO@<commit>`.
    pub source: String,
}

pub struct Hub {
    client: hf_hub::HFClient,
    cache_dir: PathBuf,
    offline: bool,
}

impl Hub {
    /// Configured from the environment: `HF_ENDPOINT`, `HF_TOKEN`, `HF_HOME` / `HF_HUB_CACHE`,
    /// `HF_HUB_OFFLINE`.
    pub fn from_env() -> Result<Self> {
        let client = hf_hub::HFClient::new().map_err(|e| {
            DaemonError::Internal(format!("cannot set up the Hugging Face client: {e}"))
        })?;
        let cache_dir = client.cache_dir().to_path_buf();
        let offline = std::env::var("HF_HUB_OFFLINE")
            .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"));
        Ok(Hub {
            client,
            cache_dir,
            offline,
        })
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    pub fn endpoint(&self) -> &str {
        self.client.endpoint()
    }

    fn repo_dir(&self, r: &HubRef) -> PathBuf {
        self.cache_dir.join(r.folder())
    }

    /// Resolves a name from the cache alone (never the network): the file, or the snapshot
    /// folder of a whole-repo pull.
    pub fn resolve_cached(&self, r: &HubRef) -> Result<PathBuf> {
        let not_pulled = || DaemonError::NotPulled {
            name: display_name(r),
        };
        let dir = self.repo_dir(r);
        let commit = if is_hex(&r.revision, 40) {
            r.revision.clone()
        } else {
            std::fs::read_to_string(dir.join("refs").join(&r.revision))
                .map_err(|_| not_pulled())?
                .trim()
                .to_string()
        };
        if !is_hex(&commit, 40) {
            return Err(not_pulled());
        }
        let snapshot = dir.join("snapshots").join(&commit);
        match &r.selector {
            None => {
                if snapshot.is_dir() {
                    Ok(snapshot)
                } else {
                    Err(not_pulled())
                }
            }
            Some(Selector::File(f)) => {
                let p = snapshot.join(f);
                // is_file follows the symlink: a dangling link (blob missing) is not pulled.
                if p.is_file() {
                    Ok(p)
                } else {
                    Err(not_pulled())
                }
            }
            Some(Selector::Quant(tag)) => {
                let mut found: Vec<PathBuf> = walk_files(&snapshot)
                    .into_iter()
                    .filter(|(rel, p)| has_quant_tag(rel, tag) && p.is_file())
                    .map(|(_, p)| p)
                    .collect();
                found.sort();
                found.into_iter().next().ok_or_else(not_pulled)
            }
        }
    }

    /// Pulls what `r` names (see the module docs), reporting progress; returns what
    /// [`Hub::resolve_cached`] will return from now on.
    pub async fn pull(
        &self,
        r: &HubRef,
        progress: &mut (dyn FnMut(PullEvent) + Send),
    ) -> Result<PathBuf> {
        let name = display_name(r);
        if self.offline {
            progress(PullEvent {
                phase: "resolve",
                completed: 0,
                total: 0,
                message: "HF_HUB_OFFLINE is set: using the local cache only".into(),
            });
            return self.resolve_cached(r).map_err(|_| DaemonError::PullFailed {
                name,
                detail: format!(
                    "HF_HUB_OFFLINE is set and the cache ({}) does not hold it",
                    self.cache_dir.display()
                ),
            });
        }
        progress(PullEvent {
            phase: "resolve",
            completed: 0,
            total: 0,
            message: format!("{} at {} ({})", r.repo_id(), r.revision, self.endpoint()),
        });
        let repo = self.client.model(&r.owner, &r.repo);
        let info = repo
            .info()
            .revision(r.revision.clone())
            .send()
            .await
            .map_err(|e| hub_error(&name, e))?;
        let commit = info
            .sha
            .filter(|s| is_hex(s, 40))
            .ok_or_else(|| DaemonError::PullFailed {
                name: name.clone(),
                detail: "the Hub's repository info carries no commit id".into(),
            })?;
        let tree = list_files(&repo, &commit, &name).await?;
        let wanted = select(r, &tree, &name)?;
        let mut expected = Vec::with_capacity(wanted.len());
        for entry in wanted {
            expected.push(self.expected(&repo, &commit, entry, &name).await?);
        }
        let total: u64 = expected.iter().map(|e| e.size).sum();
        progress(PullEvent {
            phase: "resolve",
            completed: 0,
            total,
            message: format!(
                "commit {commit}: {} file(s), {} bytes: {}",
                expected.len(),
                total,
                expected
                    .iter()
                    .map(|e| e.path.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
        let dir = self.repo_dir(r);
        for e in &expected {
            self.fetch(&repo, &commit, e, &dir, &name, progress).await?;
        }
        if r.revision != commit {
            let refs = dir.join("refs");
            write_atomically(&refs.join(&r.revision), commit.as_bytes()).map_err(|e| {
                DaemonError::PullFailed {
                    name: name.clone(),
                    detail: format!("cannot record the revision under {}: {e}", refs.display()),
                }
            })?;
        }
        let pinned = HubRef {
            revision: commit,
            ..r.clone()
        };
        self.resolve_cached(&pinned)
    }

    /// Size and hash for one file: the tree's LFS sha256 when hf-hub parsed it, else the
    /// resolve endpoint's `X-Linked-Etag` (which is the LFS sha256); the git blob id for
    /// files not in LFS.
    async fn expected(
        &self,
        repo: &hf_hub::HFRepository<hf_hub::RepoTypeModel>,
        commit: &str,
        entry: TreeFile,
        name: &str,
    ) -> Result<Expected> {
        let fail = |detail: String| DaemonError::PullFailed {
            name: name.to_string(),
            detail,
        };
        let Some(lfs) = entry.lfs else {
            if !is_hex(&entry.oid, 40) {
                return Err(fail(format!(
                    "the Hub lists {} with object id {:?}, not a git blob id",
                    entry.path, entry.oid
                )));
            }
            return Ok(Expected {
                path: entry.path,
                size: entry.size,
                check: Check::GitSha1(entry.oid.to_ascii_lowercase()),
            });
        };
        let size = lfs.size.unwrap_or(entry.size);
        let sha = match lfs.sha256.filter(|s| is_hex(s, 64)) {
            Some(s) => s,
            None => {
                let meta = repo
                    .get_file_metadata()
                    .filepath(entry.path.clone())
                    .revision(commit)
                    .send()
                    .await
                    .map_err(|e| hub_error(name, e))?;
                if !is_hex(&meta.etag, 64) {
                    return Err(fail(format!(
                        "the Hub gave no sha256 for {} (ETag {:?}); refusing to download what can't be verified",
                        entry.path, meta.etag
                    )));
                }
                meta.etag
            }
        };
        Ok(Expected {
            path: entry.path,
            size,
            check: Check::Sha256(sha.to_ascii_lowercase()),
        })
    }

    /// Makes `snapshots/<commit>/<path>` point at a verified blob, downloading (or resuming)
    /// it unless the blob is already there.
    async fn fetch(
        &self,
        repo: &hf_hub::HFRepository<hf_hub::RepoTypeModel>,
        commit: &str,
        e: &Expected,
        dir: &Path,
        name: &str,
        progress: &mut (dyn FnMut(PullEvent) + Send),
    ) -> Result<()> {
        let fail = |detail: String| DaemonError::PullFailed {
            name: name.to_string(),
            detail,
        };
        let blobs = dir.join("blobs");
        std::fs::create_dir_all(&blobs)
            .map_err(|err| fail(format!("cannot create {}: {err}", blobs.display())))?;
        let blob = blobs.join(e.check.blob_name());
        let cached = std::fs::metadata(&blob).is_ok_and(|m| m.len() == e.size);
        if cached {
            progress(PullEvent {
                phase: "download",
                completed: e.size,
                total: e.size,
                message: format!("{}: already in the cache", e.path),
            });
        } else {
            self.download(repo, commit, e, &blob, name, progress)
                .await?;
        }
        link_snapshot(dir, commit, &e.path, e.check.blob_name())
            .map_err(|err| fail(format!("cannot link {} into the snapshot: {err}", e.path)))
    }

    async fn download(
        &self,
        repo: &hf_hub::HFRepository<hf_hub::RepoTypeModel>,
        commit: &str,
        e: &Expected,
        blob: &Path,
        name: &str,
        progress: &mut (dyn FnMut(PullEvent) + Send),
    ) -> Result<()> {
        let fail = |detail: String| DaemonError::PullFailed {
            name: name.to_string(),
            detail,
        };
        let partial = PathBuf::from(format!("{}.incomplete", blob.display()));
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&partial)
            .map_err(|err| fail(format!("cannot open {}: {err}", partial.display())))?;
        let mut have = file.metadata().map(|m| m.len()).unwrap_or(0);
        if have > e.size {
            // Not a prefix of this file: start over.
            file.set_len(0)
                .map_err(|err| fail(format!("cannot truncate {}: {err}", partial.display())))?;
            have = 0;
        }
        let mut hasher = Hasher::new(&e.check, e.size);
        if have > 0 {
            progress(PullEvent {
                phase: "download",
                completed: have,
                total: e.size,
                message: format!("{}: resuming at byte {have} of {}", e.path, e.size),
            });
            hash_prefix(&mut file, have, &mut hasher)
                .map_err(|err| fail(format!("cannot read {}: {err}", partial.display())))?;
        } else {
            progress(PullEvent {
                phase: "download",
                completed: 0,
                total: e.size,
                message: format!("{}: {} bytes", e.path, e.size),
            });
        }
        let mut resumes = 0;
        while have < e.size {
            match self
                .stream_into(repo, commit, e, have, &mut file, &mut hasher, progress)
                .await
            {
                Ok(n) => have += n,
                Err(StreamError::Broken { got, detail }) => {
                    have += got;
                    if resumes >= RESUMES_PER_PULL {
                        return Err(fail(format!(
                            "{}: the download broke off at byte {have} of {} ({detail}); \
                             {} is kept: pull again to resume",
                            e.path,
                            e.size,
                            partial.display()
                        )));
                    }
                    resumes += 1;
                    tracing::warn!(file = %e.path, at = have, %detail, "download broke off; resuming");
                    progress(PullEvent {
                        phase: "download",
                        completed: have,
                        total: e.size,
                        message: format!(
                            "{}: connection lost ({detail}); resuming at byte {have}",
                            e.path
                        ),
                    });
                }
                Err(StreamError::Fatal(err)) => return Err(err),
            }
        }
        file.flush()
            .and_then(|_| file.sync_all())
            .map_err(|err| fail(format!("cannot write {}: {err}", partial.display())))?;
        drop(file);
        let got = hasher.finish();
        if got != e.check.blob_name() {
            // A corrupt download is never kept: it can't become a blob, and resuming it would
            // only append to bad bytes.
            let _ = std::fs::remove_file(&partial);
            let (kind, want) = match &e.check {
                Check::Sha256(h) => ("sha256", h),
                Check::GitSha1(h) => ("git blob sha1", h),
            };
            return Err(DaemonError::PullVerifyFailed {
                name: name.to_string(),
                path: PathBuf::from(&e.path),
                expected: format!("{kind} {want} (the Hub's metadata)"),
                got: format!("{kind} {got}"),
            });
        }
        std::fs::rename(&partial, blob)
            .map_err(|err| fail(format!("cannot move {} into place: {err}", e.path)))?;
        progress(PullEvent {
            phase: "verify",
            completed: e.size,
            total: e.size,
            message: format!(
                "{}: size and {} verified",
                e.path,
                match e.check {
                    Check::Sha256(_) => "sha256",
                    Check::GitSha1(_) => "git blob sha1",
                }
            ),
        });
        Ok(())
    }

    /// Streams bytes `from..size` of the file onto the end of `file`. Returns the bytes written;
    /// a stream that ends early or errors is `Broken` with the bytes it did write.
    #[allow(clippy::too_many_arguments)]
    async fn stream_into(
        &self,
        repo: &hf_hub::HFRepository<hf_hub::RepoTypeModel>,
        commit: &str,
        e: &Expected,
        from: u64,
        file: &mut std::fs::File,
        hasher: &mut Hasher,
        progress: &mut (dyn FnMut(PullEvent) + Send),
    ) -> std::result::Result<u64, StreamError> {
        let (_, mut stream) = repo
            .download_file_stream()
            .filename(e.path.clone())
            .revision(commit.to_string())
            .range(from..e.size)
            .send()
            .await
            .map_err(|err| {
                if is_transient(&err) {
                    StreamError::Broken {
                        got: 0,
                        detail: err.to_string(),
                    }
                } else {
                    StreamError::Fatal(hub_error(&e.path, err))
                }
            })?;
        let mut got = 0u64;
        let want = e.size - from;
        let mut last = std::time::Instant::now();
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(err) => {
                    return Err(StreamError::Broken {
                        got,
                        detail: err.to_string(),
                    })
                }
            };
            let room = (want - got) as usize;
            if chunk.len() > room {
                // More than the file's size: keep what fits and let the hash decide.
                let (fits, _) = chunk.split_at(room);
                write_chunk(file, hasher, fits, &e.path)?;
                got += fits.len() as u64;
                break;
            }
            write_chunk(file, hasher, &chunk, &e.path)?;
            got += chunk.len() as u64;
            if last.elapsed().as_millis() >= 100 {
                last = std::time::Instant::now();
                progress(PullEvent {
                    phase: "download",
                    completed: from + got,
                    total: e.size,
                    message: String::new(),
                });
            }
        }
        if got < want {
            return Err(StreamError::Broken {
                got,
                detail: format!("the server sent {got} of {want} bytes"),
            });
        }
        Ok(got)
    }

    /// Repos and files in the cache, each with its size on disk.
    pub fn list(&self) -> Vec<CachedModel> {
        let mut out = Vec::new();
        let Ok(dir) = std::fs::read_dir(&self.cache_dir) else {
            return out;
        };
        let mut repos: Vec<(String, String, PathBuf)> = dir
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let folder = e.file_name().to_str()?.to_string();
                let id = folder.strip_prefix("models--")?;
                let (owner, repo) = id.split_once("--")?;
                Some((owner.to_string(), repo.to_string(), e.path()))
            })
            .collect();
        repos.sort();
        for (owner, repo, path) in repos {
            let Ok(refs) = std::fs::read_dir(path.join("refs")) else {
                continue;
            };
            let mut commits: Vec<String> = refs
                .filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .map(|s| s.trim().to_string())
                .filter(|c| is_hex(c, 40))
                .collect();
            commits.sort();
            commits.dedup();
            for commit in commits {
                let snapshot = path.join("snapshots").join(&commit);
                let files = walk_files(&snapshot);
                let source = format!("hf:{owner}/{repo}@{commit}");
                let has_weights = files
                    .iter()
                    .any(|(rel, _)| rel.ends_with(".safetensors") || rel.ends_with(".bin"));
                if has_weights {
                    out.push(CachedModel {
                        name: format!("hf:{owner}/{repo}"),
                        size_bytes: files.iter().map(|(_, p)| file_len(p)).sum(),
                        path: snapshot.clone(),
                        source: source.clone(),
                    });
                }
                for (rel, p) in files.iter().filter(|(rel, _)| rel.ends_with(".gguf")) {
                    out.push(CachedModel {
                        name: format!("hf:{owner}/{repo}:{rel}"),
                        size_bytes: file_len(p),
                        path: p.clone(),
                        source: source.clone(),
                    });
                }
            }
        }
        out
    }

    /// Removes what a name points at: one file's snapshot link (and its blob when no other
    /// snapshot links to it), or a whole repository's cache folder. Returns bytes freed.
    pub fn remove(&self, r: &HubRef) -> Result<u64> {
        let dir = self.repo_dir(r);
        if !dir.is_dir() {
            return Err(DaemonError::NotPulled {
                name: display_name(r),
            });
        }
        if r.selector.is_none() {
            let size = dir_size(&dir);
            std::fs::remove_dir_all(&dir).map_err(|e| {
                DaemonError::Internal(format!("cannot remove {}: {e}", dir.display()))
            })?;
            return Ok(size);
        }
        let file = self.resolve_cached(r)?;
        let blob = std::fs::canonicalize(&file).ok();
        std::fs::remove_file(&file)
            .map_err(|e| DaemonError::Internal(format!("cannot remove {}: {e}", file.display())))?;
        let Some(blob) = blob else { return Ok(0) };
        let still_used = walk_files(&dir.join("snapshots"))
            .iter()
            .any(|(_, p)| std::fs::canonicalize(p).ok().as_ref() == Some(&blob));
        if still_used {
            return Ok(0);
        }
        let size = file_len(&blob);
        std::fs::remove_file(&blob)
            .map_err(|e| DaemonError::Internal(format!("cannot remove {}: {e}", blob.display())))?;
        Ok(size)
    }
}

enum StreamError {
    /// The connection broke or ended early after `got` bytes: resumable.
    Broken {
        got: u64,
        detail: String,
    },
    Fatal(DaemonError),
}

fn write_chunk(
    file: &mut std::fs::File,
    hasher: &mut Hasher,
    data: &[u8],
    path: &str,
) -> std::result::Result<(), StreamError> {
    file.write_all(data).map_err(|err| {
        StreamError::Fatal(DaemonError::PullFailed {
            name: path.to_string(),
            detail: format!("cannot write the download to disk: {err}"),
        })
    })?;
    hasher.update(data);
    Ok(())
}

fn hash_prefix(file: &mut std::fs::File, len: u64, hasher: &mut Hasher) -> std::io::Result<()> {
    file.seek(std::io::SeekFrom::Start(0))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file.take(len));
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(())
}

/// One file of a tree listing.
#[derive(Debug, Clone)]
struct TreeFile {
    path: String,
    size: u64,
    oid: String,
    lfs: Option<hf_hub::repository::BlobLfsInfo>,
}

async fn list_files(
    repo: &hf_hub::HFRepository<hf_hub::RepoTypeModel>,
    commit: &str,
    name: &str,
) -> Result<Vec<TreeFile>> {
    let stream = repo
        .list_tree()
        .revision(commit.to_string())
        .recursive(true)
        .send()
        .map_err(|e| hub_error(name, e))?;
    futures::pin_mut!(stream);
    let mut files = Vec::new();
    while let Some(entry) = stream.next().await {
        if let RepoTreeEntry::File {
            path,
            size,
            oid,
            lfs,
            ..
        } = entry.map_err(|e| hub_error(name, e))?
        {
            files.push(TreeFile {
                path,
                size,
                oid,
                lfs,
            });
        }
    }
    Ok(files)
}

/// The files a pull of `r` fetches.
fn select(r: &HubRef, tree: &[TreeFile], name: &str) -> Result<Vec<TreeFile>> {
    let ggufs = || {
        tree.iter()
            .filter(|f| f.path.ends_with(".gguf"))
            .map(|f| f.path.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let not_found = |what: String| DaemonError::UnknownModel {
        name: name.to_string(),
        known: what,
    };
    match &r.selector {
        Some(Selector::File(f)) => tree
            .iter()
            .find(|t| &t.path == f)
            .cloned()
            .map(|t| vec![t])
            .ok_or_else(|| not_found(format!("files in {}: {}", r.repo_id(), file_names(tree)))),
        Some(Selector::Quant(tag)) => {
            let found: Vec<TreeFile> = tree
                .iter()
                .filter(|t| has_quant_tag(&t.path, tag))
                .cloned()
                .collect();
            let shards = found.iter().all(|t| t.path.contains("-of-"));
            match found.len() {
                0 => Err(not_found(format!(
                    "no GGUF file tagged {tag} in {}; GGUF files: {}",
                    r.repo_id(),
                    ggufs()
                ))),
                1 => Ok(found),
                _ if shards => Ok(found),
                _ => Err(DaemonError::InvalidRequest {
                    field: "model",
                    detail: format!(
                        "{tag} matches several files in {}: {}; name one with hf:{}:FILE",
                        r.repo_id(),
                        found
                            .iter()
                            .map(|t| t.path.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        r.repo_id()
                    ),
                }),
            }
        }
        None => {
            let has = |ext: &str| tree.iter().any(|t| t.path.ends_with(ext));
            let weights_ext = if has(".safetensors") {
                ".safetensors"
            } else if has(".bin") {
                ".bin"
            } else if has(".gguf") {
                return Err(DaemonError::InvalidRequest {
                    field: "model",
                    detail: format!(
                        "{} holds GGUF files; pull one of them by tag or name, e.g. \
                         hf:{}:Q4_K_M (GGUF files: {})",
                        r.repo_id(),
                        r.repo_id(),
                        ggufs()
                    ),
                });
            } else {
                return Err(not_found(format!(
                    "{} has no model weights (.safetensors, .bin or .gguf): {}",
                    r.repo_id(),
                    file_names(tree)
                )));
            };
            Ok(tree
                .iter()
                .filter(|t| {
                    let base = t.path.rsplit('/').next().unwrap_or(&t.path);
                    t.path.ends_with(weights_ext)
                        || t.path.ends_with(&format!("{weights_ext}.index.json"))
                        || REPO_SIDE_FILES.contains(&base)
                })
                .cloned()
                .collect())
        }
    }
}

fn file_names(tree: &[TreeFile]) -> String {
    tree.iter()
        .map(|t| t.path.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_transient(e: &hf_hub::HFError) -> bool {
    matches!(
        e,
        hf_hub::HFError::Request { .. } | hf_hub::HFError::RateLimited { .. }
    )
}

/// hf-hub's errors as the daemon's: unknown repos and files are NOT_FOUND, missing or refused
/// credentials say to set HF_TOKEN, the rest is UNAVAILABLE.
fn hub_error(name: &str, e: hf_hub::HFError) -> DaemonError {
    use hf_hub::HFError as E;
    match e {
        E::RepoNotFound { repo_id, .. } => DaemonError::UnknownModel {
            name: name.to_string(),
            known: format!(
                "the Hub has no repository {repo_id:?} (or it is private: set HF_TOKEN)"
            ),
        },
        E::RevisionNotFound {
            repo_id, revision, ..
        } => DaemonError::UnknownModel {
            name: name.to_string(),
            known: format!("{repo_id} has no revision {revision:?}"),
        },
        E::EntryNotFound { path, repo_id, .. } => DaemonError::UnknownModel {
            name: name.to_string(),
            known: format!("{repo_id} has no file {path:?}"),
        },
        E::AuthRequired { .. } | E::Forbidden { .. } => DaemonError::PullFailed {
            name: name.to_string(),
            detail: format!(
                "{e}: the repository is gated or private; set HF_TOKEN to a token with access"
            ),
        },
        other => DaemonError::PullFailed {
            name: name.to_string(),
            detail: other.to_string(),
        },
    }
}

pub fn display_name(r: &HubRef) -> String {
    let rev = if r.revision == "main" {
        String::new()
    } else {
        format!("@{}", r.revision)
    };
    match &r.selector {
        None => format!("hf:{}{rev}", r.repo_id()),
        Some(Selector::File(f)) => format!("hf:{}{rev}:{f}", r.repo_id()),
        Some(Selector::Quant(q)) => format!("hf:{}{rev}:{q}", r.repo_id()),
    }
}

/// The commit of a path inside a snapshot (`.../snapshots/<commit>/...`).
pub fn snapshot_commit(path: &Path) -> Option<String> {
    let mut parts = path.components().map(|c| c.as_os_str().to_string_lossy());
    parts.find(|p| p == "snapshots")?;
    parts
        .next()
        .map(|c| c.into_owned())
        .filter(|c| is_hex(c, 40))
}

/// `snapshots/<commit>/<path>` -> `../../blobs/<blob>` (one more `..` per directory in `path`),
/// as huggingface_hub links them.
fn link_snapshot(dir: &Path, commit: &str, path: &str, blob: &str) -> std::io::Result<()> {
    let link = dir.join("snapshots").join(commit).join(path);
    if let Some(parent) = link.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let depth = path.matches('/').count() + 2;
    let mut target = PathBuf::new();
    for _ in 0..depth {
        target.push("..");
    }
    target.push("blobs");
    target.push(blob);
    match std::fs::symlink_metadata(&link) {
        Ok(_) => std::fs::remove_file(&link)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::os::unix::fs::symlink(target, &link)
}

fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("tmp-minerva");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

/// Files under `root` (following snapshot symlinks to blobs), with paths relative to it.
fn walk_files(root: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(|e| e.ok()) {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(root) {
                out.push((rel.to_string_lossy().into_owned(), p));
            }
        }
    }
    out.sort();
    out
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn dir_size(dir: &Path) -> u64 {
    // Blobs hold the bytes; snapshot links would count them twice.
    walk_files(&dir.join("blobs"))
        .iter()
        .map(|(_, p)| file_len(p))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> HubRef {
        HubRef::parse(s).expect("an hf: name").expect("valid")
    }

    #[test]
    fn parses_names() {
        assert!(HubRef::parse("smollm2-135m").is_none());
        let r = parse("hf:TheBloke/Mistral-7B-Instruct-v0.2-GGUF:Q4_K_M");
        assert_eq!(r.owner, "TheBloke");
        assert_eq!(r.repo, "Mistral-7B-Instruct-v0.2-GGUF");
        assert_eq!(r.revision, "main");
        assert_eq!(r.selector, Some(Selector::Quant("Q4_K_M".into())));
        let r = parse("hf:mistralai/Mistral-7B-v0.1@refs/pr/3");
        assert_eq!(r.revision, "refs/pr/3");
        assert_eq!(r.selector, None);
        let r = parse("hf:o/r:sub/model-q8_0.gguf");
        assert_eq!(
            r.selector,
            Some(Selector::File("sub/model-q8_0.gguf".into()))
        );
        assert_eq!(display_name(&r), "hf:o/r:sub/model-q8_0.gguf");
        for bad in [
            "hf:",
            "hf:repo",
            "hf:/r",
            "hf:o/",
            "hf:o/r:",
            "hf:o/r@",
            "hf:o/r:../x.gguf",
            "hf:o/r:a//b.gguf",
            "hf:o/../r",
            "hf:o/r@a/../b",
            "hf:o/r:Q4 K",
        ] {
            assert!(
                matches!(
                    HubRef::parse(bad),
                    Some(Err(DaemonError::InvalidRequest { .. }))
                ),
                "{bad} should be refused"
            );
        }
    }

    #[test]
    fn matches_quant_tags() {
        assert!(has_quant_tag(
            "mistral-7b-instruct-v0.2.Q4_K_M.gguf",
            "Q4_K_M"
        ));
        assert!(has_quant_tag("Model-Q8_0.gguf", "Q8_0"));
        assert!(has_quant_tag(
            "x/Model-Q4_K_M-00001-of-00002.gguf",
            "Q4_K_M"
        ));
        assert!(!has_quant_tag("mistral.Q4_K_S.gguf", "Q4_K_M"));
        assert!(!has_quant_tag("mistral.Q4_K_M.safetensors", "Q4_K_M"));
        assert!(!has_quant_tag("mistral.Q4_K_MM.gguf", "Q4_K_M"));
    }

    #[test]
    fn git_blob_hash_is_gits() {
        // `printf 'hello\n' | git hash-object --stdin`
        let mut h = Hasher::new(&Check::GitSha1(String::new()), 6);
        h.update(b"hello\n");
        assert_eq!(h.finish(), "ce013625030ba8dba906f756967f9e9ca394464a");
    }

    #[test]
    fn snapshot_links_are_relative_like_huggingface_hub() {
        let dir = tempfile::tempdir().unwrap();
        let commit = "a".repeat(40);
        std::fs::create_dir_all(dir.path().join("blobs")).unwrap();
        std::fs::write(dir.path().join("blobs/abc"), b"x").unwrap();
        link_snapshot(dir.path(), &commit, "sub/f.json", "abc").unwrap();
        let link = dir
            .path()
            .join("snapshots")
            .join(&commit)
            .join("sub/f.json");
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            PathBuf::from("../../../blobs/abc")
        );
        assert_eq!(std::fs::read(&link).unwrap(), b"x");
    }
}
