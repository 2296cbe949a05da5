//! The HTML report in a real browser: Debian's chromium, headless, loads a report built from the
//! checked-in results files from a file:// URL, logs no console message (no script error, no
//! resource the Content-Security-Policy refused, no failed load), lays out every plot's SVG with a
//! non-empty box and drawn shapes, and takes a screenshot.
//!
//! Skips (saying why) where chromium is not installed; CI (`.ci/run`) installs it.

mod external;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Appended to a copy of the report (the report itself has no script): checks every plot in the
/// laid-out page and writes the verdict into the DOM and the console.
const CHECK: &str = r#"<script>
(function () {
  var figs = document.querySelectorAll('figure.plot');
  var bad = [];
  figs.forEach(function (f) {
    var svg = f.querySelector('svg');
    if (!svg) { bad.push(f.id + ': no svg'); return; }
    var box = svg.getBBox();
    var rect = svg.getBoundingClientRect();
    var shapes = svg.querySelectorAll('path, polyline, line, rect, circle, text').length;
    if (!(box.width > 0 && box.height > 0 && rect.width > 0 && rect.height > 0 && shapes > 5)) {
      bad.push(f.id + ': ' + box.width + 'x' + box.height + ' box, ' + shapes + ' shapes');
    }
  });
  document.body.setAttribute('data-plots', String(figs.length));
  document.body.setAttribute('data-bad', bad.join('; '));
  console.log('infermeter-check plots=' + figs.length + ' bad=' + bad.length);
})();
</script>"#;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/results")
        .join(format!("{name}.json"))
}

fn chromium() -> Option<PathBuf> {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .into_iter()
        .chain(["/usr/bin/chromium", "/usr/bin/chromium-browser"].map(PathBuf::from))
        .find(|p| p.is_file())
}

fn file_url(p: &Path) -> String {
    format!("file://{}", p.display().to_string().replace(' ', "%20"))
}

/// Run headless chromium on `url` with `extra` flags, killed after two minutes.
fn headless(bin: &Path, profile: &Path, extra: &[String], url: &str) -> Output {
    let child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    let id = child.id();
    let start = Instant::now();
    let waiter = std::thread::spawn(move || child.wait_with_output());
    while !waiter.is_finished() {
        if start.elapsed() > Duration::from_secs(120) {
            let _ = Command::new("kill").arg("-9").arg(id.to_string()).status();
            panic!("chromium did not finish within 2 minutes");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    waiter.join().unwrap().expect("chromium output")
}

/// The page's console messages in chromium's log (`INFO:CONSOLE(line)] "message", source: ...`).
fn console_lines(stderr: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(String::from)
        .collect()
}

#[test]
fn report_html_renders_in_headless_chromium() {
    let Some(bin) = chromium() else {
        external::skip_or_fail(
            "report_html_renders_in_headless_chromium",
            "chromium not found (apt-get install chromium; CI installs it)",
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_infermeter"))
        .arg("report")
        .args(["grid", "stream", "sweep-saturated", "kernels", "failed"].map(fixture))
        .args(["--format", "html,json", "--title", "Browser check", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
            .unwrap();
    let plots = report["plots"].as_array().unwrap().len();
    assert!(plots >= 8, "{plots} plots");
    let html_path = dir.path().join("report.html");
    let html = std::fs::read_to_string(&html_path).unwrap();
    assert!(!html.contains("<script"), "the report has no script");

    // The checked copy: the CSP also allows the inline check script, nothing else.
    let checked = html
        .replacen(
            "default-src 'none';",
            "default-src 'none'; script-src 'unsafe-inline';",
            1,
        )
        .replacen("</body>", &format!("{CHECK}</body>"), 1);
    let check_path = dir.path().join("check.html");
    std::fs::write(&check_path, checked).unwrap();
    let run = headless(
        &bin,
        &dir.path().join("profile-check"),
        &["--dump-dom".into()],
        &file_url(&check_path),
    );
    let dom = String::from_utf8_lossy(&run.stdout);
    let console = console_lines(&run.stderr);
    assert!(
        dom.contains(&format!("data-plots=\"{plots}\"")),
        "every plot laid out: {}",
        &dom[..dom.len().min(400)]
    );
    assert!(dom.contains("data-bad=\"\""), "plots with empty SVG: {}", {
        let at = dom.find("data-bad=").unwrap_or(0);
        &dom[at..dom.len().min(at + 400)]
    });
    let others: Vec<&String> = console
        .iter()
        .filter(|l| !l.contains("infermeter-check"))
        .collect();
    assert!(others.is_empty(), "console messages: {others:#?}");
    assert!(
        console
            .iter()
            .any(|l| l.contains(&format!("plots={plots} bad=0"))),
        "{console:#?}"
    );

    // The report itself: no console message at all, and a screenshot.
    let shot = dir.path().join("report.png");
    let run = headless(
        &bin,
        &dir.path().join("profile-shot"),
        &[
            "--window-size=1280,2400".into(),
            format!("--screenshot={}", shot.display()),
        ],
        &file_url(&html_path),
    );
    let console = console_lines(&run.stderr);
    assert!(console.is_empty(), "console messages: {console:#?}");
    let png = std::fs::read(&shot).expect("a screenshot was written");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(png.len() > 20_000, "{} bytes: a blank page?", png.len());
}
