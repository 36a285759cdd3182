//! Tensors from model files, under their Hugging Face names.
//!
//! Every file is checked first (minerva-formats' SafeTensors, torch zip/pickle and GGUF readers:
//! bounds, overlaps, pickle opcodes), so what is mapped is known to be well-formed. Matrices
//! stay in the memory-mapped files ([`MappedQ`], multiplied by [`crate::kernels`]): dense
//! f32/f16/bf16 ones and GGUF's Q4_0/Q4_1/Q8_0/Q4_K/Q5_K/Q6_K. Vectors (norms) are copied into
//! f32 tensors; other GGUF types (Q5_0, Q2_K, IQ*, ...) are read into candle's quantized
//! tensors and its kernels.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::kernels::{self, QType};
use minerva_formats::gguf::GgufHeader;
use minerva_formats::{safetensors, torchzip};

/// One tensor as loaded: dense f32, quantized in candle's memory (GGUF types without our own
/// kernels), or in place in the memory-mapped file (see [`QType`]).
pub enum Weight {
    Dense(Tensor),
    Quant(Arc<QTensor>),
    Mapped(MappedQ),
}

/// A quantized matrix [rows, cols] lying in a memory-mapped GGUF file.
#[derive(Clone)]
pub struct MappedQ {
    map: Arc<memmap2::Mmap>,
    offset: usize,
    pub qtype: QType,
    pub rows: usize,
    pub cols: usize,
}

impl MappedQ {
    pub fn bytes(&self) -> &[u8] {
        &self.map[self.offset..self.offset + self.rows * self.qtype.row_bytes(self.cols)]
    }

    pub fn dequantize(&self) -> WResult<Tensor> {
        let mut out = vec![0f32; self.rows * self.cols];
        for (r, o) in out.chunks_exact_mut(self.cols).enumerate() {
            kernels::dequantize_row(self.qtype, self.bytes(), self.cols, r, o);
        }
        Tensor::from_vec(out, (self.rows, self.cols), &Device::Cpu).map_err(candle_err)
    }
}

/// A matrix for `x @ W^T`.
pub enum Linear {
    Candle(QMatMul),
    Mapped(MappedQ),
}

/// The token embedding: dense, or rows dequantized from the mapped file on lookup.
pub enum Embedding {
    Dense(Tensor),
    Mapped(MappedQ),
}

/// Which file layout the weights came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    SafeTensors,
    PyTorch,
    Gguf,
}

pub struct Weights {
    map: HashMap<String, Weight>,
    pub layout: Layout,
    /// The dtype most bytes are stored in ("BF16", "F16", "F32"), or the GGUF file type.
    pub stored_dtype: String,
    pub parameter_count: u64,
    /// Bytes of weight files on disk.
    pub file_bytes: u64,
    /// The files read, for messages.
    pub files: Vec<PathBuf>,
}

pub type WResult<T> = Result<T, String>;

fn candle_err(e: candle_core::Error) -> String {
    e.to_string()
}

fn dtype_of(name: &str) -> WResult<(DType, usize)> {
    Ok(match name {
        "F32" => (DType::F32, 4),
        "F16" => (DType::F16, 2),
        "BF16" => (DType::BF16, 2),
        other => {
            return Err(format!(
                "weights of dtype {other} are not supported (F32, F16 and BF16 are)"
            ))
        }
    })
}

fn map_file(path: &Path) -> WResult<memmap2::Mmap> {
    let f =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    // SAFETY: the map is read-only and dropped once the tensors are copied out of it; a file
    // changed underneath it while loading can give wrong weights, not unsafety in this code.
    unsafe { memmap2::Mmap::map(&f) }.map_err(|e| format!("cannot map {}: {e}", path.display()))
}

/// Builds an f32 tensor from raw little-endian bytes of `dtype`.
fn dense(bytes: &[u8], dtype: DType, shape: &[usize]) -> WResult<Tensor> {
    Tensor::from_raw_buffer(bytes, dtype, shape, &Device::Cpu)
        .and_then(|t| t.to_dtype(DType::F32))
        .map_err(candle_err)
}

