//! Bad input gets the right gRPC status and a message a person can act on, and the daemon
//! keeps serving: every case is followed by a valid request that must succeed.

use minerva_e2e::{assert_status, model_path, Daemon, MODEL};
use minerva_proto::v1 as pb;
use pb::generate_service_client::GenerateServiceClient;
use tonic::Code;

fn prompt_request(model: &str, prompt: &str) -> pb::GenerateRequest {
    pb::GenerateRequest {
        model: model.into(),
        input: Some(pb::generate_request::Input::Prompt(prompt.into())),
        max_tokens: Some(4),
        ..Default::default()
    }
}

/// Runs a generation to the end; returns the stats or the status.
async fn generate(
    c: &mut GenerateServiceClient<tonic::transport::Channel>,
    req: pb::GenerateRequest,
) -> Result<pb::GenerationStats, tonic::Status> {
    let mut s = c.generate(req).await?.into_inner();
    while let Some(m) = s.message().await? {
        if let Some(pb::generate_response::Event::Done(stats)) = m.event {
            return Ok(stats);
        }
    }
    Err(tonic::Status::internal("stream ended without stats"))
}

/// A bad sampling value (set on otherwise default parameters) and what its error names.
type BadSampling = (fn(&mut pb::SamplingParams), &'static [&'static str]);

