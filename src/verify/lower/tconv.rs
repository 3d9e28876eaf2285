//! TRANSPOSE_CONV and mediapipe's custom `Convolution2DTransposeBias`, which tract-tflite does
//! not translate, as the direct convolution they equal: zeros inserted between input pixels
//! (RESHAPE, PAD, RESHAPE), the borders padded, and a stride-1 VALID CONV_2D with the kernel
//! flipped in both spatial axes.

use super::ops::{
    float_activation_like, int32_shaped as int32_tensor, op, push_tensor, rewrite_custom,
    rewrite_ops, splice_op, tensor_at as tensor,
};
use super::{make_constant, opcode_for, static_shape, tensor_const, Const, Lowering};
use crate::tflite::TfliteDocument;
use crate::tflite_gen::tflite as fb;

/// Borders of the zero-inserted input along one axis (input `n`, kernel `k`, stride `s`, output
/// `out`, TensorFlow's split of the padding): `(before, after)`, `None` when the direct form
/// would need a crop (a kernel smaller than its stride) or the sizes do not add up.
pub(super) fn borders(n: i64, k: i64, s: i64, out: i64) -> Option<(i64, i64)> {
    let total = ((n - 1) * s + k - out).max(0);
    let (lo, hi) = (total / 2, total - total / 2);
    let before = k - 1 - lo;
    // The upsample leaves s − 1 zeros after the last pixel: the bottom border absorbs them.
    let after = k - 1 - hi - (s - 1);
    let size = n * s + before + after - k + 1;
    (before >= 0 && after >= 0 && size == out).then_some((before, after))
}

/// The kernel `[O, kh, kw, I]` flipped along kh and kw.
fn flipped(w: &[f32], o: usize, kh: usize, kw: usize, i: usize) -> Vec<f32> {
    let mut v = vec![0f32; w.len()];
    for a in 0..o {
        for y in 0..kh {
            for x in 0..kw {
                let (to, from) = (
                    ((a * kh + y) * kw + x) * i,
                    ((a * kh + kh - 1 - y) * kw + kw - 1 - x) * i,
                );
                v[to..to + i].copy_from_slice(&w[from..from + i]);
            }
        }
    }
    v
}

/// One transposed convolution: input `x`, weights `w` `[O, kh, kw, I]`, bias (`-1`: none),
/// output `y` (its static shape fixes the padding), strides and fused activation.
struct Transposed {
    x: usize,
    w: usize,
    bias: i32,
    y: usize,
    sh: i32,
    sw: i32,
    act: fb::ActivationFunctionType,
}

/// `TRANSPOSE_CONV(output_shape, W, x[, bias])`, float, with constant weights and static
/// shapes → RESHAPE/PAD/RESHAPE (stride > 1), PAD, CONV_2D.
pub(super) fn transpose_conv(d: &mut TfliteDocument, report: &mut Lowering) {
    rewrite_ops(d, fb::BuiltinOperator::TRANSPOSE_CONV, |d, i, o| {
        let (ins, outs) = (o.inputs.as_ref()?, o.outputs.as_ref()?);
        let fb::BuiltinOptionsT::TransposeConvOptions(opts) = &o.builtin_options else {
            return None;
        };
        let t = Transposed {
            x: *ins.get(2)? as usize,
            w: *ins.get(1)? as usize,
            bias: ins.get(3).copied().unwrap_or(-1),
            y: *outs.first()? as usize,
            sh: opts.stride_h,
            sw: opts.stride_w,
            act: opts.fused_activation_function,
        };
        let n = direct_form(d, i, &t)?;
        report.count("TRANSPOSE_CONV as zero-inserting upsample, PAD and CONV_2D");
        Some(n)
    });
}

/// mediapipe's `Convolution2DTransposeBias(x, W, bias)` (segmentation heads): its custom
/// options are TFLite's `TfLiteTransposeConvParams` as raw little-endian `i32`s (padding,
/// stride_w, stride_h); the padding follows from the output's static shape as for
/// TRANSPOSE_CONV, so only the strides are read.
pub(super) fn transpose_conv_bias(d: &mut TfliteDocument, report: &mut Lowering) {
    rewrite_custom(d, "Convolution2DTransposeBias", |d, i, o| {
        let (ins, outs) = (o.inputs.as_ref()?, o.outputs.as_ref()?);
        let raw = o.custom_options.as_deref()?;
        let word = |k: usize| {
            Some(i32::from_le_bytes(
                raw.get(4 * k..4 * k + 4)?.try_into().ok()?,
            ))
        };
        let t = Transposed {
            x: *ins.first()? as usize,
            w: *ins.get(1)? as usize,
            bias: ins.get(2).copied().unwrap_or(-1),
            y: *outs.first()? as usize,
            sh: word(2)?,
            sw: word(1)?,
            act: fb::ActivationFunctionType::NONE,
        };
        let n = direct_form(d, i, &t)?;
        report.count("Convolution2DTransposeBias as zero-inserting upsample, PAD and CONV_2D");
        Some(n)
    });
}

