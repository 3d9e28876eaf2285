//! Agreement between tract (on pare's validation copy) and LiteRT (on the file itself).

use super::*;
use pare::verify::Runner;
use std::fs;
use tract_onnx::prelude::*;

/// How tract (on the lowered copy) and LiteRT (on the file) agree over several inputs.
#[derive(Default, Debug)]
pub struct Agreement {
    /// Quantized outputs: values compared, equal, within one quantization step.
    pub int_total: usize,
    pub int_exact: usize,
    pub int_within_one: usize,
    /// Largest difference of a quantized output, in quantization steps.
    pub int_worst_steps: f64,
    /// Float outputs: largest difference relative to the output's largest magnitude.
    pub float_worst_relative: f64,
}

impl Agreement {
    pub fn ok(&self) -> bool {
        // Float: within 1e-4 relative. Int8: within one quantization step on most values (the
        // bar the validation issue sets: integer kernels round with fixed-point multipliers,
        // float emulation does not, and deep nets can amplify single-step differences).
        self.float_worst_relative <= 1e-4
            && (self.int_total == 0 || self.int_within_one as f64 >= 0.9 * self.int_total as f64)
    }

    pub fn describe(&self) -> String {
        if self.int_total > 0 {
            format!(
                "int8 outputs: {:.1}% exact, {:.1}% within one step, worst {} steps ({} values)",
                100.0 * self.int_exact as f64 / self.int_total as f64,
                100.0 * self.int_within_one as f64 / self.int_total as f64,
                self.int_worst_steps,
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
    // LiteRT on one input, or on all of them in order on one interpreter for a streaming model
    // (tract's runner carries the state the same way, from the initial one).
    let litert_on = |xs: &[Tensor]| {
        let raw = dir.path().join("x.bin");
        fs::write(
            &raw,
            xs.iter()
                .flat_map(|x| x.as_bytes().to_vec())
                .collect::<Vec<u8>>(),
        )
        .unwrap();
        let dtype = match xs[0].datum_type().unquantized() {
            DatumType::F32 => "float32",
            DatumType::I8 => "int8",
            DatumType::U8 => "uint8",
            dt => panic!("{}: input type {dt:?}", src.display()),
        };
        let shape: Vec<String> = xs[0].shape().iter().map(|d| d.to_string()).collect();
        let steps = xs.len().to_string();
        interop(
            &[
                "tflite-run",
                src.to_str().unwrap(),
                raw.to_str().unwrap(),
                dtype,
                &shape.join(","),
                "--steps",
                &steps,
            ],
            None,
        )
    };
    runner.reset_state();
    let stream = runner
        .is_streaming()
        .then(|| litert_on(&(0..n).map(|k| input(k)[0].clone()).collect::<Vec<_>>()));
    for k in 0..n {
        let inputs = input(k);
        let litert = match &stream {
            Some(runs) if n == 1 => runs.clone(),
            Some(runs) => runs[k].clone(),
            None => litert_on(&inputs[..1]),
        };
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
                    a.int_worst_steps = a.int_worst_steps.max((p - q).abs());
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