fn most_bytes(by_dtype: &HashMap<String, u64>) -> String {
    by_dtype
        .iter()
        .max_by_key(|&(d, b)| (*b, d.clone()))
        .map(|(d, _)| d.clone())
        .unwrap_or_default()
}

impl Weights {
    /// Loads the weights of a Hugging Face model folder: `model.safetensors` (or an index and its
    /// shards), else `pytorch_model.bin` (or its index and shards).
    pub fn from_hf_folder(dir: &Path) -> WResult<Weights> {
        if dir.join(safetensors::INDEX_FILE).is_file() {
            let set = safetensors::read_index(dir).map_err(|p| p.to_string())?;
            let files = set.iter().map(|s| dir.join(&s.file)).collect();
            return Self::from_safetensors(set, files);
        }
        let single = dir.join("model.safetensors");
        if single.is_file() {
            let st = safetensors::read_file(&single).map_err(|p| p.to_string())?;
            return Self::from_safetensors(vec![st], vec![single]);
        }
        let bin_index = dir.join("pytorch_model.bin.index.json");
        if bin_index.is_file() {
            return Self::from_pytorch(bin_shards(dir, &bin_index)?);
        }
        let bin = dir.join("pytorch_model.bin");
        if bin.is_file() {
            return Self::from_pytorch(vec![bin]);
        }
        Err(format!(
            "{} has no weights: expected model.safetensors, model.safetensors.index.json with its shards, pytorch_model.bin or pytorch_model.bin.index.json",
            dir.display()
        ))
    }

    fn from_safetensors(
        set: Vec<safetensors::SafeTensors>,
        files: Vec<PathBuf>,
    ) -> WResult<Weights> {
        let mut map = HashMap::new();
        let mut by_dtype: HashMap<String, u64> = HashMap::new();
        let (mut params, mut file_bytes) = (0u64, 0u64);
        for (st, path) in set.iter().zip(&files) {
            let mmap = Arc::new(map_file(path)?);
            file_bytes += st.file_size;
            for t in &st.tensors {
                let (dtype, _) = dtype_of(&t.dtype).map_err(|e| format!("{}: {e}", t.name))?;
                let start = usize::try_from(st.data_start + t.begin).map_err(|e| e.to_string())?;
                let end = usize::try_from(st.data_start + t.end).map_err(|e| e.to_string())?;
                let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
                let bytes = mmap.get(start..end).ok_or_else(|| {
                    format!(
                        "{}: tensor {} lies past the end of the file",
                        path.display(),
                        t.name
                    )
                })?;
                // Matrices stay in the file (f32 math on the stored values); vectors are copied.
                let weight = match (QType::from_dtype_name(&t.dtype), shape.as_slice()) {
                    (Some(qtype), &[rows, cols]) => Weight::Mapped(MappedQ {
                        map: Arc::clone(&mmap),
                        offset: start,
                        qtype,
                        rows,
                        cols,
                    }),
                    _ => Weight::Dense(dense(bytes, dtype, &shape)?),
                };
                map.insert(t.name.clone(), weight);
                params += t.n_elements;
                *by_dtype.entry(t.dtype.clone()).or_default() += t.end - t.begin;
            }
        }
        Ok(Weights {
            map,
            layout: Layout::SafeTensors,
            stored_dtype: most_bytes(&by_dtype),
            parameter_count: params,
            file_bytes,
            files,
        })
    }

