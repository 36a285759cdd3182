//! Running daemon bench jobs: submitting, following progress, merging the results of several
//! jobs into one; perplexity.

use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use minerva_proto::v1 as pb;
use minerva_proto::v1::benchmark_service_client::BenchmarkServiceClient;

use super::RunArgs;
use crate::{CliError, CliResult, Global};

/// Submits one job (these tests and prompt file, the rest from `args`) and follows it to its end.
pub(crate) async fn run_job(
    global: &Global,
    client: &mut BenchmarkServiceClient<tonic::transport::Channel>,
    args: &RunArgs,
    tests: Vec<String>,
    prompts: Option<PathBuf>,
) -> CliResult<pb::BenchResult> {
    let spec = pb::BenchJobSpec {
        models: args.models.clone(),
        tests,
        prompts_file: prompts
            .as_ref()
            .map(|p| {
                std::path::absolute(p)
                    .unwrap_or_else(|_| p.clone())
                    .display()
                    .to_string()
            })
            .unwrap_or_default(),
        runs: Some(args.runs),
        warmup_runs: Some(args.warmup),
        concurrency: Some(args.concurrency),
        options: (args.threads.is_some()
            || args.ctx.is_some()
            || args.gpu_layers.is_some()
            || args.draft.is_some())
        .then(|| pb::LoadOptions {
            threads: args.threads,
            context_length: args.ctx,
            gpu_layers: args.gpu_layers,
            backend: None,
            draft_model: args.draft.clone(),
        }),
        seed: Some(args.seed),
        backends: args.backend.clone(),
        prompt_cache: args.prompt_cache,
        speculative: args.speculative,
    };
    let id = client.submit(spec).await?.into_inner().id;
    let result = follow(client, &id, !global.json && !args.csv).await?;
    if result.status != "done" {
        return Err(CliError(format!(
            "benchmark {id} {}: {}",
            result.status, result.error
        )));
    }
    Ok(result)
}

/// One result from the results of several jobs run one after another: their tests in order,
/// each model's first load record, resources over all of them (peaks the highest, means
/// weighted by samples). The id lists every job's.
pub(crate) fn merge_results(mut parts: Vec<pb::BenchResult>) -> pb::BenchResult {
    let mut out = parts.remove(0);
    for r in parts {
        out.id = format!("{},{}", out.id, r.id);
        for load in r.loads {
            if !out
                .loads
                .iter()
                .any(|l| l.model == load.model && l.backend == load.backend)
            {
                out.loads.push(load);
            }
        }
        out.tests.extend(r.tests);
        if let (Some(a), Some(b)) = (out.resources.as_mut(), r.resources) {
            merge_resources(a, b);
        }
        if let (Some(a), Some(b)) = (out.spec.as_mut(), r.spec) {
            a.tests.extend(b.tests);
            if a.prompts_file.is_empty() {
                a.prompts_file = b.prompts_file;
            }
        }
        out.finished_unix_s = r.finished_unix_s;
    }
    out
}

pub(crate) fn merge_resources(a: &mut pb::BenchResources, b: pb::BenchResources) {
    let weighted = |x: f64, nx: u32, y: f64, ny: u32| {
        let n = f64::from(nx) + f64::from(ny);
        if n > 0.0 {
            (x * f64::from(nx) + y * f64::from(ny)) / n
        } else {
            0.0
        }
    };
    a.rss_peak_bytes = a.rss_peak_bytes.max(b.rss_peak_bytes);
    a.rss_mean_bytes = weighted(
        a.rss_mean_bytes as f64,
        a.samples,
        b.rss_mean_bytes as f64,
        b.samples,
    ) as u64;
    a.cpu_percent_mean = weighted(a.cpu_percent_mean, a.samples, b.cpu_percent_mean, b.samples);
    a.cpu_percent_peak = a.cpu_percent_peak.max(b.cpu_percent_peak);
    a.samples += b.samples;
    for g in b.gpus {
        match a.gpus.iter_mut().find(|x| x.index == g.index) {
            Some(x) => {
                let (nx, ng) = (x.samples, g.samples);
                x.memory_used_peak_bytes = x.memory_used_peak_bytes.max(g.memory_used_peak_bytes);
                x.memory_used_mean_bytes = weighted(
                    x.memory_used_mean_bytes as f64,
                    nx,
                    g.memory_used_mean_bytes as f64,
                    ng,
                ) as u64;
                x.utilization_percent_mean = weighted(
                    x.utilization_percent_mean,
                    nx,
                    g.utilization_percent_mean,
                    ng,
                );
                x.utilization_percent_peak =
                    x.utilization_percent_peak.max(g.utilization_percent_peak);
                x.power_watts_mean = match (x.power_watts_mean, g.power_watts_mean) {
                    (Some(p), Some(q)) => Some(weighted(p, nx, q, ng)),
                    (p, q) => p.or(q),
                };
                x.power_watts_peak = match (x.power_watts_peak, g.power_watts_peak) {
                    (Some(p), Some(q)) => Some(p.max(q)),
                    (p, q) => p.or(q),
                };
                x.samples += ng;
            }
            None => a.gpus.push(g),
        }
    }
}

