//! What verification reports: a [`Problem`] that makes a model invalid, the [`Summary`] of what
//! a model is, and the bounded config.json read every reader shares. The readers (GGUF,
//! SafeTensors, PyTorch zip, MLX) report through these types; [`crate::verify`] drives them.

// `Problem` is large (it carries the precise location), but it is built once, on the path
// that ends verification; boxing it would only obscure the fields callers read.
#![allow(clippy::result_large_err)]

use std::path::Path;

use serde::Serialize;

/// Context length the memory estimate assumes when the caller gives none (the daemon's
/// default: min(4096, trained)).
pub const DEFAULT_CONTEXT: u32 = 4096;

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Summary {
    pub architecture: String,
    pub parameter_count: u64,
    pub quantization: String,
    /// Context length the model was trained with (0 when the files do not say).
    pub context_length: u32,
    pub tensor_count: u64,
    pub file_size_bytes: u64,
    /// Weights plus an f16 KV cache for `estimated_for_context` tokens (plus llama.cpp's
    /// compute buffer for GGUF); 0 when unknown.
    pub estimated_memory_bytes: u64,
    pub estimated_for_context: u32,
}

/// What class of problem makes a model invalid; written in snake_case in JSON and on the wire
/// (`VerifyModelResponse.error.kind`).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// The file's bytes do not make a header this reader accepts.
    #[default]
    Invalid,
    BadCheckpoint,
    BadConfig,
    BadHeaderJson,
    BadHeaderLength,
    BadIndex,
    BadMagic,
    BadMetadata,
    BadPickle,
    BadTensorEntry,
    BadZip,
    DisallowedImport,
    DisallowedOpcode,
    DuplicateKey,
    DuplicateTensor,
    EntryOutOfBounds,
    Gap,
    Io,
    MissingShard,
    MissingStorage,
    MissingTensor,
    MlxMismatch,
    Overlap,
    SizeMismatch,
    TensorOutOfBounds,
    TrailingData,
    Truncated,
    UnindexedTensor,
    UnknownFormat,
    UnknownTensorType,
    Unsupported,
    UnsupportedVersion,
}

impl ProblemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::BadCheckpoint => "bad_checkpoint",
            ProblemKind::BadConfig => "bad_config",
            ProblemKind::BadHeaderJson => "bad_header_json",
            ProblemKind::BadHeaderLength => "bad_header_length",
            ProblemKind::BadIndex => "bad_index",
            ProblemKind::BadMagic => "bad_magic",
            ProblemKind::BadMetadata => "bad_metadata",
            ProblemKind::BadPickle => "bad_pickle",
            ProblemKind::BadTensorEntry => "bad_tensor_entry",
            ProblemKind::BadZip => "bad_zip",
            ProblemKind::DisallowedImport => "disallowed_import",
            ProblemKind::DisallowedOpcode => "disallowed_opcode",
            ProblemKind::DuplicateKey => "duplicate_key",
            ProblemKind::DuplicateTensor => "duplicate_tensor",
            ProblemKind::EntryOutOfBounds => "entry_out_of_bounds",
            ProblemKind::Gap => "gap",
            ProblemKind::Invalid => "invalid",
            ProblemKind::Io => "io",
            ProblemKind::MissingShard => "missing_shard",
            ProblemKind::MissingStorage => "missing_storage",
            ProblemKind::MissingTensor => "missing_tensor",
            ProblemKind::MlxMismatch => "mlx_mismatch",
            ProblemKind::Overlap => "overlap",
            ProblemKind::SizeMismatch => "size_mismatch",
            ProblemKind::TensorOutOfBounds => "tensor_out_of_bounds",
            ProblemKind::TrailingData => "trailing_data",
            ProblemKind::Truncated => "truncated",
            ProblemKind::UnindexedTensor => "unindexed_tensor",
            ProblemKind::UnknownFormat => "unknown_format",
            ProblemKind::UnknownTensorType => "unknown_tensor_type",
            ProblemKind::Unsupported => "unsupported",
            ProblemKind::UnsupportedVersion => "unsupported_version",
        }
    }
}

impl std::fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for ProblemKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A precise reason a model is invalid.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Problem {
    /// Machine-readable class, e.g. "truncated", "tensor_out_of_bounds", "overlap".
    pub kind: ProblemKind,
    pub message: String,
    /// The file it is in (relative to the folder for folders).
    pub file: String,
    pub tensor: Option<String>,
    /// Absolute byte offset in `file` where the problem is.
    pub offset: Option<u64>,
    pub expected: Option<String>,
    pub found: Option<String>,
}

impl Problem {
    pub fn new(kind: ProblemKind, message: impl Into<String>) -> Self {
        Problem {
            kind,
            message: message.into(),
            ..Default::default()
        }
    }
    pub fn tensor(mut self, name: impl Into<String>) -> Self {
        self.tensor = Some(name.into());
        self
    }
    pub fn at(mut self, offset: u64) -> Self {
        self.offset = Some(offset);
        self
    }
    pub fn expected(mut self, e: impl std::fmt::Display) -> Self {
        self.expected = Some(e.to_string());
        self
    }
    pub fn found(mut self, f: impl std::fmt::Display) -> Self {
        self.found = Some(f.to_string());
        self
    }
    pub fn in_file(mut self, file: impl Into<String>) -> Self {
        if self.file.is_empty() {
            self.file = file.into();
        }
        self
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.file.is_empty() {
            write!(f, "{}: ", self.file)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for Problem {}

pub(crate) fn io_problem(path: &Path, e: &std::io::Error) -> Problem {
    Problem::new(
        ProblemKind::Io,
        format!("cannot read {}: {e}", path.display()),
    )
    .in_file(file_name(path))
}

pub(crate) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// The largest config.json (or tokenizer_config.json) read: real ones are a few KiB.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// A folder's `config.json`, when it has one.
pub(crate) fn read_config(dir: &Path) -> Result<Option<serde_json::Value>, Problem> {
    let p = dir.join("config.json");
    if !p.is_file() {
        return Ok(None);
    }
    let len = std::fs::metadata(&p).map_err(|e| io_problem(&p, &e))?.len();
    if len > MAX_CONFIG_BYTES {
        return Err(
            Problem::new(ProblemKind::BadConfig, "config.json is over 16 MiB")
                .found(len)
                .in_file("config.json"),
        );
    }
    let text = std::fs::read(&p).map_err(|e| io_problem(&p, &e))?;
    serde_json::from_slice(&text).map(Some).map_err(|e| {
        Problem::new(
            ProblemKind::BadConfig,
            format!("config.json is not valid JSON: {e}"),
        )
        .in_file("config.json")
    })
}
