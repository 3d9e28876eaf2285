//! Sequential calibration's cuts: the main graph split into stages between consecutive layer
//! depths, with the tensors each stage reads, gives, and leaves live for the ones after it.
//!
//! Stage `d + 1` holds the layers at depth `d` (see [`super::waves`]) and the ops between them
//! and the next depth's layers; stage 0 the ops before the first layers. After stages `0..=d`
//! have run, every input of the depth-`d` layers is live. Ops that compute from constants alone
//! belong to no stage: every stage that reads one of them runs them again, so that a computed
//! shape stays a constant for the runtime.

use crate::model::{Graph, TensorId};
use std::collections::{BTreeSet, HashMap, HashSet};

/// One stage: what it runs and which activations it exchanges.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stage {
    /// Nodes, in topological order (constant-only producers it needs included).
    pub nodes: Vec<usize>,
    /// Activations it reads that earlier stages (or the graph inputs) produced, sorted.
    pub reads: Vec<TensorId>,
    /// Activations live after it: produced by it or before, read by a later stage, sorted.
    pub live: Vec<TensorId>,
}

/// The stages of `g` for layer nodes `layers` (one more than there are layer depths).
pub fn split(g: &Graph, layers: &[usize]) -> Vec<Stage> {
    let is_layer: HashSet<usize> = layers.iter().copied().collect();
    // Tensors whose value is known without any input: stored constants and what ops compute
    // from them alone.
    let mut constant: HashSet<TensorId> = (0..g.tensors.len())
        .filter(|&t| g.tensor(t).is_const())
        .collect();
    let mut producer: HashMap<TensorId, usize> = HashMap::new();
    let mut const_node = vec![false; g.nodes.len()];
    for (ni, n) in g.nodes.iter().enumerate() {
        for &o in &n.outputs {
            producer.insert(o, ni);
        }
        let from_constants = n.inputs.iter().flatten().all(|t| constant.contains(t))
            && !n.inputs.iter().flatten().any(|t| g.inputs.contains(t));
        if from_constants && !n.inputs.is_empty() || n.op == "Constant" {
            const_node[ni] = true;
            constant.extend(n.outputs.iter().copied());
        }
    }
    // A layer at depth d runs in stage d + 1, any other op in stage d (its output's depth).
    let level = super::input_depths(g, &is_layer);
    let stage_of: Vec<usize> = (0..g.nodes.len())
        .map(|ni| match (const_node[ni], is_layer.contains(&ni)) {
            (true, _) => usize::MAX,
            (false, true) => level[ni] + 1,
            (false, false) => level[ni],
        })
        .collect();
    let count = stage_of
        .iter()
        .filter(|&&s| s != usize::MAX)
        .max()
        .map_or(1, |m| m + 1);
    let mut stages = vec![Stage::default(); count];
    for (ni, &s) in stage_of.iter().enumerate() {
        if s != usize::MAX {
            stages[s].nodes.push(ni);
        }
    }
    // The stage that produces each activation (graph inputs: before stage 0) and the last
    // stage that reads it.
    let activation = |t: &TensorId| !constant.contains(t);
    let mut made: HashMap<TensorId, usize> = HashMap::new();
    let mut last_read: HashMap<TensorId, usize> = HashMap::new();
    for (si, st) in stages.iter().enumerate() {
        for &ni in &st.nodes {
            for &t in &g.nodes[ni].outputs {
                made.insert(t, si);
            }
            for t in g.nodes[ni]
                .inputs
                .iter()
                .flatten()
                .filter(|t| activation(t))
            {
                let e = last_read.entry(*t).or_insert(si);
                *e = (*e).max(si);
            }
        }
    }
    for (si, st) in stages.iter_mut().enumerate() {
        let own: HashSet<TensorId> = st
            .nodes
            .iter()
            .flat_map(|&ni| g.nodes[ni].outputs.iter().copied())
            .collect();
        let reads: BTreeSet<TensorId> = st
            .nodes
            .iter()
            .flat_map(|&ni| g.nodes[ni].inputs.iter().flatten().copied())
            .filter(|t| activation(t) && !own.contains(t))
            .collect();
        st.reads = reads.into_iter().collect();
        let mut live: Vec<TensorId> = last_read
            .iter()
            .filter(|(t, &last)| last > si && made.get(t).is_none_or(|&m| m <= si))
            .map(|(&t, _)| t)
            .collect();
        live.sort_unstable();
        st.live = live;
        // The constant-only producers the stage reads from, transitively.
        let mut needed: BTreeSet<usize> = st.nodes.iter().copied().collect();
        let mut todo: Vec<usize> = st.nodes.clone();
        while let Some(ni) = todo.pop() {
            for t in g.nodes[ni].inputs.iter().flatten() {
                if let Some(&p) = producer.get(t).filter(|&&p| const_node[p]) {
                    if needed.insert(p) {
                        todo.push(p);
                    }
                }
            }
        }
        st.nodes = needed.into_iter().collect();
    }
    stages
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Node, Tensor};

    fn graph(nodes: &[(&str, &[usize], &[usize])], tensors: usize, consts: &[usize]) -> Graph {
        let mut g = Graph::default();
        for t in 0..tensors {
            g.tensors.push(Tensor {
                name: format!("t{t}"),
                dtype: crate::model::DType::F32,
                shape: None,
                quant: None,
                data: consts.contains(&t).then(bytes::Bytes::new),
                sparse: false,
                stored_bytes: 0,
                handle: None,
            });
        }
        for (op, ins, outs) in nodes {
            g.nodes.push(Node {
                name: format!("n{}", g.nodes.len()),
                op: op.to_string(),
                inputs: ins.iter().map(|&t| Some(t)).collect(),
                outputs: outs.to_vec(),
                attrs: Default::default(),
            });
        }
        g.inputs = vec![0];
        g
    }

    #[test]
    fn a_residual_block_keeps_its_shortcut_live_across_the_cut() {
        // x(0) → conv a (w 9) → relu → conv b (w 10) → add(x) → conv c (w 11) → out
        let g = graph(
            &[
                ("Conv", &[0, 9], &[1]),
                ("Relu", &[1], &[2]),
                ("Conv", &[2, 10], &[3]),
                ("Add", &[3, 0], &[4]),
                ("Conv", &[4, 11], &[5]),
            ],
            12,
            &[9, 10, 11],
        );
        let st = split(&g, &[0, 2, 4]);
        assert_eq!(st.len(), 4);
        assert_eq!(st[0].nodes, Vec::<usize>::new());
        assert_eq!(st[0].live, vec![0]);
        // Stage 1: conv a and its relu; x stays live for the add.
        assert_eq!(st[1].nodes, vec![0, 1]);
        assert_eq!(st[1].reads, vec![0]);
        assert_eq!(st[1].live, vec![0, 2]);
        assert_eq!(st[2].nodes, vec![2, 3]);
        assert_eq!(st[2].reads, vec![0, 2]);
        assert_eq!(st[2].live, vec![4]);
        assert_eq!(st[3].nodes, vec![4]);
        assert_eq!(st[3].live, Vec::<usize>::new());
    }

    #[test]
    fn ops_on_constants_run_in_every_stage_that_reads_them() {
        // shape(6) = Unsqueeze(const 7); x → conv → reshape(shape) → conv → reshape(shape)
        let g = graph(
            &[
                ("Unsqueeze", &[7], &[6]),
                ("Conv", &[0, 9], &[1]),
                ("Reshape", &[1, 6], &[2]),
                ("Conv", &[2, 10], &[3]),
                ("Reshape", &[3, 6], &[4]),
            ],
            11,
            &[7, 9, 10],
        );
        let st = split(&g, &[1, 3]);
        assert_eq!(st[1].nodes, vec![0, 1, 2]);
        assert_eq!(st[2].nodes, vec![0, 3, 4]);
        assert!(st.iter().all(|s| !s.live.contains(&6)));
    }
}
