//! Lowering a TFLite model into a *validation copy* that tract can run, keeping its meaning at
//! the shape it is validated at (dynamic dimensions fixed as in the file's `shape`).
//!
//! The copy is only ever given to tract; the model pare writes is never lowered. Each pass is
//! small, exact, and reported, so a user can see what tract actually ran:
//! - `DEQUANTIZE` of a constant (float16 storage, int8/int16 weights) is folded into a float32
//!   constant: production models widen stored weights this way and tract has no DEQUANTIZE.
//! - Shape arithmetic on constants (`SHAPE` of a static tensor, `STRIDED_SLICE` and `PACK` of
//!   constants) is folded: Keras exports compute a flatten's target shape from the dynamic batch
//!   this way, and tract refuses the shrinking strided slice and has no PACK.
//! - `MEAN` over H,W of an NHWC tensor (global average pooling) becomes `AVERAGE_POOL_2D` with a
//!   full-size filter: tract 0.23.9 computes some MEANs wrongly (the mobilenet fixture's
//!   squeeze-and-excitation pool came out as [1, 0, 0, …] where LiteRT gives [0.72, 0.42, …]).
//! - Quantized (int8/uint8/int16) graphs are emulated in float, see [`int8`].
//! - `PRELU` becomes `MAXIMUM(x, 0) + α·MINIMUM(x, 0)`; `STRIDED_SLICE` with shrink/new-axis
//!   masks on activations becomes a mask-free slice plus `RESHAPE`; an omitted (`-1`) bias
//!   becomes an explicit zero bias, where tract would panic (see [`ops`]).
//! - Buffers stored after the flatbuffer (the >2 GiB form, which tract cannot read) go inline.
//! - Sparse weights (TFLite `SparsityParameters`) are stored dense and their `DENSIFY` ops
//!   removed: tract reads the sparse buffer as if it were dense.
//! - `TRANSPOSE_CONV` and mediapipe's `Convolution2DTransposeBias` become a direct convolution
//!   (see [`tconv`]); `MIRROR_PAD` and `DEPTH_TO_SPACE` become slices, concatenations,
//!   reshapes and transposes (see [`layout`]).
//! - Resource variables (streaming state) become graph inputs and outputs the runner carries
//!   from one run to the next (see [`state`]).

mod int8;
mod layout;
mod ops;
mod state;
mod tconv;

pub use int8::{BoundaryQuant, Int8Boundary};
pub use state::StreamState;

use crate::tflite::{builtin_of, TfliteDocument};
use crate::tflite_gen::tflite as fb;
use bytes::Bytes;
use half::f16;
use serde::Serialize;
use std::collections::BTreeMap;

/// What the lowering changed, by rewrite, for the report.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Lowering {
    pub rewrites: BTreeMap<String, usize>,
    /// For an int8 model emulated in float: how to dequantize its inputs and requantize its
    /// outputs at the boundary (tract-tflite cannot cast inside the graph).
    #[serde(skip)]
    pub boundary: Option<Int8Boundary>,
    /// For a streaming model: the state its resource variables became, see [`state`].
    #[serde(skip)]
    pub state: Option<StreamState>,
}

impl Lowering {
    fn count(&mut self, what: &str) {
        *self.rewrites.entry(what.to_string()).or_insert(0) += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.rewrites.is_empty()
    }

    /// The rewrites of either of two models compared with each other (the written one may be
    /// sparse where the original is not), each kind counted as in the model that needed more.
    pub fn with(&self, other: &Lowering) -> Lowering {
        let mut both = self.clone();
        for (what, &n) in &other.rewrites {
            let e = both.rewrites.entry(what.clone()).or_insert(0);
            *e = (*e).max(n);
        }
        both
    }

    /// One line per kind of rewrite: `"DEQUANTIZE folded (×12)"`-style, sorted.
    pub fn describe(&self) -> Vec<String> {
        self.rewrites
            .iter()
            .map(|(what, n)| format!("{what} (x{n})"))
            .collect()
    }
}

/// A constant value during folding: little-endian bytes with its type and shape.
pub(super) struct Const {
    pub(super) dtype: fb::TensorType,
    pub(super) shape: Vec<i32>,
    pub(super) data: Vec<u8>,
}

