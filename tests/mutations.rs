//! Damaged and hostile model files as users' pipelines would meet them: 320 mutations (set
//! PARE_MUTATIONS for more) of every
//! bundled model fixture (tests/common/mutate.rs: truncation, bit flips, length fields and
//! offsets rewritten, huge varints, dims made huge or negative, tensor data shorter than its
//! shape, cycles, missing inputs, indices out of range), each run through the CLI (inspect,
//! convert with verification, prune, or prune --channels, by turns). Every run must end with exit 0–3, never a
//! panic (101) or a signal, within 10 seconds and 2 GiB of address space; a written model
//! must read back.
//!
//! For a failure seen elsewhere (CI): `PARE_MUTATIONS_ONLY=mlp_f16` runs the fixtures whose file
//! name contains the text, and `PARE_MUTATIONS_KEEP=DIR` keeps every mutated input in DIR.

use crate::common::mutate;

use crate::common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Mutations per fixture; `PARE_MUTATIONS` raises it (scheduled runs: 500 or more).
fn per_fixture() -> u64 {
    std::env::var("PARE_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(280)
}
const TIME_LIMIT: Duration = Duration::from_secs(10);

fn model_fixtures() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fixture_models()
        .iter()
        .map(|m| fixtures().join(m["file"].as_str().unwrap()))
        .collect();
    for extra in [
        "ops/cnn_qdq.onnx",
        "ops/mlp_f16.tflite",
        "ops/cond.onnx",
        "sparse/cnn_sparse.tflite",
    ] {
        v.push(fixtures().join(extra));
    }
    v
}

/// Runs pare with a 2 GiB address-space limit and a 10 s deadline; returns the exit code
/// (`None` for a signal) and whether it was killed for time.
fn run_limited(args: &[&str]) -> (Option<i32>, bool, String, Duration) {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pare"));
    cmd.args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 2 << 30,
                rlim_max: 2 << 30,
            };
            libc::setrlimit(libc::RLIMIT_AS, &limit);
            Ok(())
        });
    }
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawning pare");
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let mut killed = false;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > TIME_LIMIT {
            let _ = child.kill();
            killed = true;
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = started.elapsed();
    let mut err = reader.join().unwrap();
    if status.code().is_none() {
        err = format!("{status} {err}"); // names the signal
    }
    (status.code(), killed, err, elapsed)
}

fn check_fixture(fixture: &Path, seed0: u64) -> (BTreeMap<String, u64>, Vec<String>, Duration) {
    let original = std::fs::read(fixture).unwrap();
    let ext = fixture.extension().unwrap().to_string_lossy().into_owned();
    let dir = tmpdir();
    let keep = std::env::var_os("PARE_MUTATIONS_KEEP").map(PathBuf::from);
    let inputs = keep.clone().unwrap_or_else(|| dir.path().to_path_buf());
    std::fs::create_dir_all(&inputs).unwrap();
    let stem = fixture.file_stem().unwrap().to_string_lossy().into_owned();
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut slowest = Duration::ZERO;
    for i in 0..per_fixture() {
        let seed = seed0 + i;
        let (bytes, kind) = mutate::mutate(&original, seed);
        let input = inputs.join(format!("{stem}-m{seed}.{ext}"));
        std::fs::write(&input, &bytes).unwrap();
        let out = dir.path().join(format!("o{seed}.{ext}"));
        let (inp, outp) = (input.to_str().unwrap(), out.to_str().unwrap());
        let args: Vec<&str> = match i % 4 {
            0 => vec!["inspect", inp, "--json"],
            1 => vec!["convert", inp, "-o", outp],
            2 => vec!["prune", inp, "-o", outp, "--sparsity", "0.5"],
            _ => vec!["prune", inp, "-o", outp, "--channels", "0.5"],
        };
        let failed_before = failures.len();
        let (code, killed, err, took) = run_limited(&args);
        slowest = slowest.max(took);
        let what = format!(
            "{} seed {seed} ({kind}): pare {}",
            fixture.display(),
            args.join(" ")
        );
        match code {
            _ if killed => failures.push(format!("{what}: still running after {TIME_LIMIT:?}")),
            Some(c @ 0..=3) => {
                *outcomes.entry(format!("{} exit {c}", args[0])).or_default() += 1;
                if c != 0 && !err.contains("error") {
                    failures.push(format!("{what}: exit {c} without an error message"));
                }
                if c != 0 && err.contains("panicked") {
                    failures.push(format!("{what}: a panic message reached the user: {err}"));
                }
                if out.exists() {
                    // What pare wrote must read back.
                    let (c2, _, e2, _) = run_limited(&["inspect", outp]);
                    if c2 != Some(0) {
                        failures.push(format!(
                            "{what}: wrote a model that does not read back: {e2}"
                        ));
                    }
                    std::fs::remove_file(&out).unwrap();
                }
            }
            Some(c) => failures.push(format!("{what}: exit {c}: {err}")),
            None => failures.push(format!("{what}: killed by a signal: {err}")),
        }
        // Said at once: a log cut short (as CI's excerpts are) still names the run.
        for f in &failures[failed_before..] {
            eprintln!("FAILED {f}");
        }
        if keep.is_none() {
            let _ = std::fs::remove_file(&input);
        }
    }
    (outcomes, failures, slowest)
}

