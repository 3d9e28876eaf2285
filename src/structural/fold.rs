//! Folding what removed channels still contributed into the consumers' biases.
//!
//! A removed channel whose filter is all zero (after magnitude pruning, or a dead filter)
//! does not output zero: it outputs a constant, what its bias makes of it (bias → batch-norm →
//! activation → …). Each consumer multiplies it
//! by its weights and adds it to every output: `bias[o] += Σ_p v_p · Σ_k W[o, p, k]`. So the
//! constant is propagated from the producer through the ops between (one evaluation per op
//! kind below) and added to the consumer's bias before the channel is sliced away.
//!
//! Exact for dense consumers and unpadded convolutions; a zero-padded convolution sees the
//! constant only inside the image, so at its borders the fold is an approximation (still
//! closer than dropping the constant).

use super::graph::{ChannelId, DepGraph, Role};
use super::importance::real_values;
use super::rules::{rule, Rule};
use crate::model::stats::{producers, stored_constant};
use crate::model::{DType, Graph, TensorId};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

/// Per bias constant (tensor id): what to add to each element, in real units.
pub struct Folds {
    pub deltas: HashMap<TensorId, Vec<f64>>,
    /// Removed channels whose contribution was folded into a consumer.
    pub folded: usize,
    /// Removed channels with a known non-zero contribution that could not be folded (the
    /// consumer has no bias to fold into, or an op between cannot be evaluated).
    pub dropped: usize,
}

/// Decoded small constants (biases, normalization vectors, clip bounds) of one fold: each is
/// read once however many channels ask for it.
struct Consts<'a> {
    g: &'a Graph,
    cache: RefCell<HashMap<TensorId, Option<Rc<Vec<f32>>>>>,
}

impl Consts<'_> {
    fn values(&self, t: TensorId) -> Option<Rc<Vec<f32>>> {
        self.cache
            .borrow_mut()
            .entry(t)
            .or_insert_with(|| real_values(self.g, t).map(|(v, _)| Rc::new(v)))
            .clone()
    }

    /// Value of a constant operand at channel position `p`: scalars broadcast; per-channel
    /// constants have one element per channel.
    fn at(&self, t: TensorId, p: usize, len: usize) -> Option<f32> {
        let v = self.values(t)?;
        match v.len() {
            1 => Some(v[0]),
            n if n == len => Some(v[p]),
            _ => None,
        }
    }
}

fn activation(name: &str, v: f32, alpha: Option<f32>) -> Option<f32> {
    Some(match name {
        "Relu" | "RELU" => v.max(0.0),
        "RELU6" => v.clamp(0.0, 6.0),
        "RELU_N1_TO_1" => v.clamp(-1.0, 1.0),
        "RELU_0_TO_1" => v.clamp(0.0, 1.0),
        "Sigmoid" | "LOGISTIC" => 1.0 / (1.0 + (-v).exp()),
        "Tanh" | "TANH" => v.tanh(),
        "HardSwish" | "HARD_SWISH" => v * (v + 3.0).clamp(0.0, 6.0) / 6.0,
        "HardSigmoid" => (alpha.unwrap_or(0.2) * v + 0.5).clamp(0.0, 1.0),
        "LeakyRelu" | "LEAKY_RELU" => {
            if v >= 0.0 {
                v
            } else {
                v * alpha.unwrap_or(0.01)
            }
        }
        "Identity" | "Dropout" | "Cast" | "CAST" | "QuantizeLinear" | "DequantizeLinear"
        | "QUANTIZE" | "DEQUANTIZE" | "MaxPool" | "AveragePool" | "GlobalAveragePool"
        | "GlobalMaxPool" | "AVERAGE_POOL_2D" | "MAX_POOL_2D" => v,
        _ => return None,
    })
}

