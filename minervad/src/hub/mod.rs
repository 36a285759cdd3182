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
//!
//! Here: [`Hub`] and [`Hub::pull`]. `name`: `hf:` names. `remote`: what the Hub lists and what
//! each file must be. `download`: resumable, verified downloads. `check`: the hashes.
//! `cache`: the layout above (resolve, list, remove).

mod cache;
mod check;
mod download;
mod name;
mod remote;

use std::path::PathBuf;

use crate::error::{DaemonError, Result};
use crate::pull::{PullEvent, PullPhase};

pub(crate) use cache::snapshot_commit;
use cache::write_atomically;
use check::is_hex;
pub(crate) use name::{display_name, HubRef};
use remote::{hub_error, list_files, select};

/// One pull's files at a pinned commit, and the name its errors report.
struct Source<'a> {
    repo: &'a hf_hub::HFRepository<hf_hub::RepoTypeModel>,
    commit: &'a str,
    /// The name as the pull was asked for.
    name: &'a str,
}

impl Source<'_> {
    fn failed(&self, detail: String) -> DaemonError {
        DaemonError::PullFailed {
            name: self.name.to_string(),
            detail,
        }
    }
}

pub(crate) struct Hub {
    client: hf_hub::HFClient,
    cache_dir: PathBuf,
    offline: bool,
}

impl Hub {
    /// Configured from the environment: `HF_ENDPOINT`, `HF_TOKEN`, `HF_HOME` / `HF_HUB_CACHE`,
    /// `HF_HUB_OFFLINE`.
    pub(crate) fn from_env() -> Result<Self> {
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

    pub(crate) fn endpoint(&self) -> &str {
        self.client.endpoint()
    }

    /// Pulls what `r` names (see the module docs), reporting progress; returns what
    /// [`Hub::resolve_cached`] will return from now on.
    pub(crate) async fn pull(
        &self,
        r: &HubRef,
        progress: &mut (dyn FnMut(PullEvent) + Send),
    ) -> Result<PathBuf> {
        let name = display_name(r);
        if self.offline {
            progress(PullEvent {
                phase: PullPhase::Resolve,
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
            phase: PullPhase::Resolve,
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
        let src = Source {
            repo: &repo,
            commit: &commit,
            name: &name,
        };
        let mut expected = Vec::with_capacity(wanted.len());
        for entry in wanted {
            expected.push(self.expected(&src, entry).await?);
        }
        let total: u64 = expected.iter().map(|e| e.size).sum();
        progress(PullEvent {
            phase: PullPhase::Resolve,
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
            self.fetch(&src, e, &dir, progress).await?;
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
}
