//! Output text as tokens arrive: incremental detokenization and stop strings.
//!
//! [`IncrementalDecoder`] emits text only when it is valid UTF-8 and stable, the way vLLM and TGI do:
//! it decodes a short window of tokens twice, with and without the newest tokens, and emits the
//! difference unless the newer text ends in U+FFFD (a character whose bytes have not all arrived).
//! The window starts with a few prompt tokens, so decoders that strip a leading space at the start
//! of a text (SentencePiece's Metaspace) keep it on the first output token.
//!
//! [`TextState`] adds stop strings (matched on the decoded text, across token boundaries; the stop
//! string and everything after it is dropped) and stop token ids. While stop strings are set, the
//! text that could be the start of one is held back until it is known not to be. Everything a
//! request returns — the streamed deltas, or the non-streaming text — is the concatenation of what
//! `TextState` emitted, so the two are equal by construction.

use std::sync::Arc;

use crate::model::Tokenizer;

/// Prompt tokens kept as left context for the first output tokens.
const CONTEXT_TOKENS: usize = 6;

/// Turns token ids into text, piece by piece.
pub(crate) struct IncrementalDecoder {
    tokenizer: Arc<Tokenizer>,
    ids: Vec<u32>,
    /// Start of the decode window.
    prefix: usize,
    /// Tokens before this have been emitted.
    read: usize,
}

impl IncrementalDecoder {
    pub(crate) fn new(tokenizer: Arc<Tokenizer>, prompt: &[u32]) -> Self {
        let ids = prompt[prompt.len().saturating_sub(CONTEXT_TOKENS)..].to_vec();
        let read = ids.len();
        Self {
            tokenizer,
            ids,
            prefix: 0,
            read,
        }
    }

    fn decode(&self, from: usize, to: usize) -> String {
        // Decoding ids that the model produced cannot fail for a well-formed tokenizer; if it
        // does, the piece is empty rather than the request failing.
        self.tokenizer
            .decode(&self.ids[from..to])
            .unwrap_or_default()
    }

    /// Add a token; the newly stable text (possibly empty).
    pub(crate) fn push(&mut self, id: u32) -> String {
        self.ids.push(id);
        let prefix_text = self.decode(self.prefix, self.read);
        let new_text = self.decode(self.prefix, self.ids.len());
        if new_text.len() > prefix_text.len() && !new_text.ends_with('\u{FFFD}') {
            if let Some(delta) = new_text
                .strip_prefix(prefix_text.as_str())
                .map(str::to_string)
            {
                self.advance();
                return delta;
            }
        }
        String::new()
    }

    /// Whatever is still held back (at the end of a request): emitted as is, U+FFFD included.
    pub(crate) fn flush(&mut self) -> String {
        if self.read >= self.ids.len() {
            return String::new();
        }
        let prefix_text = self.decode(self.prefix, self.read);
        let new_text = self.decode(self.prefix, self.ids.len());
        let delta = match new_text.strip_prefix(prefix_text.as_str()) {
            Some(d) => d.to_string(),
            None => {
                // the texts diverge: emit new_text after their longest common prefix
                let common = new_text
                    .char_indices()
                    .zip(prefix_text.chars())
                    .take_while(|((_, a), b)| a == b)
                    .last()
                    .map_or(0, |((i, c), _)| i + c.len_utf8());
                new_text[common..].to_string()
            }
        };
        self.advance();
        delta
    }

    fn advance(&mut self) {
        self.prefix = self.read;
        self.read = self.ids.len();
        if self.prefix > 64 {
            self.ids.drain(..self.prefix);
            self.read -= self.prefix;
            self.prefix = 0;
        }
    }
}

/// Text of token ids for a model without a tokenizer: `[id]` per token.
fn id_text(id: u32) -> String {
    format!("[{id}]")
}

/// Why a request stopped early (the OpenAI `finish_reason` is `stop` for both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StopReason {
    Text(String),
    Token(u32),
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Push {
    /// Text to send now (possibly empty).
    Delta(String),
    /// A stop string or stop token: the last text to send, and the request is over.
    Stop { delta: String, reason: StopReason },
}

