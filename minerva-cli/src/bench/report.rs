//! Printing bench results: tables, CSV, Minerva/peer ratios, comparisons of result files and
//! the chart verb's file handling.

use std::path::Path;

use minerva_proto::v1 as pb;
use serde::Serialize;

use crate::{render, CliError, CliResult, Global};

/// `--json` output when a peer ran: both results and the ratios.
#[derive(Serialize, serde::Deserialize)]
pub(crate) struct Comparison {
    pub(crate) minerva: pb::BenchResult,
    pub(crate) peer: pb::BenchResult,
    /// Minerva / peer.
    pub(crate) ratio: Vec<Ratio>,
}

#[derive(Serialize, serde::Deserialize, Debug, Clone)]
pub(crate) struct Ratio {
    pub(crate) model: String,
    pub(crate) test: String,
    pub(crate) metric: String,
    /// Which summary figure: "mean" for rates, "p50" for latencies.
    pub(crate) stat: String,
    pub(crate) a: f64,
    pub(crate) b: f64,
    /// b / a: for `--peer`, Minerva / peer.
    pub(crate) ratio: f64,
}

pub(crate) fn metric<'a>(t: &'a pb::BenchTest, name: &str) -> Option<&'a pb::BenchSummary> {
    t.metrics
        .iter()
        .find(|m| m.name == name)
        .and_then(|m| m.summary.as_ref())
}

/// Ratios b/a for every test both results have.
pub(crate) fn ratios(a: &pb::BenchResult, b: &pb::BenchResult) -> Vec<Ratio> {
    let mut out = Vec::new();
    for tb in &b.tests {
        let Some(ta) = a
            .tests
            .iter()
            .find(|t| t.test == tb.test && (t.model == tb.model || a.tests.len() == b.tests.len()))
        else {
            continue;
        };
        for (name, stat) in [
            ("decode_tokens_per_s", "mean"),
            ("prompt_tokens_per_s", "mean"),
            ("ttft_ms", "p50"),
            ("tpot_ms", "p50"),
            ("e2e_ms", "p50"),
        ] {
            let (Some(sa), Some(sb)) = (metric(ta, name), metric(tb, name)) else {
                continue;
            };
            let pick = |s: &pb::BenchSummary| if stat == "mean" { s.mean } else { s.p50 };
            let (va, vb) = (pick(sa), pick(sb));
            if va > 0.0 && sa.n > 0 && sb.n > 0 {
                out.push(Ratio {
                    model: tb.model.clone(),
                    test: tb.test.clone(),
                    metric: name.into(),
                    stat: stat.into(),
                    a: va,
                    b: vb,
                    ratio: vb / va,
                });
            }
        }
    }
    out
}

pub(crate) fn ratio_table(r: &[Ratio]) -> String {
    let rows: Vec<Vec<String>> = r
        .iter()
        .map(|x| {
            vec![
                x.test.clone(),
                format!("{} ({})", x.metric, x.stat),
                format!("{:.2}", x.a),
                format!("{:.2}", x.b),
                format!("{:.3}", x.ratio),
            ]
        })
        .collect();
    render::table(&["TEST", "METRIC", "A", "B", "B/A"], &rows)
}

pub(crate) fn load_result(path: &Path) -> CliResult<pb::BenchResult> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError(format!("cannot read {}: {e}", path.display())))?;
    // A `--peer` output holds both systems: take Minerva's side.
    if let Ok(c) = serde_json::from_str::<Comparison>(&text) {
        return Ok(c.minerva);
    }
    serde_json::from_str(&text)
        .map_err(|e| CliError(format!("{} is not a benchmark result: {e}", path.display())))
}

pub(crate) fn compare_files(global: &Global, a: &Path, b: &Path) -> CliResult {
    let (ra, rb) = (load_result(a)?, load_result(b)?);
    let r = ratios(&ra, &rb);
    if r.is_empty() {
        return Err(CliError("the two results share no test".into()));
    }
    if global.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "A = {} ({})\nB = {} ({})",
            a.display(),
            system(&ra),
            b.display(),
            system(&rb)
        );
        print!("{}", ratio_table(&r));
    }
    Ok(())
}

pub(crate) fn system(r: &pb::BenchResult) -> String {
    r.machine
        .as_ref()
        .map(|m| m.system.clone())
        .unwrap_or_default()
}

pub(crate) fn print_result(global: &Global, r: &pb::BenchResult) -> CliResult {
    print_result_of(global, r, "daemon")
}

