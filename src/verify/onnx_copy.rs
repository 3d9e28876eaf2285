//! The ONNX model tract runs: the file itself when tract takes it as it is, else a copy with
//! the QDQ lowering, symbols pinned to the run shapes, unique node names and known `If`s inlined.
//!
//! An `If` whose condition tract can compute from the run shapes and the constants (a branch
//! chosen by an input's length, as in silero-VAD) is replaced by the branch it takes: tract
//! refuses an `If` whose branches give outputs of different shapes, or whose other branch cannot
//! be analysed at these shapes, although only one of them ever runs.

use super::onnx_inference_model;
use crate::onnx::{lower, specialize, OnnxDocument};
use crate::onnx_pb as pb;
use std::collections::BTreeMap;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

/// Rounds of `If` inlining: an inlined branch may hold `If`s of its own.
const MAX_IF_ROUNDS: usize = 8;

/// The rewrite, in [`super::Lowering`]'s list, of an `If` replaced by its branch: the copy
/// then depends on the settings it was decided with.
pub(super) const IF_INLINED: &str = "If replaced by the branch it takes";

/// Condition evaluations (each a parse of the model by tract) a copy may take.
const MAX_EVALUATIONS: usize = 32;

/// The inference model tract runs for `d` at `shapes` (the shape of each runtime input; by
/// default the declared one with unknown dimensions 1), and the rewrites its copy needed.
pub(super) fn load(
    d: &OnnxDocument,
    shapes: Option<&[Vec<usize>]>,
    settings: &[Option<Tensor>],
) -> TractResult<(InferenceModel, BTreeMap<String, usize>)> {
    let (mut copy, mut rewrites) = match lower::lower_for_tract(d) {
        Some((m, r)) => (Some(m), r),
        None => (None, BTreeMap::new()),
    };
    let inline = |m: &mut pb::ModelProto| {
        d.inline_external(m)
            .map_err(|e| TractError::msg(e.to_string()))
    };
    if let Some(m) = copy.as_mut() {
        inline(m)?;
    }
    if specialize::needs_specialising(&d.model) {
        let mut m = match copy.take() {
            Some(m) => m,
            None => {
                let mut m = d.model.clone();
                inline(&mut m)?;
                m
            }
        };
        let shapes = run_shapes(&m, shapes);
        let mut count = |what: &str, n: usize| {
            if n > 0 {
                *rewrites.entry(what.to_string()).or_insert(0) += n;
            }
        };
        count(
            "symbolic dimensions pinned to the run shapes",
            specialize::pin_symbols(&mut m, &shapes),
        );
        count(
            "duplicate node names made unique",
            specialize::unique_node_names(&mut m),
        );
        count(IF_INLINED, inline_known_ifs(&mut m, &shapes, settings));
        copy = Some(m);
    }
    let model = match copy {
        Some(m) => read(&m)?,
        None => onnx_inference_model(d)?,
    };
    Ok((model, rewrites))
}

/// The shape each runtime input runs at: `given`, else as declared with unknown dimensions 1
/// (as [`super::concrete_input_shape`] fixes them).
fn run_shapes(m: &pb::ModelProto, given: Option<&[Vec<usize>]>) -> Vec<Vec<usize>> {
    use pb::tensor_shape_proto::dimension::Value;
    let Some(g) = m.graph.as_ref() else {
        return vec![];
    };
    let inits: std::collections::HashSet<&str> = g.initializer.iter().map(|t| t.name()).collect();
    let declared = g.input.iter().filter(|i| !inits.contains(i.name()));
    declared
        .enumerate()
        .map(|(i, vi)| {
            if let Some(s) = given.and_then(|s| s.get(i)) {
                return s.clone();
            }
            let dims = match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
                Some(pb::type_proto::Value::TensorType(tt)) => {
                    tt.shape.as_ref().map_or(&[][..], |s| &s.dim[..])
                }
                _ => &[],
            };
            dims.iter()
                .map(|d| match d.value {
                    Some(Value::DimValue(v)) if v >= 0 => v as usize,
                    _ => 1,
                })
                .collect()
        })
        .collect()
}

fn read(m: &pb::ModelProto) -> TractResult<InferenceModel> {
    let bytes = prost::Message::encode_to_vec(m);
    tract_onnx::onnx().model_for_read(&mut &bytes[..])
}

