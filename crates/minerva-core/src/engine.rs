//! The backend interface: load files into a [`Model`], create [`Context`]s, run forward passes.
//!
//! The interface is shaped for the daemon's step loop over several sequences: one forward call
//! takes chunks of many sequences (continuous batching), and a context can keep a sequence's
//! prefix for the next request (prompt caching).

use std::sync::Arc;

pub use minerva_formats::{ModelFiles, ModelFormat, ModelInfo, TokenId};

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
    /// Which logits the caller wants back for this chunk.
    pub logits: Logits,
}

/// Which logits a forward pass returns for a chunk: a backend computes the vocabulary-wide
/// product only for the positions asked for, so generation asks for one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Logits {
    /// After the chunk's last token (generation).
    #[default]
    Last,
    /// After every token of the chunk, in order (perplexity, prompt log-probabilities).
    All,
}

impl<'a> ForwardChunk<'a> {
    /// A chunk whose logits after its last token are wanted.
    pub fn last(seq: SeqId, start_pos: u32, tokens: &'a [TokenId]) -> Self {
        Self {
            seq,
            start_pos,
            tokens,
            logits: Logits::Last,
        }
    }

    /// A chunk whose logits after every token are wanted.
    pub fn all(seq: SeqId, start_pos: u32, tokens: &'a [TokenId]) -> Self {
        Self {
            seq,
            start_pos,
            tokens,
            logits: Logits::All,
        }
    }

    /// How many logit rows the chunk returns.
    pub fn rows(&self) -> usize {
        match self.logits {
            Logits::Last => 1,
            Logits::All => self.tokens.len(),
        }
    }

    /// Whether the token at `index` within the chunk has its logits returned.
    pub fn wants(&self, index: usize) -> bool {
        match self.logits {
            Logits::Last => index + 1 == self.tokens.len(),
            Logits::All => true,
        }
    }
}

/// The checks every backend makes of a forward call's chunks, with one set of messages: no
/// empty chunk, every position inside the context, every token inside the vocabulary.
pub fn check_chunks(
    chunks: &[ForwardChunk<'_>],
    options: &ContextOptions,
    vocab_size: u32,
    backend: &'static str,
) -> Result<()> {
    for chunk in chunks {
        if chunk.tokens.is_empty() {
            return Err(crate::CoreError::Forward {
                backend,
                detail: format!("an empty chunk for sequence {}", chunk.seq.0),
            });
        }
        let end = u64::from(chunk.start_pos) + chunk.tokens.len() as u64;
        if end > u64::from(options.context_length) {
            return Err(crate::CoreError::Forward {
                backend,
                detail: format!(
                    "positions {}..{end} of sequence {} exceed the context of {} tokens",
                    chunk.start_pos, chunk.seq.0, options.context_length
                ),
            });
        }
        if let Some(&token) = chunk.tokens.iter().find(|&&t| t >= vocab_size) {
            return Err(crate::CoreError::TokenOutOfRange {
                token: crate::error::TokenIdDisplay(token),
                vocab_size,
            });
        }
    }
    Ok(())
}

/// Whether a backend runs a format when a request names no backend, or only when asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serves {
    /// A default for the format (the daemon takes the first such backend it has).
    ByDefault,
    /// Only when a request names this backend.
    WhenAsked,
}

/// A backend: turns model files into models.
pub trait Backend: Send + Sync {
    /// The backend's id, as requests, listings and benchmark records spell it.
    fn name(&self) -> &'static str;
    /// The formats this backend loads. The daemon chooses backends from this alone.
    fn formats(&self) -> &'static [(ModelFormat, Serves)];
    /// How the inference code was built (CPU features, threading), for benchmark records.
    fn build_info(&self) -> String {
        String::new()
    }
    /// Loads a model from files the caller opened (and so verified) with [`ModelFiles::open`].
    fn load(&self, files: &ModelFiles, options: &LoadOptions) -> Result<Arc<dyn Model>>;
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
    /// Makes `to` hold what `from` holds, replacing whatever `to` held, so that several samples
    /// of one prompt continue from one computation of it. An error where the backend cannot.
    fn copy_sequence(&mut self, from: SeqId, to: SeqId) -> Result<()>;
    /// Runs `chunks` through the model (as one batch where they fit) and writes, for each chunk
    /// in order, the logits it asks for into `logits[i]`: [`ForwardChunk::rows`] rows of the
    /// vocabulary's width, in token order. Inputs are checked with [`check_chunks`].
    fn forward(&mut self, chunks: &[ForwardChunk<'_>], logits: &mut Vec<Vec<f32>>) -> Result<()>;
}

/// An error unless `token` is inside `info`'s vocabulary.
pub fn check_token(info: &ModelInfo, token: TokenId) -> Result<()> {
    if token >= info.vocab_size {
        return Err(crate::CoreError::TokenOutOfRange {
            token: crate::error::TokenIdDisplay(token),
            vocab_size: info.vocab_size,
        });
    }
    Ok(())
}
