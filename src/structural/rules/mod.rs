//! One rule per op: how channels flow through it. Supporting a new op is one entry in
//! [`rule`]; an op without an entry is a boundary (the channels that reach it are kept).

mod layers;
mod shapes;

use super::graph::{ChannelId, DepGraph, Role, Slice, Track};
use crate::model::stats::{is_widening, producers};
use crate::model::{DType, Format, Graph, TensorId};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// ONNX Conv: a producer (group 1), depthwise (group = channels), or grouped (channel o
    /// of every group coupled).
    Conv,
    /// TFLite CONV_2D (weights OHWI; grouped when the weight has fewer input channels).
    TfliteConv,
    /// TFLite DEPTHWISE_CONV_2D (weights 1HWC), depth multiplier 1.
    TfliteDepthwise,
    /// Gemm, MatMul with a constant right operand, FULLY_CONNECTED.
    Dense,
    BatchNorm,
    InstanceNorm,
    LayerNorm,
    /// Shape- and channel-preserving: activations, pools, Identity, Cast, per-tensor Q/DQ.
    PassThrough,
    /// Broadcasting elementwise ops: couple their activation operands, slice constant ones.
    Elementwise,
    Concat,
    /// Split along the channel axis with explicit sizes (ONNX Split, TFLite SPLIT_V), or
    /// along another axis; sizes follow the kept channels.
    Split,
    Transpose,
    /// Reshape, Flatten, Squeeze, Unsqueeze (mapped through the shapes they change).
    Reshape,
    Reduce,
    Softmax,
    Pad,
    Resize,
    /// Reads only the shape (ONNX Shape/Size): channels flow on unaffected.
    ShapeOf,
    Unknown,
}

/// The rule table, both formats.
pub fn rule(op: &str) -> Rule {
    use Rule::*;
    match op {
        "Conv" => Conv,
        "CONV_2D" => TfliteConv,
        "DEPTHWISE_CONV_2D" => TfliteDepthwise,
        "Gemm" | "MatMul" | "FULLY_CONNECTED" => Dense,
        "BatchNormalization" => BatchNorm,
        "InstanceNormalization" => InstanceNorm,
        "LayerNormalization" => LayerNorm,
        // ONNX
        "Relu" | "LeakyRelu" | "Elu" | "Selu" | "Celu" | "Sigmoid" | "HardSigmoid"
        | "HardSwish" | "Tanh" | "Softplus" | "Softsign" | "Clip" | "Gelu" | "Erf" | "Exp"
        | "Log" | "Abs" | "Neg" | "Sqrt" | "Reciprocal" | "Floor" | "Ceil" | "Round" | "Sign"
        | "Mish" | "Sin" | "Cos" | "ThresholdedRelu" | "Shrink" | "Identity" | "Dropout"
        | "Cast" | "MaxPool" | "AveragePool" | "GlobalAveragePool" | "GlobalMaxPool" | "LpPool"
        | "GlobalLpPool" | "QuantizeLinear" | "DequantizeLinear" => PassThrough,
        // TFLite
        "RELU" | "RELU6" | "RELU_N1_TO_1" | "RELU_0_TO_1" | "LOGISTIC" | "TANH" | "HARD_SWISH"
        | "LEAKY_RELU" | "ELU" | "GELU" | "ABS" | "NEG" | "EXP" | "LOG" | "SQRT" | "RSQRT"
        | "SQUARE" | "QUANTIZE" | "DEQUANTIZE" | "CAST" | "FLOOR" | "CEIL" | "ROUND" | "SIN"
        | "COS" | "AVERAGE_POOL_2D" | "MAX_POOL_2D" | "L2_POOL_2D" => PassThrough,
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "Sum" | "Mean" | "PRelu"
        | "Where" | "ADD" | "SUB" | "MUL" | "DIV" | "MAXIMUM" | "MINIMUM"
        | "SQUARED_DIFFERENCE" | "POW" | "PRELU" | "ADD_N" => Elementwise,
        "Concat" | "CONCATENATION" => Concat,
        "Split" | "SPLIT" | "SPLIT_V" => Split,
        "Transpose" | "TRANSPOSE" => Transpose,
        "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" | "RESHAPE" | "SQUEEZE" | "EXPAND_DIMS" => {
            Reshape
        }
        "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceL1" | "ReduceL2"
        | "ReduceProd" | "ReduceLogSumExp" | "ReduceSumSquare" | "MEAN" | "SUM" | "REDUCE_MAX"
        | "REDUCE_MIN" | "REDUCE_PROD" => Reduce,
        "Softmax" | "LogSoftmax" | "SOFTMAX" | "LOG_SOFTMAX" => Softmax,
        "Pad" | "PAD" | "PADV2" | "MIRROR_PAD" => Pad,
        "Resize" | "Upsample" | "RESIZE_BILINEAR" | "RESIZE_NEAREST_NEIGHBOR" => Resize,
        "Shape" | "Size" | "SHAPE" => ShapeOf,
        _ => Unknown,
    }
}

