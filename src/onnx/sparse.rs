//! ONNX sparse initializers (`SparseTensorProto`): decoded and checked for the model view,
//! re-encoded after edits, and the storage pass that moves initializers between `initializer`
//! and `sparse_initializer`.
//!
//! pare writes the linear form the ONNX spec describes: `values` of shape [NNZ] and `indices`
//! of type INT64 (the only index type `onnx.checker` accepts) and shape [NNZ], ascending. It
//! reads that form and the [NNZ, rank] coordinate form, with any integer index type
//! onnxruntime accepts.

use super::tensor::{self, dtype_from_onnx, Item, ItemMut, TensorPayload};
use super::OnnxDocument;
use crate::error::{Error, Result};
use crate::model::DType;
use crate::onnx_pb as pb;
use crate::sparse::{self, SparseTensor, Storage, StoragePolicy, StorageReport};
use bytes::Bytes;
use pb::tensor_proto::DataType;
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};

/// Bytes a sparse initializer adds besides values and indices (two TensorProto headers).
const OVERHEAD: usize = 24;
/// `sparse_initializer` exists from IR version 6 on.
const MIN_IR_VERSION: i64 = 6;

/// Integer index values (`DType::decode_f64` stops at 32 bits, and ONNX indices are INT64).
fn ints(dtype: DType, b: &[u8]) -> Option<Vec<i64>> {
    Some(match dtype {
        DType::I64 => b
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        DType::I32 => b
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
            .collect(),
        DType::I16 => b
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes(c.try_into().unwrap()) as i64)
            .collect(),
        DType::I8 => b.iter().map(|&x| x as i8 as i64).collect(),
        DType::U8 => b.iter().map(|&x| x as i64).collect(),
        _ => return None,
    })
}

/// The dense payload of a sparse tensor, every index checked; `None` for element types pare
/// does not interpret (strings).
pub(super) fn densify(doc: &OnnxDocument, s: &pb::SparseTensorProto) -> Result<Option<Bytes>> {
    let values = s
        .values
        .as_ref()
        .ok_or_else(|| Error::malformed(&doc.path, "a sparse tensor has no values"))?;
    let name = values.name();
    let bad = |msg: String| Error::malformed(&doc.path, format!("sparse tensor {name:?}: {msg}"));
    let dtype = dtype_from_onnx(values.data_type());
    let Some(elem) = dtype.size() else {
        return Ok(None);
    };
    let mut dims = Vec::with_capacity(s.dims.len());
    for &d in &s.dims {
        dims.push(usize::try_from(d).map_err(|_| bad(format!("negative dimension {d}")))?);
    }
    let numel = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("shape {:?} overflows", s.dims)))?;
    if values.dims.len() != 1 {
        return Err(bad(format!(
            "values must be one-dimensional [NNZ], not {:?}",
            values.dims
        )));
    }
    let TensorPayload::Dense(v) = doc.payload(values)? else {
        return Ok(None);
    };
    let nnz = v.len() / elem;
    let linear: Vec<u64> = match &s.indices {
        None if nnz == 0 => vec![],
        None => return Err(bad("it has values but no indices".into())),
        Some(ix) => {
            let idtype = dtype_from_onnx(ix.data_type());
            let TensorPayload::Dense(b) = doc.payload(ix)? else {
                return Err(bad(format!("indices of type {idtype} are not integers")));
            };
            let raw = ints(idtype, &b)
                .ok_or_else(|| bad(format!("indices of type {idtype} are not integers")))?;
            match ix.dims.as_slice() {
                [n] if *n as usize == nnz => raw
                    .iter()
                    .map(|&i| u64::try_from(i).map_err(|_| bad(format!("negative index {i}"))))
                    .collect::<Result<_>>()?,
                [n, r] if *n as usize == nnz && *r as usize == dims.len() => {
                    let mut out = Vec::with_capacity(nnz);
                    for (k, c) in raw.chunks_exact(dims.len().max(1)).enumerate() {
                        let mut lin = 0u64;
                        for (j, (&x, &d)) in c.iter().zip(&dims).enumerate() {
                            if x < 0 || x as u64 >= d as u64 {
                                return Err(bad(format!(
                                    "index {k} has coordinate {x} on axis {j} of length {d}"
                                )));
                            }
                            lin = lin * d as u64 + x as u64;
                        }
                        out.push(lin);
                    }
                    out
                }
                other => {
                    return Err(bad(format!(
                        "indices of shape {other:?} do not match {nnz} values of a rank-{} tensor",
                        dims.len()
                    )))
                }
            }
        }
    };
    sparse::coo_densify(numel, elem, &v, &linear)
        .map(|d| Some(Bytes::from(d)))
        .map_err(bad)
}

