//! `minerva verify PATH|NAME`: asks the daemon to check a model's files and prints what the
//! model is, or exactly what is wrong with it. Exit codes: 0 valid, 1 invalid, 2 usage or
//! daemon error.

use std::process::ExitCode;

use clap::Args;
use minerva_proto::v1 as pb;
use minerva_proto::v1::model_service_client::ModelServiceClient;

use crate::{client, render, CliResult, Global};

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// A model file (.gguf, .safetensors, PyTorch .bin), a model folder (SafeTensors, sharded
    /// SafeTensors, MLX), or a store name.
    pub model: String,
}

const INVALID: u8 = 1;
const ERROR: u8 = 2;

pub async fn verify(global: &Global, args: VerifyArgs) -> ExitCode {
    match run(global, args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(INVALID),
        Err(e) => {
            eprintln!("minerva: {e}");
            ExitCode::from(ERROR)
        }
    }
}

async fn run(global: &Global, args: VerifyArgs) -> CliResult<bool> {
    // The daemon has another working directory: send paths that exist here as absolute ones.
    let local = std::path::Path::new(&args.model);
    let model = if local.exists() {
        std::fs::canonicalize(local)?.display().to_string()
    } else {
        args.model
    };
    let mut client = ModelServiceClient::new(client::connect(global, true).await?);
    let r = client
        .verify(pb::VerifyModelRequest { model })
        .await?
        .into_inner();
    if global.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_report(&r);
    }
    Ok(r.valid)
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

fn print_report(r: &pb::VerifyModelResponse) {
    let verdict = if r.valid { "valid" } else { "INVALID" };
    println!("{:<20}{verdict}", "verdict");
    let mut rows = vec![
        ("path", r.path.clone()),
        ("format", r.format.clone()),
        ("architecture", or_dash(&r.architecture)),
        (
            "parameters",
            format!(
                "{} ({})",
                render::count(r.parameter_count),
                r.parameter_count
            ),
        ),
        ("quantization", or_dash(&r.quantization)),
        (
            "context length",
            if r.context_length > 0 {
                format!("{} (trained)", r.context_length)
            } else {
                "-".into()
            },
        ),
        ("tensors", r.tensor_count.to_string()),
        ("size", render::bytes(r.file_size_bytes)),
    ];
    if r.estimated_memory_bytes > 0 {
        rows.push((
            "est. memory",
            format!(
                "{} at {} tokens of context",
                render::bytes(r.estimated_memory_bytes),
                r.estimated_for_context
            ),
        ));
    }
    rows.push(("files", r.files.join(", ")));
    for (k, v) in rows {
        println!("{k:<20}{v}");
    }
    if let Some(e) = &r.error {
        println!();
        println!("{:<20}{}", "error", e.message);
        let fields = [
            ("kind", Some(e.kind.clone())),
            ("file", Some(e.file.clone()).filter(|f| !f.is_empty())),
            ("tensor", e.tensor.clone()),
            ("byte offset", e.offset.map(|o| o.to_string())),
            ("expected", e.expected.clone()),
            ("found", e.found.clone()),
        ];
        for (k, v) in fields {
            if let Some(v) = v {
                println!("  {k:<18}{v}");
            }
        }
    }
    for n in &r.notes {
        println!("{:<20}{n}", "note");
    }
}
