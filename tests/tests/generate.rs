//! Generation through the real daemon and CLI on the real SmolLM2 GGUF: determinism, parity
//! with llama-cpp-2 called directly, seeds, concurrent clients, stop strings, chat templates.

use std::num::NonZeroU32;
use std::sync::OnceLock;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use minerva_e2e::{assert_agree_but_for_a_near_tie, model_path, token_ids, Daemon, Scored, MODEL};
use minerva_proto::v1 as pb;

const RAW_PROMPT: &str = "The three primary colors are";
const N: u32 = 32;

/// Greedy decoding with llama-cpp-2 alone, in this process: no daemon, no Minerva code.
fn llama_cpp_greedy(prompt: &str, n: u32) -> (Vec<u64>, String) {
    static BACKEND: OnceLock<LlamaBackend> = OnceLock::new();
    let backend = BACKEND.get_or_init(|| {
        llama_cpp_2::send_logs_to_tracing(
            llama_cpp_2::LogOptions::default().with_logs_enabled(false),
        );
        LlamaBackend::init().expect("llama backend")
    });
    let model = LlamaModel::load_from_file(backend, model_path(), &LlamaModelParams::default())
        .expect("load");
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(4096))
        .with_n_batch(2048)
        .with_n_ubatch(512)
        .with_n_threads(2)
        .with_n_threads_batch(2);
    let mut ctx = model.new_context(backend, params).expect("context");
    let vocab = model.vocab();
    let tokens = vocab.tokenize(prompt.as_bytes(), true, true);
    let mut batch = LlamaBatch::new(2048, 1);
    for (i, t) in tokens.iter().enumerate() {
        batch
            .add(*t, i as i32, &[0], i + 1 == tokens.len())
            .expect("batch");
    }
    ctx.decode(&mut batch).expect("prefill");
    let mut out = Vec::new();
    let mut bytes = Vec::new();
    let mut last_idx = batch.n_tokens() - 1;
    for pos in (tokens.len() as i32..).take(n as usize) {
        let logits = ctx.get_logits_ith(last_idx);
        let mut best = 0usize;
        for (i, &l) in logits.iter().enumerate() {
            if l > logits[best] {
                best = i;
            }
        }
        let tok = llama_cpp_2::token::LlamaToken(best as i32);
        out.push(best as u64);
        if vocab.is_eog(tok) {
            break;
        }
        bytes.extend(vocab.token_to_piece(tok, false, None));
        batch.clear();
        batch.add(tok, pos, &[0], true).expect("batch");
        last_idx = 0;
        ctx.decode(&mut batch).expect("decode");
    }
    (out, String::from_utf8_lossy(&bytes).into_owned())
}

fn run_json(d: &Daemon, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["run", MODEL];
    args.extend_from_slice(extra);
    d.cli_json(&args)
}

#[test]
fn greedy_is_identical_across_runs_and_to_llama_cpp_in_process() {
    let d = Daemon::start(&[]);
    let n = N.to_string();
    let a = run_json(&d, &[RAW_PROMPT, "--raw", "--max-tokens", &n]);
    let b = run_json(&d, &[RAW_PROMPT, "--raw", "--max-tokens", &n]);
    assert_eq!(token_ids(&a), token_ids(&b), "two greedy runs differ");
    assert_eq!(a["text"], b["text"]);
    assert_eq!(
        a["stats"]["generated_tokens"].as_u64(),
        Some(token_ids(&a).len() as u64)
    );

    let (direct_ids, direct_text) = llama_cpp_greedy(RAW_PROMPT, N);
    assert_eq!(token_ids(&a), direct_ids, "daemon and llama-cpp-2 disagree");
    assert_eq!(a["text"].as_str(), Some(direct_text.as_str()));
    assert!(!direct_text.trim().is_empty());

    // The plain-text CLI prints exactly the generated text and a newline: nothing else.
    let out = d.cli(&["run", MODEL, RAW_PROMPT, "--raw", "--max-tokens", &n]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{direct_text}\n")
    );
}

