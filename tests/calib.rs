//! `pare prune --calib` as users run it: Wanda and SparseGPT against magnitude pruning, and the
//! least-squares refit after channel pruning, on every fixture, with held-out accuracy measured
//! in onnxruntime and LiteRT (not in pare); the int8 scheme kept; properties; bad data.

use crate::common::*;
use pare::prune::{plan, PruneOptions, Scope};
use pare::Document;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn prune_json(input: &Path, out: &Path, extra: &[&str]) -> Value {
    write_json("prune", input, out, extra)
}

struct Row {
    file: String,
    case: String,
    out: PathBuf,
}

/// The cases of the acceptance matrix: (name, flags before `--calib`, calibrated).
fn matrix() -> Vec<(&'static str, Vec<&'static str>, bool)> {
    let sp = |s: &'static str, scope: &'static str, crit: &'static str| {
        vec!["--sparsity", s, "--scope", scope, "--criterion", crit]
    };
    vec![
        (
            "magnitude 75% layer",
            sp("0.75", "layer", "magnitude"),
            false,
        ),
        (
            "magnitude 75% global",
            sp("0.75", "global", "magnitude"),
            false,
        ),
        ("wanda 75% layer", sp("0.75", "layer", "wanda"), true),
        (
            "sparsegpt 75% layer",
            sp("0.75", "layer", "sparsegpt"),
            true,
        ),
        (
            "sparsegpt 75% global",
            sp("0.75", "global", "sparsegpt"),
            true,
        ),
        (
            "magnitude 87.5% global",
            sp("0.875", "global", "magnitude"),
            false,
        ),
        (
            "sparsegpt 87.5% layer",
            sp("0.875", "layer", "sparsegpt"),
            true,
        ),
        (
            "sparsegpt 87.5% global",
            sp("0.875", "global", "sparsegpt"),
            true,
        ),
        ("magnitude 2:4", vec!["--pattern", "2:4"], false),
        (
            "sparsegpt 2:4",
            vec!["--pattern", "2:4", "--criterion", "sparsegpt"],
            true,
        ),
        ("channels 50% MACs", vec!["--target-macs", "0.5"], false),
        (
            "channels 50% MACs + refit",
            vec!["--target-macs", "0.5"],
            true,
        ),
        (
            "channels 50% MACs + refit, activation importance",
            vec!["--target-macs", "0.5", "--importance", "activation"],
            true,
        ),
    ]
}

