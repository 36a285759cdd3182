//! Several samples of one prompt (`n`): the prompt is computed once and its KV cells shared;
//! greedy samples are the greedy answer, sampled ones differ, and sample k is what a single
//! request with seed + k gives.

use minerva_e2e::{
    assert_agree_but_for_a_near_tie, free_loopback_addr, generate_samples as samples, metric_total,
    Daemon, Scored, MODEL,
};
use minerva_proto::v1 as pb;

const PROMPT: &str = "Write a short poem about the sea.";

fn request(n: Option<u32>, seed: Option<u64>) -> pb::GenerateRequest {
    pb::GenerateRequest {
        model: MODEL.into(),
        input: Some(pb::generate_request::Input::Chat(pb::Chat {
            messages: vec![pb::ChatMessage {
                role: "user".into(),
                content: PROMPT.into(),
            }],
        })),
        max_tokens: Some(24),
        n,
        sampling: seed.map(|seed| pb::SamplingParams {
            temperature: Some(1.0),
            seed: Some(seed),
            ..Default::default()
        }),
        logprobs: Some(pb::LogprobsOptions {
            top: 2,
            prompt: false,
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_samples_are_the_greedy_answer_and_the_prompt_is_computed_once() {
    let addr = free_loopback_addr();
    let d = Daemon::start(&["--parallel", "4", "--metrics", &addr]);
    let (one, _) = samples(&d, request(None, None)).await.remove(0);
    let before = metric_total(&addr, "minerva:prompt_tokens_total");
    let four = samples(&d, request(Some(4), None)).await;
    let computed = metric_total(&addr, "minerva:prompt_tokens_total") - before;
    assert_eq!(four.len(), 4);
    let prompt = four[0].1.prompt_tokens;
    assert_eq!(
        computed,
        f64::from(prompt),
        "the prompt was computed more than once"
    );
    for (k, (tokens, stats)) in four.iter().enumerate() {
        assert_eq!(stats.sample, k as u32);
        assert_eq!(stats.prompt_tokens, prompt);
        // Sample 0 computed the prompt; the others reused its cells.
        let shared = if k == 0 { 0 } else { prompt };
        assert_eq!(stats.cached_prompt_tokens, shared, "sample {k}");
        // Four sequences decode as a batch, whose kernels may round a near tie the other way.
        assert_agree_but_for_a_near_tie(&one, tokens, &format!("greedy sample {k}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_samples_differ_and_each_is_a_single_request_with_its_seed() {
    let d = Daemon::start(&["--parallel", "4"]);
    let ids = |s: &[(Vec<Scored>, pb::GenerationStats)]| -> Vec<Vec<u32>> {
        s.iter()
            .map(|(t, _)| t.iter().map(|x| x.id).collect())
            .collect()
    };
    let first = ids(&samples(&d, request(Some(3), Some(11))).await);
    let again = ids(&samples(&d, request(Some(3), Some(11))).await);
    assert_eq!(first, again, "the same request gives the same samples");
    assert!(
        first[0] != first[1] || first[1] != first[2],
        "three sampled answers, all alike: {first:?}"
    );
    for (k, sample) in first.iter().enumerate() {
        let single = ids(&samples(&d, request(None, Some(11 + k as u64))).await);
        assert_eq!(&single[0], sample, "sample {k} against seed {}", 11 + k);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_counts_out_of_range_are_refused() {
    let d = Daemon::start(&["--parallel", "2"]);
    let mut c = pb::generate_service_client::GenerateServiceClient::new(d.channel().await);
    for (n, words) in [(0, "1 to 16"), (17, "1 to 16"), (3, "--parallel")] {
        let e = c
            .generate(request(Some(n), None))
            .await
            .expect_err("a bad n");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{n}: {e:?}");
        assert!(e.message().contains(words), "{n}: {}", e.message());
    }
    // The daemon serves on: two samples fit --parallel 2.
    let mut s = c
        .generate(request(Some(2), None))
        .await
        .unwrap()
        .into_inner();
    let mut ends = 0;
    while let Some(m) = s.message().await.unwrap() {
        if let Some(pb::generate_response::Event::Done(_)) = m.event {
            ends += 1;
        }
    }
    assert_eq!(ends, 2);
}
