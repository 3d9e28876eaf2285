//! Rules of the ops that move channels around without weights: Concat, Split, Transpose,
//! Reshape-like ops, reductions, Softmax, Pad, Resize.

use super::{const_ints, normalize, Builder, ShapePiece};
use crate::model::{DType, Format, TensorId};
use crate::structural::graph::{ChannelId, ShapeConst, Track, MAX_CHANNELS};

impl Builder<'_> {
    pub(super) fn concat(&mut self, ni: usize) {
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
                        let Some(fresh) = self.d.fresh(len as usize, true) else {
                            return self.d.boundary(self.g, ni, "an implausible channel count");
                        };
                        ids.extend(fresh);
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

    pub(super) fn split(&mut self, ni: usize) {
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

    pub(super) fn transpose(&mut self, ni: usize) {
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

    pub(super) fn reshape(&mut self, ni: usize) {
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

    pub(super) fn reduce(&mut self, ni: usize) {
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

    pub(super) fn softmax(&mut self, ni: usize) {
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

    pub(super) fn pad(&mut self, ni: usize) {
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

    pub(super) fn resize(&mut self, ni: usize) {
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
    // A merged axis holds one id per position: refuse sizes only a damaged file declares.
    if b.iter().any(|&d| d > MAX_CHANNELS as u64) {
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
