//! `minerva verify`: checks that a model file (GGUF, SafeTensors, PyTorch `.bin`) or a model
//! folder (SafeTensors, sharded SafeTensors, MLX) is structurally sound, and says what it is.
//!
//! Every parser behind it reads bounded headers, checks each count against the bytes that could
//! hold it before allocating, and returns a [`Problem`] naming the tensor, the byte offset, and
//! what was expected and found, instead of panicking. Nothing is executed (pickles are scanned
//! against an opcode and import whitelist, never run).

// `Problem` is large (it carries the precise location), but it is built once, on the path
// that ends verification; boxing it would only obscure the fields callers read.
#![allow(clippy::result_large_err)]

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::gguf::{self, GgufError};
use crate::problem::{file_name, io_problem, read_config};
pub use crate::problem::{Problem, ProblemKind, Summary, DEFAULT_CONTEXT, MAX_CONFIG_BYTES};
use crate::{mlx, safetensors, torchzip, ModelInfo};

/// What `verify` found. `valid` is false exactly when `error` is set.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    /// The path that was checked.
    pub path: String,
    /// "gguf", "safetensors", "mlx", "pytorch", or "unknown".
    pub format: String,
    pub valid: bool,
    /// Files that were read, relative to `path` for folders.
    pub files: Vec<String>,
    /// What the model is; parts a broken file did not reveal stay empty / zero.
    pub summary: Summary,
    pub error: Option<Problem>,
    /// Things worth knowing that do not make the model invalid.
    pub notes: Vec<String>,
}

/// Why verification could not start (the model itself was not judged).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{path} does not exist")]
    NotFound { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Verifies the model at `path` (a file or a model folder), estimating memory for the
/// default context.
pub fn verify_path(path: &Path) -> Result<Report, VerifyError> {
    verify_path_with_context(path, DEFAULT_CONTEXT)
}

/// Verifies the model at `path`; the memory estimate assumes `min(context, trained)` tokens.
pub fn verify_path_with_context(path: &Path, context: u32) -> Result<Report, VerifyError> {
    let meta = std::fs::metadata(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            VerifyError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            VerifyError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    let mut report = Report {
        path: path.display().to_string(),
        format: "unknown".into(),
        valid: false,
        files: Vec::new(),
        summary: Summary::default(),
        error: None,
        notes: Vec::new(),
    };
    let outcome = if meta.is_dir() {
        verify_dir(path, context, &mut report)
    } else {
        verify_file(path, context, &mut report)
    };
    if let Err(p) = outcome {
        report.error = Some(p);
    }
    report.valid = report.error.is_none();
    Ok(report)
}

fn read_magic(path: &Path) -> Result<Vec<u8>, Problem> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| io_problem(path, &e))?;
    let mut buf = Vec::with_capacity(8);
    f.take(8)
        .read_to_end(&mut buf)
        .map_err(|e| io_problem(path, &e))?;
    Ok(buf)
}

fn verify_file(path: &Path, context: u32, report: &mut Report) -> Result<(), Problem> {
    let name = file_name(path);
    report.files.push(name.clone());
    let magic = read_magic(path)?;
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if magic.starts_with(b"GGUF") || ext == "gguf" {
        report.format = "gguf".into();
        return verify_gguf(path, context, report).map_err(|p| p.in_file(name));
    }
    if magic.starts_with(b"PK\x03\x04") || matches!(ext.as_str(), "bin" | "pt" | "pth") {
        report.format = "pytorch".into();
        let m = torchzip::verify_file(path).map_err(|p| p.in_file(name))?;
        report.summary = m.summary;
        report.notes.extend(m.notes);
        return Ok(());
    }
    if ext == "safetensors" || looks_like_safetensors(&magic) {
        report.format = "safetensors".into();
        let st = safetensors::read_file(path).map_err(|p| p.in_file(name.clone()))?;
        let config = path.parent().map(read_config).transpose()?.flatten();
        report.summary = safetensors::summarize(&[st], config.as_ref(), context);
        return Ok(());
    }
    Err(Problem::new(
        ProblemKind::UnknownFormat,
        "not a GGUF, SafeTensors or PyTorch zip file (checked the first bytes and the extension)",
    )
    .at(0)
    .expected("\"GGUF\", \"PK\\x03\\x04\", or a SafeTensors header length")
    .found(format!("{magic:02x?}"))
    .in_file(name))
}

