#![no_main]
//! Any bytes as a GGUF file: the header reader must return Ok or Err, never panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = minerva_formats::gguf::parse_header(data, data.len() as u64);
});
