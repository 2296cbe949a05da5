//! The report's own data model, built from results files (one [`Part`] per file, by its kind's
//! module) and rendered by [`super::markdown`], [`super::html`] and, as data, `--format json`.
//!
//! Everything here is plain data: numbers in base units (seconds, watts, joules, bytes, dollars),
//! every absent figure with the reason it is absent, and plots as series of points ready to draw.

use serde::Serialize;

/// Version of the `--format json` document.
pub const REPORT_VERSION: u32 = 1;

/// A whole report: the files it was built from, how comparable they are, the side-by-side table,
/// extra tables of each kind, and the plots.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub report_version: u32,
    pub title: String,
    /// The tool that built the report ("infermeter 0.1.0 (commit)").
    pub generated_by: String,
    pub sources: Vec<Source>,
    pub comparability: Comparability,
    /// The side-by-side table: one row per run, phase or framework, matched rows adjacent.
    pub rows: Vec<Row>,
    /// Kind-specific tables (engine step totals, kernel rows, sweep steps).
    pub tables: Vec<Table>,
    pub plots: Vec<Plot>,
    /// Things the reader must know (incomplete runs, summaries recomputed, absent data).
    pub notes: Vec<String>,
}

/// The columns of the "Results files" table (one row per source).
pub const SOURCES_HEADER: [&str; 9] = [
    "file",
    "kind",
    "started",
    "complete",
    "framework",
    "model",
    "hardware",
    "workload",
    "groups",
];

impl Report {
    /// The "how each figure was measured" table, one row per row of the report: header and cells.
    pub fn measurement_table(&self) -> (Vec<String>, Vec<Vec<String>>) {
        let header = ["run", "timing", "throughput window", "energy", "cost"]
            .map(String::from)
            .to_vec();
        let rows = self
            .rows
            .iter()
            .map(|r| {
                let m = &r.measurement;
                vec![
                    r.label.clone(),
                    m.timing.clone(),
                    m.window.clone(),
                    m.energy.clone(),
                    m.cost.clone(),
                ]
            })
            .collect();
        (header, rows)
    }
}

/// One results file.
#[derive(Debug, Clone, Serialize)]
pub struct Source {
    pub path: String,
    /// Short name used in tables and legends (the file stem, made unique).
    pub label: String,
    pub kind: String,
    pub started_at: String,
    pub complete: bool,
    /// The tool that wrote the file: name, version, git commit.
    pub tool: String,
    pub command: String,
    /// Model in words (source, weights, dtype, parameters).
    pub model: String,
    /// What served the requests (the reference engine and its backend, an HTTP server, ...).
    pub framework: String,
    /// Hardware in words (GPUs, else the host CPU).
    pub hardware: String,
    /// Workload in words.
    pub workload: String,
    /// What the workload, model and hardware comparisons look at.
    pub matched_on: MatchKeys,
    /// Group ids assigned by [`super::compare`]: files with equal keys share a group.
    pub groups: Groups,
}

/// The values compared between files (see [`super::compare`]).
#[derive(Debug, Clone, Default, Serialize)]
pub struct MatchKeys {
    /// Files of one kind: their workload descriptions, field by field.
    pub workload: serde_json::Value,
    pub model: serde_json::Value,
    pub hardware: serde_json::Value,
    /// Files of different kinds: a fingerprint of the measured requests' prompt lengths, in order
    /// (empty when the file has no requests).
    pub request_lengths: String,
    /// Files of different kinds: the model's name (last path segment, compared case-insensitively).
    pub model_name: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Groups {
    /// "W1", "W2", ...
    pub workload: String,
    /// "M1", ...
    pub model: String,
    /// "H1", ...
    pub hardware: String,
}

/// Whether the compared files used the same workload, model and hardware, and if not, how they differ.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Comparability {
    pub same_workload: bool,
    pub same_model: bool,
    pub same_hardware: bool,
    /// One sentence per difference found ("b.json vs a.json: workload.seed 1 vs 0").
    pub differences: Vec<String>,
}

impl Comparability {
    pub fn all_same(&self) -> bool {
        self.same_workload && self.same_model && self.same_hardware
    }
}

/// A figure, or the reason it is absent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figure {
    pub value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub absent: Option<String>,
}

impl Figure {
    pub fn of(v: f64) -> Self {
        if v.is_finite() {
            Figure {
                value: Some(v),
                absent: None,
            }
        } else {
            Figure::absent("not a finite number")
        }
    }

    pub fn absent(reason: impl Into<String>) -> Self {
        Figure {
            value: None,
            absent: Some(reason.into()),
        }
    }

    /// `v`, or absent for `reason`.
    pub fn or(v: Option<f64>, reason: &str) -> Self {
        v.map_or_else(|| Figure::absent(reason), Figure::of)
    }
}

