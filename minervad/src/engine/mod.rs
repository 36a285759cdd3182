//! The engine: which models are loaded, their workers and queues, and keep-alive.
//!
//! Loaded models are keyed by their canonical file path. Each has one worker thread
//! ([`worker`]) fed through a bounded queue; a full queue is refused at once
//! (RESOURCE_EXHAUSTED). A model idle for its keep-alive is unloaded by a reaper task.

pub mod perplexity;
mod prompt_cache;
mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use minerva_core::chat::{ChatMessage, ChatTemplate};
use minerva_core::sampling::SamplingConfig;
use minerva_core::{
    Backend, ContextOptions, CoreError, LoadOptions, Model, ModelFormat, ModelInfo, TokenId,
};
use minerva_proto::v1::StopReason;
use tokio::sync::mpsc;

use crate::error::{DaemonError, Result};
use crate::store::{ModelStore, ResolvedModel};

/// How long an idle model stays loaded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeepAlive {
    For(Duration),
    Forever,
}

impl KeepAlive {
    /// Seconds as the API carries them: negative = forever.
    pub fn from_seconds(s: f64) -> Result<Self> {
        if s.is_nan() {
            return Err(DaemonError::invalid("keep_alive_seconds", "NaN"));
        }
        if s < 0.0 {
            return Ok(KeepAlive::Forever);
        }
        Duration::try_from_secs_f64(s)
            .map(KeepAlive::For)
            .map_err(|_| DaemonError::invalid("keep_alive_seconds", format!("{s} is too large")))
    }

    pub fn as_seconds(self) -> f64 {
        match self {
            KeepAlive::For(d) => d.as_secs_f64(),
            KeepAlive::Forever => -1.0,
        }
    }
}

/// Options a request asks for; `None` = whatever is loaded, or the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestedOptions {
    pub threads: Option<u32>,
    pub context_length: Option<u32>,
    pub gpu_layers: Option<u32>,
    /// A backend's name as [`backend_id`] spells it.
    pub backend: Option<&'static str>,
}

/// Every backend Minerva has, whether or not this build includes it, with the cargo feature
/// that brings it in.
pub const KNOWN_BACKENDS: &[(&str, &str)] = &[
    ("llama.cpp", "llamacpp"),
    ("candle", "candle"),
    ("mlx", "mlx"),
];

/// The canonical name of a backend as a request spells it ("llamacpp", "llama-cpp" and
/// "llama.cpp" are one backend).
pub fn backend_id(name: &str) -> Result<&'static str> {
    let n = name.trim().to_ascii_lowercase().replace(['-', '_'], ".");
    let canonical = match n.as_str() {
        "llama.cpp" | "llamacpp" | "llama" => "llama.cpp",
        "candle" | "rust" => "candle",
        "mlx" => "mlx",
        _ => {
            let names: Vec<&str> = KNOWN_BACKENDS.iter().map(|(n, _)| *n).collect();
            return Err(DaemonError::invalid(
                "options.backend",
                format!("unknown backend {name:?}; backends: {}", names.join(", ")),
            ));
        }
    };
    Ok(canonical)
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub keep_alive: KeepAlive,
    pub max_queue: usize,
    pub threads: u32,
    pub context_length: u32,
    /// Sequences a model's worker decodes together.
    pub parallel: u32,
    /// Layers offloaded to a GPU when a load request does not say.
    pub gpu_layers: u32,
    /// Each sequence gets its own context of `context_length` tokens (`--kv-per-sequence`).
    pub kv_per_sequence: bool,
}

/// A token event or the end of a generation, sent from the worker to the request's stream.
#[derive(Debug)]
pub enum Event {
    Token {
        id: TokenId,
        text: String,
        elapsed_ms: f64,
        index: u32,
    },
    Done(Box<Stats>),
    Error(DaemonError),
}

#[derive(Debug, Clone)]
pub struct Stats {
    pub load_ms: Option<f64>,
    pub prompt_tokens: u32,
    /// Prompt tokens reused from the prompt cache (not computed).
    pub cached_prompt_tokens: u32,
    pub ttft_ms: f64,
    pub prompt_ms: f64,
    pub prompt_tokens_per_s: f64,
    pub generated_tokens: u32,
    pub decode_tokens_per_s: f64,
    pub total_ms: f64,
    pub queue_ms: f64,
    pub stop_reason: StopReason,
    pub stop_string: String,
    pub text: String,
}

