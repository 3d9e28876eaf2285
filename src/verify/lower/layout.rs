//! Data-movement ops tract-tflite does not translate, rewritten into ones it runs: MIRROR_PAD
//! as SLICE + CONCATENATION, DEPTH_TO_SPACE as RESHAPE + TRANSPOSE + RESHAPE.

use super::ops::{
    float_activation_like, int32_const, op, push_tensor, rewrite_ops, splice_op,
    tensor_at as tensor,
};
use super::{ints, opcode_for, static_shape, tensor_const, Lowering};
use crate::tflite::TfliteDocument;
use crate::tflite_gen::tflite as fb;

/// The positions along one axis of length `n` that a mirror pad of `before`/`after` reads, in
/// output order: REFLECT leaves the edge out (`[2,1 | 0,1,2,3 | 2]`), SYMMETRIC repeats it
/// (`[1,0 | 0,1,2,3 | 3]`); `None` where the pad is longer than the mode allows.
pub(super) fn mirror_positions(
    n: i64,
    before: i64,
    after: i64,
    symmetric: bool,
) -> Option<Vec<i64>> {
    let limit = if symmetric { n } else { n - 1 };
    if before < 0 || after < 0 || before > limit || after > limit {
        return None;
    }
    let skip = if symmetric { 0 } else { 1 };
    let lead = (0..before).rev().map(|k| k + skip);
    let tail = (0..after).map(|k| n - 1 - skip - k);
    Some(lead.chain(0..n).chain(tail).collect())
}

/// `MIRROR_PAD(x, paddings)` with constant paddings and a static input → per padded axis, one
/// SLICE of size 1 per mirrored position and a CONCATENATION of them around `x`.
pub(super) fn mirror_pad(d: &mut TfliteDocument, report: &mut Lowering) {
    rewrite_ops(d, fb::BuiltinOperator::MIRROR_PAD, |d, i, o| {
        let (ins, outs) = (o.inputs.clone()?, o.outputs.clone()?);
        let (x, y) = (*ins.first()? as usize, *outs.first()? as usize);
        if tensor(d, y).type_ != fb::TensorType::FLOAT32 {
            return None;
        }
        let shape = static_shape(tensor(d, x))?;
        let pads = ints(&tensor_const(d, tensor(d, *ins.get(1)? as usize))?)?;
        if pads.len() != 2 * shape.len() {
            return None;
        }
        let symmetric = matches!(
            &o.builtin_options,
            fb::BuiltinOptionsT::MirrorPadOptions(m) if m.mode == fb::MirrorPadMode::SYMMETRIC
        );
        let axes: Vec<usize> = (0..shape.len())
            .filter(|&a| pads[2 * a] != 0 || pads[2 * a + 1] != 0)
            .collect();
        let last = *axes.last()?;
        let stem = tensor(d, y).name.clone().unwrap_or_default();
        let (slice, concat) = (
            opcode_for(d, fb::BuiltinOperator::SLICE),
            opcode_for(d, fb::BuiltinOperator::CONCATENATION),
        );
        let mut new = Vec::new();
        let (mut cur, mut cur_shape) = (x, shape.clone());
        for &axis in &axes {
            let n = cur_shape[axis] as i64;
            let positions = mirror_positions(n, pads[2 * axis], pads[2 * axis + 1], symmetric)?;
            let mut size = cur_shape.clone();
            size[axis] = 1;
            let size_t = int32_const(d, format!("{stem}/pare_mirror_size_{axis}"), &size);
            let mut pieces = Vec::new();
            let mut k = 0;
            while k < positions.len() {
                if k == pads[2 * axis] as usize {
                    pieces.push(cur); // the unpadded middle
                    k += n as usize;
                    continue;
                }
                let mut begin = vec![0; cur_shape.len()];
                begin[axis] = positions[k] as i32;
                let begin_t =
                    int32_const(d, format!("{stem}/pare_mirror_begin_{axis}_{k}"), &begin);
                let piece = push_tensor(
                    d,
                    float_activation_like(
                        d,
                        y,
                        &format!("mirror_piece_{axis}_{k}"),
                        Some(size.clone()),
                    ),
                );
                new.push(op(
                    slice,
                    vec![cur, begin_t, size_t],
                    piece,
                    fb::BuiltinOptionsT::SliceOptions(Box::default()),
                ));
                pieces.push(piece);
                k += 1;
            }
            cur_shape[axis] += (pads[2 * axis] + pads[2 * axis + 1]) as i32;
            let out = if axis == last {
                y
            } else {
                push_tensor(
                    d,
                    float_activation_like(
                        d,
                        y,
                        &format!("mirror_axis_{axis}"),
                        Some(cur_shape.clone()),
                    ),
                )
            };
            new.push(fb::OperatorT {
                opcode_index: concat,
                inputs: Some(pieces.iter().map(|&p| p as i32).collect()),
                outputs: Some(vec![out as i32]),
                builtin_options: fb::BuiltinOptionsT::ConcatenationOptions(Box::new(
                    fb::ConcatenationOptionsT {
                        axis: axis as i32,
                        fused_activation_function: fb::ActivationFunctionType::NONE,
                    },
                )),
                ..Default::default()
            });
            cur = out;
        }
        report.count(if symmetric {
            "MIRROR_PAD (SYMMETRIC) as SLICE/CONCATENATION"
        } else {
            "MIRROR_PAD (REFLECT) as SLICE/CONCATENATION"
        });
        Some(splice_op(d, i, new))
    });
}

