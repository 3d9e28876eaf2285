//! `cargo bench --bench calib`: calibration-based pruning at ResNet-50 size.
//!
//! Generates the ResNet-50 of `benches/prune.rs` (seeded random weights, ~102 MB) and 128
//! seeded calibration images (3 × 224 × 224, float32, 77 MB), then measures, as a user runs
//! it, the time and peak memory of:
//!
//! - `pare prune --sparsity 0.5 --criterion sparsegpt --calib …`, the sequential default (the
//!   graph run stage by stage from held activations, SparseGPT on all 54 weights), also with
//!   `--calib-memory 256M` (activations beyond it in a temporary file);
//! - the same with `--criterion wanda` (no solve);
//! - `--one-pass` (every layer's statistics from the original model);
//! - `pare prune --target-macs 0.5 --calib …` (channel pruning with the sequential refit);
//!
//! next to `pare convert` of the same model. The targets: sequential SparseGPT in
//! 3 minutes, peak RSS within 4x the model plus the calibration data, Wanda at most a third
//! of SparseGPT's time. `PARE_BENCH_ONLY=TEXT` runs the cases whose name contains it.

#[path = "common/resnet.rs"]
mod resnet;
#[path = "common/run.rs"]
mod run;

use run::run;

use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `n` seeded images of 3 × 224 × 224 in [-2, 2) as a float32 `.npy`.
fn images(path: &Path, n: usize) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(128);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({n}, 3, 224, 224), }}");
    let mut header = dict.into_bytes();
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(b' ');
    }
    header.push(b'\n');
    f.write_all(b"\x93NUMPY\x01\x00").unwrap();
    f.write_all(&(header.len() as u16).to_le_bytes()).unwrap();
    f.write_all(&header).unwrap();
    for _ in 0..n * 3 * 224 * 224 {
        let v: f32 = rng.gen_range(-2.0..2.0);
        f.write_all(&v.to_le_bytes()).unwrap();
    }
    f.flush().unwrap();
}

fn main() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-calib");
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("resnet50.onnx");
    resnet::resnet50(&model);
    let calib = dir.join("calib.npy");
    images(&calib, 128);
    let pare = env!("CARGO_BIN_EXE_pare");
    let (m, c) = (model.to_str().unwrap(), calib.to_str().unwrap());
    let out = dir.join("out.onnx");
    let o = out.to_str().unwrap();
    let size = std::fs::metadata(&model).unwrap().len() as f64;
    println!(
        "model: ResNet-50 shapes, random weights, {:.1} MB; calibration: 128 × 3 × 224 × 224 float32\n",
        size / 1e6
    );
    let data = std::fs::metadata(&calib).unwrap().len() as f64;
    println!("| case | time | peak RSS | peak RSS / model | peak RSS / (model + data) | layers calibrated |");
    println!("| --- | --- | --- | --- | --- | --- |");
    // `pare prune` of the model to the output, with these flags.
    let prune = |flags: Vec<_>| {
        let mut a = vec!["prune", m, "-o", o, "--force"];
        a.extend(flags);
        a
    };
    // `--sparsity 0.5 --criterion CRITERION --calib …` with these flags after it.
    let calibrated = |criterion, extra: &[&'static str]| {
        let mut f = vec!["--sparsity", "0.5", "--criterion", criterion, "--calib", c];
        f.extend_from_slice(extra);
        prune(f)
    };
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("convert", vec!["convert", m, "-o", o, "--force"]),
        (
            "sparsegpt 50%, sequential (default), 128 samples",
            calibrated("sparsegpt", &[]),
        ),
        (
            "wanda 50%, sequential (default), 128 samples",
            calibrated("wanda", &[]),
        ),
        (
            "sparsegpt 50%, sequential, 128 samples, --calib-memory 256M",
            calibrated("sparsegpt", &["--calib-memory", "256M"]),
        ),
        (
            "sparsegpt 50%, one pass, 128 samples",
            calibrated("sparsegpt", &["--one-pass"]),
        ),
        (
            "channels to 50% MACs + refit, sequential, 128 samples",
            prune(vec!["--target-macs", "0.5", "--calib", c]),
        ),
    ];
    // PARE_BENCH_ONLY=TEXT runs the cases whose name contains TEXT.
    let only = std::env::var("PARE_BENCH_ONLY").unwrap_or_default();
    for (name, args) in cases.into_iter().filter(|(n, _)| n.contains(only.as_str())) {
        let mut a = vec![pare, "-q", "--json"];
        a.extend(args);
        let (t, rss, stdout) = run(&a);
        let layers = serde_json::from_str::<serde_json::Value>(&stdout)
            .ok()
            .and_then(|v| {
                let c = v["calibration"].as_array()?.clone();
                Some(
                    c.iter()
                        .map(|r| r["layers"].as_array().map_or(0, |l| l.len()))
                        .sum::<usize>()
                        .to_string(),
                )
            })
            .unwrap_or_else(|| "-".into());
        let rss = rss.map(|k| k as f64 * 1024.0);
        println!(
            "| {name} | {:.1} s | {} | {} | {} | {layers} |",
            t.as_secs_f64(),
            rss.map_or("-".into(), |r| format!("{:.0} MB", r / 1e6)),
            rss.map_or("-".into(), |r| format!("{:.2}x", r / size)),
            rss.map_or("-".into(), |r| format!("{:.2}x", r / (size + data))),
        );
    }
}
