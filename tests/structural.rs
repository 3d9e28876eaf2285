//! `pare prune --channels` as users run it: every fixture at 25% and 50% of its channels,
//! checked in tract (by pare), onnxruntime and LiteRT, with held-out accuracy and the sizes the
//! README table shows; exact removal of dead channels; properties; bad input.

mod common;

use bytes::Bytes;
use common::*;
use pare::model::{Graph, Model};
use pare::prune::structural::{prune_channels, Amount, ChannelOptions, ChannelScope, Importance};
use pare::Document;
use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;

fn prune_json(input: &Path, out: &Path, extra: &[&str]) -> Value {
    write_json("prune", input, out, extra)
}

fn inspect_json(model: &Path) -> Value {
    let o = run(&["inspect", model.to_str().unwrap(), "--json"]);
    assert!(
        o.status.success(),
        "inspect {}: {}",
        model.display(),
        stderr(&o)
    );
    json(&o)
}

/// The acceptance matrix: 9 fixtures × 25% and 50% of the channels. Each output is
/// verified by pare in tract, passes the ONNX checker, loads and runs in onnxruntime / LiteRT;
/// the report's parameter and MAC counts are what `pare inspect` measures on the written file;
/// the test prints the README table (sizes and held-out accuracy).
#[test]
fn every_fixture_loses_channels_and_runs_in_tract_onnxruntime_and_litert() {
    let dir = tmpdir();
    let mut jobs = Vec::new();
    let mut rows = Vec::new();
    for m in fixture_models() {
        let file = m["file"].as_str().unwrap();
        let model = fixtures().join(file);
        let x = fixtures().join(m["test_data"].as_str().unwrap());
        let y = fixtures().join(m["test_labels"].as_str().unwrap());
        jobs.push(json!({"model": model, "x": x, "y": y}));
        let before = inspect_json(&model);
        for ratio in ["0.25", "0.5"] {
            let out = dir.path().join(format!("c{ratio}-{file}"));
            let r = prune_json(&model, &out, &["--channels", ratio]);
            let v = &r["write"]["verification"];
            assert_eq!(
                v["verified"], true,
                "{file} {ratio}: tract could not run it: {}",
                v["reason"]
            );
            let c = &r["channels"];
            assert!(
                c["channels"]["removed"].as_u64().unwrap() > 0,
                "{file} {ratio}: nothing removed"
            );
            let after = inspect_json(&out);
            // The plan's counts are the written model's.
            assert_eq!(
                c["params_after"], after["totals"]["params"],
                "{file} {ratio}: params"
            );
            assert_eq!(
                c["macs_after"], after["totals"]["macs"],
                "{file} {ratio}: MACs"
            );
            assert_eq!(c["params_before"], before["totals"]["params"]);
            // The interface never changes.
            assert_eq!(
                after["inputs"], before["inputs"],
                "{file} {ratio}: inputs changed"
            );
            assert_eq!(
                after["outputs"], before["outputs"],
                "{file} {ratio}: outputs changed"
            );
            jobs.push(json!({"model": out, "x": x, "y": y}));
            rows.push((file.to_string(), ratio, before.clone(), after, out));
        }
    }
    let results = interop(&["accuracy"], Some(&serde_json::to_string(&jobs).unwrap()));
    let results = results.as_array().unwrap();
    let acc = |p: &Path| -> f64 {
        let r = results
            .iter()
            .find(|r| Path::new(r["model"].as_str().unwrap()) == p)
            .unwrap();
        assert!(
            r.get("error").is_none() && r.get("checker_error").is_none(),
            "{}: does not run in {}: {r}",
            p.display(),
            r["runtime"]
        );
        r["accuracy"].as_f64().unwrap()
    };
    println!("| model | channels removed | params | MACs | file bytes | gzip bytes | accuracy | original |");
    println!("|---|---|---|---|---|---|---|---|");
    for (file, ratio, before, after, out) in &rows {
        let n = |v: &Value, k: &str| v["totals"][k].as_u64().unwrap();
        let s = |v: &Value, k: &str| v["sizes"][k].as_u64().unwrap();
        println!(
            "| {file} | {:.0}% | {} → {} | {} → {} | {} → {} | {} → {} | {:.1}% | {:.1}% |",
            100.0 * ratio.parse::<f64>().unwrap(),
            n(before, "params"),
            n(after, "params"),
            n(before, "macs"),
            n(after, "macs"),
            s(before, "file_bytes"),
            s(after, "file_bytes"),
            s(before, "gzip_bytes"),
            s(after, "gzip_bytes"),
            100.0 * acc(out),
            100.0 * acc(&fixtures().join(file))
        );
    }
    // The float ONNX and TFLite twins have the same architecture: the same channel counts go.
    for (file, ratio, _, after, _) in rows.iter().filter(|r| r.0.ends_with(".onnx")) {
        let twin = rows
            .iter()
            .find(|r| r.0 == file.replace(".onnx", ".tflite") && r.1 == *ratio)
            .unwrap();
        assert_eq!(
            after["totals"]["macs"], twin.3["totals"]["macs"],
            "{file} {ratio}: MACs differ from the TFLite twin"
        );
    }
}

