//! Voicemails the benchmarks synthesize for themselves (espeak-ng, then sox), so they run on any
//! machine: what each says is known exactly, which makes it the reference transcript.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// A synthesized recording and what it says.
#[derive(Debug, Clone)]
pub struct SynthClip {
    pub path: PathBuf,
    pub language: &'static str,
    pub reference: &'static str,
}

/// (name, espeak voice, words per minute, sox output options, text). Numbers are spelled out
/// so the word error rate does not depend on how digits are written.
const VOICEMAILS: &[(&str, &str, u32, &[&str], &str)] = &[
    (
        "vm_short_16k.wav",
        "en-us",
        160,
        &["-r", "16000", "-c", "1", "-b", "16"],
        "Hi, this is Karen from the dental office. I am calling to confirm your appointment for \
         tomorrow morning. Please call us back when you can. Thank you.",
    ),
    (
        "vm_medium_ulaw.wav",
        "en-us",
        160,
        &["-r", "8000", "-c", "1", "-e", "u-law"],
        "Hello, this is Mark from the building management office. We need to schedule a visit \
         to repair the heating system in your apartment next week. Could you please let us know \
         which day works best for you? You can reach me at the front desk any time before six \
         in the evening. Thanks.",
    ),
    (
        "vm_30s_16k.wav",
        "en-us",
        165,
        &["-r", "16000", "-c", "1", "-b", "16"],
        "Good afternoon, this is Sarah Johnson calling from the accounting department at \
         Northwind Supplies. I am following up on the invoice we sent at the beginning of the \
         month, which is still showing as unpaid in our system. It may simply be a delay on our \
         side, so I wanted to check before sending a reminder. When you have a moment, could you \
         please confirm whether the payment has been processed, and if not, whether anything is \
         missing from the paperwork? You can call me back this afternoon. Thank you, and have a \
         great day.",
    ),
];

/// The synthesized voicemails in `dir`, made on first use (espeak-ng is deterministic, so a
/// file already there is the same).
pub fn voicemails(dir: &Path) -> Result<Vec<SynthClip>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    VOICEMAILS
        .iter()
        .map(|(name, voice, wpm, sox_opts, text)| {
            let path = dir.join(name);
            if !path.is_file() {
                synthesize(&path, voice, *wpm, sox_opts, text)?;
            }
            Ok(SynthClip {
                path,
                language: "en",
                reference: text,
            })
        })
        .collect()
}

fn synthesize(out: &Path, voice: &str, wpm: u32, sox_opts: &[&str], text: &str) -> Result<()> {
    let raw = out.with_extension("espeak.wav");
    let status = Command::new("espeak-ng")
        .args(["-v", voice, "-s", &wpm.to_string(), "-w"])
        .arg(&raw)
        .arg(text)
        .status()
        .context("cannot run espeak-ng (install it: scripts/setup-system)")?;
    if !status.success() {
        bail!("espeak-ng failed for {}", out.display());
    }
    let partial = out.with_extension("partial.wav");
    let status = Command::new("sox")
        .arg("-q")
        .arg("-D")
        .arg(&raw)
        .args(sox_opts)
        .arg(&partial)
        .status()
        .context("cannot run sox (install it: scripts/setup-system)")?;
    let _ = std::fs::remove_file(&raw);
    if !status.success() {
        bail!("sox failed for {}", out.display());
    }
    std::fs::rename(&partial, out).with_context(|| format!("cannot write {}", out.display()))
}
