//! What travels between a request and its model's worker: the job, its events and its stats.

use std::sync::Arc;
use std::time::Instant;

use minerva_core::sampling::SamplingConfig;
use minerva_core::TokenId;
use minerva_proto::v1::StopReason;
use tokio::sync::mpsc;

use super::perplexity;
use super::{Constraint, Lease, Registration};
use crate::error::DaemonError;

/// A token event or the end of a generation, sent from the worker to the request's stream.
#[derive(Debug)]
pub(crate) enum Event {
    Token {
        id: TokenId,
        text: String,
        elapsed_ms: f64,
        index: u32,
        /// Which of the request's samples it belongs to.
        sample: u32,
        logprobs: Option<Logprobs>,
    },
    /// Prompt tokens 1.. with their logprobs, once, before the first token.
    PromptLogprobs(Vec<(TokenId, Logprobs)>),
    Done(Box<Stats>),
    Error(DaemonError),
}

/// What a request asked for of log-probabilities.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogprobsWanted {
    /// Alternatives per token (at most `MAX_TOP_LOGPROBS`).
    pub(crate) top: u32,
    /// The prompt's too.
    pub(crate) prompt: bool,
}

/// A token's log-probability and the most likely tokens at its position, with their text.
#[derive(Debug, Clone)]
pub(crate) struct Logprobs {
    pub(crate) logprob: f32,
    pub(crate) top: Vec<(TokenId, f32, String)>,
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
    pub(crate) stop_token_id: Option<TokenId>,
    pub(crate) request_id: String,
    pub(crate) sample: u32,
    pub(crate) drafted_tokens: u32,
    pub(crate) accepted_tokens: u32,
    /// With a constraint: whether the text is complete under it.
    pub(crate) constraint_complete: Option<bool>,
    pub(crate) text: String,
}

/// A generation request as the worker sees it: already tokenized and checked.
pub(crate) struct Job {
    /// Its entry among the requests in flight, for `Abort`, shared by its samples (the id is
    /// free once the last one is done); `None` for the daemon's own (benchmark) requests.
    pub(crate) request: Option<Arc<Registration>>,
    /// Samples of the prompt wanted (n); the worker makes samples 1.. with [`Job::sibling`].
    pub(crate) samples: u32,
    /// Which sample this job is: 0, or a sibling's index.
    pub(crate) sample: u32,
    pub(crate) received: Instant,
    /// When the model was ready for this request (after loading it, if it had to).
    pub(crate) ready: Instant,
    pub(crate) prompt: Vec<TokenId>,
    pub(crate) sampling: SamplingConfig,
    pub(crate) max_tokens: Option<u32>,
    pub(crate) stop: Vec<String>,
    /// Generation ends at any of these tokens too (checked against the vocabulary).
    pub(crate) stop_token_ids: Vec<TokenId>,
    /// Keep generating through end-of-generation tokens (benchmarks need fixed token counts).
    pub(crate) ignore_eos: bool,
    pub(crate) context_length: u32,
    /// Prompt caching: may start from a prefix of its prompt still in the KV cache, and leaves
    /// its own tokens there when it ends (otherwise its cells are cleared).
    pub(crate) cache_prompt: bool,
    pub(crate) logprobs: Option<LogprobsWanted>,
    /// Structured output: the tokens it may sample are those the constraint allows.
    pub(crate) constraint: Option<Constraint>,
    /// Speculative decoding: where drafts come from, and at most how many a step.
    pub(crate) speculation: Option<super::speculative::Speculate>,
    pub(crate) load_ms: Option<f64>,
    pub(crate) events: mpsc::UnboundedSender<Event>,
    /// Keeps the model counted as busy until the job is dropped (its samples take their own).
    pub(crate) lease: Lease,
}

impl Job {
    /// Whether an `Abort` named this job.
    pub(crate) fn aborted(&self) -> bool {
        self.request.as_ref().is_some_and(|r| r.aborted())
    }

    /// Sample `k` of this job's prompt: the same prompt, settings and stream, its own seed
    /// (seed + k), constraint state and lease. It shares the request's id and abort.
    pub(crate) fn sibling(&self, k: u32) -> Job {
        let mut sampling = self.sampling.clone();
        sampling.seed = sampling.seed.wrapping_add(u64::from(k));
        Job {
            request: self.request.clone(),
            samples: 1,
            sample: k,
            received: self.received,
            ready: self.ready,
            prompt: self.prompt.clone(),
            sampling,
            max_tokens: self.max_tokens,
            stop: self.stop.clone(),
            stop_token_ids: self.stop_token_ids.clone(),
            ignore_eos: self.ignore_eos,
            context_length: self.context_length,
            cache_prompt: self.cache_prompt,
            logprobs: self.logprobs,
            constraint: self.constraint.clone(),
            speculation: self.speculation,
            load_ms: self.load_ms,
            events: self.events.clone(),
            lease: self.lease.model().lease(None),
        }
    }

    /// Whether this job may start from a cached prefix: it asked for prompt caching, and not
    /// for the prompt's logprobs (cached positions have no logits to give).
    pub(crate) fn reuses_cache(&self) -> bool {
        self.cache_prompt && !self.logprobs.is_some_and(|l| l.prompt)
    }
}

/// What a worker's queue carries.
pub(crate) enum Work {
    /// Boxed: a job is several times the size of a perplexity request.
    Generate(Box<Job>),
    Perplexity(perplexity::PerplexityJob),
}
