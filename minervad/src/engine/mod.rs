//! The engine: which models are loaded, their workers and queues, and keep-alive.
//!
//! Loaded models are keyed by their canonical file path. Each has one worker thread
//! ([`worker`]) fed through a bounded queue; a full queue is refused at once
//! (RESOURCE_EXHAUSTED). A model idle for its keep-alive is unloaded by a reaper task.

mod backends;
mod constraint;
mod draft_model;
mod job;
mod loaded;
pub(crate) mod perplexity;
mod prompt_cache;
mod requests;
pub(crate) mod speculative;
mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use minerva_core::chat::ChatTemplate;
use minerva_core::{Backend, ContextOptions, CoreError, LoadOptions, ModelFiles};
use tokio::sync::mpsc;

pub(crate) use backends::backend_id;
pub(crate) use constraint::{Constraint, ConstraintSpec};
pub(crate) use draft_model::DraftDetails;
pub(crate) use job::{Event, Job, Logprobs, LogprobsWanted, Stats, Work};
use loaded::IdleState;
pub(crate) use loaded::{KeepAlive, Lease, LoadTiming, LoadedModel};
pub(crate) use requests::{Registration, Requests};

use crate::error::{DaemonError, Result};
use crate::metrics::Metrics;
use crate::store::{ModelStore, ResolvedModel};

