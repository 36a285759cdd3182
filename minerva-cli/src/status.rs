//! `minerva status`.

use minerva_proto::v1::daemon_service_client::DaemonServiceClient;
use minerva_proto::v1::StatusRequest;

use crate::{client, render, CliResult, Global};

pub async fn status(global: &Global) -> CliResult {
    let channel = client::connect(global, false).await?;
    let s = DaemonServiceClient::new(channel)
        .status(StatusRequest {})
        .await?
        .into_inner();
    if global.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!(
        "minervad {} (pid {}) on {}, up {}",
        s.version,
        s.pid,
        s.listen,
        render::seconds(s.uptime_seconds)
    );
    println!(
        "memory: {} resident; models in {}",
        render::bytes(s.rss_bytes),
        s.models_dir
    );
    let ka = if s.default_keep_alive_seconds < 0.0 {
        "forever".to_string()
    } else {
        render::seconds(s.default_keep_alive_seconds)
    };
    let drafts = match s.default_max_draft {
        0 => "off".to_string(),
        n => format!("{n} tokens a step (a model's draft model, else prompt lookup)"),
    };
    println!(
        "backends: {}; default keep-alive: {ka}; speculative decoding: {drafts}",
        s.backends.join(", ")
    );
    if s.loaded_models.is_empty() {
        println!("no models loaded");
    } else {
        let rows: Vec<Vec<String>> = s
            .loaded_models
            .iter()
            .map(|m| {
                let o = m.loaded_options.clone().unwrap_or_default();
                vec![
                    m.name.clone(),
                    o.context_length.unwrap_or(0).to_string(),
                    o.threads.unwrap_or(0).to_string(),
                    render::bytes(m.estimated_memory_bytes),
                    render::keep_alive(m),
                ]
            })
            .collect();
        print!(
            "{}",
            render::table(
                &["LOADED", "CTX", "THREADS", "EST. MEMORY", "UNLOADS IN"],
                &rows
            )
        );
    }
    Ok(())
}
