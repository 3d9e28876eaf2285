//! TFLite sparse weights: `SparsityParameters` read into the neutral [`Layout`], densified for
//! the model view, and the storage pass that writes weights sparse feeding `DENSIFY` ops, as
//! TensorFlow's converter does (`tf.lite.Optimize.EXPERIMENTAL_SPARSITY`), or all dense.

use super::{builtin_of, dtype_from_tflite, TfliteDocument};
use crate::error::{Error, Result};
use crate::sparse::{
    self, Layout, Level, Plan, SparseTensor, Storage, StoragePolicy, StorageReport,
};
use crate::tflite_gen::tflite as fb;
use bytes::Bytes;
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};

/// Flatbuffer bytes a sparse tensor adds besides its payload (the DENSIFY operator, its output
/// tensor, the sparsity tables), on top of twice the tensor's name. Measured on converter
/// output: 150–190 bytes.
const OVERHEAD: usize = 192;

fn index_vector(v: &[u32]) -> fb::SparseIndexVectorT {
    match sparse::index_width(v.iter().copied().max().unwrap_or(0)) {
        1 => fb::SparseIndexVectorT::Uint8Vector(Box::new(fb::Uint8VectorT {
            values: Some(v.iter().map(|&x| x as u8).collect()),
        })),
        2 => fb::SparseIndexVectorT::Uint16Vector(Box::new(fb::Uint16VectorT {
            values: Some(v.iter().map(|&x| x as u16).collect()),
        })),
        _ => fb::SparseIndexVectorT::Int32Vector(Box::new(fb::Int32VectorT {
            values: Some(v.iter().map(|&x| x as i32).collect()),
        })),
    }
}

fn read_index_vector(
    v: &fb::SparseIndexVectorT,
    what: &str,
) -> std::result::Result<Vec<u32>, String> {
    match v {
        fb::SparseIndexVectorT::NONE => Err(format!("{what} is missing")),
        fb::SparseIndexVectorT::Int32Vector(x) => x
            .values
            .iter()
            .flatten()
            .map(|&i| u32::try_from(i).map_err(|_| format!("{what} holds a negative value {i}")))
            .collect(),
        fb::SparseIndexVectorT::Uint16Vector(x) => {
            Ok(x.values.iter().flatten().map(|&i| i as u32).collect())
        }
        fb::SparseIndexVectorT::Uint8Vector(x) => {
            Ok(x.values.iter().flatten().map(|&i| i as u32).collect())
        }
    }
}

/// The neutral layout of a tensor's `SparsityParameters`.
pub(super) fn layout_of(sp: &fb::SparsityParametersT) -> std::result::Result<Layout, String> {
    let ints = |v: &Option<Vec<i32>>, what: &str| -> std::result::Result<Vec<usize>, String> {
        v.iter()
            .flatten()
            .map(|&i| usize::try_from(i).map_err(|_| format!("{what} holds a negative value {i}")))
            .collect()
    };
    let levels = sp
        .dim_metadata
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, d)| match d.format {
            fb::DimensionType::DENSE => usize::try_from(d.dense_size)
                .map(|size| Level::Dense { size })
                .map_err(|_| format!("dimension metadata {i}: negative dense size")),
            fb::DimensionType::SPARSE_CSR => Ok(Level::Csr {
                segments: read_index_vector(
                    &d.array_segments,
                    &format!("dimension metadata {i}: array_segments"),
                )?,
                indices: read_index_vector(
                    &d.array_indices,
                    &format!("dimension metadata {i}: array_indices"),
                )?,
            }),
            other => Err(format!(
                "dimension metadata {i}: unknown format {}",
                other.0
            )),
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(Layout {
        traversal_order: ints(&sp.traversal_order, "traversal_order")?,
        block_map: ints(&sp.block_map, "block_map")?,
        levels,
    })
}

pub(super) fn to_fb(layout: &Layout) -> fb::SparsityParametersT {
    fb::SparsityParametersT {
        traversal_order: Some(layout.traversal_order.iter().map(|&d| d as i32).collect()),
        block_map: Some(layout.block_map.iter().map(|&d| d as i32).collect()),
        dim_metadata: Some(
            layout
                .levels
                .iter()
                .map(|l| match l {
                    Level::Dense { size } => fb::DimensionMetadataT {
                        format: fb::DimensionType::DENSE,
                        dense_size: *size as i32,
                        ..Default::default()
                    },
                    Level::Csr { segments, indices } => fb::DimensionMetadataT {
                        format: fb::DimensionType::SPARSE_CSR,
                        dense_size: 0,
                        array_segments: index_vector(segments),
                        array_indices: index_vector(indices),
                    },
                })
                .collect(),
        ),
    }
}

fn static_shape(t: &fb::TensorT) -> Option<Vec<usize>> {
    t.shape
        .as_ref()?
        .iter()
        .map(|&d| usize::try_from(d).ok())
        .collect()
}

fn elem_size(t: &fb::TensorT) -> Option<usize> {
    dtype_from_tflite(t.type_).size()
}

