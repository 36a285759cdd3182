//! The Llama/Mistral decoder in MLX operations, computed in f32 on stored (f16/bf16/f32 or
//! affine-quantized) weights: embedding, RMSNorm, RoPE (the Hugging Face half-split layout, MLX's
//! `traditional = false`), grouped-query attention over a per-sequence KV cache with an optional
//! sliding window per layer, SwiGLU, and a tied or separate output head.
//!
//! It follows mlx-lm's `models/llama.py` operation for operation, so it gives mlx-lm's results.

use minerva_formats::config::{Arch, Config};
use mlx_rs::fast::{rms_norm, rope, scaled_dot_product_attention, ScaledDotProductAttentionMask};
use mlx_rs::ops::indexing::TryIndexOp;
use mlx_rs::ops::{concatenate, sigmoid};
use mlx_rs::Array;

use crate::weights::{mlx_err, Linear, Tensors, WResult};

struct Layer {
    attn_norm: Array,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    mlp_norm: Array,
    gate: Linear,
    up: Linear,
    down: Linear,
    /// Keys a query may see, itself included; None = all earlier positions.
    window: Option<usize>,
}

pub struct Transformer {
    heads: i32,
    kv_heads: i32,
    head_dim: i32,
    eps: f32,
    rope_theta: f32,
    embed: Linear,
    layers: Vec<Layer>,
    norm: Array,
    /// None: the output head is the embedding (tied).
    lm_head: Option<Linear>,
    vocab: usize,
}

/// Which layers use a sliding window: `layer_types` when config.json has it (transformers'
/// newer configs, and what mlx-lm reads), else every layer for Mistral (as transformers runs
/// Mistral) and none for Llama.
pub fn layer_windows(cfg: &Config, config_json: &serde_json::Value) -> WResult<Vec<Option<usize>>> {
    let Some(types) = config_json.get("layer_types") else {
        let w = match cfg.arch {
            Arch::Mistral => cfg.sliding_window,
            Arch::Llama => None,
        };
        return Ok(vec![w; cfg.num_layers]);
    };
    let types = types
        .as_array()
        .filter(|t| t.len() == cfg.num_layers)
        .ok_or_else(|| {
            format!(
                "config.json's layer_types should list {} layer kinds",
                cfg.num_layers
            )
        })?;
    types
        .iter()
        .map(|t| match t.as_str() {
            Some("full_attention") => Ok(None),
            Some("sliding_attention") => config_json
                .get("sliding_window")
                .and_then(serde_json::Value::as_u64)
                .filter(|&w| w > 0)
                .map(|w| Some(w as usize))
                .ok_or_else(|| {
                    "layer_types has \"sliding_attention\" but config.json has no positive sliding_window"
                        .to_string()
                }),
            _ => Err(format!(
                "layer_types entry {t} is not supported (\"full_attention\" or \"sliding_attention\")"
            )),
        })
        .collect()
}

fn dim(n: usize, what: &str) -> WResult<i32> {
    i32::try_from(n).map_err(|_| format!("{what} {n} is too large"))
}

