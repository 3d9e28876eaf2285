//! Per-layer statistics: weights, parameter counts, nonzeros, MACs.

use super::{DType, Graph, Node, Tensor, TensorId};
use serde::Serialize;
use std::collections::HashMap;

/// How an op uses its weight, which decides where its channel axes are and how MACs count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightKind {
    /// Output channels on weight axis `out_axis`; MACs = numel(W) / C_out × numel(Y).
    Conv { out_axis: usize },
    /// Transposed convolution: each input element scatters numel(W) / C_in products.
    ConvTranspose { in_axis: usize },
    /// Dense: MACs = numel(W) / N × numel(Y), N = the output's last dimension.
    Dense,
    /// Recurrent weights (W, R): counted as parameters, MACs not modelled.
    Recurrent,
}

/// The weight inputs of a weight-bearing op, by input index. One table for both formats.
pub fn weight_inputs(op: &str) -> Option<(&'static [usize], WeightKind)> {
    Some(match op {
        "Conv" | "ConvInteger" => (&[1], WeightKind::Conv { out_axis: 0 }),
        "QLinearConv" => (&[3], WeightKind::Conv { out_axis: 0 }),
        "ConvTranspose" => (&[1], WeightKind::ConvTranspose { in_axis: 0 }),
        "Gemm" | "MatMul" | "MatMulInteger" => (&[1, 0], WeightKind::Dense),
        "QLinearMatMul" => (&[3, 0], WeightKind::Dense),
        "LSTM" | "GRU" | "RNN" => (&[1, 2], WeightKind::Recurrent),
        "CONV_2D" | "CONV_3D" => (&[1], WeightKind::Conv { out_axis: 0 }),
        "DEPTHWISE_CONV_2D" => (&[1], WeightKind::Conv { out_axis: 3 }),
        "TRANSPOSE_CONV" => (&[1], WeightKind::ConvTranspose { in_axis: 3 }),
        "FULLY_CONNECTED" | "BATCH_MATMUL" => (&[1, 0], WeightKind::Dense),
        "UNIDIRECTIONAL_SEQUENCE_LSTM" | "BIDIRECTIONAL_SEQUENCE_LSTM" => {
            (&[1, 2, 3, 4, 5, 6, 7, 8], WeightKind::Recurrent)
        }
        _ => return None,
    })
}

/// Ops that only widen a stored constant (narrow storage dequantized or cast at run time).
pub fn is_widening(op: &str) -> bool {
    matches!(
        op,
        "DequantizeLinear" | "Cast" | "DEQUANTIZE" | "DENSIFY" | "CAST"
    )
}

/// The constant a value comes from: itself, or the stored input of a widening op.
pub fn stored_constant(
    g: &Graph,
    producers: &HashMap<TensorId, usize>,
    id: TensorId,
) -> Option<TensorId> {
    if g.tensors[id].is_const() {
        return Some(id);
    }
    let node = &g.nodes[*producers.get(&id)?];
    if !is_widening(&node.op) {
        return None;
    }
    let src = node.inputs.first().copied().flatten()?;
    g.tensors[src].is_const().then_some(src)
}

pub fn producers(g: &Graph) -> HashMap<TensorId, usize> {
    let mut p = HashMap::new();
    for (i, n) in g.nodes.iter().enumerate() {
        for &o in &n.outputs {
            p.insert(o, i);
        }
    }
    p
}

/// Is this constant a model parameter (as opposed to a shape, index or axis constant)?
/// Floating-point and quantized tensors are; plain integer tensors are not, unless they are
/// stored weights (8-bit or narrower).
pub fn is_parameter(t: &Tensor) -> bool {
    t.dtype.is_float() || t.quant.is_some() || matches!(t.dtype, DType::I8 | DType::U8 | DType::I4)
}

