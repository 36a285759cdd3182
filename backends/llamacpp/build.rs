include!("../../build-support/locked_version.rs");

fn main() {
    export_locked_version("llama-cpp-sys-2", "MINERVA_LLAMA_CPP_SYS_VERSION");
}
