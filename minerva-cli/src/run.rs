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
    /// Subtracted once from each recent token's logit; in [-2, 2].
    #[arg(long, allow_hyphen_values = true)]
    pub presence_penalty: Option<f32>,
    /// Subtracted from a recent token's logit once per occurrence; in [-2, 2].
    #[arg(long, allow_hyphen_values = true)]
    pub frequency_penalty: Option<f32>,
    /// ID=BIAS: add BIAS (in [-100, 100]) to token ID's logit (repeatable).
    #[arg(long, value_name = "ID=BIAS", value_parser = parse_bias, allow_hyphen_values = true)]
    pub logit_bias: Vec<(u32, f32)>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop before this string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Stop at this token id (repeatable).
    #[arg(long, value_name = "ID")]
    pub stop_token: Vec<u32>,
    /// Keep generating through end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// The prompt as token ids, comma-separated, sent as they are (instead of PROMPT).
    #[arg(
        long,
        value_name = "IDS",
        value_delimiter = ',',
        conflicts_with = "prompt"
    )]
    pub tokens: Option<Vec<u32>>,
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
    /// Log-probabilities of the generated tokens with this many likeliest alternatives each
    /// (0-20): a table on stderr after the answer, or per token with --json.
    #[arg(long, value_name = "N")]
    pub logprobs: Option<u32>,
    /// The prompt tokens' log-probabilities too (the whole prompt is computed: no cache reuse).
    #[arg(long)]
    pub prompt_logprobs: bool,
    /// Structured output: the answer is JSON that this JSON Schema file validates.
    #[arg(long, value_name = "FILE", value_parser = read_file, group = "constraint")]
    pub json_schema: Option<String>,
    /// Structured output: the answer is a JSON object.
    #[arg(long, group = "constraint")]
    pub json_object: bool,
    /// Structured output: the whole answer matches this regular expression.
    #[arg(long, value_name = "REGEX", group = "constraint")]
    pub regex: Option<String>,
    /// Structured output: the answer follows this Lark grammar file (llguidance's syntax).
    #[arg(long, value_name = "FILE", value_parser = read_file, group = "constraint")]
    pub grammar: Option<String>,
    /// Samples of the prompt (1-16): computed once, each sample with seed + its index; each
    /// answer is printed after the others are done (all in `samples` with --json).
    #[arg(long, value_name = "N")]
    pub samples: Option<u32>,
    /// Speculative decoding, drafting at most N tokens a step (1-16), with the same tokens:
    /// with the --draft model where there is one, else by prompt lookup (faster where the
    /// answer repeats its input: edits, quotes, code).
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "8")]
    pub speculate: Option<u32>,
    /// No speculative decoding, where the daemon drafts by default (minervad --speculate).
    #[arg(long, conflicts_with = "speculate")]
    pub no_speculate: bool,
    /// Structured output: the answer is one of these strings (repeatable).
    #[arg(long, value_name = "TEXT", group = "constraint")]
    pub choice: Vec<String>,
    /// Print the stats line (load, TTFT, prompt and decode tokens/s) to stderr.
    #[arg(long, short)]
    pub verbose: bool,
}

/// `--json` output of a run.
#[derive(Serialize)]
struct RunOutput {
    text: String,
    tokens: Vec<pb::GeneratedToken>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_logprobs: Option<pb::PromptLogprobs>,
    stats: pb::GenerationStats,
}

/// What one request streamed back.
struct Streamed {
    tokens: Vec<pb::GeneratedToken>,
    prompt_logprobs: Option<pb::PromptLogprobs>,
    stats: pb::GenerationStats,
}

pub async fn run(global: &Global, args: RunArgs) -> CliResult {
    let channel = client::connect(global, true).await?;
    let mut client = GenerateServiceClient::new(channel);
    if let Some(ids) = args.tokens.clone() {
        let input = pb::generate_request::Input::Tokens(pb::TokenIds { ids });
        return one_shot(global, &mut client, &args, input).await;
    }
    match args.prompt.clone() {
        Some(p) => {
            let input = prompt_input(&args, p);
            one_shot(global, &mut client, &args, input).await
        }
        None if !std::io::stdin().is_terminal() => {
            let mut p = String::new();
            std::io::stdin().read_to_string(&mut p)?;
            let input = prompt_input(&args, p);
            one_shot(global, &mut client, &args, input).await
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
            presence_penalty: args.presence_penalty,
            frequency_penalty: args.frequency_penalty,
            logit_bias: args.logit_bias.iter().copied().collect(),
        }),
        max_tokens: args.max_tokens,
        stop: args.stop.clone(),
        stop_token_ids: args.stop_token.clone(),
        ignore_eos: args.ignore_eos.then_some(true),
        keep_alive_seconds: args.keep_alive,
        options: args.load.to_proto(),
        cache_prompt: Some(args.cache_prompt),
        request_id: String::new(),
        logprobs: (args.logprobs.is_some() || args.prompt_logprobs).then(|| pb::LogprobsOptions {
            top: args.logprobs.unwrap_or(0),
            prompt: args.prompt_logprobs,
        }),
        constraint: constraint(args),
        n: args.samples,
        speculation: match (args.speculate, args.no_speculate) {
            (Some(n), _) => Some(pb::Speculation {
                max_draft: Some(n),
                mode: pb::SpeculationMode::Auto as i32,
                ..Default::default()
            }),
            (None, true) => Some(pb::Speculation {
                mode: pb::SpeculationMode::Off as i32,
                ..Default::default()
            }),
            // A draft model named: it drafts.
            (None, false) if args.load.draft.is_some() => Some(pb::Speculation {
                mode: pb::SpeculationMode::Draft as i32,
                ..Default::default()
            }),
            (None, false) => None,
        },
    }
}