    fn from_pytorch(files: Vec<PathBuf>) -> WResult<Weights> {
        let mut map = HashMap::new();
        let mut by_dtype: HashMap<String, u64> = HashMap::new();
        let (mut params, mut file_bytes) = (0u64, 0u64);
        for path in &files {
            // The pickle is scanned, never run: only the opcodes and imports torch.save of a
            // state dict uses are accepted (minerva_formats::pickle).
            let checked =
                torchzip::verify_file(path).map_err(|p| format!("{}: {p}", path.display()))?;
            let mmap = Arc::new(map_file(path)?);
            file_bytes += checked.summary.file_size_bytes;
            for st in &checked.tensors {
                let t = &st.tensor;
                let name = t.name.clone().ok_or_else(|| {
                    format!(
                        "{}: {} is not stored under a name",
                        path.display(),
                        t.label()
                    )
                })?;
                let (dtype, eb) = dtype_of(t.dtype).map_err(|e| format!("{name}: {e}"))?;
                let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
                let n: usize = shape.iter().product();
                let storage_len = t.storage_numel as usize * eb;
                let base = st.storage_start as usize;
                let storage = mmap
                    .get(base..base + storage_len)
                    .ok_or_else(|| format!("{name}: storage lies past the end of the file"))?;
                let weight = match (QType::from_dtype_name(t.dtype), shape.as_slice()) {
                    // A row-major matrix stays in the file.
                    (Some(qtype), &[rows, cols]) if t.stride == [cols as u64, 1] || rows <= 1 => {
                        Weight::Mapped(MappedQ {
                            map: Arc::clone(&mmap),
                            offset: base + t.offset as usize * eb,
                            qtype,
                            rows,
                            cols,
                        })
                    }
                    _ => {
                        let bytes = gather(storage, eb, t.offset as usize, &shape, &t.stride);
                        debug_assert_eq!(bytes.len(), n * eb);
                        Weight::Dense(dense(&bytes, dtype, &shape)?)
                    }
                };
                map.insert(name, weight);
                params += n as u64;
                *by_dtype.entry(t.dtype.to_string()).or_default() += (n * eb) as u64;
            }
        }
        Ok(Weights {
            map,
            layout: Layout::PyTorch,
            stored_dtype: most_bytes(&by_dtype),
            parameter_count: params,
            file_bytes,
            files,
        })
    }