/// A generation request as the worker sees it: already tokenized and checked.
pub struct Job {
    pub id: u64,
    pub received: Instant,
    /// When the model was ready for this request (after loading it, if it had to).
    pub ready: Instant,
    pub prompt: Vec<TokenId>,
    pub sampling: SamplingConfig,
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
    /// Keep generating through end-of-generation tokens (benchmarks need fixed token counts).
    pub ignore_eos: bool,
    pub context_length: u32,
    /// Prompt caching: may start from a prefix of its prompt still in the KV cache, and leaves
    /// its own tokens there when it ends (otherwise its cells are cleared).
    pub cache_prompt: bool,
    pub load_ms: Option<f64>,
    pub events: mpsc::UnboundedSender<Event>,
    /// Keeps the model counted as busy until the job is dropped.
    pub lease: Lease,
}

/// Where a load's time went.
#[derive(Debug, Clone, Copy)]
pub struct LoadTiming {
    pub total_ms: f64,
    /// Opening and memory-mapping the weights (the backend's model load).
    pub mmap_ms: f64,
    /// Creating the context (KV cache, compute buffers) and the warm-up pass.
    pub context_ms: f64,
}

/// What a worker's queue carries.
pub enum Work {
    Generate(Job),
    Perplexity(perplexity::PerplexityJob),
}

/// A loaded model: weights, its worker's queue, and keep-alive state.
pub struct LoadedModel {
    pub resolved: ResolvedModel,
    pub model: Arc<dyn Model>,
    pub load_options: LoadOptions,
    pub context_options: ContextOptions,
    pub load_ms: f64,
    pub load_timing: LoadTiming,
    chat_template: Option<std::result::Result<ChatTemplate, String>>,
    jobs: mpsc::Sender<Work>,
    max_queue: usize,
    idle: Mutex<IdleState>,
    /// The worker thread, joined at shutdown (`Engine::shutdown`).
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[derive(Debug)]
struct IdleState {
    keep_alive: KeepAlive,
    busy: usize,
    idle_since: Instant,
}

impl LoadedModel {
    pub fn info(&self) -> &ModelInfo {
        self.model.info()
    }

    /// Seconds left before an idle unload; `None` while busy or when kept forever.
    pub fn keep_alive_remaining(&self) -> (Option<f64>, bool) {
        let s = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        match s.keep_alive {
            KeepAlive::Forever => (None, true),
            KeepAlive::For(ttl) if s.busy == 0 => (
                Some(ttl.saturating_sub(s.idle_since.elapsed()).as_secs_f64()),
                false,
            ),
            KeepAlive::For(ttl) => (Some(ttl.as_secs_f64()), false),
        }
    }

    fn expired(&self, now: Instant) -> bool {
        let s = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        match s.keep_alive {
            KeepAlive::Forever => false,
            KeepAlive::For(ttl) => s.busy == 0 && now.duration_since(s.idle_since) >= ttl,
        }
    }

    /// Counts the model busy until the lease is dropped; sets its keep-alive if given.
    pub fn lease(self: &Arc<Self>, keep_alive: Option<KeepAlive>) -> Lease {
        let mut s = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        s.busy += 1;
        if let Some(k) = keep_alive {
            s.keep_alive = k;
        }
        Lease {
            model: Arc::clone(self),
        }
    }

    /// Renders chat messages with the model's own template; the bool says whether the
    /// tokenizer should still add BOS (not when the template wrote it already).
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<(String, bool)> {
        let template = match &self.chat_template {
            None => return Err(CoreError::NoChatTemplate.into()),
            Some(Err(e)) => {
                return Err(CoreError::ChatTemplate { detail: e.clone() }.into());
            }
            Some(Ok(t)) => t,
        };
        let info = self.info();
        let text_of = |t: Option<TokenId>| -> Result<String> {
            Ok(match t {
                Some(t) => self.model.token_text(t)?,
                None => String::new(),
            })
        };
        let bos = text_of(info.bos_token)?;
        let eos = text_of(info.eos_token)?;
        let text = template.render(messages, &bos, &eos)?;
        let has_bos = !bos.is_empty() && text.starts_with(&bos);
        Ok((text, !has_bos))
    }

    /// Queues a job; a full queue is an error, never a wait.
    pub fn submit(&self, job: Job) -> Result<()> {
        self.submit_work(Work::Generate(job))
    }

    /// Queues a perplexity evaluation; same queue, same limits as generations.
    pub fn submit_perplexity(&self, job: perplexity::PerplexityJob) -> Result<()> {
        self.submit_work(Work::Perplexity(job))
    }

    fn submit_work(&self, work: Work) -> Result<()> {
        self.jobs.try_send(work).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => DaemonError::QueueFull {
                model: self.resolved.name.clone(),
                queued: self.max_queue,
            },
            mpsc::error::TrySendError::Closed(_) => DaemonError::WorkerGone {
                model: self.resolved.name.clone(),
                reason: "its worker has stopped".into(),
            },
        })
    }

    fn worker_alive(&self) -> bool {
        !self.jobs.is_closed()
    }
}

