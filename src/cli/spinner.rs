//! What long work shows on stderr: a spinner naming the stage, and a bar with a rate and an
//! ETA for counted work.

/// A spinner on stderr naming the current stage: drawn only on a terminal (indicatif hides it
/// when stderr is a pipe or a file, as in CI) and never with --quiet.
pub(super) struct Spinner(indicatif::ProgressBar);

impl Spinner {
    pub(super) fn new(quiet: bool) -> Self {
        let bar = if quiet {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::new_spinner()
        };
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        Spinner(bar)
    }

    pub(super) fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl crate::progress::Progress for Spinner {
    fn stage(&self, what: &str) {
        self.0.set_message(what.to_string());
    }

    fn begin(&self, what: &str, total: u64) {
        self.0.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {pos}/{len} samples ({per_sec}, eta {eta})",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        self.0.set_length(total);
        self.0.set_position(0);
        self.0.set_message(what.to_string());
    }

    fn advance(&self, n: u64) {
        self.0.inc(n);
    }

    fn finish_bar(&self) {
        self.0
            .set_style(indicatif::ProgressStyle::default_spinner());
        self.0.set_length(0);
        self.0.set_position(0);
    }
}
