//! Workload profiles: named sets of defaults for common traffic shapes. Every value is a default only:
//! `--input-len`, `--output-len`, `--turns`, `--prefix-len` / `--prefix-text`, `--system-prompt` and
//! `--ignore-eos` override it.
//!
//! | profile           | turns         | input tokens / turn      | output tokens           | shared prefix | ignore_eos |
//! |-------------------|---------------|--------------------------|-------------------------|---------------|------------|
//! | `chat`            | uniform:2:4   | normal:96:48:8:512       | normal:128:64:16:512    | system prompt | no         |
//! | `code-generation` | 1             | normal:1024:256:128:4096 | normal:256:64:32:1024   | system prompt | no         |
//! | `classification`  | 1             | normal:512:128:32:2048   | 8                       | 256 tokens    | no         |
//! | `fixed-length`    | 1             | 1024                     | 256                     | none          | yes        |
//!
//! `chat` is multi-turn: each conversation's turns go out one after the other, every turn carrying the
//! whole history with the server's real replies as assistant messages. With a ShareGPT dataset its
//! user turns are the recorded ones; otherwise they are random prompts of the input length.
//! `classification` models many documents sharing one long instruction (a prefix-caching workload).

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::workload::LengthDist;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Chat,
    CodeGeneration,
    Classification,
    FixedLength,
}

/// A profile's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileDefaults {
    pub input_len: LengthDist,
    pub output_len: LengthDist,
    /// User turns per conversation; `None`: single-turn requests.
    pub turns: Option<LengthDist>,
    pub system_prompt: Option<&'static str>,
    /// Length of a random shared prefix, in tokens.
    pub prefix_len: Option<usize>,
    pub ignore_eos: bool,
}

fn dist(s: &str) -> LengthDist {
    // The literals below are valid forms; `Fixed(1)` can never be reached.
    s.parse().unwrap_or(LengthDist::Fixed(1))
}

impl Profile {
    pub const ALL: [Profile; 4] = [
        Profile::Chat,
        Profile::CodeGeneration,
        Profile::Classification,
        Profile::FixedLength,
    ];

    pub fn defaults(self) -> ProfileDefaults {
        match self {
            Profile::Chat => ProfileDefaults {
                input_len: dist("normal:96:48:8:512"),
                output_len: dist("normal:128:64:16:512"),
                turns: Some(dist("uniform:2:4")),
                system_prompt: Some("You are a helpful assistant. Answer clearly and concisely."),
                prefix_len: None,
                ignore_eos: false,
            },
            Profile::CodeGeneration => ProfileDefaults {
                input_len: dist("normal:1024:256:128:4096"),
                output_len: dist("normal:256:64:32:1024"),
                turns: None,
                system_prompt: Some(
                    "You are an expert software engineer. Complete the code that follows.",
                ),
                prefix_len: None,
                ignore_eos: false,
            },
            Profile::Classification => ProfileDefaults {
                input_len: dist("normal:512:128:32:2048"),
                output_len: LengthDist::Fixed(8),
                turns: None,
                system_prompt: None,
                prefix_len: Some(256),
                ignore_eos: false,
            },
            Profile::FixedLength => ProfileDefaults {
                input_len: LengthDist::Fixed(1024),
                output_len: LengthDist::Fixed(256),
                turns: None,
                system_prompt: None,
                prefix_len: None,
                ignore_eos: true,
            },
        }
    }
}

impl FromStr for Profile {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "chat" => Ok(Profile::Chat),
            "code-generation" | "code" => Ok(Profile::CodeGeneration),
            "classification" => Ok(Profile::Classification),
            "fixed-length" | "fixed" => Ok(Profile::FixedLength),
            _ => Err(Error::Invalid(format!(
                "profile `{s}` is not one of: chat, code-generation, classification, fixed-length"
            ))),
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Profile::Chat => "chat",
            Profile::CodeGeneration => "code-generation",
            Profile::Classification => "classification",
            Profile::FixedLength => "fixed-length",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_defaults_are_sane() {
        for p in Profile::ALL {
            assert_eq!(p.to_string().parse::<Profile>().unwrap(), p);
            let d = p.defaults();
            assert!(d.input_len.mean() >= 1.0 && d.output_len.mean() >= 1.0);
            // No literal fell back to the placeholder.
            assert_ne!(d.input_len, LengthDist::Fixed(1), "{p}");
        }
        assert!(Profile::Chat.defaults().turns.is_some());
        assert!(Profile::FixedLength.defaults().ignore_eos);
        assert!("poetry".parse::<Profile>().is_err());
    }
}
