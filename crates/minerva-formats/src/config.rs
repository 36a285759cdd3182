//! What the transformer looks like: read from a Hugging Face `config.json` or GGUF metadata.
//! The in-process backends (candle, MLX) build their decoders from it.

use std::path::Path;

use crate::gguf::{GgufHeader, MetaValue};
use serde_json::Value;

/// The architectures the in-process backends run. Mistral is Llama plus sliding-window
/// attention.
pub const SUPPORTED: &[&str] = &["MistralForCausalLM", "LlamaForCausalLM"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub arch: Arch,
    /// As the files name it ("MistralForCausalLM", or GGUF's "llama").
    pub architecture: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f32,
    pub max_position_embeddings: usize,
    /// Keys a query may see, itself included (Mistral); None = the whole context.
    pub sliding_window: Option<usize>,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

fn usize_of(v: &Value, key: &str) -> Option<usize> {
    v.get(key)?.as_u64().and_then(|n| usize::try_from(n).ok())
}

fn ids_of(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .into_iter()
            .collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|n| n.as_u64().and_then(|n| u32::try_from(n).ok()))
            .collect(),
        _ => Vec::new(),
    }
}

impl Config {
    /// Reads `config.json` (and `generation_config.json` beside it for extra EOS ids), with the
    /// same size bound as verification.
    pub fn from_hf_folder(dir: &Path) -> Result<Config, String> {
        let path = dir.join("config.json");
        let v = crate::problem::read_config(dir)
            .map_err(|p| p.to_string())?
            .ok_or_else(|| {
                format!(
                    "{} is missing: a Hugging Face model folder needs config.json beside its weights",
                    path.display()
                )
            })?;
        Self::from_hf_parts(dir, &v)
    }

    /// What opened model files say: GGUF metadata, or the config.json that was read when they
    /// were opened.
    pub fn from_files(files: &crate::ModelFiles) -> Result<Config, String> {
        if let Some(header) = files.gguf_header() {
            return Self::from_gguf(header);
        }
        match files.config() {
            Some(v) => Self::from_hf_parts(&files.dir(), v),
            None => Self::from_hf_folder(&files.dir()),
        }
    }

    /// config.json's fields plus generation_config.json's extra EOS ids.
    fn from_hf_parts(dir: &Path, v: &Value) -> Result<Config, String> {
        let mut cfg = Self::from_hf_json(v)?;
        if let Ok(text) = std::fs::read_to_string(dir.join("generation_config.json")) {
            if let Ok(g) = serde_json::from_str::<Value>(&text) {
                for id in ids_of(g.get("eos_token_id")) {
                    if !cfg.eos_token_ids.contains(&id) {
                        cfg.eos_token_ids.push(id);
                    }
                }
            }
        }
        Ok(cfg)
    }

