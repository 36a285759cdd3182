//! With the `mlx` feature on a prebuilt MLX (MINERVA_MLX_DIR), the test binaries link
//! `libmlx.so` dynamically (they load models with minerva-mlx directly): give them a run path.

fn main() {
    println!("cargo:rerun-if-env-changed=MINERVA_MLX_DIR");
    if std::env::var_os("CARGO_FEATURE_MLX").is_some() {
        if let Ok(dir) = std::env::var("MINERVA_MLX_DIR") {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}/lib");
        }
    }
}
