//! Sessions: what a load run sends. A session is one conversation of one or more user turns; a
//! single-turn request is a session of one turn. Multi-turn sessions are replayed turn after turn,
//! each turn carrying the history with the server's real replies (the executor fills those in).
//!
//! [`build_sessions`] makes them from a [`SessionSpec`]: a source (random prompts, ShareGPT, a prompts
//! file, a JSONL workload file), length distributions, an optional shared prefix and system prompt.
//!
//! Random prompts and their token counts:
//! - with a tokenizer (`--tokenizer`): random token ids are decoded to text and the text is
//!   re-encoded and adjusted until the tokenizer counts exactly the length asked (the count includes
//!   the special tokens the tokenizer adds, such as BOS, as a server's `usage` does); the text goes to
//!   text endpoints, the count is the tokenizer's, not necessarily the server's;
//! - with `prompt_ids`: token ids are sent as they are (`prompt: [ids]` on `/v1/completions`, which
//!   vLLM, SGLang and llama.cpp's own `llama-server` accept; llama-cpp-python's server and the chat
//!   endpoint do not), exact by construction; with a tokenizer the ids come from those that decode
//!   to clean text, without one from `[min(100, vocab/2), vocab)`, clear of most special ids;
//! - with neither: random English words, about one token per word; the length is approximate and the
//!   server's `usage` gives the real count.

use std::path::PathBuf;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use super::dataset::{read_prompts, read_sharegpt};
use super::{random_prompt_ids, LengthDist};
use crate::error::{Error, Result};
use crate::model::Tokenizer;

/// The prompt of one user turn.
#[derive(Debug, Clone, PartialEq)]
pub enum TurnInput {
    Text(String),
    Ids(Vec<u32>),
}

/// One user turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    pub input: TurnInput,
    pub max_tokens: usize,
    /// The prompt's exact token count where the workload knows it (ids; tokenizer-built text).
    pub input_tokens: Option<usize>,
}

/// One conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub system: Option<String>,
    pub turns: Vec<Turn>,
}

/// Where prompts come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Random,
    ShareGpt(PathBuf),
    Prompts(PathBuf),
    Jsonl(PathBuf),
}

/// A prefix shared by every session's first turn (prefix-caching studies).
#[derive(Debug, Clone, PartialEq)]
pub enum Prefix {
    None,
    Text(String),
    /// Random, of this many tokens (built like a random prompt), the same for every session.
    Tokens(usize),
}

/// How to build the sessions.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionSpec {
    pub source: Source,
    /// Random prompts: tokens per user turn.
    pub input_len: LengthDist,
    /// Overrides the dataset's output lengths when given.
    pub output_len: Option<LengthDist>,
    /// Used where neither an override nor the dataset says.
    pub default_output_len: LengthDist,
    /// User turns per session; `None`: one.
    pub turns: Option<LengthDist>,
    pub prefix: Prefix,
    pub system_prompt: Option<String>,
    /// How many sessions to build (file datasets are cycled to reach it).
    pub num_sessions: usize,
    pub seed: u64,
    /// Send random prompts as token ids.
    pub prompt_ids: bool,
    /// Vocabulary for token-id prompts without a tokenizer.
    pub vocab_size: usize,
}

const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "had",
    "they",
    "you",
    "were",
    "their",
    "one",
    "all",
    "we",
    "can",
    "her",
    "has",
    "there",
    "been",
    "if",
    "more",
    "when",
    "will",
    "would",
    "who",
    "so",
    "no",
    "time",
    "people",
    "year",
    "way",
    "day",
    "man",
    "thing",
    "world",
    "life",
    "hand",
    "part",
    "child",
    "eye",
    "place",
    "work",
    "week",
    "case",
    "point",
    "number",
    "group",
    "problem",
    "fact",
    "good",
    "new",
    "first",
    "last",
    "long",
    "great",
    "little",
    "own",
    "other",
    "old",
    "right",
    "big",
    "high",
    "small",
    "large",
    "next",
    "early",
    "young",
    "important",
    "few",
    "public",
    "same",
    "able",
    "system",
    "water",
    "city",
    "story",
    "house",
    "power",
    "money",
    "music",
    "market",
    "river",
    "light",
    "table",
    "paper",
    "model",
    "data",
    "train",
    "cloud",
    "energy",
    "garden",
    "window",
    "letter",
];

