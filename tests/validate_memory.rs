//! A validation run over far more data than it should hold in memory streams it batch by
//! batch. This file holds a single test so that the peak memory of its child processes
//! (`getrusage(RUSAGE_CHILDREN)`) is pare's alone.

mod common;

use common::*;

#[test]
fn validating_half_a_million_samples_streams_the_data() {
    let dir = tmpdir();
    // 500 000 samples of the mlp's 64 features in float64: 256 MB of data.
    let n = 500_000usize;
    // Streamed to disk: this process must stay small, because a forked child starts out with
    // its parent's resident pages in its peak.
    let x = dir.path().join("x.npy");
    write_npy(
        &x,
        &[n, 64],
        (0..n * 64).map(|i| ((i * 7919) % 17) as f64 / 16.0),
    );
    let o = run(&[
        "validate",
        fixtures().join("mlp.onnx").to_str().unwrap(),
        fixtures().join("mlp.onnx").to_str().unwrap(),
        "--data",
        x.to_str().unwrap(),
        "--batch-size",
        "256",
        "--latency-runs",
        "0",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = json(&o);
    assert_eq!(r["data"]["samples"], n);
    assert_eq!(r["outputs"][0]["top1_agreement"], 1.0);
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) },
        0
    );
    let peak_mb = usage.ru_maxrss as f64 / 1024.0; // kilobytes on Linux
    eprintln!("peak resident memory of pare: {peak_mb:.0} MB for 256 MB of data");
    assert!(
        peak_mb < 128.0,
        "pare held {peak_mb:.0} MB while validating 256 MB of data in batches"
    );
}