/// Replaces operator `i` by the direct form of `t`; returns how many operators stand there, or
/// `None` (left alone) when it is not float with constant weights and static shapes.
fn direct_form(d: &mut TfliteDocument, i: usize, t: &Transposed) -> Option<usize> {
    let &Transposed {
        x,
        w,
        bias,
        y,
        sh,
        sw,
        act,
    } = t;
    if tensor(d, y).type_ != fb::TensorType::FLOAT32 || sh < 1 || sw < 1 {
        return None;
    }
    let &[n, h, wd, c] = static_shape(tensor(d, x))?.as_slice() else {
        return None;
    };
    let &[_, ho, wo, _] = static_shape(tensor(d, y))?.as_slice() else {
        return None;
    };
    let weights = tensor_const(d, tensor(d, w)).filter(|c| c.dtype == fb::TensorType::FLOAT32)?;
    let &[oc, kh, kw, ic] = weights.shape.as_slice() else {
        return None;
    };
    // Sizes come from the file: products are checked (a damaged file is left alone).
    let bytes = [oc, kh, kw, ic]
        .iter()
        .try_fold(4usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?));
    if ic != c || bytes != Some(weights.data.len()) {
        return None;
    }
    let (uh, uw) = (h.checked_mul(sh)?, wd.checked_mul(sw)?);
    let (top, bottom) = borders(h as i64, kh as i64, sh as i64, ho as i64)?;
    let (left, right) = borders(wd as i64, kw as i64, sw as i64, wo as i64)?;
    let values: Vec<f32> = weights
        .data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let flip = flipped(&values, oc as usize, kh as usize, kw as usize, ic as usize);
    let stem = tensor(d, y).name.clone().unwrap_or_default();
    let kernel = push_tensor(
        d,
        fb::TensorT {
            name: Some(format!("{stem}/pare_flipped")),
            has_rank: true,
            ..Default::default()
        },
    );
    make_constant(
        d,
        kernel,
        Const {
            dtype: fb::TensorType::FLOAT32,
            shape: weights.shape.clone(),
            data: flip.iter().flat_map(|v| v.to_le_bytes()).collect(),
        },
    );
    let (reshape, pad, conv) = (
        opcode_for(d, fb::BuiltinOperator::RESHAPE),
        opcode_for(d, fb::BuiltinOperator::PAD),
        opcode_for(d, fb::BuiltinOperator::CONV_2D),
    );
    let reshape_to = |s: &[i32]| {
        fb::BuiltinOptionsT::ReshapeOptions(Box::new(fb::ReshapeOptionsT {
            new_shape: Some(s.to_vec()),
        }))
    };
    let pad_options = || fb::BuiltinOptionsT::PadOptions(Box::default());
    let mut new = Vec::new();
    let mut cur = x;
    if sh > 1 || sw > 1 {
        let split = vec![n, h, 1, wd, 1, c];
        let spread = vec![n, h, sh, wd, sw, c];
        let flat = vec![n, uh, uw, c];
        let split_shape = int32_tensor(d, format!("{stem}/pare_up_split"), vec![6], &split);
        let zeros = int32_tensor(
            d,
            format!("{stem}/pare_up_zeros"),
            vec![6, 2],
            &[0, 0, 0, 0, 0, sh - 1, 0, 0, 0, sw - 1, 0, 0],
        );
        let flat_shape = int32_tensor(d, format!("{stem}/pare_up_shape"), vec![4], &flat);
        let a = push_tensor(
            d,
            float_activation_like(d, y, "up_split", Some(split.clone())),
        );
        let b = push_tensor(d, float_activation_like(d, y, "up_spread", Some(spread)));
        let u = push_tensor(d, float_activation_like(d, y, "up", Some(flat.clone())));
        new.push(op(reshape, vec![x, split_shape], a, reshape_to(&split)));
        new.push(op(pad, vec![a, zeros], b, pad_options()));
        new.push(op(reshape, vec![b, flat_shape], u, reshape_to(&flat)));
        cur = u;
    }
    let padded_shape = vec![
        n,
        i32::try_from(i64::from(uh) + top + bottom).ok()?,
        i32::try_from(i64::from(uw) + left + right).ok()?,
        c,
    ];
    let borders_t = int32_tensor(
        d,
        format!("{stem}/pare_borders"),
        vec![4, 2],
        &[
            0,
            0,
            top as i32,
            bottom as i32,
            left as i32,
            right as i32,
            0,
            0,
        ],
    );
    let padded = push_tensor(d, float_activation_like(d, y, "padded", Some(padded_shape)));
    new.push(op(pad, vec![cur, borders_t], padded, pad_options()));
    new.push(fb::OperatorT {
        opcode_index: conv,
        inputs: Some(vec![padded as i32, kernel as i32, bias]),
        outputs: Some(vec![y as i32]),
        builtin_options: fb::BuiltinOptionsT::Conv2DOptions(Box::new(fb::Conv2DOptionsT {
            padding: fb::Padding::VALID,
            stride_w: 1,
            stride_h: 1,
            fused_activation_function: act,
            ..Default::default()
        })),
        ..Default::default()
    });
    Some(splice_op(d, i, new))
}

#[cfg(test)]
mod tests {
    use super::borders;

    #[test]
    fn borders_reproduce_tensorflow_output_sizes() {
        assert_eq!(borders(6, 3, 2, 12), Some((2, 0))); // SAME, k 3, s 2: TF pads 0 above, 1 below
        assert_eq!(borders(12, 2, 2, 24), Some((1, 0))); // VALID, k 2, s 2
        assert_eq!(borders(24, 3, 1, 26), Some((2, 2))); // VALID, stride 1
        assert_eq!(borders(4, 1, 2, 8), None); // kernel smaller than its stride: a crop
    }
}
