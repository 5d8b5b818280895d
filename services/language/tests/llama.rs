//! The llama.cpp backend with the real SmolLM2-135M and Qwen2.5-0.5B: determinism, the prompt
//! cache, stop reasons, errors and concurrent calls.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use companion_language::{
    Error, GenerateOptions, Generation, LlamaCpp, LlamaOptions, Message, Native, StopReason,
    chat_format, load_generator,
};

const CAPITAL: &str = "What is the capital of France? Answer in one word.";

/// A fixed instruction like the voicemail features', long enough to be worth caching.
const SYSTEM: &str = "You read voicemail transcripts for a busy office worker. Reply with one \
    short sentence that says who called, what they want and what the listener should do next. \
    Do not add greetings, apologies or anything the caller did not say.";

const VOICEMAILS: [&str; 3] = [
    "Hi, it's Tom from the garage. Your car is ready, you can pick it up after four today.",
    "Hello, this is Dr. Patel's office calling to confirm your appointment on Monday at nine.",
    "Hey, it's Anna. I'm running late for our lunch, can we meet at one instead of twelve?",
];

fn load(name: &str, prefix_reuse: bool) -> LlamaCpp {
    LlamaCpp::load_with(
        &common::llm_path(name),
        &LlamaOptions {
            prefix_reuse,
            ..LlamaOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("load {name}: {e}"))
}

fn smollm2() -> Arc<LlamaCpp> {
    static LLM: OnceLock<Arc<LlamaCpp>> = OnceLock::new();
    LLM.get_or_init(|| Arc::new(load("smollm2-135m", true)))
        .clone()
}

fn qwen() -> Arc<LlamaCpp> {
    static LLM: OnceLock<Arc<LlamaCpp>> = OnceLock::new();
    LLM.get_or_init(|| Arc::new(load("qwen2.5-0.5b", true)))
        .clone()
}

/// The engine on the model `name`, loaded once for every test of this file.
fn engine(name: &str) -> Arc<Native> {
    static ENGINES: OnceLock<Mutex<HashMap<String, Arc<Native>>>> = OnceLock::new();
    let mut engines = ENGINES.get_or_init(Mutex::default).lock().unwrap();
    engines
        .entry(name.to_string())
        .or_insert_with(|| Arc::new(Native::load(&common::llm_path(name), None).unwrap()))
        .clone()
}

/// Two llama.cpp answers to the same messages from the model `name` must be the same, or part
/// at a near-tie: llama.cpp computes a prompt's tokens in batches whose kernels round
/// differently from one token's (on AVX2 CPUs, a cached prefix and a fresh prompt part at gaps
/// of tenths). The gap is read from the engine's logits on the same file, as where the engine
/// and llama.cpp part (`engine.rs`); a wrong cache or a mixed-up context gives whole units.
fn assert_same_or_near_tie(name: &str, messages: &[Message], a: &str, b: &str) {
    if a == b {
        return;
    }
    let gap = common::gap_where_they_part(&engine(name), messages, a, b).abs();
    println!("{name}: {a:?}\n  and {b:?}\n  gap {gap:.3}");
    assert!(
        gap < common::NEAR_TIE,
        "{name}: the answers part where the logits differ by {gap}: {a:?} / {b:?}"
    );
}

fn summarise(voicemail: &str) -> Vec<Message> {
    vec![Message::system(SYSTEM), Message::user(voicemail)]
}

#[test]
fn answers_like_the_candle_backend_is_asked() {
    for (llm, default_system) in [
        (
            smollm2(),
            "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
        ),
        (
            qwen(),
            "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
        ),
    ] {
        assert_eq!(llm.template().default_system(), Some(default_system));
        let messages = [Message::user(CAPITAL)];
        let answer = llm
            .chat(&messages, &GenerateOptions::max_new_tokens(16))
            .unwrap();
        println!("{}: {answer:?}", llm.info().architecture);
        assert!(answer.text.contains("Paris"), "{:?}", answer.text);
        assert_eq!(answer.stop, StopReason::EndOfTurn);
        assert!(answer.generated_tokens <= 16);
        assert_eq!(
            answer.prompt_tokens,
            llm.prompt_ids(&messages).unwrap().len()
        );
        assert!(!answer.text.contains("<|im_end|>"));
    }
}

/// What a peer runtime is fed (`chat_format`, read from the file alone) is what the backend
/// computes: the same prompt ids and stop tokens.
#[test]
fn the_chat_format_of_a_file_gives_the_backends_prompt_ids() {
    for (name, llm) in [("smollm2-135m", smollm2()), ("qwen2.5-0.5b", qwen())] {
        let (tokenizer, template) = chat_format(&common::llm_path(name)).unwrap();
        let messages = summarise(VOICEMAILS[1]);
        assert_eq!(
            tokenizer.encode_chat(&template, &messages).unwrap(),
            llm.prompt_ids(&messages).unwrap(),
            "{name}"
        );
        assert_eq!(tokenizer.stop_ids(), llm.tokenizer().stop_ids(), "{name}");
        assert!(!tokenizer.stop_ids().is_empty(), "{name}");
    }
    let err = chat_format(std::path::Path::new("/nonexistent/model.gguf")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
}

#[test]
fn the_same_prompt_gives_the_same_answer() {
    let llm = qwen();
    let opts = GenerateOptions::max_new_tokens(32);
    let messages = summarise(VOICEMAILS[0]);
    let first = llm.chat(&messages, &opts).unwrap();
    let second = llm.chat(&messages, &opts).unwrap();
    assert_eq!(first.text, second.text);
    assert_eq!(first.generated_tokens, second.generated_tokens);
    // The second call found the whole prompt in a context's cache (but its last token, whose
    // logits pick the first answer token).
    assert_eq!(second.cached_prompt_tokens, second.prompt_tokens - 1);
}

#[test]
fn reusing_the_prompt_cache_changes_no_answer() {
    let opts = GenerateOptions::max_new_tokens(40);
    for name in ["smollm2-135m", "qwen2.5-0.5b"] {
        let cached = load(name, true);
        let fresh = load(name, false);
        let mut reused = 0;
        for voicemail in VOICEMAILS {
            let messages = summarise(voicemail);
            let a = cached.chat(&messages, &opts).unwrap();
            let b = fresh.chat(&messages, &opts).unwrap();
            println!("{name}: {:?} (cached {})", a.text, a.cached_prompt_tokens);
            assert_same_or_near_tie(name, &messages, &a.text, &b.text);
            if a.text == b.text {
                assert_eq!(a.stop, b.stop);
            }
            assert_eq!(b.cached_prompt_tokens, 0);
            reused += a.cached_prompt_tokens;
        }
        // Every call after the first reuses at least the system prompt.
        let system = cached.prompt_ids(&[Message::system(SYSTEM)]).unwrap().len();
        assert!(reused >= 2 * (system - 8), "{name}: reused {reused}");
    }
}

#[test]
fn stop_reasons() {
    let llm = smollm2();
    let story = [Message::user(
        "Write a long story about a lighthouse keeper.",
    )];
    let short = llm
        .chat(&story, &GenerateOptions::max_new_tokens(5))
        .unwrap();
    assert_eq!(short.generated_tokens, 5);
    assert_eq!(short.stop, StopReason::MaxTokens);
    assert!(!short.text.is_empty());

    let none = llm
        .chat(&story, &GenerateOptions::max_new_tokens(0))
        .unwrap();
    assert_eq!((none.generated_tokens, none.text.as_str()), (0, ""));

    // A context window just past the prompt fills up before the budget is spent.
    let prompt = llm.prompt_ids(&story).unwrap().len();
    let small = LlamaCpp::load_with(
        &common::llm_path("smollm2-135m"),
        &LlamaOptions {
            context_length: prompt + 6,
            ..LlamaOptions::default()
        },
    )
    .unwrap();
    let full = small
        .chat(&story, &GenerateOptions::max_new_tokens(100))
        .unwrap();
    assert_eq!(full.stop, StopReason::ContextFull);
    assert_eq!(full.generated_tokens, 6);
    // The same tokens as with a large window.
    let long = llm
        .chat(&story, &GenerateOptions::max_new_tokens(6))
        .unwrap();
    assert_eq!(full.text, long.text);
}

#[test]
fn a_prompt_longer_than_the_context_is_an_error() {
    let llm = smollm2();
    let context = llm.info().context_length;
    let long = "word ".repeat(context + 10);
    let err = llm
        .chat(&[Message::user(long)], &GenerateOptions::max_new_tokens(4))
        .unwrap_err();
    match err {
        Error::PromptTooLong {
            prompt_tokens,
            context: c,
        } => {
            assert!(prompt_tokens >= context);
            assert_eq!(c, context);
        }
        other => panic!("{other}"),
    }
    assert!(llm.generate(&[], &GenerateOptions::default()).is_err());
    // The model still answers afterwards.
    assert!(
        llm.chat(
            &[Message::user(CAPITAL)],
            &GenerateOptions::max_new_tokens(8)
        )
        .is_ok()
    );
}

#[test]
fn two_threads_generate_at_once() {
    let llm = qwen();
    let opts = GenerateOptions::max_new_tokens(24);
    let expected: Vec<Generation> = VOICEMAILS[..2]
        .iter()
        .map(|v| llm.chat(&summarise(v), &opts).unwrap())
        .collect();
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let llm = llm.clone();
            let opts = opts.clone();
            std::thread::spawn(move || llm.chat(&summarise(VOICEMAILS[i % 2]), &opts).unwrap())
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let got = h.join().expect("a generating thread panicked");
        // A thread may find the other voicemail's prompt in the cache, or none.
        let messages = summarise(VOICEMAILS[i % 2]);
        println!("thread {i}");
        assert_same_or_near_tie("qwen2.5-0.5b", &messages, &got.text, &expected[i % 2].text);
    }
}

#[test]
fn bad_files_are_errors_not_panics() {
    let err = LlamaCpp::load(std::path::Path::new("/no/such/model.gguf"), None).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");

    // A complete header whose tensor data is cut short: the metadata reads, llama.cpp refuses.
    let path = common::llm_path("smollm2-135m");
    let mut file = std::fs::File::open(&path).unwrap();
    let header = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate(header.tensor_data_offset as usize + 4096);
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("truncated.gguf");
    std::fs::write(&cut, &bytes).unwrap();
    let err = LlamaCpp::load(&cut, None).unwrap_err();
    println!("truncated GGUF: {err}");
    assert!(matches!(err, Error::LlamaLoad { .. }), "{err}");
    assert!(err.to_string().contains("truncated.gguf"), "{err}");
}

#[test]
fn warm_up_through_the_trait() {
    let generator = load_generator(
        companion_language::Backend::LlamaCpp,
        &common::llm_path("smollm2-135m"),
        None,
    )
    .unwrap();
    generator.warm_up().unwrap();
    let answer = generator
        .chat(
            &[Message::user(CAPITAL)],
            &GenerateOptions::max_new_tokens(16),
        )
        .unwrap();
    assert!(answer.text.contains("Paris"), "{:?}", answer.text);
}
