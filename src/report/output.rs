//! Writing a report: `report.md` (plots as `plots/<id>.svg` beside it), a self-contained
//! `report.html`, and `report.json` (the same comparison as data).

use std::path::{Path, PathBuf};

use super::model::Report;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Md,
    Html,
    Json,
}

/// Draw every plot; a plot that fails to draw is dropped with a note (never a panic).
pub fn render_plots(report: &mut Report) -> Vec<(String, String)> {
    let mut svgs = Vec::new();
    let mut failed = Vec::new();
    for p in &report.plots {
        match super::plots::render(p) {
            Ok(svg) => svgs.push((p.id.clone(), svg)),
            Err(e) => failed.push((p.id.clone(), e)),
        }
    }
    for (id, e) in failed {
        report.plots.retain(|p| p.id != id);
        report.notes.push(format!("Plot not drawn: {e}"));
    }
    svgs
}

/// The report as pretty JSON.
pub fn to_json(report: &Report) -> Result<String> {
    serde_json::to_string_pretty(report).map_err(|e| Error::Json {
        file: "report.json".into(),
        cause: e,
    })
}

/// Write the report in `formats` into `dir` (created if needed); returns the files written.
pub fn write(report: &Report, dir: &Path, formats: &[Format]) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut report = report.clone();
    let svgs = if formats.iter().any(|f| *f != Format::Json) {
        render_plots(&mut report)
    } else {
        Vec::new()
    };
    let mut written = Vec::new();
    for f in formats {
        match f {
            Format::Md => {
                let plots = dir.join("plots");
                if !svgs.is_empty() {
                    std::fs::create_dir_all(&plots).map_err(|e| Error::io(&plots, e))?;
                }
                for (id, svg) in &svgs {
                    let p = plots.join(format!("{id}.svg"));
                    crate::util::write_atomic(&p, svg.as_bytes())?;
                    written.push(p);
                }
                let p = dir.join("report.md");
                crate::util::write_atomic(
                    &p,
                    super::markdown::render(&report, "plots").as_bytes(),
                )?;
                written.push(p);
            }
            Format::Html => {
                let p = dir.join("report.html");
                crate::util::write_atomic(&p, super::html::render(&report, &svgs).as_bytes())?;
                written.push(p);
            }
            Format::Json => {
                let p = dir.join("report.json");
                crate::util::write_atomic(&p, to_json(&report)?.as_bytes())?;
                written.push(p);
            }
        }
    }
    Ok(written)
}