/// `DEPTH_TO_SPACE(x)` of a static NHWC `x` with block `b` → RESHAPE to `[N,H,W,b,b,C/b²]`,
/// TRANSPOSE to `[N,H,b,W,b,C/b²]`, RESHAPE to `[N,H·b,W·b,C/b²]` (TensorFlow's DCR order).
pub(super) fn depth_to_space(d: &mut TfliteDocument, report: &mut Lowering) {
    rewrite_ops(d, fb::BuiltinOperator::DEPTH_TO_SPACE, |d, i, o| {
        let (x, y) = (
            *o.inputs.as_ref()?.first()? as usize,
            *o.outputs.as_ref()?.first()? as usize,
        );
        let fb::BuiltinOptionsT::DepthToSpaceOptions(opts) = &o.builtin_options else {
            return None;
        };
        let b = opts.block_size;
        let &[n, h, w, c] = static_shape(tensor(d, x))?.as_slice() else {
            return None;
        };
        if b < 1 || c % (b * b) != 0 || tensor(d, y).type_ != fb::TensorType::FLOAT32 {
            return None;
        }
        let cb = c / (b * b);
        let split = vec![n, h, w, b, b, cb];
        let moved = vec![n, h, b, w, b, cb];
        let out = vec![n, h * b, w * b, cb];
        let (reshape, transpose) = (
            opcode_for(d, fb::BuiltinOperator::RESHAPE),
            opcode_for(d, fb::BuiltinOperator::TRANSPOSE),
        );
        let stem = tensor(d, y).name.clone().unwrap_or_default();
        let split_shape = int32_const(d, format!("{stem}/pare_d2s_split"), &split);
        let perm = int32_const(d, format!("{stem}/pare_d2s_perm"), &[0, 1, 3, 2, 4, 5]);
        let out_shape = int32_const(d, format!("{stem}/pare_d2s_shape"), &out);
        let a = push_tensor(
            d,
            float_activation_like(d, y, "d2s_split", Some(split.clone())),
        );
        let t = push_tensor(d, float_activation_like(d, y, "d2s_moved", Some(moved)));
        let reshape_to = |s: &[i32]| {
            fb::BuiltinOptionsT::ReshapeOptions(Box::new(fb::ReshapeOptionsT {
                new_shape: Some(s.to_vec()),
            }))
        };
        let new = vec![
            op(reshape, vec![x, split_shape], a, reshape_to(&split)),
            op(
                transpose,
                vec![a, perm],
                t,
                fb::BuiltinOptionsT::TransposeOptions(Box::default()),
            ),
            op(reshape, vec![t, out_shape], y, reshape_to(&out)),
        ];
        report.count("DEPTH_TO_SPACE as RESHAPE/TRANSPOSE/RESHAPE");
        Some(splice_op(d, i, new))
    });
}

#[cfg(test)]
mod tests {
    use super::mirror_positions;

    #[test]
    fn mirror_positions_follow_tensorflow_reflect_and_symmetric() {
        // tf.pad([0,1,2,3], [[2,1]], "REFLECT") = [2,1,0,1,2,3,2]; "SYMMETRIC" = [1,0,0,1,2,3,3]
        assert_eq!(
            mirror_positions(4, 2, 1, false).unwrap(),
            [2, 1, 0, 1, 2, 3, 2]
        );
        assert_eq!(
            mirror_positions(4, 2, 1, true).unwrap(),
            [1, 0, 0, 1, 2, 3, 3]
        );
        assert_eq!(
            mirror_positions(4, 3, 3, false).unwrap(),
            [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]
        );
        assert!(mirror_positions(4, 4, 0, false).is_none());
        assert!(mirror_positions(4, 4, 0, true).is_some());
    }
}
