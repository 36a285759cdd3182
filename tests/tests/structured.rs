//! Structured output: JSON schemas, JSON objects, regexes, Lark grammars and choices enforced
//! token by token on the real model, greedy and sampled, several requests batched at once; the
//! answers checked by the JSON Schema project's own Python validator, not by the code that
//! enforced them. Bad constraints are refused before anything is queued.

use std::process::Command;

use minerva_e2e::{client_python, generate_ids, generate_ids_on, output_with_stdin, Daemon, MODEL};
use minerva_proto::v1 as pb;
use pb::constraint::Kind;
use serde_json::json;

fn schemas() -> Vec<(&'static str, serde_json::Value)> {
    let int = |lo: i64, hi: i64| json!({"type": "integer", "minimum": lo, "maximum": hi});
    vec![
        (
            "Describe a person called Ada, in JSON.",
            json!({
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 20},
                    "age": int(0, 120),
                    "email": {"type": "string", "maxLength": 30},
                },
                "required": ["name", "age"],
                "additionalProperties": false,
            }),
        ),
        (
            "Pick a color and give its RGB values, in JSON.",
            json!({
                "type": "object",
                "properties": {
                    "color": {"enum": ["red", "green", "blue"]},
                    "rgb": {
                        "type": "object",
                        "properties": {"r": int(0, 255), "g": int(0, 255), "b": int(0, 255)},
                        "required": ["r", "g", "b"],
                        "additionalProperties": false,
                    },
                },
                "required": ["color", "rgb"],
                "additionalProperties": false,
            }),
        ),
        (
            "List a few fruits, in JSON.",
            json!({
                "type": "object",
                "properties": {
                    "fruits": {
                        "type": "array",
                        "items": {"type": "string", "maxLength": 15},
                        "minItems": 1,
                        "maxItems": 4,
                    },
                },
                "required": ["fruits"],
                "additionalProperties": false,
            }),
        ),
        (
            "What is the weather like today? Answer in JSON.",
            json!({
                "type": "object",
                "properties": {
                    "temperature": {"type": "number", "minimum": -50, "maximum": 60},
                    "sunny": {"type": "boolean"},
                },
                "required": ["temperature", "sunny"],
                "additionalProperties": false,
            }),
        ),
        (
            "Give a line segment from one point to another, in JSON.",
            json!({
                "$defs": {
                    "point": {
                        "type": "object",
                        "properties": {"x": int(-100, 100), "y": int(-100, 100)},
                        "required": ["x", "y"],
                        "additionalProperties": false,
                    },
                },
                "type": "object",
                "properties": {
                    "from": {"$ref": "#/$defs/point"},
                    "to": {"$ref": "#/$defs/point"},
                },
                "required": ["from", "to"],
                "additionalProperties": false,
            }),
        ),
    ]
}

fn chat(prompt: &str) -> Option<pb::generate_request::Input> {
    Some(pb::generate_request::Input::Chat(pb::Chat {
        messages: vec![pb::ChatMessage {
            role: "user".into(),
            content: prompt.into(),
        }],
    }))
}

fn constrained(prompt: &str, kind: Kind, seed: Option<u64>) -> pb::GenerateRequest {
    pb::GenerateRequest {
        model: MODEL.into(),
        input: chat(prompt),
        max_tokens: Some(160),
        sampling: seed.map(|seed| pb::SamplingParams {
            temperature: Some(0.8),
            seed: Some(seed),
            ..Default::default()
        }),
        constraint: Some(pb::Constraint { kind: Some(kind) }),
        ..Default::default()
    }
}

