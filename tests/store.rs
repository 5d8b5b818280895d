//! Every processed file is stored as a recording with its result; processing it again adds a
//! version, and failures are stored with their cause.

mod support;

use companion_store::{Store, StoredOutcome};
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn results_land_in_the_store_as_versions() {
    let db = workdir().join("store_test.db");
    let wav = speech_wav(&EN);
    let broken = file("store_broken.wav", b"RIFF\x10\x00\x00\x00WAVEjunkjunk");
    let model = asr_model();
    let run = |db: std::path::PathBuf, wav: std::path::PathBuf, broken: std::path::PathBuf| {
        let model = model.clone();
        tokio::task::spawn_blocking(move || {
            companion(&[
                "process",
                "--asr-model",
                &model,
                "--beam-size",
                "1",
                "--db",
                db.to_str().unwrap(),
                "--user",
                "alice",
                wav.to_str().unwrap(),
                broken.to_str().unwrap(),
            ])
        })
    };
    let first = run(db.clone(), wav.clone(), broken.clone()).await.unwrap();
    assert_eq!(first.status.code(), Some(1));
    let second = run(db.clone(), wav.clone(), broken.clone()).await.unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&second.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let id = lines[0]["recording_id"].as_str().unwrap().to_string();

    let store = Store::open(db.to_str().unwrap()).await.unwrap();
    assert_eq!(store.result_count(&id).await.unwrap(), 2);
    match store.latest_result(&id).await.unwrap() {
        Some(StoredOutcome::Done(result)) => {
            assert_eq!(
                result.transcript.text,
                lines[0]["transcript"]["text"].as_str().unwrap()
            );
            assert!(result.speech);
        }
        other => panic!("expected a stored result, got {other:?}"),
    }
    // The broken file is a recording too, with a failed result and its cause.
    let bytes = std::fs::read(&broken).unwrap();
    let broken_id = companion_pipeline::recording_id_for(&companion_pipeline::sha256_hex(&bytes));
    match store.latest_result(&broken_id).await.unwrap() {
        Some(StoredOutcome::Failed(report)) => assert!(!report.message.is_empty()),
        other => panic!("expected a failed result, got {other:?}"),
    }
}
