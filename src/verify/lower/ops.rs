//! Rewrites of single ops tract-tflite refuses into equivalent ops it runs.

use super::{
    dequantize, ints, make_constant, opcode_for, static_shape, tensor_const, Const, Lowering,
};
use crate::tflite::{builtin_of, TfliteDocument};
use crate::tflite_gen::tflite as fb;

fn ops_len(d: &TfliteDocument) -> usize {
    d.model.subgraphs.as_ref().unwrap()[0]
        .operators
        .as_ref()
        .map_or(0, |o| o.len())
}

fn builtin_at(d: &TfliteDocument, i: usize) -> fb::BuiltinOperator {
    let op = &d.model.subgraphs.as_ref().unwrap()[0]
        .operators
        .as_ref()
        .unwrap()[i];
    builtin_of(&d.model.operator_codes.as_ref().unwrap()[op.opcode_index as usize])
}

/// Calls `rewrite` on every operator of subgraph 0 that is a `builtin`. `rewrite` returns how
/// many operators now stand where the one it was given stood (`None`: left alone), so that
/// newly inserted operators are not visited again.
pub(super) fn rewrite_ops(
    d: &mut TfliteDocument,
    builtin: fb::BuiltinOperator,
    rewrite: impl FnMut(&mut TfliteDocument, usize, fb::OperatorT) -> Option<usize>,
) {
    rewrite_where(d, |code| builtin_of(code) == builtin, rewrite)
}

/// [`rewrite_ops`] for the custom op named `custom_code` (mediapipe's, for instance).
pub(super) fn rewrite_custom(
    d: &mut TfliteDocument,
    custom_code: &str,
    rewrite: impl FnMut(&mut TfliteDocument, usize, fb::OperatorT) -> Option<usize>,
) {
    let is = |code: &fb::OperatorCodeT| {
        builtin_of(code) == fb::BuiltinOperator::CUSTOM
            && code.custom_code.as_deref() == Some(custom_code)
    };
    rewrite_where(d, is, rewrite)
}

fn rewrite_where(
    d: &mut TfliteDocument,
    matches: impl Fn(&fb::OperatorCodeT) -> bool,
    mut rewrite: impl FnMut(&mut TfliteDocument, usize, fb::OperatorT) -> Option<usize>,
) {
    let mut i = 0;
    while i < ops_len(d) {
        let op = &d.model.subgraphs.as_ref().unwrap()[0]
            .operators
            .as_ref()
            .unwrap()[i];
        if !matches(&d.model.operator_codes.as_ref().unwrap()[op.opcode_index as usize]) {
            i += 1;
            continue;
        }
        let op = op.clone();
        i += rewrite(d, i, op).unwrap_or(1);
    }
}

pub(super) fn push_tensor(d: &mut TfliteDocument, t: fb::TensorT) -> usize {
    let ts = d.model.subgraphs.as_mut().unwrap()[0]
        .tensors
        .as_mut()
        .unwrap();
    ts.push(t);
    ts.len() - 1
}

pub(super) fn int32_const(d: &mut TfliteDocument, name: String, values: &[i32]) -> usize {
    int32_shaped(d, name, vec![values.len() as i32], values)
}

/// A new INT32 constant tensor of `shape` holding `values`.
pub(super) fn int32_shaped(
    d: &mut TfliteDocument,
    name: String,
    shape: Vec<i32>,
    values: &[i32],
) -> usize {
    let i = push_tensor(
        d,
        fb::TensorT {
            name: Some(name),
            type_: fb::TensorType::INT32,
            has_rank: true,
            ..Default::default()
        },
    );
    let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    make_constant(
        d,
        i,
        Const {
            dtype: fb::TensorType::INT32,
            shape,
            data,
        },
    );
    i
}

/// Tensor `i` of subgraph 0.
pub(super) fn tensor_at(d: &TfliteDocument, i: usize) -> &fb::TensorT {
    &d.model.subgraphs.as_ref().unwrap()[0]
        .tensors
        .as_ref()
        .unwrap()[i]
}