/// Random prompt text and ids.
pub struct PromptGen<'a> {
    tok: Option<&'a Tokenizer>,
    /// The special tokens the tokenizer adds to any text (e.g. BOS): the encoding of "".
    special_ids: Vec<u32>,
    specials: usize,
    vocab: usize,
    /// With a tokenizer: the ids that decode on their own to clean text (non-empty, no replacement
    /// or control characters), so random text re-encodes to about as many tokens.
    pool: Vec<u32>,
}

impl<'a> PromptGen<'a> {
    pub fn new(tok: Option<&'a Tokenizer>, vocab_size: usize) -> Result<Self> {
        let special_ids = match tok {
            Some(t) => t.encode("")?,
            None => Vec::new(),
        };
        let vocab = tok.map_or(vocab_size, |t| t.vocab_size());
        if vocab == 0 {
            return Err(Error::Invalid(
                "random token-id prompts need a vocabulary size of at least 1".into(),
            ));
        }
        let mut pool = Vec::new();
        if let Some(t) = tok {
            for id in 0..u32::try_from(vocab).unwrap_or(u32::MAX) {
                let clean = t.decode(&[id]).is_ok_and(|s| {
                    !s.trim().is_empty()
                        && !s.contains('\u{FFFD}')
                        && !s.chars().any(|c| c.is_control())
                });
                if clean {
                    pool.push(id);
                }
            }
            if pool.len() < 16 {
                pool = (0..u32::try_from(vocab).unwrap_or(u32::MAX)).collect();
            }
        }
        Ok(PromptGen {
            tok,
            specials: special_ids.len(),
            special_ids,
            vocab,
            pool,
        })
    }

    /// `n` random token ids (see the module documentation for the range).
    pub fn ids(&self, n: usize, rng: &mut impl Rng) -> Vec<u32> {
        if !self.pool.is_empty() {
            return (0..n)
                .map(|_| self.pool[rng.random_range(0..self.pool.len())])
                .collect();
        }
        let lo = (self.vocab / 2).min(100);
        random_prompt_ids(n, self.vocab - lo, rng)
            .into_iter()
            .map(|i| i + lo as u32)
            .collect()
    }

    /// The ids of `text` without the added special tokens.
    fn content_ids(&self, tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
        let full = tok.encode(text)?;
        let sp = &self.special_ids;
        Ok(if sp.is_empty() {
            full
        } else if full.starts_with(sp) {
            full[sp.len()..].to_vec()
        } else if full.ends_with(sp) {
            full[..full.len() - sp.len()].to_vec()
        } else {
            full
        })
    }

    /// Random text of `n` tokens and its exact tokenizer count (`None` without a tokenizer: words).
    ///
    /// Random ids are decoded and the text re-encoded; the canonical ids of that encoding are then
    /// cut or extended and decoded again, until the tokenizer counts exactly `n` (special tokens
    /// included) or 24 rounds pass (then the closest text is kept, with its true count).
    pub fn text(&self, n: usize, rng: &mut impl Rng) -> Result<(String, Option<usize>)> {
        let Some(tok) = self.tok else {
            let words: Vec<&str> = (0..n.max(1))
                .map(|_| WORDS[rng.random_range(0..WORDS.len())])
                .collect();
            return Ok((words.join(" "), None));
        };
        let want = n.saturating_sub(self.specials).max(1);
        let mut ids = self.ids(want, rng);
        let mut best: Option<(String, usize)> = None;
        for _ in 0..24 {
            let text = tok.decode(&ids)?;
            let canon = self.content_ids(tok, &text)?;
            let got = canon.len();
            if best
                .as_ref()
                .is_none_or(|(_, b)| got.abs_diff(want) < b.abs_diff(want))
            {
                best = Some((text, got));
            }
            if got == want {
                break;
            }
            ids = canon;
            if got > want {
                ids.truncate(want);
            } else {
                ids.extend(self.ids(want - got, rng));
            }
        }
        let (text, got) = best.unwrap_or_default();
        Ok((text, Some(got + self.specials)))
    }

    /// Tokens of `text` without the added special tokens.
    fn count(&self, text: &str) -> Result<usize> {
        match self.tok {
            Some(t) => Ok(self.content_ids(t, text)?.len()),
            None => Ok(text.split_whitespace().count()),
        }
    }

    /// The tokenizer's count of `text`, specials included (`None` without a tokenizer).
    pub fn exact_count(&self, text: &str) -> Result<Option<usize>> {
        match self.tok {
            Some(t) => Ok(Some(t.encode(text)?.len())),
            None => Ok(None),
        }
    }
}

/// Output length of a recorded reply: the tokenizer's count, else its word count.
fn reply_len(gen: &PromptGen, reply: &str) -> Result<usize> {
    Ok(gen.count(reply)?.max(1))
}

