//! What a model is, read from its files: its format and [`ModelInfo`].

use std::path::Path;

/// A vocabulary index.
pub type TokenId = u32;

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
        // Bounded: an oversized or broken config.json reads as "not MLX" here, and verification
        // refuses it with the reason.
        let mlx = crate::problem::read_config(path)
            .ok()
            .flatten()
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
