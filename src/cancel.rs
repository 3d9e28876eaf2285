//! A process-wide request to stop long work: an embedding (the Python binding, on Ctrl-C) sets
//! it; data passes, tract runs and the final rename check it, so nothing is left half-written.
//!
//! Layer: core (imports its own layer and the ones below; see ARCHITECTURE.md).

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Asks running work to stop at its next check ([`check`] then fails with
/// [`Error::Interrupted`]).
pub fn request() {
    REQUESTED.store(true, Ordering::Relaxed);
}

/// Clears a request, before new work starts.
pub fn reset() {
    REQUESTED.store(false, Ordering::Relaxed);
}

/// Fails with [`Error::Interrupted`] once a stop was requested.
pub fn check() -> Result<()> {
    if REQUESTED.load(Ordering::Relaxed) {
        Err(Error::Interrupted)
    } else {
        Ok(())
    }
}