impl Transformer {
    pub fn new(cfg: &Config, windows: Vec<Option<usize>>, mut t: Tensors) -> WResult<Self> {
        let hidden = dim(cfg.hidden_size, "hidden_size")?;
        let heads = dim(cfg.num_heads, "num_attention_heads")?;
        let kv_heads = dim(cfg.num_kv_heads, "num_key_value_heads")?;
        let head_dim = dim(cfg.head_dim, "head_dim")?;
        let inter = dim(cfg.intermediate_size, "intermediate_size")?;
        let vocab = dim(cfg.vocab_size, "vocab_size")?;
        let embed = t.linear("model.embed_tokens", vocab, hidden)?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for (i, window) in windows.into_iter().enumerate() {
            let p = format!("model.layers.{i}");
            layers.push(Layer {
                attn_norm: t.vector(&format!("{p}.input_layernorm.weight"), hidden)?,
                q: t.linear(&format!("{p}.self_attn.q_proj"), heads * head_dim, hidden)?,
                k: t.linear(
                    &format!("{p}.self_attn.k_proj"),
                    kv_heads * head_dim,
                    hidden,
                )?,
                v: t.linear(
                    &format!("{p}.self_attn.v_proj"),
                    kv_heads * head_dim,
                    hidden,
                )?,
                o: t.linear(&format!("{p}.self_attn.o_proj"), hidden, heads * head_dim)?,
                mlp_norm: t.vector(&format!("{p}.post_attention_layernorm.weight"), hidden)?,
                gate: t.linear(&format!("{p}.mlp.gate_proj"), inter, hidden)?,
                up: t.linear(&format!("{p}.mlp.up_proj"), inter, hidden)?,
                down: t.linear(&format!("{p}.mlp.down_proj"), hidden, inter)?,
                window,
            });
        }
        let norm = t.vector("model.norm.weight", hidden)?;
        // mlx-lm drops lm_head when the embeddings are tied; some folders keep a copy anyway.
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(t.linear("lm_head", vocab, hidden)?)
        };
        let extra: Vec<&str> = t
            .leftover()
            .into_iter()
            .filter(|n| !n.starts_with("lm_head.") && !n.ends_with("rotary_emb.inv_freq"))
            .collect();
        if let Some(first) = extra.first() {
            return Err(format!(
                "{} tensors the {} config does not describe, e.g. {first}",
                extra.len(),
                cfg.architecture
            ));
        }
        Ok(Transformer {
            heads,
            kv_heads,
            head_dim,
            eps: cfg.rms_norm_eps as f32,
            rope_theta: cfg.rope_theta,
            embed,
            layers,
            norm,
            lm_head,
            vocab: cfg.vocab_size,
        })
    }

    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// "4-bit", "8-bit" or the stored float type of the linear layers (mlx-lm may leave some
    /// unquantized: the description names what the attention projection uses).
    pub fn weight_kind(&self) -> String {
        self.layers
            .first()
            .map_or_else(|| self.embed.kind(), |l| l.q.kind())
    }

    /// Runs `tokens` after the `cache.len()` positions already cached, appends their keys and
    /// values, and returns the logits after the last token (`all`: after every token, row by row).
    pub fn forward(&self, tokens: &[u32], cache: &mut SeqCache, all: bool) -> WResult<Vec<f32>> {
        let out = self.forward_mlx(tokens, cache, all).map_err(mlx_err);
        if out.is_err() {
            // A failure can leave some layers' caches taken: forget the sequence.
            cache.truncate(0)?;
        }
        out
    }

    fn forward_mlx(
        &self,
        tokens: &[u32],
        cache: &mut SeqCache,
        all: bool,
    ) -> mlx_rs::error::Result<Vec<f32>> {
        let n = tokens.len() as i32;
        let start = cache.len;
        let offset = start as i32;
        if cache.layers.len() != self.layers.len() {
            cache.layers = (0..self.layers.len()).map(|_| None).collect();
        }
        let ids = Array::from_slice(tokens, &[n]);
        let mut h = self.embed.rows(&ids)?.reshape(&[1, n, -1])?;
        let scale = 1.0 / (self.head_dim as f32).sqrt();
        let split = |x: Array, heads: i32| {
            x.reshape(&[1, n, heads, self.head_dim])?
                .transpose_axes(&[0, 2, 1, 3])
        };
        for (layer, kv) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let x = rms_norm(&h, Some(&layer.attn_norm), self.eps)?;
            let q = split(layer.q.forward(&x)?, self.heads)?;
            let k = split(layer.k.forward(&x)?, self.kv_heads)?;
            let v = split(layer.v.forward(&x)?, self.kv_heads)?;
            let q = rope(&q, self.head_dim, false, self.rope_theta, 1.0, offset, None)?;
            let k = rope(&k, self.head_dim, false, self.rope_theta, 1.0, offset, None)?;
            let (k, v) = match kv.take() {
                None => (k, v),
                Some((pk, pv)) => (concatenate(&[pk, k], 2)?, concatenate(&[pv, v], 2)?),
            };
            let mask = attention_mask(start, tokens.len(), layer.window);
            let attn = match &mask {
                Mask::None => scaled_dot_product_attention(&q, &k, &v, scale, None, None)?,
                Mask::Causal => scaled_dot_product_attention(
                    &q,
                    &k,
                    &v,
                    scale,
                    ScaledDotProductAttentionMask::Causal,
                    None,
                )?,
                Mask::Allowed(m) => {
                    let m = Array::from_slice(m, &[n, offset + n]);
                    scaled_dot_product_attention(&q, &k, &v, scale, &m, None)?
                }
            };
            *kv = Some((k, v));
            let attn =
                attn.transpose_axes(&[0, 2, 1, 3])?
                    .reshape(&[1, n, self.heads * self.head_dim])?;
            h = h.add(layer.o.forward(&attn)?)?;
            let x = rms_norm(&h, Some(&layer.mlp_norm), self.eps)?;
            let gate = layer.gate.forward(&x)?;
            let act = gate
                .multiply(sigmoid(&gate)?)?
                .multiply(layer.up.forward(&x)?)?;
            h = h.add(layer.down.forward(&act)?)?;
        }
        let h = if all {
            h
        } else {
            h.try_index((.., (n - 1).., ..))?
        };
        let h = rms_norm(&h, Some(&self.norm), self.eps)?;
        let logits = match &self.lm_head {
            Some(head) => head.forward(&h)?,
            None => self.embed.forward(&h)?,
        };
        let logits = logits.as_dtype(mlx_rs::Dtype::Float32)?;
        let mut outputs: Vec<&Array> = vec![&logits];
        for (k, v) in cache.layers.iter().flatten() {
            outputs.push(k);
            outputs.push(v);
        }
        mlx_rs::transforms::eval(outputs)?;
        cache.len += tokens.len();
        Ok(logits
            .try_as_slice::<f32>()
            .map_err(|e| mlx_rs::error::Exception::custom(format!("reading the logits: {e}")))?
            .to_vec())
    }
}