    /// Loads a GGUF file's tensors (quantized as stored) under Hugging Face names, from its
    /// header as minerva-formats read and checked it (every tensor inside the file, none
    /// overlapping): candle's own GGUF reader, which trusts counts and offsets, is not used.
    pub fn from_gguf(path: &Path, header: &GgufHeader) -> WResult<Weights> {
        let mmap = Arc::new(map_file(path)?);
        let mut map = HashMap::new();
        let mut params = 0u64;
        let mut tensors: Vec<_> = header.tensors.iter().collect();
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        for info in tensors {
            let name = &info.name;
            let Some(hf) = hf_name(name) else {
                tracing::debug!(tensor = %name, "GGUF tensor not used by the llama graph");
                continue;
            };
            params += info.n_elements;
            let ggml = ggml_dtype(info.type_id).ok_or_else(|| {
                format!(
                    "tensor {name} has GGML type {}, which candle lacks",
                    info.type_id
                )
            })?;
            let offset =
                usize::try_from(header.data_offset + info.offset).map_err(|e| e.to_string())?;
            let len = usize::try_from(info.n_bytes).map_err(|e| e.to_string())?;
            if offset + len > mmap.len() {
                return Err(format!("tensor {name} does not fit its file"));
            }
            // GGUF lists dimensions innermost first; candle's shapes are outermost first.
            let dims: Vec<usize> = info.shape.iter().rev().map(|&d| d as usize).collect();
            if let (Some(qtype), &[rows, cols]) = (QType::from_ggml(ggml), dims.as_slice()) {
                let end = offset + rows * qtype.row_bytes(cols);
                if (qtype.is_quantized() && cols % qtype.block_len() != 0) || end > mmap.len() {
                    return Err(format!("tensor {name} does not fit its file or its blocks"));
                }
                map.insert(
                    hf,
                    Weight::Mapped(MappedQ {
                        map: Arc::clone(&mmap),
                        offset,
                        qtype,
                        rows,
                        cols,
                    }),
                );
                continue;
            }
            let q = candle_core::quantized::ggml_file::qtensor_from_ggml(
                ggml,
                &mmap[offset..offset + len],
                dims,
                &Device::Cpu,
            )
            .map_err(candle_err)?;
            map.insert(hf, Weight::Quant(Arc::new(q)));
        }
        let stored_dtype = header
            .get_u64("general.file_type")
            .and_then(minerva_formats::gguf::file_type_name)
            .unwrap_or("unknown")
            .to_string();
        Ok(Weights {
            map,
            layout: Layout::Gguf,
            stored_dtype,
            parameter_count: params,
            file_bytes: header.file_size,
            files: vec![path.to_path_buf()],
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    fn take(&mut self, name: &str) -> WResult<Weight> {
        self.map
            .remove(name)
            .ok_or_else(|| format!("tensor {name} is missing from {}", self.files_label()))
    }

    fn files_label(&self) -> String {
        let names: Vec<String> = self
            .files
            .iter()
            .map(|p| {
                p.file_name().map_or_else(
                    || p.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                )
            })
            .collect();
        names.join(", ")
    }

    /// A tensor as dense f32, whatever its shape.
    pub fn take_dense(&mut self, name: &str) -> WResult<Tensor> {
        match self.take(name)? {
            Weight::Dense(t) => Ok(t),
            Weight::Quant(q) => q.dequantize(&Device::Cpu).map_err(candle_err),
            Weight::Mapped(m) => m.dequantize(),
        }
    }

    /// A tensor as dense f32 of exactly `shape`.
    pub fn dense(&mut self, name: &str, shape: &[usize]) -> WResult<Tensor> {
        let t = match self.take(name)? {
            Weight::Dense(t) => t,
            Weight::Quant(q) => q.dequantize(&Device::Cpu).map_err(candle_err)?,
            Weight::Mapped(m) => m.dequantize()?,
        };
        check_shape(name, t.dims(), shape)?;
        Ok(t)
    }

    /// The token embedding [vocab, dim], without copying a mapped one.
    pub fn embedding(&self, name: &str, vocab: usize, dim: usize) -> WResult<Embedding> {
        match self.map.get(name) {
            Some(Weight::Mapped(m)) => {
                check_shape(name, &[m.rows, m.cols], &[vocab, dim])?;
                Ok(Embedding::Mapped(m.clone()))
            }
            Some(Weight::Dense(t)) => {
                check_shape(name, t.dims(), &[vocab, dim])?;
                Ok(Embedding::Dense(t.clone()))
            }
            Some(Weight::Quant(q)) => {
                let t = q.dequantize(&Device::Cpu).map_err(candle_err)?;
                check_shape(name, t.dims(), &[vocab, dim])?;
                Ok(Embedding::Dense(t))
            }
            None => Err(format!(
                "tensor {name} is missing from {}",
                self.files_label()
            )),
        }
    }

    /// A matrix for `x @ W^T`, of shape [out, in]; quantized tensors stay quantized.
    pub fn linear(&mut self, name: &str, out: usize, inp: usize) -> WResult<Linear> {
        let w = self.take(name)?;
        linear_of(w, name, out, inp)
    }

    /// Like [`Self::linear`] but keeps the tensor for another use (tied embeddings).
    pub fn linear_shared(&self, name: &str, out: usize, inp: usize) -> WResult<Linear> {
        let w = match self.map.get(name) {
            Some(Weight::Dense(t)) => Weight::Dense(t.clone()),
            Some(Weight::Quant(q)) => Weight::Quant(Arc::clone(q)),
            Some(Weight::Mapped(m)) => Weight::Mapped(m.clone()),
            None => {
                return Err(format!(
                    "tensor {name} is missing from {}",
                    self.files_label()
                ))
            }
        };
        linear_of(w, name, out, inp)
    }

    /// Names left after the model took what it uses.
    pub fn unused(&self) -> Vec<String> {
        let mut v: Vec<String> = self.map.keys().cloned().collect();
        v.sort();
        v
    }
}

fn linear_of(w: Weight, name: &str, out: usize, inp: usize) -> WResult<Linear> {
    match w {
        Weight::Dense(t) => {
            check_shape(name, t.dims(), &[out, inp])?;
            Ok(Linear::Candle(QMatMul::Tensor(t)))
        }
        Weight::Quant(q) => {
            // GGUF lists dimensions innermost first; candle's QTensor shape is [out, in].
            check_shape(name, q.shape().dims(), &[out, inp])?;
            QMatMul::from_arc(q).map(Linear::Candle).map_err(candle_err)
        }
        Weight::Mapped(m) => {
            check_shape(name, &[m.rows, m.cols], &[out, inp])?;
            Ok(Linear::Mapped(m))
        }
    }
}

fn check_shape(name: &str, got: &[usize], want: &[usize]) -> WResult<()> {
    if got != want {
        return Err(format!(
            "tensor {name} has shape {got:?} but config.json implies {want:?}"
        ));
    }
    Ok(())
}

/// The bytes of a strided view of `storage`, made contiguous (row-major).
fn gather(storage: &[u8], eb: usize, offset: usize, shape: &[usize], stride: &[u64]) -> Vec<u8> {
    let n: usize = shape.iter().product();
    let contiguous = {
        let mut expect = 1u64;
        let mut ok = true;
        for (&d, &s) in shape.iter().zip(stride).rev() {
            if d > 1 && s != expect {
                ok = false;
            }
            expect *= d as u64;
        }
        ok
    };
    if contiguous {
        return storage[offset * eb..(offset + n) * eb].to_vec();
    }
    let mut out = Vec::with_capacity(n * eb);
    let mut idx = vec![0usize; shape.len()];
    for _ in 0..n {
        let src = offset
            + idx
                .iter()
                .zip(stride)
                .map(|(&i, &s)| i * s as usize)
                .sum::<usize>();
        out.extend_from_slice(&storage[src * eb..(src + 1) * eb]);
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

fn bin_shards(dir: &Path, index: &Path) -> WResult<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index)
        .map_err(|e| format!("cannot read {}: {e}", index.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not valid JSON: {e}", index.display()))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| format!("{} has no weight_map", index.display()))?;
    let mut shards: Vec<String> = map
        .values()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect();
    shards.sort();
    shards.dedup();
    let mut out = Vec::new();
    for s in shards {
        if s.is_empty() || s.contains(['/', '\\']) || s == ".." {
            return Err(format!(
                "{} names a shard outside the folder: {s:?}",
                index.display()
            ));
        }
        let p = dir.join(&s);
        if !p.is_file() {
            return Err(format!(
                "shard {s} named by {} is missing",
                index.file_name().unwrap_or_default().to_string_lossy()
            ));
        }
        out.push(p);
    }
    Ok(out)
}

/// A decoder layer's tensors: GGUF name part, Hugging Face name part.
pub const LAYER_TENSORS: &[(&str, &str)] = &[
    ("attn_norm.weight", "input_layernorm.weight"),
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),
    ("ffn_up.weight", "mlp.up_proj.weight"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
];

/// The tensors outside the layers: GGUF name, Hugging Face name.
pub const MODEL_TENSORS: &[(&str, &str)] = &[
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// The Hugging Face name of a GGUF tensor of the llama graph.
fn hf_name(gguf: &str) -> Option<String> {
    if let Some((_, hf)) = MODEL_TENSORS.iter().find(|(g, _)| *g == gguf) {
        return Some(hf.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (_, hf) = LAYER_TENSORS.iter().find(|(g, _)| *g == part)?;
    Some(format!("model.layers.{layer}.{hf}"))
}

/// candle's type for a GGML type id (candle keeps its own table private).
fn ggml_dtype(type_id: u32) -> Option<GgmlDType> {
    Some(match type_id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}
