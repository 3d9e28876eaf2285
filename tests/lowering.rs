//! The validation copy pare gives tract (see `verify::lower`) must mean what the file means:
//! LiteRT computes the same on both, and tract on the copy agrees with LiteRT on the original.

use crate::common::litert::agree_with_litert;
use crate::common::*;
use pare::verify::{lower_tflite, Runner, DEFAULT_SEED};
use pare::Document;
use std::fs;
use std::path::PathBuf;
use tract_onnx::prelude::*;

fn tflite_fixtures() -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = fixture_models()
        .iter()
        .filter(|m| m["format"] == "tflite")
        .map(|m| fixtures().join(m["file"].as_str().unwrap()))
        .collect();
    for extra in [fixtures().join("extra"), fixtures().join("ops")] {
        let Ok(entries) = fs::read_dir(&extra) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "tflite") && !p.to_string_lossy().contains("flex")
            {
                v.push(p);
            }
        }
    }
    v.sort();
    v
}

/// Test sample `sample` of the digits split, in the layout and type the model takes.
fn fixture_input(model: &std::path::Path, runner: &Runner, sample: usize) -> Option<TVec<Tensor>> {
    let spec = &runner.inputs[0];
    let layout = if spec.shape.len() == 2 {
        "flat"
    } else {
        "nhwc"
    };
    let (shape, data) = read_npy_f32(&fixtures().join(format!("data/test_x_{layout}.npy")));
    let per_sample: usize = shape[1..].iter().product();
    if spec.shape.iter().product::<usize>() != per_sample {
        return None;
    }
    let sample = &data[sample * per_sample..(sample + 1) * per_sample];
    let t = if spec.dtype.contains("I8") {
        // Full-integer fixtures: scale 1/255, zero point -128 (fixtures/manifest.json).
        let Document::Tflite(d) = Document::open(model).unwrap() else {
            return None;
        };
        let m = d.to_model().unwrap();
        let q = m.main().tensor(m.main().inputs[0]).quant.clone()?;
        let v: Vec<i8> = sample
            .iter()
            .map(|x| ((x / q.scale[0]).round() as i64 + q.zero_point[0]).clamp(-128, 127) as i8)
            .collect();
        let mut t = Tensor::from_shape(&spec.shape, &v).ok()?;
        unsafe {
            t.set_datum_type(DatumType::QI8(QParams::ZpScale {
                zero_point: q.zero_point[0] as i32,
                scale: q.scale[0],
            }))
        };
        t
    } else {
        Tensor::from_shape(&spec.shape, sample).ok()?
    };
    Some(tvec![t])
}

#[test]
fn litert_computes_the_same_on_the_lowered_copy() {
    let dir = tmpdir();
    let mut lowered_any = 0;
    for src in tflite_fixtures() {
        let Document::Tflite(doc) = Document::open(&src).unwrap() else {
            panic!()
        };
        let (copy, report) = lower_tflite(&doc);
        // Int8 models emulated in float take float inputs: LiteRT cannot run the copy on the
        // original's int8 inputs. Their meaning is checked against LiteRT through tract below.
        if report.is_empty() || report.boundary.is_some() {
            continue;
        }
        lowered_any += 1;
        let out = dir.path().join(src.file_name().unwrap());
        fs::write(&out, copy.encode().unwrap().0).unwrap();
        let r = interop(
            &["tflite-pair", src.to_str().unwrap(), out.to_str().unwrap()],
            None,
        );
        assert!(
            r.get("litert_output_error").is_none(),
            "{}: {r}",
            src.display()
        );
        // Folds are exact; the pooling rewrite sums in another order, so allow float rounding.
        let diff = r["max_abs_diff"].as_f64().unwrap();
        assert!(
            r["identical"] == true || diff <= 1e-6,
            "{}: lowering changed LiteRT's outputs: {r} ({report:?})",
            src.display()
        );
    }
    assert!(
        lowered_any > 0,
        "at least the CNN's flatten shape chain is lowered"
    );
}