/// Replaces operator `i` of subgraph 0 by `new`; returns how many there are.
pub(super) fn splice_op(d: &mut TfliteDocument, i: usize, new: Vec<fb::OperatorT>) -> usize {
    let n = new.len();
    d.model.subgraphs.as_mut().unwrap()[0]
        .operators
        .as_mut()
        .unwrap()
        .splice(i..i + 1, new);
    n
}

pub(super) fn float_activation_like(
    d: &TfliteDocument,
    like: usize,
    tag: &str,
    shape: Option<Vec<i32>>,
) -> fb::TensorT {
    let t = &d.model.subgraphs.as_ref().unwrap()[0]
        .tensors
        .as_ref()
        .unwrap()[like];
    fb::TensorT {
        name: Some(format!("{}/pare_{tag}", t.name.as_deref().unwrap_or(""))),
        type_: t.type_,
        shape: shape.or_else(|| t.shape.clone()),
        has_rank: true,
        ..Default::default()
    }
}

pub(super) fn op(
    code: u32,
    inputs: Vec<usize>,
    output: usize,
    options: fb::BuiltinOptionsT,
) -> fb::OperatorT {
    fb::OperatorT {
        opcode_index: code,
        inputs: Some(inputs.into_iter().map(|i| i as i32).collect()),
        outputs: Some(vec![output as i32]),
        builtin_options: options,
        ..Default::default()
    }
}

/// `PRELU(x, α)` → `MAXIMUM(x, 0) + α · MINIMUM(x, 0)` (float graphs; int8 ones are emulated
/// in float before this runs).
pub(super) fn prelu(d: &mut TfliteDocument, report: &mut Lowering) {
    rewrite_ops(d, fb::BuiltinOperator::PRELU, |d, i, o| {
        let (ins, outs) = (o.inputs.unwrap_or_default(), o.outputs.unwrap_or_default());
        let y = *outs.first()? as usize;
        if ins.len() != 2
            || d.model.subgraphs.as_ref().unwrap()[0]
                .tensors
                .as_ref()
                .unwrap()[y]
                .type_
                != fb::TensorType::FLOAT32
        {
            return None;
        }
        let (x, alpha) = (ins[0] as usize, ins[1] as usize);
        let zero = push_tensor(
            d,
            fb::TensorT {
                name: Some("pare_zero".into()),
                type_: fb::TensorType::FLOAT32,
                has_rank: true,
                shape: Some(vec![]),
                ..Default::default()
            },
        );
        make_constant(
            d,
            zero,
            Const {
                dtype: fb::TensorType::FLOAT32,
                shape: vec![],
                data: 0f32.to_le_bytes().to_vec(),
            },
        );
        let pos = push_tensor(d, float_activation_like(d, y, "prelu_pos", None));
        let neg = push_tensor(d, float_activation_like(d, y, "prelu_neg", None));
        let scaled = push_tensor(d, float_activation_like(d, y, "prelu_scaled", None));
        let (max, min) = (
            opcode_for(d, fb::BuiltinOperator::MAXIMUM),
            opcode_for(d, fb::BuiltinOperator::MINIMUM),
        );
        let (mul, add) = (
            opcode_for(d, fb::BuiltinOperator::MUL),
            opcode_for(d, fb::BuiltinOperator::ADD),
        );
        let mm = || fb::BuiltinOptionsT::MaximumMinimumOptions(Box::default());
        let new = vec![
            op(max, vec![x, zero], pos, mm()),
            op(min, vec![x, zero], neg, mm()),
            op(
                mul,
                vec![neg, alpha],
                scaled,
                fb::BuiltinOptionsT::MulOptions(Box::default()),
            ),
            op(
                add,
                vec![pos, scaled],
                y,
                fb::BuiltinOptionsT::AddOptions(Box::default()),
            ),
        ];
        report.count("PRELU as MAXIMUM/MINIMUM/MUL/ADD");
        Some(splice_op(d, i, new))
    });
}

