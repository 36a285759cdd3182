//! `minerva`: a thin client of minervad. One module per verb; rendering lives in [`render`].

mod bench;
mod chart;
mod client;
mod convert;
mod models;
mod pull;
mod render;
mod run;
mod status;
mod synth;
mod verify;

use clap::{Parser, Subcommand};
use minerva_proto::addr::DaemonAddr;

#[derive(Debug, Parser)]
#[command(
    name = "minerva",
    version,
    about = "Run local LLMs through the minervad daemon"
)]
struct Cli {
    /// Daemon address: a Unix socket path, or http://127.0.0.1:PORT [default: the daemon's
    /// default socket].
    #[arg(long, global = true, env = "MINERVA_ADDR", value_name = "ADDR")]
    addr: Option<String>,

    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,

    /// Do not start a daemon when none answers.
    #[arg(long, global = true)]
    no_autostart: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate from a prompt (streamed), or chat interactively when no prompt is given.
    Run(run::RunArgs),
    /// Manage models: list, show, load, unload, rm.
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Fetch a model into the store (catalog) or the Hugging Face cache (hf: names), verifying
    /// what it downloads.
    Pull {
        /// Catalog name, e.g. smollm2-135m, or hf:OWNER/REPO[@REVISION][:FILE|:QUANT] from the
        /// Hugging Face Hub.
        model: String,
    },
    /// Is the daemon up, and what has it loaded?
    Status,
    /// Benchmark models in the daemon (warm, load time apart); compare with llama.cpp.
    Bench(bench::BenchArgs),
    /// Write a synthetic model (random weights, real shapes and tokenizer) to benchmark without
    /// downloading weights; runs here, no daemon needed.
    Synth(synth::SynthArgs),
    /// Convert a GGUF file to a Hugging Face folder (dequantized safetensors, config and
    /// tokenizer from its metadata); runs here, no daemon needed.
    Convert(convert::ConvertArgs),
    /// Check a model's files (GGUF, SafeTensors, MLX folder, PyTorch .bin) without loading it.
    /// Exit code 0: valid; 1: the model is invalid; 2: usage or daemon error.
    Verify(verify::VerifyArgs),
}

/// What every verb gets.
pub struct Global {
    pub addr: DaemonAddr,
    pub addr_given: bool,
    pub json: bool,
    pub autostart: bool,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let global = Global {
        addr: cli
            .addr
            .as_deref()
            .map(DaemonAddr::parse)
            .unwrap_or_else(DaemonAddr::from_env_or_default),
        addr_given: cli.addr.is_some(),
        json: cli.json,
        autostart: !cli.no_autostart,
    };
    // One thread: the CLI waits on one stream, and every extra thread woken per token takes
    // a core from the model's compute threads on a small machine.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("minerva: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run::run(&global, args).await,
            Command::Models(cmd) => models::models(&global, cmd).await,
            Command::Pull { model } => pull::pull(&global, &model).await,
            Command::Status => status::status(&global).await,
            Command::Bench(args) => bench::bench(&global, args).await,
            Command::Synth(args) => synth::synth(&global, args).await,
            Command::Convert(args) => convert::convert(&global, args).await,
            // Its own exit codes: 0 valid, 1 invalid model, 2 usage or daemon error.
            Command::Verify(args) => return Ok(verify::verify(&global, args).await),
        }
        .map(|()| std::process::ExitCode::SUCCESS)
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("minerva: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A CLI failure: what to print.
#[derive(Debug)]
pub struct CliError(pub String);

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<tonic::Status> for CliError {
    fn from(s: tonic::Status) -> Self {
        CliError(format!("{} ({:?})", s.message(), s.code()))
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError(e.to_string())
    }
}

impl From<serde_json::Error> for CliError {
    fn from(e: serde_json::Error) -> Self {
        CliError(e.to_string())
    }
}

pub type CliResult<T = ()> = Result<T, CliError>;
