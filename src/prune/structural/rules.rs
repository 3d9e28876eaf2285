//! One rule per op: how channels flow through it. Supporting a new op is one entry in
//! [`rule`]; an op without an entry is a boundary (the channels that reach it are kept).

use super::graph::{ChannelId, DepGraph, Role, ShapeConst, Slice, Track};
use crate::model::stats::{is_widening, producers};
use crate::model::{DType, Format, Graph, TensorId};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// ONNX Conv: a producer (group 1), depthwise (group = channels), else a boundary.
    Conv,
    /// TFLite CONV_2D (weights OHWI).
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
    ) -> Vec<ChannelId> {
        let ids = self.d.fresh(n, false);
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
            return ids;
        }
        self.d.producers.push(super::graph::Producer {
            node: ni,
            ids: ids.clone(),
        });
        ids
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

    fn conv(&mut self, ni: usize) {
        let n = &self.g.nodes[ni];
        let (Some(x), Some(w), Some(out)) = (self.input(ni, 0), self.input(ni, 1), self.out(ni))
        else {
            return self.d.boundary(self.g, ni, "Conv without input or weight");
        };
        let Some(ws) = self.shape(w).cloned().filter(|s| s.len() >= 3) else {
            return self.d.boundary(self.g, ni, "Conv weight of unknown shape");
        };
        let group = n.attrs.group.unwrap_or(1);
        let cin = self.shape(x).and_then(|s| s.get(1).copied());
        let (o, iw) = (ws[0], ws[1]);
        if group == 1 {
            self.consume(ni, x, 1, 1, 1, iw);
            {
                let ids = self.produce(ni, 1, 0, o as usize, Some((2, 0)));
                self.set(out, 1, ids);
            }
        } else if iw == 1 && cin == Some(group) && o == group {
            self.depthwise(ni, x, 1, 0, Some(2), out, 1);
            if self.d.tracks[out].is_some() {
                self.d.groups.push((ni, out));
            }
        } else {
            self.grouped(ni, x, 1, 1, group as usize, o as usize, iw as usize, out);
        }
    }

    /// A grouped convolution (`g` groups; `iw` input channels per group, weight axis `w_in`):
    /// every group must keep the same width, so channel `o` of every group is coupled with
    /// channel `o` of the others, on the input side and on the output side. The group count
    /// stays; each group gets narrower.
    #[allow(clippy::too_many_arguments)]
    fn grouped(
        &mut self,
        ni: usize,
        x: TensorId,
        x_axis: usize,
        w_in: usize,
        g: usize,
        o: usize,
        iw: usize,
        out: TensorId,
    ) {
        let cin = self
            .shape(x)
            .and_then(|s| s.get(x_axis).copied())
            .unwrap_or(0) as usize;
        if g == 0 || cin != g * iw || o % g != 0 {
            return self.d.boundary(
                self.g,
                ni,
                format!("grouped convolution (group {g}) with an unexpected shape"),
            );
        }
        if let Some(tr) = self.track(x) {
            if tr.axis != x_axis || tr.ids.len() != cin {
                return self
                    .d
                    .boundary(self.g, ni, "channels on an unexpected axis");
            }
            for k in 1..g {
                for j in 0..iw {
                    self.d.union(tr.ids[j], tr.ids[k * iw + j]);
                }
            }
            if !self.slice_input(ni, 1, w_in, &tr.ids[..iw], Role::Inputs) {
                self.d.boundary(
                    self.g,
                    ni,
                    "its weight cannot be sliced (computed at run time, shared or packed)",
                );
            }
        }
        let ids = self.produce(ni, 1, 0, o, Some((2, 0)));
        let ow = o / g;
        for k in 1..g {
            for j in 0..ow {
                self.d.union(ids[j], ids[k * ow + j]);
            }
        }
        self.set(out, x_axis, ids);
    }

    /// Depthwise: output channel c is input channel c, filtered by kernel c.
    #[allow(clippy::too_many_arguments)]
    fn depthwise(
        &mut self,
        ni: usize,
        x: TensorId,
        x_axis: usize,
        w_axis: usize,
        bias: Option<usize>,
        out: TensorId,
        out_axis: usize,
    ) {
        let Some(tr) = self.track(x).filter(|t| t.axis == x_axis) else {
            if self.d.tracks[x].is_some() {
                self.d
                    .boundary(self.g, ni, "channels on an unexpected axis");
            }
            return;
        };
        let mark = self.d.slices.len();
        let ok = self.slice_input(ni, 1, w_axis, &tr.ids, Role::Filters)
            && bias.is_none_or(|b| self.slice_optional(ni, b, 0, &tr.ids, Role::Coupled));
        if !ok {
            self.d.slices.truncate(mark);
            return self
                .d
                .boundary(self.g, ni, "its depthwise kernel cannot be sliced");
        }
        self.set(out, out_axis, tr.ids);
    }

    fn tflite_conv(&mut self, ni: usize) {
        let (Some(x), Some(w), Some(out)) = (self.input(ni, 0), self.input(ni, 1), self.out(ni))
        else {
            return self
                .d
                .boundary(self.g, ni, "CONV_2D without input or weight");
        };
        let Some(ws) = self.shape(w).cloned().filter(|s| s.len() == 4) else {
            return self
                .d
                .boundary(self.g, ni, "CONV_2D weight of unknown shape");
        };
        let cin = self.shape(x).and_then(|s| s.last().copied());
        if cin != Some(ws[3]) {
            let g = cin.unwrap_or(0) / ws[3].max(1);
            return self.grouped(ni, x, 3, 3, g as usize, ws[0] as usize, ws[3] as usize, out);
        }
        self.consume(ni, x, 3, 1, 3, ws[3]);
        {
            let ids = self.produce(ni, 1, 0, ws[0] as usize, Some((2, 0)));
            self.set(out, 3, ids);
        }
    }

    fn tflite_depthwise(&mut self, ni: usize) {
        let (Some(x), Some(w), Some(out)) = (self.input(ni, 0), self.input(ni, 1), self.out(ni))
        else {
            return self
                .d
                .boundary(self.g, ni, "DEPTHWISE_CONV_2D without input or weight");
        };
        let cin = self.shape(x).and_then(|s| s.last().copied());
        let cw = self.shape(w).filter(|s| s.len() == 4).map(|s| s[3]);
        if cin.is_none() || cin != cw {
            return self.d.boundary(self.g, ni, "depth multiplier other than 1");
        }
        self.depthwise(ni, x, 3, 3, Some(2), out, 3);
    }

    fn dense(&mut self, ni: usize) {
        let n = &self.g.nodes[ni];
        let (Some(x), Some(w), Some(out)) = (self.input(ni, 0), self.input(ni, 1), self.out(ni))
        else {
            return self.d.boundary(self.g, ni, "no input or weight");
        };
        let w_const = self.is_dense_const(w)
            || self
                .prod
                .get(&w)
                .is_some_and(|&p| is_widening(&self.g.nodes[p].op));
        if !w_const {
            return self
                .d
                .boundary(self.g, ni, format!("{} of two activations", n.op));
        }
        let Some(ws) = self.shape(w).cloned().filter(|s| s.len() == 2) else {
            return self.d.boundary(self.g, ni, "weight is not a matrix");
        };
        let (in_axis, out_axis, bias) = match n.op.as_str() {
            "Gemm" if n.attrs.trans_a => {
                return self.d.boundary(self.g, ni, "Gemm with transA");
            }
            "Gemm" => {
                let (i, o) = if n.attrs.trans_b { (1, 0) } else { (0, 1) };
                // C broadcasts to [M, N]: [N] slices along 0, [1, N] along 1.
                let c = self.input(ni, 2).and_then(|c| self.shape(c).cloned());
                let bias = match c.as_deref() {
                    None | Some([]) | Some([1]) => None,
                    Some([_]) => Some((2, 0)),
                    Some([1, _]) => Some((2, 1)),
                    Some(_) => return self.d.boundary(self.g, ni, "Gemm with a full-size C"),
                };
                (i, o, bias)
            }
            "MatMul" => (0, 1, None),
            _ if n.attrs.packed_weights => {
                return self.d.boundary(self.g, ni, "packed (shuffled) weights");
            }
            _ => (1, 0, Some((2, 0))),
        };
        let x_rank = self.shape(x).map_or(0, Vec::len);
        self.consume(ni, x, x_rank.saturating_sub(1), 1, in_axis, ws[in_axis]);
        let out_rank = self.shape(out).map_or(x_rank, Vec::len);
        if out_rank == 0 {
            return;
        }
        {
            let ids = self.produce(ni, 1, out_axis, ws[out_axis] as usize, bias);
            self.set(out, out_rank - 1, ids);
        }
    }

    /// Normalization with per-channel vectors on the channel axis (1).
    fn per_channel_params(&mut self, ni: usize, axis: usize, params: &[(usize, Role)]) {
        let x = self.input(ni, 0).expect("tracked input");
        let (Some(tr), Some(out)) = (self.track(x), self.out(ni)) else {
            return self.d.boundary(self.g, ni, "no channels on its data input");
        };
        if tr.axis != axis {
            return self
                .d
                .boundary(self.g, ni, "channels on an unexpected axis");
        }
        let mark = self.d.slices.len();
        for &(slot, role) in params {
            if !self.slice_optional(ni, slot, 0, &tr.ids, role) {
                self.d.slices.truncate(mark);
                return self
                    .d
                    .boundary(self.g, ni, "a per-channel parameter cannot be sliced");
            }
        }
        self.set(out, tr.axis, tr.ids);
    }

    fn layer_norm(&mut self, ni: usize) {
        let n = &self.g.nodes[ni];
        let x = self.input(ni, 0).expect("tracked input");
        let (Some(tr), Some(out), Some(rank)) =
            (self.track(x), self.out(ni), self.shape(x).map(Vec::len))
        else {
            return self.d.boundary(self.g, ni, "unknown shape");
        };
        let Some(axis) = normalize(n.attrs.axis.unwrap_or(-1), rank) else {
            return self.d.boundary(self.g, ni, "bad axis");
        };
        if tr.axis < axis {
            self.set(out, tr.axis, tr.ids);
        } else if tr.axis == axis && axis == rank - 1 {
            let mark = self.d.slices.len();
            if !(self.slice_optional(ni, 1, 0, &tr.ids, Role::Coupled)
                && self.slice_optional(ni, 2, 0, &tr.ids, Role::Coupled))
            {
                self.d.slices.truncate(mark);
                return self
                    .d
                    .boundary(self.g, ni, "scale or bias cannot be sliced");
            }
            self.set(out, tr.axis, tr.ids);
        } else {
            self.d
                .boundary(self.g, ni, "normalizes over the channel axis and others");
        }
    }

    fn pass_through(&mut self, ni: usize) {
        let n = &self.g.nodes[ni];
        let Some(tr) = self.input(ni, 0).and_then(|x| self.track(x)) else {
            return self
                .d
                .boundary(self.g, ni, "channels enter through a parameter input");
        };
        let qdq = matches!(n.op.as_str(), "QuantizeLinear" | "DequantizeLinear");
        for slot in 1..n.inputs.len() {
            let Some(t) = self.input(ni, slot) else {
                continue;
            };
            let numel = self.g.tensors[t].numel();
            if numel == Some(1)
                || (numel.is_some()
                    && self.g.tensors[t]
                        .shape
                        .as_ref()
                        .is_some_and(|s| s.is_empty()))
            {
                continue;
            }
            let rank = self
                .shape(self.input(ni, 0).expect("x"))
                .map_or(0, Vec::len);
            if qdq
                && normalize(n.attrs.axis.unwrap_or(1), rank) == Some(tr.axis)
                && self.is_dense_const(t)
            {
                if !self.slice_input(ni, slot, 0, &tr.ids, Role::Coupled) {
                    return self.d.boundary(
                        self.g,
                        ni,
                        "per-channel quantization parameters cannot be sliced",
                    );
                }
            } else if qdq && self.is_dense_const(t) {
                continue; // per-axis along another axis
            } else {
                return self.d.boundary(self.g, ni, "a non-scalar parameter input");
            }
        }
        for &o in &n.outputs {
            self.set(o, tr.axis, tr.ids.clone());
        }
    }

    fn elementwise(&mut self, ni: usize) {
        let n = &self.g.nodes[ni];
        let Some(out) = self.out(ni) else { return };
        let Some(os) = self.shape(out).cloned() else {
            return self.d.boundary(self.g, ni, "output shape unknown");
        };
        let r = os.len();
        // Where's condition and PRelu's slope are operands like any other for broadcasting.
        let inputs: Vec<TensorId> = n.inputs.iter().flatten().copied().collect();
        let mut leader: Option<(usize, Vec<ChannelId>)> = None;
        for &i in &inputs {
            if let (Some(tr), Some(s)) = (self.track(i), self.shape(i)) {
                let a = tr.axis + r.saturating_sub(s.len());
                if a < r && os[a] == tr.ids.len() as u64 && tr.ids.len() > 1 {
                    leader = Some((a, tr.ids));
                    break;
                }
            }
        }
        let Some((axis, ids)) = leader else {
            return self.d.boundary(self.g, ni, "channels are broadcast");
        };
        let c = ids.len() as u64;
        for (slot, t) in n.inputs.iter().enumerate() {
            let Some(t) = *t else { continue };
            let Some(s) = self.shape(t).cloned() else {
                return self.d.boundary(self.g, ni, "operand shape unknown");
            };
            let off = r as i64 - s.len() as i64;
            let ai = axis as i64 - off;
            let dim = if ai >= 0 { s[ai as usize] } else { 1 };
            if let Some(tr) = self.track(t) {
                if tr.axis as i64 == ai && tr.ids.len() as u64 == c {
                    for (&a, &b) in ids.iter().zip(&tr.ids) {
                        self.d.union(a, b);
                    }
                } else if tr.ids.len() > 1 {
                    return self.refuse(ni, &ids, "operands carry channels on different axes");
                }
            } else if dim == c && !self.slice_input(ni, slot, ai as usize, &ids, Role::Coupled) {
                // Constants (directly or through Identity / DequantizeLinear) are sliced;
                // anything else of this size cannot follow the channels.
                return self.refuse(
                    ni,
                    &ids,
                    "combined with a tensor whose channels pare cannot slice",
                );
            }
        }
        self.set(out, axis, ids);
    }

    fn concat(&mut self, ni: usize) {
        let n = &self.g.nodes[ni];
        let Some(out) = self.out(ni) else { return };
        let Some(r) = self.shape(out).map(Vec::len) else {
            return self.d.boundary(self.g, ni, "output shape unknown");
        };
        let Some(axis) = normalize(n.attrs.axis.unwrap_or(0), r) else {
            return self.d.boundary(self.g, ni, "bad axis");
        };
        let inputs: Vec<TensorId> = n.inputs.iter().flatten().copied().collect();
        let tracks: Vec<Option<Track>> = inputs.iter().map(|&t| self.track(t)).collect();
        if tracks.iter().flatten().all(|t| t.axis == axis) {
            let mut ids = Vec::new();
            for (&t, tr) in inputs.iter().zip(&tracks) {
                match tr {
                    Some(tr) => ids.extend_from_slice(&tr.ids),
                    None => {
                        let Some(len) = self.shape(t).and_then(|s| s.get(axis).copied()) else {
                            return self.d.boundary(self.g, ni, "input shape unknown");
                        };
                        ids.extend(self.d.fresh(len as usize, true));
                    }
                }
            }
            self.set(out, axis, ids);
        } else if tracks.iter().all(|t| {
            t.as_ref().map(|t| (t.axis, t.ids.len()))
                == tracks[0].as_ref().map(|t| (t.axis, t.ids.len()))
        }) {
            let first = tracks[0].clone().expect("all tracked");
            for tr in tracks.iter().flatten().skip(1) {
                for (&a, &b) in first.ids.iter().zip(&tr.ids) {
                    self.d.union(a, b);
                }
            }
            self.set(out, first.axis, first.ids);
        } else {
            self.d.boundary(
                self.g,
                ni,
                "concatenates tensors whose channels do not line up",
            );
        }
    }

    fn split(&mut self, ni: usize) {
        let n = &self.g.nodes[ni];
        let const_axis = |b: &Self, slot: usize| {
            b.input(ni, slot)
                .and_then(|t| const_ints(b.g, t))
                .and_then(|v| v.first().copied())
        };
        let (x_slot, axis, sizes_slot) = match n.op.as_str() {
            "Split" => (0, n.attrs.axis.or(Some(0)), Some(1)),
            "SPLIT_V" => (0, const_axis(self, 2), Some(1)),
            _ => (1, const_axis(self, 0), None), // SPLIT: equal parts
        };
        let Some(x) = self.input(ni, x_slot) else {
            return;
        };
        let (Some(tr), Some(rank)) = (self.track(x), self.shape(x).map(Vec::len)) else {
            return self
                .d
                .boundary(self.g, ni, "channels enter through a parameter input");
        };
        let Some(axis) = axis.and_then(|a| normalize(a, rank)) else {
            return self.d.boundary(self.g, ni, "split axis unknown");
        };
        let outs = n.outputs.clone();
        if axis != tr.axis {
            for o in outs {
                self.set(o, tr.axis, tr.ids.clone());
            }
            return;
        }
        let sizes = sizes_slot.and_then(|s| self.input(ni, s).map(|t| (s, t)));
        let Some((slot, st)) = sizes else {
            return self
                .d
                .boundary(self.g, ni, "splits the channel axis into equal parts");
        };
        let Some(v) = const_ints(self.g, st) else {
            return self
                .d
                .boundary(self.g, ni, "split sizes computed at run time");
        };
        if v.len() != outs.len()
            || v.iter().any(|&d| d < 0)
            || v.iter().sum::<i64>() != tr.ids.len() as i64
        {
            return self
                .d
                .boundary(self.g, ni, "split sizes do not match the channels");
        }
        let mut off = 0usize;
        for (k, (&o, &len)) in outs.iter().zip(&v).enumerate() {
            let len = len as usize;
            self.set(o, axis, tr.ids[off..off + len].to_vec());
            self.d.shape_consts.push(ShapeConst {
                node: ni,
                tensor: Some(st),
                reader: (ni, slot),
                position: k,
                out: o,
            });
            off += len;
        }
    }

    fn transpose(&mut self, ni: usize) {
        let n = &self.g.nodes[ni];
        let x = self.input(ni, 0).expect("tracked");
        let (Some(tr), Some(out)) = (self.track(x), self.out(ni)) else {
            return self
                .d
                .boundary(self.g, ni, "channels enter through the permutation");
        };
        let rank = self.shape(x).map_or(0, Vec::len);
        let perm = match (&n.attrs.perm, self.input(ni, 1)) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(p)) => const_ints(self.g, p),
            (None, None) if self.format == Format::Onnx && rank > 0 => {
                Some((0..rank as i64).rev().collect())
            }
            _ => None,
        };
        match perm.and_then(|p| p.iter().position(|&a| a == tr.axis as i64)) {
            Some(a) => self.set(out, a, tr.ids),
            None => self.d.boundary(self.g, ni, "permutation unknown"),
        }
    }

    fn reshape(&mut self, ni: usize) {
        let n = &self.g.nodes[ni];
        let x = self.input(ni, 0).expect("tracked");
        let Some(tr) = self.track(x) else {
            return self
                .d
                .boundary(self.g, ni, "channels enter through the shape input");
        };
        let Some(out) = self.out(ni) else { return };
        let (Some(a), Some(b)) = (self.shape(x).cloned(), self.shape(out).cloned()) else {
            return self.d.boundary(self.g, ni, "input or output shape unknown");
        };
        let Some((j, ids)) = map_reshape(&a, &tr, &b) else {
            return self.d.boundary(
                self.g,
                ni,
                "splits the channel axis (e.g. a channel shuffle)",
            );
        };
        if matches!(n.op.as_str(), "Reshape" | "RESHAPE") {
            let shape_in = self.input(ni, 1);
            let explicit = |v: &[i64]| v.get(j).is_some_and(|&d| d > 0 && d as u64 == b[j]);
            match shape_in {
                Some(s) if self.g.tensors[s].data.is_some() => {
                    let v = const_ints(self.g, s).unwrap_or_default();
                    if explicit(&v) {
                        self.d.shape_consts.push(ShapeConst {
                            node: ni,
                            tensor: Some(s),
                            reader: (ni, 1),
                            position: j,
                            out,
                        });
                    }
                }
                Some(s) => match self.shape_piece(s, j, b[j]) {
                    Ok(Some((c, pos, reader))) => {
                        self.d.shape_consts.push(ShapeConst {
                            node: ni,
                            tensor: Some(c),
                            reader,
                            position: pos,
                            out,
                        });
                    }
                    Ok(None) => {}
                    Err(()) => {
                        return self.d.boundary(
                            self.g,
                            ni,
                            "its target shape is computed with a constant channel count",
                        );
                    }
                },
                None => {}
            }
            if n.attrs.new_shape.as_deref().is_some_and(explicit) {
                self.d.shape_consts.push(ShapeConst {
                    node: ni,
                    tensor: None,
                    reader: (ni, 1),
                    position: j,
                    out,
                });
            }
        }
        self.set(out, j, ids);
    }

    /// Where entry `j` (value `value`) of a run-time target shape comes from. Exporters build
    /// a flatten's target as Concat/PACK(batch taken from Shape, constant C·H·W): then that
    /// constant and the position in it. `Ok(None)` when the entry is computed from shapes at
    /// run time (it follows the pruned tensor by itself); `Err` when a constant somewhere in
    /// its computation spells out the channel count and pare cannot tell where it lands.
    fn shape_piece(&self, t: TensorId, j: usize, value: u64) -> Result<Option<ShapePiece>, ()> {
        let mut t = t;
        while let Some(&p) = self.prod.get(&t) {
            let pn = &self.g.nodes[p];
            if matches!(pn.op.as_str(), "Cast" | "CAST") {
                t = pn.inputs.first().copied().flatten().ok_or(())?;
                continue;
            }
            let pack = pn.op == "PACK";
            if matches!(pn.op.as_str(), "Concat" | "CONCATENATION" | "PACK")
                && pn.attrs.axis.unwrap_or(0) == 0
            {
                let mut off = 0usize;
                for (slot, &i) in pn
                    .inputs
                    .iter()
                    .enumerate()
                    .filter_map(|(k, i)| i.as_ref().map(|i| (k, i)))
                {
                    let len = if pack {
                        1
                    } else {
                        self.shape(i).and_then(|s| s.first().copied()).ok_or(())? as usize
                    };
                    if j < off + len {
                        let pos = j - off;
                        if let Some(v) = const_ints(self.g, i) {
                            return match v.get(pos) {
                                Some(&x) if x > 0 && x as u64 == value => {
                                    Ok(Some((i, pos, (p, slot))))
                                }
                                Some(_) => Ok(None),
                                None => Err(()),
                            };
                        }
                        let pieces = self.shape_pieces(i);
                        return if value > 1 && pieces.iter().any(|v| v.contains(&(value as i64))) {
                            Err(())
                        } else {
                            Ok(None)
                        };
                    }
                    off += len;
                }
                return Err(());
            }
            break;
        }
        let pieces = self.shape_pieces(t);
        if value > 1 && pieces.iter().any(|v| v.contains(&(value as i64))) {
            Err(())
        } else {
            Ok(None)
        }
    }

    /// Constant integer inputs of the nodes computing a run-time shape (a few levels up).
    fn shape_pieces(&self, t: TensorId) -> Vec<Vec<i64>> {
        let mut out = Vec::new();
        let mut stack = vec![(t, 0)];
        while let Some((t, depth)) = stack.pop() {
            if let Some(v) = const_ints(self.g, t) {
                out.push(v);
                continue;
            }
            if depth > 4 {
                continue;
            }
            if let Some(&p) = self.prod.get(&t) {
                let pn = &self.g.nodes[p];
                if matches!(
                    pn.op.as_str(),
                    "Concat"
                        | "Cast"
                        | "Unsqueeze"
                        | "Mul"
                        | "Div"
                        | "CONCATENATION"
                        | "PACK"
                        | "CAST"
                        | "MUL"
                ) {
                    stack.extend(pn.inputs.iter().flatten().map(|&i| (i, depth + 1)));
                }
            }
        }
        out
    }

    fn reduce(&mut self, ni: usize) {
        let n = &self.g.nodes[ni];
        let x = self.input(ni, 0).expect("tracked");
        let (Some(tr), Some(out), Some(rank)) =
            (self.track(x), self.out(ni), self.shape(x).map(Vec::len))
        else {
            return self.d.boundary(self.g, ni, "unknown shape");
        };
        let axes = n
            .attrs
            .axes
            .clone()
            .or_else(|| self.input(ni, 1).and_then(|a| const_ints(self.g, a)));
        let Some(axes) = axes.filter(|a| !a.is_empty()) else {
            return self.d.boundary(self.g, ni, "reduces over every axis");
        };
        let axes: Option<Vec<usize>> = axes.iter().map(|&a| normalize(a, rank)).collect();
        let Some(axes) = axes else {
            return self.d.boundary(self.g, ni, "bad axes");
        };
        if axes.contains(&tr.axis) {
            return self.d.boundary(self.g, ni, "reduces over the channel axis");
        }
        let keep = n.attrs.keepdims.unwrap_or(self.format == Format::Onnx);
        let axis = if keep {
            tr.axis
        } else {
            tr.axis - axes.iter().filter(|&&a| a < tr.axis).count()
        };
        self.set(out, axis, tr.ids);
    }

    fn softmax(&mut self, ni: usize) {
        let n = &self.g.nodes[ni];
        let x = self.input(ni, 0).expect("tracked");
        let (Some(tr), Some(out), Some(rank)) =
            (self.track(x), self.out(ni), self.shape(x).map(Vec::len))
        else {
            return self.d.boundary(self.g, ni, "unknown shape");
        };
        let old = self.format == Format::Onnx && self.onnx_opset < 13;
        let default = if old { 1 } else { -1 };
        let Some(axis) = normalize(n.attrs.axis.unwrap_or(default), rank) else {
            return self.d.boundary(self.g, ni, "bad axis");
        };
        // Before opset 13 ONNX softmax flattens every axis from `axis` on.
        if tr.axis == axis || (old && tr.axis > axis) {
            return self
                .d
                .boundary(self.g, ni, "normalizes over the channel axis");
        }
        self.set(out, tr.axis, tr.ids);
    }

    fn pad(&mut self, ni: usize) {
        let n = &self.g.nodes[ni];
        let x = self.input(ni, 0).expect("tracked");
        let (Some(tr), Some(out), Some(rank)) =
            (self.track(x), self.out(ni), self.shape(x).map(Vec::len))
        else {
            return self.d.boundary(self.g, ni, "unknown shape");
        };
        if self.input(ni, 3).is_some() && self.format == Format::Onnx {
            return self.d.boundary(self.g, ni, "Pad with axes");
        }
        let pads = n
            .attrs
            .pads
            .clone()
            .or_else(|| self.input(ni, 1).and_then(|p| const_ints(self.g, p)));
        let Some(p) = pads.filter(|p| p.len() == 2 * rank) else {
            return self.d.boundary(self.g, ni, "paddings unknown");
        };
        // ONNX: [begin_0.., end_0..]; TFLite: [[begin, end]; rank].
        let (b, e) = match self.format {
            Format::Onnx => (p[tr.axis], p[tr.axis + rank]),
            Format::Tflite => (p[2 * tr.axis], p[2 * tr.axis + 1]),
        };
        if b != 0 || e != 0 {
            return self.d.boundary(self.g, ni, "pads the channel axis");
        }
        self.set(out, tr.axis, tr.ids);
    }

    fn resize(&mut self, ni: usize) {
        let n = &self.g.nodes[ni];
        let x = self.input(ni, 0).expect("tracked");
        let (Some(tr), Some(out)) = (self.track(x), self.out(ni)) else {
            return self
                .d
                .boundary(self.g, ni, "channels enter through a size input");
        };
        if self.format == Format::Onnx {
            let (scales_slot, sizes_slot) = if n.op == "Upsample" { (1, 9) } else { (2, 3) };
            if self
                .input(ni, sizes_slot)
                .is_some_and(|s| self.g.tensors[s].numel() != Some(0))
            {
                return self.d.boundary(self.g, ni, "Resize to explicit sizes");
            }
            let scale_one = self
                .input(ni, scales_slot)
                .and_then(|s| {
                    let t = &self.g.tensors[s];
                    let d = t.data.as_ref()?;
                    (t.dtype == DType::F32).then(|| {
                        d.chunks_exact(4)
                            .nth(tr.axis)
                            .is_some_and(|c| f32::from_le_bytes(c.try_into().expect("4")) == 1.0)
                    })
                })
                .unwrap_or(false);
            if !scale_one {
                return self
                    .d
                    .boundary(self.g, ni, "scales unknown along the channel axis");
            }
        }
        self.set(out, tr.axis, tr.ids);
    }
}

