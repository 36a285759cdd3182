//! What travels between a request and its model's worker: the job, its events and its stats.

use std::time::Instant;

use minerva_core::sampling::SamplingConfig;
use minerva_core::TokenId;
use minerva_proto::v1::StopReason;
use tokio::sync::mpsc;

use super::perplexity;
use super::Lease;
use crate::error::DaemonError;

/// A token event or the end of a generation, sent from the worker to the request's stream.
#[derive(Debug)]
pub(crate) enum Event {
    Token {
        id: TokenId,
        text: String,
        elapsed_ms: f64,
        index: u32,
    },
    Done(Box<Stats>),
    Error(DaemonError),
}

#[derive(Debug, Clone)]
pub(crate) struct Stats {
    pub(crate) load_ms: Option<f64>,
    pub(crate) prompt_tokens: u32,
    /// Prompt tokens reused from the prompt cache (not computed).
    pub(crate) cached_prompt_tokens: u32,
    pub(crate) ttft_ms: f64,
    pub(crate) prompt_ms: f64,
    pub(crate) prompt_tokens_per_s: f64,
    pub(crate) generated_tokens: u32,
    pub(crate) decode_tokens_per_s: f64,
    pub(crate) total_ms: f64,
    pub(crate) queue_ms: f64,
    pub(crate) stop_reason: StopReason,
    pub(crate) stop_string: String,
    pub(crate) text: String,
}

/// A generation request as the worker sees it: already tokenized and checked.
pub(crate) struct Job {
    pub(crate) id: u64,
    pub(crate) received: Instant,
    /// When the model was ready for this request (after loading it, if it had to).
    pub(crate) ready: Instant,
    pub(crate) prompt: Vec<TokenId>,
    pub(crate) sampling: SamplingConfig,
    pub(crate) max_tokens: Option<u32>,
    pub(crate) stop: Vec<String>,
    /// Keep generating through end-of-generation tokens (benchmarks need fixed token counts).
    pub(crate) ignore_eos: bool,
    pub(crate) context_length: u32,
    /// Prompt caching: may start from a prefix of its prompt still in the KV cache, and leaves
    /// its own tokens there when it ends (otherwise its cells are cleared).
    pub(crate) cache_prompt: bool,
    pub(crate) load_ms: Option<f64>,
    pub(crate) events: mpsc::UnboundedSender<Event>,
    /// Keeps the model counted as busy until the job is dropped: held for its `Drop`.
    #[expect(dead_code, reason = "held for its Drop, never read")]
    pub(crate) lease: Lease,
}

/// What a worker's queue carries.
pub(crate) enum Work {
    Generate(Job),
    Perplexity(perplexity::PerplexityJob),
}
