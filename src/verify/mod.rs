//! Running models in tract: loading, seeded random inputs, output comparison.
//!
//! tract is a dependency we do not control and it panics on some valid files, so every call
//! into it goes through [`isolated`]: a panic becomes an ordinary "could not verify" result.
//!
//! Layer: runtime (imports its own layer and the ones below; see ARCHITECTURE.md).

pub(crate) mod agreement;
mod lower;
mod onnx_copy;
mod runner;
mod shapes;

pub(crate) use runner::random_tensor;
pub use runner::Runner;

use crate::document::Document;
use crate::error::Result;
pub use lower::{lower_tflite, BoundaryQuant, Int8Boundary, Lowering};
use serde::Serialize;
pub use shapes::onnx_value_shapes;
use std::sync::Mutex;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;
use tract_onnx::tract_hir::internal::DimLike;

/// A concrete shape for an ONNX input fact: known dims kept, unknown ones (and an unknown
/// rank's dims) set to 1.
pub(crate) fn concrete_input_shape(fact: &InferenceFact) -> TVec<usize> {
    let rank = fact
        .shape
        .rank()
        .concretize()
        .map(|r| r.max(0) as usize)
        .unwrap_or(0);
    (0..rank)
        .map(|ax| {
            fact.shape
                .dim(ax)
                .and_then(|d| d.concretize())
                .and_then(|d| d.to_usize().ok())
                .unwrap_or(1)
        })
        .collect()
}

/// Largest input tensor pare generates for a run (2^28 elements: 1 GiB of f32).
pub const MAX_INPUT_ELEMENTS: usize = 1 << 28;

/// Seed of the random inputs used to compare a written model with its original.
pub const DEFAULT_SEED: u64 = 0x7061_7265; // "pare"

/// Random samples a verification runs (seeds `seed`, `seed + 1`, …).
pub const SAMPLES: u64 = 16;

/// An output agrees when its cosine similarity with the original's, per sample and averaged
/// over the samples (dequantized values), is at least this.
pub const MIN_COSINE: f64 = 0.95;

/// A classifier-like output (one score per class per sample) agrees when, besides the
/// cosine, at least this fraction of the samples keep their arg-max.
pub const MIN_TOP1_AGREEMENT: f64 = 0.9;

/// What a verification found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// tract ran both models and every output agrees ([`MIN_COSINE`], [`MIN_TOP1_AGREEMENT`]).
    Agrees,
    /// tract ran both models and some output does not agree: the model changed in meaning.
    Diverges,
    /// tract could not run one of the models: nothing was compared.
    NotVerified,
}

/// The outcome of checking a written model against its original.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub verdict: Verdict,
    /// True when the verdict is [`Verdict::Agrees`]: tract ran both models on the same inputs
    /// and their outputs agree.
    pub verified: bool,
    /// True when tract ran both models and compared their outputs (whatever it found).
    pub checked: bool,
    /// Why the outputs diverge, or why verification could not run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// tract loads and runs the original but not the written model: pare broke something, and
    /// the model is not written (whatever the verification policy, short of skipping it).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub regressed: bool,
    pub seed: u64,
    /// What both models ran on: `"random"` (seeded random inputs) or the data's path.
    pub on: String,
    /// Samples both models ran on.
    pub samples: u64,
    pub min_cosine: f64,
    pub min_top1_agreement: f64,
    /// Rewrites applied to a validation copy so that tract can run the model (the written
    /// file is never lowered); empty when tract ran the file as it is.
    #[serde(skip_serializing_if = "Lowering::is_empty")]
    pub lowered: Lowering,
    pub inputs: Vec<InputSpec>,
    pub outputs: Vec<OutputAgreement>,
}

impl Verification {
    /// True when verification ran and every output is bit-identical.
    pub fn identical(&self) -> bool {
        self.checked && self.outputs.iter().all(|o| o.identical)
    }

    pub(crate) fn regressed(reason: String) -> Self {
        Verification {
            regressed: true,
            ..Self::unverified(reason)
        }
    }

