//! The pure-Rust backend against Hugging Face transformers: tiny random Mistral (sliding window
//! 16) and Llama models made by tests/fixtures/generate.py, with transformers' float32 logits and
//! greedy continuations. Mistral's weights exist as bf16 SafeTensors and as an f16 PyTorch .bin
//! holding the same values; Llama's folder has only a SentencePiece tokenizer.model.

use minerva_candle::CandleModel;
use minerva_core::{ContextOptions, ForwardChunk, Model, ModelFormat, SeqId};
use minerva_e2e::{argmax, fixture, max_diff, reference, Reference};
use serde_json::Value;

/// Largest difference allowed between our f32 logits and transformers' f32 logits.
const TOLERANCE: f32 = 1e-4;

fn options() -> ContextOptions {
    ContextOptions {
        context_length: 256,
        threads: 2,
        batch_size: 256,
        max_sequences: 2,
        kv_per_sequence: false,
    }
}

/// Prompt logits (every position), last-position logits, and a greedy continuation.
fn run(model: &CandleModel, p: &Reference) -> (Vec<u32>, Vec<f32>, Vec<u32>) {
    let vocab = model.info().vocab_size as usize;
    let mut ctx = model.new_context(&options()).unwrap();
    let mut out = Vec::new();
    ctx.forward(&[ForwardChunk::all(SeqId(0), 0, &p.input_ids)], &mut out)
        .unwrap();
    let all = out.swap_remove(0);
    assert_eq!(all.len(), p.input_ids.len() * vocab);
    let per_position: Vec<u32> = all.chunks_exact(vocab).map(argmax).collect();
    let last = all[all.len() - vocab..].to_vec();
    // Greedy through the step path: prompt once on a second sequence, then one token at a time.
    let mut logits = Vec::new();
    let seq = SeqId(1);
    ctx.forward(&[ForwardChunk::last(seq, 0, &p.input_ids)], &mut logits)
        .unwrap();
    let start = p.input_ids.len() as u32;
    let mut greedy = Vec::new();
    for pos in start..start + p.greedy.len() as u32 {
        let next = argmax(&logits[0]);
        greedy.push(next);
        ctx.forward(&[ForwardChunk::last(seq, pos, &[next])], &mut logits)
            .unwrap();
    }
    (per_position, last, greedy)
}

fn check_fixture(name: &str, format: ModelFormat) -> Vec<Vec<f32>> {
    let model = CandleModel::load(&fixture(name)).unwrap();
    assert_eq!(model.info().format, format);
    let mut lasts = Vec::new();
    for p in reference(&fixture(name)) {
        let ids = model.tokenize(&p.text, true).unwrap();
        assert_eq!(ids, p.input_ids, "{name}: tokens of {:?}", p.text);
        let (per_position, last, greedy) = run(&model, &p);
        let worst = max_diff(&last, &p.last_logits);
        println!("{name}: {:?}: max |logit diff| {worst:.2e}", p.text);
        assert!(
            worst <= TOLERANCE,
            "{name}: {:?}: logits differ by {worst}",
            p.text
        );
        assert_eq!(
            per_position, p.argmax,
            "{name}: argmax per position of {:?}",
            p.text
        );
        assert_eq!(
            greedy, p.greedy,
            "{name}: greedy continuation of {:?}",
            p.text
        );
        lasts.push(last);
    }
    lasts
}

#[test]
fn mistral_safetensors_matches_transformers() {
    let m = CandleModel::load(&fixture("tiny-mistral")).unwrap();
    assert_eq!(m.info().architecture, "MistralForCausalLM");
    assert_eq!(m.info().quantization, "BF16");
    check_fixture("tiny-mistral", ModelFormat::SafeTensors);
}

#[test]
fn mistral_pytorch_bin_matches_transformers_and_safetensors() {
    let bin = check_fixture("tiny-mistral-bin", ModelFormat::PyTorch);
    let st = check_fixture("tiny-mistral", ModelFormat::SafeTensors);
    // The same weight values in both files: the same float32 computation, bit for bit.
    assert_eq!(bin, st);
}

#[test]
fn llama_with_sentencepiece_model_matches_transformers() {
    let m = CandleModel::load(&fixture("tiny-llama")).unwrap();
    assert_eq!(m.info().architecture, "LlamaForCausalLM");
    assert!(!fixture("tiny-llama").join("tokenizer.json").exists());
    check_fixture("tiny-llama", ModelFormat::SafeTensors);
}

#[test]
fn sliding_window_is_what_makes_long_prompts_match() {
    // The 21-token prompt is longer than Mistral's window of 16: attending to everything gives
    // other logits, so the window is really applied (and the test above would catch its loss).
    let prompts = reference(&fixture("tiny-mistral"));
    let long = prompts.iter().find(|p| p.input_ids.len() > 16).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(fixture("tiny-mistral")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
    }
    let cfg_path = dir.path().join("config.json");
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["sliding_window"] = Value::Null;
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let model = CandleModel::load(dir.path()).unwrap();
    let (_, last, _) = run(&model, long);
    let worst = max_diff(&last, &long.last_logits);
    assert!(
        worst > 1e-3,
        "without the window the logits should differ, got {worst}"
    );
}
