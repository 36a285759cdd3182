//! The Llama/Mistral decoder, written once over candle tensors for every file format: dense f32
//! weights from SafeTensors and PyTorch files, quantized ones from GGUF.
//!
//! Per layer: RMSNorm, grouped-query attention with RoPE (Mistral: sliding window), residual,
//! RMSNorm, SwiGLU MLP, residual. Computation is f32 on the CPU. The KV cache is per sequence,
//! so one model serves several sequences; grouped-query attention multiplies query groups
//! against their shared K/V head without copying K/V.

use candle_core::{DType, Device, Module, Tensor, D};

use crate::kernels;
use crate::pool::Pool;
use crate::weights::{Embedding, Layout, Linear, MappedQ, Weights};
use minerva_formats::config::Config;

pub(crate) type CResult<T> = candle_core::Result<T>;

pub(crate) struct Attention {
    pub(crate) q: Linear,
    pub(crate) k: Linear,
    pub(crate) v: Linear,
    pub(crate) o: Linear,
}

pub(crate) struct Mlp {
    pub(crate) gate: Linear,
    pub(crate) up: Linear,
    pub(crate) down: Linear,
}

pub(crate) struct Layer {
    pub(crate) input_norm: Tensor,
    pub(crate) attn: Attention,
    pub(crate) post_norm: Tensor,
    pub(crate) mlp: Mlp,
}

pub struct Transformer {
    cfg: Config,
    embed: Embedding,
    pub(crate) layers: Vec<Layer>,
    pub(crate) norm: Tensor,
    pub(crate) lm_head: Linear,
    /// [max_positions, head_dim / 2]
    pub(crate) cos: Tensor,
    pub(crate) sin: Tensor,
    /// GGUF stores Q/K rows permuted for llama.cpp's interleaved ("normal") RoPE; Hugging Face
    /// files use the half-split (NeoX) form.
    pub(crate) rope_interleaved: bool,
    /// The one-token path, when every matrix is Minerva's to multiply.
    fast: Option<Fast>,
    /// Round cached keys and values to f16, as llama.cpp's default cache does: for GGUF files,
    /// so both backends compute the same attention from the same file. Hugging Face folders
    /// keep f32 (the transformers reference).
    pub(crate) kv_f16: bool,
}

/// A layer as the one-token path reads it: norms as plain vectors, matrices in the mapped file.
struct FastLayer {
    input_norm: Vec<f32>,
    post_norm: Vec<f32>,
    q: MappedQ,
    k: MappedQ,
    v: MappedQ,
    o: MappedQ,
    gate: MappedQ,
    up: MappedQ,
    down: MappedQ,
}

/// Decoding one token with candle's operations costs more in per-operation overhead (a
/// tensor allocated and dispatched for each norm, RoPE, softmax, add...) than in arithmetic at
/// this size. This path runs a step on plain slices instead: Q/K/V and gate/up each in one
/// pass over the pool (the input quantized once), attention heads spread over the pool, the
/// KV cache read where it lies.
struct Fast {
    layers: Vec<FastLayer>,
    norm: Vec<f32>,
    lm_head: MappedQ,
    /// [max_positions, head_dim / 2], row-major.
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Fast {
    fn new(
        layers: &[Layer],
        norm: &Tensor,
        lm_head: &Linear,
        cos: &Tensor,
        sin: &Tensor,
    ) -> CResult<Option<Fast>> {
        let mapped = |l: &Linear| match l {
            Linear::Mapped(m) => Some(m.clone()),
            Linear::Candle(_) => None,
        };
        let mut fast_layers = Vec::with_capacity(layers.len());
        for l in layers {
            let (a, m) = (&l.attn, &l.mlp);
            let (Some(q), Some(k), Some(v), Some(o), Some(gate), Some(up), Some(down)) = (
                mapped(&a.q),
                mapped(&a.k),
                mapped(&a.v),
                mapped(&a.o),
                mapped(&m.gate),
                mapped(&m.up),
                mapped(&m.down),
            ) else {
                return Ok(None);
            };
            fast_layers.push(FastLayer {
                input_norm: l.input_norm.to_vec1()?,
                post_norm: l.post_norm.to_vec1()?,
                q,
                k,
                v,
                o,
                gate,
                up,
                down,
            });
        }
        let Some(lm_head) = mapped(lm_head) else {
            return Ok(None);
        };
        Ok(Some(Fast {
            layers: fast_layers,
            norm: norm.to_vec1()?,
            lm_head,
            cos: cos.flatten_all()?.to_vec1()?,
            sin: sin.flatten_all()?.to_vec1()?,
        }))
    }
}

fn part(m: &MappedQ) -> kernels::Part<'_> {
    kernels::Part {
        t: m.qtype,
        w: m.bytes(),
        n: m.rows,
    }
}

/// `out = x / rms(x) * w`, as candle's rms_norm computes it.
fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let mean = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let r = 1.0 / (mean + eps).sqrt();
    for ((o, v), w) in out.iter_mut().zip(x).zip(w) {
        *o = v * r * w;
    }
}

