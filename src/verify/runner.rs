//! A model loaded in tract and run: loading at concrete shapes (through the lowered copy for
//! TFLite), quantized boundaries, seeded random inputs, and each run isolated from panics.

use super::lower::{lower_tflite, BoundaryQuant, Lowering, StreamState};
use super::{
    concrete_input_shape, describe_tflite_failure, isolated, isolated_with, InputSpec,
    MAX_INPUT_ELEMENTS,
};
use crate::document::Document;
use rand::{Rng, SeedableRng};
use std::sync::Mutex;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::DimLike;

pub(super) type Plan = Arc<TypedRunnableModel>;

/// A model loaded into tract, ready to run.
pub struct Runner {
    pub(super) plan: Plan,
    pub inputs: Vec<InputSpec>,
    pub(super) input_dts: Vec<DatumType>,
    /// Rewrites of the validation copy tract runs (TFLite), see [`lower_tflite`].
    pub lowered: Lowering,
    /// Input values the copy was specialised to (ONNX scalar settings): every run must feed
    /// these values.
    settings: Vec<Option<Tensor>>,
    /// A streaming model's state (its resource variables), carried from one run to the next.
    stream: Option<Stream>,
}

/// The state inputs the plan takes after the model's own, and their values for the next run.
struct Stream {
    spec: StreamState,
    initial: Vec<Tensor>,
    current: Mutex<Vec<Tensor>>,
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
        Self::load_specialised(doc, shapes, &[])
    }

    /// [`Runner::load_shaped`], with the ONNX copy specialised to the values of `settings`
    /// (by input index; see the data's `Dataset::settings`).
    pub fn load_specialised(
        doc: &Document,
        shapes: Option<&[Vec<usize>]>,
        settings: &[Option<Tensor>],
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
                let mut runner = isolated("tract could not load the ONNX model", || {
                    let (mut model, rewrites) = super::onnx_copy::load(d, shapes, settings)?;
                    for i in 0..model.inputs.len() {
                        let fact = model.input_fact(i)?.clone();
                        let dt = fact.datum_type().unwrap_or(f32::datum_type());
                        let shape = match shapes.and_then(|s| s.get(i)) {
                            Some(s) => s.iter().copied().collect(),
                            None => concrete_input_shape(&fact),
                        };
                        model.set_input_fact(i, InferenceFact::dt_shape(dt, shape))?;
                    }
                    let mut runner = Runner::from_typed(model.into_optimized()?)?;
                    runner.lowered.rewrites = rewrites;
                    if runner
                        .lowered
                        .rewrites
                        .contains_key(super::onnx_copy::IF_INLINED)
                    {
                        runner.settings = settings.to_vec();
                    }
                    Ok(runner)
                })?;
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
                if let Some(spec) = lowered.state.clone() {
                    runner.carry(spec)?;
                }
                runner.lowered = lowered;
                Ok(runner)
            }
        }
    }

    pub(super) fn from_typed(model: TypedModel) -> TractResult<Runner> {
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
            settings: vec![],
            stream: None,
        })
    }

    /// Hides the state inputs `spec` names (the last ones) behind [`Runner::run`], which feeds
    /// them the initial values, then each run's state outputs.
    fn carry(&mut self, spec: StreamState) -> std::result::Result<(), String> {
        let own = (self.inputs.len().checked_sub(spec.inputs.len()))
            .ok_or("the copy has fewer inputs than state inputs")?;
        if spec.inputs.iter().enumerate().any(|(k, &i)| i != own + k) {
            return Err("the state inputs are not the last inputs of the copy".into());
        }
        let initial = (spec.inputs.iter().zip(&spec.initial))
            .map(|(&i, bytes)| {
                let shape = &self.inputs[i].shape;
                unsafe { Tensor::from_raw_dt(self.input_dts[i], shape, bytes) }
                    .map_err(|e| format!("state input {i}: {e}"))
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        self.inputs.truncate(own);
        self.input_dts.truncate(own);
        self.stream = Some(Stream {
            spec,
            current: Mutex::new(initial.clone()),
            initial,
        });
        Ok(())
    }

    /// Whether runs carry a state (a streaming model's resource variables) from one to the next.
    pub fn is_streaming(&self) -> bool {
        self.stream.is_some()
    }

    /// Starts the stream again from the model's initial state (no-op without one).
    pub fn reset_state(&self) {
        if let Some(s) = &self.stream {
            *s.current.lock().unwrap_or_else(|e| e.into_inner()) = s.initial.clone();
        }
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
        for (i, (setting, given)) in self.settings.iter().zip(&inputs).enumerate() {
            if let Some(v) = setting.as_ref().filter(|v| *v != given) {
                return Err(format!(
                    "input {i} is a setting the copy tract runs was specialised to ({v:?}, \
                     the first sample's value), and a later sample has {given:?}: give data \
                     with one value of it"
                ));
            }
        }
        let boundary = self.lowered.boundary.as_ref();
        let mut state = self
            .stream
            .as_ref()
            .map(|s| s.current.lock().unwrap_or_else(|e| e.into_inner()));
        let mut inputs = inputs;
        if let Some(current) = &state {
            inputs.extend(current.iter().cloned());
        }
        let mut outputs = isolated("tract could not run the model", || {
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
                .collect::<TractResult<TVec<Tensor>>>()
        })?;
        if let (Some(current), Some(stream)) = (state.as_mut(), &self.stream) {
            // The next run reads the raw values this one wrote, in the state input's type.
            for (k, &o) in stream.spec.outputs.iter().enumerate() {
                let (Some(written), into) = (outputs.get(o), &current[k]) else {
                    return Err(format!("tract gave no state output {o}"));
                };
                if written.as_bytes().len() != into.as_bytes().len() {
                    return Err(format!(
                        "state output {o} ({:?}) does not fit its state input ({:?})",
                        written.shape(),
                        into.shape()
                    ));
                }
                let next = unsafe {
                    Tensor::from_raw_dt(into.datum_type(), into.shape(), written.as_bytes())
                };
                current[k] = next.map_err(|e| format!("state output {o}: {e}"))?;
            }
            outputs.truncate(outputs.len() - stream.spec.outputs.len());
        }
        Ok(outputs)
    }
}

pub(super) fn quantized_dt(q: &BoundaryQuant) -> DatumType {
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
pub(super) fn dequantize_tensor(t: &Tensor, q: BoundaryQuant) -> TractResult<Tensor> {
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
pub(super) fn quantize_tensor(t: &Tensor, q: BoundaryQuant) -> TractResult<Tensor> {
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