/// Marks a model busy for as long as it lives.
pub struct Lease {
    model: Arc<LoadedModel>,
}

impl Lease {
    pub fn model(&self) -> &Arc<LoadedModel> {
        &self.model
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut s = self.model.idle.lock().unwrap_or_else(|e| e.into_inner());
        s.busy = s.busy.saturating_sub(1);
        s.idle_since = Instant::now();
    }
}

pub struct Engine {
    backends: Vec<Arc<dyn Backend>>,
    store: Arc<ModelStore>,
    config: EngineConfig,
    loaded: Mutex<HashMap<PathBuf, Arc<LoadedModel>>>,
    load_lock: tokio::sync::Mutex<()>,
    next_id: std::sync::atomic::AtomicU64,
}

impl Engine {
    /// `backends` in order of preference for formats more than one can run.
    pub fn new(
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
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn store(&self) -> &Arc<ModelStore> {
        &self.store
    }

    /// The backends this build has.
    pub fn backend_names(&self) -> Vec<&'static str> {
        self.backends.iter().map(|b| b.name()).collect()
    }

    /// How each backend was built, one per line.
    pub fn backend_build_info(&self) -> String {
        self.backends
            .iter()
            .map(|b| b.build_info())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The backend for a model of `format`: the requested one, or the format's default (GGUF:
    /// llama.cpp, else candle; Hugging Face folders: candle; MLX folders: mlx).
    pub fn choose_backend(
        &self,
        format: ModelFormat,
        requested: Option<&'static str>,
    ) -> Result<Arc<dyn Backend>> {
        let find = |name: &str| self.backends.iter().find(|b| b.name() == name).cloned();
        let not_built = |name: &str| {
            let feature = KNOWN_BACKENDS
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(name, |(_, f)| *f);
            DaemonError::FailedPrecondition(format!(
                "this minervad was built without the {name} backend (cargo feature {feature:?}); it has: {}",
                self.backend_names().join(", ")
            ))
        };
        if let Some(name) = requested {
            let b = find(name).ok_or_else(|| not_built(name))?;
            let can = match format {
                ModelFormat::Gguf => name != "mlx",
                // MLX reads plain SafeTensors folders too (when asked: candle is the default).
                ModelFormat::SafeTensors => name == "candle" || name == "mlx",
                ModelFormat::PyTorch => name == "candle",
                ModelFormat::Mlx => name == "mlx",
            };
            if !can {
                return Err(DaemonError::invalid(
                    "options.backend",
                    format!("the {name} backend cannot run a {} model", format.as_str()),
                ));
            }
            return Ok(b);
        }
        let order: &[&str] = match format {
            ModelFormat::Gguf => &["llama.cpp", "candle"],
            ModelFormat::SafeTensors | ModelFormat::PyTorch => &["candle"],
            ModelFormat::Mlx => &["mlx"],
        };
        order
            .iter()
            .find_map(|n| find(n))
            .ok_or_else(|| not_built(order[0]))
    }

    /// The backend name a model would load with (for listings of unloaded models).
    pub fn default_backend_name(&self, format: ModelFormat) -> &'static str {
        self.choose_backend(format, None)
            .map_or("none", |b| b.name())
    }

