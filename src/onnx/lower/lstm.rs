//! onnxruntime's `DynamicQuantizeLSTM` (what `quantize_dynamic` makes of an `LSTM`), which tract
//! does not know, as the float `LSTM` it stands for: int8 weights dequantized with their
//! per-direction or per-gate-row scales and zero points and transposed back to ONNX's layout.
//!
//! onnxruntime also rounds the activations to uint8 on every step; the float LSTM does not, so
//! the copy computes what the quantized model approximates (the tests measure how closely).

use super::{f32_tensor, values};
use crate::onnx::tensor::{for_each_graph_mut, for_each_tensor};
use crate::onnx::OnnxDocument;
use crate::onnx_pb as pb;
use std::collections::{HashMap, HashSet};

/// The rewrite's entry in the lowering report.
pub(super) const REWRITE: &str = "DynamicQuantizeLSTM → LSTM with dequantized weights";

/// Inputs of `DynamicQuantizeLSTM` holding constants: W and R, then (after LSTM's other six)
/// W's scale and zero point and R's.
const W: usize = 1;
const R: usize = 2;
const W_SCALE: usize = 8;
const W_ZERO: usize = 9;
const R_SCALE: usize = 10;
const R_ZERO: usize = 11;

/// A constant's dims and values.
type Const = (Vec<i64>, Vec<f64>);

fn is_quantized_lstm(n: &pb::NodeProto) -> bool {
    n.op_type() == "DynamicQuantizeLSTM" && n.domain() == "com.microsoft"
}

/// Whether any graph of `m` (nested ones included) holds a `DynamicQuantizeLSTM`.
pub(super) fn present(m: &pb::ModelProto) -> bool {
    fn in_graph(g: &pb::GraphProto) -> bool {
        g.node.iter().any(|n| {
            is_quantized_lstm(n)
                || (n.attribute.iter()).any(|a| a.g.iter().chain(&a.graphs).any(in_graph))
        })
    }
    m.graph.as_ref().is_some_and(in_graph)
}

/// Rewrites, in every graph of `m`, each `DynamicQuantizeLSTM` whose weights, scales and zero
/// points are initializers (of any graph, by unique name) as a float `LSTM`. Returns how many.
pub(super) fn dequantize(doc: &OnnxDocument, m: &mut pb::ModelProto) -> usize {
    let mut wanted: HashSet<String> = HashSet::new();
    for_each_graph_mut(m, &mut |g| {
        for n in g.node.iter().filter(|n| is_quantized_lstm(n)) {
            for k in [W, R, W_SCALE, W_ZERO, R_SCALE, R_ZERO] {
                wanted.extend(n.input.get(k).filter(|x| !x.is_empty()).cloned());
            }
        }
    });
    // A name given to two tensors (in different scopes) is not looked up.
    let mut consts: HashMap<String, Option<Const>> = HashMap::new();
    for_each_tensor(m, &mut |t| {
        if wanted.contains(t.name()) {
            let c = values(doc, t).map(|v| (t.dims.clone(), v));
            (consts.entry(t.name().to_string()))
                .and_modify(|e| *e = None)
                .or_insert(c);
        }
    });
    let mut count = 0;
    for_each_graph_mut(m, &mut |g| {
        let mut added = Vec::new();
        for n in g.node.iter_mut().filter(|n| is_quantized_lstm(n)) {
            if let Some((lstm, weights)) = as_float(n, &consts) {
                *n = lstm;
                added.extend(weights);
                count += 1;
            }
        }
        g.initializer.extend(added);
    });
    count
}

/// The float `LSTM` for `n` and its two weight initializers, `None` when a constant is missing
/// or its shape does not fit.
fn as_float(
    n: &pb::NodeProto,
    consts: &HashMap<String, Option<Const>>,
) -> Option<(pb::NodeProto, [pb::TensorProto; 2])> {
    let get = |k: usize| match n.input.get(k).filter(|x| !x.is_empty()) {
        Some(name) => consts.get(name)?.as_ref().map(Some),
        None => Some(None),
    };
    let w = dequantized(get(W)??, get(W_SCALE)??, get(W_ZERO)?)?;
    let r = dequantized(get(R)??, get(R_SCALE)??, get(R_ZERO)?)?;
    let stem = n.output.iter().find(|o| !o.is_empty())?;
    let (w_name, r_name) = (format!("{stem}__pare_W"), format!("{stem}__pare_R"));
    let mut lstm = n.clone();
    lstm.op_type = Some("LSTM".into());
    lstm.domain = None;
    lstm.input.truncate(W_SCALE);
    (lstm.input[W], lstm.input[R]) = (w_name.clone(), r_name.clone());
    while lstm.input.last().is_some_and(String::is_empty) {
        lstm.input.pop();
    }
    Some((
        lstm,
        [
            f32_tensor(&w_name, &w.0, &w.1),
            f32_tensor(&r_name, &r.0, &r.1),
        ],
    ))
}

/// `q [dirs, k, gates]` with a scale and zero point per direction or per gate row (`[dirs]` or
/// `[dirs, gates]`; no zero point: 0) → `(q − zp) · s`, as `[dirs, gates, k]` (LSTM's layout).
fn dequantized(q: &Const, s: &Const, z: Option<&Const>) -> Option<(Vec<i64>, Vec<f32>)> {
    let &[dirs, k, gates] = q.0.as_slice() else {
        return None;
    };
    let dims = [dirs, k, gates].map(|d| usize::try_from(d).ok());
    let [Some(dirs), Some(k), Some(gates)] = dims else {
        return None;
    };
    let len = dirs.checked_mul(k)?.checked_mul(gates)?;
    let per_row = match s.1.len() {
        l if l == dirs => false,
        l if Some(l) == dirs.checked_mul(gates) => true,
        _ => return None,
    };
    let zero = vec![0.0; s.1.len()];
    let z = z.map_or(&zero, |z| &z.1);
    if q.1.len() != len || z.len() != s.1.len() {
        return None;
    }
    let mut out = vec![0f32; len];
    for d in 0..dirs {
        for i in 0..k {
            for j in 0..gates {
                let c = if per_row { d * gates + j } else { d };
                out[(d * gates + j) * k + i] =
                    ((q.1[(d * k + i) * gates + j] - z[c]) * s.1[c]) as f32;
            }
        }
    }
    Some((vec![dirs as i64, gates as i64, k as i64], out))
}

#[cfg(test)]
mod tests {
    use super::dequantized;

    #[test]
    fn weights_are_dequantized_per_gate_row_and_transposed() {
        // One direction, k = 2 inputs, 3 gate rows; scale and zero point per row.
        let q = (vec![1, 2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let s = (vec![1, 3], vec![1.0, 0.5, 2.0]);
        let z = (vec![1, 3], vec![1.0, 0.0, -1.0]);
        let (dims, v) = dequantized(&q, &s, Some(&z)).unwrap();
        assert_eq!(dims, vec![1, 3, 2]);
        // Row j, input i: (q[i][j] - z[j]) * s[j].
        assert_eq!(v, vec![0.0, 3.0, 1.0, 2.5, 8.0, 14.0]);
        // Per-direction parameters, no zero point.
        let (_, v) = dequantized(&q, &(vec![1], vec![2.0]), None).unwrap();
        assert_eq!(v, vec![2.0, 8.0, 4.0, 10.0, 6.0, 12.0]);
        // A scale that fits neither layout is refused.
        assert!(dequantized(&q, &(vec![2], vec![1.0, 1.0]), None).is_none());
    }
}