#[test]
fn chat_uses_the_models_own_template_and_matches_llama_cpp() {
    let d = Daemon::start(&[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rendered = rt.block_on(async {
        let mut c = pb::generate_service_client::GenerateServiceClient::new(d.channel().await);
        c.tokenize(pb::TokenizeRequest {
            model: MODEL.into(),
            input: Some(pb::tokenize_request::Input::Chat(pb::Chat {
                messages: vec![pb::ChatMessage {
                    role: "user".into(),
                    content: "Hello, how are you?".into(),
                }],
            })),
            options: None,
        })
        .await
        .expect("tokenize")
        .into_inner()
    });
    // SmolLM2's template adds its default system prompt when none is given.
    let expected = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHello, how are you?<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(rendered.text, expected);
    assert_eq!(
        rendered.tokens.iter().filter(|&&t| t == 1).count(),
        3,
        "<|im_start|> must be one special token each time"
    );

    let chat = run_json(&d, &["Hello, how are you?", "--max-tokens", "24"]);
    let (direct_ids, _) = llama_cpp_greedy(expected, 24);
    assert_eq!(token_ids(&chat), direct_ids);
}

#[test]
fn same_seed_same_text_and_another_seed_differs() {
    let d = Daemon::start(&[]);
    let args = |seed: &'static str| {
        vec![
            "Tell me a story about a dragon.",
            "--temperature",
            "1.0",
            "--max-tokens",
            "40",
            "--seed",
            seed,
        ]
    };
    let a = run_json(&d, &args("42"));
    let b = run_json(&d, &args("42"));
    let c = run_json(&d, &args("43"));
    assert_eq!(a["text"], b["text"], "same seed, different text");
    assert_eq!(token_ids(&a), token_ids(&b));
    assert_ne!(
        a["text"], c["text"],
        "different seeds gave the same 40 tokens"
    );
}

#[test]
fn two_clients_at_once_both_get_complete_correct_answers() {
    let d = Daemon::start(&[]);
    let prompts = ["Name a fruit.", "What is two plus two?"];
    let args = |p| [p, "--max-tokens", "24", "--logprobs", "2"];
    let solo: Vec<_> = prompts.iter().map(|p| run_json(&d, &args(p))).collect();
    let together: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| {
                let d = &d;
                s.spawn(move || run_json(d, &args(p)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for ((a, b), p) in solo.iter().zip(&together).zip(prompts) {
        assert!(!b["text"].as_str().unwrap().is_empty());
        let parted =
            assert_agree_but_for_a_near_tie(&Scored::from_json(a), &Scored::from_json(b), p);
        if parted.is_none() {
            assert_eq!(a["text"], b["text"]);
        }
    }
}

#[test]
fn token_input_stop_tokens_ignore_eos_and_logit_bias() {
    let d = Daemon::start(&[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let prompt_ids: Vec<u32> = rt.block_on(async {
        let mut c = pb::generate_service_client::GenerateServiceClient::new(d.channel().await);
        let input = pb::tokenize_request::Input::Prompt(RAW_PROMPT.into());
        let req = pb::TokenizeRequest {
            model: MODEL.into(),
            input: Some(input),
            options: None,
        };
        c.tokenize(req).await.expect("tokenize").into_inner().tokens
    });
    // The prompt as token ids gives what the text gives.
    let by_text = run_json(&d, &[RAW_PROMPT, "--raw", "--max-tokens", "12"]);
    let csv: Vec<String> = prompt_ids.iter().map(u32::to_string).collect();
    let by_ids = run_json(&d, &["--tokens", &csv.join(","), "--max-tokens", "12"]);
    assert_eq!(token_ids(&by_text), token_ids(&by_ids));
    assert_eq!(by_text["text"], by_ids["text"]);

    // A stop token: the answer's first token not seen earlier in it ends generation there,
    // streamed, and with no text of its own.
    let ids = token_ids(&by_text);
    let k = (1..ids.len())
        .find(|&k| !ids[..k].contains(&ids[k]))
        .expect("a token new to the answer");
    let stop = ids[k].to_string();
    let cut = |max_tokens: &str, extra: &[&str]| {
        let mut a = vec![RAW_PROMPT, "--raw", "--max-tokens", max_tokens];
        a.extend_from_slice(extra);
        run_json(&d, &a)
    };
    let stopped = cut("12", &["--stop-token", &stop]);
    assert_eq!(token_ids(&stopped), ids[..=k]);
    assert_eq!(stopped["stats"]["stop_reason"], "stop_token");
    assert_eq!(stopped["stats"]["stop_token_id"].as_u64(), Some(ids[k]));
    let before = run_json(&d, &[RAW_PROMPT, "--raw", "--max-tokens", &k.to_string()]);
    assert_eq!(stopped["text"], before["text"]);

    // Logit bias: -100 bans the greedy first token, +100 forces another every step.
    let first = format!("{}=-100", ids[0]);
    let banned = cut("1", &["--logit-bias", &first]);
    assert_ne!(token_ids(&banned)[0], ids[0]);
    let forced = cut("3", &["--logit-bias", "1000=100"]);
    assert_eq!(token_ids(&forced), [1000, 1000, 1000]);

    // ignore_eos: an answer that ends at end-of-sequence goes on through it.
    let short = run_json(&d, &["Say hi.", "--max-tokens", "64"]);
    assert_eq!(short["stats"]["stop_reason"], "eos", "{short}");
    let n = token_ids(&short).len();
    let more = (n + 5).to_string();
    let long = run_json(&d, &["Say hi.", "--max-tokens", &more, "--ignore-eos"]);
    assert_eq!(long["stats"]["stop_reason"], "max_tokens");
    assert_eq!(token_ids(&long).len(), n + 5);
    assert_eq!(token_ids(&long)[..n], token_ids(&short)[..]);
}

#[test]
fn stop_strings_end_generation_before_the_match() {
    let d = Daemon::start(&[]);
    let full = run_json(&d, &[RAW_PROMPT, "--raw", "--max-tokens", "32"]);
    let text = full["text"].as_str().unwrap().to_string();
    // Stop at a word in the middle of the greedy answer.
    let word = text
        .split_whitespace()
        .nth(3)
        .expect("answer has words")
        .to_string();
    let at = text.find(&word).unwrap();
    let cut = run_json(
        &d,
        &[RAW_PROMPT, "--raw", "--max-tokens", "32", "--stop", &word],
    );
    assert_eq!(cut["text"].as_str().unwrap(), &text[..at]);
    assert_eq!(cut["stats"]["stop_reason"], "stop_string");
    assert_eq!(cut["stats"]["stop_string"], word.as_str());
    let streamed: String = cut["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        streamed,
        cut["text"].as_str().unwrap(),
        "streamed text must never include the stop string"
    );
}

#[test]
fn stats_are_reported_and_load_time_is_kept_apart() {
    let d = Daemon::start(&[]);
    let first = run_json(&d, &[RAW_PROMPT, "--raw", "--max-tokens", "8"]);
    let second = run_json(&d, &[RAW_PROMPT, "--raw", "--max-tokens", "8"]);
    assert!(
        first["stats"]["load_ms"]
            .as_f64()
            .is_some_and(|ms| ms > 0.0),
        "first request loads: {first}"
    );
    assert!(
        second["stats"]["load_ms"].is_null(),
        "the warm model must not report a load"
    );
    // The load is reported apart: TTFT starts when the model is ready, total_ms spans both.
    let f = &first["stats"];
    let (load, ttft, total) = (
        f["load_ms"].as_f64().unwrap(),
        f["ttft_ms"].as_f64().unwrap(),
        f["total_ms"].as_f64().unwrap(),
    );
    assert!(
        total >= load + ttft,
        "total {total} < load {load} + ttft {ttft}"
    );
    let s = &second["stats"];
    assert_eq!(s["generated_tokens"], 8);
    assert_eq!(s["stop_reason"], "max_tokens");
    assert!(s["prompt_tokens"].as_u64().unwrap() > 3);
    let ttft = s["ttft_ms"].as_f64().unwrap();
    let total = s["total_ms"].as_f64().unwrap();
    assert!(ttft > 0.0 && ttft <= total, "ttft {ttft} total {total}");
    assert!(s["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
    let elapsed: Vec<f64> = second["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["elapsed_ms"].as_f64().unwrap())
        .collect();
    assert!(
        elapsed.windows(2).all(|w| w[0] <= w[1]),
        "token times go backwards: {elapsed:?}"
    );
    // --verbose prints the stats line to stderr, keeping stdout clean.
    let out = d.cli(&[
        "run",
        MODEL,
        RAW_PROMPT,
        "--raw",
        "--max-tokens",
        "4",
        "--verbose",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TTFT") && err.contains("tok/s"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("TTFT"));
}

fn cached(run: &serde_json::Value) -> u64 {
    run["stats"]["cached_prompt_tokens"].as_u64().unwrap_or(0)
}

fn prompt_tokens(run: &serde_json::Value) -> u64 {
    run["stats"]["prompt_tokens"]
        .as_u64()
        .expect("prompt_tokens")
}

/// Prompt caching (opt-in): a request computes only what an idle slot's KV cache does not
/// already hold, and with nothing evicted it generates what the whole prompt computed afresh
/// gives.
#[test]
fn the_prompt_cache_reuses_what_an_earlier_request_computed_and_changes_no_token() {
    let d = Daemon::start(&[]);
    let quantum = "Explain quantum computing in simple terms.";
    let gravity = "Explain gravity in simple terms.";
    let cold = |p: &str| run_json(&d, &[p, "--max-tokens", "24"]);
    let warm = |p: &str| run_json(&d, &[p, "--max-tokens", "24", "--cache-prompt"]);

    let q_cold = cold(quantum);
    assert_eq!(
        cached(&q_cold),
        0,
        "a request without --cache-prompt reused a prefix"
    );
    // Nothing cached yet (requests without --cache-prompt leave nothing behind).
    assert_eq!(cached(&warm(quantum)), 0);
    // The same prompt again: everything but its last token is cached.
    let q_warm = warm(quantum);
    assert_eq!(cached(&q_warm), prompt_tokens(&q_warm) - 1);
    assert_eq!(token_ids(&q_warm), token_ids(&q_cold));
    assert_eq!(q_warm["text"], q_cold["text"]);

    // Another question after the same system prompt: the shared part is cached, the rest is
    // computed over what the slot held (the cut must drop the old question's cells).
    let g_warm = warm(gravity);
    let g_cached = cached(&g_warm);
    assert!(
        g_cached >= 20 && g_cached < prompt_tokens(&g_warm) - 2,
        "shared system prompt: {g_cached} of {} cached",
        prompt_tokens(&g_warm)
    );
    let g_cold = cold(gravity);
    assert_eq!(token_ids(&g_warm), token_ids(&g_cold));

    // A chat's next turn resends the conversation: its earlier turns are cached.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let turn = |content: &str, role: &str| pb::ChatMessage {
        role: role.into(),
        content: content.into(),
    };
    let conversation = vec![
        turn(quantum, "user"),
        turn(q_cold["text"].as_str().unwrap(), "assistant"),
        turn("Say that in one sentence.", "user"),
    ];
    let ask = |cache_prompt: bool| {
        rt.block_on(minerva_e2e::generate_ids(
            &d,
            pb::GenerateRequest {
                model: MODEL.into(),
                input: Some(pb::generate_request::Input::Chat(pb::Chat {
                    messages: conversation.clone(),
                })),
                max_tokens: Some(16),
                cache_prompt: Some(cache_prompt),
                ..Default::default()
            },
        ))
    };
    let _ = warm(quantum); // the first turn, now cached in a slot
    let (warm_ids, warm_stats) = ask(true);
    assert!(
        u64::from(warm_stats.cached_prompt_tokens) > prompt_tokens(&q_cold),
        "the first turn ({} tokens) was not reused: {} of {} cached",
        prompt_tokens(&q_cold),
        warm_stats.cached_prompt_tokens,
        warm_stats.prompt_tokens
    );
    let (cold_ids, cold_stats) = ask(false);
    assert_eq!(cold_stats.cached_prompt_tokens, 0);
    // The cold run computes the earlier answer as one batch where the warm one had it token by
    // token, so only the start of the answer is held to be the same.
    assert_eq!(warm_ids[..4], cold_ids[..4]);
}
