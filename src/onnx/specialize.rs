//! A verification copy of an ONNX model specialised to the shapes it is run at: symbolic
//! dimensions pinned, duplicate node names made unique, `If` nodes replaced by a known branch.
//!
//! These rewrites let tract run exports it refuses as they are (value_info that declares
//! `batch` where the run pins it, two nodes named alike, `If` branches whose shapes differ);
//! they only ever touch the copy tract runs, never a written file.

use super::tensor::for_each_graph_mut;
use crate::onnx_pb as pb;
use pb::tensor_shape_proto::dimension::Value as DimValue;
use pb::type_proto::Value as TypeValue;
use std::collections::{HashMap, HashSet};

fn dims_mut(vi: &mut pb::ValueInfoProto) -> Option<&mut Vec<pb::tensor_shape_proto::Dimension>> {
    match vi.r#type.as_mut()?.value.as_mut()? {
        TypeValue::TensorType(tt) => tt.shape.as_mut().map(|s| &mut s.dim),
        _ => None,
    }
}

fn dims(vi: &pb::ValueInfoProto) -> &[pb::tensor_shape_proto::Dimension] {
    match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(TypeValue::TensorType(tt)) => tt.shape.as_ref().map_or(&[], |s| &s.dim[..]),
        _ => &[],
    }
}

/// Graph `g` and every graph nested in its nodes, parents first (read-only twin of
/// [`for_each_graph_mut`]).
fn for_each_graph(g: &pb::GraphProto, f: &mut dyn FnMut(&pb::GraphProto)) {
    f(g);
    for a in g.node.iter().flat_map(|n| &n.attribute) {
        for sub in a.g.iter().chain(&a.graphs) {
            for_each_graph(sub, f);
        }
    }
}

/// Whether tract needs a specialised copy: a symbol declared beyond the inputs, a node name
/// used twice, or an `If` in the main graph.
pub fn needs_specialising(model: &pb::ModelProto) -> bool {
    let Some(main) = model.graph.as_ref() else {
        return false;
    };
    let symbolic = |vi: &pb::ValueInfoProto| {
        dims(vi)
            .iter()
            .any(|d| matches!(d.value, Some(DimValue::DimParam(_))))
    };
    let mut found = !if_nodes(main).is_empty();
    let mut names = HashSet::new();
    for_each_graph(main, &mut |g| {
        found = found
            || g.output.iter().chain(&g.value_info).any(symbolic)
            || g.node
                .iter()
                .any(|n| !n.name().is_empty() && !names.insert(n.name().to_string()));
    });
    found
}

/// Pins the symbolic dimensions of the graph inputs to `shapes` (the shape each input is run
/// at, in the order of the non-initializer inputs) everywhere they are declared: inputs,
/// outputs and `value_info`, in every graph. A symbol no input defines becomes unknown, so
/// that a declaration cannot contradict what tract infers. Returns the dimensions changed.
pub fn pin_symbols(model: &mut pb::ModelProto, shapes: &[Vec<usize>]) -> usize {
    let Some(g) = model.graph.as_ref() else {
        return 0;
    };
    let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name()).collect();
    let mut symbols: HashMap<String, i64> = HashMap::new();
    let runtime_inputs = g.input.iter().filter(|i| !inits.contains(i.name()));
    for (vi, shape) in runtime_inputs.zip(shapes) {
        for (d, &len) in dims(vi).iter().zip(shape) {
            if let Some(DimValue::DimParam(p)) = &d.value {
                if !p.is_empty() {
                    symbols.entry(p.clone()).or_insert(len as i64);
                }
            }
        }
    }
    let mut changed = 0;
    for_each_graph_mut(model, &mut |g| {
        let declared = g
            .input
            .iter_mut()
            .chain(&mut g.output)
            .chain(&mut g.value_info);
        for vi in declared {
            for d in dims_mut(vi).into_iter().flatten() {
                if let Some(DimValue::DimParam(p)) = &d.value {
                    d.value = symbols.get(p).map(|&v| DimValue::DimValue(v));
                    changed += 1;
                }
            }
        }
    });
    changed
}

/// Renames nodes whose name repeats an earlier one (tract refuses two nodes named alike).
/// Returns the nodes renamed.
pub fn unique_node_names(model: &mut pb::ModelProto) -> usize {
    let mut seen = HashSet::new();
    let mut renamed = 0;
    for_each_graph_mut(model, &mut |g| {
        for (i, n) in g.node.iter_mut().enumerate() {
            if n.name().is_empty() {
                continue;
            }
            if !seen.insert(n.name().to_string()) {
                let name = format!("{}__pare_{i}", n.name());
                seen.insert(name.clone());
                n.name = Some(name);
                renamed += 1;
            }
        }
    });
    renamed
}

/// A place where nodes live: the main graph, or a branch of an `If` in a place, given as the
/// `If`'s node index and `true` for its `then_branch`.
pub type Scope = Vec<(usize, bool)>;

/// The graph at `scope`, if it exists.
pub fn scope_mut<'a>(
    model: &'a mut pb::ModelProto,
    scope: &[(usize, bool)],
) -> Option<&'a mut pb::GraphProto> {
    let mut g = model.graph.as_mut()?;
    for &(index, then) in scope {
        let attr = if then { "then_branch" } else { "else_branch" };
        let node = g.node.get_mut(index)?;
        g = node
            .attribute
            .iter_mut()
            .find(|a| a.name() == attr)?
            .g
            .as_mut()?;
    }
    Some(g)
}

