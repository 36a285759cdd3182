//! Speculative decoding by prompt lookup: greedy answers with speculation are the answers
//! without it (but for near ties, which batch shapes may round the other way), on llama.cpp and
//! candle; input-grounded prompts get drafts accepted; what it does not combine with yet is
//! refused, not ignored.

use minerva_e2e::{
    assert_agree_but_for_a_near_tie, free_loopback_addr, generate_ids, metric_total, Daemon,
    Scored, MODEL,
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
        speculation: speculate.then_some(pb::Speculation { max_draft: None }),
        ..Default::default()
    }
}

/// The tokens (with their two likeliest alternatives) and the stats of one request.
async fn scored(d: &Daemon, req: pb::GenerateRequest) -> (Vec<Scored>, pb::GenerationStats) {
    let mut c = pb::generate_service_client::GenerateServiceClient::new(d.channel().await);
    let mut s = c.generate(req).await.expect("generate").into_inner();
    let mut tokens = Vec::new();
    while let Some(m) = s.message().await.expect("stream") {
        match m.event {
            Some(pb::generate_response::Event::Token(t)) => tokens.push(Scored::from_proto(&t)),
            Some(pb::generate_response::Event::Done(stats)) => return (tokens, stats),
            _ => {}
        }
    }
    panic!("the stream ended without stats")
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
async fn what_speculation_does_not_combine_with_is_refused() {
    let d = Daemon::start(&[]);
    let mut c = pb::generate_service_client::GenerateServiceClient::new(d.channel().await);
    let with = |f: &dyn Fn(&mut pb::GenerateRequest)| {
        let mut r = request("Hi", "llama.cpp", true);
        f(&mut r);
        r
    };
    let cases: [(pb::GenerateRequest, &str); 5] = [
        (
            with(&|r| r.speculation = Some(pb::Speculation { max_draft: Some(0) })),
            "1 to 16",
        ),
        (
            with(&|r| {
                r.speculation = Some(pb::Speculation {
                    max_draft: Some(17),
                })
            }),
            "1 to 16",
        ),
        (
            with(&|r| {
                r.sampling = Some(pb::SamplingParams {
                    temperature: Some(0.7),
                    ..Default::default()
                })
            }),
            "temperature",
        ),
        (
            with(&|r| {
                r.constraint = Some(pb::Constraint {
                    kind: Some(pb::constraint::Kind::Regex("[a-z]+".into())),
                })
            }),
            "constraint",
        ),
        (with(&|r| r.n = Some(2)), "n > 1"),
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
