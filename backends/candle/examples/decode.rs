//! Times the candle backend in process (no daemon), for profiling its kernels:
//! `cargo run --release -p minerva-candle --example decode -- MODEL [PROMPT_TOKENS] [NEW_TOKENS]`
//! e.g. under `perf record -g`. Prints prompt and decode tokens/s. Not a benchmark: `minerva bench`
//! is (it runs the daemon path with the peer beside it).

use std::time::Instant;

use minerva_candle::CandleModel;
use minerva_core::{ContextOptions, ForwardChunk, Model, SeqId};

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .expect("usage: decode MODEL [PROMPT_TOKENS] [NEW_TOKENS]");
    let n_prompt: usize = args.next().map_or(64, |s| s.parse().unwrap());
    let n_new: usize = args.next().map_or(64, |s| s.parse().unwrap());
    let t = Instant::now();
    let model = CandleModel::load(std::path::Path::new(&path)).unwrap();
    eprintln!("load {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(n_prompt);
    let mut prompt = model.tokenize(&text, true).unwrap();
    prompt.truncate(n_prompt);
    let mut ctx = model
        .new_context(&ContextOptions {
            context_length: 2048,
            threads: 2,
            batch_size: 2048,
            max_sequences: 1,
            kv_per_sequence: false,
        })
        .unwrap();
    let mut logits = Vec::new();
    let seq = SeqId(0);
    let t = Instant::now();
    ctx.forward(&[ForwardChunk::last(seq, 0, &prompt)], &mut logits)
        .unwrap();
    let pp = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let start = prompt.len() as u32;
    for pos in start..start + n_new as u32 {
        let next = logits[0]
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i as u32)
            .unwrap();
        ctx.forward(&[ForwardChunk::last(seq, pos, &[next])], &mut logits)
            .unwrap();
    }
    let tg = t.elapsed().as_secs_f64();
    println!(
        "prompt {} tokens: {:.1} tok/s; decode {n_new} tokens: {:.1} tok/s",
        prompt.len(),
        prompt.len() as f64 / pp,
        n_new as f64 / tg
    );
}