/// Integer constant values (shapes, axes, pads, perms).
pub fn const_ints(g: &Graph, t: TensorId) -> Option<Vec<i64>> {
    let t = &g.tensors[t];
    let d = t.data.as_ref()?;
    match t.dtype {
        DType::I64 => Some(
            d.chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8")))
                .collect(),
        ),
        DType::I32 => Some(
            d.chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().expect("4")) as i64)
                .collect(),
        ),
        _ => None,
    }
}

fn normalize(axis: i64, rank: usize) -> Option<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    (0..rank as i64).contains(&a).then_some(a as usize)
}

/// A constant piece of a run-time shape: the constant, the entry in it, and its reader
/// (node, input slot).
type ShapePiece = (TensorId, usize, (usize, usize));

struct Builder<'a> {
    g: &'a Graph,
    shapes: &'a [Option<Vec<u64>>],
    format: Format,
    onnx_opset: i64,
    prod: HashMap<TensorId, usize>,
    consumers: HashMap<TensorId, usize>,
    d: DepGraph,
}

/// Builds the dependency graph of `g` (the main graph). `shapes` holds every tensor's
/// concrete shape where known (dynamic dimensions as 1).
pub fn build(
    g: &Graph,
    shapes: &[Option<Vec<u64>>],
    format: Format,
    onnx_opset: i64,
    nested_uses: &std::collections::HashSet<String>,
    nested_handles: &std::collections::HashSet<usize>,
) -> DepGraph {
    let mut consumers: HashMap<TensorId, usize> = HashMap::new();
    for n in &g.nodes {
        for t in n.inputs.iter().flatten() {
            *consumers.entry(*t).or_default() += 1;
        }
    }
    for &o in &g.outputs {
        *consumers.entry(o).or_default() += 1;
    }
    let mut b = Builder {
        g,
        shapes,
        format,
        onnx_opset,
        prod: producers(g),
        consumers,
        d: DepGraph::new(g.tensors.len()),
    };
    for ni in 0..g.nodes.len() {
        b.visit(ni);
    }
    let mut d = b.d;
    for &o in &g.outputs {
        if d.pin_track(o) {
            d.boundaries.push(super::graph::Boundary {
                node: g.tensors[o].name.clone(),
                op: "graph output".into(),
                reason: "the model's outputs keep their shapes".into(),
            });
        }
    }
    // Values an If/Loop/Scan body reads from this graph keep their channels.
    for (ti, t) in g.tensors.iter().enumerate() {
        if !t.is_const() && nested_uses.contains(&t.name) && d.pin_track(ti) {
            d.boundaries.push(super::graph::Boundary {
                node: t.name.clone(),
                op: "nested graph".into(),
                reason: "read by an If/Loop/Scan body".into(),
            });
        }
    }
    d.check_constants(g, nested_uses, nested_handles);
    d
}