pub(crate) async fn perplexity(
    global: &Global,
    client: &mut BenchmarkServiceClient<tonic::transport::Channel>,
    model: String,
    file: &Path,
    chunk: u32,
    options: pb::LoadOptions,
) -> CliResult {
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError(format!("cannot read {}: {e}", file.display())))?;
    let mut stream = client
        .perplexity(pb::PerplexityRequest {
            model,
            text,
            chunk_tokens: Some(chunk),
            options: Some(options),
        })
        .await?
        .into_inner();
    let bar = (!global.json).then(|| {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template(
                "perplexity [{bar:30}] {pos}/{len} chunks {msg} ({elapsed})",
            )
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    });
    while let Some(p) = stream.message().await? {
        if let Some(b) = &bar {
            b.set_length(u64::from(p.chunks_total));
            b.set_position(u64::from(p.chunks_done));
            b.set_message(format!("ppl {:.4}", p.perplexity));
        }
        if p.done {
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            if global.json {
                println!("{}", serde_json::to_string_pretty(&p)?);
            } else {
                println!(
                    "perplexity {:.4} over {} tokens ({} chunks of {}, second halves scored; text {} tokens) in {:.1} s",
                    p.perplexity,
                    p.tokens_scored,
                    p.chunks_total,
                    p.chunk_tokens,
                    p.text_tokens,
                    p.elapsed_ms / 1e3
                );
            }
            return Ok(());
        }
    }
    Err(CliError(
        "the daemon ended the perplexity stream without a result".into(),
    ))
}

/// Watches the job to its end with a progress bar; Ctrl-C cancels it.
pub(crate) async fn follow(
    client: &mut BenchmarkServiceClient<tonic::transport::Channel>,
    id: &str,
    show: bool,
) -> CliResult<pb::BenchResult> {
    let mut stream = client
        .watch(pb::BenchJobRef { id: id.into() })
        .await?
        .into_inner();
    let bar = if show {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} bench {prefix} [{bar:30}] {pos}/{len} requests {msg} ({elapsed})",
            )
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.set_prefix(id.to_string());
        b.enable_steady_tick(std::time::Duration::from_millis(200));
        Some(b)
    } else {
        None
    };
    loop {
        let msg = tokio::select! {
            m = stream.message() => m?,
            _ = tokio::signal::ctrl_c() => {
                let _ = client.cancel(pb::BenchJobRef { id: id.into() }).await;
                if let Some(b) = &bar { b.abandon_with_message("cancelled"); }
                return Err(CliError(format!("cancelled benchmark {id}")));
            }
        };
        let Some(p) = msg else {
            return Err(CliError(format!(
                "the daemon ended the watch of {id} without a result"
            )));
        };
        if let Some(b) = &bar {
            b.set_length(u64::from(p.requests_total));
            b.set_position(u64::from(p.requests_done));
            b.set_message(format!("{} {} {}", p.model, p.test, p.message));
        }
        if let Some(done) = p.done {
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            return Ok(done);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::testutil::result;

    #[test]
    fn results_of_several_jobs_merge_into_one() {
        let load = |backend: &str, ms: f64| pb::BenchModelLoad {
            model: "m".into(),
            backend: backend.into(),
            load_ms: ms,
            ..Default::default()
        };
        let res = |peak: u64, mean: u64, cpu: f64, samples: u32| pb::BenchResources {
            rss_peak_bytes: peak,
            rss_mean_bytes: mean,
            cpu_percent_mean: cpu,
            cpu_percent_peak: cpu,
            samples,
            ..Default::default()
        };
        let mut a = result("minerva", 100.0);
        a.id = "1".into();
        a.loads = vec![load("llama.cpp", 50.0)];
        a.resources = Some(res(300, 200, 100.0, 1));
        a.finished_unix_s = 1.0;
        let mut b = result("minerva", 90.0);
        b.id = "2".into();
        b.tests[0].test = "pp8".into();
        b.loads = vec![load("llama.cpp", 0.0), load("candle", 20.0)];
        b.resources = Some(res(100, 100, 200.0, 3));
        b.finished_unix_s = 2.0;
        let m = merge_results(vec![a, b]);
        assert_eq!(m.id, "1,2");
        let tests: Vec<&str> = m.tests.iter().map(|t| t.test.as_str()).collect();
        assert_eq!(tests, ["tg8", "pp8"]);
        // Each model and backend once, with the load that loaded it.
        assert_eq!(m.loads.len(), 2);
        assert_eq!(
            (m.loads[0].backend.as_str(), m.loads[0].load_ms),
            ("llama.cpp", 50.0)
        );
        assert_eq!(m.loads[1].backend, "candle");
        let r = m.resources.unwrap();
        assert_eq!(
            (r.rss_peak_bytes, r.rss_mean_bytes, r.samples),
            (300, 125, 4)
        );
        assert_eq!((r.cpu_percent_mean, r.cpu_percent_peak), (175.0, 200.0));
        assert_eq!(m.finished_unix_s, 2.0);
    }
}
