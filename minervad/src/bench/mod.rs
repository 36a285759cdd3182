//! Benchmark jobs: submitted over gRPC, run one at a time in the daemon against warm models
//! through the same engine path as Generate (a queued job per request, streamed tokens), with
//! load time reported apart. Results stay in memory and are written to
//! `$MINERVA_HOME/bench/ID.json`, so `minerva bench show ID` works after a restart.

mod machine;
mod runner;
pub(crate) mod spec;
pub(crate) mod stats;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use minerva_proto::v1::{BenchJobSpec, BenchProgress, BenchResult};
use tokio::sync::watch;

use crate::engine::Engine;
use crate::error::{DaemonError, Result};
use spec::{TestKind, MAX_CONCURRENCY, MAX_RUNS};

/// A checked job: what will run.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) models: Vec<String>,
    /// Backends to run each model on, in turn; `[None]` = each model's default.
    pub(crate) backends: Vec<Option<&'static str>>,
    pub(crate) tests: Vec<TestKind>,
    pub(crate) runs: u32,
    pub(crate) warmup_runs: u32,
    pub(crate) concurrency: u32,
    pub(crate) seed: u64,
    /// Requests may reuse prompt prefixes cached by earlier ones (off: each computes its whole
    /// prompt, as a peer without a prompt cache does).
    pub(crate) prompt_cache: bool,
    /// Every test again with speculative decoding, drafting at most this many tokens a step.
    pub(crate) speculative: Option<u32>,
    pub(crate) options: crate::engine::RequestedOptions,
}

impl Plan {
    pub(crate) fn requests_total(&self) -> u32 {
        let per_test = self.warmup_runs + self.runs * self.concurrency;
        let variants = 1 + u32::from(self.speculative.is_some());
        (self.models.len() * self.backends.len() * self.tests.len()) as u32 * per_test * variants
    }
}

/// Where a job stands; on the wire it is `BenchResult.status`, as [`JobStatus::as_str`]
/// spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobStatus {
    Queued,
    Running,
    Done,
    Cancelled,
    Failed,
}

impl JobStatus {
    const ALL: [JobStatus; 5] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Done,
        JobStatus::Cancelled,
        JobStatus::Failed,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Done => "done",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Failed => "failed",
        }
    }

    /// The status a `BenchResult.status` string names; `None` for anything else.
    pub(crate) fn parse(s: &str) -> Option<JobStatus> {
        Self::ALL.into_iter().find(|j| j.as_str() == s)
    }

    /// Queued or running: not ended yet.
    pub(crate) fn is_live(self) -> bool {
        matches!(self, JobStatus::Queued | JobStatus::Running)
    }
}

/// One job: its live progress, its result so far, and its cancel switch.
pub(crate) struct JobEntry {
    pub(crate) id: String,
    progress: watch::Sender<BenchProgress>,
    result: Mutex<BenchResult>,
    cancel: watch::Sender<bool>,
}

