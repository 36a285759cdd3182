//! The backend interface: load files into a [`Model`], create [`Context`]s, run forward passes.
//!
//! The interface is shaped for a step loop over several sequences (one forward call takes chunks
//! of many sequences), so continuous batching and prefix-cache reuse can come later without a
//! new interface. Today the daemon runs one sequence at a time per model.

use std::path::Path;
use std::sync::Arc;

pub use minerva_formats::{ModelFormat, ModelInfo, TokenId};

use crate::Result;

/// A sequence slot in a context's KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeqId(pub u32);

/// How to load model weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Layers to offload to a GPU; ignored by CPU-only builds.
    pub gpu_layers: u32,
}

/// How to create a context (KV cache + compute threads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextOptions {
    pub context_length: u32,
    pub threads: u32,
    /// Largest number of tokens one forward call hands the backend at once.
    pub batch_size: u32,
    /// How many sequences may live in the KV cache at once.
    pub max_sequences: u32,
    /// Each sequence gets its own `context_length` cells instead of all of them sharing one pool
    /// of `context_length` (backends whose cache is per sequence anyway ignore this).
    pub kv_per_sequence: bool,
}

/// One sequence's tokens for a forward pass, placed at `start_pos..start_pos + tokens.len()`.
#[derive(Debug, Clone, Copy)]
pub struct ForwardChunk<'a> {
    pub seq: SeqId,
    pub start_pos: u32,
    pub tokens: &'a [TokenId],
}

/// A backend: turns model files into models.
pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    /// How the inference code was built (CPU features, threading), for benchmark records.
    fn build_info(&self) -> String {
        String::new()
    }
    fn load(&self, path: &Path, options: &LoadOptions) -> Result<Arc<dyn Model>>;
}

/// A loaded model: weights (memory-mapped where the backend can) and tokenizer. Shared between
/// the request handlers (tokenizing) and the model's worker (which owns its [`Context`]).
pub trait Model: Send + Sync {
    fn backend(&self) -> &'static str;
    fn info(&self) -> &ModelInfo;
    /// Tokenizes text; special tokens written in the text (e.g. `<|im_start|>`) are parsed.
    /// With `add_special`, BOS/EOS are added as the model's own settings ask.
    fn tokenize(&self, text: &str, add_special: bool) -> Result<Vec<TokenId>>;
    /// The bytes a token contributes to generated text (control tokens contribute nothing).
    fn token_bytes(&self, token: TokenId) -> Result<Vec<u8>>;
    /// The token's text with special tokens rendered (for BOS/EOS in chat templates).
    fn token_text(&self, token: TokenId) -> Result<String>;
    /// True for tokens that end generation (EOS, EOT, ...).
    fn is_end_of_generation(&self, token: TokenId) -> bool;
    fn new_context(&self, options: &ContextOptions) -> Result<Box<dyn Context>>;
    /// Settings of this backend that change speed or numbers and are not in [`ContextOptions`]
    /// (llama.cpp: `flash_attn`), as benchmark records report them; a peer run gets the same.
    fn settings(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// KV cache and compute state for up to `max_sequences` sequences. Owned by one worker thread.
pub trait Context: Send {
    fn options(&self) -> &ContextOptions;
    /// Forgets everything cached for `seq`.
    fn clear_sequence(&mut self, seq: SeqId) -> Result<()>;
    /// Keeps `seq`'s cached positions `0..len` and forgets the rest, so a new request that
    /// starts with the same tokens continues at `len` (prompt caching). Returns false when the
    /// backend cannot cut a sequence there (then nothing of it may be reused: clear it).
    fn keep_prefix(&mut self, seq: SeqId, len: u32) -> Result<bool> {
        let _ = (seq, len);
        Ok(false)
    }
    /// Runs `chunks` through the model (as one batch where they fit) and writes, for each chunk
    /// in order, the logits after its last token into `logits[i]` (resized to the vocabulary).
    fn forward(&mut self, chunks: &[ForwardChunk<'_>], logits: &mut Vec<Vec<f32>>) -> Result<()>;
    /// Runs one sequence's tokens from `start_pos` and writes the logits after every token,
    /// `tokens.len()` rows of the vocabulary's width, into `logits` (for perplexity).
    fn forward_all(
        &mut self,
        seq: SeqId,
        start_pos: u32,
        tokens: &[TokenId],
        logits: &mut Vec<f32>,
    ) -> Result<()>;
}
