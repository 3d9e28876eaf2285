//! `cargo bench --bench prune`: what magnitude pruning costs next to the I/O floor and next to
//! the Python way, in time and peak memory, at real model sizes.
//!
//! Generates its models with seeded random weights:
//!
//! - a ResNet-50 as ONNX (25.5 M parameters, ~102 MB) and as float32 TFLite (~102 MB);
//! - with `PARE_BENCH_LARGE=1`, an ONNX MLP over protobuf's 2 GiB limit (weights in an
//!   external data file, ~2.7 GB).
//!
//! and times, interleaved and repeated, each as the process a user would run:
//!
//! - `cp` of the file (the floor), and `dd conv=fsync` (the floor for a durable write: pare
//!   flushes its outputs before renaming them into place);
//! - `pare convert --no-verify`;
//! - `pare prune --sparsity 0.5 --no-verify` with layer, global (and LAMP) scope;
//! - `pare prune --sparsity 0.5` with the tract check, reported separately;
//! - with `PARE_BENCH_PYTHON=/path/to/python` (an environment with onnx, numpy and onnxsim
//!   0.8.1; `scripts/bench.sh` creates one): `scripts/prune_numpy.py` (onnx + numpy, layer and
//!   global) and onnxsim's C++ `prune_magnitude_cpp`, on the ONNX models.
//!
//! Every case writes a fresh output (outputs are removed between runs), with raw sizes only
//! (the default; the gzip/zstd report is measured by `benches/sparse.rs`). Peak
//! resident memory comes from `/usr/bin/time -f %M` when it exists. The tables are Markdown;
//! the ratios measured in one run hold on a noisy machine better than absolute times.

#[path = "common/large.rs"]
mod large;
#[path = "common/resnet.rs"]
mod resnet;
#[path = "common/tflite_resnet.rs"]
mod tflite_resnet;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const RUNS: usize = 5;
const LARGE_RUNS: usize = 3;

struct Case {
    name: String,
    args: Vec<String>,
    /// Runs once (slow or memory-hungry cases on the large model).
    once: bool,
}

#[derive(Default)]
struct Measure {
    times: Vec<Duration>,
    peak_kb: Option<u64>,
    failed: Option<String>,
}

