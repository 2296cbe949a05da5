//! `tokenizer.json` through the `tokenizers` crate.

use std::path::Path;

use crate::error::{Error, Result};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    source: String,
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    pub fn from_bytes(bytes: &[u8], source: &str) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| Error::Tokenizer(format!("{source}: {e}")))?;
        Ok(Self {
            inner,
            source: source.to_string(),
        })
    }

    /// Token ids of `text`, with the special tokens the tokenizer's post-processor adds (as HF does).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| Error::Tokenizer(format!("{}: encoding failed: {e}", self.source)))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of `text` without the special tokens the post-processor would add (for text that
    /// already carries them, e.g. a rendered chat template starting with `bos_token`).
    pub fn encode_no_special(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(format!("{}: encoding failed: {e}", self.source)))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| Error::Tokenizer(format!("{}: decoding failed: {e}", self.source)))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Tokens of the model's own vocabulary, without added (special) tokens.
    pub fn base_vocab_size(&self) -> usize {
        self.inner.get_vocab_size(false)
    }

    /// The added tokens (`tokenizer.json`'s `added_tokens`) as (id, content), by id.
    pub fn added_tokens(&self) -> Vec<(u32, String)> {
        let mut tokens: Vec<(u32, String)> = self
            .inner
            .get_added_tokens_decoder()
            .into_iter()
            .map(|(id, t)| (id, t.content))
            .collect();
        tokens.sort_unstable();
        tokens
    }

    pub fn source(&self) -> &str {
        &self.source
    }
}