/// Densifies every sparse tensor of the model: dense payloads by the handle of their values.
pub(super) fn decode_all(doc: &OnnxDocument) -> Result<HashMap<usize, Bytes>> {
    let mut out = HashMap::new();
    let mut ordinal = 0usize;
    let mut err = None;
    tensor::walk(&doc.model, &mut |item| match item {
        Item::Tensor(_) => ordinal += 1,
        Item::Sparse(s) => {
            if err.is_some() || s.values.is_none() {
                return;
            }
            match densify(doc, s) {
                Ok(Some(d)) => {
                    out.insert(ordinal, d);
                }
                Ok(None) => {}
                Err(e) => err = Some(e),
            }
        }
    });
    match err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// A sparse tensor holding the non-zero elements of `dense` (the linear INT64 form).
fn encode(
    name: &str,
    data_type: i32,
    dims: &[i64],
    dense: &[u8],
    elem: usize,
    doc_string: Option<String>,
) -> pb::SparseTensorProto {
    let (idx, values) = sparse::coo_encode(dense, elem);
    let nnz = idx.len() as i64;
    let mut raw = Vec::with_capacity(idx.len() * 8);
    for i in idx {
        raw.extend_from_slice(&i.to_le_bytes());
    }
    pb::SparseTensorProto {
        values: Some(pb::TensorProto {
            name: Some(name.to_string()),
            data_type: Some(data_type),
            dims: vec![nnz],
            raw_data: Some(Bytes::from(values)),
            doc_string,
            ..Default::default()
        }),
        indices: Some(pb::TensorProto {
            data_type: Some(DataType::Int64 as i32),
            dims: vec![nnz],
            raw_data: Some(Bytes::from(raw)),
            ..Default::default()
        }),
        dims: dims.to_vec(),
    }
}

/// Element types pare stores sparse: the float and 8-bit types weights come in.
fn sparse_type(dtype: DType) -> bool {
    matches!(
        dtype,
        DType::F32 | DType::F16 | DType::BF16 | DType::F64 | DType::I8 | DType::U8
    )
}

impl OnnxDocument {
    /// Re-encodes the sparse tensors whose values handle is edited (dense payloads in
    /// `edits`); returns the handles it took care of.
    pub(super) fn reencode_sparse(&mut self, edits: &HashMap<usize, Bytes>) -> HashSet<usize> {
        let mut done = HashSet::new();
        let mut ordinal = 0usize;
        let dense = &self.dense;
        tensor::walk_mut(&mut self.model, &mut |item| match item {
            ItemMut::Tensor(_) => ordinal += 1,
            ItemMut::Sparse(s) => {
                let (Some(d), true) = (edits.get(&ordinal), dense.contains_key(&ordinal)) else {
                    return;
                };
                let Some(v) = &s.values else { return };
                let Some(elem) = dtype_from_onnx(v.data_type()).size() else {
                    return;
                };
                *s = encode(
                    v.name(),
                    v.data_type(),
                    &s.dims,
                    d,
                    elem,
                    v.doc_string.clone(),
                );
                done.insert(ordinal);
            }
            ItemMut::Graph(_) => {}
        });
        for &h in &done {
            self.dense.insert(h, edits[&h].clone());
        }
        done
    }

    /// A copy with constants stored as `policy` asks; see [`Storage`].
    pub fn with_storage(&self, policy: &StoragePolicy) -> Result<(OnnxDocument, StorageReport)> {
        self.storage_pass(policy, true)
    }

    /// [`OnnxDocument::with_storage`]; without `keep_dense`, the tensors it makes sparse keep
    /// no dense payload (the write path: the result is written, never read as a model).
    pub(crate) fn storage_pass(
        &self,
        policy: &StoragePolicy,
        keep_dense: bool,
    ) -> Result<(OnnxDocument, StorageReport)> {
        let mut doc = self.clone();
        let mut report = StorageReport::new(policy.storage);
        let mut model = self.model.clone();
        let mut err = None;
        match policy.storage {
            Storage::Keep => {}
            Storage::Dense => tensor::for_each_graph_mut(&mut model, &mut |g| {
                for s in std::mem::take(&mut g.sparse_initializer) {
                    let v = s.values.clone().unwrap_or_default();
                    match densify(self, &s) {
                        Ok(Some(d)) => {
                            g.initializer.push(pb::TensorProto {
                                name: v.name.clone(),
                                data_type: v.data_type,
                                dims: s.dims.clone(),
                                raw_data: Some(d),
                                doc_string: v.doc_string.clone(),
                                ..Default::default()
                            });
                            report.densified += 1;
                        }
                        Ok(None) => g.sparse_initializer.push(s),
                        Err(e) => {
                            err.get_or_insert(e);
                            g.sparse_initializer.push(s);
                        }
                    }
                }
            }),
            Storage::Auto | Storage::Sparse if self.model.ir_version() >= MIN_IR_VERSION => {
                tensor::for_each_graph_mut(&mut model, &mut |g| {
                    let inputs: HashSet<String> =
                        g.input.iter().map(|i| i.name().to_string()).collect();
                    // Tensors are decided (and encoded) in parallel, kept in model order.
                    let decided: Vec<Result<Option<pb::SparseTensorProto>>> = g
                        .initializer
                        .par_iter()
                        .map(|t| {
                            Ok(self.sparse_candidate(t, &inputs, policy.storage)?.map(
                                |(dense, elem)| {
                                    encode(
                                        t.name(),
                                        t.data_type(),
                                        &t.dims,
                                        &dense,
                                        elem,
                                        t.doc_string.clone(),
                                    )
                                },
                            ))
                        })
                        .collect();
                    let mut kept = Vec::with_capacity(g.initializer.len());
                    for (t, d) in std::mem::take(&mut g.initializer).into_iter().zip(decided) {
                        match d {
                            Ok(Some(s)) => {
                                g.sparse_initializer.push(s);
                                report.made_sparse += 1;
                            }
                            Ok(None) => kept.push(t),
                            Err(e) => {
                                err.get_or_insert(e);
                                kept.push(t);
                            }
                        }
                    }
                    g.initializer = kept;
                })
            }
            Storage::Auto | Storage::Sparse => {}
        }
        if let Some(e) = err {
            return Err(e);
        }
        doc.model = model;
        doc.edited = doc.edited || report.made_sparse > 0 || report.densified > 0;
        // Moving initializers renumbers the handles the dense payloads are keyed by.
        if report.made_sparse > 0 || report.densified > 0 {
            if keep_dense || report.densified > 0 {
                doc.dense = decode_all(&doc)?;
            } else {
                doc.dense.clear();
                doc.write_only = true;
            }
        }
        doc.describe_sparse(&mut report);
        report.total();
        Ok((doc, report))
    }

    /// The dense payload of an initializer that should be stored sparse.
    fn sparse_candidate(
        &self,
        t: &pb::TensorProto,
        graph_inputs: &HashSet<String>,
        storage: Storage,
    ) -> Result<Option<(Bytes, usize)>> {
        let dtype = dtype_from_onnx(t.data_type());
        if !sparse_type(dtype) || t.dims.is_empty() || graph_inputs.contains(t.name()) {
            return Ok(None);
        }
        let Some(elem) = dtype.size() else {
            return Ok(None);
        };
        let TensorPayload::Dense(d) = self.payload(t)? else {
            return Ok(None);
        };
        if d.is_empty() {
            return Ok(None);
        }
        // Auto needs nnz * (elem + 8) + OVERHEAD < len: stop counting past that.
        let limit = match storage {
            Storage::Sparse => usize::MAX,
            _ => d.len().saturating_sub(OVERHEAD) / (elem + 8),
        };
        // A deferred pruned payload knows its non-zeros: it is computed only to go sparse.
        let (d, nnz) = match self.deferred.get(&d) {
            Some(r) if r.nonzero() == 0 || r.nonzero() > limit => return Ok(None),
            Some(r) => (r.materialize(true), r.nonzero()),
            None => {
                let nnz = sparse::count_nonzero_upto(&d, elem, limit);
                (d, nnz)
            }
        };
        if nnz == 0 {
            // Kept dense like TFLite's (where an empty buffer reads as "no data"); gzip makes
            // an all-zero tensor small anyway.
            return Ok(None);
        }
        let worth = match storage {
            Storage::Sparse => true,
            _ => nnz * (elem + 8) + OVERHEAD < d.len(),
        };
        Ok(worth.then_some((d, elem)))
    }

    fn describe_sparse(&self, report: &mut StorageReport) {
        let mut ordinal = 0usize;
        tensor::walk(&self.model, &mut |item| match item {
            Item::Tensor(_) => ordinal += 1,
            Item::Sparse(s) => {
                let Some(v) = &s.values else {
                    return;
                };
                let dtype = dtype_from_onnx(v.data_type());
                let elem = dtype.size().unwrap_or(1);
                // The values hold every non-zero of the dense tensor (and maybe zeros).
                let Ok(TensorPayload::Dense(values)) = self.payload(v) else {
                    return;
                };
                let numel = s.dims.iter().map(|&d| d.max(0) as u64).product::<u64>();
                let raw = |t: &Option<pb::TensorProto>| {
                    t.as_ref()
                        .and_then(|t| self.payload(t).ok())
                        .map_or(0, |p| match p {
                            TensorPayload::Dense(b) => b.len() as u64,
                            TensorPayload::Opaque => 0,
                        })
                };
                let coords = s.indices.as_ref().is_some_and(|i| i.dims.len() == 2);
                report.sparse_tensors.push(SparseTensor {
                    name: v.name().to_string(),
                    dtype: dtype.to_string(),
                    shape: s.dims.iter().map(|&d| d.max(0) as usize).collect(),
                    density: sparse::count_nonzero(&values, elem) as f64 / numel.max(1) as f64,
                    dense_bytes: numel * elem as u64,
                    stored_bytes: raw(&s.values) + raw(&s.indices),
                    layout: if coords {
                        "coordinates [NNZ, rank]".into()
                    } else {
                        "linear indices [NNZ]".into()
                    },
                });
            }
        });
    }
}
