//! SVG charts of benchmark results, drawn with plotters: decode tokens/s and TTFT per model
//! and test, one bar per Minerva backend in the result and the peer beside them.
//!
//! SVG only: plotters draws text into bitmaps (PNG) through its `ttf` feature, which links the
//! system's fontconfig and freetype through font-kit, or through `ab_glyph` with a font file
//! built into the binary; the SVG backend leaves text to the viewer and needs neither.

use std::path::Path;

use minerva_proto::v1 as pb;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::{CliError, CliResult};

struct Series<'a> {
    label: String,
    color: RGBColor,
    result: &'a pb::BenchResult,
    /// Only this backend's tests (a job that ran several backends).
    backend: Option<&'a str>,
}

const COLORS: [RGBColor; 4] = [
    RGBColor(0x3b, 0x6f, 0xd8),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];
const PEER_COLOR: RGBColor = RGBColor(0xe0, 0x8a, 0x2c);
const GREY: RGBColor = RGBColor(0x88, 0x88, 0x88);
const FONT: &str = "sans-serif";

/// One panel: a metric, the figure taken from its summary, and the unit of its axis.
struct Panel {
    title: &'static str,
    metric: &'static str,
    p50: bool,
    unit: &'static str,
}

const PANELS: [Panel; 2] = [
    Panel {
        title: "decode tokens/s (mean, higher is better)",
        metric: "decode_tokens_per_s",
        p50: false,
        unit: "decode rate (tok/s)",
    },
    Panel {
        title: "TTFT ms (p50, lower is better)",
        metric: "ttft_ms",
        p50: true,
        unit: "time to first token (ms)",
    },
];

/// A series' figure for a (model, test) group; `None` where it has none: the test is not in
/// its result, was not measured, or has no such phase (a prompt-only test decodes nothing and
/// reports a decode rate of 0).
fn value(s: &Series<'_>, model: &str, test: &str, panel: &Panel) -> Option<f64> {
    let t =
        s.result.tests.iter().find(|t| {
            t.test == test && t.model == model && s.backend.is_none_or(|b| t.backend == b)
        })?;
    let m = t
        .metrics
        .iter()
        .find(|m| m.name == panel.metric)?
        .summary
        .as_ref()?;
    let v = if panel.p50 { m.p50 } else { m.mean };
    (m.n > 0 && v.is_finite() && v > 0.0).then_some(v)
}

/// A model's name for a label: a path's file name without .gguf, a store name as it is.
fn model_label(model: &str) -> String {
    let name = Path::new(model)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(model);
    name.strip_suffix(".gguf").unwrap_or(name).to_string()
}

/// Roughly how wide `text` is in pixels at `px` (sans-serif averages about 0.55 em a glyph).
fn text_width(text: &str, px: f64) -> f64 {
    text.chars().count() as f64 * px * 0.55
}

fn style(px: f64, color: &RGBColor) -> TextStyle<'static> {
    // plotters' SVG backend writes font-size as size / 1.24.
    (FONT, px * 1.24).into_font().color(color)
}

fn bold(px: f64, color: &RGBColor) -> TextStyle<'static> {
    (FONT, px * 1.24, FontStyle::Bold).into_font().color(color)
}

fn err<E: std::fmt::Debug>(e: E) -> CliError {
    CliError(format!("cannot draw the chart: {e:?}"))
}

