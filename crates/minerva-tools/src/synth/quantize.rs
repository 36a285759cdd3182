//! Quantized GGUF through llama.cpp's own quantizer (`llama_model_quantize`, what
//! `llama-quantize` runs), from the F16 file this crate writes.

use std::ffi::CString;
use std::path::Path;

use crate::synth::SynthError;

/// A llama.cpp quantization type `synth` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantType {
    Q4KM,
    Q5KM,
    Q6K,
    Q8_0,
    Q4_0,
    Q4_1,
}

impl QuantType {
    /// Every type, by the name llama-quantize gives it (lower case).
    pub const ALL: &[(&str, QuantType)] = &[
        ("q4_k_m", QuantType::Q4KM),
        ("q5_k_m", QuantType::Q5KM),
        ("q6_k", QuantType::Q6K),
        ("q8_0", QuantType::Q8_0),
        ("q4_0", QuantType::Q4_0),
        ("q4_1", QuantType::Q4_1),
    ];

    pub fn by_name(name: &str) -> Option<QuantType> {
        let name = name.to_ascii_lowercase();
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, q)| *q)
    }

    fn ftype(self) -> llama_cpp_sys_2::llama_ftype {
        match self {
            QuantType::Q4KM => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q4_K_M,
            QuantType::Q5KM => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q5_K_M,
            QuantType::Q6K => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q6_K,
            QuantType::Q8_0 => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q8_0,
            QuantType::Q4_0 => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q4_0,
            QuantType::Q4_1 => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q4_1,
        }
    }
}

/// Quantizes the GGUF at `input` into `output` with `threads` threads.
pub fn quantize(
    input: &Path,
    output: &Path,
    quant: QuantType,
    threads: usize,
) -> Result<(), SynthError> {
    let fail = |detail: String| SynthError::Quantize { detail };
    // llama.cpp's global state (ggml's tables) is initialised by the backend init.
    minerva_llamacpp::llama_backend().map_err(|e| fail(e.to_string()))?;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(|_| fail(format!("{} contains a NUL byte", p.display())))
    };
    let (inp, out) = (c(input)?, c(output)?);
    // SAFETY: returns a plain struct of defaults.
    let mut params = unsafe { llama_cpp_sys_2::llama_model_quantize_default_params() };
    params.nthread = i32::try_from(threads.max(1)).unwrap_or(i32::MAX);
    params.ftype = quant.ftype();
    // SAFETY: both paths are valid NUL-terminated strings and params outlives the call; the
    // pointer fields of params keep their defaults (null).
    let rc = unsafe { llama_cpp_sys_2::llama_model_quantize(inp.as_ptr(), out.as_ptr(), &params) };
    if rc != 0 {
        return Err(fail(format!(
            "llama_model_quantize({} -> {}) returned {rc}",
            input.display(),
            output.display()
        )));
    }
    Ok(())
}
