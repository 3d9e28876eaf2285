//! Running pare as a user does, timed, with its peak memory from `/usr/bin/time` when present.

use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `args` (program first): wall time, peak RSS in KiB (when `/usr/bin/time` exists) and
/// stdout. Panics, with stderr, if the command fails.
pub fn run(args: &[&str]) -> (Duration, Option<u64>, String) {
    let time = std::path::Path::new("/usr/bin/time");
    let mut cmd = if time.exists() {
        let mut c = Command::new(time);
        c.args(["-f", "%M"]).args(args);
        c
    } else {
        let mut c = Command::new(args[0]);
        c.args(&args[1..]);
        c
    };
    let start = Instant::now();
    let out = cmd.output().expect("spawn");
    let elapsed = start.elapsed();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{args:?}: {err}");
    let peak = err.lines().last().and_then(|l| l.trim().parse().ok());
    (
        elapsed,
        peak,
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}