pub fn nonzeros(t: &Tensor) -> Option<u64> {
    let data = t.data.as_ref()?;
    let q = t.quant.as_ref();
    match q {
        // Per-axis zero points: count per element against its channel's zero point.
        Some(q) if q.zero_point.len() > 1 && q.zero_point.iter().any(|&z| z != q.zero_point[0]) => {
            let shape = t.fixed_shape()?;
            let axis = q.axis?;
            // A damaged file's quantized dimension may lie outside the shape, or a dimension
            // may be 0: no count rather than a panic.
            let channels = shape.get(axis).copied().filter(|&c| c > 0)?;
            let inner: u64 = shape[axis + 1..].iter().product();
            let size = t.dtype.size()?;
            if inner == 0 {
                return None;
            }
            let mut nz = 0;
            for (i, chunk) in data.chunks(inner as usize * size).enumerate() {
                let c = (i as u64 % channels) as usize;
                nz += t.dtype.count_nonzero(chunk, q.zero_point.get(c).copied())?;
            }
            Some(nz)
        }
        Some(q) => t.dtype.count_nonzero(data, q.zero_point.first().copied()),
        None => t.dtype.count_nonzero(data, None),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerStats {
    pub graph: usize,
    pub node: String,
    pub op: String,
    pub weight: String,
    pub shape: Vec<u64>,
    pub dtype: DType,
    pub params: u64,
    pub nonzeros: Option<u64>,
    pub sparsity: Option<f64>,
    pub macs: Option<u64>,
    /// The weight is stored sparse in the file (TFLite sparsity, ONNX sparse_initializer).
    pub stored_sparse: bool,
    /// Bytes the weight occupies in the file.
    pub stored_bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub params: u64,
    pub nonzero_params: u64,
    pub sparsity: f64,
    pub macs: u64,
    /// Layers whose MACs could not be computed (unknown shapes, recurrent ops).
    pub layers_without_macs: usize,
    /// Constants stored sparse, and their bytes as stored and dense.
    pub sparse_tensors: usize,
    pub sparse_stored_bytes: u64,
    pub sparse_dense_bytes: u64,
}

/// Element count, saturating: shapes come from the file (or tract's inference on it), and a
/// damaged one must give a silly count, not an overflow.
fn numel(shape: &[u64]) -> u64 {
    shape.iter().fold(1u64, |a, &d| a.saturating_mul(d))
}

/// Output shape of `node`'s first output: declared in the file, or from `inferred` by name.
/// Dynamic dimensions count as 1 (MACs are reported at the declared input shape).
fn out_shape(g: &Graph, id: TensorId, inferred: &HashMap<String, Vec<u64>>) -> Option<Vec<u64>> {
    let t = &g.tensors[id];
    if let Some(s) = inferred.get(&t.name) {
        return Some(s.clone());
    }
    let shape = t.shape.as_ref()?;
    Some(shape.iter().map(|d| d.fixed().unwrap_or(1)).collect())
}

fn layer_macs(
    g: &Graph,
    node: &Node,
    kind: WeightKind,
    w: &[u64],
    inferred: &HashMap<String, Vec<u64>>,
) -> Option<u64> {
    let y = out_shape(g, *node.outputs.first()?, inferred)?;
    match kind {
        WeightKind::Conv { out_axis } => {
            let cout = *w.get(out_axis)?;
            (cout > 0).then(|| (numel(w) / cout).saturating_mul(numel(&y)))
        }
        WeightKind::ConvTranspose { in_axis } => {
            let cin = *w.get(in_axis)?;
            let x_id = if node.op == "TRANSPOSE_CONV" {
                node.inputs.get(2)?
            } else {
                node.inputs.first()?
            };
            let x = out_shape(g, (*x_id)?, inferred)?;
            (cin > 0).then(|| (numel(w) / cin).saturating_mul(numel(&x)))
        }
        WeightKind::Dense => {
            let n = *y.last()?;
            (n > 0).then(|| (numel(w) / n).saturating_mul(numel(&y)))
        }
        WeightKind::Recurrent => None,
    }
}

/// MACs of a MatMul between two activations: numel(Y) × K.
fn activation_matmul_macs(
    g: &Graph,
    node: &Node,
    inferred: &HashMap<String, Vec<u64>>,
) -> Option<u64> {
    let a = out_shape(g, (*node.inputs.first()?)?, inferred)?;
    let y = out_shape(g, *node.outputs.first()?, inferred)?;
    Some(numel(&y).saturating_mul(a.last().copied()?))
}

/// Per-layer statistics of every weight-bearing node in every graph, plus totals over all
/// parameters (each constant counted once, however many nodes share it).
pub fn collect(
    graphs: &[Graph],
    inferred: &HashMap<String, Vec<u64>>,
) -> (Vec<LayerStats>, Totals) {
    let mut layers = Vec::new();
    let mut totals = Totals::default();
    // A constant seen from several graphs (an ONNX initializer used inside an If body) counts once.
    let mut counted = std::collections::HashSet::new();
    for (gi, g) in graphs.iter().enumerate() {
        let prod = producers(g);
        for node in &g.nodes {
            let Some((indices, kind)) = weight_inputs(&node.op) else {
                continue;
            };
            let mut found = false;
            for &i in indices {
                let Some(Some(input)) = node.inputs.get(i) else {
                    continue;
                };
                let Some(wid) = stored_constant(g, &prod, *input) else {
                    continue;
                };
                let t = &g.tensors[wid];
                let Some(shape) = t.fixed_shape() else {
                    continue;
                };
                if shape.len() < 2 {
                    continue;
                }
                let params = numel(&shape);
                let nz = nonzeros(t);
                let macs = if found {
                    None
                } else {
                    layer_macs(g, node, kind, &shape, inferred)
                };
                if macs.is_none() && !found {
                    totals.layers_without_macs += 1;
                }
                totals.macs = totals.macs.saturating_add(macs.unwrap_or(0));
                layers.push(LayerStats {
                    graph: gi,
                    node: node.name.clone(),
                    op: node.op.clone(),
                    weight: t.name.clone(),
                    shape,
                    dtype: t.dtype,
                    params,
                    nonzeros: nz,
                    sparsity: nz.map(|nz| {
                        if params == 0 {
                            0.0
                        } else {
                            1.0 - nz as f64 / params as f64
                        }
                    }),
                    macs,
                    stored_sparse: t.sparse,
                    stored_bytes: t.stored_bytes,
                });
                found = true;
                if matches!(kind, WeightKind::Dense) {
                    break; // one weight per dense layer (input 0 only when input 1 is not constant)
                }
            }
            if !found && matches!(node.op.as_str(), "MatMul" | "BATCH_MATMUL") {
                if let Some(m) = activation_matmul_macs(g, node, inferred) {
                    totals.macs = totals.macs.saturating_add(m);
                }
            }
        }
        for t in &g.tensors {
            if t.is_const() && is_parameter(t) && t.handle.is_none_or(|h| counted.insert(h)) {
                let n = t.numel().unwrap_or(0);
                totals.params = totals.params.saturating_add(n);
                if t.sparse {
                    totals.sparse_tensors += 1;
                    totals.sparse_stored_bytes += t.stored_bytes;
                    totals.sparse_dense_bytes += t.data.as_ref().map_or(0, |d| d.len() as u64);
                }
                totals.nonzero_params = totals.nonzero_params.saturating_add(if t.data.is_none() {
                    n
                } else {
                    nonzeros(t).unwrap_or(n).min(n)
                });
            }
        }
    }
    totals.sparsity = if totals.params == 0 {
        0.0
    } else {
        1.0 - totals.nonzero_params as f64 / totals.params as f64
    };
    (layers, totals)
}
