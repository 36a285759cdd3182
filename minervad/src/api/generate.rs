//! GenerateService: streamed generation, tokenize, detokenize. Requests are checked here
//! (model, input, sampling, lengths) so the worker only ever sees work it can do.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use minerva_core::chat::ChatMessage;
use minerva_core::sampling::SamplingConfig;
use minerva_proto::v1 as pb;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::keep_alive_of;
use crate::convert::requested_options;
use crate::engine::{Engine, Event, Job, Lease};
use crate::error::{DaemonError, Result};

pub(crate) struct GenerateApi {
    pub(crate) engine: Arc<Engine>,
}

enum Input {
    Prompt(String),
    Chat(Vec<ChatMessage>),
}

fn input_of(prompt: Option<String>, chat: Option<pb::Chat>) -> Result<Input> {
    match (prompt, chat) {
        (Some(p), _) if p.is_empty() => Err(DaemonError::invalid("prompt", "the prompt is empty")),
        (Some(p), _) => Ok(Input::Prompt(p)),
        (None, Some(c)) => Ok(Input::Chat(
            c.messages
                .into_iter()
                .map(|m| ChatMessage {
                    role: m.role,
                    content: m.content,
                })
                .collect(),
        )),
        (None, None) => Err(DaemonError::invalid(
            "input",
            "give a prompt or chat messages",
        )),
    }
}

fn sampling_of(p: Option<&pb::SamplingParams>) -> Result<SamplingConfig> {
    let d = SamplingConfig::default();
    let Some(p) = p else { return Ok(d) };
    let cfg = SamplingConfig {
        temperature: p.temperature.unwrap_or(d.temperature),
        top_k: p.top_k.unwrap_or(d.top_k),
        top_p: p.top_p.unwrap_or(d.top_p),
        min_p: p.min_p.unwrap_or(d.min_p),
        repetition_penalty: p.repetition_penalty.unwrap_or(d.repetition_penalty),
        repetition_window: p.repetition_window.unwrap_or(d.repetition_window),
        seed: p.seed.unwrap_or(d.seed),
    };
    cfg.validate()?;
    Ok(cfg)
}

/// Renders and tokenizes the input on a blocking thread (long prompts take a while).
async fn tokenize(lease: &Lease, input: Input) -> Result<(String, Vec<u32>)> {
    let model = Arc::clone(lease.model());
    tokio::task::spawn_blocking(move || {
        let (text, add_special) = match input {
            Input::Prompt(p) => (p, true),
            Input::Chat(messages) => model.render_chat(&messages)?,
        };
        let tokens = model.model.tokenize(&text, add_special)?;
        Ok((text, tokens))
    })
    .await
    .map_err(|e| DaemonError::Internal(format!("tokenizer task failed: {e}")))?
}

fn to_proto(event: Event, model: &str) -> std::result::Result<pb::GenerateResponse, Status> {
    use pb::generate_response::Event as E;
    Ok(pb::GenerateResponse {
        event: Some(match event {
            Event::Token {
                id,
                text,
                elapsed_ms,
                index,
            } => E::Token(pb::GeneratedToken {
                id,
                text,
                elapsed_ms,
                index,
            }),
            Event::Done(s) => E::Done(pb::GenerationStats {
                load_ms: s.load_ms,
                prompt_tokens: s.prompt_tokens,
                cached_prompt_tokens: s.cached_prompt_tokens,
                ttft_ms: s.ttft_ms,
                prompt_ms: s.prompt_ms,
                prompt_tokens_per_s: s.prompt_tokens_per_s,
                generated_tokens: s.generated_tokens,
                decode_tokens_per_s: s.decode_tokens_per_s,
                total_ms: s.total_ms,
                queue_ms: s.queue_ms,
                stop_reason: s.stop_reason as i32,
                stop_string: s.stop_string,
                text: s.text,
                model: model.to_string(),
            }),
            Event::Error(e) => return Err(e.into()),
        }),
    })
}

type GenerateStream =
    Pin<Box<dyn Stream<Item = std::result::Result<pb::GenerateResponse, Status>> + Send>>;

