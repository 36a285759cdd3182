//! `minerva convert`: between a GGUF file and a Hugging Face folder, both ways, so the same
//! weights run in every format and backend.
//! - GGUF -> folder: dequantized weights (f32, f16 or bf16), config.json and tokenizer files
//!   from the GGUF metadata.
//! - folder -> GGUF: F32/F16/BF16 as llama.cpp's convert_hf_to_gguf.py writes it, or quantized
//!   (Q8_0, Q4_0, Q4_1, Q4_K_M) by llama.cpp's own quantizer from an exact F32 intermediate.
//!
//! Runs in the CLI process, like `minerva synth`: a file converter, not a serving job.

use std::path::{Path, PathBuf};

use clap::Args;
use minerva_tools::synth::QuantType;

use crate::{CliError, CliResult, Global};

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// A .gguf file (Llama architecture: Llama, Mistral, SmolLM, ...) or a Hugging Face folder
    /// (MistralForCausalLM, LlamaForCausalLM).
    input: PathBuf,
    /// Output: a folder for a GGUF input (created; must be empty if it exists), a .gguf file
    /// for a folder input (must not exist).
    #[arg(short = 'o', long, value_name = "PATH")]
    output: PathBuf,
    /// Weight type of the output. Folder: f32 (exact dequantized values), f16, bf16. GGUF:
    /// f32, f16 (default), bf16, q8_0, q4_0, q4_1, q4_k_m, q5_k_m, q6_k.
    #[arg(long)]
    dtype: Option<String>,
    /// Threads for llama.cpp's quantizer (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

fn candle_dtype(name: &str) -> Option<candle_core::DType> {
    match name {
        "f32" => Some(candle_core::DType::F32),
        "f16" => Some(candle_core::DType::F16),
        "bf16" => Some(candle_core::DType::BF16),
        _ => None,
    }
}

pub async fn convert(global: &Global, args: ConvertArgs) -> CliResult {
    let started = std::time::Instant::now();
    let to_gguf = args.input.is_dir();
    let dtype = args
        .dtype
        .clone()
        .unwrap_or_else(|| if to_gguf { "f16" } else { "f32" }.into())
        .to_ascii_lowercase();
    let quant = QuantType::by_name(&dtype);
    if candle_dtype(&dtype).is_none() && (quant.is_none() || !to_gguf) {
        return Err(CliError(format!(
            "--dtype {dtype} is not a {} type ({})",
            if to_gguf { "GGUF" } else { "folder" },
            if to_gguf {
                "f32, f16, bf16, q8_0, q4_0, q4_1, q4_k_m, q5_k_m, q6_k"
            } else {
                "f32, f16, bf16"
            }
        )));
    }
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let (input, output) = (args.input.clone(), args.output.clone());
    let summary = tokio::task::spawn_blocking(move || -> Result<serde_json::Value, String> {
        if to_gguf {
            folder_to_gguf(&input, &output, &dtype, quant, threads)
        } else {
            let dt = candle_dtype(&dtype).unwrap_or(candle_core::DType::F32);
            let done = minerva_tools::convert::gguf_to_hf(&input, &output, dt)?;
            let files: Vec<String> = done.files.iter().map(|p| p.display().to_string()).collect();
            Ok(serde_json::json!({
                "dtype": dtype,
                "tensors": done.tensors,
                "parameters": done.parameters,
                "files": files,
                "notes": [],
            }))
        }
    })
    .await
    .map_err(|e| CliError(e.to_string()))?
    .map_err(|e| CliError(format!("convert failed: {e}")))?;
    let secs = started.elapsed().as_secs_f64();
    let mut summary = summary;
    summary["input"] = serde_json::json!(args.input);
    summary["output"] = serde_json::json!(args.output);
    summary["seconds"] = serde_json::json!(secs);
    if global.json {
        println!("{summary}");
    } else {
        for note in summary["notes"].as_array().into_iter().flatten() {
            eprintln!("note: {}", note.as_str().unwrap_or_default());
        }
        println!(
            "wrote {} ({} tensors, {} parameters, {}) in {secs:.1} s",
            args.output.display(),
            summary["tensors"],
            summary["parameters"],
            summary["dtype"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

/// A folder to a GGUF file; quantized types go through an F32 GGUF beside the output, which
/// llama.cpp's quantizer reads and which is removed afterwards.
fn folder_to_gguf(
    input: &Path,
    output: &Path,
    dtype: &str,
    quant: Option<QuantType>,
    threads: usize,
) -> Result<serde_json::Value, String> {
    if output.exists() {
        return Err(format!("{} exists", output.display()));
    }
    let done = match quant {
        None => {
            let dt = candle_dtype(dtype).unwrap_or(candle_core::DType::F16);
            minerva_tools::convert::hf_to_gguf(input, output, dt)?
        }
        Some(q) => {
            let f32_file = output.with_extension("f32.gguf.tmp");
            let _ = std::fs::remove_file(&f32_file);
            let done =
                minerva_tools::convert::hf_to_gguf(input, &f32_file, candle_core::DType::F32);
            let quantized = done.and_then(|d| {
                minerva_tools::synth::quantize::quantize(&f32_file, output, q, threads)
                    .map_err(|e| e.to_string())
                    .map(|()| d)
            });
            let _ = std::fs::remove_file(&f32_file);
            quantized?
        }
    };
    let bytes = std::fs::metadata(output)
        .map(|m| m.len())
        .unwrap_or(done.bytes);
    Ok(serde_json::json!({
        "dtype": dtype,
        "tensors": done.tensors,
        "parameters": done.parameters,
        "files": [done.file],
        "bytes": bytes,
        "notes": done.notes,
    }))
}