/// The acceptance matrix on every fixture: magnitude, Wanda and SparseGPT at 75%,
/// 87.5% and 2:4, and channel pruning to half the MACs without and with the refit. Every
/// output runs in onnxruntime / LiteRT, which measure its accuracy on the held-out data
/// (calibration uses other samples, from the training split). Prints the README table.
#[test]
fn calibration_beats_magnitude_and_runs_in_onnxruntime_and_litert() {
    let dir = tmpdir();
    let mut jobs = Vec::new();
    let mut rows: Vec<Row> = Vec::new();
    // Every run first (two at a time: most of a small model's run is single-threaded tract),
    // then the checks in order.
    struct Spec {
        file: String,
        model: PathBuf,
        case: &'static str,
        args: Vec<String>,
        calibrated: bool,
        out: PathBuf,
    }
    let mut specs = Vec::new();
    for m in fixture_models() {
        let file = m["file"].as_str().unwrap().to_string();
        let model = fixtures().join(&file);
        let x = fixtures().join(m["test_data"].as_str().unwrap());
        let y = fixtures().join(m["test_labels"].as_str().unwrap());
        let calib = fixtures().join(m["calib_data"].as_str().unwrap());
        jobs.push(json!({"model": model, "x": x, "y": y}));
        for (i, (case, flags, calibrated)) in matrix().into_iter().enumerate() {
            let out = dir.path().join(format!("{i}-{file}"));
            let mut args: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
            if calibrated {
                args.extend(["--calib".to_string(), calib.to_str().unwrap().to_string()]);
            }
            jobs.push(json!({"model": out, "x": x, "y": y}));
            specs.push(Spec {
                file: file.clone(),
                model: model.clone(),
                case,
                args,
                calibrated,
                out,
            });
        }
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let reports: Vec<std::sync::Mutex<Option<Value>>> =
        specs.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(sp) = specs.get(i) else { break };
                let args: Vec<&str> = sp.args.iter().map(String::as_str).collect();
                *reports[i].lock().unwrap() = Some(prune_json(&sp.model, &sp.out, &args));
            });
        }
    });
    for (sp, r) in specs.iter().zip(reports) {
        let r = r.into_inner().unwrap().expect("run");
        let (file, case) = (&sp.file, sp.case);
        assert_eq!(
            r["write"]["verification"]["checked"], true,
            "{file} {case}: tract could not run it"
        );
        if sp.calibrated {
            let c = r["calibration"].as_array().expect("calibration report");
            let c = c.last().unwrap();
            assert!(
                !c["layers"].as_array().unwrap().is_empty(),
                "{file} {case}: no layer calibrated: {c}"
            );
            assert_eq!(c["capture"]["data"]["samples"], 128, "{file} {case}");
        }
        if case.starts_with("channels") {
            let ch = &r["channels"];
            let f = ch["macs_after"].as_f64().unwrap() / ch["macs_before"].as_f64().unwrap();
            assert!(f <= 0.5, "{file} {case}: MACs at {f}");
        } else if !case.ends_with("2:4") {
            let s = if case.contains("87.5%") { 0.875 } else { 0.75 };
            let got = r["totals"]["eligible_sparsity_after"].as_f64().unwrap();
            // Inputs that are always zero lose their weights too (SparseGPT).
            assert!(
                got > s - 0.005 && got < s + 0.02,
                "{file} {case}: sparsity {got}"
            );
        }
        rows.push(Row {
            file: file.clone(),
            case: case.to_string(),
            out: sp.out.clone(),
        });
    }
    let results = interop(&["accuracy"], Some(&serde_json::to_string(&jobs).unwrap()));
    let results = results.as_array().unwrap();
    let acc = |p: &Path| 100.0 * accuracy_in(results, p);
    let cases: Vec<&str> = matrix().iter().map(|c| c.0).collect();
    println!("| model | original | {} |", cases.join(" | "));
    println!("|---|---|{}", "---|".repeat(cases.len()));
    for m in fixture_models() {
        let f = m["file"].as_str().unwrap();
        let original = acc(&fixtures().join(f));
        let drop = |case: &str| {
            let r = rows.iter().find(|r| r.file == f && r.case == case).unwrap();
            original - acc(&r.out)
        };
        println!(
            "| {f} | {original:.1}% | {} |",
            cases
                .iter()
                .map(|c| format!("{:+.1}", -drop(c)))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        // At 75% and 2:4, SparseGPT does no worse than magnitude (within one test sample,
        // 0.28 points); the refit never does worse than channel pruning alone.
        let best_magnitude = drop("magnitude 75% layer").min(drop("magnitude 75% global"));
        let best_sparsegpt = drop("sparsegpt 75% layer").min(drop("sparsegpt 75% global"));
        assert!(
            best_sparsegpt <= best_magnitude + 0.3,
            "{f}: sparsegpt at 75% drops {best_sparsegpt:.2}, magnitude {best_magnitude:.2}"
        );
        let (m24, g24) = (drop("magnitude 2:4"), drop("sparsegpt 2:4"));
        assert!(
            g24 <= m24 + 0.3,
            "{f}: 2:4 sparsegpt {g24:.2}, magnitude {m24:.2}"
        );
        let (plain, refit) = (drop("channels 50% MACs"), drop("channels 50% MACs + refit"));
        // Ranking channels by what they contribute on the calibration data, then refitting.
        let activation = drop("channels 50% MACs + refit, activation importance");
        assert!(
            activation <= plain - 5.0,
            "{f}: activation importance + refit drops {activation:.2}, plain {plain:.2}"
        );
        assert!(
            refit <= plain + 0.3,
            "{f}: refit drops {refit:.2}, plain {plain:.2}"
        );
        // Where the model has room (the MLP and the CNN), the targets of the issue, with the
        // margin of a few test samples.
        if !f.starts_with("mobilenet") {
            assert!(
                best_sparsegpt <= 2.5,
                "{f}: sparsegpt at 75% drops {best_sparsegpt:.2}"
            );
            assert!(
                refit <= 2.5,
                "{f}: refit at half the MACs drops {refit:.2} points"
            );
            assert!(
                plain - refit >= 5.0,
                "{f}: the refit gains only {:.2}",
                plain - refit
            );
        }
    }
}

