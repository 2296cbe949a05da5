//! Building a [`Report`] from results files: each file through its kind's module, the files
//! compared ([`super::compare`]), matched rows put side by side, and the plots that span files
//! (latency CDFs, ITL histograms, metrics against request rate and batch size).

use std::path::{Path, PathBuf};

use super::kind::{self, Context};
use super::model::{
    Bin, Corner, Figure, Part, Plot, PlotData, Report, Row, Series, Table, REPORT_VERSION,
};
use super::results::{read_results, ResultsFile};
use crate::error::Result;
use crate::metrics::Slo;

/// Choices of the report (not of the runs).
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub title: Option<String>,
    /// Recompute goodput of every row with this SLO (else: the run's own SLO, if it had one).
    pub slo: Option<Slo>,
    /// Price of one GPU (or, without GPU, of the host) per hour, for $/1M tokens.
    pub usd_per_gpu_hour: Option<f64>,
}

/// Most ITL histograms drawn (one per row, in table order).
const MAX_HISTOGRAMS: usize = 12;
/// Most points of a CDF curve.
const CDF_POINTS: usize = 400;
const HISTOGRAM_BINS: usize = 30;
/// Histograms of values spanning more than this factor get log-spaced bins.
const LOG_SPAN: f64 = 10.0;

