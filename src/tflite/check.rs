//! Consistency checks the flatbuffer verifier cannot make, run when a file is read: indices
//! point at what exists, constants hold their shapes' bytes, and layers' shapes fit together.

use super::{dtype_from_tflite, TfliteDocument};
use crate::error::{Error, Result};
use crate::tflite_gen::tflite as fb;

impl TfliteDocument {
    /// Index checks the flatbuffer verifier cannot do: every tensor, buffer and opcode index
    /// must point at something that exists.
    pub(super) fn check_references(&self) -> Result<()> {
        let nbuf = self.buffers.len();
        let nops = self.model.operator_codes.as_ref().map_or(0, |v| v.len());
        let nsub = self.model.subgraphs.as_ref().map_or(0, |v| v.len());
        let bad = |msg: String| Err(Error::malformed(&self.path, msg));
        for (si, sg) in self.model.subgraphs.iter().flatten().enumerate() {
            let ntensors = sg.tensors.as_ref().map_or(0, |v| v.len());
            for (ti, t) in sg.tensors.iter().flatten().enumerate() {
                if t.buffer as usize >= nbuf {
                    return bad(format!(
                        "subgraph {si} tensor {ti} ({:?}) refers to buffer {} but the model has {nbuf}",
                        t.name.as_deref().unwrap_or(""),
                        t.buffer
                    ));
                }
                self.check_constant_bytes(t)?;
            }
            let tensor_ok = |i: &i32| *i == -1 || (*i >= 0 && (*i as usize) < ntensors);
            for list in [&sg.inputs, &sg.outputs].into_iter().flatten() {
                if let Some(i) = list.iter().find(|i| !tensor_ok(i)) {
                    return bad(format!(
                        "subgraph {si} lists tensor {i} as input/output but has {ntensors} tensors"
                    ));
                }
            }
            for (oi, op) in sg.operators.iter().flatten().enumerate() {
                if op.opcode_index as usize >= nops {
                    return bad(format!(
                        "subgraph {si} operator {oi} uses opcode {} but the model has {nops}",
                        op.opcode_index
                    ));
                }
                for list in [&op.inputs, &op.outputs, &op.intermediates]
                    .into_iter()
                    .flatten()
                {
                    if let Some(i) = list.iter().find(|i| !tensor_ok(i)) {
                        return bad(format!("subgraph {si} operator {oi} refers to tensor {i} but the subgraph has {ntensors}"));
                    }
                }
            }
        }
        for sig in self.model.signature_defs.iter().flatten() {
            if sig.subgraph_index as usize >= nsub {
                return bad(format!(
                    "signature {:?} refers to subgraph {} of {nsub}",
                    sig.signature_key, sig.subgraph_index
                ));
            }
        }
        for m in self.model.metadata.iter().flatten() {
            if m.buffer as usize >= nbuf {
                return bad(format!(
                    "metadata {:?} refers to buffer {} of {nbuf}",
                    m.name, m.buffer
                ));
            }
        }
        Ok(())
    }

    /// A dense constant's buffer must hold exactly its shape's bytes (LiteRT allocates from
    /// the shape): otherwise every count, edit and validation of it would be wrong.
    fn check_constant_bytes(&self, t: &fb::TensorT) -> Result<()> {
        let Some(Some(data)) = self.buffers.get(t.buffer as usize) else {
            return Ok(());
        };
        if t.buffer == 0 || data.is_empty() || t.sparsity.is_some() {
            return Ok(());
        }
        let dtype = dtype_from_tflite(t.type_);
        let (Some(size), Some(dims)) = (dtype.size(), &t.shape) else {
            return Ok(()); // strings and sub-byte types: not interpreted
        };
        let need = dims.iter().try_fold(size as u64, |acc, &d| {
            u64::try_from(d).ok().and_then(|d| acc.checked_mul(d))
        });
        if need == Some(data.len() as u64) {
            return Ok(());
        }
        Err(Error::malformed(
            &self.path,
            format!(
                "tensor {:?}: buffer {} holds {} bytes, but its shape {dims:?} of {dtype} needs {}",
                t.name.as_deref().unwrap_or_default(),
                t.buffer,
                data.len(),
                need.map_or("an impossible size".to_string(), |n| n.to_string())
            ),
        ))
    }

