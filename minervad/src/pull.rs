//! What pulls report: shared by the [`crate::store`] (catalog pulls) and [`crate::hub`]
//! (Hugging Face pulls), so neither needs the other for it.

/// What a pull is doing; on the wire it is `PullProgress.phase`, as [`PullPhase::as_str`]
/// spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PullPhase {
    Resolve,
    Download,
    Extract,
    Verify,
    Done,
}

impl PullPhase {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PullPhase::Resolve => "resolve",
            PullPhase::Download => "download",
            PullPhase::Extract => "extract",
            PullPhase::Verify => "verify",
            PullPhase::Done => "done",
        }
    }
}

impl std::fmt::Display for PullPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<PullPhase> for String {
    fn from(p: PullPhase) -> String {
        p.as_str().to_string()
    }
}

/// A progress report from a pull.
#[derive(Debug, Clone)]
pub(crate) struct PullEvent {
    pub(crate) phase: PullPhase,
    pub(crate) completed: u64,
    pub(crate) total: u64,
    pub(crate) message: String,
}
