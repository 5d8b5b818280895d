//! SmolLM2-135M (llama architecture) end to end, and the per-call KV cache.

mod common;

use std::sync::{Arc, OnceLock};

use companion_language::{GenerateOptions, Llm, LoadOptions, Message, StopReason};

fn llm() -> Arc<Llm> {
    static LLM: OnceLock<Arc<Llm>> = OnceLock::new();
    LLM.get_or_init(|| {
        Arc::new(Llm::load(&common::llm_path("smollm2-135m"), None).expect("load SmolLM2"))
    })
    .clone()
}

const CAPITAL: &str = "What is the capital of France? Answer in one word.";

#[test]
fn answers_the_capital_of_france() {
    let llm = llm();
    assert_eq!(llm.info().architecture, "llama");
    assert_eq!(
        llm.template().default_system(),
        Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
    );
    let answer = llm
        .chat(
            &[Message::user(CAPITAL)],
            &GenerateOptions::max_new_tokens(16),
        )
        .unwrap();
    println!("SmolLM2: {answer:?}");
    assert!(answer.text.contains("Paris"), "{:?}", answer.text);
    assert_eq!(answer.stop, StopReason::EndOfTurn);
    assert!(answer.generated_tokens <= 16);
    assert_eq!(
        answer.prompt_tokens,
        llm.prompt_ids(&[Message::user(CAPITAL)]).unwrap().len()
    );
}

#[test]
fn the_token_budget_is_respected() {
    let llm = llm();
    let answer = llm
        .chat(
            &[Message::user(
                "Write a long story about a lighthouse keeper.",
            )],
            &GenerateOptions::max_new_tokens(5),
        )
        .unwrap();
    assert_eq!(answer.generated_tokens, 5);
    assert_eq!(answer.stop, StopReason::MaxTokens);
    assert!(!answer.text.is_empty());
    let none = llm
        .chat(
            &[Message::user(CAPITAL)],
            &GenerateOptions::max_new_tokens(0),
        )
        .unwrap();
    assert_eq!(none.generated_tokens, 0);
    assert_eq!(none.text, "");
}

#[test]
fn calls_do_not_share_kv_state() {
    let llm = llm();
    let opts = GenerateOptions::max_new_tokens(24);
    let a = [Message::user(CAPITAL)];
    let b = [
        Message::system("You are a pirate. Always talk like a pirate."),
        Message::user("Tell me about your ship, the biggest one on the seven seas."),
    ];
    let first = llm.chat(&a, &opts).unwrap();
    let other = llm.chat(&b, &opts).unwrap();
    let again = llm.chat(&a, &opts).unwrap();
    assert_eq!(first.text, again.text);
    assert_eq!(first.generated_tokens, again.generated_tokens);
    assert_ne!(first.text, other.text);

    // The same from several threads at once.
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let llm = llm.clone();
            let messages = if i % 2 == 0 { a.to_vec() } else { b.to_vec() };
            let opts = opts.clone();
            std::thread::spawn(move || llm.chat(&messages, &opts).unwrap().text)
        })
        .collect();
    let texts: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(texts[0], first.text);
    assert_eq!(texts[1], other.text);
    assert_eq!(texts[2], first.text);
    assert_eq!(texts[3], other.text);
}

#[test]
fn prompts_longer_than_one_prefill_piece_work() {
    // Over two PREFILL_CHUNK pieces: the KV cache is extended piece by piece.
    let llm = llm();
    let filler = "The meeting notes say nothing of interest. ".repeat(60);
    let messages = [Message::user(format!("{filler}\n\n{CAPITAL}"))];
    let ids = llm.prompt_ids(&messages).unwrap();
    assert!(
        ids.len() > 2 * companion_language::PREFILL_CHUNK,
        "{}",
        ids.len()
    );
    let answer = llm
        .chat(&messages, &GenerateOptions::max_new_tokens(12))
        .unwrap();
    println!("long prompt ({} tokens): {:?}", ids.len(), answer.text);
    assert_eq!(answer.prompt_tokens, ids.len());
    assert!(answer.text.contains("Paris"), "{:?}", answer.text);
    // Raw ids give the same answer.
    let by_ids = llm
        .generate(&ids, &GenerateOptions::max_new_tokens(12))
        .unwrap();
    assert_eq!(answer.text, by_ids.text);
}

#[test]
fn requantized_weights_answer_like_the_original_ones() {
    // SmolLM2's matrices are Q4_1, which `Llm::load` converts to Q8_0.
    let converted = llm();
    assert_eq!(converted.info().requantized_tensors, 210);
    let original = Llm::load_with(
        &common::llm_path("smollm2-135m"),
        &LoadOptions {
            requantize: false,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    assert_eq!(original.info().requantized_tensors, 0);
    let opts = GenerateOptions::max_new_tokens(16);
    let a = converted.chat(&[Message::user(CAPITAL)], &opts).unwrap();
    let b = original.chat(&[Message::user(CAPITAL)], &opts).unwrap();
    println!("Q8_0: {:?}\nQ4_1: {:?}", a.text, b.text);
    assert!(a.text.contains("Paris") && b.text.contains("Paris"));
}