    pub(crate) fn unverified(reason: String) -> Self {
        Verification {
            verdict: Verdict::NotVerified,
            verified: false,
            checked: false,
            regressed: false,
            reason: Some(reason),
            seed: DEFAULT_SEED,
            on: String::new(),
            samples: 0,
            min_cosine: MIN_COSINE,
            min_top1_agreement: MIN_TOP1_AGREEMENT,
            lowered: Lowering::default(),
            inputs: vec![],
            outputs: vec![],
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct InputSpec {
    pub index: usize,
    pub dtype: String,
    pub shape: Vec<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutputAgreement {
    pub index: usize,
    pub shape: Vec<usize>,
    /// Bit-identical on every sample.
    pub identical: bool,
    pub max_abs_diff: f64,
    pub mean_abs_diff: f64,
    /// Cosine similarity per sample (dequantized values), averaged over the samples.
    pub cosine: f64,
    pub cosine_min: f64,
    /// One score per class per sample: top-1 agreement applies.
    pub classifier: bool,
    /// Fraction of the samples whose arg-max is unchanged (classifier-like outputs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top1_agreement: Option<f64>,
    /// NaN or infinite values in the written model's output.
    pub candidate_nonfinite: u64,
    /// Identical, or within [`MIN_COSINE`] and [`MIN_TOP1_AGREEMENT`] with no new non-finite value.
    pub agrees: bool,
}

impl OutputAgreement {
    fn new(s: agreement::Stats, identical: bool) -> Self {
        let agrees = identical
            || (s.cosine_mean >= MIN_COSINE
                && s.top1_agreement.is_none_or(|t| t >= MIN_TOP1_AGREEMENT)
                && s.candidate_nonfinite == 0);
        OutputAgreement {
            index: s.index,
            shape: s.shape,
            identical,
            max_abs_diff: if identical { 0.0 } else { s.max_abs_diff },
            mean_abs_diff: if identical { 0.0 } else { s.mean_abs_diff },
            cosine: if identical { 1.0 } else { s.cosine_mean },
            cosine_min: if identical { 1.0 } else { s.cosine_min },
            classifier: s.classifier,
            top1_agreement: if identical {
                s.top1_agreement.map(|_| 1.0)
            } else {
                s.top1_agreement
            },
            candidate_nonfinite: s.candidate_nonfinite,
            agrees,
        }
    }

    /// What falls short, in words ("output 0: cosine 0.18 < 0.95, top-1 agreement 12% < 90%").
    fn shortfall(&self) -> String {
        let mut parts = Vec::new();
        if self.cosine < MIN_COSINE {
            parts.push(format!("cosine {:.3} < {MIN_COSINE}", self.cosine));
        }
        if let Some(t) = self.top1_agreement.filter(|&t| t < MIN_TOP1_AGREEMENT) {
            parts.push(format!(
                "top-1 agreement {:.0}% < {:.0}%",
                100.0 * t,
                100.0 * MIN_TOP1_AGREEMENT
            ));
        }
        if self.candidate_nonfinite > 0 {
            parts.push(format!("{} NaN/infinite values", self.candidate_nonfinite));
        }
        format!("output {}: {}", self.index, parts.join(", "))
    }
}

static PANIC_MESSAGE: Mutex<Option<String>> = Mutex::new(None);

/// Runs `f`, turning a panic into an error carrying the panic's message. The default panic
/// hook is silenced meanwhile, so a tract panic does not spray a backtrace over pare's output.
pub fn isolated<T>(
    what: &str,
    f: impl FnOnce() -> TractResult<T>,
) -> std::result::Result<T, String> {
    isolated_with(what, |m| m, f)
}

/// [`isolated`], with `describe` rewriting tract's error message for the user.
fn isolated_with<T>(
    what: &str,
    describe: impl FnOnce(String) -> String,
    f: impl FnOnce() -> TractResult<T>,
) -> std::result::Result<T, String> {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        let msg = if let Some(s) = info.payload().downcast_ref::<&str>() {
            s.to_string()
        } else if let Some(s) = info.payload().downcast_ref::<String>() {
            s.clone()
        } else {
            "unknown panic".to_string()
        };
        let loc = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        *PANIC_MESSAGE.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{msg}{loc}"));
    }));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(previous);
    match result {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {}", describe(error_chain(&e)))),
        Err(_) => {
            let msg = PANIC_MESSAGE
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .unwrap_or_default();
            Err(format!("{what}: tract panicked ({msg})"))
        }
    }
}

/// tract's error chain on one line (its messages embed multi-line Debug dumps).
fn error_chain(e: &TractError) -> String {
    let parts: Vec<String> = e
        .chain()
        .map(|c| {
            c.to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    parts.join(": ")
}

/// tract-tflite reports an untranslatable operator by dumping it; name the op and the node
/// instead (TFLite operators are known by their first output tensor), keeping tract's reason.
fn describe_tflite_failure(doc: &crate::tflite::TfliteDocument, msg: String) -> String {
    let Some(rest) = msg
        .split_once("Translating proto-op from Tflite into tract op: Operator {")
        .map(|(_, r)| r)
    else {
        return msg;
    };
    let opcode = rest
        .split_once("opcode_index: ")
        .and_then(|(_, r)| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<u32>().ok());
    let output = rest
        .split_once("outputs: Some( [ ")
        .and_then(|(_, r)| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<usize>().ok());
    let reason = msg.rsplit(": ").next().unwrap_or_default();
    let sg = &doc.model.subgraphs.as_ref().expect("checked when read")[0];
    let op = opcode
        .filter(|&o| (o as usize) < doc.model.operator_codes.as_ref().map_or(0, |c| c.len()))
        .map(|o| crate::tflite::op_name(&doc.model.operator_codes.as_ref().unwrap()[o as usize]))
        .unwrap_or_else(|| "an operator".into());
    let node = output
        .and_then(|t| sg.tensors.as_ref()?.get(t)?.name.clone())
        .map(|n| format!(" node {n:?}"))
        .unwrap_or_default();
    format!("tract cannot translate {op}{node}: {reason}")
}

/// Parses an ONNX document into tract. With external data, tract reads the files itself
/// (relative to the model's folder): no inlined copy of the weights, no 2 GiB protobuf limit.
/// A document edited in memory is encoded (external tensors stay references) and parsed with
/// the original's folder, so tract sees the edits and the untouched external weights.
pub(crate) fn onnx_inference_model(d: &crate::onnx::OnnxDocument) -> TractResult<InferenceModel> {
    if d.edited {
        let bytes = prost::Message::encode_to_vec(&d.model);
        let proto: tract_onnx::pb::ModelProto = prost::Message::decode(&bytes[..])?;
        let dir = d.base_dir().to_str().map(str::to_string);
        let parsed = tract_onnx::onnx().parse(&proto, dir.as_deref())?;
        if !parsed.unresolved_inputs.is_empty() {
            return Err(TractError::msg(format!(
                "could not resolve inputs at top-level: {:?}",
                parsed.unresolved_inputs
            )));
        }
        return Ok(parsed.model);
    }
    if d.external_locations().is_empty() {
        let bytes = d
            .inlined_bytes()
            .map_err(|e| TractError::msg(e.to_string()))?;
        tract_onnx::onnx().model_for_read(&mut &bytes[..])
    } else {
        tract_onnx::onnx().model_for_path(&d.path)
    }
}

/// Runs `original` and `candidate` in tract on the same [`SAMPLES`] seeded random inputs and
/// compares their outputs ([`Verdict`]).
pub fn compare(original: &Document, candidate: &Document, seed: u64) -> Result<Verification> {
    let a = match Runner::load(original) {
        Ok(r) => r,
        Err(e) => return Ok(Verification::unverified(format!("original model: {e}"))),
    };
    let b = match Runner::load(candidate) {
        Ok(r) => r,
        Err(e) => return Ok(Verification::regressed(format!("written model: {e}"))),
    };
    if a.inputs != b.inputs {
        return Ok(Verification::regressed(format!(
            "the written model's inputs {:?} differ from the original's {:?}",
            b.inputs, a.inputs
        )));
    }
    let mut accs: Vec<agreement::Accumulator> = Vec::new();
    let mut identical: Vec<bool> = Vec::new();
    for k in 0..SAMPLES {
        crate::cancel::check()?;
        let inputs = match isolated("generating inputs", || {
            a.random_inputs(seed.wrapping_add(k))
        }) {
            Ok(i) => i,
            Err(e) => return Ok(Verification::unverified(e)),
        };
        let out_a = match a.run(inputs.clone()) {
            Ok(o) => o,
            Err(e) => return Ok(Verification::unverified(format!("original model: {e}"))),
        };
        let out_b = match b.run(inputs) {
            Ok(o) => o,
            Err(e) => return Ok(Verification::regressed(format!("written model: {e}"))),
        };
        if out_a.len() != out_b.len() {
            return Ok(Verification::regressed(format!(
                "output count differs: {} vs {}",
                out_a.len(),
                out_b.len()
            )));
        }
        if accs.is_empty() {
            // One sample per run: an output with a leading 1 has one row, others are one row.
            accs = (out_a.iter().enumerate())
                .map(|(i, t)| agreement::Accumulator::new(i, t.shape(), 1))
                .collect();
            identical = vec![true; out_a.len()];
        }
        for (i, (x, y)) in out_a.iter().zip(&out_b).enumerate() {
            let values =
                agreement::real_values(x).and_then(|vx| Ok((vx, agreement::real_values(y)?)));
            let (vx, vy) = match values {
                Ok(v) => v,
                Err(e) => return Ok(Verification::unverified(e.to_string())),
            };
            if vx.len() != vy.len() || x.shape() != accs[i].shape.as_slice() {
                return Ok(Verification::regressed(format!(
                    "output {i}: the written model's shape {:?} differs from the original's {:?}",
                    y.shape(),
                    x.shape()
                )));
            }
            identical[i] &= x == y;
            accs[i].add(&vx, &vy, 1);
        }
    }
    let lowered = a.lowered.with(&b.lowered);
    let outputs = accs
        .into_iter()
        .zip(identical)
        .map(|(acc, same)| (acc.finish(), same))
        .collect();
    let mut v = Verification::judge(outputs, "random".into(), SAMPLES, a.inputs.clone());
    v.seed = seed;
    v.lowered = lowered;
    Ok(v)
}

impl Verification {
    /// The verdict on outputs both models computed from the same `samples` inputs (`on`: what
    /// they were), each output's statistics with whether it was bit-identical.
    pub(crate) fn judge(
        outputs: Vec<(agreement::Stats, bool)>,
        on: String,
        samples: u64,
        inputs: Vec<InputSpec>,
    ) -> Verification {
        let outputs: Vec<OutputAgreement> = outputs
            .into_iter()
            .map(|(s, same)| OutputAgreement::new(s, same))
            .collect();
        let diverging: Vec<String> = outputs
            .iter()
            .filter(|o| !o.agrees)
            .map(OutputAgreement::shortfall)
            .collect();
        let verdict = if diverging.is_empty() {
            Verdict::Agrees
        } else {
            Verdict::Diverges
        };
        let inputs_were = if on == "random" {
            format!("{samples} seeded random inputs")
        } else {
            format!("{samples} samples of {on}")
        };
        Verification {
            verdict,
            verified: verdict == Verdict::Agrees,
            checked: true,
            regressed: false,
            reason: (!diverging.is_empty()).then(|| {
                format!(
                    "the outputs diverge from the original's on {inputs_were} ({})",
                    diverging.join("; ")
                )
            }),
            seed: DEFAULT_SEED,
            on,
            samples,
            min_cosine: MIN_COSINE,
            min_top1_agreement: MIN_TOP1_AGREEMENT,
            lowered: Lowering::default(),
            inputs,
            outputs,
        }
    }
}

/// Loads `doc` in tract at the data's `shapes`, specialised to its `settings` (see
/// the data's `Dataset::settings`); `what` names the model in errors ("the original model").
pub(crate) fn load_at(
    doc: &Document,
    shapes: &[Vec<usize>],
    settings: &[Option<Tensor>],
    what: &str,
) -> Result<Runner> {
    let runner = Runner::load_specialised(doc, Some(shapes), settings).map_err(|e| {
        crate::error::Error::unsupported(doc.path(), format!("cannot run {what} in tract: {e}"))
    })?;
    for (i, (spec, want)) in runner.inputs.iter().zip(shapes).enumerate() {
        if &spec.shape != want {
            return Err(crate::error::Error::Usage(format!(
                "{}: input {i} runs in tract at shape {:?}, the data has {:?} per run",
                doc.path().display(),
                spec.shape,
                want
            )));
        }
    }
    Ok(runner)
}
