//! Asking the Hub what to fetch: the commit's file tree, the files a name selects, and what each
//! must be (size and hash); hf-hub's errors as the daemon's.

use futures::StreamExt;
use hf_hub::repository::RepoTreeEntry;

use super::check::{is_hex, Check, Expected};
use super::name::{has_quant_tag, HubRef, Selector};
use super::{Hub, Source};
use crate::error::{DaemonError, Result};

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

impl Hub {
    /// Size and hash for one file: the tree's LFS sha256 when hf-hub parsed it, else the
    /// resolve endpoint's `X-Linked-Etag` (which is the LFS sha256); the git blob id for
    /// files not in LFS.
    pub(super) async fn expected(&self, src: &Source<'_>, entry: TreeFile) -> Result<Expected> {
        let Some(lfs) = entry.lfs else {
            if !is_hex(&entry.oid, 40) {
                return Err(src.failed(format!(
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
                let meta = src
                    .repo
                    .get_file_metadata()
                    .filepath(entry.path.clone())
                    .revision(src.commit)
                    .send()
                    .await
                    .map_err(|e| hub_error(src.name, e))?;
                if !is_hex(&meta.etag, 64) {
                    return Err(src.failed(format!(
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
}

/// One file of a tree listing.
#[derive(Debug, Clone)]
pub(super) struct TreeFile {
    path: String,
    size: u64,
    oid: String,
    lfs: Option<hf_hub::repository::BlobLfsInfo>,
}

pub(super) async fn list_files(
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
pub(super) fn select(r: &HubRef, tree: &[TreeFile], name: &str) -> Result<Vec<TreeFile>> {
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

pub(super) fn is_transient(e: &hf_hub::HFError) -> bool {
    matches!(
        e,
        hf_hub::HFError::Request { .. } | hf_hub::HFError::RateLimited { .. }
    )
}

/// hf-hub's errors as the daemon's: unknown repos and files are NOT_FOUND, missing or refused
/// credentials say to set HF_TOKEN, the rest is UNAVAILABLE.
pub(super) fn hub_error(name: &str, e: hf_hub::HFError) -> DaemonError {
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
