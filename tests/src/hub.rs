//! A local stand-in for the Hugging Face Hub, for pull tests on a machine that can't reach it.
//!
//! It serves the endpoints hf-hub calls, in the Hub's own formats: repository info
//! (`GET /api/models/OWNER/REPO[/revision/REV]`), the recursive tree listing
//! (`GET /api/models/OWNER/REPO/tree/REV`, with each LFS file's `lfs.oid` sha256) and file
//! resolution (`HEAD`/`GET /OWNER/REPO/resolve/REV/PATH`, with `ETag`, `X-Linked-Etag`,
//! `X-Linked-Size`, `X-Repo-Commit`, and `Range` requests answered 206). Unknown repositories
//! are 404, as on the Hub.
//!
//! Two faults can be switched on: cutting a number of file downloads after some bytes (the
//! connection closes mid-body), and serving a file with one byte flipped while its metadata
//! keeps the true sha256. Every request is logged so tests can check what was asked (for
//! instance, that a resumed download asked for `Range: bytes=N-` with N > 0).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};

use sha2::{Digest, Sha256};

/// One file of a served repository.
#[derive(Clone)]
pub struct ServedFile {
    pub path: String,
    pub data: Arc<Vec<u8>>,
    /// Stored in LFS (weights): listed with `lfs.oid` = sha256 and resolved with X-Linked-Etag.
    pub lfs: bool,
}

impl ServedFile {
    pub fn new(path: &str, data: Vec<u8>, lfs: bool) -> Self {
        ServedFile {
            path: path.to_string(),
            data: Arc::new(data),
            lfs,
        }
    }
    pub fn sha256(&self) -> String {
        hex(&Sha256::digest(&*self.data))
    }
    /// The git blob id, sha1("blob <len>\0" + data).
    pub fn git_oid(&self) -> String {
        use sha1::Sha1;
        let mut h = Sha1::new();
        h.update(format!("blob {}\0", self.data.len()).as_bytes());
        h.update(&*self.data);
        hex(&h.finalize())
    }
}

/// A logged request.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    pub target: String,
    pub range: Option<String>,
}

#[derive(Default)]
struct State {
    /// "owner/repo" -> (commit, files)
    repos: HashMap<String, (String, Vec<ServedFile>)>,
    /// Cut the next N file downloads after this many bytes.
    cut: Option<(u64, u32)>,
    /// Paths served with a flipped byte.
    corrupt: Vec<String>,
    /// "owner/repo" -> the token a gated repository requires (401 without it, 403 with another).
    gated: HashMap<String, String>,
    log: Vec<Logged>,
}

pub struct StandInHub {
    port: u16,
    state: Arc<Mutex<State>>,
}

