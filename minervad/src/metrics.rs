//! Prometheus metrics: what the daemon is doing, for a workstation's dashboard or a gateway's
//! scraper. Names follow vLLM's and llama.cpp's (`prefix:name`, counters ending in `_total`,
//! latencies in seconds) so existing dashboards need only the prefix changed; every series is
//! labelled by model and backend. The worker threads update them as they step; `--metrics
//! ADDR` serves them as Prometheus text on `GET /metrics`, on loopback only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::error::{DaemonError, Result};

/// Labels of every series.
const LABELS: [&str; 2] = ["model", "backend"];

/// Time to first token, queue and end-to-end latency buckets (vLLM's, in seconds).
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];

/// Inter-token latency buckets (vLLM's, in seconds).
const TOKEN_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
    7.5, 10.0, 20.0, 40.0, 80.0,
];

/// Model load buckets (seconds): a small model maps in milliseconds, a 70B in minutes.
const LOAD_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Every series the daemon exports, in one registry.
pub(crate) struct Metrics {
    registry: Registry,
    running: IntGaugeVec,
    waiting: IntGaugeVec,
    prompt_tokens: IntCounterVec,
    cached_prompt_tokens: IntCounterVec,
    prompt_cache_hits: IntCounterVec,
    generation_tokens: IntCounterVec,
    draft_tokens: IntCounterVec,
    accepted_tokens: IntCounterVec,
    finished: IntCounterVec,
    ttft: HistogramVec,
    inter_token: HistogramVec,
    e2e: HistogramVec,
    queue: HistogramVec,
    kv_used: IntGaugeVec,
    kv_total: IntGaugeVec,
    load: HistogramVec,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(format!("minerva:{name}"), help)
}

fn histogram(name: &str, help: &str, buckets: &[f64]) -> HistogramOpts {
    HistogramOpts::new(format!("minerva:{name}"), help).buckets(buckets.to_vec())
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let gauge = |n, h| IntGaugeVec::new(opts(n, h), &LABELS);
        let counter = |n, h| IntCounterVec::new(opts(n, h), &LABELS);
        let hist = |n, h, b| HistogramVec::new(histogram(n, h, b), &LABELS);
        let built = (|| {
            Ok::<_, prometheus::Error>(Self {
                registry: Registry::new(),
                running: gauge(
                    "num_requests_running",
                    "Requests decoding or prefilling now.",
                )?,
                waiting: gauge(
                    "num_requests_waiting",
                    "Requests queued for the model's worker, not yet admitted.",
                )?,
                prompt_tokens: counter(
                    "prompt_tokens_total",
                    "Prompt tokens computed (not counting those reused from the prompt cache).",
                )?,
                cached_prompt_tokens: counter(
                    "prompt_tokens_cached_total",
                    "Prompt tokens reused from the prompt cache instead of computed.",
                )?,
                prompt_cache_hits: counter(
                    "prompt_cache_hits_total",
                    "Requests that started from a cached prefix of their prompt.",
                )?,
                generation_tokens: counter("generation_tokens_total", "Tokens generated.")?,
                draft_tokens: counter(
                    "spec_decode_num_draft_tokens_total",
                    "Tokens drafted by speculative decoding and checked by the model.",
                )?,
                accepted_tokens: counter(
                    "spec_decode_num_accepted_tokens_total",
                    "Drafted tokens the model agreed with.",
                )?,
                finished: IntCounterVec::new(
                    opts(
                        "request_success_total",
                        "Requests finished, by why they stopped (eos, max_tokens, ...).",
                    ),
                    &["model", "backend", "finished_reason"],
                )?,
                ttft: hist(
                    "time_to_first_token_seconds",
                    "From receiving a request to its first token.",
                    LATENCY_BUCKETS,
                )?,
                inter_token: hist(
                    "inter_token_latency_seconds",
                    "Between one generated token and the next of the same request.",
                    TOKEN_BUCKETS,
                )?,
                e2e: hist(
                    "e2e_request_latency_seconds",
                    "From receiving a request to its last token.",
                    LATENCY_BUCKETS,
                )?,
                queue: hist(
                    "request_queue_time_seconds",
                    "From the model being ready for a request to its admission to a batch.",
                    LATENCY_BUCKETS,
                )?,
                kv_used: gauge(
                    "kv_cache_used_cells",
                    "KV cells holding tokens: running sequences and idle prompt caches.",
                )?,
                kv_total: gauge("kv_cache_total_cells", "KV cells the model's context has.")?,
                load: hist(
                    "model_load_seconds",
                    "Loading a model: mapping its weights, creating its context, warming up.",
                    LOAD_BUCKETS,
                )?,
            })
        })();
        // The names and label sets above are fixed: a failure here is a bug, caught by tests.
        let m = built.expect("metric definitions are valid");
        for c in m.collectors() {
            m.registry
                .register(c)
                .expect("each metric is registered once");
        }
        m
    }

    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.running.clone()),
            Box::new(self.waiting.clone()),
            Box::new(self.prompt_tokens.clone()),
            Box::new(self.cached_prompt_tokens.clone()),
            Box::new(self.prompt_cache_hits.clone()),
            Box::new(self.generation_tokens.clone()),
            Box::new(self.draft_tokens.clone()),
            Box::new(self.accepted_tokens.clone()),
            Box::new(self.finished.clone()),
            Box::new(self.ttft.clone()),
            Box::new(self.inter_token.clone()),
            Box::new(self.e2e.clone()),
            Box::new(self.queue.clone()),
            Box::new(self.kv_used.clone()),
            Box::new(self.kv_total.clone()),
            Box::new(self.load.clone()),
        ]
    }

    /// The series of one loaded model, with its labels bound once.
    pub(crate) fn for_model(self: &Arc<Self>, model: &str, backend: &str) -> ModelMetrics {
        let l = [model, backend];
        ModelMetrics {
            metrics: Arc::clone(self),
            model: model.to_string(),
            backend: backend.to_string(),
            running: self.running.with_label_values(&l),
            waiting: self.waiting.with_label_values(&l),
            prompt_tokens: self.prompt_tokens.with_label_values(&l),
            cached_prompt_tokens: self.cached_prompt_tokens.with_label_values(&l),
            prompt_cache_hits: self.prompt_cache_hits.with_label_values(&l),
            generation_tokens: self.generation_tokens.with_label_values(&l),
            draft_tokens: self.draft_tokens.with_label_values(&l),
            accepted_tokens: self.accepted_tokens.with_label_values(&l),
            ttft: self.ttft.with_label_values(&l),
            inter_token: self.inter_token.with_label_values(&l),
            e2e: self.e2e.with_label_values(&l),
            queue: self.queue.with_label_values(&l),
            kv_used: self.kv_used.with_label_values(&l),
            kv_total: self.kv_total.with_label_values(&l),
            load: self.load.with_label_values(&l),
        }
    }

    /// Every series as Prometheus text (format 0.0.4).
    pub(crate) fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }
}

