//! Float emulation of quantized TFLite graphs, for tract.
//!
//! tract-tflite 0.23.9 refuses most int8 kernels (FULLY_CONNECTED, ADD, MUL with different
//! scales) and has no QUANTIZE, DEQUANTIZE or CAST to work around them. The validation copy
//! therefore computes in float on dequantized values: quantized constants become their float
//! values, every quantized activation becomes float32, and after each op that produced one, the
//! value is snapped back onto that tensor's quantization grid with ops tract has:
//!
//! `y = s · max(lo − zp, min(hi − zp, floor(x / s + 0.5)))`
//!
//! so each tensor holds exactly a value its int8 counterpart can hold. Integer kernels use
//! fixed-point multipliers and may round a few elements the other way: outputs agree with
//! LiteRT to within one quantization step on most elements, not bit for bit. The graph's
//! inputs and outputs stay quantized from the outside: the runner dequantizes inputs and
//! requantizes outputs (see [`Int8Boundary`]).

use super::{dequantize, make_constant, opcode_for, static_shape, tensor_const, Const, Lowering};
use crate::tflite::{builtin_of, TfliteDocument};
use crate::tflite_gen::tflite as fb;

/// Quantization of one graph input or output in the original model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoundaryQuant {
    pub scale: f32,
    pub zero_point: i64,
    pub min: i64,
    pub max: i64,
}

/// Per graph input and output: `Some` where the original is quantized and the emulated copy
/// takes or gives float values.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Int8Boundary {
    pub inputs: Vec<Option<BoundaryQuant>>,
    pub outputs: Vec<Option<BoundaryQuant>>,
}

fn range(t: fb::TensorType) -> Option<(i64, i64)> {
    match t {
        fb::TensorType::INT8 => Some((-128, 127)),
        fb::TensorType::UINT8 => Some((0, 255)),
        fb::TensorType::INT16 => Some((-32768, 32767)),
        _ => None,
    }
}

/// Per-tensor quantization of an activation, if it has one.
fn activation_quant(d: &TfliteDocument, t: &fb::TensorT) -> Option<BoundaryQuant> {
    let (min, max) = range(t.type_)?;
    if tensor_const(d, t).is_some() {
        return None;
    }
    let q = t.quantization.as_deref()?;
    let scale = q.scale.as_deref()?;
    // Also rejects a NaN scale.
    if scale.len() != 1 || scale[0].partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
        return None;
    }
    let zero_point = q
        .zero_point
        .as_deref()
        .and_then(|z| z.first().copied())
        .unwrap_or(0);
    Some(BoundaryQuant {
        scale: scale[0],
        zero_point,
        min,
        max,
    })
}