/// Renders the two panels (decode tokens/s by mean, TTFT by p50) as a standalone SVG.
pub fn render(minerva: &pb::BenchResult, peer: Option<&pb::BenchResult>) -> CliResult<String> {
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
            color: PEER_COLOR,
            result: p,
            backend: None,
        });
    }
    // One group per (model, test), in the order the job ran them, grouped by model; a group
    // with no figure in either panel is left out.
    let mut models: Vec<&str> = Vec::new();
    for t in &minerva.tests {
        if !models.contains(&t.model.as_str()) {
            models.push(&t.model);
        }
    }
    let mut groups: Vec<(&str, &str)> = Vec::new();
    for m in &models {
        for t in minerva.tests.iter().filter(|t| t.model == *m) {
            let has = |p: &Panel| series.iter().any(|s| value(s, m, &t.test, p).is_some());
            if !groups.contains(&(m, t.test.as_str())) && PANELS.iter().any(has) {
                groups.push((m, &t.test));
            }
        }
    }
    models.retain(|m| groups.iter().any(|g| g.0 == *m));

    // Layout, in pixels.
    let (left, right) = (90.0, 30.0);
    let bar_px = 18.0;
    let group_px = series.len() as f64 * bar_px + 26.0;
    let plot_w = (groups.len() as f64 * group_px).max(520.0);
    let w = left + plot_w + right;
    // The legend: items left to right, a new row where the next would cross the right edge.
    let mut legend: Vec<(f64, f64)> = Vec::new();
    let (mut lx, mut ly) = (left, 30.0);
    for s in &series {
        let item = 18.0 + text_width(&s.label, 13.0) + 28.0;
        if lx > left && lx + item > w - right {
            lx = left;
            ly += 20.0;
        }
        legend.push((lx, ly));
        lx += item;
    }
    let legend_h = ly + 22.0;
    let x_label_h = 10.0 + 2.0 * 18.0;
    let panel_h = 320.0 + x_label_h;
    let h = legend_h + PANELS.len() as f64 * panel_h + 10.0;

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w as u32, h as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        for (s, (x, y)) in series.iter().zip(&legend) {
            let (x, y) = (*x as i32, *y as i32);
            root.draw(&Rectangle::new(
                [(x, y - 6), (x + 12, y + 6)],
                s.color.filled(),
            ))
            .map_err(err)?;
            root.draw(&Text::new(
                s.label.clone(),
                (x + 18, y),
                style(13.0, &BLACK).pos(Pos::new(HPos::Left, VPos::Center)),
            ))
            .map_err(err)?;
        }
        let (_, rest) = root.split_vertically(legend_h as u32);
        let areas = rest.split_evenly((PANELS.len(), 1));
        for (panel, area) in PANELS.iter().zip(&areas) {
            let max = groups
                .iter()
                .flat_map(|(m, t)| series.iter().filter_map(move |s| value(s, m, t, panel)))
                .fold(0.0f64, f64::max);
            let top = if max > 0.0 { max * 1.18 } else { 1.0 };
            let n = groups.len().max(1) as f64;
            let mut chart = ChartBuilder::on(area)
                .caption(panel.title, bold(15.0, &BLACK))
                .margin_right(right as u32)
                .margin_top(6)
                .x_label_area_size(x_label_h as u32)
                .y_label_area_size(left as u32)
                .build_cartesian_2d(0f64..n, 0f64..top)
                .map_err(err)?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(0)
                .y_labels(6)
                .y_desc(panel.unit)
                .y_label_formatter(&|v| format!("{v:.0}"))
                .label_style(style(12.0, &BLACK))
                .axis_desc_style(style(13.0, &BLACK))
                .light_line_style(WHITE.mix(0.0))
                .bold_line_style(BLACK.mix(0.12))
                .draw()
                .map_err(err)?;
            let bars_w = series.len() as f64 * bar_px / group_px;
            for (g, (m, t)) in groups.iter().enumerate() {
                let x0 = g as f64 + (1.0 - bars_w) / 2.0;
                let mut any = false;
                for (i, s) in series.iter().enumerate() {
                    let Some(v) = value(s, m, t, panel) else {
                        continue;
                    };
                    any = true;
                    let a = x0 + i as f64 * bar_px / group_px;
                    let b = a + 0.85 * bar_px / group_px;
                    chart
                        .draw_series(std::iter::once(Rectangle::new(
                            [(a, 0.0), (b, v)],
                            s.color.filled(),
                        )))
                        .map_err(err)?;
                    // The figure, upright above its bar.
                    let (bx, by) = chart.backend_coord(&((a + b) / 2.0, v));
                    root.draw(&Text::new(
                        format!("{v:.1}"),
                        (bx, by - 4),
                        style(10.0, &BLACK)
                            .transform(FontTransform::Rotate270)
                            .pos(Pos::new(HPos::Left, VPos::Center)),
                    ))
                    .map_err(err)?;
                }
                let (cx, base) = chart.backend_coord(&(g as f64 + 0.5, 0.0));
                if !any {
                    root.draw(&Text::new(
                        "no data",
                        (cx, base - 4),
                        style(10.0, &GREY)
                            .transform(FontTransform::Rotate270)
                            .pos(Pos::new(HPos::Left, VPos::Center)),
                    ))
                    .map_err(err)?;
                }
                root.draw(&Text::new(
                    t.to_string(),
                    (cx, base + 8),
                    style(12.0, &BLACK).pos(Pos::new(HPos::Center, VPos::Top)),
                ))
                .map_err(err)?;
            }
            // Each model's name under its tests, a line between models.
            {
                let mut start = 0;
                for m in &models {
                    let count = groups.iter().filter(|g| g.0 == *m).count();
                    let (x_mid, base) =
                        chart.backend_coord(&(start as f64 + count as f64 / 2.0, 0.0));
                    root.draw(&Text::new(
                        model_label(m),
                        (x_mid, base + 28),
                        bold(12.0, &BLACK).pos(Pos::new(HPos::Center, VPos::Top)),
                    ))
                    .map_err(err)?;
                    if start > 0 {
                        chart
                            .draw_series(std::iter::once(PathElement::new(
                                vec![(start as f64, 0.0), (start as f64, top)],
                                GREY.mix(0.6).stroke_width(1),
                            )))
                            .map_err(err)?;
                    }
                    start += count;
                }
            }
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
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
        let svg = render(&r, None).unwrap();
        assert!(
            svg.contains("(llama.cpp)\n</text>") && svg.contains("(candle)\n</text>"),
            "{svg}"
        );
        assert!(
            svg.contains(">\n200.0\n</text>") && svg.contains(">\n80.0\n</text>"),
            "{svg}"
        );
        assert_eq!(
            svg.matches(">\ntg8\n</text>").count(),
            2,
            "one group per test and panel: {svg}"
        );
    }

    #[test]
    fn models_are_labelled_and_tests_without_a_figure_draw_no_bar() {
        let metric = |name: &str, v: f64| pb::BenchMetric {
            name: name.into(),
            summary: Some(pb::BenchSummary {
                n: 3,
                mean: v,
                p50: v,
                ..Default::default()
            }),
        };
        let test = |model: &str, test: &str, decode: f64, ttft: f64| pb::BenchTest {
            model: model.into(),
            test: test.into(),
            metrics: vec![
                metric("decode_tokens_per_s", decode),
                metric("ttft_ms", ttft),
            ],
            ..Default::default()
        };
        let mut r = result("minerva", 1.0);
        r.tests = vec![
            test("/models/a-q4.gguf", "pp8", 0.0, 51.5),
            test("/models/a-q4.gguf", "tg8", 123.4, 4.5),
            test("b-f16", "pp8", 0.0, 20.5),
            test("b-f16", "tg8", 99.9, 3.5),
        ];
        let svg = render(&r, None).unwrap();
        // A prompt-only test decodes nothing: no bar of 0, a note instead.
        assert!(!svg.contains(">\n0.0\n</text>"), "{svg}");
        assert_eq!(svg.matches(">\nno data\n</text>").count(), 2, "{svg}");
        assert!(svg.contains(">\n123.4\n</text>") && svg.contains(">\n51.5\n</text>"));
        // Each model's name once per panel, a path by its file name.
        assert_eq!(svg.matches(">\na-q4\n</text>").count(), 2, "{svg}");
        assert_eq!(svg.matches(">\nb-f16\n</text>").count(), 2, "{svg}");
        // Axes with units.
        assert!(svg.contains("(tok/s)") && svg.contains("(ms)"), "{svg}");
    }
}
