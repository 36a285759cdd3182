//! Benchmark tests, shared by the daemon (which runs them) and clients (which check a test list
//! before submitting it and hand the same tests to peers): the four standard scenarios (name,
//! prompt, new tokens), four input-grounded ones, llama-bench-style synthetic tests, and
//! prompt files.

use std::path::Path;

/// Most tokens a synthetic test may ask for.
pub const MAX_TOKENS: u32 = 1 << 20;

pub const STANDARD: [(&str, &str, u32); 4] = [
    ("greeting", "Hello, how are you?", 20),
    (
        "knowledge",
        "Explain quantum computing in simple terms.",
        100,
    ),
    (
        "code",
        "Write a Rust function to calculate Fibonacci numbers",
        150,
    ),
    (
        "long",
        "Summarize the history of artificial intelligence",
        200,
    ),
];

/// Input-grounded scenarios: answers that repeat much of their prompt (an edit, a quote, a
/// continuation in the same format), where speculative decoding by prompt lookup pays. Each
/// one's new-token count is at most SmolLM2-135M-Instruct's greedy answer length, so the
/// tokens measured are the answer, not what a model makes up past its end.
pub const GROUNDED: [(&str, &str, u32); 4] = [
    (
        "rename",
        "Rewrite this Python function with the variable x renamed to total and i renamed to \
         item. Output only the code.\n\n\
         def order_total(order):\n    x = 0\n    for i in order.items:\n        \
         if i.quantity > 0:\n            x = x + i.price * i.quantity\n    \
         if order.coupon is not None:\n        x = x - order.coupon.discount\n    return x",
        128,
    ),
    (
        "quote",
        "Read the text, then answer the question by quoting the one sentence of the text that \
         answers it, word for word.\n\nText: The lighthouse on Gull Island was built in 1872 \
         by the harbour board. Its lamp was first lit with whale oil and later with kerosene. \
         In 1936 the keepers left the island, and the light has been automatic ever since, \
         running on a battery that solar panels charge during the day. Visitors can climb its \
         112 steps on summer weekends, when a volunteer society opens the door.\n\n\
         Question: How has the light been run since the keepers left?",
        28,
    ),
    (
        "typos",
        "Fix the spelling mistakes in this text and write it out again in full:\n\n\
         Yesterday we went to the musuem in the citty centre. The new exibition was about the \
         history of flight, from the first balloons to modern jet engins. My brother liked the \
         old planes best, but I thought the space rokets were more intresting. Afterwards we \
         had lunch in a small cafe next to the river.",
        64,
    ),
    (
        "json",
        "Continue this JSON list with three more fruits in exactly the same format:\n\n[\n  \
         {\"id\": 1, \"name\": \"apple\", \"color\": \"red\", \"in_stock\": true},\n  \
         {\"id\": 2, \"name\": \"banana\", \"color\": \"yellow\", \"in_stock\": false},\n  \
         {\"id\": 3, \"name\": \"grape\", \"color\": \"purple\", \"in_stock\": true},",
        88,
    ),
];

/// One test of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestKind {
    /// A chat prompt rendered with the model's template, then exactly `new_tokens` tokens.
    Prompt {
        name: String,
        prompt: String,
        new_tokens: u32,
    },
    /// `prompt_tokens` random tokens processed, then `new_tokens` generated (llama-bench's
    /// ppN, tgN and ppN+tgM; tgN starts from a single BOS token).
    Synthetic {
        name: String,
        prompt_tokens: u32,
        new_tokens: u32,
    },
}

impl TestKind {
    pub fn name(&self) -> &str {
        match self {
            TestKind::Prompt { name, .. } | TestKind::Synthetic { name, .. } => name,
        }
    }
}

fn count(s: &str, what: &str, test: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("{test:?}: {what} {s:?} is not a number"))?;
    if n == 0 || n > MAX_TOKENS {
        return Err(format!("{test:?}: {what} must be in 1..={MAX_TOKENS}"));
    }
    Ok(n)
}

