//! Log-probabilities through the daemon and CLI on the real SmolLM2 GGUF: each equals the
//! log-softmax of the logits llama.cpp computes for the same tokens (here in-process, with no
//! Minerva code), for the generated tokens and for the prompt's; the alternatives are the
//! likeliest tokens, sorted; sampling settings do not change them.

use std::num::NonZeroU32;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use minerva_e2e::{model_path, Daemon, MODEL};

const PROMPT: &str = "The three primary colors are";
/// The daemon decodes one token per step and llama.cpp here takes them all in one batch; at
/// these sizes both use the same kernels, so only rounding noise is allowed.
const TOLERANCE: f64 = 1e-3;

/// llama.cpp's tokens for `PROMPT` and the log-softmax (in f64) of its logits after each token
/// of `PROMPT` followed by `then`.
fn llama_cpp_log_softmax(then: &[u32]) -> (Vec<u32>, Vec<Vec<f64>>) {
    let backend = LlamaBackend::init().expect("llama backend");
    let model = LlamaModel::load_from_file(&backend, model_path(), &LlamaModelParams::default())
        .expect("load");
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(512))
        .with_n_threads(2)
        .with_n_threads_batch(2);
    let mut ctx = model.new_context(&backend, params).expect("context");
    let prompt: Vec<u32> = model
        .vocab()
        .tokenize(PROMPT.as_bytes(), true, true)
        .iter()
        .map(|t| t.0 as u32)
        .collect();
    let all: Vec<u32> = prompt.iter().chain(then).copied().collect();
    let mut batch = LlamaBatch::new(all.len(), 1);
    for (i, &t) in all.iter().enumerate() {
        batch
            .add(LlamaToken(t as i32), i as i32, &[0], true)
            .expect("batch");
    }
    ctx.decode(&mut batch).expect("decode");
    let rows = (0..all.len())
        .map(|i| {
            let l = ctx.get_logits_ith(i as i32);
            let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let z = l.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln() + max;
            l.iter().map(|&x| x as f64 - z).collect()
        })
        .collect();
    (prompt, rows)
}

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().expect("a number")
}

/// Checks one position's logprobs against llama.cpp's row; returns the largest difference.
fn check_position(what: &str, id: u32, got: &serde_json::Value, row: &[f64], top: usize) -> f64 {
    let mut worst = (f(&got["logprob"]) - row[id as usize]).abs();
    assert!(f(&got["logprob"]) <= 0.0, "{what}: logprob above 0");
    let alternatives = got["top"].as_array().expect("top");
    assert_eq!(alternatives.len(), top, "{what}: alternatives");
    let mut sorted: Vec<f64> = row.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    for (k, a) in alternatives.iter().enumerate() {
        let lp = f(&a["logprob"]);
        worst = worst.max((lp - row[a["id"].as_u64().unwrap() as usize]).abs());
        // The k-th likeliest: its value is the k-th largest of the row.
        worst = worst.max((lp - sorted[k]).abs());
        if k > 0 {
            assert!(
                lp <= f(&alternatives[k - 1]["logprob"]),
                "{what}: not sorted"
            );
        }
    }
    assert!(worst < TOLERANCE, "{what}: off by {worst}");
    worst
}

#[test]
fn logprobs_are_the_log_softmax_of_llama_cpp_logits_for_prompt_and_answer() {
    let d = Daemon::start(&[]);
    let run = d.cli_json(&[
        "run",
        MODEL,
        PROMPT,
        "--raw",
        "--max-tokens",
        "8",
        "--logprobs",
        "5",
        "--prompt-logprobs",
    ]);
    let tokens = run["tokens"].as_array().expect("tokens");
    let generated: Vec<u32> = tokens
        .iter()
        .map(|t| t["id"].as_u64().unwrap() as u32)
        .collect();
    let (prompt, rows) = llama_cpp_log_softmax(&generated);

    // The prompt: entry i is token i + 1, given the tokens before it.
    let p = &run["prompt_logprobs"];
    let ids: Vec<u32> = p["ids"]
        .as_array()
        .expect("prompt ids")
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(
        ids,
        prompt[1..],
        "the daemon tokenized the prompt as llama.cpp"
    );
    let mut worst: f64 = 0.0;
    for (i, (&id, lp)) in ids
        .iter()
        .zip(p["logprobs"].as_array().unwrap())
        .enumerate()
    {
        let what = format!("prompt token {}", i + 1);
        worst = worst.max(check_position(&what, id, lp, &rows[i], 5));
    }
    // Greedy: each generated token is the likeliest.
    for (g, t) in tokens.iter().enumerate() {
        let id = generated[g];
        let lp = &t["logprobs"];
        let what = format!("generated token {g}");
        worst = worst.max(check_position(
            &what,
            id,
            lp,
            &rows[prompt.len() - 1 + g],
            5,
        ));
        assert_eq!(lp["top"][0]["id"].as_u64(), Some(u64::from(id)), "{what}");
    }
    eprintln!("largest difference from llama.cpp's log-softmax: {worst:.2e}");

    // Sampling settings change the draw, not the model's logprobs: the same first token drawn
    // with a penalty and temperature reports the same figures.
    let sampled = d.cli_json(&[
        "run",
        MODEL,
        PROMPT,
        "--raw",
        "--max-tokens",
        "1",
        "--logprobs",
        "3",
        "--temperature",
        "0.7",
        "--repeat-penalty",
        "1.3",
        "--seed",
        "5",
    ]);
    let first = &sampled["tokens"][0];
    let id = first["id"].as_u64().unwrap() as u32;
    check_position(
        "sampled token",
        id,
        &first["logprobs"],
        &rows[prompt.len() - 1],
        3,
    );
    assert!(sampled.get("prompt_logprobs").is_none());
}
