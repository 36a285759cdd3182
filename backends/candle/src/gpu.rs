//! The same Llama/Mistral decoder on a CUDA GPU, in candle's operations and CUDA kernels
//! (feature `cuda`).
//!
//! It is built from the CPU [`Transformer`] of the same files, so loading, checks and tensor
//! names stay in one place: quantized matrices go to the GPU as they are stored (candle's
//! quantized CUDA kernels multiply them), dense ones (F16/BF16/F32) as f16 (cuBLAS, f32
//! accumulation), norms and RoPE tables as f32. Activations are f32. The token embedding stays
//! where it is (the mapped file): a step uploads its tokens' rows. Each sequence has its own KV
//! cache on the GPU, grown by doubling and read in place; queries of a grouped-query head group
//! are folded into one matrix product against their shared K/V head, as on the CPU.

use std::sync::Arc;

use candle_core::quantized::{ggml_file, GgmlDType, QMatMul};
use candle_core::{DType, Device, Module, Tensor};

use crate::kernels::QType;
use crate::model::{CResult, Transformer};
use crate::weights::Linear;
use minerva_formats::config::Config;

/// A matrix on the GPU for `x @ W^T`.
enum GpuLinear {
    /// GGUF block-quantized, multiplied by candle's quantized kernels.
    Quant(QMatMul),
    /// Dense [out, in] in f16.
    Half(Tensor),
}

impl GpuLinear {
    fn new(l: &Linear, dev: &Device) -> CResult<GpuLinear> {
        match l {
            Linear::Mapped(m) => match m.qtype {
                QType::F32 | QType::F16 | QType::BF16 => {
                    let dtype = match m.qtype {
                        QType::F32 => DType::F32,
                        QType::F16 => DType::F16,
                        _ => DType::BF16,
                    };
                    let t = Tensor::from_raw_buffer(m.bytes(), dtype, &[m.rows, m.cols], dev)?;
                    Ok(GpuLinear::Half(t.to_dtype(DType::F16)?))
                }
                q => {
                    let g = match q {
                        QType::Q4_0 => GgmlDType::Q4_0,
                        QType::Q4_1 => GgmlDType::Q4_1,
                        QType::Q4K => GgmlDType::Q4K,
                        QType::Q5K => GgmlDType::Q5K,
                        QType::Q6K => GgmlDType::Q6K,
                        _ => GgmlDType::Q8_0,
                    };
                    // GGUF dimensions, innermost first.
                    let qt = ggml_file::qtensor_from_ggml(g, m.bytes(), vec![m.rows, m.cols], dev)?;
                    Ok(GpuLinear::Quant(QMatMul::from_arc(Arc::new(qt))?))
                }
            },
            Linear::Candle(QMatMul::QTensor(q)) => {
                let (rows, cols) = q.shape().dims2()?;
                let qt =
                    ggml_file::qtensor_from_ggml(q.dtype(), &q.data()?, vec![rows, cols], dev)?;
                Ok(GpuLinear::Quant(QMatMul::from_arc(Arc::new(qt))?))
            }
            Linear::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => {
                Ok(GpuLinear::Half(t.to_device(dev)?.to_dtype(DType::F16)?))
            }
        }
    }

    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        match self {
            GpuLinear::Quant(q) => q.forward(x),
            GpuLinear::Half(w) => x
                .to_dtype(DType::F16)?
                .matmul(&w.t()?)?
                .to_dtype(DType::F32),
        }
    }
}

struct GpuLayer {
    input_norm: Tensor,
    post_norm: Tensor,
    q: GpuLinear,
    k: GpuLinear,
    v: GpuLinear,
    o: GpuLinear,
    gate: GpuLinear,
    up: GpuLinear,
    down: GpuLinear,
}

pub struct GpuTransformer {
    /// The CPU decoder of the same files, its layers dropped: its token embedding is read for
    /// each step's tokens, its config, mask and RoPE tables used as they are.
    cpu: Transformer,
    dev: Device,
    layers: Vec<GpuLayer>,
    norm: Tensor,
    lm_head: GpuLinear,
    cos: Tensor,
    sin: Tensor,
}