/// Densifies every sparse constant of the document, checking its metadata: the dense
/// payloads by buffer index.
pub(super) fn decode_all(doc: &TfliteDocument) -> Result<HashMap<usize, Bytes>> {
    let mut dense: HashMap<usize, Bytes> = HashMap::new();
    for (si, sg) in doc.model.subgraphs.iter().flatten().enumerate() {
        for (ti, t) in sg.tensors.iter().flatten().enumerate() {
            let Some(sp) = &t.sparsity else { continue };
            let Some(Some(values)) = doc.buffers.get(t.buffer as usize) else {
                continue;
            };
            if t.buffer == 0 || values.is_empty() {
                continue;
            }
            let bad = |msg: String| {
                Error::malformed(
                    &doc.path,
                    format!(
                        "sparse tensor {:?} (subgraph {si}, tensor {ti}): {msg}",
                        t.name.as_deref().unwrap_or("")
                    ),
                )
            };
            let shape =
                static_shape(t).ok_or_else(|| bad("its shape is missing or not static".into()))?;
            let elem = elem_size(t)
                .ok_or_else(|| bad(format!("type {:?} cannot be stored sparse", t.type_)))?;
            let layout = layout_of(sp).map_err(bad)?;
            let data = sparse::densify(&shape, elem, values, &layout).map_err(bad)?;
            let data = Bytes::from(data);
            if let Some(prev) = dense.get(&(t.buffer as usize)) {
                if *prev != data {
                    return Err(bad(format!(
                        "buffer {} is shared with a tensor that reads it differently",
                        t.buffer
                    )));
                }
            }
            dense.insert(t.buffer as usize, data);
        }
    }
    Ok(dense)
}

/// Stored bytes of a sparse tensor: values plus index arrays.
pub(super) fn stored_bytes(doc: &TfliteDocument, t: &fb::TensorT) -> u64 {
    let values = doc
        .buffers
        .get(t.buffer as usize)
        .cloned()
        .flatten()
        .map_or(0, |b| b.len());
    let meta = t
        .sparsity
        .as_ref()
        .and_then(|sp| layout_of(sp).ok())
        .map_or(0, |l| sparse::stored_bytes(&l, 0));
    (values + meta) as u64
}

/// The plan a sparse layout was made with, when it is one pare makes (one CSR level, the
/// rest dense): re-encoding edited data with it keeps the file's layout.
fn plan_of(layout: &Layout, rank: usize) -> Option<Plan> {
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
fn best_plan(
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
fn weight_slot(op: fb::BuiltinOperator, slot: usize) -> bool {
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
type Encoded = (Layout, Vec<u8>, Option<Bytes>);

impl TfliteDocument {
    /// Re-encodes the sparse tensors stored in buffer `i` after its dense data changed.
    pub(super) fn reencode_sparse(&mut self, i: usize, dense: Bytes) {
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
    fn describe_sparse(&self, report: &mut StorageReport) {
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
                let numel: usize = static_shape(t).unwrap_or_default().iter().product();
                let layout = layout_of(sp).ok();
                report.sparse_tensors.push(SparseTensor {
                    name: t.name.clone().unwrap_or_default(),
                    dtype: dtype_from_tflite(t.type_).to_string(),
                    shape: static_shape(t).unwrap_or_default(),
                    density: sparse::count_nonzero(&values, elem) as f64 / numel.max(1) as f64,
                    dense_bytes: (numel * elem) as u64,
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
    fn sparsify(&mut self, policy: &StoragePolicy, report: &mut StorageReport, keep_dense: bool) {
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
                let densify = super::opcode_index(&mut self.model, fb::BuiltinOperator::DENSIFY);
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
    fn sparse_candidate(
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
fn weight_readers(
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
fn rewire(sg: &mut fb::SubGraphT, rename: &HashMap<i32, i32>) {
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
fn remove_tensors(
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

/// "CSR on dim 3 of [0,1,2,3], blocks 4x1 on dims (0,3)"-style summary.
pub fn describe_layout(l: &Layout) -> String {
    let n = l.traversal_order.len() - l.block_map.len();
    let levels: Vec<String> = l
        .levels
        .iter()
        .zip(&l.traversal_order)
        .map(|(lv, &d)| {
            let name = if d < n {
                format!("d{d}")
            } else {
                format!("b{}", l.block_map.get(d - n).copied().unwrap_or(0))
            };
            match lv {
                Level::Dense { .. } => name,
                Level::Csr { .. } => format!("{name}:csr"),
            }
        })
        .collect();
    let mut s = levels.join(",");
    if !l.block_map.is_empty() {
        let sizes: Vec<String> = l.levels[n..]
            .iter()
            .map(|lv| match lv {
                Level::Dense { size } => size.to_string(),
                Level::Csr { .. } => "?".into(),
            })
            .collect();
        s += &format!(" blocks {} on dims {:?}", sizes.join("x"), l.block_map);
    }
    s
}
