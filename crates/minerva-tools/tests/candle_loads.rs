//! candle (the pure-Rust stack the candle backend will use) loads the synthetic models: the
//! Hugging Face safetensors folder through candle-transformers' Mistral model and the quantized
//! GGUF through its quantized llama, each running a forward pass to finite logits.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::{mistral, quantized_llama};
use minerva_tools::synth::{Format, Shape, SynthOptions};

fn synth(format: &str, out: &Path) {
    let options = SynthOptions {
        shape: Shape::by_name("tiny").unwrap(),
        format: Format::by_name(format).unwrap(),
        output: out.to_path_buf(),
        force: false,
        threads: 2,
    };
    minerva_tools::synth::synth(&options, &mut |_| {})
        .unwrap_or_else(|e| panic!("synth {format}: {e}"));
}

fn assert_finite_logits(logits: &Tensor, vocab: usize) {
    let v: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(v.len(), vocab, "one row of logits over the vocabulary");
    assert!(v.iter().all(|x| x.is_finite()), "non-finite logits");
    assert!(v.iter().any(|&x| x != v[0]), "constant logits");
}

#[test]
fn candle_runs_the_safetensors_folder_and_the_quantized_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Device::Cpu;
    // "<s> Hello world" in Mistral's v1 vocabulary.
    let prompt = [1u32, 22557, 1526];

    let hf = dir.path().join("tiny-hf");
    synth("safetensors", &hf);
    let cfg: mistral::Config =
        serde_json::from_slice(&std::fs::read(hf.join("config.json")).unwrap()).unwrap();
    let shards: Vec<_> = std::fs::read_dir(&hf)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    assert!(!shards.is_empty());
    // SAFETY: the files were just written and are not modified while mapped.
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(&shards, DType::F32, &dev).unwrap()
    };
    let mut model = mistral::Model::new(&cfg, vb).expect("candle builds Mistral from the folder");
    let input = Tensor::new(&[prompt], &dev).unwrap();
    let logits = model.forward(&input, 0).unwrap();
    assert_finite_logits(&logits, cfg.vocab_size);

    let gguf = dir.path().join("tiny-q4_k_m.gguf");
    synth("gguf-q4_k_m", &gguf);
    let mut f = std::fs::File::open(&gguf).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    let mut model = quantized_llama::ModelWeights::from_gguf(content, &mut f, &dev)
        .expect("candle loads the quantized GGUF");
    let logits = model.forward(&input, 0).unwrap();
    assert_finite_logits(&logits, cfg.vocab_size);
}
