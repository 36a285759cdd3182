//! Speculative decoding by prompt lookup: answers with speculation are the answers without it
//! (but for near ties, which batch shapes may round the other way), on llama.cpp and candle,
//! greedy and sampled seed for seed, with n > 1 and under a constraint; input-grounded prompts
//! get drafts accepted; a draft length out of range is refused.

use minerva_e2e::{
    assert_agree_but_for_a_near_tie, assert_same_draws, free_loopback_addr, generate_ids,
    generate_samples, metric_total, Daemon, Scored, MODEL,
};
use minerva_proto::v1 as pb;

const GROUNDED: [&str; 3] = [
    "Fix the typos in this text and write it out again in full:\n\nThe quick brown fox jumpd \
     over the lazy dog. Then the fox ran into the forrest, where it met a friendly bear.",
    "Copy this list exactly, then add one more city in the same format:\n\
     {\"city\": \"Paris\", \"country\": \"France\"},\n\
     {\"city\": \"Berlin\", \"country\": \"Germany\"},\n\
     {\"city\": \"Madrid\", \"country\": \"Spain\"},",
    "Rewrite this Python function with the variable x renamed to count:\n\n\
     def total(items):\n    x = 0\n    for item in items:\n        x = x + item.price\n    return x",
];

/// Raw text that the model goes on repeating: drafts that are surely taken.
const REPEATED: &str =
    "The cat sat on the mat.\nThe cat sat on the mat.\nThe cat sat on the mat.\n";

