//! Builds the format-neutral [`Model`] view of a TFLite document.

use super::{dtype_from_tflite, op_name, TfliteDocument};
use crate::error::Result;
use crate::model::{Attrs, Dim, FormatInfo, Graph, Model, Node, Quant, Tensor};
use crate::tflite_gen::tflite as fb;

pub fn build(doc: &TfliteDocument) -> Result<Model> {
    let m = &doc.model;
    let codes = m.operator_codes.as_deref().unwrap_or(&[]);
    let mut graphs = Vec::new();
    for (si, sg) in m.subgraphs.iter().flatten().enumerate() {
        let mut g = Graph {
            name: sg.name.clone().unwrap_or_else(|| format!("subgraph{si}")),
            ..Graph::default()
        };
        for t in sg.tensors.iter().flatten() {
            g.tensors.push(tensor(doc, t));
        }
        let ids = |v: &Option<Vec<i32>>| -> Vec<usize> {
            v.iter()
                .flatten()
                .filter(|&&i| i >= 0)
                .map(|&i| i as usize)
                .collect()
        };
        g.inputs = ids(&sg.inputs);
        g.outputs = ids(&sg.outputs);
        for (oi, op) in sg.operators.iter().flatten().enumerate() {
            let code = &codes[op.opcode_index as usize];
            let inputs = op
                .inputs
                .iter()
                .flatten()
                .map(|&i| if i < 0 { None } else { Some(i as usize) })
                .collect();
            let outputs: Vec<usize> = ids(&op.outputs);
            // TFLite operators have no names; the first output tensor's name identifies them.
            let name = outputs
                .first()
                .map(|&o| g.tensors[o].name.clone())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| format!("op{oi}"));
            g.nodes.push(Node {
                name,
                op: op_name(code),
                inputs,
                outputs,
                attrs: attrs(&op.builtin_options),
            });
        }
        graphs.push(g);
    }
    let metadata: Vec<String> = m
        .metadata
        .iter()
        .flatten()
        .map(|md| md.name.clone().unwrap_or_default())
        .collect();
    let min_runtime_version = m
        .metadata
        .iter()
        .flatten()
        .find(|md| md.name.as_deref() == Some("min_runtime_version"))
        .and_then(|md| {
            let b = doc.buffers.get(md.buffer as usize)?.as_ref()?;
            let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
            Some(String::from_utf8_lossy(&b[..end]).into_owned())
        });
    let info = FormatInfo::Tflite {
        schema_version: m.version,
        description: m.description.clone().unwrap_or_default(),
        subgraphs: m.subgraphs.as_ref().map_or(0, |s| s.len()),
        operator_codes: codes.len(),
        buffers: doc.buffers.len(),
        min_runtime_version,
        metadata,
        signatures: m
            .signature_defs
            .iter()
            .flatten()
            .map(|s| s.signature_key.clone().unwrap_or_default())
            .collect(),
        offset_buffers: if doc.offset_form {
            doc.buffers
                .iter()
                .filter(|b| b.as_ref().is_some_and(|b| !b.is_empty()))
                .count()
        } else {
            0
        },
    };
    Ok(Model {
        format: crate::model::Format::Tflite,
        info,
        graphs,
    })
}

fn tensor(doc: &TfliteDocument, t: &fb::TensorT) -> Tensor {
    let payload = doc
        .buffers
        .get(t.buffer as usize)
        .cloned()
        .flatten()
        .filter(|b| !b.is_empty() && t.buffer != 0);
    let dims = t.shape_signature.as_ref().or(t.shape.as_ref());
    let shape = match dims {
        Some(d) => Some(
            d.iter()
                .map(|&v| {
                    if v < 0 {
                        Dim::Dynamic(String::new())
                    } else {
                        Dim::Fixed(v as u64)
                    }
                })
                .collect(),
        ),
        // An absent shape means a scalar when has_rank is set, an unknown rank otherwise.
        None if t.has_rank => Some(vec![]),
        None => None,
    };
    let quant = t.quantization.as_ref().and_then(|q| {
        let scale = q.scale.clone().unwrap_or_default();
        if scale.is_empty() {
            return None;
        }
        let zero_point = q.zero_point.clone().unwrap_or_else(|| vec![0; scale.len()]);
        let axis = (scale.len() > 1).then_some(q.quantized_dimension.max(0) as usize);
        Some(Quant {
            scale,
            zero_point,
            axis,
        })
    });
    let sparse = t.sparsity.is_some() && payload.is_some();
    Tensor {
        name: t.name.clone().unwrap_or_default(),
        dtype: dtype_from_tflite(t.type_),
        shape,
        quant,
        stored_bytes: if sparse {
            super::sparse::stored_bytes(doc, t)
        } else {
            payload.as_ref().map_or(0, |b| b.len() as u64)
        },
        handle: payload.as_ref().map(|_| t.buffer as usize),
        data: if sparse {
            doc.dense.get(&(t.buffer as usize)).cloned()
        } else {
            payload
        },
        sparse,
    }
}