    /// Shapes LiteRT refuses when it allocates (and that tract, given them, may run off the end
    /// of a buffer on): a `shape_signature` that disagrees with `shape`, and a
    /// FULLY_CONNECTED, CONV_2D or DEPTHWISE_CONV_2D whose input does not fit its weights.
    /// LiteRT allocates from `shape` (1 where the signature says -1), and so is this checked.
    pub(super) fn check_layer_shapes(&self) -> Result<()> {
        for (si, sg) in self.model.subgraphs.iter().flatten().enumerate() {
            let tensors = sg.tensors.as_deref().unwrap_or_default();
            let name = |t: &fb::TensorT| t.name.clone().unwrap_or_default();
            for t in tensors {
                if let (Some(shape), Some(sig)) = (&t.shape, &t.shape_signature) {
                    let agree = shape.len() == sig.len()
                        && shape.iter().zip(sig).all(|(&d, &s)| s == -1 || s == d);
                    if !agree {
                        return Err(Error::malformed(
                            &self.path,
                            format!(
                                "tensor {:?}: shape {shape:?} disagrees with its shape_signature {sig:?}",
                                name(t)
                            ),
                        ));
                    }
                }
            }
            let shape_of = |i: i32| {
                let t = tensors.get(usize::try_from(i).ok()?)?;
                let s = t.shape.as_ref()?;
                s.iter().all(|&d| d >= 0).then_some((t, s))
            };
            for (oi, op) in sg.operators.iter().flatten().enumerate() {
                let ins = op.inputs.as_deref().unwrap_or_default();
                let (Some((x, xs)), Some((w, ws))) = (
                    ins.first().and_then(|&i| shape_of(i)),
                    ins.get(1).and_then(|&i| shape_of(i)),
                ) else {
                    continue;
                };
                let builtin = self.builtin(op.opcode_index);
                let problem = layer_shape_problem(builtin, op, xs, ws);
                if let Some(problem) = problem {
                    return Err(Error::malformed(
                        &self.path,
                        format!(
                            "subgraph {si} operator {oi} ({}): input {:?} of shape {xs:?} does not fit weights {:?} of shape {ws:?}: {problem}",
                            builtin.variant_name().unwrap_or("?"),
                            name(x),
                            name(w)
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// What LiteRT's prepare step would refuse in a layer's input and weight shapes, if anything.
fn layer_shape_problem(
    builtin: fb::BuiltinOperator,
    op: &fb::OperatorT,
    x: &[i32],
    w: &[i32],
) -> Option<String> {
    if x.is_empty() || w.is_empty() {
        return None; // unranked: nothing to compare
    }
    let (x, w): (Vec<i64>, Vec<i64>) = (
        x.iter().map(|&d| d as i64).collect(),
        w.iter().map(|&d| d as i64).collect(),
    );
    match builtin {
        fb::BuiltinOperator::FULLY_CONNECTED => {
            let &[_, k] = w.as_slice() else {
                return Some("weights must be [outputs, inputs]".into());
            };
            let keep_num_dims = matches!(
                &op.builtin_options,
                fb::BuiltinOptionsT::FullyConnectedOptions(o) if o.keep_num_dims
            );
            if keep_num_dims {
                (x.last() != Some(&k)).then(|| format!("its last dimension must be {k}"))
            } else {
                let n = x.iter().try_fold(1i64, |a, &d| a.checked_mul(d));
                (k == 0 || n.is_none_or(|n| n % k != 0))
                    .then(|| format!("its size must be a multiple of {k}"))
            }
        }
        fb::BuiltinOperator::CONV_2D => {
            let (&[_, _, _, c], &[_, _, _, ci]) = (x.as_slice(), w.as_slice()) else {
                return Some("input and weights must be 4-D".into());
            };
            (ci == 0 || c % ci != 0)
                .then(|| format!("its {c} channels must be a multiple of the weights' {ci}"))
        }
        fb::BuiltinOperator::DEPTHWISE_CONV_2D => {
            let (&[_, _, _, c], &[_, _, _, co]) = (x.as_slice(), w.as_slice()) else {
                return Some("input and weights must be 4-D".into());
            };
            (c == 0 || co % c != 0)
                .then(|| format!("the weights' {co} channels must be a multiple of its {c}"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(b: fb::BuiltinOperator, x: &[i32], w: &[i32]) -> Option<String> {
        layer_shape_problem(b, &fb::OperatorT::default(), x, w)
    }

    #[test]
    fn layers_whose_input_fits_their_weights_pass_and_the_rest_are_named() {
        use fb::BuiltinOperator as B;
        assert_eq!(problem(B::FULLY_CONNECTED, &[1, 64], &[10, 64]), None);
        assert_eq!(problem(B::FULLY_CONNECTED, &[1, 4, 4, 4], &[10, 64]), None);
        assert!(problem(B::FULLY_CONNECTED, &[1, 96], &[10, 64]).is_some());
        assert!(problem(B::FULLY_CONNECTED, &[1, 64], &[10, 0]).is_some());
        assert_eq!(problem(B::CONV_2D, &[1, 8, 8, 6], &[4, 3, 3, 3]), None); // 2 groups
        assert!(problem(B::CONV_2D, &[1, 8, 8, 5], &[4, 3, 3, 3]).is_some());
        assert_eq!(
            problem(B::DEPTHWISE_CONV_2D, &[1, 8, 8, 4], &[1, 3, 3, 8]),
            None
        );
        assert!(problem(B::DEPTHWISE_CONV_2D, &[1, 8, 8, 3], &[1, 3, 3, 8]).is_some());
        assert_eq!(problem(B::CONV_2D, &[], &[4, 3, 3, 3]), None); // unranked input
        assert_eq!(problem(B::ADD, &[1, 3], &[9]), None);
    }
}
