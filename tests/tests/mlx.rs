//! The MLX backend on real MLX-format folders (tests/fixtures/tiny-mistral-mlx*, made by
//! `mlx_lm convert` with tests/fixtures/generate_mlx.py): against mlx-lm's own greedy tokens and
//! logits, against the candle backend and transformers on the same weights, through the daemon,
//! and on broken folders.
#![cfg(feature = "mlx")]

use std::path::Path;

use minerva_candle::CandleModel;
use minerva_core::Model;
use minerva_e2e::{
    all_logits, assert_status, copy_fixture, edit_config, fixture, generate_count, greedy,
    max_diff, reference, sample_token_ids, token_ids, Daemon,
};
use minerva_mlx::MlxModel;
use minerva_proto::v1 as pb;
use pb::generate_service_client::GenerateServiceClient;
use tonic::Code;

/// Largest |logit difference| allowed against mlx-lm: both run MLX's f32 kernels on the same
/// weights, so only summation order may differ (the KV cache here keeps every position and masks
/// the window; mlx-lm's rotating cache keeps the last 16). Measured: see the assertion messages.
const MLX_LM_TOLERANCE: f32 = 1e-4;
/// Against candle (its own f32 kernels) and transformers (PyTorch f32) on the same bf16 weights.
const CROSS_BACKEND_TOLERANCE: f32 = 1e-3;

const FOLDERS: [&str; 3] = [
    "tiny-mistral-mlx",
    "tiny-mistral-mlx-q4",
    "tiny-mistral-mlx-q8",
];

/// Minerva's MLX backend gives mlx-lm's 32 greedy tokens on the bf16, 4-bit and 8-bit folders
/// (window 16 on layer 0, so every continuation runs past it) and its logits within
/// MLX_LM_TOLERANCE; the tokenizer gives the reference's ids.
#[test]
fn mlx_backend_matches_mlx_lm_on_the_fixtures() {
    for name in FOLDERS {
        let dir = fixture(name);
        let model = MlxModel::load(&dir).unwrap();
        let info = model.info();
        assert_eq!(info.architecture, "MistralForCausalLM");
        assert_eq!(info.layer_count, 2);
        assert!(info.chat_template.is_some(), "{name}: chat_template.jinja");
        match name {
            "tiny-mistral-mlx" => assert_eq!(info.quantization, "BF16"),
            "tiny-mistral-mlx-q4" => assert_eq!(info.quantization, "MLX 4-bit affine (group 32)"),
            _ => assert_eq!(info.quantization, "MLX 8-bit affine (group 32)"),
        }
        for r in reference(&dir) {
            assert_eq!(
                model.tokenize(&r.text, true).unwrap(),
                r.input_ids,
                "{name}"
            );
            let (tokens, seen) = greedy(&model, &r.input_ids, r.greedy.len());
            let diff = max_diff(&seen[0], &r.last_logits);
            eprintln!("{name} {:?}: max |logit - mlx-lm's| = {diff:.2e}", r.text);
            assert!(
                diff < MLX_LM_TOLERANCE,
                "{name} {:?}: logits differ from mlx-lm's by {diff}",
                r.text
            );
            assert_eq!(tokens, r.greedy, "{name} {:?}", r.text);
        }
    }
}

/// The plain (bf16) MLX folder, as transformers and candle run a Mistral (the window on every
/// layer: `layer_types` dropped), gives candle's logits at every position, and both give
/// transformers' greedy tokens (tests/fixtures/tiny-mistral/reference.json, same weights).
#[test]
fn plain_mlx_folder_matches_candle_and_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("plain");
    copy_fixture("tiny-mistral-mlx", &dir);
    edit_config(&dir, |v| {
        v.as_object_mut().unwrap().remove("layer_types");
    });
    let mlx = MlxModel::load(&dir).unwrap();
    let candle = CandleModel::load(&dir).unwrap();
    for r in reference(&fixture("tiny-mistral")) {
        let ids = mlx.tokenize(&r.text, true).unwrap();
        assert_eq!(ids, candle.tokenize(&r.text, true).unwrap());
        assert_eq!(ids, r.input_ids);
        let (a, b) = (all_logits(&mlx, &ids), all_logits(&candle, &ids));
        let diff = max_diff(&a, &b);
        eprintln!(
            "{:?}: max |mlx - candle| over all positions = {diff:.2e}",
            r.text
        );
        assert!(
            diff < CROSS_BACKEND_TOLERANCE,
            "{:?}: mlx and candle logits differ by {diff}",
            r.text
        );
        let diff = max_diff(&a[a.len() - r.last_logits.len()..], &r.last_logits);
        eprintln!(
            "{:?}: max |mlx - transformers| at the last position = {diff:.2e}",
            r.text
        );
        assert!(
            diff < CROSS_BACKEND_TOLERANCE,
            "{:?}: mlx and transformers logits differ by {diff}",
            r.text
        );
        let (from_mlx, _) = greedy(&mlx, &ids, r.greedy.len());
        let (from_candle, _) = greedy(&candle, &ids, r.greedy.len());
        assert_eq!(from_mlx, from_candle, "{:?}", r.text);
        assert_eq!(from_mlx, r.greedy, "{:?}", r.text);
    }
}

