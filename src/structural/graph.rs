//! The channel dependency graph, in the spirit of Torch-Pruning's DepGraph (Fang et al.,
//! CVPR 2023), built on the format-neutral [`Graph`].
//!
//! Every channel a weight-bearing op produces gets an id. One forward pass over the nodes (in
//! execution order) gives each activation a *track*: the axis that carries channels and, for
//! every position along it, the id of the channel there. Ops move tracks along by one rule
//! each (the `rules` module): pass-through ops copy the track, Concat concatenates tracks,
//! Flatten repeats each id over the spatial block it owns, Transpose moves the axis, and ops
//! that combine activations elementwise (residual Add, squeeze-and-excitation Mul) *couple*
//! ids: a union-find merges them, so that coupled channels are scored and removed together.
//!
//! Every tensor whose size depends on a channel gets a [`Slice`] record (producer filters,
//! biases, batch-norm vectors, consumer weights' input axis, per-channel constants and
//! quantization parameters). Ids that reach something pare cannot reason about (an unknown
//! op, a graph output, a shared constant used elsewhere) are *pinned*: their whole group keeps
//! its channels. Pinning is the only way uncertainty is resolved; pare never guesses.

use crate::model::{Graph, TensorId};
use serde::Serialize;
use std::collections::HashMap;

pub type ChannelId = u32;

/// Channels along one axis, and in the whole model, beyond which a dimension is treated as
/// damage rather than a model (the widest real layers have tens of thousands).
pub const MAX_CHANNELS: usize = 1 << 24;
const MAX_TOTAL_CHANNELS: usize = 1 << 27;

/// Where the channels of an activation are, position by position.
#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    pub axis: usize,
    pub ids: Vec<ChannelId>,
}

/// Why a tensor is sliced: decides how it counts for importance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A producer's filters (output axis of a weight, or a depthwise kernel): scored.
    Filters,
    /// A batch-norm scale (|gamma| is the `bn` importance).
    BnScale,
    /// Any other coupled tensor: biases, normalization vectors, consumers' input axis,
    /// per-channel constants and quantization parameters.
    Coupled,
    /// Consumer weights along their input axis (a folded constant channel lands here).
    Inputs,
}

/// "Tensor `tensor`, read by input `slot` of node `node`, has position p of `axis` holding
/// channel `ids[p]`."
#[derive(Debug, Clone)]
pub struct Slice {
    pub tensor: TensorId,
    pub axis: usize,
    pub ids: Vec<ChannelId>,
    pub role: Role,
    pub node: usize,
    /// `None` for a derived weight view (the output of a DequantizeLinear / Cast feeding a
    /// weight input): only its declared shape changes.
    pub slot: Option<usize>,
}

/// A weight-bearing op whose output channels are prunable.
#[derive(Debug, Clone)]
pub struct Producer {
    pub node: usize,
    pub ids: Vec<ChannelId>,
}

/// A constant holding a shape that hard-codes a channel count (Reshape target): entry
/// `position` must become the kept length of `out`'s track.
#[derive(Debug, Clone)]
pub struct ShapeConst {
    pub node: usize,
    /// The shape input (ONNX Reshape input 1, TFLite RESHAPE input 1), if constant.
    pub tensor: Option<TensorId>,
    /// The node and input slot that read `tensor` (a copy is made for it when the constant
    /// is shared).
    pub reader: (usize, usize),
    pub position: usize,
    pub out: TensorId,
}

/// An op where channel tracking stopped: the channels that reach it are kept.
#[derive(Debug, Clone, Serialize)]
pub struct Boundary {
    pub node: String,
    pub op: String,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct DepGraph {
    pub tracks: Vec<Option<Track>>,
    parent: Vec<ChannelId>,
    pinned: Vec<bool>,
    pub slices: Vec<Slice>,
    pub producers: Vec<Producer>,
    /// ONNX depthwise Conv nodes whose `group` follows the kept channel count of `tensor`.
    pub groups: Vec<(usize, TensorId)>,
    pub shape_consts: Vec<ShapeConst>,
    pub boundaries: Vec<Boundary>,
    /// Stored constants read by several ops that slice them differently (or not at all):
    /// each slicing reader gets its own copy (by storage handle).
    pub copied: std::collections::HashSet<usize>,
}

impl DepGraph {
    pub fn new(tensors: usize) -> Self {
        DepGraph {
            tracks: vec![None; tensors],
            ..Default::default()
        }
    }

    /// `n` new channel ids; pinned ones can never be removed. `None` for an implausible count
    /// (a damaged file's dimension), so that no allocation follows a declared size blindly.
    pub fn fresh(&mut self, n: usize, pinned: bool) -> Option<Vec<ChannelId>> {
        if n > MAX_CHANNELS || self.parent.len() + n > MAX_TOTAL_CHANNELS {
            return None;
        }
        let start = self.parent.len() as ChannelId;
        for i in 0..n as ChannelId {
            self.parent.push(start + i);
            self.pinned.push(pinned);
        }
        Some((start..start + n as ChannelId).collect())
    }

    pub fn find(&self, mut id: ChannelId) -> ChannelId {
        while self.parent[id as usize] != id {
            id = self.parent[id as usize];
        }
        id
    }

    fn find_compress(&mut self, id: ChannelId) -> ChannelId {
        let root = self.find(id);
        let mut cur = id;
        while self.parent[cur as usize] != root {
            let next = self.parent[cur as usize];
            self.parent[cur as usize] = root;
            cur = next;
        }
        root
    }