#[test]
fn five_hundred_mutations_of_every_fixture_end_cleanly() {
    let only = std::env::var("PARE_MUTATIONS_ONLY").unwrap_or_default();
    let fixtures: Vec<(usize, PathBuf)> = model_fixtures()
        .into_iter()
        .enumerate()
        .filter(|(_, f)| f.file_name().unwrap().to_string_lossy().contains(&only))
        .collect();
    // Two threads: the machine's cores (each run is a process of its own).
    let chunks: Vec<Vec<(usize, PathBuf)>> = {
        let mut c = vec![Vec::new(), Vec::new()];
        for (n, (i, f)) in fixtures.into_iter().enumerate() {
            c[n % 2].push((i, f));
        }
        c
    };
    let handles: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            std::thread::spawn(move || {
                chunk
                    .into_iter()
                    .map(|(i, f)| {
                        let r = check_fixture(&f, 1_000_000 * (i as u64 + 1));
                        (f, r)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all_failures = Vec::new();
    let mut total = 0u64;
    for h in handles {
        for (f, (outcomes, failures, slowest)) in h.join().unwrap() {
            total += per_fixture();
            eprintln!(
                "{}: {outcomes:?}, slowest run {slowest:?}",
                f.file_name().unwrap().to_string_lossy()
            );
            all_failures.extend(failures);
        }
    }
    eprintln!("{total} mutated files, {} failures", all_failures.len());
    assert!(
        all_failures.is_empty(),
        "{} of {total} runs failed:\n{}",
        all_failures.len(),
        all_failures
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Every failure the mutation runs found, kept as a regression test (the mutations are
/// deterministic: fixture + seed reproduce the file).
#[test]
fn crashes_found_by_mutation_stay_fixed() {
    let cases: &[(&str, u64, &str, &str)] = &[
        // int8 lowering: zero-point subtraction overflowed on a damaged zero point.
        ("mlp_int8.tflite", 3000485, "prune", "lowering"),
        ("mobilenet_int8.tflite", 9000145, "convert", "lowering"),
        ("cnn_int8.tflite", 6000100, "convert", "lowering"),
        // int8 lowering: a zero-size channel step divided by zero.
        ("mobilenet_int8.tflite", 9000184, "convert", "lowering"),
        // Random inputs for a declared shape of 2^40 elements: a 4 TiB allocation.
        ("mobilenet.onnx", 7000128, "prune", "input size"),
        // MACs of tract-inferred huge shapes overflowed u64.
        ("ops/cnn_qdq.onnx", 10000383, "inspect", "MAC overflow"),
        // A buffer larger than its tensor: counts went negative (found in-process).
        ("mlp.tflite", 11400714819323200315, "prune", "buffer size"),
        // A buffer that does not fit its shape was carried through and written back.
        ("cnn.tflite", 5000151, "convert", "buffer size"),
        // A quantized dimension outside the shape: per-channel nonzero counts sliced past it
        // (found by the 1M-iteration tflite-read run).
        (
            "cnn_int8.tflite",
            15548128363301696605,
            "inspect",
            "quantized axis",
        ),
        (
            "ops/ops_int8.tflite",
            15548128363301863625,
            "inspect",
            "quantized axis",
        ),
        (
            "mlp_int8.tflite",
            15548128363302533481,
            "inspect",
            "quantized axis",
        ),
        // Channel pruning (found in-process): damaged counts underflowed the cost estimate,
        // and a layer with zero output channels made the kept-count bounds cross.
        (
            "mobilenet.onnx",
            4354685564936872720,
            "channels",
            "cost estimate",
        ),
        ("cnn.onnx", 4354685564936847840, "channels", "cost estimate"),
        (
            "mlp_int8.tflite",
            4354685564936875022,
            "channels",
            "cost estimate",
        ),
        (
            "ops/mlp_f16.tflite",
            4354685564936854179,
            "channels",
            "zero channels",
        ),
        // The verification copy's FULLY_CONNECTED flattening multiplied damaged dims.
        ("mlp.tflite", 2000015, "channels", "element count overflow"),
    ];
    let dir = tmpdir();
    for &(fixture, seed, command, what) in cases {
        let original = std::fs::read(fixtures().join(fixture)).unwrap();
        let (bytes, _) = mutate::mutate(&original, seed);
        let ext = Path::new(fixture).extension().unwrap().to_str().unwrap();
        let input = dir.path().join(format!("{seed}.{ext}"));
        std::fs::write(&input, bytes).unwrap();
        let out = dir.path().join(format!("out{seed}.{ext}"));
        let (inp, outp) = (input.to_str().unwrap(), out.to_str().unwrap());
        let args: Vec<&str> = match command {
            "inspect" => vec!["inspect", inp],
            "convert" => vec!["convert", inp, "-o", outp],
            "channels" => vec!["prune", inp, "-o", outp, "--channels", "0.5"],
            _ => vec!["prune", inp, "-o", outp, "--sparsity", "0.5"],
        };
        let (code, killed, err, _) = run_limited(&args);
        assert!(
            !killed && matches!(code, Some(0..=3)),
            "{fixture} seed {seed} ({what}): exit {code:?}: {err}"
        );
    }
}

/// A short run of the in-process harness (`examples/mutate.rs`) for each target, as CI's smoke
/// of the fuzzers: 1000 mutations per target (300 for channel pruning, which runs tract's shape
/// inference on every ONNX case), no panic.
#[test]
fn in_process_mutation_smoke_of_every_target() {
    let mut seeds: Vec<PathBuf> = model_fixtures();
    seeds.sort();
    for target in ["onnx-read", "tflite-read", "prune", "channels"] {
        let files: Vec<(PathBuf, Vec<u8>)> = seeds
            .iter()
            .filter(|p| match target {
                "onnx-read" => p.extension().unwrap() == "onnx",
                "tflite-read" => p.extension().unwrap() == "tflite",
                _ => true,
            })
            .map(|p| (p.clone(), std::fs::read(p).unwrap()))
            .collect();
        let mut panics = Vec::new();
        let mut outcomes: BTreeMap<&str, u64> = BTreeMap::new();
        let runs = if target == "channels" { 300 } else { 1000u64 };
        for i in 0..runs {
            let seed = 0xC0FFEE + i;
            let (path, original) = &files[(seed % files.len() as u64) as usize];
            let (bytes, kind) = mutate::mutate(original, seed);
            let r = std::panic::catch_unwind(|| mutate::exercise(target, path, bytes));
            match r {
                Ok(o) => *outcomes.entry(o).or_default() += 1,
                Err(_) => panics.push(format!("{} seed {seed} ({kind})", path.display())),
            }
        }
        eprintln!("{target}: {outcomes:?}");
        assert!(panics.is_empty(), "{target}: panics on {panics:?}");
    }
}

/// A bit flip that made an input 96 wide while its signature and the first layer's weights
/// say 64 (`mlp_f16` seed 11000031) reached tract, whose matmul kernel then read past a
/// buffer: a segfault in about one run in ten, the only failure of a CI run. Refused when the
/// file is read, as LiteRT refuses it when it allocates, and so is the same width with a
/// signature that agrees.
#[test]
fn tflite_shapes_that_do_not_fit_their_layers_are_refused_when_read() {
    use pare::tflite::TfliteDocument;
    let fixture = fixtures().join("ops/mlp_f16.tflite");
    let (flipped, _) = mutate::mutate(&std::fs::read(&fixture).unwrap(), 11000031);
    let original =
        TfliteDocument::from_bytes(&fixture, std::fs::read(&fixture).unwrap().into()).unwrap();
    let mut wide = original.clone();
    let t = &mut wide.model.subgraphs.as_mut().unwrap()[0]
        .tensors
        .as_mut()
        .unwrap()[0];
    t.shape = Some(vec![1, 96]);
    t.shape_signature = Some(vec![-1, 96]);
    let (wide, _) = wide.encode().unwrap();
    let dir = tmpdir();
    for (name, bytes, message) in [
        (
            "flipped.tflite",
            flipped,
            "tensor \"serving_default_pixels:0\": shape [1, 96] disagrees with its shape_signature [-1, 64]",
        ),
        (
            "wide.tflite",
            wide.to_vec(),
            "operator 6 (FULLY_CONNECTED): input \"serving_default_pixels:0\" of shape [1, 96] does not fit weights",
        ),
    ] {
        let input = dir.path().join(name);
        std::fs::write(&input, bytes).unwrap();
        let out = dir.path().join(format!("out-{name}"));
        for args in [
            vec!["inspect", input.to_str().unwrap()],
            vec!["prune", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "--channels", "0.5"],
        ] {
            let (code, _, err, _) = run_limited(&args);
            assert_eq!(code, Some(1), "pare {args:?}: {err}");
            assert!(err.contains(message), "pare {args:?}: {err}");
            assert!(!out.exists());
        }
    }
}
