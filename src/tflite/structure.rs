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
                // Per-channel scales and zero points follow the channels they belong to.
                if let Some(q) = t.quantization.as_mut() {
                    let n = q.scale.as_ref().map_or(0, Vec::len);
                    if n > 1 {
                        let axis = q.quantized_dimension.max(0) as usize;
                        if let Some((_, keep)) = c.keeps.iter().find(|(a, _)| *a == axis) {
                            if let Some(s) = q.scale.as_mut() {
                                *s = keep.iter().filter_map(|&k| s.get(k).copied()).collect();
                            }
                            if let Some(z) = q.zero_point.as_mut().filter(|z| z.len() == n) {
                                *z = keep.iter().filter_map(|&k| z.get(k).copied()).collect();
                            }
                        }
                    }
                }
            }
            for e in &edits.dims {
                if let Some(t) = tensors.get_mut(e.tensor) {
                    set_dim(t, e.axis, e.len);
                }
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
