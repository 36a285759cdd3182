//! Continuous batching in the daemon: concurrent requests decode together (each one's first
//! token arrives before any of them finishes), give the tokens each would alone (but for a near
//! tie that the batch's kernels may round the other way), and are admitted only while their KV
//! reservations (prompt + max_tokens) fit the context.

use std::time::Instant;

use minerva_e2e::{assert_agree_but_for_a_near_tie, Daemon, Scored, MODEL};
use minerva_proto::v1 as pb;
use pb::generate_service_client::GenerateServiceClient;

/// A greedy request's tokens and when (client side) its first token and its end arrived.
struct Timed {
    ids: Vec<Scored>,
    first: Instant,
    done: Instant,
}

async fn generate(d: &Daemon, prompt: &str, max_tokens: u32) -> Timed {
    let mut c = GenerateServiceClient::new(d.channel().await);
    let mut s = c
        .generate(pb::GenerateRequest {
            model: MODEL.into(),
            input: Some(pb::generate_request::Input::Prompt(prompt.into())),
            max_tokens: Some(max_tokens),
            logprobs: Some(pb::LogprobsOptions {
                top: 2,
                prompt: false,
            }),
            ..Default::default()
        })
        .await
        .expect("generate")
        .into_inner();
    let mut ids = Vec::new();
    let mut first = None;
    while let Some(m) = s.message().await.expect("stream") {
        match m.event {
            Some(pb::generate_response::Event::Token(t)) => {
                first.get_or_insert_with(Instant::now);
                ids.push(Scored::from_proto(&t));
            }
            Some(pb::generate_response::Event::Done(stats)) => {
                assert_eq!(stats.generated_tokens as usize, ids.len());
                return Timed {
                    ids,
                    first: first.expect("no token before done"),
                    done: Instant::now(),
                };
            }
            _ => {}
        }
    }
    panic!("stream ended without stats");
}