/// Rotates one head's vector: pairs (2i, 2i+1) when `interleaved`, else (i, i + hd/2).
fn rope(v: &mut [f32], cos: &[f32], sin: &[f32], interleaved: bool) {
    let half = v.len() / 2;
    for i in 0..half {
        let (a, b) = if interleaved {
            (2 * i, 2 * i + 1)
        } else {
            (i, i + half)
        };
        let (x0, x1) = (v[a], v[b]);
        v[a] = x0 * cos[i] - x1 * sin[i];
        v[b] = x0 * sin[i] + x1 * cos[i];
    }
}

struct HeadsOut(*mut f32);
// SAFETY: each task writes only its own head's slice of the buffer, which outlives the job.
unsafe impl Sync for HeadsOut {}

/// One query token's attention over cached positions `lo..kv.len`, a task per query head.
fn attend(
    pool: &Pool,
    q: &[f32],
    kv: &LayerKv,
    lo: usize,
    (heads, kv_heads, hd): (usize, usize, usize),
    out: &mut [f32],
) {
    let (rep, kvd, total, cap) = (heads / kv_heads, kv_heads * hd, kv.len, kv.cap);
    let scale = 1.0 / (hd as f32).sqrt();
    let o = HeadsOut(out.as_mut_ptr());
    let o = &o;
    pool.run(heads, &|head| {
        let g = head / rep;
        let qh: Vec<f32> = q[head * hd..(head + 1) * hd]
            .iter()
            .map(|x| x * scale)
            .collect();
        let mut p = vec![0f32; total - lo];
        kernels::scores(&qh, &kv.kt[g * hd * cap..], cap, lo, &mut p);
        let max = p.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let mut sum = 0f32;
        for x in p.iter_mut() {
            *x = (*x - max).exp();
            sum += *x;
        }
        let inv = 1.0 / sum;
        p.iter_mut().for_each(|x| *x *= inv);
        let mut acc = vec![0f32; hd];
        kernels::weighted_sum(&p, &kv.v[lo * kvd..], kvd, g * hd, &mut acc);
        // SAFETY: head < heads, so the slice lies inside `out`; each head has one task.
        unsafe { std::ptr::copy_nonoverlapping(acc.as_ptr(), o.0.add(head * hd), hd) };
    });
}

/// One layer's keys and values for one sequence. Values are token-major: position `p`'s are
/// `v[p * kv_dim..(p + 1) * kv_dim]` (heads one after another). Keys are stored transposed per
/// head, `kt[(head * head_dim + d) * cap + p]`, so a query's scores over consecutive positions
/// are one vector multiply-add per dimension (no horizontal sums), and candle's path multiplies
/// by them as they lie. Both grow by doubling: appending copies one token's worth (amortized).
#[derive(Default, Clone)]
pub struct LayerKv {
    kt: Vec<f32>,
    v: Vec<f32>,
    cap: usize,
    len: usize,
}

impl LayerKv {
    /// Appends `n` tokens' keys and values, each token-major ([n, kv_heads * head_dim]).
    fn push(&mut self, keys: &[f32], values: &[f32], kv_dim: usize) {
        let n = keys.len() / kv_dim;
        if self.len + n > self.cap {
            let cap = (self.len + n).next_power_of_two().max(64);
            let mut kt = vec![0f32; kv_dim * cap];
            for r in 0..kv_dim {
                kt[r * cap..r * cap + self.len]
                    .copy_from_slice(&self.kt[r * self.cap..r * self.cap + self.len]);
            }
            self.kt = kt;
            self.cap = cap;
        }
        for (i, tok) in keys.chunks_exact(kv_dim).enumerate() {
            for (r, &x) in tok.iter().enumerate() {
                self.kt[r * self.cap + self.len + i] = x;
            }
        }
        self.v.truncate(self.len * kv_dim);
        self.v.extend_from_slice(values);
        self.len += n;
    }

