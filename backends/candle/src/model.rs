//! The Llama/Mistral decoder, written once over candle tensors for every file format: dense f32
//! weights from SafeTensors and PyTorch files, quantized ones from GGUF.
//!
//! Per layer: RMSNorm, grouped-query attention with RoPE (Mistral: sliding window), residual,
//! RMSNorm, SwiGLU MLP, residual. Computation is f32 on the CPU. The KV cache is per sequence,
//! so one model serves several sequences; grouped-query attention multiplies query groups
//! against their shared K/V head without copying K/V.

use candle_core::{DType, Device, Module, Tensor, D};

use crate::config::Config;
use crate::kernels;
use crate::pool::Pool;
use crate::weights::{Embedding, Layout, Linear, Weights};

type CResult<T> = candle_core::Result<T>;

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
}

struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

struct Layer {
    input_norm: Tensor,
    attn: Attention,
    post_norm: Tensor,
    mlp: Mlp,
}

pub struct Transformer {
    cfg: Config,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Linear,
    /// [max_positions, head_dim / 2]
    cos: Tensor,
    sin: Tensor,
    /// GGUF stores Q/K rows permuted for llama.cpp's interleaved ("normal") RoPE; Hugging Face
    /// files use the half-split (NeoX) form.
    rope_interleaved: bool,
}

/// One layer's keys and values for one sequence: buffers [1, kv_heads, capacity, head_dim] of
/// which the first `len` positions are filled. They double when full, so appending a token
/// copies one token's worth (amortized), not the whole cache.
pub struct LayerKv {
    k: Tensor,
    v: Tensor,
    len: usize,
}

impl LayerKv {
    /// Appends `k`, `v` ([1, kv_heads, t, head_dim]) and returns views of everything cached.
    fn append(slot: &mut Option<LayerKv>, k: &Tensor, v: &Tensor) -> CResult<(Tensor, Tensor)> {
        let (b, kvh, t, hd) = k.dims4()?;
        let (len, cap) = match slot {
            Some(c) => (c.len, c.k.dim(2)?),
            None => (0, 0),
        };
        if len + t > cap {
            let cap = (len + t).next_power_of_two().max(64);
            let nk = Tensor::zeros((b, kvh, cap, hd), DType::F32, &Device::Cpu)?;
            let nv = Tensor::zeros((b, kvh, cap, hd), DType::F32, &Device::Cpu)?;
            if let Some(c) = slot.as_ref().filter(|c| c.len > 0) {
                nk.slice_set(&c.k.narrow(2, 0, c.len)?.contiguous()?, 2, 0)?;
                nv.slice_set(&c.v.narrow(2, 0, c.len)?.contiguous()?, 2, 0)?;
            }
            *slot = Some(LayerKv { k: nk, v: nv, len });
        }
        let Some(c) = slot.as_mut() else {
            candle_core::bail!("KV cache slot missing after growth");
        };
        c.k.slice_set(k, 2, len)?;
        c.v.slice_set(v, 2, len)?;
        c.len = len + t;
        Ok((c.k.narrow(2, 0, c.len)?, c.v.narrow(2, 0, c.len)?))
    }
}

/// What every layer's attention needs about the positions of a forward pass.
struct Positions {
    /// RoPE tables for the positions, [t, head_dim / 2].
    cos: Tensor,
    sin: Tensor,
    /// See [`Transformer::mask`].
    mask: Option<Tensor>,
}

/// One sequence's cached keys and values, per layer.
#[derive(Default)]
pub struct SeqCache {
    layers: Vec<Option<LayerKv>>,
    len: usize,
}

impl SeqCache {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Drops everything at positions `pos..`.
    pub fn truncate(&mut self, pos: usize) -> CResult<()> {
        if pos >= self.len {
            return Ok(());
        }
        if pos == 0 {
            *self = SeqCache::default();
            return Ok(());
        }
        for c in self.layers.iter_mut().flatten() {
            c.len = c.len.min(pos);
        }
        self.len = pos;
        Ok(())
    }
}

