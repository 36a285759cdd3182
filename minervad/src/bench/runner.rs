//! Runs a planned job: for each model, for each test, warm-ups then measured runs of
//! `concurrency` requests each, every request a real generation queued to the model's worker.

use std::sync::Arc;
use std::time::Instant;

use minerva_core::sampling::SamplingConfig;
use minerva_core::TokenId;
use minerva_proto::v1::{BenchMetric, BenchModelLoad, BenchProgress, BenchRun, BenchTest};
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};

use super::machine::ResourceSampler;
use super::spec::TestKind;
use super::stats::summarize;
use super::{now_unix, BenchJobs, JobEntry, JobStatus, Plan};
use crate::engine::speculative::DraftSource;
use crate::engine::{Event, Job, LoadedModel};
use crate::error::{DaemonError, Result};

pub(crate) async fn run(jobs: Arc<BenchJobs>, entry: Arc<JobEntry>, plan: Plan) {
    let _turn = jobs.turn.lock().await;
    entry.update(|r| {
        r.status = JobStatus::Running.as_str().into();
        r.started_unix_s = now_unix();
    });
    let sampler = ResourceSampler::start();
    let mut cancel = entry.cancel.subscribe();
    let outcome = run_plan(&jobs, &entry, &plan, &mut cancel).await;
    let resources = sampler.finish().await;
    entry.update(|r| {
        r.resources = Some(resources);
        r.finished_unix_s = now_unix();
        match &outcome {
            Ok(()) => r.status = JobStatus::Done.as_str().into(),
            Err(e) if *cancel.borrow() => {
                r.status = JobStatus::Cancelled.as_str().into();
                r.error = e.to_string();
            }
            Err(e) => {
                r.status = JobStatus::Failed.as_str().into();
                r.error = e.to_string();
            }
        }
    });
    let result = entry.result();
    tracing::info!(id = %entry.id, status = %result.status, error = %result.error, "benchmark job ended");
    jobs.save(&result);
    entry.progress.send_modify(|p| {
        p.message = result.status.clone();
        p.done = Some(result);
    });
}

struct Tracker<'a> {
    entry: &'a JobEntry,
    done: u32,
}

impl Tracker<'_> {
    fn step(&mut self, model: &str, test: &str, message: String) {
        self.done += 1;
        let done = self.done;
        self.entry.progress.send_modify(|p: &mut BenchProgress| {
            p.model = model.into();
            p.test = test.into();
            p.requests_done = done;
            p.message = message;
        });
    }
}

