//! The report as Markdown (GitHub flavour): tables, and plots as SVG files beside it.

use std::fmt::Write;

use super::format;
use super::model::{Report, Row, COLUMNS};

/// Columns of the first comparison table (throughput, latency, goodput); the rest are energy,
/// memory and cost.
pub const LATENCY_COLUMNS: usize = 12;

/// Absent-figure reasons, numbered in order of first use.
#[derive(Default)]
pub struct Footnotes(pub Vec<String>);

impl Footnotes {
    pub fn number(&mut self, reason: &str) -> usize {
        match self.0.iter().position(|r| r == reason) {
            Some(i) => i + 1,
            None => {
                self.0.push(reason.to_string());
                self.0.len()
            }
        }
    }
}

/// A cell's text: the value, or "—" and its footnote number.
pub fn cell_text(row: &Row, col: usize, notes: &mut Footnotes) -> Result<String, (usize, String)> {
    let c = &COLUMNS[col];
    let f = (c.get)(&row.figures);
    match format::cell(f, c.unit) {
        Some(v) => Ok(v),
        None => {
            let reason = f.absent.clone().unwrap_or_else(|| "not measured".into());
            Err((notes.number(&reason), reason))
        }
    }
}

fn esc(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn table(out: &mut String, header: &[String], rows: &[Vec<String>]) {
    let _ = writeln!(
        out,
        "| {} |",
        header
            .iter()
            .map(|h| esc(h))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
    for r in rows {
        let _ = writeln!(
            out,
            "| {} |",
            r.iter().map(|c| esc(c)).collect::<Vec<_>>().join(" | ")
        );
    }
    out.push('\n');
}

/// The comparability statement: what differs, or that nothing does.
pub fn comparability_lines(report: &Report) -> (bool, Vec<String>) {
    let c = &report.comparability;
    if report.sources.len() < 2 {
        return (true, vec!["One results file: nothing to match.".into()]);
    }
    if c.all_same() {
        return (
            true,
            vec!["All compared files used the same workload, model and hardware.".into()],
        );
    }
    let what: Vec<&str> = [
        (!c.same_workload, "workload"),
        (!c.same_model, "model"),
        (!c.same_hardware, "hardware"),
    ]
    .iter()
    .filter(|x| x.0)
    .map(|x| x.1)
    .collect();
    let mut lines = vec![format!(
        "Not like for like: the compared files did not use the same {}. Rows are matched by their \
         workload parameters; read differences across groups with care.",
        what.join(", ")
    )];
    lines.extend(c.differences.iter().cloned());
    (false, lines)
}

/// Render the report; plots are linked as `plot_dir/<id>.svg`.
pub fn render(report: &Report, plot_dir: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# {}\n", esc(&report.title));
    let _ = writeln!(
        out,
        "Built by {} from {} results file{}.\n",
        report.generated_by,
        report.sources.len(),
        if report.sources.len() == 1 { "" } else { "s" }
    );
    let (same, lines) = comparability_lines(report);
    if same {
        let _ = writeln!(out, "{}\n", lines.join(" "));
    } else {
        let _ = writeln!(out, "> **{}**", lines[0]);
        for l in &lines[1..] {
            let _ = writeln!(out, "> - {l}");
        }
        out.push('\n');
    }

    out.push_str("## Results files\n\n");
    let header: Vec<String> = super::model::SOURCES_HEADER.map(String::from).to_vec();
    let rows: Vec<Vec<String>> = report
        .sources
        .iter()
        .map(|s| {
            vec![
                format!("{} (`{}`)", s.label, s.path),
                s.kind.clone(),
                s.started_at.clone(),
                if s.complete { "yes" } else { "no" }.into(),
                s.framework.clone(),
                s.model.clone(),
                s.hardware.clone(),
                s.workload.clone(),
                format!(
                    "{} {} {}",
                    s.groups.workload, s.groups.model, s.groups.hardware
                ),
            ]
        })
        .collect();
    table(&mut out, &header, &rows);

    let mut notes = Footnotes::default();
    let request_rows = !report.rows.is_empty();
    for (title, cols) in [
        ("Throughput and latency", 0..LATENCY_COLUMNS),
        ("Energy, memory and cost", LATENCY_COLUMNS..COLUMNS.len()),
    ]
    .into_iter()
    .filter(|_| request_rows)
    {
        let _ = writeln!(out, "## {title}\n");
        let mut header: Vec<String> = ["run", "workload", "ok", "failed"]
            .map(String::from)
            .to_vec();
        header.extend(cols.clone().map(|c| COLUMNS[c].header.to_string()));
        let rows: Vec<Vec<String>> = report
            .rows
            .iter()
            .map(|r| {
                let mut cells = vec![
                    r.label.clone(),
                    format!("{} {}", r.workload_group, r.match_key),
                    r.completed.to_string(),
                    r.failed.to_string(),
                ];
                for c in cols.clone() {
                    cells.push(match cell_text(r, c, &mut notes) {
                        Ok(v) => v,
                        Err((n, _)) => format!("—[{n}]"),
                    });
                }
                cells
            })
            .collect();
        table(&mut out, &header, &rows);
    }
    if !notes.0.is_empty() {
        out.push_str("Absent figures (—):\n\n");
        for (i, n) in notes.0.iter().enumerate() {
            let _ = writeln!(out, "- [{}] {}", i + 1, n);
        }
        out.push('\n');
    }

    if !report.plots.is_empty() {
        out.push_str("## Plots\n\n");
        for p in &report.plots {
            let _ = writeln!(
                out,
                "### {}\n\n![{}]({}/{}.svg)\n\n{}\n",
                p.title, p.title, plot_dir, p.id, p.caption
            );
        }
    }

    if request_rows {
        out.push_str("## How each figure was measured\n\n");
    }
    let (header, rows) = report.measurement_table();
    if request_rows {
        table(&mut out, &header, &rows);
    }

    for t in &report.tables {
        let _ = writeln!(out, "## {}\n\n{}\n", t.title, t.caption);
        table(&mut out, &t.header, &t.rows);
    }

    if !report.notes.is_empty() {
        out.push_str("## Notes\n\n");
        for n in &report.notes {
            let _ = writeln!(out, "- {n}");
        }
        out.push('\n');
    }
    out
}
