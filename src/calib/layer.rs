//! The linear view of a weight-bearing layer: its weight as a matrix `W` (output channels ×
//! input features, per group) and its input activation as rows of the same input features
//! (the im2col view of a convolution), so that the layer computes `y = W x (+ b)` row by row.

use crate::model::{Graph, Node, TensorId};

/// Memory layout of a convolution's activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// ONNX: [N, C, H, W].
    Nchw,
    /// TFLite: [N, H, W, C].
    Nhwc,
}

/// How a weight's elements map to the matrix columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weights {
    /// Stored [out, K]: element `o · K + c` (ONNX Conv [out, in/g, kh, kw], TFLite CONV_2D
    /// [out, kh, kw, in], FULLY_CONNECTED, Gemm with transB).
    RowMajor,
    /// Stored [K, out]: element `c · out + o` (MatMul, Gemm without transB, TFLite depthwise
    /// [1, kh, kw, out]).
    ColMajor,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conv {
    pub layout: Layout,
    /// Input channels per group.
    pub cin: usize,
    pub kernel: [usize; 2],
    pub strides: [usize; 2],
    pub dilations: [usize; 2],
    /// Explicit [top, left, bottom, right] pads, or the auto_pad rule.
    pub pads: Pads,
    /// Column order within a group: (channel, ky, kx) for ONNX, (ky, kx, channel) for TFLite.
    pub channel_first: bool,
    /// Output channels per input channel of a TFLite depthwise kernel (group = o / mult).
    pub depth_multiplier: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pads {
    Explicit([usize; 4]),
    SameUpper,
    SameLower,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Rows of K consecutive elements of the input (the last axis, or a flattened input).
    Dense,
    Conv(Conv),
}

/// One layer's linear view.
#[derive(Debug, Clone)]
pub struct Linear {
    pub node: usize,
    pub name: String,
    pub input: TensorId,
    /// The stored weight (as the pruner finds it) and its bias, if constant.
    pub weight: TensorId,
    pub bias: Option<TensorId>,
    pub kind: Kind,
    pub weights: Weights,
    /// Output channels.
    pub out: usize,
    /// Matrix columns per group.
    pub k: usize,
    pub groups: usize,
}

impl Linear {
    /// Output channels per group.
    pub fn out_per_group(&self) -> usize {
        self.out / self.groups
    }

    /// The group of output channel `o`.
    pub fn group_of(&self, o: usize) -> usize {
        match &self.kind {
            Kind::Conv(Conv {
                depth_multiplier: Some(m),
                ..
            }) => o / m,
            _ => o / self.out_per_group(),
        }
    }

    /// Element index in the stored weight of row `o`, column `c` (of `o`'s group).
    pub fn index(&self, o: usize, c: usize) -> usize {
        match self.weights {
            Weights::RowMajor => o * self.k + c,
            Weights::ColMajor => c * self.out + o,
        }
    }

    /// Does the layer mix input channels (not depthwise or grouped)?
    pub fn mixes_channels(&self) -> bool {
        self.groups == 1
    }
}

fn dims(g: &Graph, t: TensorId) -> Option<Vec<usize>> {
    g.tensor(t)
        .fixed_shape()
        .map(|s| s.iter().map(|&d| d as usize).collect())
}

fn pair(v: Option<&Vec<u64>>, default: usize) -> Option<[usize; 2]> {
    match v {
        None => Some([default, default]),
        Some(v) if v.len() == 2 => Some([v[0] as usize, v[1] as usize]),
        Some(_) => None,
    }
}

/// The linear view of node `ni` whose weight is input `slot`, stored as constant `weight`;
/// `None` for layers pare does not reconstruct (with the reason).
pub fn linear(
    g: &Graph,
    ni: usize,
    slot: usize,
    weight: TensorId,
) -> std::result::Result<Linear, String> {
    let node: &Node = &g.nodes[ni];
    let w = dims(g, weight).ok_or("the weight's shape is not fully known")?;
    let input = node
        .inputs
        .first()
        .copied()
        .flatten()
        .ok_or("the layer has no input")?;
    // Its own bias input, or (MatMul) the constant of the Add that alone reads its output.
    let bias = if node.op != "MatMul" {
        node.inputs.get(2).copied().flatten()
    } else {
        // Only a MatMul's bias is in another node: who reads its output.
        let mut readers: std::collections::HashMap<TensorId, Vec<usize>> = Default::default();
        for (i, n) in g.nodes.iter().enumerate() {
            for &t in n.inputs.iter().flatten() {
                readers.entry(t).or_default().push(i);
            }
        }
        crate::structural::fold::bias_of(g, ni, &readers)
    }
    .filter(|&b| g.tensor(b).data.is_some());
    let mut lin = Linear {
        node: ni,
        name: node.name.clone(),
        input,
        weight,
        bias,
        kind: Kind::Dense,
        weights: Weights::RowMajor,
        out: 0,
        k: 0,
        groups: 1,
    };
    let a = &node.attrs;
    let conv = |layout, cin, kernel: [usize; 2], channel_first, mult| -> Result<Conv, String> {
        let strides = pair(a.strides.as_ref(), 1).ok_or("only 2-D convolutions")?;
        let dilations = pair(a.dilations.as_ref(), 1).ok_or("only 2-D convolutions")?;
        let pads = match a.auto_pad.as_deref() {
            Some("SAME_UPPER") => Pads::SameUpper,
            Some("SAME_LOWER") => Pads::SameLower,
            Some("VALID") => Pads::Explicit([0; 4]),
            _ => match &a.pads {
                None => Pads::Explicit([0; 4]),
                Some(p) if p.len() == 4 && p.iter().all(|&x| x >= 0) => {
                    Pads::Explicit([p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize])
                }
                Some(_) => return Err("only 2-D convolutions with non-negative pads".into()),
            },
        };
        Ok(Conv {
            layout,
            cin,
            kernel,
            strides,
            dilations,
            pads,
            channel_first,
            depth_multiplier: mult,
        })
    };
    match (node.op.as_str(), slot) {
        ("Conv", 1) => {
            if w.len() != 4 {
                return Err("only 2-D convolutions".into());
            }
            let groups = a.group.unwrap_or(1).max(1) as usize;
            if w[0] % groups != 0 {
                return Err("output channels are not a multiple of the group count".into());
            }
            lin.kind = Kind::Conv(conv(Layout::Nchw, w[1], [w[2], w[3]], true, None)?);
            lin.out = w[0];
            lin.k = w[1] * w[2] * w[3];
            lin.groups = groups;
        }
        ("CONV_2D", 1) => {
            if w.len() != 4 {
                return Err("unexpected kernel rank".into());
            }
            if let Some(x) = dims(g, input) {
                if x.len() != 4 || x[3] != w[3] {
                    return Err("grouped CONV_2D".into());
                }
            }
            lin.kind = Kind::Conv(conv(Layout::Nhwc, w[3], [w[1], w[2]], false, None)?);
            lin.out = w[0];
            lin.k = w[1] * w[2] * w[3];
        }
        ("DEPTHWISE_CONV_2D", 1) => {
            if w.len() != 4 || w[0] != 1 {
                return Err("unexpected depthwise kernel shape".into());
            }
            let mult = a.depth_multiplier.unwrap_or(1).max(1) as usize;
            if w[3] % mult != 0 {
                return Err("output channels are not a multiple of the depth multiplier".into());
            }
            lin.kind = Kind::Conv(conv(Layout::Nhwc, 1, [w[1], w[2]], false, Some(mult))?);
            lin.weights = Weights::ColMajor;
            lin.out = w[3];
            lin.k = w[1] * w[2];
            lin.groups = w[3] / mult;
        }
        ("FULLY_CONNECTED", 1) if w.len() == 2 && !a.packed_weights => {
            lin.out = w[0];
            lin.k = w[1];
        }
        ("Gemm", 1) if w.len() == 2 && !a.trans_a => {
            if a.trans_b {
                lin.out = w[0];
                lin.k = w[1];
            } else {
                lin.weights = Weights::ColMajor;
                lin.out = w[1];
                lin.k = w[0];
            }
        }
        ("MatMul", 1) if w.len() == 2 => {
            lin.weights = Weights::ColMajor;
            lin.out = w[1];
            lin.k = w[0];
        }
        (op, _) => {
            return Err(format!(
                "calibration covers Conv, Gemm, MatMul (constant second operand), CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED, not this {op} weight"
            ))
        }
    }
    if lin.out == 0 || lin.k == 0 {
        return Err("the weight is empty".into());
    }
    // A bias pare can correct holds one value per output.
    if let Some(b) = lin.bias {
        if g.tensor(b).numel() != Some(lin.out as u64) {
            lin.bias = None;
        }
    }
    Ok(lin)
}

/// Spatial geometry of one convolution on an input of `h` × `w`.
pub struct Geometry {
    pub out_h: usize,
    pub out_w: usize,
    pub top: isize,
    pub left: isize,
}

impl Conv {
    pub fn geometry(&self, h: usize, w: usize) -> Option<Geometry> {
        let span = |k: usize, d: usize| (k - 1) * d + 1;
        let (sh, sw) = (self.strides[0].max(1), self.strides[1].max(1));
        let (eh, ew) = (
            span(self.kernel[0], self.dilations[0]),
            span(self.kernel[1], self.dilations[1]),
        );
        match self.pads {
            Pads::Explicit([t, l, b, r]) => {
                let (ph, pw) = (h + t + b, w + l + r);
                if ph < eh || pw < ew {
                    return None;
                }
                Some(Geometry {
                    out_h: (ph - eh) / sh + 1,
                    out_w: (pw - ew) / sw + 1,
                    top: t as isize,
                    left: l as isize,
                })
            }
            Pads::SameUpper | Pads::SameLower => {
                let (oh, ow) = (h.div_ceil(sh), w.div_ceil(sw));
                let th = ((oh - 1) * sh + eh).saturating_sub(h);
                let tw = ((ow - 1) * sw + ew).saturating_sub(w);
                let (top, left) = if self.pads == Pads::SameUpper {
                    (th / 2, tw / 2)
                } else {
                    (th - th / 2, tw - tw / 2)
                };
                Some(Geometry {
                    out_h: oh,
                    out_w: ow,
                    top: top as isize,
                    left: left as isize,
                })
            }
        }
    }
}

/// Fills `rows` (row-major, `k + 1` columns: the features, then a constant 1) with the im2col
/// patches of group `gi` at output positions `first .. first + rows.len() / (k + 1)` of one
/// sample `x` (`[C, H, W]` or `[H, W, C]`, `c` channels in all).
#[allow(clippy::too_many_arguments)]
pub fn patches(
    conv: &Conv,
    x: &[f32],
    c: usize,
    h: usize,
    w: usize,
    geo: &Geometry,
    gi: usize,
    first: usize,
    rows: &mut [f32],
) {
    let k = conv.cin * conv.kernel[0] * conv.kernel[1];
    let stride = k + 1;
    let [kh, kw] = conv.kernel;
    let c0 = gi * conv.cin;
    for (r, row) in rows.chunks_exact_mut(stride).enumerate() {
        let pos = first + r;
        let (oy, ox) = (pos / geo.out_w, pos % geo.out_w);
        let y0 = (oy * conv.strides[0]) as isize - geo.top;
        let x0 = (ox * conv.strides[1]) as isize - geo.left;
        for ky in 0..kh {
            let iy = y0 + (ky * conv.dilations[0]) as isize;
            for kx in 0..kw {
                let ix = x0 + (kx * conv.dilations[1]) as isize;
                let inside = iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w;
                for ci in 0..conv.cin {
                    let col = if conv.channel_first {
                        (ci * kh + ky) * kw + kx
                    } else {
                        (ky * kw + kx) * conv.cin + ci
                    };
                    row[col] = if inside {
                        let (iy, ix) = (iy as usize, ix as usize);
                        let ch = c0 + ci;
                        match conv.layout {
                            Layout::Nchw => x[(ch * h + iy) * w + ix],
                            Layout::Nhwc => x[(iy * w + ix) * c + ch],
                        }
                    } else {
                        0.0
                    };
                }
            }
        }
        row[k] = 1.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(layout: Layout, pads: Pads, strides: [usize; 2]) -> Conv {
        Conv {
            layout,
            cin: 2,
            kernel: [3, 3],
            strides,
            dilations: [1, 1],
            pads,
            channel_first: layout == Layout::Nchw,
            depth_multiplier: None,
        }
    }

    #[test]
    fn same_padding_matches_tensorflow() {
        // TensorFlow SAME, stride 2 on 5 x 5 with a 3 x 3 kernel: 3 x 3 outputs, 1 pad each side.
        let g = conv(Layout::Nhwc, Pads::SameUpper, [2, 2])
            .geometry(5, 5)
            .unwrap();
        assert_eq!((g.out_h, g.out_w, g.top, g.left), (3, 3, 1, 1));
        // Stride 2 on 4 x 4: total pad 1, SAME_UPPER puts it at the end.
        let g = conv(Layout::Nhwc, Pads::SameUpper, [2, 2])
            .geometry(4, 4)
            .unwrap();
        assert_eq!((g.out_h, g.top), (2, 0));
        let g = conv(Layout::Nhwc, Pads::SameLower, [2, 2])
            .geometry(4, 4)
            .unwrap();
        assert_eq!((g.out_h, g.top), (2, 1));
    }

    #[test]
    fn patches_follow_the_weight_layout() {
        // NCHW, 2 channels of 3 x 3 holding 100·c + 10·y + x; one output with no padding.
        let x: Vec<f32> = (0..2)
            .flat_map(|c| {
                (0..3).flat_map(move |y| (0..3).map(move |xx| (100 * c + 10 * y + xx) as f32))
            })
            .collect();
        let cv = conv(Layout::Nchw, Pads::Explicit([0; 4]), [1, 1]);
        let g = cv.geometry(3, 3).unwrap();
        assert_eq!((g.out_h, g.out_w), (1, 1));
        let mut row = vec![0.0; 19];
        patches(&cv, &x, 2, 3, 3, &g, 0, 0, &mut row);
        // Column (c, ky, kx) = c·9 + ky·3 + kx.
        assert_eq!(row[9 + 3 + 2], 112.0);
        assert_eq!(row[18], 1.0);
        // The same values as NHWC with (ky, kx, c) columns.
        let nhwc: Vec<f32> = (0..3)
            .flat_map(|y| {
                (0..3).flat_map(move |xx| (0..2).map(move |c| (100 * c + 10 * y + xx) as f32))
            })
            .collect();
        let cv = conv(Layout::Nhwc, Pads::Explicit([0; 4]), [1, 1]);
        let mut row2 = vec![0.0; 19];
        patches(&cv, &nhwc, 2, 3, 3, &g, 0, 0, &mut row2);
        assert_eq!(row2[(3 + 2) * 2 + 1], 112.0);
        // Padding reads zeros.
        let cv = conv(Layout::Nchw, Pads::Explicit([1; 4]), [1, 1]);
        let g = cv.geometry(3, 3).unwrap();
        assert_eq!((g.out_h, g.out_w), (3, 3));
        let mut row3 = vec![9.0; 19];
        patches(&cv, &x, 2, 3, 3, &g, 0, 0, &mut row3);
        assert_eq!(row3[0], 0.0); // (c 0, ky 0, kx 0) is above-left of the image
        assert_eq!(row3[4], 0.0 + 0.0); // centre: x[0, 0, 0] = 0
        assert_eq!(row3[9 + 4], 100.0);
    }
}