impl Builder<'_> {
    fn shape(&self, t: TensorId) -> Option<&Vec<u64>> {
        self.shapes.get(t)?.as_ref()
    }

    fn track(&self, t: TensorId) -> Option<Track> {
        self.d.tracks[t].clone()
    }

    fn input(&self, ni: usize, slot: usize) -> Option<TensorId> {
        self.g.nodes[ni].inputs.get(slot).copied().flatten()
    }

    /// A constant whose payload has exactly the bytes its shape says (so slicing stays in
    /// bounds even on a damaged file).
    fn is_dense_const(&self, t: TensorId) -> bool {
        let t = &self.g.tensors[t];
        match (t.data.as_ref(), t.dtype.size(), t.numel()) {
            (Some(d), Some(size), Some(n)) => (d.len() as u64) == n.saturating_mul(size as u64),
            _ => false,
        }
    }

    /// A constant input to slice along `axis`, directly or through a widening op
    /// (DequantizeLinear, Cast, DEQUANTIZE) that only this node reads. False when it cannot
    /// be sliced (computed at run time, stored sparsely, packed, shared through the widening op).
    fn slice_input(
        &mut self,
        ni: usize,
        slot: usize,
        axis: usize,
        ids: &[ChannelId],
        role: Role,
    ) -> bool {
        let Some(t) = self.input(ni, slot) else {
            return false;
        };
        let len_ok = |b: &Self, t: TensorId| {
            b.shape(t)
                .and_then(|s| s.get(axis))
                .is_some_and(|&d| d == ids.len() as u64)
        };
        if self.is_dense_const(t) {
            if !len_ok(self, t) {
                return false;
            }
            self.d.slices.push(Slice {
                tensor: t,
                axis,
                ids: ids.to_vec(),
                role,
                node: ni,
                slot: Some(slot),
            });
            return true;
        }
        let Some(&p) = self.prod.get(&t) else {
            return false;
        };
        let pn = &self.g.nodes[p];
        // Identity: exporters alias shared constants through it.
        let view = is_widening(&pn.op) || pn.op == "Identity";
        if !view || pn.op == "DENSIFY" || self.consumers.get(&t) != Some(&1) {
            return false;
        }
        let Some(x) = pn.inputs.first().copied().flatten() else {
            return false;
        };
        if !self.is_dense_const(x) || !len_ok(self, x) {
            return false;
        }
        let mut extra = Vec::new();
        if pn.op == "DequantizeLinear" {
            let rank = self.shape(x).map_or(0, Vec::len);
            let qaxis = normalize(pn.attrs.axis.unwrap_or(1), rank);
            for s in [1usize, 2] {
                let Some(q) = pn.inputs.get(s).copied().flatten() else {
                    continue;
                };
                let n = self.g.tensors[q].numel().unwrap_or(0);
                if n > 1 {
                    if qaxis != Some(axis) {
                        continue; // per-axis along another axis: unaffected
                    }
                    if !self.is_dense_const(q) || n != ids.len() as u64 {
                        return false;
                    }
                    extra.push(Slice {
                        tensor: q,
                        axis: 0,
                        ids: ids.to_vec(),
                        role: Role::Coupled,
                        node: p,
                        slot: Some(s),
                    });
                }
            }
        }
        self.d.slices.push(Slice {
            tensor: t,
            axis,
            ids: ids.to_vec(),
            role,
            node: ni,
            slot: None,
        });
        self.d.slices.push(Slice {
            tensor: x,
            axis,
            ids: ids.to_vec(),
            role,
            node: p,
            slot: Some(0),
        });
        self.d.slices.extend(extra);
        true
    }

    /// An optional per-channel input (bias, normalization vector): absent and scalar inputs
    /// need nothing.
    fn slice_optional(
        &mut self,
        ni: usize,
        slot: usize,
        axis: usize,
        ids: &[ChannelId],
        role: Role,
    ) -> bool {
        let Some(t) = self.input(ni, slot) else {
            return true;
        };
        if self.g.tensors[t].numel() == Some(1) {
            return true;
        }
        self.slice_input(ni, slot, axis, ids, role)
    }

    /// Keeps `ids` (the output channels of `ni`) and records why.
    fn refuse(&mut self, ni: usize, ids: &[ChannelId], reason: &str) {
        let n = &self.g.nodes[ni];
        let mut free = ids.iter().any(|&i| !self.d.is_pinned(i));
        self.d.pin_all(ids);
        for t in n.inputs.iter().flatten() {
            free |= self.d.pin_track(*t);
        }
        if free {
            self.d.boundaries.push(super::graph::Boundary {
                node: n.name.clone(),
                op: n.op.clone(),
                reason: reason.to_string(),
            });
        }
    }

    fn set(&mut self, t: TensorId, axis: usize, ids: Vec<ChannelId>) {
        self.d.tracks[t] = Some(Track { axis, ids });
    }

    fn visit(&mut self, ni: usize) {
        let n = &self.g.nodes[ni];
        let tracked = n
            .inputs
            .iter()
            .flatten()
            .any(|t| self.d.tracks[*t].is_some());
        match rule(&n.op) {
            Rule::Conv => self.conv(ni),
            Rule::TfliteConv => self.tflite_conv(ni),
            Rule::TfliteDepthwise => self.tflite_depthwise(ni),
            Rule::Dense => self.dense(ni),
            _ if !tracked => {}
            Rule::BatchNorm => self.per_channel_params(
                ni,
                1,
                &[
                    (1, Role::BnScale),
                    (2, Role::Coupled),
                    (3, Role::Coupled),
                    (4, Role::Coupled),
                ],
            ),
            Rule::InstanceNorm => {
                self.per_channel_params(ni, 1, &[(1, Role::Coupled), (2, Role::Coupled)])
            }
            Rule::LayerNorm => self.layer_norm(ni),
            Rule::PassThrough => self.pass_through(ni),
            Rule::Elementwise => self.elementwise(ni),
            Rule::Concat => self.concat(ni),
            Rule::Split => self.split(ni),
            Rule::Transpose => self.transpose(ni),
            Rule::Reshape => self.reshape(ni),
            Rule::Reduce => self.reduce(ni),
            Rule::Softmax => self.softmax(ni),
            Rule::Pad => self.pad(ni),
            Rule::Resize => self.resize(ni),
            Rule::ShapeOf => {}
            Rule::Unknown => self.d.boundary(
                self.g,
                ni,
                format!("{} is not supported for channel pruning", n.op),
            ),
        }
    }

    fn out(&self, ni: usize) -> Option<TensorId> {
        self.g.nodes[ni].outputs.first().copied()
    }

    /// A weight-bearing op's new output channels (pinned when its filters cannot be sliced).
    fn produce(
        &mut self,
        ni: usize,
        w_slot: usize,
        out_axis: usize,
        n: usize,
        bias: Option<(usize, usize)>,
    ) -> Option<Vec<ChannelId>> {
        let Some(ids) = self.d.fresh(n, false) else {
            self.d.boundary(self.g, ni, "an implausible channel count");
            return None;
        };
        let mark = self.d.slices.len();
        let ok = self.slice_input(ni, w_slot, out_axis, &ids, Role::Filters)
            && bias.is_none_or(|(slot, axis)| {
                self.slice_optional(ni, slot, axis, &ids, Role::Coupled)
            });
        if !ok {
            self.d.slices.truncate(mark);
            self.d.pin_all(&ids);
            let n = &self.g.nodes[ni];
            self.d.boundaries.push(super::graph::Boundary {
                node: n.name.clone(),
                op: n.op.clone(),
                reason: "its weight or bias cannot be sliced (computed at run time, shared through an op, or stored sparsely)".into(),
            });
            // Still the model's channels (kept ones): they flow on, so that whatever they
            // are coupled with is kept too.
            self.d.producers.push(super::graph::Producer {
                node: ni,
                ids: ids.clone(),
            });
            return Some(ids);
        }
        self.d.producers.push(super::graph::Producer {
            node: ni,
            ids: ids.clone(),
        });
        Some(ids)
    }

    /// Slices a consumer's weight along its input axis by the input's track.
    fn consume(
        &mut self,
        ni: usize,
        x: TensorId,
        x_axis: usize,
        w_slot: usize,
        w_in_axis: usize,
        w_in_len: u64,
    ) {
        let Some(tr) = self.track(x) else { return };
        if tr.axis != x_axis || tr.ids.len() as u64 != w_in_len {
            let op = self.g.nodes[ni].op.clone();
            self.d.boundary(
                self.g,
                ni,
                format!("{op} reads channels along an axis it does not reduce"),
            );
            return;
        }
        if !self.slice_input(ni, w_slot, w_in_axis, &tr.ids, Role::Inputs) {
            self.d.boundary(
                self.g,
                ni,
                "its weight cannot be sliced (computed at run time, shared or packed)",
            );
        }
    }
}
