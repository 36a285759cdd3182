//! The error type of the engine interface. Variants carry what a caller needs to map them to a
//! gRPC status and to tell a person what to do next.

use std::path::PathBuf;

use minerva_formats::gguf::GgufError;

pub type Result<T, E = CoreError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("model file {path} does not exist")]
    FileNotFound { path: PathBuf },

    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path} is not a usable GGUF model: {source}")]
    BadGguf {
        path: PathBuf,
        #[source]
        source: GgufError,
    },

    /// The files are readable but do not make a model this backend can run: unsupported
    /// architecture, missing or mis-shaped tensors, a missing shard or config.
    #[error("{path} is not a model {backend} can load: {detail}")]
    BadModel {
        backend: &'static str,
        path: PathBuf,
        detail: String,
    },

    #[error("backend {backend} failed to load {path}: {detail}")]
    LoadFailed {
        backend: &'static str,
        path: PathBuf,
        detail: String,
    },

    #[error("backend {backend} could not create a context of {context_length} tokens: {detail}")]
    ContextFailed {
        backend: &'static str,
        context_length: u32,
        detail: String,
    },

    #[error("invalid {parameter}: {detail}")]
    InvalidParameter {
        parameter: &'static str,
        detail: String,
    },

    #[error("token id {token} is out of range for a vocabulary of {vocab_size} tokens")]
    TokenOutOfRange {
        token: TokenIdDisplay,
        vocab_size: u32,
    },

    #[error("the model has no chat template: send a plain prompt instead of chat messages")]
    NoChatTemplate,

    #[error("chat template failed to render: {detail}")]
    ChatTemplate { detail: String },

    #[error("forward pass failed in {backend}: {detail}")]
    Forward {
        backend: &'static str,
        detail: String,
    },
}

impl From<minerva_formats::OpenError> for CoreError {
    /// Files refused before any backend saw them: the daemon's own checks.
    fn from(e: minerva_formats::OpenError) -> Self {
        use minerva_formats::OpenError;
        let bad = |path: PathBuf, detail: String| CoreError::BadModel {
            backend: "minervad",
            path,
            detail,
        };
        match e {
            OpenError::NotFound { path } => CoreError::FileNotFound { path },
            OpenError::Io { path, source } => CoreError::Io { path, source },
            OpenError::BadGguf { path, source } => CoreError::BadGguf { path, source },
            OpenError::NotAModel { path } => bad(
                path,
                "not a model: expected a .gguf file, or a folder with config.json and \
                 model.safetensors or pytorch_model.bin"
                    .into(),
            ),
            OpenError::Invalid { path, problem } => bad(path, problem.to_string()),
        }
    }
}

/// Wrapper so the error message prints a plain number.
#[derive(Debug, Clone, Copy)]
pub struct TokenIdDisplay(pub u32);

impl std::fmt::Display for TokenIdDisplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}