/// How queries at positions `start..start + n` may attend to keys `0..start + n`.
#[derive(Debug, PartialEq)]
enum Mask {
    /// Every key (one query that sees everything before it).
    None,
    /// Each query sees itself and everything before it (MLX's bottom-right aligned causal mode).
    Causal,
    /// Row-major `[n, start + n]`: true where the query may see the key.
    Allowed(Vec<bool>),
}

fn attention_mask(start: usize, n: usize, window: Option<usize>) -> Mask {
    let total = start + n;
    match window {
        Some(w) if total > w => {
            let mut m = Vec::with_capacity(n * total);
            for i in 0..n {
                let pos = start + i;
                m.extend((0..total).map(|j| j <= pos && pos - j < w));
            }
            Mask::Allowed(m)
        }
        _ if n == 1 => Mask::None,
        _ => Mask::Causal,
    }
}

/// One sequence's keys and values, per layer: `[1, kv_heads, positions, head_dim]`.
#[derive(Default, Clone)]
pub struct SeqCache {
    layers: Vec<Option<(Array, Array)>>,
    len: usize,
}

impl SeqCache {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets positions from `len` on.
    pub fn truncate(&mut self, len: usize) -> WResult<()> {
        if len == 0 {
            self.layers.clear();
            self.len = 0;
            return Ok(());
        }
        if len >= self.len {
            return Ok(());
        }
        let keep = len as i32;
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.try_index((.., .., ..keep, ..)).map_err(mlx_err)?;
            *v = v.try_index((.., .., ..keep, ..)).map_err(mlx_err)?;
        }
        self.len = len;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_follow_causality_and_the_window() {
        assert_eq!(attention_mask(5, 1, None), Mask::None);
        assert_eq!(attention_mask(0, 3, None), Mask::Causal);
        assert_eq!(attention_mask(2, 1, Some(3)), Mask::None);
        // Window 2, positions 1 and 2 after one cached: each sees itself and one before.
        let Mask::Allowed(m) = attention_mask(1, 2, Some(2)) else {
            panic!("expected an explicit mask");
        };
        assert_eq!(m, vec![true, true, false, false, true, true]);
        // One new query past the window sees only the last `w` keys.
        let Mask::Allowed(m) = attention_mask(4, 1, Some(2)) else {
            panic!("expected an explicit mask");
        };
        assert_eq!(m, vec![false, false, false, true, true]);
    }
}