/// Returns the validation copy of `doc` and what was rewritten.
pub fn lower_tflite(doc: &TfliteDocument) -> (TfliteDocument, Lowering) {
    let mut d = doc.clone();
    let mut report = Lowering::default();
    // tract has no DENSIFY and reads sparse buffers as dense: give it the dense weights.
    let densified = d.densify_all();
    if densified > 0 {
        report.rewrites.insert(
            "sparse weights densified (DENSIFY removed)".into(),
            densified,
        );
    }
    if d.offset_form {
        d.offset_form = false;
        report.count("inline large-model buffers");
    }
    report.state = state::variables(&mut d, &mut report);
    // Folding one op can make the next foldable (SHAPE → STRIDED_SLICE → PACK): repeat until
    // nothing changes. Each round removes at least one op, so this terminates.
    loop {
        let folded = fold_one(&mut d, &mut report);
        if !folded {
            break;
        }
    }
    report.boundary = int8::emulate(&mut d, &mut report);
    ops::hybrid_weights(&mut d, &mut report);
    mean_to_average_pool(&mut d, &mut report);
    ops::prelu(&mut d, &mut report);
    layout::mirror_pad(&mut d, &mut report);
    layout::depth_to_space(&mut d, &mut report);
    ops::strided_slice_masks(&mut d, &mut report);
    ops::split_as_slices(&mut d, &mut report);
    ops::fully_connected_rank2(&mut d, &mut report);
    tconv::transpose_conv(&mut d, &mut report);
    tconv::transpose_conv_bias(&mut d, &mut report);
    ops::explicit_zero_bias(&mut d, &mut report);
    (d, report)
}

/// Index of the operator code for `builtin`, added if the model has none.
pub(super) fn opcode_for(d: &mut TfliteDocument, builtin: fb::BuiltinOperator) -> u32 {
    crate::tflite::opcode_index(&mut d.model, builtin)
}

