//! mlx-lm's 4-bit layout (what `mlx_lm.convert -q` writes): the Hugging Face Mistral directory
//! with every linear layer and the embedding affine-quantized, group size 64: `weight` as
//! uint32 `[out, in * bits / 32]` (eight 4-bit values a word, the first in the lowest bits),
//! `scales` and `biases` as f16 `[out, in / 64]`, a weight being `scale * q + bias`. Norms stay
//! f16. config.json carries `"quantization": {"group_size": 64, "bits": 4}`.

use std::path::Path;

use serde_json::json;

use crate::synth::hf::{self, Data, Entry, Folder};
use crate::synth::shape::{Shape, TensorKind};
use crate::synth::weights::{Half, AMPLITUDE};
use crate::synth::SynthError;

pub const BITS: u64 = 4;
pub const GROUP_SIZE: u64 = 64;

/// The safetensors tensors of the MLX model: quantized triples for matrices, f16 norms.
pub fn entries(shape: &Shape) -> Vec<Entry> {
    // Any 4-bit pattern is valid, so the packed words are random; scale and bias map q in
    // 0..=15 onto ±AMPLITUDE, the same range as the other formats' weights.
    let scale = 2.0 * AMPLITUDE / ((1 << BITS) - 1) as f32;
    let mut out = Vec::new();
    for t in shape.tensors() {
        match t.kind {
            TensorKind::Norm => out.push(Entry {
                name: t.hf_name,
                shape: t.shape,
                data: Data::Const(Half::F16, 1.0),
            }),
            TensorKind::Matrix => {
                let (rows, cols) = (t.shape[0], t.shape[1]);
                let base = t.hf_name.trim_end_matches(".weight");
                out.push(Entry {
                    name: t.hf_name.clone(),
                    shape: vec![rows, cols * BITS / 32],
                    data: Data::RandomU32,
                });
                out.push(Entry {
                    name: format!("{base}.scales"),
                    shape: vec![rows, cols / GROUP_SIZE],
                    data: Data::Const(Half::F16, scale),
                });
                out.push(Entry {
                    name: format!("{base}.biases"),
                    shape: vec![rows, cols / GROUP_SIZE],
                    data: Data::Const(Half::F16, -AMPLITUDE),
                });
            }
        }
    }
    out
}

/// The MLX folder; an error (naming `dir`, where it was to go) for a shape whose dimensions
/// are not whole groups.
pub fn folder(dir: &Path, shape: &Shape) -> Result<Folder, SynthError> {
    if !shape.hidden_size.is_multiple_of(GROUP_SIZE)
        || !shape.intermediate_size.is_multiple_of(GROUP_SIZE)
    {
        return Err(SynthError::BadOutput {
            path: dir.to_path_buf(),
            detail: format!(
                "shape {} has a dimension not a multiple of the group size {GROUP_SIZE}",
                shape.name
            ),
        });
    }
    let mut config = hf::config_json(shape, "float16");
    let q = json!({"group_size": GROUP_SIZE, "bits": BITS});
    config["quantization"] = q.clone();
    config["quantization_config"] = q;
    Ok(Folder {
        config,
        entries: entries(shape),
        format: "mlx",
    })
}