    pub fn next_request_id(&self) -> u64 {
        self.next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    pub fn loaded_models(&self) -> Vec<Arc<LoadedModel>> {
        let mut v: Vec<_> = self.lock_loaded().values().cloned().collect();
        v.sort_by(|a, b| a.resolved.name.cmp(&b.resolved.name));
        v
    }

    pub fn loaded_at(&self, path: &std::path::Path) -> Option<Arc<LoadedModel>> {
        self.lock_loaded().get(path).cloned()
    }

    fn lock_loaded(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Arc<LoadedModel>>> {
        self.loaded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns a lease on the model `name`, loading it (or reloading it with other options)
    /// first when needed; the f64 is the load time when this call loaded it.
    pub async fn acquire(
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
                .is_none_or(|g| g == m.load_options.gpu_layers);
        fits.then_some(m)
    }

    async fn load(
        &self,
        resolved: ResolvedModel,
        req: RequestedOptions,
        keep_alive: Option<KeepAlive>,
    ) -> Result<Arc<LoadedModel>> {
        let format = ModelFormat::detect(&resolved.path).ok_or_else(|| CoreError::BadModel {
            backend: "minervad",
            path: resolved.path.clone(),
            detail: "not a model: expected a .gguf file, or a folder with config.json and model.safetensors or pytorch_model.bin".into(),
        })?;
        let backend = self.choose_backend(format, req.backend)?;
        let trained = {
            let path = resolved.path.clone();
            tokio::task::spawn_blocking(move || trained_context(&path, format))
                .await
                .map_err(|e| DaemonError::Internal(e.to_string()))??
        };
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
        // loader thread makes libgomp throttle its spinning, which cost 4x in decode speed.
        let (tx, rx) = mpsc::channel(self.config.max_queue.max(1));
        let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel();
        let path = resolved.path.clone();
        let (lo, co) = (load_options.clone(), context_options.clone());
        let name = resolved.name.clone();
        let worker = std::thread::Builder::new()
            .name(format!("worker {}", resolved.name))
            .spawn(move || {
                let started = Instant::now();
                let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let model = backend.load(&path, &lo)?;
                    let mapped = Instant::now();
                    let mut ctx = model.new_context(&co)?;
                    worker::warm_up(&*model, &mut *ctx)?;
                    Ok::<_, DaemonError>((model, ctx, mapped))
                }))
                .unwrap_or_else(|_| {
                    Err(DaemonError::Internal(
                        "the backend panicked while loading".into(),
                    ))
                });
                match loaded {
                    Ok((model, ctx, mapped)) => {
                        let timing = LoadTiming {
                            total_ms: started.elapsed().as_secs_f64() * 1e3,
                            mmap_ms: mapped.duration_since(started).as_secs_f64() * 1e3,
                            context_ms: mapped.elapsed().as_secs_f64() * 1e3,
                        };
                        if loaded_tx.send(Ok((Arc::clone(&model), timing))).is_ok() {
                            worker::run(name, model, ctx, rx);
                        }
                    }
                    Err(e) => {
                        let _ = loaded_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| DaemonError::Internal(format!("cannot start a worker thread: {e}")))?;
        let (model, timing) = loaded_rx
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
        }))
    }

    /// Unloads the model `name`; false when it was not loaded. Requests already queued finish.
    pub fn unload(&self, name: &str) -> Result<bool> {
        let resolved = self.store.resolve(name)?;
        let removed = self.lock_loaded().remove(&resolved.path);
        if let Some(m) = &removed {
            tracing::info!(model = %m.resolved.name, "unloaded on request");
        }
        Ok(removed.is_some())
    }

    /// Unloads idle models whose keep-alive ran out, and models whose worker died.
    pub fn reap(&self) {
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
    pub fn shutdown(&self, timeout: Duration) {
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

/// The context length a model was trained with, from its files (0 when they do not say); a
/// file that fails the checks of `minerva verify` is refused here, before any backend sees it.
fn trained_context(path: &std::path::Path, format: ModelFormat) -> Result<u32> {
    if format == ModelFormat::Gguf {
        let h = minerva_formats::gguf::read_header(path).map_err(|source| CoreError::BadGguf {
            path: path.to_path_buf(),
            source,
        })?;
        return Ok(ModelInfo::from_gguf(&h).trained_context_length);
    }
    let report = minerva_formats::verify::verify_path(path).map_err(|e| CoreError::BadModel {
        backend: "minervad",
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    if let Some(p) = report.error {
        return Err(CoreError::BadModel {
            backend: "minervad",
            path: path.to_path_buf(),
            detail: p.to_string(),
        }
        .into());
    }
    Ok(report.summary.context_length)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A daemon built without a backend names the missing cargo feature: checked here with an
    /// engine that has no backends, so it runs whatever features this build has.
    #[test]
    fn a_backend_this_build_lacks_is_a_failed_precondition() {
        let engine = Engine::new(
            Vec::new(),
            Arc::new(ModelStore::new(PathBuf::from("/nonexistent"))),
            EngineConfig {
                keep_alive: KeepAlive::Forever,
                max_queue: 1,
                threads: 1,
                context_length: 16,
                parallel: 1,
                gpu_layers: 0,
                kv_per_sequence: false,
            },
        );
        for format in [ModelFormat::Mlx, ModelFormat::SafeTensors] {
            let Err(DaemonError::FailedPrecondition(msg)) =
                engine.choose_backend(format, Some("mlx"))
            else {
                panic!("{format:?}: expected FailedPrecondition");
            };
            assert!(
                msg.contains("without the mlx backend (cargo feature \"mlx\")"),
                "{msg}"
            );
        }
        let Err(DaemonError::FailedPrecondition(msg)) =
            engine.choose_backend(ModelFormat::Mlx, None)
        else {
            panic!("expected FailedPrecondition");
        };
        assert!(msg.contains("mlx"), "{msg}");
    }
}
