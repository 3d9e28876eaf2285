//! The document edits a plan makes: removed channels sliced out of weights, biases (after
//! folding), shape constants and per-channel quantization, as [`StructureEdits`].

use super::graph::ChannelId;
use super::plan::Planner;
use super::{fold, rules};
use crate::model::{ConstantEdit, DType, DimEdit, StructureEdits};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, HashSet};

impl Planner<'_> {
    /// The document edits that remove `removed` (with `folds` added to biases first).
    pub(super) fn edits(
        &self,
        removed: &HashSet<ChannelId>,
        folds: &fold::Folds,
    ) -> StructureEdits {
        let g = self.g;
        let d = &self.d;
        let mut e = StructureEdits::default();
        // Biases that receive folded constants: their new payload before any slicing.
        let mut base: HashMap<usize, Vec<u8>> = HashMap::new();
        for (&t, delta) in &folds.deltas {
            let tensor = &g.tensors[t];
            let (Some(h), Some(data)) = (tensor.handle, tensor.data.as_ref()) else {
                continue;
            };
            let scale = tensor.quant.as_ref().map(|q| q.scale.as_slice());
            if let Some(b) = fold::apply_delta(tensor.dtype, data, delta, scale) {
                base.insert(h, b);
            }
        }
        // Slices by storage: a handle, or one reader's copy of a shared handle.
        #[derive(PartialEq, Eq, PartialOrd, Ord)]
        enum Key {
            Handle(usize),
            Reader(usize, usize),
        }
        let mut per_key: BTreeMap<Key, (usize, BTreeMap<usize, Vec<usize>>)> = BTreeMap::new();
        for s in &d.slices {
            let kept = d.kept(&s.ids, removed);
            if kept.len() == s.ids.len() {
                continue;
            }
            match s.slot {
                Some(slot) => {
                    let Some(h) = g.tensors[s.tensor].handle else {
                        continue;
                    };
                    let key = if d.copied.contains(&h) {
                        Key::Reader(s.node, slot)
                    } else {
                        Key::Handle(h)
                    };
                    per_key
                        .entry(key)
                        .or_insert((s.tensor, BTreeMap::new()))
                        .1
                        .insert(s.axis, kept);
                }
                None => e.dims.push(DimEdit {
                    tensor: s.tensor,
                    name: g.tensors[s.tensor].name.clone(),
                    axis: s.axis,
                    len: kept.len() as u64,
                }),
            }
        }
        for (key, (t, axes)) in per_key {
            let tensor = &g.tensors[t];
            let (Some(mut shape), Some(data), Some(esize), Some(h)) = (
                tensor.fixed_shape(),
                tensor.data.as_ref(),
                tensor.dtype.size(),
                tensor.handle,
            ) else {
                continue; // the graph only records slices of dense, fixed-shape constants
            };
            let mut bytes = match key {
                Key::Handle(_) => base.remove(&h),
                Key::Reader(..) => base.get(&h).cloned(),
            }
            .unwrap_or_else(|| data.to_vec());
            let mut keeps = Vec::new();
            for (axis, keep) in axes {
                bytes = slice_bytes(&bytes, &shape, axis, &keep, esize);
                shape[axis] = keep.len() as u64;
                keeps.push((axis, keep));
            }
            let edit = ConstantEdit {
                dims: shape,
                data: Bytes::from(bytes),
                keeps,
            };
            match key {
                Key::Handle(h) => {
                    e.constants.insert(h, edit);
                }
                Key::Reader(node, slot) => e.copies.push(crate::model::CopyEdit {
                    node,
                    slot,
                    tensor: t,
                    name: tensor.name.clone(),
                    edit,
                }),
            }
        }
        for (h, bytes) in base {
            // Folded into but not sliced.
            if let Some(t) = g.tensors.iter().find(|t| t.handle == Some(h)) {
                e.constants.insert(
                    h,
                    ConstantEdit {
                        dims: t.fixed_shape().unwrap_or_default(),
                        data: Bytes::from(bytes),
                        keeps: Vec::new(),
                    },
                );
            }
        }
        for (ti, tr) in d.tracks.iter().enumerate() {
            let Some(tr) = tr else { continue };
            let kept = d.kept(&tr.ids, removed).len();
            if kept < tr.ids.len() && !g.tensors[ti].is_const() {
                e.dims.push(DimEdit {
                    tensor: ti,
                    name: g.tensors[ti].name.clone(),
                    axis: tr.axis,
                    len: kept as u64,
                });
            }
        }
        for &(node, out) in &d.groups {
            if let Some(tr) = &d.tracks[out] {
                let kept = d.kept(&tr.ids, removed).len();
                if kept < tr.ids.len() {
                    e.groups.push((node, kept as u64));
                }
            }
        }
        // Shape and split-size constants: every entry of one constant (per reader) at once.
        // (constant, its reader) → [(entry, new value)]
        type Entries = Vec<(usize, i64)>;
        let mut shape_edits: BTreeMap<(usize, (usize, usize)), Entries> = BTreeMap::new();
        for sc in &d.shape_consts {
            let Some(tr) = &d.tracks[sc.out] else {
                continue;
            };
            let kept = d.kept(&tr.ids, removed).len();
            if kept == tr.ids.len() {
                continue;
            }
            match sc.tensor {
                Some(t) => shape_edits
                    .entry((t, sc.reader))
                    .or_default()
                    .push((sc.position, kept as i64)),
                None => e.new_shapes.push((sc.node, sc.position, kept as i64)),
            }
        }
        for ((t, reader), entries) in shape_edits {
            let tensor = &g.tensors[t];
            let (Some(mut v), Some(h)) = (rules::const_ints(g, t), tensor.handle) else {
                continue;
            };
            for (pos, value) in entries {
                if let Some(x) = v.get_mut(pos) {
                    *x = value;
                }
            }
            let edit = ConstantEdit {
                dims: tensor.fixed_shape().unwrap_or_default(),
                data: Bytes::from(encode_ints(tensor.dtype, &v)),
                keeps: Vec::new(),
            };
            // Converters share equal shape constants (every SE block of one width): a shared
            // one gets a copy for this reader.
            let readers = g
                .nodes
                .iter()
                .flat_map(|n| n.inputs.iter().flatten())
                .filter(|&&i| g.tensors[i].handle == Some(h))
                .count();
            if readers > 1 {
                e.copies.push(crate::model::CopyEdit {
                    node: reader.0,
                    slot: reader.1,
                    tensor: t,
                    name: tensor.name.clone(),
                    edit,
                });
            } else {
                e.constants.insert(h, edit);
            }
        }
        e
    }
}

/// `data` (shape `shape`, `esize` bytes per element) keeping positions `keep` along `axis`.
fn slice_bytes(data: &[u8], shape: &[u64], axis: usize, keep: &[usize], esize: usize) -> Vec<u8> {
    let c = shape[axis] as usize;
    let inner = shape[axis + 1..].iter().product::<u64>() as usize * esize;
    let outer = shape[..axis].iter().product::<u64>() as usize;
    let mut out = Vec::with_capacity(outer * keep.len() * inner);
    for o in 0..outer {
        for &k in keep {
            let start = (o * c + k) * inner;
            out.extend_from_slice(&data[start..start + inner]);
        }
    }
    out
}

fn encode_ints(dtype: DType, v: &[i64]) -> Vec<u8> {
    match dtype {
        DType::I32 => v.iter().flat_map(|&x| (x as i32).to_le_bytes()).collect(),
        _ => v.iter().flat_map(|&x| x.to_le_bytes()).collect(),
    }
}
