//! Rendering for people: tables, sizes, durations, the stats line.

use minerva_proto::v1 as pb;

/// A plain aligned table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{:<w$}  ", c, w = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn count(n: u64) -> String {
    match n {
        0 => "-".into(),
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

pub fn seconds(s: f64) -> String {
    if s >= 3600.0 {
        format!("{:.1} h", s / 3600.0)
    } else if s >= 60.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{s:.0} s")
    }
}

pub fn keep_alive(d: &pb::ModelDetails) -> String {
    if !d.loaded {
        "-".into()
    } else if d.keep_alive_forever {
        "forever".into()
    } else {
        d.keep_alive_remaining_seconds.map_or("-".into(), seconds)
    }
}

/// The `--verbose` line: load, prompt, TTFT, decode, total.
pub fn stats_line(s: &pb::GenerationStats) -> String {
    let mut parts = Vec::new();
    if let Some(l) = s.load_ms {
        parts.push(format!("load {l:.0} ms"));
    }
    let cached = match s.cached_prompt_tokens {
        0 => String::new(),
        n => format!(" ({n} cached)"),
    };
    parts.push(format!(
        "prompt {} tokens{cached} at {:.1} tok/s",
        s.prompt_tokens, s.prompt_tokens_per_s
    ));
    parts.push(format!("TTFT {:.1} ms", s.ttft_ms));
    parts.push(format!(
        "decode {} tokens at {:.1} tok/s",
        s.generated_tokens, s.decode_tokens_per_s
    ));
    if s.drafted_tokens > 0 {
        parts.push(format!(
            "drafts {}/{} accepted ({:.0}%)",
            s.accepted_tokens,
            s.drafted_tokens,
            100.0 * f64::from(s.accepted_tokens) / f64::from(s.drafted_tokens)
        ));
    }
    parts.push(format!("total {:.0} ms", s.total_ms));
    let mut stop = minerva_proto::stop_reason_name(s.stop_reason).to_string();
    if !s.stop_string.is_empty() {
        stop.push_str(&format!(" {:?}", s.stop_string));
    }
    parts.push(format!("stop: {stop}"));
    parts.join(" | ")
}

/// Byte progress: phase, bar, bytes done / total, rate, ETA (pulls, synth).
pub fn bytes_bar_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(
        "{msg:10} [{bar:32}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
}

/// A spinner with a message and the time spent, for phases of unknown length.
pub fn spinner_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner())
}

/// Generated (and prompt) tokens with their log-probabilities and likeliest alternatives, one
/// row each: prompt positions as `p1, p2, ...` (the first prompt token has none).
pub fn logprobs_table(
    tokens: &[pb::GeneratedToken],
    prompt: Option<&pb::PromptLogprobs>,
) -> String {
    fn text_of(id: u32, l: &pb::TokenLogprobs, fallback: &str) -> String {
        let own = l.top.iter().find(|t| t.id == id).map(|t| t.text.as_str());
        format!("{id} {:?}", own.unwrap_or(fallback))
    }
    fn alternatives(l: &pb::TokenLogprobs) -> String {
        let alt: Vec<String> = l
            .top
            .iter()
            .map(|t| format!("{:?} {:.3}", t.text, t.logprob))
            .collect();
        alt.join(", ")
    }
    let mut rows = Vec::new();
    if let Some(p) = prompt {
        for (i, (id, l)) in p.ids.iter().zip(&p.logprobs).enumerate() {
            rows.push(vec![
                format!("p{}", i + 1),
                text_of(*id, l, ""),
                format!("{:.3}", l.logprob),
                alternatives(l),
            ]);
        }
    }
    for t in tokens {
        if let Some(l) = &t.logprobs {
            rows.push(vec![
                t.index.to_string(),
                text_of(t.id, l, &t.text),
                format!("{:.3}", l.logprob),
                alternatives(l),
            ]);
        }
    }
    table(&["#", "token", "logprob", "alternatives"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_sizes_read_well() {
        let t = table(
            &["NAME", "SIZE"],
            &[
                vec!["a".into(), "1".into()],
                vec!["long-name".into(), "22".into()],
            ],
        );
        assert_eq!(t, "NAME       SIZE\na          1\nlong-name  22\n");
        assert_eq!(bytes(98_362_432), "98.4 MB");
        assert_eq!(bytes(12), "12 B");
        assert_eq!(count(134_515_008), "134.5M");
    }
}
