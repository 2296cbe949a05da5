//! Drawing: each [`PlotData`] as a standalone SVG document (plotters' SVG backend). The builders
//! decide what a plot shows; this module only draws it.

use std::ops::Range;

use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::model::{Bin, Corner, Panel, Plot, PlotData, Roof, RoofPoint, Series, Span};

type DrawResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const SIZE: (u32, u32) = (640, 400);
const FONT: &str = "sans-serif";

/// Okabe–Ito colours (distinguishable with colour-blindness), then darker and muted ones.
const PALETTE: [RGBColor; 12] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
    RGBColor(90, 90, 90),
    RGBColor(0, 0, 0),
    RGBColor(117, 72, 160),
    RGBColor(140, 100, 40),
    RGBColor(0, 100, 100),
    RGBColor(180, 40, 80),
];
const LIGHT: RGBColor = RGBColor(246, 246, 246);
const PREFILL: RGBColor = RGBColor(230, 159, 0);
const DECODE: RGBColor = RGBColor(86, 180, 233);

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Draw a plot as an SVG document.
pub fn render(plot: &Plot) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        draw(&root, plot).map_err(|e| format!("plot `{}`: {e}", plot.id))?;
        root.present()
            .map_err(|e| format!("plot `{}`: {e}", plot.id))?;
    }
    Ok(svg)
}

fn draw(root: &DrawingArea<SVGBackend, Shift>, plot: &Plot) -> DrawResult<()> {
    root.fill(&WHITE)?;
    let title = plot.title.as_str();
    match &plot.data {
        PlotData::Lines {
            x,
            y,
            series,
            legend,
        } => lines(root, title, x, y, series, *legend),
        PlotData::Histogram { x, bins, log_x } => histogram(root, title, x, bins, *log_x),
        PlotData::Timeline { x, panels, spans } => timeline(root, title, x, panels, spans),
        PlotData::Roofline { roofs, points } => roofline(root, title, roofs, points),
    }
}

/// A range covering `values` (finite ones), from zero when `from_zero`, never empty.
fn range(values: impl Iterator<Item = f64>, from_zero: bool) -> Range<f64> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return 0.0..1.0;
    }
    if from_zero {
        lo = lo.min(0.0);
        hi = hi.max(0.0);
    }
    if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
        let pad = if hi == 0.0 { 1.0 } else { hi.abs() * 0.1 };
        return (lo - pad)..(hi + pad);
    }
    let pad = (hi - lo) * 0.05;
    (if from_zero && lo >= 0.0 { lo } else { lo - pad })..(hi + pad)
}

/// Tick labels with at most 4 significant digits.
fn tick(v: &f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}")
    } else {
        let digits = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
        let s = format!("{v:.digits$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').into()
        } else {
            s
        }
    }
}

/// Runs of finite points: a non-finite coordinate breaks a curve (an idle gap in a timeline).
fn segments(points: &[(f64, f64)]) -> Vec<Vec<(f64, f64)>> {
    points
        .split(|p| !(p.0.is_finite() && p.1.is_finite()))
        .filter(|run| !run.is_empty())
        .map(<[_]>::to_vec)
        .collect()
}

/// Draw `s` as a line (broken at non-finite points) with its legend entry.
fn draw_line<DB: DrawingBackend, CT: CoordTranslate<From = (f64, f64)>>(
    chart: &mut ChartContext<DB, CT>,
    s: &Series,
    c: RGBColor,
    width: u32,
) -> DrawResult<()>
where
    DB::ErrorType: 'static,
{
    for (i, run) in segments(&s.points).into_iter().enumerate() {
        let anno = chart
            .draw_series(LineSeries::new(run, c.stroke_width(width)))
            .map_err(|e| e.to_string())?;
        if i == 0 {
            anno.label(s.name.as_str()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
            });
        }
    }
    Ok(())
}

fn label_position(c: Corner) -> SeriesLabelPosition {
    match c {
        Corner::UpperLeft => SeriesLabelPosition::UpperLeft,
        Corner::UpperRight => SeriesLabelPosition::UpperRight,
        Corner::LowerRight => SeriesLabelPosition::LowerRight,
    }
}

