//! The engine interface every Minerva backend implements, and the pieces all backends share:
//! the one sampler, chat-template rendering, and incremental detokenization with stop strings.
//! Model files themselves are `minerva-formats`' business.
//!
//! A backend turns model files into a [`Model`] (thread-safe: info, tokenizer) that creates
//! [`Context`]s (one per worker: KV cache plus a `forward` over sequences that returns logits).
//! Everything above logits — sampling, stopping, streaming — lives here or in the daemon, so
//! every backend behaves the same for the same seed.

pub mod chat;
pub mod engine;
pub mod error;
#[cfg(feature = "tokenizer")]
pub mod in_process;
pub mod logprobs;
pub mod sampling;
pub mod sequences;
pub mod text;

pub use engine::{
    check_chunks, Backend, Context, ContextOptions, ForwardChunk, LoadOptions, Logits, Model,
    ModelFiles, ModelFormat, ModelInfo, SeqId, Serves, TokenId,
};
pub use error::{CoreError, Result};
pub use sequences::{PerSequenceContext, SequenceModel};
