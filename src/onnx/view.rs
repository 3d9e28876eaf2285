//! Builds the format-neutral [`Model`] view of an ONNX document.

use super::tensor::{dtype_from_onnx, TensorPayload};
use super::OnnxDocument;
use crate::error::Result;
use crate::model::{Attrs, DType, Dim, FormatInfo, Graph, Model, Node, Tensor, TensorId};
use crate::onnx_pb as pb;
use std::collections::HashMap;

pub fn build(doc: &OnnxDocument) -> Result<Model> {
    let m = &doc.model;
    let mut graphs = Vec::new();
    let main = m.graph.as_ref().expect("checked when read");
    // Handles: each TensorProto's position in for_each_tensor order, found by address (the
    // document is borrowed immutably throughout, so addresses are stable).
    let mut handles = HashMap::new();
    let mut next = 0usize;
    super::tensor::for_each_tensor(m, &mut |t| {
        handles.insert(t as *const pb::TensorProto, next);
        next += 1;
    });
    let cx = Context {
        doc,
        handles: &handles,
    };
    build_graph(&cx, main, &HashMap::new(), &mut graphs)?;
    let info = FormatInfo::Onnx {
        ir_version: m.ir_version(),
        opsets: m
            .opset_import
            .iter()
            .map(|o| (o.domain().to_string(), o.version()))
            .collect(),
        producer_name: m.producer_name().to_string(),
        producer_version: m.producer_version().to_string(),
        domain: m.domain().to_string(),
        model_version: m.model_version(),
        metadata: m
            .metadata_props
            .iter()
            .map(|p| (p.key().to_string(), p.value().to_string()))
            .collect(),
        external_data_files: doc.external_locations(),
    };
    Ok(Model {
        format: crate::model::Format::Onnx,
        info,
        graphs,
    })
}

struct Context<'a> {
    doc: &'a OnnxDocument,
    handles: &'a HashMap<*const pb::TensorProto, usize>,
}

struct Builder<'a> {
    cx: &'a Context<'a>,
    g: Graph,
    ids: HashMap<String, TensorId>,
}

impl Builder<'_> {
    fn id(&mut self, name: &str) -> TensorId {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.g.tensors.len();
        self.g.tensors.push(Tensor {
            name: name.to_string(),
            dtype: DType::Other,
            shape: None,
            quant: None,
            data: None,
            sparse: false,
            stored_bytes: 0,
            handle: None,
        });
        self.ids.insert(name.to_string(), id);
        id
    }

    fn declare(&mut self, vi: &pb::ValueInfoProto) -> TensorId {
        let id = self.id(vi.name());
        if let Some(pb::type_proto::Value::TensorType(tt)) =
            vi.r#type.as_ref().and_then(|t| t.value.as_ref())
        {
            let t = &mut self.g.tensors[id];
            if tt.elem_type.is_some() {
                t.dtype = dtype_from_onnx(tt.elem_type());
            }
            if let Some(shape) = &tt.shape {
                t.shape = Some(shape.dim.iter().map(dim_from_onnx).collect());
            }
        }
        id
    }

    fn constant(&mut self, name: &str, tp: &pb::TensorProto) -> Result<TensorId> {
        let id = self.id(name);
        let payload = self.cx.doc.payload(tp)?;
        let handle = self
            .cx
            .handles
            .get(&(tp as *const pb::TensorProto))
            .copied();
        let t = &mut self.g.tensors[id];
        t.handle = handle;
        t.dtype = dtype_from_onnx(tp.data_type());
        t.shape = Some(
            tp.dims
                .iter()
                .map(|&d| Dim::Fixed(d.max(0) as u64))
                .collect(),
        );
        match payload {
            TensorPayload::Dense(b) => {
                t.stored_bytes = b.len() as u64;
                t.data = Some(b);
            }
            // Strings and sub-byte types: carried through in the document, no dense view.
            TensorPayload::Opaque => {}
        }
        Ok(id)
    }
}

fn dim_from_onnx(d: &pb::tensor_shape_proto::Dimension) -> Dim {
    match &d.value {
        Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) if *v >= 0 => {
            Dim::Fixed(*v as u64)
        }
        Some(pb::tensor_shape_proto::dimension::Value::DimParam(p)) => Dim::Dynamic(p.clone()),
        _ => Dim::Dynamic(String::new()),
    }
}