/// The bias a consumer adds its outputs to: its own bias input, or for a MatMul the constant
/// operand of the Add that alone reads its output. `(tensor, consumer of it, slot)`.
pub(crate) fn bias_of(
    g: &Graph,
    ni: usize,
    readers: &HashMap<TensorId, Vec<usize>>,
) -> Option<TensorId> {
    let n = &g.nodes[ni];
    match n.op.as_str() {
        "Conv" | "CONV_2D" | "Gemm" | "FULLY_CONNECTED" => n.inputs.get(2).copied().flatten(),
        "MatMul" => {
            let out = *n.outputs.first()?;
            let r = readers.get(&out)?;
            if r.len() != 1 {
                return None;
            }
            let add = &g.nodes[r[0]];
            if add.op != "Add" {
                return None;
            }
            add.inputs
                .iter()
                .flatten()
                .copied()
                .find(|&t| g.tensors[t].data.is_some())
        }
        _ => None,
    }
}

/// Propagates the constants of `removed` channels and computes the bias corrections.
pub fn fold(g: &Graph, d: &DepGraph, removed: &HashSet<ChannelId>) -> Folds {
    let mut folds = Folds {
        deltas: HashMap::new(),
        folded: 0,
        dropped: 0,
    };
    if removed.is_empty() {
        return folds;
    }
    let prod = producers(g);
    let mut readers: HashMap<TensorId, Vec<usize>> = HashMap::new();
    for (ni, n) in g.nodes.iter().enumerate() {
        for &t in n.inputs.iter().flatten() {
            readers.entry(t).or_default().push(ni);
        }
    }
    let consts = Consts {
        g,
        cache: RefCell::new(HashMap::new()),
    };
    let gone = |id: ChannelId| removed.contains(&d.find(id));
    let mut vals: Vec<HashMap<ChannelId, f32>> = vec![HashMap::new(); g.tensors.len()];

    for (ni, n) in g.nodes.iter().enumerate() {
        // A consumer folds its removed inputs (before, if it also produces, its own outputs).
        fold_into(g, d, ni, &vals, &gone, &prod, &readers, &mut folds);
        let Some(&out) = n.outputs.first() else {
            continue;
        };
        let Some(out_tr) = d.tracks[out].as_ref() else {
            continue;
        };
        let x = n.inputs.first().copied().flatten();
        let xin = |t: Option<TensorId>| t.map(|t| &vals[t]);
        let act = n.attrs.fused_activation.as_deref();
        let finish = |v: f32| -> Option<f32> {
            match act {
                None => Some(v),
                Some(a) => activation(a, v, None),
            }
        };
        let mut outv: HashMap<ChannelId, f32> = HashMap::new();
        let len = out_tr.ids.len();
        match rule(&n.op) {
            Rule::Conv | Rule::TfliteConv | Rule::Dense | Rule::TfliteDepthwise => {
                let depthwise = x
                    .and_then(|x| d.tracks[x].as_ref())
                    .is_some_and(|t| t.ids == out_tr.ids);
                let bias = n.inputs.get(2).copied().flatten();
                let filters = d
                    .slices
                    .iter()
                    .find(|s| s.node == ni && s.role == Role::Filters);
                // Per filter: the sum of its weights, and whether it is all zero.
                let per_filter: Option<(Vec<f32>, Vec<bool>)> = filters.and_then(|s| {
                    let w = stored_constant(g, &prod, s.tensor)?;
                    let (v, shape) = real_values(g, w)?;
                    let c = shape[s.axis] as usize;
                    let inner: usize = shape[s.axis + 1..].iter().product::<u64>() as usize;
                    let mut sums = vec![0f32; c];
                    let mut zero = vec![true; c];
                    for (e, x) in v.iter().enumerate() {
                        let p = (e / inner) % c;
                        sums[p] += x;
                        zero[p] &= *x == 0.0;
                    }
                    Some((sums, zero))
                });
                for (p, &id) in out_tr.ids.iter().enumerate() {
                    if !gone(id) {
                        continue;
                    }
                    let b = match bias {
                        Some(b) => match consts.at(b, p, len) {
                            Some(b) => b,
                            None => continue,
                        },
                        None => 0.0,
                    };
                    let Some((sums, zero)) = per_filter.as_ref() else {
                        continue;
                    };
                    // Constant only when the filter is all zero (a depthwise filter also when
                    // its input channel is constant).
                    let v = if zero[p] {
                        b
                    } else if depthwise {
                        let Some(xv) = xin(x).and_then(|m| m.get(&id)) else {
                            continue;
                        };
                        xv * sums[p] + b
                    } else {
                        continue;
                    };
                    if let Some(v) = finish(v) {
                        outv.insert(id, v);
                    }
                }
            }
            Rule::BatchNorm => {
                let Some(x) = x else { continue };
                let eps = n.attrs.epsilon.unwrap_or(1e-5);
                let params: Option<Vec<Rc<Vec<f32>>>> = (1..=4)
                    .map(|s| {
                        n.inputs
                            .get(s)
                            .copied()
                            .flatten()
                            .and_then(|t| consts.values(t))
                    })
                    .collect();
                let Some(pv) = params.filter(|pv| pv.iter().all(|v| v.len() == len)) else {
                    continue;
                };
                for (p, &id) in out_tr.ids.iter().enumerate() {
                    if let Some(&v) = vals[x].get(&id) {
                        let (s, b, m, var) = (pv[0][p], pv[1][p], pv[2][p], pv[3][p]);
                        outv.insert(id, (v - m) / (var + eps).sqrt() * s + b);
                    }
                }
            }
            Rule::PassThrough => {
                let Some(x) = x else { continue };
                let clip = (n.op == "Clip").then(|| {
                    let bound = |s: usize| {
                        n.inputs
                            .get(s)
                            .copied()
                            .flatten()
                            .and_then(|t| consts.at(t, 0, 1))
                    };
                    (
                        bound(1).unwrap_or(f32::NEG_INFINITY),
                        bound(2).unwrap_or(f32::INFINITY),
                    )
                });
                for (&id, &v) in &vals[x] {
                    let r = match clip {
                        Some((lo, hi)) => Some(v.clamp(lo, hi)),
                        None => activation(&n.op, v, n.attrs.alpha),
                    };
                    if let Some(r) = r {
                        outv.insert(id, r);
                    }
                }
            }
            Rule::Elementwise => {
                let ops: Vec<TensorId> = n.inputs.iter().flatten().copied().collect();
                if ops.len() != 2 {
                    continue;
                }
                let f = |a: f32, b: f32| -> Option<f32> {
                    Some(match n.op.as_str() {
                        "Add" | "ADD" => a + b,
                        "Sub" | "SUB" => a - b,
                        "Mul" | "MUL" => a * b,
                        "Div" | "DIV" => a / b,
                        "Max" | "MAXIMUM" => a.max(b),
                        "Min" | "MINIMUM" => a.min(b),
                        _ => return None,
                    })
                };
                for (p, &id) in out_tr.ids.iter().enumerate() {
                    if !gone(id) {
                        continue;
                    }
                    let operand = |t: TensorId| -> Option<f32> {
                        match d.tracks[t].as_ref() {
                            Some(tr) if tr.ids.len() == len => vals[t].get(&tr.ids[p]).copied(),
                            _ => consts.at(t, p, len),
                        }
                    };
                    if let (Some(a), Some(b)) = (operand(ops[0]), operand(ops[1])) {
                        if let Some(v) = f(a, b).and_then(finish) {
                            outv.insert(id, v);
                        }
                    }
                }
            }
            Rule::Concat => {
                for &t in n.inputs.iter().flatten() {
                    outv.extend(vals[t].iter().map(|(k, v)| (*k, *v)));
                }
            }
            Rule::Split => {
                let src = if n.op == "SPLIT" {
                    n.inputs.get(1).copied().flatten()
                } else {
                    x
                };
                if let Some(src) = src {
                    outv = vals[src].clone();
                }
            }
            Rule::Transpose | Rule::Reshape | Rule::Pad | Rule::Resize => {
                if let Some(x) = x {
                    outv = vals[x].clone();
                }
            }
            Rule::Reduce
                if matches!(
                    n.op.as_str(),
                    "ReduceMean" | "ReduceMax" | "ReduceMin" | "MEAN" | "REDUCE_MAX" | "REDUCE_MIN"
                ) =>
            {
                if let Some(x) = x {
                    outv = vals[x].clone();
                }
            }
            _ => {}
        }
        for &o in &n.outputs {
            vals[o] = outv.clone();
        }
    }
    folds
}

