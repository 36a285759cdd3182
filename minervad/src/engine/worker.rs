//! One worker thread per loaded model. It owns the model's context (KV cache) and runs a step
//! loop over sequences: admit queued requests, then each step builds one forward batch
//! (a prompt chunk for sequences still prefilling, the last sampled token for decoding ones),
//! runs it, samples, streams, and retires finished or abandoned sequences.
//!
//! Continuous batching: up to `max_sequences` (the daemon's `--parallel`) sequences are active
//! at once and share one pool of KV cells, the context. A request is admitted when its
//! reservation (prompt + max_tokens, or the whole context when it has no max_tokens) fits
//! beside the reservations of those running, so a forward pass never runs out of cells; the
//! queue stays first in, first out (a request that does not fit yet waits at the head). A
//! sequence alone in the worker decodes exactly as a plain llama.cpp loop does. Perplexity
//! jobs need the whole context and run between generations. With `kv_per_sequence` (the
//! daemon's `--kv-per-sequence`) every sequence has a whole context of its own, so only
//! `max_sequences` limits admission.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use minerva_core::sampling::Sampler;
use minerva_core::text::{StopMatcher, Utf8Decoder};
use minerva_core::{Context, ForwardChunk, Model, SeqId, TokenId};
use minerva_proto::v1::StopReason;
use tokio::sync::mpsc;

use super::draft_model::{DraftCosts, DraftModel, DraftWant};
use super::job::Logprobs;
use super::perplexity::{self, PerplexityEvent};
use super::prompt_cache::PromptCache;
use super::speculative::{DraftCost, DraftSource, Drafter};
use super::{Event, Job, Stats, Work};
use crate::error::DaemonError;
use crate::metrics::ModelMetrics;

/// KV cells a job may need: its prompt plus what it may generate, at most its context. A
/// sample that shares another's prompt (`shared`) needs only what it generates.
fn reservation(job: &Job, shared: bool) -> usize {
    let ctx = job.context_length as usize;
    let prompt = if shared { 0 } else { job.prompt.len() };
    match job.max_tokens {
        Some(m) => (prompt + m as usize).min(ctx),
        None => ctx,
    }
}

/// KV cells a new job and its samples need together: one prompt, each sample's generation.
fn reservation_of_samples(job: &Job) -> usize {
    reservation(job, false) + (job.samples as usize - 1) * reservation(job, true)
}

enum Phase {
    /// `done` prompt tokens are in the KV cache.
    Prefill { done: usize },
    /// Another sample of the same prompt (in slot `from`) computes it; its cells are copied to
    /// this one's slot when that prefill ends, and it samples from the same logits.
    Shared { from: SeqId },
    /// `last` was sampled and is not in the KV cache yet.
    Decode { last: TokenId },
    /// Its last event is sent; it waits to be retired. Its last sampled token is not in the
    /// KV cache either.
    Finished,
}

struct Sequence {
    job: Job,
    slot: SeqId,
    /// Prompt tokens found in the slot's KV cache from an earlier request (not computed again).
    cached: usize,
    /// Tokens sampled so far (the last one is not in the KV cache).
    output: Vec<TokenId>,
    phase: Phase,
    sampler: Sampler,
    decoder: Utf8Decoder,
    stops: StopMatcher,
    generated: u32,
    text: String,
    started: Instant,
    prompt_done: Option<Instant>,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    /// Prompt tokens' logprobs gathered over the prefill chunks, when the job asked for them.
    prompt_logprobs: Vec<(TokenId, Logprobs)>,
    /// Speculative decoding, when the job asked for it.
    drafter: Option<Drafter>,
}

impl Sequence {
    /// A sequence in `slot`, whose KV cache holds the first `cached` prompt tokens already.
    fn new(job: Job, slot: SeqId, cached: usize) -> Self {
        Self::starting(job, slot, cached, Phase::Prefill { done: cached })
    }

    /// Sample `job.sample` of the prompt that the sequence in slot `from` computes.
    fn sharing(job: Job, slot: SeqId, from: SeqId) -> Self {
        Self::starting(job, slot, 0, Phase::Shared { from })
    }

    fn starting(job: Job, slot: SeqId, cached: usize, phase: Phase) -> Self {
        let mut sampler = Sampler::new(job.sampling.clone());
        for &t in &job.prompt {
            sampler.accept(t);
        }
        Self {
            stops: StopMatcher::new(job.stop.clone()),
            slot,
            cached,
            output: Vec::new(),
            phase,
            sampler,
            decoder: Utf8Decoder::default(),
            generated: 0,
            text: String::new(),
            started: Instant::now(),
            prompt_done: None,
            first_token: None,
            last_token: None,
            prompt_logprobs: Vec::new(),
            drafter: job.speculation.map(Drafter::new),
            job,
        }
    }