/// Builds graph `g` and, after it, its nested bodies. `outer` holds the constants of the
/// enclosing scopes: a body may use them by name (ONNX scoping), and then sees them as its own.
fn build_graph(
    cx: &Context,
    g: &pb::GraphProto,
    outer: &HashMap<String, Tensor>,
    graphs: &mut Vec<Graph>,
) -> Result<usize> {
    let index = graphs.len();
    graphs.push(Graph::default());
    let mut b = Builder {
        cx,
        g: Graph {
            name: g.name().to_string(),
            ..Graph::default()
        },
        ids: HashMap::new(),
    };

    let initializer_names: std::collections::HashSet<&str> =
        g.initializer.iter().map(|t| t.name()).collect();
    for vi in &g.input {
        let id = b.declare(vi);
        // An initializer listed as a graph input is an overridable default (IR < 4), not a
        // real input: runtimes feed it from the initializer.
        if !initializer_names.contains(vi.name()) {
            b.g.inputs.push(id);
        }
    }
    for t in &g.initializer {
        b.constant(t.name(), t)?;
    }
    for s in &g.sparse_initializer {
        if let Some(v) = &s.values {
            let handle = b.cx.handles.get(&(v as *const pb::TensorProto)).copied();
            let stored = |t: &Option<pb::TensorProto>| match t.as_ref().map(|t| b.cx.doc.payload(t))
            {
                Some(Ok(TensorPayload::Dense(d))) => d.len() as u64,
                _ => 0,
            };
            let stored_bytes = stored(&s.values) + stored(&s.indices);
            let id = b.id(v.name());
            let t = &mut b.g.tensors[id];
            t.dtype = dtype_from_onnx(v.data_type());
            t.shape = Some(
                s.dims
                    .iter()
                    .map(|&d| Dim::Fixed(d.max(0) as u64))
                    .collect(),
            );
            t.sparse = true;
            t.handle = handle;
            t.data = handle.and_then(|h| b.cx.doc.dense.get(&h).cloned());
            t.stored_bytes = stored_bytes;
        }
    }
    for vi in g.value_info.iter().chain(&g.output) {
        b.declare(vi);
    }
    for vi in &g.output {
        let id = b.id(vi.name());
        b.g.outputs.push(id);
    }

    for n in &g.node {
        let inputs: Vec<Option<TensorId>> = n
            .input
            .iter()
            .map(|name| {
                if name.is_empty() {
                    None
                } else {
                    Some(b.id(name))
                }
            })
            .collect();
        let outputs: Vec<TensorId> = n.output.iter().map(|name| b.id(name)).collect();
        if n.op_type() == "Constant" && n.domain().is_empty() {
            if let (Some(out), Some(t)) = (
                n.output.first(),
                n.attribute.iter().find_map(|a| a.t.as_ref()),
            ) {
                b.constant(out, t)?;
            }
        }
        let mut attrs = Attrs::default();
        for a in &n.attribute {
            match a.name() {
                "group" => attrs.group = Some(a.i().max(1) as u64),
                "kernel_shape" => {
                    attrs.kernel = Some(a.ints.iter().map(|&v| v.max(0) as u64).collect())
                }
                "strides" => {
                    attrs.strides = Some(a.ints.iter().map(|&v| v.max(0) as u64).collect())
                }
                "axis" => attrs.axis = Some(a.i()),
                "transB" => attrs.trans_b = a.i() != 0,
                "transA" => attrs.trans_a = a.i() != 0,
                "perm" => attrs.perm = Some(a.ints.clone()),
                "axes" => attrs.axes = Some(a.ints.clone()),
                "keepdims" => attrs.keepdims = Some(a.i() != 0),
                "pads" => attrs.pads = Some(a.ints.clone()),
                "dilations" => {
                    attrs.dilations = Some(a.ints.iter().map(|&v| v.max(1) as u64).collect())
                }
                "auto_pad" => attrs.auto_pad = Some(String::from_utf8_lossy(a.s()).into_owned()),
                "epsilon" => attrs.epsilon = Some(a.f()),
                "alpha" => attrs.alpha = Some(a.f()),
                _ => {}
            }
        }
        // Exporters often leave nodes unnamed; the first output's name identifies them.
        let name = if n.name().is_empty() {
            n.output.first().cloned().unwrap_or_default()
        } else {
            n.name().to_string()
        };
        b.g.nodes.push(Node {
            name,
            op: n.op_type().to_string(),
            inputs,
            outputs,
            attrs,
        });
    }
    // Names used here but defined nowhere in this graph come from an enclosing scope.
    let mut defined: std::collections::HashSet<TensorId> = b.g.inputs.iter().copied().collect();
    defined.extend(b.g.nodes.iter().flat_map(|n| n.outputs.iter().copied()));
    for (id, t) in b.g.tensors.iter_mut().enumerate() {
        if !t.is_const() && !defined.contains(&id) {
            if let Some(o) = outer.get(&t.name) {
                *t = o.clone();
            }
        }
    }
    attach_weight_quantization(&mut b.g);
    let mut scope = outer.clone();
    for t in b.g.tensors.iter().filter(|t| t.is_const()) {
        scope.insert(t.name.clone(), t.clone());
    }
    graphs[index] = b.g;
    // Nested bodies (If/Loop/Scan) become graphs of their own after their parent.
    for n in &g.node {
        for a in &n.attribute {
            for sub in a.g.iter().chain(&a.graphs) {
                build_graph(cx, sub, &scope, graphs)?;
            }
        }
    }
    Ok(index)
}

