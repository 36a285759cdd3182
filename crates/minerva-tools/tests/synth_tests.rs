//! Synthesizes the tiny shape in every format (once per test process) and checks the outputs
//! with independent readers: minerva-core's GGUF header reader, llama.cpp itself (load, tokenize,
//! generate), the `safetensors` crate and Hugging Face's `tokenizers`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use minerva_core::{ContextOptions, ForwardChunk, LoadOptions, Model, SeqId};
use minerva_formats::gguf::{self, MetaValue};
use minerva_llamacpp::LlamaCppModel;
use minerva_tools::synth::{Format, Shape, SynthOptions, SynthReport};

struct Outputs {
    _dir: tempfile::TempDir,
    reports: BTreeMap<&'static str, SynthReport>,
}

/// Every format of `tiny`, synthesized once.
fn outputs() -> &'static Outputs {
    static OUT: OnceLock<Outputs> = OnceLock::new();
    OUT.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut reports = BTreeMap::new();
        for (format, file) in [
            ("gguf-f16", "tiny-f16.gguf"),
            ("gguf-q8_0", "tiny-q8_0.gguf"),
            ("gguf-q4_k_m", "tiny-q4_k_m.gguf"),
            ("safetensors", "tiny-hf"),
            ("mlx", "tiny-mlx"),
        ] {
            let options = SynthOptions {
                shape: Shape::by_name("tiny").unwrap(),
                format: Format::by_name(format).unwrap(),
                output: dir.path().join(file),
                force: false,
                threads: 2,
            };
            let report = minerva_tools::synth::synth(&options, &mut |_| {})
                .unwrap_or_else(|e| panic!("synth tiny {format}: {e}"));
            reports.insert(format, report);
        }
        Outputs { _dir: dir, reports }
    })
}

fn path(format: &str) -> PathBuf {
    outputs().reports[format].output.clone()
}

fn tiny() -> Shape {
    Shape::by_name("tiny").unwrap()
}

#[test]
fn gguf_f16_header_round_trips() {
    let p = path("gguf-f16");
    let h = gguf::read_header(&p).expect("read_header");
    let shape = tiny();
    assert_eq!(h.version, 3);
    assert_eq!(h.architecture(), Some("llama"));
    assert_eq!(h.get_u64("general.file_type"), Some(1));
    assert_eq!(h.arch_u64("embedding_length"), Some(shape.hidden_size));
    assert_eq!(h.arch_u64("block_count"), Some(shape.num_layers));
    assert_eq!(
        h.arch_u64("feed_forward_length"),
        Some(shape.intermediate_size)
    );
    assert_eq!(h.arch_u64("attention.head_count"), Some(shape.num_heads));
    assert_eq!(
        h.arch_u64("attention.head_count_kv"),
        Some(shape.num_kv_heads)
    );
    assert_eq!(h.arch_u64("rope.dimension_count"), Some(shape.head_dim));
    assert_eq!(h.get_str("tokenizer.ggml.model"), Some("llama"));
    assert_eq!(
        h.get("tokenizer.ggml.tokens"),
        Some(&MetaValue::Array {
            elem_type: 8,
            len: 32000
        })
    );
    assert_eq!(h.get_u64("tokenizer.ggml.bos_token_id"), Some(1));
    assert_eq!(h.get_u64("tokenizer.ggml.eos_token_id"), Some(2));
    assert_eq!(h.get_u64("tokenizer.ggml.unknown_token_id"), Some(0));
    assert_eq!(
        h.get("tokenizer.ggml.add_bos_token")
            .and_then(MetaValue::as_bool),
        Some(true)
    );
    // Every tensor, with llama.cpp's name and ggml's (reversed) shape, F16 or F32 for norms.
    let specs = shape.tensors();
    assert_eq!(h.tensors.len(), specs.len());
    for (t, s) in h.tensors.iter().zip(&specs) {
        assert_eq!(t.name, s.gguf_name);
        let rev: Vec<u64> = s.shape.iter().rev().copied().collect();
        assert_eq!(t.shape, rev, "{}", t.name);
        let expect_type = if s.shape.len() == 1 { 0 } else { 1 };
        assert_eq!(t.type_id, expect_type, "{}", t.name);
    }
    assert_eq!(h.parameter_count(), shape.parameter_count());
    let size = std::fs::metadata(&p).unwrap().len();
    assert_eq!(size, h.file_size);
    assert_eq!(outputs().reports["gguf-f16"].total_bytes, size);
}

#[test]
fn quantized_ggufs_are_quantized() {
    for (format, file_type) in [("gguf-q8_0", 7), ("gguf-q4_k_m", 15)] {
        let h = gguf::read_header(&path(format)).expect("read_header");
        assert_eq!(h.get_u64("general.file_type"), Some(file_type), "{format}");
        let q = h
            .tensors
            .iter()
            .find(|t| t.name == "blk.0.attn_q.weight")
            .unwrap();
        // Q8_0 is ggml type 8; Q4_K_M keeps attn_q in Q4_K (12).
        let expect = if file_type == 7 { 8 } else { 12 };
        assert_eq!(q.type_id, expect, "{format}");
    }
    let f16 = outputs().reports["gguf-f16"].total_bytes;
    let q8 = outputs().reports["gguf-q8_0"].total_bytes;
    let q4 = outputs().reports["gguf-q4_k_m"].total_bytes;
    assert!(q4 < q8 && q8 < f16, "{q4} {q8} {f16}");
}