/// `MEAN` over the spatial axes of an NHWC tensor (global average pooling) →
/// `AVERAGE_POOL_2D` with a full-size VALID filter, plus a `RESHAPE` when dims are not kept.
fn mean_to_average_pool(d: &mut TfliteDocument, report: &mut Lowering) {
    let mut i = 0;
    while i < d.model.subgraphs.as_ref().unwrap()[0]
        .operators
        .as_ref()
        .map_or(0, |o| o.len())
    {
        let sg = &d.model.subgraphs.as_ref().unwrap()[0];
        let op = &sg.operators.as_ref().unwrap()[i];
        let tensors = sg.tensors.as_deref().unwrap_or(&[]);
        let is_mean =
            builtin_of(&d.model.operator_codes.as_ref().unwrap()[op.opcode_index as usize])
                == fb::BuiltinOperator::MEAN;
        let plan = is_mean
            .then(|| {
                let fb::BuiltinOptionsT::ReducerOptions(o) = &op.builtin_options else {
                    return None;
                };
                let ins = op.inputs.as_deref()?;
                let out = *op.outputs.as_deref()?.first()?;
                let x = static_shape(&tensors[*ins.first()? as usize])?;
                let mut axes = ints(&tensor_const(d, &tensors[*ins.get(1)? as usize])?)?;
                axes.iter_mut()
                    .for_each(|a| *a = if *a < 0 { *a + 4 } else { *a });
                axes.sort();
                (x.len() == 4
                    && axes == [1, 2]
                    && tensors[out as usize].type_ == fb::TensorType::FLOAT32)
                    .then(|| (ins[0], out as usize, x, o.keep_dims))
            })
            .flatten();
        let Some((input, out, x, keep_dims)) = plan else {
            i += 1;
            continue;
        };
        let pool_code = opcode_for(d, fb::BuiltinOperator::AVERAGE_POOL_2D);
        let pooled_shape = vec![x[0], 1, 1, x[3]];
        let sg = &mut d.model.subgraphs.as_mut().unwrap()[0];
        let tensors = sg.tensors.as_mut().unwrap();
        // Without keep_dims the pool writes an intermediate [N,1,1,C] tensor that a RESHAPE
        // turns into the MEAN's [N,C] output.
        let pooled = if keep_dims {
            out
        } else {
            let mut mid = tensors[out].clone();
            mid.name = Some(format!("{}/pare_pooled", mid.name.as_deref().unwrap_or("")));
            mid.shape = Some(pooled_shape.clone());
            mid.shape_signature = None;
            tensors.push(mid);
            tensors.len() - 1
        };
        let pool = fb::OperatorT {
            opcode_index: pool_code,
            inputs: Some(vec![input]),
            outputs: Some(vec![pooled as i32]),
            builtin_options: fb::BuiltinOptionsT::Pool2DOptions(Box::new(fb::Pool2DOptionsT {
                padding: fb::Padding::VALID,
                stride_w: 1,
                stride_h: 1,
                filter_width: x[2],
                filter_height: x[1],
                fused_activation_function: fb::ActivationFunctionType::NONE,
            })),
            ..Default::default()
        };
        sg.operators.as_mut().unwrap()[i] = pool;
        report.count("MEAN over H,W as AVERAGE_POOL_2D");
        if !keep_dims {
            let out_shape = static_shape(
                &d.model.subgraphs.as_ref().unwrap()[0]
                    .tensors
                    .as_ref()
                    .unwrap()[out],
            )
            .unwrap_or_default();
            let reshape_code = opcode_for(d, fb::BuiltinOperator::RESHAPE);
            let sg = &mut d.model.subgraphs.as_mut().unwrap()[0];
            let tensors = sg.tensors.as_mut().unwrap();
            tensors.push(fb::TensorT {
                name: Some(format!(
                    "{}/pare_shape",
                    tensors[out].name.as_deref().unwrap_or("")
                )),
                type_: fb::TensorType::INT32,
                has_rank: true,
                ..Default::default()
            });
            let shape_index = tensors.len() - 1;
            sg.operators.as_mut().unwrap().insert(
                i + 1,
                fb::OperatorT {
                    opcode_index: reshape_code,
                    inputs: Some(vec![pooled as i32, shape_index as i32]),
                    outputs: Some(vec![out as i32]),
                    builtin_options: fb::BuiltinOptionsT::ReshapeOptions(Box::new(
                        fb::ReshapeOptionsT {
                            new_shape: Some(out_shape.clone()),
                        },
                    )),
                    ..Default::default()
                },
            );
            let data: Vec<u8> = out_shape.iter().flat_map(|v| v.to_le_bytes()).collect();
            make_constant(
                d,
                shape_index,
                Const {
                    dtype: fb::TensorType::INT32,
                    shape: vec![out_shape.len() as i32],
                    data,
                },
            );
            i += 1;
        }
        i += 1;
    }
}

pub(super) fn tensor_const(d: &TfliteDocument, t: &fb::TensorT) -> Option<Const> {
    if t.buffer == 0 || t.sparsity.is_some() {
        return None;
    }
    let data = d.buffers.get(t.buffer as usize)?.as_ref()?;
    if data.is_empty()
        && t.shape
            .as_ref()
            .is_some_and(|s| !s.is_empty() && s.iter().all(|&x| x != 0))
    {
        return None;
    }
    Some(Const {
        dtype: t.type_,
        shape: t.shape.clone().unwrap_or_default(),
        data: data.to_vec(),
    })
}

/// Static shape of a tensor as the validation copy runs it (the file's `shape`, where dynamic
/// dimensions already hold the size the converter fixed, usually 1).
pub(super) fn static_shape(t: &fb::TensorT) -> Option<Vec<i32>> {
    let s = t.shape.as_ref()?;
    s.iter().all(|&x| x >= 0).then(|| s.clone())
}