/// One request's output text: detokenization, stop strings and stop tokens.
pub(crate) struct TextState {
    decoder: Option<IncrementalDecoder>,
    stops: Vec<String>,
    stop_ids: Vec<u32>,
    min_tokens: usize,
    num_tokens: usize,
    text: String,
    /// Bytes of `text` already emitted.
    sent: usize,
}

impl TextState {
    pub(crate) fn new(
        tokenizer: Option<Arc<Tokenizer>>,
        prompt: &[u32],
        stops: Vec<String>,
        stop_ids: Vec<u32>,
        min_tokens: usize,
    ) -> Self {
        Self {
            decoder: tokenizer.map(|t| IncrementalDecoder::new(t, prompt)),
            stops,
            stop_ids,
            min_tokens,
            num_tokens: 0,
            text: String::new(),
            sent: 0,
        }
    }

    /// A token arrived.
    pub(crate) fn push_token(&mut self, id: u32) -> Push {
        self.num_tokens += 1;
        let check = self.num_tokens >= self.min_tokens;
        if check && self.stop_ids.contains(&id) {
            let tail = self.decoder.as_mut().map(|d| d.flush()).unwrap_or_default();
            let reason = self.append(&tail, true).unwrap_or(StopReason::Token(id));
            return Push::Stop {
                delta: self.emit(true),
                reason,
            };
        }
        let piece = match &mut self.decoder {
            Some(d) => d.push(id),
            None => id_text(id),
        };
        match self.append(&piece, check) {
            Some(reason) => Push::Stop {
                delta: self.emit(true),
                reason,
            },
            None => Push::Delta(self.emit(false)),
        }
    }

    /// The request ended (EOS or length): the rest of the text, and a stop string found in it.
    pub(crate) fn finish(&mut self) -> (String, Option<StopReason>) {
        let tail = self.decoder.as_mut().map(|d| d.flush()).unwrap_or_default();
        let reason = self.append(&tail, self.num_tokens >= self.min_tokens);
        (self.emit(true), reason)
    }

    /// Append text; with `check`, look for a stop string in the text not yet emitted and cut the
    /// text where the earliest one starts.
    fn append(&mut self, piece: &str, check: bool) -> Option<StopReason> {
        self.text.push_str(piece);
        if !check || self.stops.is_empty() {
            return None;
        }
        let pending = &self.text[self.sent..];
        let (pos, stop) = self
            .stops
            .iter()
            .filter_map(|s| pending.find(s.as_str()).map(|p| (p, s)))
            .min_by_key(|(p, _)| *p)?;
        let stop = stop.clone();
        self.text.truncate(self.sent + pos);
        Some(StopReason::Text(stop))
    }

    /// Text to send: everything new, less (unless `last`) a tail that may start a stop string.
    fn emit(&mut self, last: bool) -> String {
        let pending = &self.text[self.sent..];
        let hold = if last { 0 } else { self.holdback(pending) };
        let end = self.text.len() - hold;
        let out = self.text[self.sent..end].to_string();
        self.sent = end;
        out
    }