/// Zeroes output filters of the weight named like `weight` (along `axis`), and their biases
/// too when `with_bias`; writes the result to `out`.
fn zero_filters(
    model: &Path,
    out: &Path,
    weight: &str,
    axis: usize,
    filters: &[usize],
    bias: Option<&str>,
) {
    let doc = Document::open(model).unwrap();
    let m: Model = doc.to_model().unwrap();
    let g: &Graph = m.main();
    let mut edits: HashMap<usize, Bytes> = HashMap::new();
    // TFLite names fused tensors after every op they came from: tell weight and bias by rank.
    let mut zero = |name: &str, axis: usize, weight: bool| {
        let t = g
            .tensors
            .iter()
            .find(|t| {
                t.name.contains(name)
                    && t.data.is_some()
                    && t.shape.as_ref().is_some_and(|s| (s.len() >= 2) == weight)
            })
            .unwrap_or_else(|| panic!("no constant named like {name}"));
        assert_eq!(t.dtype, pare::model::DType::F32, "{name}");
        let shape = t.fixed_shape().unwrap();
        let c = shape[axis] as usize;
        let inner: usize = shape[axis + 1..].iter().product::<u64>() as usize;
        let mut data = t.data.as_ref().unwrap().to_vec();
        for (e, chunk) in data.chunks_exact_mut(4).enumerate() {
            if filters.contains(&((e / inner) % c)) {
                chunk.copy_from_slice(&0f32.to_le_bytes());
            }
        }
        edits.insert(t.handle.unwrap(), Bytes::from(data));
    };
    zero(weight, axis, true);
    if let Some(b) = bias {
        zero(b, 0, false);
    }
    let edited = doc.with_tensor_data(&edits);
    let opts = pare::convert::WriteOptions {
        verify: pare::convert::VerifyPolicy::Skip,
        force: true,
        ..Default::default()
    };
    pare::convert::write_checked(&doc, &edited, out, &opts, false).unwrap();
}

