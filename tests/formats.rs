//! Every audio format a PBX writes, decoded and transcribed end to end with the real model.

mod support;

use support::*;

#[test]
fn every_container_and_codec_is_transcribed() {
    let wav = speech_wav(&EN);
    let files = vec![
        wav.clone(),
        sox(
            &wav,
            "ulaw_8k.wav",
            &["-r", "8000", "-c", "1", "-e", "u-law"],
        ),
        sox(
            &wav,
            "alaw_8k.wav",
            &["-r", "8000", "-c", "1", "-e", "a-law"],
        ),
        sox(&wav, "asterisk.gsm", &["-r", "8000", "-c", "1"]),
        sox(
            &wav,
            "wav49.wav",
            &["-r", "8000", "-c", "1", "-e", "gsm-full-rate"],
        ),
        sox(
            &wav,
            "pcm_u8.wav",
            &["-r", "8000", "-b", "8", "-e", "unsigned-integer"],
        ),
        sox(&wav, "pcm_s24.wav", &["-b", "24"]),
        sox(&wav, "pcm_s32.wav", &["-b", "32", "-e", "signed-integer"]),
        sox(&wav, "float32.wav", &["-b", "32", "-e", "floating-point"]),
        sox(&wav, "speech.flac", &[]),
        ffmpeg(&wav, "speech.mp3", &["-c:a", "libmp3lame", "-b:a", "32k"]),
        ffmpeg(&wav, "speech.m4a", &["-c:a", "aac", "-b:a", "48k"]),
        ffmpeg(&wav, "vorbis.ogg", &["-c:a", "libvorbis", "-q:a", "3"]),
        ffmpeg(
            &wav,
            "speech.opus",
            &["-ar", "48000", "-c:a", "libopus", "-b:a", "24k"],
        ),
        // Asterisk's headerless formats, recognised by extension.
        sox(
            &wav,
            "asterisk.ulaw",
            &["-t", "raw", "-r", "8000", "-c", "1", "-e", "u-law"],
        ),
        sox(
            &wav,
            "asterisk.alaw",
            &["-t", "raw", "-r", "8000", "-c", "1", "-e", "a-law"],
        ),
        sox(
            &wav,
            "asterisk.sln16",
            &[
                "-t",
                "raw",
                "-r",
                "16000",
                "-c",
                "1",
                "-b",
                "16",
                "-e",
                "signed-integer",
            ],
        ),
    ];
    let paths: Vec<&std::path::Path> = files.iter().map(|p| p.as_path()).collect();
    let (lines, out) = transcribe(&paths, &["--beam-size", "1"]);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in &lines {
        assert_eq!(line["speech"], true, "{line}");
        assert_eq!(line["language"]["code"], "en", "{line}");
        assert_heard(line, &EN);
        assert!(line["duration_s"].as_f64().unwrap() > 5.0, "{line}");
    }
}

#[test]
fn headerless_audio_needs_its_format_named() {
    let wav = speech_wav(&EN);
    let raw = sox(
        &wav,
        "headerless_alaw.bin",
        &["-t", "raw", "-r", "8000", "-c", "1", "-e", "a-law"],
    );
    let (lines, out) = transcribe(&[&raw], &["--beam-size", "1", "--raw-format", "alaw"]);
    assert!(out.status.success());
    assert_heard(&lines[0], &EN);

    let (stdout, out) = transcribe_raw(&[&raw], &["--raw-format", "nonsense"]);
    assert_eq!(stdout, "");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("raw format"));
}

