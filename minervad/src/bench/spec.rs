//! What a benchmark job asks for, checked before it runs: test names, counts, prompt files.

use std::path::Path;

use crate::error::{DaemonError, Result};

/// Most clients a job may run at once.
pub(crate) const MAX_CONCURRENCY: u32 = 64;
/// Most runs (or warm-ups) per test.
pub(crate) const MAX_RUNS: u32 = 1000;

pub(crate) use minerva_proto::scenarios::TestKind;

/// Parses test names: "standard", a scenario name, "ppN", "tgN", "ppN+tgM".
pub(crate) fn parse_test(name: &str) -> Result<Vec<TestKind>> {
    minerva_proto::scenarios::parse_test(name).map_err(|e| DaemonError::invalid("tests", e))
}

/// Reads a JSONL prompts file (see [`minerva_proto::scenarios::read_prompts_file`]).
pub(crate) fn read_prompts_file(path: &Path) -> Result<Vec<TestKind>> {
    minerva_proto::scenarios::read_prompts_file(path)
        .map_err(|e| DaemonError::invalid("prompts_file", e))
}
