//! SVG figures (plotters, SVG backend only): medians as lines, min–max as error bars.

use crate::stats::Summary;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

pub type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// One series of a line chart: x is an index into the chart's x labels.
pub struct Line {
    pub label: String,
    pub color: RGBColor,
    pub points: Vec<(usize, Summary)>,
}

/// A horizontal reference line (e.g. the 1.10 target of a ratio).
pub struct Rule {
    pub y: f64,
    pub label: String,
    pub color: RGBColor,
}

pub const COLORS: [RGBColor; 7] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0x8c, 0x56, 0x4b),
];

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

pub struct Chart<'a> {
    pub title: &'a str,
    pub x_desc: &'a str,
    pub y_desc: &'a str,
    pub x_labels: &'a [String],
    pub log_y: bool,
    pub lines: &'a [Line],
    pub rules: &'a [Rule],
    /// Fixed y range (to share one scale between panels); None: fit the data.
    pub y_range: Option<(f64, f64)>,
}

/// Writes one line chart to `path`.
pub fn line_chart(path: &Path, size: (u32, u32), chart: &Chart) -> Result<(), String> {
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    draw_lines(&root, chart)?;
    root.present().map_err(err)
}

/// Writes several line charts side by side to `path`.
pub fn line_charts(path: &Path, size: (u32, u32), charts: &[Chart]) -> Result<(), String> {
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let areas = root.split_evenly((1, charts.len()));
    for (area, chart) in areas.iter().zip(charts) {
        draw_lines(area, chart)?;
    }
    root.present().map_err(err)
}

/// The y range that fits all `charts` (for panels that share one scale).
pub fn shared_y_range(charts: &[&Chart]) -> (f64, f64) {
    let ranges: Vec<(f64, f64)> = charts.iter().map(|c| y_range(c)).collect();
    (
        ranges.iter().map(|r| r.0).fold(f64::INFINITY, f64::min),
        ranges.iter().map(|r| r.1).fold(f64::NEG_INFINITY, f64::max),
    )
}

fn y_range(chart: &Chart) -> (f64, f64) {
    if let Some(r) = chart.y_range {
        return r;
    }
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for l in chart.lines {
        for (_, s) in &l.points {
            lo = lo.min(s.min);
            hi = hi.max(s.max);
        }
    }
    for r in chart.rules {
        lo = lo.min(r.y);
        hi = hi.max(r.y);
    }
    if !lo.is_finite() || !hi.is_finite() {
        return (0.1, 1.0);
    }
    if chart.log_y {
        (lo.max(1e-9) / 1.4, hi * 2.2)
    } else {
        (0.0, hi * 1.35)
    }
}

fn draw_lines(area: &Area, chart: &Chart) -> Result<(), String> {
    let (lo, hi) = y_range(chart);
    let n = chart.x_labels.len().max(1) as f64;
    let labels = chart.x_labels.to_vec();
    let x_fmt = move |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < labels.len() {
            labels[i as usize].clone()
        } else {
            String::new()
        }
    };
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(chart.title, ("sans-serif", 17))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(64);
    macro_rules! body {
        ($c:expr) => {{
            let mut c = $c;
            c.configure_mesh()
                .x_labels(chart.x_labels.len() + 1)
                .y_labels(14)
                .x_label_formatter(&x_fmt)
                .x_desc(chart.x_desc)
                .y_desc(chart.y_desc)
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .map_err(err)?;
            for r in chart.rules {
                let style = ShapeStyle::from(&r.color).stroke_width(1);
                c.draw_series(LineSeries::new(vec![(-0.4, r.y), (n - 0.6, r.y)], style))
                    .map_err(err)?
                    .label(r.label.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
            }
            for l in chart.lines {
                let style = ShapeStyle::from(&l.color).stroke_width(2);
                let pts: Vec<(f64, f64)> = l
                    .points
                    .iter()
                    .map(|(i, s)| (*i as f64, s.median))
                    .collect();
                c.draw_series(LineSeries::new(pts.clone(), style))
                    .map_err(err)?
                    .label(l.label.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
                c.draw_series(pts.iter().map(|&p| Circle::new(p, 3, style.filled())))
                    .map_err(err)?;
                c.draw_series(l.points.iter().map(|(i, s)| {
                    ErrorBar::new_vertical(*i as f64, s.min, s.median, s.max, style, 8)
                }))
                .map_err(err)?;
            }
            c.configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.4))
                .label_font(("sans-serif", 12))
                .draw()
                .map_err(err)?;
        }};
    }
    if chart.log_y {
        body!(
            builder
                .build_cartesian_2d(-0.4f64..(n - 0.6), (lo..hi).log_scale())
                .map_err(err)?
        );
    } else {
        body!(
            builder
                .build_cartesian_2d(-0.4f64..(n - 0.6), lo..hi)
                .map_err(err)?
        );
    }
    Ok(())
}

/// One bar of a bar chart, with the text written above it.
pub struct Bar {
    pub label: String,
    pub value: Summary,
    pub text: String,
    pub color: RGBColor,
}

/// Writes bar charts side by side (one per (title, y_desc, bars)) to `path`.
pub fn bar_charts(
    path: &Path,
    size: (u32, u32),
    charts: &[(String, String, Vec<Bar>)],
) -> Result<(), String> {
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let areas = root.split_evenly((1, charts.len()));
    for (area, (title, y_desc, bars)) in areas.iter().zip(charts) {
        let hi = bars.iter().map(|b| b.value.max).fold(0.0, f64::max) * 1.3;
        let n = bars.len() as f64;
        let names: Vec<String> = bars.iter().map(|b| b.label.clone()).collect();
        let x_fmt = move |x: &f64| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < names.len() {
                names[i as usize].clone()
            } else {
                String::new()
            }
        };
        let mut c = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 17))
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(64)
            .build_cartesian_2d(-0.6f64..(n - 0.4), 0.0..hi.max(1e-9))
            .map_err(err)?;
        c.configure_mesh()
            .x_labels(bars.len() + 1)
            .x_label_formatter(&x_fmt)
            .y_desc(y_desc.as_str())
            .light_line_style(WHITE.mix(0.0))
            .disable_x_mesh()
            .draw()
            .map_err(err)?;
        for (i, b) in bars.iter().enumerate() {
            let x = i as f64;
            c.draw_series(std::iter::once(Rectangle::new(
                [(x - 0.35, 0.0), (x + 0.35, b.value.median)],
                b.color.filled(),
            )))
            .map_err(err)?;
            c.draw_series(std::iter::once(ErrorBar::new_vertical(
                x,
                b.value.min,
                b.value.median,
                b.value.max,
                BLACK.stroke_width(1),
                10,
            )))
            .map_err(err)?;
            c.draw_series(std::iter::once(Text::new(
                b.text.clone(),
                (x - 0.33, b.value.max + hi * 0.04),
                ("sans-serif", 12),
            )))
            .map_err(err)?;
        }
    }
    root.present().map_err(err)
}
