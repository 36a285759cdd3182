//! The cache layout on disk (see [`super`]'s docs): resolving names from it, listing and
//! removing what it holds, and linking snapshots to blobs.

use std::path::{Path, PathBuf};

use super::check::is_hex;
use super::name::{display_name, has_quant_tag, HubRef, Selector};
use super::Hub;
use crate::error::{DaemonError, Result};

/// A repository in the cache, as `minerva models list` shows it.
#[derive(Debug, Clone)]
pub(crate) struct CachedModel {
    /// `hf:OWNER/REPO:FILE` for a GGUF file, `hf:OWNER/REPO` for a safetensors/MLX folder.
    pub(crate) name: String,
    pub(crate) path: PathBuf,
    pub(crate) size_bytes: u64,
    /// `hf:OWNER/REPO@<commit>`.
    pub(crate) source: String,
}

impl Hub {
    pub(super) fn repo_dir(&self, r: &HubRef) -> PathBuf {
        self.cache_dir.join(r.folder())
    }

    /// Resolves a name from the cache alone (never the network): the file, or the snapshot
    /// folder of a whole-repo pull.
    pub(crate) fn resolve_cached(&self, r: &HubRef) -> Result<PathBuf> {
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

    /// Repos and files in the cache, each with its size on disk.
    pub(crate) fn list(&self) -> Vec<CachedModel> {
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
    pub(crate) fn remove(&self, r: &HubRef) -> Result<u64> {
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

/// The commit of a path inside a snapshot (`.../snapshots/<commit>/...`).
pub(crate) fn snapshot_commit(path: &Path) -> Option<String> {
    let mut parts = path.components().map(|c| c.as_os_str().to_string_lossy());
    parts.find(|p| p == "snapshots")?;
    parts
        .next()
        .map(|c| c.into_owned())
        .filter(|c| is_hex(c, 40))
}

/// `snapshots/<commit>/<path>` -> `../../blobs/<blob>` (one more `..` per directory in `path`),
/// as huggingface_hub links them.
pub(super) fn link_snapshot(
    dir: &Path,
    commit: &str,
    path: &str,
    blob: &str,
) -> std::io::Result<()> {
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

pub(super) fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
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