/// Read every file (errors name the file and field) and build the report.
pub fn build_from_paths(paths: &[PathBuf], opts: &Options) -> Result<Report> {
    let files = paths
        .iter()
        .map(|p| Ok((p.clone(), read_results(p)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(build(&files, opts))
}

/// Build the report of files already read.
pub fn build(files: &[(PathBuf, ResultsFile)], opts: &Options) -> Report {
    let labels = unique_labels(files.iter().map(|(p, _)| p.as_path()));
    let parts: Vec<Part> = files
        .iter()
        .enumerate()
        .map(|(index, (path, file))| {
            let path = path.display().to_string();
            let ctx = Context {
                index,
                label: &labels[index],
                path: &path,
                opts,
            };
            match file {
                ResultsFile::Run(r) => kind::run::part(&ctx, r),
                ResultsFile::Load(r) => kind::load::part(&ctx, r),
                ResultsFile::Kernels(r) => kind::kernels::part(&ctx, r),
            }
        })
        .collect();

    let mut sources: Vec<_> = parts.iter().map(|p| p.source.clone()).collect();
    let comparability = super::compare::compare(&mut sources);
    let mut notes: Vec<String> = parts.iter().flat_map(|p| p.notes.clone()).collect();

    let mut rows: Vec<Row> = parts.iter().flat_map(|p| p.rows.clone()).collect();
    for r in &mut rows {
        r.workload_group = sources[r.source].groups.workload.clone();
    }
    // Matched rows side by side: order by the first appearance of each match key (stable).
    let mut keys: Vec<String> = Vec::new();
    for r in &rows {
        if !keys.contains(&r.match_key) {
            keys.push(r.match_key.clone());
        }
    }
    rows.sort_by_key(|r| keys.iter().position(|k| *k == r.match_key));

    let mut tables: Vec<Table> = Vec::new();
    for t in parts.iter().flat_map(|p| &p.tables) {
        match tables
            .iter_mut()
            .find(|x| x.id == t.id && x.header == t.header)
        {
            Some(x) => x.rows.extend(t.rows.iter().cloned()),
            None => tables.push(t.clone()),
        }
    }
    tables.retain(|t| !t.rows.is_empty());

    let mut plots = Vec::new();
    latency_cdfs(&rows, &mut plots, &mut notes);
    against(&rows, &mut plots);
    itl_histograms(&rows, &mut plots, &mut notes);
    plots.extend(parts.iter().flat_map(|p| p.plots.clone()));
    unique_ids(&mut plots);

    let title = opts.title.clone().unwrap_or_else(|| match sources.len() {
        1 => format!("infermeter report: {}", sources[0].label),
        n => format!("infermeter report: {n} results files"),
    });
    let tool = crate::report::results::ToolInfo::current();
    Report {
        report_version: REPORT_VERSION,
        title,
        generated_by: format!("{} {} ({})", tool.name, tool.version, tool.git_commit),
        sources,
        comparability,
        rows,
        tables,
        plots,
        notes,
    }
}

/// File stems, made unique by prefixing parent directories (then a number) where they clash.
fn unique_labels<'a>(paths: impl Iterator<Item = &'a Path>) -> Vec<String> {
    let paths: Vec<&Path> = paths.collect();
    let name = |p: &Path, depth: usize| {
        let mut parts: Vec<String> = p
            .with_extension("")
            .components()
            .rev()
            .take(depth)
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        parts.reverse();
        parts.join("/")
    };
    let mut labels: Vec<String> = paths.iter().map(|p| name(p, 1)).collect();
    for depth in 2..4 {
        // Clashes between different paths get parent directories; the same file given twice is
        // numbered below.
        let clash = |l: &Vec<String>, i: usize| {
            (0..l.len()).any(|j| j != i && l[j] == l[i] && paths[j] != paths[i])
        };
        let again: Vec<usize> = (0..labels.len()).filter(|&i| clash(&labels, i)).collect();
        for i in again {
            labels[i] = name(paths[i], depth);
        }
    }
    for i in 0..labels.len() {
        if labels[..i].contains(&labels[i]) {
            labels[i] = format!("{} ({})", labels[i], i + 1);
        }
    }
    labels
}

/// A CDF as a staircase of at most [`CDF_POINTS`] points, values scaled by `scale`.
fn cdf(values: &[f64], scale: f64) -> Vec<(f64, f64)> {
    let mut v: Vec<f64> = values
        .iter()
        .map(|x| x * scale)
        .filter(|x| x.is_finite())
        .collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let step = n.div_ceil(CDF_POINTS / 2).max(1);
    let mut pts = Vec::new();
    let mut i = 0;
    while i < n {
        let j = (i + step).min(n);
        pts.push((v[i], i as f64 / n as f64));
        pts.push((v[j - 1], j as f64 / n as f64));
        i = j;
    }
    pts
}

fn latency_cdfs(rows: &[Row], plots: &mut Vec<Plot>, notes: &mut Vec<String>) {
    type Pick = fn(&Row) -> &Vec<f64>;
    let metrics: [(&str, &str, Pick); 2] = [
        ("e2el", "E2EL", |r| &r.samples.e2el_s),
        ("ttft", "TTFT", |r| &r.samples.ttft_s),
    ];
    for (id, name, pick) in metrics {
        let series: Vec<Series> = rows
            .iter()
            .filter(|r| !pick(r).is_empty())
            .map(|r| Series {
                name: r.label.clone(),
                points: cdf(pick(r), 1e3),
                markers: false,
            })
            .collect();
        if series.is_empty() {
            notes.push(format!(
                "{name} CDF not drawn: no successful request in any run."
            ));
            continue;
        }
        plots.push(Plot {
            id: format!("{id}-cdf"),
            title: format!("{name} CDF"),
            caption: format!(
                "Share of successful requests (y) whose {name} was at most x ms, one curve per run; \
                 curves further left are faster, a long flat top is the tail."
            ),
            data: PlotData::Lines {
                x: format!("{name} (ms)"),
                y: "fraction of requests".into(),
                series,
                legend: Corner::LowerRight,
            },
        });
    }
}

/// Curves of rows grouped by series, with x from the row (rate or batch size), averaged over
/// rows at the same x (repeats). Groups with fewer than two distinct x are left out.
fn curves(
    rows: &[Row],
    x: fn(&Row) -> Option<f64>,
    y: impl Fn(&Row) -> &Figure,
    suffix: &str,
) -> Vec<Series> {
    let mut names: Vec<&str> = Vec::new();
    for r in rows.iter().filter(|r| x(r).is_some()) {
        if !names.contains(&r.samples.series.as_str()) {
            names.push(&r.samples.series);
        }
    }
    let mut out = Vec::new();
    for name in names {
        let mut pts: Vec<(f64, f64, usize)> = Vec::new();
        for r in rows.iter().filter(|r| r.samples.series == name) {
            let (Some(xv), Some(yv)) = (x(r), y(r).value) else {
                continue;
            };
            match pts.iter_mut().find(|p| p.0 == xv) {
                Some(p) => {
                    p.1 += yv;
                    p.2 += 1;
                }
                None => pts.push((xv, yv, 1)),
            }
        }
        if pts.len() < 2 {
            continue;
        }
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        out.push(Series {
            name: format!("{name}{suffix}"),
            points: pts.iter().map(|p| (p.0, p.1 / p.2 as f64)).collect(),
            markers: true,
        });
    }
    out
}

/// Sweeps (against offered request rate) and grids (against batch size).
fn against(rows: &[Row], plots: &mut Vec<Plot>) {
    let rate = |r: &Row| r.samples.rate;
    let batch = |r: &Row| r.samples.batch_size;
    let mut add =
        |id: &str, title: &str, caption: &str, x: &str, y: &str, series: Vec<Series>, legend| {
            if !series.is_empty() {
                plots.push(Plot {
                    id: id.into(),
                    title: title.into(),
                    caption: caption.into(),
                    data: PlotData::Lines {
                        x: x.into(),
                        y: y.into(),
                        series,
                        legend,
                    },
                });
            }
        };
    let rate_x = "offered request rate (req/s)";
    add(
        "throughput-vs-rate",
        "Throughput against request rate",
        "Output tokens per second achieved at each offered request rate; where the curve flattens \
         the target is saturated.",
        rate_x,
        "output tokens/s",
        curves(rows, rate, |r| &r.figures.output_tokens_per_s, ""),
        Corner::UpperLeft,
    );
    let two = |p50: fn(&Row) -> &Figure, p99: fn(&Row) -> &Figure| {
        let mut s = curves(rows, rate, |r| p50(r), " p50");
        s.extend(curves(rows, rate, |r| p99(r), " p99"));
        s.iter_mut()
            .for_each(|c| c.points.iter_mut().for_each(|p| p.1 *= 1e3));
        s
    };
    add(
        "ttft-vs-rate",
        "TTFT against request rate",
        "Time to first token (p50 and p99) at each offered request rate; a knee marks queueing.",
        rate_x,
        "TTFT (ms)",
        two(|r| &r.figures.ttft_p50_s, |r| &r.figures.ttft_p99_s),
        Corner::UpperLeft,
    );
    add(
        "tpot-vs-rate",
        "TPOT against request rate",
        "Time per output token (p50 and p99) at each offered request rate.",
        rate_x,
        "TPOT (ms)",
        two(|r| &r.figures.tpot_p50_s, |r| &r.figures.tpot_p99_s),
        Corner::UpperLeft,
    );
    add(
        "tokens-vs-batch",
        "Output tokens/s against batch size",
        "Output tokens per second of each grid cell (mean over repeats), one curve per input and \
         output length.",
        "batch size",
        "output tokens/s",
        curves(rows, batch, |r| &r.figures.output_tokens_per_s, ""),
        Corner::UpperLeft,
    );
    add(
        "joules-vs-batch",
        "Decode energy per output token against batch size",
        "Decode energy ÷ output tokens of each grid cell (mean over repeats): larger batches share \
         the power among more tokens.",
        "batch size",
        "decode J per output token",
        curves(rows, batch, |r| &r.figures.joules_per_output_token, ""),
        Corner::UpperRight,
    );
}

fn itl_histograms(rows: &[Row], plots: &mut Vec<Plot>, notes: &mut Vec<String>) {
    let with: Vec<&Row> = rows
        .iter()
        .filter(|r| !r.samples.itl_s.is_empty())
        .collect();
    if with.len() > MAX_HISTOGRAMS {
        notes.push(format!(
            "ITL histograms drawn for the first {MAX_HISTOGRAMS} of {} runs.",
            with.len()
        ));
    }
    for (i, r) in with.iter().take(MAX_HISTOGRAMS).enumerate() {
        let (bins, log_x) = histogram(&r.samples.itl_s, 1e3);
        plots.push(Plot {
            id: format!("itl-hist-{}", i + 1),
            title: format!("ITL: {}", r.label),
            caption: format!(
                "{}: gaps between consecutive content chunks ({} pooled over requests){}; one \
                 tall narrow peak means steady decoding, bars far right are stalls.",
                r.label,
                r.samples.itl_s.len(),
                if log_x { ", log-spaced bins" } else { "" }
            ),
            data: PlotData::Histogram {
                x: if log_x {
                    "inter-token latency (ms, log scale)"
                } else {
                    "inter-token latency (ms)"
                }
                .into(),
                bins,
                log_x,
            },
        });
    }
}

/// [`HISTOGRAM_BINS`] bins over all `values` (scaled by `scale`): log-spaced when they span more
/// than a factor of [`LOG_SPAN`] (long tails stay visible beside the main peak), else even.
fn histogram(values: &[f64], scale: f64) -> (Vec<Bin>, bool) {
    let v: Vec<f64> = values
        .iter()
        .map(|x| x * scale)
        .filter(|x| x.is_finite())
        .collect();
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if v.is_empty() {
        return (Vec::new(), false);
    }
    if hi <= lo {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.05 };
        let bin = Bin {
            lo: lo - pad,
            hi: lo + pad,
            count: v.len(),
        };
        return (vec![bin], false);
    }
    let log = lo > 0.0 && hi / lo > LOG_SPAN;
    let (a, b) = if log { (lo.ln(), hi.ln()) } else { (lo, hi) };
    let w = (b - a) / HISTOGRAM_BINS as f64;
    let edge = |i: usize| {
        let e = a + i as f64 * w;
        if log {
            e.exp()
        } else {
            e
        }
    };
    let mut bins: Vec<Bin> = (0..HISTOGRAM_BINS)
        .map(|i| Bin {
            lo: edge(i),
            hi: edge(i + 1),
            count: 0,
        })
        .collect();
    for x in v {
        let t = if log { x.ln() } else { x };
        let i = (((t - a) / w) as usize).min(HISTOGRAM_BINS - 1);
        bins[i].count += 1;
    }
    (bins, log)
}

/// Plot ids as safe, unique slugs (they name SVG files and HTML anchors).
fn unique_ids(plots: &mut [Plot]) {
    let mut seen: Vec<String> = Vec::new();
    for p in plots.iter_mut() {
        let mut slug: String =
            p.id.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_lowercase()
                    } else {
                        '-'
                    }
                })
                .collect();
        slug = slug
            .split('-')
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("-");
        if slug.is_empty() {
            slug = "plot".into();
        }
        let mut id = slug.clone();
        let mut n = 2;
        while seen.contains(&id) {
            id = format!("{slug}-{n}");
            n += 1;
        }
        seen.push(id.clone());
        p.id = id;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique() {
        let p = [
            PathBuf::from("x/a.json"),
            PathBuf::from("y/a.json"),
            PathBuf::from("b.json"),
            PathBuf::from("b.json"),
        ];
        let l = unique_labels(p.iter().map(PathBuf::as_path));
        assert_eq!(l, ["x/a", "y/a", "b", "b (4)"]);
    }

    #[test]
    fn cdf_is_a_staircase_to_one() {
        let c = cdf(&[0.003, 0.001, 0.002], 1e3);
        assert_eq!(c.first().unwrap().1, 0.0);
        assert_eq!(c.last().unwrap(), &(3.0, 1.0));
        assert_eq!(cdf(&[0.5], 1.0), vec![(0.5, 0.0), (0.5, 1.0)]);
        let big: Vec<f64> = (0..10_000).map(f64::from).collect();
        assert!(cdf(&big, 1.0).len() <= CDF_POINTS);
    }

    #[test]
    fn histogram_bins_every_value() {
        let v: Vec<f64> = (1..=100).map(|i| i as f64).collect();
        let (bins, log) = histogram(&v, 1.0);
        assert!(log, "1..100 spans more than {LOG_SPAN}x");
        assert_eq!(bins.len(), HISTOGRAM_BINS);
        assert_eq!(bins.iter().map(|b| b.count).sum::<usize>(), 100);
        assert!(
            (bins[0].lo - 1.0).abs() < 1e-9 && (bins[HISTOGRAM_BINS - 1].hi - 100.0).abs() < 1e-9
        );
        let (lin, log) = histogram(&[2.0, 3.0, 4.0], 1e3);
        assert!(!log);
        assert_eq!((lin[0].lo, lin[HISTOGRAM_BINS - 1].hi), (2000.0, 4000.0));
        let (one, _) = histogram(&[0.25], 1.0);
        assert_eq!((one.len(), one[0].count), (1, 1));
    }
}
