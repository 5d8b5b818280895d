//! Voicemails in several languages and telephone codecs: the right words and the right language.

mod support;

use support::*;

#[test]
fn spanish_ulaw_german_gsm_french_mp3_english_wav() {
    let es = sox(
        &speech_wav(&ES),
        "es_voicemail_ulaw.wav",
        &["-r", "8000", "-c", "1", "-e", "u-law"],
    );
    let de = sox(
        &speech_wav(&DE),
        "de_voicemail.gsm",
        &["-r", "8000", "-c", "1"],
    );
    let fr = ffmpeg(
        &speech_wav(&FR),
        "fr_voicemail.mp3",
        &["-c:a", "libmp3lame", "-b:a", "32k"],
    );
    let en = speech_wav(&EN);
    let (lines, out) = transcribe(&[&es, &de, &fr, &en], &[]);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (line, phrase) in lines.iter().zip([&ES, &DE, &FR, &EN]) {
        assert_eq!(line["language"]["code"], phrase.lang, "{line}");
        // Synthetic speech through a telephone codec leaves Whisper less sure than a human
        // voice would, but the right language must still clearly win.
        let p = line["language"]["probability"].as_f64().unwrap();
        assert!(p > 0.25 && p <= 1.0, "{line}");
        assert_heard(line, phrase);
        assert_eq!(line["translation"], serde_json::Value::Null);
        assert_eq!(line["summary"], serde_json::Value::Null);
        assert_eq!(line["tasks"], serde_json::Value::Null);
        assert!(line["timings_ms"]["asr"].is_u64(), "{line}");
        assert!(line["timings_ms"]["store"].is_u64(), "{line}");
    }
}

#[test]
fn allowlist_limits_detection() {
    let fr = speech_wav(&FR);
    let (lines, _) = transcribe(&[&fr], &["--beam-size", "1", "--languages", "en,de"]);
    let code = lines[0]["language"]["code"].as_str().unwrap().to_string();
    assert!(code == "en" || code == "de", "{}", lines[0]);

    let (_, out) = transcribe_raw(&[&fr], &["--languages", "en,klingon"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("klingon"));
}

#[test]
fn speech_translates_to_english() {
    let es = speech_wav(&ES);
    let (lines, out) = transcribe(&[&es], &["--beam-size", "1", "--translate-to", "en"]);
    assert!(out.status.success());
    let line = &lines[0];
    assert_eq!(line["language"]["code"], "es");
    assert_eq!(line["translation"]["language"], "en");
    let english = line["translation"]["text"].as_str().unwrap().to_lowercase();
    assert!(
        [
            "tomorrow",
            "appointment",
            "thank",
            "call",
            "clinic",
            "dental"
        ]
        .iter()
        .filter(|w| english.contains(**w))
        .count()
            >= 2,
        "{english}"
    );
    // The original stays beside the translation.
    assert!(transcript(line).contains("gracias"), "{line}");
}

#[test]
fn a_recording_gives_the_same_result_after_others() {
    // One process transcribes file after file: nothing a call leaves behind (another language,
    // another encoder size, beams) may change the next call's result. A whisper.cpp state kept
    // from call to call did (`companion_speech`'s module docs).
    let es = speech_wav(&ES);
    let de = sox(
        &speech_wav(&DE),
        "de_voicemail_again.gsm",
        &["-r", "8000", "-c", "1"],
    );
    let (lines, out) = transcribe(&[&es, &de, &es], &[]);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lines[1]["language"]["code"], "de", "{}", lines[1]);
    for field in ["language", "transcript"] {
        assert_eq!(lines[0][field], lines[2][field], "{field}");
    }
    assert_heard(&lines[2], &ES);
}