/// Folds the known constants of removed input channels of consumer `ni` into its bias.
#[allow(clippy::too_many_arguments)]
fn fold_into(
    g: &Graph,
    d: &DepGraph,
    ni: usize,
    vals: &[HashMap<ChannelId, f32>],
    gone: &dyn Fn(ChannelId) -> bool,
    prod: &HashMap<TensorId, usize>,
    readers: &HashMap<TensorId, Vec<usize>>,
    folds: &mut Folds,
) {
    let n = &g.nodes[ni];
    let Some(rec) = d
        .slices
        .iter()
        .find(|s| s.node == ni && s.role == Role::Inputs)
    else {
        return;
    };
    let Some(x) = n.inputs.first().copied().flatten() else {
        return;
    };
    // A grouped consumer reads each input channel with one group's filters only: no fold.
    let grouped = d.tracks[x]
        .as_ref()
        .is_some_and(|t| t.ids.len() != rec.ids.len());
    let contrib: Vec<(usize, f32)> = rec
        .ids
        .iter()
        .enumerate()
        .filter(|(_, &id)| gone(id))
        .filter_map(|(p, id)| vals[x].get(id).map(|&v| (p, v)))
        .filter(|(_, v)| *v != 0.0)
        .collect();
    if contrib.is_empty() {
        return;
    }
    let count = contrib.len();
    if grouped {
        folds.dropped += count;
        return;
    }
    let Some(w) = stored_constant(g, prod, rec.tensor) else {
        folds.dropped += count;
        return;
    };
    let Some((wv, shape)) = real_values(g, w) else {
        folds.dropped += count;
        return;
    };
    let out_axis = match n.op.as_str() {
        "Gemm" if n.attrs.trans_b => 0,
        "Gemm" | "MatMul" => 1,
        _ => 0,
    };
    let Some(bias) =
        bias_of(g, ni, readers).filter(|b| readers.get(b).is_some_and(|r| r.len() == 1))
    else {
        folds.dropped += count;
        return;
    };
    let nout = shape[out_axis] as usize;
    if g.tensors[bias].numel() != Some(nout as u64) {
        folds.dropped += count;
        return;
    }
    // delta[o] = Σ_p v_p Σ_{other axes} W[.., o, .., p, ..]
    let strides: Vec<usize> = (0..shape.len())
        .map(|a| shape[a + 1..].iter().product::<u64>() as usize)
        .collect();
    let weight_of: HashMap<usize, f32> = contrib.iter().copied().collect();
    let mut delta = vec![0f64; nout];
    for (e, &wval) in wv.iter().enumerate() {
        let p = (e / strides[rec.axis]) % shape[rec.axis] as usize;
        if let Some(&v) = weight_of.get(&p) {
            let o = (e / strides[out_axis]) % nout;
            delta[o] += v as f64 * wval as f64;
        }
    }
    let entry = folds.deltas.entry(bias).or_insert_with(|| vec![0.0; nout]);
    for (a, b) in entry.iter_mut().zip(&delta) {
        *a += b;
    }
    folds.folded += count;
}

