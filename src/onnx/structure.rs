//! Applies structural edits (channel pruning) to a decoded ONNX model.

use super::tensor::{for_each_tensor_mut, set_raw};
use super::OnnxDocument;
use crate::model::StructureEdits;
use crate::onnx_pb as pb;
use std::collections::HashMap;

/// Sets dimension `axis` of a declared tensor type, when it is a fixed value.
fn set_dim(vi: &mut pb::ValueInfoProto, axis: usize, len: u64) {
    use pb::tensor_shape_proto::dimension::Value;
    use pb::type_proto::Value as T;
    let Some(T::TensorType(tt)) = vi.r#type.as_mut().and_then(|t| t.value.as_mut()) else {
        return;
    };
    if let Some(d) = tt.shape.as_mut().and_then(|s| s.dim.get_mut(axis)) {
        if matches!(d.value, Some(Value::DimValue(_))) {
            d.value = Some(Value::DimValue(len as i64));
        }
    }
}

impl OnnxDocument {
    /// A copy with `edits` applied to the main graph and its constants.
    pub fn with_structure(&self, edits: &StructureEdits) -> OnnxDocument {
        let mut doc = self.clone();
        doc.edited = true;
        let mut ordinal = 0usize;
        let mut renamed: HashMap<String, Vec<u64>> = HashMap::new();
        let mut moved = Vec::new();
        for_each_tensor_mut(&mut doc.model, &mut |t| {
            if let Some(c) = edits.constants.get(&ordinal) {
                t.dims = c.dims.iter().map(|&d| d as i64).collect();
                if super::tensor::is_external(t) {
                    moved.push(crate::model::payload::payload_key(&c.data));
                }
                set_raw(t, c.data.clone());
                renamed.insert(t.name().to_string(), c.dims.clone());
            }
            ordinal += 1;
        });
        doc.note_from_external(moved);
        let Some(g) = doc.model.graph.as_mut() else {
            return doc;
        };
        let by_name: HashMap<&str, Vec<(usize, u64)>> =
            edits.dims.iter().fold(HashMap::new(), |mut m, e| {
                m.entry(e.name.as_str()).or_default().push((e.axis, e.len));
                m
            });
        for vi in g.value_info.iter_mut().chain(g.input.iter_mut()) {
            if let Some(v) = by_name.get(vi.name()) {
                for &(axis, len) in v {
                    set_dim(vi, axis, len);
                }
            }
            // Initializers declared as graph inputs (IR < 4) or in value_info.
            if let Some(dims) = renamed.get(vi.name()) {
                for (axis, &len) in dims.iter().enumerate() {
                    set_dim(vi, axis, len);
                }
            }
        }
        // Copies for readers of shared constants: a new initializer each, the original
        // dropped when no node reads it any more.
        let mut orphans = Vec::new();
        for c in &edits.copies {
            let Some(n) = g.node.get(c.node) else {
                continue;
            };
            let Some(old) = n.input.get(c.slot).cloned() else {
                continue;
            };
            let template = g
                .initializer
                .iter()
                .find(|t| t.name() == old)
                .cloned()
                .or_else(|| {
                    g.node
                        .iter()
                        .find(|n| n.output.first() == Some(&old))
                        .and_then(|n| n.attribute.iter().find_map(|a| a.t.clone()))
                });
            let Some(mut t) = template else { continue };
            let mut k = 0usize;
            let name = loop {
                let candidate = format!("{old}__pare{k}");
                if !g.initializer.iter().any(|t| t.name() == candidate)
                    && !g.node.iter().any(|n| n.output.contains(&candidate))
                {
                    break candidate;
                }
                k += 1;
            };
            t.name = Some(name.clone());
            t.dims = c.edit.dims.iter().map(|&d| d as i64).collect();
            set_raw(&mut t, c.edit.data.clone());
            g.initializer.push(t);
            g.node[c.node].input[c.slot] = name;
            orphans.push(old);
        }
        // A nested body may read any outer name: with one, orphans are kept.
        let has_bodies = g.node.iter().any(|n| {
            n.attribute
                .iter()
                .any(|a| a.g.is_some() || !a.graphs.is_empty())
        });
        for old in orphans {
            let used = has_bodies
                || g.node.iter().any(|n| n.input.contains(&old))
                || g.output.iter().any(|o| o.name() == old);
            if !used {
                g.initializer.retain(|t| t.name() != old);
                g.input.retain(|i| i.name() != old);
            }
        }
        for &(node, group) in &edits.groups {
            if let Some(n) = g.node.get_mut(node) {
                for a in n.attribute.iter_mut().filter(|a| a.name() == "group") {
                    a.i = Some(group as i64);
                }
            }
        }
        doc
    }
}