/// Output length of one sliced dimension, with TensorFlow's clamping rules.
fn slice_len(n: i64, b: i64, e: i64, s: i64, begin_masked: bool, end_masked: bool) -> i64 {
    let norm = |v: i64| if v < 0 { v + n } else { v };
    if s > 0 {
        let start = if begin_masked { 0 } else { norm(b).clamp(0, n) };
        let stop = if end_masked { n } else { norm(e).clamp(0, n) };
        ((stop - start).max(0) + s - 1) / s
    } else {
        let start = if begin_masked {
            n - 1
        } else {
            norm(b).clamp(-1, n - 1)
        };
        let stop = if end_masked {
            -1
        } else {
            norm(e).clamp(-1, n - 1)
        };
        ((start - stop).max(0) + (-s) - 1) / (-s)
    }
}

/// `STRIDED_SLICE` with `shrink_axis_mask` / `new_axis_mask` on an activation → the same slice
/// without those masks (a shrunk axis becomes a slice of length 1, a new axis is dropped from
/// the spec) followed by a `RESHAPE` to the original output shape.
pub(super) fn strided_slice_masks(d: &mut TfliteDocument, report: &mut Lowering) {
    rewrite_ops(d, fb::BuiltinOperator::STRIDED_SLICE, |d, i, o| {
        let fb::BuiltinOptionsT::StridedSliceOptions(opts) = &o.builtin_options else {
            return None;
        };
        if (opts.shrink_axis_mask == 0 && opts.new_axis_mask == 0)
            || opts.ellipsis_mask != 0
            || opts.offset
        {
            return None;
        }
        let (ins, outs) = (
            o.inputs.clone().unwrap_or_default(),
            o.outputs.clone().unwrap_or_default(),
        );
        let tensors = d.model.subgraphs.as_ref().unwrap()[0]
            .tensors
            .as_ref()
            .unwrap();
        let spec = (|| {
            let x = static_shape(&tensors[ins[0] as usize])?;
            let out_shape = static_shape(&tensors[outs[0] as usize])?;
            let b = ints(&tensor_const(d, &tensors[*ins.get(1)? as usize])?)?;
            let e = ints(&tensor_const(d, &tensors[*ins.get(2)? as usize])?)?;
            let s = ints(&tensor_const(d, &tensors[*ins.get(3)? as usize])?)?;
            (b.len() == e.len() && e.len() == s.len()).then_some((x, out_shape, b, e, s))
        })();
        let (x, out_shape, b, e, s) = spec?;
        let (mut nb, mut ne, mut ns, mut bmask, mut emask, mut mid_shape) =
            (vec![], vec![], vec![], 0i32, 0i32, vec![]);
        let mut dim = 0usize;
        for j in 0..b.len() {
            if opts.new_axis_mask >> j & 1 == 1 {
                continue;
            }
            let Some(&n) = x.get(dim) else { break };
            let n = n as i64;
            let k = nb.len();
            if opts.shrink_axis_mask >> j & 1 == 1 {
                let start = if b[j] < 0 { b[j] + n } else { b[j] };
                nb.push(start as i32);
                ne.push((start + 1) as i32);
                ns.push(1);
                mid_shape.push(1);
            } else {
                let (bm, em) = (opts.begin_mask >> j & 1 == 1, opts.end_mask >> j & 1 == 1);
                nb.push(b[j] as i32);
                ne.push(e[j] as i32);
                ns.push(s[j] as i32);
                bmask |= (bm as i32) << k;
                emask |= (em as i32) << k;
                mid_shape.push(slice_len(n, b[j], e[j], s[j], bm, em) as i32);
            }
            dim += 1;
        }
        mid_shape.extend(x[dim.min(x.len())..].iter().copied());
        let name = format!(
            "{}/pare_slice",
            d.model.subgraphs.as_ref().unwrap()[0]
                .tensors
                .as_ref()
                .unwrap()[outs[0] as usize]
                .name
                .as_deref()
                .unwrap_or("")
        );
        let (bt, et, st) = (
            int32_const(d, format!("{name}_begin"), &nb),
            int32_const(d, format!("{name}_end"), &ne),
            int32_const(d, format!("{name}_strides"), &ns),
        );
        let shape_t = int32_const(d, format!("{name}_shape"), &out_shape);
        let mid = push_tensor(
            d,
            float_activation_like(d, outs[0] as usize, "slice", Some(mid_shape)),
        );
        let reshape = opcode_for(d, fb::BuiltinOperator::RESHAPE);
        let slice_opts = fb::StridedSliceOptionsT {
            begin_mask: bmask,
            end_mask: emask,
            ..Default::default()
        };
        let new = vec![
            op(
                o.opcode_index,
                vec![ins[0] as usize, bt, et, st],
                mid,
                fb::BuiltinOptionsT::StridedSliceOptions(Box::new(slice_opts)),
            ),
            op(
                reshape,
                vec![mid, shape_t],
                outs[0] as usize,
                fb::BuiltinOptionsT::ReshapeOptions(Box::new(fb::ReshapeOptionsT {
                    new_shape: Some(out_shape.clone()),
                })),
            ),
        ];
        d.model.subgraphs.as_mut().unwrap()[0]
            .operators
            .as_mut()
            .unwrap()
            .splice(i..i + 1, new);
        report.count("STRIDED_SLICE masks as STRIDED_SLICE + RESHAPE");
        Some(2)
    });
}