/// Loads a GGUF in llama.cpp and greedily generates a few tokens.
fn generate(p: &Path) -> Vec<u32> {
    let model = LlamaCppModel::load(p, &LoadOptions { gpu_layers: 0 }).expect("llama.cpp loads it");
    assert_eq!(model.info().vocab_size, 32000);
    let prompt = model.tokenize("The capital of France is", true).unwrap();
    assert_eq!(prompt[0], 1, "BOS first");
    let mut ctx = model
        .new_context(&ContextOptions {
            context_length: 128,
            threads: 2,
            batch_size: 64,
            max_sequences: 1,
            kv_per_sequence: false,
        })
        .unwrap();
    let mut logits = Vec::new();
    let mut tokens = prompt.clone();
    let mut pos = 0;
    let mut out = Vec::new();
    for _ in 0..8 {
        ctx.forward(&[ForwardChunk::last(SeqId(0), pos, &tokens)], &mut logits)
            .unwrap();
        pos += tokens.len() as u32;
        let row = &logits[0];
        assert_eq!(row.len(), 32000);
        assert!(row.iter().all(|v| v.is_finite()), "logits are finite");
        let next = row
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i as u32)
            .unwrap();
        out.push(next);
        tokens = vec![next];
    }
    // Random weights still give varied logits, not a constant row.
    let row = &logits[0];
    let (min, max) = row
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    assert!(max > min, "logits vary");
    out
}

#[test]
fn llama_cpp_generates_from_f16_and_q8_0() {
    assert_eq!(generate(&path("gguf-f16")).len(), 8);
    assert_eq!(generate(&path("gguf-q8_0")).len(), 8);
}