/// Build the sessions `spec` asks for.
pub fn build_sessions(spec: &SessionSpec, tok: Option<&Tokenizer>) -> Result<Vec<Session>> {
    if spec.num_sessions == 0 {
        return Err(Error::Invalid(
            "a workload needs at least one request".into(),
        ));
    }
    let gen = PromptGen::new(tok, spec.vocab_size)?;
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed ^ 0x5e55_1075);
    let multi_turn = spec.turns.is_some();
    if multi_turn && spec.prompt_ids {
        return Err(Error::Invalid(
            "multi-turn sessions need text prompts (the history is text): drop --prompt-ids".into(),
        ));
    }
    let out_len = |rng: &mut ChaCha8Rng, recorded: Option<usize>| -> usize {
        match (&spec.output_len, recorded) {
            (Some(d), _) => d.sample(rng),
            (None, Some(n)) => n,
            (None, None) => spec.default_output_len.sample(rng),
        }
    };
    let mut sessions = Vec::with_capacity(spec.num_sessions);
    match &spec.source {
        Source::Random => {
            for _ in 0..spec.num_sessions {
                let k = spec.turns.map_or(1, |d| d.sample(&mut rng));
                let mut turns = Vec::with_capacity(k);
                for _ in 0..k {
                    let n = spec.input_len.sample(&mut rng);
                    let (input, input_tokens) = if spec.prompt_ids {
                        (TurnInput::Ids(gen.ids(n, &mut rng)), Some(n))
                    } else {
                        let (t, c) = gen.text(n, &mut rng)?;
                        (TurnInput::Text(t), c)
                    };
                    let max_tokens = out_len(&mut rng, None);
                    turns.push(Turn {
                        input,
                        max_tokens,
                        input_tokens,
                    });
                }
                sessions.push(Session {
                    system: spec.system_prompt.clone(),
                    turns,
                });
            }
        }
        Source::ShareGpt(path) => {
            let mut convs = read_sharegpt(path)?;
            convs.shuffle(&mut rng);
            for i in 0..spec.num_sessions {
                let c = &convs[i % convs.len()];
                let all = c.turns();
                let k = match spec.turns {
                    Some(d) => d.sample(&mut rng).min(all.len()),
                    None => 1,
                };
                let mut turns = Vec::with_capacity(k);
                for (user, reply) in all.into_iter().take(k) {
                    let recorded = reply.map(|r| reply_len(&gen, r)).transpose()?;
                    let max_tokens = out_len(&mut rng, recorded);
                    turns.push(Turn {
                        input: TurnInput::Text(user.to_string()),
                        max_tokens,
                        input_tokens: gen.exact_count(user)?,
                    });
                }
                sessions.push(Session {
                    system: spec
                        .system_prompt
                        .clone()
                        .or_else(|| c.system().map(String::from)),
                    turns,
                });
            }
        }
        Source::Prompts(path) => {
            let prompts = read_prompts(path)?;
            let mut next = 0usize;
            for _ in 0..spec.num_sessions {
                let k = spec.turns.map_or(1, |d| d.sample(&mut rng));
                let mut turns = Vec::with_capacity(k);
                for _ in 0..k {
                    let p = &prompts[next % prompts.len()];
                    next += 1;
                    let max_tokens = out_len(&mut rng, None);
                    turns.push(Turn {
                        input: TurnInput::Text(p.clone()),
                        max_tokens,
                        input_tokens: gen.exact_count(p)?,
                    });
                }
                sessions.push(Session {
                    system: spec.system_prompt.clone(),
                    turns,
                });
            }
        }
        Source::Jsonl(path) => {
            if multi_turn {
                return Err(Error::Invalid(
                    "JSONL workload files are single-turn: drop --turns / the chat profile".into(),
                ));
            }
            let reqs = super::read_jsonl(path)?;
            if reqs.is_empty() {
                return Err(Error::Invalid(format!(
                    "{}: no requests in the workload file",
                    path.display()
                )));
            }
            for i in 0..spec.num_sessions {
                let r = &reqs[i % reqs.len()];
                let max_tokens = match &spec.output_len {
                    Some(d) => d.sample(&mut rng),
                    None => r.max_tokens,
                };
                let (input, input_tokens) = match (&r.prompt_ids, &r.prompt) {
                    (Some(ids), _) => (TurnInput::Ids(ids.clone()), Some(ids.len())),
                    (None, Some(t)) => (TurnInput::Text(t.clone()), gen.exact_count(t)?),
                    (None, None) => {
                        return Err(Error::Invalid(format!(
                            "{}: request {} has no prompt",
                            path.display(),
                            i % reqs.len() + 1
                        )))
                    }
                };
                sessions.push(Session {
                    system: spec.system_prompt.clone(),
                    turns: vec![Turn {
                        input,
                        max_tokens,
                        input_tokens,
                    }],
                });
            }
        }
    }
    apply_prefix(spec, &gen, &mut sessions)?;
    Ok(sessions)
}

