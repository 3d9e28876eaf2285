//! `cargo bench --bench structural`: structural pruning at ResNet-50 size, and what it buys
//! in tract.
//!
//! Generates the same ResNet-50 as `benches/prune.rs` (seeded random weights, ~102 MB), then
//! measures, in one run:
//!
//! - the time and peak memory of `pare prune --target-macs 0.5 --no-verify` (dependency
//!   graph, scoring, slicing, writing) next to `pare convert --no-verify` of the same file;
//! - tract latency of the original and the pruned model, interleaved, with
//!   `pare validate --latency-runs` (median of timed runs after warm-up), and the speedup;
//!   the target is at least 1.6x at half the MACs.

#[path = "common/resnet.rs"]
mod resnet;
#[path = "common/run.rs"]
mod run;

use run::run;

use std::path::PathBuf;
use std::time::Duration;

const RUNS: usize = 3;

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-structural");
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("resnet50.onnx");
    resnet::resnet50(&model);
    let size = std::fs::metadata(&model).unwrap().len();
    println!(
        "model: ResNet-50 shapes, random weights, {:.1} MB",
        size as f64 / 1e6
    );
    let pare = env!("CARGO_BIN_EXE_pare");
    let m = model.to_str().unwrap();
    let pruned = dir.join("pruned.onnx");
    let p = pruned.to_str().unwrap();
    let converted = dir.join("converted.onnx");
    let c = converted.to_str().unwrap();

    let (mut tp, mut tc) = (Vec::new(), Vec::new());
    let (mut rss_p, mut rss_c) = (None, None);
    let mut report = String::new();
    for _ in 0..RUNS {
        let (t, r, out) = run(&[
            pare,
            "-q",
            "--json",
            "prune",
            m,
            "-o",
            p,
            "--target-macs",
            "0.5",
            "--force",
            "--no-verify",
        ]);
        tp.push(t);
        rss_p = rss_p.max(r);
        report = out;
        let (t, r, _) = run(&[pare, "-q", "convert", m, "-o", c, "--force", "--no-verify"]);
        tc.push(t);
        rss_c = rss_c.max(r);
    }
    let r: serde_json::Value = serde_json::from_str(&report).unwrap();
    let ch = &r["channels"];
    let frac = |a: &str, b: &str| ch[a].as_f64().unwrap() / ch[b].as_f64().unwrap();
    let (tp, tc) = (median(&mut tp).as_secs_f64(), median(&mut tc).as_secs_f64());
    let mb = |kb: Option<u64>| {
        kb.map_or("-".to_string(), |kb| {
            format!("{:.0} MB", kb as f64 * 1024.0 / 1e6)
        })
    };
    println!(
        "pare prune --target-macs 0.5 --no-verify: {tp:.2}s (convert {tc:.2}s, {:.2}x), peak RSS {} (convert {})",
        tp / tc,
        mb(rss_p),
        mb(rss_c)
    );
    println!(
        "  channel ratio {:.3}: {} of {} channels removed; MACs {:.1}% and params {:.1}% of the original",
        ch["ratio"].as_f64().unwrap(),
        ch["channels"]["removed"],
        ch["channels"]["total"],
        100.0 * frac("macs_after", "macs_before"),
        100.0 * frac("params_after", "params_before")
    );

    // Latency in tract: pare validate interleaves the two models' timed runs.
    let (_, _, out) = run(&[
        pare,
        "-q",
        "--json",
        "validate",
        m,
        p,
        "--samples",
        "1",
        "--latency-runs",
        "15",
        "--warmup",
        "2",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let l = &v["latency"];
    println!(
        "tract latency (batch 1, median of 15): original {:.1} ms, pruned {:.1} ms: {:.2}x faster",
        l["original"]["median_ms"].as_f64().unwrap_or(f64::NAN),
        l["candidate"]["median_ms"].as_f64().unwrap_or(f64::NAN),
        l["speedup"].as_f64().unwrap_or(f64::NAN)
    );
    println!(
        "({RUNS} interleaved runs of prune/convert; machine: {} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
}