async fn run_plan(
    jobs: &BenchJobs,
    entry: &JobEntry,
    plan: &Plan,
    cancel: &mut watch::Receiver<bool>,
) -> Result<()> {
    let mut tracker = Tracker { entry, done: 0 };
    let mut targets: Vec<(&String, Option<&'static str>)> = Vec::new();
    for m in &plan.models {
        targets.extend(plan.backends.iter().map(|b| (m, *b)));
    }
    for (name, backend) in targets {
        let options = crate::engine::RequestedOptions {
            backend: backend.or(plan.options.backend),
            ..plan.options.clone()
        };
        let (lease, loaded_now) = jobs.engine.acquire(name, options, None).await?;
        let model = Arc::clone(lease.model());
        drop(lease);
        let info = model.info();
        entry.update(|r| {
            r.loads.push(BenchModelLoad {
                model: name.clone(),
                path: model.resolved.path.display().to_string(),
                quantization: info.quantization.clone(),
                file_size_bytes: info.file_size_bytes,
                load_ms: model.load_timing.total_ms,
                mmap_ms: model.load_timing.mmap_ms,
                context_ms: model.load_timing.context_ms,
                loaded_by_job: loaded_now.is_some(),
                threads: model.context_options.threads,
                context_length: model.context_options.context_length,
                backend: model.model.backend().into(),
                settings: model.model.settings().into_iter().collect(),
                draft: model.draft.as_ref().map(crate::convert::draft_to_proto),
            })
        });
        for test in &plan.tests {
            let (prompt, new_tokens) = prompt_for(&model, test, plan.seed)?;
            let ctx = model.context_options.context_length;
            let needed = prompt.len() as u64 + u64::from(new_tokens);
            if needed > u64::from(ctx) {
                return Err(DaemonError::DoesNotFit {
                    prompt_tokens: prompt.len(),
                    max_tokens: new_tokens,
                    needed,
                    context_length: ctx,
                });
            }
            // As asked, then (with `speculative`) again with drafts: "TEST/spec".
            let variants = std::iter::once(None).chain(plan.speculative.map(Some));
            let mut plain: Option<BenchTest> = None;
            for max_draft in variants {
                // The draft model where the model was loaded with one, else prompt lookup.
                let asked = max_draft.map(|max_draft| crate::engine::speculative::Asked {
                    max_draft,
                    source: None,
                    fixed: false,
                });
                let speculation = crate::engine::speculative::speculation_on(&model, asked)?;
                let ask = Ask {
                    new_tokens,
                    seed: plan.seed,
                    cache_prompt: plan.prompt_cache,
                    speculation,
                };
                let mut t =
                    run_test(&model, name, test, &prompt, ask, plan, &mut tracker, cancel).await?;
                if let Some(p) = &plain {
                    minerva_proto::scenarios::compare_with_plain(&mut t, p);
                }
                entry.update(|r| r.tests.push(t.clone()));
                plain.get_or_insert(t);
            }
        }
    }
    Ok(())
}

/// Warm-ups, then the measured runs of one test (or its speculative variant).
#[allow(clippy::too_many_arguments)]
async fn run_test(
    model: &Arc<LoadedModel>,
    name: &str,
    test: &TestKind,
    prompt: &[TokenId],
    ask: Ask,
    plan: &Plan,
    tracker: &mut Tracker<'_>,
    cancel: &mut watch::Receiver<bool>,
) -> Result<BenchTest> {
    let label = match ask.speculation {
        Some(_) => format!("{}/spec", test.name()),
        None => test.name().to_string(),
    };
    for w in 0..plan.warmup_runs {
        one_request(model, prompt.to_vec(), ask, 0, 0, cancel).await?;
        tracker.step(
            name,
            &label,
            format!("warm-up {}/{}", w + 1, plan.warmup_runs),
        );
    }
    let started = Instant::now();
    let mut runs: Vec<(BenchRun, Vec<f64>)> = Vec::new();
    for run in 0..plan.runs {
        // The run's requests go out together, as `concurrency` separate clients.
        let mut set = tokio::task::JoinSet::new();
        for client in 0..plan.concurrency {
            let mut c = cancel.clone();
            let m = Arc::clone(model);
            let p = prompt.to_vec();
            set.spawn(async move {
                let r = one_request(&m, p, ask, run, client, &mut c).await;
                (client, r)
            });
        }
        let mut done = set.join_all().await;
        done.sort_by_key(|(client, _)| *client);
        for (_, r) in done {
            runs.push(r?);
            tracker.step(name, &label, format!("run {}/{}", run + 1, plan.runs));
        }
    }
    let wall_s = started.elapsed().as_secs_f64();
    let mut t = summarize_test(
        name,
        model.model.backend(),
        test,
        prompt.len() as u32,
        ask.new_tokens,
        plan.concurrency,
        runs,
        wall_s,
    );
    t.test = label;
    t.max_draft = ask.speculation.map_or(0, |s| s.max_draft);
    t.draft_source = match ask.speculation.map(|s| s.source) {
        None => "",
        Some(DraftSource::Lookup) => "lookup",
        Some(DraftSource::Model) => "draft model",
    }
    .into();
    Ok(t)
}

/// The prompt tokens and new-token count of a test on this model.
fn prompt_for(model: &LoadedModel, test: &TestKind, seed: u64) -> Result<(Vec<TokenId>, u32)> {
    match test {
        TestKind::Prompt {
            prompt, new_tokens, ..
        } => {
            let messages = [minerva_core::chat::ChatMessage {
                role: "user".into(),
                content: prompt.clone(),
            }];
            let (text, add_special) = match model.render_chat(&messages) {
                Ok(r) => r,
                // A model without a chat template gets the prompt as plain text.
                Err(DaemonError::Core(minerva_core::CoreError::NoChatTemplate)) => {
                    (prompt.clone(), true)
                }
                Err(e) => return Err(e),
            };
            Ok((model.model.tokenize(&text, add_special)?, *new_tokens))
        }
        TestKind::Synthetic {
            prompt_tokens,
            new_tokens,
            ..
        } => {
            // Random tokens, as llama-bench uses: the values do not change the speed.
            let info = model.info();
            let vocab = info.vocab_size.max(1);
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut tokens: Vec<TokenId> = (0..*prompt_tokens)
                .map(|_| rng.random_range(0..vocab))
                .collect();
            if let Some(bos) = info.bos_token {
                tokens[0] = bos;
            }
            Ok((tokens, *new_tokens))
        }
    }
}

/// What each request of a test asks for besides its prompt.
#[derive(Debug, Clone, Copy)]
struct Ask {
    new_tokens: u32,
    seed: u64,
    /// Let the request start from a prompt prefix still cached from an earlier one.
    cache_prompt: bool,
    /// Speculative decoding: from where, and at most how many tokens a step.
    speculation: Option<crate::engine::speculative::Speculate>,
}

/// One generation, exactly as a client's: queued to the worker, tokens streamed back.
/// Returns the run record and the inter-token gaps.
async fn one_request(
    model: &Arc<LoadedModel>,
    prompt: Vec<TokenId>,
    ask: Ask,
    run: u32,
    client: u32,
    cancel: &mut watch::Receiver<bool>,
) -> Result<(BenchRun, Vec<f64>)> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let now = Instant::now();
    let prompt_tokens = prompt.len() as u32;
    model.submit(Job {
        received: now,
        ready: now,
        prompt,
        sampling: SamplingConfig {
            seed: ask.seed,
            ..SamplingConfig::default()
        },
        max_tokens: Some(ask.new_tokens),
        stop: Vec::new(),
        stop_token_ids: Vec::new(),
        ignore_eos: true,
        request: None,
        samples: 1,
        sample: 0,
        context_length: model.context_options.context_length,
        cache_prompt: ask.cache_prompt,
        logprobs: None,
        constraint: None,
        speculation: ask.speculation,
        load_ms: None,
        events: tx,
        lease: model.lease(None),
    })?;
    let mut ids: Vec<u8> = Vec::with_capacity(ask.new_tokens as usize * 4);
    let mut times: Vec<f64> = Vec::with_capacity(ask.new_tokens as usize);
    loop {
        let event = tokio::select! {
            e = rx.recv() => e,
            _ = cancel.wait_for(|c| *c) => return Err(DaemonError::Internal("cancelled".into())),
        };
        match event {
            Some(Event::Token { id, elapsed_ms, .. }) => {
                ids.extend_from_slice(&id.to_le_bytes());
                times.push(elapsed_ms);
            }
            Some(Event::Done(s)) => {
                let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
                let tpot = if s.generated_tokens > 1 {
                    (times.last().copied().unwrap_or(0.0) - times.first().copied().unwrap_or(0.0))
                        / f64::from(s.generated_tokens - 1)
                } else {
                    0.0
                };
                let record = BenchRun {
                    run,
                    client,
                    prompt_tokens,
                    cached_prompt_tokens: s.cached_prompt_tokens,
                    generated_tokens: s.generated_tokens,
                    ttft_ms: s.ttft_ms,
                    tpot_ms: tpot,
                    e2e_ms: s.total_ms,
                    prompt_tokens_per_s: s.prompt_tokens_per_s,
                    decode_tokens_per_s: s.decode_tokens_per_s,
                    queue_ms: s.queue_ms,
                    tokens_sha256: Sha256::digest(&ids)
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect(),
                    drafted_tokens: s.drafted_tokens,
                    accepted_tokens: s.accepted_tokens,
                };
                return Ok((record, gaps));
            }
            Some(Event::PromptLogprobs(_)) => {} // never asked for
            Some(Event::Error(e)) => return Err(e),
            None => {
                return Err(DaemonError::Internal(
                    "the worker dropped the request".into(),
                ))
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn summarize_test(
    model: &str,
    backend: &str,
    test: &TestKind,
    prompt_tokens: u32,
    new_tokens: u32,
    concurrency: u32,
    runs: Vec<(BenchRun, Vec<f64>)>,
    wall_s: f64,
) -> BenchTest {
    let col = |f: fn(&BenchRun) -> f64| runs.iter().map(|(r, _)| f(r)).collect::<Vec<f64>>();
    let itl: Vec<f64> = runs.iter().flat_map(|(_, g)| g.iter().copied()).collect();
    let metric = |name: &str, values: &[f64]| BenchMetric {
        name: name.into(),
        summary: Some(summarize(values)),
    };
    let metrics = vec![
        metric("ttft_ms", &col(|r| r.ttft_ms)),
        metric("tpot_ms", &col(|r| r.tpot_ms)),
        metric("itl_ms", &itl),
        metric("e2e_ms", &col(|r| r.e2e_ms)),
        metric("prompt_tokens_per_s", &col(|r| r.prompt_tokens_per_s)),
        metric("decode_tokens_per_s", &col(|r| r.decode_tokens_per_s)),
    ];
    let generated: u64 = runs
        .iter()
        .map(|(r, _)| u64::from(r.generated_tokens))
        .sum();
    let drafted: u64 = runs.iter().map(|(r, _)| u64::from(r.drafted_tokens)).sum();
    let accepted: u64 = runs.iter().map(|(r, _)| u64::from(r.accepted_tokens)).sum();
    let deterministic = (runs.len() > 1).then(|| {
        runs.iter()
            .all(|(r, _)| r.tokens_sha256 == runs[0].0.tokens_sha256)
    });
    BenchTest {
        model: model.into(),
        backend: backend.into(),
        test: test.name().into(),
        prompt_tokens,
        new_tokens,
        concurrency,
        aggregate_tokens_per_s: if wall_s > 0.0 {
            generated as f64 / wall_s
        } else {
            0.0
        },
        requests_per_s: if wall_s > 0.0 {
            runs.len() as f64 / wall_s
        } else {
            0.0
        },
        runs: runs.into_iter().map(|(r, _)| r).collect(),
        metrics,
        deterministic,
        drafted_tokens: drafted,
        accepted_tokens: accepted,
        acceptance_rate: if drafted > 0 {
            accepted as f64 / drafted as f64
        } else {
            0.0
        },
        ..Default::default()
    }
}
