//! A validation copy of an ONNX model that tract computes correctly (QDQ, dynamic quantization).
//!
//! tract 0.23.9 runs ONNX QuantizeLinear → DequantizeLinear pairs on activations wrongly (the
//! `cnn_qdq.onnx` fixture gives 1.0 for every class where onnxruntime gives a one-hot softmax),
//! so comparing two QDQ models in tract would compare garbage with garbage. For validation
//! only, pare rewrites:
//!
//! - DequantizeLinear of a constant (weights, int32 biases) → the float constant it computes;
//! - QuantizeLinear with per-tensor parameters whose every consumer is such a DequantizeLinear
//!   → `Min(Max(Round(x / s) + zp, lo), hi)` in float (Round is half-to-even, as
//!   QuantizeLinear rounds), and those DequantizeLinear → `(q − zp) · s`;
//! - `DynamicQuantizeLSTM` (onnxruntime's contrib op) → the float `LSTM` ([`lstm`]).
//!
//! Written files are never rewritten; this copy only feeds tract.

mod lstm;

use super::tensor::TensorPayload;
use super::OnnxDocument;
use crate::model::DType;
use crate::onnx_pb as pb;
use std::collections::{BTreeMap, HashMap, HashSet};

fn attr_i(n: &pb::NodeProto, name: &str) -> Option<i64> {
    n.attribute.iter().find(|a| a.name() == name).map(|a| a.i())
}

/// Values of a constant as f64.
fn values(doc: &OnnxDocument, t: &pb::TensorProto) -> Option<Vec<f64>> {
    let TensorPayload::Dense(b) = doc.payload(t).ok()? else {
        return None;
    };
    super::dtype_from_onnx(t.data_type()).decode_f64(&b)
}