fn request(prompt: &str, backend: &str, speculate: bool) -> pb::GenerateRequest {
    use pb::generate_request::Input;
    pb::GenerateRequest {
        model: MODEL.into(),
        input: Some(if prompt == REPEATED {
            Input::Prompt(prompt.into())
        } else {
            Input::Chat(pb::Chat {
                messages: vec![pb::ChatMessage {
                    role: "user".into(),
                    content: prompt.into(),
                }],
            })
        }),
        max_tokens: Some(64),
        logprobs: Some(pb::LogprobsOptions {
            top: 2,
            prompt: false,
        }),
        options: Some(pb::LoadOptions {
            backend: Some(backend.into()),
            ..Default::default()
        }),
        // At a fixed length: these tests are about what drafts do to the answer, so drafts are
        // made and checked on every step, whether or not they pay on this machine's backend
        // (on candle a checked token can cost a whole step, and adaptive drafting then stays
        // off). Adaptive lengths have their unit tests and the daemon-default test below.
        speculation: speculate.then_some(pb::Speculation {
            max_draft: Some(4),
            fixed_length: true,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The tokens (with their two likeliest alternatives) and the stats of one request.
async fn scored(d: &Daemon, req: pb::GenerateRequest) -> (Vec<Scored>, pb::GenerationStats) {
    generate_samples(d, req).await.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_answers_with_speculation_are_the_answers_without_it() {
    let addr = free_loopback_addr();
    let d = Daemon::start(&["--metrics", &addr]);
    let (mut all_drafted, mut all_accepted) = (0, 0);
    for backend in ["llama.cpp", "candle"] {
        let (mut drafted, mut accepted) = (0, 0);
        for prompt in GROUNDED.into_iter().chain([REPEATED]) {
            let (plain, p) = scored(&d, request(prompt, backend, false)).await;
            let (spec, s) = scored(&d, request(prompt, backend, true)).await;
            assert_eq!(p.drafted_tokens, 0);
            let parted =
                assert_agree_but_for_a_near_tie(&plain, &spec, &format!("{backend}: {prompt}"));
            if parted.is_none() {
                assert_eq!(p.text, s.text, "{backend}");
                assert_eq!(p.stop_reason, s.stop_reason, "{backend}");
            }
            assert!(s.accepted_tokens <= s.drafted_tokens);
            drafted += s.drafted_tokens;
            accepted += s.accepted_tokens;
        }
        eprintln!("{backend}: {accepted} of {drafted} drafted tokens accepted");
        all_drafted += drafted;
        all_accepted += accepted;
        // Answers that repeat their input: drafts are made, and the model takes some.
        assert!(
            drafted > 0 && accepted > 0,
            "{backend}: {accepted}/{drafted}"
        );
    }
    // The metrics count exactly what the requests' stats said.
    let metric = |name| metric_total(&addr, name);
    assert_eq!(
        metric("minerva:spec_decode_num_draft_tokens_total"),
        f64::from(all_drafted)
    );
    assert_eq!(
        metric("minerva:spec_decode_num_accepted_tokens_total"),
        f64::from(all_accepted)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draft_length_out_of_range_is_refused() {
    let d = Daemon::start(&[]);
    let mut c = pb::generate_service_client::GenerateServiceClient::new(d.channel().await);
    let with = |f: &dyn Fn(&mut pb::GenerateRequest)| {
        let mut r = request("Hi", "llama.cpp", true);
        f(&mut r);
        r
    };
    let cases: [(pb::GenerateRequest, &str); 2] = [
        (
            with(&|r| {
                r.speculation = Some(pb::Speculation {
                    max_draft: Some(0),
                    ..Default::default()
                })
            }),
            "1 to 16",
        ),
        (
            with(&|r| {
                r.speculation = Some(pb::Speculation {
                    max_draft: Some(17),
                    ..Default::default()
                })
            }),
            "1 to 16",
        ),
    ];
    for (req, words) in cases {
        let e = c.generate(req).await.expect_err("refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(words), "{words}: {}", e.message());
    }
    // The daemon serves on, with speculation.
    let (ids, stats) = generate_ids(&d, with(&|_| {})).await;
    assert_eq!(ids.len() as u32, stats.generated_tokens);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_samples_with_speculation_are_the_seeds_samples_without_it() {
    let d = Daemon::start(&["--parallel", "2"]);
    for backend in ["llama.cpp", "candle"] {
        let (mut drafted, mut accepted, mut parted) = (0, 0, 0);
        // Tokens of the answers without speculation, and how many of them the answers with it
        // drew alike before they parted.
        let (mut tokens, mut alike) = (0, 0);
        for prompt in GROUNDED.into_iter().chain([REPEATED]) {
            for seed in [7] {
                let sampled = |speculate| {
                    let mut r = request(prompt, backend, speculate);
                    r.n = Some(2);
                    r.sampling = Some(pb::SamplingParams {
                        temperature: Some(0.7),
                        seed: Some(seed),
                        ..Default::default()
                    });
                    r
                };
                let plain = generate_samples(&d, sampled(false)).await;
                let spec = generate_samples(&d, sampled(true)).await;
                for (k, ((p, _), (s, stats))) in plain.iter().zip(&spec).enumerate() {
                    let what = format!("{backend}, seed {seed}, sample {k}: {prompt}");
                    let at = assert_same_draws(p, s, &what);
                    parted += usize::from(at.is_some());
                    tokens += p.len();
                    alike += at.unwrap_or(p.len());
                    drafted += stats.drafted_tokens;
                    accepted += stats.accepted_tokens;
                }
            }
        }
        eprintln!(
            "{backend}: {accepted} of {drafted} drafted tokens accepted; {parted} of 8 answers \
             parted; {alike} of {tokens} tokens drawn alike before that"
        );
        assert!(accepted > 0, "{backend}: no sampled draft was taken");
        // Rounding parts some answers (a draw near the edge between two tokens' shares), late
        // on the whole: most tokens are drawn alike.
        assert!(
            2 * alike > tokens,
            "{backend}: {alike} of {tokens} drawn alike"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_constrained_answer_with_speculation_is_the_answer_without_it() {
    let d = Daemon::start(&[]);
    let schema = r#"{"type": "array", "items": {"type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"], "additionalProperties": false}}"#;
    let prompt = "Write this list as a JSON array, with one more city at the end:\n\
        {\"city\": \"Paris\", \"country\": \"France\"},\n\
        {\"city\": \"Berlin\", \"country\": \"Germany\"},\n\
        {\"city\": \"Madrid\", \"country\": \"Spain\"},";
    let constrained = |speculate| {
        let mut r = request(prompt, "llama.cpp", speculate);
        r.max_tokens = Some(96);
        r.constraint = Some(pb::Constraint {
            kind: Some(pb::constraint::Kind::JsonSchema(schema.into())),
        });
        r
    };
    let (plain, p) = scored(&d, constrained(false)).await;
    let (spec, s) = scored(&d, constrained(true)).await;
    if assert_agree_but_for_a_near_tie(&plain, &spec, "constrained").is_none() {
        assert_eq!(p.text, s.text);
        assert_eq!(p.constraint_complete, s.constraint_complete);
    }
    let list: serde_json::Value =
        serde_json::from_str(&s.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", s.text));
    assert!(list.as_array().is_some_and(|a| a.len() >= 3), "{list}");
    assert_eq!(s.constraint_complete, Some(true));
    eprintln!(
        "constrained: {} of {} drafted tokens accepted",
        s.accepted_tokens, s.drafted_tokens
    );
    assert!(
        s.accepted_tokens > 0,
        "the copied list drafted nothing taken"
    );
}

/// Sampled with speculation, the tokens have the distribution they have without it: the
/// first six tokens after a repeated line, at temperature 1, over 150 seeds each way (other
/// seeds for each arm, so the samples are independent), compared by a chi-square test of
/// homogeneity at significance 0.001 over the five commonest continuations and the rest.
/// Accepting drafts the model would not draw (the repeated line) fails it by far.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_tokens_with_speculation_have_the_distribution_without_it() {
    const SEEDS: u64 = 150;
    // Chi-square critical values at 0.001, by degrees of freedom (1 to 5).
    const CRITICAL: [f64; 5] = [10.83, 13.82, 16.27, 18.47, 20.52];
    let d = Daemon::start(&[]);
    let mut arms: [std::collections::HashMap<Vec<u32>, u64>; 2] = Default::default();
    let (mut drafted, mut accepted) = (0, 0);
    for (arm, speculate) in [false, true].into_iter().enumerate() {
        for seed in 0..SEEDS {
            let mut r = request(REPEATED, "llama.cpp", speculate);
            r.max_tokens = Some(6);
            r.sampling = Some(pb::SamplingParams {
                temperature: Some(1.0),
                seed: Some(seed + arm as u64 * SEEDS),
                ..Default::default()
            });
            let (ids, stats) = generate_ids(&d, r).await;
            *arms[arm].entry(ids).or_default() += 1;
            drafted += stats.drafted_tokens;
            accepted += stats.accepted_tokens;
        }
    }
    let mut all: Vec<(Vec<u32>, u64)> = arms[0].clone().into_iter().collect();
    for (k, n) in &arms[1] {
        match all.iter_mut().find(|(a, _)| a == k) {
            Some((_, m)) => *m += n,
            None => all.push((k.clone(), *n)),
        }
    }
    all.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    // The commonest continuations, each seen at least 10 times in all; the rest pooled.
    let top: Vec<Vec<u32>> = all
        .iter()
        .take(5)
        .filter(|(_, n)| *n >= 10)
        .map(|(k, _)| k.clone())
        .collect();
    let cell = |arm: usize, c: usize| -> f64 {
        match top.get(c) {
            Some(k) => arms[arm].get(k).copied().unwrap_or(0) as f64,
            None => arms[arm]
                .iter()
                .filter(|(k, _)| !top.contains(k))
                .map(|(_, n)| *n as f64)
                .sum(),
        }
    };
    let cells = top.len() + 1;
    let mut chi2 = 0.0;
    for c in 0..cells {
        let total = cell(0, c) + cell(1, c);
        for arm in 0..2 {
            let expected = total / 2.0; // both arms have SEEDS samples
            if expected > 0.0 {
                chi2 += (cell(arm, c) - expected).powi(2) / expected;
            }
        }
    }
    let counts: Vec<(f64, f64)> = (0..cells).map(|c| (cell(0, c), cell(1, c))).collect();
    eprintln!(
        "{accepted} of {drafted} drafted tokens accepted; continuations (without, with): \
         {counts:?}; chi-square {chi2:.2} over {} degrees of freedom",
        cells - 1
    );
    assert!(
        cells >= 2,
        "the sampled continuations hardly vary: {counts:?}"
    );
    assert!(accepted > 0, "no draft was taken");
    assert!(
        chi2 < CRITICAL[cells - 2],
        "the distributions differ: chi-square {chi2:.2} >= {} ({counts:?})",
        CRITICAL[cells - 2]
    );
}

/// `minervad --speculate N`: requests that do not say draft (at most N a step), one with mode
/// OFF does not, and OFF with a draft length is refused; Status reports the default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_default_drafts_for_requests_that_do_not_say() {
    let d = Daemon::start(&["--speculate", "4"]);
    let mut status = pb::daemon_service_client::DaemonServiceClient::new(d.channel().await);
    let s = status
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.default_max_draft, 4);
    let (_, by_default) = scored(&d, request(REPEATED, "llama.cpp", false)).await;
    assert!(by_default.accepted_tokens > 0, "{by_default:?}");
    let off = |max_draft| {
        let mut r = request(REPEATED, "llama.cpp", false);
        r.speculation = Some(pb::Speculation {
            max_draft,
            mode: pb::SpeculationMode::Off as i32,
            ..Default::default()
        });
        r
    };
    let (_, plain) = scored(&d, off(None)).await;
    assert_eq!(plain.drafted_tokens, 0);
    assert_eq!(plain.text, by_default.text);
    let mut c = pb::generate_service_client::GenerateServiceClient::new(d.channel().await);
    let e = c.generate(off(Some(4))).await.expect_err("refused");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("mode OFF"), "{}", e.message());
    // The CLI says the default, and --no-speculate turns it off.
    assert!(d
        .cli_ok(&["status"])
        .contains("4 tokens a step (a model's draft model, else prompt lookup)"));
    let r = d.cli_json(&[
        "run",
        MODEL,
        REPEATED,
        "--raw",
        "--max-tokens",
        "32",
        "--no-speculate",
    ]);
    assert_eq!(r["stats"]["drafted_tokens"].as_u64().unwrap_or(0), 0, "{r}");
}