impl JobEntry {
    fn result(&self) -> BenchResult {
        self.result
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut BenchResult)) {
        f(&mut self.result.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

pub(crate) struct BenchJobs {
    engine: Arc<Engine>,
    results_dir: PathBuf,
    jobs: Mutex<HashMap<String, Arc<JobEntry>>>,
    next: AtomicU64,
    /// Jobs run one at a time: two at once would measure each other.
    turn: tokio::sync::Mutex<()>,
}

impl BenchJobs {
    pub(crate) fn new(engine: Arc<Engine>, results_dir: PathBuf) -> Arc<Self> {
        Arc::new(Self {
            engine,
            results_dir,
            jobs: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            turn: tokio::sync::Mutex::new(()),
        })
    }

    pub(crate) fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<JobEntry>>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks the spec and every model name now (errors reach the caller at once), then
    /// queues the job.
    pub(crate) fn submit(self: &Arc<Self>, spec: BenchJobSpec) -> Result<String> {
        let plan = self.plan(&spec)?;
        let unix = now_unix();
        let id = format!(
            "{}-{}",
            unix as u64,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let result = BenchResult {
            id: id.clone(),
            status: JobStatus::Queued.as_str().into(),
            spec: Some(spec),
            machine: Some(machine::machine(
                &self.engine.backend_names().join(", "),
                &self.engine.backend_build_info().replace('\n', "; "),
            )),
            started_unix_s: unix,
            ..Default::default()
        };
        let (progress, _) = watch::channel(BenchProgress {
            id: id.clone(),
            requests_total: plan.requests_total(),
            message: JobStatus::Queued.as_str().into(),
            ..Default::default()
        });
        let (cancel, _) = watch::channel(false);
        let entry = Arc::new(JobEntry {
            id: id.clone(),
            progress,
            result: Mutex::new(result),
            cancel,
        });
        self.lock().insert(id.clone(), Arc::clone(&entry));
        let jobs = Arc::clone(self);
        tokio::spawn(async move { runner::run(jobs, entry, plan).await });
        Ok(id)
    }

    fn plan(&self, spec: &BenchJobSpec) -> Result<Plan> {
        if spec.models.is_empty() {
            return Err(DaemonError::invalid("models", "name at least one model"));
        }
        for m in &spec.models {
            self.engine.store().resolve(m)?;
        }
        let mut tests = Vec::new();
        for t in &spec.tests {
            tests.extend(spec::parse_test(t)?);
        }
        if !spec.prompts_file.is_empty() {
            tests.extend(spec::read_prompts_file(std::path::Path::new(
                &spec.prompts_file,
            ))?);
        }
        if tests.is_empty() {
            tests = spec::parse_test("standard")?;
        }
        let runs = spec.runs.unwrap_or(3);
        if runs == 0 || runs > MAX_RUNS {
            return Err(DaemonError::invalid(
                "runs",
                format!("{runs} is not in 1..={MAX_RUNS}"),
            ));
        }
        let warmup_runs = spec.warmup_runs.unwrap_or(1);
        if warmup_runs > MAX_RUNS {
            return Err(DaemonError::invalid(
                "warmup_runs",
                format!("{warmup_runs} is more than {MAX_RUNS}"),
            ));
        }
        let concurrency = spec.concurrency.unwrap_or(1);
        if concurrency == 0 || concurrency > MAX_CONCURRENCY {
            return Err(DaemonError::invalid(
                "concurrency",
                format!("{concurrency} is not in 1..={MAX_CONCURRENCY}"),
            ));
        }
        let max_queue = self.engine.config().max_queue as u32;
        if concurrency > max_queue {
            return Err(DaemonError::invalid(
                "concurrency",
                format!("{concurrency} clients would overflow the daemon's queue of {max_queue} (--max-queue)"),
            ));
        }
        use crate::engine::speculative::MAX_DRAFT;
        if let Some(n) = spec.speculative.filter(|n| !(1..=MAX_DRAFT).contains(n)) {
            return Err(DaemonError::invalid(
                "speculative",
                format!("{n} drafted tokens a step; ask for 1 to {MAX_DRAFT}"),
            ));
        }
        let options = crate::convert::requested_options(spec.options.as_ref())?;
        let mut backends = Vec::new();
        for b in &spec.backends {
            let id = crate::engine::backend_id(b)?;
            if !backends.contains(&Some(id)) {
                backends.push(Some(id));
            }
        }
        if backends.is_empty() {
            backends.push(options.backend);
        }
        Ok(Plan {
            models: spec.models.clone(),
            backends,
            tests,
            runs,
            warmup_runs,
            concurrency,
            seed: spec.seed.unwrap_or(0),
            prompt_cache: spec.prompt_cache,
            speculative: spec.speculative,
            options,
        })
    }

    /// A job's result: live, or read back from its file.
    pub(crate) fn get(&self, id: &str) -> Result<BenchResult> {
        if let Some(e) = self.lock().get(id) {
            return Ok(e.result());
        }
        self.read_saved(id)
    }

    fn read_saved(&self, id: &str) -> Result<BenchResult> {
        let not_found = || DaemonError::UnknownBenchJob { id: id.to_string() };
        if id.is_empty() || id.contains('/') || id.contains("..") {
            return Err(not_found());
        }
        let text = std::fs::read_to_string(self.results_dir.join(format!("{id}.json")))
            .map_err(|_| not_found())?;
        serde_json::from_str(&text)
            .map_err(|e| DaemonError::Internal(format!("saved result {id} is unreadable: {e}")))
    }

    pub(crate) fn watch(
        &self,
        id: &str,
    ) -> Result<std::result::Result<watch::Receiver<BenchProgress>, BenchResult>> {
        if let Some(e) = self.lock().get(id) {
            return Ok(Ok(e.progress.subscribe()));
        }
        Ok(Err(self.read_saved(id)?))
    }

    /// Jobs of this daemon's life and saved ones, newest first, without per-run rows.
    pub(crate) fn list(&self) -> Vec<BenchResult> {
        let mut out: HashMap<String, BenchResult> = HashMap::new();
        if let Ok(dir) = std::fs::read_dir(&self.results_dir) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if let Some(id) = name.strip_suffix(".json") {
                    if let Ok(r) = self.read_saved(id) {
                        out.insert(id.to_string(), r);
                    }
                }
            }
        }
        for (id, e) in self.lock().iter() {
            out.insert(id.clone(), e.result());
        }
        let mut v: Vec<BenchResult> = out.into_values().collect();
        for r in &mut v {
            for t in &mut r.tests {
                t.runs.clear();
            }
        }
        v.sort_by(|a, b| b.started_unix_s.total_cmp(&a.started_unix_s));
        v
    }

    pub(crate) fn cancel(&self, id: &str) -> Result<bool> {
        let entry = self.lock().get(id).cloned();
        match entry {
            Some(e) => {
                let running = JobStatus::parse(&e.result().status).is_some_and(JobStatus::is_live);
                let _ = e.cancel.send(true);
                Ok(running)
            }
            None => self.read_saved(id).map(|_| false),
        }
    }

    fn save(&self, result: &BenchResult) {
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&self.results_dir)?;
            let path = self.results_dir.join(format!("{}.json", result.id));
            let tmp = path.with_extension("json.tmp");
            std::fs::write(
                &tmp,
                serde_json::to_vec_pretty(result).map_err(std::io::Error::other)?,
            )?;
            std::fs::rename(tmp, path)
        };
        if let Err(e) = write() {
            tracing::warn!(id = %result.id, error = %e, "could not save the benchmark result");
        }
    }
}

fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_statuses_read_back_as_written() {
        for s in JobStatus::ALL {
            assert_eq!(JobStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(JobStatus::parse("finished"), None);
        let live: Vec<_> = JobStatus::ALL.into_iter().filter(|s| s.is_live()).collect();
        assert_eq!(live, [JobStatus::Queued, JobStatus::Running]);
    }
}
