"""The faster-whisper side of `companion bench asr`.

Loads one CTranslate2 Whisper model and transcribes each file given, printing JSON lines on
stdout: first {"event": "loaded", "load_ms": ...}, then per file
{"file", "ms", "text", "language"} or {"file", "error"}. The time of a file covers decoding its
audio, language detection and the whole transcription (the segment generator is consumed).
"""

import argparse
import json
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="CTranslate2 Whisper model directory")
    parser.add_argument("--compute-type", default="int8")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()

    started = time.perf_counter()
    from faster_whisper import WhisperModel

    model = WhisperModel(
        args.model,
        device="cpu",
        compute_type=args.compute_type,
        cpu_threads=args.threads,
        num_workers=1,
    )
    load_ms = (time.perf_counter() - started) * 1000.0
    print(json.dumps({"event": "loaded", "load_ms": load_ms}), flush=True)

    for path in args.files:
        started = time.perf_counter()
        try:
            # The same decoding as companion's: temperature fallback with the same thresholds
            # (faster-whisper's defaults), no conditioning on the previous window's text.
            segments, info = model.transcribe(
                path,
                beam_size=args.beam_size,
                condition_on_previous_text=False,
                vad_filter=False,
            )
            text = " ".join(s.text.strip() for s in segments).strip()
            line = {
                "file": path,
                "ms": (time.perf_counter() - started) * 1000.0,
                "text": text,
                "language": info.language,
            }
        except Exception as e:  # one bad file must not end the run
            line = {"file": path, "error": f"{type(e).__name__}: {e}"}
        print(json.dumps(line, ensure_ascii=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