/// A SafeTensors file starts with a little-endian header length followed by `{`; with only
/// 8 bytes read, accept a plausible length.
fn looks_like_safetensors(magic: &[u8]) -> bool {
    <[u8; 8]>::try_from(magic)
        .map(|b| (2..=safetensors::MAX_HEADER).contains(&u64::from_le_bytes(b)))
        .unwrap_or(false)
}

fn verify_dir(dir: &Path, context: u32, report: &mut Report) -> Result<(), Problem> {
    let mut entries: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| io_problem(dir, &e))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    let config = read_config(dir)?;
    if config.is_some() {
        report.files.push("config.json".into());
    }
    let has = |n: &str| entries.iter().any(|e| e == n);
    let shards: Vec<safetensors::SafeTensors> = if has(safetensors::INDEX_FILE) {
        report.files.push(safetensors::INDEX_FILE.into());
        let set = safetensors::read_index(dir)?;
        report.files.extend(set.iter().map(|s| s.file.clone()));
        set
    } else {
        let files: Vec<&String> = entries
            .iter()
            .filter(|e| e.ends_with(".safetensors"))
            .collect();
        if files.is_empty() {
            return verify_dir_other(dir, &entries, context, report);
        }
        let mut set = Vec::new();
        for f in files {
            report.files.push(f.clone());
            set.push(safetensors::read_file(&dir.join(f)).map_err(|p| p.in_file(f.clone()))?);
        }
        safetensors::check_disjoint(&set)?;
        set
    };
    let quant = config.as_ref().and_then(mlx::quantization_of);
    if let Some(q) = quant {
        report.format = "mlx".into();
        let q = q?;
        mlx::check(&shards, &q)?;
        report.summary = mlx::summarize(&shards, config.as_ref(), &q, context);
    } else {
        report.format = "safetensors".into();
        report.summary = safetensors::summarize(&shards, config.as_ref(), context);
    }
    if config.is_none() {
        report
            .notes
            .push("no config.json: architecture and context length are unknown".into());
    }
    Ok(())
}

/// A folder without SafeTensors: one GGUF or a PyTorch checkpoint.
fn verify_dir_other(
    dir: &Path,
    entries: &[String],
    context: u32,
    report: &mut Report,
) -> Result<(), Problem> {
    let pick = |pred: &dyn Fn(&str) -> bool| -> Vec<&String> {
        entries.iter().filter(|e| pred(e)).collect()
    };
    let ggufs = pick(&|e| e.ends_with(".gguf"));
    let bins = pick(&|e| e.ends_with(".bin") || e.ends_with(".pt") || e.ends_with(".pth"));
    let file = match (ggufs.as_slice(), bins.as_slice()) {
        ([one], []) | ([], [one]) => *one,
        _ => {
            return Err(Problem::new(
                ProblemKind::UnknownFormat,
                "the folder holds no model this can check: expected *.safetensors (with \
                 model.safetensors.index.json when sharded), one .gguf, or one PyTorch .bin",
            )
            .found(format!("{} files: {}", entries.len(), entries.join(", "))))
        }
    };
    let mut sub = Report {
        files: Vec::new(),
        ..report.clone()
    };
    let r = verify_file(&dir.join(file), context, &mut sub);
    report.format = sub.format;
    report.files.extend(sub.files);
    report.summary = sub.summary;
    report.notes.extend(sub.notes);
    r
}

