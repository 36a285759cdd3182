//! Records the git commit and the compiler flags, for benchmark results to say what was measured.

use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .is_some_and(|o| o.status.success() && !o.stdout.is_empty());
    let commit = if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    };
    println!("cargo:rustc-env=MINERVA_GIT_COMMIT={commit}");
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS")
        .unwrap_or_default()
        .replace('\x1f', " ");
    println!("cargo:rustc-env=MINERVA_RUSTFLAGS={flags}");
    for path in ["../.git/HEAD", "../.git/index", "../.git/refs/heads"] {
        println!("cargo:rerun-if-changed={path}");
    }
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");

    // How llama-cpp-sys-2 was asked to build llama.cpp (.cargo/config.toml sets both).
    let target = std::env::var("TARGET")
        .unwrap_or_default()
        .replace('-', "_");
    let cxx_var = format!("CXXFLAGS_{target}");
    let profile =
        std::env::var("LLAMA_LIB_PROFILE").unwrap_or_else(|_| "llama-cpp-sys-2's default".into());
    let cxxflags = std::env::var(&cxx_var)
        .or_else(|_| std::env::var("CXXFLAGS"))
        .unwrap_or_default();
    println!("cargo:rustc-env=MINERVA_LLAMA_CMAKE=CMake {profile}; CXXFLAGS [{cxxflags}]");
    for var in ["LLAMA_LIB_PROFILE", "CXXFLAGS", &cxx_var] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    // The MLX backend on a prebuilt MLX (Linux: the mlx-cpu wheel) links libmlx.so dynamically;
    // mlx-sys's link arguments do not reach this binary, so it records where the library is.
    println!("cargo:rerun-if-env-changed=MINERVA_MLX_DIR");
    if std::env::var_os("CARGO_FEATURE_MLX").is_some() {
        if let Ok(dir) = std::env::var("MINERVA_MLX_DIR") {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}/lib");
        }
    }
}
