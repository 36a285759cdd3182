// Included by the backends' build scripts: the version Cargo.lock resolved for a dependency, so
// build records name what was built rather than a version written into the source by hand.

/// Sets `env` (for `env!`) to the locked version of `package`, or "unknown" outside the
/// workspace (no Cargo.lock next to it).
fn export_locked_version(package: &str, env: &str) {
    let lock = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let text = std::fs::read_to_string(&lock).unwrap_or_default();
    let wanted = format!("name = \"{package}\"");
    let mut lines = text.lines();
    let mut version = "unknown".to_string();
    while let Some(line) = lines.next() {
        if line.trim() == wanted {
            if let Some(v) = lines.next().and_then(|l| l.trim().strip_prefix("version = ")) {
                version = v.trim_matches('"').to_string();
            }
            break;
        }
    }
    println!("cargo:rustc-env={env}={version}");
}