/// Folds the first foldable op of subgraph 0; returns whether it did.
fn fold_one(d: &mut TfliteDocument, report: &mut Lowering) -> bool {
    let codes = d.model.operator_codes.clone().unwrap_or_default();
    let sg = &d.model.subgraphs.as_ref().expect("checked")[0];
    let tensors = sg.tensors.as_deref().unwrap_or(&[]);
    for (oi, op) in sg.operators.iter().flatten().enumerate() {
        let ins: Vec<i32> = op.inputs.clone().unwrap_or_default();
        let outs: Vec<i32> = op.outputs.clone().unwrap_or_default();
        if outs.len() != 1 || outs[0] < 0 {
            continue;
        }
        let out_t = &tensors[outs[0] as usize];
        let input = |i: usize| {
            ins.get(i)
                .filter(|&&x| x >= 0)
                .map(|&x| &tensors[x as usize])
        };
        let konst = |i: usize| input(i).and_then(|t| tensor_const(d, t));
        let builtin = builtin_of(&codes[op.opcode_index as usize]);
        let folded: Option<(Const, &str)> = match builtin {
            fb::BuiltinOperator::DEQUANTIZE => konst(0).and_then(|c| {
                let q = input(0)?.quantization.as_deref();
                dequantize(&c, q, out_t).map(|v| (v, "fold DEQUANTIZE of a constant"))
            }),
            fb::BuiltinOperator::SHAPE => input(0).and_then(static_shape).map(|s| {
                let data = if out_t.type_ == fb::TensorType::INT64 {
                    s.iter().flat_map(|&v| (v as i64).to_le_bytes()).collect()
                } else {
                    s.iter().flat_map(|&v| v.to_le_bytes()).collect()
                };
                (
                    Const {
                        dtype: out_t.type_,
                        shape: vec![s.len() as i32],
                        data,
                    },
                    "fold SHAPE of a static tensor",
                )
            }),
            fb::BuiltinOperator::STRIDED_SLICE => (|| {
                let (x, b, e, s) = (konst(0)?, konst(1)?, konst(2)?, konst(3)?);
                let fb::BuiltinOptionsT::StridedSliceOptions(o) = &op.builtin_options else {
                    return None;
                };
                strided_slice_1d(&x, &b, &e, &s, o).map(|v| (v, "fold STRIDED_SLICE of constants"))
            })(),
            fb::BuiltinOperator::PACK => (|| {
                let fb::BuiltinOptionsT::PackOptions(o) = &op.builtin_options else {
                    return None;
                };
                let parts: Option<Vec<Const>> = (0..ins.len()).map(konst).collect();
                pack(parts?, o.axis).map(|v| (v, "fold PACK of constants"))
            })(),
            _ => None,
        };
        if let Some((value, what)) = folded {
            let out_index = outs[0] as usize;
            make_constant(d, out_index, value);
            let ops = d.model.subgraphs.as_mut().unwrap()[0]
                .operators
                .as_mut()
                .unwrap();
            ops.remove(oi);
            report.count(what);
            return true;
        }
    }
    false
}

/// Gives tensor `index` of subgraph 0 a new buffer holding `value`.
pub(super) fn make_constant(d: &mut TfliteDocument, index: usize, value: Const) {
    let buffers = d.model.buffers.get_or_insert_with(Vec::new);
    buffers.push(fb::BufferT::default());
    d.buffers.push(Some(Bytes::from(value.data)));
    let buffer = (d.buffers.len() - 1) as u32;
    let t = &mut d.model.subgraphs.as_mut().unwrap()[0]
        .tensors
        .as_mut()
        .unwrap()[index];
    t.buffer = buffer;
    t.type_ = value.dtype;
    t.shape = Some(value.shape.clone());
    t.shape_signature = None;
    t.quantization = None;
}

/// real = scale × (q − zero_point), per tensor or along `quantized_dimension`; float16 widened.
pub(super) fn dequantize(
    c: &Const,
    q: Option<&fb::QuantizationParametersT>,
    out: &fb::TensorT,
) -> Option<Const> {
    if out.type_ != fb::TensorType::FLOAT32 {
        return None;
    }
    let values: Vec<f32> = match c.dtype {
        fb::TensorType::FLOAT16 => c
            .data
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        fb::TensorType::INT8
        | fb::TensorType::UINT8
        | fb::TensorType::INT16
        | fb::TensorType::INT32 => {
            let q = q?;
            let scale = q.scale.as_deref().filter(|s| !s.is_empty())?;
            let zero = q.zero_point.clone().unwrap_or_else(|| vec![0; scale.len()]);
            let raw: Vec<i64> = match c.dtype {
                fb::TensorType::INT8 => c.data.iter().map(|&b| b as i8 as i64).collect(),
                fb::TensorType::UINT8 => c.data.iter().map(|&b| b as i64).collect(),
                fb::TensorType::INT32 => c
                    .data
                    .chunks_exact(4)
                    .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
                    .collect(),
                _ => c
                    .data
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]) as i64)
                    .collect(),
            };
            // Elements per channel step along the quantized dimension.
            let (channels, inner) = if scale.len() > 1 {
                let axis = q.quantized_dimension.max(0) as usize;
                let dims: Vec<usize> = c.shape.iter().map(|&v| v.max(0) as usize).collect();
                let channels = *dims.get(axis)?;
                if channels != scale.len() || zero.len() != scale.len() {
                    return None;
                }
                (channels, dims[axis + 1..].iter().product::<usize>())
            } else {
                (1, 1)
            };
            // A damaged file: data that does not fill its shape, or an empty channel step.
            let numel = c
                .shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(usize::try_from(d).ok()?));
            if inner == 0 || numel != Some(raw.len()) {
                return None;
            }
            raw.iter()
                .enumerate()
                .map(|(i, &v)| {
                    let ch = if channels > 1 {
                        (i / inner) % channels
                    } else {
                        0
                    };
                    // In f64: a damaged file's zero point may be anything.
                    scale[ch] * (v as f64 - zero.get(ch).copied().unwrap_or(0) as f64) as f32
                })
                .collect()
        }
        _ => return None,
    };
    Some(Const {
        dtype: fb::TensorType::FLOAT32,
        shape: c.shape.clone(),
        data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    })
}

