//! A stable-Rust mutation fuzzer for pare's readers and pruning pipeline.
//!
//!     cargo run --release --example mutate -- TARGET ITERATIONS [SEED] [CRASH_DIR]
//!     cargo run --release --example mutate -- dump FIXTURE SEED OUT
//!
//! TARGET is `onnx-read`, `tflite-read` (decode, build the view, count parameters) or `prune`
//! (all of that, then plan a 50% prune, apply it and encode the result), seeded with every
//! bundled fixture of the matching format. Each iteration mutates one fixture
//! (tests/common/mutate.rs: truncation, bit flips, length fields and offsets rewritten, huge
//! varints, structural damage) and runs the target in-process under `catch_unwind`. A panic is
//! a bug: the input is saved to CRASH_DIR (default target/mutate-crashes) and counted. The
//! process limits its address space to 4 GiB, so an unbounded allocation aborts the run
//! instead of going unnoticed. Prints one JSON summary line.

#[path = "../tests/common/mutate.rs"]
#[allow(dead_code)]
mod mutate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn fixtures(ext: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut out = Vec::new();
    for dir in [root.clone(), root.join("ops"), root.join("sparse")] {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == ext) {
                let b = std::fs::read(&p).unwrap();
                out.push((p, b));
            }
        }
    }
    out.sort();
    out
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("dump") {
        // dump FIXTURE SEED OUT: write one mutation to a file, to reproduce a failure.
        let original = std::fs::read(&args[2]).unwrap();
        let (bytes, kind) = mutate::mutate(&original, args[3].parse().unwrap());
        std::fs::write(&args[4], bytes).unwrap();
        eprintln!("{kind}");
        return;
    }
    let target = args.get(1).map(String::as_str).unwrap_or("prune");
    let iterations: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let seed: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1);
    let crash_dir = PathBuf::from(
        args.get(4)
            .cloned()
            .unwrap_or_else(|| "target/mutate-crashes".into()),
    );
    let seeds: Vec<(PathBuf, Vec<u8>)> = match target {
        "onnx-read" => fixtures("onnx"),
        "tflite-read" => fixtures("tflite"),
        "prune" | "channels" => [fixtures("onnx"), fixtures("tflite")].concat(),
        other => {
            eprintln!("unknown target {other:?}: onnx-read, tflite-read, prune or channels");
            std::process::exit(2);
        }
    };
    // An unbounded allocation must fail loudly, not swap the machine to death.
    let limit = libc::rlimit {
        rlim_cur: 4 << 30,
        rlim_max: 4 << 30,
    };
    unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) };
    std::panic::set_hook(Box::new(|_| {}));
    let started = Instant::now();
    let mut outcomes: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut kinds: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut panics = 0u64;
    let mut slowest = 0f64;
    for i in 0..iterations {
        let s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i);
        let (path, original) = &seeds[(s % seeds.len() as u64) as usize];
        let (bytes, kind) = mutate::mutate(original, s);
        *kinds.entry(kind).or_default() += 1;
        let t = Instant::now();
        let input = bytes.clone();
        match std::panic::catch_unwind(|| mutate::exercise(target, path, input)) {
            Ok(outcome) => *outcomes.entry(outcome).or_default() += 1,
            Err(_) => {
                panics += 1;
                std::fs::create_dir_all(&crash_dir).unwrap();
                let name = format!(
                    "{target}-{}-{s}.{}",
                    path.file_stem().unwrap().to_string_lossy(),
                    path.extension().unwrap().to_string_lossy()
                );
                std::fs::write(crash_dir.join(name), &bytes).unwrap();
            }
        }
        slowest = slowest.max(t.elapsed().as_secs_f64());
    }
    let summary = serde_json::json!({
        "target": target,
        "iterations": iterations,
        "seed": seed,
        "seconds": started.elapsed().as_secs_f64(),
        "slowest_iteration_s": slowest,
        "panics": panics,
        "outcomes": outcomes,
        "mutations": kinds,
    });
    println!("{summary}");
    if panics > 0 {
        std::process::exit(1);
    }
}
