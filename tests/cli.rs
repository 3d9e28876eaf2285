//! The CLI as users and pipelines call it: a spawned `pare`, its exit codes, stdout and stderr.

use crate::common::*;
use pare::onnx_pb as pb;
use prost::Message;
use std::fs;
use std::path::Path;

const OK: i32 = 0;
const ERROR: i32 = 1;
const USAGE: i32 = 2;
const VERIFICATION: i32 = 3;

fn code(o: &std::process::Output) -> i32 {
    o.status.code().expect("pare was killed by a signal")
}

/// A real model from the ONNX backend corpus: a grouped convolution exported by PyTorch.
fn conv_model() -> std::path::PathBuf {
    corpus_model("pytorch-converted/test_Conv2d_groups/")
}

#[test]
fn inspect_reports_format_io_layers_and_totals_as_json() {
    let o = run(&["inspect", "--json", conv_model().to_str().unwrap()]);
    assert_eq!(code(&o), OK, "{}", stderr(&o));
    let r = json(&o);
    assert_eq!(r["schema"], "pare.inspect/1");
    assert_eq!(r["info"]["format"], "onnx");
    assert!(r["info"]["ir_version"].as_i64().unwrap() >= 3);
    assert_eq!(r["op_histogram"]["Conv"], 1);
    let layer = &r["layers"][0];
    assert_eq!(layer["op"], "Conv");
    // Weight [6,2,3,2] (6 filters, 4 input channels in 2 groups), input [2,4,6,5] → output
    // [2,6,4,4] (checked in onnxruntime): each of the 2·4·4 positions costs 72 MACs.
    assert_eq!(layer["shape"], serde_json::json!([6, 2, 3, 2]));
    assert_eq!(layer["params"], 72);
    assert_eq!(layer["macs"], 72 * 2 * 4 * 4);
    assert_eq!(r["totals"]["params"], 78, "weights plus 6 biases");
    assert!(r["sizes"]["gzip_bytes"].as_u64().unwrap() > 0);
    assert_eq!(
        r["sizes"]["file_bytes"].as_u64().unwrap(),
        fs::metadata(conv_model()).unwrap().len()
    );
}