    /// How many tokens it may draft this step: at most `room`, and never past its max_tokens
    /// or its context.
    fn draft_limit(&self, room: usize) -> usize {
        // The pass yields at most drafts + 1 tokens; the drafts sit at the positions after
        // the last token's.
        let left = self
            .job
            .max_tokens
            .map_or(usize::MAX, |m| (m - self.generated) as usize)
            .saturating_sub(1);
        let context = (self.job.context_length as usize).saturating_sub(self.position());
        room.min(left).min(context)
    }

    /// KV cells it may need: a sample sharing another's prompt needs only its own tokens.
    fn reservation(&self) -> usize {
        reservation(&self.job, self.job.sample > 0)
    }

    fn wants_prompt_logprobs(&self) -> bool {
        self.job.logprobs.is_some_and(|l| l.prompt)
    }

    /// Positions of the slot's KV cache this sequence fills now.
    fn kv_len(&self) -> usize {
        match self.phase {
            Phase::Prefill { done } => done,
            Phase::Shared { .. } => 0,
            Phase::Decode { .. } | Phase::Finished => {
                self.job.prompt.len() + self.output.len().saturating_sub(1)
            }
        }
    }

    fn position(&self) -> usize {
        self.job.prompt.len() + self.generated as usize
    }

    fn ms_since_received(&self, t: Instant) -> f64 {
        t.duration_since(self.job.received).as_secs_f64() * 1e3
    }

    /// The tokens whose keys and values are in the slot's KV cache, in position order.
    fn kv_tokens(&self) -> Vec<TokenId> {
        match self.phase {
            Phase::Prefill { done } => self.job.prompt[..done].to_vec(),
            Phase::Shared { .. } => Vec::new(),
            // Every sampled token but the last has been fed back.
            Phase::Decode { .. } | Phase::Finished => {
                let fed = self.output.len().saturating_sub(1);
                let mut t = Vec::with_capacity(self.job.prompt.len() + fed);
                t.extend_from_slice(&self.job.prompt);
                t.extend_from_slice(&self.output[..fed]);
                t
            }
        }
    }
}

/// Where a worker's time goes, logged at debug level every `StepTimes::EVERY` steps
/// (`RUST_LOG=minervad::engine::worker=debug`): the forward pass (the backend), sampling and
/// streaming, and the rest of the loop (admission, retiring).
#[derive(Default)]
struct StepTimes {
    steps: u32,
    sequences: usize,
    forward: std::time::Duration,
    sample: std::time::Duration,
    total: std::time::Duration,
}

impl StepTimes {
    const EVERY: u32 = 256;

    fn report(&mut self, model: &str) {
        if self.steps < Self::EVERY {
            return;
        }
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3 / f64::from(self.steps);
        tracing::debug!(
            model,
            steps = self.steps,
            sequences_per_step = self.sequences as f64 / f64::from(self.steps),
            step_ms = ms(self.total),
            forward_ms = ms(self.forward),
            sample_and_stream_ms = ms(self.sample),
            "worker step times (means)"
        );
        *self = StepTimes::default();
    }
}

/// What a worker owns besides its model: the context, the measured cost of a checked token,
/// and the draft model, if the model was loaded with one.
pub(crate) struct Parts {
    pub(crate) ctx: Box<dyn Context>,
    pub(crate) cost: DraftCost,
    pub(crate) draft: Option<DraftModel>,
}

