//! CPU thread count of candle's kernels.
//!
//! candle sizes its worker pools from `CANDLE_NUM_THREADS` /
//! `RAYON_NUM_THREADS` (default: the number of physical cores) when a pool is
//! first used, and never resizes them. A thread count is therefore a
//! process-wide setting that only takes effect before the first model runs.

use std::sync::OnceLock;

const CANDLE_ENV: &str = "CANDLE_NUM_THREADS";
const RAYON_ENV: &str = "RAYON_NUM_THREADS";

static CONFIGURED: OnceLock<usize> = OnceLock::new();

fn env_threads(name: &str) -> Option<usize> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
}

/// The number of threads candle's CPU kernels use (or will use).
pub fn compute_threads() -> usize {
    CONFIGURED
        .get()
        .copied()
        .or_else(|| env_threads(CANDLE_ENV))
        .unwrap_or_else(candle_core::utils::get_num_threads)
}

/// Requests `threads` compute threads for the whole process and returns the
/// count in effect.
///
/// The first request wins, and an explicit `CANDLE_NUM_THREADS` in the
/// environment wins over any request. Call it before any model runs (the
/// `load` functions of this crate do); a later, different request only logs
/// a warning. The first request sets `CANDLE_NUM_THREADS` (and
/// `RAYON_NUM_THREADS` if unset) in the process environment, which is how
/// candle reads it.
pub fn configure_threads(threads: Option<usize>) -> usize {
    let Some(requested) = threads.filter(|n| *n > 0) else {
        return compute_threads();
    };
    if let Some(from_env) = env_threads(CANDLE_ENV) {
        if from_env != requested {
            tracing::warn!(
                requested,
                from_env,
                "{CANDLE_ENV} is set in the environment and takes precedence"
            );
        }
        return *CONFIGURED.get_or_init(|| from_env);
    }
    let effective = *CONFIGURED.get_or_init(|| {
        // SAFETY: std serialises its own environment accesses; the hazard
        // left is C code reading the environment (getenv) on another thread
        // at this moment. This runs at most once per process, when the first
        // model is loaded, before candle starts its worker threads. A program
        // that cannot rule out concurrent getenv calls should set
        // CANDLE_NUM_THREADS itself before starting threads and pass `None`.
        unsafe {
            std::env::set_var(CANDLE_ENV, requested.to_string());
            if std::env::var_os(RAYON_ENV).is_none() {
                std::env::set_var(RAYON_ENV, requested.to_string());
            }
        }
        tracing::debug!(threads = requested, "configured candle compute threads");
        requested
    });
    if effective != requested {
        tracing::warn!(
            requested,
            effective,
            "compute threads are process-wide and already configured; request ignored"
        );
    }
    effective
}
