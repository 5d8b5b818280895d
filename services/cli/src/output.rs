//! Rendering results: JSON Lines, plain text, SRT and WebVTT.

use clap::ValueEnum;
use companion_core::RecordingResult;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// One JSON object per file, one per line.
    Json,
    /// The transcript; stereo calls get one `speaker: text` line per segment.
    Text,
    /// SubRip subtitles.
    Srt,
    /// WebVTT subtitles.
    Vtt,
}

/// Renders one result; `index` is the file's position in the input (0-based).
pub fn render(format: OutputFormat, result: &RecordingResult, index: usize) -> String {
    match format {
        OutputFormat::Json => serde_json::to_string(result).unwrap_or_else(|e| {
            format!(
                "{{\"file\":{:?},\"error\":{{\"kind\":\"io\",\"message\":{:?}}}}}",
                result.file,
                e.to_string()
            )
        }),
        OutputFormat::Text => text(result),
        OutputFormat::Srt => srt(result),
        OutputFormat::Vtt => vtt(result, index == 0),
    }
}

fn text(result: &RecordingResult) -> String {
    let labelled = result
        .transcript
        .segments
        .iter()
        .any(|s| s.speaker.is_some());
    if !labelled {
        return result.transcript.text.clone();
    }
    result
        .transcript
        .segments
        .iter()
        .map(|s| match &s.speaker {
            Some(speaker) => format!("{speaker}: {}", s.text),
            None => s.text.clone(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn timestamp(seconds: f64, decimal: char) -> String {
    let ms = (seconds.max(0.0) * 1000.0).round() as u64;
    format!(
        "{:02}:{:02}:{:02}{decimal}{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

fn srt(result: &RecordingResult) -> String {
    let mut out = String::new();
    for (i, s) in result.transcript.segments.iter().enumerate() {
        let text = match &s.speaker {
            Some(speaker) => format!("{speaker}: {}", s.text),
            None => s.text.clone(),
        };
        out.push_str(&format!(
            "{}\n{} --> {}\n{}\n\n",
            i + 1,
            timestamp(s.start_s, ','),
            timestamp(s.end_s, ','),
            text
        ));
    }
    out.trim_end().to_string()
}

fn vtt(result: &RecordingResult, header: bool) -> String {
    let mut out = String::new();
    if header {
        out.push_str("WEBVTT\n\n");
    }
    out.push_str(&format!("NOTE {}\n\n", result.file.replace("-->", "->")));
    for s in &result.transcript.segments {
        let text = match &s.speaker {
            Some(speaker) => format!("<v {speaker}>{}", s.text),
            None => s.text.clone(),
        };
        out.push_str(&format!(
            "{} --> {}\n{}\n\n",
            timestamp(s.start_s, '.'),
            timestamp(s.end_s, '.'),
            text
        ));
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use companion_core::{Segment, Transcript};

    fn result() -> RecordingResult {
        let seg = |start, speaker: &str, text: &str| Segment {
            start_s: start,
            end_s: start + 1.5,
            speaker: Some(speaker.into()),
            text: text.into(),
            words: vec![],
        };
        RecordingResult {
            file: "call.wav".into(),
            recording_id: "rec_1".into(),
            duration_s: 3700.0,
            speech: true,
            language: None,
            transcript: Transcript::from_segments(vec![
                seg(0.5, "agent", "Hello."),
                seg(3661.25, "caller", "Hi."),
            ]),
            ..Default::default()
        }
    }

    #[test]
    fn json_has_the_contract_fields() {
        let v: serde_json::Value =
            serde_json::from_str(&render(OutputFormat::Json, &result(), 0)).unwrap();
        for key in [
            "file",
            "recording_id",
            "duration_s",
            "speech",
            "language",
            "transcript",
            "translation",
            "summary",
            "tasks",
            "priority",
            "timings_ms",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["transcript"]["segments"][1]["speaker"], "caller");
    }

    #[test]
    fn text_labels_speakers() {
        assert_eq!(
            render(OutputFormat::Text, &result(), 0),
            "agent: Hello.\ncaller: Hi."
        );
    }

    #[test]
    fn srt_and_vtt_cues() {
        let srt = render(OutputFormat::Srt, &result(), 0);
        assert!(srt.starts_with("1\n00:00:00,500 --> 00:00:02,000\nagent: Hello."));
        assert!(srt.contains("2\n01:01:01,250 --> 01:01:02,750\ncaller: Hi."));
        let vtt = render(OutputFormat::Vtt, &result(), 0);
        assert!(vtt.starts_with(
            "WEBVTT\n\nNOTE call.wav\n\n00:00:00.500 --> 00:00:02.000\n<v agent>Hello."
        ));
        assert!(!render(OutputFormat::Vtt, &result(), 1).contains("WEBVTT"));
    }
}
