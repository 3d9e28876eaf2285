//! The validation copy pare gives tract (see `verify::lower`) must mean what the file means:
//! LiteRT computes the same on both, and tract on the copy agrees with LiteRT on the original.

mod common;

use common::*;
use pare::verify::{lower_tflite, Runner, DEFAULT_SEED};
use pare::Document;
use std::fs;
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
    let dir = tmpdir();
    let mut compared = Vec::new();
    for src in tflite_fixtures() {
        let doc = Document::open(&src).unwrap();
        let runner = Runner::load(&doc).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        let (mut within_one, mut exact, mut total, mut worst_float) =
            (0usize, 0usize, 0usize, 0f64);
        for sample in 0..8 {
            // Real samples from the held-out digits set (the domain the model was trained
            // on), quantized with the model's input parameters for int8 models; seeded random
            // inputs for models without fixture data.
            let inputs = fixture_input(&src, &runner, sample)
                .unwrap_or_else(|| runner.random_inputs(DEFAULT_SEED + sample as u64).unwrap());
            let x = &inputs[0];
            let raw = dir.path().join("x.bin");
            fs::write(&raw, x.as_bytes()).unwrap();
            let dtype = match x.datum_type().unquantized() {
                DatumType::F32 => "float32",
                DatumType::I8 => "int8",
                DatumType::U8 => "uint8",
                dt => panic!("{}: input type {dt:?}", src.display()),
            };
            let shape: Vec<String> = x.shape().iter().map(|d| d.to_string()).collect();
            let litert = interop(
                &[
                    "tflite-run",
                    src.to_str().unwrap(),
                    raw.to_str().unwrap(),
                    dtype,
                    &shape.join(","),
                ],
                None,
            );
            let ours = runner.run(inputs).unwrap();
            for (i, t) in ours.iter().enumerate() {
                let quantized = t.datum_type().is_quantized();
                let mut t = t.clone();
                if quantized {
                    unsafe { t.set_datum_type(t.datum_type().unquantized()) };
                }
                let got: Vec<f64> = t
                    .cast_to::<f64>()
                    .unwrap()
                    .to_plain_array_view::<f64>()
                    .unwrap()
                    .iter()
                    .copied()
                    .collect();
                let want: Vec<f64> = litert["outputs"][i]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect();
                assert_eq!(got.len(), want.len());
                if quantized {
                    // Values are integers in quantization steps.
                    for (a, b) in got.iter().zip(&want) {
                        total += 1;
                        exact += (a == b) as usize;
                        within_one += ((a - b).abs() <= 1.0) as usize;
                    }
                } else {
                    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-6);
                    let worst = got
                        .iter()
                        .zip(&want)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f64, f64::max);
                    worst_float = worst_float.max(worst / scale);
                }
            }
        }
        let name = src.file_name().unwrap().to_string_lossy().into_owned();
        if total > 0 {
            let (e, w) = (
                exact as f64 / total as f64,
                within_one as f64 / total as f64,
            );
            eprintln!("{name}: int8 outputs vs LiteRT: {:.1}% exact, {:.1}% within one step ({total} values)", e * 100.0, w * 100.0);
            assert!(
                w >= 0.95,
                "{name}: only {:.1}% of int8 outputs within one quantization step of LiteRT",
                w * 100.0
            );
        } else {
            eprintln!("{name}: float outputs vs LiteRT: max relative diff {worst_float:.2e}");
            assert!(
                worst_float <= 1e-4,
                "{name}: tract vs LiteRT relative diff {worst_float:e}"
            );
        }
        compared.push(name);
    }
    for must in [
        "cnn.tflite",
        "mlp.tflite",
        "mobilenet.tflite",
        "cnn_int8.tflite",
        "mlp_int8.tflite",
        "mobilenet_int8.tflite",
    ] {
        assert!(
            compared.iter().any(|c| c == must),
            "tract must validate {must}; compared {compared:?}"
        );
    }
}
