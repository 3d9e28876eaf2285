//! Applies structural edits (channel pruning) to a decoded TFLite model.

use super::TfliteDocument;
use crate::model::StructureEdits;
use crate::tflite_gen::tflite as fb;

fn set_dim(t: &mut fb::TensorT, axis: usize, len: u64) {
    if let Some(d) = t.shape.as_mut().and_then(|s| s.get_mut(axis)) {
        *d = len as i32;
    }
    if let Some(d) = t.shape_signature.as_mut().and_then(|s| s.get_mut(axis)) {
        if *d >= 0 {
            *d = len as i32;
        }
    }
}

/// Per-channel scales and zero points follow the channels they belong to.
fn slice_quant(t: &mut fb::TensorT, keeps: &[(usize, Vec<usize>)]) {
    let Some(q) = t.quantization.as_mut() else {
        return;
    };
    let n = q.scale.as_ref().map_or(0, Vec::len);
    if n <= 1 {
        return;
    }
    let axis = q.quantized_dimension.max(0) as usize;
    if let Some((_, keep)) = keeps.iter().find(|(a, _)| *a == axis) {
        if let Some(s) = q.scale.as_mut() {
            *s = keep.iter().filter_map(|&k| s.get(k).copied()).collect();
        }
        if let Some(z) = q.zero_point.as_mut().filter(|z| z.len() == n) {
            *z = keep.iter().filter_map(|&k| z.get(k).copied()).collect();
        }
    }
}

impl TfliteDocument {
    /// A copy with `edits` applied to subgraph 0 and the buffers it uses.
    pub fn with_structure(&self, edits: &StructureEdits) -> TfliteDocument {
        let mut doc = self.clone();
        doc.edited = true;
        for (&h, c) in &edits.constants {
            if let Some(slot) = doc.buffers.get_mut(h) {
                *slot = Some(c.data.clone());
            }
        }
        let Some(sg) = doc.model.subgraphs.as_mut().and_then(|s| s.first_mut()) else {
            return doc;
        };
        if let Some(tensors) = sg.tensors.as_mut() {
            for t in tensors.iter_mut() {
                let Some(c) = edits.constants.get(&(t.buffer as usize)) else {
                    continue;
                };
                t.shape = Some(c.dims.iter().map(|&d| d as i32).collect());
                if t.shape_signature.is_some() {
                    t.shape_signature = t.shape.clone();
                }
                slice_quant(t, &c.keeps);
            }
            for e in &edits.dims {
                if let Some(t) = tensors.get_mut(e.tensor) {
                    set_dim(t, e.axis, e.len);
                }
            }
        }
        // Copies for readers of shared constants: a new buffer and tensor each.
        for c in &edits.copies {
            let Some(tensors) = sg.tensors.as_mut() else {
                break;
            };
            let Some(orig) = tensors.get(c.tensor).cloned() else {
                continue;
            };
            let buffer = doc.buffers.len();
            doc.buffers.push(Some(c.edit.data.clone()));
            doc.model
                .buffers
                .get_or_insert_with(Vec::new)
                .push(fb::BufferT::default());
            let mut t = orig;
            t.buffer = buffer as u32;
            t.name = Some(format!(
                "{}/pare_copy{}",
                t.name.as_deref().unwrap_or(""),
                c.node
            ));
            t.shape = Some(c.edit.dims.iter().map(|&d| d as i32).collect());
            if t.shape_signature.is_some() {
                t.shape_signature = t.shape.clone();
            }
            slice_quant(&mut t, &c.edit.keeps);
            tensors.push(t);
            let index = (tensors.len() - 1) as i32;
            if let Some(slot) = sg
                .operators
                .as_mut()
                .and_then(|o| o.get_mut(c.node))
                .and_then(|o| o.inputs.as_mut())
                .and_then(|i| i.get_mut(c.slot))
            {
                *slot = index;
            }
        }
        for &(node, pos, value) in &edits.new_shapes {
            let op = sg.operators.as_mut().and_then(|o| o.get_mut(node));
            if let Some(fb::BuiltinOptionsT::ReshapeOptions(r)) = op.map(|o| &mut o.builtin_options)
            {
                if let Some(d) = r.new_shape.as_mut().and_then(|s| s.get_mut(pos)) {
                    *d = value as i32;
                }
            }
        }
        doc
    }
}