    /// Appends `k`, `v` ([1, kv_heads, t, head_dim]) and returns everything cached: keys
    /// transposed [1, kv_heads, head_dim, len], values [1, kv_heads, len, head_dim].
    fn append(&mut self, k: &Tensor, v: &Tensor) -> CResult<(Tensor, Tensor)> {
        let (b, kvh, _, hd) = k.dims4()?;
        let token_major = |x: &Tensor| x.transpose(1, 2)?.flatten_all()?.to_vec1::<f32>();
        self.push(&token_major(k)?, &token_major(v)?, kvh * hd);
        let len = self.len;
        let kt = Tensor::from_slice(&self.kt, (b, kvh, hd, self.cap), &Device::Cpu)?
            .narrow(3, 0, len)?
            .contiguous()?;
        let v = Tensor::from_slice(&self.v, (b, len, kvh, hd), &Device::Cpu)?
            .transpose(1, 2)?
            .contiguous()?;
        Ok((kt, v))
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
#[derive(Default, Clone)]
pub struct SeqCache {
    layers: Vec<LayerKv>,
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
        for c in self.layers.iter_mut() {
            let per_token = c.v.len() / self.len;
            c.v.truncate(pos * per_token);
            c.len = c.len.min(pos);
        }
        self.len = pos;
        Ok(())
    }
}

impl Transformer {
    /// Whether every matrix is multiplied where it lies in the mapped files by Minerva's
    /// kernels (and one-token steps take the plain-slice path), rather than held in memory by
    /// candle's quantized tensors.
    pub fn matrices_in_place(&self) -> bool {
        self.fast.is_some()
    }

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
        let fast = Fast::new(&layers, &norm, &lm_head, &cos, &sin).map_err(|e| e.to_string())?;
        Ok(Transformer {
            fast,
            kv_f16: w.layout == Layout::Gguf,
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
            cache.layers = (0..self.layers.len()).map(|_| LayerKv::default()).collect();
        }
        if t == 1 {
            if let Some(fast) = &self.fast {
                return self.forward_one(fast, tokens[0], cache, pool);
            }
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

    /// One token at position `cache.len()` on plain slices (see [`Fast`]); logits [1, vocab].
    fn forward_one(
        &self,
        fast: &Fast,
        token: u32,
        cache: &mut SeqCache,
        pool: &Pool,
    ) -> CResult<Tensor> {
        let cfg = &self.cfg;
        let (d, ff, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
        let (h, kvh) = (cfg.num_heads, cfg.num_kv_heads);
        let eps = cfg.rms_norm_eps as f32;
        let mut x = match &self.embed {
            Embedding::Mapped(m) => {
                if token as usize >= m.rows {
                    candle_core::bail!("token {token} is outside the vocabulary of {}", m.rows);
                }
                let mut x = vec![0f32; d];
                kernels::dequantize_row(m.qtype, m.bytes(), m.cols, token as usize, &mut x);
                x
            }
            Embedding::Dense(_) => self.embed(&[token])?.flatten_all()?.to_vec1()?,
        };
        let pos = cache.len;
        let half = hd / 2;
        let (cos, sin) = (
            &fast.cos[pos * half..(pos + 1) * half],
            &fast.sin[pos * half..(pos + 1) * half],
        );
        let total = pos + 1;
        let lo = cfg.sliding_window.map_or(0, |w| total.saturating_sub(w));
        let mut hn = vec![0f32; d];
        let (mut q, mut k, mut v) = (
            vec![0f32; h * hd],
            vec![0f32; kvh * hd],
            vec![0f32; kvh * hd],
        );
        let (mut att, mut o) = (vec![0f32; h * hd], vec![0f32; d]);
        let (mut g, mut u) = (vec![0f32; ff], vec![0f32; ff]);
        for (l, kv) in fast.layers.iter().zip(cache.layers.iter_mut()) {
            rms_norm(&x, &l.input_norm, eps, &mut hn);
            kernels::matmul_parts(
                pool,
                &[part(&l.q), part(&l.k), part(&l.v)],
                d,
                &hn,
                &mut [&mut q, &mut k, &mut v],
            );
            for head in q.chunks_exact_mut(hd).chain(k.chunks_exact_mut(hd)) {
                rope(head, cos, sin, self.rope_interleaved);
            }
            if self.kv_f16 {
                for x in k.iter_mut().chain(v.iter_mut()) {
                    *x = half::f16::from_f32(*x).to_f32();
                }
            }
            kv.push(&k, &v, kvh * hd);
            attend(pool, &q, kv, lo, (h, kvh, hd), &mut att);
            kernels::matmul_parts(pool, &[part(&l.o)], h * hd, &att, &mut [&mut o]);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            rms_norm(&x, &l.post_norm, eps, &mut hn);
            kernels::matmul_parts(
                pool,
                &[part(&l.gate), part(&l.up)],
                d,
                &hn,
                &mut [&mut g, &mut u],
            );
            for (a, b) in g.iter_mut().zip(&u) {
                *a = *a / (1.0 + (-*a).exp()) * b;
            }
            kernels::matmul_parts(pool, &[part(&l.down)], ff, &g, &mut [&mut o]);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        }
        cache.len = total;
        rms_norm(&x, &fast.norm, eps, &mut hn);
        let vocab = fast.lm_head.rows;
        let mut logits = vec![0f32; vocab];
        kernels::matmul_parts(pool, &[part(&fast.lm_head)], d, &hn, &mut [&mut logits]);
        Tensor::from_vec(logits, (1, vocab), &Device::Cpu)
    }

    pub(crate) fn embed(&self, tokens: &[u32]) -> CResult<Tensor> {
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
    pub(crate) fn mask(&self, start: usize, t: usize) -> CResult<Option<Tensor>> {
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
        slot: &mut LayerKv,
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
        let (k, v) = if self.kv_f16 {
            let round = |x: &Tensor| x.to_dtype(DType::F16)?.to_dtype(DType::F32);
            (round(&k)?, round(&v)?)
        } else {
            (k, v)
        };
        let (kt, v) = slot.append(&k, &v)?;
        let total = kt.dim(3)?;
        let rep = h / kvh;
        // Heads kv*rep .. kv*rep+rep share K/V head kv: fold them into the query rows.
        let q = q.reshape((1, kvh, rep * t, hd))?;
        let scale = 1.0 / (hd as f64).sqrt();
        let scores = (q.matmul(&kt)? * scale)?; // [1, kvh, rep*t, total]
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