/// Ops whose optional bias (input 2, or 3 for TRANSPOSE_CONV) may be omitted as `-1`, with the
/// weight axis that holds the output channels. tract-tflite 0.23.9 indexes the tensor list
/// with the `-1` and panics (seen on Keras Dense layers with `use_bias=False`, and in exports
/// of DenseNet and MobileNetV2).
fn bias_slot(op: fb::BuiltinOperator) -> Option<(usize, usize)> {
    match op {
        fb::BuiltinOperator::FULLY_CONNECTED | fb::BuiltinOperator::CONV_2D => Some((2, 0)),
        fb::BuiltinOperator::DEPTHWISE_CONV_2D => Some((2, 3)),
        fb::BuiltinOperator::TRANSPOSE_CONV => Some((3, 0)),
        _ => None,
    }
}

/// An omitted bias becomes an explicit float32 zero bias (float graphs; int8 ones are
/// emulated in float before this runs).
pub(super) fn explicit_zero_bias(d: &mut TfliteDocument, report: &mut Lowering) {
    for i in 0..ops_len(d) {
        let Some((slot, out_axis)) = bias_slot(builtin_at(d, i)) else {
            continue;
        };
        let o = &d.model.subgraphs.as_ref().unwrap()[0]
            .operators
            .as_ref()
            .unwrap()[i];
        let ins = o.inputs.clone().unwrap_or_default();
        if ins.get(slot).is_some_and(|&b| b >= 0) || ins.len() < 2 {
            continue;
        }
        let tensors = d.model.subgraphs.as_ref().unwrap()[0]
            .tensors
            .as_ref()
            .unwrap();
        let w = &tensors[ins[1] as usize];
        let out_t = &tensors[o.outputs.as_ref().unwrap()[0] as usize];
        let Some(&channels) = w.shape.as_ref().and_then(|s| s.get(out_axis)) else {
            continue;
        };
        if out_t.type_ != fb::TensorType::FLOAT32 || channels <= 0 {
            continue;
        }
        let name = format!("{}/pare_zero_bias", out_t.name.as_deref().unwrap_or(""));
        let bias = push_tensor(
            d,
            fb::TensorT {
                name: Some(name),
                type_: fb::TensorType::FLOAT32,
                has_rank: true,
                ..Default::default()
            },
        );
        make_constant(
            d,
            bias,
            Const {
                dtype: fb::TensorType::FLOAT32,
                shape: vec![channels],
                data: vec![0u8; channels as usize * 4],
            },
        );
        let o = &mut d.model.subgraphs.as_mut().unwrap()[0]
            .operators
            .as_mut()
            .unwrap()[i];
        let ins = o.inputs.as_mut().unwrap();
        ins.resize(slot + 1, -1);
        ins[slot] = bias as i32;
        report.count("explicit zero bias for an omitted one");
    }
}