async fn expect_error(
    c: &mut GenerateServiceClient<tonic::transport::Channel>,
    req: pb::GenerateRequest,
    code: Code,
    needles: &[&str],
) {
    let err = generate(c, req)
        .await
        .expect_err("bad request was accepted");
    assert_status(&err, code, needles, "the bad request");
    // The daemon keeps serving.
    let ok = generate(c, prompt_request(MODEL, "Hello"))
        .await
        .expect("valid request after a bad one");
    assert_eq!(ok.generated_tokens, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_input_gets_a_clear_status_and_the_daemon_keeps_serving() {
    let model = model_path();
    let d = Daemon::start(&[]);
    let mut c = GenerateServiceClient::new(d.channel().await);
    let dir = tempfile::tempdir().unwrap();

    // Missing file.
    expect_error(
        &mut c,
        prompt_request("/no/such/model.gguf", "Hi"),
        Code::NotFound,
        &["/no/such/model.gguf", "does not exist"],
    )
    .await;

    // A file that is not GGUF.
    let text = dir.path().join("notes.gguf");
    std::fs::write(&text, "these are not weights\n".repeat(100)).unwrap();
    expect_error(
        &mut c,
        prompt_request(text.to_str().unwrap(), "Hi"),
        Code::InvalidArgument,
        &["not a GGUF file"],
    )
    .await;

    // A truncated GGUF: the real model cut to 40 MB.
    let truncated = dir.path().join("truncated.gguf");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&truncated, &bytes[..40 << 20]).unwrap();
    expect_error(
        &mut c,
        prompt_request(truncated.to_str().unwrap(), "Hi"),
        Code::InvalidArgument,
        &["truncated", "tensor"],
    )
    .await;
    // Cut inside the header too.
    std::fs::write(&truncated, &bytes[..100_000]).unwrap();
    expect_error(
        &mut c,
        prompt_request(truncated.to_str().unwrap(), "Hi"),
        Code::InvalidArgument,
        &["truncated"],
    )
    .await;

    // Unknown model name.
    expect_error(
        &mut c,
        prompt_request("no-such-model", "Hi"),
        Code::NotFound,
        &["no-such-model", "smollm2-135m"],
    )
    .await;

    // Empty prompt, no input, empty chat, unknown role.
    expect_error(
        &mut c,
        prompt_request(MODEL, ""),
        Code::InvalidArgument,
        &["prompt is empty"],
    )
    .await;
    let mut none = prompt_request(MODEL, "x");
    none.input = None;
    expect_error(&mut c, none, Code::InvalidArgument, &["prompt or chat"]).await;
    let chat = |messages: Vec<pb::ChatMessage>| pb::GenerateRequest {
        model: MODEL.into(),
        input: Some(pb::generate_request::Input::Chat(pb::Chat { messages })),
        max_tokens: Some(4),
        ..Default::default()
    };
    expect_error(
        &mut c,
        chat(vec![]),
        Code::InvalidArgument,
        &["no messages"],
    )
    .await;
    expect_error(
        &mut c,
        chat(vec![pb::ChatMessage {
            role: "wizard".into(),
            content: "hi".into(),
        }]),
        Code::InvalidArgument,
        &["wizard"],
    )
    .await;

    // More logprob alternatives than the API allows.
    let mut many = prompt_request(MODEL, "Hi");
    many.logprobs = Some(pb::LogprobsOptions {
        top: 21,
        prompt: false,
    });
    expect_error(
        &mut c,
        many,
        Code::InvalidArgument,
        &["top_logprobs", "21", "20"],
    )
    .await;

    // max_tokens 0 and absurd.
    let mut zero = prompt_request(MODEL, "Hi");
    zero.max_tokens = Some(0);
    expect_error(&mut c, zero, Code::InvalidArgument, &["max_tokens"]).await;
    let mut absurd = prompt_request(MODEL, "Hi");
    absurd.max_tokens = Some(10_000_000);
    expect_error(
        &mut c,
        absurd,
        Code::InvalidArgument,
        &["max_tokens", "10000000", "4096"],
    )
    .await;

    // Bad sampling values name the parameter.
    let sampled = |s: pb::SamplingParams| pb::GenerateRequest {
        sampling: Some(s),
        ..prompt_request(MODEL, "Hi")
    };
    let bad_sampling: [BadSampling; 6] = [
        (|s| s.temperature = Some(-1.0), &["temperature"]),
        (|s| s.top_p = Some(1.5), &["top_p"]),
        (|s| s.min_p = Some(f32::NAN), &["min_p"]),
        (
            |s| s.repetition_penalty = Some(0.0),
            &["repetition_penalty"],
        ),
        (
            |s| s.presence_penalty = Some(3.0),
            &["presence_penalty", "[-2, 2]"],
        ),
        (
            |s| s.logit_bias = [(7, 250.0)].into(),
            &["logit_bias", "token 7"],
        ),
    ];
    for (set, needles) in bad_sampling {
        let mut sampling = pb::SamplingParams::default();
        set(&mut sampling);
        expect_error(&mut c, sampled(sampling), Code::InvalidArgument, needles).await;
    }

    // Token ids outside the vocabulary (49152), wherever they are given; no ids at all.
    let tokens = |ids: Vec<u32>| pb::GenerateRequest {
        input: Some(pb::generate_request::Input::Tokens(pb::TokenIds { ids })),
        ..prompt_request(MODEL, "Hi")
    };
    expect_error(
        &mut c,
        tokens(vec![1, 49152]),
        Code::InvalidArgument,
        &["tokens", "49152"],
    )
    .await;
    expect_error(
        &mut c,
        tokens(vec![]),
        Code::InvalidArgument,
        &["tokens", "no token ids"],
    )
    .await;
    let mut stop_token = prompt_request(MODEL, "Hi");
    stop_token.stop_token_ids = vec![2, 1 << 20];
    expect_error(
        &mut c,
        stop_token,
        Code::InvalidArgument,
        &["stop_token_ids", "1048576"],
    )
    .await;
    expect_error(
        &mut c,
        sampled(pb::SamplingParams {
            logit_bias: [(99_999, 1.0)].into(),
            ..Default::default()
        }),
        Code::InvalidArgument,
        &["logit_bias", "99999"],
    )
    .await;

    // Bad load options.
    let mut huge_ctx = prompt_request(MODEL, "Hi");
    huge_ctx.options = Some(pb::LoadOptions {
        context_length: Some(1_000_000),
        ..Default::default()
    });
    expect_error(
        &mut c,
        huge_ctx,
        Code::InvalidArgument,
        &["1000000", "8192"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_longer_than_the_context_is_refused_naming_both_lengths() {
    model_path();
    let d = Daemon::start(&[]);
    let mut c = GenerateServiceClient::new(d.channel().await);
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(20); // ~200 tokens
    let mut req = prompt_request(MODEL, &long);
    req.options = Some(pb::LoadOptions {
        context_length: Some(64),
        ..Default::default()
    });
    let err = generate(&mut c, req.clone()).await.expect_err("too long");
    assert_eq!(err.code(), Code::InvalidArgument);
    let msg = err.message();
    assert!(msg.contains("but the context holds 64"), "{msg}");
    let n: usize = msg
        .split("prompt is ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .expect("prompt length in message");
    assert!(n > 64, "{msg}");

    // Prompt fits but prompt + max_tokens does not: refused, not truncated.
    let mut req = prompt_request(MODEL, "The quick brown fox jumps over the lazy dog.");
    req.options = Some(pb::LoadOptions {
        context_length: Some(64),
        ..Default::default()
    });
    req.max_tokens = Some(60);
    let err = generate(&mut c, req.clone())
        .await
        .expect_err("does not fit");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("max_tokens (60)") && err.message().contains("64"),
        "{}",
        err.message()
    );

    // Without max_tokens it generates until the context is full, and says so.
    req.max_tokens = None;
    let stats = generate(&mut c, req).await.expect("fills the context");
    assert!(
        stats.stop_reason == pb::StopReason::ContextFull as i32
            || stats.stop_reason == pb::StopReason::Eos as i32
    );
    if stats.stop_reason == pb::StopReason::ContextFull as i32 {
        assert_eq!(stats.prompt_tokens + stats.generated_tokens, 64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_refused_with_resource_exhausted_not_a_hang() {
    model_path();
    // One sequence at a time: with continuous batching (--parallel > 1) the second request
    // may join the running batch and leave the queue empty, depending on timing.
    let d = Daemon::start(&["--max-queue", "1", "--parallel", "1"]);
    let ch = d.channel().await;
    let long = |seed| pb::GenerateRequest {
        model: MODEL.into(),
        input: Some(pb::generate_request::Input::Prompt(
            "Once upon a time".into(),
        )),
        max_tokens: Some(300),
        sampling: Some(pb::SamplingParams {
            seed: Some(seed),
            ..Default::default()
        }),
        ..Default::default()
    };
    // Load first so all three requests race only for the queue.
    let mut c = GenerateServiceClient::new(ch.clone());
    generate(&mut c, prompt_request(MODEL, "Hi")).await.unwrap();
    // One runs, one waits, the third is refused at once.
    let mut running = c.generate(long(1)).await.unwrap().into_inner();
    running.message().await.unwrap(); // it is being processed
    let _waiting = c.generate(long(2)).await.unwrap().into_inner();
    let err = c.generate(long(3)).await.expect_err("queue is full");
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    assert!(err.message().contains("--max-queue"), "{}", err.message());
}

#[test]
fn the_cli_reports_errors_on_stderr_with_a_failing_exit_code() {
    model_path();
    let d = Daemon::start(&[]);
    let out = d.cli(&["run", "no-such-model", "Hi"]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no-such-model") && err.contains("NotFound"),
        "{err}"
    );
    let out = d.cli(&["run", MODEL, "Hi", "--temperature=-3"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("temperature"));
}

/// A model file whose chat template loops within minijinja's per-range limits (two nested
/// `range(50000)`, 2.5 billion steps) renders on a budget: the request fails with
/// INVALID_ARGUMENT naming the template, the daemon keeps serving the same model, and SIGTERM
/// ends it cleanly. Without the budget this request rendered for minutes, past 16 GB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_chat_template_in_a_model_file_fails_fast_and_the_daemon_serves_on() {
    let original = model_path();
    let header = minerva_formats::gguf::read_header(&original).unwrap();
    let template = header
        .get_str("tokenizer.chat_template")
        .unwrap()
        .to_string();
    let looping = "{% for i in range(50000) %}{% for j in range(50000) %}{% endfor %}{% endfor %}x";
    // The same length, so every offset in the file stays where it was: a comment pads it.
    let pad = template.len() - looping.len() - "{##}".len();
    let hostile = format!("{looping}{{#{}#}}", " ".repeat(pad));
    assert_eq!(hostile.len(), template.len());
    let mut bytes = std::fs::read(&original).unwrap();
    let at = bytes
        .windows(template.len())
        .position(|w| w == template.as_bytes())
        .unwrap();
    bytes[at..at + template.len()].copy_from_slice(hostile.as_bytes());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("looping-template.gguf");
    std::fs::write(&file, bytes).unwrap();
    let path = file.to_str().unwrap();

    let mut d = Daemon::start(&[]);
    let mut c = GenerateServiceClient::new(d.channel().await);
    let started = std::time::Instant::now();
    let chat = pb::GenerateRequest {
        model: path.into(),
        input: Some(pb::generate_request::Input::Chat(pb::Chat {
            messages: vec![pb::ChatMessage {
                role: "user".into(),
                content: "Hi".into(),
            }],
        })),
        max_tokens: Some(4),
        ..Default::default()
    };
    let e = c.generate(chat).await.expect_err("a looping template");
    eprintln!("refused after {:?}: {}", started.elapsed(), e.message());
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("chat template"), "{}", e.message());
    // The same model, loaded, still serves a raw prompt.
    let stats = generate(&mut c, prompt_request(path, "Hello"))
        .await
        .unwrap();
    assert!(stats.generated_tokens > 0);
    let stopping = std::time::Instant::now();
    assert!(d.stop(), "minervad did not shut down cleanly");
    eprintln!("stopped in {:?}", stopping.elapsed());
}
