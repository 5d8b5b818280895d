//! The decode entry points: size check, routing (raw, MS-GSM, symphonia), limits while decoding.

use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::LazyLock;

use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::codecs::registry::CodecRegistry;
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::{MediaSourceStream, MediaSourceStreamOptions};
use symphonia::core::meta::MetadataOptions;
use tracing::{debug, warn};

use crate::raw::{RawFormat, decode_raw, looks_like_gsm};
use crate::{Audio, AudioError, DecodeOptions, riff};

/// Symphonia's codecs plus libopus for Ogg Opus.
static CODECS: LazyLock<CodecRegistry> = LazyLock::new(|| {
    let mut registry = CodecRegistry::new();
    symphonia::default::register_enabled_codecs(&mut registry);
    registry.register_audio_decoder::<symphonia_adapter_libopus::OpusDecoder>();
    registry
});

/// Fewer bytes than any telephony codec spends on a second of audio (GSM: 1650, Opus: ~750).
const MIN_BYTES_PER_SECOND: f64 = 100.0;

/// Consecutive undecodable packets after which a stream counts as corrupt rather than damaged.
const MAX_CONSECUTIVE_ERRORS: usize = 64;

/// Reads a file, refusing it before reading when it is over the size limit.
pub fn read_file(path: &Path, max_bytes: u64) -> Result<Vec<u8>, AudioError> {
    let io_err = |source| AudioError::Io {
        path: path.display().to_string(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io_err)?;
    if !meta.is_file() {
        return Err(io_err(std::io::Error::other("not a regular file")));
    }
    check_size(meta.len(), max_bytes)?;
    std::fs::read(path).map_err(io_err)
}

fn check_size(size: u64, max_bytes: u64) -> Result<(), AudioError> {
    if size > max_bytes {
        return Err(AudioError::TooLarge {
            size,
            limit: max_bytes,
        });
    }
    Ok(())
}

fn check_duration(duration_s: f64, opts: &DecodeOptions) -> Result<(), AudioError> {
    if duration_s > opts.max_duration_s {
        return Err(AudioError::TooLong {
            duration_s,
            limit_s: opts.max_duration_s,
        });
    }
    Ok(())
}

/// Decodes a whole recording held in memory. `extension` (without the dot) helps the probe and
/// marks Asterisk's headerless formats (`.gsm`, `.ulaw`, `.alaw`, `.sln`).
pub fn decode_bytes(
    bytes: Vec<u8>,
    extension: Option<&str>,
    opts: &DecodeOptions,
) -> Result<Audio, AudioError> {
    let raw = check_and_route(&bytes, extension, opts)?;
    let audio = if let Some(format) = raw {
        check_duration(bytes.len() as f64 / format.bytes_per_second(), opts)?;
        decode_raw(&bytes, format)?
    } else if let Some(audio) = riff::decode_gsm_wave(&bytes)? {
        check_duration(audio.duration_s(), opts)?;
        audio
    } else {
        // Symphonia is written to reject bad streams with errors, but a decoder bug must not take
        // the process down: a panic on malformed input becomes a corrupt-audio error.
        let ext = extension.map(str::to_owned);
        let opts = opts.clone();
        catch_unwind(AssertUnwindSafe(move || {
            decode_with_symphonia(bytes, ext.as_deref(), &opts)
        }))
        .unwrap_or_else(|_| {
            Err(AudioError::Corrupt(
                "the decoder failed on this stream".into(),
            ))
        })?
    };
    validate(&audio)?;
    debug!(
        format = %audio.format,
        rate = audio.sample_rate,
        channels = audio.channels.len(),
        duration_s = audio.duration_s(),
        "decoded"
    );
    Ok(audio)
}

/// The size and emptiness checks, then the headerless format the bytes are in, if any (the
/// configured one, the extension's, or GSM recognised by its frames). A known container wins
/// over an extension that merely suggests a raw format.
fn check_and_route(
    bytes: &[u8],
    extension: Option<&str>,
    opts: &DecodeOptions,
) -> Result<Option<RawFormat>, AudioError> {
    check_size(bytes.len() as u64, opts.max_bytes)?;
    if bytes.is_empty() {
        return Err(AudioError::Empty);
    }
    Ok(opts
        .raw_format
        .or_else(|| extension.and_then(RawFormat::from_extension))
        .or_else(|| looks_like_gsm(bytes).then_some(RawFormat::Gsm))
        .filter(|_| opts.raw_format.is_some() || !has_container_magic(bytes)))
}

fn has_container_magic(bytes: &[u8]) -> bool {
    const MAGICS: [&[u8]; 5] = [b"RIFF", b"OggS", b"fLaC", b"ID3", b"FORM"];
    MAGICS.iter().any(|m| bytes.starts_with(m)) || bytes.get(4..8) == Some(b"ftyp")
}

fn validate(audio: &Audio) -> Result<(), AudioError> {
    if audio.sample_rate == 0 {
        return Err(AudioError::Corrupt("sample rate is 0".into()));
    }
    if audio.channels.is_empty() || audio.frames() == 0 {
        return Err(AudioError::Empty);
    }
    // Some damaged streams decode to NaN or infinities; they must not reach a model.
    for channel in &audio.channels {
        if channel.iter().any(|s| !s.is_finite()) {
            return Err(AudioError::Corrupt("decoded samples are not finite".into()));
        }
    }
    Ok(())
}

/// An opened container: its reader, the audio track and what its header declares.
struct Container {
    reader: Box<dyn symphonia::core::formats::FormatReader>,
    name: &'static str,
    track_id: u32,
    params: symphonia::core::codecs::audio::AudioCodecParameters,
}

/// Probes the container, picks its audio track and refuses, from the header alone, a stream
/// that declares a zero sample rate, no channels, or a duration over the limit.
fn open_container(
    bytes: Vec<u8>,
    extension: Option<&str>,
    opts: &DecodeOptions,
) -> Result<Container, AudioError> {
    let byte_len = bytes.len();
    let mss = MediaSourceStream::new(
        Box::new(Cursor::new(bytes)),
        MediaSourceStreamOptions::default(),
    );
    let mut hint = Hint::new();
    if let Some(ext) = extension {
        hint.with_extension(ext);
    }
    let format = symphonia::default::get_probe()
        .probe(
            &hint,
            mss,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(|e| match e {
            SymError::Unsupported(_) => {
                AudioError::Unsupported("not a recognised audio container".into())
            }
            SymError::IoError(_) => AudioError::Corrupt("the file ends inside its header".into()),
            other => AudioError::Corrupt(other.to_string()),
        })?;
    let container = format.format_info().short_name;
    let track = format
        .default_track(TrackType::Audio)
        .ok_or_else(|| AudioError::Unsupported(format!("{container} file has no audio track")))?;
    let track_id = track.id;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or_else(|| AudioError::Unsupported(format!("{container} track is not audio")))?
        .clone();
    match params.sample_rate {
        Some(0) => return Err(AudioError::Corrupt("sample rate is 0".into())),
        Some(rate) => {
            // Refuse early on the duration the header declares, unless the header cannot be
            // telling the truth: no codec a PBX uses stores a second in under 100 bytes, and a
            // damaged header must not make a short file "too long".
            if let Some(frames) = track.num_frames {
                let declared_s = frames as f64 / f64::from(rate);
                if declared_s <= byte_len as f64 / MIN_BYTES_PER_SECOND {
                    check_duration(declared_s, opts)?;
                }
            }
        }
        None => {}
    }
    if params.channels.as_ref().is_some_and(|c| c.count() == 0) {
        return Err(AudioError::Corrupt("channel count is 0".into()));
    }
    Ok(Container {
        reader: format,
        name: container,
        track_id,
        params,
    })
}

/// What a recording's header says, read without decoding it.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// Container or raw format name.
    pub format: String,
    /// The duration the header declares (raw formats: from the size), when it tells.
    pub duration_s: Option<f64>,
}

/// Checks a recording before any work is queued for it: the size limit, that it is a format we
/// decode, and the duration limit when the header declares a duration. Nothing is decoded, so a
/// stream damaged after its header passes here and fails when it is decoded.
pub fn probe_bytes(
    bytes: &[u8],
    extension: Option<&str>,
    opts: &DecodeOptions,
) -> Result<Probe, AudioError> {
    let raw = check_and_route(bytes, extension, opts)?;
    if let Some(format) = raw {
        let duration_s = bytes.len() as f64 / format.bytes_per_second();
        check_duration(duration_s, opts)?;
        return Ok(Probe {
            format: format!("{format:?}").to_ascii_lowercase(),
            duration_s: Some(duration_s),
        });
    }
    if let Some(audio) = riff::decode_gsm_wave(bytes)? {
        check_duration(audio.duration_s(), opts)?;
        return Ok(Probe {
            format: "wav-gsm".into(),
            duration_s: Some(audio.duration_s()),
        });
    }
    let ext = extension.map(str::to_owned);
    let owned = bytes.to_vec();
    let opts = opts.clone();
    let container = catch_unwind(AssertUnwindSafe(move || {
        open_container(owned, ext.as_deref(), &opts)
    }))
    .unwrap_or_else(|_| {
        Err(AudioError::Corrupt(
            "the demuxer failed on this stream".into(),
        ))
    })?;
    CODECS
        .make_audio_decoder(&container.params, &AudioDecoderOptions::default())
        .map_err(|e| AudioError::Unsupported(format!("{} codec: {e}", container.name)))?;
    let track = container
        .reader
        .tracks()
        .iter()
        .find(|t| t.id == container.track_id);
    let duration_s = match (
        track.and_then(|t| t.num_frames),
        container.params.sample_rate,
    ) {
        (Some(frames), Some(rate)) if rate > 0 => Some(frames as f64 / f64::from(rate)),
        _ => None,
    };
    Ok(Probe {
        format: container.name.to_string(),
        duration_s,
    })
}

fn decode_with_symphonia(
    bytes: Vec<u8>,
    extension: Option<&str>,
    opts: &DecodeOptions,
) -> Result<Audio, AudioError> {
    let Container {
        reader: mut format,
        name: container,
        track_id,
        params,
    } = open_container(bytes, extension, opts)?;
    let mut decoder = CODECS
        .make_audio_decoder(&params, &AudioDecoderOptions::default())
        .map_err(|e| AudioError::Unsupported(format!("{container} codec: {e}")))?;
    let codec = decoder.codec_info().short_name;

    let mut channels: Vec<Vec<f32>> = Vec::new();
    let mut scratch: Vec<Vec<f32>> = Vec::new();
    let mut sample_rate = params.sample_rate.unwrap_or(0);
    let mut consecutive_errors = 0usize;
    let mut last_error: Option<String> = None;
    loop {
        let packet = match format.next_packet() {
            Ok(Some(packet)) => packet,
            Ok(None) => break,
            // A truncated file ends where its data ends: keep what decoded.
            Err(SymError::IoError(e)) => {
                debug!(error = %e, "stream ended early");
                break;
            }
            Err(SymError::ResetRequired) => break,
            Err(e) => {
                consecutive_errors += 1;
                last_error = Some(e.to_string());
                if consecutive_errors > MAX_CONSECUTIVE_ERRORS {
                    break;
                }
                continue;
            }
        };
        if packet.track_id != track_id {
            continue;
        }
        match decoder.decode(&packet) {
            Ok(buf) => {
                consecutive_errors = 0;
                let spec = buf.spec();
                let (rate, count) = (spec.rate(), spec.channels().count());
                if rate == 0 || count == 0 {
                    return Err(AudioError::Corrupt(
                        "stream reports 0 Hz or 0 channels".into(),
                    ));
                }
                if sample_rate == 0 {
                    sample_rate = rate;
                }
                if channels.is_empty() {
                    channels = vec![Vec::new(); count];
                }
                if rate != sample_rate || count != channels.len() {
                    return Err(AudioError::Unsupported(
                        "sample rate or channel count changes mid-stream".into(),
                    ));
                }
                buf.copy_to_vecs_planar(&mut scratch);
                for (dst, src) in channels.iter_mut().zip(&scratch) {
                    dst.extend_from_slice(src);
                }
                let frames = channels[0].len();
                check_duration(frames as f64 / f64::from(sample_rate), opts)?;
            }
            Err(SymError::IoError(_)) => break,
            Err(e) => {
                consecutive_errors += 1;
                last_error = Some(e.to_string());
                if consecutive_errors > MAX_CONSECUTIVE_ERRORS {
                    break;
                }
            }
        }
    }
    if channels.first().is_none_or(Vec::is_empty) {
        return Err(match last_error {
            Some(e) => AudioError::Corrupt(format!("{container}/{codec}: {e}")),
            None => AudioError::Empty,
        });
    }
    if let Some(e) = last_error {
        warn!(error = %e, "some packets could not be decoded and were skipped");
    }
    Ok(Audio {
        sample_rate,
        channels,
        format: format!("{container}/{codec}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(seconds: u32, rate: u32) -> Vec<u8> {
        let data_len = seconds * rate * 2;
        let mut w = Vec::new();
        w.extend_from_slice(b"RIFF");
        w.extend_from_slice(&(36 + data_len).to_le_bytes());
        w.extend_from_slice(b"WAVEfmt ");
        w.extend_from_slice(&16u32.to_le_bytes());
        w.extend_from_slice(&1u16.to_le_bytes());
        w.extend_from_slice(&1u16.to_le_bytes());
        w.extend_from_slice(&rate.to_le_bytes());
        w.extend_from_slice(&(rate * 2).to_le_bytes());
        w.extend_from_slice(&2u16.to_le_bytes());
        w.extend_from_slice(&16u16.to_le_bytes());
        w.extend_from_slice(b"data");
        w.extend_from_slice(&data_len.to_le_bytes());
        w.resize(44 + data_len as usize, 0);
        w
    }

    #[test]
    fn probe_reads_headers_without_decoding() {
        let opts = DecodeOptions {
            max_duration_s: 10.0,
            ..DecodeOptions::default()
        };
        let probe = probe_bytes(&wav(3, 8000), Some("wav"), &opts).unwrap();
        assert_eq!(probe.format, "wave");
        assert_eq!(probe.duration_s, Some(3.0));
        // Headerless µ-law: the duration follows from the size.
        let raw = probe_bytes(&vec![0xFF; 16_000], Some("ulaw"), &opts).unwrap();
        assert_eq!(raw.duration_s, Some(2.0));
        assert!(matches!(
            probe_bytes(&wav(11, 8000), None, &opts),
            Err(AudioError::TooLong { .. })
        ));
        assert!(matches!(
            probe_bytes(b"just some text, no audio here", Some("wav"), &opts),
            Err(AudioError::Unsupported(_))
        ));
        assert!(matches!(
            probe_bytes(&wav(3, 8000)[..20], None, &opts),
            Err(AudioError::Corrupt(_))
        ));
        assert!(matches!(
            probe_bytes(b"", None, &opts),
            Err(AudioError::Empty)
        ));
        let small = DecodeOptions {
            max_bytes: 100,
            ..opts
        };
        assert!(matches!(
            probe_bytes(&wav(1, 8000), None, &small),
            Err(AudioError::TooLarge { .. })
        ));
    }
}
