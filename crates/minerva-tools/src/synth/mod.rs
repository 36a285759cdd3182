//! Synthetic models: random weights with the exact tensor shapes, hyperparameters and real
//! tokenizer of a known model (Mistral 7B v0.1/v0.3, or a tiny one for tests), written as GGUF
//! (F16, or quantized by llama.cpp), Hugging Face safetensors, or mlx-lm's 4-bit layout. Lets
//! Minerva benchmark at 7B scale without downloading weights.
//!
//! Everything streams: tensors are generated in chunks and written through buffered writers, so
//! a 14.5 GB file is written with a few MiB of memory. Outputs are built under `<out>.partial`
//! and renamed into place once complete.

pub mod gguf_write;
pub mod hf;
pub mod hf_tokenizer;
pub mod mlx;
pub mod quantize;
pub mod shape;
pub mod tokenizer_source;
pub mod weights;

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

pub use minerva_formats::sentencepiece::SpModel;
pub use quantize::QuantType;
pub use shape::{Shape, TensorSpec, SHAPE_NAMES};

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("unknown shape {name:?}: choose one of mistral-7b-v0.1, mistral-7b-v0.3, tiny")]
    UnknownShape { name: String },
    #[error(
        "unknown format {name:?}: choose one of gguf-f16, gguf-q4_k_m, gguf-q5_k_m, gguf-q6_k, gguf-q8_0, safetensors, mlx"
    )]
    UnknownFormat { name: String },
    #[error("{} already exists: pass --force to replace it", path.display())]
    OutputExists { path: PathBuf },
    #[error("{}: {detail}", path.display())]
    BadOutput { path: PathBuf, detail: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tokenizer: {detail}")]
    Tokenizer { detail: String },
    #[error("quantization failed: {detail}")]
    Quantize { detail: String },
}

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    GgufF16,
    GgufQuant(QuantType),
    Safetensors,
    Mlx,
}

pub const FORMAT_NAMES: &[&str] = &[
    "gguf-f16",
    "gguf-q4_k_m",
    "gguf-q5_k_m",
    "gguf-q6_k",
    "gguf-q8_0",
    "safetensors",
    "mlx",
];

impl Format {
    pub fn by_name(name: &str) -> Result<Format, SynthError> {
        match name {
            "gguf-f16" => Ok(Format::GgufF16),
            "gguf-q4_k_m" => Ok(Format::GgufQuant(QuantType::Q4KM)),
            "gguf-q5_k_m" => Ok(Format::GgufQuant(QuantType::Q5KM)),
            "gguf-q6_k" => Ok(Format::GgufQuant(QuantType::Q6K)),
            "gguf-q8_0" => Ok(Format::GgufQuant(QuantType::Q8_0)),
            "safetensors" => Ok(Format::Safetensors),
            "mlx" => Ok(Format::Mlx),
            other => Err(SynthError::UnknownFormat {
                name: other.to_string(),
            }),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::GgufF16 => "gguf-f16",
            Format::GgufQuant(QuantType::Q4KM) => "gguf-q4_k_m",
            Format::GgufQuant(QuantType::Q5KM) => "gguf-q5_k_m",
            Format::GgufQuant(QuantType::Q6K) => "gguf-q6_k",
            Format::GgufQuant(QuantType::Q8_0) => "gguf-q8_0",
            Format::GgufQuant(QuantType::Q4_0) => "gguf-q4_0",
            Format::GgufQuant(QuantType::Q4_1) => "gguf-q4_1",
            Format::Safetensors => "safetensors",
            Format::Mlx => "mlx",
        }
    }

    /// GGUF formats write one file; the others a Hugging Face-style directory.
    pub fn is_directory(self) -> bool {
        matches!(self, Format::Safetensors | Format::Mlx)
    }
}

/// What to synthesize.
#[derive(Debug, Clone)]
pub struct SynthOptions {
    pub shape: Shape,
    pub format: Format,
    pub output: PathBuf,
    /// Replace an existing output.
    pub force: bool,
    /// Threads for llama.cpp's quantizer.
    pub threads: usize,
}

/// Where a run stands, for progress bars.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// "tokenizer", "write" (bytes of weights written), "quantize" (no byte counts: llama.cpp
    /// reports none).
    pub phase: &'static str,
    pub done: u64,
    pub total: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct WrittenFile {
    pub path: PathBuf,
    pub bytes: u64,
}

