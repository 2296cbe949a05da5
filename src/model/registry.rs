//! Models embedded in the binary (from `models/`), usable by name from any directory:
//! the tiny trained models with weights and tokenizer, and configs of popular architectures for
//! `--dummy-weights` runs.

pub struct EmbeddedModel {
    pub name: &'static str,
    pub config: &'static str,
    pub tokenizer: Option<&'static [u8]>,
    pub weights: Option<&'static [u8]>,
}

macro_rules! config_only {
    ($name:literal) => {
        EmbeddedModel {
            name: $name,
            config: include_str!(concat!("../../models/", $name, "/config.json")),
            tokenizer: None,
            weights: None,
        }
    };
}

macro_rules! with_weights {
    ($name:literal) => {
        EmbeddedModel {
            name: $name,
            config: include_str!(concat!("../../models/", $name, "/config.json")),
            tokenizer: Some(include_bytes!(concat!(
                "../../models/",
                $name,
                "/tokenizer.json"
            ))),
            weights: Some(include_bytes!(concat!(
                "../../models/",
                $name,
                "/model.safetensors"
            ))),
        }
    };
}

/// The model `run`, `generate` and `logits` use when `--model` is not given.
pub const DEFAULT_MODEL: &str = "tiny-llama";

pub static EMBEDDED: &[EmbeddedModel] = &[
    with_weights!("tiny-llama"),
    with_weights!("tiny-gpt2"),
    config_only!("gpt2"),
    config_only!("gpt2-medium"),
    config_only!("gpt2-xl"),
    config_only!("llama-3.2-1b"),
    config_only!("llama-3.1-8b"),
    config_only!("llama-2-13b"),
    config_only!("tinyllama-1.1b"),
    config_only!("qwen2.5-7b"),
    config_only!("mistral-7b-v0.3"),
    config_only!("mistral-7b-v0.1"),
    config_only!("qwen3-0.6b"),
    config_only!("qwen3-8b"),
    config_only!("phi-3-mini-4k"),
    config_only!("phi-4-mini"),
    config_only!("gemma-3-270m"),
    config_only!("gemma-3-1b"),
    config_only!("gemma-2-2b"),
    config_only!("gemma-2b"),
    config_only!("gemma-7b"),
    config_only!("granite-3.1-2b"),
    config_only!("granite-3.1-8b"),
    config_only!("smollm3-3b"),
    config_only!("olmo-2-1b"),
    config_only!("olmo-2-7b"),
    config_only!("phi-2"),
    config_only!("starcoder2-3b"),
    config_only!("pythia-160m"),
    config_only!("pythia-1b"),
    config_only!("pythia-6.9b"),
    config_only!("falcon-7b"),
    config_only!("opt-125m"),
    config_only!("opt-6.7b"),
    config_only!("starcoder"),
    config_only!("gpt-j-6b"),
    config_only!("bloom-560m"),
    config_only!("bloom-7b1"),
    config_only!("mpt-7b"),
    config_only!("falcon-rw-1b"),
    config_only!("mixtral-8x7b"),
    config_only!("qwen3-30b-a3b"),
    config_only!("olmoe-1b-7b"),
];

pub fn find(name: &str) -> Option<&'static EmbeddedModel> {
    EMBEDDED.iter().find(|m| m.name == name)
}

pub fn names() -> Vec<String> {
    EMBEDDED.iter().map(|m| m.name.to_string()).collect()
}
