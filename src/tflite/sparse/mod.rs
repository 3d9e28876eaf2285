//! TFLite sparse weights: `SparsityParameters` read into the neutral [`Layout`], densified for
//! the model view, and the storage pass that writes weights sparse feeding `DENSIFY` ops, as
//! TensorFlow's converter does (`tf.lite.Optimize.EXPERIMENTAL_SPARSITY`), or all dense.
//! This file reads and describes layouts; `storage` is the pass that writes them.

mod storage;

use super::{dtype_from_tflite, TfliteDocument};
use crate::error::{Error, Result};
use crate::sparse::{self, Layout, Level};
use crate::tflite_gen::tflite as fb;
use bytes::Bytes;
use std::collections::HashMap;

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