/// A quantized model keeps its scheme: every tensor's scales, zero points and type are those
/// of the original, and the pruned weights hold their zero points.
#[test]
fn int8_weights_are_reconstructed_on_their_own_grid() {
    let dir = tmpdir();
    for (file, calib) in [
        ("mlp_int8.tflite", "data/calib_x_flat.npy"),
        ("cnn_int8.tflite", "data/calib_x_nhwc.npy"),
    ] {
        let model = fixtures().join(file);
        let out = dir.path().join(file);
        let calib = fixtures().join(calib);
        let r = prune_json(
            &model,
            &out,
            &[
                "--sparsity",
                "0.5",
                "--criterion",
                "sparsegpt",
                "--calib",
                calib.to_str().unwrap(),
                "--storage",
                "dense",
            ],
        );
        assert!(r["totals"]["eligible_sparsity_after"].as_f64().unwrap() >= 0.5);
        let (a, b) = (
            Document::open(&model).unwrap().to_model().unwrap(),
            Document::open(&out).unwrap().to_model().unwrap(),
        );
        let (ga, gb) = (a.main(), b.main());
        assert_eq!(ga.tensors.len(), gb.tensors.len(), "{file}");
        let mut changed = 0;
        for (ta, tb) in ga.tensors.iter().zip(&gb.tensors) {
            assert_eq!(ta.name, tb.name, "{file}");
            assert_eq!(ta.dtype, tb.dtype, "{file} {}", ta.name);
            assert_eq!(
                ta.quant, tb.quant,
                "{file} {}: quantization changed",
                ta.name
            );
            changed += (ta.data != tb.data) as usize;
        }
        // Only the pruned weights and their biases (the mean correction) changed.
        let layers = r["layers"].as_array().unwrap().len();
        assert!(
            changed >= layers && changed <= 2 * layers,
            "{file}: {changed} tensors changed for {layers} layers"
        );
    }
}

/// At sparsity 0 the calibrated criteria change nothing.
#[test]
fn calibrated_pruning_at_sparsity_zero_changes_nothing() {
    let model = fixtures().join("cnn.onnx");
    let doc = Document::open(&model).unwrap();
    let original = doc.to_model().unwrap();
    for crit in [
        pare::calib::Criterion::Wanda,
        pare::calib::Criterion::Sparsegpt,
    ] {
        let opts = PruneOptions {
            sparsity: Some(0.0),
            scope: Scope::Layer,
            criterion: crit,
            calib: Some(pare::calib::CalibOptions::new(pare::data::DataOptions {
                source: pare::data::DataSource::Path(fixtures().join("data/calib_x_nchw.npy")),
                samples: Some(16),
                ..Default::default()
            })),
            ..Default::default()
        };
        let p = plan(&doc, &opts).unwrap();
        for t in &original.main().tensors {
            if let (Some(h), Some(d)) = (t.handle, &t.data) {
                if let Some(e) = p.edits.get(&h) {
                    assert_eq!(e, d, "{crit}: {} changed", t.name);
                }
            }
        }
        assert_eq!(
            p.report.totals.eligible_sparsity_after,
            p.report.totals.eligible_sparsity_before
        );
    }
}