/// ONNX keeps a quantized weight's scale and zero point on the node that uses it
/// (DequantizeLinear, QLinearConv, …), not on the tensor. Copy them onto the stored tensor
/// so that zeros are counted (and pruned) against the right zero point.
fn attach_weight_quantization(g: &mut Graph) {
    // (weight input, scale input, zero-point input, default axis) per op.
    let mut found: Vec<(TensorId, crate::model::Quant)> = Vec::new();
    for n in &g.nodes {
        let (w, s, z, axis) = match n.op.as_str() {
            "DequantizeLinear" => (0, 1, 2, n.attrs.axis.unwrap_or(1)),
            "QLinearConv" => (3, 4, 5, 0),
            "QLinearMatMul" => (3, 4, 5, -1),
            "ConvInteger" => (1, usize::MAX, 3, 0),
            "MatMulInteger" => (1, usize::MAX, 3, -1),
            _ => continue,
        };
        let get = |i: usize| n.inputs.get(i).copied().flatten().map(|id| &g.tensors[id]);
        let Some(wt) = get(w) else { continue };
        if !wt.is_const() || wt.quant.is_some() {
            continue;
        }
        let scale = match get(s) {
            Some(t) => match t.data.as_ref().and_then(|d| decode_f32(t.dtype, d)) {
                Some(v) => v,
                None => continue,
            },
            None => vec![1.0],
        };
        let zero_point = match get(z) {
            Some(t) => match t.data.as_ref().and_then(|d| decode_int(t.dtype, d)) {
                Some(v) => v,
                None => continue,
            },
            None => vec![0; scale.len()],
        };
        let rank = wt.shape.as_ref().map_or(0, |s| s.len()) as i64;
        let per_axis = scale.len() > 1 || zero_point.len() > 1;
        let axis = if axis < 0 { axis + rank } else { axis };
        if per_axis && !(0..rank).contains(&axis) {
            continue;
        }
        let wid = n.inputs[w].expect("checked");
        found.push((
            wid,
            crate::model::Quant {
                scale,
                zero_point,
                axis: per_axis.then_some(axis as usize),
            },
        ));
    }
    for (id, q) in found {
        g.tensors[id].quant.get_or_insert(q);
    }
}

fn decode_f32(dtype: DType, d: &[u8]) -> Option<Vec<f32>> {
    if !dtype.is_float() {
        return None;
    }
    Some(dtype.decode_f64(d)?.into_iter().map(|v| v as f32).collect())
}

fn decode_int(dtype: DType, d: &[u8]) -> Option<Vec<i64>> {
    if dtype.is_float() {
        return None;
    }
    Some(dtype.decode_f64(d)?.into_iter().map(|v| v as i64).collect())
}
