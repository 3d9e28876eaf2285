//! A part of subgraph 0 as a model of its own ([`crate::model::Segment`]): the operators it
//! runs, fed by subgraph inputs that stand for the activations before it.

use super::TfliteDocument;
use crate::error::{Error, Result};
use crate::model::Segment;
use std::collections::HashSet;

impl TfliteDocument {
    /// The model that runs operators `s.nodes` of subgraph 0 alone: the segment's inputs become
    /// the subgraph's inputs (at the given shapes), its outputs the only outputs. Buffers no
    /// kept operator reads are emptied, so the copy tract loads holds only the segment's
    /// weights.
    pub fn segment(&self, s: &Segment) -> Result<TfliteDocument> {
        let unsupported = |what: String| Error::unsupported(&self.path, what);
        if !s.constants.is_empty() {
            return Err(unsupported(
                "a TFLite segment cannot fix inputs to constants".into(),
            ));
        }
        let mut d = self.clone();
        let sg = d
            .model
            .subgraphs
            .as_mut()
            .and_then(|s| s.first_mut())
            .ok_or_else(|| unsupported("the model has no subgraph".into()))?;
        let ops = sg.operators.take().unwrap_or_default();
        let kept: Vec<_> = s
            .nodes
            .iter()
            .map(|&i| {
                ops.get(i)
                    .cloned()
                    .ok_or_else(|| unsupported(format!("segment operator {i} is not in the graph")))
            })
            .collect::<Result<_>>()?;
        let used: HashSet<usize> = kept
            .iter()
            .flat_map(|op| {
                op.inputs
                    .iter()
                    .chain(&op.outputs)
                    .chain(&op.intermediates)
                    .flatten()
            })
            .filter(|&&t| t >= 0)
            .map(|&t| t as usize)
            .collect();
        sg.operators = Some(kept);
        let as_ids = |v: &[usize]| Some(v.iter().map(|&t| t as i32).collect());
        sg.inputs = as_ids(&s.inputs.iter().map(|i| i.0).collect::<Vec<_>>());
        sg.outputs = as_ids(&s.outputs);
        let tensors = sg.tensors.get_or_insert_with(Vec::new);
        for (t, _, shape) in &s.inputs {
            let tensor = tensors
                .get_mut(*t)
                .ok_or_else(|| unsupported(format!("segment input {t} is not a tensor")))?;
            tensor.shape = Some(shape.iter().map(|&d| d as i32).collect());
        }
        let buffers: HashSet<usize> = tensors
            .iter()
            .enumerate()
            .filter(|(i, _)| used.contains(i))
            .map(|(_, t)| t.buffer as usize)
            .collect();
        for (i, b) in d.buffers.iter_mut().enumerate() {
            if !buffers.contains(&i) {
                *b = None;
            }
        }
        d.edited = true;
        Ok(d)
    }
}
