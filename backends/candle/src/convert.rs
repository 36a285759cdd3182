//! `minerva convert`: a GGUF file to a Hugging Face folder (config.json, model.safetensors,
//! tokenizer.json, tokenizer_config.json, generation_config.json), so the same weights exist in
//! both layouts. Quantized tensors are dequantized to f32 (or f16); Q and K rows are put back in
//! the order Hugging Face's RoPE expects (GGUF stores them permuted for llama.cpp's interleaved
//! RoPE).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use serde_json::{json, Value};

use crate::config::Config;
use crate::tokenizer::gguf_json;
use crate::weights::Weights;

/// What a conversion wrote.
#[derive(Debug, Clone)]
pub struct Converted {
    pub files: Vec<PathBuf>,
    pub tensors: usize,
    pub parameters: u64,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Undoes llama.cpp's Q/K permutation: GGUF row `h*hd + 2j + i` is Hugging Face row
/// `h*hd + i*hd/2 + j`.
fn unpermute(t: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = t.dims2()?;
    let hd = rows / heads;
    t.reshape((heads, hd / 2, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))
}

/// Converts the GGUF `src` into a Hugging Face folder `out` (created; must not exist or be
/// empty) with weights of `dtype` (F32 or F16).
pub fn gguf_to_hf(src: &Path, out: &Path, dtype: DType) -> Result<Converted, String> {
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Err(format!(
            "unsupported output dtype {dtype:?} (f32, f16, bf16)"
        ));
    }
    let report = minerva_core::verify::verify_path(src).map_err(err)?;
    if let Some(p) = report.error {
        return Err(format!("{}: {p}", src.display()));
    }
    if out.exists() && std::fs::read_dir(out).map_err(err)?.next().is_some() {
        return Err(format!("{} exists and is not empty", out.display()));
    }
    let (mut weights, content) = Weights::from_gguf(src)?;
    let cfg = Config::from_gguf(&content)?;
    let (tok_json, settings) = gguf_json(&content)?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut parameters = 0u64;
    for name in weights.unused() {
        let t = weights.take_dense(&name)?;
        let t = if name.ends_with("self_attn.q_proj.weight") {
            unpermute(&t, cfg.num_heads).map_err(err)?
        } else if name.ends_with("self_attn.k_proj.weight") {
            unpermute(&t, cfg.num_kv_heads).map_err(err)?
        } else {
            t
        };
        parameters += t.elem_count() as u64;
        tensors.insert(name, t.to_dtype(dtype).map_err(err)?);
    }
    std::fs::create_dir_all(out).map_err(err)?;
    let dtype_name = match dtype {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        _ => "float32",
    };
    let token_text = |id: Option<u32>| -> Value {
        id.and_then(|i| {
            tok_json["model"]["vocab"]
                .as_object()?
                .iter()
                .find(|(_, v)| v.as_u64() == Some(u64::from(i)))
                .map(|(k, _)| json!(k))
        })
        .unwrap_or(Value::Null)
    };
    let config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.max_position_embeddings,
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": !tensors.contains_key("lm_head.weight"),
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_ids.first(),
        "torch_dtype": dtype_name,
        "converted_from": src.file_name().map(|n| n.to_string_lossy().into_owned()),
    });
    let tokenizer_config = json!({
        "add_bos_token": settings.add_bos,
        "add_eos_token": false,
        "bos_token": token_text(settings.bos_token),
        "eos_token": token_text(settings.eos_token),
        "chat_template": settings.chat_template,
        "clean_up_tokenization_spaces": false,
    });
    let generation = json!({
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_ids,
    });
    let mut files = Vec::new();
    for (name, v) in [
        ("config.json", &config),
        ("tokenizer.json", &tok_json),
        ("tokenizer_config.json", &tokenizer_config),
        ("generation_config.json", &generation),
    ] {
        let p = out.join(name);
        std::fs::write(&p, serde_json::to_string_pretty(v).map_err(err)? + "\n").map_err(err)?;
        files.push(p);
    }
    let st = out.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &st).map_err(err)?;
    files.push(st);
    Ok(Converted {
        files,
        tensors: tensors.len(),
        parameters,
    })
}
