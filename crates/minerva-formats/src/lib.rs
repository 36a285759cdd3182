//! Model files, opened and checked before any backend sees them: GGUF, SafeTensors (plain and
//! sharded), PyTorch `.bin` checkpoints (zip + pickle, scanned against a whitelist and never
//! executed), MLX folders, the SentencePiece tokenizer models some folders ship, and what a
//! model's config.json or GGUF metadata says of its transformer ([`config`]) and tokenizer
//! ([`tokenizer`], behind the `tokenizer` feature: only in-process backends need it).
//!
//! Every reader here takes untrusted bytes: it reads bounded headers, checks each count against
//! the bytes that could hold it before allocating, and reports a precise [`verify::Problem`]
//! instead of panicking. [`ModelFiles::open`] does all of it once for a model; [`ModelInfo`] is
//! what a model is, as its files say.

pub mod config;
pub mod files;
pub mod gguf;
pub mod gguf_write;
pub mod mlx;
pub mod model;
pub mod pickle;
pub mod problem;
pub mod pypi;
pub mod safetensors;
pub mod sentencepiece;
mod span;
pub mod spm_tokenizer;
#[cfg(feature = "tokenizer")]
pub mod tokenizer;
pub mod torchzip;
pub mod verify;

pub use files::{ModelFiles, OpenError};
pub use model::{ModelFormat, ModelInfo, TokenId};
