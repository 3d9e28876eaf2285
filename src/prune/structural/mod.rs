//! Structural pruning: remove whole channels (conv filters, dense neurons) and rewire every
//! layer that depends on them, so the written model has smaller tensors and fewer MACs.
//!
//! Three steps, each its own module:
//! 1. [`rules`] builds the channel dependency graph ([`graph::DepGraph`]): which tensors
//!    slice along which axis when a channel goes, which channels are coupled, and where
//!    tracking stops (boundaries keep their channels);
//! 2. [`importance`] scores every coupled group of channels;
//! 3. this module picks the channels to remove (per layer or globally, to a ratio or to a
//!    MACs / parameter target) and turns the choice into [`StructureEdits`], which the
//!    document applies.

mod fold;
mod graph;
mod importance;
mod rules;

pub use graph::Boundary;
pub use importance::Importance;

use crate::document::Document;
use crate::error::{Error, Result};
use crate::model::stats;
use crate::model::{ConstantEdit, DType, DimEdit, FormatInfo, Graph, StructureEdits};
use bytes::Bytes;
use graph::{ChannelId, DepGraph, Role};
use regex::Regex;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

/// How much to remove.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum Amount {
    /// Remove this fraction of the prunable channels.
    Ratio(f64),
    /// Remove channels until the model's MACs are at most this fraction of the original's.
    TargetMacs(f64),
    /// The same for parameters.
    TargetParams(f64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelScope {
    /// Every group of coupled layers loses the ratio of its channels.
    Layer,
    /// One ranking over all groups (scores normalized per layer), capped per group.
    Global,
}

impl FromStr for ChannelScope {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "layer" => Ok(ChannelScope::Layer),
            "global" => Ok(ChannelScope::Global),
            _ => Err(format!(
                "unknown scope {s:?} for channel pruning: expected layer or global"
            )),
        }
    }
}

impl fmt::Display for ChannelScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChannelScope::Layer => "layer",
            ChannelScope::Global => "global",
        })
    }
}

/// A per-layer channel ratio from the config file (`[[layer]] channels = R`).
#[derive(Debug, Clone)]
pub struct ChannelRule {
    pub source: String,
    pub regex: Regex,
    pub ratio: f64,
}

pub const DEFAULT_MAX_LAYER_RATIO: f64 = 0.9;

#[derive(Debug, Clone)]
pub struct ChannelOptions {
    pub amount: Amount,
    pub importance: Importance,
    pub scope: ChannelScope,
    /// Kept channel counts are multiples of this (when a group has at least this many).
    pub round_to: usize,
    /// With `--scope global`: no group loses more than this fraction of its channels.
    pub max_layer_ratio: f64,
    /// Layers (node or weight names) whose output channels are kept.
    pub exclude: Vec<Regex>,
    pub rules: Vec<ChannelRule>,
    /// Fold the constant that removed channels still output into the consumers' biases.
    pub fold: bool,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        ChannelOptions {
            amount: Amount::Ratio(0.0),
            importance: Importance::L1,
            scope: ChannelScope::Layer,
            round_to: 1,
            max_layer_ratio: DEFAULT_MAX_LAYER_RATIO,
            exclude: Vec::new(),
            rules: Vec::new(),
            fold: true,
        }
    }
}

impl ChannelOptions {
    pub fn validate(&self) -> Result<()> {
        let usage = |m: String| Err(Error::Usage(m));
        match self.amount {
            Amount::Ratio(r) if !(0.0..1.0).contains(&r) => {
                return usage(format!("--channels {r} is outside [0, 1)"))
            }
            Amount::TargetMacs(f) | Amount::TargetParams(f) if !(f > 0.0 && f <= 1.0) => {
                let flag = if matches!(self.amount, Amount::TargetMacs(_)) {
                    "--target-macs"
                } else {
                    "--target-params"
                };
                return usage(format!(
                    "{flag} {f} is outside (0, 1]: it is the fraction of the original to keep"
                ));
            }
            _ => {}
        }
        if self.round_to == 0 {
            return usage("--round-to must be at least 1".into());
        }
        if !(self.max_layer_ratio > 0.0 && self.max_layer_ratio < 1.0) {
            return usage(format!(
                "--max-layer-ratio {} is outside (0, 1)",
                self.max_layer_ratio
            ));
        }
        for r in &self.rules {
            if !(0.0..1.0).contains(&r.ratio) {
                return usage(format!(
                    "{}: channels {} is outside [0, 1)",
                    r.source, r.ratio
                ));
            }
        }
        Ok(())
    }
}