/// Runs until every sender of `jobs` is gone (the model was unloaded) or the context breaks.
pub(crate) fn run(
    model_name: String,
    model: Arc<dyn Model>,
    parts: Parts,
    mut jobs: mpsc::Receiver<Work>,
    metrics: ModelMetrics,
) {
    let Parts {
        mut ctx,
        mut cost,
        mut draft,
    } = parts;
    let mut active: Vec<Sequence> = Vec::new();
    let mut logits: Vec<Vec<f32>> = Vec::new();
    let max_active = ctx.options().max_sequences.max(1) as usize;
    // The shared pool's size; with a context per sequence there is nothing to share.
    let cells = if ctx.options().kv_per_sequence {
        usize::MAX
    } else {
        ctx.options().context_length as usize
    };
    // Taken from the queue but not admitted yet (no room): it goes first next time.
    let mut held: Option<Work> = None;
    let mut times = StepTimes::default();
    let mut cache = PromptCache::new(max_active);
    metrics.kv_total.set(if ctx.options().kv_per_sequence {
        i64::from(ctx.options().context_length) * max_active as i64
    } else {
        i64::from(ctx.options().context_length)
    });
    let timing = tracing::enabled!(tracing::Level::DEBUG);
    let mut step_started = Instant::now();
    loop {
        if timing && !active.is_empty() {
            times.total += step_started.elapsed();
            times.report(&model_name);
        }
        step_started = Instant::now();
        // Admit: block when idle, otherwise only take what is already queued.
        while active.len() < max_active {
            let work = if let Some(work) = held.take() {
                work
            } else if active.is_empty() {
                match jobs.blocking_recv() {
                    Some(work) => work,
                    None => return,
                }
            } else {
                match jobs.try_recv() {
                    Ok(work) => work,
                    Err(_) => break,
                }
            };
            let job = match work {
                Work::Generate(job) => *job,
                Work::Perplexity(p) if !active.is_empty() => {
                    held = Some(Work::Perplexity(p));
                    break;
                }
                Work::Perplexity(p) => {
                    // Runs whole, with no generation active: it needs the whole context.
                    if let Err(e) = cache.clear(&mut *ctx) {
                        tracing::error!(error = %e, "could not clear the prompt cache");
                    }
                    let vocab = model.info().vocab_size as usize;
                    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        perplexity::run(&mut *ctx, vocab, &p)
                    }));
                    let error = match outcome {
                        Ok(Ok(())) => None,
                        Ok(Err(e)) => Some(e.to_string()),
                        Err(panic) => Some(panic_message(&panic)),
                    };
                    if let Some(reason) = error {
                        let _ = p
                            .events
                            .send(PerplexityEvent::Error(DaemonError::Internal(reason)));
                        let _ = ctx.clear_sequence(SeqId(0));
                    }
                    continue;
                }
            };
            if job.events.is_closed() {
                continue; // the client left while queued
            }
            let reserved: usize = active.iter().map(Sequence::reservation).sum();
            let needed = reserved.saturating_add(reservation_of_samples(&job));
            let fits = active.len() + job.samples as usize <= max_active;
            let place = match cache.place(active.iter().map(|a| a.slot), &job) {
                Some(p) if fits && (active.is_empty() || needed <= cells) => p,
                _ => {
                    held = Some(Work::Generate(Box::new(job)));
                    break;
                }
            };
            // Room for it: other idle slots' cached tokens go, least recently used first.
            while needed.saturating_add(cache.held_except(place.slot)) > cells {
                match cache.evict_one(&mut *ctx, place.slot) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => tracing::error!(error = %e, "could not clear a cached sequence"),
                }
            }
            let reuse = cache.take(&mut *ctx, &place).unwrap_or_else(|e| {
                tracing::error!(error = %e, "could not reuse a cached prompt; clearing it");
                if let Err(e) = ctx.clear_sequence(place.slot) {
                    tracing::error!(error = %e, "could not clear a cached sequence");
                }
                0
            });
            metrics.admitted(job.ready.elapsed(), reuse);
            let siblings: Vec<Job> = (1..job.samples).map(|k| job.sibling(k)).collect();
            let from = place.slot;
            active.push(Sequence::new(job, from, reuse));
            // Samples 1..: their own slots, filled from the first sample's when its prompt is in.
            for sibling in siblings {
                let busy: Vec<SeqId> = active.iter().map(|a| a.slot).collect();
                let Some(slot) = cache.free_slot(&mut *ctx, busy) else {
                    // Unreachable: admission counted the slots.
                    let _ = sibling.events.send(Event::Error(DaemonError::Internal(
                        "no free slot for a sample".into(),
                    )));
                    continue;
                };
                active.push(Sequence::sharing(sibling, slot, from));
            }
        }

        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            step(
                &*model,
                &mut *ctx,
                draft.as_mut(),
                &mut active,
                &mut logits,
                &mut times,
                &mut cost,
                &metrics,
            )
        }));
        let failure = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(panic) => Some(panic_message(&panic)),
        };
        if let Some(reason) = failure {
            tracing::error!(model = %model_name, %reason, "forward step failed; stopping this model's worker");
            for mut seq in active.drain(..) {
                drop(seq.job.request.take()); // its id is free before the client hears
                let _ = seq.job.events.send(Event::Error(DaemonError::WorkerGone {
                    model: model_name.clone(),
                    reason: reason.clone(),
                }));
            }
            // Jobs still queued get the same answer; then the worker ends and the engine
            // notices (its sender reports closed) and loads the model afresh next time.
            jobs.close();
            while let Ok(work) = jobs.try_recv() {
                let gone = DaemonError::WorkerGone {
                    model: model_name.clone(),
                    reason: reason.clone(),
                };
                match work {
                    Work::Generate(job) => drop(job.events.send(Event::Error(gone))),
                    Work::Perplexity(p) => drop(p.events.send(PerplexityEvent::Error(gone))),
                }
            }
            return;
        }

        // Retire finished sequences and free their KV cells.
        let mut i = 0;
        while i < active.len() {
            let finished = matches!(active[i].phase, Phase::Finished);
            if finished || active[i].job.events.is_closed() {
                let seq = active.swap_remove(i);
                // A finished sequence's client may have gone after its last event: not a cancel.
                if !finished {
                    let request = seq.job.request.as_ref().map_or("", |r| r.id());
                    tracing::info!(model = %model_name, request, generated = seq.generated, "client went away; generation cancelled");
                }
                if seq.job.cache_prompt {
                    // Its KV cells stay as the slot's prompt cache.
                    cache.keep(seq.slot, seq.kv_tokens());
                } else if let Err(e) = ctx.clear_sequence(seq.slot) {
                    tracing::error!(error = %e, "could not clear a finished sequence");
                }
                if let Some(d) = draft.as_mut() {
                    if let Err(e) = d.forget(seq.slot) {
                        tracing::error!(error = %e, "could not clear a draft model's sequence");
                    }
                }
            } else {
                i += 1;
            }
        }
        metrics.running.set(active.len() as i64);
        metrics
            .waiting
            .set((jobs.len() + usize::from(held.is_some())) as i64);
        let used: usize = active.iter().map(|s| s.kv_len()).sum();
        metrics.kv_used.set((used + cache.held()) as i64);
    }
}