/// MLX folders load through the daemon on the mlx backend by default (plain SafeTensors with
/// --backend mlx), stream mlx-lm's tokens with stats, and apply the folder's chat template.
#[test]
fn daemon_runs_mlx_folders() {
    let d = Daemon::start(&[]);
    for (name, backend) in [
        ("tiny-mistral-mlx-q4", None),
        ("tiny-mistral-mlx-q8", None),
        ("tiny-mistral-mlx", Some("mlx")),
    ] {
        let dir = fixture(name);
        let path = dir.to_str().unwrap();
        let r = &reference(&dir)[0];
        let mut args = vec!["run", path, &r.text, "--raw", "--max-tokens", "32"];
        if let Some(b) = backend {
            args.extend(["--backend", b]);
        }
        let run = d.cli_json(&args);
        let want: Vec<u64> = r.greedy.iter().map(|&t| u64::from(t)).collect();
        assert_eq!(token_ids(&run), want, "{name}");
        // Two samples of one prompt share its computed cache: each is the greedy answer.
        args.extend(["--samples", "2"]);
        assert_eq!(
            sample_token_ids(&d.cli_json(&args)),
            vec![want.clone(), want],
            "{name}"
        );
        assert_eq!(run["stats"]["generated_tokens"], 32, "{run}");
        assert_eq!(run["stats"]["prompt_tokens"], r.input_ids.len(), "{run}");
        let show = d.cli_json(&["models", "show", path]);
        assert_eq!(show["backend"], "mlx", "{show}");
    }
    let q4 = fixture("tiny-mistral-mlx-q4");
    let show = d.cli_json(&["models", "show", q4.to_str().unwrap()]);
    assert_eq!(show["format"], "mlx", "{show}");
    // Chat: "[INST] Hello [/INST]" after BOS, from chat_template.jinja.
    let chat = d.cli_json(&["run", q4.to_str().unwrap(), "Hello", "--max-tokens", "4"]);
    assert_eq!(chat["stats"]["prompt_tokens"], 9, "{chat}");
    assert_eq!(chat["stats"]["generated_tokens"], 4, "{chat}");
    let status = d.cli_json(&["status"]);
    assert!(status["backends"].to_string().contains("mlx"), "{status}");
}

