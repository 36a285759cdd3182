#![no_main]
//! Any bytes as a pickle: scanned, never executed, never a panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = minerva_formats::pickle::scan(data);
});