/// The figures of one row, in base units.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figures {
    pub requests_per_s: Figure,
    pub input_tokens_per_s: Figure,
    pub output_tokens_per_s: Figure,
    pub ttft_p50_s: Figure,
    pub ttft_p99_s: Figure,
    pub tpot_p50_s: Figure,
    pub tpot_p99_s: Figure,
    pub itl_p50_s: Figure,
    pub itl_p99_s: Figure,
    pub e2el_p50_s: Figure,
    pub e2el_p99_s: Figure,
    pub goodput_requests_per_s: Figure,
    /// Decode energy ÷ output tokens (the prefill/decode split's); absent without a split.
    pub joules_per_output_token: Figure,
    /// All tokens ÷ all energy of the row's window.
    pub tokens_per_joule: Figure,
    /// All tokens ÷ all energy over the steady-state window (all slots busy).
    pub steady_tokens_per_joule: Figure,
    pub avg_power_w: Figure,
    pub peak_power_w: Figure,
    pub peak_gpu_memory_bytes: Figure,
    pub usd_per_m_input_tokens: Figure,
    pub usd_per_m_output_tokens: Figure,
}

/// How a figure is shown: its unit and the scale from the base unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unit {
    PerSecond,
    Millis,
    Joules,
    PerJoule,
    Watts,
    Bytes,
    Dollars,
}

/// A column of the side-by-side table.
pub struct Column {
    pub key: &'static str,
    pub header: &'static str,
    pub unit: Unit,
    pub get: fn(&Figures) -> &Figure,
}

/// The columns of the side-by-side table, in order.
pub const COLUMNS: &[Column] = &[
    Column {
        key: "requests_per_s",
        header: "req/s",
        unit: Unit::PerSecond,
        get: |f| &f.requests_per_s,
    },
    Column {
        key: "input_tokens_per_s",
        header: "in tok/s",
        unit: Unit::PerSecond,
        get: |f| &f.input_tokens_per_s,
    },
    Column {
        key: "output_tokens_per_s",
        header: "out tok/s",
        unit: Unit::PerSecond,
        get: |f| &f.output_tokens_per_s,
    },
    Column {
        key: "ttft_p50_s",
        header: "TTFT p50 ms",
        unit: Unit::Millis,
        get: |f| &f.ttft_p50_s,
    },
    Column {
        key: "ttft_p99_s",
        header: "TTFT p99 ms",
        unit: Unit::Millis,
        get: |f| &f.ttft_p99_s,
    },
    Column {
        key: "tpot_p50_s",
        header: "TPOT p50 ms",
        unit: Unit::Millis,
        get: |f| &f.tpot_p50_s,
    },
    Column {
        key: "tpot_p99_s",
        header: "TPOT p99 ms",
        unit: Unit::Millis,
        get: |f| &f.tpot_p99_s,
    },
    Column {
        key: "itl_p50_s",
        header: "ITL p50 ms",
        unit: Unit::Millis,
        get: |f| &f.itl_p50_s,
    },
    Column {
        key: "itl_p99_s",
        header: "ITL p99 ms",
        unit: Unit::Millis,
        get: |f| &f.itl_p99_s,
    },
    Column {
        key: "e2el_p50_s",
        header: "E2EL p50 ms",
        unit: Unit::Millis,
        get: |f| &f.e2el_p50_s,
    },
    Column {
        key: "e2el_p99_s",
        header: "E2EL p99 ms",
        unit: Unit::Millis,
        get: |f| &f.e2el_p99_s,
    },
    Column {
        key: "goodput_requests_per_s",
        header: "goodput req/s",
        unit: Unit::PerSecond,
        get: |f| &f.goodput_requests_per_s,
    },
    Column {
        key: "joules_per_output_token",
        header: "decode J/out tok",
        unit: Unit::Joules,
        get: |f| &f.joules_per_output_token,
    },
    Column {
        key: "tokens_per_joule",
        header: "tok/J",
        unit: Unit::PerJoule,
        get: |f| &f.tokens_per_joule,
    },
    Column {
        key: "steady_tokens_per_joule",
        header: "steady tok/J",
        unit: Unit::PerJoule,
        get: |f| &f.steady_tokens_per_joule,
    },
    Column {
        key: "avg_power_w",
        header: "avg W",
        unit: Unit::Watts,
        get: |f| &f.avg_power_w,
    },
    Column {
        key: "peak_power_w",
        header: "peak W",
        unit: Unit::Watts,
        get: |f| &f.peak_power_w,
    },
    Column {
        key: "peak_gpu_memory_bytes",
        header: "peak GPU mem",
        unit: Unit::Bytes,
        get: |f| &f.peak_gpu_memory_bytes,
    },
    Column {
        key: "usd_per_m_input_tokens",
        header: "$/1M in tok",
        unit: Unit::Dollars,
        get: |f| &f.usd_per_m_input_tokens,
    },
    Column {
        key: "usd_per_m_output_tokens",
        header: "$/1M out tok",
        unit: Unit::Dollars,
        get: |f| &f.usd_per_m_output_tokens,
    },
];

