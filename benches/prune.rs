//! `cargo bench --bench prune`: what magnitude pruning costs next to the I/O floor.
//!
//! Generates a ResNet-50 (bottleneck blocks with projections and residual Adds, batch-norm
//! folded, 25.5 M parameters, ~102 MB) with seeded random weights, then times, interleaved and
//! repeated, in one run:
//!
//! - `cp` of the file (the floor),
//! - `pare convert --no-verify`,
//! - `pare prune --sparsity 0.5 --no-verify` with layer, global and LAMP scope,
//! - `pare prune --sparsity 0.5` with the tract check, reported separately,
//!
//! all with `--no-compressed-sizes` (the gzip/zstd size report is measured separately, by
//! `benches/sparse.rs`), and prints medians, ratios against `pare convert`, and peak resident
//! memory (from
//! `/usr/bin/time -f %M` when it exists). Ratios measured in one run hold on a noisy machine
//! better than absolute times.

#[path = "common/resnet.rs"]
mod resnet;

use resnet::resnet50;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const RUNS: usize = 5;

struct Measure {
    times: Vec<Duration>,
    peak_kb: Option<u64>,
}

/// Runs `args` once, timed; with /usr/bin/time, also its peak RSS.
fn run(args: &[String]) -> (Duration, Option<u64>) {
    let time = Path::new("/usr/bin/time");
    let mut cmd = if time.exists() {
        let mut c = Command::new(time);
        c.args(["-f", "%M"]).args(args);
        c
    } else {
        let mut c = Command::new(&args[0]);
        c.args(&args[1..]);
        c
    };
    let start = Instant::now();
    let out = cmd.output().expect("spawn");
    let elapsed = start.elapsed();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let peak = time
        .exists()
        .then(|| {
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .and_then(|l| l.trim().parse().ok())
        })
        .flatten();
    (elapsed, peak)
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument filters nothing here.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-prune");
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("resnet50.onnx");
    let gen = Instant::now();
    resnet50(&model);
    let size = std::fs::metadata(&model).unwrap().len();
    println!(
        "model: ResNet-50 shapes, random weights, {:.1} MB (generated in {:.2?})",
        size as f64 / 1e6,
        gen.elapsed()
    );
    let pare = env!("CARGO_BIN_EXE_pare").to_string();
    let m = model.display().to_string();
    let out = |n: &str| dir.join(n).display().to_string();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("cp", s(&["cp", &m, &out("cp.onnx")])),
        (
            "pare convert --no-verify",
            s(&[
                &pare,
                "-q",
                "convert",
                &m,
                "-o",
                &out("conv.onnx"),
                "--force",
                "--no-verify",
                "--no-compressed-sizes",
            ]),
        ),
        (
            "pare prune 0.5 layer --no-verify",
            s(&[
                &pare,
                "-q",
                "prune",
                &m,
                "-o",
                &out("layer.onnx"),
                "--sparsity",
                "0.5",
                "--force",
                "--no-verify",
                "--no-compressed-sizes",
            ]),
        ),
        (
            "pare prune 0.5 global --no-verify",
            s(&[
                &pare,
                "-q",
                "prune",
                &m,
                "-o",
                &out("global.onnx"),
                "--sparsity",
                "0.5",
                "--scope",
                "global",
                "--force",
                "--no-verify",
                "--no-compressed-sizes",
            ]),
        ),
        (
            "pare prune 0.5 lamp --no-verify",
            s(&[
                &pare,
                "-q",
                "prune",
                &m,
                "-o",
                &out("lamp.onnx"),
                "--sparsity",
                "0.5",
                "--scope",
                "lamp",
                "--force",
                "--no-verify",
                "--no-compressed-sizes",
            ]),
        ),
        (
            "pare prune 0.5 layer (tract check)",
            s(&[
                &pare,
                "-q",
                "prune",
                &m,
                "-o",
                &out("checked.onnx"),
                "--sparsity",
                "0.5",
                "--force",
                "--no-compressed-sizes",
            ]),
        ),
    ];
    let mut results: Vec<Measure> = cases
        .iter()
        .map(|_| Measure {
            times: Vec::new(),
            peak_kb: None,
        })
        .collect();
    // Interleave the cases so that drift on a shared machine hits them all alike.
    for _ in 0..RUNS {
        for (i, (_, args)) in cases.iter().enumerate() {
            let (t, peak) = run(args);
            results[i].times.push(t);
            results[i].peak_kb = results[i].peak_kb.max(peak);
        }
    }
    let convert = median(&results[1].times).as_secs_f64();
    println!(
        "{:<36} {:>10} {:>12} {:>14} {:>12}",
        "case", "median", "vs convert", "peak RSS", "RSS / model"
    );
    for ((name, _), r) in cases.iter().zip(&results) {
        let t = median(&r.times).as_secs_f64();
        let (rss, ratio) = match r.peak_kb {
            Some(kb) => (
                format!("{:.0} MB", kb as f64 * 1024.0 / 1e6),
                format!("{:.2}x", kb as f64 * 1024.0 / size as f64),
            ),
            None => ("-".into(), "-".into()),
        };
        println!(
            "{name:<36} {:>9.3}s {:>11.2}x {rss:>14} {ratio:>12}",
            t,
            t / convert
        );
    }
    println!(
        "({RUNS} interleaved runs each; median; machine: {} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
}
