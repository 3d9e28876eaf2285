//! The weights a prune can reach: every constant weight of every weight-bearing node in every
//! graph (through widening DequantizeLinear / Cast / DEQUANTIZE), deduplicated by storage.

use super::options::Pattern;
use super::report::SkippedWeight;
use crate::magnitude::layout;
use crate::model::stats::{self, WeightKind};
use crate::model::{DType, Graph, Model, Quant, TensorId};
use bytes::Bytes;
use regex::Regex;
use std::collections::HashMap;

/// One weight tensor pare can prune, with everything that uses it.
#[derive(Debug, Clone)]
pub(super) struct Candidate {
    pub(super) handle: usize,
    pub(super) graph: usize,
    pub(super) name: String,
    pub(super) nodes: Vec<String>,
    pub(super) ops: Vec<String>,
    /// The widening op between the stored tensor and its consumer, if any.
    pub(super) via: Option<String>,
    pub(super) dtype: DType,
    pub(super) shape: Vec<u64>,
    pub(super) quant: Option<Quant>,
    pub(super) data: Bytes,
    /// Output- and input-channel axes of the weight (for N:M groups and blocks).
    pub(super) out_axis: usize,
    pub(super) in_axis: Option<usize>,
    /// The first consumer (node index in its graph) and the input slot the weight feeds.
    pub(super) node: usize,
    pub(super) slot: usize,
    pub(super) tensor: TensorId,
}

impl Candidate {
    pub(super) fn numel(&self) -> u64 {
        self.shape.iter().product()
    }

    pub(super) fn matches(&self, r: &Regex) -> bool {
        r.is_match(&self.name) || self.nodes.iter().any(|n| r.is_match(n))
    }
}

/// Finds every weight of every weight-bearing node in every graph, deduplicated by storage.
pub(super) fn discover(model: &Model) -> (Vec<Candidate>, Vec<SkippedWeight>) {
    let mut cands: Vec<Candidate> = Vec::new();
    let mut by_handle: HashMap<usize, usize> = HashMap::new();
    let mut skipped: Vec<SkippedWeight> = Vec::new();
    let mut skipped_names: HashMap<(usize, String), usize> = HashMap::new();
    for (gi, g) in model.graphs.iter().enumerate() {
        let prod = stats::producers(g);
        for (node_index, node) in g.nodes.iter().enumerate() {
            let Some((indices, kind)) = stats::weight_inputs(&node.op) else {
                continue;
            };
            for &i in indices {
                let Some(Some(input)) = node.inputs.get(i) else {
                    continue;
                };
                let Some(wid) = stats::stored_constant(g, &prod, *input) else {
                    continue;
                };
                let via = (wid != *input).then(|| g.nodes[prod[input]].op.clone());
                add_weight(
                    g,
                    gi,
                    (node_index, node),
                    i,
                    wid,
                    via,
                    &mut cands,
                    &mut by_handle,
                    &mut skipped,
                    &mut skipped_names,
                );
                if matches!(kind, WeightKind::Dense) {
                    break;
                }
            }
        }
    }
    (cands, skipped)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn add_weight(
    g: &Graph,
    gi: usize,
    (node_index, node): (usize, &crate::model::Node),
    input: usize,
    wid: TensorId,
    via: Option<String>,
    cands: &mut Vec<Candidate>,
    by_handle: &mut HashMap<usize, usize>,
    skipped: &mut Vec<SkippedWeight>,
    skipped_names: &mut HashMap<(usize, String), usize>,
) {
    let t = &g.tensors[wid];
    let params = t.numel().unwrap_or(0);
    let mut skip = |reason: String| {
        let key = (gi, t.name.clone());
        if let Some(&i) = skipped_names.get(&key) {
            let s: &mut SkippedWeight = &mut skipped[i];
            s.nodes.push(node.name.clone());
            s.ops.push(node.op.clone());
        } else {
            skipped_names.insert(key, skipped.len());
            skipped.push(SkippedWeight {
                name: t.name.clone(),
                nodes: vec![node.name.clone()],
                ops: vec![node.op.clone()],
                params,
                reason,
            });
        }
    };
    let (Some(handle), Some(data)) = (t.handle, t.data.clone()) else {
        skip(if t.sparse {
            format!(
                "stored sparse as {}, which pare cannot read as dense values",
                t.dtype
            )
        } else {
            format!(
                "stored as {}, which pare cannot read as dense values",
                t.dtype
            )
        });
        return;
    };
    if let Some(&ci) = by_handle.get(&handle) {
        let c = &mut cands[ci];
        c.nodes.push(node.name.clone());
        c.ops.push(node.op.clone());
        return;
    }
    let Some(shape) = t.fixed_shape() else {
        skip("its shape is not fully known".into());
        return;
    };
    if shape.len() < 2 {
        skip(format!(
            "rank {} (pare prunes weight matrices and kernels)",
            shape.len()
        ));
        return;
    }
    let size = t.dtype.size().unwrap_or(0) as u64;
    if size == 0 || params.checked_mul(size) != Some(data.len() as u64) {
        skip(format!(
            "its data has {} bytes but its shape and type need {}",
            data.len(),
            params.saturating_mul(size)
        ));
        return;
    }
    let (out_axis, in_axis) = layout(&node.op, input, node.attrs.trans_b, shape.len());
    by_handle.insert(handle, cands.len());
    cands.push(Candidate {
        handle,
        graph: gi,
        name: t.name.clone(),
        nodes: vec![node.name.clone()],
        ops: vec![node.op.clone()],
        via,
        dtype: t.dtype,
        shape,
        quant: t.quant.clone(),
        data,
        out_axis,
        in_axis,
        node: node_index,
        slot: input,
        tensor: wid,
    });
}

/// Why a pattern does not fit a tensor, if it does not.
pub(super) fn pattern_misfit(c: &Candidate, p: Pattern) -> Option<String> {
    let dim = |a: usize| c.shape[a];
    match p {
        Pattern::Unstructured => None,
        Pattern::NOfM { m, .. } => match c.in_axis {
            None => Some(format!(
                "{p} needs an input-channel axis and {} kernels have none",
                c.ops[0]
            )),
            Some(a) if dim(a) % m as u64 != 0 => Some(format!(
                "{p} needs the input-channel axis (axis {a}, length {}) to be a multiple of {m}",
                dim(a)
            )),
            _ => None,
        },
        Pattern::Block { rows, cols } => match c.in_axis {
            None => Some(format!(
                "{p} needs an input-channel axis and {} kernels have none",
                c.ops[0]
            )),
            Some(a) if a == c.out_axis => Some(format!("{p} needs two distinct channel axes")),
            Some(a) => {
                let mut why = Vec::new();
                if dim(c.out_axis) % rows as u64 != 0 {
                    why.push(format!(
                        "output channels (axis {}, {}) divisible by {rows}",
                        c.out_axis,
                        dim(c.out_axis)
                    ));
                }
                if dim(a) % cols as u64 != 0 {
                    why.push(format!(
                        "input channels (axis {a}, {}) divisible by {cols}",
                        dim(a)
                    ));
                }
                (!why.is_empty()).then(|| format!("{p} needs {}", why.join(" and ")))
            }
        },
    }
}