/// How a reshape moves the channel axis of `a` (tracked by `tr`) into `b`: the output axis and
/// its ids, when the channel dimension survives whole (possibly merged with neighbours, as in
/// Flatten). `None` when it is split.
pub fn map_reshape(a: &[u64], tr: &Track, b: &[u64]) -> Option<(usize, Vec<ChannelId>)> {
    let t = tr.axis;
    let c = *a.get(t)?;
    if c != tr.ids.len() as u64 || a.contains(&0) || b.contains(&0) {
        return None;
    }
    let prefix = |d: &[u64]| -> Vec<u64> {
        let mut p = vec![1u64];
        for &x in d {
            p.push(p.last().expect("non-empty").saturating_mul(x));
        }
        p
    };
    let (pa, pb) = (prefix(a), prefix(b));
    let (pre, end) = (pa[t], pa[t + 1]);
    for j in 0..b.len() {
        if b[j] < c || pb[j] > pre || pb[j + 1] < end {
            continue;
        }
        // The output dimension must start and end on input dimension boundaries.
        if !pa.contains(&pb[j]) || !pa.contains(&pb[j + 1]) || pre % pb[j] != 0 {
            continue;
        }
        let inner = pb[j + 1] / end;
        let ids: Vec<ChannelId> = (0..b[j])
            .map(|p| tr.ids[((p / inner.max(1)) % c) as usize])
            .collect();
        return Some((j, ids));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(axis: usize, n: u32) -> Track {
        Track {
            axis,
            ids: (0..n).collect(),
        }
    }

    #[test]
    fn flatten_nchw_repeats_each_channel_over_its_spatial_block() {
        let (j, ids) = map_reshape(&[1, 3, 2, 2], &track(1, 3), &[1, 12]).unwrap();
        assert_eq!(j, 1);
        assert_eq!(ids, vec![0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]);
    }

    #[test]
    fn flatten_nhwc_interleaves_channels() {
        let (j, ids) = map_reshape(&[1, 2, 2, 3], &track(3, 3), &[1, 12]).unwrap();
        assert_eq!(j, 1);
        assert_eq!(ids, vec![0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn squeeze_and_unsqueeze_move_the_axis() {
        assert_eq!(
            map_reshape(&[1, 4, 1, 1], &track(1, 4), &[1, 4]).unwrap().0,
            1
        );
        assert_eq!(
            map_reshape(&[1, 4], &track(1, 4), &[1, 1, 1, 4]).unwrap().0,
            3
        );
        assert_eq!(map_reshape(&[4], &track(0, 4), &[1, 4, 1, 1]).unwrap().0, 1);
    }

    #[test]
    fn a_split_channel_axis_is_refused() {
        // Channel shuffle: [N, 8, H, W] -> [N, 2, 4, H, W].
        assert!(map_reshape(&[1, 8, 3, 3], &track(1, 8), &[1, 2, 4, 3, 3]).is_none());
    }
}
