//! Downloading one file into the cache: appended to `<blob>.incomplete` from where it stopped,
//! hashed as it goes, resumed when the connection breaks, and made the blob only once verified.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use futures::StreamExt;

use super::cache::link_snapshot;
use super::check::{Check, Expected, Hasher};
use super::remote::{hub_error, is_transient};
use super::{Hub, Source};
use crate::error::{DaemonError, Result};
use crate::pull::{PullEvent, PullPhase};

/// How many times one pull resumes a download whose connection broke, before giving up (a later
/// pull resumes again from the bytes already on disk).
const RESUMES_PER_PULL: u32 = 2;

impl Hub {
    /// Makes `snapshots/<commit>/<path>` point at a verified blob, downloading (or resuming)
    /// it unless the blob is already there.
    pub(super) async fn fetch(
        &self,
        src: &Source<'_>,
        e: &Expected,
        dir: &Path,
        progress: &mut (dyn FnMut(PullEvent) + Send),
    ) -> Result<()> {
        let blobs = dir.join("blobs");
        std::fs::create_dir_all(&blobs)
            .map_err(|err| src.failed(format!("cannot create {}: {err}", blobs.display())))?;
        let blob = blobs.join(e.check.blob_name());
        let cached = std::fs::metadata(&blob).is_ok_and(|m| m.len() == e.size);
        if cached {
            progress(PullEvent {
                phase: PullPhase::Download,
                completed: e.size,
                total: e.size,
                message: format!("{}: already in the cache", e.path),
            });
        } else {
            self.download(src, e, &blob, progress).await?;
        }
        link_snapshot(dir, src.commit, &e.path, e.check.blob_name())
            .map_err(|err| src.failed(format!("cannot link {} into the snapshot: {err}", e.path)))
    }

    async fn download(
        &self,
        src: &Source<'_>,
        e: &Expected,
        blob: &Path,
        progress: &mut (dyn FnMut(PullEvent) + Send),
    ) -> Result<()> {
        let partial = PathBuf::from(format!("{}.incomplete", blob.display()));
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&partial)
            .map_err(|err| src.failed(format!("cannot open {}: {err}", partial.display())))?;
        let mut have = file.metadata().map(|m| m.len()).unwrap_or(0);
        if have > e.size {
            // Not a prefix of this file: start over.
            file.set_len(0).map_err(|err| {
                src.failed(format!("cannot truncate {}: {err}", partial.display()))
            })?;
            have = 0;
        }
        let mut hasher = Hasher::new(&e.check, e.size);
        if have > 0 {
            progress(PullEvent {
                phase: PullPhase::Download,
                completed: have,
                total: e.size,
                message: format!("{}: resuming at byte {have} of {}", e.path, e.size),
            });
            hash_prefix(&mut file, have, &mut hasher)
                .map_err(|err| src.failed(format!("cannot read {}: {err}", partial.display())))?;
        } else {
            progress(PullEvent {
                phase: PullPhase::Download,
                completed: 0,
                total: e.size,
                message: format!("{}: {} bytes", e.path, e.size),
            });
        }
        let mut resumes = 0;
        while have < e.size {
            match self
                .stream_into(src, e, have, &mut file, &mut hasher, progress)
                .await
            {
                Ok(n) => have += n,
                Err(StreamError::Broken { got, detail }) => {
                    have += got;
                    if resumes >= RESUMES_PER_PULL {
                        return Err(src.failed(format!(
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
                        phase: PullPhase::Download,
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
            .map_err(|err| src.failed(format!("cannot write {}: {err}", partial.display())))?;
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
                name: src.name.to_string(),
                path: PathBuf::from(&e.path),
                expected: format!("{kind} {want} (the Hub's metadata)"),
                got: format!("{kind} {got}"),
            });
        }
        std::fs::rename(&partial, blob)
            .map_err(|err| src.failed(format!("cannot move {} into place: {err}", e.path)))?;
        progress(PullEvent {
            phase: PullPhase::Verify,
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
    async fn stream_into(
        &self,
        src: &Source<'_>,
        e: &Expected,
        from: u64,
        file: &mut std::fs::File,
        hasher: &mut Hasher,
        progress: &mut (dyn FnMut(PullEvent) + Send),
    ) -> std::result::Result<u64, StreamError> {
        let (_, mut stream) = src
            .repo
            .download_file_stream()
            .filename(e.path.clone())
            .revision(src.commit.to_string())
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
                    phase: PullPhase::Download,
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