    pub fn from_hf_json(v: &Value) -> Result<Config, String> {
        // "architectures" names the class; configs saved without a model (config.save_pretrained)
        // only have model_type.
        let architecture = match v
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
        {
            Some(a) => a.to_string(),
            None => match v.get("model_type").and_then(Value::as_str) {
                Some("mistral") => "MistralForCausalLM".into(),
                Some("llama") => "LlamaForCausalLM".into(),
                Some(other) => other.to_string(),
                None => {
                    return Err(
                        "config.json has neither \"architectures\" nor \"model_type\"".into(),
                    )
                }
            },
        };
        let arch = match architecture.as_str() {
            "MistralForCausalLM" => Arch::Mistral,
            "LlamaForCausalLM" => Arch::Llama,
            other => {
                return Err(format!(
                    "architecture {other:?} is not supported; supported: {}",
                    SUPPORTED.join(", ")
                ))
            }
        };
        let need = |key: &str| {
            usize_of(v, key)
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("config.json has no positive integer {key:?}"))
        };
        let hidden_size = need("hidden_size")?;
        let num_heads = need("num_attention_heads")?;
        let num_kv_heads = usize_of(v, "num_key_value_heads").unwrap_or(num_heads);
        if num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(format!(
                "num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}"
            ));
        }
        let head_dim = usize_of(v, "head_dim").unwrap_or(hidden_size / num_heads);
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(format!("head_dim {head_dim} must be even and positive"));
        }
        if let Some(act) = v.get("hidden_act").and_then(Value::as_str) {
            if act != "silu" {
                return Err(format!(
                    "hidden_act {act:?} is not supported (only \"silu\")"
                ));
            }
        }
        for flag in ["attention_bias", "mlp_bias"] {
            if v.get(flag).and_then(Value::as_bool) == Some(true) {
                return Err(format!("{flag} = true is not supported"));
            }
        }
        // transformers 5 moved rope_theta into rope_parameters; 4.x has it at the top level.
        let rope = v.get("rope_parameters").or_else(|| v.get("rope_scaling"));
        if let Some(kind) = rope
            .and_then(|r| r.get("rope_type").or_else(|| r.get("type")))
            .and_then(Value::as_str)
        {
            if kind != "default" {
                return Err(format!(
                    "rope type {kind:?} is not supported yet (only the default RoPE)"
                ));
            }
        }
        let rope_theta = v
            .get("rope_theta")
            .or_else(|| rope.and_then(|r| r.get("rope_theta")))
            .and_then(Value::as_f64)
            .unwrap_or(10_000.0) as f32;
        let sliding_window = match arch {
            Arch::Mistral => usize_of(v, "sliding_window").filter(|&w| w > 0),
            Arch::Llama => None,
        };
        Ok(Config {
            arch,
            architecture,
            vocab_size: need("vocab_size")?,
            hidden_size,
            intermediate_size: need("intermediate_size")?,
            num_layers: need("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: v
                .get("rms_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-5),
            rope_theta,
            max_position_embeddings: usize_of(v, "max_position_embeddings").unwrap_or(4096),
            sliding_window,
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            bos_token_id: ids_of(v.get("bos_token_id")).first().copied(),
            eos_token_ids: ids_of(v.get("eos_token_id")),
        })
    }

    /// Reads GGUF metadata of a "llama" architecture file (Llama, Mistral, SmolLM, ...).
    pub fn from_gguf(header: &GgufHeader) -> Result<Config, String> {
        let arch = header.architecture().unwrap_or_default().to_string();
        if arch != "llama" {
            return Err(format!(
                "GGUF architecture {arch:?} is not supported; supported: \"llama\" (Llama, Mistral and their relatives)"
            ));
        }
        let int = |key: &str| -> Result<usize, String> {
            header
                .arch_u64(key)
                .and_then(|n| usize::try_from(n).ok())
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("GGUF metadata has no positive llama.{key}"))
        };
        let hidden_size = int("embedding_length")?;
        let num_heads = int("attention.head_count")?;
        let num_kv_heads = int("attention.head_count_kv").unwrap_or(num_heads);
        if num_heads % num_kv_heads != 0 {
            return Err(format!(
                "head_count {num_heads} is not a multiple of head_count_kv {num_kv_heads}"
            ));
        }
        let head_dim = int("rope.dimension_count").unwrap_or(hidden_size / num_heads);
        if head_dim * num_heads != hidden_size && int("attention.key_length").is_err() {
            return Err(format!(
                "embedding_length {hidden_size} / head_count {num_heads} disagrees with rope.dimension_count {head_dim}"
            ));
        }
        let vocab_size = match header.get("tokenizer.ggml.tokens") {
            Some(MetaValue::Array { len, .. }) => {
                usize::try_from(*len).map_err(|e| format!("tokenizer.ggml.tokens: {e}"))?
            }
            _ => return Err("GGUF metadata has no tokenizer.ggml.tokens".into()),
        };
        let float = |key: &str| match header.get(&format!("llama.{key}")) {
            Some(MetaValue::F64(v)) => Some(*v),
            _ => None,
        };
        let token = |key: &str| header.get_u64(key).and_then(|v| u32::try_from(v).ok());
        let mut eos_token_ids: Vec<u32> =
            token("tokenizer.ggml.eos_token_id").into_iter().collect();
        for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            if let Some(id) = token(key) {
                if !eos_token_ids.contains(&id) {
                    eos_token_ids.push(id);
                }
            }
        }
        Ok(Config {
            arch: Arch::Llama,
            architecture: arch,
            vocab_size,
            hidden_size,
            intermediate_size: int("feed_forward_length")?,
            num_layers: int("block_count")?,
            num_heads,
            num_kv_heads,
            head_dim,
            // Stored as f32 in the file: round to f32 first, as reading it as f32 did.
            rms_norm_eps: f64::from(
                float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5) as f32
            ),
            rope_theta: float("rope.freq_base").unwrap_or(10_000.0) as f32,
            max_position_embeddings: int("context_length").unwrap_or(4096),
            sliding_window: None,
            tie_word_embeddings: !header.tensors.iter().any(|t| t.name == "output.weight"),
            bos_token_id: token("tokenizer.ggml.bos_token_id"),
            eos_token_ids,
        })
    }
}
