#![no_main]
//! Any bytes as a PyTorch zip checkpoint: zip directory, data.pkl, storages.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = minerva_formats::torchzip::verify(data);
});