/// One layer's keys and values of one sequence: [kv_heads, cap, head_dim] each, f32, the first
/// `len` positions used.
struct GpuKv {
    k: Tensor,
    v: Tensor,
}

/// One sequence's KV cache on the GPU.
#[derive(Default)]
pub struct GpuCache {
    layers: Vec<GpuKv>,
    cap: usize,
    len: usize,
}

impl GpuCache {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Drops everything at positions `pos..` (the memory stays for reuse).
    pub fn truncate(&mut self, pos: usize) {
        self.len = self.len.min(pos);
    }
}

/// Opens CUDA device 0, if the build has CUDA and the machine a usable GPU.
pub fn open_device() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!(error = %e, "no CUDA device for the candle backend; it runs on the CPU");
            None
        }
    }
}

impl GpuTransformer {
    /// Moves `cpu`'s matrices, norms and RoPE tables to `dev`.
    pub fn new(mut cpu: Transformer, dev: Device) -> CResult<GpuTransformer> {
        let to = |t: &Tensor| t.to_device(&dev)?.to_dtype(DType::F32);
        let mut layers = Vec::with_capacity(cpu.layers.len());
        for l in &cpu.layers {
            let (a, m) = (&l.attn, &l.mlp);
            layers.push(GpuLayer {
                input_norm: to(&l.input_norm)?,
                post_norm: to(&l.post_norm)?,
                q: GpuLinear::new(&a.q, &dev)?,
                k: GpuLinear::new(&a.k, &dev)?,
                v: GpuLinear::new(&a.v, &dev)?,
                o: GpuLinear::new(&a.o, &dev)?,
                gate: GpuLinear::new(&m.gate, &dev)?,
                up: GpuLinear::new(&m.up, &dev)?,
                down: GpuLinear::new(&m.down, &dev)?,
            });
        }
        let norm = to(&cpu.norm)?;
        let lm_head = GpuLinear::new(&cpu.lm_head, &dev)?;
        let (cos, sin) = (to(&cpu.cos)?, to(&cpu.sin)?);
        dev.synchronize()?;
        // The layers now live on the GPU: drop the CPU's handles (matrices in the mapped file,
        // or in memory for GGUF types without our own kernels). What stays is what a step
        // reads here: the embedding, the config, the mask and RoPE tables.
        cpu.layers = Vec::new();
        Ok(GpuTransformer {
            cpu,
            dev,
            layers,
            norm,
            lm_head,
            cos,
            sin,
        })
    }

    pub fn config(&self) -> &Config {
        self.cpu.config()
    }

    pub fn max_positions(&self) -> usize {
        self.cpu.max_positions()
    }

