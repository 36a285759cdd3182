//! `minerva models list|show|load|unload|rm`.

use clap::{Args, Subcommand};
use minerva_proto::v1 as pb;
use minerva_proto::v1::model_service_client::ModelServiceClient;

use crate::{client, render, CliResult, Global};

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Models in the store (pulled or pullable) and loaded models.
    List,
    /// What a model is: architecture, parameters, quantization, context, memory.
    Show { model: String },
    /// Load a model and keep it warm.
    Load(LoadArgs),
    /// Unload a model now.
    Unload { model: String },
    /// Delete a pulled model from disk (a catalog model, or hf:OWNER/REPO[:FILE] from the
    /// Hugging Face cache).
    #[command(alias = "remove")]
    Rm { model: String },
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    pub model: String,
    #[command(flatten)]
    pub options: LoadFlags,
    /// Keep-alive while idle, seconds (negative = forever).
    #[arg(long, allow_hyphen_values = true)]
    pub keep_alive: Option<f64>,
}

/// Load options shared by `run` and `models load`.
#[derive(Debug, Args, Clone, Default)]
pub struct LoadFlags {
    /// Compute threads.
    #[arg(long)]
    pub threads: Option<u32>,
    /// Context length in tokens.
    #[arg(long)]
    pub ctx: Option<u32>,
    /// Layers to offload to a GPU.
    #[arg(long)]
    pub gpu_layers: Option<u32>,
    /// Backend: llama.cpp, candle or mlx [default: by format: GGUF -> llama.cpp, Hugging Face
    /// folders -> candle, MLX folders -> mlx].
    #[arg(long)]
    pub backend: Option<String>,
    /// A draft model for speculative decoding (a smaller model with the same vocabulary),
    /// loaded beside the model.
    #[arg(long, value_name = "MODEL")]
    pub draft: Option<String>,
}

impl LoadFlags {
    pub fn to_proto(&self) -> Option<pb::LoadOptions> {
        (self.threads.is_some()
            || self.ctx.is_some()
            || self.gpu_layers.is_some()
            || self.backend.is_some()
            || self.draft.is_some())
        .then(|| pb::LoadOptions {
            threads: self.threads,
            context_length: self.ctx,
            gpu_layers: self.gpu_layers,
            backend: self.backend.clone(),
            draft_model: self.draft.clone(),
        })
    }
}

pub async fn models(global: &Global, cmd: ModelsCommand) -> CliResult {
    let mut client = ModelServiceClient::new(client::connect(global, true).await?);
    match cmd {
        ModelsCommand::List => {
            let list = client.list(pb::ListModelsRequest {}).await?.into_inner();
            if global.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .models
                .iter()
                .map(|m| {
                    vec![
                        m.name.clone(),
                        if m.file_size_bytes > 0 {
                            render::bytes(m.file_size_bytes)
                        } else {
                            "-".into()
                        },
                        if m.quantization.is_empty() {
                            "-".into()
                        } else {
                            m.quantization.clone()
                        },
                        render::count(m.parameter_count),
                        if m.context_length > 0 {
                            m.context_length.to_string()
                        } else {
                            "-".into()
                        },
                        if m.loaded {
                            format!("yes ({})", render::keep_alive(m))
                        } else {
                            "no".into()
                        },
                        m.source.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                render::table(
                    &["NAME", "SIZE", "QUANT", "PARAMS", "CTX", "LOADED", "SOURCE"],
                    &rows
                )
            );
        }
        ModelsCommand::Show { model } => {
            let d = client
                .show(pb::ShowModelRequest { model })
                .await?
                .into_inner();
            print_details(global, &d)?;
        }
        ModelsCommand::Load(args) => {
            let r = client
                .load(pb::LoadModelRequest {
                    model: args.model,
                    options: args.options.to_proto(),
                    keep_alive_seconds: args.keep_alive,
                })
                .await?
                .into_inner();
            if global.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else if let Some(m) = r.model {
                if r.loaded_now {
                    println!(
                        "loaded {} in {:.0} ms (keep-alive {})",
                        m.name,
                        r.load_ms,
                        render::keep_alive(&m)
                    );
                } else {
                    println!(
                        "{} was already loaded (keep-alive {})",
                        m.name,
                        render::keep_alive(&m)
                    );
                }
            }
        }
        ModelsCommand::Rm { model } => {
            let r = client
                .remove(pb::RemoveModelRequest {
                    model: model.clone(),
                })
                .await?
                .into_inner();
            if global.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!("removed {model} ({} freed)", render::bytes(r.freed_bytes));
            }
        }
        ModelsCommand::Unload { model } => {
            let r = client
                .unload(pb::UnloadModelRequest {
                    model: model.clone(),
                })
                .await?
                .into_inner();
            if global.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else if r.unloaded {
                println!("unloaded {model}");
            } else {
                println!("{model} was not loaded");
            }
        }
    }
    Ok(())
}

fn print_details(global: &Global, d: &pb::ModelDetails) -> CliResult {
    if global.json {
        println!("{}", serde_json::to_string_pretty(d)?);
        return Ok(());
    }
    let draft = d.draft.as_ref().map(|x| {
        format!(
            "{} ({}, {} parameters, {})",
            x.name,
            x.quantization,
            render::count(x.parameter_count),
            x.backend
        )
    });
    let rows = [
        ("name", d.name.clone()),
        ("path", d.path.clone()),
        ("format", d.format.clone()),
        ("architecture", d.architecture.clone()),
        (
            "parameters",
            format!(
                "{} ({})",
                render::count(d.parameter_count),
                d.parameter_count
            ),
        ),
        ("quantization", d.quantization.clone()),
        ("context length", format!("{} (trained)", d.context_length)),
        (
            "layers / embedding",
            format!("{} / {}", d.layer_count, d.embedding_length),
        ),
        (
            "heads / kv heads",
            format!("{} / {}", d.head_count, d.head_count_kv),
        ),
        ("vocabulary", d.vocab_size.to_string()),
        (
            "chat template",
            if d.has_chat_template {
                "yes (from the model)".into()
            } else {
                "no".into()
            },
        ),
        ("file size", render::bytes(d.file_size_bytes)),
        (
            "est. memory",
            format!(
                "{} at {} tokens of context",
                render::bytes(d.estimated_memory_bytes),
                d.estimated_for_context
            ),
        ),
        (
            "loaded",
            if d.loaded {
                format!("yes, unloads in {}", render::keep_alive(d))
            } else {
                "no".into()
            },
        ),
        ("backend", d.backend.clone()),
        ("source", d.source.clone()),
    ];
    for (k, v) in rows {
        println!("{k:<20}{v}");
    }
    if let Some(draft) = draft {
        println!("{:<20}{draft}", "draft model");
    }
    Ok(())
}