/// [`print_result`] of a result whose RSS and CPU are `process`'s ("daemon", "peer").
pub(crate) fn print_result_of(global: &Global, r: &pb::BenchResult, process: &str) -> CliResult {
    if global.json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    let m = r.machine.clone().unwrap_or_default();
    println!(
        "{} — job {} {}{}",
        m.system,
        r.id,
        r.status,
        if r.error.is_empty() {
            String::new()
        } else {
            format!(": {}", r.error)
        }
    );
    for l in &r.loads {
        let mut settings: Vec<String> = l
            .settings
            .iter()
            .map(|(k, v)| format!(", {k} {v}"))
            .collect();
        settings.sort();
        println!(
            "  {}: {} {}, load {:.0} ms (map {:.0} ms, context {:.0} ms){}, {} threads, ctx {}{}",
            l.model,
            l.quantization,
            render::bytes(l.file_size_bytes),
            l.load_ms,
            l.mmap_ms,
            l.context_ms,
            if l.loaded_by_job {
                ""
            } else {
                " [already loaded]"
            },
            l.threads,
            l.context_length,
            settings.concat()
        );
    }
    // The speculation column only where a test speculated.
    let speculated = r.tests.iter().any(|t| t.max_draft > 0);
    let rows: Vec<Vec<String>> = r
        .tests
        .iter()
        .map(|t| {
            let f = |name: &str, pick: fn(&pb::BenchSummary) -> f64| {
                metric(t, name).map_or("-".into(), |s| format!("{:.1}", pick(s)))
            };
            let sd = |name: &str| {
                metric(t, name).map_or("-".into(), |s| format!("{:.1}±{:.1}", s.mean, s.stddev))
            };
            let mut row = vec![
                t.test.clone(),
                format!("{}+{}", t.prompt_tokens, t.new_tokens),
                t.concurrency.to_string(),
                f("ttft_ms", |s| s.p50),
                f("ttft_ms", |s| s.p99),
                f("tpot_ms", |s| s.p50),
                sd("prompt_tokens_per_s"),
                sd("decode_tokens_per_s"),
                format!("{:.1}", t.aggregate_tokens_per_s),
                t.deterministic
                    .map_or("-".into(), |d| if d { "yes".into() } else { "NO".into() }),
            ];
            if speculated {
                row.push(drafts(t));
            }
            row
        })
        .collect();
    let mut header = vec![
        "TEST",
        "PP+TG",
        "CONC",
        "TTFT p50",
        "TTFT p99",
        "TPOT p50",
        "PROMPT tok/s",
        "DECODE tok/s",
        "AGG tok/s",
        "DETERMINISTIC",
    ];
    if speculated {
        header.push("DRAFTS TAKEN (SPEEDUP, SAME TOKENS)");
    }
    print!("{}", render::table(&header, &rows));
    if r.spec.as_ref().is_some_and(|s| s.prompt_cache) {
        println!("  prompt cache on: runs reused the prompt prefix earlier requests left in the KV cache (cached_prompt_tokens per run in --json and --csv)");
    }
    if let Some(res) = r.resources.as_ref().filter(|r| r.samples == 0) {
        // A peer's result where its process could not be sampled (no /proc), or an older one.
        println!("  RSS and CPU not sampled; GPU {}", res.gpu);
    } else if let Some(res) = &r.resources {
        println!(
            "  {process} RSS peak {} mean {}, CPU mean {:.0}% peak {:.0}% ({} samples); GPU {}",
            render::bytes(res.rss_peak_bytes),
            render::bytes(res.rss_mean_bytes),
            res.cpu_percent_mean,
            res.cpu_percent_peak,
            res.samples,
            res.gpu
        );
        for g in &res.gpus {
            let power = match (g.power_watts_mean, g.power_watts_peak) {
                (Some(mean), Some(peak)) => format!(", power mean {mean:.0} W peak {peak:.0} W"),
                _ => ", power not reported".into(),
            };
            println!(
                "  GPU {} {}: utilisation mean {:.0}% peak {:.0}%, memory used peak {} of {}{power} ({} samples)",
                g.index,
                g.name,
                g.utilization_percent_mean,
                g.utilization_percent_peak,
                render::bytes(g.memory_used_peak_bytes),
                render::bytes(g.memory_total_bytes),
                g.samples
            );
        }
    }
    Ok(())
}

/// Fills each "TEST/spec" test's speedup over TEST and whether it gave TEST's tokens, where
/// the result does not say (a peer's: the daemon fills its own).
pub(crate) fn fill_speedups(r: &mut pb::BenchResult) {
    let plain: Vec<pb::BenchTest> = r
        .tests
        .iter()
        .filter(|t| t.max_draft == 0)
        .cloned()
        .collect();
    for t in r.tests.iter_mut().filter(|t| t.speedup.is_none()) {
        let Some(name) = t.test.strip_suffix("/spec") else {
            continue;
        };
        if let Some(p) = plain.iter().find(|p| p.test == name && p.model == t.model) {
            minerva_proto::scenarios::compare_with_plain(t, p);
        }
    }
}

