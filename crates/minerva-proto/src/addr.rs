//! Where the daemon listens by default and how clients reach it: a Unix socket path (the
//! default) or a loopback `http://127.0.0.1:PORT` URL.

use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// Environment variable that points clients at a daemon (socket path or URL).
pub const ADDR_ENV: &str = "MINERVA_ADDR";
/// Environment variable that moves Minerva's home (models, socket, logs).
pub const HOME_ENV: &str = "MINERVA_HOME";

/// Minerva's home: `$MINERVA_HOME`, else `~/.minerva`.
pub fn minerva_home() -> PathBuf {
    if let Some(h) = std::env::var_os(HOME_ENV).filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    home_dir().join(".minerva")
}

fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

/// The default socket: `$MINERVA_HOME/minervad.sock` when MINERVA_HOME is set, else
/// `$XDG_RUNTIME_DIR/minerva/minervad.sock`, else `~/.minerva/minervad.sock`.
pub fn default_socket_path() -> PathBuf {
    if std::env::var_os(HOME_ENV).is_some_and(|h| !h.is_empty()) {
        return minerva_home().join("minervad.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("minerva").join("minervad.sock"),
        None => minerva_home().join("minervad.sock"),
    }
}

/// A daemon address as a client names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaemonAddr {
    Socket(PathBuf),
    Http(String),
}

impl DaemonAddr {
    /// `http://` and `https://` URLs are TCP; anything else is a socket path.
    pub fn parse(s: &str) -> Self {
        if s.starts_with("http://") || s.starts_with("https://") {
            DaemonAddr::Http(s.to_string())
        } else {
            DaemonAddr::Socket(PathBuf::from(s.strip_prefix("unix:").unwrap_or(s)))
        }
    }

    /// `$MINERVA_ADDR` if set, else the default socket.
    pub fn from_env_or_default() -> Self {
        match std::env::var(ADDR_ENV) {
            Ok(s) if !s.is_empty() => Self::parse(&s),
            _ => DaemonAddr::Socket(default_socket_path()),
        }
    }
}

impl std::fmt::Display for DaemonAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DaemonAddr::Socket(p) => write!(f, "{}", p.display()),
            DaemonAddr::Http(u) => f.write_str(u),
        }
    }
}

/// Opens a channel to the daemon (connects eagerly, so a missing daemon fails here).
pub async fn connect(addr: &DaemonAddr) -> Result<Channel, tonic::transport::Error> {
    match addr {
        DaemonAddr::Http(url) => Endpoint::from_shared(url.clone())?.connect().await,
        DaemonAddr::Socket(path) => {
            let path = path.clone();
            // The URI is required by the API but unused: the connector dials the socket.
            Endpoint::from_static("http://minervad.local")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }))
                .await
        }
    }
}