/// One forward pass on a single token, then forgotten: faults in the memory-mapped weights
/// and sizes the compute buffers, so that cost lands in the load time and not in the first
/// request's TTFT (llama.cpp's own tools warm up the same way). Then one warm pass of a lone
/// token and one of five, timed: what a drafted token costs to check, before any request
/// speculates.
pub(crate) fn warm_up(model: &dyn Model, ctx: &mut dyn Context) -> minerva_core::Result<DraftCost> {
    let token = model.info().bos_token.unwrap_or(0);
    let mut logits = Vec::new();
    ctx.forward(&[ForwardChunk::last(SeqId(0), 0, &[token])], &mut logits)?;
    ctx.clear_sequence(SeqId(0))?;
    let mut timed = |tokens: &[TokenId]| -> minerva_core::Result<f64> {
        let started = Instant::now();
        ctx.forward(&[ForwardChunk::all(SeqId(0), 0, tokens)], &mut logits)?;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        ctx.clear_sequence(SeqId(0))?;
        Ok(ms)
    };
    let one = timed(&[token])?;
    let five = timed(&[token; 5])?;
    Ok(DraftCost::calibrated(one, 4, five))
}

/// One forward pass over every active sequence, then sampling and streaming.
#[allow(clippy::too_many_arguments)]
fn step(
    model: &dyn Model,
    ctx: &mut dyn Context,
    draft: Option<&mut DraftModel>,
    active: &mut [Sequence],
    logits: &mut Vec<Vec<f32>>,
    times: &mut StepTimes,
    cost: &mut DraftCost,
    metrics: &ModelMetrics,
) -> minerva_core::Result<()> {
    let batch = ctx.options().batch_size as usize;
    let mut budget = batch;
    let mut owners: Vec<usize> = Vec::with_capacity(active.len());
    // Aborted by id (from any connection): the final event says so, and the cells go when the
    // sequence is retired after this step.
    for seq in active.iter_mut() {
        if seq.job.aborted() && !matches!(seq.phase, Phase::Finished) {
            finish(seq, StopReason::Aborted, String::new(), metrics);
        }
    }
    // Each decoding sequence's last token, and the tokens drafted after it when it speculates.
    let decoding = active
        .iter()
        .filter(|s| matches!(s.phase, Phase::Decode { .. }))
        .count();
    let room = batch.saturating_sub(decoding);
    let decode_tokens = drafts(active, draft, room, cost.relative(decoding), cost)?;
    let mut chunks: Vec<ForwardChunk<'_>> = Vec::with_capacity(active.len());
    for (i, seq) in active.iter().enumerate() {
        if seq.job.events.is_closed() || budget == 0 {
            continue;
        }
        match seq.phase {
            Phase::Finished | Phase::Shared { .. } => {}
            Phase::Decode { .. } => {
                let tokens = &decode_tokens[i][..decode_tokens[i].len().min(budget)];
                let at = seq.position() as u32 - 1;
                chunks.push(if tokens.len() > 1 {
                    // Drafted tokens: every position's logits, to check each guess.
                    ForwardChunk::all(seq.slot, at, tokens)
                } else {
                    ForwardChunk::last(seq.slot, at, tokens)
                });
                budget -= tokens.len();
                owners.push(i);
            }
            Phase::Prefill { done } => {
                let n = (seq.job.prompt.len() - done).min(budget);
                let tokens = &seq.job.prompt[done..done + n];
                chunks.push(if seq.wants_prompt_logprobs() {
                    ForwardChunk::all(seq.slot, done as u32, tokens)
                } else {
                    ForwardChunk::last(seq.slot, done as u32, tokens)
                });
                budget -= n;
                owners.push(i);
            }
        }
    }
    if chunks.is_empty() {
        return Ok(());
    }
    let sizes: Vec<usize> = chunks.iter().map(|c| c.tokens.len()).collect();
    let started = Instant::now();
    ctx.forward(&chunks, logits)?;
    drop(chunks);

    let now = Instant::now();
    // Steps of decoding sequences alone tell what a drafted token costs to check.
    if owners
        .iter()
        .all(|&i| matches!(active[i].phase, Phase::Decode { .. }))
    {
        let fed: usize = sizes.iter().sum();
        let ms = (now - started).as_secs_f64() * 1e3;
        cost.observe(fed, fed - owners.len(), ms);
    }
    times.steps += 1;
    times.sequences += owners.len();
    times.forward += now - started;
    let vocab = model.info().vocab_size as usize;
    // Prompts whose other samples wait for them: the prompt's slot and its logits' row.
    let mut forks: Vec<(SeqId, usize)> = Vec::new();
    for (k, &i) in owners.iter().enumerate() {
        let seq = &mut active[i];
        // With every row returned, the chunk's last row is the one to sample from.
        let rows = &logits[k];
        let last = &rows[rows.len().saturating_sub(vocab)..];
        if matches!(seq.phase, Phase::Decode { .. }) && sizes[k] > 1 {
            verify(
                model,
                ctx,
                seq,
                rows,
                &decode_tokens[i][1..sizes[k]],
                metrics,
            )?;
            continue;
        }
        if let Phase::Prefill { done } = seq.phase {
            if seq.wants_prompt_logprobs() {
                gather_prompt_logprobs(model, seq, done, rows, vocab)?;
            }
            metrics.prompt_computed(sizes[k]);
            let done = done + sizes[k];
            if done < seq.job.prompt.len() {
                seq.phase = Phase::Prefill { done };
                continue; // logits of a partial prompt are not sampled
            }
            seq.prompt_done = Some(now);
            if seq.wants_prompt_logprobs() {
                let lp = std::mem::take(&mut seq.prompt_logprobs);
                let _ = seq.job.events.send(Event::PromptLogprobs(lp));
            }
            if seq.job.samples > 1 {
                forks.push((seq.slot, k));
            }
        }
        sample_next(model, seq, last, metrics)?;
    }
    // The other samples of a prompt just computed: its cells copied to their slots, and each
    // draws its first token from the same logits with its own seed.
    for (from, k) in forks {
        let rows = &logits[k];
        let last = &rows[rows.len().saturating_sub(vocab)..];
        for seq in active.iter_mut() {
            if !matches!(seq.phase, Phase::Shared { from: f } if f == from) {
                continue;
            }
            if let Err(e) = ctx.copy_sequence(from, seq.slot) {
                fail(seq, DaemonError::Core(e));
                continue;
            }
            seq.cached = seq.job.prompt.len();
            seq.phase = Phase::Prefill { done: seq.cached };
            seq.prompt_done = Some(now);
            sample_next(model, seq, last, metrics)?;
        }
    }
    times.sample += now.elapsed();
    Ok(())
}

