//! The daemon's command line and defaults.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::api::Listen;
use crate::engine::{EngineConfig, KeepAlive};

#[derive(Debug, Parser)]
#[command(
    name = "minervad",
    version,
    about = "Minerva daemon: keeps models warm and serves gRPC"
)]
pub(crate) struct Args {
    /// Unix socket to listen on [default: $MINERVA_HOME/minervad.sock, else
    /// $XDG_RUNTIME_DIR/minerva/minervad.sock, else ~/.minerva/minervad.sock].
    #[arg(long, value_name = "PATH", conflicts_with = "listen")]
    pub(crate) socket: Option<PathBuf>,

    /// Listen on loopback TCP instead, e.g. 127.0.0.1:50051 (port 0 picks a free one).
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<SocketAddr>,

    /// Where pulled models live [default: $MINERVA_HOME/models, MINERVA_HOME defaulting to ~/.minerva].
    #[arg(long, value_name = "DIR", env = "MINERVA_MODELS")]
    pub(crate) models_dir: Option<PathBuf>,

    /// How long an idle model stays loaded: seconds, or with a unit (30s, 5m, 2h); negative or
    /// "forever" keeps it until unloaded; 0 unloads right after each request.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_keep_alive, allow_hyphen_values = true)]
    pub(crate) keep_alive: KeepAlive,

    /// Requests that may wait per model before new ones are refused (RESOURCE_EXHAUSTED).
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) max_queue: u32,

    /// Default compute threads per model [default: physical cores].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) threads: Option<u32>,

    /// Threads for gRPC and request handling (model compute has its own threads).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub(crate) io_threads: u32,

    /// Sequences one model decodes together (continuous batching). They share the model's
    /// context: a request is admitted while the prompt plus max_tokens of everything running
    /// fits it (a request without max_tokens reserves the whole context, so it runs alone).
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub(crate) parallel: u32,

    /// Default context length in tokens (capped at the model's trained context).
    #[arg(long = "ctx", value_name = "TOKENS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(16..))]
    pub(crate) context_length: u32,

    /// Default layers offloaded to the GPU per model [default: all of them when llama.cpp was
    /// built with a GPU backend (CUDA, Metal) or candle with CUDA, and sees a device, else 0].
    /// candle runs a model wholly on the GPU when this is above 0. A load request's gpu_layers
    /// overrides it.
    #[arg(long, value_name = "N", env = "MINERVA_GPU_LAYERS")]
    pub(crate) gpu_layers: Option<u32>,

    /// Give each of the --parallel sequences its own --ctx tokens of KV cache (llama.cpp's
    /// per-sequence KV streams) instead of one shared pool of --ctx. Attention then reads only
    /// a sequence's own cells, which many concurrent sequences on a GPU need to run fast
    /// (bench/results/README.md), at --parallel times the KV memory.
    #[arg(long, env = "MINERVA_KV_PER_SEQUENCE", value_parser = clap::builder::BoolishValueParser::new())]
    pub(crate) kv_per_sequence: bool,

    /// Speculative decoding for every request that does not say otherwise, drafting at most N
    /// tokens a step (1-16, default 8): with the model's draft model where it was loaded with
    /// one, else by prompt lookup; a request turns it off with Speculation.mode OFF (`minerva
    /// run --no-speculate`).
    #[arg(long, value_name = "N", env = "MINERVA_SPECULATE", num_args = 0..=1, default_missing_value = "8", value_parser = clap::value_parser!(u32).range(1..=16))]
    pub(crate) speculate: Option<u32>,

    /// Serve Prometheus metrics on http://ADDR/metrics, e.g. 127.0.0.1:9090 (loopback only;
    /// port 0 picks a free one and logs it).
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics: Option<SocketAddr>,
}

impl Args {
    pub(crate) fn listen(&self) -> Result<Listen, String> {
        match self.listen {
            Some(addr) if !addr.ip().is_loopback() => Err(format!(
                "--listen {addr}: only loopback addresses (127.0.0.0/8, ::1) are allowed; the API has no authentication"
            )),
            Some(addr) => Ok(Listen::Tcp(addr)),
            None => Ok(Listen::Socket(
                self.socket
                    .clone()
                    .unwrap_or_else(minerva_proto::addr::default_socket_path),
            )),
        }
    }

    /// Where to serve metrics, if anywhere: loopback only, like the API.
    pub(crate) fn metrics(&self) -> Result<Option<SocketAddr>, String> {
        match self.metrics {
            Some(addr) if !addr.ip().is_loopback() => Err(format!(
                "--metrics {addr}: only loopback addresses (127.0.0.0/8, ::1) are allowed"
            )),
            m => Ok(m),
        }
    }

    pub(crate) fn models_dir(&self) -> PathBuf {
        self.models_dir
            .clone()
            .unwrap_or_else(|| minerva_proto::addr::minerva_home().join("models"))
    }

    /// Where benchmark results are saved: `$MINERVA_HOME/bench`.
    pub(crate) fn bench_dir(&self) -> PathBuf {
        minerva_proto::addr::minerva_home().join("bench")
    }

    pub(crate) fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            keep_alive: self.keep_alive,
            max_queue: self.max_queue as usize,
            threads: self.threads.unwrap_or_else(default_threads),
            context_length: self.context_length,
            parallel: self.parallel,
            gpu_layers: self.gpu_layers.unwrap_or_else(default_gpu_layers),
            kv_per_sequence: self.kv_per_sequence,
            speculate: self.speculate,
        }
    }
}

/// Every layer on the GPU when a backend has one to offload to (llama.cpp built with CUDA or
/// Metal, candle built with CUDA; as ollama and llama-server with `-ngl 999` do), none
/// otherwise: a CPU-only build keeps 0 so nothing changes there.
pub(crate) fn default_gpu_layers() -> u32 {
    #[cfg(feature = "llamacpp")]
    if minerva_llamacpp::gpu_offload_available() {
        return ALL_LAYERS;
    }
    #[cfg(feature = "candle")]
    if minerva_candle::gpu_available() {
        return ALL_LAYERS;
    }
    0
}

/// More layers than any model has: llama.cpp offloads them all (its own `-ngl 999`).
pub(crate) const ALL_LAYERS: u32 = 999;

/// Physical cores, as llama.cpp picks by default (hyperthreads do not help matrix work).
pub(crate) fn default_threads() -> u32 {
    sysinfo::System::physical_core_count()
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .map_or(4, |n| n.max(1) as u32)
}

/// "300", "300s", "5m", "2h", "-1", "forever".
pub(crate) fn parse_keep_alive(s: &str) -> Result<KeepAlive, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("forever") {
        return Ok(KeepAlive::Forever);
    }
    let (num, scale) = match s.chars().last() {
        Some('s') => (&s[..s.len() - 1], 1.0),
        Some('m') => (&s[..s.len() - 1], 60.0),
        Some('h') => (&s[..s.len() - 1], 3600.0),
        _ => (s, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (like 300, 30s, 5m, 2h, -1 or forever)"))?;
    KeepAlive::from_seconds(v * scale).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn keep_alive_parses_units_and_forever() {
        assert_eq!(
            parse_keep_alive("5m").unwrap(),
            KeepAlive::For(Duration::from_secs(300))
        );
        assert_eq!(
            parse_keep_alive("30").unwrap(),
            KeepAlive::For(Duration::from_secs(30))
        );
        assert_eq!(parse_keep_alive("-1").unwrap(), KeepAlive::Forever);
        assert_eq!(parse_keep_alive("forever").unwrap(), KeepAlive::Forever);
        assert!(parse_keep_alive("soon").is_err());
    }
}