    /// Length of the longest suffix of `pending` that is a proper prefix of a stop string.
    fn holdback(&self, pending: &str) -> usize {
        let mut best = 0;
        for stop in &self.stops {
            for k in (best + 1..stop.len()).rev() {
                if stop.is_char_boundary(k) && pending.ends_with(&stop[..k]) {
                    best = k;
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_tok(stops: &[&str], stop_ids: &[u32], min_tokens: usize) -> TextState {
        TextState::new(
            None,
            &[],
            stops.iter().map(|s| s.to_string()).collect(),
            stop_ids.to_vec(),
            min_tokens,
        )
    }

    /// Feed ids (rendered "[id]") and collect the deltas.
    fn run(state: &mut TextState, ids: &[u32]) -> (Vec<String>, Option<StopReason>) {
        let mut out = Vec::new();
        for &id in ids {
            match state.push_token(id) {
                Push::Delta(d) => out.push(d),
                Push::Stop { delta, reason } => {
                    out.push(delta);
                    return (out, Some(reason));
                }
            }
        }
        let (rest, reason) = state.finish();
        out.push(rest);
        (out, reason)
    }

    #[test]
    fn stop_string_across_tokens_is_cut_and_held_back() {
        // text: [1][2][3][4]; stop "2][3" spans tokens 2 and 3
        let mut s = no_tok(&["2][3"], &[], 0);
        let (deltas, reason) = run(&mut s, &[1, 2, 3, 4]);
        assert_eq!(reason, Some(StopReason::Text("2][3".into())));
        assert_eq!(deltas.concat(), "[1][");
        // "[2]" ends with "2]", a prefix of the stop: held back until token 3 decided it
        assert_eq!(deltas[0], "[1]");
        assert_eq!(deltas[1], "[");
    }

    #[test]
    fn no_stop_means_everything_is_emitted() {
        let mut s = no_tok(&["zz"], &[], 0);
        let (deltas, reason) = run(&mut s, &[1, 2]);
        assert_eq!(reason, None);
        assert_eq!(deltas.concat(), "[1][2]");
    }

    #[test]
    fn stop_token_ends_without_its_text_and_min_tokens_delays_stops() {
        let mut s = no_tok(&[], &[7], 0);
        let (deltas, reason) = run(&mut s, &[1, 7, 2]);
        assert_eq!(reason, Some(StopReason::Token(7)));
        assert_eq!(deltas.concat(), "[1]");

        let mut s = no_tok(&["[1]"], &[7], 3);
        let (deltas, reason) = run(&mut s, &[1, 7, 1, 5]);
        assert_eq!(reason, Some(StopReason::Text("[1]".into())));
        // the first [1] and 7 came before min_tokens; the third token's "[1]" stops
        assert_eq!(deltas.concat(), "[1][7]");
    }

    fn tiny_tokenizer() -> Arc<Tokenizer> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models/tiny-llama/tokenizer.json");
        Arc::new(Tokenizer::from_file(&path).unwrap())
    }

    #[test]
    fn split_utf8_characters_wait_for_their_last_byte() {
        let tok = tiny_tokenizer();
        let text = "a é€ b";
        let ids = tok.encode(text).unwrap();
        let prompt = tok.encode("x").unwrap();
        let mut d = IncrementalDecoder::new(tok.clone(), &prompt);
        let mut pieces: Vec<String> = ids.iter().map(|&id| d.push(id)).collect();
        pieces.push(d.flush());
        assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
        assert_eq!(pieces.concat(), text);
        // multi-byte characters took more than one token: some pushes emitted nothing
        assert!(ids.len() > text.chars().count());
        assert!(pieces.iter().any(String::is_empty));
    }

    #[test]
    fn a_character_cut_off_at_the_end_is_flushed_lossily() {
        let tok = tiny_tokenizer();
        let ids = tok.encode("€").unwrap();
        assert!(ids.len() > 1);
        let mut d = IncrementalDecoder::new(tok.clone(), &[5]);
        assert_eq!(d.push(ids[0]), "");
        assert_eq!(d.flush(), "\u{FFFD}");
    }

    /// SentencePiece-style (Metaspace) decoders strip the leading space of a text; with prompt
    /// tokens as left context, the first output token keeps its space.
    #[test]
    fn metaspace_first_token_keeps_its_space() {
        let json = r#"{
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null,
            "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": true},
            "post_processor": null,
            "decoder": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": true},
            "model": {"type": "WordLevel", "vocab": {"\u2581Hello": 0, "\u2581world": 1, "!": 2, "<unk>": 3}, "unk_token": "<unk>"}
        }"#;
        let tok = Arc::new(Tokenizer::from_bytes(json.as_bytes(), "metaspace").unwrap());
        assert_eq!(tok.decode(&[0, 1, 2]).unwrap(), "Hello world!");
        let mut s = TextState::new(Some(tok.clone()), &[0], vec![], vec![], 0);
        let mut out = String::new();
        for id in [1, 2] {
            match s.push_token(id) {
                Push::Delta(d) => out.push_str(&d),
                Push::Stop { .. } => unreachable!(),
            }
        }
        out.push_str(&s.finish().0);
        assert_eq!(out, " world!");
    }

    #[test]
    fn earliest_stop_wins() {
        let mut s = no_tok(&["[3]", "2]"], &[], 0);
        let (deltas, reason) = run(&mut s, &[1, 2, 3]);
        assert_eq!(reason, Some(StopReason::Text("2]".into())));
        assert_eq!(deltas.concat(), "[1][");
    }
}