/// Emulates subgraph 0 in float when it has quantized activations.
pub(super) fn emulate(d: &mut TfliteDocument, report: &mut Lowering) -> Option<Int8Boundary> {
    let sg = &d.model.subgraphs.as_ref()?[0];
    let tensors = sg.tensors.clone().unwrap_or_default();
    let quants: Vec<Option<BoundaryQuant>> =
        tensors.iter().map(|t| activation_quant(d, t)).collect();
    if quants.iter().all(Option::is_none) {
        return None;
    }
    let io = |list: &Option<Vec<i32>>| -> Vec<Option<BoundaryQuant>> {
        list.iter()
            .flatten()
            .map(|&i| quants.get(i as usize).copied().flatten())
            .collect()
    };
    let boundary = Int8Boundary {
        inputs: io(&sg.inputs),
        outputs: io(&sg.outputs),
    };

    // Quantized constants (weights, int32 biases) become their float values.
    for (i, t) in tensors.iter().enumerate() {
        let has_scale = t
            .quantization
            .as_deref()
            .and_then(|q| q.scale.as_deref())
            .is_some_and(|s| !s.is_empty());
        if !has_scale || t.type_ == fb::TensorType::FLOAT32 {
            continue;
        }
        let Some(c) = tensor_const(d, t) else {
            continue;
        };
        let float_out = fb::TensorT {
            type_: fb::TensorType::FLOAT32,
            ..Default::default()
        };
        if let Some(v) = dequantize(&c, t.quantization.as_deref(), &float_out) {
            make_constant(d, i, v);
            report.count("int8 emulation: dequantize constant");
        }
    }
    // Quantized activations become float32.
    {
        let ts = d.model.subgraphs.as_mut().unwrap()[0]
            .tensors
            .as_mut()
            .unwrap();
        for (i, q) in quants.iter().enumerate() {
            if q.is_some() {
                ts[i].type_ = fb::TensorType::FLOAT32;
                ts[i].quantization = None;
            }
        }
    }

    let mut i = 0;
    while i < d.model.subgraphs.as_ref().unwrap()[0]
        .operators
        .as_ref()
        .map_or(0, |o| o.len())
    {
        let op = d.model.subgraphs.as_ref().unwrap()[0]
            .operators
            .as_ref()
            .unwrap()[i]
            .clone();
        let builtin =
            builtin_of(&d.model.operator_codes.as_ref().unwrap()[op.opcode_index as usize]);
        let outs = op.outputs.clone().unwrap_or_default();
        let first_in = op
            .inputs
            .as_ref()
            .and_then(|v| v.first().copied())
            .unwrap_or(-1);
        match builtin {
            // QUANTIZE (float → int8, or int8 → int8 rescale) is exactly the snap onto the
            // output grid: replace it by the snapping chain from its input.
            fb::BuiltinOperator::QUANTIZE => {
                if let (Some(&o), true) = (outs.first(), first_in >= 0) {
                    if let Some(q) = quants.get(o as usize).copied().flatten() {
                        remove_op(d, i);
                        let n = insert_snap(d, i, first_in as usize, o as usize, q);
                        report.count("int8 emulation: QUANTIZE as rounding");
                        i += n;
                        continue;
                    }
                }
                i += 1;
            }
            // DEQUANTIZE of an activation: the value already is the real number.
            fb::BuiltinOperator::DEQUANTIZE
                if first_in >= 0 && quants.get(first_in as usize).is_some_and(Option::is_some) =>
            {
                let one = scalar(d, 1.0);
                let mul = binary(
                    d,
                    fb::BuiltinOperator::MUL,
                    first_in as usize,
                    one,
                    outs[0] as usize,
                );
                d.model.subgraphs.as_mut().unwrap()[0]
                    .operators
                    .as_mut()
                    .unwrap()[i] = mul;
                report.count("int8 emulation: DEQUANTIZE as identity");
                i += 1;
            }
            _ => {
                let mut inserted = 0;
                for (k, &o) in outs.iter().enumerate() {
                    let Some(q) = (o >= 0)
                        .then(|| quants.get(o as usize).copied().flatten())
                        .flatten()
                    else {
                        continue;
                    };
                    // The op writes a raw float result; the snap writes the original tensor.
                    let raw = {
                        let ts = d.model.subgraphs.as_mut().unwrap()[0]
                            .tensors
                            .as_mut()
                            .unwrap();
                        let mut t = ts[o as usize].clone();
                        t.name = Some(format!("{}/pare_raw", t.name.as_deref().unwrap_or("")));
                        t.shape_signature = None;
                        ts.push(t);
                        ts.len() - 1
                    };
                    d.model.subgraphs.as_mut().unwrap()[0]
                        .operators
                        .as_mut()
                        .unwrap()[i]
                        .outputs
                        .as_mut()
                        .unwrap()[k] = raw as i32;
                    inserted += insert_snap(d, i + 1 + inserted, raw, o as usize, q);
                }
                if inserted > 0 {
                    report.count("int8 emulation: requantize op output");
                }
                i += 1 + inserted;
            }
        }
    }
    Some(boundary)
}

fn remove_op(d: &mut TfliteDocument, i: usize) {
    d.model.subgraphs.as_mut().unwrap()[0]
        .operators
        .as_mut()
        .unwrap()
        .remove(i);
}

