#![no_main]
//! Any bytes as a SafeTensors file, and as an index JSON whose shards are the same bytes.
use libfuzzer_sys::fuzz_target;
use minerva_formats::safetensors;

fuzz_target!(|data: &[u8]| {
    let _ = safetensors::parse(data, data.len() as u64, "fuzz.safetensors");
    let _ = safetensors::check_index(
        data,
        |_| safetensors::parse(data, data.len() as u64, "shard"),
        |_| true,
    );
});
