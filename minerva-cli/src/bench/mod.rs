//! `minerva bench`: submit a benchmark job to the daemon, follow it with a progress bar, print
//! a table (or JSON / CSV), optionally run the llama.cpp peer on the same tests and print the
//! ratios; `show`, `list`, `cancel`, `compare`, `chart`.
//!
//! [`job`] runs and follows daemon jobs (and perplexity), [`peer`] installs and runs the
//! llama.cpp peer, [`report`] prints tables, CSV, ratios and reads result files; this module
//! holds the arguments and the dispatch.

mod job;
mod peer;
mod report;
mod sampler;

use std::path::PathBuf;

use clap::{Args, Subcommand};
use minerva_proto::v1 as pb;
use minerva_proto::v1::benchmark_service_client::BenchmarkServiceClient;

use crate::{client, render, CliError, CliResult, Global};

use job::{merge_results, perplexity, run_job};
use peer::{install_peer, interleave_units, run_peer, unit_tests};
use report::{
    chart_file, compare_files, csv, csv_rows, fill_speedups, print_result, print_result_of,
    ratio_table, ratios, Comparison,
};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    pub(crate) command: Option<BenchCommand>,
    #[command(flatten)]
    pub(crate) run: RunArgs,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Models to benchmark (store names, .gguf paths or model folders).
    #[arg(required = true)]
    pub(crate) models: Vec<String>,
    /// Tests, comma-separated: standard (greeting, knowledge, code, long), grounded (rename,
    /// quote, typos, json: answers that repeat their input), any of those eight, ppN, tgN,
    /// ppN+tgM [default: standard].
    #[arg(long, value_delimiter = ',')]
    pub(crate) tests: Vec<String>,
    /// JSONL prompts file ({"prompt": "...", "max_tokens": N} per line), read by the daemon.
    #[arg(long)]
    pub(crate) prompts: Option<PathBuf>,
    /// Measured runs per test.
    #[arg(long, default_value_t = 3)]
    pub(crate) runs: u32,
    /// Unmeasured warm-up runs per test.
    #[arg(long, default_value_t = 1)]
    pub(crate) warmup: u32,
    /// Clients at once.
    #[arg(long, default_value_t = 1)]
    pub(crate) concurrency: u32,
    #[arg(long)]
    pub(crate) threads: Option<u32>,
    #[arg(long)]
    pub(crate) ctx: Option<u32>,
    /// Layers on the GPU [default: the daemon's, all of them when it has a GPU].
    #[arg(long)]
    pub(crate) gpu_layers: Option<u32>,
    /// Backends to run every model on, comma-separated (llama.cpp, candle, mlx) [default: each
    /// model's default backend].
    #[arg(long, value_delimiter = ',')]
    pub(crate) backend: Vec<String>,
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Let requests reuse prompt prefixes cached by earlier ones, as clients' requests do
    /// [default: off, every request computes its whole prompt].
    #[arg(long, conflicts_with = "peer")]
    pub(crate) prompt_cache: bool,
    /// Run every test again with speculative decoding, drafting at most N tokens a step
    /// (1-16), as TEST/spec with its acceptance and its speedup: with the --draft model where
    /// one is given, else by prompt lookup; a llama.cpp peer runs llama-cpp-python's
    /// prompt-lookup drafter (N tokens) alike.
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "8")]
    pub(crate) speculative: Option<u32>,
    /// A draft model (same vocabulary) loaded beside each model for --speculative.
    #[arg(
        long,
        value_name = "MODEL",
        requires = "speculative",
        conflicts_with = "peer"
    )]
    pub(crate) draft: Option<String>,
    /// Also run this peer on the same model file and tests, and print Minerva/peer ratios.
    #[arg(long, value_parser = ["llama.cpp"])]
    pub(crate) peer: Option<String>,
    /// CSV instead of a table: one row per request, then one row per test and metric.
    #[arg(long, conflicts_with = "json")]
    pub(crate) csv: bool,
    /// Also write the JSON result to this file.
    #[arg(long, short)]
    pub(crate) output: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Perplexity of a model on a text file (chunks scored as llama.cpp's perplexity tool does).
    Perplexity {
        model: String,
        file: PathBuf,
        /// Tokens per chunk.
        #[arg(long, default_value_t = 512)]
        chunk: u32,
        #[arg(long)]
        threads: Option<u32>,
        #[arg(long)]
        ctx: Option<u32>,
        /// Layers on the GPU [default: the daemon's, all of them when it has a GPU].
        #[arg(long)]
        gpu_layers: Option<u32>,
        /// Backend (llama.cpp, candle, mlx) [default: by format].
        #[arg(long)]
        backend: Option<String>,
    },
    /// A job's result (running or finished).
    Show { id: String },
    /// Jobs, newest first.
    List,
    /// Stop a running job.
    Cancel { id: String },
    /// Ratio table B/A per test and metric, from two result files.
    Compare { a: PathBuf, b: PathBuf },
    /// An SVG chart of decode tokens/s and TTFT per model and test (peer beside it if present).
    Chart {
        result: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
    },
}

