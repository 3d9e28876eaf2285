//! Running models in tract: loading, seeded random inputs, output comparison.
//!
//! tract is a dependency we do not control and it panics on some valid files, so every call
//! into it goes through [`isolated`]: a panic becomes an ordinary "could not verify" result.

mod lower;
mod shapes;

pub use lower::{lower_tflite, BoundaryQuant, Int8Boundary, Lowering};
pub use shapes::onnx_value_shapes;

use crate::document::Document;
use crate::error::Result;
use rand::{Rng, SeedableRng};
use serde::Serialize;
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

type Plan = Arc<TypedRunnableModel>;

/// A model loaded into tract, ready to run.
pub struct Runner {
    plan: Plan,
    pub inputs: Vec<InputSpec>,
    input_dts: Vec<DatumType>,
    /// Rewrites of the validation copy tract runs (TFLite), see [`lower_tflite`].
    pub lowered: Lowering,
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

impl Runner {
    /// Loads a document into tract. Dynamic input dimensions are fixed to 1.
    pub fn load(doc: &Document) -> std::result::Result<Runner, String> {
        Self::load_shaped(doc, None)
    }

    /// Loads a document into tract with the given input shapes (ONNX; a TFLite model runs at
    /// its stored shapes, which the caller can compare with [`Runner::inputs`]).
    pub fn load_shaped(
        doc: &Document,
        shapes: Option<&[Vec<usize>]>,
    ) -> std::result::Result<Runner, String> {
        match doc {
            Document::Onnx(d) => {
                // tract ignores sparse_initializer: give it the dense equivalent.
                let densified;
                let (d, sparse) = if d.dense.is_empty() {
                    (d, 0)
                } else {
                    let policy = crate::sparse::StoragePolicy::new(crate::sparse::Storage::Dense);
                    let (dd, r) = d.with_storage(&policy).map_err(|e| e.to_string())?;
                    densified = dd;
                    (&densified, r.densified)
                };
                let lowered = crate::onnx::lower::lower_for_tract(d);
                let mut runner = isolated("tract could not load the ONNX model", || {
                    let mut model = match &lowered {
                        Some((m, _)) => {
                            let mut m = m.clone();
                            d.inline_external(&mut m)
                                .map_err(|e| TractError::msg(e.to_string()))?;
                            let bytes = prost::Message::encode_to_vec(&m);
                            tract_onnx::onnx().model_for_read(&mut &bytes[..])?
                        }
                        None => onnx_inference_model(d)?,
                    };
                    for i in 0..model.inputs.len() {
                        let fact = model.input_fact(i)?.clone();
                        let dt = fact.datum_type().unwrap_or(f32::datum_type());
                        let shape = match shapes.and_then(|s| s.get(i)) {
                            Some(s) => s.iter().copied().collect(),
                            None => concrete_input_shape(&fact),
                        };
                        model.set_input_fact(i, InferenceFact::dt_shape(dt, shape))?;
                    }
                    let typed = model.into_optimized()?;
                    Runner::from_typed(typed)
                })?;
                if let Some((_, rewrites)) = lowered {
                    runner.lowered.rewrites = rewrites;
                }
                if sparse > 0 {
                    runner
                        .lowered
                        .rewrites
                        .insert("sparse initializers densified".into(), sparse);
                }
                Ok(runner)
            }
            Document::Tflite(d) => {
                let (lowered_doc, lowered) = lower_tflite(d);
                let bytes = if lowered.is_empty() && !d.edited {
                    d.source.clone()
                } else {
                    lowered_doc.encode().map_err(|e| e.to_string())?.0
                };
                let describe = |msg| describe_tflite_failure(&lowered_doc, msg);
                let mut runner =
                    isolated_with("tract could not load the TFLite model", describe, || {
                        let mut model = tract_tflite::tflite().model_for_read(&mut &bytes[..])?;
                        for i in 0..model.inputs.len() {
                            let fact = model.input_fact(i)?.clone();
                            let shape: TVec<usize> = fact
                                .shape
                                .iter()
                                .map(|d| d.to_usize().unwrap_or(1))
                                .collect();
                            model
                                .set_input_fact(i, TypedFact::dt_shape(fact.datum_type, &*shape))?;
                        }
                        Runner::from_typed(model.into_optimized()?)
                    })?;
                // An int8 model emulated in float still takes and gives int8 values from the
                // outside: same random inputs and comparable outputs as the original.
                if let Some(b) = &lowered.boundary {
                    for (i, q) in b.inputs.iter().enumerate() {
                        if let (Some(q), Some(spec)) = (q, runner.inputs.get_mut(i)) {
                            let dt = quantized_dt(q);
                            spec.dtype = format!("{dt:?}");
                            runner.input_dts[i] = dt;
                        }
                    }
                }
                runner.lowered = lowered;
                Ok(runner)
            }
        }
    }

    fn from_typed(model: TypedModel) -> TractResult<Runner> {
        let mut inputs = Vec::new();
        let mut input_dts = Vec::new();
        for i in 0..model.inputs.len() {
            let fact = model.input_fact(i)?;
            let shape = fact
                .shape
                .as_concrete()
                .map(|s| s.to_vec())
                .ok_or_else(|| {
                    TractError::msg(format!(
                        "input {i} has a shape tract cannot make concrete: {:?}",
                        fact.shape
                    ))
                })?;
            inputs.push(InputSpec {
                index: i,
                dtype: format!("{:?}", fact.datum_type),
                shape,
            });
            input_dts.push(fact.datum_type);
        }
        let plan = model.into_runnable()?;
        Ok(Runner {
            plan,
            inputs,
            input_dts,
            lowered: Lowering::default(),
        })
    }