/// Each decoding sequence's last token and the tokens drafted after it when it speculates (by
/// lookup, or with the draft model in one batch for all that draft with it); nothing for
/// sequences not decoding. `check` is what checking one more token costs relative to a plain
/// step; a draft model's token costs its pass on top.
fn drafts(
    active: &mut [Sequence],
    draft: Option<&mut DraftModel>,
    room: usize,
    check: f64,
    cost: &DraftCost,
) -> minerva_core::Result<Vec<Vec<TokenId>>> {
    let mut tokens: Vec<Vec<TokenId>> = active
        .iter()
        .map(|s| match s.phase {
            Phase::Decode { last } => vec![last],
            Phase::Prefill { .. } | Phase::Shared { .. } | Phase::Finished => Vec::new(),
        })
        .collect();
    let costs = DraftCosts {
        check,
        pass: draft
            .as_ref()
            .map_or(0.0, |d| cost.relative_ms(d.ms_per_token())),
    };
    let mut wants: Vec<(usize, usize)> = Vec::new();
    for (i, seq) in active.iter_mut().enumerate() {
        if !matches!(seq.phase, Phase::Decode { .. }) {
            continue;
        }
        let limit = seq.draft_limit(room);
        let Some(d) = seq.drafter.as_mut() else {
            continue;
        };
        match d.source {
            DraftSource::Lookup => {
                tokens[i].extend(d.lookup(&seq.job.prompt, &seq.output, limit, check));
            }
            DraftSource::Model => {
                let want = d.length(limit, costs.check + costs.pass);
                let pays = d.fixed || catching_up_pays(seq, draft.as_deref(), cost);
                if want > 0 && pays {
                    wants.push((i, want));
                }
            }
        }
    }
    let Some(draft) = draft.filter(|_| !wants.is_empty()) else {
        return Ok(tokens);
    };
    let asked: Vec<DraftWant<'_>> = wants
        .iter()
        .map(|&(i, want)| DraftWant {
            slot: active[i].slot,
            prompt: &active[i].job.prompt,
            output: &active[i].output,
            want,
            sampled: active[i].job.sampling.temperature > 0.0,
            fixed: active[i].drafter.as_ref().is_some_and(|d| d.fixed),
        })
        .collect();
    let proposals = draft.draft(&asked, costs)?;
    drop(asked);
    for ((i, _), proposal) in wants.into_iter().zip(proposals) {
        if let Some(d) = active[i].drafter.as_mut() {
            d.proposed(proposal.len());
        }
        tokens[i].extend(proposal);
    }
    Ok(tokens)
}