/// Runs `args` once, timed; with /usr/bin/time, also its peak RSS. Its stdout on success.
fn run(args: &[String]) -> Result<(Duration, Option<u64>, String), String> {
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
    let out = cmd.output().map_err(|e| format!("{}: {e}", args[0]))?;
    let elapsed = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        // Skip /usr/bin/time's own lines (exit status, peak RSS).
        let last = stderr.lines().rev().find(|l| {
            let l = l.trim();
            !l.is_empty() && !l.starts_with("Command exited") && l.parse::<u64>().is_err()
        });
        return Err(last.unwrap_or("failed").trim().to_string());
    }
    let peak = time
        .exists()
        .then(|| stderr.lines().last().and_then(|l| l.trim().parse().ok()))
        .flatten();
    Ok((
        elapsed,
        peak,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

fn median(v: &[Duration]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).map(Duration::as_secs_f64)
}

/// Removes every `out*` file of `dir` (outputs of the previous case).
fn clean(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("out") {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// The cases for one model file `m` (outputs `out.<ext>` beside it).
fn cases(m: &Path, python: Option<&str>, with_lamp: bool, large: bool) -> Vec<Case> {
    let pare = env!("CARGO_BIN_EXE_pare");
    let dir = m.parent().unwrap();
    let ext = m.extension().unwrap().to_string_lossy().into_owned();
    let out = dir.join(format!("out.{ext}")).display().to_string();
    let ms = m.display().to_string();
    let case = |name: &str, args: Vec<String>| Case {
        name: name.into(),
        args,
        once: false,
    };
    let pare_args = |extra: &[&str]| {
        let mut v = s(&[pare, "-q"]);
        v.extend(s(extra));
        v.extend(s(&["--force"]));
        v
    };
    let mut v = Vec::new();
    if large {
        v.push(case(
            "cp (model + data file)",
            s(&[
                "sh",
                "-c",
                &format!("cp '{ms}' '{out}' && cp '{ms}.data' '{out}.data'"),
            ]),
        ));
    } else {
        v.push(case("cp", s(&["cp", &ms, &out])));
        v.push(case(
            "dd conv=fsync (durable copy)",
            s(&[
                "dd",
                &format!("if={ms}"),
                &format!("of={out}"),
                "bs=1M",
                "conv=fsync",
                "status=none",
            ]),
        ));
    }
    v.push(case(
        "pare convert --no-verify",
        pare_args(&["convert", &ms, "-o", &out, "--no-verify"]),
    ));
    for scope in ["layer", "global"]
        .into_iter()
        .chain(with_lamp.then_some("lamp"))
    {
        v.push(case(
            &format!("pare prune --sparsity 0.5 --scope {scope} --no-verify"),
            pare_args(&[
                "prune",
                &ms,
                "-o",
                &out,
                "--sparsity",
                "0.5",
                "--scope",
                scope,
                "--no-verify",
            ]),
        ));
    }
    // The Python API on the same job (an interpreter with the wheel installed, e.g. the one
    // scripts/python-tests.sh installs into: target/pyenv/bin/python).
    if let Ok(py) = std::env::var("PARE_BENCH_PARE_PYTHON") {
        let code = "import sys, pare\n\
                    pare.prune(sys.argv[1], sys.argv[2], sparsity=0.5, scope='layer', \
                    verify=False, force=True, quiet=True)";
        v.push(case(
            "pare.prune(sparsity=0.5, verify=False) from Python",
            s(&[&py, "-c", code, &ms, &out]),
        ));
    }
    v.push(Case {
        name: "pare prune --sparsity 0.5 --scope layer (tract check)".into(),
        args: pare_args(&["prune", &ms, "-o", &out, "--sparsity", "0.5", "--json"]),
        once: large,
    });
    if let (Some(py), "onnx") = (python, ext.as_str()) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/prune_numpy.py");
        for scope in ["layer", "global"] {
            v.push(Case {
                name: format!("python onnx + numpy, {scope}"),
                args: s(&[py, script, &ms, &out, "--sparsity", "0.5", "--scope", scope]),
                once: large,
            });
        }
        if !large {
            // onnxsim serializes the model to one protobuf string: it cannot take > 2 GiB.
            for (label, global) in [("per row", "False"), ("global", "True")] {
                let code = format!(
                    "import sys, onnx, onnxsim\n\
                     m = onnxsim.prune_magnitude_cpp(sys.argv[1], sparsity=0.5, global_sparsity={global})\n\
                     onnx.save(m, sys.argv[2])"
                );
                v.push(case(
                    &format!("onnxsim 0.8.1 prune_magnitude_cpp, {label}"),
                    s(&[py, "-c", &code, &ms, &out]),
                ));
            }
        }
    }
    v
}

/// Times `cases` (interleaved, `runs` rounds) and prints a Markdown table. Returns medians
/// and peaks by case name, and the stdout of the last run of each case.
fn measure(title: &str, dir: &Path, size: u64, cases: &[Case], runs: usize) -> Vec<Row> {
    println!("\n### {title}\n");
    let mut results: Vec<Measure> = cases.iter().map(|_| Measure::default()).collect();
    let mut stdout = vec![String::new(); cases.len()];
    for round in 0..runs {
        // Interleaved, so that drift on a shared machine hits every case alike.
        for (i, c) in cases.iter().enumerate() {
            if (c.once && round > 0) || results[i].failed.is_some() {
                continue;
            }
            match run(&c.args) {
                Ok((t, peak, out)) => {
                    results[i].times.push(t);
                    results[i].peak_kb = results[i].peak_kb.max(peak);
                    stdout[i] = out;
                }
                Err(e) => results[i].failed = Some(e),
            }
            clean(dir);
        }
    }
    let convert = cases
        .iter()
        .position(|c| c.name.starts_with("pare convert"))
        .and_then(|i| median(&results[i].times))
        .unwrap_or(f64::NAN);
    println!("| case | median | vs `pare convert` | peak RSS | RSS / model |");
    println!("| --- | --- | --- | --- | --- |");
    let mut rows = Vec::new();
    for ((c, r), out) in cases.iter().zip(&results).zip(stdout) {
        if let Some(e) = &r.failed {
            println!("| {} | failed: {e} | | | |", c.name);
            continue;
        }
        let t = median(&r.times).unwrap_or(f64::NAN);
        let (rss, ratio) = match r.peak_kb {
            Some(kb) => (
                format!("{:.0} MB", kb as f64 * 1024.0 / 1e6),
                format!("{:.2}x", kb as f64 * 1024.0 / size as f64),
            ),
            None => ("-".into(), "-".into()),
        };
        println!(
            "| {} | {t:.3} s | {:.2}x | {rss} | {ratio} |",
            c.name,
            t / convert
        );
        rows.push(Row {
            name: c.name.clone(),
            seconds: t,
            rss_ratio: r.peak_kb.map(|kb| kb as f64 * 1024.0 / size as f64),
            stdout: out,
        });
    }
    let n = if cases.iter().all(|c| c.once) {
        1
    } else {
        runs
    };
    println!("\n({n} interleaved runs, median; cases marked once in the source ran once)");
    rows
}

struct Row {
    name: String,
    seconds: f64,
    rss_ratio: Option<f64>,
    stdout: String,
}

fn find<'a>(rows: &'a [Row], prefix: &str) -> Option<&'a Row> {
    rows.iter().find(|r| r.name.starts_with(prefix))
}