/// One group of coupled layers and what happened to its channels.
#[derive(Debug, Clone, Serialize)]
pub struct GroupResult {
    /// The producing layers (more than one when a residual Add or a Mul couples them).
    pub layers: Vec<String>,
    pub channels: usize,
    pub removed: usize,
    pub kept: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChannelCounts {
    /// Output channels of every weight-bearing layer (coupled channels counted once).
    pub total: usize,
    /// Those pare may remove (not pinned by a boundary, an output or --exclude).
    pub prunable: usize,
    pub removed: usize,
    pub prunable_fraction: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChannelReport {
    pub amount: Amount,
    pub importance: Importance,
    pub scope: ChannelScope,
    pub round_to: usize,
    /// The ratio applied (equal to `--channels`, or found for a target).
    pub ratio: f64,
    pub channels: ChannelCounts,
    pub params_before: u64,
    pub params_after: u64,
    pub macs_before: u64,
    pub macs_after: u64,
    /// Removed channels whose constant output was folded into a consumer's bias, and those
    /// whose constant could not be (no bias to fold into, or an op pare cannot evaluate).
    pub folded: usize,
    pub not_folded: usize,
    pub groups: Vec<GroupResult>,
    /// Where channel tracking stopped, and why (channels reaching them were kept).
    pub boundaries: Vec<Boundary>,
}

/// A group of producers coupled through shared channels.
struct Cluster {
    producers: Vec<usize>,
    /// Unpinned roots, the prunable channels.
    roots: Vec<ChannelId>,
    channels: usize,
    ratio: Option<(f64, String)>,
}

/// What the plan needs repeatedly: the graph, the choice space and the costs.
struct Planner<'a> {
    g: &'a Graph,
    d: DepGraph,
    clusters: Vec<Cluster>,
    scores: HashMap<ChannelId, f64>,
    /// Per constant (handle): (numel, is a parameter, [(axis, len, slice record)]).
    costs: Vec<Cost>,
    params_before: u64,
    macs_before: u64,
    opts: &'a ChannelOptions,
}

struct Cost {
    numel: u64,
    param: bool,
    macs: u64,
    axes: Vec<(u64, usize)>,
}

fn onnx_opset(info: &FormatInfo) -> i64 {
    match info {
        FormatInfo::Onnx { opsets, .. } => opsets
            .iter()
            .find(|(d, _)| d.is_empty() || d == "ai.onnx")
            .map_or(1, |(_, v)| *v),
        _ => 0,
    }
}

/// Concrete shapes of the main graph's values (dynamic dimensions as 1): declared, else
/// inferred by tract (ONNX files rarely declare intermediate shapes).
fn value_shapes(g: &Graph, inferred: &HashMap<String, Vec<u64>>) -> Vec<Option<Vec<u64>>> {
    g.tensors
        .iter()
        .map(|t| {
            if let Some(s) = t.fixed_shape() {
                return Some(s);
            }
            if let Some(s) = inferred.get(&t.name) {
                return Some(s.clone());
            }
            t.shape
                .as_ref()
                .map(|s| s.iter().map(|d| d.fixed().unwrap_or(1)).collect())
        })
        .collect()
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

impl<'a> Planner<'a> {
    fn new(
        doc: &Document,
        model: &'a crate::model::Model,
        opts: &'a ChannelOptions,
    ) -> Result<Self> {
        let g = model.main();
        let inferred = match doc {
            Document::Onnx(dd) => crate::verify::onnx_value_shapes(dd),
            Document::Tflite(_) => HashMap::new(),
        };
        let shapes = value_shapes(g, &inferred);
        let mut nested_names = HashSet::new();
        let mut nested_handles = HashSet::new();
        for sub in &model.graphs[1..] {
            for n in &sub.nodes {
                for &t in n.inputs.iter().flatten() {
                    nested_names.insert(sub.tensors[t].name.clone());
                    if let Some(h) = sub.tensors[t].handle {
                        nested_handles.insert(h);
                    }
                }
            }
        }
        let mut d = rules::build(
            g,
            &shapes,
            model.format,
            onnx_opset(&model.info),
            &nested_names,
            &nested_handles,
        );

        // Names a producer answers to (for --exclude and config rules): its node, its weight.
        let names = |d: &DepGraph, p: usize| -> Vec<String> {
            let node = d.producers[p].node;
            let mut v = vec![g.nodes[node].name.clone()];
            for s in d
                .slices
                .iter()
                .filter(|s| s.node == node && s.role == Role::Filters)
            {
                v.push(g.tensors[s.tensor].name.clone());
            }
            v
        };
        for p in 0..d.producers.len() {
            let n = names(&d, p);
            if let Some(r) = opts
                .exclude
                .iter()
                .find(|r| n.iter().any(|x| r.is_match(x)))
            {
                let ids = d.producers[p].ids.clone();
                if ids.iter().any(|&i| !d.is_pinned(i)) {
                    d.boundaries.push(Boundary {
                        node: n[0].clone(),
                        op: g.nodes[d.producers[p].node].op.clone(),
                        reason: format!("excluded by {:?}", r.as_str()),
                    });
                }
                d.pin_all(&ids);
            }
        }

        let mut scores = importance::scores(g, &d, opts.importance);
        if opts.importance == Importance::Bn && scores.is_empty() {
            return Err(Error::unsupported(
                doc.path(),
                "--importance bn needs explicit batch-norm layers, and this model has none (exporters usually fold batch-norm into the convolutions); use l1, l2 or fpgm",
            ));
        }
        // Channels without a score (no batch-norm with `bn`, an unreadable weight type) stay.
        for r in 0..d.channel_count() as ChannelId {
            if d.find(r) == r && !scores.contains_key(&r) {
                d.pin(r);
            }
        }
        scores.retain(|&r, _| !d.is_pinned(r));

        // Clusters: producers sharing a root are one group.
        let np = d.producers.len();
        let mut parent: Vec<usize> = (0..np).collect();
        fn root(p: &mut [usize], mut i: usize) -> usize {
            while p[i] != i {
                p[i] = p[p[i]];
                i = p[i];
            }
            i
        }
        let mut owner: HashMap<ChannelId, usize> = HashMap::new();
        for p in 0..np {
            for &i in &d.producers[p].ids {
                let r = d.find(i);
                match owner.get(&r) {
                    Some(&o) => {
                        let (a, b) = (root(&mut parent, o), root(&mut parent, p));
                        parent[b] = a;
                    }
                    None => {
                        owner.insert(r, p);
                    }
                }
            }
        }
        let mut by_cluster: BTreeMap<usize, Cluster> = BTreeMap::new();
        let mut all_roots: BTreeMap<usize, HashSet<ChannelId>> = BTreeMap::new();
        for p in 0..np {
            let c = root(&mut parent, p);
            by_cluster
                .entry(c)
                .or_insert_with(|| Cluster {
                    producers: Vec::new(),
                    roots: Vec::new(),
                    channels: 0,
                    ratio: None,
                })
                .producers
                .push(p);
            let set = all_roots.entry(c).or_default();
            for &i in &d.producers[p].ids {
                set.insert(d.find(i));
            }
        }
        let mut clusters = Vec::new();
        for (c, mut cl) in by_cluster {
            let set = &all_roots[&c];
            cl.channels = set.len();
            let mut roots: Vec<ChannelId> =
                set.iter().copied().filter(|r| !d.is_pinned(*r)).collect();
            roots.sort_unstable();
            cl.roots = roots;
            for &p in &cl.producers {
                let n = names(&d, p);
                if let Some(r) = opts
                    .rules
                    .iter()
                    .find(|r| n.iter().any(|x| r.regex.is_match(x)))
                {
                    cl.ratio = Some((r.ratio, r.source.clone()));
                    break;
                }
            }
            clusters.push(cl);
        }

        // Costs: every sliced constant, its parameters and the MACs of the layer it feeds.
        let (layers, totals) = stats::collect(&model.graphs, &inferred);
        let mut layer_macs: HashMap<&str, u64> = HashMap::new();
        for l in layers.iter().filter(|l| l.graph == 0) {
            *layer_macs.entry(l.weight.as_str()).or_default() += l.macs.unwrap_or(0);
        }
        let mut by_handle: BTreeMap<usize, Cost> = BTreeMap::new();
        for (si, s) in d.slices.iter().enumerate() {
            if s.slot.is_none() {
                continue;
            }
            let t = &g.tensors[s.tensor];
            let Some(h) = t.handle else { continue };
            let cost = by_handle.entry(h).or_insert_with(|| Cost {
                numel: t.numel().unwrap_or(0),
                param: stats::is_parameter(t),
                macs: layer_macs.get(t.name.as_str()).copied().unwrap_or(0),
                axes: Vec::new(),
            });
            if !cost.axes.iter().any(|&(a, _)| a == s.axis as u64) {
                cost.axes.push((s.axis as u64, si));
            }
        }
        Ok(Planner {
            g,
            d,
            clusters,
            scores,
            costs: by_handle.into_values().collect(),
            params_before: totals.params,
            macs_before: totals.macs,
            opts,
        })
    }

    fn prunable(&self) -> usize {
        self.clusters.iter().map(|c| c.roots.len()).sum()
    }

    /// Kept count after removing `k` of `n` channels, rounded up to a multiple of
    /// `--round-to`, never below one.
    fn keep_count(&self, n_total: usize, n_free: usize, k: usize) -> usize {
        let pinned = n_total - n_free;
        let mut keep = n_total - k.min(n_free);
        let r = self.opts.round_to;
        if r > 1 && n_total >= r {
            keep = keep.div_ceil(r) * r;
        }
        keep.clamp(pinned.max(1), n_total)
    }

    /// The channels (group roots) removed at `ratio`.
    fn select(&self, ratio: f64) -> HashSet<ChannelId> {
        let mut removed = HashSet::new();
        let by_score = |c: &Cluster| -> Vec<ChannelId> {
            let mut v = c.roots.clone();
            v.sort_by(|a, b| self.scores[a].total_cmp(&self.scores[b]).then(a.cmp(b)));
            v
        };
        match self.opts.scope {
            ChannelScope::Layer => {
                for c in &self.clusters {
                    let r = c.ratio.as_ref().map_or(ratio, |x| x.0);
                    let k = (r * c.roots.len() as f64 + 1e-9).floor() as usize;
                    let keep = self.keep_count(c.channels, c.roots.len(), k);
                    removed.extend(by_score(c).into_iter().take(c.channels - keep));
                }
            }
            ChannelScope::Global => {
                // Normalized within each cluster, so that layers of different scale compete.
                let mut all: Vec<(f64, usize, ChannelId)> = Vec::new();
                for (ci, c) in self.clusters.iter().enumerate() {
                    if c.ratio.is_some() {
                        continue;
                    }
                    let mean = c.roots.iter().map(|r| self.scores[r]).sum::<f64>()
                        / c.roots.len().max(1) as f64;
                    for &r in &c.roots {
                        let s = if mean > 0.0 {
                            self.scores[&r] / mean
                        } else {
                            0.0
                        };
                        all.push((s, ci, r));
                    }
                }
                all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.2.cmp(&b.2)));
                let free: usize = all.len();
                let k = (ratio * free as f64 + 1e-9).floor() as usize;
                let mut taken = vec![0usize; self.clusters.len()];
                let mut count = 0;
                for &(_, ci, _) in &all {
                    if count >= k {
                        break;
                    }
                    let c = &self.clusters[ci];
                    let cap = ((self.opts.max_layer_ratio * c.channels as f64).floor() as usize)
                        .min(c.channels.saturating_sub(1));
                    if taken[ci] < cap {
                        taken[ci] += 1;
                        count += 1;
                    }
                }
                for (ci, c) in self.clusters.iter().enumerate() {
                    let k = match &c.ratio {
                        Some((r, _)) => (r * c.roots.len() as f64 + 1e-9).floor() as usize,
                        None => taken[ci],
                    };
                    let keep = self.keep_count(c.channels, c.roots.len(), k);
                    removed.extend(by_score(c).into_iter().take(c.channels - keep));
                }
            }
        }
        removed
    }

