//! SVG charts of benchmark results: decode tokens/s and TTFT per test, one bar per Minerva
//! backend in the result, and the peer beside them.

use minerva_proto::v1 as pb;

struct Series<'a> {
    label: String,
    color: &'static str,
    result: &'a pb::BenchResult,
    /// Only this backend's tests (a job that ran several backends).
    backend: Option<&'a str>,
}

const COLORS: [&str; 4] = ["#3b6fd8", "#2ca02c", "#9467bd", "#8c564b"];

fn value(s: &Series<'_>, test: &pb::BenchTest, metric: &str, p50: bool) -> Option<f64> {
    let t = s.result.tests.iter().find(|t| {
        t.test == test.test && t.model == test.model && s.backend.is_none_or(|b| t.backend == b)
    })?;
    let s = t
        .metrics
        .iter()
        .find(|m| m.name == metric)?
        .summary
        .as_ref()?;
    (s.n > 0).then_some(if p50 { s.p50 } else { s.mean })
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Renders two bar panels (decode tokens/s by mean, TTFT by p50) as a standalone SVG.
pub fn render(minerva: &pb::BenchResult, peer: Option<&pb::BenchResult>) -> String {
    let name = |r: &pb::BenchResult| {
        r.machine
            .as_ref()
            .map(|m| m.system.clone())
            .unwrap_or_default()
    };
    let mut backends: Vec<&str> = Vec::new();
    for t in &minerva.tests {
        if !backends.contains(&t.backend.as_str()) {
            backends.push(&t.backend);
        }
    }
    let mut series: Vec<Series<'_>> = if backends.len() > 1 {
        backends
            .iter()
            .enumerate()
            .map(|(i, b)| Series {
                label: format!("minerva {} ({b})", env!("CARGO_PKG_VERSION")),
                color: COLORS[i % COLORS.len()],
                result: minerva,
                backend: Some(b),
            })
            .collect()
    } else {
        vec![Series {
            label: name(minerva),
            color: COLORS[0],
            result: minerva,
            backend: None,
        }]
    };
    if let Some(p) = peer {
        series.push(Series {
            label: name(p),
            color: "#e08a2c",
            result: p,
            backend: None,
        });
    }
    // One group per (model, test), in the order the job ran them.
    let mut tests: Vec<&pb::BenchTest> = Vec::new();
    for t in &minerva.tests {
        if !tests.iter().any(|u| u.test == t.test && u.model == t.model) {
            tests.push(t);
        }
    }
    let panels = [
        (
            "decode tokens/s (mean, higher is better)",
            "decode_tokens_per_s",
            false,
        ),
        ("TTFT ms (p50, lower is better)", "ttft_ms", true),
    ];
    let (w, panel_h, left, top) = (900.0, 260.0, 70.0, 60.0);
    let group_w = (w - left - 20.0) / tests.len().max(1) as f64;
    let bar_w = (group_w * 0.7) / series.len() as f64;
    let h = top + panels.len() as f64 * (panel_h + 70.0) + 20.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for (i, s) in series.iter().enumerate() {
        let x = left + i as f64 * 330.0;
        svg += &format!(
            "<rect x=\"{x}\" y=\"14\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"25\">{}</text>\n",
            s.color,
            x + 18.0,
            escape(&s.label)
        );
    }
    for (p, (title, metric, p50)) in panels.iter().enumerate() {
        let y0 = top + p as f64 * (panel_h + 70.0);
        let max = tests
            .iter()
            .flat_map(|t| series.iter().filter_map(move |s| value(s, t, metric, *p50)))
            .fold(0.0f64, f64::max)
            .max(1e-9);
        svg += &format!(
            "<text x=\"{left}\" y=\"{}\" font-weight=\"bold\">{}</text>\n",
            y0 + 10.0,
            escape(title)
        );
        let base = y0 + 20.0 + panel_h;
        svg += &format!(
            "<line x1=\"{left}\" y1=\"{base}\" x2=\"{}\" y2=\"{base}\" stroke=\"#444\"/>\n",
            w - 20.0
        );
        for (g, t) in tests.iter().enumerate() {
            let gx = left + g as f64 * group_w + group_w * 0.15;
            for (i, s) in series.iter().enumerate() {
                let Some(v) = value(s, t, metric, *p50) else {
                    continue;
                };
                let bh = v / max * (panel_h - 20.0);
                let x = gx + i as f64 * bar_w;
                svg += &format!(
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{v:.1}</text>\n",
                    base - bh,
                    bar_w * 0.9,
                    s.color,
                    x + bar_w * 0.45,
                    base - bh - 3.0
                );
            }
            svg += &format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
                gx + group_w * 0.35,
                base + 16.0,
                escape(&t.test)
            );
        }
    }
    svg += "</svg>\n";
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::testutil::result;

    #[test]
    fn a_chart_of_two_backends_shows_each_backends_own_figures() {
        let mut r = result("minerva (llama.cpp, candle)", 200.0);
        r.tests[0].backend = "llama.cpp".into();
        let mut other = r.tests[0].clone();
        other.backend = "candle".into();
        other.metrics[0].summary.as_mut().unwrap().mean = 80.0;
        r.tests.push(other);
        let svg = render(&r, None);
        assert!(
            svg.contains("(llama.cpp)</text>") && svg.contains("(candle)</text>"),
            "{svg}"
        );
        assert!(
            svg.contains(">200.0</text>") && svg.contains(">80.0</text>"),
            "{svg}"
        );
        assert_eq!(
            svg.matches(">tg8</text>").count(),
            2,
            "one group per test and panel: {svg}"
        );
    }
}
