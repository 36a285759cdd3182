//! What a benchmark job asks for, checked before it runs: test names, counts, prompt files.

use std::path::Path;

use crate::error::{DaemonError, Result};

/// Most clients a job may run at once.
pub const MAX_CONCURRENCY: u32 = 64;
/// Most runs (or warm-ups) per test.
pub const MAX_RUNS: u32 = 1000;

pub use minerva_proto::scenarios::{TestKind, STANDARD};

/// Parses test names: "standard", a scenario name, "ppN", "tgN", "ppN+tgM".
pub fn parse_test(name: &str) -> Result<Vec<TestKind>> {
    minerva_proto::scenarios::parse_test(name).map_err(|e| DaemonError::invalid("tests", e))
}

/// Reads a JSONL prompts file (see [`minerva_proto::scenarios::read_prompts_file`]).
pub fn read_prompts_file(path: &Path) -> Result<Vec<TestKind>> {
    minerva_proto::scenarios::read_prompts_file(path)
        .map_err(|e| DaemonError::invalid("prompts_file", e))
}
