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

/// How tract (on the lowered copy) and LiteRT (on the file) agree over several inputs.
#[derive(Default, Debug)]
pub struct Agreement {
    /// Quantized outputs: values compared, equal, within one quantization step.
    pub int_total: usize,
    pub int_exact: usize,
    pub int_within_one: usize,
    /// Float outputs: largest difference relative to the output's largest magnitude.
    pub float_worst_relative: f64,
}

impl Agreement {
    pub fn ok(&self) -> bool {
        self.float_worst_relative <= 1e-4
            && (self.int_total == 0 || self.int_within_one as f64 >= 0.95 * self.int_total as f64)
    }

    pub fn describe(&self) -> String {
        if self.int_total > 0 {
            format!(
                "int8 outputs: {:.1}% exact, {:.1}% within one step ({} values)",
                100.0 * self.int_exact as f64 / self.int_total as f64,
                100.0 * self.int_within_one as f64 / self.int_total as f64,
                self.int_total
            )
        } else {
            format!(
                "float outputs: max relative diff {:.2e}",
                self.float_worst_relative
            )
        }
    }
}

/// Runs `runner` (tract on the lowered copy of `src`) and LiteRT (on `src`) on the inputs
/// `input(k)` for k in 0..n, and measures their agreement.
pub fn agree_with_litert(
    src: &std::path::Path,
    runner: &Runner,
    n: usize,
    input: impl Fn(usize) -> TVec<Tensor>,
) -> Agreement {
    let dir = tmpdir();
    let mut a = Agreement::default();
    for k in 0..n {
        let inputs = input(k);
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
        let ours = runner
            .run(inputs)
            .unwrap_or_else(|e| panic!("{}: {e}", src.display()));
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
            assert_eq!(got.len(), want.len(), "{}: output {i} size", src.display());
            if quantized {
                // Values are integers in quantization steps.
                for (p, q) in got.iter().zip(&want) {
                    a.int_total += 1;
                    a.int_exact += (p == q) as usize;
                    a.int_within_one += ((p - q).abs() <= 1.0) as usize;
                }
            } else {
                let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-6);
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(p, q)| (p - q).abs())
                    .fold(0f64, f64::max);
                a.float_worst_relative = a.float_worst_relative.max(worst / scale);
            }
        }
    }
    a
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
    ] {
        assert!(
            compared.iter().any(|c| c == must),
            "tract must validate {must}; compared {compared:?}"
        );
    }
}
