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
use crate::engine::speculative::{speculation_on, Asked, DraftSource};
use crate::engine::{
    ConstraintSpec, Engine, Event, Job, Lease, Logprobs, LogprobsWanted, Registration,
};
use crate::error::{DaemonError, Result};

/// Most samples of one prompt (`n`) a request may ask for.
const MAX_SAMPLES: u32 = 16;

pub(crate) struct GenerateApi {
    pub(crate) engine: Arc<Engine>,
}

enum Input {
    Prompt(String),
    Chat(Vec<ChatMessage>),
    Tokens(Vec<u32>),
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
        presence_penalty: p.presence_penalty.unwrap_or(d.presence_penalty),
        frequency_penalty: p.frequency_penalty.unwrap_or(d.frequency_penalty),
        logit_bias: {
            let mut b: Vec<(u32, f32)> = p.logit_bias.iter().map(|(&t, &b)| (t, b)).collect();
            b.sort_unstable_by_key(|&(t, _)| t);
            b
        },
    };
    cfg.validate()?;
    Ok(cfg)
}

/// Renders and tokenizes the input on a blocking thread (long prompts take a while).
async fn tokenize(lease: &Lease, input: Input) -> Result<(String, Vec<u32>)> {
    let model = Arc::clone(lease.model());
    tokio::task::spawn_blocking(move || {
        let (text, add_special) = match input {
            Input::Tokens(ids) => return Ok((String::new(), ids)),
            Input::Prompt(p) => (p, true),
            Input::Chat(messages) => model.render_chat(&messages)?,
        };
        let tokens = model.model.tokenize(&text, add_special)?;
        Ok((text, tokens))
    })
    .await
    .map_err(|e| DaemonError::Internal(format!("tokenizer task failed: {e}")))?
}

fn logprobs_of(o: Option<&pb::LogprobsOptions>) -> Result<Option<LogprobsWanted>> {
    let Some(o) = o else { return Ok(None) };
    minerva_core::logprobs::check_top(o.top)?;
    Ok(Some(LogprobsWanted {
        top: o.top,
        prompt: o.prompt,
    }))
}

fn constraint_of(c: Option<pb::Constraint>, ignore_eos: bool) -> Result<Option<ConstraintSpec>> {
    use pb::constraint::Kind;
    let Some(c) = c else { return Ok(None) };
    let spec = match c.kind {
        None => {
            return Err(DaemonError::invalid(
                "constraint",
                "give one kind of constraint",
            ))
        }
        Some(Kind::JsonSchema(s)) => ConstraintSpec::JsonSchema(s),
        Some(Kind::JsonObject(_)) => ConstraintSpec::JsonObject,
        Some(Kind::Regex(r)) => ConstraintSpec::Regex(r),
        Some(Kind::Grammar(g)) => ConstraintSpec::Grammar(g),
        Some(Kind::Choice(c)) => ConstraintSpec::Choice(c.options),
    };
    if ignore_eos {
        return Err(DaemonError::invalid(
            "ignore_eos",
            "a constraint decides where the text ends; ask for one or the other",
        ));
    }
    Ok(Some(spec))
}

/// A request's speculation: at most how many tokens to draft a step, the daemon's default
/// (`daemon`) where it does not say. It combines with everything else a request may ask for:
/// each drafted token is checked by the sampler's own draw at its position (under the
/// request's temperature, penalties and constraint), so the tokens are those the request would
/// get without it, seed for seed.
/// What a request asks of speculative decoding (`None`: none). Where drafts come from is
/// settled by [`speculation_on`] once the model is loaded.
fn speculation_of(s: Option<&pb::Speculation>, daemon: Option<u32>) -> Result<Option<Asked>> {
    use crate::engine::speculative::{DEFAULT_DRAFT, MAX_DRAFT};
    let Some(s) = s else {
        return Ok(daemon.map(|max_draft| Asked {
            max_draft,
            source: None,
            fixed: false,
        }));
    };
    let source = match s.mode() {
        pb::SpeculationMode::Off => {
            if s.max_draft.is_some() {
                return Err(DaemonError::invalid(
                    "speculation.max_draft",
                    "a draft length with mode OFF; leave it unset, or ask for AUTO, NGRAM or DRAFT",
                ));
            }
            return Ok(None);
        }
        pb::SpeculationMode::Unspecified | pb::SpeculationMode::Auto => None,
        pb::SpeculationMode::Ngram => Some(DraftSource::Lookup),
        pb::SpeculationMode::Draft => Some(DraftSource::Model),
    };
    let max = s.max_draft.or(daemon).unwrap_or(DEFAULT_DRAFT);
    if max == 0 || max > MAX_DRAFT {
        return Err(DaemonError::invalid(
            "speculation.max_draft",
            format!("{max} drafted tokens a step; ask for 1 to {MAX_DRAFT}"),
        ));
    }
    Ok(Some(Asked {
        max_draft: max,
        source,
        fixed: s.fixed_length,
    }))
}

