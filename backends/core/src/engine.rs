//! The backend interface: load files into a [`Model`], create [`Context`]s, run forward passes.
//!
//! The interface is shaped for a step loop over several sequences (one forward call takes chunks
//! of many sequences), so continuous batching and prefix-cache reuse can come later without a
//! new interface. Today the daemon runs one sequence at a time per model.

use std::path::Path;
use std::sync::Arc;

use crate::Result;

/// A vocabulary index.
pub type TokenId = u32;

/// A sequence slot in a context's KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeqId(pub u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    Gguf,
    /// A Hugging Face folder with SafeTensors weights.
    SafeTensors,
    /// A Hugging Face folder with PyTorch `.bin` (torch.save zip) weights.
    PyTorch,
    /// An MLX folder (SafeTensors with MLX quantization).
    Mlx,
}

impl ModelFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelFormat::Gguf => "gguf",
            ModelFormat::SafeTensors => "safetensors",
            ModelFormat::PyTorch => "pytorch",
            ModelFormat::Mlx => "mlx",
        }
    }

    /// What the files at `path` are, from names alone (a file's extension, or what a folder
    /// holds); None when nothing here is a model.
    pub fn detect(path: &Path) -> Option<ModelFormat> {
        if path.is_file() {
            return match path.extension().and_then(|e| e.to_str()) {
                Some("gguf") => Some(ModelFormat::Gguf),
                Some("safetensors") => path.parent().and_then(ModelFormat::detect),
                Some("bin") => Some(ModelFormat::PyTorch),
                _ => None,
            };
        }
        if !path.join("config.json").is_file() {
            return None;
        }
        let config = std::fs::read_to_string(path.join("config.json")).unwrap_or_default();
        let mlx = serde_json::from_str::<serde_json::Value>(&config)
            .ok()
            .is_some_and(|v| v.get("quantization").is_some());
        let has = |name: &str| path.join(name).is_file();
        if has("model.safetensors") || has("model.safetensors.index.json") {
            Some(if mlx {
                ModelFormat::Mlx
            } else {
                ModelFormat::SafeTensors
            })
        } else if has("pytorch_model.bin") || has("pytorch_model.bin.index.json") {
            Some(ModelFormat::PyTorch)
        } else if mlx {
            Some(ModelFormat::Mlx)
        } else {
            None
        }
    }
}

/// What a model is, read from its files.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub format: ModelFormat,
    pub architecture: String,
    pub parameter_count: u64,
    /// e.g. "Q4_1", "F16".
    pub quantization: String,
    /// Context length the model was trained with.
    pub trained_context_length: u32,
    pub vocab_size: u32,
    pub layer_count: u32,
    pub embedding_length: u32,
    pub head_count: u32,
    pub head_count_kv: u32,
    /// Per-head key/value width.
    pub head_dim: u32,
    pub file_size_bytes: u64,
    /// Jinja chat template shipped with the model, if any.
    pub chat_template: Option<String>,
    pub bos_token: Option<TokenId>,
    pub eos_token: Option<TokenId>,
    /// Whether prompts get a BOS token prepended (the model's own setting).
    pub add_bos: bool,
}

impl ModelInfo {
    /// An error unless `token` is inside the vocabulary.
    pub fn check_token(&self, token: TokenId) -> Result<()> {
        if token >= self.vocab_size {
            return Err(crate::CoreError::TokenOutOfRange {
                token: crate::error::TokenIdDisplay(token),
                vocab_size: self.vocab_size,
            });
        }
        Ok(())
    }

    /// Memory the model needs with a context of `context_length` tokens: the weights (mapped),
    /// an f16 KV cache, and llama.cpp's compute buffer for a 512-token micro-batch (dominated by
    /// the logits: vocab × 512 × 4 bytes, plus activations).
    pub fn estimated_memory_bytes(&self, context_length: u32) -> u64 {
        let kv = 2u64
            * u64::from(self.layer_count)
            * u64::from(context_length)
            * u64::from(self.head_count_kv)
            * u64::from(self.head_dim)
            * 2;
        let ubatch = 512u64;
        let compute =
            ubatch * (u64::from(self.vocab_size) + 4 * u64::from(self.embedding_length)) * 4;
        self.file_size_bytes + kv + compute
    }
}

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

impl ModelInfo {
    /// What a GGUF header says about the model, without loading it. Backends refine the
    /// tokenizer fields from their own loaded vocabulary.
    pub fn from_gguf(header: &crate::gguf::GgufHeader) -> Self {
        let u32_of = |v: Option<u64>| v.and_then(|v| u32::try_from(v).ok()).unwrap_or(0);
        let head_count = u32_of(header.arch_u64("attention.head_count"));
        let embedding_length = u32_of(header.arch_u64("embedding_length"));
        let head_dim = match header.arch_u64("attention.key_length") {
            Some(k) => u32_of(Some(k)),
            None if head_count > 0 => embedding_length / head_count,
            None => 0,
        };
        let vocab_size = match header.get("tokenizer.ggml.tokens") {
            Some(crate::gguf::MetaValue::Array { len, .. }) => u32_of(Some(*len)),
            _ => 0,
        };
        let token = |key: &str| header.get_u64(key).and_then(|v| u32::try_from(v).ok());
        Self {
            format: ModelFormat::Gguf,
            architecture: header.architecture().unwrap_or("unknown").to_string(),
            parameter_count: header.parameter_count(),
            quantization: header.quantization(),
            trained_context_length: u32_of(header.arch_u64("context_length")),
            vocab_size,
            layer_count: u32_of(header.arch_u64("block_count")),
            embedding_length,
            head_count,
            head_count_kv: header
                .arch_u64("attention.head_count_kv")
                .map_or(head_count, |v| u32_of(Some(v))),
            head_dim,
            file_size_bytes: header.file_size,
            chat_template: header
                .get_str("tokenizer.chat_template")
                .map(str::to_string),
            bos_token: token("tokenizer.ggml.bos_token_id"),
            eos_token: token("tokenizer.ggml.eos_token_id"),
            add_bos: header
                .get("tokenizer.ggml.add_bos_token")
                .and_then(crate::gguf::MetaValue::as_bool)
                .unwrap_or(false),
        }
    }
}