/// `data` (a bias of type `dtype`, quantized by `scale` when integer) plus `delta`.
pub fn apply_delta(
    dtype: DType,
    data: &[u8],
    delta: &[f64],
    scale: Option<&[f32]>,
) -> Option<Vec<u8>> {
    match dtype {
        DType::F32 => Some(
            data.chunks_exact(4)
                .zip(delta)
                .flat_map(|(c, d)| {
                    ((f32::from_le_bytes(c.try_into().expect("4")) as f64 + d) as f32).to_le_bytes()
                })
                .collect(),
        ),
        DType::F16 => Some(
            data.chunks_exact(2)
                .zip(delta)
                .flat_map(|(c, d)| {
                    half::f16::from_f64(half::f16::from_le_bytes([c[0], c[1]]).to_f64() + d)
                        .to_le_bytes()
                })
                .collect(),
        ),
        DType::I32 => {
            let scale = scale?;
            Some(
                data.chunks_exact(4)
                    .zip(delta)
                    .enumerate()
                    .flat_map(|(o, (c, d))| {
                        let s = *scale.get(o).or(scale.first()).unwrap_or(&1.0) as f64;
                        let q =
                            i32::from_le_bytes(c.try_into().expect("4")) as f64 + (d / s).round();
                        (q.clamp(i32::MIN as f64, i32::MAX as f64) as i32).to_le_bytes()
                    })
                    .collect(),
            )
        }
        _ => None,
    }
}
