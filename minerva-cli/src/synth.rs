//! `minerva synth`: writes a synthetic model (random weights, real shapes and tokenizer) for
//! benchmarking without downloading weights. Runs in the CLI process, like llama-quantize: it is
//! a file generator, not a serving job, so no daemon is involved.

use std::path::PathBuf;

use clap::Args;
use indicatif::ProgressBar;
use minerva_tools::synth::{Format, Progress, Shape, SynthOptions};

use crate::{render, CliError, CliResult, Global};

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Model shape: mistral-7b-v0.1, mistral-7b-v0.3, or tiny (Mistral's architecture and v1
    /// tokenizer at test size).
    #[arg(long, value_name = "SHAPE")]
    shape: String,
    /// Output format: gguf-f16, gguf-q4_k_m, gguf-q5_k_m, gguf-q6_k, gguf-q8_0 (a file),
    /// safetensors or mlx (a Hugging Face-style directory).
    #[arg(long, value_name = "FORMAT")]
    format: String,
    /// Output file (GGUF) or directory (safetensors, mlx).
    #[arg(short = 'o', long, value_name = "PATH")]
    output: PathBuf,
    /// Replace the output if it exists.
    #[arg(long)]
    force: bool,
    /// Threads for quantization [default: all cores].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
}

pub async fn synth(global: &Global, args: SynthArgs) -> CliResult {
    let err = |e: minerva_tools::synth::SynthError| CliError(e.to_string());
    let options = SynthOptions {
        shape: Shape::by_name(&args.shape).map_err(err)?,
        format: Format::by_name(&args.format).map_err(err)?,
        output: args.output,
        force: args.force,
        threads: args.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }),
    };
    let bar = if global.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner()
    };
    let (bytes_style, spin_style) = (render::bytes_bar_style(), render::spinner_style());
    let mut phase = "";
    let mut on_progress = |p: Progress| {
        if p.phase != phase {
            phase = p.phase;
            if p.total > 0 {
                bar.disable_steady_tick();
                bar.set_style(bytes_style.clone());
                bar.set_message(p.phase);
            } else {
                bar.set_style(spin_style.clone());
                bar.set_message(match p.phase {
                    "tokenizer" => "loading the tokenizer".to_string(),
                    "quantize" => {
                        format!("quantizing with llama.cpp ({} threads)", options.threads)
                    }
                    other => other.to_string(),
                });
                bar.enable_steady_tick(std::time::Duration::from_millis(120));
            }
        }
        if p.total > 0 {
            bar.set_length(p.total);
            bar.set_position(p.done);
        }
    };
    // Blocking work on the CLI's only runtime thread: nothing else runs meanwhile.
    let report = minerva_tools::synth::synth(&options, &mut on_progress);
    bar.finish_and_clear();
    let report = report.map_err(err)?;
    if global.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "wrote {} {} ({} parameters, {}) to {} in {}",
        report.shape,
        report.format,
        render::count(report.parameters),
        render::bytes(report.total_bytes),
        report.output.display(),
        render::seconds(report.seconds)
    );
    for f in &report.files {
        println!("  {:>10}  {}", render::bytes(f.bytes), f.path.display());
    }
    Ok(())
}