    /// The tract type of each input (quantized types carry their scale and zero point).
    pub fn input_datum_types(&self) -> &[DatumType] {
        &self.input_dts
    }

    /// Seeded random inputs: floats uniform in [-1, 1), 8-bit integers over their full range,
    /// wider integers in [0, 4) (small enough to be valid indices), booleans at random.
    pub fn random_inputs(&self, seed: u64) -> TractResult<TVec<Tensor>> {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        self.inputs
            .iter()
            .zip(&self.input_dts)
            .map(|(spec, &dt)| random_tensor(&mut rng, dt, &spec.shape))
            .collect()
    }

    pub fn run(&self, inputs: TVec<Tensor>) -> std::result::Result<TVec<Tensor>, String> {
        let boundary = self.lowered.boundary.as_ref();
        isolated("tract could not run the model", || {
            let inputs = inputs
                .into_iter()
                .enumerate()
                .map(
                    |(i, t)| match boundary.and_then(|b| b.inputs.get(i).copied().flatten()) {
                        Some(q) => dequantize_tensor(&t, q),
                        None => Ok(t),
                    },
                )
                .collect::<TractResult<TVec<Tensor>>>()?;
            let out = self
                .plan
                .run(inputs.into_iter().map(|t| t.into_tvalue()).collect())?;
            out.into_iter()
                .enumerate()
                .map(
                    |(i, v)| match boundary.and_then(|b| b.outputs.get(i).copied().flatten()) {
                        Some(q) => quantize_tensor(&v.into_tensor(), q),
                        None => Ok(v.into_tensor()),
                    },
                )
                .collect()
        })
    }
}

fn quantized_dt(q: &BoundaryQuant) -> DatumType {
    let qp = QParams::ZpScale {
        zero_point: q.zero_point as i32,
        scale: q.scale,
    };
    match (q.min, q.max) {
        (0, 255) => DatumType::QU8(qp),
        (-128, 127) => DatumType::QI8(qp),
        _ => DatumType::I16,
    }
}

/// Real values of a quantized tensor, as float32.
fn dequantize_tensor(t: &Tensor, q: BoundaryQuant) -> TractResult<Tensor> {
    let mut plain = t.clone();
    if plain.datum_type().is_quantized() {
        unsafe { plain.set_datum_type(plain.datum_type().unquantized()) };
    }
    let ints = plain.cast_to::<i64>()?;
    let v: Vec<f32> = ints
        .to_plain_array_view::<i64>()?
        .iter()
        .map(|&x| q.scale * (x - q.zero_point) as f32)
        .collect();
    Tensor::from_shape(t.shape(), &v)
}

/// Quantizes float values onto `q` (round half away from zero, saturating), in the original
/// model's output type.
fn quantize_tensor(t: &Tensor, q: BoundaryQuant) -> TractResult<Tensor> {
    let f = t.cast_to::<f32>()?;
    let ints: Vec<i64> = f
        .to_plain_array_view::<f32>()?
        .iter()
        .map(|&x| ((x / q.scale).round() as i64 + q.zero_point).clamp(q.min, q.max))
        .collect();
    let dt = quantized_dt(&q);
    let mut out = Tensor::from_shape(t.shape(), &ints)?
        .cast_to_dt(dt.unquantized())?
        .into_owned();
    if dt.is_quantized() {
        unsafe { out.set_datum_type(dt) };
    }
    Ok(out)
}

pub(crate) fn random_tensor(
    rng: &mut impl Rng,
    dt: DatumType,
    shape: &[usize],
) -> TractResult<Tensor> {
    // A declared input shape is data from the file: bound it before allocating.
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_INPUT_ELEMENTS)
        .ok_or_else(|| {
            TractError::msg(format!(
                "an input of shape {shape:?} is too large to run (more than {MAX_INPUT_ELEMENTS} elements)"
            ))
        })?;
    let unq = dt.unquantized();
    let mut t = match unq {
        DatumType::F32 | DatumType::F64 | DatumType::F16 => {
            let v: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
            Tensor::from_shape(shape, &v)?.cast_to_dt(unq)?.into_owned()
        }
        DatumType::I8 => {
            Tensor::from_shape(shape, &(0..n).map(|_| rng.gen::<i8>()).collect::<Vec<_>>())?
        }
        DatumType::U8 => {
            Tensor::from_shape(shape, &(0..n).map(|_| rng.gen::<u8>()).collect::<Vec<_>>())?
        }
        DatumType::Bool => Tensor::from_shape(
            shape,
            &(0..n).map(|_| rng.gen::<bool>()).collect::<Vec<_>>(),
        )?,
        _ => {
            let v: Vec<i64> = (0..n).map(|_| rng.gen_range(0..4i64)).collect();
            Tensor::from_shape(shape, &v)?.cast_to_dt(unq)?.into_owned()
        }
    };
    if dt.is_quantized() {
        // Safety: same storage type; only the quantization parameters are attached.
        unsafe { t.set_datum_type(dt) };
    }
    Ok(t)
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