fn apply_prefix(spec: &SessionSpec, gen: &PromptGen, sessions: &mut [Session]) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed ^ 0x7072_6566_6978);
    enum P {
        Text(String),
        Ids(Vec<u32>),
    }
    let prefix = match &spec.prefix {
        Prefix::None => return Ok(()),
        Prefix::Text(t) => P::Text(t.clone()),
        Prefix::Tokens(0) => return Ok(()),
        Prefix::Tokens(n) if spec.prompt_ids => P::Ids(gen.ids(*n, &mut rng)),
        Prefix::Tokens(n) => P::Text(format!("{}\n", gen.text(*n, &mut rng)?.0)),
    };
    for s in sessions {
        let Some(first) = s.turns.first_mut() else {
            continue;
        };
        match (&prefix, &mut first.input) {
            (P::Text(p), TurnInput::Text(t)) => {
                *t = format!("{p}{t}");
                first.input_tokens = gen.exact_count(t)?;
            }
            (P::Ids(p), TurnInput::Ids(ids)) => {
                let mut all = p.clone();
                all.extend_from_slice(ids);
                *ids = all;
                first.input_tokens = Some(ids.len());
            }
            (P::Text(_), TurnInput::Ids(_)) => {
                return Err(Error::Invalid(
                    "--prefix-text cannot go in front of token-id prompts: use --prefix-len".into(),
                ))
            }
            (P::Ids(_), TurnInput::Text(_)) => {
                return Err(Error::Invalid(
                    "a token-id prefix cannot go in front of text prompts".into(),
                ))
            }
        }
    }
    Ok(())
}

