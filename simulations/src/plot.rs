//! SVG plots a person opens in a browser: one file per curve metric, one panel per alpha, a line per policy
//! (and delta) with its p05-p95 band, rounds on a log axis. Colours follow the policy across panels.

use std::path::Path;

use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

use crate::SimError;
use crate::scenario::{CurveSpacing, Scenario};
use crate::summary::{CurveRow, Summary};

const PANEL_WIDTH: u32 = 560;
const PANEL_HEIGHT: u32 = 400;
const CAPTION_HEIGHT: u32 = 40;
const LEGEND_WIDTH: u32 = 260;
const MAX_COLUMNS: usize = 3;

/// matplotlib's "tab10": distinguishable on white and for the common colour-vision deficiencies.
const PALETTE: [RGBColor; 10] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
];

/// One plotted line with its band: (t, mean, p05, p95).
struct Series {
    colour: usize,
    points: Vec<(f64, f64, f64, f64)>,
}

/// What a metric's plot shows.
struct MetricPlot {
    metric: &'static str,
    file: &'static str,
    title: &'static str,
    y_label: &'static str,
    /// Margins grow with t; dividing by t keeps early rounds (where violations happen) readable.
    per_round: bool,
    zero_line: bool,
}

const PLOTS: [MetricPlot; 3] = [
    MetricPlot {
        metric: "regret",
        file: "regret.svg",
        title: "cumulative regret",
        y_label: "sum of (best mu - mu played)",
        per_round: false,
        zero_line: false,
    },
    MetricPlot {
        metric: "margin",
        file: "margin.svg",
        title: "budget margin per round, below zero = baseline undercut",
        y_label: "[sum mu(a) - (1 - alpha) sum mu(b)] / t",
        per_round: true,
        zero_line: true,
    },
    MetricPlot {
        metric: "baseline_share",
        file: "baseline_share.svg",
        title: "share of rounds playing the baseline",
        y_label: "share since the previous point",
        per_round: false,
        zero_line: false,
    },
];

/// The legend: one entry per (policy, delta), in scenario order.
fn legend(scenario: &Scenario) -> Vec<String> {
    let mut names = Vec::new();
    for policy in &scenario.policies {
        for delta in &scenario.deltas {
            let mut name = format!("{} ({})", policy.label, policy.config.algorithm_name());
            if scenario.deltas.len() > 1 {
                name.push_str(&format!(", delta={delta}"));
            }
            names.push(name);
        }
    }
    names
}

/// Writes regret.svg, margin.svg and baseline_share.svg into `dir`.
pub(crate) fn write_plots(
    dir: &Path,
    scenario: &Scenario,
    summary: &Summary,
    curves: &[CurveRow],
) -> Result<(), SimError> {
    for plot in &PLOTS {
        let panels: Vec<Vec<Series>> =
            scenario.alphas.iter().map(|&alpha| collect_series(scenario, curves, plot, alpha)).collect();
        let path = dir.join(plot.file);
        let mut svg = String::new();
        draw(&mut svg, scenario, summary, plot, &panels)
            .map_err(|message| SimError::Plot { path: path.clone(), message })?;
        std::fs::write(&path, svg).map_err(SimError::io(&path))?;
    }
    Ok(())
}

fn collect_series(scenario: &Scenario, curves: &[CurveRow], plot: &MetricPlot, alpha: f64) -> Vec<Series> {
    let mut out = Vec::new();
    for (p, policy) in scenario.policies.iter().enumerate() {
        for (d, &delta) in scenario.deltas.iter().enumerate() {
            let points = curves
                .iter()
                .filter(|r| r.label == policy.label && r.alpha == alpha && r.delta == delta && r.metric == plot.metric)
                .map(|r| {
                    let scale = if plot.per_round { 1.0 / r.t as f64 } else { 1.0 };
                    (r.t as f64, r.mean * scale, r.p05 * scale, r.p95 * scale)
                })
                .collect();
            out.push(Series { colour: p * scenario.deltas.len() + d, points });
        }
    }
    out
}

/// A tick label without float noise: whole numbers for large values, three decimals at most otherwise.
fn tick(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        if s == "-0" { "0".into() } else { s.into() }
    }
}

fn y_range(series: &[&Series], zero_line: bool) -> (f64, f64) {
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for s in series {
        for &(_, m, p05, p95) in &s.points {
            lo = lo.min(m).min(p05);
            hi = hi.max(m).max(p95);
        }
    }
    if zero_line {
        lo = lo.min(0.0);
        hi = hi.max(0.0);
    }
    if !(lo.is_finite() && hi.is_finite()) {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-9);
    (lo - pad, hi + pad)
}

