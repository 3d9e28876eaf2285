//! How long work reports what it is doing: the [`Progress`] receiver every phase calls, and
//! [`Silent`] for callers that want nothing. Imports nothing from the crate.
//!
//! Layer: core (imports its own layer and the ones below; see ARCHITECTURE.md).

/// Receives the stages of long work (a CLI shows them as a spinner; libraries may ignore them).
pub trait Progress {
    fn stage(&self, what: &str);
    /// Starts counted work (`total` units, e.g. samples) shown as a bar.
    fn begin(&self, _what: &str, _total: u64) {}
    fn advance(&self, _n: u64) {}
    /// Ends counted work started by [`Progress::begin`].
    fn finish_bar(&self) {}
}

/// Progress that goes nowhere.
pub struct Silent;

impl Progress for Silent {
    fn stage(&self, _: &str) {}
}