/// Whether the draft model catching up with `seq` (being fed the tokens it lacks, the whole
/// prompt before its first draft) is repaid by what drafting may save over the tokens `seq`
/// has left: at most a fifth of a plain step a token, as measured drafts save where they pay.
/// A short answer to a long prompt is not worth it.
fn catching_up_pays(seq: &Sequence, draft: Option<&DraftModel>, cost: &DraftCost) -> bool {
    /// The share of a plain step that drafting saves a token, at best.
    const SAVES: f64 = 0.2;
    let (Some(draft), Some(step_ms)) = (draft, cost.plain_ms_per_token()) else {
        return true;
    };
    let left = seq.job.max_tokens.map_or(f64::INFINITY, |m| {
        f64::from(m.saturating_sub(seq.generated))
    });
    draft.catch_up_cost(seq.slot, &seq.job.prompt, &seq.output) <= left * step_ms * SAVES
}

/// Checks the tokens `draft` proposed after `seq`'s last one: row j of `rows` gives the model's
/// own token after the first j drafts, streamed as usual; while it equals draft j the next row
/// counts too, so an agreeing draft yields several tokens from one pass, and the first
/// disagreement is the model's correction. The rejected drafts' KV cells are removed.
///
/// Each row is sampled as a plain step would sample it: one draw of the sequence's generator,
/// under its temperature, penalties and constraint. A draft is accepted when that draw picks it,
/// which for a proposal made with certainty (a lookup) is speculative sampling's own rule
/// (accept with probability p(draft), else draw from the rest), and it keeps more: the tokens
/// are those of the same seed without speculation, not just equally distributed.
fn verify(
    model: &dyn Model,
    ctx: &mut dyn Context,
    seq: &mut Sequence,
    rows: &[f32],
    draft: &[TokenId],
    metrics: &ModelMetrics,
) -> minerva_core::Result<()> {
    let vocab = model.info().vocab_size as usize;
    // The model's own tokens first, so the counts are in the stats of a sequence that ends
    // while they are streamed.
    let mut chosen: Vec<(TokenId, &[f32])> = Vec::with_capacity(draft.len() + 1);
    for (j, row) in rows.chunks_exact(vocab).enumerate() {
        let token = match sample(model, seq, row) {
            Ok(t) => t,
            Err(reason) => {
                fail(seq, DaemonError::Internal(reason));
                return Ok(());
            }
        };
        seq.sampler.accept(token);
        chosen.push((token, row));
        // Past a token that ends the sequence, nothing more is streamed, so nothing more may
        // move the sampler or the constraint.
        let ends = model.is_end_of_generation(token) || seq.job.stop_token_ids.contains(&token);
        if j == draft.len() || token != draft[j] || ends {
            break;
        }
    }
    let accepted = chosen
        .iter()
        .zip(draft)
        .take_while(|((t, _), d)| t == *d)
        .count();
    if let Some(d) = seq.drafter.as_mut() {
        d.record(draft.len(), accepted);
    }
    metrics.verified(draft.len(), accepted);
    for (token, row) in chosen {
        let lp = match seq.job.logprobs {
            Some(want) => Some(logprobs_of(model, row, token, want.top)?),
            None => None,
        };
        emit(model, seq, token, lp, metrics)?;
        if matches!(seq.phase, Phase::Finished) {
            break;
        }
    }
    // Every token but the newest is in the cache; the cells after it held rejected drafts.
    let keep = seq.job.prompt.len() + seq.output.len().saturating_sub(1);
    if !ctx.keep_prefix(seq.slot, keep as u32)? {
        let e = DaemonError::Internal(
            "this backend cannot remove rejected drafts from a sequence's KV cache".into(),
        );
        fail(seq, e);
    }
    Ok(())
}