/// Bad calibration data: a clear error naming the file and the input, a non-zero exit,
/// nothing written.
#[test]
fn bad_calibration_data_is_refused_before_anything_is_written() {
    let dir = tmpdir();
    let model = fixtures().join("cnn.onnx");
    let m = model.to_str().unwrap();
    let out = dir.path().join("out.onnx");
    let o = out.to_str().unwrap();
    let flat = fixtures().join("data/calib_x_flat.npy");
    let nan = dir.path().join("nan.npy");
    let (shape, mut values) = read_npy_f32(&fixtures().join("data/calib_x_nchw.npy"));
    values[3 * 64 + 5] = f32::NAN;
    write_npy(&nan, &shape, values.iter().copied());
    let ints = dir.path().join("ints.npy");
    write_npy(&ints, &shape, values.iter().map(|&v| v as i64));
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "--sparsity",
                "0.5",
                "--criterion",
                "sparsegpt",
                "--calib",
                flat.to_str().unwrap(),
            ],
            "calib_x_flat.npy",
        ),
        (
            vec![
                "--sparsity",
                "0.5",
                "--criterion",
                "wanda",
                "--calib",
                nan.to_str().unwrap(),
            ],
            "sample 3 holds NaN",
        ),
        (
            vec![
                "--sparsity",
                "0.5",
                "--criterion",
                "wanda",
                "--calib",
                ints.to_str().unwrap(),
            ],
            "int64 data cannot feed input",
        ),
        (
            vec!["--sparsity", "0.5", "--criterion", "sparsegpt"],
            "needs calibration data",
        ),
        (
            vec!["--channels", "0.5", "--importance", "activation"],
            "give --calib DATA",
        ),
        (
            vec!["--sparsity", "0.5", "--calib", flat.to_str().unwrap()],
            "nothing to do",
        ),
        (
            vec![
                "--sparsity",
                "0.5",
                "--pattern",
                "block:2x2",
                "--criterion",
                "wanda",
                "--calib",
                flat.to_str().unwrap(),
            ],
            "not blocks",
        ),
        (
            vec![
                "--sparsity",
                "0.5",
                "--criterion",
                "sparsegpt",
                "--calib",
                "missing.npy",
            ],
            "missing.npy",
        ),
        (
            vec![
                "--sparsity",
                "0.5",
                "--criterion",
                "sparsegpt",
                "--dampening",
                "0",
                "--calib",
                flat.to_str().unwrap(),
            ],
            "--dampening",
        ),
    ];
    for (args, needle) in cases {
        let mut a = vec!["prune", m, "-o", o];
        a.extend(args.iter());
        let r = run(&a);
        let err = stderr(&r);
        // A missing file is an I/O error (exit 1); everything else is a usage error (exit 2).
        let code = if needle == "missing.npy" { 1 } else { 2 };
        assert_eq!(r.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!out.exists(), "{args:?}: something was written");
    }
}

/// Fewer calibration rows than a layer has inputs: pare says so and regularizes.
#[test]
fn too_few_samples_warn_and_still_prune() {
    let dir = tmpdir();
    let model = fixtures().join("mlp.onnx");
    let out = dir.path().join("mlp.onnx");
    let calib = fixtures().join("data/calib_x_flat.npy");
    let r = prune_json(
        &model,
        &out,
        &[
            "--sparsity",
            "0.5",
            "--criterion",
            "sparsegpt",
            "--calib",
            calib.to_str().unwrap(),
            "--calib-samples",
            "8",
        ],
    );
    let warnings = r["warnings"].to_string();
    assert!(
        warnings.contains("8 calibration rows for 64 input features"),
        "{warnings}"
    );
    assert_eq!(r["write"]["verification"]["checked"], true);
}

/// `--sparsity 0.75 --criterion sparsegpt --calib DATA`.
fn sparsegpt_75(calib: &str) -> [&str; 6] {
    [
        "--sparsity",
        "0.75",
        "--criterion",
        "sparsegpt",
        "--calib",
        calib,
    ]
}

/// `--one-pass` and `--no-correct` are other computations (different weights, each verified,
/// with the passes over the data the report counts);
/// `--no-refit` writes exactly what channel pruning alone writes.
#[test]
fn calibration_modes_change_what_they_say() {
    let dir = tmpdir();
    let model = fixtures().join("cnn.onnx");
    let calib = fixtures().join("data/calib_x_nchw.npy");
    let c = calib.to_str().unwrap();
    let base = sparsegpt_75(c);
    let mut outs = Vec::new();
    // (name, flags, passes over the data): one per depth of the CNN's six layers, or one.
    for (name, extra, passes) in [
        ("default", vec![], 5),
        ("one-pass", vec!["--one-pass"], 1),
        ("no-correct", vec!["--no-correct"], 5),
    ] {
        let out = dir.path().join(format!("{name}.onnx"));
        let mut args = base.to_vec();
        args.extend(extra);
        let r = prune_json(&model, &out, &args);
        assert_eq!(r["write"]["verification"]["checked"], true, "{name}");
        let c = &r["calibration"][0];
        assert_eq!(c["layers"].as_array().unwrap().len(), 6, "{name}");
        assert_eq!(c["capture"]["passes"], passes, "{name}");
        outs.push((name, std::fs::read(&out).unwrap()));
    }
    for (name, bytes) in &outs[1..] {
        assert_ne!(bytes, &outs[0].1, "{name} wrote the default's weights");
    }

    let plain = dir.path().join("plain.onnx");
    let no_refit = dir.path().join("no-refit.onnx");
    prune_json(&model, &plain, &["--target-macs", "0.5"]);
    let r = prune_json(
        &model,
        &no_refit,
        &["--target-macs", "0.5", "--calib", c, "--no-refit"],
    );
    assert!(r.get("calibration").is_none(), "{r}");
    assert_eq!(
        std::fs::read(&plain).unwrap(),
        std::fs::read(&no_refit).unwrap()
    );
}

