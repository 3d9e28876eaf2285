//! `pare validate`, `pare prune --validate/--search` and `pare sensitivity` as users run them:
//! accuracies agree with onnxruntime / LiteRT, gates and exit codes, the search, the
//! sensitivity profile and chart, determinism, and bad data.

use crate::common::*;
use serde_json::{json, Value};
use std::path::Path;

const GATE: i32 = 4;
const USAGE: i32 = 2;

fn fx(rel: &str) -> String {
    fixtures().join(rel).display().to_string()
}

fn validate(original: &str, candidate: &str, extra: &[&str]) -> (i32, Value, String) {
    let mut args = vec!["validate", original, candidate, "--latency-runs", "2"];
    args.extend_from_slice(extra);
    run_json(&args)
}

/// The accuracy check: for every fixture and a pruned variant of each, the accuracies
/// pare computes in tract match onnxruntime / LiteRT on the same data within 0.1 points. int8
/// models are fed both ways: float data quantized by pare, and the pre-quantized .npz.
#[test]
fn accuracy_matches_onnxruntime_and_litert_within_a_tenth_of_a_point() {
    let dir = tmpdir();
    let mut jobs = Vec::new();
    let mut checks: Vec<(String, String, f64)> = Vec::new(); // (model, how, pare's accuracy)
    for m in fixture_models() {
        let file = m["file"].as_str().unwrap();
        let model = fx(file);
        let x = fx(m["test_data"].as_str().unwrap());
        let y = fx(m["test_labels"].as_str().unwrap());
        let npz = fx(m["test_data_npz"].as_str().unwrap());
        let pruned = dir.path().join(format!("lamp50-{file}"));
        let r = write_json(
            "prune",
            Path::new(&model),
            &pruned,
            &["--sparsity", "0.5", "--scope", "lamp"],
        );
        assert_eq!(r["write"]["verification"]["checked"], true);
        let pruned = pruned.display().to_string();

        let (code, a, err) = validate(&model, &pruned, &["--data", &x, "--labels", &y]);
        assert_eq!(code, 0, "{file}: {err}");
        assert_eq!(a["schema"], "pare.validate/1");
        assert_eq!(a["data"]["samples"], 360);
        let acc = &a["accuracy"];
        checks.push((
            model.clone(),
            "npy".into(),
            acc["original"].as_f64().unwrap(),
        ));
        checks.push((
            pruned.clone(),
            "npy".into(),
            acc["candidate"].as_f64().unwrap(),
        ));
        let quantized = a["data"]["inputs"][0]["quantized"].as_bool().unwrap();
        assert_eq!(quantized, file.contains("int8"), "{file}");

        // The bundled .npz (labels inside; int8 data already quantized) gives the same.
        let (code, b, err) = validate(&model, &pruned, &["--data", &npz]);
        assert_eq!(code, 0, "{file}: {err}");
        assert_eq!(b["accuracy"], a["accuracy"], "{file}: npz vs npy+labels");
        jobs.push(json!({"model": model, "x": x, "y": y}));
        jobs.push(json!({"model": pruned, "x": x, "y": y}));
    }
    let results = interop(&["accuracy"], Some(&serde_json::to_string(&jobs).unwrap()));
    let mut table = String::new();
    for (model, how, ours) in &checks {
        let r = results
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["model"].as_str() == Some(model))
            .unwrap();
        assert!(r.get("error").is_none(), "{model}: {r}");
        let theirs = 100.0 * r["accuracy"].as_f64().unwrap();
        table += &format!(
            "{:<40} {how}: pare {ours:6.2}%  {} {theirs:6.2}%\n",
            Path::new(model).file_name().unwrap().to_string_lossy(),
            r["runtime"].as_str().unwrap()
        );
        assert!(
            (ours - theirs).abs() <= 0.1,
            "{model}: pare says {ours}%, {} says {theirs}%",
            r["runtime"]
        );
    }
    eprintln!("{table}");
}