/// Parses test names: "standard", "grounded", a scenario name, "ppN", "tgN", "ppN+tgM".
pub fn parse_test(name: &str) -> Result<Vec<TestKind>, String> {
    let t = name.trim();
    let prompt = |&(n, p, k): &(&str, &str, u32)| TestKind::Prompt {
        name: n.into(),
        prompt: p.into(),
        new_tokens: k,
    };
    match t {
        "standard" => return Ok(STANDARD.iter().map(prompt).collect()),
        "grounded" => return Ok(GROUNDED.iter().map(prompt).collect()),
        _ => {}
    }
    if let Some(s) = STANDARD.iter().chain(&GROUNDED).find(|s| s.0 == t) {
        return Ok(vec![prompt(s)]);
    }
    let synthetic = |prompt_tokens, new_tokens| {
        Ok(vec![TestKind::Synthetic {
            name: t.to_string(),
            prompt_tokens,
            new_tokens,
        }])
    };
    if let Some((pp, tg)) = t.split_once('+') {
        if let (Some(p), Some(g)) = (pp.strip_prefix("pp"), tg.strip_prefix("tg")) {
            return synthetic(count(p, "prompt tokens", t)?, count(g, "new tokens", t)?);
        }
    } else if let Some(p) = t.strip_prefix("pp") {
        // Prompt processing only: one token is sampled, as llama-bench's ppN measures.
        return synthetic(count(p, "prompt tokens", t)?, 1);
    } else if let Some(g) = t.strip_prefix("tg") {
        return synthetic(1, count(g, "new tokens", t)?);
    }
    Err(format!(
        "unknown test {t:?}: use standard (greeting, knowledge, code, long), grounded (rename, \
         quote, typos, json), one of those eight, ppN, tgN or ppN+tgM"
    ))
}

/// Reads a JSONL prompts file: `{"prompt": "...", "max_tokens": N}` per line (max_tokens
/// defaults to 128; blank lines are skipped).
pub fn read_prompts_file(path: &Path) -> Result<Vec<TestKind>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut tests = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |detail: String| format!("{} line {}: {detail}", path.display(), i + 1);
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let prompt = v["prompt"]
            .as_str()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| bad("needs a non-empty \"prompt\" string".into()))?;
        let new_tokens = match &v["max_tokens"] {
            serde_json::Value::Null => 128,
            n => n
                .as_u64()
                .filter(|&n| n > 0 && n <= u64::from(MAX_TOKENS))
                .ok_or_else(|| bad(format!("\"max_tokens\" must be in 1..={MAX_TOKENS}")))?
                as u32,
        };
        tests.push(TestKind::Prompt {
            name: format!("file:{}", i + 1),
            prompt: prompt.to_string(),
            new_tokens,
        });
    }
    if tests.is_empty() {
        return Err(format!("{} has no prompts", path.display()));
    }
    Ok(tests)
}

/// Fills a speculative variant's decode speedup over the same test run without speculation
/// and whether it gave that test's tokens (its first run's against the plain test's first).
/// The daemon fills its own results with it, the CLI a peer's.
pub fn compare_with_plain(spec: &mut crate::v1::BenchTest, plain: &crate::v1::BenchTest) {
    let decode = |t: &crate::v1::BenchTest| {
        t.metrics
            .iter()
            .find(|m| m.name == "decode_tokens_per_s")
            .and_then(|m| m.summary)
            .map_or(0.0, |s| s.mean)
    };
    if decode(plain) > 0.0 {
        spec.speedup = Some(decode(spec) / decode(plain));
    }
    if let (Some(a), Some(b)) = (spec.runs.first(), plain.runs.first()) {
        spec.same_tokens_as_plain = Some(a.tokens_sha256 == b.tokens_sha256);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_names_parse() {
        assert_eq!(parse_test("standard").unwrap().len(), 4);
        assert_eq!(parse_test("grounded").unwrap().len(), 4);
        assert_eq!(parse_test("typos").unwrap()[0].name(), "typos");
        assert_eq!(
            parse_test("pp512+tg128").unwrap(),
            vec![TestKind::Synthetic {
                name: "pp512+tg128".into(),
                prompt_tokens: 512,
                new_tokens: 128
            }]
        );
        assert_eq!(
            parse_test("tg128").unwrap(),
            vec![TestKind::Synthetic {
                name: "tg128".into(),
                prompt_tokens: 1,
                new_tokens: 128
            }]
        );
        assert!(matches!(
            &parse_test("code").unwrap()[0],
            TestKind::Prompt {
                new_tokens: 150,
                ..
            }
        ));
        for bad in ["pp0", "tgx", "fast", "pp5+xx", ""] {
            assert!(parse_test(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prompt_files_parse_and_bad_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.jsonl");
        std::fs::write(
            &p,
            "{\"prompt\": \"Hi\", \"max_tokens\": 5}\n\n{\"prompt\": \"Yo\"}\n",
        )
        .unwrap();
        let t = read_prompts_file(&p).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(
            t[1],
            TestKind::Prompt {
                name: "file:3".into(),
                prompt: "Yo".into(),
                new_tokens: 128
            }
        );
        std::fs::write(&p, "{\"prompt\": \"Hi\"}\nnot json\n").unwrap();
        let e = read_prompts_file(&p).unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        assert!(read_prompts_file(&dir.path().join("missing")).is_err());
    }
}