/// A short description of built sessions for the results file.
pub fn describe(sessions: &[Session]) -> serde_json::Value {
    let turns: Vec<&Turn> = sessions.iter().flat_map(|s| &s.turns).collect();
    let n = turns.len().max(1) as f64;
    let known: Vec<usize> = turns.iter().filter_map(|t| t.input_tokens).collect();
    json!({
        "sessions": sessions.len(),
        "turns": turns.len(),
        "mean_turns_per_session": turns.len() as f64 / sessions.len().max(1) as f64,
        "input_tokens_known": known.len() == turns.len(),
        "mean_input_tokens": if known.is_empty() { None } else {
            Some(known.iter().sum::<usize>() as f64 / known.len() as f64) },
        "mean_max_tokens": turns.iter().map(|t| t.max_tokens).sum::<usize>() as f64 / n,
        "token_id_prompts": turns.iter().any(|t| matches!(t.input, TurnInput::Ids(_))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(source: Source) -> SessionSpec {
        SessionSpec {
            source,
            input_len: LengthDist::Fixed(20),
            output_len: None,
            default_output_len: LengthDist::Fixed(7),
            turns: None,
            prefix: Prefix::None,
            system_prompt: None,
            num_sessions: 5,
            seed: 1,
            prompt_ids: false,
            vocab_size: 1000,
        }
    }

    fn tokenizer() -> Tokenizer {
        crate::model::open("tiny-llama")
            .unwrap()
            .tokenizer
            .expect("tiny-llama has a tokenizer")
    }

    #[test]
    fn random_text_has_the_exact_tokenizer_count() {
        let tok = tokenizer();
        let mut s = spec(Source::Random);
        s.input_len = "uniform:2:200".parse().unwrap();
        s.num_sessions = 40;
        let sessions = build_sessions(&s, Some(&tok)).unwrap();
        let mut exact = 0;
        for sess in &sessions {
            let t = &sess.turns[0];
            let TurnInput::Text(text) = &t.input else {
                panic!("text expected")
            };
            let counted = tok.encode(text).unwrap().len();
            assert_eq!(
                Some(counted),
                t.input_tokens,
                "the hint is the tokenizer's count"
            );
            exact += usize::from(counted >= 2);
        }
        assert_eq!(exact, 40);
        // The lengths asked are met (the adjustment loop converges on this tokenizer).
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let gen = PromptGen::new(Some(&tok), 0).unwrap();
        for n in [1, 2, 5, 17, 64, 300] {
            let (text, c) = gen.text(n, &mut rng).unwrap();
            assert_eq!(c, Some(n.max(1 + gen.specials)), "n={n}: {text:?}");
        }
    }

    #[test]
    fn token_ids_and_words_without_tokenizer() {
        let mut s = spec(Source::Random);
        s.prompt_ids = true;
        let sessions = build_sessions(&s, None).unwrap();
        for sess in &sessions {
            let TurnInput::Ids(ids) = &sess.turns[0].input else {
                panic!()
            };
            assert_eq!(ids.len(), 20);
            assert!(ids.iter().all(|&i| (100..1000).contains(&i)));
            assert_eq!(sess.turns[0].max_tokens, 7);
        }
        s.prompt_ids = false;
        let sessions = build_sessions(&s, None).unwrap();
        let TurnInput::Text(t) = &sessions[0].turns[0].input else {
            panic!()
        };
        assert_eq!(t.split_whitespace().count(), 20);
        assert_eq!(sessions[0].turns[0].input_tokens, None);
    }

    #[test]
    fn multi_turn_sessions_and_prefixes() {
        let mut s = spec(Source::Random);
        s.turns = Some("uniform:2:3".parse().unwrap());
        s.prefix = Prefix::Text("SHARED: ".into());
        s.system_prompt = Some("sys".into());
        let sessions = build_sessions(&s, None).unwrap();
        for sess in &sessions {
            assert!((2..=3).contains(&sess.turns.len()));
            assert_eq!(sess.system.as_deref(), Some("sys"));
            let TurnInput::Text(t) = &sess.turns[0].input else {
                panic!()
            };
            assert!(t.starts_with("SHARED: "));
            let TurnInput::Text(t1) = &sess.turns[1].input else {
                panic!()
            };
            assert!(
                !t1.starts_with("SHARED"),
                "only the first turn has the prefix"
            );
        }
        s.prompt_ids = true;
        assert!(build_sessions(&s, None).is_err(), "multi-turn ids");
        let mut s = spec(Source::Random);
        s.prompt_ids = true;
        s.prefix = Prefix::Tokens(8);
        let sessions = build_sessions(&s, None).unwrap();
        let first = |i: usize| match &sessions[i].turns[0].input {
            TurnInput::Ids(ids) => ids.clone(),
            _ => panic!(),
        };
        assert_eq!(first(0).len(), 28);
        assert_eq!(first(0)[..8], first(1)[..8], "the prefix is shared");
        assert_eq!(sessions[0].turns[0].input_tokens, Some(28));
    }

    #[test]
    fn file_sources_cycle_and_take_recorded_lengths() {
        let dir = tempfile::tempdir().unwrap();
        let sg = dir.path().join("sg.json");
        std::fs::write(
            &sg,
            r#"[{"conversations":[{"from":"human","value":"hello there"},{"from":"gpt","value":"one two three"},{"from":"human","value":"more"}]}]"#,
        )
        .unwrap();
        let sessions = build_sessions(&spec(Source::ShareGpt(sg.clone())), None).unwrap();
        assert_eq!(sessions.len(), 5);
        assert_eq!(sessions[0].turns.len(), 1);
        assert_eq!(
            sessions[0].turns[0].max_tokens, 3,
            "the recorded reply's words"
        );
        let mut s = spec(Source::ShareGpt(sg));
        s.turns = Some(LengthDist::Fixed(5));
        s.output_len = Some(LengthDist::Fixed(4));
        let sessions = build_sessions(&s, None).unwrap();
        assert_eq!(sessions[0].turns.len(), 2, "capped by the conversation");
        assert!(sessions[0].turns.iter().all(|t| t.max_tokens == 4));

        let pf = dir.path().join("p.txt");
        std::fs::write(&pf, "a\nb\n").unwrap();
        let sessions = build_sessions(&spec(Source::Prompts(pf)), None).unwrap();
        let texts: Vec<_> = sessions
            .iter()
            .map(|s| match &s.turns[0].input {
                TurnInput::Text(t) => t.clone(),
                _ => panic!(),
            })
            .collect();
        assert_eq!(texts, ["a", "b", "a", "b", "a"]);

        let wl = dir.path().join("w.jsonl");
        std::fs::write(&wl, "{\"prompt_ids\":[1,2,3],\"max_tokens\":9}\n").unwrap();
        let sessions = build_sessions(&spec(Source::Jsonl(wl)), None).unwrap();
        assert_eq!(sessions[4].turns[0].max_tokens, 9);
        assert_eq!(sessions[4].turns[0].input_tokens, Some(3));
        let d = describe(&sessions);
        assert_eq!(d["turns"], 5);
        assert_eq!(d["input_tokens_known"], true);
    }
}