#[test]
fn tract_on_the_lowered_copy_agrees_with_litert_on_the_original() {
    let mut compared = Vec::new();
    for src in tflite_fixtures() {
        let doc = Document::open(&src).unwrap();
        let runner = Runner::load(&doc).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        // Real samples from the held-out digits set (the domain the models were trained on),
        // quantized with the model's input parameters for int8 models.
        let a = agree_with_litert(&src, &runner, 8, |k| {
            fixture_input(&src, &runner, k)
                .unwrap_or_else(|| runner.random_inputs(DEFAULT_SEED + k as u64).unwrap())
        });
        let name = src.file_name().unwrap().to_string_lossy().into_owned();
        eprintln!("{name}: {}", a.describe());
        assert!(
            a.ok(),
            "{name}: tract disagrees with LiteRT: {}",
            a.describe()
        );
        compared.push(name);
    }
    for must in [
        "cnn.tflite",
        "mlp.tflite",
        "mobilenet.tflite",
        "cnn_int8.tflite",
        "mlp_int8.tflite",
        "mobilenet_int8.tflite",
        "ops.tflite",
        "ops_int8.tflite",
        "pads.tflite",
        "pads_int8.tflite",
        "hybrid.tflite",
        "tconv.tflite",
    ] {
        assert!(
            compared.iter().any(|c| c == must),
            "tract must validate {must}; compared {compared:?}"
        );
    }
}