/// A float32 scalar constant tensor; returns its index.
fn scalar(d: &mut TfliteDocument, v: f32) -> usize {
    let ts = d.model.subgraphs.as_mut().unwrap()[0]
        .tensors
        .as_mut()
        .unwrap();
    ts.push(fb::TensorT {
        name: Some(format!("pare_const_{v}")),
        type_: fb::TensorType::FLOAT32,
        has_rank: true,
        shape: Some(vec![]),
        ..Default::default()
    });
    let index = ts.len() - 1;
    make_constant(
        d,
        index,
        Const {
            dtype: fb::TensorType::FLOAT32,
            shape: vec![],
            data: v.to_le_bytes().to_vec(),
        },
    );
    index
}

/// A float32 activation tensor shaped like `like`; returns its index.
fn temp_like(d: &mut TfliteDocument, like: usize, tag: &str) -> usize {
    let ts = d.model.subgraphs.as_mut().unwrap()[0]
        .tensors
        .as_mut()
        .unwrap();
    let t = &ts[like];
    let new = fb::TensorT {
        name: Some(format!("{}/pare_{tag}", t.name.as_deref().unwrap_or(""))),
        type_: fb::TensorType::FLOAT32,
        shape: t.shape.clone().or_else(|| static_shape(t)),
        has_rank: t.has_rank,
        ..Default::default()
    };
    ts.push(new);
    ts.len() - 1
}

fn binary(
    d: &mut TfliteDocument,
    op: fb::BuiltinOperator,
    a: usize,
    b: usize,
    out: usize,
) -> fb::OperatorT {
    let code = opcode_for(d, op);
    let options = match op {
        fb::BuiltinOperator::MUL => fb::BuiltinOptionsT::MulOptions(Box::default()),
        fb::BuiltinOperator::ADD => fb::BuiltinOptionsT::AddOptions(Box::default()),
        _ => fb::BuiltinOptionsT::MaximumMinimumOptions(Box::default()),
    };
    fb::OperatorT {
        opcode_index: code,
        inputs: Some(vec![a as i32, b as i32]),
        outputs: Some(vec![out as i32]),
        builtin_options: options,
        ..Default::default()
    }
}

/// Inserts, at operator position `at`, the ops that snap `src` onto `q`'s grid into `dst`.
/// Returns how many ops were inserted.
fn insert_snap(
    d: &mut TfliteDocument,
    at: usize,
    src: usize,
    dst: usize,
    q: BoundaryQuant,
) -> usize {
    let inv = scalar(d, 1.0 / q.scale);
    let half = scalar(d, 0.5);
    let hi = scalar(d, (q.max - q.zero_point) as f32);
    let lo = scalar(d, (q.min - q.zero_point) as f32);
    let s = scalar(d, q.scale);
    let t1 = temp_like(d, dst, "scaled");
    let t2 = temp_like(d, dst, "shifted");
    let t3 = temp_like(d, dst, "rounded");
    let t4 = temp_like(d, dst, "clamped_hi");
    let t5 = temp_like(d, dst, "clamped");
    let floor_code = opcode_for(d, fb::BuiltinOperator::FLOOR);
    let ops = vec![
        binary(d, fb::BuiltinOperator::MUL, src, inv, t1),
        binary(d, fb::BuiltinOperator::ADD, t1, half, t2),
        fb::OperatorT {
            opcode_index: floor_code,
            inputs: Some(vec![t2 as i32]),
            outputs: Some(vec![t3 as i32]),
            ..Default::default()
        },
        binary(d, fb::BuiltinOperator::MINIMUM, t3, hi, t4),
        binary(d, fb::BuiltinOperator::MAXIMUM, t4, lo, t5),
        binary(d, fb::BuiltinOperator::MUL, t5, s, dst),
    ];
    let n = ops.len();
    let list = d.model.subgraphs.as_mut().unwrap()[0]
        .operators
        .as_mut()
        .unwrap();
    for (k, op) in ops.into_iter().enumerate() {
        list.insert(at + k, op);
    }
    n
}
