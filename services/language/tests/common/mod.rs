//! Helpers shared by the integration tests, which run the real models
//! installed by `companion models fetch NAME`.

#![allow(dead_code)]

use std::path::PathBuf;

use companion_language::{EMBEDDING_ROLE, LLM_ROLE, Message, Native, installed_model};

fn require(name: &str, role: &str) -> PathBuf {
    match installed_model(name, role) {
        Ok(path) => path,
        Err(err) => panic!(
            "\n{err}\nThese tests need the real model `{name}`: run `companion models fetch {name}` \
             (models are cached in $COMPANION_MODELS_DIR or ~/.cache/companion/models).\n"
        ),
    }
}

/// Path of an installed GGUF chat model.
pub fn llm_path(name: &str) -> PathBuf {
    require(name, LLM_ROLE)
}

/// Directory of an installed embedding model.
pub fn embedding_dir(name: &str) -> PathBuf {
    let artifact = require(name, EMBEDDING_ROLE);
    artifact
        .parent()
        .expect("an artifact lives in its model directory")
        .to_path_buf()
}

/// Extracts the first `{...}` object of a model answer (models like to wrap
/// JSON in Markdown code fences).
pub fn json_object(text: &str) -> Option<&str> {
    let start = text.find('{')?;
    let end = text.rfind('}')?;
    (end > start).then(|| &text[start..=end])
}

/// Largest logit gap rounding may explain.
pub const NEAR_TIE: f32 = 0.5;

/// The engine's logit of the next token of answer `a` minus that of answer `b`'s, at the
/// first token where the two answers (re-tokenized) differ.
pub fn gap_where_they_part(ours: &Native, messages: &[Message], a: &str, b: &str) -> f32 {
    let tokenizer = ours.tokenizer();
    let (ta, tb) = (tokenizer.encode(a).unwrap(), tokenizer.encode(b).unwrap());
    let k = ta.iter().zip(&tb).take_while(|(x, y)| x == y).count();
    // An answer that ends there continues with its stop token.
    let stop = tokenizer.stop_ids().first();
    let (Some(&mine), Some(&other)) = (ta.get(k).or(stop), tb.get(k).or(stop)) else {
        panic!("the answers do not part: {a:?} / {b:?}");
    };
    let mut ids = ours.prompt_ids(messages).unwrap();
    ids.extend(&ta[..k]);
    let mut session = companion_engine::Session::default();
    let mut logits = Vec::new();
    ours.model()
        .forward(&mut session, &ids, 2, &mut logits)
        .unwrap();
    logits[mine as usize] - logits[other as usize]
}