#[test]
fn gates_set_the_exit_code_and_the_report_says_why() {
    let dir = tmpdir();
    let model = fx("cnn.onnx");
    let pruned = dir.path().join("cnn50.onnx");
    write_json(
        "prune",
        Path::new(&model),
        &pruned,
        &["--sparsity", "0.5", "--scope", "lamp"],
    );
    let pruned = pruned.display().to_string();
    let npz = fx("data/test_cnn_onnx.npz");

    let report = dir.path().join("validate.json");
    let (code, r, _) = validate(
        &model,
        &pruned,
        &["--data", &npz, "--report", report.to_str().unwrap()],
    );
    assert_eq!(code, 0);
    let file: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(
        file["outputs"], r["outputs"],
        "--report holds the --json report"
    );
    let drop = r["accuracy"]["drop_points"].as_f64().unwrap();
    assert!(drop > 1.0, "LAMP 50% on the cnn loses {drop} points");
    assert_eq!(r["passed"], true);
    assert!(r["latency"]["original"]["median_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(r["candidate"]["params"], r["original"]["params"]);
    assert!(
        r["candidate"]["nonzero_params"].as_u64().unwrap()
            < r["original"]["nonzero_params"].as_u64().unwrap() * 6 / 10
    );
    assert!(
        r["candidate"]["gzip_bytes"].as_u64().unwrap()
            < r["original"]["gzip_bytes"].as_u64().unwrap()
    );

    // Each gate on its own: just below and just above the measured value.
    let cos = r["outputs"][0]["cosine_mean"].as_f64().unwrap();
    let top1 = r["outputs"][0]["top1_agreement"].as_f64().unwrap();
    for (flag, fail, pass) in [
        ("--max-accuracy-drop", drop - 0.01, drop + 0.01),
        ("--min-cosine", cos + 1e-4, cos - 1e-4),
        ("--min-top1-agreement", top1 + 1e-3, top1 - 1e-3),
    ] {
        let (code, r, err) = validate(&model, &pruned, &["--data", &npz, flag, &fail.to_string()]);
        assert_eq!(code, GATE, "{flag} {fail}: {err}");
        assert_eq!(r["passed"], false);
        assert_eq!(r["gates"][0]["passed"], false);
        assert!(err.contains("fails a validation gate"), "{err}");
        let (code, r, err) = validate(&model, &pruned, &["--data", &npz, flag, &pass.to_string()]);
        assert_eq!(code, 0, "{flag} {pass}: {err}");
        assert_eq!(r["gates"][0]["passed"], true);
    }
    // An accuracy gate without labels, or a gate out of range: usage errors.
    let (code, _, err) = validate(
        &model,
        &pruned,
        &[
            "--data",
            &fx("data/test_x_nchw.npy"),
            "--max-accuracy-drop",
            "1",
        ],
    );
    assert_eq!(code, USAGE, "{err}");
    assert!(err.contains("needs labels"), "{err}");
    let (code, _, err) = validate(&model, &pruned, &["--min-cosine", "2"]);
    assert_eq!(code, USAGE, "{err}");
}

#[test]
fn prune_with_a_failing_gate_writes_nothing_unless_kept() {
    let dir = tmpdir();
    let out = dir.path().join("m.onnx");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "prune",
            &fx("cnn.onnx"),
            "-o",
            out.to_str().unwrap(),
            "--sparsity",
            "0.5",
            "--validate",
            &fx("data/test_cnn_onnx.npz"),
            "--latency-runs",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let call = |extra: &[&str]| {
        let a = args(extra);
        run_json(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let (code, r, err) = call(&["--max-accuracy-drop", "1"]);
    assert_eq!(code, GATE, "{err}");
    assert!(
        !out.exists(),
        "a model that fails its gate must not be written"
    );
    assert!(r.get("write").is_none());
    assert_eq!(r["validation"]["passed"], false);
    assert!(err.contains("not written"), "{err}");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "no staging left behind"
    );

    let (code, r, err) = call(&["--max-accuracy-drop", "1", "--keep-failed"]);
    assert_eq!(code, GATE, "{err}");
    assert!(out.exists());
    assert_eq!(r["validation"]["passed"], false);
    assert_eq!(r["write"]["verification"]["checked"], true);

    // Passing gate: written, exit 0, validation in the report with the output's path.
    let (code, r, err) = call(&["--max-accuracy-drop", "50", "--force"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(r["validation"]["passed"], true);
    assert_eq!(r["validation"]["candidate"]["path"], out.to_str().unwrap());

    // A gate without --validate is a usage error.
    let (code, _, err) = run_json(&[
        "prune",
        &fx("cnn.onnx"),
        "-o",
        dir.path().join("x.onnx").to_str().unwrap(),
        "--sparsity",
        "0.5",
        "--min-cosine",
        "0.9",
    ]);
    assert_eq!(code, USAGE, "{err}");
}

/// The iterative recipe: bisection finds a sparsity within the budget, every step is in the
/// report, the written model really is within the budget (checked independently in
/// onnxruntime), and the whole run is deterministic.
#[test]
fn search_finds_a_sparsity_within_the_budget_deterministically() {
    let dir = tmpdir();
    let npz = fx("data/test_cnn_onnx.npz");
    let run_search = |out: &Path| {
        run_json(&[
            "prune",
            &fx("cnn.onnx"),
            "-o",
            out.to_str().unwrap(),
            "--scope",
            "lamp",
            "--validate",
            &npz,
            "--max-accuracy-drop",
            "1",
            "--search",
            "--latency-runs",
            "0",
            "--report",
            out.with_extension("json").to_str().unwrap(),
        ])
    };
    let (a, b) = (dir.path().join("a.onnx"), dir.path().join("b.onnx"));
    let (code, ra, err) = run_search(&a);
    assert_eq!(code, 0, "{err}");
    let s = &ra["search"];
    assert_eq!(s["strategy"], "bisection");
    let chosen = s["chosen"].as_f64().unwrap();
    let steps = s["steps"].as_array().unwrap();
    assert!(steps.len() >= 3 && steps.len() <= 10, "{steps:?}");
    assert_eq!(steps[0]["sparsity"], 0.99, "the upper bound is tried first");
    assert_eq!(steps[0]["passed"], false);
    // The chosen sparsity passed, and a failing step lies within one grid step above it.
    let passed_at = |x: f64| {
        steps
            .iter()
            .find(|st| (st["sparsity"].as_f64().unwrap() - x).abs() < 1e-9)
            .map(|st| st["passed"].as_bool().unwrap())
    };
    assert_eq!(passed_at(chosen), Some(true));
    assert!(steps.iter().any(|st| {
        let sp = st["sparsity"].as_f64().unwrap();
        st["passed"] == false && sp > chosen && sp <= chosen + 0.01 + 1e-9
    }));
    for st in steps {
        assert_eq!(
            st["passed"].as_bool().unwrap(),
            st["drop_points"].as_f64().unwrap() <= 1.0 + 1e-9,
            "{st}"
        );
    }
    assert!(
        chosen > 0.2,
        "LAMP keeps the cnn within 1 point to at least 20%"
    );
    assert_eq!(ra["settings"]["sparsity"], chosen);
    let v = &ra["validation"];
    assert!(v["accuracy"]["drop_points"].as_f64().unwrap() <= 1.0);

    // Independently: onnxruntime on the written model.
    let res = interop(
        &["accuracy"],
        Some(
            &json!([{"model": a, "x": fx("data/test_x_nchw.npy"), "y": fx("data/test_y.npy")}])
                .to_string(),
        ),
    );
    let ort = 100.0 * res[0]["accuracy"].as_f64().unwrap();
    assert!(
        (ort - v["accuracy"]["candidate"].as_f64().unwrap()).abs() <= 0.1,
        "onnxruntime {ort}% vs pare {}",
        v["accuracy"]["candidate"]
    );

    // Same inputs and flags: same model bytes, same report apart from timings and paths.
    let (code, rb, err) = run_search(&b);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let strip = |mut r: Value| {
        r["validation"].as_object_mut().unwrap().remove("latency");
        r["validation"]["candidate"]["path"] = Value::Null;
        r.as_object_mut().unwrap().remove("write");
        r
    };
    assert_eq!(strip(ra.clone()), strip(rb));
    let file: Value =
        serde_json::from_slice(&std::fs::read(a.with_extension("json")).unwrap()).unwrap();
    assert_eq!(file["search"], ra["search"]);
}

#[test]
fn search_without_a_passing_sparsity_writes_nothing() {
    let dir = tmpdir();
    let out = dir.path().join("m.tflite");
    let (code, r, err) = run_json(&[
        "prune",
        &fx("mobilenet.tflite"),
        "-o",
        out.to_str().unwrap(),
        "--validate",
        &fx("data/test_mobilenet_tflite.npz"),
        "--min-top1-agreement",
        "1.0",
        "--search",
        "--search-step",
        "0.2",
        "--latency-runs",
        "0",
    ]);
    assert_eq!(code, GATE, "{err}");
    assert!(!out.exists());
    assert!(r["search"]["chosen"].is_null());
    assert!(err.contains("no sparsity"), "{err}");
}

#[test]
fn sensitivity_profile_chart_and_allocation() {
    let dir = tmpdir();
    let json_path = dir.path().join("sens.json");
    let svg = dir.path().join("sens.svg");
    let npz = fx("data/test_cnn_tflite.npz");
    let (code, r, err) = run_json(&[
        "sensitivity",
        &fx("cnn.tflite"),
        "--data",
        &npz,
        "--ratios",
        "0.5,0.9",
        "--report",
        json_path.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(r["schema"], "pare.sensitivity/1");
    assert_eq!(r["metric"], "accuracy");
    let layers = r["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 6, "the cnn has 6 prunable weights");
    for l in layers {
        let pts = l["points"].as_array().unwrap();
        assert_eq!(pts.len(), 2);
        assert!((pts[1]["sparsity"].as_f64().unwrap() - 0.9).abs() < 0.01);
    }
    // Layers differ in sensitivity (this is what the profile is for).
    let at90: Vec<f64> = layers
        .iter()
        .map(|l| l["points"][1]["drop"].as_f64().unwrap())
        .collect();
    let (lo, hi) = at90
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    assert!(hi - lo > 5.0, "drops at 90%: {at90:?}");
    // The table is on stderr, the chart is an SVG with one curve per layer.
    assert!(err.contains("90%"), "{err}");
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg"));
    for l in layers {
        let name = l["name"].as_str().unwrap();
        let shown = &name[name.len().saturating_sub(20)..];
        assert!(text.contains(shown), "legend lacks {shown}");
    }

    // The profile drives per-layer sparsities: the target is met on average, insensitive
    // layers get more than sensitive ones.
    let out = dir.path().join("s.tflite");
    let (code, p, err) = run_json(&[
        "prune",
        &fx("cnn.tflite"),
        "-o",
        out.to_str().unwrap(),
        "--scope",
        "sensitivity",
        "--sensitivity",
        json_path.to_str().unwrap(),
        "--sparsity",
        "0.6",
    ]);
    assert_eq!(code, 0, "{err}");
    let t = p["totals"]["eligible_sparsity_after"].as_f64().unwrap();
    assert!((t - 0.6).abs() < 0.01, "{t}");
    assert!(p["sensitivity_tolerance"].as_f64().is_some());
    let got = |name: &str| {
        p["layers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == name)
            .unwrap()["sparsity_after"]
            .as_f64()
            .unwrap()
    };
    let most = layers
        .iter()
        .max_by(|a, b| {
            a["points"][1]["drop"]
                .as_f64()
                .partial_cmp(&b["points"][1]["drop"].as_f64())
                .unwrap()
        })
        .unwrap();
    let least = layers
        .iter()
        .min_by(|a, b| {
            a["points"][1]["drop"]
                .as_f64()
                .partial_cmp(&b["points"][1]["drop"].as_f64())
                .unwrap()
        })
        .unwrap();
    assert!(
        got(least["name"].as_str().unwrap()) > got(most["name"].as_str().unwrap()),
        "least sensitive {} vs most sensitive {}",
        got(least["name"].as_str().unwrap()),
        got(most["name"].as_str().unwrap())
    );
    // A profile of another model does not fit.
    let (code, _, err) = run_json(&[
        "prune",
        &fx("mlp.tflite"),
        "-o",
        dir.path().join("x.tflite").to_str().unwrap(),
        "--scope",
        "sensitivity",
        "--sensitivity",
        json_path.to_str().unwrap(),
        "--sparsity",
        "0.5",
    ]);
    assert_eq!(code, USAGE, "{err}");
    assert!(err.contains("not in the sensitivity profile"), "{err}");
}

#[test]
fn random_inputs_onnx_test_data_and_input_shapes() {
    // Random inputs by default: a model against itself agrees exactly.
    let m = fx("mobilenet.onnx");
    let (code, r, err) = validate(&m, &m, &["--samples", "8", "--batch-size", "4"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(r["data"]["kind"], "random");
    assert_eq!(r["data"]["samples"], 8);
    assert_eq!(r["data"]["batch_size"], 4);
    assert_eq!(r["outputs"][0]["max_abs_diff"], 0.0);
    assert_eq!(r["outputs"][0]["top1_agreement"], 1.0);
    assert!(r.get("accuracy").is_none());
    // --input-shape fixes the dynamic batch dimension.
    let (code, r, err) = validate(&m, &m, &["--input-shape", "image=2,1,8,8"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(r["data"]["inputs"][0]["shape"], json!([2, 1, 8, 8]));
    let (code, _, err) = validate(&m, &m, &["--input-shape", "image=2,3,8,8"]);
    assert_eq!(code, USAGE);
    assert!(err.contains("axis 1 is fixed at 1"), "{err}");
    let (code, _, err) = validate(&m, &m, &["--input-shape", "nope=1,1,8,8"]);
    assert_eq!(code, USAGE);
    assert!(err.contains("no input \"nope\""), "{err}");

    // The ONNX model zoo convention: test_data_set_*/input_K.pb.
    let (model, data) = onnx_corpus()
        .into_iter()
        .find(|(m, d)| {
            d.is_some()
                && m.to_string_lossy()
                    .contains("pytorch-converted/test_Conv2d/")
        })
        .expect("corpus model with test data");
    let set_dir = data.unwrap();
    let parent = set_dir.parent().unwrap().to_str().unwrap().to_string();
    let model = model.to_str().unwrap().to_string();
    let (code, r, err) = validate(&model, &model, &["--data", &parent]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(r["data"]["kind"], "onnx-test-data");
    assert_eq!(r["outputs"][0]["cosine_mean"], 1.0);
}

#[test]
fn bad_data_and_mismatched_models_are_clear_errors() {
    let dir = tmpdir();
    let cnn = fx("cnn.onnx");
    let check = |args: &[&str], want: &str| {
        let (code, out, err) = validate(args[0], args[1], &args[2..]);
        assert_eq!(code, USAGE, "{args:?}: {err}");
        assert!(out.is_null(), "nothing on stdout after an error");
        assert!(err.contains(want), "{args:?}: expected {want:?} in: {err}");
    };
    // Shape: flat digits into the cnn.
    check(
        &[&cnn, &cnn, "--data", &fx("data/test_x_flat.npy")],
        "rank 2 vs 4",
    );
    // Labels of the wrong length.
    check(
        &[
            &cnn,
            &cnn,
            "--data",
            &fx("data/test_x_nchw.npy"),
            "--labels",
            &fx("data/calib_y.npy"),
        ],
        "128 labels for 360 samples",
    );
    // Integer data for a float input.
    let ints = dir.path().join("ints.npy");
    write_npy(&ints, &[2, 1, 8, 8], vec![0i64; 2 * 64]);
    check(
        &[&cnn, &cnn, "--data", ints.to_str().unwrap()],
        "int64 data cannot feed input",
    );
    // NaN in the data, named with its sample.
    let nan = dir.path().join("nan.npy");
    let mut v = vec![0.5f32; 3 * 64];
    v[64 + 5] = f32::NAN;
    write_npy(&nan, &[3, 1, 8, 8], v);
    check(
        &[&cnn, &cnn, "--data", nan.to_str().unwrap()],
        "sample 1 holds NaN",
    );
    // Two models with different interfaces.
    check(&[&cnn, &fx("mlp.onnx")], "different interfaces");
    // An npz without the input's name (two arrays, neither named for the input).
    let npz = dir.path().join("two.npz");
    let py = format!(
        "import numpy as np; np.savez_compressed({:?}, a=np.zeros((2,1,8,8),np.float32), b=np.zeros((2,1,8,8),np.float32))",
        npz.to_str().unwrap()
    );
    let o = std::process::Command::new(python())
        .args(["-c", &py])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    check(
        &[&cnn, &cnn, "--data", npz.to_str().unwrap()],
        "no array named \"image\"",
    );
    // A compressed npz with the right name works (deflate members are streamed too).
    let ok = dir.path().join("ok.npz");
    let py = format!(
        "import numpy as np; x=np.load({:?}); np.savez_compressed({:?}, image=x[:40], labels=np.load({:?})[:40])",
        fx("data/test_x_nchw.npy"),
        ok.to_str().unwrap(),
        fx("data/test_y.npy")
    );
    let o = std::process::Command::new(python())
        .args(["-c", &py])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (code, r, err) = validate(&cnn, &cnn, &["--data", ok.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(r["accuracy"]["samples"], 40);
    // A file that is not a model, and a missing data file: errors naming the file.
    let (code, _, err) = validate(&cnn, &fx("data/test_y.npy"), &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("test_y.npy"), "{err}");
    let (code, _, err) = validate(&cnn, &cnn, &["--data", "/nonexistent/x.npy"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("/nonexistent/x.npy"), "{err}");
}

/// Search steps prune in memory; with ONNX external data, tract must see the edited weights
/// and the untouched external ones: the same steps as the inline model, to the digit.
#[test]
fn search_on_external_data_sees_the_edits() {
    let dir = tmpdir();
    let ext = dir.path().join("ext.onnx");
    convert_json(Path::new(&fx("cnn.onnx")), &ext, &["--external-data"]);
    let search = |model: &str, out: &str| {
        let (code, r, err) = run_json(&[
            "prune",
            model,
            "-o",
            dir.path().join(out).to_str().unwrap(),
            "--scope",
            "lamp",
            "--validate",
            &fx("data/test_cnn_onnx.npz"),
            "--max-accuracy-drop",
            "1",
            "--search",
            "--search-step",
            "0.1",
            "--latency-runs",
            "0",
            // The largest conv stays external and unedited.
            "--exclude",
            "c3_1",
        ]);
        assert_eq!(code, 0, "{err}");
        assert!(r["skipped"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["params"] == 6912));
        r["search"].clone()
    };
    let a = search(ext.to_str().unwrap(), "a.onnx");
    let b = search(&fx("cnn.onnx"), "b.onnx");
    assert_eq!(a, b);
    assert!(a["steps"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["passed"] == false));
}