/// The Python validator's verdict on `cases` (JSON lines of schema or regex, and text).
fn validate(cases: &[serde_json::Value]) -> serde_json::Value {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/validate_json.py");
    let lines: String = cases.iter().map(|c| format!("{c}\n")).collect();
    let out = output_with_stdin(Command::new(client_python()).arg(script), lines.as_bytes());
    assert!(out.status.success(), "the validator failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_constrained_answers_all_validate_greedy_and_sampled() {
    let d = Daemon::start(&["--parallel", "4"]);
    let mut requests = Vec::new();
    for (prompt, schema) in schemas() {
        // One greedy answer and nine sampled ones per schema.
        for seed in [None].into_iter().chain((1..10).map(Some)) {
            let req = constrained(prompt, Kind::JsonSchema(schema.to_string()), seed);
            requests.push((schema.clone(), req));
        }
    }
    assert_eq!(requests.len(), 50);
    // Four at a time: the worker batches them, each with its own grammar state.
    let mut cases = Vec::new();
    for group in requests.chunks(4) {
        let answers = futures_join(&d, group.iter().map(|(_, r)| r.clone()).collect()).await;
        for ((schema, _), (ids, stats)) in group.iter().zip(answers) {
            assert_eq!(
                stats.stop_reason,
                pb::StopReason::Eos as i32,
                "{}: {}",
                stats.text,
                ids.len()
            );
            assert_eq!(stats.constraint_complete, Some(true), "{}", stats.text);
            cases.push(json!({"schema": schema, "text": stats.text}));
        }
    }
    let verdict = validate(&cases);
    eprintln!(
        "{}",
        cases
            .iter()
            .map(|c| c["text"].to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(verdict["checked"], 50, "{verdict}");
    assert_eq!(verdict["failures"], json!([]), "{verdict}");
    // Sampling still samples under a constraint: the answers are not all alike.
    let distinct: std::collections::HashSet<_> = cases.iter().map(|c| c["text"].clone()).collect();
    assert!(
        distinct.len() > 25,
        "{} distinct answers of 50",
        distinct.len()
    );
}

/// Sends `reqs` at once and waits for all of them.
async fn futures_join(
    d: &Daemon,
    reqs: Vec<pb::GenerateRequest>,
) -> Vec<(Vec<u32>, pb::GenerationStats)> {
    let mut handles = Vec::new();
    for r in reqs {
        let channel = d.channel().await;
        handles.push(tokio::spawn(generate_ids_on(channel, r)));
    }
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regexes_grammars_choices_and_json_objects_hold_too() {
    let d = Daemon::start(&[]);
    let phone = r"\(\d{3}\) \d{3}-\d{4}";
    let grammar = r#"
start: item (", " item){1,3}
item: /[a-z]{2,10}/
"#;
    let options = ["yes, gladly", "no (sorry)", "maybe.*"];
    let mut cases = Vec::new();
    for seed in [None, Some(1), Some(2)] {
        let (_, s) = generate_ids(
            &d,
            constrained(
                "What is your phone number?",
                Kind::Regex(phone.into()),
                seed,
            ),
        )
        .await;
        assert_eq!(s.constraint_complete, Some(true), "{}", s.text);
        cases.push(json!({"regex": phone, "text": s.text}));

        let (_, s) = generate_ids(
            &d,
            constrained("Name some animals.", Kind::Grammar(grammar.into()), seed),
        )
        .await;
        assert_eq!(s.constraint_complete, Some(true), "{}", s.text);
        cases.push(json!({"regex": "[a-z]{2,10}(, [a-z]{2,10}){1,3}", "text": s.text}));

        let choice = Kind::Choice(pb::Choice {
            options: options.iter().map(|o| o.to_string()).collect(),
        });
        let (_, s) = generate_ids(&d, constrained("Will you help me?", choice, seed)).await;
        assert!(options.contains(&s.text.as_str()), "{:?}", s.text);

        let object = Kind::JsonObject(pb::JsonObject {});
        let mut req = constrained("Describe a cat in JSON.", object, seed);
        req.max_tokens = Some(400);
        let (_, s) = generate_ids(&d, req).await;
        if s.constraint_complete == Some(true) {
            cases.push(json!({"schema": {"type": "object"}, "text": s.text}));
        } else {
            // Any object may go on: then it stopped at max_tokens and says so.
            assert_eq!(
                s.stop_reason,
                pb::StopReason::MaxTokens as i32,
                "{}",
                s.text
            );
        }
    }
    let verdict = validate(&cases);
    assert_eq!(verdict["failures"], json!([]), "{verdict}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_constraints_are_refused_before_queueing_and_cut_answers_say_so() {
    let d = Daemon::start(&[]);
    let mut c = pb::generate_service_client::GenerateServiceClient::new(d.channel().await);
    let refused = [
        (
            Kind::JsonSchema("{not json".into()),
            "constraint.json_schema",
        ),
        (
            Kind::JsonSchema(r#"{"type": "object", "minProperties": "x"}"#.into()),
            "constraint.json_schema",
        ),
        (Kind::Regex("(unclosed".into()), "constraint.regex"),
        (
            Kind::Grammar("start: undefined_rule".into()),
            "constraint.grammar",
        ),
        (
            Kind::Choice(pb::Choice { options: vec![] }),
            "constraint.choice",
        ),
    ];
    for (kind, field) in refused {
        let e = c
            .generate(constrained("Hi", kind.clone(), None))
            .await
            .expect_err("a bad constraint");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{kind:?}: {e:?}");
        assert!(e.message().contains(field), "{kind:?}: {}", e.message());
        eprintln!("{field}: {}", e.message());
    }
    let mut both = constrained("Hi", Kind::JsonObject(pb::JsonObject {}), None);
    both.ignore_eos = Some(true);
    let e = c
        .generate(both)
        .await
        .expect_err("ignore_eos with a constraint");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("ignore_eos"), "{}", e.message());

    // Too few tokens to finish: the answer is a valid beginning, and the stats say it is cut.
    let (_, s) = {
        let schema = &schemas()[0].1;
        let mut req = constrained("Describe Ada.", Kind::JsonSchema(schema.to_string()), None);
        req.max_tokens = Some(3);
        generate_ids(&d, req).await
    };
    assert_eq!(s.stop_reason, pb::StopReason::MaxTokens as i32);
    assert_eq!(s.constraint_complete, Some(false), "{}", s.text);
    assert!(s.text.starts_with('{'), "{}", s.text);
    // A stop string cuts the text the grammar read: not complete either.
    let mut req = constrained("Describe Ada.", Kind::JsonObject(pb::JsonObject {}), None);
    req.stop = vec!["\"".into()];
    let (_, s) = generate_ids(&d, req).await;
    assert_eq!(
        s.stop_reason,
        pb::StopReason::StopString as i32,
        "{}",
        s.text
    );
    assert_eq!(s.constraint_complete, Some(false), "{}", s.text);
    assert_eq!(s.text, "{", "{}", s.text);

    // The CLI: a schema file, and the answer validates; then the daemon serves a plain request.
    let dir = tempfile::tempdir().unwrap();
    let schema = &schemas()[1].1;
    let file = dir.path().join("color.json");
    std::fs::write(&file, schema.to_string()).unwrap();
    let run = d.cli_json(&[
        "run",
        MODEL,
        "Pick a color.",
        "--json-schema",
        file.to_str().unwrap(),
    ]);
    let text = run["text"].as_str().unwrap();
    let verdict = validate(&[json!({"schema": schema, "text": text})]);
    assert_eq!(verdict["failures"], json!([]), "{verdict}");
    assert_eq!(run["stats"]["constraint_complete"], true, "{run}");
    let (ids, _) = generate_ids(
        &d,
        pb::GenerateRequest {
            model: MODEL.into(),
            input: chat("Hi"),
            max_tokens: Some(4),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids.len(), 4);
}