/// What a run wrote.
#[derive(Debug, Clone, Serialize)]
pub struct SynthReport {
    pub shape: String,
    pub format: String,
    pub output: PathBuf,
    pub files: Vec<WrittenFile>,
    pub total_bytes: u64,
    pub seconds: f64,
    pub parameters: u64,
    pub vocab_size: u64,
    pub hidden_size: u64,
    pub intermediate_size: u64,
    pub num_layers: u64,
    pub num_heads: u64,
    pub num_kv_heads: u64,
    pub tokenizer_source: String,
    pub tokenizer_sha256: String,
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SynthError + '_ {
    move |source| SynthError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `path` with `suffix` appended to its file name (`model.gguf` → `model.gguf.partial`).
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Loads the shape's real tokenizer (fetching it once).
pub fn load_tokenizer(shape: &Shape) -> Result<(Vec<u8>, SpModel), SynthError> {
    let bytes = tokenizer_source::tokenizer_bytes(shape.tokenizer)?;
    let model = SpModel::parse(&bytes).map_err(|detail| SynthError::Tokenizer { detail })?;
    if model.pieces.len() as u64 != shape.vocab_size {
        return Err(SynthError::Tokenizer {
            detail: format!(
                "tokenizer has {} pieces but shape {} has vocab {}",
                model.pieces.len(),
                shape.name,
                shape.vocab_size
            ),
        });
    }
    Ok((bytes, model))
}

/// Writes the model `options` describes.
pub fn synth(
    options: &SynthOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<SynthReport, SynthError> {
    let start = Instant::now();
    let out = &options.output;
    check_output(out, options.format, options.force)?;
    progress(Progress {
        phase: "tokenizer",
        done: 0,
        total: 0,
    });
    let (sp_bytes, vocab) = load_tokenizer(&options.shape)?;
    let shape = &options.shape;
    let partial = with_suffix(out, ".partial");
    remove_any(&partial)?;
    let files = match options.format {
        Format::GgufF16 => {
            write_gguf_f16(&partial, shape, &vocab, progress)?;
            vec![PathBuf::new()]
        }
        Format::GgufQuant(q) => {
            let f16 = with_suffix(out, ".f16.tmp");
            let result = write_gguf_f16(&f16, shape, &vocab, progress).and_then(|()| {
                progress(Progress {
                    phase: "quantize",
                    done: 0,
                    total: 0,
                });
                quantize::quantize(&f16, &partial, q, options.threads)
            });
            let _ = std::fs::remove_file(&f16);
            if let Err(e) = result {
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
            vec![PathBuf::new()]
        }
        Format::Safetensors => {
            let folder = hf::folder(shape);
            hf::write_dir(&partial, shape, &vocab, &sp_bytes, &folder, progress)?
        }
        Format::Mlx => {
            let folder = mlx::folder(&partial, shape)?;
            hf::write_dir(&partial, shape, &vocab, &sp_bytes, &folder, progress)?
        }
    };
    if out.exists() {
        remove_any(out)?;
    }
    std::fs::rename(&partial, out).map_err(io_err(out))?;
    let files = files
        .into_iter()
        .map(|rel| {
            let path = if rel.as_os_str().is_empty() {
                out.clone()
            } else {
                out.join(rel)
            };
            let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            WrittenFile { path, bytes }
        })
        .collect::<Vec<_>>();
    let file = shape.tokenizer.file();
    Ok(SynthReport {
        shape: shape.name.to_string(),
        format: options.format.name().to_string(),
        output: out.clone(),
        total_bytes: files.iter().map(|f| f.bytes).sum(),
        files,
        seconds: start.elapsed().as_secs_f64(),
        parameters: shape.parameter_count(),
        vocab_size: shape.vocab_size,
        hidden_size: shape.hidden_size,
        intermediate_size: shape.intermediate_size,
        num_layers: shape.num_layers,
        num_heads: shape.num_heads,
        num_kv_heads: shape.num_kv_heads,
        tokenizer_source: format!(
            "mistral-common=={} {}",
            tokenizer_source::MISTRAL_COMMON_VERSION,
            file.member
        ),
        tokenizer_sha256: file.sha256.to_string(),
    })
}

fn write_gguf_f16(
    path: &Path,
    shape: &Shape,
    vocab: &SpModel,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), SynthError> {
    let file = std::fs::File::create(path).map_err(io_err(path))?;
    let mut w = BufWriter::with_capacity(8 << 20, file);
    let result = gguf_write::write_f16(&mut w, shape, vocab, progress)
        .and_then(|_| w.flush())
        .map_err(io_err(path));
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Names a directory output may hold: only a directory of these is replaced by --force.
fn is_ours(name: &str) -> bool {
    matches!(
        name,
        "config.json"
            | "generation_config.json"
            | "tokenizer.json"
            | "tokenizer_config.json"
            | "special_tokens_map.json"
            | "tokenizer.model"
            | "model.safetensors.index.json"
            | "model.safetensors"
    ) || (name.starts_with("model-") && name.ends_with(".safetensors"))
}

fn check_output(out: &Path, format: Format, force: bool) -> Result<(), SynthError> {
    if out.as_os_str().is_empty() {
        return Err(SynthError::BadOutput {
            path: out.to_path_buf(),
            detail: "empty output path".into(),
        });
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(SynthError::BadOutput {
            path: out.to_path_buf(),
            detail: format!("directory {} does not exist", parent.display()),
        });
    }
    let Ok(meta) = std::fs::symlink_metadata(out) else {
        return Ok(());
    };
    if !force {
        return Err(SynthError::OutputExists {
            path: out.to_path_buf(),
        });
    }
    match (meta.is_dir(), format.is_directory()) {
        (false, false) => Ok(()),
        (true, true) => {
            let entries = std::fs::read_dir(out).map_err(io_err(out))?;
            for e in entries {
                let e = e.map_err(io_err(out))?;
                let name = e.file_name();
                if !is_ours(&name.to_string_lossy()) {
                    return Err(SynthError::BadOutput {
                        path: out.to_path_buf(),
                        detail: format!(
                            "holds {}, which synth does not write: refusing to replace it",
                            name.to_string_lossy()
                        ),
                    });
                }
            }
            Ok(())
        }
        (true, false) => Err(SynthError::BadOutput {
            path: out.to_path_buf(),
            detail: format!("is a directory; {} writes a file", format.name()),
        }),
        (false, true) => Err(SynthError::BadOutput {
            path: out.to_path_buf(),
            detail: format!("is a file; {} writes a directory", format.name()),
        }),
    }
}

fn remove_any(path: &Path) -> Result<(), SynthError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).map_err(io_err(path)),
        Ok(_) => std::fs::remove_file(path).map_err(io_err(path)),
        Err(_) => Ok(()),
    }
}