/// The same text through llama.cpp (GGUF vocabulary) and `tokenizers` (tokenizer.json).
#[test]
fn tokenizer_parity_llama_cpp_vs_tokenizers() {
    let model = LlamaCppModel::load(&path("gguf-f16"), &LoadOptions { gpu_layers: 0 }).unwrap();
    let hf = tokenizers::Tokenizer::from_file(path("safetensors").join("tokenizer.json"))
        .expect("tokenizers loads tokenizer.json");
    let texts = [
        "Hello world",
        " Hello, world!",
        "  two leading spaces and trailing  ",
        "The year 2024 had 366 days; 3.14159 ≈ π.",
        "naïve café déjà vu — Zürich",
        "日本語のテキストと中文",
        "emoji 🦀🚀 and \u{1F600}",
        "tabs\tand\nnewlines\n\nend",
        "def f(x):\n    return x ** 2  # square",
        "Ünïcödé ÀÉÎÕÜ ß ﬁ",
    ];
    for text in texts {
        let ours = model.tokenize(text, false).unwrap();
        let theirs: Vec<u32> = hf.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(ours, theirs, "token ids differ for {text:?}");
        assert!(!ours.is_empty());
        // With special tokens: both add BOS (id 1) and nothing else.
        let ours_bos = model.tokenize(text, true).unwrap();
        let theirs_bos: Vec<u32> = hf.encode(text, true).unwrap().get_ids().to_vec();
        assert_eq!(ours_bos, theirs_bos, "with BOS, for {text:?}");
        assert_eq!(ours_bos[0], 1);
        // And tokenizers decodes its ids back to the text.
        assert_eq!(hf.decode(&theirs, true).unwrap(), text, "decode");
    }
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// Every tensor of an HF-style directory, through its index and the `safetensors` crate.
fn tensors(dir: &Path) -> BTreeMap<String, (safetensors::Dtype, Vec<usize>)> {
    let index = read_json(&dir.join("model.safetensors.index.json"));
    let map = index["weight_map"].as_object().unwrap();
    let mut out = BTreeMap::new();
    let mut total = 0u64;
    let files: std::collections::BTreeSet<&str> =
        map.values().map(|v| v.as_str().unwrap()).collect();
    for f in &files {
        assert!(
            f.starts_with("model-") && f.ends_with(".safetensors"),
            "{f}"
        );
        let bytes = std::fs::read(dir.join(f)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
        for (name, view) in st.tensors() {
            assert_eq!(map[&name].as_str(), Some(*f), "{name} is in the index");
            total += view.data().len() as u64;
            out.insert(name, (view.dtype(), view.shape().to_vec()));
        }
    }
    assert_eq!(out.len(), map.len());
    assert_eq!(index["metadata"]["total_size"].as_u64(), Some(total));
    out
}

#[test]
fn safetensors_follow_the_hf_mistral_layout() {
    let dir = path("safetensors");
    let shape = tiny();
    let t = tensors(&dir);
    let specs = shape.tensors();
    assert_eq!(t.len(), specs.len());
    for s in &specs {
        let (dtype, dims) = &t[&s.hf_name];
        assert_eq!(*dtype, safetensors::Dtype::BF16, "{}", s.hf_name);
        let want: Vec<usize> = s.shape.iter().map(|&d| d as usize).collect();
        assert_eq!(dims, &want, "{}", s.hf_name);
    }
    assert!(t.contains_key("model.layers.1.self_attn.q_proj.weight"));
    assert!(t.contains_key("lm_head.weight"));
    let config = read_json(&dir.join("config.json"));
    assert_eq!(config["model_type"], "mistral");
    assert_eq!(config["architectures"][0], "MistralForCausalLM");
    assert_eq!(config["hidden_size"], shape.hidden_size);
    assert_eq!(config["num_key_value_heads"], shape.num_kv_heads);
    assert_eq!(config["vocab_size"], 32000);
    let tc = read_json(&dir.join("tokenizer_config.json"));
    assert_eq!(tc["bos_token"], "<s>");
    assert!(dir.join("tokenizer.model").is_file());
}

#[test]
fn mlx_is_4bit_affine_group_64() {
    let dir = path("mlx");
    let shape = tiny();
    let t = tensors(&dir);
    let config = read_json(&dir.join("config.json"));
    assert_eq!(config["quantization"]["bits"], 4);
    assert_eq!(config["quantization"]["group_size"], 64);
    for s in shape.tensors() {
        if s.shape.len() == 1 {
            assert_eq!(t[&s.hf_name].0, safetensors::Dtype::F16, "{}", s.hf_name);
            continue;
        }
        let (rows, cols) = (s.shape[0] as usize, s.shape[1] as usize);
        let base = s.hf_name.trim_end_matches(".weight");
        assert_eq!(
            t[&s.hf_name],
            (safetensors::Dtype::U32, vec![rows, cols / 8]),
            "{base}"
        );
        for part in ["scales", "biases"] {
            assert_eq!(
                t[&format!("{base}.{part}")],
                (safetensors::Dtype::F16, vec![rows, cols / 64]),
                "{base}.{part}"
            );
        }
    }
    // Embeddings are quantized too, as mlx-lm does.
    assert!(t.contains_key("model.embed_tokens.scales"));
}

#[test]
fn existing_output_needs_force() {
    let p = path("gguf-f16");
    let mut options = SynthOptions {
        shape: tiny(),
        format: Format::GgufF16,
        output: p.clone(),
        force: false,
        threads: 1,
    };
    let e = minerva_tools::synth::synth(&options, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("--force"), "{e}");
    // A file where a directory format writes, even with --force, is refused.
    options.format = Format::Safetensors;
    options.force = true;
    let e = minerva_tools::synth::synth(&options, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("is a file"), "{e}");
    // A missing parent directory is named.
    options.output = p.with_file_name("no-such-dir").join("x.gguf");
    options.format = Format::GgufF16;
    let e = minerva_tools::synth::synth(&options, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
    assert!(Format::by_name("gguf-q3").is_err());
}

#[test]
fn v3_tokenizer_has_32768_pieces_with_control_tokens() {
    let shape = Shape::by_name("mistral-7b-v0.3").unwrap();
    let (_, vocab) = minerva_tools::synth::load_tokenizer(&shape).unwrap();
    assert_eq!(vocab.pieces.len(), 32768);
    assert_eq!(vocab.pieces[3].text, "[INST]");
    assert_eq!(vocab.pieces[4].text, "[/INST]");
    let (_, v1) = minerva_tools::synth::load_tokenizer(&tiny()).unwrap();
    assert_eq!(v1.pieces[1].text, "<s>");
    assert_eq!(v1.pieces[0x0A + 3].text, "<0x0A>");
}

#[test]
fn every_output_passes_minerva_verify() {
    let expected = [
        ("gguf-f16", "gguf", "F16", "llama"),
        ("gguf-q8_0", "gguf", "Q8_0", "llama"),
        ("gguf-q4_k_m", "gguf", "Q4_K_M", "llama"),
        // Hugging Face configs name the model type; GGUF files name llama.cpp's architecture.
        ("safetensors", "safetensors", "", "mistral"),
        ("mlx", "mlx", "", "mistral"),
    ];
    for (format, kind, quant, arch) in expected {
        let report = minerva_formats::verify::verify_path(&path(format))
            .unwrap_or_else(|e| panic!("verify could not read synth {format}: {e}"));
        assert!(
            report.valid,
            "verify rejects synth {format}: {:?}",
            report.error
        );
        assert_eq!(report.format, kind, "{format}");
        if !quant.is_empty() {
            assert_eq!(report.summary.quantization, quant, "{format}");
        }
        assert_eq!(report.summary.architecture, arch, "{format}");
        assert_eq!(
            report.summary.parameter_count,
            tiny().parameter_count(),
            "{format}"
        );
    }
}