    /// Couples two channels: removing one removes the other.
    pub fn union(&mut self, a: ChannelId, b: ChannelId) {
        let (ra, rb) = (self.find_compress(a), self.find_compress(b));
        if ra != rb {
            let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
            self.parent[hi as usize] = lo;
            let p = self.pinned[hi as usize] || self.pinned[lo as usize];
            self.pinned[lo as usize] = p;
        }
    }

    pub fn pin(&mut self, id: ChannelId) {
        let r = self.find_compress(id);
        self.pinned[r as usize] = true;
    }

    pub fn pin_all(&mut self, ids: &[ChannelId]) {
        for &i in ids {
            self.pin(i);
        }
    }

    pub fn is_pinned(&self, id: ChannelId) -> bool {
        self.pinned[self.find(id) as usize]
    }

    pub fn channel_count(&self) -> usize {
        self.parent.len()
    }

    /// Pins the channels of `t`'s track, if it has one; true when something prunable was
    /// pinned (worth reporting as a boundary).
    pub fn pin_track(&mut self, t: TensorId) -> bool {
        let Some(track) = self.tracks[t].clone() else {
            return false;
        };
        let was_free = track.ids.iter().any(|&i| !self.is_pinned(i));
        self.pin_all(&track.ids);
        was_free
    }

    /// Pins every tracked input of `node` and records it as a boundary if that kept any
    /// channel that could otherwise have been removed.
    pub fn boundary(&mut self, g: &Graph, node: usize, reason: impl Into<String>) {
        let n = &g.nodes[node];
        let mut hit = false;
        for t in n.inputs.iter().flatten() {
            hit |= self.pin_track(*t);
        }
        if hit {
            self.boundaries.push(Boundary {
                node: n.name.clone(),
                op: n.op.clone(),
                reason: reason.into(),
            });
        }
    }

    /// Pins the channels of constants that cannot be sliced consistently: a stored tensor
    /// (by storage handle) must be read only through slice records that agree on the axis
    /// and on the coupled channel at every position.
    pub fn check_constants(
        &mut self,
        g: &Graph,
        nested_uses: &std::collections::HashSet<String>,
        nested_handles: &std::collections::HashSet<usize>,
    ) {
        // (node, slot) pairs reading each handle.
        let mut uses: HashMap<usize, Vec<(usize, usize)>> = HashMap::new();
        for (ni, n) in g.nodes.iter().enumerate() {
            for (slot, t) in n.inputs.iter().enumerate() {
                if let Some(t) = t {
                    if let Some(h) = g.tensors[*t].handle {
                        uses.entry(h).or_default().push((ni, slot));
                    }
                }
            }
        }
        // Records by (handle, axis): a weight may be sliced along two axes (a conv that both
        // consumes and produces channels); along each, every reader must agree.
        let mut by_handle: HashMap<(usize, usize), Vec<usize>> = HashMap::new();
        for (i, s) in self.slices.iter().enumerate() {
            if s.slot.is_some() {
                if let Some(h) = g.tensors[s.tensor].handle {
                    by_handle.entry((h, s.axis)).or_default().push(i);
                }
            }
        }
        let mut to_pin: Vec<ChannelId> = Vec::new();
        let mut keys: Vec<&(usize, usize)> = by_handle.keys().collect();
        keys.sort();
        for key in keys {
            let idx = &by_handle[key];
            let roots =
                |s: &Slice| -> Vec<ChannelId> { s.ids.iter().map(|&i| self.find(i)).collect() };
            let r0 = roots(&self.slices[idx[0]]);
            let agree = idx.iter().all(|&i| roots(&self.slices[i]) == r0);
            let covered: std::collections::HashSet<(usize, usize)> = idx
                .iter()
                .map(|&i| (self.slices[i].node, self.slices[i].slot.expect("constant")))
                .collect();
            let all_covered = uses
                .get(&key.0)
                .is_none_or(|u| u.iter().all(|p| covered.contains(p)));
            let nested = nested_handles.contains(&key.0)
                || idx
                    .iter()
                    .any(|&i| nested_uses.contains(&g.tensors[self.slices[i].tensor].name));
            if nested {
                for &i in idx {
                    to_pin.extend(self.slices[i].ids.iter().copied());
                }
                let s = &self.slices[idx[0]];
                let n = &g.nodes[s.node];
                self.boundaries.push(Boundary {
                    node: n.name.clone(),
                    op: n.op.clone(),
                    reason: format!(
                        "constant {:?} is shared with a nested graph",
                        g.tensors[s.tensor].name
                    ),
                });
            } else if !agree || !all_covered {
                // Shared by readers that slice it differently, or not at all (exporters merge
                // equal constants, e.g. the zero biases of a randomly initialized network):
                // every slicing reader gets its own copy. One reader slicing one axis two
                // ways would need two copies at once: that reader keeps its channels.
                let mut per_reader: HashMap<(usize, usize), Vec<ChannelId>> = HashMap::new();
                for &i in idx {
                    let s = &self.slices[i];
                    let r = roots(s);
                    match per_reader.get(&(s.node, s.slot.expect("constant"))) {
                        Some(prev) if *prev != r => to_pin.extend(s.ids.iter().copied()),
                        _ => {
                            per_reader.insert((s.node, s.slot.expect("constant")), r);
                        }
                    }
                }
                self.copied.insert(key.0);
            }
        }
        self.pin_all(&to_pin);
    }

    /// Kept positions of a channel list, given the set of removed roots.
    pub fn kept(
        &self,
        ids: &[ChannelId],
        removed: &std::collections::HashSet<ChannelId>,
    ) -> Vec<usize> {
        ids.iter()
            .enumerate()
            .filter(|(_, &i)| !removed.contains(&self.find(i)))
            .map(|(p, _)| p)
            .collect()
    }
}
