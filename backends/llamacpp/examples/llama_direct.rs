//! Baseline for "what does the daemon add": greedy generation with llama-cpp-2 alone, in
//! process, timed the way minervad reports it (TTFT = prompt processing + first sample; decode
//! tokens/s over the tokens after the first).
//!
//! cargo run --release -p minerva-llamacpp --example llama_direct -- MODEL.gguf "PROMPT" N THREADS [--chat]

use std::num::NonZeroU32;
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        return Err("usage: llama_direct MODEL.gguf PROMPT N THREADS [--chat]".into());
    }
    let (path, prompt, n, threads) = (
        &args[1],
        &args[2],
        args[3].parse::<usize>()?,
        args[4].parse::<i32>()?,
    );
    let chat = args.get(5).is_some_and(|a| a == "--chat");
    llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default().with_logs_enabled(false));
    let backend = LlamaBackend::init()?;
    let t_load = Instant::now();
    let model = LlamaModel::load_from_file(&backend, path, &LlamaModelParams::default())?;
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(4096))
        .with_n_batch(2048)
        .with_n_ubatch(512)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let mut ctx = model.new_context(&backend, params)?;
    let load_ms = t_load.elapsed().as_secs_f64() * 1e3;
    let text = if chat {
        // SmolLM2's own template, rendered for one user message (as minervad renders it).
        format!("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n")
    } else {
        prompt.clone()
    };
    let vocab = model.vocab();
    let started = Instant::now();
    let tokens = vocab.tokenize(text.as_bytes(), true, true);
    let mut batch = LlamaBatch::new(2048, 1);
    for (i, t) in tokens.iter().enumerate() {
        batch.add(*t, i as i32, &[0], i + 1 == tokens.len())?;
    }
    ctx.decode(&mut batch)?;
    let prompt_done = Instant::now();
    let mut idx = batch.n_tokens() - 1;
    let mut pos = tokens.len() as i32;
    let mut out = Vec::new();
    let mut first = None;
    let mut last = started;
    let mut generated = 0usize;
    while generated < n {
        let logits = ctx.get_logits_ith(idx);
        let mut best = 0usize;
        for (i, &l) in logits.iter().enumerate() {
            if l > logits[best] {
                best = i;
            }
        }
        let tok = LlamaToken(best as i32);
        let now = Instant::now();
        first.get_or_insert(now);
        last = now;
        generated += 1;
        if vocab.is_eog(tok) || generated == n {
            break;
        }
        out.extend(vocab.token_to_piece(tok, false, None));
        batch.clear();
        batch.add(tok, pos, &[0], true)?;
        pos += 1;
        idx = 0;
        ctx.decode(&mut batch)?;
    }
    let first = first.unwrap_or(started);
    let ms = |a: Instant, b: Instant| b.duration_since(a).as_secs_f64() * 1e3;
    let decode_tps = (generated - 1) as f64 * 1e3 / ms(first, last);
    println!(
        "{{\"load_ms\":{load_ms:.1},\"prompt_tokens\":{},\"prompt_ms\":{:.2},\"ttft_ms\":{:.2},\"generated_tokens\":{generated},\"decode_tokens_per_s\":{decode_tps:.2},\"total_ms\":{:.1}}}",
        tokens.len(),
        ms(started, prompt_done),
        ms(started, first),
        ms(started, last)
    );
    eprintln!("{}", String::from_utf8_lossy(&out));
    Ok(())
}