pub(super) fn ints(c: &Const) -> Option<Vec<i64>> {
    match c.dtype {
        fb::TensorType::INT32 => Some(
            c.data
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
                .collect(),
        ),
        fb::TensorType::INT64 => Some(
            c.data
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                .collect(),
        ),
        _ => None,
    }
}

fn from_ints(dtype: fb::TensorType, shape: Vec<i32>, v: &[i64]) -> Const {
    let data = if dtype == fb::TensorType::INT64 {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    } else {
        v.iter().flat_map(|&x| (x as i32).to_le_bytes()).collect()
    };
    Const { dtype, shape, data }
}

/// STRIDED_SLICE of a 1-D integer constant (shape arithmetic), with TensorFlow's mask rules.
fn strided_slice_1d(
    x: &Const,
    b: &Const,
    e: &Const,
    s: &Const,
    o: &fb::StridedSliceOptionsT,
) -> Option<Const> {
    if x.shape.len() != 1 || o.ellipsis_mask != 0 || o.new_axis_mask != 0 || o.offset {
        return None;
    }
    let (xv, bv, ev, sv) = (ints(x)?, ints(b)?, ints(e)?, ints(s)?);
    if bv.len() != 1 || ev.len() != 1 || sv.len() != 1 || sv[0] == 0 {
        return None;
    }
    let n = xv.len() as i64;
    let stride = sv[0];
    let norm = |v: i64| if v < 0 { v + n } else { v };
    if o.shrink_axis_mask & 1 != 0 {
        let i = norm(bv[0]);
        if !(0..n).contains(&i) {
            return None;
        }
        return Some(from_ints(x.dtype, vec![], &[xv[i as usize]]));
    }
    let (lo, hi) = if stride > 0 { (0, n) } else { (-1, n - 1) };
    let begin = if o.begin_mask & 1 != 0 {
        if stride > 0 {
            lo
        } else {
            hi
        }
    } else {
        norm(bv[0]).clamp(lo, hi)
    };
    let end = if o.end_mask & 1 != 0 {
        if stride > 0 {
            hi
        } else {
            lo
        }
    } else {
        norm(ev[0]).clamp(lo, hi)
    };
    let mut out = Vec::new();
    let mut i = begin;
    while (stride > 0 && i < end) || (stride < 0 && i > end) {
        out.push(xv[i as usize]);
        i += stride;
    }
    Some(from_ints(x.dtype, vec![out.len() as i32], &out))
}

/// PACK of scalar or 1-D integer constants along axis 0.
fn pack(parts: Vec<Const>, axis: i32) -> Option<Const> {
    let first = parts.first()?;
    if axis != 0
        || parts
            .iter()
            .any(|p| p.dtype != first.dtype || p.shape != first.shape)
        || first.shape.len() > 1
    {
        return None;
    }
    let values: Vec<i64> = parts.iter().map(ints).collect::<Option<Vec<_>>>()?.concat();
    let mut shape = vec![parts.len() as i32];
    shape.extend(&first.shape);
    Some(from_ints(first.dtype, shape, &values))
}
