//! What long work shows on stderr: on a terminal, a spinner naming the stage and a bar with a
//! rate and an ETA for counted work; otherwise (a CI log, a pipe), a line every few seconds.

use std::io::IsTerminal;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// On a non-terminal stderr, work that lasts longer than this prints a line this often
/// (`PARE_PROGRESS_INTERVAL=SECONDS` changes it).
const LINE_EVERY: Duration = Duration::from_secs(5);

fn line_every() -> Duration {
    std::env::var("PARE_PROGRESS_INTERVAL")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.01)
        .map_or(LINE_EVERY, Duration::from_secs_f64)
}

/// Progress on stderr: a spinner/bar on a terminal (indicatif), periodic lines otherwise, and
/// nothing with --quiet.
pub(super) struct Spinner {
    bar: indicatif::ProgressBar,
    lines: Option<Lines>,
}

/// What the periodic lines report.
struct State {
    stage: String,
    /// Counted work: done, total, when it began.
    count: Option<(u64, u64, Instant)>,
}

/// The thread printing periodic lines; dropping `stop` ends it.
struct Lines {
    state: Arc<Mutex<State>>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Spinner {
    pub(super) fn new(quiet: bool) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bar = if quiet || !terminal {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::new_spinner()
        };
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        let lines = (!quiet && !terminal).then(Lines::start);
        Spinner { bar, lines }
    }

    pub(super) fn finish(&self) {
        self.bar.finish_and_clear();
        if let Some(l) = &self.lines {
            l.stop();
        }
    }

    fn with_state(&self, f: impl FnOnce(&mut State)) {
        if let Some(l) = &self.lines {
            f(&mut l.state.lock().unwrap_or_else(|p| p.into_inner()));
        }
    }
}

impl Lines {
    fn start() -> Self {
        let state = Arc::new(Mutex::new(State {
            stage: String::new(),
            count: None,
        }));
        let (stop, stopped) = mpsc::channel::<()>();
        let shared = state.clone();
        let every = line_every();
        let thread = std::thread::Builder::new()
            .name("pare-progress".into())
            .spawn(move || {
                let started = Instant::now();
                // Wakes every `every` until stopped.
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    let s = shared.lock().unwrap_or_else(|p| p.into_inner());
                    eprintln!("{}", line(&s, started.elapsed()));
                }
            })
            .ok();
        Lines {
            state,
            stop: Some(stop),
            thread,
        }
    }

    fn stop(&self) {
        // The sender is dropped by `Drop`; here only wake the thread early.
        if let Some(s) = &self.stop {
            let _ = s.send(());
        }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `pare: 35 s, calibrating: 120/256 samples, about 40 s left`.
fn line(s: &State, elapsed: Duration) -> String {
    let stage = if s.stage.is_empty() {
        "working"
    } else {
        &s.stage
    };
    let mut out = format!("pare: {} s, {stage}", elapsed.as_secs());
    if let Some((done, total, began)) = s.count {
        out += &format!(": {done}/{total} samples");
        let t = began.elapsed().as_secs_f64();
        if done > 0 && total > done {
            let left = t / done as f64 * (total - done) as f64;
            out += &format!(", about {left:.0} s left");
        }
    }
    out
}

impl crate::progress::Progress for Spinner {
    fn stage(&self, what: &str) {
        self.bar.set_message(what.to_string());
        self.with_state(|s| {
            s.stage = what.to_string();
            s.count = None;
        });
    }

    fn begin(&self, what: &str, total: u64) {
        self.bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {pos}/{len} samples ({per_sec}, eta {eta})",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        self.bar.set_length(total);
        self.bar.set_position(0);
        self.bar.set_message(what.to_string());
        self.with_state(|s| {
            s.stage = what.to_string();
            s.count = Some((0, total, Instant::now()));
        });
    }

    fn advance(&self, n: u64) {
        self.bar.inc(n);
        self.with_state(|s| {
            if let Some(c) = &mut s.count {
                c.0 += n;
            }
        });
    }

    fn finish_bar(&self) {
        self.bar
            .set_style(indicatif::ProgressStyle::default_spinner());
        self.bar.set_length(0);
        self.bar.set_position(0);
        self.with_state(|s| s.count = None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_the_stage_the_count_and_the_time_left() {
        let s = State {
            stage: "calibrating".into(),
            count: Some((0, 10, Instant::now())),
        };
        assert_eq!(
            line(&s, Duration::from_secs(7)),
            "pare: 7 s, calibrating: 0/10 samples"
        );
        let s = State {
            stage: "verifying in tract".into(),
            count: None,
        };
        assert_eq!(
            line(&s, Duration::from_secs(12)),
            "pare: 12 s, verifying in tract"
        );
    }
}