impl Transformer {
    pub fn new(cfg: Config, mut w: Weights, max_positions: usize) -> Result<Transformer, String> {
        let (h, kvh, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let (d, ff) = (cfg.hidden_size, cfg.intermediate_size);
        let embed = w.embedding("model.embed_tokens.weight", cfg.vocab_size, d)?;
        let lm_head = if w.contains("lm_head.weight") {
            w.linear("lm_head.weight", cfg.vocab_size, d)?
        } else if cfg.tie_word_embeddings {
            // Tied: the embedding (quantized in place, or dense) doubles as the output matrix.
            w.linear_shared("model.embed_tokens.weight", cfg.vocab_size, d)?
        } else {
            return Err("tensor lm_head.weight is missing and tie_word_embeddings is false".into());
        };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            layers.push(Layer {
                input_norm: w.dense(&format!("{p}.input_layernorm.weight"), &[d])?,
                attn: Attention {
                    q: w.linear(&format!("{p}.self_attn.q_proj.weight"), h * hd, d)?,
                    k: w.linear(&format!("{p}.self_attn.k_proj.weight"), kvh * hd, d)?,
                    v: w.linear(&format!("{p}.self_attn.v_proj.weight"), kvh * hd, d)?,
                    o: w.linear(&format!("{p}.self_attn.o_proj.weight"), d, h * hd)?,
                },
                post_norm: w.dense(&format!("{p}.post_attention_layernorm.weight"), &[d])?,
                mlp: Mlp {
                    gate: w.linear(&format!("{p}.mlp.gate_proj.weight"), ff, d)?,
                    up: w.linear(&format!("{p}.mlp.up_proj.weight"), ff, d)?,
                    down: w.linear(&format!("{p}.mlp.down_proj.weight"), d, ff)?,
                },
            });
        }
        let norm = w.dense("model.norm.weight", &[d])?;
        // The embedding is still in the map when tied and quantized (linear_shared cloned it).
        let unused: Vec<String> = w
            .unused()
            .into_iter()
            .filter(|n| n != "model.embed_tokens.weight" && !n.ends_with("rotary_emb.inv_freq"))
            .collect();
        if !unused.is_empty() {
            return Err(format!(
                "the files hold tensors a {} of this config does not use: {}",
                cfg.architecture,
                unused
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let (cos, sin) =
            rope_tables(hd, cfg.rope_theta, max_positions).map_err(|e| e.to_string())?;
        Ok(Transformer {
            rope_interleaved: w.layout == Layout::Gguf,
            cfg,
            embed,
            layers,
            norm,
            lm_head,
            cos,
            sin,
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// Runs `tokens` at positions `cache.len()..` and returns logits [n, vocab]: for the last
    /// token only, or for every token with `all`.
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut SeqCache,
        all: bool,
        pool: &Pool,
    ) -> CResult<Tensor> {
        let t = tokens.len();
        let start = cache.len;
        if start + t > self.max_positions() {
            candle_core::bail!(
                "positions {start}..{} exceed the context of {}",
                start + t,
                self.max_positions()
            );
        }
        if cache.layers.len() != self.layers.len() {
            cache.layers = (0..self.layers.len()).map(|_| None).collect();
        }
        let mut x = self.embed(tokens)?.unsqueeze(0)?; // [1, t, d]
        let at = Positions {
            cos: self.cos.narrow(0, start, t)?,
            sin: self.sin.narrow(0, start, t)?,
            mask: self.mask(start, t)?,
        };
        for (layer, slot) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let residual = &x;
            let h = candle_nn::ops::rms_norm(&x, &layer.input_norm, self.cfg.rms_norm_eps as f32)?;
            let h = self.attention(&layer.attn, &h, &at, slot, pool)?;
            let x1 = (residual + h)?;
            let h = candle_nn::ops::rms_norm(&x1, &layer.post_norm, self.cfg.rms_norm_eps as f32)?;
            let m = &layer.mlp;
            let g = candle_nn::ops::silu(&m.gate.forward(&h, pool)?)?;
            let h = m.down.forward(&(g * m.up.forward(&h, pool)?)?, pool)?;
            x = (x1 + h)?;
        }
        cache.len = start + t;
        let x = if all { x } else { x.narrow(1, t - 1, 1)? };
        let x = candle_nn::ops::rms_norm(&x, &self.norm, self.cfg.rms_norm_eps as f32)?;
        self.lm_head.forward(&x, pool)?.squeeze(0)
    }

    fn embed(&self, tokens: &[u32]) -> CResult<Tensor> {
        match &self.embed {
            Embedding::Dense(t) => t.index_select(&Tensor::new(tokens, &Device::Cpu)?, 0),
            Embedding::Mapped(m) => {
                let mut out = vec![0f32; tokens.len() * m.cols];
                for (&id, o) in tokens.iter().zip(out.chunks_exact_mut(m.cols)) {
                    if id as usize >= m.rows {
                        candle_core::bail!("token {id} is outside the vocabulary of {}", m.rows);
                    }
                    kernels::dequantize_row(m.qtype, m.bytes(), m.cols, id as usize, o);
                }
                Tensor::from_vec(out, (tokens.len(), m.cols), &Device::Cpu)
            }
        }
    }

    /// Additive mask [t, start + t]: 0 where query i (at start + i) may see key j, -inf
    /// elsewhere (the future, and keys outside the sliding window). None when nothing is masked.
    fn mask(&self, start: usize, t: usize) -> CResult<Option<Tensor>> {
        let total = start + t;
        let window = self.cfg.sliding_window.unwrap_or(usize::MAX);
        if t == 1 && total <= window {
            return Ok(None);
        }
        let mut m = vec![0f32; t * total];
        for i in 0..t {
            let q = start + i;
            for j in 0..total {
                if j > q || q - j >= window {
                    m[i * total + j] = f32::NEG_INFINITY;
                }
            }
        }
        Tensor::from_vec(m, (t, total), &Device::Cpu).map(Some)
    }

    fn attention(
        &self,
        a: &Attention,
        x: &Tensor,
        at: &Positions,
        slot: &mut Option<LayerKv>,
        pool: &Pool,
    ) -> CResult<Tensor> {
        let (_, t, _) = x.dims3()?;
        let (cos, sin) = (&at.cos, &at.sin);
        let (h, kvh, hd) = (self.cfg.num_heads, self.cfg.num_kv_heads, self.cfg.head_dim);
        let q =
            a.q.forward(x, pool)?
                .reshape((1, t, h, hd))?
                .transpose(1, 2)?
                .contiguous()?;
        let k =
            a.k.forward(x, pool)?
                .reshape((1, t, kvh, hd))?
                .transpose(1, 2)?
                .contiguous()?;
        let v =
            a.v.forward(x, pool)?
                .reshape((1, t, kvh, hd))?
                .transpose(1, 2)?
                .contiguous()?;
        let (q, k) = if self.rope_interleaved {
            (
                candle_nn::rotary_emb::rope_i(&q, cos, sin)?,
                candle_nn::rotary_emb::rope_i(&k, cos, sin)?,
            )
        } else {
            (
                candle_nn::rotary_emb::rope(&q, cos, sin)?,
                candle_nn::rotary_emb::rope(&k, cos, sin)?,
            )
        };
        let (k, v) = LayerKv::append(slot, &k, &v)?;
        let total = k.dim(2)?;
        let rep = h / kvh;
        // Heads kv*rep .. kv*rep+rep share K/V head kv: fold them into the query rows.
        let q = q.reshape((1, kvh, rep * t, hd))?;
        let scale = 1.0 / (hd as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?; // [1, kvh, rep*t, total]
        let scores = match &at.mask {
            Some(m) => scores
                .reshape((1, kvh, rep, t, total))?
                .broadcast_add(m)?
                .reshape((1, kvh, rep * t, total))?,
            None => scores,
        };
        let p = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = p.matmul(&v)?; // [1, kvh, rep*t, hd]
        let out = out
            .reshape((1, h, t, hd))?
            .transpose(1, 2)?
            .reshape((1, t, h * hd))?;
        a.o.forward(&out, pool)
    }
}

fn rope_tables(head_dim: usize, theta: f32, positions: usize) -> CResult<(Tensor, Tensor)> {
    let inv: Vec<f32> = (0..head_dim / 2)
        .map(|i| 1.0 / theta.powf(2.0 * i as f32 / head_dim as f32))
        .collect();
    let inv = Tensor::from_vec(inv, (1, head_dim / 2), &Device::Cpu)?;
    let pos = Tensor::arange(0u32, positions as u32, &Device::Cpu)?
        .to_dtype(DType::F32)?
        .reshape((positions, 1))?;
    let freqs = pos.broadcast_mul(&inv)?;
    Ok((freqs.cos()?.contiguous()?, freqs.sin()?.contiguous()?))
}

/// Index of the largest value of each row (greedy), for tests and agreement checks.
pub fn argmax_rows(logits: &Tensor) -> CResult<Vec<u32>> {
    logits.argmax(D::Minus1)?.to_vec1::<u32>()
}

impl Linear {
    /// `x @ W^T` over the last dimension of `x`.
    fn forward(&self, x: &Tensor, pool: &Pool) -> CResult<Tensor> {
        match self {
            Linear::Candle(q) => q.forward(x),
            Linear::Mapped(m) => {
                let mut dims = x.dims().to_vec();
                let k = dims.last().copied().unwrap_or(0);
                if k != m.cols {
                    candle_core::bail!("input width {k} does not match the matrix's {}", m.cols);
                }
                let xs = x.flatten_all()?.to_vec1::<f32>()?;
                let mut out = vec![0f32; xs.len() / k * m.rows];
                kernels::matmul(pool, m.qtype, m.bytes(), m.rows, k, &xs, &mut out);
                if let Some(last) = dims.last_mut() {
                    *last = m.rows;
                }
                Tensor::from_vec(out, dims, &Device::Cpu)
            }
        }
    }
}