/// How the figures of a row were measured, in words.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Measurement {
    /// Where the request times come from and how late sends were against their schedule.
    pub timing: String,
    /// The window throughput is computed over.
    pub window: String,
    /// Energy method (counter or integrated power) and scope (devices), or why there is none.
    pub energy: String,
    /// How $/1M tokens was computed, or why it was not.
    pub cost: String,
}

/// One row of the side-by-side table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Index into [`Report::sources`].
    pub source: usize,
    /// "<file label> · <phase>".
    pub label: String,
    pub phase: String,
    pub framework: String,
    /// What matched rows share (the phase's workload parameters, e.g. "batch_size=8 input_len=64").
    pub match_key: String,
    /// The source's workload group ("W1").
    pub workload_group: String,
    pub completed: usize,
    pub failed: usize,
    pub figures: Figures,
    pub measurement: Measurement,
    /// Per-request data for the plots (not part of the JSON comparison).
    #[serde(skip)]
    pub samples: Samples,
}

/// A row's raw data, for plots.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    pub ttft_s: Vec<f64>,
    pub e2el_s: Vec<f64>,
    pub itl_s: Vec<f64>,
    /// Offered request rate, for plots against rate (sweeps).
    pub rate: Option<f64>,
    /// Batch size, for plots against batch size (grids).
    pub batch_size: Option<f64>,
    /// Which curve of a sweep or grid plot the row belongs to.
    pub series: String,
}

/// A kind-specific table, already formatted.
#[derive(Debug, Clone, Serialize)]
pub struct Table {
    pub id: String,
    pub title: String,
    pub caption: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// A plot: what it shows and its data; [`super::plots::render`] draws it as SVG.
#[derive(Debug, Clone, Serialize)]
pub struct Plot {
    /// Unique within the report; also the SVG's file name and HTML anchor.
    pub id: String,
    pub title: String,
    /// One sentence: what the plot shows and how to read it.
    pub caption: String,
    pub data: PlotData,
}

#[derive(Debug, Clone, Serialize)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Draw markers at the points (sparse data: sweeps, grids).
    pub markers: bool,
}

/// Where a plot's legend goes (the corner its curves leave empty).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Corner {
    UpperLeft,
    UpperRight,
    LowerRight,
}

/// A shaded time span (prefill or decode) of a timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Span {
    pub start: f64,
    pub end: f64,
    pub label: String,
}

/// One panel of a timeline: its y axis and curves.
#[derive(Debug, Clone, Serialize)]
pub struct Panel {
    pub y: String,
    pub series: Vec<Series>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Bin {
    pub lo: f64,
    pub hi: f64,
    pub count: usize,
}

/// A roof: the peak bandwidth and compute of a device, measured or from its spec sheet.
#[derive(Debug, Clone, Serialize)]
pub struct Roof {
    pub name: String,
    pub memory_gb_s: f64,
    pub compute_gflop_s: f64,
}

/// A kernel measurement placed on a roofline.
#[derive(Debug, Clone, Serialize)]
pub struct RoofPoint {
    /// The group it is drawn with (op family).
    pub series: String,
    pub name: String,
    /// FLOP per byte moved.
    pub intensity: f64,
    pub achieved_gflop_s: f64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PlotData {
    /// Curves on one pair of linear axes (CDFs, metrics against rate or batch size).
    Lines {
        x: String,
        y: String,
        series: Vec<Series>,
        legend: Corner,
    },
    /// Counts in bins (log-spaced on a log axis when `log_x`).
    Histogram {
        x: String,
        bins: Vec<Bin>,
        log_x: bool,
    },
    /// Stacked panels over one time axis, with shaded spans behind.
    Timeline {
        x: String,
        panels: Vec<Panel>,
        spans: Vec<Span>,
    },
    /// Achieved GFLOP/s against arithmetic intensity (log-log) under the roofs.
    Roofline {
        roofs: Vec<Roof>,
        points: Vec<RoofPoint>,
    },
}

/// What one file contributes to the report (built by its kind's module).
#[derive(Debug, Clone)]
pub struct Part {
    pub source: Source,
    pub rows: Vec<Row>,
    pub tables: Vec<Table>,
    /// Plots of this file alone (timelines, rooflines).
    pub plots: Vec<Plot>,
    pub notes: Vec<String>,
}