/// Samples `seq`'s next token from `last` and streams it.
fn sample_next(
    model: &dyn Model,
    seq: &mut Sequence,
    last: &[f32],
    metrics: &ModelMetrics,
) -> minerva_core::Result<()> {
    let token = match sample(model, seq, last) {
        Ok(t) => t,
        Err(reason) => {
            // This request's grammar failed, not the model: it alone ends.
            tracing::error!(%reason, "structured output failed");
            let e = DaemonError::Internal(format!("structured output: {reason}"));
            fail(seq, e);
            return Ok(());
        }
    };
    seq.sampler.accept(token);
    let lp = match seq.job.logprobs {
        Some(want) => Some(logprobs_of(model, last, token, want.top)?),
        None => None,
    };
    emit(model, seq, token, lp, metrics)
}

/// Ends `seq` alone with `error` as its last event (its id freed first).
fn fail(seq: &mut Sequence, error: DaemonError) {
    drop(seq.job.request.take());
    let _ = seq.job.events.send(Event::Error(error));
    seq.phase = Phase::Finished;
}

/// The next token of `seq` from its last logits: among those its constraint allows, if it has
/// one, which then moves past it.
fn sample(model: &dyn Model, seq: &mut Sequence, logits: &[f32]) -> Result<TokenId, String> {
    let Some(constraint) = seq.job.constraint.as_mut() else {
        return Ok(seq.sampler.sample(logits));
    };
    let mask = constraint.allowed()?;
    let token = seq
        .sampler
        .sample_within(logits, &|t| mask.is_allowed(t))
        .ok_or("the constraint allows no token here")?;
    // An end-of-generation token ends the sequence; it is no text for the grammar to read.
    if !model.is_end_of_generation(token) {
        constraint.accept(token)?;
    }
    Ok(token)
}

/// Logprobs of the prompt tokens a prefill chunk starting at `done` predicted: row `j` of
/// `rows` (the logits after prompt token `done + j`) gives token `done + j + 1`'s.
fn gather_prompt_logprobs(
    model: &dyn Model,
    seq: &mut Sequence,
    done: usize,
    rows: &[f32],
    vocab: usize,
) -> minerva_core::Result<()> {
    let top = seq.job.logprobs.map_or(0, |l| l.top);
    for (j, row) in rows.chunks_exact(vocab).enumerate() {
        let Some(&next) = seq.job.prompt.get(done + j + 1) else {
            break; // the last row predicts the first generated token
        };
        let lp = logprobs_of(model, row, next, top)?;
        seq.prompt_logprobs.push((next, lp));
    }
    Ok(())
}

/// `token`'s logprob under `logits` and the `top` most likely tokens, with their text.
fn logprobs_of(
    model: &dyn Model,
    logits: &[f32],
    token: TokenId,
    top: u32,
) -> minerva_core::Result<Logprobs> {
    let lp = minerva_core::logprobs::logprobs(logits, token, top as usize);
    let mut alternatives = Vec::with_capacity(lp.top.len());
    for (id, logprob) in lp.top {
        let text = String::from_utf8_lossy(&model.token_bytes(id)?).into_owned();
        alternatives.push((id, logprob, text));
    }
    Ok(Logprobs {
        logprob: lp.logprob,
        top: alternatives,
    })
}

