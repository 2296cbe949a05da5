//! Chat templates: real Hugging Face templates (Llama 3, Llama 3.2 with tools, SmolLM2 / ChatML, a
//! named list, a role-checking one) render exactly as transformers renders them
//! (`tests/fixtures/templates/expected.json`, made by `make_fixtures.py` with jinja2), and a model
//! directory's template drives `/v1/chat/completions`.

mod common;
mod serve_support;

use std::path::PathBuf;

use common::*;
use infermeter::engine::{generate, GenerateRequest, SamplingParams};
use infermeter::model::Tokenizer;
use infermeter::server::ChatTemplate;
use serde_json::{json, Value};
use serve_support::*;

fn templates_dir() -> PathBuf {
    repo().join("tests/fixtures/templates")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(templates_dir().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn hf_templates_render_like_transformers() {
    let exp = expected();
    let renderings = exp["renderings"].as_object().unwrap();
    assert!(renderings.len() >= 5);
    for (name, cases) in renderings {
        let dir = templates_dir().join(name);
        let t = ChatTemplate::for_model(Some(&dir)).unwrap();
        assert!(!t.is_fallback(), "{name}");
        assert!(!t.add_special_tokens(), "{name}");
        assert!(
            t.origin().ends_with("tokenizer_config.json"),
            "{}",
            t.origin()
        );
        for (conv_name, want) in cases.as_object().unwrap() {
            let conv = &exp["conversations"][conv_name];
            let mut kwargs = conv["kwargs"].as_object().cloned().unwrap_or_default();
            kwargs.insert("date_string".into(), json!("26 Jul 2024"));
            let got = t.render(
                conv["messages"].as_array().unwrap(),
                conv["add_generation_prompt"].as_bool().unwrap(),
                &kwargs,
            );
            match (got, want.get("text"), want.get("error")) {
                (Ok(text), Some(w), _) => {
                    assert_eq!(text, w.as_str().unwrap(), "{name} / {conv_name}")
                }
                (Err(e), _, Some(w)) => assert!(
                    e.0.contains(w.as_str().unwrap()),
                    "{name} / {conv_name}: {e}"
                ),
                (got, _, _) => panic!("{name} / {conv_name}: got {got:?}, want {want}"),
            }
        }
    }
}

#[test]
fn strftime_now_fills_the_date_when_none_is_given() {
    let t = ChatTemplate::for_model(Some(&templates_dir().join("llama3.2"))).unwrap();
    let text = t
        .render(
            &[json!({"role": "user", "content": "hi"})],
            true,
            &serde_json::Map::new(),
        )
        .unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("Today Date: "))
        .unwrap();
    // "Today Date: 05 Mar 2031": day, month abbreviation, four-digit year
    let parts: Vec<&str> = line["Today Date: ".len()..].split(' ').collect();
    assert_eq!(parts.len(), 3, "{line}");
    assert_eq!(parts[0].len(), 2);
    assert_eq!(parts[1].len(), 3);
    assert_eq!(parts[2].len(), 4);
}

#[test]
fn directories_without_a_template_use_the_fallback() {
    let t = ChatTemplate::for_model(Some(&model_dir("tiny-llama"))).unwrap();
    assert!(t.is_fallback());
    assert!(ChatTemplate::for_model(None).unwrap().is_fallback());
    // a broken template is an error at startup, naming the file
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"chat_template": "{% if %}"}"#,
    )
    .unwrap();
    let err = ChatTemplate::for_model(Some(dir.path())).unwrap_err();
    assert!(err.0.contains("tokenizer_config.json"), "{err}");
    // chat_template.jinja is found too
    std::fs::write(dir.path().join("tokenizer_config.json"), "{}").unwrap();
    std::fs::write(
        dir.path().join("chat_template.jinja"),
        "{{ messages[0].content }}!",
    )
    .unwrap();
    let t = ChatTemplate::for_model(Some(dir.path())).unwrap();
    let out = t
        .render(
            &[json!({"role": "user", "content": "x"})],
            true,
            &serde_json::Map::new(),
        )
        .unwrap();
    assert_eq!(out, "x!");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_uses_the_model_template() {
    let src = model_dir("tiny-llama");
    let dir = copy_model(&src);
    std::fs::copy(
        templates_dir().join("smollm2/tokenizer_config.json"),
        dir.path().join("tokenizer_config.json"),
    )
    .unwrap();
    let s = start(config(dir.path().to_str().unwrap())).await;
    assert!(s
        .handle
        .info()
        .chat_template
        .ends_with("tokenizer_config.json"));
    let exp = expected();
    let conv = &exp["conversations"]["system_user"];
    let rendered = exp["renderings"]["smollm2"]["system_user"]["text"]
        .as_str()
        .unwrap();
    let tok = Tokenizer::from_file(&dir.path().join("tokenizer.json")).unwrap();
    let ids = tok.encode_no_special(rendered).unwrap();
    let want = generate(
        &load_cpu(dir.path()),
        &GenerateRequest {
            prompt_ids: ids.clone(),
            max_tokens: 10,
            sampling: SamplingParams::greedy(),
            ignore_eos: true,
        },
    )
    .unwrap()
    .output_ids;
    let (status, _, r) = s
        .post(
            "/v1/chat/completions",
            &json!({"messages": conv["messages"], "max_tokens": 10, "temperature": 0,
                "ignore_eos": true, "return_token_ids": true}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["usage"]["prompt_tokens"], ids.len());
    assert_eq!(r["choices"][0]["token_ids"], json!(want));
    assert_eq!(
        r["choices"][0]["message"]["content"],
        tok.decode(&want).unwrap().as_str()
    );
    // add_generation_prompt: false drops the assistant cue
    let (_, _, r2) = s
        .post(
            "/v1/chat/completions",
            &json!({"messages": conv["messages"], "max_tokens": 1,
                "add_generation_prompt": false}),
        )
        .await;
    let no_cue = rendered.strip_suffix("<|im_start|>assistant\n").unwrap();
    assert_eq!(
        r2["usage"]["prompt_tokens"],
        tok.encode_no_special(no_cue).unwrap().len()
    );
    s.handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_errors_are_400_naming_messages() {
    let dir = copy_model(&model_dir("tiny-llama"));
    std::fs::copy(
        templates_dir().join("alternating/tokenizer_config.json"),
        dir.path().join("tokenizer_config.json"),
    )
    .unwrap();
    let s = start(config(dir.path().to_str().unwrap())).await;
    let (status, _, r) = s
        .post(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "assistant", "content": "x"}]}),
        )
        .await;
    assert_eq!(status, 400);
    let e = error_of(&r);
    assert_eq!(e["param"], "messages");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("Conversation roles must alternate"),
        "{r}"
    );
    let (status, _, r) = s
        .post(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 2}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    s.handle.shutdown().await.unwrap();
}
