//! `minerva run MODEL [PROMPT]`: streams the answer to stdout (text only, for scripts); status
//! and `--verbose` stats go to stderr. Without a prompt: an interactive chat on a terminal, or
//! the prompt read from stdin when it is piped.

use std::io::{BufRead, IsTerminal, Read, Write};

use clap::Args;
use minerva_proto::v1 as pb;
use minerva_proto::v1::generate_service_client::GenerateServiceClient;
use serde::Serialize;
use tonic::transport::Channel;

use crate::models::LoadFlags;
use crate::{client, render, CliError, CliResult, Global};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A store name (see `minerva models list`), a .gguf file, or a model folder (Hugging Face
    /// SafeTensors or MLX).
    pub model: String,
    /// The prompt. Without one: interactive chat (or the prompt from piped stdin).
    pub prompt: Option<String>,
    /// Send the prompt as raw text, without the model's chat template.
    #[arg(long)]
    pub raw: bool,
    /// A system message for the chat template.
    #[arg(long)]
    pub system: Option<String>,
    /// Most tokens to generate [default: until the model stops or the context is full].
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// 0 = greedy (default).
    #[arg(long)]
    pub temperature: Option<f32>,
    #[arg(long)]
    pub top_k: Option<u32>,
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long)]
    pub min_p: Option<f32>,
    #[arg(long)]
    pub repeat_penalty: Option<f32>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop before this string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    #[command(flatten)]
    pub load: LoadFlags,
    /// Keep the model loaded this many seconds when idle (negative = forever).
    #[arg(long, allow_hyphen_values = true)]
    pub keep_alive: Option<f64>,
    /// Prompt caching: reuse the prefix of the prompt that an earlier --cache-prompt request
    /// left in the daemon's KV cache, and leave this one's there (faster; not bit-reproducible:
    /// a long greedy answer may differ from a cold run's). The interactive chat always does.
    #[arg(long)]
    pub cache_prompt: bool,
    /// Print the stats line (load, TTFT, prompt and decode tokens/s) to stderr.
    #[arg(long, short)]
    pub verbose: bool,
}

/// `--json` output of a run.
#[derive(Serialize)]
struct RunOutput {
    text: String,
    tokens: Vec<pb::GeneratedToken>,
    stats: pb::GenerationStats,
}

pub async fn run(global: &Global, args: RunArgs) -> CliResult {
    let channel = client::connect(global, true).await?;
    let mut client = GenerateServiceClient::new(channel);
    match args.prompt.clone() {
        Some(p) => one_shot(global, &mut client, &args, p).await,
        None if !std::io::stdin().is_terminal() => {
            let mut p = String::new();
            std::io::stdin().read_to_string(&mut p)?;
            one_shot(global, &mut client, &args, p).await
        }
        None => chat_loop(&mut client, &args).await,
    }
}

fn request(args: &RunArgs, input: pb::generate_request::Input) -> pb::GenerateRequest {
    pb::GenerateRequest {
        model: args.model.clone(),
        input: Some(input),
        sampling: Some(pb::SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            min_p: args.min_p,
            repetition_penalty: args.repeat_penalty,
            repetition_window: None,
            seed: args.seed,
        }),
        max_tokens: args.max_tokens,
        stop: args.stop.clone(),
        keep_alive_seconds: args.keep_alive,
        options: args.load.to_proto(),
        cache_prompt: Some(args.cache_prompt),
    }
}

fn messages(args: &RunArgs, turns: &[pb::ChatMessage]) -> pb::generate_request::Input {
    let mut messages = Vec::new();
    if let Some(s) = &args.system {
        messages.push(pb::ChatMessage {
            role: "system".into(),
            content: s.clone(),
        });
    }
    messages.extend_from_slice(turns);
    pb::generate_request::Input::Chat(pb::Chat { messages })
}

async fn one_shot(
    global: &Global,
    client: &mut GenerateServiceClient<Channel>,
    args: &RunArgs,
    prompt: String,
) -> CliResult {
    let input = if args.raw {
        pb::generate_request::Input::Prompt(prompt)
    } else {
        messages(
            args,
            &[pb::ChatMessage {
                role: "user".into(),
                content: prompt,
            }],
        )
    };
    let (tokens, stats) = stream(client, request(args, input), !global.json).await?;
    if global.json {
        let out = RunOutput {
            text: stats.text.clone(),
            tokens,
            stats: stats.clone(),
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    if args.verbose {
        eprintln!("{}", render::stats_line(&stats));
    }
    Ok(())
}

/// Sends one request; prints text as it comes when `print`. Returns the tokens and stats.
async fn stream(
    client: &mut GenerateServiceClient<Channel>,
    req: pb::GenerateRequest,
    print: bool,
) -> CliResult<(Vec<pb::GeneratedToken>, pb::GenerationStats)> {
    let mut s = client.generate(req).await?.into_inner();
    let mut out = std::io::stdout().lock();
    let mut tokens = Vec::new();
    while let Some(msg) = s.message().await? {
        match msg.event {
            Some(pb::generate_response::Event::Token(t)) => {
                if print && !t.text.is_empty() {
                    out.write_all(t.text.as_bytes())?;
                    out.flush()?;
                }
                tokens.push(t);
            }
            Some(pb::generate_response::Event::Done(stats)) => {
                if print {
                    out.write_all(b"\n")?;
                    out.flush()?;
                }
                return Ok((tokens, stats));
            }
            None => {}
        }
    }
    Err(CliError("the daemon ended the stream without stats".into()))
}

async fn chat_loop(client: &mut GenerateServiceClient<Channel>, args: &RunArgs) -> CliResult {
    eprintln!("Chatting with {} (its own chat template). /bye or Ctrl-D to leave; Ctrl-C stops an answer.", args.model);
    let mut turns: Vec<pb::ChatMessage> = Vec::new();
    let stdin = std::io::stdin();
    loop {
        eprint!(">>> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            eprintln!();
            return Ok(());
        }
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line == "/bye" || line == "/exit" {
            return Ok(());
        }
        turns.push(pb::ChatMessage {
            role: "user".into(),
            content: line.to_string(),
        });
        let mut req = request(args, messages(args, &turns));
        // Each turn resends the conversation: the earlier turns are in the KV cache already.
        req.cache_prompt = Some(true);
        let result = tokio::select! {
            r = stream(client, req, true) => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        };
        match result {
            Some(Ok((_, stats))) => {
                if args.verbose {
                    eprintln!("{}", render::stats_line(&stats));
                }
                turns.push(pb::ChatMessage {
                    role: "assistant".into(),
                    content: stats.text,
                });
            }
            Some(Err(e)) => {
                eprintln!("minerva: {e}");
                turns.pop();
            }
            None => {
                // Dropping the stream cancels the generation in the daemon.
                eprintln!("\n[stopped]");
                turns.pop();
            }
        }
    }
}