    /// Runs `tokens` at positions `cache.len()..` and returns logits [n, vocab] on the CPU: for
    /// the last token only, or for every token with `all`.
    pub fn forward(&self, tokens: &[u32], cache: &mut GpuCache, all: bool) -> CResult<Tensor> {
        let cfg = self.cpu.config();
        let (h, kvh, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let eps = cfg.rms_norm_eps as f32;
        let t = tokens.len();
        let start = cache.len;
        if start + t > self.max_positions() {
            candle_core::bail!(
                "positions {start}..{} exceed the context of {}",
                start + t,
                self.max_positions()
            );
        }
        self.reserve(cache, start + t)?;
        let total = start + t;
        // Keys a query may see: the whole cache, or Mistral's window; a prompt chunk masks the
        // future and what falls out of each query's window.
        let window = cfg.sliding_window.unwrap_or(usize::MAX);
        let lo = if t == 1 {
            total.saturating_sub(window)
        } else {
            0
        };
        let mask = match self.cpu.mask(start, t)? {
            Some(m) if t > 1 => Some(m.to_device(&self.dev)?),
            _ => None,
        };
        let (cos, sin) = (self.cos.narrow(0, start, t)?, self.sin.narrow(0, start, t)?);
        let rep = h / kvh;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut x = self.cpu.embed(tokens)?.to_device(&self.dev)?; // [t, d]
        for (l, kv) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let hn = candle_nn::ops::rms_norm(&x, &l.input_norm, eps)?;
            // [t, n*hd] -> [1, n, t, hd]; one token needs no copy (the same layout).
            let heads = |y: Tensor, n: usize| {
                if t == 1 {
                    y.reshape((1, n, 1, hd))
                } else {
                    y.reshape((1, t, n, hd))?.transpose(1, 2)?.contiguous()
                }
            };
            let q = heads(l.q.forward(&hn)?, h)?;
            let k = heads(l.k.forward(&hn)?, kvh)?;
            let v = heads(l.v.forward(&hn)?, kvh)?;
            let (q, k) = if self.cpu.rope_interleaved {
                (
                    candle_nn::rotary_emb::rope_i(&q, &cos, &sin)?,
                    candle_nn::rotary_emb::rope_i(&k, &cos, &sin)?,
                )
            } else {
                (
                    candle_nn::rotary_emb::rope(&q, &cos, &sin)?,
                    candle_nn::rotary_emb::rope(&k, &cos, &sin)?,
                )
            };
            let (k, v) = if self.cpu.kv_f16 {
                let round = |x: &Tensor| x.to_dtype(DType::F16)?.to_dtype(DType::F32);
                (round(&k)?, round(&v)?)
            } else {
                (k, v)
            };
            kv.k.slice_set(&k.squeeze(0)?, 1, start)?;
            kv.v.slice_set(&v.squeeze(0)?, 1, start)?;
            // Read in place: cuBLAS takes the cache's row stride (no copy per step).
            let keys = kv.k.narrow(1, lo, total - lo)?; // [kvh, n, hd]
            let values = kv.v.narrow(1, lo, total - lo)?;
            // Heads kv*rep .. kv*rep+rep share K/V head kv: fold them into the query rows.
            let q = (q.reshape((kvh, rep * t, hd))? * scale)?;
            let scores = q.matmul(&keys.t()?)?; // [kvh, rep*t, n]
            let n = total - lo;
            let scores = match &mask {
                Some(m) => scores
                    .reshape((kvh, rep, t, n))?
                    .broadcast_add(m)?
                    .reshape((kvh, rep * t, n))?,
                None => scores,
            };
            let p = candle_nn::ops::softmax_last_dim(&scores)?;
            let att = p.matmul(&values)?; // [kvh, rep*t, hd]
            let att = if t == 1 {
                att.reshape((1, h * hd))?
            } else {
                att.reshape((h, t, hd))?
                    .transpose(0, 1)?
                    .reshape((t, h * hd))?
            };
            let x1 = (&x + l.o.forward(&att)?)?;
            let hn = candle_nn::ops::rms_norm(&x1, &l.post_norm, eps)?;
            let g = candle_nn::ops::silu(&l.gate.forward(&hn)?)?;
            let mlp = l.down.forward(&(g * l.up.forward(&hn)?)?)?;
            x = (x1 + mlp)?;
        }
        cache.len = total;
        let x = if all { x } else { x.narrow(0, t - 1, 1)? };
        let x = candle_nn::ops::rms_norm(&x, &self.norm, eps)?;
        self.lm_head.forward(&x)?.to_device(&Device::Cpu)
    }

    /// Makes room in `cache` for `positions`, doubling (keeps what is cached).
    fn reserve(&self, cache: &mut GpuCache, positions: usize) -> CResult<()> {
        if positions <= cache.cap && cache.layers.len() == self.layers.len() {
            return Ok(());
        }
        let cfg = self.cpu.config();
        let cap = positions
            .next_power_of_two()
            .max(256)
            .min(self.max_positions());
        let shape = (cfg.num_kv_heads, cap, cfg.head_dim);
        let mut layers = Vec::with_capacity(self.layers.len());
        for i in 0..self.layers.len() {
            let (k, v) = (
                Tensor::zeros(shape, DType::F32, &self.dev)?,
                Tensor::zeros(shape, DType::F32, &self.dev)?,
            );
            if let Some(old) = cache.layers.get(i).filter(|_| cache.len > 0) {
                k.slice_set(&old.k.narrow(1, 0, cache.len)?.contiguous()?, 1, 0)?;
                v.slice_set(&old.v.narrow(1, 0, cache.len)?.contiguous()?, 1, 0)?;
            }
            layers.push(GpuKv { k, v });
        }
        cache.layers = layers;
        cache.cap = cap;
        Ok(())
    }
}
