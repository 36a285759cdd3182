//! `minerva convert`: a GGUF file to a Hugging Face folder (config.json, model.safetensors,
//! tokenizer.json, tokenizer_config.json, generation_config.json), so the same weights exist in
//! both layouts. Quantized tensors are dequantized to f32 (or f16); Q and K rows are put back in
//! the order Hugging Face's RoPE expects (GGUF stores them permuted for llama.cpp's interleaved
//! RoPE).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use serde_json::{json, Value};

use minerva_candle::weights::Weights;
use minerva_formats::config::Config;
use minerva_formats::tokenizer::gguf_json;

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
    // Checked as `minerva verify` does (bounds, overlaps), tokenizer arrays kept.
    let header = minerva_formats::gguf::read_header_with_tokenizer(src)
        .map_err(|e| format!("{}: {e}", src.display()))?;
    if out.exists() && std::fs::read_dir(out).map_err(err)?.next().is_some() {
        return Err(format!("{} exists and is not empty", out.display()));
    }
    let mut weights = Weights::from_gguf(src, &header)?;
    let cfg = Config::from_gguf(&header)?;
    let (tok_json, settings) = gguf_json(&header)?;
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

/// llama.cpp's Q/K permutation for its interleaved RoPE (what convert_hf_to_gguf.py does):
/// Hugging Face row `h*hd + i*hd/2 + j` becomes GGUF row `h*hd + 2j + i`.
fn permute(t: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = t.dims2()?;
    let hd = rows / heads;
    t.reshape((heads, 2, hd / 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))
}

fn le_bytes(t: &Tensor, dtype: DType) -> candle_core::Result<Vec<u8>> {
    let t = t.to_dtype(dtype)?.flatten_all()?;
    Ok(match dtype {
        DType::F16 => t
            .to_vec1::<half::f16>()?
            .iter()
            .flat_map(|v| v.to_bits().to_le_bytes())
            .collect(),
        DType::BF16 => t
            .to_vec1::<half::bf16>()?
            .iter()
            .flat_map(|v| v.to_bits().to_le_bytes())
            .collect(),
        _ => t
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
    })
}

/// What a folder-to-GGUF conversion wrote, and what the GGUF cannot say.
#[derive(Debug, Clone)]
pub struct ConvertedGguf {
    pub file: PathBuf,
    pub tensors: usize,
    pub parameters: u64,
    pub bytes: u64,
    /// Settings of the folder that llama.cpp's "llama" architecture has no key for.
    pub notes: Vec<String>,
}

