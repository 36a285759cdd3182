//! Compiles proto/minerva/v1/*.proto once for the whole workspace, and writes the file
//! descriptor set that the daemon serves through gRPC reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "models.proto",
        "generate.proto",
        "daemon.proto",
        "bench.proto",
    ]
    .map(|f| proto_root.join("minerva/v1").join(f));
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    // A system protoc wins when PROTOC says so; otherwise the vendored one, so a bare machine
    // needs no protobuf-compiler package.
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded.
        unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("minerva_descriptor.bin"))
        .type_attribute(".minerva.v1", "#[derive(serde::Serialize)]");
    // Benchmark results are also read back from JSON files (compare, chart, peer results);
    // fields a peer does not measure may be missing.
    for m in [
        "BenchJobSpec",
        "BenchSummary",
        "BenchRun",
        "BenchMetric",
        "BenchTest",
        "BenchModelLoad",
        "BenchResources",
        "BenchGpu",
        "BenchMachine",
        "BenchResult",
        "LoadOptions",
        "DraftDetails",
    ] {
        config = config.type_attribute(
            format!(".minerva.v1.{m}"),
            "#[derive(serde::Deserialize)] #[serde(default)]",
        );
    }
    config
        .field_attribute(
            ".minerva.v1.GenerationStats.stop_reason",
            "#[serde(serialize_with = \"crate::serialize_stop_reason\")]",
        )
        .compile_protos(&files, &[proto_root])?;
    Ok(())
}
