//! companion's own engine with the real SmolLM2-135M (llama) and Qwen2.5-0.5B (qwen2) files:
//! the same answers as llama.cpp on the same file, determinism across thread counts, the prompt
//! cache, stop reasons, errors and concurrent calls.

mod common;

use std::sync::{Arc, OnceLock};

use companion_language::generate::extract_json;
use companion_language::{
    Error, GenerateOptions, Generation, LlamaCpp, Message, Native, NativeOptions, StopReason,
    load_generator,
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

fn load_with(name: &str, options: NativeOptions) -> Native {
    Native::load_with(&common::llm_path(name), &options)
        .unwrap_or_else(|e| panic!("load {name}: {e}"))
}

fn load(name: &str, prefix_reuse: bool) -> Native {
    load_with(
        name,
        NativeOptions {
            prefix_reuse,
            ..NativeOptions::default()
        },
    )
}

fn smollm2() -> Arc<Native> {
    static LLM: OnceLock<Arc<Native>> = OnceLock::new();
    LLM.get_or_init(|| Arc::new(load("smollm2-135m", true)))
        .clone()
}

fn qwen() -> Arc<Native> {
    static LLM: OnceLock<Arc<Native>> = OnceLock::new();
    LLM.get_or_init(|| Arc::new(load("qwen2.5-0.5b-q4ffn", true)))
        .clone()
}

fn summarise(voicemail: &str) -> Vec<Message> {
    vec![Message::system(SYSTEM), Message::user(voicemail)]
}

/// Greedy decoding of the same weights: the engine and llama.cpp pick the same tokens, unless
/// two candidates are so close that rounding decides (activations quantized with f32 against
/// f16 scales, an f32 against an f16 KV cache, other summation orders; candle and llama.cpp
/// part ways on such near-ties too). Where the answers part, the engine's logits for its own
/// token and for llama.cpp's must be within [`common::NEAR_TIE`] of each other: a wrong computation
/// gives gaps of whole units. (Measured: 5 of the 9 answers part, at gaps of 0.03 to 0.27.)
#[test]
fn answers_as_llama_cpp_does_on_the_same_file() {
    for name in ["smollm2-135m", "qwen2.5-0.5b", "qwen2.5-0.5b-q4ffn"] {
        let path = common::llm_path(name);
        let ours = Native::load(&path, None).unwrap();
        let theirs = LlamaCpp::load(&path, None).unwrap();
        let capital = [Message::user(CAPITAL)];
        assert_eq!(
            ours.prompt_ids(&capital).unwrap(),
            theirs.prompt_ids(&capital).unwrap()
        );
        let opts = GenerateOptions::max_new_tokens(12);
        let (a, b) = (
            ours.chat(&capital, &opts).unwrap(),
            theirs.chat(&capital, &opts).unwrap(),
        );
        assert_eq!(a.text, b.text, "{name}");
        assert_eq!(
            (a.generated_tokens, a.stop),
            (b.generated_tokens, b.stop),
            "{name}"
        );
        let opts = GenerateOptions::max_new_tokens(40);
        for voicemail in VOICEMAILS {
            let messages = summarise(voicemail);
            let (a, b) = (
                ours.chat(&messages, &opts).unwrap(),
                theirs.chat(&messages, &opts).unwrap(),
            );
            if a.text != b.text {
                let gap = common::gap_where_they_part(&ours, &messages, &a.text, &b.text);
                println!(
                    "{name}: {:?}\n  llama.cpp {:?}\n  gap {gap:.3}",
                    a.text, b.text
                );
                assert!(
                    gap < common::NEAR_TIE,
                    "{name}: the engine's logits differ by {gap} where the answers part"
                );
            }
        }
    }
}

#[test]
fn one_or_two_threads_compute_the_same_answer() {
    let one = load_with(
        "qwen2.5-0.5b-q4ffn",
        NativeOptions {
            threads: Some(1),
            ..NativeOptions::default()
        },
    );
    let two = load_with(
        "qwen2.5-0.5b-q4ffn",
        NativeOptions {
            threads: Some(2),
            ..NativeOptions::default()
        },
    );
    assert_eq!((one.info().threads, two.info().threads), (1, 2));
    let opts = GenerateOptions::max_new_tokens(24);
    for voicemail in &VOICEMAILS[..2] {
        let (a, b) = (
            one.chat(&summarise(voicemail), &opts).unwrap(),
            two.chat(&summarise(voicemail), &opts).unwrap(),
        );
        assert_eq!(a.text, b.text);
    }
}

/// A prompt longer than one pass (the engine computes prompts in chunks) and a long answer.
#[test]
fn a_long_prompt_gives_the_answer_llama_cpp_gives() {
    let path = common::llm_path("qwen2.5-0.5b-q4ffn");
    let ours = qwen();
    let theirs = LlamaCpp::load(&path, None).unwrap();
    let transcript = VOICEMAILS.join(" ").repeat(4);
    let messages = [Message::user(format!(
        "How many times does Tom call in this transcript? {transcript}"
    ))];
    assert!(ours.prompt_ids(&messages).unwrap().len() > 3 * companion_engine::CHUNK);
    let opts = GenerateOptions::max_new_tokens(16);
    let (a, b) = (
        ours.chat(&messages, &opts).unwrap(),
        theirs.chat(&messages, &opts).unwrap(),
    );
    println!("{:?} / llama.cpp {:?}", a.text, b.text);
    assert_eq!(a.text, b.text);
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
    assert_eq!(second.cached_prompt_tokens, second.prompt_tokens - 1);
}

#[test]
fn reusing_the_prompt_cache_changes_no_answer() {
    let opts = GenerateOptions::max_new_tokens(40);
    for name in ["smollm2-135m", "qwen2.5-0.5b-q4ffn"] {
        let cached = load(name, true);
        let fresh = load(name, false);
        let mut reused = 0;
        for voicemail in VOICEMAILS {
            let messages = summarise(voicemail);
            let a = cached.chat(&messages, &opts).unwrap();
            let b = fresh.chat(&messages, &opts).unwrap();
            assert_eq!(a.text, b.text, "{name}: {voicemail}");
            assert_eq!(a.stop, b.stop);
            assert_eq!(b.cached_prompt_tokens, 0);
            reused += a.cached_prompt_tokens;
        }
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
    assert_eq!(
        (short.generated_tokens, short.stop),
        (5, StopReason::MaxTokens)
    );
    assert!(!short.text.is_empty());
    let none = llm
        .chat(&story, &GenerateOptions::max_new_tokens(0))
        .unwrap();
    assert_eq!((none.generated_tokens, none.text.as_str()), (0, ""));

    let prompt = llm.prompt_ids(&story).unwrap().len();
    let small = load_with(
        "smollm2-135m",
        NativeOptions {
            context_length: prompt + 6,
            ..NativeOptions::default()
        },
    );
    let full = small
        .chat(&story, &GenerateOptions::max_new_tokens(100))
        .unwrap();
    assert_eq!(
        (full.stop, full.generated_tokens),
        (StopReason::ContextFull, 6)
    );
    let long = llm
        .chat(&story, &GenerateOptions::max_new_tokens(6))
        .unwrap();
    assert_eq!(full.text, long.text);

    let capital = llm
        .chat(
            &[Message::user(CAPITAL)],
            &GenerateOptions::max_new_tokens(32),
        )
        .unwrap();
    assert_eq!(capital.stop, StopReason::EndOfTurn, "{:?}", capital.text);
}

/// A structured answer ends where its JSON does: the same text as the whole answer up to the
/// bracket that closes the first JSON value, the same value, fewer tokens.
#[test]
fn until_json_stops_where_the_json_value_closes() {
    let llm = qwen();
    let ask = [
        Message::system(
            "Reply with a JSON object {\"tasks\": [...]} listing what the caller asks for, \
             then explain your answer in a few sentences.",
        ),
        Message::user(VOICEMAILS[0]),
    ];
    let options = GenerateOptions::max_new_tokens(200);
    let whole = llm.chat(&ask, &options).unwrap();
    let cut = llm.chat(&ask, &options.clone().until_json()).unwrap();
    assert_eq!(cut.stop, StopReason::JsonComplete, "{:?}", cut.text);
    let value = extract_json(&cut.text).expect("a JSON value");
    assert!(cut.text.ends_with(value), "{:?}", cut.text);
    assert!(whole.text.starts_with(&cut.text), "{whole:?} / {cut:?}");
    assert_eq!(extract_json(&whole.text), Some(value));
    assert!(cut.generated_tokens < whole.generated_tokens, "{whole:?}");

    // Without any JSON in the answer, the option changes nothing.
    let capital = [Message::user(CAPITAL)];
    let options = GenerateOptions::max_new_tokens(32);
    assert_eq!(
        llm.chat(&capital, &options.clone().until_json())
            .unwrap()
            .text,
        llm.chat(&capital, &options).unwrap().text
    );
}

/// One pass over several tokens gives each of them the logits single-token passes give.
#[test]
fn a_pass_over_several_tokens_gives_the_logits_of_single_steps() {
    let llm = smollm2();
    let model = llm.model();
    let prompt = llm.prompt_ids(&summarise(VOICEMAILS[0])).unwrap();
    let tail = llm
        .tokenizer()
        .encode(" Tom says the car is ready")
        .unwrap();
    assert!(tail.len() >= 4, "{tail:?}");
    let vocab = model.config().vocab;

    let (mut single, mut logits) = (companion_engine::Session::default(), Vec::new());
    model.forward(&mut single, &prompt, 2, &mut logits).unwrap();
    let mut expected = Vec::new();
    for &token in &tail {
        model
            .forward(&mut single, &[token], 2, &mut logits)
            .unwrap();
        expected.extend_from_slice(&logits[..vocab]);
    }

    let mut batched = companion_engine::Session::default();
    model
        .forward(&mut batched, &prompt, 2, &mut logits)
        .unwrap();
    model
        .forward_last(&mut batched, &tail, tail.len(), 2, &mut logits)
        .unwrap();
    assert_eq!(logits.len(), tail.len() * vocab);
    let worst = logits
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-3, "logits differ by up to {worst}");
    assert_eq!(batched.len(), single.len());

    // The logits of the last two only, and bad requests.
    let mut two = companion_engine::Session::default();
    model.forward(&mut two, &prompt, 2, &mut logits).unwrap();
    model
        .forward_last(&mut two, &tail, 2, 2, &mut logits)
        .unwrap();
    assert_eq!(logits.len(), 2 * vocab);
    for n in [0, tail.len() + 1] {
        let err = model
            .forward_last(&mut two, &tail, n, 2, &mut logits)
            .unwrap_err();
        assert!(err.to_string().contains("logits of the last"), "{err}");
    }
}

/// Drafts looked up in the prompt change no answer, and where the answer copies the prompt
/// (names, numbers) most of a drafted token's passes are saved.
#[test]
fn drafts_change_no_answer() {
    let drafting = qwen();
    let single = Arc::new(load_with(
        "qwen2.5-0.5b-q4ffn",
        NativeOptions {
            max_draft: 0,
            ..NativeOptions::default()
        },
    ));
    let copy = [Message::user(
        "Copy this line exactly, then stop: Call Maria Lopez back at 555 0134 about the lease \
         renewal before Friday the 14th.",
    )];
    let mut accepted = 0;
    for messages in [
        copy.to_vec(),
        summarise(VOICEMAILS[1]),
        summarise(VOICEMAILS[2]),
    ] {
        let options = GenerateOptions::max_new_tokens(64);
        let a = single.chat(&messages, &options).unwrap();
        let b = drafting.chat(&messages, &options).unwrap();
        assert_eq!(a.text, b.text);
        assert_eq!(a.generated_tokens, b.generated_tokens);
        assert_eq!(a.stop, b.stop);
        assert_eq!((a.draft_tokens, a.accepted_draft_tokens), (0, 0));
        assert!(b.accepted_draft_tokens <= b.draft_tokens, "{b:?}");
        accepted += b.accepted_draft_tokens;
    }
    assert!(accepted >= 10, "only {accepted} drafted tokens held");
}

/// A model that writes the same words over and over is stopped after three copies of them, and
/// the text keeps one.
#[test]
fn a_looping_answer_stops_and_keeps_one_copy() {
    let llm = qwen();
    let ask = [Message::user(
        "Write the word yes one hundred times, separated by commas.",
    )];
    // The answer's start, as if the model had written it: it goes on the same way.
    let mut prompt = llm.prompt_ids(&ask).unwrap();
    prompt.extend(llm.tokenizer().encode("yes, yes, yes, yes,").unwrap());
    let looped = llm
        .generate(&prompt, &GenerateOptions::max_new_tokens(200))
        .unwrap();
    assert_eq!(looped.stop, StopReason::Repetition, "{looped:?}");
    assert!(looped.generated_tokens < 100, "{looped:?}");
    let yes = looped.text.to_lowercase().matches("yes").count();
    assert!((1..=3).contains(&yes), "{looped:?}");

    // An answer that does not loop is not touched.
    let capital = llm
        .chat(
            &[Message::user(CAPITAL)],
            &GenerateOptions::max_new_tokens(32),
        )
        .unwrap();
    assert_eq!(capital.stop, StopReason::EndOfTurn, "{capital:?}");
}

#[test]
fn a_prompt_longer_than_the_context_is_an_error() {
    let llm = smollm2();
    let context = llm.info().context_length;
    let long = "word ".repeat(context + 10);
    let err = llm
        .chat(&[Message::user(long)], &GenerateOptions::max_new_tokens(4))
        .unwrap_err();
    assert!(
        matches!(err, Error::PromptTooLong { context: c, .. } if c == context),
        "{err}"
    );
    assert!(llm.generate(&[], &GenerateOptions::default()).is_err());
    // A token id outside the vocabulary is an error, and the session stays usable.
    let err = llm
        .generate(&[1, 2, u32::MAX - 1], &GenerateOptions::max_new_tokens(2))
        .unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
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
        assert_eq!(got.text, expected[i % 2].text, "thread {i}");
    }
}

#[test]
fn bad_files_are_errors_not_panics() {
    let err = Native::load(std::path::Path::new("/no/such/model.gguf"), None).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"not a model at all").unwrap();
    let err = Native::load(&junk, None).unwrap_err();
    assert!(matches!(err, Error::Gguf { .. }), "{err}");

    // A complete header whose tensor data is cut short.
    let path = common::llm_path("smollm2-135m");
    let mut file = std::fs::File::open(&path).unwrap();
    let header = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate(header.tensor_data_offset as usize + 4096);
    let cut = dir.path().join("truncated.gguf");
    std::fs::write(&cut, &bytes).unwrap();
    let err = Native::load(&cut, None).unwrap_err();
    println!("truncated GGUF: {err}");
    assert!(err.to_string().contains("truncated.gguf"), "{err}");
}

#[test]
fn warm_up_through_the_trait() {
    let generator = load_generator(
        companion_language::Backend::Native,
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
