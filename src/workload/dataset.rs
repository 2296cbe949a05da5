//! Datasets read from files: ShareGPT conversations and plain prompt files.
//!
//! - ShareGPT JSON: an array of `{"id": ..., "conversations": [{"from": "human", "value": "..."},
//!   {"from": "gpt", "value": "..."}, ...]}` (the `conversation` spelling and the roles `user`,
//!   `assistant`, `chatgpt`, `bard`, `model`, `system` are accepted; unknown fields are ignored).
//! - Prompt files: one prompt per line, blank lines skipped.
//!
//! Both give [`Conversation`]s; [`super::session`] turns them into sessions with lengths.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

/// One recorded conversation: its messages in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    pub messages: Vec<(Role, String)>,
}

impl Conversation {
    /// The system message, if the conversation opens with one.
    pub fn system(&self) -> Option<&str> {
        match self.messages.first() {
            Some((Role::System, s)) => Some(s),
            _ => None,
        }
    }

    /// User turns with the recorded assistant reply that follows each (if any).
    pub fn turns(&self) -> Vec<(&str, Option<&str>)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.messages.len() {
            if self.messages[i].0 == Role::User {
                let reply = self
                    .messages
                    .get(i + 1)
                    .filter(|m| m.0 == Role::Assistant)
                    .map(|m| m.1.as_str());
                out.push((self.messages[i].1.as_str(), reply));
            }
            i += 1;
        }
        out
    }
}

#[derive(Deserialize)]
struct ShareGptItem {
    #[serde(alias = "conversation", default)]
    conversations: Vec<ShareGptMessage>,
}

#[derive(Deserialize)]
struct ShareGptMessage {
    from: String,
    value: String,
}

fn role(from: &str) -> Option<Role> {
    match from.to_ascii_lowercase().as_str() {
        "human" | "user" => Some(Role::User),
        "gpt" | "chatgpt" | "assistant" | "bard" | "model" => Some(Role::Assistant),
        "system" => Some(Role::System),
        _ => None,
    }
}

/// Read a ShareGPT JSON file. Conversations without a non-empty user message are dropped, as are
/// messages of unknown roles; an empty result is an error (the file holds nothing to send).
pub fn read_sharegpt(path: &Path) -> Result<Vec<Conversation>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let items: Vec<ShareGptItem> = serde_json::from_str(&text).map_err(|source| Error::Json {
        file: path.display().to_string(),
        cause: source,
    })?;
    let convs: Vec<Conversation> = items
        .into_iter()
        .map(|it| Conversation {
            messages: it
                .conversations
                .into_iter()
                .filter_map(|m| role(&m.from).map(|r| (r, m.value)))
                .collect(),
        })
        .filter(|c| {
            c.messages
                .iter()
                .any(|(r, t)| *r == Role::User && !t.trim().is_empty())
        })
        .collect();
    if convs.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no conversation with a user message (expected ShareGPT JSON: \
             [{{\"conversations\": [{{\"from\": \"human\", \"value\": \"...\"}}, ...]}}, ...])",
            path.display()
        )));
    }
    Ok(convs)
}

/// Read a prompts file: one prompt per line, blank lines skipped; an empty file is an error.
pub fn read_prompts(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let prompts: Vec<String> = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect();
    if prompts.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no prompts (one prompt per line expected)",
            path.display()
        )));
    }
    Ok(prompts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(content: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, content).unwrap();
        (dir, p)
    }

    #[test]
    fn sharegpt_turns_pair_user_and_reply() {
        let (_d, p) = write(
            r#"[{"id":"a","conversations":[{"from":"system","value":"be brief"},
                {"from":"human","value":"hi"},{"from":"gpt","value":"hello there"},
                {"from":"human","value":"bye"}]},
               {"id":"b","conversation":[{"from":"gpt","value":"only a reply"}]},
               {"id":"c","conversations":[{"from":"user","value":"q"},{"from":"tool","value":"x"},
                {"from":"assistant","value":"r"}],"extra":1}]"#,
        );
        let c = read_sharegpt(&p).unwrap();
        assert_eq!(
            c.len(),
            2,
            "the conversation without a user message is dropped"
        );
        assert_eq!(c[0].system(), Some("be brief"));
        assert_eq!(
            c[0].turns(),
            vec![("hi", Some("hello there")), ("bye", None)]
        );
        assert_eq!(
            c[1].turns(),
            vec![("q", Some("r"))],
            "unknown roles are dropped"
        );
    }

    #[test]
    fn sharegpt_errors_name_the_file() {
        let (_d, p) = write("{\"not\": \"a list\"}");
        assert!(read_sharegpt(&p).unwrap_err().to_string().contains("/f"));
        let (_d, p) = write("[]");
        assert!(read_sharegpt(&p)
            .unwrap_err()
            .to_string()
            .contains("no conversation"));
    }

    #[test]
    fn prompts_file_skips_blank_lines() {
        let (_d, p) = write("one\r\n\n  \ntwo three\n");
        assert_eq!(read_prompts(&p).unwrap(), vec!["one", "two three"]);
        let (_d, p) = write("\n\n");
        assert!(read_prompts(&p).is_err());
    }
}