/// Removing channels whose filters are zero changes nothing: where the channel fed a dense
/// layer, its constant output (relu(bias)) is folded into that layer's bias; where it fed a
/// padded convolution, it was zero (weights and bias zeroed). Both formats.
#[test]
fn dead_channels_are_removed_exactly() {
    let dir = tmpdir();
    let rules = dir.path().join("rules.toml");
    // (fixture, weight, its output axis, bias (None: keep the bias, so it must be folded), rule)
    let cases: &[(&str, &str, usize, Option<&str>, &str)] = &[
        ("mlp.onnx", "fc1_1/Cast/ReadVariableOp", 1, None, "fc1"),
        ("mlp.tflite", "fc1_1/MatMul", 0, None, "fc1"),
        (
            "cnn.onnx",
            "b1x1_1/convolution/ReadVariableOp",
            0,
            Some("b1x1_1/Squeeze"),
            "b1x1",
        ),
        (
            "cnn.tflite",
            "b1x1_1/convolution",
            0,
            Some("b1x1_1/Squeeze"),
            "b1x1",
        ),
    ];
    for (file, weight, axis, bias, rule) in cases {
        let zeroed = dir.path().join(format!("zeroed-{file}"));
        let n = if file.starts_with("mlp") { 128 } else { 12 };
        let filters: Vec<usize> = (0..n).step_by(4).collect(); // a quarter of them
        zero_filters(
            &fixtures().join(file),
            &zeroed,
            weight,
            *axis,
            &filters,
            *bias,
        );
        std::fs::write(
            &rules,
            format!("[[layer]]\nmatch = \"{rule}\"\nchannels = 0.25\n"),
        )
        .unwrap();
        let out = dir.path().join(format!("removed-{file}"));
        let r = prune_json(&zeroed, &out, &["--config", rules.to_str().unwrap()]);
        let c = &r["channels"];
        assert_eq!(
            c["channels"]["removed"].as_u64().unwrap() as usize,
            filters.len(),
            "{file}: {c}"
        );
        if bias.is_none() {
            // Channels whose relu(bias) is 0 contribute nothing and need no fold.
            assert!(c["folded"].as_u64().unwrap() > 0, "{file}: {c}");
        }
        let o = &r["write"]["verification"]["outputs"][0];
        assert!(
            o["max_abs_diff"].as_f64().unwrap() < 1e-5,
            "{file}: removing dead channels changed the output: {o}"
        );
        // Without folding the constant is lost (the dense case proves the fold does the work).
        if bias.is_none() {
            let r = prune_json(
                &zeroed,
                &out,
                &["--config", rules.to_str().unwrap(), "--no-fold", "--force"],
            );
            let o = &r["write"]["verification"]["outputs"][0];
            assert!(o["max_abs_diff"].as_f64().unwrap() > 1e-3, "{file}: {o}");
        }
    }
}

#[test]
fn channels_zero_writes_what_convert_writes() {
    let dir = tmpdir();
    for m in fixture_models() {
        let file = m["file"].as_str().unwrap();
        let model = fixtures().join(file);
        let a = dir.path().join(format!("pruned-{file}"));
        let b = dir.path().join(format!("converted-{file}"));
        let r = prune_json(&model, &a, &["--channels", "0", "--no-verify"]);
        convert_json(&model, &b, &["--no-verify"]);
        assert_eq!(
            std::fs::read(&a).unwrap(),
            std::fs::read(&b).unwrap(),
            "{file}: --channels 0 changed the model"
        );
        assert_eq!(r["channels"]["channels"]["removed"], 0);
    }
}

#[test]
fn targets_are_met_and_combine_with_sparsity() {
    let dir = tmpdir();
    let model = fixtures().join("mobilenet.tflite");
    let out = dir.path().join("m.tflite");
    let r = prune_json(
        &model,
        &out,
        &["--target-macs", "0.5", "--channel-scope", "global"],
    );
    let c = &r["channels"];
    let frac = c["macs_after"].as_f64().unwrap() / c["macs_before"].as_f64().unwrap();
    assert!(frac <= 0.5 && frac > 0.4, "MACs fraction {frac}");
    let r = prune_json(
        &model,
        &out,
        &["--target-params", "0.6", "--round-to", "4", "--force"],
    );
    let c = &r["channels"];
    let frac = c["params_after"].as_f64().unwrap() / c["params_before"].as_f64().unwrap();
    assert!(frac <= 0.6, "params fraction {frac}");
    for g in c["groups"].as_array().unwrap() {
        let (kept, n) = (g["kept"].as_u64().unwrap(), g["channels"].as_u64().unwrap());
        assert!(kept % 4 == 0 || kept == n, "{g}: not a multiple of 4");
    }
    // Channels first, then magnitude on what remains.
    let r = prune_json(
        &model,
        &out,
        &["--channels", "0.25", "--sparsity", "0.5", "--force"],
    );
    assert!(r["channels"]["channels"]["removed"].as_u64().unwrap() > 0);
    let s = r["totals"]["eligible_sparsity_after"].as_f64().unwrap();
    assert!((0.49..0.52).contains(&s), "sparsity {s}");
    // Deterministic: the same run twice writes the same bytes.
    let again = dir.path().join("again.tflite");
    prune_json(&model, &again, &["--channels", "0.25", "--sparsity", "0.5"]);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
}