/// Rewrites a SafeTensors file without the tensors `drop` names (and its index's entries).
fn drop_tensors(dir: &Path, drop: &[&str]) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut out_header = serde_json::Map::new();
    let mut out_data = Vec::new();
    for (name, t) in header.as_object().unwrap() {
        if drop.contains(&name.as_str()) {
            continue;
        }
        let mut t = t.clone();
        if name != "__metadata__" {
            let off = t["data_offsets"].as_array().unwrap();
            let (b, e) = (
                off[0].as_u64().unwrap() as usize,
                off[1].as_u64().unwrap() as usize,
            );
            let start = out_data.len();
            out_data.extend_from_slice(&data[b..e]);
            t["data_offsets"] = serde_json::json!([start, out_data.len()]);
        }
        out_header.insert(name.clone(), t);
    }
    let mut h = serde_json::Value::Object(out_header)
        .to_string()
        .into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut file = (h.len() as u64).to_le_bytes().to_vec();
    file.extend(h);
    file.extend(out_data);
    std::fs::write(&path, file).unwrap();
    let index = dir.join("model.safetensors.index.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
    for name in drop {
        v["weight_map"].as_object_mut().unwrap().remove(*name);
    }
    std::fs::write(index, v.to_string()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_mlx_folders_get_clear_errors_and_the_daemon_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let case = |n: &str| tmp.path().join(n);

    // 4-bit tensors, config says 8 bits: the packed width and the scales disagree.
    copy_fixture("tiny-mistral-mlx-q4", &case("bits"));
    edit_config(&case("bits"), |v| v["quantization"]["bits"] = 8.into());
    // Groups of 32 stored, config says 64: the hidden size 32 is not a multiple of 64.
    copy_fixture("tiny-mistral-mlx-q4", &case("group"));
    edit_config(&case("group"), |v| {
        v["quantization"]["group_size"] = 64.into()
    });
    // Groups of 32 stored, config says 16: twice as many scales expected.
    copy_fixture("tiny-mistral-mlx-q4", &case("group16"));
    edit_config(&case("group16"), |v| {
        v["quantization"]["group_size"] = 16.into()
    });
    copy_fixture("tiny-mistral-mlx-q4", &case("no-scales"));
    drop_tensors(&case("no-scales"), &["model.layers.1.mlp.up_proj.scales"]);
    copy_fixture("tiny-mistral-mlx-q4", &case("no-biases"));
    drop_tensors(
        &case("no-biases"),
        &["model.layers.0.self_attn.k_proj.biases"],
    );
    copy_fixture("tiny-mistral-mlx-q4", &case("qwen"));
    edit_config(&case("qwen"), |v| {
        v["architectures"] = serde_json::json!(["Qwen2ForCausalLM"]);
        v["model_type"] = "qwen2".into();
    });
    copy_fixture("tiny-mistral-mlx-q4", &case("shape"));
    edit_config(&case("shape"), |v| v["intermediate_size"] = 96.into());

    let d = Daemon::start(&[]);
    let mut c = GenerateServiceClient::new(d.channel().await);
    let good = fixture("tiny-mistral-mlx-q4");
    let good = good.to_str().unwrap();
    let p = |n: &str| case(n).to_str().unwrap().to_string();
    let cases: Vec<(String, Option<&str>, Code, &[&str])> = vec![
        (
            p("bits"),
            None,
            Code::InvalidArgument,
            // At 8 bits the 4 packed columns are 16 inputs: not a whole group.
            &[
                "model.embed_tokens.weight",
                "16 input features",
                "group_size 32",
            ],
        ),
        (
            p("group"),
            None,
            Code::InvalidArgument,
            &["not a multiple of group_size 64"],
        ),
        (
            p("group16"),
            None,
            Code::InvalidArgument,
            &["scales has shape", "group 16"],
        ),
        (
            p("no-scales"),
            None,
            Code::InvalidArgument,
            &["model.layers.1.mlp.up_proj.scales is missing"],
        ),
        (
            p("no-biases"),
            None,
            Code::InvalidArgument,
            &["model.layers.0.self_attn.k_proj.biases is missing"],
        ),
        (
            p("qwen"),
            None,
            Code::InvalidArgument,
            &[
                "Qwen2ForCausalLM",
                "not supported",
                "MistralForCausalLM, LlamaForCausalLM",
            ],
        ),
        (
            p("shape"),
            None,
            Code::InvalidArgument,
            &[
                "model.layers.0.mlp.gate_proj.weight has shape [64, 4]",
                "config.json says the layer is [96, 32]",
            ],
        ),
        (
            good.into(),
            Some("llama.cpp"),
            Code::InvalidArgument,
            &["llama.cpp backend cannot run a mlx model"],
        ),
        (
            good.into(),
            Some("candle"),
            Code::InvalidArgument,
            &["candle backend cannot run a mlx model"],
        ),
    ];
    for (model, backend, code, needles) in cases {
        let err = generate_count(&mut c, &model, backend)
            .await
            .expect_err(&model);
        eprintln!("{model}: {:?} {}", err.code(), err.message());
        assert_status(&err, code, needles, &model);
        // The daemon keeps serving.
        assert_eq!(generate_count(&mut c, good, None).await.unwrap(), 4);
    }
}
