mod common;
use companion_language::{GenerateOptions, LlamaCpp, LlamaOptions, Message};
fn run(label: &str, llm: &LlamaCpp, q: &str) {
    let g = llm
        .chat(&[Message::user(q)], &GenerateOptions::max_new_tokens(16))
        .unwrap();
    println!(
        "{label}: prompt {} tok (cached {}) {:.0} ms, gen {} tok {:.0} ms = {:.1} tok/s",
        g.prompt_tokens,
        g.cached_prompt_tokens,
        g.prompt_ms,
        g.generated_tokens,
        g.generate_ms,
        g.generate_tokens_per_sec()
    );
}
#[test]
#[ignore]
fn scratch() {
    let q = "What is the capital of France? Answer in one word.";
    let s =
        LlamaCpp::load_with(&common::llm_path("smollm2-135m"), &LlamaOptions::default()).unwrap();
    println!("threads {}", s.info().threads);
    run("smol capital", &s, q);
    run(
        "smol story",
        &s,
        "Write a long story about a lighthouse keeper.",
    );
    run("smol capital again", &s, q);
    let w =
        LlamaCpp::load_with(&common::llm_path("qwen2.5-0.5b"), &LlamaOptions::default()).unwrap();
    run("smol after qwen load", &s, q);
    run("qwen", &w, q);
    run(
        "smol after qwen run",
        &s,
        "Write a long story about a lighthouse keeper.",
    );
}