/// Options a request asks for; `None` = whatever is loaded, or the default.
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestedOptions {
    pub(crate) threads: Option<u32>,
    pub(crate) context_length: Option<u32>,
    pub(crate) gpu_layers: Option<u32>,
    /// A backend's name as [`backend_id`] spells it.
    pub(crate) backend: Option<&'static str>,
    /// A draft model's name (`Some("")`: none).
    pub(crate) draft_model: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct EngineConfig {
    pub(crate) keep_alive: KeepAlive,
    pub(crate) max_queue: usize,
    pub(crate) threads: u32,
    pub(crate) context_length: u32,
    /// Sequences a model's worker decodes together.
    pub(crate) parallel: u32,
    /// Layers offloaded to a GPU when a load request does not say.
    pub(crate) gpu_layers: u32,
    /// Each sequence gets its own context of `context_length` tokens (`--kv-per-sequence`).
    pub(crate) kv_per_sequence: bool,
    /// Drafted tokens a step for requests that do not say (`--speculate`); None: off.
    pub(crate) speculate: Option<u32>,
}

pub(crate) struct Engine {
    backends: Vec<Arc<dyn Backend>>,
    store: Arc<ModelStore>,
    config: EngineConfig,
    loaded: Mutex<HashMap<PathBuf, Arc<LoadedModel>>>,
    load_lock: tokio::sync::Mutex<()>,
    next_id: std::sync::atomic::AtomicU64,
    requests: Arc<Requests>,
    metrics: Arc<Metrics>,
}

impl Engine {
    /// `backends` in order of preference for formats more than one can run.
    pub(crate) fn new(
        backends: Vec<Arc<dyn Backend>>,
        store: Arc<ModelStore>,
        config: EngineConfig,
    ) -> Arc<Self> {
        Arc::new(Self {
            backends,
            store,
            config,
            loaded: Mutex::new(HashMap::new()),
            load_lock: tokio::sync::Mutex::new(()),
            next_id: std::sync::atomic::AtomicU64::new(1),
            requests: Arc::default(),
            metrics: Arc::new(Metrics::new()),
        })
    }

    pub(crate) fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub(crate) fn store(&self) -> &Arc<ModelStore> {
        &self.store
    }

    pub(crate) fn next_request_id(&self) -> u64 {
        self.next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Generation requests in flight, by id.
    pub(crate) fn requests(&self) -> &Arc<Requests> {
        &self.requests
    }

    /// The daemon's Prometheus series.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub(crate) fn loaded_models(&self) -> Vec<Arc<LoadedModel>> {
        let mut v: Vec<_> = self.lock_loaded().values().cloned().collect();
        v.sort_by(|a, b| a.resolved.name.cmp(&b.resolved.name));
        v
    }

    pub(crate) fn loaded_at(&self, path: &std::path::Path) -> Option<Arc<LoadedModel>> {
        self.lock_loaded().get(path).cloned()
    }

    fn lock_loaded(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Arc<LoadedModel>>> {
        self.loaded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns a lease on the model `name`, loading it (or reloading it with other options)
    /// first when needed; the f64 is the load time when this call loaded it.
    pub(crate) async fn acquire(
        &self,
        name: &str,
        requested: RequestedOptions,
        keep_alive: Option<KeepAlive>,
    ) -> Result<(Lease, Option<f64>)> {
        let resolved = self.store.resolve(name)?;
        if let Some(m) = self.usable(&resolved, &requested) {
            return Ok((m.lease(keep_alive), None));
        }
        let _guard = self.load_lock.lock().await;
        if let Some(m) = self.usable(&resolved, &requested) {
            return Ok((m.lease(keep_alive), None));
        }
        let loaded = self.load(resolved, requested, keep_alive).await?;
        let load_ms = loaded.load_ms;
        let lease = loaded.lease(keep_alive);
        self.lock_loaded()
            .insert(loaded.resolved.path.clone(), Arc::clone(&loaded));
        Ok((lease, Some(load_ms)))
    }

    fn usable(&self, resolved: &ResolvedModel, req: &RequestedOptions) -> Option<Arc<LoadedModel>> {
        let m = self.loaded_at(&resolved.path)?;
        let fits = m.worker_alive()
            && req.backend.is_none_or(|b| b == m.model.backend())
            && req.threads.is_none_or(|t| t == m.context_options.threads)
            && req
                .context_length
                .is_none_or(|c| c == m.context_options.context_length)
            && req
                .gpu_layers
                .is_none_or(|g| g == m.load_options.gpu_layers)
            && match req.draft_model.as_deref() {
                None => true,
                Some("") => m.draft.is_none(),
                // One that does not resolve is loaded, and so refused with the store's error.
                Some(name) => {
                    self.store.resolve(name).ok().map(|r| r.path)
                        == m.draft.as_ref().map(|d| d.path.clone())
                }
            };
        fits.then_some(m)
    }

    async fn load(
        &self,
        resolved: ResolvedModel,
        req: RequestedOptions,
        keep_alive: Option<KeepAlive>,
    ) -> Result<Arc<LoadedModel>> {
        let files = open_files(&resolved).await?;
        let backend = self.choose_backend(files.format(), req.backend)?;
        let draft = match req.draft_model.as_deref().filter(|n| !n.is_empty()) {
            Some(name) => Some(self.open_draft(name, &resolved, &backend).await?),
            None => None,
        };
        let trained = files.trained_context_length();
        let context_length = match req.context_length {
            Some(0) => {
                return Err(DaemonError::invalid(
                    "options.context_length",
                    "must be at least 1",
                ))
            }
            Some(c) if trained > 0 && c > trained => {
                return Err(DaemonError::invalid(
                    "options.context_length",
                    format!("{c} is more than the {trained} tokens the model was trained with"),
                ))
            }
            Some(c) => c,
            None if trained > 0 => self.config.context_length.min(trained),
            None => self.config.context_length,
        };
        let threads = match req.threads {
            Some(0) => {
                return Err(DaemonError::invalid(
                    "options.threads",
                    "must be at least 1",
                ))
            }
            Some(t) if t > 1024 => {
                return Err(DaemonError::invalid(
                    "options.threads",
                    format!("{t} is more than 1024"),
                ))
            }
            Some(t) => t,
            None => self.config.threads,
        };
        let load_options = LoadOptions {
            gpu_layers: req.gpu_layers.unwrap_or(self.config.gpu_layers),
        };
        let context_options = ContextOptions {
            context_length,
            threads,
            // Tokens per forward call: up to 2048, and no more than the KV cells there are
            // (one context, or one per sequence).
            batch_size: if self.config.kv_per_sequence {
                context_length.saturating_mul(self.config.parallel.max(1))
            } else {
                context_length
            }
            .min(2048),
            max_sequences: self.config.parallel.max(1),
            kv_per_sequence: self.config.kv_per_sequence,
        };
        // A model loaded with other options is replaced; its worker finishes what it has queued.
        if let Some(old) = self.lock_loaded().remove(&resolved.path) {
            tracing::info!(model = %old.resolved.name, "reloading with new options");
        }
        // The worker thread loads the model and creates its context itself: llama.cpp's
        // OpenMP keeps a thread pool per calling thread, and a second pool left behind by a
        // loader thread makes libgomp throttle its spinning and slows decode several times
        // over (backends/llamacpp/README.md).
        let (tx, rx) = mpsc::channel(self.config.max_queue.max(1));
        let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel();
        let (lo, co) = (load_options.clone(), context_options.clone());
        let name = resolved.name.clone();
        let metrics = Arc::clone(&self.metrics);

        let worker = std::thread::Builder::new()
            .name(format!("worker {}", resolved.name))
            .spawn(move || {
                let started = Instant::now();
                let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let model = backend.load(&files, &lo)?;
                    let mapped = Instant::now();
                    let mut ctx = model.new_context(&co)?;
                    let cost = worker::warm_up(&*model, &mut *ctx)?;
                    let draft = match draft {
                        Some((r, files, backend)) => {
                            let d = backend.load(&files, &lo)?;
                            draft_model::check_vocabulary(&*model, &name, &*d, &r.name)?;
                            let details = DraftDetails {
                                name: r.name,
                                path: r.path,
                                backend: d.backend(),
                                quantization: d.info().quantization.clone(),
                                parameter_count: d.info().parameter_count,
                            };
                            let ctx = d.new_context(&co)?;
                            Some((draft_model::DraftModel::new(d, ctx)?, details))
                        }
                        None => None,
                    };
                    Ok::<_, DaemonError>((model, ctx, mapped, cost, draft))
                }))
                .unwrap_or_else(|_| {
                    Err(DaemonError::Internal(
                        "the backend panicked while loading".into(),
                    ))
                });
                match loaded {
                    Ok((model, ctx, mapped, cost, draft)) => {
                        let timing = LoadTiming {
                            total_ms: started.elapsed().as_secs_f64() * 1e3,
                            mmap_ms: mapped.duration_since(started).as_secs_f64() * 1e3,
                            context_ms: mapped.elapsed().as_secs_f64() * 1e3,
                        };
                        let metrics = metrics.for_model(&name, model.backend());
                        metrics.loaded(started.elapsed());
                        let (draft, details) = draft.unzip();
                        if loaded_tx
                            .send(Ok((Arc::clone(&model), timing, details)))
                            .is_ok()
                        {
                            let parts = worker::Parts { ctx, cost, draft };
                            worker::run(name, model, parts, rx, metrics);
                        }
                    }
                    Err(e) => {
                        let _ = loaded_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| DaemonError::Internal(format!("cannot start a worker thread: {e}")))?;
        let (model, timing, draft) = loaded_rx
            .await
            .map_err(|_| DaemonError::Internal("the worker thread ended while loading".into()))??;

        let chat_template = model
            .info()
            .chat_template
            .as_deref()
            .map(|src| ChatTemplate::new(src).map_err(|e| e.to_string()));
        tracing::info!(model = %resolved.name, path = %resolved.path.display(), load_ms = timing.total_ms, mmap_ms = timing.mmap_ms, context_length, threads, "model loaded");
        Ok(Arc::new(LoadedModel {
            resolved,
            model,
            load_options,
            context_options,
            load_ms: timing.total_ms,
            load_timing: timing,
            chat_template,
            jobs: tx,
            max_queue: self.config.max_queue.max(1),
            idle: Mutex::new(IdleState {
                keep_alive: keep_alive.unwrap_or(self.config.keep_alive),
                busy: 0,
                idle_since: Instant::now(),
            }),
            worker: Mutex::new(Some(worker)),
            vocabulary: Mutex::new(None),
            draft,
        }))
    }

    /// A draft model's files, opened and verified as a model's are, and the backend to run it
    /// on: the model's own where it serves the draft's format, else the default for it.
    async fn open_draft(
        &self,
        name: &str,
        model: &ResolvedModel,
        backend: &Arc<dyn Backend>,
    ) -> Result<(ResolvedModel, ModelFiles, Arc<dyn Backend>)> {
        let resolved = self.store.resolve(name)?;
        if resolved.path == model.path {
            return Err(DaemonError::invalid(
                "options.draft_model",
                format!("{name} is the model itself; a draft model is a smaller one"),
            ));
        }
        let files = open_files(&resolved).await?;
        let same = backend.formats().iter().any(|(f, _)| *f == files.format());
        let backend = if same {
            Arc::clone(backend)
        } else {
            self.choose_backend(files.format(), None)?
        };
        Ok((resolved, files, backend))
    }

    /// Unloads the model `name`; false when it was not loaded. Requests already queued finish.
    pub(crate) fn unload(&self, name: &str) -> Result<bool> {
        let resolved = self.store.resolve(name)?;
        let removed = self.lock_loaded().remove(&resolved.path);
        if let Some(m) = &removed {
            tracing::info!(model = %m.resolved.name, "unloaded on request");
        }
        Ok(removed.is_some())
    }

    /// Unloads idle models whose keep-alive ran out, and models whose worker died.
    pub(crate) fn reap(&self) {
        let now = Instant::now();
        self.lock_loaded().retain(|_, m| {
            let keep = !m.expired(now) && m.worker_alive();
            if !keep {
                tracing::info!(model = %m.resolved.name, "unloading: keep-alive expired or worker stopped");
            }
            keep
        });
    }

    /// Unloads every model and waits (up to `timeout`) for the worker threads to free their
    /// contexts. Called before the process exits: a GPU runtime shuts down at exit, and a worker
    /// still freeing its context then aborts the process (CUDA "driver shutting down").
    pub(crate) fn shutdown(&self, timeout: Duration) {
        let models: Vec<Arc<LoadedModel>> = self.lock_loaded().drain().map(|(_, m)| m).collect();
        let workers: Vec<_> = models
            .iter()
            .filter_map(|m| m.worker.lock().unwrap_or_else(|e| e.into_inner()).take())
            .collect();
        // The workers stop once every sender of their queue is gone.
        drop(models);
        let deadline = Instant::now() + timeout;
        for w in workers {
            while !w.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if w.is_finished() {
                let _ = w.join();
            } else {
                tracing::warn!("a model worker is still busy at shutdown; exiting without it");
            }
        }
    }
}

/// A model's files, detected, verified and parsed once (off the async threads), before any
/// backend sees them.
async fn open_files(resolved: &ResolvedModel) -> Result<ModelFiles> {
    let path = resolved.path.clone();
    Ok(tokio::task::spawn_blocking(move || ModelFiles::open(&path))
        .await
        .map_err(|e| DaemonError::Internal(e.to_string()))?
        .map_err(CoreError::from)?)
}