#[test]
fn bad_requests_are_refused_with_the_reason() {
    let dir = tmpdir();
    let model = fixtures().join("cnn.onnx");
    let out = dir.path().join("o.onnx");
    let o = out.to_str().unwrap();
    let m = model.to_str().unwrap();
    for (args, code, text) in [
        (vec!["--channels", "1"], 2, "outside [0, 1)"),
        (vec!["--channels=-0.5"], 2, "outside [0, 1)"),
        (vec!["--target-macs", "1.5"], 2, "outside (0, 1]"),
        (
            vec!["--channels", "0.5", "--round-to", "0"],
            2,
            "--round-to",
        ),
        (
            vec!["--channels", "0.5", "--target-macs", "0.5"],
            2,
            "cannot be used with",
        ),
        (
            vec!["--target-macs", "0.001"],
            1,
            "cannot reach 0.1% of the original MACs",
        ),
        (
            vec!["--channels", "0.5", "--importance", "bn"],
            1,
            "needs explicit batch-norm",
        ),
    ] {
        let mut a = vec!["prune", m, "-o", o];
        a.extend(&args);
        let out_ = run(&a);
        assert_eq!(
            out_.status.code(),
            Some(code),
            "{args:?}: {}",
            stderr(&out_)
        );
        assert!(stderr(&out_).contains(text), "{args:?}: {}", stderr(&out_));
        assert!(!out.exists(), "{args:?}: wrote a file");
    }
    // A model whose channels all reach boundaries.
    let ops = fixtures().join("ops/ops.tflite");
    let out_ = run(&[
        "prune",
        ops.to_str().unwrap(),
        "-o",
        dir.path().join("x.tflite").to_str().unwrap(),
        "--channels",
        "0.5",
    ]);
    assert_eq!(out_.status.code(), Some(1), "{}", stderr(&out_));
    assert!(
        stderr(&out_).contains("no prunable channels"),
        "{}",
        stderr(&out_)
    );
}

/// Library: any ratio, importance, scope and rounding on any fixture gives a model tract
/// loads, types and runs (tract's analysis rejects any tensor whose shape disagrees with its
/// producer or consumers), with the interface unchanged.
fn shapes_stay_consistent(
    file: &str,
    ratio: f64,
    importance: Importance,
    scope: ChannelScope,
    round_to: usize,
) {
    let doc = Document::open(&fixtures().join(file)).unwrap();
    let opts = ChannelOptions {
        amount: Amount::Ratio(ratio),
        importance,
        scope,
        round_to,
        ..Default::default()
    };
    let (edited, report) = prune_channels(&doc, &opts).unwrap();
    let v = pare::verify::compare(&doc, &edited, 7).unwrap();
    assert!(
        v.verified && !v.regressed,
        "{file} {opts:?}: {:?}",
        v.reason
    );
    let (a, b) = (doc.to_model().unwrap(), edited.to_model().unwrap());
    let io = |m: &Model| -> Vec<String> {
        let g = m.main();
        g.inputs
            .iter()
            .chain(&g.outputs)
            .map(|&t| format!("{:?}", g.tensors[t].shape))
            .collect()
    };
    assert_eq!(io(&a), io(&b), "{file}: interface changed");
    assert!(report.params_after <= report.params_before);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn any_channel_prune_keeps_every_shape_consistent(
        file in prop::sample::select(vec![
            "mlp.onnx", "cnn.onnx", "mobilenet.onnx", "mlp.tflite", "cnn.tflite",
            "mobilenet.tflite", "mlp_int8.tflite", "cnn_int8.tflite", "mobilenet_int8.tflite",
        ]),
        ratio in 0.0f64..0.95,
        importance in prop::sample::select(vec![Importance::L1, Importance::L2, Importance::Fpgm]),
        global in any::<bool>(),
        round_to in prop::sample::select(vec![1usize, 4, 8]),
    ) {
        let scope = if global { ChannelScope::Global } else { ChannelScope::Layer };
        shapes_stay_consistent(file, ratio, importance, scope, round_to);
    }
}