fn logprobs_to_proto(l: Logprobs) -> pb::TokenLogprobs {
    pb::TokenLogprobs {
        logprob: l.logprob,
        top: l
            .top
            .into_iter()
            .map(|(id, logprob, text)| pb::TopLogprob { id, logprob, text })
            .collect(),
    }
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
                sample,
                logprobs,
            } => E::Token(pb::GeneratedToken {
                id,
                text,
                elapsed_ms,
                index,
                sample,
                logprobs: logprobs.map(logprobs_to_proto),
            }),
            Event::PromptLogprobs(tokens) => {
                let (ids, logprobs) = tokens
                    .into_iter()
                    .map(|(id, l)| (id, logprobs_to_proto(l)))
                    .unzip();
                E::PromptLogprobs(pb::PromptLogprobs { ids, logprobs })
            }
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
                stop_token_id: s.stop_token_id,
                request_id: s.request_id,
                sample: s.sample,
                drafted_tokens: s.drafted_tokens,
                accepted_tokens: s.accepted_tokens,
                constraint_complete: s.constraint_complete,
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
        mut req: pb::GenerateRequest,
        received: Instant,
        request: Registration,
    ) -> Result<GenerateStream> {
        use pb::generate_request::Input as I;
        let input = match req.input {
            Some(I::Prompt(p)) => input_of(Some(p), None)?,
            Some(I::Chat(c)) => input_of(None, Some(c))?,
            Some(I::Tokens(t)) if t.ids.is_empty() => {
                return Err(DaemonError::invalid(
                    "tokens",
                    "the prompt has no token ids",
                ))
            }
            Some(I::Tokens(t)) => Input::Tokens(t.ids),
            None => input_of(None, None)?,
        };
        let sampling = sampling_of(req.sampling.as_ref())?;
        let logprobs = logprobs_of(req.logprobs.as_ref())?;
        let ignore_eos = req.ignore_eos.unwrap_or(false);
        let samples = req.n.unwrap_or(1);
        if samples == 0 || samples > MAX_SAMPLES {
            return Err(DaemonError::invalid(
                "n",
                format!("{samples} samples asked for; ask for 1 to {MAX_SAMPLES}"),
            ));
        }
        let constraint = constraint_of(req.constraint.take(), ignore_eos)?;
        let speculation = speculation_of(req.speculation.as_ref(), self.engine.config().speculate)?;
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
        let speculation = speculation_on(lease.model(), speculation)?;
        let parallel = lease.model().context_options.max_sequences;
        if samples > parallel {
            return Err(DaemonError::invalid(
                "n",
                format!("{samples} samples run at once, and this model runs at most {parallel} sequences (minervad --parallel)"),
            ));
        }
        // Token ids from the client, wherever they appear, must be in the vocabulary.
        let info = lease.model().info();
        let given: &[u32] = match &input {
            Input::Tokens(ids) => ids,
            _ => &[],
        };
        let ids = [
            ("tokens", given),
            ("stop_token_ids", &req.stop_token_ids[..]),
        ];
        let biased: Vec<u32> = sampling.logit_bias.iter().map(|b| b.0).collect();
        for (field, ids) in ids.into_iter().chain([("logit_bias", &biased[..])]) {
            for &t in ids {
                minerva_core::engine::check_token(info, t)
                    .map_err(|e| DaemonError::invalid(field, e.to_string()))?;
            }
        }
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
        // Compiled before anything is queued: a bad schema is the client's error, now.
        let constraint = match constraint {
            None => None,
            Some(spec) => {
                let model = Arc::clone(lease.model());
                let compiled = tokio::task::spawn_blocking(move || model.constraint(&spec))
                    .await
                    .map_err(|e| DaemonError::Internal(format!("constraint task failed: {e}")))?;
                Some(compiled?)
            }
        };
        tracing::info!(prompt_tokens = prompt.len(), max_tokens = ?req.max_tokens, constrained = constraint.is_some(), "generate");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let model_name = lease.model().resolved.name.clone();
        lease.model().clone().submit(Job {
            request: Some(Arc::new(request)),
            samples,
            sample: 0,
            received,
            ready,
            prompt,
            sampling,
            max_tokens: req.max_tokens,
            stop: req.stop,
            stop_token_ids: req.stop_token_ids,
            ignore_eos,
            context_length: ctx,
            cache_prompt: req.cache_prompt.unwrap_or(false),
            logprobs,
            constraint,
            speculation,
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
        let mut req = req.into_inner();
        let id = self.engine.next_request_id();
        let name = match std::mem::take(&mut req.request_id) {
            n if n.is_empty() => format!("req-{id}"),
            n => n,
        };
        let span = tracing::info_span!("generate", request = %name, model = %req.model);
        let registered = self.engine.requests().register(name.clone());
        let started = match registered {
            Ok(r) => self.start(req, received, r).instrument(span).await,
            Err(e) => Err(e),
        };
        match started {
            Ok(s) => Ok(Response::new(s)),
            Err(e) => {
                tracing::info!(request = %name, error = %e, "generate refused");
                Err(e.into())
            }
        }
    }

    async fn abort(
        &self,
        req: Request<pb::AbortRequest>,
    ) -> std::result::Result<Response<pb::AbortResponse>, Status> {
        let mut out = pb::AbortResponse::default();
        for id in req.into_inner().request_ids {
            if self.engine.requests().abort(&id) {
                tracing::info!(request = %id, "abort asked for");
                out.aborted.push(id);
            } else {
                out.unknown.push(id);
            }
        }
        Ok(Response::new(out))
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