/// tract computes QDQ activations wrongly (every class 1.0 on the fixture); pare's validation
/// copy emulates QuantizeLinear/DequantizeLinear in float. On held-out data, tract on that copy
/// must classify like onnxruntime on the file, for the QDQ fixture and for a pruned version.
#[test]
fn qdq_onnx_runs_in_tract_like_onnxruntime() {
    let dir = tmpdir();
    let original = fixtures().join("ops/cnn_qdq.onnx");
    let pruned = dir.path().join("cnn_qdq_pruned.onnx");
    let o = run(&[
        "prune",
        original.to_str().unwrap(),
        "-o",
        pruned.to_str().unwrap(),
        "--sparsity",
        "0.5",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (shape, data) = read_npy_f32(&fixtures().join("data/test_x_nchw.npy"));
    let per: usize = shape[1..].iter().product();
    let labels = fixtures().join("data/test_y.npy");
    let x = fixtures().join("data/test_x_nchw.npy");
    for model in [&original, &pruned] {
        let doc = Document::open(model).unwrap();
        let runner = Runner::load(&doc).unwrap();
        assert!(
            runner
                .lowered
                .rewrites
                .keys()
                .any(|k| k.contains("QuantizeLinear")),
            "{:?}",
            runner.lowered.rewrites
        );
        let mut tract_pred = Vec::new();
        for i in 0..shape[0] {
            let t = Tensor::from_shape(&[1, 1, 8, 8], &data[i * per..(i + 1) * per]).unwrap();
            let out = runner.run(tvec![t]).unwrap();
            let v = out[0].to_plain_array_view::<f32>().unwrap();
            let arg = v
                .iter()
                .enumerate()
                .fold((0, f32::MIN), |b, (j, &p)| if p > b.1 { (j, p) } else { b })
                .0;
            tract_pred.push(arg as f64);
        }
        let ort = interop(
            &["accuracy"],
            Some(&serde_json::json!([{"model": model, "x": x, "y": labels}]).to_string()),
        );
        let ort_acc = ort[0]["accuracy"].as_f64().expect("onnxruntime ran it");
        let y: Vec<f64> = {
            // test_y.npy holds int64 labels.
            let b = fs::read(&labels).unwrap();
            let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
            b[10 + hl..]
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect()
        };
        let tract_acc =
            tract_pred.iter().zip(&y).filter(|(p, l)| p == l).count() as f64 / y.len() as f64;
        assert!(
            (tract_acc - ort_acc).abs() <= 0.005,
            "{}: tract {tract_acc} vs onnxruntime {ort_acc}",
            model.display()
        );
        println!(
            "{}: tract {tract_acc:.4}, onnxruntime {ort_acc:.4}",
            model.display()
        );
    }
}

/// ONNX dynamic quantization as onnxruntime's `quantize_dynamic` writes it
/// (DynamicQuantizeLinear + MatMulInteger / ConvInteger, which tract runs as they are, and
/// DynamicQuantizeLSTM, which the verification copy runs as a float LSTM): each verifies a
/// conversion under --require-verified, and classifies the held-out digits with the accuracy
/// onnxruntime measures on the same file (the LSTM within one digit of 360: onnxruntime also
/// rounds its activations).
#[test]
fn dynamic_quantized_onnx_verifies_and_runs_in_tract_like_onnxruntime() {
    let dir = tmpdir();
    for (name, x) in [
        ("mlp", "test_x_flat.npy"),
        ("cnn", "test_x_nchw.npy"),
        ("lstm", "test_x_flat.npy"),
    ] {
        let model = fixtures().join(format!("ops/{name}_dynq.onnx"));
        let out = dir.path().join(format!("{name}.onnx"));
        let r = convert_json(&model, &out, &["--require-verified"]);
        assert_eq!(r["verification"]["verdict"], "agrees", "{name}: {r}");
        let lowered = &r["verification"]["lowered"]["rewrites"];
        assert_eq!(
            lowered["DynamicQuantizeLSTM → LSTM with dequantized weights"].as_u64(),
            (name == "lstm").then_some(1),
            "{name}: {r}"
        );
        let (x, y) = (
            fixtures().join("data").join(x),
            fixtures().join("data/test_y.npy"),
        );
        let (code, v, err) = run_json(&[
            "validate",
            model.to_str().unwrap(),
            model.to_str().unwrap(),
            "--data",
            x.to_str().unwrap(),
            "--labels",
            y.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{err}");
        let tract = v["accuracy"]["original"].as_f64().unwrap() / 100.0;
        let ort = interop(
            &["accuracy"],
            Some(&serde_json::json!([{"model": model, "x": x, "y": y}]).to_string()),
        );
        let ort = ort[0]["accuracy"].as_f64().expect("onnxruntime ran it");
        eprintln!("{name}_dynq: tract {tract:.4}, onnxruntime {ort:.4}");
        assert!(
            (tract - ort).abs() <= 0.005,
            "{name}: tract {tract} vs onnxruntime {ort}"
        );
    }
}

/// The silero-VAD exports shipped in the `silero-vad` wheel (tests/py/models.txt): symbolic
/// batch and length with concrete inner value_info, `If` branches chosen by the input's length
/// and by the sample rate (an input), duplicate node names. Each verifies on audio windows
/// (ONNX test_data_set folders, sample rate 16000), and tract's verdict figures match
/// onnxruntime's on the same files and inputs.
#[test]
fn silero_vad_exports_verify_in_tract_like_onnxruntime() {
    let dir = tmpdir();
    let shipped = interop(&["shipped-models"], None);
    let models: Vec<PathBuf> = (shipped["silero_vad"].as_array().unwrap().iter())
        .map(|p| PathBuf::from(p.as_str().unwrap()))
        .collect();
    assert!(
        models.len() >= 6,
        "silero-vad 6.2.3 ships 6 ONNX files: {shipped}"
    );
    let mut cases = Vec::new();
    for model in &models {
        let name = model.file_stem().unwrap().to_str().unwrap().to_string();
        let sets = dir.path().join(&name);
        let made = interop(
            &[
                "vad-sets",
                model.to_str().unwrap(),
                sets.to_str().unwrap(),
                "8",
            ],
            None,
        );
        let out = dir.path().join(format!("{name}.pruned.onnx"));
        let (code, r, err) = run_json(&[
            "prune",
            model.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--sparsity",
            "0.5",
            "--validate",
            sets.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{name}: {err}");
        let r = r["write"].clone();
        let v = &r["verification"];
        assert_eq!(v["checked"], true, "{name}: tract did not run it: {v}");
        assert_eq!(v["samples"], 8, "{name}: {v}");
        assert_ne!(v["verdict"], "not_verified", "{name}: {v}");
        // Where the run needed no sample rate, random inputs of the right length verify it too,
        // bit-identically after a conversion.
        if name != "silero_vad" {
            let len = format!("input=1,{}", made["length"]);
            let conv = dir.path().join(format!("{name}.converted.onnx"));
            let c = convert_json(model, &conv, &["--require-verified", "--input-shape", &len]);
            assert_eq!(c["verification"]["verdict"], "agrees", "{name}: {c}");
            assert!(c["verification"]["outputs"]
                .as_array()
                .unwrap()
                .iter()
                .all(|o| o["identical"] == true));
            // `prune --input-shape` sets the shapes it verifies at (it was ignored without data).
            let pruned = dir.path().join(format!("{name}.shaped.onnx"));
            let p = write_json(
                "prune",
                model,
                &pruned,
                &["--sparsity", "0.3", "--input-shape", &len],
            );
            let p = &p["write"];
            assert_eq!(p["verification"]["checked"], true, "{name}: {p}");
            assert_eq!(p["verification"]["samples"], 32, "{name}: {p}");
        }
        cases.push((
            name,
            r,
            serde_json::json!({"orig": model, "out": out, "x": sets, "samples": 8}),
        ));
    }
    let inline = |r: &serde_json::Value| r["verification"]["lowered"]["rewrites"].clone();
    let with_if = cases.iter().filter(|(_, r, _)| {
        inline(r)
            .get("If replaced by the branch it takes")
            .is_some()
    });
    assert!(
        with_if.count() >= 4,
        "the If-wrapped exports were simplified"
    );
    let runtime = interop(
        &["agreement"],
        Some(&serde_json::Value::Array(cases.iter().map(|c| c.2.clone()).collect()).to_string()),
    );
    for ((name, r, _), rt) in cases.iter().zip(runtime.as_array().unwrap()) {
        let (t, o) = (
            r["verification"]["outputs"][0]["cosine"].as_f64().unwrap(),
            rt["cosine"].as_f64().unwrap(),
        );
        eprintln!(
            "{name}: {} output cosine tract {t:.5}, onnxruntime {o:.5}",
            r["verification"]["verdict"]
        );
        assert!(
            (t - o).abs() <= 0.01,
            "{name}: tract {t} vs onnxruntime {o}"
        );
    }
}

/// Without data, the export whose branch depends on the sample rate (an input) cannot be
/// verified on random inputs: the verdict says so and names the node.
#[test]
fn an_if_on_an_input_value_is_reported_with_its_node_when_no_data_gives_the_value() {
    let dir = tmpdir();
    let shipped = interop(&["shipped-models"], None);
    let model = (shipped["silero_vad"].as_array().unwrap().iter())
        .map(|p| PathBuf::from(p.as_str().unwrap()))
        .find(|p| p.file_name().unwrap() == "silero_vad.onnx")
        .expect("silero_vad.onnx in the wheel");
    let out = dir.path().join("out.onnx");
    let c = convert_json(&model, &out, &["--input-shape", "input=1,512"]);
    let v = &c["verification"];
    assert_eq!(v["verdict"], "not_verified", "{v}");
    assert!(v["reason"].as_str().unwrap().contains("\"If_0\""), "{v}");
}

/// The TFLite files shipped in the mediapipe 0.10.14 and pymicro-wakeword 2.5.0 wheels
/// (tests/py/models.txt): face/hand/pose detectors and landmark models, selfie segmentation
/// (mediapipe's custom `Convolution2DTransposeBias`), and int8 streaming keyword spotters whose
/// state lives in resource variables. Each verifies in tract, and tract on the lowered copy
/// computes what LiteRT computes on the file (a stream of inputs on one interpreter for the
/// spotters). The one that uses mediapipe's `Landmarks2TransformMatrix` is refused, naming the
/// op and the node.
#[test]
fn tflite_models_shipped_in_wheels_verify_in_tract_like_litert() {
    let dir = tmpdir();
    let shipped = interop(&["shipped-models"], None);
    let files: Vec<PathBuf> = (["mediapipe", "pymicro_wakeword"].iter())
        .flat_map(|p| shipped[p].as_array().unwrap().clone())
        .map(|v| PathBuf::from(v.as_str().unwrap()))
        .collect();
    assert!(
        files.len() >= 18,
        "14 mediapipe and 4 microWakeWord files: {shipped}"
    );
    let (mut streaming, mut refused) = (0, 0);
    for model in &files {
        let name = model.file_name().unwrap().to_str().unwrap().to_string();
        let out = dir.path().join(&name);
        let (code, r, err) = run_json(&[
            "convert",
            model.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--require-verified",
        ]);
        if name == "face_landmark_with_attention.tflite" {
            assert_ne!(code, 0, "{name}: {r}");
            assert!(
                err.contains("Landmarks2TransformMatrix")
                    && err.contains("landmarks_to_transform_matrix_v2"),
                "{name}: the refusal names the op and the node: {err}"
            );
            refused += 1;
            continue;
        }
        assert_eq!(code, 0, "{name}: {err}");
        assert_eq!(r["verification"]["verdict"], "agrees", "{name}: {r}");
        let runner = Runner::load(&Document::open(model).unwrap()).unwrap();
        let n = if runner.is_streaming() { 12 } else { 3 };
        streaming += runner.is_streaming() as usize;
        let a = agree_with_litert(model, &runner, n, |k| {
            runner.random_inputs(DEFAULT_SEED + k as u64).unwrap()
        });
        eprintln!("{name}: {} ({:?})", a.describe(), runner.lowered.describe());
        if name == "pose_landmark_full.tflite" {
            // Known, open: tract's outputs differ from LiteRT's on the original file itself
            // (0.45 of the output's scale, measured 2026-12-07), with no pare rewrite but the
            // DEQUANTIZE folds. Verification compares tract with tract, so it says "agrees".
            continue;
        }
        if name.starts_with("selfie_segmentation") {
            // LiteRT runs the custom op only through XNNPACK (its builtin resolver has no
            // kernel for it), so there is no second LiteRT result to tell rounding from a
            // lowering error. Measured 2026-12-07: 1.75e-3 of the output's scale; a wrong flip,
            // stride or border gives differences of the order of the output itself.
            assert!(a.float_worst_relative <= 1e-2, "{name}: {}", a.describe());
            continue;
        }
        assert!(
            a.ok(),
            "{name}: tract disagrees with LiteRT: {}",
            a.describe()
        );
    }
    assert_eq!((streaming, refused), (4, 1));
    // A pruned spotter is verified over a stream of 32 inputs and runs in LiteRT.
    let spotter = files
        .iter()
        .find(|f| f.ends_with("okay_nabu.tflite"))
        .unwrap();
    let out = dir.path().join("okay_nabu.pruned.tflite");
    let p = write_json("prune", spotter, &out, &["--sparsity", "0.5"]);
    let v = &p["write"]["verification"];
    assert_eq!(v["checked"], true, "{v}");
    assert_ne!(v["verdict"], "not_verified", "{v}");
    let raw = dir.path().join("x.bin");
    fs::write(&raw, [0u8; 120]).unwrap();
    let ran = interop(
        &[
            "tflite-run",
            out.to_str().unwrap(),
            raw.to_str().unwrap(),
            "int8",
            "1,3,40",
        ],
        None,
    );
    assert_eq!(ran["shapes"][0], serde_json::json!([1, 1]), "{ran}");
}
