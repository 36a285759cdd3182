//! `minerva convert`: a GGUF file to a Hugging Face folder (dequantized weights, config.json and
//! tokenizer files from the GGUF metadata), so the same weights run in every format and backend.
//! Runs in the CLI process, like `minerva synth`: a file converter, not a serving job.

use std::path::PathBuf;

use clap::Args;

use crate::{CliError, CliResult, Global};

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// A .gguf file (Llama-architecture: Llama, Mistral, SmolLM, ...).
    input: PathBuf,
    /// Output folder (created; must be empty if it exists).
    #[arg(short = 'o', long, value_name = "DIR")]
    output: PathBuf,
    /// Weight dtype of the output: f32 (exact dequantized values), f16 or bf16.
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
    dtype: String,
}

pub async fn convert(global: &Global, args: ConvertArgs) -> CliResult {
    let dtype = match args.dtype.as_str() {
        "f16" => candle_core::DType::F16,
        "bf16" => candle_core::DType::BF16,
        _ => candle_core::DType::F32,
    };
    let (input, output) = (args.input.clone(), args.output.clone());
    let started = std::time::Instant::now();
    let done = tokio::task::spawn_blocking(move || {
        minerva_candle::convert::gguf_to_hf(&input, &output, dtype)
    })
    .await
    .map_err(|e| CliError(e.to_string()))?
    .map_err(|e| CliError(format!("convert failed: {e}")))?;
    let secs = started.elapsed().as_secs_f64();
    if global.json {
        let files: Vec<String> = done.files.iter().map(|p| p.display().to_string()).collect();
        println!(
            "{}",
            serde_json::json!({
                "input": args.input,
                "output": args.output,
                "dtype": args.dtype,
                "tensors": done.tensors,
                "parameters": done.parameters,
                "files": files,
                "seconds": secs,
            })
        );
    } else {
        println!(
            "wrote {} ({} tensors, {} parameters, {}) in {secs:.1} s",
            args.output.display(),
            done.tensors,
            done.parameters,
            args.dtype
        );
    }
    Ok(())
}