impl StandInHub {
    /// Listens on a free loopback port; serves until the test process ends.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the stand-in hub");
        let port = listener.local_addr().expect("local addr").port();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = Arc::clone(&shared);
                std::thread::spawn(move || {
                    let _ = serve(stream, &state);
                });
            }
        });
        StandInHub { port, state }
    }

    /// The value for HF_ENDPOINT.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn add_repo(&self, id: &str, commit: &str, files: Vec<ServedFile>) {
        self.lock()
            .repos
            .insert(id.to_string(), (commit.to_string(), files));
    }

    /// The next `times` file downloads close the connection after `after_bytes` bytes.
    pub fn cut_downloads(&self, after_bytes: u64, times: u32) {
        self.lock().cut = Some((after_bytes, times));
    }

    /// Makes a repository gated: every request for it needs `Authorization: Bearer TOKEN`.
    pub fn gate(&self, id: &str, token: &str) {
        self.lock().gated.insert(id.to_string(), token.to_string());
    }

    pub fn corrupt(&self, path: &str) {
        self.lock().corrupt.push(path.to_string());
    }

    pub fn log(&self) -> Vec<Logged> {
        self.lock().log.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

/// The server's state; a handler that panicked leaves it usable.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn serve(stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut range = None;
    let mut auth = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("authorization") {
                auth = Some(v.trim().to_string());
            }
            if k.eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
        }
    }
    lock(state).log.push(Logged {
        method: method.clone(),
        target: target.clone(),
        range: range.clone(),
    });
    let path = target.split('?').next().unwrap_or_default();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let head = method == "HEAD";

    // Gated repositories, as the Hub answers them: 401 without a token, 403 with a wrong one.
    let repo_of = |segs: &[&str]| match segs {
        ["api", "models", o, r, ..] => Some(format!("{o}/{r}")),
        [o, r, "resolve", ..] => Some(format!("{o}/{r}")),
        _ => None,
    };
    if let Some(id) = repo_of(&segs) {
        let need = lock(state).gated.get(&id).cloned();
        if let Some(token) = need {
            match auth.as_deref() {
                None => {
                    return respond(
                        &mut out,
                        "401 Unauthorized",
                        &[("X-Error-Code", "GatedRepo".into())],
                        br#"{"error":"Access to this repository is restricted"}"#,
                        head,
                    )
                }
                Some(a) if a != format!("Bearer {token}") => {
                    return respond(
                        &mut out,
                        "403 Forbidden",
                        &[("X-Error-Code", "GatedRepo".into())],
                        br#"{"error":"Your token has no access to this repository"}"#,
                        head,
                    )
                }
                Some(_) => {}
            }
        }
    }

    if segs.len() >= 4 && segs[0] == "api" && segs[1] == "models" {
        let id = format!("{}/{}", segs[2], segs[3]);
        let Some((commit, files)) = lock(state).repos.get(&id).cloned() else {
            return not_found(
                &mut out,
                "RepoNotFound",
                br#"{"error":"Repository not found"}"#,
                head,
            );
        };
        let body = match segs.get(4) {
            None | Some(&"revision") => serde_json::json!({
                "id": id,
                "modelId": id,
                "sha": commit,
                "private": false,
                "siblings": files.iter().map(|f| serde_json::json!({"rfilename": f.path})).collect::<Vec<_>>(),
            }),
            Some(&"tree") => serde_json::Value::Array(
                files
                    .iter()
                    .map(|f| {
                        let mut e = serde_json::json!({
                            "type": "file",
                            "oid": f.git_oid(),
                            "size": f.data.len(),
                            "path": f.path,
                        });
                        if f.lfs {
                            e["lfs"] = serde_json::json!({
                                "oid": f.sha256(),
                                "size": f.data.len(),
                                "pointerSize": 134,
                            });
                        }
                        e
                    })
                    .collect(),
            ),
            Some(_) => {
                return respond(&mut out, "404 Not Found", &[], b"{}", head);
            }
        };
        let body = serde_json::to_vec(&body).unwrap_or_default();
        return respond(
            &mut out,
            "200 OK",
            &[("Content-Type", "application/json".into())],
            &body,
            head,
        );
    }

    // /OWNER/REPO/resolve/REV/PATH...
    if segs.len() >= 5 && segs[2] == "resolve" {
        let id = format!("{}/{}", segs[0], segs[1]);
        let file_path = segs[4..].join("/");
        let (repo, corrupt) = {
            let st = lock(state);
            (st.repos.get(&id).cloned(), st.corrupt.contains(&file_path))
        };
        let Some((commit, files)) = repo else {
            return not_found(&mut out, "RepoNotFound", b"", head);
        };
        let Some(f) = files.iter().find(|f| f.path == file_path) else {
            return not_found(&mut out, "EntryNotFound", b"", head);
        };
        let size = f.data.len() as u64;
        let mut headers = vec![
            ("X-Repo-Commit", commit.clone()),
            ("Accept-Ranges", "bytes".into()),
        ];
        if f.lfs {
            headers.push(("ETag", format!("\"{}\"", f.sha256())));
            headers.push(("X-Linked-Etag", format!("\"{}\"", f.sha256())));
            headers.push(("X-Linked-Size", size.to_string()));
        } else {
            headers.push(("ETag", format!("\"{}\"", f.git_oid())));
        }
        let (start, end) = match range.as_deref().and_then(parse_range) {
            Some((s, e)) => (
                s,
                e.unwrap_or(size.saturating_sub(1))
                    .min(size.saturating_sub(1)),
            ),
            None => (0, size.saturating_sub(1)),
        };
        if size > 0 && start >= size {
            return respond(&mut out, "416 Range Not Satisfiable", &headers, b"", head);
        }
        let mut body = if size == 0 {
            Vec::new()
        } else {
            f.data[start as usize..=end as usize].to_vec()
        };
        if corrupt && !body.is_empty() {
            let mid = body.len() / 2;
            body[mid] ^= 0x55;
        }
        let status = if range.is_some() {
            headers.push(("Content-Range", format!("bytes {start}-{end}/{size}")));
            "206 Partial Content"
        } else {
            "200 OK"
        };
        if head {
            return respond(&mut out, "200 OK", &headers, &f.data, true);
        }
        let cut = {
            let mut st = lock(state);
            match st.cut {
                Some((after, times)) if times > 0 && (body.len() as u64) > after => {
                    st.cut = Some((after, times - 1));
                    Some(after as usize)
                }
                _ => None,
            }
        };
        if let Some(after) = cut {
            // Announce the whole body, send part of it, and hang up.
            write_head(&mut out, status, &headers, body.len())?;
            out.write_all(&body[..after])?;
            out.flush()?;
            return out.shutdown(std::net::Shutdown::Both);
        }
        return respond(&mut out, status, &headers, &body, false);
    }
    respond(&mut out, "404 Not Found", &[], b"", head)
}

/// `bytes=START-` or `bytes=START-END`.
fn parse_range(v: &str) -> Option<(u64, Option<u64>)> {
    let spec = v.strip_prefix("bytes=")?;
    let (s, e) = spec.split_once('-')?;
    let start = s.trim().parse().ok()?;
    let end = if e.trim().is_empty() {
        None
    } else {
        Some(e.trim().parse().ok()?)
    };
    Some((start, end))
}

fn write_head(
    out: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
    len: usize,
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())
}

/// A 404 with the Hub's `X-Error-Code`.
fn not_found(out: &mut TcpStream, code: &str, body: &[u8], head: bool) -> std::io::Result<()> {
    respond(
        out,
        "404 Not Found",
        &[("X-Error-Code", code.into())],
        body,
        head,
    )
}

fn respond(
    out: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    write_head(out, status, headers, body.len())?;
    if !head_only {
        out.write_all(body)?;
    }
    out.flush()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