#[test]
fn inspect_human_output_has_the_layer_table() {
    let o = run(&["inspect", conv_model().to_str().unwrap()]);
    assert_eq!(code(&o), OK);
    let text = stdout(&o);
    for needle in [
        "format     ONNX",
        "inputs",
        "outputs",
        "Conv×1",
        "6x2x3x2",
        "params",
        "MACs",
        "with gzip -9",
        "with zstd -9",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn format_is_detected_from_content_not_extension() {
    let dir = tmpdir();
    let disguised = dir.path().join("model.tflite");
    fs::copy(conv_model(), &disguised).unwrap();
    let o = run(&["inspect", "--json", disguised.to_str().unwrap()]);
    assert_eq!(code(&o), OK, "{}", stderr(&o));
    assert_eq!(json(&o)["info"]["format"], "onnx");
}

#[test]
fn convert_without_options_is_byte_identical_and_verified() {
    let dir = tmpdir();
    let out = dir.path().join("out.onnx");
    let o = run(&[
        "convert",
        conv_model().to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code(&o), OK, "{}", stderr(&o));
    assert_eq!(fs::read(&out).unwrap(), fs::read(conv_model()).unwrap());
    let r = json(&o);
    assert_eq!(r["verification"]["verified"], true);
    assert_eq!(r["verification"]["verdict"], "agrees");
    assert_eq!(r["verification"]["outputs"][0]["identical"], true);
    assert!(stderr(&o).contains("verified: the outputs agree"));
}

#[test]
fn convert_refuses_to_replace_an_existing_file_without_force() {
    let dir = tmpdir();
    let out = dir.path().join("out.onnx");
    fs::write(&out, b"keep me").unwrap();
    let o = run(&[
        "convert",
        conv_model().to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code(&o), USAGE);
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    assert_eq!(fs::read(&out).unwrap(), b"keep me");
    let o = run(&[
        "convert",
        conv_model().to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--force",
    ]);
    assert_eq!(code(&o), OK, "{}", stderr(&o));
    assert_eq!(fs::read(&out).unwrap(), fs::read(conv_model()).unwrap());
}

#[test]
fn convert_never_overwrites_its_input_even_with_force() {
    let dir = tmpdir();
    let input = dir.path().join("in.onnx");
    fs::copy(conv_model(), &input).unwrap();
    let original = fs::read(&input).unwrap();
    let link = dir.path().join("link.onnx");
    std::os::unix::fs::symlink(&input, &link).unwrap();
    let hard = dir.path().join("hard.onnx");
    fs::hard_link(&input, &hard).unwrap();
    for target in [&input, &link, &hard] {
        let o = run(&[
            "convert",
            input.to_str().unwrap(),
            "-o",
            target.to_str().unwrap(),
            "--force",
        ]);
        assert_eq!(code(&o), USAGE, "writing over {target:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("input"), "{}", stderr(&o));
    }
    assert_eq!(fs::read(&input).unwrap(), original);
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        3,
        "no staging files left behind: {leftovers:?}"
    );
}

#[test]
fn external_data_out_and_back_in() {
    let model = corpus_model("pytorch-operator/test_operator_conv/");
    let dir = tmpdir();
    let ext = dir.path().join("ext.onnx");
    let o = run(&[
        "convert",
        model.to_str().unwrap(),
        "-o",
        ext.to_str().unwrap(),
        "--external-data",
        "--json",
    ]);
    assert_eq!(code(&o), OK, "{}", stderr(&o));
    assert_eq!(json(&o)["verification"]["checked"], true);
    let data = dir.path().join("ext.onnx.data");
    assert!(data.exists());

    // Every external tensor starts 16-byte aligned and lies inside the data file.
    let doc = pb::ModelProto::decode(&fs::read(&ext).unwrap()[..]).unwrap();
    let data_len = fs::metadata(&data).unwrap().len();
    let mut n = 0;
    for t in &doc.graph.as_ref().unwrap().initializer {
        if t.data_location == Some(1) {
            let get = |k: &str| {
                t.external_data
                    .iter()
                    .find(|e| e.key() == k)
                    .unwrap()
                    .value()
                    .to_string()
            };
            assert_eq!(get("location"), "ext.onnx.data");
            let (off, len): (u64, u64) = (
                get("offset").parse().unwrap(),
                get("length").parse().unwrap(),
            );
            assert_eq!(off % 16, 0);
            assert!(off + len <= data_len);
            assert!(len >= 1024, "small tensors stay inline");
            n += 1;
        } else {
            assert!(t.raw_data.as_ref().map_or(0, |r| r.len()) < 1024 || t.float_data.len() < 256);
        }
    }
    assert!(n > 0);

    // A model with external data keeps that layout by default ...
    let kept = dir.path().join("kept.onnx");
    let o = run(&[
        "convert",
        ext.to_str().unwrap(),
        "-o",
        kept.to_str().unwrap(),
    ]);
    assert_eq!(code(&o), OK, "{}", stderr(&o));
    assert!(dir.path().join("kept.onnx.data").exists());
    // ... and --inline-data brings back the original file exactly.
    let back = dir.path().join("back.onnx");
    let o = run(&[
        "convert",
        kept.to_str().unwrap(),
        "-o",
        back.to_str().unwrap(),
        "--inline-data",
    ]);
    assert_eq!(code(&o), OK, "{}", stderr(&o));
    assert_eq!(fs::read(&back).unwrap(), fs::read(&model).unwrap());
}

#[test]
fn external_data_file_name_must_be_plain() {
    let dir = tmpdir();
    let out = dir.path().join("o.onnx");
    let o = run(&[
        "convert",
        conv_model().to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--external-data",
        "../evil.data",
    ]);
    assert_eq!(code(&o), USAGE, "{}", stderr(&o));
    assert!(!out.exists());
}

/// Writes a one-Gemm ONNX model whose weight lives in external data at `location`.
fn model_with_external(dir: &Path, location: &str) -> std::path::PathBuf {
    let entry = |k: &str, v: &str| pb::StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v.into()),
    };
    let weight = pb::TensorProto {
        name: Some("W".into()),
        dims: vec![4, 4],
        data_type: Some(1),
        data_location: Some(1),
        external_data: vec![
            entry("location", location),
            entry("offset", "0"),
            entry("length", "64"),
        ],
        ..Default::default()
    };
    let vi = |name: &str| pb::ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: Some(1),
                shape: Some(pb::TensorShapeProto {
                    dim: vec![
                        pb::tensor_shape_proto::Dimension {
                            value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(1)),
                            ..Default::default()
                        },
                        pb::tensor_shape_proto::Dimension {
                            value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(4)),
                            ..Default::default()
                        },
                    ],
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: Some(8),
        opset_import: vec![pb::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(pb::GraphProto {
            name: Some("g".into()),
            node: vec![pb::NodeProto {
                op_type: Some("Gemm".into()),
                input: vec!["X".into(), "W".into()],
                output: vec!["Y".into()],
                ..Default::default()
            }],
            initializer: vec![weight],
            input: vec![vi("X")],
            output: vec![vi("Y")],
            ..Default::default()
        }),
        ..Default::default()
    };
    let path = dir.join("model.onnx");
    fs::write(&path, model.encode_to_vec()).unwrap();
    path
}

#[test]
fn external_data_that_escapes_the_model_folder_is_refused() {
    let outside = tmpdir();
    let secret = outside.path().join("secret.bin");
    fs::write(&secret, [7u8; 64]).unwrap();
    let dir = tmpdir();
    let model_dir = dir.path().join("m");
    fs::create_dir(&model_dir).unwrap();
    std::os::unix::fs::symlink(&secret, model_dir.join("link.bin")).unwrap();
    fs::write(dir.path().join("up.bin"), [1u8; 64]).unwrap();
    for (location, why) in [
        (secret.to_str().unwrap(), "absolute"),
        ("../up.bin", "'..'"),
        ("link.bin", "symlink"),
    ] {
        let model = model_with_external(&model_dir, location);
        let out = model_dir.join("out.onnx");
        for args in [
            vec!["inspect", model.to_str().unwrap()],
            vec![
                "convert",
                model.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
            ],
        ] {
            let o = run(&args);
            assert_eq!(code(&o), ERROR, "{location}: {}", stderr(&o));
            let err = stderr(&o);
            assert!(
                err.contains("model.onnx") && err.contains(why),
                "{location}: {err}"
            );
            assert!(!err.contains("panicked"));
        }
        assert!(!out.exists());
    }
    // The same model with its data inside the folder works.
    fs::write(model_dir.join("w.bin"), [0u8; 64]).unwrap();
    let model = model_with_external(&model_dir, "w.bin");
    let o = run(&["inspect", "--json", model.to_str().unwrap()]);
    assert_eq!(code(&o), OK, "{}", stderr(&o));
    assert_eq!(json(&o)["layers"][0]["nonzeros"], 0);
}

#[test]
fn external_data_shorter_than_declared_is_refused() {
    let dir = tmpdir();
    fs::write(dir.path().join("w.bin"), [0u8; 10]).unwrap();
    let model = model_with_external(dir.path(), "w.bin");
    let o = run(&["inspect", model.to_str().unwrap()]);
    assert_eq!(code(&o), ERROR);
    assert!(
        stderr(&o).contains("\"W\""),
        "names the tensor: {}",
        stderr(&o)
    );
}

#[test]
fn bad_inputs_get_a_clear_error_exit_1_and_no_output() {
    let dir = tmpdir();
    let good = fs::read(conv_model()).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty.onnx", vec![]),
        ("truncated.onnx", good[..good.len() / 2].to_vec()),
        (
            "text.onnx",
            b"this is not a model, just some text\n".to_vec(),
        ),
        (
            "garbage.tflite",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
        ),
        ("fake-identifier.tflite", {
            let mut v = vec![0xffu8; 64];
            v[4..8].copy_from_slice(b"TFL3");
            v
        }),
    ];
    for (name, bytes) in cases {
        let input = dir.path().join(name);
        fs::write(&input, &bytes).unwrap();
        let out = dir.path().join(format!("{name}.out"));
        for args in [
            vec!["inspect", input.to_str().unwrap()],
            vec![
                "convert",
                input.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
            ],
        ] {
            let o = run(&args);
            let err = stderr(&o);
            assert_eq!(code(&o), ERROR, "{name} {args:?}: {err}");
            assert!(
                err.starts_with("error: ") && err.contains(name),
                "{name}: {err}"
            );
            assert!(!err.contains("panicked"), "{name}: {err}");
        }
        assert!(!out.exists());
    }
    let o = run(&["inspect", dir.path().join("missing.onnx").to_str().unwrap()]);
    assert_eq!(code(&o), ERROR);
    assert!(stderr(&o).contains("missing.onnx"));
    let o = run(&["inspect", dir.path().to_str().unwrap()]);
    assert_eq!(code(&o), ERROR);
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            n.starts_with(".pare").then_some(n)
        })
        .collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
}