fn f32_tensor(name: &str, dims: &[i64], v: &[f32]) -> pb::TensorProto {
    let mut raw = Vec::with_capacity(v.len() * 4);
    for x in v {
        raw.extend_from_slice(&x.to_le_bytes());
    }
    pb::TensorProto {
        name: Some(name.to_string()),
        dims: dims.to_vec(),
        data_type: Some(pb::tensor_proto::DataType::Float as i32),
        raw_data: Some(raw.into()),
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], output: &str) -> pb::NodeProto {
    pb::NodeProto {
        op_type: Some(op.to_string()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        name: Some(format!("{output}__pare_{op}")),
        ..Default::default()
    }
}

/// The range of the quantized type named by a zero-point tensor (uint8 when absent).
fn range_of(zp: Option<&pb::TensorProto>) -> Option<(f32, f32)> {
    let code = zp.map_or(pb::tensor_proto::DataType::Uint8 as i32, |t| t.data_type());
    Some(match super::dtype_from_onnx(code) {
        DType::U8 => (0.0, 255.0),
        DType::I8 => (-128.0, 127.0),
        DType::U16 => (0.0, 65535.0),
        DType::I16 => (-32768.0, 32767.0),
        _ => return None,
    })
}

/// The rewritten model and what was rewritten, or `None` when there is nothing to rewrite.
pub fn lower_for_tract(doc: &OnnxDocument) -> Option<(pb::ModelProto, BTreeMap<String, usize>)> {
    let mut lowered = qdq(doc);
    if lstm::present(&doc.model) {
        let (m, rewrites) = lowered.get_or_insert_with(|| (doc.model.clone(), BTreeMap::new()));
        let n = lstm::dequantize(doc, m);
        if n > 0 {
            rewrites.insert(lstm::REWRITE.to_string(), n);
        }
    }
    lowered.filter(|(_, rewrites)| !rewrites.is_empty())
}

/// The QDQ rewrites of the module doc, `None` when there is nothing to rewrite.
fn qdq(doc: &OnnxDocument) -> Option<(pb::ModelProto, BTreeMap<String, usize>)> {
    let opset = doc
        .model
        .opset_import
        .iter()
        .find(|o| o.domain().is_empty() || o.domain() == "ai.onnx")
        .map_or(0, |o| o.version());
    if opset < 11 {
        return None;
    }
    let g = doc.model.graph.as_ref()?;
    if !g.node.iter().any(|n| {
        matches!(n.op_type(), "QuantizeLinear" | "DequantizeLinear") && n.domain().is_empty()
    }) {
        return None;
    }
    let inits: HashMap<&str, &pb::TensorProto> =
        g.initializer.iter().map(|t| (t.name(), t)).collect();
    let init = |name: Option<&String>| {
        name.filter(|n| !n.is_empty())
            .and_then(|n| inits.get(n.as_str()).copied())
    };
    let per_tensor =
        |t: Option<&pb::TensorProto>| t.is_none_or(|t| t.dims.iter().product::<i64>() <= 1);
    let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, n) in g.node.iter().enumerate() {
        for x in &n.input {
            consumers.entry(x.as_str()).or_default().push(i);
        }
    }
    let outputs: HashSet<&str> = g.output.iter().map(|o| o.name()).collect();
    let is_dq = |n: &pb::NodeProto| n.op_type() == "DequantizeLinear" && n.domain().is_empty();
    let is_q = |n: &pb::NodeProto| n.op_type() == "QuantizeLinear" && n.domain().is_empty();
    let simple_dq = |n: &pb::NodeProto| {
        is_dq(n)
            && attr_i(n, "block_size").unwrap_or(0) == 0
            && init(n.input.get(1)).is_some()
            && (n.input.get(2).is_none_or(|z| z.is_empty()) || init(n.input.get(2)).is_some())
    };

    // QuantizeLinear nodes that can be emulated: constant per-tensor parameters, every consumer
    // a DequantizeLinear with constant per-tensor parameters, not a graph output.
    let mut emulated_q: HashSet<usize> = HashSet::new();
    for (i, n) in g.node.iter().enumerate() {
        if !is_q(n) || attr_i(n, "block_size").unwrap_or(0) != 0 {
            continue;
        }
        let (Some(out), Some(s)) = (n.output.first(), init(n.input.get(1))) else {
            continue;
        };
        let zp = init(n.input.get(2));
        if n.input.get(2).is_some_and(|z| !z.is_empty()) && zp.is_none() {
            continue;
        }
        if !per_tensor(Some(s))
            || !per_tensor(zp)
            || range_of(zp).is_none()
            || outputs.contains(out.as_str())
        {
            continue;
        }
        let cons = consumers.get(out.as_str()).map_or(&[][..], Vec::as_slice);
        if !cons.is_empty()
            && cons.iter().all(|&c| {
                let d = &g.node[c];
                simple_dq(d)
                    && d.input.first() == Some(out)
                    && per_tensor(init(d.input.get(1)))
                    && per_tensor(init(d.input.get(2)))
            })
        {
            emulated_q.insert(i);
        }
    }
    let q_outputs: HashSet<&str> = emulated_q
        .iter()
        .filter_map(|&i| g.node[i].output.first().map(String::as_str))
        .collect();

    let mut model = doc.model.clone();
    let mut rewrites = BTreeMap::new();
    let mut count = |what: &str| *rewrites.entry(what.to_string()).or_insert(0usize) += 1;
    let mut new_nodes = Vec::with_capacity(g.node.len());
    let mut new_inits = Vec::new();
    let scalar = |v: f32| v;
    for (i, n) in g.node.iter().enumerate() {
        let out = n.output.first().cloned().unwrap_or_default();
        if emulated_q.contains(&i) {
            let s = values(doc, init(n.input.get(1)).unwrap())?;
            let zp_t = init(n.input.get(2));
            let z = match zp_t {
                Some(t) => values(doc, t)?.first().copied().unwrap_or(0.0),
                None => 0.0,
            };
            let (lo, hi) = range_of(zp_t)?;
            let p = |suffix: &str| format!("{out}__pare_{suffix}");
            for (name, v) in [
                (p("s"), scalar(*s.first()? as f32)),
                (p("z"), z as f32),
                (p("lo"), lo),
                (p("hi"), hi),
            ] {
                new_inits.push(f32_tensor(&name, &[], &[v]));
            }
            new_nodes.push(node("Div", &[&n.input[0], &p("s")], &p("div")));
            new_nodes.push(node("Round", &[&p("div")], &p("round")));
            new_nodes.push(node("Add", &[&p("round"), &p("z")], &p("add")));
            new_nodes.push(node("Max", &[&p("add"), &p("lo")], &p("max")));
            new_nodes.push(node("Min", &[&p("max"), &p("hi")], &out));
            count("QuantizeLinear → float rounding");
            continue;
        }
        if simple_dq(n) {
            let x = n.input.first().map(String::as_str).unwrap_or("");
            if q_outputs.contains(x) {
                let s = values(doc, init(n.input.get(1)).unwrap())?;
                let z = match init(n.input.get(2)) {
                    Some(t) => values(doc, t)?.first().copied().unwrap_or(0.0),
                    None => 0.0,
                };
                let p = |suffix: &str| format!("{out}__pare_{suffix}");
                new_inits.push(f32_tensor(&p("s"), &[], &[*s.first()? as f32]));
                new_inits.push(f32_tensor(&p("z"), &[], &[z as f32]));
                new_nodes.push(node("Sub", &[x, &p("z")], &p("sub")));
                new_nodes.push(node("Mul", &[&p("sub"), &p("s")], &out));
                count("DequantizeLinear (activation) → float");
                continue;
            }
            if let Some(xt) = inits.get(x) {
                let q = values(doc, xt);
                let s = values(doc, init(n.input.get(1)).unwrap());
                let z = match init(n.input.get(2)) {
                    Some(t) => values(doc, t),
                    None => Some(vec![0.0]),
                };
                if let (Some(q), Some(s), Some(z)) = (q, s, z) {
                    let dims = &xt.dims;
                    let rank = dims.len() as i64;
                    let axis = attr_i(n, "axis").unwrap_or(1);
                    let axis = if axis < 0 { axis + rank } else { axis };
                    let per_axis = s.len() > 1;
                    let inner: usize = if per_axis && (0..rank).contains(&axis) {
                        dims[axis as usize + 1..].iter().product::<i64>().max(1) as usize
                    } else {
                        1
                    };
                    let ch = if per_axis { s.len() } else { 1 };
                    if !per_axis || (0..rank).contains(&axis) && dims[axis as usize] as usize == ch
                    {
                        let v: Vec<f32> = q
                            .iter()
                            .enumerate()
                            .map(|(e, &qv)| {
                                let c = if per_axis { (e / inner) % ch } else { 0 };
                                let zc = *z.get(c).unwrap_or(&z[0]);
                                ((qv - zc) * s[c]) as f32
                            })
                            .collect();
                        new_inits.push(f32_tensor(&out, dims, &v));
                        count("DequantizeLinear (constant) → float constant");
                        continue;
                    }
                }
            }
        }
        new_nodes.push(n.clone());
    }
    if rewrites.is_empty() {
        return None;
    }
    let mg = model.graph.as_mut()?;
    mg.node = new_nodes;
    mg.initializer.extend(new_inits);
    // Emulated quantized tensors are float now; drop their declared (integer) types.
    mg.value_info.retain(|v| !q_outputs.contains(v.name()));
    Some((model, rewrites))
}
