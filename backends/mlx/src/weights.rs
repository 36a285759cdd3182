//! The weights of an MLX folder as MLX arrays: dense (f16/bf16/f32) or affine group-quantized
//! linear layers and embeddings, each checked against the shape the config says it must have.
//!
//! MLX's SafeTensors loader is lazy: an array reads its bytes from the file the first time a
//! computation needs it. Only the small tensors (norms, quantization scales and biases, which are
//! widened to f32 once here) are read at load time.

use std::collections::HashMap;
use std::path::Path;

use minerva_formats::mlx::Quantization;
use mlx_rs::ops::{dequantize, matmul, quantized_matmul};
use mlx_rs::{Array, Dtype};

/// What went wrong, in words for the user (the backend wraps it with the model's path).
pub type WResult<T> = Result<T, String>;

pub(crate) fn mlx_err(e: impl std::fmt::Display) -> String {
    format!("MLX: {e}")
}

/// Affine group quantization (MLX's `quantize` mode "affine"): `bits`-bit values packed into
/// uint32 words, one f32 scale and bias per `group_size` inputs of each output row.
#[derive(Debug)]
pub struct Packed {
    /// `[out, in * bits / 32]` uint32.
    pub weight: Array,
    /// `[out, in / group_size]`, f32.
    pub scales: Array,
    pub biases: Array,
    pub group_size: i32,
    pub bits: i32,
}

/// A `[out, in]` matrix applied as `x @ W.T`.
#[derive(Debug)]
pub enum Linear {
    /// As stored (f16, bf16 or f32); MLX widens it to f32 inside the product.
    Dense(Array),
    Quantized(Packed),
}

impl Linear {
    pub fn forward(&self, x: &Array) -> mlx_rs::error::Result<Array> {
        match self {
            Linear::Dense(w) => matmul(x, w.transpose()?),
            Linear::Quantized(p) => quantized_matmul(
                x,
                &p.weight,
                &p.scales,
                &p.biases,
                true,
                p.group_size,
                p.bits,
            ),
        }
    }

    /// Rows `ids` of the matrix as f32 (an embedding lookup).
    pub fn rows(&self, ids: &Array) -> mlx_rs::error::Result<Array> {
        match self {
            Linear::Dense(w) => w.take_axis(ids, 0)?.as_dtype(Dtype::Float32),
            Linear::Quantized(p) => dequantize(
                p.weight.take_axis(ids, 0)?,
                p.scales.take_axis(ids, 0)?,
                &p.biases.take_axis(ids, 0)?,
                p.group_size,
                p.bits,
            ),
        }
    }

    /// "4-bit", "8-bit" or the stored float type, for the model's description.
    pub fn kind(&self) -> String {
        match self {
            Linear::Dense(w) => format!("{:?}", w.dtype()),
            Linear::Quantized(p) => format!("{}-bit", p.bits),
        }
    }
}

/// Every tensor of a folder's SafeTensors files, by name, plus the folder's quantization.
pub struct Tensors {
    map: HashMap<String, Array>,
    quantization: Option<Quantization>,
}

impl Tensors {
    /// Opens `files` (SafeTensors, relative to `dir`) lazily.
    pub fn open(dir: &Path, files: &[String], quantization: Option<Quantization>) -> WResult<Self> {
        let mut map = HashMap::new();
        for f in files {
            let path = dir.join(f);
            let arrays = Array::load_safetensors(&path)
                .map_err(|e| format!("MLX cannot read {}: {e}", path.display()))?;
            map.extend(arrays);
        }
        Ok(Tensors { map, quantization })
    }

    fn take(&mut self, name: &str) -> WResult<Array> {
        self.map
            .remove(name)
            .ok_or_else(|| format!("tensor {name} is missing"))
    }

    /// A float vector of `len` values (a norm's weight), as f32, read now.
    pub fn vector(&mut self, name: &str, len: i32) -> WResult<Array> {
        let v = self.take(name)?;
        check_float(name, &v)?;
        if v.shape() != [len] {
            return Err(format!(
                "{name} has shape {:?}; config.json says [{len}]",
                v.shape()
            ));
        }
        let v = v.as_dtype(Dtype::Float32).map_err(mlx_err)?;
        v.eval().map_err(mlx_err)?;
        Ok(v)
    }