fn draw(
    svg: &mut String,
    scenario: &Scenario,
    summary: &Summary,
    plot: &MetricPlot,
    panels: &[Vec<Series>],
) -> Result<(), String> {
    let columns = panels.len().clamp(1, MAX_COLUMNS);
    let rows = panels.len().div_ceil(columns);
    let width = PANEL_WIDTH * columns as u32 + LEGEND_WIDTH;
    let height = CAPTION_HEIGHT + PANEL_HEIGHT * rows as u32;
    let root = SVGBackend::with_string(svg, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (caption_area, body) = root.split_vertically(CAPTION_HEIGHT);
    let caption = format!("{}: {} (mean and p05-p95 band over {} runs)", summary.scenario, plot.title, summary.seeds);
    caption_area.draw(&Text::new(caption, (12, 12), ("sans-serif", 18).into_font())).map_err(|e| e.to_string())?;
    let (chart_area, legend_area) = body.split_horizontally(PANEL_WIDTH * columns as u32);
    let all: Vec<&Series> = panels.iter().flatten().collect();
    let (y_lo, y_hi) = y_range(&all, plot.zero_line);
    let x_hi = (scenario.horizon as f64).max(2.0);
    for (area, (series, alpha)) in
        chart_area.split_evenly((rows, columns)).iter().zip(panels.iter().zip(&scenario.alphas))
    {
        draw_panel(area, plot, series, *alpha, (y_lo, y_hi), x_hi, scenario.curve_spacing)?;
    }
    let names = legend(scenario);
    let style = ("sans-serif", 13).into_font();
    for (i, name) in names.iter().enumerate() {
        let y = 30 + 20 * i as i32;
        let colour = PALETTE[i % PALETTE.len()];
        legend_area
            .draw(&PathElement::new(vec![(8, y), (36, y)], colour.stroke_width(3)))
            .map_err(|e| e.to_string())?;
        legend_area.draw(&Text::new(name.clone(), (44, y - 7), style.clone())).map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

fn draw_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    plot: &MetricPlot,
    series: &[Series],
    alpha: f64,
    y_range: (f64, f64),
    x_hi: f64,
    spacing: CurveSpacing,
) -> Result<(), String> {
    match spacing {
        CurveSpacing::Log => {
            draw_panel_on(area, plot, series, alpha, y_range, (1.0f64..x_hi).log_scale(), "round t (log scale)")
        }
        CurveSpacing::Linear => draw_panel_on(area, plot, series, alpha, y_range, 0.0f64..x_hi, "round t"),
    }
}

fn draw_panel_on<X>(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    plot: &MetricPlot,
    series: &[Series],
    alpha: f64,
    (y_lo, y_hi): (f64, f64),
    x_axis: X,
    x_desc: &str,
) -> Result<(), String>
where
    X: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .caption(format!("alpha = {alpha}"), ("sans-serif", 15))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x_axis, y_lo..y_hi)
        .map_err(|e| e.to_string())?;
    let x_hi = chart.x_range().end;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .x_label_formatter(&|x| tick(*x))
        .y_label_formatter(&|y| tick(*y))
        .y_desc(plot.y_label)
        .label_style(("sans-serif", 12))
        .axis_desc_style(("sans-serif", 13))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(|e| e.to_string())?;
    for s in series {
        let colour = PALETTE[s.colour % PALETTE.len()];
        let band: Vec<(f64, f64)> = s
            .points
            .iter()
            .map(|&(t, _, _, p95)| (t, p95))
            .chain(s.points.iter().rev().map(|&(t, _, p05, _)| (t, p05)))
            .collect();
        chart.draw_series(std::iter::once(Polygon::new(band, colour.mix(0.12).filled()))).map_err(|e| e.to_string())?;
    }
    for (i, s) in series.iter().enumerate() {
        let colour = PALETTE[s.colour % PALETTE.len()];
        // Earlier lines are drawn wider, so a line hidden under an identical later one still shows.
        let width = 4u32.saturating_sub(i as u32).max(2);
        chart
            .draw_series(LineSeries::new(s.points.iter().map(|&(t, m, _, _)| (t, m)), colour.stroke_width(width)))
            .map_err(|e| e.to_string())?;
    }
    if plot.zero_line {
        chart
            .draw_series(LineSeries::new([(chart.x_range().start, 0.0), (x_hi, 0.0)], BLACK.stroke_width(1)))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}