fn attrs(o: &fb::BuiltinOptionsT) -> Attrs {
    let mut a = Attrs::default();
    let pad = |p: fb::Padding| {
        if p == fb::Padding::VALID {
            "VALID".to_string()
        } else {
            "SAME_UPPER".to_string()
        }
    };
    let act = |f: fb::ActivationFunctionType| {
        (f != fb::ActivationFunctionType::NONE)
            .then(|| f.variant_name().unwrap_or("UNKNOWN").to_string())
    };
    match o {
        fb::BuiltinOptionsT::Conv2DOptions(c) => {
            a.strides = Some(vec![c.stride_h.max(0) as u64, c.stride_w.max(0) as u64]);
            a.dilations = Some(vec![
                c.dilation_h_factor.max(1) as u64,
                c.dilation_w_factor.max(1) as u64,
            ]);
            a.auto_pad = Some(pad(c.padding));
            a.fused_activation = act(c.fused_activation_function);
        }
        fb::BuiltinOptionsT::DepthwiseConv2DOptions(c) => {
            a.strides = Some(vec![c.stride_h.max(0) as u64, c.stride_w.max(0) as u64]);
            a.dilations = Some(vec![
                c.dilation_h_factor.max(1) as u64,
                c.dilation_w_factor.max(1) as u64,
            ]);
            a.auto_pad = Some(pad(c.padding));
            a.depth_multiplier = Some(c.depth_multiplier.max(0) as u64);
            a.fused_activation = act(c.fused_activation_function);
        }
        fb::BuiltinOptionsT::FullyConnectedOptions(c) => {
            a.fused_activation = act(c.fused_activation_function);
            // Only the default weight layout is a plain [out, in] matrix.
            a.packed_weights = c.weights_format != fb::FullyConnectedOptionsWeightsFormat::DEFAULT;
            a.keepdims = Some(c.keep_num_dims);
        }
        fb::BuiltinOptionsT::ConcatenationOptions(c) => {
            a.axis = Some(c.axis as i64);
            a.fused_activation = act(c.fused_activation_function);
        }
        fb::BuiltinOptionsT::AddOptions(c) => a.fused_activation = act(c.fused_activation_function),
        fb::BuiltinOptionsT::SubOptions(c) => a.fused_activation = act(c.fused_activation_function),
        fb::BuiltinOptionsT::MulOptions(c) => a.fused_activation = act(c.fused_activation_function),
        fb::BuiltinOptionsT::DivOptions(c) => a.fused_activation = act(c.fused_activation_function),
        fb::BuiltinOptionsT::Pool2DOptions(c) => {
            a.fused_activation = act(c.fused_activation_function)
        }
        fb::BuiltinOptionsT::BatchMatMulOptions(c) => a.trans_b = c.adj_y,
        fb::BuiltinOptionsT::ReshapeOptions(c) => {
            a.new_shape = c
                .new_shape
                .as_ref()
                .map(|v| v.iter().map(|&d| d as i64).collect())
        }
        fb::BuiltinOptionsT::ReducerOptions(c) => a.keepdims = Some(c.keep_dims),
        fb::BuiltinOptionsT::SqueezeOptions(c) => {
            a.axes = c
                .squeeze_dims
                .as_ref()
                .map(|v| v.iter().map(|&d| d as i64).collect())
        }
        fb::BuiltinOptionsT::LeakyReluOptions(c) => a.alpha = Some(c.alpha),
        fb::BuiltinOptionsT::PackOptions(c) => a.axis = Some(c.axis as i64),
        fb::BuiltinOptionsT::SoftmaxOptions(_) => a.axis = Some(-1),
        _ => {}
    }
    a
}