/// A speculating test's drafts: "412/530 (78%), 1.34x, same" ("-" for a plain test).
fn drafts(t: &pb::BenchTest) -> String {
    if t.max_draft == 0 {
        return "-".into();
    }
    let mut out = format!(
        "{}/{} ({:.0}%)",
        t.accepted_tokens,
        t.drafted_tokens,
        t.acceptance_rate * 100.0
    );
    if let Some(x) = t.speedup {
        out.push_str(&format!(", {x:.2}x"));
    }
    if let Some(same) = t.same_tokens_as_plain {
        out.push_str(if same { ", same" } else { ", OTHER" });
    }
    out
}

pub(crate) const CSV_RUN_HEADER: &str = "system,model,test,run,client,prompt_tokens,generated_tokens,ttft_ms,tpot_ms,e2e_ms,prompt_tokens_per_s,decode_tokens_per_s,queue_ms,tokens_sha256,cached_prompt_tokens,drafted_tokens,accepted_tokens\n";
pub(crate) const CSV_SUMMARY_HEADER: &str =
    "system,model,test,metric,n,mean,stddev,min,p50,p90,p99,max\n";

pub(crate) fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Two CSV tables, separated by a blank line: one row per request, then one row per test
/// and metric (the schema is in the README).
pub(crate) fn csv(r: &pb::BenchResult) -> String {
    csv_rows(r, true)
}

pub(crate) fn csv_rows(r: &pb::BenchResult, headers: bool) -> String {
    let sys = csv_field(&system(r));
    let mut out = String::new();
    if headers {
        out.push_str(CSV_RUN_HEADER);
    }
    for t in &r.tests {
        for x in &t.runs {
            out.push_str(&format!(
                "{sys},{},{},{},{},{},{},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{},{},{},{}\n",
                csv_field(&t.model),
                csv_field(&t.test),
                x.run,
                x.client,
                x.prompt_tokens,
                x.generated_tokens,
                x.ttft_ms,
                x.tpot_ms,
                x.e2e_ms,
                x.prompt_tokens_per_s,
                x.decode_tokens_per_s,
                x.queue_ms,
                x.tokens_sha256,
                x.cached_prompt_tokens,
                x.drafted_tokens,
                x.accepted_tokens
            ));
        }
    }
    out.push('\n');
    if headers {
        out.push_str(CSV_SUMMARY_HEADER);
    }
    for t in &r.tests {
        for m in &t.metrics {
            let s = m.summary.unwrap_or_default();
            out.push_str(&format!(
                "{sys},{},{},{},{},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3}\n",
                csv_field(&t.model),
                csv_field(&t.test),
                m.name,
                s.n,
                s.mean,
                s.stddev,
                s.min,
                s.p50,
                s.p90,
                s.p99,
                s.max
            ));
        }
    }
    out
}

pub(crate) fn chart_file(result: &Path, output: &Path) -> CliResult {
    let text = std::fs::read_to_string(result)
        .map_err(|e| CliError(format!("cannot read {}: {e}", result.display())))?;
    let (minerva, peer) = match serde_json::from_str::<Comparison>(&text) {
        Ok(c) => (c.minerva, Some(c.peer)),
        Err(_) => (load_result(result)?, None),
    };
    if output.extension().is_some_and(|e| e != "svg") {
        return Err(CliError("only .svg output is supported".into()));
    }
    let svg = crate::chart::render(&minerva, peer.as_ref())?;
    std::fs::write(output, svg)?;
    println!("wrote {}", output.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::testutil::result;

    #[test]
    fn ratios_are_b_over_a() {
        let r = ratios(&result("peer", 100.0), &result("minerva", 97.0));
        assert_eq!(r.len(), 1);
        assert!((r[0].ratio - 0.97).abs() < 1e-12);
    }

    #[test]
    fn csv_has_a_row_per_request_and_per_metric() {
        let c = csv(&result("minerva 0.1.0 (llama.cpp)", 10.0));
        let lines: Vec<&str> = c.lines().collect();
        assert_eq!(lines[0], CSV_RUN_HEADER.trim_end());
        assert!(lines[1].starts_with("minerva 0.1.0 (llama.cpp),m,tg8,0,0,"));
        assert_eq!(lines[2], "");
        assert_eq!(lines[3], CSV_SUMMARY_HEADER.trim_end());
        assert!(lines[4].contains(",decode_tokens_per_s,3,10.000,"));
    }
}
