//! With the `mlx` feature on a prebuilt MLX (MINERVA_MLX_DIR, the unpacked mlx-cpu wheel's
//! `mlx/` folder), this crate's test binaries link `libmlx.so` dynamically: give them a run path
//! to it. (mlx-sys's own link arguments reach only mlx-sys's targets; minervad and the
//! end-to-end tests do the same in their build scripts.)

fn main() {
    println!("cargo:rerun-if-env-changed=MINERVA_MLX_DIR");
    if std::env::var_os("CARGO_FEATURE_MLX").is_some() {
        if let Ok(dir) = std::env::var("MINERVA_MLX_DIR") {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}/lib");
        }
    }
}
