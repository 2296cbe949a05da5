//! The report as one self-contained HTML page: inline CSS, inline SVG plots, no script and no
//! external resource (a Content-Security-Policy forbids any), so it opens offline and can be
//! mailed or attached as is.

use std::fmt::Write;

use super::markdown::{cell_text, comparability_lines, Footnotes, LATENCY_COLUMNS};
use super::model::{Report, COLUMNS};

const CSS: &str = r#"
:root { --fg: #1d2330; --muted: #5b6475; --line: #dde1e8; --head: #f3f5f8; --warn: #fff4e0; --warnline: #e69f00; --ok: #e8f6f0; --okline: #009e73; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1320px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 32px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
p.meta, p.caption { color: var(--muted); margin: 4px 0 12px; }
nav { font-size: 13px; margin: 0 0 8px; }
nav a { color: #0060a0; text-decoration: none; }
.callout { padding: 10px 14px; border-left: 4px solid; border-radius: 4px; margin: 14px 0; }
.callout.warn { background: var(--warn); border-color: var(--warnline); }
.callout.ok { background: var(--ok); border-color: var(--okline); }
.callout ul { margin: 6px 0 0; padding-left: 20px; }
.scroll { overflow-x: auto; border: 1px solid var(--line); border-radius: 4px; }
table { border-collapse: collapse; width: 100%; font-size: 12px; }
th, td { padding: 4px 7px; border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap; vertical-align: top; }
th { background: var(--head); font-weight: 600; white-space: normal; vertical-align: bottom; }
th:first-child, td:first-child { text-align: left; position: sticky; left: 0; background: #fff; }
th:first-child { background: var(--head); }
td.text, th.text { text-align: left; white-space: normal; min-width: 160px; }
tr:nth-child(even) td { background: #fafbfc; }
td.absent { color: var(--muted); }
sup { font-size: 9px; }
ol.footnotes { color: var(--muted); font-size: 12.5px; margin: 8px 0 0; }
code { font-size: 12px; background: var(--head); padding: 1px 4px; border-radius: 3px; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 18px; }
figure.plot { margin: 0; border: 1px solid var(--line); border-radius: 4px; padding: 8px; }
figure.plot svg { width: 100%; height: auto; display: block; }
figcaption { color: var(--muted); font-size: 12.5px; margin-top: 6px; }
figcaption b { color: var(--fg); }
ul.notes { color: var(--muted); }
"#;

/// The page loads nothing: no script, no external style, font or image (the browser enforces it).
pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:";

/// HTML-escape text.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn table(out: &mut String, header: &[String], rows: &[Vec<String>], text_cols: &[usize]) {
    out.push_str("<div class=\"scroll\"><table><thead><tr>");
    for (i, h) in header.iter().enumerate() {
        let class = if text_cols.contains(&i) {
            " class=\"text\""
        } else {
            ""
        };
        let _ = write!(out, "<th{class}>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for r in rows {
        out.push_str("<tr>");
        for (i, c) in r.iter().enumerate() {
            let class = if text_cols.contains(&i) {
                " class=\"text\""
            } else {
                ""
            };
            let _ = write!(out, "<td{class}>{}</td>", esc(c));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>\n");
}

/// Render the report; `svgs` holds each plot's SVG by plot id (plots without one are left out).
pub fn render(report: &Report, svgs: &[(String, String)]) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">\
         <link rel=\"icon\" href=\"data:,\"><title>{}</title><style>{CSS}</style></head>\n<body><main>\n",
        esc(&report.title)
    );
    let _ = writeln!(out, "<h1>{}</h1>", esc(&report.title));
    let _ = writeln!(
        out,
        "<p class=\"meta\">Built by {} from {} results file{}.</p>",
        esc(&report.generated_by),
        report.sources.len(),
        if report.sources.len() == 1 { "" } else { "s" }
    );
    let mut nav = vec![("files", "Results files".to_string())];
    if !report.rows.is_empty() {
        nav.push(("latency", "Throughput and latency".into()));
        nav.push(("energy", "Energy, memory and cost".into()));
    }
    if !svgs.is_empty() {
        nav.push(("plots", "Plots".into()));
    }
    if !report.rows.is_empty() {
        nav.push(("measured", "How each figure was measured".into()));
    }
    let table_ids: Vec<String> = report
        .tables
        .iter()
        .map(|t| format!("table-{}", t.id))
        .collect();
    for (t, id) in report.tables.iter().zip(&table_ids) {
        nav.push((id.as_str(), t.title.clone()));
    }
    if !report.notes.is_empty() {
        nav.push(("notes", "Notes".into()));
    }
    let links: Vec<String> = nav
        .iter()
        .map(|(id, t)| format!("<a href=\"#{}\">{}</a>", esc(id), esc(t)))
        .collect();
    let _ = writeln!(out, "<nav>{}</nav>", links.join(" · "));
    let (same, lines) = comparability_lines(report);
    if same {
        let _ = writeln!(
            out,
            "<div class=\"callout ok\" id=\"comparability\">{}</div>",
            esc(&lines.join(" "))
        );
    } else {
        let _ = write!(
            out,
            "<div class=\"callout warn\" id=\"comparability\"><b>{}</b><ul>",
            esc(&lines[0])
        );
        for l in &lines[1..] {
            let _ = write!(out, "<li>{}</li>", esc(l));
        }
        out.push_str("</ul></div>\n");
    }

    out.push_str("<h2 id=\"files\">Results files</h2>\n");
    let header: Vec<String> = super::model::SOURCES_HEADER.map(String::from).to_vec();
    let rows: Vec<Vec<String>> = report
        .sources
        .iter()
        .map(|s| {
            vec![
                s.label.clone(),
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
    table(&mut out, &header, &rows, &[4, 5, 6, 7]);

    let mut notes = Footnotes::default();
    for (id, title, cols) in [
        ("latency", "Throughput and latency", 0..LATENCY_COLUMNS),
        (
            "energy",
            "Energy, memory and cost",
            LATENCY_COLUMNS..COLUMNS.len(),
        ),
    ] {
        if report.rows.is_empty() {
            continue;
        }
        let _ = writeln!(out, "<h2 id=\"{id}\">{title}</h2>");
        out.push_str("<div class=\"scroll\"><table class=\"compare\"><thead><tr><th>run</th><th title=\"workload group of the file; hover a cell for the row's workload parameters\">workload</th><th>ok</th><th>failed</th>");
        for c in cols.clone() {
            let _ = write!(
                out,
                "<th data-key=\"{}\">{}</th>",
                COLUMNS[c].key,
                esc(COLUMNS[c].header)
            );
        }
        out.push_str("</tr></thead><tbody>");
        for r in &report.rows {
            let _ = write!(
                out,
                "<tr><td>{}</td><td title=\"{}\">{}</td><td>{}</td><td>{}</td>",
                esc(&r.label),
                esc(&r.match_key),
                esc(&r.workload_group),
                r.completed,
                r.failed
            );
            for c in cols.clone() {
                match cell_text(r, c, &mut notes) {
                    Ok(v) => {
                        let _ = write!(out, "<td>{}</td>", esc(&v));
                    }
                    Err((n, reason)) => {
                        let _ = write!(
                            out,
                            "<td class=\"absent\" title=\"{}\">—<sup>{n}</sup></td>",
                            esc(&reason)
                        );
                    }
                }
            }
            out.push_str("</tr>");
        }
        out.push_str("</tbody></table></div>\n");
    }
    if !notes.0.is_empty() {
        out.push_str("<ol class=\"footnotes\">");
        for n in &notes.0 {
            let _ = write!(out, "<li>— {}</li>", esc(n));
        }
        out.push_str("</ol>\n");
    }

    let drawn: Vec<_> = report
        .plots
        .iter()
        .filter_map(|p| {
            svgs.iter()
                .find(|(id, _)| *id == p.id)
                .map(|(_, svg)| (p, svg))
        })
        .collect();
    if !drawn.is_empty() {
        out.push_str("<h2 id=\"plots\">Plots</h2>\n<div class=\"plots\">\n");
        for (p, svg) in drawn {
            let _ = writeln!(
                out,
                "<figure class=\"plot\" id=\"plot-{}\" data-plot=\"{}\">{}<figcaption><b>{}.</b> {}</figcaption></figure>",
                esc(&p.id),
                esc(&p.id),
                svg,
                esc(&p.title),
                esc(&p.caption)
            );
        }
        out.push_str("</div>\n");
    }

    let (header, rows) = report.measurement_table();
    if !rows.is_empty() {
        out.push_str("<h2 id=\"measured\">How each figure was measured</h2>\n");
        table(&mut out, &header, &rows, &[1, 2, 3, 4]);
    }

    for t in &report.tables {
        let _ = writeln!(
            out,
            "<h2 id=\"table-{}\">{}</h2><p class=\"caption\">{}</p>",
            esc(&t.id),
            esc(&t.title),
            esc(&t.caption)
        );
        table(&mut out, &t.header, &t.rows, &[]);
    }

    if !report.notes.is_empty() {
        out.push_str("<h2 id=\"notes\">Notes</h2><ul class=\"notes\">");
        for n in &report.notes {
            let _ = write!(out, "<li>{}</li>", esc(n));
        }
        out.push_str("</ul>\n");
    }
    out.push_str("</main></body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
