//! The plan: which channels go (per group or globally, to a ratio), what that costs, and the
//! document edits that remove them.

use super::graph::{ChannelId, DepGraph, Role};
use super::{fold, importance, rules};
use super::{
    Boundary, ChannelCounts, ChannelOptions, ChannelReport, ChannelScope, GroupResult, Importance,
};
use crate::document::Document;
use crate::error::{Error, Result};
use crate::model::stats;
use crate::model::{FormatInfo, Graph};
use std::collections::{BTreeMap, HashMap, HashSet};

/// A group of producers coupled through shared channels.
pub(super) struct Cluster {
    pub(super) producers: Vec<usize>,
    /// Unpinned roots, the prunable channels.
    pub(super) roots: Vec<ChannelId>,
    pub(super) channels: usize,
    pub(super) ratio: Option<(f64, String)>,
}

/// What the plan needs repeatedly: the graph, the choice space and the costs.
pub(super) struct Planner<'a> {
    pub(super) g: &'a Graph,
    pub(super) d: DepGraph,
    pub(super) clusters: Vec<Cluster>,
    pub(super) scores: HashMap<ChannelId, f64>,
    /// Per constant (handle): (numel, is a parameter, [(axis, len, slice record)]).
    pub(super) costs: Vec<Cost>,
    pub(super) params_before: u64,
    pub(super) macs_before: u64,
    pub(super) opts: &'a ChannelOptions,
}

pub(super) struct Cost {
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

impl<'a> Planner<'a> {
    pub(super) fn new(
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

        let mut scores = importance::scores(g, &d, opts.importance, opts.energy.as_deref());
        if opts.importance == Importance::Bn && scores.is_empty() {
            return Err(Error::unsupported(
                doc.path(),
                "--importance bn needs explicit batch-norm layers, and this model has none (exporters usually fold batch-norm into the convolutions); use l1, l2 or fpgm",
            ));
        }
        if opts.importance == Importance::Activation && scores.is_empty() {
            return Err(Error::unsupported(
                doc.path(),
                "--importance activation needs calibration data (--calib DATA) for the layers that read the channels",
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

    pub(super) fn prunable(&self) -> usize {
        self.clusters.iter().map(|c| c.roots.len()).sum()
    }

    /// Kept count after removing `k` of `n` channels, rounded up to a multiple of
    /// `--round-to`, never below one.
    fn keep_count(&self, n_total: usize, n_free: usize, k: usize) -> usize {
        let pinned = n_total.saturating_sub(n_free);
        let mut keep = n_total.saturating_sub(k.min(n_free));
        let r = self.opts.round_to;
        if r > 1 && n_total >= r {
            keep = keep.div_ceil(r) * r;
        }
        keep.clamp(pinned.max(1).min(n_total), n_total)
    }

    /// The channels (group roots) removed at `ratio`.
    pub(super) fn select(&self, ratio: f64) -> HashSet<ChannelId> {
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
    pub(super) fn estimate(&self, removed: &HashSet<ChannelId>) -> (u64, u64) {
        let mut params = self.params_before;
        let mut macs = self.macs_before;
        for c in &self.costs {
            let mut frac = 1.0;
            for &(_, si) in &c.axes {
                let s = &self.d.slices[si];
                frac *= self.d.kept(&s.ids, removed).len() as f64 / s.ids.len().max(1) as f64;
            }
            // Saturating: a damaged file's counts need not add up.
            if c.param {
                params = params.saturating_sub(
                    c.numel
                        .saturating_sub((c.numel as f64 * frac).round() as u64),
                );
            }
            macs =
                macs.saturating_sub(c.macs.saturating_sub((c.macs as f64 * frac).round() as u64));
        }
        (params, macs)
    }

    pub(super) fn report(
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