    /// The `[out, in]` layer `prefix` (`prefix.weight`, and `prefix.scales` / `prefix.biases`
    /// when it is quantized: mlx-lm quantizes layer by layer, so the files decide, with the bits
    /// and group size config.json gives for it).
    pub fn linear(&mut self, prefix: &str, out: i32, inp: i32) -> WResult<Linear> {
        let name = format!("{prefix}.weight");
        let weight = self.take(&name)?;
        let Some(scales) = self.map.remove(&format!("{prefix}.scales")) else {
            check_float(&name, &weight)?;
            if weight.shape() != [out, inp] {
                return Err(format!(
                    "{name} has shape {:?}; config.json says [{out}, {inp}]",
                    weight.shape()
                ));
            }
            return Ok(Linear::Dense(weight));
        };
        let Some(q) = &self.quantization else {
            return Err(format!(
                "{prefix}.scales is present but config.json has no \"quantization\" (bits, group_size)"
            ));
        };
        let (bits, group_size) = match q.overrides.get(prefix) {
            Some(Some(bg)) => *bg,
            Some(None) => {
                return Err(format!(
                    "config.json says {prefix} is not quantized, but it has scales"
                ))
            }
            None => (q.bits, q.group_size),
        };
        if q.mode != "affine" {
            return Err(format!(
                "quantization mode {:?} is not supported (only \"affine\")",
                q.mode
            ));
        }
        let biases = self
            .map
            .remove(&format!("{prefix}.biases"))
            .ok_or_else(|| {
                format!("{prefix} is affine-quantized but {prefix}.biases is missing")
            })?;
        let (bits, group_size) = (bits as i32, group_size as i32);
        if weight.shape().first() != Some(&out) {
            return Err(format!(
                "{name} has shape {:?}; config.json says the layer is [{out}, {inp}]",
                weight.shape()
            ));
        }
        if weight.dtype() != Dtype::Uint32 {
            return Err(format!(
                "{name} is {:?}; a quantized weight is packed uint32",
                weight.dtype()
            ));
        }
        let packed_width = i64::from(inp) * i64::from(bits) / 32;
        let want_w = [i64::from(out), packed_width];
        let want_s = [i64::from(out), i64::from(inp / group_size)];
        let shape = |a: &Array| a.shape().iter().map(|&d| i64::from(d)).collect::<Vec<_>>();
        if shape(&weight) != want_w || inp % group_size != 0 {
            return Err(format!(
                "{name} has shape {:?}, but a [{out}, {inp}] layer at {bits} bits packs to {want_w:?}: \
                 config.json's quantization (bits {bits}, group_size {group_size}) does not match the tensors",
                weight.shape()
            ));
        }
        for (what, a) in [("scales", &scales), ("biases", &biases)] {
            if shape(a) != want_s {
                return Err(format!(
                    "{prefix}.{what} has shape {:?}, but a [{out}, {inp}] layer in groups of {group_size} needs {want_s:?}: \
                     config.json's quantization (bits {bits}, group_size {group_size}) does not match the tensors",
                    a.shape()
                ));
            }
            check_float(&format!("{prefix}.{what}"), a)?;
        }
        // f32 scales and biases: dequantized values are then exactly what mlx-lm computes with
        // the model in float32, and the product runs in f32 like the rest of the model.
        let scales = scales.as_dtype(Dtype::Float32).map_err(mlx_err)?;
        let biases = biases.as_dtype(Dtype::Float32).map_err(mlx_err)?;
        mlx_rs::transforms::eval([&scales, &biases]).map_err(mlx_err)?;
        Ok(Linear::Quantized(Packed {
            weight,
            scales,
            biases,
            group_size,
            bits,
        }))
    }

    /// Names nothing asked for (a model with layers the config does not describe).
    pub fn leftover(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.map.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }
}

fn check_float(name: &str, a: &Array) -> WResult<()> {
    match a.dtype() {
        Dtype::Float16 | Dtype::Bfloat16 | Dtype::Float32 => Ok(()),
        other => Err(format!("{name} is {other:?}; expected f16, bf16 or f32")),
    }
}
