//! Shapes of every ONNX value, inferred by tract, for MAC counts: ONNX files rarely declare the
//! shapes of intermediate values.

use super::{concrete_input_shape, isolated};
use crate::onnx::OnnxDocument;
use std::collections::HashMap;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;
use tract_onnx::tract_hir::internal::DimLike;

/// Concrete shapes by value name, with dynamic input dimensions fixed to 1. Empty when tract
/// cannot analyse the model; the caller then reports MACs only where shapes are declared.
pub fn onnx_value_shapes(doc: &OnnxDocument) -> HashMap<String, Vec<u64>> {
    isolated("shape inference", || {
        let mut model = super::onnx_inference_model(doc)?;
        for i in 0..model.inputs.len() {
            let fact = model.input_fact(i)?.clone();
            if fact.shape.rank().concretize().is_some() {
                let dt = fact.datum_type().unwrap_or(f32::datum_type());
                model
                    .set_input_fact(i, InferenceFact::dt_shape(dt, concrete_input_shape(&fact)))?;
            }
        }
        // Best effort: a partially analysed model still gives the shapes it could infer.
        let _ = model.analyse(false);
        let mut shapes = HashMap::new();
        for node in model.nodes() {
            for (slot, _) in node.outputs.iter().enumerate() {
                let outlet = OutletId::new(node.id, slot);
                let Some(label) = model.outlet_label(outlet) else {
                    continue;
                };
                let Ok(fact) = model.outlet_fact(outlet) else {
                    continue;
                };
                if let Some(dims) = fact.shape.concretize() {
                    let dims: Option<Vec<u64>> = dims
                        .iter()
                        .map(|d| d.to_usize().ok().map(|v| v as u64))
                        .collect();
                    if let Some(d) = dims {
                        shapes.insert(label.to_string(), d);
                    }
                }
            }
        }
        Ok(shapes)
    })
    .unwrap_or_default()
}
