//! A loaded model: its backend model, the options it was loaded with, its worker's queue, and
//! the keep-alive state that leases keep current.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use minerva_core::chat::{ChatMessage, ChatTemplate};
use minerva_core::{ContextOptions, CoreError, LoadOptions, Model, ModelInfo, TokenId};
use tokio::sync::mpsc;

use super::constraint::{Constraint, ConstraintSpec, Vocabulary};
use super::{perplexity, Job, Work};
use crate::error::{DaemonError, Result};
use crate::store::ResolvedModel;

/// How long an idle model stays loaded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum KeepAlive {
    For(Duration),
    Forever,
}

impl KeepAlive {
    /// Seconds as the API carries them: negative = forever.
    pub(crate) fn from_seconds(s: f64) -> Result<Self> {
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

    pub(crate) fn as_seconds(self) -> f64 {
        match self {
            KeepAlive::For(d) => d.as_secs_f64(),
            KeepAlive::Forever => -1.0,
        }
    }
}

/// Where a load's time went.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoadTiming {
    pub(crate) total_ms: f64,
    /// Opening and memory-mapping the weights (the backend's model load).
    pub(crate) mmap_ms: f64,
    /// Creating the context (KV cache, compute buffers) and the warm-up pass.
    pub(crate) context_ms: f64,
}

/// A loaded model: weights, its worker's queue, and keep-alive state.
pub(crate) struct LoadedModel {
    pub(crate) resolved: ResolvedModel,
    pub(crate) model: Arc<dyn Model>,
    pub(crate) load_options: LoadOptions,
    pub(crate) context_options: ContextOptions,
    pub(crate) load_ms: f64,
    pub(crate) load_timing: LoadTiming,
    pub(super) chat_template: Option<std::result::Result<ChatTemplate, String>>,
    pub(super) jobs: mpsc::Sender<Work>,
    pub(super) max_queue: usize,
    pub(super) idle: Mutex<IdleState>,
    /// The worker thread, joined at shutdown (`Engine::shutdown`).
    pub(super) worker: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The vocabulary as structured output sees it, built by the first constrained request.
    pub(super) vocabulary: Mutex<Option<Arc<Vocabulary>>>,
    /// The draft model its worker holds for speculative decoding, if it was loaded with one.
    pub(crate) draft: Option<super::DraftDetails>,
}

#[derive(Debug)]
pub(super) struct IdleState {
    pub(super) keep_alive: KeepAlive,
    pub(super) busy: usize,
    pub(super) idle_since: Instant,
}

impl LoadedModel {
    pub(crate) fn info(&self) -> &ModelInfo {
        self.model.info()
    }

    /// Seconds left before an idle unload; `None` while busy or when kept forever.
    pub(crate) fn keep_alive_remaining(&self) -> (Option<f64>, bool) {
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

    pub(super) fn expired(&self, now: Instant) -> bool {
        let s = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        match s.keep_alive {
            KeepAlive::Forever => false,
            KeepAlive::For(ttl) => s.busy == 0 && now.duration_since(s.idle_since) >= ttl,
        }
    }

    /// Counts the model busy until the lease is dropped; sets its keep-alive if given.
    pub(crate) fn lease(self: &Arc<Self>, keep_alive: Option<KeepAlive>) -> Lease {
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
    pub(crate) fn render_chat(&self, messages: &[ChatMessage]) -> Result<(String, bool)> {
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

    /// Compiles a request's constraint against this model's vocabulary (built the first time).
    /// Blocking: a vocabulary and a large schema take milliseconds to compile.
    pub(crate) fn constraint(&self, spec: &ConstraintSpec) -> Result<Constraint> {
        let vocabulary = {
            let mut v = self.vocabulary.lock().unwrap_or_else(|e| e.into_inner());
            match &*v {
                Some(v) => Arc::clone(v),
                None => Arc::clone(v.insert(Arc::new(Vocabulary::new(Arc::clone(&self.model))?))),
            }
        };
        vocabulary.compile(spec)
    }

    /// Queues a job; a full queue is an error, never a wait.
    pub(crate) fn submit(&self, job: Job) -> Result<()> {
        self.submit_work(Work::Generate(Box::new(job)))
    }

    /// Queues a perplexity evaluation; same queue, same limits as generations.
    pub(crate) fn submit_perplexity(&self, job: perplexity::PerplexityJob) -> Result<()> {
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

    pub(super) fn worker_alive(&self) -> bool {
        !self.jobs.is_closed()
    }
}

/// Marks a model busy for as long as it lives.
pub(crate) struct Lease {
    model: Arc<LoadedModel>,
}

impl Lease {
    pub(crate) fn model(&self) -> &Arc<LoadedModel> {
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
