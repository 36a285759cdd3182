//! Speculative decoding with a draft model: the test model (SmolLM2-135M Q4_1) drafts for its
//! own weights dequantized to F32 (`minerva convert`), a larger model with the same vocabulary.
//! Answers with the draft model are the answers without it, greedy and sampled seed for seed,
//! on llama.cpp and candle; the draft model's cells are freed with its sequence; a draft model
//! that is missing, is the model itself or has another vocabulary is refused with the status
//! that says so, and the daemon goes on serving.

use minerva_e2e::{
    assert_agree_but_for_a_near_tie, assert_same_draws, assert_status, converted_model, fixture,
    generate_ids, generate_samples, Daemon, MODEL,
};
use minerva_proto::v1 as pb;

const PROMPTS: [&str; 3] = [
    "Fix the typos in this text and write it out again in full:\n\nThe quick brown fox jumpd \
     over the lazy dog. Then the fox ran into the forrest, where it met a friendly bear.",
    "What is the capital of France? Answer in one sentence.",
    "Write a Python function that returns the sum of a list of numbers.",
];

/// A chat request for the F32 model on `backend` with the test model loaded as its draft;
/// `mode` decides whether this request drafts with it.
fn request(
    target: &str,
    prompt: &str,
    backend: &str,
    mode: pb::SpeculationMode,
) -> pb::GenerateRequest {
    pb::GenerateRequest {
        model: target.into(),
        input: Some(pb::generate_request::Input::Chat(pb::Chat {
            messages: vec![pb::ChatMessage {
                role: "user".into(),
                content: prompt.into(),
            }],
        })),
        max_tokens: Some(48),
        logprobs: Some(pb::LogprobsOptions {
            top: 2,
            prompt: false,
        }),
        options: Some(pb::LoadOptions {
            backend: Some(backend.into()),
            draft_model: Some(MODEL.into()),
            ..Default::default()
        }),
        // At a fixed length, so that drafts are made and checked on every step, whether or not
        // they pay on this machine.
        speculation: Some(pb::Speculation {
            max_draft: (mode != pb::SpeculationMode::Off).then_some(4),
            mode: mode as i32,
            fixed_length: mode != pb::SpeculationMode::Off,
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_with_a_draft_model_are_the_answers_without_it() {
    let target = converted_model("f32");
    let target = target.to_str().unwrap();
    let d = Daemon::start(&[]);
    for backend in ["llama.cpp", "candle"] {
        let (mut drafted, mut accepted) = (0, 0);
        for prompt in PROMPTS {
            let what = format!("{backend}: {prompt}");
            let off = request(target, prompt, backend, pb::SpeculationMode::Off);
            let draft = request(target, prompt, backend, pb::SpeculationMode::Draft);
            let (plain, p) = generate_samples(&d, off).await.remove(0);
            let (spec, s) = generate_samples(&d, draft).await.remove(0);
            assert_eq!(p.drafted_tokens, 0, "{what}");
            if assert_agree_but_for_a_near_tie(&plain, &spec, &what).is_none() {
                assert_eq!(p.text, s.text, "{what}");
            }
            assert!(s.accepted_tokens <= s.drafted_tokens, "{what}");
            drafted += s.drafted_tokens;
            accepted += s.accepted_tokens;

            // Sampled: the same seed draws the same tokens with and without the drafts.
            let sampled = |mode| {
                let mut r = request(target, prompt, backend, mode);
                r.sampling = Some(pb::SamplingParams {
                    temperature: Some(0.7),
                    seed: Some(7),
                    ..Default::default()
                });
                r
            };
            let (plain, _) = generate_samples(&d, sampled(pb::SpeculationMode::Off))
                .await
                .remove(0);
            let (spec, s) = generate_samples(&d, sampled(pb::SpeculationMode::Draft))
                .await
                .remove(0);
            assert_same_draws(&plain, &spec, &format!("{what} (sampled)"));
            drafted += s.drafted_tokens;
            accepted += s.accepted_tokens;
        }
        eprintln!("{backend}: {accepted} of {drafted} drafted tokens accepted");
        // A quantized copy of the model agrees with it on most tokens.
        assert!(
            drafted > 0 && accepted * 2 > drafted,
            "{backend}: {accepted}/{drafted}"
        );
    }

    // The loaded model reports its draft model; `models show` prints it.
    let mut m = pb::model_service_client::ModelServiceClient::new(d.channel().await);
    let shown = m
        .show(pb::ShowModelRequest {
            model: target.into(),
        })
        .await
        .expect("show")
        .into_inner();
    let draft = shown.draft.expect("the draft model in ModelDetails");
    assert_eq!(draft.name, MODEL);
    assert_eq!(draft.quantization, "Q4_1");
    let text = d.cli_ok(&["models", "show", target]);
    assert!(
        text.contains("draft model") && text.contains(MODEL),
        "{text}"
    );
}

/// A sequence cancelled while it drafts leaves nothing in either cache: afterwards a request
/// that needs every cell of the shared pool (prompt + max_tokens = the context) runs to its
/// end, which it could not if the draft model still held the cancelled sequences' cells.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_sequences_free_their_cells_in_both_caches() {
    let target = converted_model("f32");
    let target = target.to_str().unwrap();
    let d = Daemon::start(&["--parallel", "2", "--ctx", "512"]);
    let long = |max_tokens| {
        let mut r = request(target, PROMPTS[2], "llama.cpp", pb::SpeculationMode::Draft);
        r.max_tokens = Some(max_tokens);
        r.ignore_eos = Some(true);
        r.logprobs = None;
        r
    };
    // Two sequences side by side, each dropped after a few tokens (with drafts in flight).
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut c = pb::generate_service_client::GenerateServiceClient::new(d.channel().await);
        streams.push(c.generate(long(100)).await.expect("generate").into_inner());
    }
    for s in &mut streams {
        for _ in 0..6 {
            s.message().await.expect("stream").expect("a token");
        }
    }
    drop(streams);
    // The worker notices at its next step; then one sequence takes the whole pool.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let prompt_tokens = {
        let (_, stats) = generate_ids(&d, long(1)).await;
        stats.prompt_tokens
    };
    let (ids, stats) = generate_ids(&d, long(512 - prompt_tokens)).await;
    assert_eq!(ids.len() as u32, 512 - prompt_tokens, "{stats:?}");
    assert!(stats.drafted_tokens > 0, "{stats:?}");
    assert!(
        d.log_text().matches("generation cancelled").count() >= 2,
        "{}",
        d.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draft_models_that_cannot_draft_are_refused_and_the_daemon_serves_on() {
    let target = converted_model("f32");
    let target = target.to_str().unwrap();
    let d = Daemon::start(&[]);
    let c = pb::generate_service_client::GenerateServiceClient::new(d.channel().await);
    let with_draft = |draft: &str| {
        let mut r = request(target, PROMPTS[1], "llama.cpp", pb::SpeculationMode::Draft);
        r.options.as_mut().unwrap().draft_model = Some(draft.into());
        r
    };
    let refused = |r: pb::GenerateRequest| {
        let mut c = c.clone();
        async move { c.generate(r).await.expect_err("refused") }
    };
    // No such model.
    let e = refused(with_draft("no-such-model")).await;
    assert_status(
        &e,
        tonic::Code::NotFound,
        &["no-such-model"],
        "missing draft",
    );
    // The model itself.
    let e = refused(with_draft(target)).await;
    assert_status(
        &e,
        tonic::Code::InvalidArgument,
        &["options.draft_model", "the model itself"],
        "itself",
    );
    // Another vocabulary: a tiny random Mistral (Mistral's tokenizer), loaded on candle.
    let tiny = fixture("tiny-mistral");
    let e = refused(with_draft(tiny.to_str().unwrap())).await;
    assert_status(
        &e,
        tonic::Code::FailedPrecondition,
        &[
            "does not share the vocabulary",
            "tiny-mistral",
            target,
            "tokens",
        ],
        "another vocabulary",
    );
    // DRAFT on a model loaded without a draft model: refused, not turned into prompt lookup.
    let mut plain = request(target, PROMPTS[1], "llama.cpp", pb::SpeculationMode::Draft);
    plain.options.as_mut().unwrap().draft_model = Some(String::new());
    let e = refused(plain).await;
    assert_status(
        &e,
        tonic::Code::FailedPrecondition,
        &["without a draft model", "draft_model"],
        "no draft model",
    );
    // The daemon goes on serving, with the draft model too.
    let (ids, stats) = generate_ids(&d, with_draft(MODEL)).await;
    assert!(!ids.is_empty() && stats.drafted_tokens > 0, "{stats:?}");
    let mut c2 = pb::generate_service_client::GenerateServiceClient::new(d.channel().await);
    let mut ok = request(MODEL, PROMPTS[1], "llama.cpp", pb::SpeculationMode::Off);
    ok.options = None;
    assert!(c2.generate(ok).await.is_ok());
}

/// `minerva bench --speculative --draft MODEL`: the speculative variant drafts with the draft
/// model, and the record says so.
#[test]
fn a_bench_job_with_a_draft_model_records_it() {
    let target = converted_model("f32");
    let target = target.to_str().unwrap();
    let d = Daemon::start(&[]);
    let r = d.cli_json(&[
        "bench",
        target,
        "--tests",
        "typos",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--speculative",
        "4",
        "--draft",
        MODEL,
    ]);
    let load = &r["loads"][0];
    assert_eq!(load["draft"]["name"], MODEL, "{load}");
    let tests = r["tests"].as_array().expect("tests");
    let spec = tests
        .iter()
        .find(|t| t["test"] == "typos/spec")
        .expect("typos/spec");
    assert_eq!(spec["draft_source"], "draft model", "{spec}");
    let plain = tests.iter().find(|t| t["test"] == "typos").expect("typos");
    assert_eq!(plain["draft_source"], "", "{plain}");
}