const PROMPTS: [&str; 3] = [
    "The capital of France is",
    "List three animals:",
    "Once upon a time",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_decode_together_and_match_their_solo_runs() {
    let d = Daemon::start(&["--parallel", "4"]);
    let mut solo = Vec::new();
    for p in PROMPTS {
        solo.push(generate(&d, p, 24).await.ids);
    }
    let together = futures_join(PROMPTS.iter().map(|p| generate(&d, p, 24))).await;
    // Batched: every request had its first token before any request was done. One at a time,
    // the last request's first token would come after the first request's end.
    let last_first = together.iter().map(|t| t.first).max().unwrap();
    let first_done = together.iter().map(|t| t.done).min().unwrap();
    assert!(
        last_first < first_done,
        "requests ran one after another, not batched"
    );
    for (i, t) in together.iter().enumerate() {
        assert_agree_but_for_a_near_tie(&solo[i], &t.ids, PROMPTS[i]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_wait_while_their_kv_reservation_does_not_fit() {
    // A 64-token context: two requests of ~10 prompt + 40 new tokens can't share it.
    let d = Daemon::start(&["--parallel", "4", "--ctx", "64"]);
    let runs =
        futures_join(["Count: one two", "Count: three four"].map(|p| generate(&d, p, 40))).await;
    let (a, b) = if runs[0].first < runs[1].first {
        (&runs[0], &runs[1])
    } else {
        (&runs[1], &runs[0])
    };
    // Admission goes by the reservation, not by how long the answer turns out to be.
    assert!(!a.ids.is_empty() && !b.ids.is_empty());
    assert!(
        b.first >= a.done,
        "the second request started before the first released its cells"
    );
    // Small ones fit together again.
    let runs = futures_join(["Hi", "Yo"].map(|p| generate(&d, p, 8))).await;
    assert!(runs.iter().map(|t| t.first).max() < runs.iter().map(|t| t.done).min());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_kv_per_sequence_each_request_has_a_whole_context() {
    // The same two requests as above, which cannot share one 64-token pool: with a context per
    // sequence they run together, each giving the tokens it gives alone. Also with llama.cpp's
    // flash attention off, whose attention sums over KV cells in cache order: in a shared pool
    // a sequence's cells sit elsewhere when another runs beside it, and its tokens changed
    // (tests/generate.rs failed that way); in its own stream they do not move.
    for fa in ["auto", "off"] {
        kv_per_sequence_run(fa).await;
    }
}

async fn kv_per_sequence_run(flash_attn: &str) {
    let d = Daemon::start_with_env(
        &["--parallel", "2", "--ctx", "64", "--kv-per-sequence"],
        &[("MINERVA_FLASH_ATTN", flash_attn)],
    );
    let prompts = ["Count: one two", "Count: three four"];
    let mut solo = Vec::new();
    for p in prompts {
        solo.push(generate(&d, p, 40).await.ids);
    }
    let runs = futures_join(prompts.map(|p| generate(&d, p, 40))).await;
    assert!(
        runs.iter().map(|t| t.first).max() < runs.iter().map(|t| t.done).min(),
        "the second request waited for the first: the contexts were shared"
    );
    for (i, t) in runs.iter().enumerate() {
        let what = format!("{:?}, flash attention {flash_attn}", prompts[i]);
        assert_agree_but_for_a_near_tie(&solo[i], &t.ids, &what);
    }
}

/// Runs futures concurrently on the test's runtime and returns their outputs in order.
async fn futures_join<F, T>(futs: impl IntoIterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T>,
{
    let futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<T>> = futs.iter().map(|_| None).collect();
    let mut pending: Vec<(usize, std::pin::Pin<Box<F>>)> = futs.into_iter().enumerate().collect();
    std::future::poll_fn(|cx| {
        pending.retain_mut(|(i, f)| match f.as_mut().poll(cx) {
            std::task::Poll::Ready(v) => {
                out[*i] = Some(v);
                false
            }
            std::task::Poll::Pending => true,
        });
        if pending.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.into_iter().map(|v| v.expect("finished")).collect()
}

/// Cached prompts hold KV cells: when a request needs them, the idle caches are forgotten
/// (least recently used first) and the request still gets its answer. (After an eviction a
/// sequence's new cells can lie before its cached ones, and llama.cpp adds attention up in
/// cell order, so only the start of a long greedy answer is held to be the same.)
#[test]
fn idle_prompt_caches_give_way_to_a_request_that_needs_their_cells() {
    let d = Daemon::start(&["--parallel", "2", "--ctx", "160"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let run = |prompt: &str, max_tokens: u32| {
        rt.block_on(minerva_e2e::generate_ids(
            &d,
            pb::GenerateRequest {
                model: MODEL.into(),
                input: Some(pb::generate_request::Input::Prompt(prompt.into())),
                max_tokens: Some(max_tokens),
                cache_prompt: Some(true),
                ..Default::default()
            },
        ))
    };
    let a = "The three primary colors are";
    let b = "Rust is a programming language that";
    let (a1, s1) = run(a, 24);
    assert_eq!(s1.cached_prompt_tokens, 0);
    // a's cache (~30 cells) stays beside b's reservation (prompt + 100 < 160 - 30)...
    let (b1, _) = run(b, 100);
    let (a2, s2) = run(a, 24);
    assert_eq!(
        s2.cached_prompt_tokens,
        s2.prompt_tokens - 1,
        "a's cache was kept"
    );
    assert_eq!(a1, a2);
    // ...but not beside b's reservation of 140: b reuses its own slot's prompt and a's cache
    // goes, so a starts afresh.
    let (b2, s3) = run(b, 140);
    assert_eq!(
        s3.cached_prompt_tokens,
        s3.prompt_tokens - 1,
        "b's own prefix"
    );
    assert_eq!(b2[..8], b1[..8]);
    let (a3, s4) = run(a, 24);
    assert_eq!(
        s4.cached_prompt_tokens, 0,
        "a's cache should have been evicted"
    );
    assert_eq!(a3, a1);
    // a again, with a reservation that b's cache does not fit beside: a's own prefix is
    // reused and b's cache goes.
    let (_, s5) = run(a, 150);
    assert_eq!(s5.cached_prompt_tokens, s5.prompt_tokens - 1);
    let (_, s6) = run(b, 8);
    assert_eq!(
        s6.cached_prompt_tokens, 0,
        "b's cache should have made room for a"
    );
    assert!(d.log_text().lines().all(|l| !l.contains("ERROR")));
}
