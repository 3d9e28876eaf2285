//! TensorProto payloads: raw_data, typed fields and external data, as one dense byte view.

use crate::error::{Error, Result};
use crate::model::DType;
use crate::onnx_pb as pb;
use bytes::Bytes;
use pb::tensor_proto::{DataLocation, DataType};
use std::path::Path;

pub fn dtype_from_onnx(code: i32) -> DType {
    match DataType::try_from(code) {
        Ok(DataType::Float) => DType::F32,
        Ok(DataType::Float16) => DType::F16,
        Ok(DataType::Bfloat16) => DType::BF16,
        Ok(DataType::Double) => DType::F64,
        Ok(DataType::Int8) => DType::I8,
        Ok(DataType::Uint8) => DType::U8,
        Ok(DataType::Int16) => DType::I16,
        Ok(DataType::Uint16) => DType::U16,
        Ok(DataType::Int32) => DType::I32,
        Ok(DataType::Uint32) => DType::U32,
        Ok(DataType::Int64) => DType::I64,
        Ok(DataType::Uint64) => DType::U64,
        Ok(DataType::Bool) => DType::Bool,
        Ok(DataType::String) => DType::String,
        Ok(DataType::Complex64) => DType::Complex64,
        Ok(DataType::Complex128) => DType::Complex128,
        Ok(DataType::Int4) => DType::I4,
        _ => DType::Other,
    }
}

/// The ONNX element type of `dtype` (`None` for types ONNX has no code for here).
pub fn dtype_to_onnx(dtype: DType) -> Option<i32> {
    Some(match dtype {
        DType::F32 => DataType::Float,
        DType::F16 => DataType::Float16,
        DType::BF16 => DataType::Bfloat16,
        DType::F64 => DataType::Double,
        DType::I8 => DataType::Int8,
        DType::U8 => DataType::Uint8,
        DType::I16 => DataType::Int16,
        DType::U16 => DataType::Uint16,
        DType::I32 => DataType::Int32,
        DType::U32 => DataType::Uint32,
        DType::I64 => DataType::Int64,
        DType::U64 => DataType::Uint64,
        DType::Bool => DataType::Bool,
        DType::I4 => DataType::Int4,
        _ => return None,
    } as i32)
}

/// What a tensor holds, as far as pare is concerned.
#[derive(Debug, Clone)]
pub enum TensorPayload {
    /// Dense little-endian bytes, `numel * size` long.
    Dense(Bytes),
    /// Strings, sub-byte or exotic types: carried through untouched, never interpreted.
    Opaque,
}

pub fn is_external(t: &pb::TensorProto) -> bool {
    t.data_location == Some(DataLocation::External as i32)
}

pub fn external_field<'a>(t: &'a pb::TensorProto, key: &str) -> Option<&'a str> {
    t.external_data
        .iter()
        .find(|e| e.key.as_deref() == Some(key))
        .and_then(|e| e.value.as_deref())
}

/// Element count from `dims`, refusing negative dims and overflow.
pub fn numel(t: &pb::TensorProto, path: &Path) -> Result<u64> {
    t.dims.iter().try_fold(1u64, |acc, &d| {
        if d < 0 {
            return Err(Error::malformed(
                path,
                format!("tensor {:?} has a negative dimension {d}", t.name()),
            ));
        }
        acc.checked_mul(d as u64).ok_or_else(|| {
            Error::malformed(
                path,
                format!("tensor {:?}: shape {:?} overflows", t.name(), t.dims),
            )
        })
    })
}

pub fn payload(
    t: &pb::TensorProto,
    path: &Path,
    external: impl FnOnce(&str) -> Result<Bytes>,
) -> Result<TensorPayload> {
    let dtype = dtype_from_onnx(t.data_type());
    let n = numel(t, path)?;
    let Some(size) = dtype.size() else {
        return Ok(TensorPayload::Opaque);
    };
    let expected = n.checked_mul(size as u64).ok_or_else(|| {
        Error::malformed(path, format!("tensor {:?}: byte size overflows", t.name()))
    })?;
    let name = t.name();
    let bytes = if is_external(t) {
        let loc = external_field(t, "location").ok_or_else(|| {
            Error::malformed(path, format!("external tensor {name:?} has no location"))
        })?;
        let file = external(loc)?;
        let parse = |key: &str| -> Result<Option<u64>> {
            match external_field(t, key) {
                None => Ok(None),
                Some(v) => v.trim().parse::<u64>().map(Some).map_err(|_| {
                    Error::malformed(
                        path,
                        format!("external tensor {name:?}: {key} {v:?} is not a number"),
                    )
                }),
            }
        };
        let offset = parse("offset")?.unwrap_or(0);
        let length = parse("length")?.unwrap_or(expected);
        let end = offset
            .checked_add(length)
            .filter(|&e| e <= file.len() as u64)
            .ok_or_else(|| {
                Error::malformed(
                    path,
                    format!(
                    "external tensor {name:?}: bytes {offset}..{} lie outside {loc:?} ({} bytes)",
                    offset.saturating_add(length),
                    file.len()
                ),
                )
            })?;
        file.slice(offset as usize..end as usize)
    } else if let Some(raw) = &t.raw_data {
        raw.clone()
    } else {
        typed_to_le(t, dtype, n, path)?
    };
    if bytes.len() as u64 != expected {
        return Err(Error::malformed(
            path,
            format!(
                "tensor {name:?} holds {} bytes but its shape {:?} and type {dtype} need {expected}",
                bytes.len(),
                t.dims
            ),
        ));
    }
    Ok(TensorPayload::Dense(bytes))
}

