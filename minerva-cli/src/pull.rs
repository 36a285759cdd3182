//! `minerva pull MODEL`: progress bars on stderr, the result on stdout.

use indicatif::ProgressBar;
use minerva_proto::v1::model_service_client::ModelServiceClient;
use minerva_proto::v1::PullModelRequest;

use crate::{client, render, CliError, CliResult, Global};

pub async fn pull(global: &Global, model: &str) -> CliResult {
    let channel = client::connect(global, true).await?;
    let mut stream = ModelServiceClient::new(channel)
        .pull(PullModelRequest {
            model: model.to_string(),
        })
        .await?
        .into_inner();
    let show = !global.json;
    let mut bar: Option<((String, bool), ProgressBar)> = None;
    let (bytes_style, spin_style) = (render::bytes_bar_style(), render::spinner_style());
    while let Some(p) = stream.message().await? {
        if let Some(done) = p.done {
            if let Some((_, b)) = bar.take() {
                b.finish_and_clear();
            }
            if global.json {
                println!("{}", serde_json::to_string_pretty(&done)?);
            } else {
                println!(
                    "{}: {} ({}, {}, {} parameters) at {}",
                    done.name,
                    p.message,
                    render::bytes(done.file_size_bytes),
                    done.quantization,
                    render::count(done.parameter_count),
                    done.path
                );
            }
            return Ok(());
        }
        if !show {
            continue;
        }
        // One bar per phase: a spinner while the size is unknown, then a byte bar.
        let key = (p.phase.clone(), p.total_bytes > 0);
        let same_phase = bar.as_ref().is_some_and(|(k, _)| *k == key);
        if !same_phase {
            if let Some((_, b)) = bar.take() {
                b.finish_and_clear();
            }
            let b = if p.total_bytes > 0 {
                let b = ProgressBar::new(p.total_bytes);
                b.set_style(bytes_style.clone());
                b.set_message(p.phase.clone());
                b
            } else {
                let b = ProgressBar::new_spinner();
                b.set_style(spin_style.clone());
                b.enable_steady_tick(std::time::Duration::from_millis(120));
                b.set_message(format!("{}: {}", p.phase, p.message));
                b
            };
            bar = Some((key, b));
        }
        if let Some((_, b)) = &bar {
            if p.total_bytes > 0 {
                b.set_length(p.total_bytes);
                b.set_position(p.completed_bytes);
            }
            if !p.message.is_empty() {
                b.println(format!("{}: {}", p.phase, p.message));
            }
        }
    }
    Err(CliError(format!(
        "the daemon ended the pull of {model} without a result"
    )))
}
