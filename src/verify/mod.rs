//! Running models in tract: loading, seeded random inputs, output comparison.
//!
//! tract is a dependency we do not control and it panics on some valid files, so every call
//! into it goes through [`isolated`]: a panic becomes an ordinary "could not verify" result.
//!
//! Layer: runtime (imports its own layer and the ones below; see ARCHITECTURE.md).

mod lower;
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

/// The outcome of checking a written model against its original.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    /// True when tract ran both models on the same inputs and compared their outputs.
    pub verified: bool,
    /// Why verification could not run (tract could not load or run one of the models).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// tract loads and runs the original but not the written model: pare broke something, and
    /// the model is not written (whatever the verification policy, short of skipping it).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub regressed: bool,
    pub seed: u64,
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
        self.verified && self.outputs.iter().all(|o| o.identical)
    }

    fn regressed(reason: String) -> Self {
        Verification {
            regressed: true,
            ..Self::unverified(reason)
        }
    }

    fn unverified(reason: String) -> Self {
        Verification {
            verified: false,
            regressed: false,
            reason: Some(reason),
            seed: DEFAULT_SEED,
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
    pub identical: bool,
    pub max_abs_diff: f64,
    pub mean_abs_diff: f64,
    pub cosine: f64,
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

/// Compares two output tensors element-wise in f64.
pub fn agreement(index: usize, a: &Tensor, b: &Tensor) -> OutputAgreement {
    let identical = a == b;
    let to_f64 = |t: &Tensor| -> Option<Vec<f64>> {
        let plain = if t.datum_type().is_quantized() {
            let mut c = t.clone();
            unsafe { c.set_datum_type(t.datum_type().unquantized()) };
            c
        } else {
            t.clone()
        };
        let c = plain.cast_to::<f64>().ok()?;
        Some(
            c.to_plain_array_view::<f64>()
                .ok()?
                .iter()
                .copied()
                .collect(),
        )
    };
    let (mut max, mut sum, mut dot, mut na, mut nb) = (0f64, 0f64, 0f64, 0f64, 0f64);
    let mut n = 0usize;
    if let (Some(x), Some(y)) = (to_f64(a), to_f64(b)) {
        if x.len() == y.len() {
            for (p, q) in x.iter().zip(&y) {
                let d = (p - q).abs();
                max = max.max(d);
                sum += d;
                dot += p * q;
                na += p * p;
                nb += q * q;
            }
            n = x.len();
        } else {
            max = f64::INFINITY;
        }
    }
    let cosine = if na == 0.0 && nb == 0.0 {
        1.0
    } else if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    };
    OutputAgreement {
        index,
        shape: a.shape().to_vec(),
        identical,
        max_abs_diff: if identical { 0.0 } else { max },
        mean_abs_diff: if identical || n == 0 {
            0.0
        } else {
            sum / n as f64
        },
        cosine: if identical { 1.0 } else { cosine },
    }
}

/// Runs `original` and `candidate` in tract on the same seeded inputs and compares outputs.
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
    let inputs = match isolated("generating inputs", || a.random_inputs(seed)) {
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
    let outputs = out_a
        .iter()
        .zip(&out_b)
        .enumerate()
        .map(|(i, (x, y))| agreement(i, x, y))
        .collect();
    // Rewrites of either model (the written one may be sparse where the original is not).
    let mut lowered = a.lowered.clone();
    for (what, &n) in &b.lowered.rewrites {
        let e = lowered.rewrites.entry(what.clone()).or_insert(0);
        *e = (*e).max(n);
    }
    Ok(Verification {
        verified: true,
        regressed: false,
        reason: None,
        seed,
        lowered,
        inputs: a.inputs.clone(),
        outputs,
    })
}

/// Loads `doc` in tract at the data's `shapes`; `what` names the model in errors ("the
/// original model").
pub(crate) fn load_at(doc: &Document, shapes: &[Vec<usize>], what: &str) -> Result<Runner> {
    let runner = Runner::load_shaped(doc, Some(shapes)).map_err(|e| {
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
