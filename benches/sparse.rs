//! `cargo bench --bench sparse`: how much smaller pruned models get on disk.
//!
//! Generates a ResNet-50 (25.6 M parameters, ~102 MB, seeded random weights) as ONNX and as
//! float32 TFLite, prunes each to 87.5% (unstructured per layer, and TFLite 4x1 / 1x4 blocks)
//! with `--storage auto` (the default) and `--storage dense`, and prints the written files'
//! sizes against the original: raw, gzip -9 and zstd -9, plus wall time. One TFLite case runs
//! with the tract check (on the densified equivalent) to show the big sparse file verifies.
//! Sizes are deterministic; times are single runs.

#[path = "common/resnet.rs"]
mod resnet;
#[path = "common/tflite_resnet.rs"]
mod tflite_resnet;

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

fn main() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-sparse");
    std::fs::create_dir_all(&dir).unwrap();
    let onnx = dir.join("resnet50.onnx");
    let tflite = dir.join("resnet50.tflite");
    resnet::resnet50(&onnx);
    tflite_resnet::resnet50(&tflite);
    let pare = env!("CARGO_BIN_EXE_pare");
    println!(
        "{:<8} {:<12} {:<7} {:>6} {:>12} {:>7} {:>12} {:>7} {:>12} {:>7} {:>8}",
        "model",
        "pattern",
        "storage",
        "sparse",
        "file bytes",
        "ratio",
        "gzip -9",
        "ratio",
        "zstd -9",
        "ratio",
        "time"
    );
    let cases: &[(&PathBuf, &str, &str, bool)] = &[
        (&onnx, "unstructured", "auto", false),
        (&onnx, "unstructured", "dense", false),
        (&tflite, "unstructured", "auto", false),
        (&tflite, "unstructured", "dense", false),
        (&tflite, "block:4x1", "auto", false),
        (&tflite, "block:1x4", "auto", false),
        (&tflite, "unstructured", "auto", true),
    ];
    for &(model, pattern, storage, verify) in cases {
        let ext = model.extension().unwrap().to_str().unwrap();
        let out = dir.join(format!("out-{}-{storage}.{ext}", pattern.replace(':', "")));
        let mut cmd = Command::new(pare);
        cmd.args([
            "prune",
            model.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ])
        .args([
            "--sparsity",
            "0.875",
            "--pattern",
            pattern,
            "--storage",
            storage,
        ])
        .args(["--force", "--json", "-q", "--compressed-sizes"]);
        if !verify {
            cmd.arg("--no-verify");
        }
        let start = Instant::now();
        let o = cmd.output().expect("spawn pare");
        let t = start.elapsed();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let w = &r["write"];
        let s = &w["sizes"];
        println!(
            "{:<8} {:<12} {:<7} {:>6} {:>12} {:>6.2}x {:>12} {:>6.2}x {:>12} {:>6.2}x {:>7.1}s{}",
            ext,
            pattern,
            storage,
            w["storage"]["sparse_tensors"]
                .as_array()
                .map_or(0, Vec::len),
            s["written"]["file_bytes"],
            s["file_ratio"].as_f64().unwrap(),
            s["written"]["gzip_bytes"],
            s["gzip_ratio"].as_f64().unwrap(),
            s["written"]["zstd_bytes"],
            s["zstd_ratio"].as_f64().unwrap(),
            t.as_secs_f64(),
            if verify {
                format!(
                    "  (tract check: verified {}, {:?})",
                    w["verification"]["verified"], w["verification"]["lowered"]["rewrites"]
                )
            } else {
                String::new()
            }
        );
    }
    let orig = |p: &PathBuf| std::fs::metadata(p).unwrap().len();
    println!(
        "originals: {} ({} bytes), {} ({} bytes)",
        onnx.display(),
        orig(&onnx),
        tflite.display(),
        orig(&tflite)
    );
}