fn constraint(args: &RunArgs) -> Option<pb::Constraint> {
    use pb::constraint::Kind;
    let kind = if let Some(s) = &args.json_schema {
        Kind::JsonSchema(s.clone())
    } else if args.json_object {
        Kind::JsonObject(pb::JsonObject {})
    } else if let Some(r) = &args.regex {
        Kind::Regex(r.clone())
    } else if let Some(g) = &args.grammar {
        Kind::Grammar(g.clone())
    } else if !args.choice.is_empty() {
        Kind::Choice(pb::Choice {
            options: args.choice.clone(),
        })
    } else {
        return None;
    };
    Some(pb::Constraint { kind: Some(kind) })
}

fn read_file(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))
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

/// The prompt as raw text (`--raw`) or as one user message for the chat template.
fn prompt_input(args: &RunArgs, prompt: String) -> pb::generate_request::Input {
    if args.raw {
        pb::generate_request::Input::Prompt(prompt)
    } else {
        messages(
            args,
            &[pb::ChatMessage {
                role: "user".into(),
                content: prompt,
            }],
        )
    }
}

fn parse_bias(s: &str) -> Result<(u32, f32), String> {
    let (id, bias) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not ID=BIAS"))?;
    let id = id
        .trim()
        .parse()
        .map_err(|e| format!("token id {id:?}: {e}"))?;
    let bias = bias
        .trim()
        .parse()
        .map_err(|e| format!("bias {bias:?}: {e}"))?;
    Ok((id, bias))
}

async fn one_shot(
    global: &Global,
    client: &mut GenerateServiceClient<Channel>,
    args: &RunArgs,
    input: pb::generate_request::Input,
) -> CliResult {
    if args.samples.is_some_and(|n| n != 1) {
        return several(global, client, args, input).await;
    }
    let Streamed {
        tokens,
        prompt_logprobs,
        stats,
    } = stream(client, request(args, input), !global.json).await?;
    if global.json {
        let out = RunOutput {
            text: stats.text.clone(),
            tokens,
            prompt_logprobs,
            stats: stats.clone(),
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if args.logprobs.is_some() || args.prompt_logprobs {
        eprint!(
            "{}",
            render::logprobs_table(&tokens, prompt_logprobs.as_ref())
        );
    }
    if args.verbose {
        eprintln!("{}", render::stats_line(&stats));
    }
    if stats.constraint_complete == Some(false) {
        eprintln!(
            "minerva: the answer stopped before the constraint was complete (stop: {}); it is a valid beginning, not a whole answer",
            minerva_proto::stop_reason_name(stats.stop_reason)
        );
    }
    Ok(())
}

/// `--samples N`: every sample's answer once the stream ends, in sample order.
async fn several(
    global: &Global,
    client: &mut GenerateServiceClient<Channel>,
    args: &RunArgs,
    input: pb::generate_request::Input,
) -> CliResult {
    let mut s = client.generate(request(args, input)).await?.into_inner();
    let mut samples: Vec<RunOutput> = Vec::new();
    let mut tokens: Vec<Vec<pb::GeneratedToken>> = Vec::new();
    while let Some(msg) = s.message().await? {
        match msg.event {
            Some(pb::generate_response::Event::Token(t)) => {
                let k = t.sample as usize;
                tokens.resize_with(tokens.len().max(k + 1), Vec::new);
                tokens[k].push(t);
            }
            Some(pb::generate_response::Event::Done(stats)) => {
                let k = stats.sample as usize;
                tokens.resize_with(tokens.len().max(k + 1), Vec::new);
                samples.push(RunOutput {
                    text: stats.text.clone(),
                    tokens: std::mem::take(&mut tokens[k]),
                    prompt_logprobs: None,
                    stats,
                });
            }
            Some(pb::generate_response::Event::PromptLogprobs(_)) | None => {}
        }
    }
    samples.sort_by_key(|s| s.stats.sample);
    if global.json {
        let out = serde_json::json!({ "samples": samples });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    for s in &samples {
        println!("[sample {}]\n{}", s.stats.sample, s.text);
        if args.verbose {
            eprintln!("{}", render::stats_line(&s.stats));
        }
    }
    Ok(())
}

/// Sends one request; prints text as it comes when `print`.
async fn stream(
    client: &mut GenerateServiceClient<Channel>,
    req: pb::GenerateRequest,
    print: bool,
) -> CliResult<Streamed> {
    let mut s = client.generate(req).await?.into_inner();
    let mut out = std::io::stdout().lock();
    let mut tokens = Vec::new();
    let mut prompt_logprobs = None;
    while let Some(msg) = s.message().await? {
        match msg.event {
            Some(pb::generate_response::Event::PromptLogprobs(p)) => prompt_logprobs = Some(p),
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
                return Ok(Streamed {
                    tokens,
                    prompt_logprobs,
                    stats,
                });
            }
            None => {}
        }
    }
    Err(CliError("the daemon ended the stream without stats".into()))
}

async fn chat_loop(client: &mut GenerateServiceClient<Channel>, args: &RunArgs) -> CliResult {
    if args.samples.is_some_and(|n| n != 1) {
        return Err(CliError(
            "--samples works with a prompt, not in the interactive chat".into(),
        ));
    }
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
            Some(Ok(Streamed { stats, .. })) => {
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
