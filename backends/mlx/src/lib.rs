//! Minerva's MLX backend: Llama and Mistral decoders on Apple's MLX (through mlx-rs), for the
//! MLX-format folders mlx-lm writes (`mlx_lm convert`, mlx-community's models): SafeTensors with
//! f16/bf16/f32 weights or MLX's affine group quantization (`X.weight` packed uint32 with
//! `X.scales` and `X.biases`, bits and group size in config.json's `quantization`). Plain Hugging
//! Face SafeTensors folders of the same architectures load too.
//!
//! MLX runs on the Metal GPU on Apple Silicon (feature `metal`) and on the CPU elsewhere (on
//! Linux against the PyPI `mlx-cpu` wheel: correct, and slow, since that build uses reference
//! BLAS). Without the `mlx` feature this crate is empty.

/// The backend's name in requests, listings and benchmark records.
pub const NAME: &str = "mlx";

#[cfg(feature = "mlx")]
mod backend;
#[cfg(feature = "mlx")]
pub mod model;
#[cfg(feature = "mlx")]
pub mod weights;

#[cfg(feature = "mlx")]
pub use backend::{MlxBackend, MlxModel};