/// Dynamic-range ("hybrid") layers, as `Optimize.DEFAULT` without a representative dataset
/// writes them: float activations, int8 weights with their scales. tract refuses the mix of
/// types; the copy gets the weights dequantized, which is what LiteRT's hybrid kernels compute
/// with up to the rounding of the activations they quantize on the fly.
pub(super) fn hybrid_weights(d: &mut TfliteDocument, report: &mut Lowering) {
    use fb::BuiltinOperator as B;
    for i in 0..ops_len(d) {
        if ![B::CONV_2D, B::DEPTHWISE_CONV_2D, B::FULLY_CONNECTED].contains(&builtin_at(d, i)) {
            continue;
        }
        let sg = &d.model.subgraphs.as_ref().unwrap()[0];
        let ins = sg.operators.as_ref().unwrap()[i]
            .inputs
            .clone()
            .unwrap_or_default();
        let tensors = sg.tensors.as_deref().unwrap_or_default();
        let (Some(x), Some(w)) = (
            ins.first()
                .and_then(|&x| tensors.get(usize::try_from(x).ok()?)),
            ins.get(1).and_then(|&w| usize::try_from(w).ok()),
        ) else {
            continue;
        };
        let Some(wt) = tensors.get(w) else { continue };
        if x.type_ != fb::TensorType::FLOAT32
            || !matches!(wt.type_, fb::TensorType::INT8 | fb::TensorType::UINT8)
        {
            continue;
        }
        let real = tensor_const(d, wt).and_then(|c| dequantize(&c, wt.quantization.as_deref(), x));
        if let Some(real) = real {
            make_constant(d, w, real);
            report.count("hybrid layer's int8 weights dequantized");
        }
    }
}

/// `SPLIT` and `SPLIT_V` (Keras streaming layers split their ring buffer with them), which
/// tract-tflite does not translate: one mask-free `STRIDED_SLICE` per output, with the axis and
/// the sizes (a `-1` is "the rest") read from constants.
pub(super) fn split_as_slices(d: &mut TfliteDocument, report: &mut Lowering) {
    rewrite_ops(d, fb::BuiltinOperator::SPLIT_V, |d, i, o| {
        let ins = o.inputs.as_ref()?;
        let (x, sizes, axis) = (*ins.first()?, *ins.get(1)?, *ins.get(2)?);
        let sizes = ints(&tensor_const(
            d,
            tensor_at(d, usize::try_from(sizes).ok()?),
        )?)?;
        let n = slices(d, i, &o, x, axis, |_| Some(sizes.clone()))?;
        report.count("SPLIT_V as STRIDED_SLICEs");
        Some(n)
    });
    rewrite_ops(d, fb::BuiltinOperator::SPLIT, |d, i, o| {
        let ins = o.inputs.as_ref()?;
        let (axis, x) = (*ins.first()?, *ins.get(1)?);
        let fb::BuiltinOptionsT::SplitOptions(opts) = &o.builtin_options else {
            return None;
        };
        let parts = i64::from(opts.num_splits);
        // One part per output (a damaged count must not size an allocation).
        let parts_fit = parts > 0 && parts == o.outputs.as_ref()?.len() as i64;
        let sizes =
            |dim: i64| (parts_fit && dim % parts == 0).then(|| vec![dim / parts; parts as usize]);
        let n = slices(d, i, &o, x, axis, sizes)?;
        report.count("SPLIT as STRIDED_SLICEs");
        Some(n)
    });
}