fn lines(
    root: &DrawingArea<SVGBackend, Shift>,
    title: &str,
    x: &str,
    y: &str,
    series: &[Series],
    legend: Corner,
) -> DrawResult<()> {
    let points = || series.iter().flat_map(|s| s.points.iter());
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(
            range(points().map(|p| p.0), false),
            range(points().map(|p| p.1), true),
        )?;
    mesh(&mut chart, x, y)?;
    for (i, s) in series.iter().enumerate() {
        let c = color(i);
        draw_line(&mut chart, s, c, 2)?;
        if s.markers {
            chart.draw_series(
                s.points
                    .iter()
                    .filter(|p| p.0.is_finite() && p.1.is_finite())
                    .map(|&p| Circle::new(p, 3, c.filled())),
            )?;
        }
    }
    chart
        .configure_series_labels()
        .position(label_position(legend))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .label_font((FONT, 12))
        .draw()?;
    Ok(())
}

fn histogram(
    root: &DrawingArea<SVGBackend, Shift>,
    title: &str,
    x: &str,
    bins: &[Bin],
    log_x: bool,
) -> DrawResult<()> {
    let xs = || bins.iter().flat_map(|b| [b.lo, b.hi]);
    let yr = range(bins.iter().map(|b| b.count as f64), true);
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(title, (FONT, 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64);
    let bars = bins.iter().map(|b| {
        Rectangle::new(
            [(b.lo, 0.0), (b.hi, b.count as f64)],
            color(0).mix(0.7).filled(),
        )
    });
    if log_x {
        let lo = xs().fold(f64::INFINITY, f64::min) / 1.15;
        let hi = xs().fold(0.0, f64::max) * 1.15;
        let mut chart = builder.build_cartesian_2d((lo..hi).log_scale(), yr)?;
        mesh(&mut chart, x, "count")?;
        chart.draw_series(bars)?;
    } else {
        let mut chart = builder.build_cartesian_2d(range(xs(), false), yr)?;
        mesh(&mut chart, x, "count")?;
        chart.draw_series(bars)?;
    }
    Ok(())
}

/// Axes with descriptions, short tick labels and faint grid lines.
fn mesh<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    x: &str,
    y: &str,
) -> DrawResult<()>
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc(x)
        .y_desc(y)
        .x_labels(12)
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .light_line_style(LIGHT)
        .max_light_lines(1)
        .draw()?;
    Ok(())
}

fn span_color(label: &str) -> RGBColor {
    if label == "prefill" {
        PREFILL
    } else {
        DECODE
    }
}

fn timeline(
    root: &DrawingArea<SVGBackend, Shift>,
    title: &str,
    x: &str,
    panels: &[Panel],
    spans: &[Span],
) -> DrawResult<()> {
    let root = root.titled(title, (FONT, 18))?;
    let areas = root.split_evenly((panels.len().max(1), 1));
    let xr = range(
        spans.iter().flat_map(|s| [s.start, s.end]).chain(
            panels
                .iter()
                .flat_map(|p| p.series.iter())
                .flat_map(|s| s.points.iter().map(|p| p.0)),
        ),
        false,
    );
    for (k, (area, panel)) in areas.iter().zip(panels).enumerate() {
        let last = k + 1 == panels.len();
        let yr = range(
            panel
                .series
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p.1)),
            true,
        );
        let mut chart = ChartBuilder::on(area)
            .margin(8)
            .x_label_area_size(if last { 40 } else { 16 })
            .y_label_area_size(64)
            .build_cartesian_2d(xr.clone(), yr.clone())?;
        mesh(&mut chart, if last { x } else { "" }, &panel.y)?;
        chart.draw_series(spans.iter().map(|s| {
            Rectangle::new(
                [(s.start, yr.start), (s.end, yr.end)],
                span_color(&s.label).mix(0.22).filled(),
            )
        }))?;
        for (i, s) in panel.series.iter().enumerate() {
            let c = color(if panel.series.len() == 1 { k * 2 } else { i });
            draw_line(&mut chart, s, c, 1)?;
        }
        if k == 0 {
            for label in ["prefill", "decode"] {
                let c = span_color(label).mix(0.5);
                chart
                    .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())?
                    .label(label)
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 18, y + 5)], c.filled())
                    });
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .label_font((FONT, 11))
            .draw()?;
    }
    Ok(())
}

