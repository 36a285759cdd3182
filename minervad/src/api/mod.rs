//! The gRPC surface: Minerva's services plus grpc.health.v1 and server reflection, served on a
//! Unix socket (default) or loopback TCP, with graceful shutdown.

mod authority;
mod bench;
mod daemon;
mod generate;
mod models;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use minerva_proto::v1 as pb;
use tokio::net::UnixListener;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tokio_stream::StreamExt;
use tonic::transport::Server;

use crate::engine::{Engine, KeepAlive};
use crate::error::{DaemonError, Result};

pub(crate) fn keep_alive_of(seconds: Option<f64>) -> Result<Option<KeepAlive>> {
    seconds.map(KeepAlive::from_seconds).transpose()
}

/// Where to listen.
#[derive(Debug, Clone)]
pub(crate) enum Listen {
    Socket(std::path::PathBuf),
    Tcp(std::net::SocketAddr),
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Socket(p) => write!(f, "{}", p.display()),
            Listen::Tcp(a) => write!(f, "http://{a}"),
        }
    }
}

/// Binds the socket: the directory is made 0700, the socket 0600. A stale socket (nothing
/// answers on it) is replaced; a live one means another daemon runs, which is an error.
async fn bind_socket(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!(
                    "another minervad is already listening on {}",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(path)?;
    }
    // Create the socket with no group/other bits at all, then make sure of 0600.
    // SAFETY: umask only changes this process's file-creation mask.
    let old = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(path);
    unsafe { libc::umask(old) };
    let listener = listener?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub(crate) async fn serve(
    engine: Arc<Engine>,
    bench_dir: std::path::PathBuf,
    listen: Listen,
    metrics: Option<std::net::SocketAddr>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    let started = Instant::now();
    // One shutdown signal, seen by the gRPC server and the metrics server alike.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let metrics_server = match metrics {
        Some(addr) => Some(tokio::spawn(crate::metrics::serve(
            Arc::clone(engine.metrics()),
            crate::metrics::bind(addr).await?,
            stopped(stop_rx.clone()),
        ))),
        None => None,
    };
    let shutdown = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    for name in [
        "minerva.v1.ModelService",
        "minerva.v1.GenerateService",
        "minerva.v1.DaemonService",
        "minerva.v1.BenchmarkService",
    ] {
        health_reporter
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
    }
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    // Reflection in both versions: grpc.reflection.v1, and v1alpha, the only one that grpcurl
    // before 1.8.8 and many deployed tools ask for.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(minerva_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_error =
        |e: tonic_reflection::server::Error| DaemonError::Internal(format!("reflection: {e}"));
    let reflection_v1 = reflection().build_v1().map_err(reflection_error)?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(reflection_error)?;

    let router = Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(pb::model_service_server::ModelServiceServer::new(
            models::ModelApi {
                engine: Arc::clone(&engine),
            },
        ))
        .add_service(pb::generate_service_server::GenerateServiceServer::new(
            generate::GenerateApi {
                engine: Arc::clone(&engine),
            },
        ))
        .add_service(pb::benchmark_service_server::BenchmarkServiceServer::new(
            bench::BenchApi {
                jobs: crate::bench::BenchJobs::new(Arc::clone(&engine), bench_dir),
            },
        ))
        .add_service(pb::daemon_service_server::DaemonServiceServer::new(
            daemon::DaemonApi {
                engine: Arc::clone(&engine),
                started,
                listen: listen.to_string(),
            },
        ));

    // Keep-alive reaper.
    let reaper_engine = Arc::clone(&engine);
    let reaper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
        loop {
            tick.tick().await;
            reaper_engine.reap();
        }
    });

    let result = match &listen {
        Listen::Socket(path) => {
            let listener = bind_socket(path).await.map_err(|e| {
                DaemonError::Internal(format!("cannot listen on {}: {e}", path.display()))
            })?;
            tracing::info!(socket = %path.display(), "minervad listening");
            // Stock clients' :authority on a socket needs the front (see `authority`).
            let incoming = UnixListenerStream::new(listener).map(|c| c.map(authority::front));
            let r = router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await;
            let _ = std::fs::remove_file(path);
            r
        }
        Listen::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| DaemonError::Internal(format!("cannot listen on {addr}: {e}")))?;
            tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "minervad listening");
            router
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
                .await
        }
    };
    reaper.abort();
    if let Some(m) = metrics_server {
        match m.await {
            Ok(Err(e)) => tracing::error!(error = %e, "metrics server"),
            Err(e) => tracing::error!(error = %e, "metrics server task"),
            Ok(Ok(())) => {}
        }
    }
    engine.shutdown(std::time::Duration::from_secs(10));
    result.map_err(|e| DaemonError::Internal(format!("server error: {e}")))
}