/// One model's series. The worker owns one; its methods are what the step loop reports.
pub(crate) struct ModelMetrics {
    metrics: Arc<Metrics>,
    model: String,
    backend: String,
    pub(crate) running: IntGauge,
    pub(crate) waiting: IntGauge,
    prompt_tokens: IntCounter,
    cached_prompt_tokens: IntCounter,
    prompt_cache_hits: IntCounter,
    generation_tokens: IntCounter,
    draft_tokens: IntCounter,
    accepted_tokens: IntCounter,
    ttft: Histogram,
    inter_token: Histogram,
    e2e: Histogram,
    queue: Histogram,
    pub(crate) kv_used: IntGauge,
    pub(crate) kv_total: IntGauge,
    load: Histogram,
}

impl ModelMetrics {
    pub(crate) fn loaded(&self, took: Duration) {
        self.load.observe(took.as_secs_f64());
    }

    /// A request admitted to a batch after `queued`, reusing `cached` prompt tokens.
    pub(crate) fn admitted(&self, queued: Duration, cached: usize) {
        self.queue.observe(queued.as_secs_f64());
        if cached > 0 {
            self.prompt_cache_hits.inc();
            self.cached_prompt_tokens.inc_by(cached as u64);
        }
    }

    pub(crate) fn prompt_computed(&self, tokens: usize) {
        self.prompt_tokens.inc_by(tokens as u64);
    }

    /// A speculative verification: `drafted` tokens checked, `accepted` of them taken.
    pub(crate) fn verified(&self, drafted: usize, accepted: usize) {
        self.draft_tokens.inc_by(drafted as u64);
        self.accepted_tokens.inc_by(accepted as u64);
    }

    /// A token generated: `since_request` for the first one, `since_last` after that.
    pub(crate) fn token(&self, since_request: Option<Duration>, since_last: Option<Duration>) {
        self.generation_tokens.inc();
        if let Some(d) = since_request {
            self.ttft.observe(d.as_secs_f64());
        }
        if let Some(d) = since_last {
            self.inter_token.observe(d.as_secs_f64());
        }
    }

    /// A request finished (not cancelled by its client) for `reason`, `took` after receipt.
    pub(crate) fn finished(&self, reason: &str, took: Duration) {
        self.metrics
            .finished
            .with_label_values(&[&self.model, &self.backend, reason])
            .inc();
        self.e2e.observe(took.as_secs_f64());
    }
}

/// Binds the metrics port (loopback only), so that a port in use stops the daemon's start.
pub(crate) async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    if !addr.ip().is_loopback() {
        return Err(DaemonError::invalid(
            "--metrics",
            format!("{addr} is not a loopback address: metrics are served on 127.0.0.1 or ::1"),
        ));
    }
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| DaemonError::Internal(format!("cannot serve metrics on {addr}: {e}")))
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub(crate) async fn serve(
    metrics: Arc<Metrics>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(addr = %local, "metrics on http://{local}/metrics");
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = Arc::clone(&metrics);
            async move {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    metrics.render(),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| DaemonError::Internal(format!("metrics server: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_carry_their_labels_and_count_what_they_are_told() {
        let m = Arc::new(Metrics::new());
        let a = m.for_model("smollm2-135m", "llama.cpp");
        a.admitted(Duration::from_millis(3), 5);
        a.prompt_computed(7);
        a.token(Some(Duration::from_millis(40)), None);
        a.token(None, Some(Duration::from_millis(15)));
        a.finished("max_tokens", Duration::from_millis(80));
        let text = m.render();
        for line in [
            r#"minerva:prompt_tokens_total{backend="llama.cpp",model="smollm2-135m"} 7"#,
            r#"minerva:prompt_tokens_cached_total{backend="llama.cpp",model="smollm2-135m"} 5"#,
            r#"minerva:generation_tokens_total{backend="llama.cpp",model="smollm2-135m"} 2"#,
            r#"minerva:request_success_total{backend="llama.cpp",finished_reason="max_tokens",model="smollm2-135m"} 1"#,
            r#"minerva:time_to_first_token_seconds_count{backend="llama.cpp",model="smollm2-135m"} 1"#,
            r#"minerva:inter_token_latency_seconds_count{backend="llama.cpp",model="smollm2-135m"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        assert!(text.contains("# TYPE minerva:time_to_first_token_seconds histogram"));
    }
}