fn roofline(
    root: &DrawingArea<SVGBackend, Shift>,
    title: &str,
    roofs: &[Roof],
    points: &[RoofPoint],
) -> DrawResult<()> {
    let positive = |v: f64| v.is_finite() && v > 0.0;
    let pts: Vec<&RoofPoint> = points
        .iter()
        .filter(|p| positive(p.intensity) && positive(p.achieved_gflop_s))
        .collect();
    let roofs: Vec<&Roof> = roofs
        .iter()
        .filter(|r| positive(r.memory_gb_s) && positive(r.compute_gflop_s))
        .collect();
    let xs = pts
        .iter()
        .map(|p| p.intensity)
        .chain(roofs.iter().map(|r| r.compute_gflop_s / r.memory_gb_s));
    let ys = pts
        .iter()
        .map(|p| p.achieved_gflop_s)
        .chain(roofs.iter().map(|r| r.compute_gflop_s));
    let bounds = |v: &mut dyn Iterator<Item = f64>| {
        let (lo, hi) = v.fold((f64::INFINITY, 0.0f64), |(lo, hi), x| {
            (lo.min(x), hi.max(x))
        });
        if lo.is_finite() && hi > 0.0 {
            (lo / 4.0)..(hi * 4.0)
        } else {
            0.01..100.0
        }
    };
    let xr = bounds(&mut xs.into_iter());
    let yr = bounds(&mut ys.into_iter());
    let (x0, x1) = (xr.start, xr.end);
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(xr.log_scale(), yr.log_scale())?;
    mesh(
        &mut chart,
        "arithmetic intensity (FLOP/byte)",
        "achieved GFLOP/s",
    )?;
    for (i, r) in roofs.iter().enumerate() {
        let ridge = (r.compute_gflop_s / r.memory_gb_s).clamp(x0, x1);
        let roof = [x0, ridge, x1].map(|x| (x, (r.memory_gb_s * x).min(r.compute_gflop_s)));
        let c = RGBColor(60, 60, 60);
        let style = if i == 0 {
            c.stroke_width(2)
        } else {
            c.mix(0.5).stroke_width(1)
        };
        chart
            .draw_series(LineSeries::new(roof, style))?
            .label(r.name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
    }
    let mut groups: Vec<&str> = Vec::new();
    for p in &pts {
        if !groups.contains(&p.series.as_str()) {
            groups.push(&p.series);
        }
    }
    for (i, g) in groups.iter().enumerate() {
        let c = color(i);
        chart
            .draw_series(
                pts.iter()
                    .filter(|p| p.series == *g)
                    .map(|p| Circle::new((p.intensity, p.achieved_gflop_s), 4, c.filled())),
            )?
            .label(*g)
            .legend(move |(x, y)| Circle::new((x + 9, y), 4, c.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .label_font((FONT, 11))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_short() {
        assert_eq!(tick(&0.0), "0");
        assert_eq!(tick(&0.30000000000000004), "0.3");
        assert_eq!(tick(&1234.5678), "1235");
        assert_eq!(tick(&12.5), "12.5");
        assert_eq!(tick(&2.0e6), "2.0e6");
    }

    #[test]
    fn ranges_are_never_empty() {
        assert_eq!(range([].into_iter(), false), 0.0..1.0);
        let r = range([5.0].into_iter(), false);
        assert!(r.start < 5.0 && r.end > 5.0);
        let r = range([0.0, 0.0].into_iter(), true);
        assert!(r.start < r.end);
        let r = range([f64::NAN, 2.0, 4.0].into_iter(), true);
        assert_eq!(r.start, 0.0);
        assert!(r.end > 4.0);
    }
}
