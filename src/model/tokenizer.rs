//! `tokenizer.json` through the `tokenizers` crate, or, in a model directory without one, the
//! byte-level BPE that transformers' `GPT2Tokenizer` builds from `vocab.json` and `merges.txt`
//! (OPT, GPT-J and older GPT-2-style repositories ship only those).

use std::path::Path;

use serde_json::Value;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::AddedToken;

use crate::error::{Error, Result};

/// `tokenizer_class` values that name GPT-2's byte-level BPE (what `vocab.json` + `merges.txt`
/// build); a directory naming another class gets no tokenizer from those files.
const BYTE_LEVEL_BPE_CLASSES: &[&str] = &[
    "GPT2Tokenizer",
    "GPT2TokenizerFast",
    "CodeGenTokenizer",
    "CodeGenTokenizerFast",
];

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

    /// The tokenizer of model directory `dir`: its `tokenizer.json`, else GPT-2's byte-level BPE
    /// from `vocab.json` and `merges.txt` ([`Self::from_vocab_and_merges`]); None when it has
    /// neither (or only files of another tokenizer class).
    pub fn from_dir(dir: &Path) -> Result<Option<Self>> {
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            return Self::from_file(&json).map(Some);
        }
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        if !(vocab.is_file() && merges.is_file()) {
            return Ok(None);
        }
        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.is_file() {
            let text =
                std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
            serde_json::from_str(&text).map_err(|cause| Error::Json {
                file: config_path.display().to_string(),
                cause,
            })?
        } else {
            Value::Null
        };
        if let Some(class) = config.get("tokenizer_class").and_then(Value::as_str) {
            if !BYTE_LEVEL_BPE_CLASSES.contains(&class) {
                eprintln!(
                    "warning: {}: tokenizer_class {class} is not GPT-2's byte-level BPE; \
                     vocab.json and merges.txt not used (prompts must be token ids)",
                    config_path.display()
                );
                return Ok(None);
            }
        }
        Self::from_vocab_and_merges(&vocab, &merges, &config, &config_path.display().to_string())
            .map(Some)
    }

    /// GPT-2's byte-level BPE from `vocab` (vocab.json) and `merges` (merges.txt), as
    /// transformers' `GPT2Tokenizer` builds it: no unknown token, the ByteLevel pre-tokenizer
    /// (GPT-2's split pattern; `add_prefix_space` from the config, false when absent) and decoder;
    /// the config's special tokens (`bos_token`, `eos_token`, `unk_token`, `pad_token`, each
    /// `<|endoftext|>` by default but the pad, as strings or `{"content": ..}` objects) and its
    /// `added_tokens_decoder` kept whole and skipped when decoding; `add_bos_token` /
    /// `add_eos_token` (OPT's tokenizer sets the first) put the BOS / EOS around every encoded
    /// text. `config` is tokenizer_config.json's object (Null when the directory has none), named
    /// `config_file` in errors.
    pub fn from_vocab_and_merges(
        vocab: &Path,
        merges: &Path,
        config: &Value,
        config_file: &str,
    ) -> Result<Self> {
        let source = format!("{} + {}", vocab.display(), merges.display());
        let fail = |what: String| Error::Tokenizer(format!("{source}: {what}"));
        let path_str = |p: &Path| -> Result<String> {
            p.to_str()
                .map(str::to_string)
                .ok_or_else(|| fail(format!("{} is not UTF-8", p.display())))
        };
        let bpe = BPE::from_file(&path_str(vocab)?, &path_str(merges)?)
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let flag = |field: &str| -> Result<bool> {
            match config.get(field) {
                None | Some(Value::Null) => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(v) => Err(Error::config(
                    config_file,
                    field,
                    format!("expected true or false, found {v}"),
                )),
            }
        };
        // a special token's content: a string, {"content": ..}, or null (none)
        let token = |field: &str, default: Option<&str>| -> Result<Option<String>> {
            match config.get(field) {
                None => Ok(default.map(str::to_string)),
                Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(Value::Object(o)) => match o.get("content") {
                    Some(Value::String(s)) => Ok(Some(s.clone())),
                    _ => Err(Error::config(
                        config_file,
                        &format!("{field}.content"),
                        "expected a string",
                    )),
                },
                Some(v) => Err(Error::config(
                    config_file,
                    field,
                    format!("expected a token string, found {v}"),
                )),
            }
        };
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(ByteLevel::new(flag("add_prefix_space")?, true, true)));
        inner.with_decoder(Some(ByteLevel::default()));
        // added tokens in id order, so that any past the vocabulary get the ids the config gives
        let mut added: Vec<(u32, String, bool)> = Vec::new();
        if let Some(decoder) = config.get("added_tokens_decoder") {
            let Value::Object(entries) = decoder else {
                return Err(Error::config(
                    config_file,
                    "added_tokens_decoder",
                    "expected an object",
                ));
            };
            for (id, entry) in entries {
                let field = format!("added_tokens_decoder.{id}");
                let id: u32 = id
                    .parse()
                    .map_err(|_| Error::config(config_file, &field, "the key is not a token id"))?;
                let content = entry
                    .get("content")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        Error::config(
                            config_file,
                            &format!("{field}.content"),
                            "expected a string",
                        )
                    })?;
                let special = entry
                    .get("special")
                    .and_then(Value::as_bool)
                    .unwrap_or(true);
                added.push((id, content.to_string(), special));
            }
        }
        added.sort_by_key(|(id, _, _)| *id);
        for (id, content, special) in &added {
            inner
                .add_tokens([AddedToken::from(content.as_str(), *special)])
                .map_err(|e| fail(e.to_string()))?;
            let got = inner.token_to_id(content);
            if got != Some(*id) {
                return Err(Error::config(
                    config_file,
                    &format!("added_tokens_decoder.{id}"),
                    format!("`{content}` gets id {got:?} from vocab.json and the tokens before it"),
                ));
            }
        }
        const ENDOFTEXT: &str = "<|endoftext|>";
        let bos = token("bos_token", Some(ENDOFTEXT))?;
        let eos = token("eos_token", Some(ENDOFTEXT))?;
        let mut specials = vec![bos.clone(), eos.clone()];
        specials.push(token("unk_token", Some(ENDOFTEXT))?);
        specials.push(token("pad_token", None)?);
        let specials: Vec<AddedToken> = specials
            .into_iter()
            .flatten()
            .map(|c| AddedToken::from(c, true))
            .collect();
        inner
            .add_special_tokens(specials)
            .map_err(|e| fail(e.to_string()))?;
        // BOS / EOS around each text
        let mut template = Vec::new();
        for (on, which, content) in [
            (flag("add_bos_token")?, "bos_token", &bos),
            (flag("add_eos_token")?, "eos_token", &eos),
        ] {
            if !on {
                continue;
            }
            let content = content.as_ref().ok_or_else(|| {
                Error::config(
                    config_file,
                    which,
                    "null, but the config adds it to every text",
                )
            })?;
            let id = inner
                .token_to_id(content)
                .ok_or_else(|| fail(format!("{which} `{content}` is not in the vocabulary")))?;
            template.push((which, content.clone(), id));
        }
        if !template.is_empty() {
            let piece = |which: &str| template.iter().find(|t| t.0 == which).map(|t| t.1.clone());
            let (bos, eos) = (piece("bos_token"), piece("eos_token"));
            let seq = |s: &str| -> Vec<String> {
                bos.iter()
                    .cloned()
                    .chain([s.to_string()])
                    .chain(eos.iter().cloned())
                    .collect()
            };
            let single = seq("$A");
            let pair: Vec<String> = single.iter().cloned().chain(seq("$B:1")).collect();
            let processor = TemplateProcessing::builder()
                .try_single(single)
                .and_then(|b| b.try_pair(pair))
                .map_err(|e| fail(e.to_string()))?
                .special_tokens(
                    template
                        .iter()
                        .map(|(_, c, id)| (c.clone(), *id))
                        .collect::<Vec<_>>(),
                )
                .build()
                .map_err(|e| fail(e.to_string()))?;
            inner.with_post_processor(Some(processor));
        }
        Ok(Self { inner, source })
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
