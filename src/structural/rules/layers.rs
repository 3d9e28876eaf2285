//! Rules of the ops that hold weights or per-channel parameters: convolutions (dense,
//! grouped, depthwise), dense layers, normalizations, activations, elementwise ops.

use super::{normalize, Builder};
use crate::model::stats::is_widening;
use crate::model::TensorId;
use crate::structural::graph::{ChannelId, Role};

impl Builder<'_> {
    pub(super) fn conv(&mut self, ni: usize) {
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
            if let Some(ids) = self.produce(ni, 1, 0, o as usize, Some((2, 0))) {
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
    pub(super) fn grouped(
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
        let Some(ids) = self.produce(ni, 1, 0, o, Some((2, 0))) else {
            return;
        };
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
    pub(super) fn depthwise(
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

    pub(super) fn tflite_conv(&mut self, ni: usize) {
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
        if let Some(ids) = self.produce(ni, 1, 0, ws[0] as usize, Some((2, 0))) {
            self.set(out, 3, ids);
        }
    }

    pub(super) fn tflite_depthwise(&mut self, ni: usize) {
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

    pub(super) fn dense(&mut self, ni: usize) {
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
        if let Some(ids) = self.produce(ni, 1, out_axis, ws[out_axis] as usize, bias) {
            self.set(out, out_rank - 1, ids);
        }
    }

    /// Normalization with per-channel vectors on the channel axis (1).
    pub(super) fn per_channel_params(&mut self, ni: usize, axis: usize, params: &[(usize, Role)]) {
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

    pub(super) fn layer_norm(&mut self, ni: usize) {
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

    pub(super) fn pass_through(&mut self, ni: usize) {
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

    pub(super) fn elementwise(&mut self, ni: usize) {
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
}
