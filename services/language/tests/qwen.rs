//! Qwen2.5-Coder-0.5B-Instruct (qwen2 architecture) end to end.

mod common;

use std::sync::OnceLock;

use companion_language::{GenerateOptions, Llm, Message, StopReason};

fn llm() -> &'static Llm {
    static LLM: OnceLock<Llm> = OnceLock::new();
    LLM.get_or_init(|| {
        Llm::load(&common::llm_path("qwen2.5-0.5b"), None).expect("load Qwen2.5-0.5B")
    })
}

#[test]
fn loads_with_its_chat_template() {
    let llm = llm();
    let info = llm.info();
    assert_eq!(info.architecture, "qwen2");
    assert_eq!(info.block_count, 24);
    assert_eq!(info.context_length, 32_768);
    assert_eq!(
        llm.template().default_system(),
        Some("You are Qwen, created by Alibaba Cloud. You are a helpful assistant.")
    );
    let prompt = llm.render_prompt(&[Message::user("Hi")]);
    assert_eq!(
        prompt,
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    let ids = llm.prompt_ids(&[Message::user("Hi")]).unwrap();
    assert_eq!(ids.first(), Some(&151_644));
    assert_eq!(ids.iter().filter(|&&id| id == 151_645).count(), 2);
    assert_eq!(llm.tokenizer().decode(&ids, false).unwrap(), prompt);
}

#[test]
fn answers_with_json() {
    let llm = llm();
    let messages = [
        Message::system("You extract facts. Reply with a single JSON object and nothing else."),
        Message::user(
            "What is the capital of France? Reply with JSON of the form {\"city\": \"<name>\"}.",
        ),
    ];
    let answer = llm
        .chat(&messages, &GenerateOptions::max_new_tokens(32))
        .unwrap();
    println!("Qwen2.5-0.5B: {answer:?}");
    assert_eq!(answer.stop, StopReason::EndOfTurn);
    let json = common::json_object(&answer.text)
        .unwrap_or_else(|| panic!("no JSON object in {:?}", answer.text));
    let value: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("invalid JSON {json:?}: {e}"));
    let city = value["city"].as_str().unwrap_or_default();
    assert!(city.contains("Paris"), "{value}");
}
