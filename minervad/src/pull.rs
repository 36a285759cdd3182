//! What pulls report: shared by the [`crate::store`] (catalog pulls) and [`crate::hub`]
//! (Hugging Face pulls), so neither needs the other for it.

/// A progress report from a pull.
#[derive(Debug, Clone)]
pub struct PullEvent {
    pub phase: &'static str,
    pub completed: u64,
    pub total: u64,
    pub message: String,
}