/// Sequential calibration runs stage by stage from held activations: with `--calib-memory`
/// too small for any of them, they all go to the temporary file and the written model is the
/// same; the report says what was held and spilled, and where the time went.
#[test]
fn held_activations_beyond_calib_memory_spill_and_change_nothing() {
    let dir = tmpdir();
    let model = fixtures().join("mobilenet.onnx");
    let calib = fixtures().join("data/calib_x_nchw.npy");
    let c = calib.to_str().unwrap();
    let base = sparsegpt_75(c);
    let (held, spilled) = (
        dir.path().join("held.onnx"),
        dir.path().join("spilled.onnx"),
    );
    let r = prune_json(&model, &held, &base);
    let staged = &r["calibration"][0]["capture"]["staged"];
    assert_eq!(staged["spilled"], 0, "{r}");
    assert!(staged["held_peak"].as_u64().unwrap() > 0, "{r}");
    assert!(staged["stages"].as_u64().unwrap() > 2, "{r}");
    let phases: Vec<&str> = r["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(
        phases,
        ["read", "calibrate", "prune", "write and verify"],
        "{r}"
    );
    assert!(
        r["calibration"][0]["timing"]["capture_seconds"]
            .as_f64()
            .unwrap()
            > 0.0
    );

    let mut args = base.to_vec();
    args.extend(["--calib-memory", "1K"]);
    let r = prune_json(&model, &spilled, &args);
    let staged = &r["calibration"][0]["capture"]["staged"];
    assert_eq!(staged["memory_limit"], 1024, "{r}");
    assert_eq!(staged["held_peak"], 0, "{r}");
    assert!(staged["spilled"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(
        std::fs::read(&held).unwrap(),
        std::fs::read(&spilled).unwrap()
    );

    let o = pare()
        .args(["prune", model.to_str().unwrap(), "-o"])
        .arg(dir.path().join("bad.onnx"))
        .args([
            "--criterion",
            "sparsegpt",
            "--sparsity",
            "0.5",
            "--calib",
            c,
        ])
        .args(["--calib-memory", "lots"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("512M"));
    assert!(!dir.path().join("bad.onnx").exists());
}

/// A model tract cannot run (an op it does not know after the first layer): the error names
/// what tract could not run, in calibration and in validation, and nothing is written.
#[test]
fn a_model_tract_cannot_run_is_named_and_nothing_is_written() {
    use pare::onnx_pb as pb;
    use prost::Message;
    let dir = tmpdir();
    let mut m =
        pb::ModelProto::decode(&std::fs::read(fixtures().join("mlp.onnx")).unwrap()[..]).unwrap();
    let relu = m
        .graph
        .as_mut()
        .unwrap()
        .node
        .iter_mut()
        .find(|n| n.op_type.as_deref() == Some("Relu"))
        .expect("the mlp has a Relu");
    relu.op_type = Some("NoSuchOp".into());
    relu.domain = Some("com.example".into());
    m.opset_import.push(pb::OperatorSetIdProto {
        domain: Some("com.example".into()),
        version: Some(1),
    });
    let bad = dir.path().join("bad.onnx");
    std::fs::write(&bad, m.encode_to_vec()).unwrap();
    let b = bad.to_str().unwrap();
    let calib = fixtures().join("data/calib_x_flat.npy");
    let c = calib.to_str().unwrap();
    let out = dir.path().join("out.onnx");
    let o = run(&[
        "prune",
        b,
        "-o",
        out.to_str().unwrap(),
        "--sparsity",
        "0.5",
        "--criterion",
        "sparsegpt",
        "--calib",
        c,
    ]);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert_ne!(o.status.code(), Some(101), "{err}");
    assert!(err.contains("bad.onnx"), "{err}");
    assert!(err.contains("cannot run the calibration copy"), "{err}");
    assert!(!out.exists());
    let o = run(&["validate", b, b, "--data", c]);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("cannot run the original model in tract"),
        "{err}"
    );
}
