//! Minerva's offline verbs, run in the CLI's process rather than the daemon: `synth` writes
//! random-weight models with real shapes and tokenizers (benchmarks at 7B scale without
//! downloading weights), `convert` turns a GGUF into a Hugging Face folder and back.

pub mod convert;
pub mod synth;