#[test]
fn unknown_flags_are_usage_errors() {
    let o = run(&["convert", "--frobnicate"]);
    assert_eq!(code(&o), USAGE);
    let o = run(&["inspect"]);
    assert_eq!(code(&o), USAGE);
}

#[test]
fn a_model_tract_cannot_run_is_reported_unverified_and_can_be_required() {
    // SequenceConstruct is valid ONNX that tract does not implement.
    let model = corpus_model("simple/test_sequence_model2/");
    let dir = tmpdir();
    let out = dir.path().join("seq.onnx");
    let o = run(&[
        "convert",
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code(&o), OK, "{}", stderr(&o));
    let r = json(&o);
    assert_eq!(r["verification"]["checked"], false);
    assert_eq!(r["verification"]["verified"], false);
    assert_eq!(r["verification"]["verdict"], "not_verified");
    let reason = r["verification"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("SequenceConstruct"),
        "names the op: {reason}"
    );
    assert!(stderr(&o).contains("not verified: "));
    assert!(out.exists());

    let strict = dir.path().join("strict.onnx");
    let o = run(&[
        "convert",
        model.to_str().unwrap(),
        "-o",
        strict.to_str().unwrap(),
        "--require-verified",
    ]);
    assert_eq!(code(&o), VERIFICATION, "{}", stderr(&o));
    assert!(stderr(&o).contains("SequenceConstruct"));
    assert!(
        !strict.exists(),
        "nothing written when verification is required and fails"
    );

    let fast = dir.path().join("fast.onnx");
    let o = run(&[
        "convert",
        model.to_str().unwrap(),
        "-o",
        fast.to_str().unwrap(),
        "--no-verify",
        "--json",
    ]);
    assert_eq!(code(&o), OK);
    assert!(json(&o).get("verification").is_none());
}

#[test]
fn quiet_prints_nothing_on_success() {
    let dir = tmpdir();
    let out = dir.path().join("q.onnx");
    let o = run(&[
        "convert",
        "-q",
        conv_model().to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code(&o), OK);
    assert!(o.stderr.is_empty() && o.stdout.is_empty());
}

/// When stderr is not a terminal (a CI log), long work prints a line every few seconds (here
/// every 0.05 s) naming the stage; with --quiet it prints none.
#[test]
fn long_work_prints_progress_lines_when_stderr_is_not_a_terminal() {
    let cnn = fixtures().join("cnn.onnx");
    let data = fixtures().join("data/test_cnn_onnx.npz");
    let args = |quiet: bool| {
        let mut a = vec![
            "validate".to_string(),
            cnn.display().to_string(),
            cnn.display().to_string(),
            "--data".into(),
            data.display().to_string(),
            "--latency-runs".into(),
            "3000".into(),
        ];
        if quiet {
            a.push("--quiet".into());
        }
        a
    };
    let o = pare()
        .env("PARE_PROGRESS_INTERVAL", "0.05")
        .args(args(false))
        .output()
        .unwrap();
    assert_eq!(code(&o), OK, "{}", stderr(&o));
    let lines: Vec<_> = stderr(&o)
        .lines()
        .filter(|l| l.starts_with("pare: "))
        .map(str::to_string)
        .collect();
    assert!(
        lines.iter().any(|l| l.contains(" s, timing")),
        "no progress line for the timed runs: {lines:?}"
    );
    let o = pare()
        .env("PARE_PROGRESS_INTERVAL", "0.05")
        .args(args(true))
        .output()
        .unwrap();
    assert_eq!(code(&o), OK);
    assert!(!stderr(&o).contains("pare: "), "{}", stderr(&o));
}
