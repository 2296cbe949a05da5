//! Workload files: JSON Lines, one request per line.
//!
//! ```text
//! {"prompt_ids": [464, 3290, 318], "max_tokens": 128}
//! {"prompt": "Explain paged attention.", "max_tokens": 64}
//! ```
//!
//! Each line holds exactly one of `prompt_ids` (token ids, for targets that take ids or to pin the
//! prompt length exactly) and `prompt` (text), plus `max_tokens` (at least 1). Unknown fields are
//! rejected so that a misspelt field cannot be silently ignored. Blank lines are skipped.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One request of a workload file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadRequest {
    /// The prompt as token ids (exclusive with `prompt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_ids: Option<Vec<u32>>,
    /// The prompt as text (exclusive with `prompt_ids`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// How many tokens to generate at most; at least 1.
    pub max_tokens: usize,
}

impl WorkloadRequest {
    /// Check the rules a file line must follow; the message says what is wrong (without location).
    pub fn check(&self) -> std::result::Result<(), String> {
        match (&self.prompt_ids, &self.prompt) {
            (Some(_), Some(_)) => {
                return Err("both `prompt_ids` and `prompt` are given; give exactly one".into())
            }
            (None, None) => {
                return Err("neither `prompt_ids` nor `prompt` is given; give exactly one".into())
            }
            (Some(ids), None) if ids.is_empty() => return Err("`prompt_ids` is empty".into()),
            (None, Some(text)) if text.is_empty() => return Err("`prompt` is empty".into()),
            _ => {}
        }
        if self.max_tokens == 0 {
            return Err("`max_tokens` must be at least 1".into());
        }
        Ok(())
    }
}

/// Read a JSONL workload file. Blank lines are skipped; an empty file gives an empty list. Errors
/// name the file, the 1-based line number and what is wrong: malformed JSON, an unknown or missing
/// field, both or neither prompt field, an empty prompt, `max_tokens` of 0.
pub fn read_jsonl(path: &Path) -> Result<Vec<WorkloadRequest>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| parse_line(path, i + 1, line))
        .collect()
}

/// Parse line `lineno` (1-based) of `path`.
fn parse_line(path: &Path, lineno: usize, line: &str) -> Result<WorkloadRequest> {
    let at = format!("{}:{lineno}", path.display());
    // Syntax first, so that field errors below carry no misleading "line 1 column N" of their own.
    let value: serde_json::Value = serde_json::from_str(line).map_err(|source| Error::Json {
        file: at.clone(),
        cause: source,
    })?;
    let req: WorkloadRequest =
        serde_json::from_value(value).map_err(|e| Error::Invalid(format!("{at}: {e}")))?;
    req.check()
        .map_err(|why| Error::Invalid(format!("{at}: {why}")))?;
    Ok(req)
}

/// Write `reqs` as JSONL to `path` atomically (a temporary file renamed over the target). Every
/// request is checked first; an invalid one is an error naming its 0-based index and nothing is
/// written.
pub fn write_jsonl(path: &Path, reqs: &[WorkloadRequest]) -> Result<()> {
    let mut bytes = Vec::new();
    for (i, req) in reqs.iter().enumerate() {
        req.check().map_err(|why| {
            Error::Invalid(format!(
                "{}: request {i} not written: {why}",
                path.display()
            ))
        })?;
        serde_json::to_writer(&mut bytes, req).map_err(|source| Error::Json {
            file: path.display().to_string(),
            cause: source,
        })?;
        bytes.push(b'\n');
    }
    crate::util::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u32], max_tokens: usize) -> WorkloadRequest {
        WorkloadRequest {
            prompt_ids: Some(v.to_vec()),
            prompt: None,
            max_tokens,
        }
    }

    fn text(t: &str, max_tokens: usize) -> WorkloadRequest {
        WorkloadRequest {
            prompt_ids: None,
            prompt: Some(t.into()),
            max_tokens,
        }
    }

    fn read_str(content: &str) -> (tempfile::TempDir, Result<Vec<WorkloadRequest>>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.jsonl");
        std::fs::write(&path, content).unwrap();
        let r = read_jsonl(&path);
        (dir, r)
    }

    fn read_err(content: &str) -> String {
        match read_str(content).1 {
            Ok(v) => panic!("parsed {v:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn round_trips_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/w.jsonl");
        let reqs = vec![ids(&[1, 2, 3], 16), text("hello", 4)];
        write_jsonl(&path, &reqs).unwrap();
        let written = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            written,
            "{\"prompt_ids\":[1,2,3],\"max_tokens\":16}\n{\"prompt\":\"hello\",\"max_tokens\":4}\n"
        );
        assert_eq!(read_jsonl(&path).unwrap(), reqs);
    }

    #[test]
    fn blank_lines_and_crlf_are_accepted() {
        let (_d, r) = read_str("\n{\"prompt\":\"a\",\"max_tokens\":1}\r\n   \n\n{\"prompt_ids\":[7],\"max_tokens\":2}\n");
        assert_eq!(r.unwrap(), vec![text("a", 1), ids(&[7], 2)]);
        let (_d, r) = read_str("");
        assert!(r.unwrap().is_empty());
    }

    #[test]
    fn errors_name_file_line_and_problem() {
        let good = "{\"prompt\":\"a\",\"max_tokens\":1}\n\n";
        let cases = [
            ("{\"prompt\":\"a\",", "malformed JSON"),
            (
                "{\"prompt\":\"a\",\"prompt_ids\":[1],\"max_tokens\":1}",
                "both `prompt_ids` and `prompt`",
            ),
            ("{\"max_tokens\":1}", "neither `prompt_ids` nor `prompt`"),
            ("{\"prompt\":\"\",\"max_tokens\":1}", "`prompt` is empty"),
            (
                "{\"prompt_ids\":[],\"max_tokens\":1}",
                "`prompt_ids` is empty",
            ),
            ("{\"prompt\":\"a\"}", "missing field `max_tokens`"),
            (
                "{\"prompt\":\"a\",\"max_tokens\":0}",
                "`max_tokens` must be at least 1",
            ),
            ("{\"prompt\":\"a\",\"max_tokens\":-2}", "invalid value"),
            (
                "{\"prompt\":\"a\",\"max_tokens\":1,\"temperature\":0}",
                "unknown field `temperature`",
            ),
            ("[1,2]", "invalid type"),
        ];
        for (line, want) in cases {
            let msg = read_err(&format!("{good}{line}\n{good}"));
            assert!(msg.contains("w.jsonl:3:"), "{line}: {msg}");
            assert!(msg.contains(want), "{line}: {msg}");
        }
    }

    #[test]
    fn missing_file_names_the_path() {
        let msg = read_jsonl(Path::new("/nonexistent/dir/w.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("/nonexistent/dir/w.jsonl"), "{msg}");
    }

    #[test]
    fn invalid_requests_are_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.jsonl");
        let msg = write_jsonl(&path, &[text("a", 1), text("b", 0)])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("request 1") && msg.contains("max_tokens"),
            "{msg}"
        );
        assert!(!path.exists());
    }
}
