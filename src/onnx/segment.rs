//! A part of the main graph as a model of its own ([`crate::model::Segment`]): the nodes it
//! runs, fed by graph inputs that stand for the activations before it, giving the ones after.

use super::tensor::dtype_to_onnx;
use super::OnnxDocument;
use crate::error::{Error, Result};
use crate::model::{Graph, Segment};
use crate::onnx_pb as pb;
use pb::tensor_shape_proto::dimension::Value as DimValue;
use pb::type_proto::Value as TypeValue;
use std::collections::HashSet;

fn value_info(name: &str, elem_type: Option<i32>, shape: Option<&[usize]>) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: Some(name.to_string()),
        r#type: elem_type.map(|elem_type| pb::TypeProto {
            value: Some(TypeValue::TensorType(pb::type_proto::Tensor {
                elem_type: Some(elem_type),
                shape: shape.map(|s| pb::TensorShapeProto {
                    dim: s
                        .iter()
                        .map(|&d| pb::tensor_shape_proto::Dimension {
                            value: Some(DimValue::DimValue(d as i64)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl OnnxDocument {
    /// The model that runs `s.nodes` of the main graph `g` (this document's) alone: the
    /// segment's inputs become graph inputs of the given types and shapes, its constants
    /// initializers, its outputs the only graph outputs. Only the initializers those nodes read
    /// are kept, and no `value_info` (the runtime infers the shapes from the inputs').
    pub fn segment(&self, g: &Graph, s: &Segment) -> Result<OnnxDocument> {
        let unsupported = |what: String| Error::unsupported(&self.path, what);
        let mut d = self.clone();
        if !d.dense.is_empty() {
            // Sparse initializers are addressed by position: make them dense before cutting.
            let policy = crate::sparse::StoragePolicy::new(crate::sparse::Storage::Dense);
            d = d.with_storage(&policy)?.0;
        }
        let graph = d
            .model
            .graph
            .as_mut()
            .ok_or_else(|| unsupported("the model has no graph".into()))?;
        let nodes = std::mem::take(&mut graph.node);
        graph.node = s
            .nodes
            .iter()
            .map(|&i| {
                nodes
                    .get(i)
                    .cloned()
                    .ok_or_else(|| unsupported(format!("segment node {i} is not in the graph")))
            })
            .collect::<Result<_>>()?;
        if let Some(n) = graph.node.iter().find(|n| {
            n.attribute
                .iter()
                .any(|a| a.g.is_some() || !a.graphs.is_empty())
        }) {
            return Err(unsupported(format!(
                "node {:?} ({}) holds a subgraph: it cannot run as part of a segment",
                n.name(),
                n.op_type()
            )));
        }
        let read: HashSet<&str> = graph
            .node
            .iter()
            .flat_map(|n| n.input.iter().map(String::as_str))
            .collect();
        let initializers = std::mem::take(&mut graph.initializer);
        graph.initializer = initializers
            .into_iter()
            .filter(|t| read.contains(t.name()))
            .collect();
        graph.sparse_initializer.clear();
        graph.value_info.clear();
        let elem = |dt| {
            dtype_to_onnx(dt).ok_or_else(|| unsupported(format!("no ONNX element type for {dt}")))
        };
        graph.input = s
            .inputs
            .iter()
            .map(|(t, dt, shape)| {
                Ok(value_info(
                    &g.tensor(*t).name,
                    Some(elem(*dt)?),
                    Some(shape),
                ))
            })
            .collect::<Result<_>>()?;
        for (t, dt, shape, bytes) in &s.constants {
            graph.initializer.push(pb::TensorProto {
                name: Some(g.tensor(*t).name.clone()),
                data_type: Some(elem(*dt)?),
                dims: shape.iter().map(|&d| d as i64).collect(),
                raw_data: Some(bytes.clone()),
                ..Default::default()
            });
        }
        graph.output = s
            .outputs
            .iter()
            .map(|&t| value_info(&g.tensor(t).name, None, None))
            .collect();
        d.edited = true;
        Ok(d)
    }
}