/// The targets, as measured ratios.
fn targets(rows: &[Row], python: bool) {
    let t = |p: &str| find(rows, p).map(|r| r.seconds);
    let line = |what: &str, v: Option<f64>, goal: &str, ok: fn(f64) -> bool| {
        if let Some(v) = v {
            let verdict = if ok(v) { "met" } else { "missed" };
            println!("- {what}: **{v:.2}x** (target {goal}: {verdict})");
        }
    };
    let convert = t("pare convert");
    let layer = t("pare prune --sparsity 0.5 --scope layer --no-verify");
    let global = t("pare prune --sparsity 0.5 --scope global --no-verify");
    let ratio = |a: Option<f64>, b: Option<f64>| Some(a? / b?);
    println!();
    line(
        "`pare convert` / `cp`",
        ratio(convert, t("cp")),
        "≤ 2x",
        |v| v <= 2.0,
    );
    line(
        "`pare convert` / `dd conv=fsync`",
        ratio(convert, t("dd conv=fsync")),
        "–",
        |_| true,
    );
    line(
        "prune layer / convert",
        ratio(layer, convert),
        "≤ 1.5x",
        |v| v <= 1.5,
    );
    line(
        "prune global / convert",
        ratio(global, convert),
        "≤ 1.5x",
        |v| v <= 1.5,
    );
    line(
        "`pare.prune` from Python / `pare prune` (layer, --no-verify)",
        ratio(t("pare.prune(sparsity=0.5"), layer),
        "≤ 1.1x",
        |v| v <= 1.1,
    );
    line(
        "peak RSS of prune layer / model size",
        find(rows, "pare prune --sparsity 0.5 --scope layer --no-verify").and_then(|r| r.rss_ratio),
        "≤ 1.5x",
        |v| v <= 1.5,
    );
    if python {
        line(
            "python onnx + numpy (layer) / pare prune layer",
            ratio(t("python onnx + numpy, layer"), layer),
            "≥ 10x",
            |v| v >= 10.0,
        );
        line(
            "python onnx + numpy (global) / pare prune global",
            ratio(t("python onnx + numpy, global"), global),
            "≥ 10x",
            |v| v >= 10.0,
        );
        line(
            "onnxsim prune_magnitude_cpp / pare prune layer",
            ratio(t("onnxsim 0.8.1 prune_magnitude_cpp, per row"), layer),
            "–",
            |_| true,
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is read from the command line.
    let python = std::env::var("PARE_BENCH_PYTHON")
        .ok()
        .filter(|p| !p.is_empty());
    let large = std::env::var("PARE_BENCH_LARGE").is_ok_and(|v| v == "1");
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-prune");
    println!(
        "## pare prune benchmark\n\nmachine: {} cores, {}; Python cases: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| m.lines().next().map(|l| l
                .split_whitespace()
                .nth(1)
                .unwrap_or("?")
                .to_string()))
            .map_or("memory unknown".into(), |kb| format!(
                "{:.0} GiB RAM",
                kb.parse::<f64>().unwrap_or(0.0) / 1048576.0
            )),
        python.as_deref().unwrap_or("off (set PARE_BENCH_PYTHON)")
    );

    // ONNX ResNet-50.
    let dir = root.join("onnx");
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("resnet50.onnx");
    resnet::resnet50(&model);
    let size = std::fs::metadata(&model).unwrap().len();
    let rows = measure(
        &format!(
            "ONNX ResNet-50, 25.5 M parameters, {:.1} MB",
            size as f64 / 1e6
        ),
        &dir,
        size,
        &cases(&model, python.as_deref(), true, false),
        RUNS,
    );
    targets(&rows, python.is_some());

    // TFLite ResNet-50.
    let dir = root.join("tflite");
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("resnet50.tflite");
    tflite_resnet::resnet50(&model);
    let size = std::fs::metadata(&model).unwrap().len();
    let rows = measure(
        &format!(
            "TFLite ResNet-50 (float32), 25.6 M parameters, {:.1} MB",
            size as f64 / 1e6
        ),
        &dir,
        size,
        &cases(&model, None, false, false),
        RUNS,
    );
    targets(&rows, false);

    if !large {
        println!("\n(the > 2 GiB external-data model runs with PARE_BENCH_LARGE=1)");
        return;
    }
    let dir = root.join("large");
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("mlp.onnx");
    let gen = Instant::now();
    let size = large::mlp_external(&model, 10, 8192);
    println!(
        "\n(generated the large model in {:.1} s)",
        gen.elapsed().as_secs_f64()
    );
    let rows = measure(
        &format!(
            "ONNX MLP with external data, 10 x 8192 x 8192 float32, {:.2} GB",
            size as f64 / 1e9
        ),
        &dir,
        size,
        &cases(&model, python.as_deref(), false, true),
        LARGE_RUNS,
    );
    targets(&rows, python.is_some());
    // The verified prune: tract ran both models and compared them.
    if let Some(r) = find(
        &rows,
        "pare prune --sparsity 0.5 --scope layer (tract check)",
    ) {
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap_or_default();
        println!(
            "- large model pruned with the tract check: verified {}, eligible sparsity {:.4}, {} bytes written in {} files",
            v["write"]["verification"]["verified"],
            v["totals"]["eligible_sparsity_after"].as_f64().unwrap_or(f64::NAN),
            v["write"]["output_bytes"],
            v["write"]["files"].as_array().map_or(0, Vec::len),
        );
    }
    for f in ["mlp.onnx", "mlp.onnx.data"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
}