pub(crate) async fn bench(global: &Global, args: BenchArgs) -> CliResult {
    match args.command {
        Some(BenchCommand::Compare { a, b }) => return compare_files(global, &a, &b),
        Some(BenchCommand::Chart { result, output }) => return chart_file(&result, &output),
        _ => {}
    }
    let mut client = BenchmarkServiceClient::new(client::connect(global, true).await?);
    match args.command {
        Some(BenchCommand::Perplexity {
            model,
            file,
            chunk,
            threads,
            ctx,
            gpu_layers,
            backend,
        }) => {
            let options = pb::LoadOptions {
                threads,
                context_length: ctx,
                gpu_layers,
                backend,
                draft_model: None,
            };
            perplexity(global, &mut client, model, &file, chunk, options).await
        }
        Some(BenchCommand::Show { id }) => {
            let r = client.get(pb::BenchJobRef { id }).await?.into_inner();
            print_result(global, &r)
        }
        Some(BenchCommand::List) => {
            let l = client.list(pb::ListBenchJobsRequest {}).await?.into_inner();
            if global.json {
                println!("{}", serde_json::to_string_pretty(&l)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = l
                .jobs
                .iter()
                .map(|j| {
                    let spec = j.spec.clone().unwrap_or_default();
                    vec![
                        j.id.clone(),
                        j.status.clone(),
                        spec.models.join(","),
                        j.tests
                            .iter()
                            .map(|t| t.test.as_str())
                            .collect::<Vec<_>>()
                            .join(","),
                    ]
                })
                .collect();
            print!(
                "{}",
                render::table(&["ID", "STATUS", "MODELS", "TESTS"], &rows)
            );
            Ok(())
        }
        Some(BenchCommand::Cancel { id }) => {
            let r = client
                .cancel(pb::BenchJobRef { id: id.clone() })
                .await?
                .into_inner();
            if global.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else if r.cancelled {
                println!("cancelled {id}");
            } else {
                println!("{id} was not running");
            }
            Ok(())
        }
        Some(BenchCommand::Compare { .. } | BenchCommand::Chart { .. }) => Ok(()),
        None => run(global, &mut client, args.run).await,
    }
}

async fn run(
    global: &Global,
    client: &mut BenchmarkServiceClient<tonic::transport::Channel>,
    args: RunArgs,
) -> CliResult {
    if args.peer.is_some() && args.concurrency != 1 {
        return Err(CliError(
            "--peer llama.cpp runs one client at a time: use --concurrency 1".into(),
        ));
    }
    // With a peer, the two take turns test by test (a Minerva job of one test and the peer on
    // it), so a slow minute on a shared machine falls on both sides instead of on one, and who
    // goes first alternates (Minerva on the first test, the peer on the second, ...), so
    // whatever running first or second does to a side's figures falls on both alike.
    let units = if args.peer.is_some() {
        interleave_units(&args)
    } else {
        vec![(args.tests.clone(), args.prompts.clone())]
    };
    // The whole list is checked, and the peer installed (or found cached), before any job runs.
    let peer_tests = match args.peer {
        Some(_) => Some(
            units
                .iter()
                .map(|(names, prompts)| unit_tests(names, prompts.as_deref()))
                .collect::<CliResult<Vec<_>>>()?,
        ),
        None => None,
    };
    let python = match args.peer {
        Some(_) => Some(install_peer().await?),
        None => None,
    };
    let (mut results, mut peers) = (Vec::new(), Vec::new());
    for (i, (tests, prompts)) in units.into_iter().enumerate() {
        let (Some(python), Some(peer_tests)) = (&python, &peer_tests) else {
            results.push(run_job(global, client, &args, tests, prompts).await?);
            continue;
        };
        // The peer needs Minerva's load (file, threads, context, flash attention): the first
        // test runs Minerva first.
        if i % 2 == 1 {
            let loads = &results[0].loads;
            peers.push(run_peer(global, python, loads, &peer_tests[i], &args).await?);
            results.push(run_job(global, client, &args, tests, prompts).await?);
        } else {
            results.push(run_job(global, client, &args, tests, prompts).await?);
            let loads = &results[0].loads;
            peers.push(run_peer(global, python, loads, &peer_tests[i], &args).await?);
        }
    }
    let result = merge_results(results);
    let peer = (!peers.is_empty()).then(|| {
        let mut p = merge_results(peers);
        fill_speedups(&mut p);
        p
    });
    let out = match &peer {
        Some(p) => serde_json::to_string_pretty(&Comparison {
            minerva: result.clone(),
            peer: p.clone(),
            ratio: ratios(p, &result),
        })?,
        None => serde_json::to_string_pretty(&result)?,
    };
    if let Some(path) = &args.output {
        std::fs::write(path, &out)?;
    }
    if global.json {
        println!("{out}");
    } else if args.csv {
        print!("{}", csv(&result));
        if let Some(p) = &peer {
            print!("{}", csv_rows(p, false));
        }
    } else {
        print_result(global, &result)?;
        if let Some(p) = &peer {
            println!();
            print_result_of(global, p, "peer")?;
            println!("\nMinerva / llama.cpp (same file, threads, flash attention, tests, taking turns test by test, alternating who goes first; rates by mean, latencies by p50):");
            print!("{}", ratio_table(&ratios(p, &result)));
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod testutil {
    use minerva_proto::v1 as pb;

    /// A result of one test ("tg8" of model "m") with one decode figure and one run.
    pub(crate) fn result(system: &str, tps: f64) -> pb::BenchResult {
        pb::BenchResult {
            machine: Some(pb::BenchMachine {
                system: system.into(),
                ..Default::default()
            }),
            tests: vec![pb::BenchTest {
                model: "m".into(),
                test: "tg8".into(),
                metrics: vec![pb::BenchMetric {
                    name: "decode_tokens_per_s".into(),
                    summary: Some(pb::BenchSummary {
                        n: 3,
                        mean: tps,
                        p50: tps,
                        ..Default::default()
                    }),
                }],
                runs: vec![pb::BenchRun {
                    tokens_sha256: "ab".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }
}
