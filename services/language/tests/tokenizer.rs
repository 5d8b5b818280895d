//! The GGUF tokenizers of the real models against ids computed by an
//! independent byte-level BPE implementation (Python, from the same GGUF
//! vocabulary and merges).

mod common;

use companion_language::{LlmTokenizer, PreTokenizerKind};

const ROUND_TRIP: &[&str] = &[
    "Hello world",
    "¿Dónde está la estación?",
    "Grüße",
    "日本語",
    "Привет, как дела?",
    "emoji 😀👍🏽 and \u{200b}zero width",
    "Call me back at 555-0134 about invoice #A-2024, thanks!\n\nBye.",
    "  two  spaces\tand a tab",
    "",
];

fn check_round_trip(tok: &LlmTokenizer) {
    for text in ROUND_TRIP {
        let ids = tok.encode(text).unwrap();
        assert_eq!(&tok.decode(&ids, false).unwrap(), text);
        assert_eq!(&tok.decode(&ids, true).unwrap(), text);
    }
}

#[test]
fn qwen25_tokenizer_matches_the_gguf_vocabulary() {
    let tok = LlmTokenizer::from_gguf_file(&common::llm_path("qwen2.5-0.5b")).unwrap();
    assert_eq!(tok.pre_tokenizer(), PreTokenizerKind::Qwen2);
    assert_eq!(tok.vocab_size(), 151_936);
    assert_eq!(tok.token_to_id("Hello"), Some(9707));
    assert_eq!(tok.token_to_id("Ġworld"), Some(1879));
    let cases: &[(&str, &[u32])] = &[
        ("Hello world", &[9707, 1879]),
        (
            "¿Dónde está la estación?",
            &[30182, 35, 1794, 42341, 15466, 1187, 1788, 5721, 30],
        ),
        ("Grüße", &[6464, 2391, 23455]),
        ("日本語", &[101059, 102819]),
        (
            "Call me back at 555-0134 about invoice #A-2024, thanks!\n\nBye.",
            &[
                7220, 752, 1182, 518, 220, 20, 20, 20, 12, 15, 16, 18, 19, 911, 24615, 671, 32, 12,
                17, 15, 17, 19, 11, 9339, 2219, 1359, 68, 13,
            ],
        ),
        (
            "  two  spaces\tand a tab",
            &[220, 1378, 220, 12621, 52477, 264, 5651],
        ),
        (
            "I'm here; you're there. It's 10:30 AM.",
            &[
                40, 2776, 1588, 26, 498, 2299, 1052, 13, 1084, 594, 220, 16, 15, 25, 18, 15, 6769,
                13,
            ],
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(&tok.encode(text).unwrap(), expected, "{text:?}");
    }
    check_round_trip(&tok);

    // ChatML control tokens and stop tokens.
    assert_eq!(tok.token_to_id("<|endoftext|>"), Some(151_643));
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(151_644));
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(151_645));
    assert_eq!(tok.eos_id(), Some(151_645));
    assert_eq!(tok.stop_ids(), [151_643, 151_645]);
    assert!(!tok.add_bos());
}

#[test]
fn smollm2_tokenizer_matches_the_gguf_vocabulary() {
    let tok = LlmTokenizer::from_gguf_file(&common::llm_path("smollm2-135m")).unwrap();
    assert_eq!(tok.pre_tokenizer(), PreTokenizerKind::DigitsGpt2);
    assert_eq!(tok.vocab_size(), 49_152);
    let cases: &[(&str, &[u32])] = &[
        ("Hello world", &[19556, 905]),
        (
            "¿Dónde está la estación?",
            &[47416, 52, 7342, 268, 85, 1264, 5415, 2618, 1264, 30094, 47],
        ),
        ("Grüße", &[27302, 7170, 34878, 85]),
        ("日本語", &[23274, 115, 40993, 179, 120, 248]),
        (
            "Call me back at 555-0134 about invoice #A-2024, thanks!\n\nBye.",
            &[
                12800, 549, 1056, 418, 216, 37, 37, 37, 29, 32, 33, 35, 36, 563, 48686, 907, 49,
                29, 34, 32, 34, 36, 28, 6954, 17, 198, 198, 3087, 85, 30,
            ],
        ),
        (
            "  two  spaces\tand a tab",
            &[216, 827, 216, 5600, 197, 397, 253, 10147],
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(&tok.encode(text).unwrap(), expected, "{text:?}");
    }
    check_round_trip(&tok);
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
    assert_eq!(tok.stop_ids(), [0, 2]);
}
