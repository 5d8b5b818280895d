//! all-MiniLM-L6-v2 sentence embeddings.
//!
//! Reference values come from an independent NumPy implementation of the
//! BERT forward pass over the same `model.safetensors` (mean pooling over
//! the attention mask, then L2 normalisation).

mod common;

use std::sync::OnceLock;

use companion_language::{Embedder, cosine};

fn embedder() -> &'static Embedder {
    static EMBEDDER: OnceLock<Embedder> = OnceLock::new();
    EMBEDDER.get_or_init(|| {
        Embedder::load(&common::embedding_dir("all-minilm-l6-v2")).expect("load all-MiniLM-L6-v2")
    })
}

const INVOICE: &str = "Please call me back about my invoice";
const BILL: &str = "Return my call regarding the bill";
const WEATHER: &str = "The weather is sunny today";

fn assert_close(actual: &[f32], expected: &[f32], tolerance: f32) {
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= tolerance,
            "dim {i}: {a} vs {e}\n{actual:?}"
        );
    }
}

#[test]
fn similar_requests_score_higher_than_unrelated_text() {
    let e = embedder();
    let v = e.embed(&[INVOICE, BILL, WEATHER]).unwrap();
    let (related, unrelated_a, unrelated_b) = (
        cosine(&v[0], &v[1]),
        cosine(&v[0], &v[2]),
        cosine(&v[1], &v[2]),
    );
    println!(
        "invoice~bill {related:.4}, invoice~weather {unrelated_a:.4}, bill~weather {unrelated_b:.4}"
    );
    assert!(related > unrelated_a + 0.3, "{related} vs {unrelated_a}");
    assert!(related > unrelated_b + 0.3, "{related} vs {unrelated_b}");
    // Reference: 0.6540, 0.0224, 0.0724.
    assert!((related - 0.6540).abs() < 1e-3, "{related}");
    assert!((unrelated_a - 0.0224).abs() < 1e-3, "{unrelated_a}");
}

#[test]
fn vectors_are_unit_length_with_384_dims_and_match_the_reference() {
    let e = embedder();
    assert_eq!(e.dim(), 384);
    let texts = [INVOICE, BILL, WEATHER, "Grüße aus Köln", ""];
    let v = e.embed(&texts).unwrap();
    assert_eq!(v.len(), texts.len());
    for (text, x) in texts.iter().zip(&v) {
        assert_eq!(x.len(), 384, "{text:?}");
        let norm = x.iter().map(|a| a * a).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{text:?}: norm {norm}");
    }
    assert_close(
        &v[0][..6],
        &[-0.09126, 0.05424, 0.02928, -0.03126, -0.11612, -0.08501],
        2e-4,
    );
    assert_close(
        &v[1][..6],
        &[-0.043, 0.09059, 0.00438, -0.00658, -0.07872, -0.01027],
        2e-4,
    );
    assert_close(
        &v[2][..6],
        &[-0.02041, 0.10814, 0.09429, 0.0714, 0.05697, -0.05271],
        2e-4,
    );
    assert_close(
        &v[3][..6],
        &[0.0138, 0.10277, 0.0231, -0.01361, -0.01547, 0.09229],
        2e-4,
    );
}

#[test]
fn batching_and_padding_do_not_change_embeddings() {
    let e = embedder();
    let long = "word ".repeat(600);
    let texts = [WEATHER, INVOICE, long.as_str(), BILL, "ok"];
    let batch = e.embed(&texts).unwrap();
    for (text, b) in texts.iter().zip(&batch) {
        let single = e.embed_one(text).unwrap();
        assert_close(&single, b, 1e-5);
    }
    assert!(e.embed(&[]).unwrap().is_empty());
    // Deterministic.
    assert_eq!(e.embed(&[INVOICE]).unwrap(), e.embed(&[INVOICE]).unwrap());
}