#[test]
fn stereo_call_keeps_speakers_apart() {
    // Agent speaks first on the left; the caller answers on the right after a pause.
    let agent = speech_wav(&EN);
    let caller_phrase = Phrase {
        lang: "en",
        voice: "en+m3",
        text: "Yes, I would like to cancel my subscription and get a refund please.",
        keywords: &["cancel", "subscription", "refund"],
    };
    let caller_src = workdir().join("caller_src.wav");
    tool(
        "espeak-ng",
        &[
            "-v",
            caller_phrase.voice,
            "-s",
            "125",
            "-g",
            "2",
            "-w",
            caller_src.to_str().unwrap(),
            caller_phrase.text,
        ],
    );
    let agent_len = workdir().join("agent_pad.wav");
    tool(
        "sox",
        &[
            "-D",
            agent.to_str().unwrap(),
            agent_len.to_str().unwrap(),
            "pad",
            "0",
            "10",
        ],
    );
    let caller = workdir().join("caller_pad.wav");
    tool(
        "sox",
        &[
            "-D",
            caller_src.to_str().unwrap(),
            caller.to_str().unwrap(),
            "pad",
            "9",
            "0",
        ],
    );
    let stereo = workdir().join("call_stereo.wav");
    tool(
        "sox",
        &[
            "-D",
            "-M",
            agent_len.to_str().unwrap(),
            caller.to_str().unwrap(),
            "-r",
            "8000",
            "-e",
            "u-law",
            stereo.to_str().unwrap(),
        ],
    );
    let (lines, out) = transcribe(
        &[&stereo],
        &["--beam-size", "1", "--speakers", "agent,caller"],
    );
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = &lines[0];
    let segments = line["transcript"]["segments"].as_array().unwrap();
    let said = |speaker: &str| -> String {
        segments
            .iter()
            .filter(|s| s["speaker"] == speaker)
            .map(|s| s["text"].as_str().unwrap().to_lowercase())
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(said("agent").contains("appointment"), "{line}");
    assert!(said("caller").contains("refund"), "{line}");
    assert!(!said("agent").contains("refund"), "{line}");
    // Merged by time: the agent's first words come before the caller's.
    assert_eq!(segments[0]["speaker"], "agent");
    let first_caller = segments.iter().find(|s| s["speaker"] == "caller").unwrap();
    assert!(first_caller["start_s"].as_f64().unwrap() >= 8.5, "{line}");
    // Words carry times inside their segment.
    let word = &segments[0]["words"][0];
    assert!(word["end_s"].as_f64().unwrap() >= word["start_s"].as_f64().unwrap());
    assert!(word["probability"].as_f64().unwrap() > 0.0);
}

#[test]
fn long_recordings_are_transcribed_to_the_end() {
    // ~50 s: a message, a long pause, another message past the 30 s Whisper window.
    let first = speech_wav(&EN);
    let second = workdir().join("long_second.wav");
    tool(
        "espeak-ng",
        &[
            "-v",
            "en+f2",
            "-s",
            "125",
            "-g",
            "2",
            "-w",
            second.to_str().unwrap(),
            "One more thing, the parking garage is closed on Friday, so please use the street entrance.",
        ],
    );
    let long = workdir().join("long_voicemail.wav");
    tool(
        "sox",
        &[
            "-D",
            first.to_str().unwrap(),
            second.to_str().unwrap(),
            "-r",
            "8000",
            "-e",
            "u-law",
            long.to_str().unwrap(),
            "pad",
            "0",
            "0",
            "pad",
            "30@0:09",
            "pad",
            "0",
            "3",
        ],
    );
    let (lines, out) = transcribe(&[&long], &["--beam-size", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = &lines[0];
    assert!(line["duration_s"].as_f64().unwrap() > 45.0, "{line}");
    let text = transcript(line);
    assert!(text.contains("appointment"), "{text}");
    assert!(
        text.contains("parking") || text.contains("street"),
        "{text}"
    );
    let last = line["transcript"]["segments"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert!(
        last["start_s"].as_f64().unwrap() > 35.0,
        "times are on the recording's timeline: {line}"
    );
}

#[test]
fn speech_longer_than_one_window_is_transcribed_in_order() {
    // About 38 s of speech without a long pause: Whisper hears it in pieces (cut at pauses so
    // the encoder fits each), which must come back whole and in order.
    const KEY_WORDS: [&str; 5] = ["martin", "elevator", "cafeteria", "thursday", "weekend"];
    let text = "Good morning, this is Martin from the building office. \
        The elevator on the north side will be out of service from Monday until Wednesday. \
        Deliveries should use the loading dock behind the cafeteria during that time. \
        The fire alarm test is scheduled for Thursday at ten in the morning. \
        Please remind your team that the doors will close automatically during the test. \
        If you have questions, call the front desk, and have a wonderful weekend.";
    let wav = speak("long_speech.wav", "en+f2", text);
    let (lines, out) = transcribe(&[&wav], &["--beam-size", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = &lines[0];
    assert!(line["duration_s"].as_f64().unwrap() > 30.0, "{line}");
    let heard = transcript(line);
    for word in KEY_WORDS {
        assert!(heard.contains(word), "{word:?} missing: {heard}");
        assert_eq!(heard.matches(word).count(), 1, "{word:?} repeated: {heard}");
    }
    let order: Vec<usize> = KEY_WORDS.iter().map(|w| heard.find(w).unwrap()).collect();
    assert!(order.windows(2).all(|p| p[0] < p[1]), "{heard}");
    let segments = line["transcript"]["segments"].as_array().unwrap();
    let times: Vec<(f64, f64)> = segments
        .iter()
        .map(|s| (s["start_s"].as_f64().unwrap(), s["end_s"].as_f64().unwrap()))
        .collect();
    assert!(
        times
            .windows(2)
            .all(|p| p[0].0 <= p[1].0 && p[0].1 <= p[1].1 + 0.5),
        "segments out of order: {times:?}"
    );
    assert!(times.last().unwrap().1 > 30.0, "{times:?}");
}
