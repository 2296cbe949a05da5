//! `infermeter serve` as a process: `--port 0` prints the bound address as the first stdout line;
//! the server answers there; bad options fail with a message.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use common::*;

/// Kills the child (which this test started) when dropped, so a failing test leaves no server.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_prints_its_address_and_answers_there() {
    let mut child = Child(
        infermeter_cmd()
            .args([
                "serve",
                "--model",
                "tiny-llama",
                "--port",
                "0",
                "--kv-blocks",
                "128",
                "--served-model-name",
                "tl",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let base = line.trim().to_string();
    assert!(
        base.starts_with("http://127.0.0.1:"),
        "first line: {line:?}"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let r = client.get(format!("{base}/health")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let r: serde_json::Value = client
            .post(format!("{base}/v1/completions"))
            .json(&serde_json::json!({"prompt": "Copyright", "max_tokens": 5, "temperature": 0}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["model"], "tl");
        assert_eq!(r["usage"]["completion_tokens"], 5);
    });
}

#[test]
fn bad_options_fail_with_a_message() {
    for (args, want) in [
        (vec!["--host", "not-an-ip"], "--host"),
        (vec!["--kv-memory", "12 parsecs"], "--kv-memory"),
        (vec!["--model", "no-such-model"], "no-such-model"),
        (vec!["--max-waiting", "0"], "--max-waiting"),
    ] {
        let out = infermeter_cmd()
            .arg("serve")
            .args(["--port", "0"])
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
    }
}