/// Converts the Hugging Face folder `src` (Llama or Mistral; safetensors or .bin; any dtype)
/// into the GGUF file `out` with matrices of `dtype` (F32, F16 or BF16) and norms in F32, the
/// way llama.cpp's convert_hf_to_gguf.py does: architecture "llama", Q/K rows permuted for
/// llama.cpp's RoPE, tokenizer, chat template and special tokens in the metadata. `out` must
/// not exist; it appears only once complete.
pub fn hf_to_gguf(src: &Path, out: &Path, dtype: DType) -> Result<ConvertedGguf, String> {
    use minerva_candle::weights::{LAYER_TENSORS, MODEL_TENSORS};
    use minerva_formats::gguf_write::{self as gw, Value};
    let (ggml_type, file_type) = match dtype {
        DType::F32 => (gw::GGML_TYPE_F32, 0),
        DType::F16 => (gw::GGML_TYPE_F16, 1),
        DType::BF16 => (gw::GGML_TYPE_BF16, 32),
        other => return Err(format!("unsupported GGUF dtype {other:?} (f32, f16, bf16)")),
    };
    if out.exists() {
        return Err(format!("{} exists", out.display()));
    }
    let report = minerva_formats::verify::verify_path(src).map_err(err)?;
    if let Some(p) = report.error {
        return Err(format!("{}: {p}", src.display()));
    }
    let cfg = Config::from_hf_folder(src)?;
    let mut weights = Weights::from_hf_folder(src)?;
    let mut notes = Vec::new();
    if let Some(w) = cfg.sliding_window {
        notes.push(format!(
            "sliding_window {w} is not kept: llama.cpp's \"llama\" architecture has no sliding-window attention (convert_hf_to_gguf.py drops it too); prompts longer than {w} tokens will differ"
        ));
    }
    // (GGUF name, Hugging Face name, shape, permute for this many heads).
    let (h, hd) = (cfg.hidden_size, cfg.head_dim);
    let mut plan: Vec<(String, String, Vec<usize>, Option<usize>)> = Vec::new();
    let model = |i: usize| {
        (
            MODEL_TENSORS[i].0.to_string(),
            MODEL_TENSORS[i].1.to_string(),
        )
    };
    let (g, n) = model(0);
    plan.push((g, n, vec![cfg.vocab_size, h], None));
    for layer in 0..cfg.num_layers {
        for (g, n) in LAYER_TENSORS {
            let (shape, heads) = match *g {
                "attn_norm.weight" | "ffn_norm.weight" => (vec![h], None),
                "attn_q.weight" => (vec![cfg.num_heads * hd, h], Some(cfg.num_heads)),
                "attn_k.weight" => (vec![cfg.num_kv_heads * hd, h], Some(cfg.num_kv_heads)),
                "attn_v.weight" => (vec![cfg.num_kv_heads * hd, h], None),
                "attn_output.weight" => (vec![h, cfg.num_heads * hd], None),
                "ffn_down.weight" => (vec![h, cfg.intermediate_size], None),
                _ => (vec![cfg.intermediate_size, h], None),
            };
            plan.push((
                format!("blk.{layer}.{g}"),
                format!("model.layers.{layer}.{n}"),
                shape,
                heads,
            ));
        }
    }
    let (g, n) = model(1);
    plan.push((g, n, vec![h], None));
    if !cfg.tie_word_embeddings {
        let (g, n) = model(2);
        plan.push((g, n, vec![cfg.vocab_size, h], None));
    }
    let taken: std::collections::HashSet<&str> = plan.iter().map(|p| p.1.as_str()).collect();
    let extra: Vec<String> = weights
        .unused()
        .into_iter()
        .filter(|n| !taken.contains(n.as_str()))
        // Old checkpoints store RoPE's frequencies; tied models may store lm_head anyway.
        .filter(|n| !n.ends_with("rotary_emb.inv_freq") && n != "lm_head.weight")
        .collect();
    if !extra.is_empty() {
        return Err(format!(
            "tensors with no place in llama.cpp's llama graph: {}",
            extra.join(", ")
        ));
    }
    let tensors: Vec<gw::Tensor> = plan
        .iter()
        .map(|(g, _, shape, _)| {
            let elements: usize = shape.iter().product();
            let (ty, eb) = if shape.len() == 1 {
                (gw::GGML_TYPE_F32, 4)
            } else {
                (ggml_type, dtype.size_in_bytes())
            };
            gw::Tensor {
                name: g.clone(),
                shape: shape.iter().map(|&d| d as u64).collect(),
                ggml_type: ty,
                bytes: (elements * eb) as u64,
            }
        })
        .collect();
    let name = src
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let u = |v: usize| Value::U32(v as u32);
    let mut metadata: Vec<(String, Value)> = [
        ("general.architecture", Value::Str("llama".into())),
        ("general.type", Value::Str("model".into())),
        ("general.name", Value::Str(name)),
        ("general.file_type", Value::U32(file_type)),
        (
            "general.quantization_version",
            Value::U32(gw::QUANTIZATION_VERSION),
        ),
        ("llama.vocab_size", u(cfg.vocab_size)),
        ("llama.context_length", u(cfg.max_position_embeddings)),
        ("llama.embedding_length", u(h)),
        ("llama.block_count", u(cfg.num_layers)),
        ("llama.feed_forward_length", u(cfg.intermediate_size)),
        ("llama.rope.dimension_count", u(hd)),
        ("llama.attention.head_count", u(cfg.num_heads)),
        ("llama.attention.head_count_kv", u(cfg.num_kv_heads)),
        ("llama.attention.key_length", u(hd)),
        ("llama.attention.value_length", u(hd)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(cfg.rms_norm_eps as f32),
        ),
        ("llama.rope.freq_base", Value::F32(cfg.rope_theta)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    metadata.extend(minerva_formats::tokenizer::gguf_metadata(src)?);
    let mut parameters = 0u64;
    let partial = out.with_extension("gguf.partial");
    let written = (|| -> Result<u64, String> {
        let file = std::fs::File::create(&partial)
            .map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        let n = gw::write(&mut w, &metadata, &tensors, |i| {
            let (_, hf, shape, heads) = &plan[i];
            let t = weights.dense(hf, shape).map_err(std::io::Error::other)?;
            let t = match heads {
                Some(heads) => permute(&t, *heads).map_err(std::io::Error::other)?,
                None => t,
            };
            parameters += t.elem_count() as u64;
            let dt = if shape.len() == 1 { DType::F32 } else { dtype };
            le_bytes(&t, dt).map_err(std::io::Error::other)
        })
        .map_err(|e| format!("cannot write {}: {e}", partial.display()))?;
        use std::io::Write;
        w.flush().map_err(err)?;
        Ok(n)
    })();
    let bytes = match written {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, out).map_err(err)?;
    Ok(ConvertedGguf {
        file: out.to_path_buf(),
        tensors: tensors.len(),
        parameters,
        bytes,
        notes,
    })
}
