include!("../../build-support/locked_version.rs");

fn main() {
    export_locked_version("candle-core", "MINERVA_CANDLE_VERSION");
}