/// Replaces split operator `i` (input `x`, constant `axis`) by one STRIDED_SLICE per output;
/// `sizes(dim)` gives the parts of the axis (of size `dim`), `-1` standing for the rest.
fn slices(
    d: &mut TfliteDocument,
    i: usize,
    o: &fb::OperatorT,
    x: i32,
    axis: i32,
    sizes: impl Fn(i64) -> Option<Vec<i64>>,
) -> Option<usize> {
    let shape = static_shape(tensor_at(d, usize::try_from(x).ok()?))?;
    let axis = *ints(&tensor_const(d, tensor_at(d, usize::try_from(axis).ok()?))?)?.first()?;
    if shape.is_empty() {
        return None;
    }
    let axis = axis.rem_euclid(shape.len() as i64) as usize;
    let dim = i64::from(shape[axis]);
    let mut sizes = sizes(dim)?;
    let outs = o.outputs.clone()?;
    // Sizes come from the file: sums are checked.
    let sum = |v: &[i64]| {
        v.iter()
            .filter(|&&s| s != -1)
            .try_fold(0i64, |a, &s| a.checked_add(s))
    };
    if let Some(rest) = sizes.iter().position(|&s| s == -1) {
        sizes[rest] = dim.checked_sub(sum(&sizes)?)?;
    }
    if sizes.len() != outs.len() || sizes.iter().any(|&s| s < 0) || sum(&sizes)? != dim {
        return None;
    }
    let slice = opcode_for(d, fb::BuiltinOperator::STRIDED_SLICE);
    let rank = shape.len();
    let mut new = Vec::new();
    let mut at = 0i64;
    for (&out, &size) in outs.iter().zip(&sizes) {
        let stem = tensor_at(d, usize::try_from(out).ok()?)
            .name
            .clone()
            .unwrap_or_default();
        let mut begin = vec![0i32; rank];
        let mut end = shape.clone();
        (begin[axis], end[axis]) = (at as i32, (at + size) as i32);
        at += size;
        let b = int32_const(d, format!("{stem}/pare_begin"), &begin);
        let e = int32_const(d, format!("{stem}/pare_end"), &end);
        let s = int32_const(d, format!("{stem}/pare_strides"), &vec![1; rank]);
        new.push(op(
            slice,
            vec![x as usize, b, e, s],
            out as usize,
            fb::BuiltinOptionsT::StridedSliceOptions(Box::default()),
        ));
    }
    Some(splice_op(d, i, new))
}

/// `FULLY_CONNECTED` on an input of rank other than 2, which TFLite flattens to `[rows, K]`
/// itself (K the weights' inner size) and tract refuses: an explicit `RESHAPE` in front.
pub(super) fn fully_connected_rank2(d: &mut TfliteDocument, report: &mut Lowering) {
    rewrite_ops(d, fb::BuiltinOperator::FULLY_CONNECTED, |d, i, o| {
        let ins = o.inputs.as_ref()?;
        let (x, w) = (
            usize::try_from(*ins.first()?).ok()?,
            usize::try_from(*ins.get(1)?).ok()?,
        );
        let shape = static_shape(tensor_at(d, x))?;
        let k = *static_shape(tensor_at(d, w))?.get(1)?;
        // Mutated or hostile files can declare dims whose product overflows: no rewrite then.
        let elements = shape.iter().try_fold(1i32, |n, &d| n.checked_mul(d))?;
        // With keep_num_dims the output keeps the input's rank: a flat input would not give it.
        let keeps = matches!(&o.builtin_options,
            fb::BuiltinOptionsT::FullyConnectedOptions(f) if f.keep_num_dims);
        if shape.len() == 2 || keeps || k <= 0 || elements % k != 0 {
            return None;
        }
        let flat = vec![elements / k, k];
        let reshape = opcode_for(d, fb::BuiltinOperator::RESHAPE);
        let stem = tensor_at(d, x).name.clone().unwrap_or_default();
        let to = int32_const(d, format!("{stem}/pare_rows_shape"), &flat);
        let mut t = tensor_at(d, x).clone();
        (t.name, t.shape, t.shape_signature, t.buffer) = (
            Some(format!("{stem}/pare_rows")),
            Some(flat.clone()),
            None,
            0,
        );
        let rows = push_tensor(d, t);
        let mut fc = o.clone();
        fc.inputs.as_mut()?[0] = rows as i32;
        let options = fb::BuiltinOptionsT::ReshapeOptions(Box::new(fb::ReshapeOptionsT {
            new_shape: Some(flat),
        }));
        report.count("FULLY_CONNECTED input flattened to rank 2");
        Some(splice_op(
            d,
            i,
            vec![op(reshape, vec![x, to], rows, options), fc],
        ))
    });
}
