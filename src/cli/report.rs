//! `infermeter report FILE...`: results files → `report.md` (+ `plots/*.svg`), a self-contained
//! `report.html`, and with `--format json` the same comparison as data.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};

use crate::metrics::Slo;
use crate::report::build::{build_from_paths, Options};
use crate::report::output::{self, Format};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// report.md, with plots as plots/*.svg beside it.
    Md,
    /// report.html: one self-contained page (inline CSS and SVG).
    Html,
    /// report.json: the comparison as data.
    Json,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Results files (`run`, `load` or `kernels`), compared side by side in the order given.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Directory to write the report into (created if needed).
    #[arg(long, default_value = "infermeter-report")]
    pub out: PathBuf,
    /// Title of the report (default: from the file names).
    #[arg(long)]
    pub title: Option<String>,
    /// Formats to write, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [FormatArg::Md, FormatArg::Html])]
    pub format: Vec<FormatArg>,
    /// Goodput SLO applied to every run, e.g. ttft=200ms,tpot=50ms,e2el=10s (default: each run's own).
    #[arg(long)]
    pub slo: Option<String>,
    /// Price of one GPU per hour in dollars (of the host, for runs without a GPU), for $/1M tokens.
    #[arg(long)]
    pub usd_per_gpu_hour: Option<f64>,
}

pub fn run(a: ReportArgs) -> anyhow::Result<()> {
    let slo = match &a.slo {
        Some(text) => Some(text.parse::<Slo>().context("--slo")?),
        None => None,
    };
    if let Some(p) = a.usd_per_gpu_hour {
        if !(p.is_finite() && p >= 0.0) {
            bail!("--usd-per-gpu-hour: `{p}` is not a price (a non-negative number)");
        }
    }
    let opts = Options {
        title: a.title.clone(),
        slo,
        usd_per_gpu_hour: a.usd_per_gpu_hour,
    };
    let report = build_from_paths(&a.files, &opts)?;
    let mut formats: Vec<Format> = Vec::new();
    for f in &a.format {
        let f = match f {
            FormatArg::Md => Format::Md,
            FormatArg::Html => Format::Html,
            FormatArg::Json => Format::Json,
        };
        if !formats.contains(&f) {
            formats.push(f);
        }
    }
    let written = output::write(&report, &a.out, &formats)
        .with_context(|| format!("writing the report into {}", a.out.display()))?;
    if !report.comparability.all_same() && report.sources.len() > 1 {
        eprintln!("note: the compared files did not use the same workload, model or hardware:");
        for d in &report.comparability.differences {
            eprintln!("  {d}");
        }
    }
    for p in written
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e != "svg"))
    {
        println!("{}", p.display());
    }
    Ok(())
}
