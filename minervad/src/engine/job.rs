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
pub enum Event {
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
pub struct Stats {
    pub load_ms: Option<f64>,
    pub prompt_tokens: u32,
    /// Prompt tokens reused from the prompt cache (not computed).
    pub cached_prompt_tokens: u32,
    pub ttft_ms: f64,
    pub prompt_ms: f64,
    pub prompt_tokens_per_s: f64,
    pub generated_tokens: u32,
    pub decode_tokens_per_s: f64,
    pub total_ms: f64,
    pub queue_ms: f64,
    pub stop_reason: StopReason,
    pub stop_string: String,
    pub text: String,
}

/// A generation request as the worker sees it: already tokenized and checked.
pub struct Job {
    pub id: u64,
    pub received: Instant,
    /// When the model was ready for this request (after loading it, if it had to).
    pub ready: Instant,
    pub prompt: Vec<TokenId>,
    pub sampling: SamplingConfig,
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
    /// Keep generating through end-of-generation tokens (benchmarks need fixed token counts).
    pub ignore_eos: bool,
    pub context_length: u32,
    /// Prompt caching: may start from a prefix of its prompt still in the KV cache, and leaves
    /// its own tokens there when it ends (otherwise its cells are cleared).
    pub cache_prompt: bool,
    pub load_ms: Option<f64>,
    pub events: mpsc::UnboundedSender<Event>,
    /// Keeps the model counted as busy until the job is dropped.
    pub lease: Lease,
}

/// What a worker's queue carries.
pub enum Work {
    Generate(Job),
    Perplexity(perplexity::PerplexityJob),
}