impl GenerateApi {
    async fn start(
        &self,
        req: pb::GenerateRequest,
        received: Instant,
        id: u64,
    ) -> Result<GenerateStream> {
        use pb::generate_request::Input as I;
        let (prompt, chat) = match req.input {
            Some(I::Prompt(p)) => (Some(p), None),
            Some(I::Chat(c)) => (None, Some(c)),
            None => (None, None),
        };
        let input = input_of(prompt, chat)?;
        let sampling = sampling_of(req.sampling.as_ref())?;
        if req.max_tokens == Some(0) {
            return Err(DaemonError::invalid("max_tokens", "0 tokens asked for; ask for at least 1, or leave it unset to generate until the end of sequence"));
        }
        let keep_alive = keep_alive_of(req.keep_alive_seconds)?;
        let (lease, load_ms) = self
            .engine
            .acquire(
                &req.model,
                requested_options(req.options.as_ref())?,
                keep_alive,
            )
            .await?;
        let ready = Instant::now();
        let (_, prompt) = tokenize(&lease, input).await?;
        let ctx = lease.model().context_options.context_length;
        let trained = lease.model().info().trained_context_length;
        if prompt.is_empty() {
            return Err(DaemonError::invalid("prompt", "the prompt has no tokens"));
        }
        if prompt.len() >= ctx as usize {
            return Err(DaemonError::PromptTooLong {
                prompt_tokens: prompt.len(),
                context_length: ctx,
                trained_context_length: trained,
            });
        }
        if let Some(m) = req.max_tokens {
            if m > ctx {
                return Err(DaemonError::invalid(
                    "max_tokens",
                    format!("{m} is more than the whole context ({ctx} tokens)"),
                ));
            }
            let needed = prompt.len() as u64 + u64::from(m);
            if needed > u64::from(ctx) {
                return Err(DaemonError::DoesNotFit {
                    prompt_tokens: prompt.len(),
                    max_tokens: m,
                    needed,
                    context_length: ctx,
                });
            }
        }
        for s in &req.stop {
            if s.len() > 1024 {
                return Err(DaemonError::invalid(
                    "stop",
                    "a stop string is longer than 1024 bytes",
                ));
            }
        }
        tracing::info!(prompt_tokens = prompt.len(), max_tokens = ?req.max_tokens, "generate");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let model_name = lease.model().resolved.name.clone();
        lease.model().clone().submit(Job {
            id,
            received,
            ready,
            prompt,
            sampling,
            max_tokens: req.max_tokens,
            stop: req.stop,
            ignore_eos: false,
            context_length: ctx,
            cache_prompt: req.cache_prompt.unwrap_or(false),
            load_ms,
            events: tx,
            lease,
        })?;
        let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
            .map(move |ev| to_proto(ev, &model_name));
        Ok(Box::pin(stream))
    }
}

#[tonic::async_trait]
impl pb::generate_service_server::GenerateService for GenerateApi {
    type GenerateStream = GenerateStream;

    async fn generate(
        &self,
        req: Request<pb::GenerateRequest>,
    ) -> std::result::Result<Response<GenerateStream>, Status> {
        let received = Instant::now();
        let req = req.into_inner();
        let id = self.engine.next_request_id();
        let span = tracing::info_span!("generate", request = id, model = %req.model);
        match self.start(req, received, id).instrument(span).await {
            Ok(s) => Ok(Response::new(s)),
            Err(e) => {
                tracing::info!(request = id, error = %e, "generate refused");
                Err(e.into())
            }
        }
    }

    async fn tokenize(
        &self,
        req: Request<pb::TokenizeRequest>,
    ) -> std::result::Result<Response<pb::TokenizeResponse>, Status> {
        use pb::tokenize_request::Input as I;
        let req = req.into_inner();
        let (prompt, chat) = match req.input {
            Some(I::Prompt(p)) => (Some(p), None),
            Some(I::Chat(c)) => (None, Some(c)),
            None => (None, None),
        };
        let input = input_of(prompt, chat)?;
        let (lease, _) = self
            .engine
            .acquire(&req.model, requested_options(req.options.as_ref())?, None)
            .await?;
        let (text, tokens) = tokenize(&lease, input).await?;
        Ok(Response::new(pb::TokenizeResponse { tokens, text }))
    }

    async fn detokenize(
        &self,
        req: Request<pb::DetokenizeRequest>,
    ) -> std::result::Result<Response<pb::DetokenizeResponse>, Status> {
        let req = req.into_inner();
        let (lease, _) = self
            .engine
            .acquire(&req.model, requested_options(req.options.as_ref())?, None)
            .await?;
        let model = Arc::clone(lease.model());
        let text = tokio::task::spawn_blocking(move || -> Result<String> {
            let mut bytes = Vec::new();
            for t in req.tokens {
                bytes.extend(model.model.token_bytes(t)?);
            }
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        })
        .await
        .map_err(|e| DaemonError::Internal(e.to_string()))??;
        Ok(Response::new(pb::DetokenizeResponse { text }))
    }
}