/// Replaces each `If` whose condition tract computes at `shapes` by its branch, at any depth:
/// the conditions of a branch's `If`s are computed in a copy where that branch is inlined, so
/// that both branches of an `If` whose own condition is data (a sample rate) get simplified.
/// Returns the `If`s replaced.
fn inline_known_ifs(
    m: &mut pb::ModelProto,
    shapes: &[Vec<usize>],
    settings: &[Option<Tensor>],
) -> usize {
    let mut inlined = 0;
    let mut evaluations = 0;
    for _ in 0..MAX_IF_ROUNDS {
        let mut progress = false;
        for scope in scopes(m) {
            if evaluations == MAX_EVALUATIONS {
                return inlined;
            }
            let Some(flat) = specialize::flatten(m, &scope) else {
                continue;
            };
            let ifs = specialize::scope_mut(m, &scope).map(|g| specialize::if_nodes(g));
            let Some(ifs) = ifs.filter(|i| !i.is_empty()) else {
                continue;
            };
            evaluations += 1;
            let known = conditions(&flat, shapes, settings, &ifs).unwrap_or_default();
            let Some(g) = specialize::scope_mut(m, &scope) else {
                continue;
            };
            // From the last node back: inlining a branch moves the nodes after it.
            for ((index, _), value) in ifs.iter().zip(known).rev() {
                if let Some(then) = value {
                    if specialize::inline_branch(g, *index, then).is_ok() {
                        inlined += 1;
                        progress = true;
                    }
                }
            }
            if progress {
                // The scopes below this one moved: list them again.
                break;
            }
        }
        if !progress {
            break;
        }
    }
    inlined
}

/// Every graph that holds an `If` (the main graph, branches holding `If`s), parents first.
fn scopes(m: &pb::ModelProto) -> Vec<specialize::Scope> {
    fn walk(g: &pb::GraphProto, scope: specialize::Scope, out: &mut Vec<specialize::Scope>) {
        let ifs = specialize::if_nodes(g);
        if ifs.is_empty() || out.len() >= MAX_EVALUATIONS {
            return;
        }
        out.push(scope.clone());
        for (index, _) in ifs {
            for (then, attr) in [(true, "then_branch"), (false, "else_branch")] {
                let branch = g.node[index].attribute.iter().find(|a| a.name() == attr);
                if let Some(b) = branch.and_then(|a| a.g.as_ref()) {
                    let mut s = scope.clone();
                    s.push((index, then));
                    walk(b, s, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    if let Some(g) = m.graph.as_ref() {
        walk(g, vec![], &mut out);
    }
    out
}

/// The value of each `If`'s condition where tract infers it from the shapes, the settings and
/// the constants.
fn conditions(
    m: &pb::ModelProto,
    shapes: &[Vec<usize>],
    settings: &[Option<Tensor>],
    ifs: &[(usize, String)],
) -> TractResult<Vec<Option<bool>>> {
    let mut model = read(m)?;
    for (i, shape) in shapes.iter().enumerate().take(model.inputs.len()) {
        let fact = match settings.get(i).cloned().flatten() {
            Some(value) => InferenceFact::from(value),
            None => {
                let dt = model
                    .input_fact(i)?
                    .datum_type()
                    .unwrap_or(f32::datum_type());
                InferenceFact::dt_shape(dt, shape.clone())
            }
        };
        model.set_input_fact(i, fact)?;
    }
    let outlets: Vec<Option<OutletId>> = ifs
        .iter()
        .map(|(_, c)| model.find_outlet_label(c))
        .collect();
    let wanted: Vec<OutletId> = outlets.iter().flatten().copied().collect();
    if wanted.is_empty() {
        return Ok(vec![None; ifs.len()]);
    }
    model.select_output_outlets(&wanted)?;
    let mut model = model.into_compact()?;
    // Best effort: the values the analysis reaches are all that is needed.
    let _ = model.analyse(false);
    let mut k = 0;
    Ok(outlets
        .iter()
        .map(|o| {
            o.and_then(|_| {
                let out = model.output_outlets().ok()?.get(k).copied();
                k += 1;
                let fact = model.outlet_fact(out?).ok()?;
                let v = fact.value.concretize()?;
                v.cast_to_scalar::<bool>().ok()
            })
        })
        .collect())
}