/// The `If` nodes directly in graph `g`: their index and the name of their condition.
pub fn if_nodes(g: &pb::GraphProto) -> Vec<(usize, String)> {
    g.node
        .iter()
        .enumerate()
        .filter(|(_, n)| n.op_type() == "If" && n.domain().is_empty())
        .filter_map(|(i, n)| Some((i, n.input.first()?.clone())))
        .collect()
}

/// Replaces the `If` node at `index` of graph `g` by the nodes of its `then_branch` (when
/// `then`) or `else_branch`, followed by one `Identity` per output from the branch's output to
/// the `If`'s: the branch's nodes start at `index`. Its constants and declarations move to `g`.
pub fn inline_branch(g: &mut pb::GraphProto, index: usize, then: bool) -> Result<(), String> {
    let node = g.node.get(index).ok_or("no node at that index")?;
    let attr = if then { "then_branch" } else { "else_branch" };
    let branch = node
        .attribute
        .iter()
        .find(|a| a.name() == attr)
        .and_then(|a| a.g.clone())
        .ok_or_else(|| format!("If node {:?} has no {attr}", node.name()))?;
    if branch.output.len() != node.output.len() {
        return Err(format!(
            "If node {:?}: its {attr} has {} outputs for the node's {}",
            node.name(),
            branch.output.len(),
            node.output.len()
        ));
    }
    let mut nodes = branch.node;
    for (out, from) in node.output.iter().zip(&branch.output) {
        if out.is_empty() {
            continue;
        }
        nodes.push(pb::NodeProto {
            op_type: Some("Identity".into()),
            input: vec![from.name().to_string()],
            output: vec![out.clone()],
            name: Some(format!("{out}__pare_branch")),
            ..Default::default()
        });
    }
    g.node.splice(index..=index, nodes);
    g.initializer.extend(branch.initializer);
    g.sparse_initializer.extend(branch.sparse_initializer);
    g.value_info.extend(branch.value_info);
    Ok(())
}

/// A copy of `model` in which the graph at `scope` is inlined into the main graph, branch by
/// branch: the conditions of the `If`s in that scope are then values of the main graph.
pub fn flatten(model: &pb::ModelProto, scope: &[(usize, bool)]) -> Option<pb::ModelProto> {
    let mut m = model.clone();
    let g = m.graph.as_mut()?;
    let mut offset = 0;
    for &(index, then) in scope {
        offset += index;
        inline_branch(g, offset, then).ok()?;
    }
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vi(name: &str, dims: &[&str]) -> pb::ValueInfoProto {
        let dim = dims
            .iter()
            .map(|d| pb::tensor_shape_proto::Dimension {
                value: Some(match d.parse::<i64>() {
                    Ok(v) => DimValue::DimValue(v),
                    Err(_) => DimValue::DimParam(d.to_string()),
                }),
                ..Default::default()
            })
            .collect();
        pb::ValueInfoProto {
            name: Some(name.into()),
            r#type: Some(pb::TypeProto {
                value: Some(TypeValue::TensorType(pb::type_proto::Tensor {
                    elem_type: Some(1),
                    shape: Some(pb::TensorShapeProto { dim }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn fixed(vi: &pb::ValueInfoProto) -> Vec<Option<i64>> {
        dims(vi)
            .iter()
            .map(|d| match d.value {
                Some(DimValue::DimValue(v)) => Some(v),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn symbols_are_pinned_to_the_run_shapes_and_unknown_ones_cleared() {
        let mut m = pb::ModelProto {
            graph: Some(pb::GraphProto {
                input: vec![vi("x", &["batch", "sequence"])],
                value_info: vec![vi("h", &["batch", "64", "frames"])],
                output: vec![vi("y", &["batch", "1"])],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(needs_specialising(&m));
        assert_eq!(pin_symbols(&mut m, &[vec![1, 512]]), 5);
        assert!(!needs_specialising(&m));
        let g = m.graph.as_ref().unwrap();
        assert_eq!(fixed(&g.input[0]), [Some(1), Some(512)]);
        assert_eq!(fixed(&g.value_info[0]), [Some(1), Some(64), None]);
        assert_eq!(fixed(&g.output[0]), [Some(1), Some(1)]);
    }

    #[test]
    fn an_if_is_replaced_by_its_branch_wired_to_its_outputs() {
        let branch = |op: &str| pb::GraphProto {
            node: vec![pb::NodeProto {
                op_type: Some(op.into()),
                input: vec!["x".into()],
                output: vec![format!("{op}_out")],
                ..Default::default()
            }],
            output: vec![vi(&format!("{op}_out"), &[])],
            ..Default::default()
        };
        let attr = |name: &str, g| pb::AttributeProto {
            name: Some(name.into()),
            g: Some(g),
            ..Default::default()
        };
        let mut m = pb::ModelProto {
            graph: Some(pb::GraphProto {
                node: vec![pb::NodeProto {
                    op_type: Some("If".into()),
                    input: vec!["c".into()],
                    output: vec!["y".into()],
                    attribute: vec![
                        attr("then_branch", branch("Relu")),
                        attr("else_branch", branch("Neg")),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let g = m.graph.as_mut().unwrap();
        assert_eq!(if_nodes(g), [(0, "c".to_string())]);
        let flat = flatten(&m, &[(0, true)]).unwrap();
        assert_eq!(flat.graph.as_ref().unwrap().node[0].op_type(), "Relu");
        inline_branch(m.graph.as_mut().unwrap(), 0, false).unwrap();
        let ops: Vec<_> = m
            .graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .map(|n| n.op_type().to_string())
            .collect();
        assert_eq!(ops, ["Neg", "Identity"]);
        assert_eq!(m.graph.as_ref().unwrap().node[1].output, ["y"]);
        assert!(if_nodes(m.graph.as_ref().unwrap()).is_empty());
    }
}
