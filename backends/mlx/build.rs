//! With the `mlx` feature on a prebuilt MLX (MINERVA_MLX_DIR, the unpacked mlx-cpu wheel's
//! `mlx/` folder), this crate's test binaries link `libmlx.so` dynamically: give them a run path
//! to it. (mlx-sys's own link arguments reach only mlx-sys's targets; minervad and the
//! end-to-end tests do the same in their build scripts.) It also records the mlx-rs and mlx-sys
//! versions Cargo.lock resolved, for build_info.

include!("../../build-support/locked_version.rs");

fn main() {
    export_locked_version("mlx-rs", "MINERVA_MLX_RS_VERSION");
    export_locked_version("mlx-sys", "MINERVA_MLX_SYS_VERSION");
    println!("cargo:rerun-if-env-changed=MINERVA_MLX_DIR");
    if std::env::var_os("CARGO_FEATURE_MLX").is_some() {
        if let Ok(dir) = std::env::var("MINERVA_MLX_DIR") {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}/lib");
        }
    }
}
