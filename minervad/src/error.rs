//! The daemon's error type and its one mapping to gRPC status codes.

use std::path::PathBuf;

use minerva_core::CoreError;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub(crate) enum DaemonError {
    #[error("unknown model {name:?}: it is not a path to a .gguf file or a model folder, nor a model in the store ({known}). See `minerva models list`")]
    UnknownModel { name: String, known: String },

    #[error("model {name:?} is not pulled yet: run `minerva pull {name}`")]
    NotPulled { name: String },

    #[error("invalid {field}: {detail}")]
    InvalidRequest { field: &'static str, detail: String },

    #[error("the prompt is {prompt_tokens} tokens but the context holds {context_length}; shorten the prompt or load the model with a larger context (--ctx, at most {trained_context_length})")]
    PromptTooLong {
        prompt_tokens: usize,
        context_length: u32,
        trained_context_length: u32,
    },

    #[error("the prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) needs {needed} tokens but the context holds {context_length}; lower max_tokens or load the model with a larger context (--ctx)")]
    DoesNotFit {
        prompt_tokens: usize,
        max_tokens: u32,
        needed: u64,
        context_length: u32,
    },

    #[error("model {model:?} already has {queued} requests waiting (the limit, --max-queue); try again later")]
    QueueFull { model: String, queued: usize },

    #[error("model {model:?} stopped serving ({reason}); the next request loads it again")]
    WorkerGone { model: String, reason: String },

    #[error(transparent)]
    Core(#[from] CoreError),

    #[error("pull of {name:?} failed: {detail}")]
    PullFailed { name: String, detail: String },

    #[error("pull of {name:?}: {path} is {got} but should be {expected}; the file was discarded")]
    PullVerifyFailed {
        name: String,
        path: PathBuf,
        expected: String,
        got: String,
    },

    #[error("model {name:?} is loaded: unload it first (`minerva models unload {name}`)")]
    ModelLoaded { name: String },

    #[error("a request with id {id:?} is in flight already; request ids must be unique")]
    DuplicateRequestId { id: String },

    #[error("no benchmark job {id:?}; see `minerva bench list`")]
    UnknownBenchJob { id: String },

    /// The request is fine but this daemon cannot serve it as built or configured.
    #[error("{0}")]
    FailedPrecondition(String),

    #[error("{0}")]
    Internal(String),
}

impl DaemonError {
    pub(crate) fn code(&self) -> Code {
        match self {
            DaemonError::UnknownModel { .. }
            | DaemonError::NotPulled { .. }
            | DaemonError::UnknownBenchJob { .. } => Code::NotFound,
            DaemonError::InvalidRequest { .. }
            | DaemonError::PromptTooLong { .. }
            | DaemonError::DoesNotFit { .. } => Code::InvalidArgument,
            DaemonError::QueueFull { .. } => Code::ResourceExhausted,
            DaemonError::DuplicateRequestId { .. } => Code::AlreadyExists,
            DaemonError::WorkerGone { .. } => Code::Unavailable,
            DaemonError::PullFailed { .. } => Code::Unavailable,
            DaemonError::ModelLoaded { .. } | DaemonError::FailedPrecondition(_) => {
                Code::FailedPrecondition
            }
            DaemonError::PullVerifyFailed { .. } => Code::DataLoss,
            DaemonError::Internal(_) => Code::Internal,
            DaemonError::Core(e) => match e {
                CoreError::FileNotFound { .. } => Code::NotFound,
                CoreError::Io { .. } => Code::FailedPrecondition,
                CoreError::BadGguf { .. } | CoreError::BadModel { .. } => Code::InvalidArgument,
                CoreError::LoadFailed { .. } => Code::FailedPrecondition,
                CoreError::ContextFailed { .. } => Code::ResourceExhausted,
                CoreError::InvalidParameter { .. } | CoreError::TokenOutOfRange { .. } => {
                    Code::InvalidArgument
                }
                CoreError::NoChatTemplate => Code::FailedPrecondition,
                CoreError::ChatTemplate { .. } => Code::InvalidArgument,
                CoreError::Forward { .. } => Code::Internal,
            },
        }
    }

    pub(crate) fn invalid(field: &'static str, detail: impl Into<String>) -> Self {
        DaemonError::InvalidRequest {
            field,
            detail: detail.into(),
        }
    }
}

impl From<DaemonError> for Status {
    fn from(e: DaemonError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

pub(crate) type Result<T, E = DaemonError> = std::result::Result<T, E>;