/// Converts the typed repeated fields (float_data, int32_data, …) to dense little-endian bytes.
fn typed_to_le(t: &pb::TensorProto, dtype: DType, n: u64, path: &Path) -> Result<Bytes> {
    let name = t.name();
    let count_err = |have: usize| {
        Error::malformed(
            path,
            format!("tensor {name:?} has {have} values but its shape needs {n}"),
        )
    };
    let mut out = Vec::with_capacity(
        (n as usize)
            .saturating_mul(dtype.size().unwrap_or(1))
            .min(1 << 30),
    );
    match dtype {
        DType::F32 => {
            check_len(t.float_data.len(), n).map_err(count_err)?;
            t.float_data
                .iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
        DType::Complex64 => {
            check_len(t.float_data.len(), n * 2).map_err(count_err)?;
            t.float_data
                .iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
        DType::F64 => {
            check_len(t.double_data.len(), n).map_err(count_err)?;
            t.double_data
                .iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
        DType::Complex128 => {
            check_len(t.double_data.len(), n * 2).map_err(count_err)?;
            t.double_data
                .iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
        DType::I64 => {
            check_len(t.int64_data.len(), n).map_err(count_err)?;
            t.int64_data
                .iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
        DType::U32 => {
            check_len(t.uint64_data.len(), n).map_err(count_err)?;
            t.uint64_data
                .iter()
                .for_each(|&v| out.extend_from_slice(&(v as u32).to_le_bytes()));
        }
        DType::U64 => {
            check_len(t.uint64_data.len(), n).map_err(count_err)?;
            t.uint64_data
                .iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
        // The spec stores every narrower integer and the 16-bit floats' bit patterns in int32_data.
        DType::I32
        | DType::I16
        | DType::U16
        | DType::I8
        | DType::U8
        | DType::Bool
        | DType::F16
        | DType::BF16 => {
            check_len(t.int32_data.len(), n).map_err(count_err)?;
            let size = dtype.size().unwrap();
            for &v in &t.int32_data {
                out.extend_from_slice(&v.to_le_bytes()[..size]);
            }
        }
        _ => unreachable!("opaque types are filtered by the caller"),
    }
    Ok(Bytes::from(out))
}

fn check_len(have: usize, need: u64) -> std::result::Result<(), usize> {
    if have as u64 == need {
        Ok(())
    } else {
        Err(have)
    }
}

/// Stores `bytes` as the tensor's raw_data, clearing every other storage form.
pub fn set_raw(t: &mut pb::TensorProto, bytes: Bytes) {
    t.float_data.clear();
    t.int32_data.clear();
    t.int64_data.clear();
    t.double_data.clear();
    t.uint64_data.clear();
    t.external_data.clear();
    t.data_location = None;
    t.raw_data = Some(bytes);
}

/// A stored tensor met by [`walk`]: a TensorProto, or a SparseTensorProto just before its
/// values and indices are met as TensorProtos.
pub enum Item<'a> {
    Tensor(&'a pb::TensorProto),
    Sparse(&'a pb::SparseTensorProto),
}

/// Mutable twin of [`Item`], which also announces each graph before its contents.
pub enum ItemMut<'a> {
    Graph(&'a mut pb::GraphProto),
    Tensor(&'a mut pb::TensorProto),
    Sparse(&'a mut pb::SparseTensorProto),
}

/// Calls `f` on every TensorProto that can hold weights: initializers, sparse initializers'
/// values and indices, tensor-valued attributes (Constant nodes and others), in the main graph,
/// every nested graph and every function.
pub fn for_each_tensor(model: &pb::ModelProto, f: &mut dyn FnMut(&pb::TensorProto)) {
    walk(model, &mut |item| {
        if let Item::Tensor(t) = item {
            f(t)
        }
    });
}

/// Mutable twin of [`for_each_tensor`].
pub fn for_each_tensor_mut(model: &mut pb::ModelProto, f: &mut dyn FnMut(&mut pb::TensorProto)) {
    walk_mut(model, &mut |item| {
        if let ItemMut::Tensor(t) = item {
            f(t)
        }
    });
}

/// Visits every stored tensor in [`for_each_tensor`] order, sparse tensors announced first.
pub fn walk(model: &pb::ModelProto, f: &mut dyn FnMut(Item)) {
    fn graph(g: &pb::GraphProto, f: &mut dyn FnMut(Item)) {
        for t in &g.initializer {
            f(Item::Tensor(t));
        }
        for s in &g.sparse_initializer {
            sparse(s, f);
        }
        for n in &g.node {
            node(n, f);
        }
    }
    fn sparse(s: &pb::SparseTensorProto, f: &mut dyn FnMut(Item)) {
        f(Item::Sparse(s));
        if let Some(v) = &s.values {
            f(Item::Tensor(v));
        }
        if let Some(i) = &s.indices {
            f(Item::Tensor(i));
        }
    }
    fn node(n: &pb::NodeProto, f: &mut dyn FnMut(Item)) {
        for a in &n.attribute {
            if let Some(t) = &a.t {
                f(Item::Tensor(t));
            }
            for t in &a.tensors {
                f(Item::Tensor(t));
            }
            if let Some(s) = &a.sparse_tensor {
                sparse(s, f);
            }
            for s in &a.sparse_tensors {
                sparse(s, f);
            }
            if let Some(g) = &a.g {
                graph(g, f);
            }
            for g in &a.graphs {
                graph(g, f);
            }
        }
    }
    if let Some(g) = &model.graph {
        graph(g, f);
    }
    for func in &model.functions {
        for n in &func.node {
            node(n, f);
        }
    }
    for ti in &model.training_info {
        for g in [&ti.initialization, &ti.algorithm].into_iter().flatten() {
            graph(g, f);
        }
    }
}

/// Mutable twin of [`walk`]. A callback that rewrites a sparse tensor's values and indices
/// sees the new ones next.
pub fn walk_mut(model: &mut pb::ModelProto, f: &mut dyn FnMut(ItemMut)) {
    fn graph(g: &mut pb::GraphProto, f: &mut dyn FnMut(ItemMut)) {
        f(ItemMut::Graph(g));
        for t in &mut g.initializer {
            f(ItemMut::Tensor(t));
        }
        for s in &mut g.sparse_initializer {
            sparse(s, f);
        }
        for n in &mut g.node {
            node(n, f);
        }
    }
    fn sparse(s: &mut pb::SparseTensorProto, f: &mut dyn FnMut(ItemMut)) {
        f(ItemMut::Sparse(s));
        if let Some(v) = &mut s.values {
            f(ItemMut::Tensor(v));
        }
        if let Some(i) = &mut s.indices {
            f(ItemMut::Tensor(i));
        }
    }
    fn node(n: &mut pb::NodeProto, f: &mut dyn FnMut(ItemMut)) {
        for a in &mut n.attribute {
            if let Some(t) = &mut a.t {
                f(ItemMut::Tensor(t));
            }
            for t in &mut a.tensors {
                f(ItemMut::Tensor(t));
            }
            if let Some(s) = &mut a.sparse_tensor {
                sparse(s, f);
            }
            for s in &mut a.sparse_tensors {
                sparse(s, f);
            }
            if let Some(g) = &mut a.g {
                graph(g, f);
            }
            for g in &mut a.graphs {
                graph(g, f);
            }
        }
    }
    if let Some(g) = &mut model.graph {
        graph(g, f);
    }
    for func in &mut model.functions {
        for n in &mut func.node {
            node(n, f);
        }
    }
    for ti in &mut model.training_info {
        for g in [&mut ti.initialization, &mut ti.algorithm]
            .into_iter()
            .flatten()
        {
            graph(g, f);
        }
    }
}

/// Every graph of the model (main, nested bodies, training graphs), parents first. A callback
/// may move tensors between a graph's lists; the walk then goes on over the new lists.
pub fn for_each_graph_mut(model: &mut pb::ModelProto, f: &mut dyn FnMut(&mut pb::GraphProto)) {
    walk_mut(model, &mut |item| {
        if let ItemMut::Graph(g) = item {
            f(g)
        }
    });
}
