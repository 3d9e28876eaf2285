//! The storage pass over a TFLite document: weights written sparse behind `DENSIFY` where that
//! is smaller (or as asked), sparse tensors densified back, buffers re-encoded after edits.

use super::{describe_layout, elem_size, layout_of, static_shape, stored_bytes, to_fb};
use crate::error::Result;
use crate::sparse::{
    self, Layout, Level, Plan, SparseTensor, Storage, StoragePolicy, StorageReport,
};
use crate::tflite::{builtin_of, dtype_from_tflite, TfliteDocument};
use crate::tflite_gen::tflite as fb;
use bytes::Bytes;
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};

/// Flatbuffer bytes a sparse tensor adds besides its payload (the DENSIFY operator, its output
/// tensor, the sparsity tables), on top of twice the tensor's name. Measured on converter
/// output: 150–190 bytes.
pub(super) const OVERHEAD: usize = 192;

/// The plan a sparse layout was made with, when it is one pare makes (one CSR level, the
/// rest dense): re-encoding edited data with it keeps the file's layout.
pub(super) fn plan_of(layout: &Layout, rank: usize) -> Option<Plan> {
    let csr: Vec<usize> = (0..layout.levels.len())
        .filter(|&i| matches!(layout.levels[i], Level::Csr { .. }))
        .collect();
    let blocks = layout
        .block_map
        .iter()
        .enumerate()
        .map(|(b, &d)| match layout.levels.get(rank + b) {
            Some(Level::Dense { size }) => Some((d, *size)),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    (csr.len() == 1 && csr[0] < rank).then(|| Plan {
        order: layout.traversal_order[..rank].to_vec(),
        blocks,
        csr: csr[0],
    })
}

/// The smallest candidate plan for dense `data` and its stored bytes.
pub(super) fn best_plan(
    shape: &[usize],
    elem: usize,
    data: &[u8],
    block: Option<(usize, usize)>,
) -> Option<(Plan, usize)> {
    sparse::candidate_plans(shape, block)
        .into_iter()
        .map(|p| {
            let b = sparse::plan_bytes(shape, elem, data, &p);
            (p, b)
        })
        .min_by_key(|(_, b)| *b)
}

/// Ops whose input slot may be fed by a DENSIFY output (weights, as the converter does).
pub(super) fn weight_slot(op: fb::BuiltinOperator, slot: usize) -> bool {
    use fb::BuiltinOperator as B;
    match op {
        B::CONV_2D | B::DEPTHWISE_CONV_2D | B::FULLY_CONNECTED | B::CONV_3D | B::BATCH_MATMUL => {
            slot == 1
        }
        B::TRANSPOSE_CONV => slot == 1,
        B::DEQUANTIZE => slot == 0,
        _ => false,
    }
}

/// A tensor's sparse layout, its stored values, and (when kept) its dense payload.
pub(super) type Encoded = (Layout, Vec<u8>, Option<Bytes>);

impl TfliteDocument {
    /// Re-encodes the sparse tensors stored in buffer `i` after its dense data changed.
    pub(in crate::tflite) fn reencode_sparse(&mut self, i: usize, dense: Bytes) {
        let mut values = None;
        for sg in self.model.subgraphs.iter_mut().flatten() {
            for t in sg.tensors.iter_mut().flatten() {
                if t.buffer as usize != i {
                    continue;
                }
                let (Some(sp), Some(shape), Some(elem)) =
                    (t.sparsity.as_ref(), static_shape(t), elem_size(t))
                else {
                    continue;
                };
                let plan = layout_of(sp)
                    .ok()
                    .and_then(|l| plan_of(&l, shape.len()))
                    .or_else(|| best_plan(&shape, elem, &dense, None).map(|p| p.0));
                let Some(plan) = plan else { continue };
                let (layout, v) = sparse::encode(&shape, elem, &dense, &plan);
                t.sparsity = Some(Box::new(to_fb(&layout)));
                values = Some(Bytes::from(v));
            }
        }
        if let Some(v) = values {
            self.buffers[i] = Some(v);
            self.dense.insert(i, dense);
        }
    }

    /// A copy with constants stored as `policy` asks; see [`Storage`].
    pub fn with_storage(&self, policy: &StoragePolicy) -> Result<(TfliteDocument, StorageReport)> {
        self.storage_pass(policy, true)
    }

    /// [`TfliteDocument::with_storage`]; without `keep_dense`, the tensors it makes sparse
    /// keep no dense payload (the write path: the result is written, never read as a model).
    pub(crate) fn storage_pass(
        &self,
        policy: &StoragePolicy,
        keep_dense: bool,
    ) -> Result<(TfliteDocument, StorageReport)> {
        let mut doc = self.clone();
        let mut report = StorageReport::new(policy.storage);
        match policy.storage {
            Storage::Keep => {}
            Storage::Dense => {
                report.densified = doc.densify_all();
            }
            Storage::Auto | Storage::Sparse => doc.sparsify(policy, &mut report, keep_dense),
        }
        if report.densified > 0 || !report.sparse_tensors.is_empty() {
            doc.edited = true;
        }
        doc.describe_sparse(&mut report);
        report.total();
        Ok((doc, report))
    }

    /// Lists the sparse tensors of the document in the report.
    pub(super) fn describe_sparse(&self, report: &mut StorageReport) {
        report.sparse_tensors.clear();
        for sg in self.model.subgraphs.iter().flatten() {
            for t in sg.tensors.iter().flatten() {
                let Some(sp) = &t.sparsity else {
                    continue;
                };
                let Some(elem) = elem_size(t) else { continue };
                // The values hold every non-zero of the dense tensor (and maybe zeros).
                let Some(values) = self.buffers.get(t.buffer as usize).cloned().flatten() else {
                    continue;
                };
                let numel = (static_shape(t).unwrap_or_default().iter())
                    .try_fold(1usize, |n, &d| n.checked_mul(d))
                    .unwrap_or(usize::MAX);
                let layout = layout_of(sp).ok();
                report.sparse_tensors.push(SparseTensor {
                    name: t.name.clone().unwrap_or_default(),
                    dtype: dtype_from_tflite(t.type_).to_string(),
                    shape: static_shape(t).unwrap_or_default(),
                    density: sparse::count_nonzero(&values, elem) as f64 / numel.max(1) as f64,
                    dense_bytes: numel.saturating_mul(elem) as u64,
                    stored_bytes: stored_bytes(self, t),
                    layout: layout.map_or_else(String::new, |l| describe_layout(&l)),
                });
            }
        }
    }

    /// Writes every sparse constant dense and removes the DENSIFY ops that read them.
    /// Returns how many constants were densified.
    pub(crate) fn densify_all(&mut self) -> usize {
        let mut count = 0;
        let nsub = self.model.subgraphs.as_ref().map_or(0, Vec::len);
        for si in 0..nsub {
            let sg = &mut self.model.subgraphs.as_mut().unwrap()[si];
            let mut sparse_ids = Vec::new();
            for (ti, t) in sg.tensors.iter_mut().flatten().enumerate() {
                if t.sparsity.is_some() {
                    if let Some(d) = self.dense.get(&(t.buffer as usize)) {
                        self.buffers[t.buffer as usize] = Some(d.clone());
                        t.sparsity = None;
                        sparse_ids.push(ti as i32);
                        count += 1;
                    }
                }
            }
            if sparse_ids.is_empty() {
                continue;
            }
            // Bypass the DENSIFY ops of those constants: readers of their output read the
            // constant, and the output tensors go.
            let codes = self.model.operator_codes.clone().unwrap_or_default();
            let sg = &mut self.model.subgraphs.as_mut().unwrap()[si];
            let mut rename: HashMap<i32, i32> = HashMap::new();
            if let Some(ops) = sg.operators.as_mut() {
                ops.retain(|op| {
                    let is_densify = codes
                        .get(op.opcode_index as usize)
                        .is_some_and(|c| builtin_of(c) == fb::BuiltinOperator::DENSIFY);
                    let input = op.inputs.as_ref().and_then(|i| i.first().copied());
                    let output = op.outputs.as_ref().and_then(|o| o.first().copied());
                    match (is_densify, input, output) {
                        (true, Some(i), Some(o)) if sparse_ids.contains(&i) => {
                            rename.insert(o, i);
                            false
                        }
                        _ => true,
                    }
                });
            }
            let removed: HashSet<i32> = rename.keys().copied().collect();
            rewire(sg, &rename);
            remove_tensors(&mut self.model, si, &removed, &rename);
        }
        for b in self.dense.keys().copied().collect::<Vec<_>>() {
            if !self.model.subgraphs.iter().flatten().any(|sg| {
                sg.tensors
                    .iter()
                    .flatten()
                    .any(|t| t.buffer as usize == b && t.sparsity.is_some())
            }) {
                self.dense.remove(&b);
            }
        }
        count
    }

    /// Stores eligible dense constants sparse (all of them, or where smaller), each feeding a
    /// new DENSIFY op placed before its first reader.
    pub(super) fn sparsify(
        &mut self,
        policy: &StoragePolicy,
        report: &mut StorageReport,
        keep_dense: bool,
    ) {
        let codes: Vec<fb::BuiltinOperator> = self
            .model
            .operator_codes
            .iter()
            .flatten()
            .map(builtin_of)
            .collect();
        let mut buffer_refs: HashMap<u32, usize> = HashMap::new();
        for sg in self.model.subgraphs.iter().flatten() {
            for t in sg.tensors.iter().flatten() {
                *buffer_refs.entry(t.buffer).or_insert(0) += 1;
            }
        }
        let nsub = self.model.subgraphs.as_ref().map_or(0, Vec::len);
        for si in 0..nsub {
            let sg = &self.model.subgraphs.as_ref().unwrap()[si];
            let ntensors = sg.tensors.as_ref().map_or(0, Vec::len);
            // Decided before any DENSIFY goes in: those read only the tensor they expand.
            let readers = weight_readers(sg, &codes);
            // Decided and encoded in parallel; the graph is edited after, in tensor order.
            // Without `keep_dense`, each dense payload is dropped once encoded.
            let decided: Vec<Option<Encoded>> = (0..ntensors)
                .into_par_iter()
                .map(|ti| {
                    let (plan, dense) =
                        self.sparse_candidate(si, ti, &readers, &buffer_refs, policy)?;
                    let t = &sg.tensors.as_ref()?[ti];
                    let shape = static_shape(t).expect("checked");
                    let elem = elem_size(t).expect("checked");
                    let (layout, values) = sparse::encode(&shape, elem, &dense, &plan);
                    Some((layout, values, keep_dense.then_some(dense)))
                })
                .collect();
            for (ti, d) in decided.into_iter().enumerate() {
                let Some((layout, values, dense)) = d else {
                    continue;
                };
                let densify =
                    crate::tflite::opcode_index(&mut self.model, fb::BuiltinOperator::DENSIFY);
                let sg = &mut self.model.subgraphs.as_mut().unwrap()[si];
                let tensors = sg.tensors.as_mut().unwrap();
                let t = &mut tensors[ti];
                t.sparsity = Some(Box::new(to_fb(&layout)));
                let buffer = t.buffer as usize;
                let out = fb::TensorT {
                    name: Some(format!("{}/densified", t.name.as_deref().unwrap_or(""))),
                    sparsity: None,
                    buffer: 0,
                    external_buffer: 0,
                    has_rank: true,
                    ..t.clone()
                };
                tensors.push(out);
                let out = (tensors.len() - 1) as i32;
                let ops = sg.operators.get_or_insert_with(Vec::new);
                let mut first = ops.len();
                for (oi, op) in ops.iter_mut().enumerate() {
                    for i in op.inputs.iter_mut().flatten() {
                        if *i == ti as i32 {
                            *i = out;
                            first = first.min(oi);
                        }
                    }
                }
                ops.insert(
                    first,
                    fb::OperatorT {
                        opcode_index: densify,
                        inputs: Some(vec![ti as i32]),
                        outputs: Some(vec![out]),
                        ..Default::default()
                    },
                );
                if let Some(r) = self.buffers[buffer]
                    .as_ref()
                    .and_then(|b| self.deferred.get(b))
                {
                    r.mark_used();
                }
                self.buffers[buffer] = Some(Bytes::from(values));
                match dense {
                    Some(dense) => {
                        self.dense.insert(buffer, dense);
                    }
                    None => self.write_only = true,
                }
                report.made_sparse += 1;
            }
        }
    }

    /// Whether tensor `ti` of subgraph `si` should become sparse, and with which plan.
    pub(super) fn sparse_candidate(
        &self,
        si: usize,
        ti: usize,
        readers: &HashMap<i32, Option<usize>>,
        buffer_refs: &HashMap<u32, usize>,
        policy: &StoragePolicy,
    ) -> Option<(Plan, Bytes)> {
        let sg = &self.model.subgraphs.as_ref()?[si];
        let t = &sg.tensors.as_ref()?[ti];
        if t.sparsity.is_some()
            || t.buffer == 0
            || t.is_variable
            || buffer_refs.get(&t.buffer) != Some(&1)
            || !matches!(
                t.type_,
                fb::TensorType::FLOAT32 | fb::TensorType::FLOAT16 | fb::TensorType::INT8
            )
        {
            return None;
        }
        let data = self.buffers.get(t.buffer as usize)?.as_ref()?;
        let shape = static_shape(t)?;
        let elem = elem_size(t)?;
        if data.is_empty()
            || shape.is_empty()
            || data.len() != shape.iter().product::<usize>() * elem
        {
            return None;
        }
        if !matches!(readers.get(&(ti as i32)), Some(Some(n)) if *n > 0) {
            return None;
        }
        let overhead = OVERHEAD + 2 * t.name.as_ref().map_or(0, String::len);
        // The values alone must fit under the dense size for auto to pick sparse: stop
        // counting past that. An all-zero tensor would store an empty buffer, which readers
        // (LiteRT, tract, pare) take for a tensor without data.
        let limit = match policy.storage {
            Storage::Sparse => usize::MAX,
            _ => data.len().saturating_sub(overhead) / elem,
        };
        // A deferred pruned payload knows its non-zeros: it is computed only to be planned.
        let resolved;
        let (data, nnz) = match self.deferred.get(data) {
            Some(r) if r.nonzero() == 0 || r.nonzero() > limit => return None,
            Some(r) => {
                resolved = r.materialize(false);
                (&resolved, r.nonzero())
            }
            None => (data, sparse::count_nonzero_upto(data, elem, limit)),
        };
        if nnz == 0 || nnz > limit {
            return None;
        }
        let (plan, bytes) = best_plan(&shape, elem, data, policy.block)?;
        let worth = match policy.storage {
            Storage::Sparse => true,
            _ => bytes + overhead < data.len(),
        };
        worth.then(|| (plan, data.clone()))
    }
}

/// For each tensor of `sg`: how many operators read it, or `None` when one of them (or the
/// subgraph's interface) may not be fed by a DENSIFY output.
pub(super) fn weight_readers(
    sg: &fb::SubGraphT,
    codes: &[fb::BuiltinOperator],
) -> HashMap<i32, Option<usize>> {
    let tensors = sg.tensors.as_deref().unwrap_or(&[]);
    let mut readers: HashMap<i32, Option<usize>> = HashMap::new();
    for op in sg.operators.iter().flatten() {
        let code = codes.get(op.opcode_index as usize).copied();
        let packed = matches!(&op.builtin_options,
            fb::BuiltinOptionsT::FullyConnectedOptions(o)
                if o.weights_format != fb::FullyConnectedOptionsWeightsFormat::DEFAULT);
        for (slot, &i) in op.inputs.iter().flatten().enumerate() {
            // LiteRT 2.3's XNNPACK delegate (on by default) fails to prepare an int8
            // FULLY_CONNECTED fed by DENSIFY, the converter's own sparse output included: those
            // weights stay dense so the file runs in the default interpreter.
            let int8_fc = code == Some(fb::BuiltinOperator::FULLY_CONNECTED)
                && tensors
                    .get(i as usize)
                    .is_some_and(|t| t.type_ == fb::TensorType::INT8);
            let ok = code.is_some_and(|c| weight_slot(c, slot)) && !packed && !int8_fc;
            let e = readers.entry(i).or_insert(Some(0));
            *e = e.filter(|_| ok).map(|n| n + 1);
        }
    }
    for &i in sg
        .inputs
        .iter()
        .flatten()
        .chain(sg.outputs.iter().flatten())
    {
        readers.insert(i, None);
    }
    readers
}

/// Readers of a renamed tensor read its replacement (operator inputs, subgraph outputs).
pub(super) fn rewire(sg: &mut fb::SubGraphT, rename: &HashMap<i32, i32>) {
    for op in sg.operators.iter_mut().flatten() {
        for i in op.inputs.iter_mut().flatten() {
            if let Some(&r) = rename.get(i) {
                *i = r;
            }
        }
    }
    for i in sg.outputs.iter_mut().flatten() {
        if let Some(&r) = rename.get(i) {
            *i = r;
        }
    }
}

/// Deletes tensors from subgraph `si`, renumbering every reference to the ones after them
/// (operators, subgraph inputs/outputs, signatures). References to a removed tensor follow
/// `rename` first.
pub(super) fn remove_tensors(
    model: &mut fb::ModelT,
    si: usize,
    removed: &HashSet<i32>,
    rename: &HashMap<i32, i32>,
) {
    if removed.is_empty() {
        return;
    }
    let sg = &mut model.subgraphs.as_mut().unwrap()[si];
    let n = sg.tensors.as_ref().map_or(0, Vec::len);
    let mut map = vec![-1i32; n];
    let mut next = 0;
    for (i, slot) in map.iter_mut().enumerate() {
        if !removed.contains(&(i as i32)) {
            *slot = next;
            next += 1;
        }
    }
    let remap = |i: i32| -> i32 {
        let i = rename.get(&i).copied().unwrap_or(i);
        if i < 0 {
            i
        } else {
            map.get(i as usize).copied().unwrap_or(i)
        }
    };
    if let Some(t) = sg.tensors.as_mut() {
        let mut i = 0;
        t.retain(|_| {
            let keep = !removed.contains(&i);
            i += 1;
            keep
        });
    }
    for op in sg.operators.iter_mut().flatten() {
        for list in [&mut op.inputs, &mut op.outputs, &mut op.intermediates]
            .into_iter()
            .flatten()
        {
            list.iter_mut().for_each(|i| *i = remap(*i));
        }
    }
    for list in [&mut sg.inputs, &mut sg.outputs].into_iter().flatten() {
        list.iter_mut().for_each(|i| *i = remap(*i));
    }
    for sig in model.signature_defs.iter_mut().flatten() {
        if sig.subgraph_index as usize != si {
            continue;
        }
        for m in [&mut sig.inputs, &mut sig.outputs]
            .into_iter()
            .flatten()
            .flatten()
        {
            m.tensor_index = remap(m.tensor_index as i32).max(0) as u32;
        }
    }
}