fn verify_gguf(path: &Path, context: u32, report: &mut Report) -> Result<(), Problem> {
    let header = gguf::read_header(path).map_err(gguf_problem)?;
    let info = ModelInfo::from_gguf(&header);
    let ctx = if info.trained_context_length > 0 {
        context.min(info.trained_context_length)
    } else {
        context
    };
    report.summary = Summary {
        architecture: info.architecture.clone(),
        parameter_count: info.parameter_count,
        quantization: info.quantization.clone(),
        context_length: info.trained_context_length,
        tensor_count: header.tensors.len() as u64,
        file_size_bytes: header.file_size,
        estimated_memory_bytes: info.estimated_memory_bytes(ctx),
        estimated_for_context: ctx,
    };
    if header.architecture().is_none() {
        report
            .notes
            .push("no general.architecture key: llama.cpp will refuse to load it".into());
    } else if let Some(arch) = header.architecture() {
        for key in ["block_count", "embedding_length", "context_length"] {
            if header.arch_u64(key).is_none() {
                report
                    .notes
                    .push(format!("no {arch}.{key} key (architecture hint missing)"));
            }
        }
    }
    // llama.cpp lays tensors out back to back (each padded to the alignment); a gap is not
    // fatal, but unusual.
    let align = header.alignment();
    let mut spans: Vec<(u64, u64)> = header
        .tensors
        .iter()
        .map(|t| (t.offset, t.n_bytes))
        .collect();
    spans.sort_unstable();
    let mut expected = 0u64;
    let mut gaps = 0u64;
    for (offset, bytes) in spans {
        if offset != expected {
            gaps += 1;
        }
        expected = offset
            .saturating_add(bytes)
            .div_ceil(align)
            .saturating_mul(align);
    }
    if gaps > 0 {
        report.notes.push(format!(
            "{gaps} tensors do not start where the previous one ends (padded to {align})"
        ));
    }
    let data_end = header.data_offset.saturating_add(expected);
    if data_end < header.file_size && !header.tensors.is_empty() {
        report.notes.push(format!(
            "{} bytes after the last tensor",
            header.file_size - data_end
        ));
    }
    Ok(())
}

/// The GGUF reader's error, as a [`Problem`] with its offsets split out.
pub fn gguf_problem(e: GgufError) -> Problem {
    let message = e.to_string();
    match e {
        GgufError::BadMagic { found } => Problem::new(ProblemKind::BadMagic, message)
            .at(0)
            .expected("GGUF")
            .found(found),
        GgufError::UnsupportedVersion { version } => {
            Problem::new(ProblemKind::UnsupportedVersion, message)
                .at(4)
                .expected("2 or 3")
                .found(version)
        }
        GgufError::Truncated {
            offset,
            needed,
            file_size,
            ..
        } => Problem::new(ProblemKind::Truncated, message)
            .at(offset)
            .expected(format!("at least {} bytes", offset.saturating_add(needed)))
            .found(format!("{file_size} bytes")),
        GgufError::Invalid { offset, detail, .. } => Problem::new(ProblemKind::Invalid, message)
            .at(offset)
            .found(detail),
        GgufError::UnknownTensorType { name, type_id } => {
            Problem::new(ProblemKind::UnknownTensorType, message)
                .tensor(name)
                .expected("a ggml type id")
                .found(type_id)
        }
        GgufError::TensorOutOfBounds {
            name,
            start,
            end,
            file_size,
            ..
        } => Problem::new(ProblemKind::TensorOutOfBounds, message)
            .tensor(name)
            .at(start)
            .expected(format!("file of at least {end} bytes"))
            .found(format!("{file_size} bytes")),
        GgufError::DuplicateKey { offset, .. } => {
            Problem::new(ProblemKind::DuplicateKey, message).at(offset)
        }
        GgufError::DuplicateTensor { name, offset } => {
            Problem::new(ProblemKind::DuplicateTensor, message)
                .tensor(name)
                .at(offset)
        }
        GgufError::TensorOverlap {
            name,
            start,
            other,
            other_end,
            ..
        } => Problem::new(ProblemKind::Overlap, message)
            .tensor(name)
            .at(start)
            .expected(format!("start at or after {other_end} (end of {other:?})"))
            .found(start),
        GgufError::Io(_) => Problem::new(ProblemKind::Io, message),
    }
}
