//! `pare prune --channels` as users run it: every fixture at 25% and 50% of its channels,
//! checked in tract (by pare), onnxruntime and LiteRT, with held-out accuracy and the sizes the
//! README table shows; exact removal of dead channels; properties; bad input.

use crate::common::*;
use bytes::Bytes;
use pare::model::{Graph, Model};
use pare::structural::{prune_channels, Amount, ChannelOptions, ChannelScope, Importance};
use pare::Document;
use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;

fn prune_json(input: &Path, out: &Path, extra: &[&str]) -> Value {
    write_json("prune", input, out, extra)
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
                v["checked"], true,
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
    let acc = |p: &Path| accuracy_in(results, p);
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
    assert!(v.checked && !v.regressed, "{file} {opts:?}: {:?}", v.reason);
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

mod built {
    //! Small ONNX graphs built here for the ops the fixtures do not have.
    use pare::onnx_pb as pb;

    pub fn vi(name: &str, dims: &[i64]) -> pb::ValueInfoProto {
        pb::ValueInfoProto {
            name: Some(name.into()),
            r#type: Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: Some(pb::tensor_proto::DataType::Float as i32),
                    shape: Some(pb::TensorShapeProto {
                        dim: dims
                            .iter()
                            .map(|&d| pb::tensor_shape_proto::Dimension {
                                value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(d)),
                                ..Default::default()
                            })
                            .collect(),
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn node(
        op: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: Vec<pb::AttributeProto>,
    ) -> pb::NodeProto {
        pb::NodeProto {
            op_type: Some(op.into()),
            name: Some(outputs[0].into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute: attrs,
            ..Default::default()
        }
    }

    /// The main graph of an ONNX file.
    pub fn read_graph(path: &std::path::Path) -> pb::GraphProto {
        use prost::Message;
        let bytes = bytes::Bytes::from(std::fs::read(path).unwrap());
        pb::ModelProto::decode(bytes).unwrap().graph.unwrap()
    }

    pub fn int_attr(name: &str, v: i64) -> pb::AttributeProto {
        pb::AttributeProto {
            name: Some(name.into()),
            r#type: Some(pb::attribute_proto::AttributeType::Int as i32),
            i: Some(v),
            ..Default::default()
        }
    }

    pub fn pads_attr(p: i64) -> pb::AttributeProto {
        pb::AttributeProto {
            name: Some("pads".into()),
            r#type: Some(pb::attribute_proto::AttributeType::Ints as i32),
            ints: vec![p; 4],
            ..Default::default()
        }
    }

    pub fn floats(name: &str, dims: &[i64], seed: u32) -> pb::TensorProto {
        let n: i64 = dims.iter().product();
        // A small deterministic generator: values in [-1, 1).
        let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
        let raw: Vec<u8> = (0..n)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                ((x % 2000) as f32 / 1000.0 - 1.0).to_le_bytes()
            })
            .collect();
        pb::TensorProto {
            name: Some(name.into()),
            dims: dims.to_vec(),
            data_type: Some(pb::tensor_proto::DataType::Float as i32),
            raw_data: Some(raw.into()),
            ..Default::default()
        }
    }

    pub fn ints(name: &str, v: &[i64]) -> pb::TensorProto {
        pb::TensorProto {
            name: Some(name.into()),
            dims: vec![v.len() as i64],
            data_type: Some(pb::tensor_proto::DataType::Int64 as i32),
            raw_data: Some(
                v.iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect::<Vec<u8>>()
                    .into(),
            ),
            ..Default::default()
        }
    }

    /// x → Conv(16) → Relu → Split([6, 10], channel axis) → Conv(4) on each part → Add → y:
    /// both parts of the split lose channels, and the split sizes must follow.
    pub fn split_model() -> pb::ModelProto {
        let nodes = vec![
            node("Conv", &["x", "w1", "b1"], &["c1"], vec![]),
            node("Relu", &["c1"], &["r1"], vec![]),
            node(
                "Split",
                &["r1", "sizes"],
                &["s0", "s1"],
                vec![int_attr("axis", 1)],
            ),
            node("Conv", &["s0", "wa", "ba"], &["a"], vec![]),
            node("Conv", &["s1", "wb", "bb"], &["b"], vec![]),
            node("Add", &["a", "b"], &["y"], vec![]),
        ];
        let initializer = vec![
            floats("w1", &[16, 3, 1, 1], 1),
            floats("b1", &[16], 2),
            ints("sizes", &[6, 10]),
            floats("wa", &[4, 6, 1, 1], 3),
            floats("ba", &[4], 4),
            floats("wb", &[4, 10, 1, 1], 5),
            floats("bb", &[4], 6),
        ];
        pb::ModelProto {
            ir_version: Some(9),
            producer_name: Some("pare-tests".into()),
            opset_import: vec![pb::OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(17),
            }],
            graph: Some(pb::GraphProto {
                name: Some("split".into()),
                node: nodes,
                initializer,
                input: vec![vi("x", &[1, 3, 5, 5])],
                output: vec![vi("y", &[1, 4, 5, 5])],
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// A grouped convolution (group 4): every group gets narrower by the same count, the group
/// count stays, and the result runs in onnxruntime.
#[test]
fn grouped_convolutions_narrow_every_group_alike() {
    use built::*;
    use prost::Message;
    let dir = tmpdir();
    let path = dir.path().join("grouped.onnx");
    let mut m = split_model();
    let g = m.graph.as_mut().unwrap();
    g.node = vec![
        node("Conv", &["x", "w1", "b1"], &["c1"], vec![]),
        node("Relu", &["c1"], &["r1"], vec![]),
        node(
            "Conv",
            &["r1", "wg", "bg"],
            &["c2"],
            vec![int_attr("group", 4), pads_attr(1)],
        ),
        node("Relu", &["c2"], &["r2"], vec![]),
        node("Conv", &["r2", "w3", "b3"], &["y"], vec![]),
    ];
    g.initializer = vec![
        floats("w1", &[16, 3, 1, 1], 1),
        floats("b1", &[16], 2),
        floats("wg", &[16, 4, 3, 3], 3),
        floats("bg", &[16], 4),
        floats("w3", &[4, 16, 1, 1], 5),
        floats("b3", &[4], 6),
    ];
    std::fs::write(&path, m.encode_to_vec()).unwrap();
    let out = dir.path().join("grouped.pruned.onnx");
    let r = prune_json(&path, &out, &["--channels", "0.5"]);
    assert_eq!(
        r["write"]["verification"]["checked"], true,
        "{}",
        r["write"]
    );
    let g = built::read_graph(&out);
    let dims = |n: &str| {
        g.initializer
            .iter()
            .find(|t| t.name() == n)
            .unwrap()
            .dims
            .clone()
    };
    // 16 = 4 groups x 4: half of each group's channels go, on both sides of the grouped conv.
    assert_eq!(dims("w1"), vec![8, 3, 1, 1]);
    assert_eq!(dims("wg"), vec![8, 2, 3, 3]);
    assert_eq!(dims("w3"), vec![4, 8, 1, 1]);
    let r = interop(
        &["onnx-pair", path.to_str().unwrap(), out.to_str().unwrap()],
        None,
    );
    assert!(
        r["checker_output"].is_null() && r.get("ort_output_error").is_none(),
        "{r}"
    );
}

/// A Split on the channel axis: its parts lose channels and the sizes follow; the result runs
/// in onnxruntime; and removing zeroed filters through it is exact (1x1 consumers, folded).
#[test]
fn split_sizes_follow_the_channels() {
    use prost::Message;
    let dir = tmpdir();
    let path = dir.path().join("split.onnx");
    std::fs::write(&path, built::split_model().encode_to_vec()).unwrap();
    let out = dir.path().join("split.pruned.onnx");
    let r = prune_json(&path, &out, &["--channels", "0.5"]);
    assert_eq!(r["channels"]["channels"]["removed"], 8, "{}", r["channels"]);
    assert_eq!(r["write"]["verification"]["checked"], true);
    let g = built::read_graph(&out);
    let sizes = g.initializer.iter().find(|t| t.name() == "sizes").unwrap();
    let v: Vec<i64> = sizes
        .raw_data
        .as_ref()
        .unwrap()
        .chunks(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(v.iter().sum::<i64>(), 8, "sizes {v:?}");
    let r = interop(
        &["onnx-pair", path.to_str().unwrap(), out.to_str().unwrap()],
        None,
    );
    assert!(
        r["checker_output"].is_null() && r.get("ort_output_error").is_none(),
        "{r}"
    );

    // Zero 8 of the 16 filters (weights only, biases kept): removing them folds relu(bias)
    // into the biases of both consumers, and the output does not change.
    let zeroed = dir.path().join("zeroed.onnx");
    zero_filters(&path, &zeroed, "w1", 0, &[0, 2, 4, 6, 9, 11, 13, 15], None);
    let removed = dir.path().join("removed.onnx");
    let r = prune_json(&zeroed, &removed, &["--channels", "0.5"]);
    let o = &r["write"]["verification"]["outputs"][0];
    assert!(o["max_abs_diff"].as_f64().unwrap() < 1e-5, "{o}");
    let r = interop(
        &[
            "onnx-pair",
            zeroed.to_str().unwrap(),
            removed.to_str().unwrap(),
        ],
        None,
    );
    assert!(r["max_abs_diff"].as_f64().unwrap() < 1e-5, "{r}");
}

/// The flags around a channel prune as users combine them: `--exclude` keeps a layer,
/// `--search` bisects the channel ratio within a gate, and tuning flags without an amount are
/// a usage error.
#[test]
fn exclude_search_and_tuning_flags_work_from_the_cli() {
    let dir = tmpdir();
    let model = fixtures().join("mlp.onnx");
    let out = dir.path().join("excluded.onnx");
    let r = prune_json(&model, &out, &["--channels", "0.5", "--exclude", "fc1"]);
    let c = &r["channels"];
    let groups = c["groups"].as_array().unwrap();
    assert!(
        groups
            .iter()
            .all(|g| !g["layers"].to_string().contains("fc1")),
        "{c}"
    );
    assert!(c["boundaries"].to_string().contains("excluded by"), "{c}");

    let data = fixtures().join("data/test_mlp_onnx.npz");
    let out = dir.path().join("searched.onnx");
    let r = prune_json(
        &model,
        &out,
        &[
            "--channels",
            "0.5",
            "--validate",
            data.to_str().unwrap(),
            "--max-accuracy-drop",
            "2",
            "--search",
            "--latency-runs",
            "0",
        ],
    );
    let s = &r["search"];
    assert_eq!(s["parameter"], "channels", "{s}");
    let chosen = s["chosen"].as_f64().unwrap();
    assert!(chosen > 0.0 && chosen < 0.5, "{s}");
    assert_eq!(r["channels"]["ratio"].as_f64().unwrap(), chosen);
    assert_eq!(r["validation"]["passed"], true);
    assert!(out.exists());

    let o = run(&[
        "prune",
        model.to_str().unwrap(),
        "-o",
        dir.path().join("none.onnx").to_str().unwrap(),
        "--sparsity",
        "0.5",
        "--importance",
        "l2",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("give --channels R"), "{}", stderr(&o));
    assert!(!dir.path().join("none.onnx").exists());
}