    /// Parameters and MACs after removing `removed`.
    fn estimate(&self, removed: &HashSet<ChannelId>) -> (u64, u64) {
        let mut params = self.params_before;
        let mut macs = self.macs_before;
        for c in &self.costs {
            let mut frac = 1.0;
            for &(_, si) in &c.axes {
                let s = &self.d.slices[si];
                frac *= self.d.kept(&s.ids, removed).len() as f64 / s.ids.len().max(1) as f64;
            }
            if c.param {
                params -= c.numel - (c.numel as f64 * frac).round() as u64;
            }
            macs -= c.macs - (c.macs as f64 * frac).round() as u64;
        }
        (params, macs)
    }

    /// The document edits that remove `removed` (with `folds` added to biases first).
    fn edits(&self, removed: &HashSet<ChannelId>, folds: &fold::Folds) -> StructureEdits {
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

    fn report(
        &self,
        ratio: f64,
        removed: &HashSet<ChannelId>,
        folds: &fold::Folds,
    ) -> ChannelReport {
        let (params_after, macs_after) = self.estimate(removed);
        let total: usize = self.clusters.iter().map(|c| c.channels).sum();
        let prunable = self.prunable();
        let groups = self
            .clusters
            .iter()
            .filter(|c| !c.roots.is_empty())
            .map(|c| {
                let r = c.roots.iter().filter(|r| removed.contains(r)).count();
                GroupResult {
                    layers: c
                        .producers
                        .iter()
                        .map(|&p| self.g.nodes[self.d.producers[p].node].name.clone())
                        .collect(),
                    channels: c.channels,
                    removed: r,
                    kept: c.channels - r,
                    rule: c.ratio.as_ref().map(|x| x.1.clone()),
                }
            })
            .collect();
        ChannelReport {
            amount: self.opts.amount,
            importance: self.opts.importance,
            scope: self.opts.scope,
            round_to: self.opts.round_to,
            ratio,
            channels: ChannelCounts {
                total,
                prunable,
                removed: removed.len(),
                prunable_fraction: if total == 0 {
                    0.0
                } else {
                    prunable as f64 / total as f64
                },
            },
            params_before: self.params_before,
            params_after,
            macs_before: self.macs_before,
            macs_after,
            folded: folds.folded,
            not_folded: folds.dropped,
            groups,
            boundaries: self.d.boundaries.clone(),
        }
    }
}

/// Removes channels from `doc` in memory: the edited document and the report.
pub fn prune_channels(doc: &Document, opts: &ChannelOptions) -> Result<(Document, ChannelReport)> {
    opts.validate()?;
    let model = doc.to_model()?;
    let p = Planner::new(doc, &model, opts)?;
    if p.prunable() == 0 {
        let why: Vec<String> =
            p.d.boundaries
                .iter()
                .take(6)
                .map(|b| format!("{} ({}): {}", b.node, b.op, b.reason))
                .collect();
        return Err(Error::unsupported(
            doc.path(),
            format!(
                "no prunable channels: {}{}",
                if why.is_empty() {
                    "the model has no Conv/Gemm/MatMul/FULLY_CONNECTED layer with constant weights"
                        .to_string()
                } else {
                    format!("every channel reaches a boundary: {}", why.join("; "))
                },
                if p.d.boundaries.len() > 6 {
                    "; …"
                } else {
                    ""
                }
            ),
        ));
    }
    let ratio = match opts.amount {
        Amount::Ratio(r) => r,
        Amount::TargetMacs(f) | Amount::TargetParams(f) => {
            let macs = matches!(opts.amount, Amount::TargetMacs(_));
            let (before, what) = if macs {
                (p.macs_before, "MACs")
            } else {
                (p.params_before, "parameters")
            };
            let reached = |r: f64| -> f64 {
                let (pa, ma) = p.estimate(&p.select(r));
                (if macs { ma } else { pa }) as f64 / before.max(1) as f64
            };
            let max = 0.999;
            let best = reached(max);
            if best > f + 1e-9 {
                return Err(Error::unsupported(
                    doc.path(),
                    format!(
                        "cannot reach {:.1}% of the original {what}: removing every channel the scope allows ({} of {} channels are prunable{}) leaves {:.1}%",
                        100.0 * f,
                        p.prunable(),
                        p.clusters.iter().map(|c| c.channels).sum::<usize>(),
                        if opts.scope == ChannelScope::Global {
                            format!(", at most {:.0}% per layer", 100.0 * opts.max_layer_ratio)
                        } else {
                            String::new()
                        },
                        100.0 * best
                    ),
                ));
            }
            // The smallest ratio that reaches the target (the cost falls as the ratio rises).
            let (mut lo, mut hi) = (0.0, max);
            for _ in 0..40 {
                let mid = 0.5 * (lo + hi);
                if reached(mid) <= f + 1e-9 {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            hi
        }
    };
    let removed = p.select(ratio);
    let folds = if opts.fold {
        fold::fold(p.g, &p.d, &removed)
    } else {
        fold::Folds {
            deltas: HashMap::new(),
            folded: 0,
            dropped: 0,
        }
    };
    let report = p.report(ratio, &removed, &folds);
    if removed.is_empty() {
        return Ok((doc.clone(), report));
    }
    let edits = p.edits(&removed, &folds);
    let edited = doc.with_structure(&edits);
    let mut report = report;
    if !edits.copies.is_empty() {
        // Copies of shared constants add parameters the plan's estimate does not see:
        // count the result.
        let inferred = match &edited {
            Document::Onnx(d) => crate::verify::onnx_value_shapes(d),
            Document::Tflite(_) => HashMap::new(),
        };
        let (_, t) = stats::collect(&edited.to_model()?.graphs, &inferred);
        report.params_after = t.params;
        report.macs_after = t.macs;
    }
    Ok((edited, report))
}

/// The human-readable summary of a channel prune.
pub fn render(r: &ChannelReport, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let pct = |a: u64, b: u64| {
        if b == 0 {
            0.0
        } else {
            100.0 * a as f64 / b as f64
        }
    };
    let width = crate::inspect::name_width(
        r.groups
            .iter()
            .map(|g| g.layers.first().map_or("", String::as_str)),
        48,
    );
    writeln!(
        out,
        "{:<width$}  {:>8}  {:>8}  {:>8}",
        "layer group", "channels", "kept", "removed"
    )?;
    for g in &r.groups {
        let mut name =
            crate::inspect::ellipsize(g.layers.first().map_or("", String::as_str), width);
        if g.layers.len() > 1 {
            name = format!("{name} +{}", g.layers.len() - 1);
        }
        writeln!(
            out,
            "{:<width$}  {:>8}  {:>8}  {:>8}",
            name, g.channels, g.kept, g.removed
        )?;
    }
    writeln!(
        out,
        "channels: {} of {} removed ({} prunable, {:.1}% of all; ratio {:.4}, importance {}, scope {})",
        r.channels.removed,
        r.channels.total,
        r.channels.prunable,
        100.0 * r.channels.prunable_fraction,
        r.ratio,
        r.importance,
        r.scope
    )?;
    writeln!(
        out,
        "params: {} -> {} ({:.1}%); MACs: {} -> {} ({:.1}%)",
        r.params_before,
        r.params_after,
        pct(r.params_after, r.params_before),
        r.macs_before,
        r.macs_after,
        pct(r.macs_after, r.macs_before)
    )?;
    if r.folded + r.not_folded > 0 {
        writeln!(
            out,
            "folded the constant output of {} removed channels into the next layer's bias{}",
            r.folded,
            if r.not_folded > 0 {
                format!(" ({} could not be folded)", r.not_folded)
            } else {
                String::new()
            }
        )?;
    }
    if !r.boundaries.is_empty() {
        writeln!(
            out,
            "boundaries (channels reaching them are kept): {}",
            r.boundaries.len()
        )?;
        for b in r.boundaries.iter().take(10) {
            writeln!(out, "  {} ({}): {}", b.node, b.op, b.reason)?;
        }
        if r.boundaries.len() > 10 {
            writeln!(
                out,
                "  … {} more in the JSON report",
                r.boundaries.len() - 10
            )?;
        }
    }
    Ok(())
}