/// Streams `token` and decides whether the sequence goes on.
fn emit(
    model: &dyn Model,
    seq: &mut Sequence,
    token: TokenId,
    logprobs: Option<Logprobs>,
    metrics: &ModelMetrics,
) -> minerva_core::Result<()> {
    let now = Instant::now();
    metrics.token(
        seq.first_token.is_none().then(|| now - seq.job.received),
        seq.last_token.map(|t| now - t),
    );
    seq.first_token.get_or_insert(now);
    seq.last_token = Some(now);
    let index = seq.generated;
    seq.generated += 1;
    seq.output.push(token);

    let mut stop: Option<(StopReason, String)> = None;
    let mut text = String::new();
    if !seq.job.ignore_eos && model.is_end_of_generation(token) {
        stop = Some((StopReason::Eos, String::new()));
    } else if seq.job.stop_token_ids.contains(&token) {
        stop = Some((StopReason::StopToken, String::new()));
    } else {
        let piece = seq.decoder.push(&model.token_bytes(token)?);
        let released = seq.stops.push(&piece);
        text = released.text;
        if let Some(s) = released.stopped_by {
            stop = Some((StopReason::StopString, s));
        } else if seq.job.max_tokens.is_some_and(|m| seq.generated >= m) {
            stop = Some((StopReason::MaxTokens, String::new()));
        } else if seq.position() >= seq.job.context_length as usize {
            stop = Some((StopReason::ContextFull, String::new()));
        }
    }
    if matches!(stop, Some((ref r, _)) if *r != StopReason::StopString) {
        // Release what was held back: nothing more is coming.
        let tail = seq.decoder.finish();
        let released = seq.stops.push(&tail);
        text.push_str(&released.text);
        text.push_str(&seq.stops.finish());
    }
    seq.text.push_str(&text);
    let _ = seq.job.events.send(Event::Token {
        id: token,
        text,
        elapsed_ms: seq.ms_since_received(now),
        index,
        sample: seq.job.sample,
        logprobs,
    });
    match stop {
        None => seq.phase = Phase::Decode { last: token },
        Some((reason, stop_string)) => finish(seq, reason, stop_string, metrics),
    }
    Ok(())
}

/// Ends `seq` for `reason`: its last event, and the request counted as finished.
fn finish(seq: &mut Sequence, reason: StopReason, stop_string: String, metrics: &ModelMetrics) {
    seq.phase = Phase::Finished;
    metrics.finished(
        minerva_proto::stop_reason_name(reason as i32),
        seq.job.received.elapsed(),
    );
    let done = stats(seq, reason, stop_string);
    // Its id is free before the client hears the end, so the client may reuse it at once.
    drop(seq.job.request.take());
    let _ = seq.job.events.send(Event::Done(Box::new(done)));
}

fn stats(seq: &mut Sequence, reason: StopReason, stop_string: String) -> Stats {
    let stop_token_id = (reason == StopReason::StopToken)
        .then(|| seq.output.last().copied())
        .flatten();
    let ms = |a: Instant, b: Instant| b.duration_since(a).as_secs_f64() * 1e3;
    let first = seq.first_token.unwrap_or(seq.started);
    let last = seq.last_token.unwrap_or(first);
    let prompt_done = seq.prompt_done.unwrap_or(first);
    let prompt_ms = ms(seq.started, prompt_done);
    let decode_ms = ms(first, last);
    Stats {
        load_ms: seq.job.load_ms,
        prompt_tokens: seq.job.prompt.len() as u32,
        cached_prompt_tokens: seq.cached as u32,
        // Steady-state TTFT: from when the model was ready, so a load is not counted twice.
        ttft_ms: ms(seq.job.ready, first),
        prompt_ms,
        // Over the prompt tokens computed: the cached ones cost nothing.
        prompt_tokens_per_s: rate((seq.job.prompt.len() - seq.cached) as f64, prompt_ms),
        generated_tokens: seq.generated,
        decode_tokens_per_s: rate(f64::from(seq.generated.saturating_sub(1)), decode_ms),
        total_ms: seq.ms_since_received(last),
        queue_ms: ms(seq.job.ready, seq.started),
        stop_reason: reason,
        stop_string,
        stop_token_id,
        request_id: seq
            .job
            .request
            .as_ref()
            .map(|r| r.id().to_string())
            .unwrap_or_default(),
        sample: seq.job.sample,
        drafted_tokens: seq.drafter.as_ref().map_or(0, |d| d.drafted),
        accepted_tokens: seq.drafter.as_ref().map_or(0, |d| d.accepted),
        // A stop string is cut from the text the grammar read: that text is not the answer.
        constraint_complete: seq
            .job
            .constraint
            .as_mut()
            .map(|c| reason != StopReason::StopString && c.is_complete()),
        text: seq.text.clone(),
    }
}

fn rate(count: f64, ms: f64) -> f64 {
    if count > 0.0 && ms > 0.0 {
        count * 1e3 / ms
    } else {
        0.0
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        format!("panic: {s}")
    } else if let Some(s) = panic.downcast_ref::<String>() {
        format!("panic: {s}")
    } else {
        "panic in the backend".into()
    }
}
