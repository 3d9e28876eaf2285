//! Magnitude pruning: zero the weights closest to zero, per layer, globally or by LAMP score,
//! unstructured, N:M or in blocks, in every weight's stored type.
//!
//! The algorithm works on the format-neutral [`Model`] view: it finds the weight tensors of
//! weight-bearing ops (through widening DequantizeLinear / Cast / DEQUANTIZE nodes, in every
//! subgraph), scores their elements by real magnitude, selects what to prune, and hands back
//! new payloads keyed by each tensor's storage handle. The document applies them; nothing else
//! in the file changes.

pub mod config;
pub mod validated;

pub use validated::{prune_validated, Search, SearchReport, Validation};

use crate::convert::{WriteOptions, WriteReport};
use crate::document::Document;
use crate::error::{Error, Result};
use crate::magnitude::layout;
use crate::magnitude::recipe::ZeroedF32;
use crate::magnitude::select::{self, Scores as _};
use crate::magnitude::values::Codec;
use crate::model::payload::Recipe as _;
use crate::model::stats::{self, WeightKind};
use crate::model::{DType, Graph, Model, Quant, TensorId};
use crate::progress::{Progress, Silent};
use crate::structural;
use bytes::Bytes;
use rayon::prelude::*;
use regex::Regex;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// Version of the JSON report (`pare prune --json`, `--report`).
pub const REPORT_SCHEMA: &str = "pare.prune/1";

/// Tensors with fewer elements are left alone unless `--min-params` says otherwise.
pub const DEFAULT_MIN_PARAMS: u64 = 128;

/// Default cap for `--scope global` and `lamp`: no tensor loses more than this fraction.
pub const DEFAULT_MAX_LAYER_SPARSITY: f64 = 0.98;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every eligible tensor reaches the sparsity on its own.
    Layer,
    /// One magnitude threshold over all eligible tensors (capped per tensor).
    Global,
    /// One threshold over layer-adaptive magnitude scores (Lee et al., ICLR 2021).
    Lamp,
    /// Per-tensor sparsities from a `pare sensitivity` profile: insensitive layers get more
    /// (see [`crate::allocate::allocate`]).
    Sensitivity,
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "layer" => Ok(Scope::Layer),
            "global" => Ok(Scope::Global),
            "lamp" => Ok(Scope::Lamp),
            "sensitivity" => Ok(Scope::Sensitivity),
            _ => Err(format!(
                "unknown scope {s:?}: expected layer, global, lamp or sensitivity"
            )),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::Layer => "layer",
            Scope::Global => "global",
            Scope::Lamp => "lamp",
            Scope::Sensitivity => "sensitivity",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    Unstructured,
    /// Keep the `n` largest of every `m` consecutive weights along the input-channel axis.
    NOfM {
        n: usize,
        m: usize,
    },
    /// Whole `rows` × `cols` blocks (rows along output channels, columns along input
    /// channels), scored by their L2 norm.
    Block {
        rows: usize,
        cols: usize,
    },
}

impl FromStr for Pattern {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || {
            format!("invalid pattern {s:?}: expected unstructured, N:M (e.g. 2:4) or block:RxC (e.g. block:4x1)")
        };
        if s == "unstructured" {
            return Ok(Pattern::Unstructured);
        }
        if let Some(b) = s.strip_prefix("block:") {
            let (r, c) = b.split_once(['x', 'X']).ok_or_else(bad)?;
            let rows: usize = r.parse().map_err(|_| bad())?;
            let cols: usize = c.parse().map_err(|_| bad())?;
            if rows == 0 || cols == 0 || rows * cols < 2 || rows > 256 || cols > 256 {
                return Err(format!(
                    "invalid pattern {s:?}: a block needs at least 2 elements and sides of at most 256"
                ));
            }
            return Ok(Pattern::Block { rows, cols });
        }
        if let Some((n, m)) = s.split_once(':') {
            let n: usize = n.parse().map_err(|_| bad())?;
            let m: usize = m.parse().map_err(|_| bad())?;
            if n == 0 || n >= m || m > 64 {
                return Err(format!(
                    "invalid pattern {s:?}: N:M needs 0 < N < M ≤ 64 (2:4 keeps 2 of every 4)"
                ));
            }
            return Ok(Pattern::NOfM { n, m });
        }
        Err(bad())
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Unstructured => f.write_str("unstructured"),
            Pattern::NOfM { n, m } => write!(f, "{n}:{m}"),
            Pattern::Block { rows, cols } => write!(f, "block:{rows}x{cols}"),
        }
    }
}

impl Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A per-layer rule from the config file.
#[derive(Debug, Clone)]
pub struct LayerRule {
    /// Where it was defined, for messages.
    pub source: String,
    pub regex: Regex,
    pub sparsity: Option<f64>,
    pub pattern: Option<Pattern>,
    pub skip: bool,
}

#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Fraction of each tensor's (or, with a global scope, all eligible tensors') weights to
    /// zero, in [0, 1). Not needed with an N:M pattern, whose sparsity is 1 − N/M.
    pub sparsity: Option<f64>,
    pub scope: Scope,
    pub pattern: Pattern,
    pub min_params: u64,
    pub max_layer_sparsity: f64,
    /// When not empty, only weights whose tensor or node name matches one of these.
    pub include: Vec<Regex>,
    pub exclude: Vec<Regex>,
    pub rules: Vec<LayerRule>,
    /// The profile `--scope sensitivity` allocates from.
    pub sensitivity: Option<std::sync::Arc<crate::allocate::Profile>>,
    /// Structural pruning, applied before magnitude pruning.
    pub channels: Option<structural::ChannelOptions>,
    /// How unstructured pruning chooses weights (Wanda and SparseGPT need `calib`).
    pub criterion: crate::calib::Criterion,
    /// Calibration data: drives `criterion`, and refits layers after channel pruning.
    pub calib: Option<crate::calib::CalibOptions>,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            sparsity: None,
            scope: Scope::Layer,
            pattern: Pattern::Unstructured,
            min_params: DEFAULT_MIN_PARAMS,
            max_layer_sparsity: DEFAULT_MAX_LAYER_SPARSITY,
            include: Vec::new(),
            exclude: Vec::new(),
            rules: Vec::new(),
            sensitivity: None,
            channels: None,
            criterion: crate::calib::Criterion::Magnitude,
            calib: None,
        }
    }
}

pub fn check_sparsity(s: f64) -> std::result::Result<(), String> {
    if (0.0..1.0).contains(&s) {
        Ok(())
    } else {
        Err(format!("sparsity {s} is outside [0, 1)"))
    }
}

impl PruneOptions {
    /// The settings as the report shows them (regexes as their source text).
    pub fn settings(&self) -> Settings {
        Settings {
            sparsity: match self.pattern {
                Pattern::NOfM { n, m } => Some(1.0 - n as f64 / m as f64),
                _ => self.sparsity,
            },
            scope: self.scope,
            pattern: self.pattern,
            min_params: self.min_params,
            max_layer_sparsity: self.max_layer_sparsity,
            include: self
                .include
                .iter()
                .map(|r| r.as_str().to_string())
                .collect(),
            exclude: self
                .exclude
                .iter()
                .map(|r| r.as_str().to_string())
                .collect(),
            rules: self.rules.iter().map(|r| r.source.clone()).collect(),
        }
    }

    /// Is magnitude pruning asked for (a sparsity, an N:M pattern or a rule that sets one)?
    /// Without it, a structural prune (`channels`) runs alone.
    pub fn magnitude_requested(&self) -> bool {
        self.channels.is_none()
            || self.sparsity.is_some()
            || matches!(self.pattern, Pattern::NOfM { .. })
            || self
                .rules
                .iter()
                .any(|r| r.sparsity.is_some() || r.pattern.is_some())
    }

    /// Checks the combination of settings; every failure is a usage error.
    pub fn validate(&self) -> Result<()> {
        let usage = |m: String| Err(Error::Usage(m));
        use crate::calib::Criterion;
        if let Some(c) = &self.calib {
            c.validate()?;
            if self.criterion == Criterion::Magnitude && self.channels.is_none() {
                return usage(
                    "--calib has nothing to do with --criterion magnitude: give --criterion wanda or sparsegpt, or channel pruning (--channels, --target-macs, --target-params) to refit"
                        .into(),
                );
            }
        }
        if self.criterion != Criterion::Magnitude {
            if self.calib.is_none() {
                return usage(format!(
                    "--criterion {} needs calibration data: --calib FILE (.npy or .npz, a few hundred representative inputs)",
                    self.criterion
                ));
            }
            if !self.magnitude_requested() {
                return usage(format!(
                    "--criterion {} chooses weights for unstructured pruning: give --sparsity or an N:M --pattern too",
                    self.criterion
                ));
            }
            if matches!(self.pattern, Pattern::Block { .. })
                || self
                    .rules
                    .iter()
                    .any(|r| matches!(r.pattern, Some(Pattern::Block { .. })))
            {
                return usage(format!(
                    "--criterion {} prunes unstructured or N:M patterns, not blocks",
                    self.criterion
                ));
            }
        }
        if let Some(c) = &self.channels {
            if c.importance == structural::Importance::Activation && self.calib.is_none() {
                return usage(
                    "--importance activation ranks channels by calibration data: give --calib DATA"
                        .into(),
                );
            }
            c.validate()?;
            if !self.magnitude_requested() {
                return Ok(());
            }
        }
        if let Some(s) = self.sparsity {
            check_sparsity(s).or_else(|e| usage(format!("--sparsity: {e}")))?;
        }
        if self.scope == Scope::Sensitivity && self.sensitivity.is_none() {
            return usage(
                "--scope sensitivity needs --sensitivity FILE (a profile from pare sensitivity)"
                    .into(),
            );
        }
        if !(self.max_layer_sparsity > 0.0 && self.max_layer_sparsity < 1.0) {
            return usage(format!(
                "--max-layer-sparsity {} is outside (0, 1)",
                self.max_layer_sparsity
            ));
        }
        match self.pattern {
            Pattern::NOfM { n, m } => {
                if self.scope != Scope::Layer {
                    return usage(format!(
                        "--pattern {n}:{m} fixes every group's sparsity at {:.4}; --scope {} does not apply to it",
                        1.0 - n as f64 / m as f64,
                        self.scope
                    ));
                }
                if let Some(s) = self.sparsity {
                    let implied = 1.0 - n as f64 / m as f64;
                    if (s - implied).abs() > 1e-9 {
                        return usage(format!(
                            "--pattern {n}:{m} prunes exactly {implied} of the weights; drop --sparsity {s} (or set it to {implied})"
                        ));
                    }
                }
            }
            _ => {
                if self.sparsity.is_none() {
                    let covered = !self.rules.is_empty()
                        && self.rules.iter().all(|r| {
                            r.skip
                                || r.sparsity.is_some()
                                || matches!(r.pattern, Some(Pattern::NOfM { .. }))
                        });
                    if !covered {
                        return usage(
                            "give --sparsity S (or `sparsity` in the config file), or an N:M pattern".into(),
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

/// One weight tensor pare can prune, with everything that uses it.
#[derive(Debug, Clone)]
struct Candidate {
    handle: usize,
    graph: usize,
    name: String,
    nodes: Vec<String>,
    ops: Vec<String>,
    /// The widening op between the stored tensor and its consumer, if any.
    via: Option<String>,
    dtype: DType,
    shape: Vec<u64>,
    quant: Option<Quant>,
    data: Bytes,
    /// Output- and input-channel axes of the weight (for N:M groups and blocks).
    out_axis: usize,
    in_axis: Option<usize>,
    /// The first consumer (node index in its graph) and the input slot the weight feeds.
    node: usize,
    slot: usize,
    tensor: TensorId,
}

impl Candidate {
    fn numel(&self) -> u64 {
        self.shape.iter().product()
    }

    fn matches(&self, r: &Regex) -> bool {
        r.is_match(&self.name) || self.nodes.iter().any(|n| r.is_match(n))
    }
}

/// A weight pare found and left alone.
#[derive(Debug, Clone, Serialize)]
pub struct SkippedWeight {
    pub name: String,
    pub nodes: Vec<String>,
    pub ops: Vec<String>,
    pub params: u64,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerResult {
    pub graph: usize,
    /// The weight tensor's name.
    pub name: String,
    /// The nodes that use it (one entry per node; a shared weight is pruned once).
    pub nodes: Vec<String>,
    pub ops: Vec<String>,
    /// The widening op in front of the consumer (DequantizeLinear, Cast, DEQUANTIZE), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored_via: Option<String>,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub params: u64,
    pub pattern: Pattern,
    /// The sparsity asked of this tensor (`None` when a global or LAMP threshold decided it).
    pub target: Option<f64>,
    pub zeros_before: u64,
    pub zeros_after: u64,
    pub sparsity_before: f64,
    pub sparsity_after: f64,
    /// The largest magnitude (block norm for blocks) that was pruned, in real units
    /// (dequantized for quantized weights); `None` when nothing was or for N:M.
    pub threshold: Option<f64>,
    /// The config rule that set this tensor's sparsity or pattern.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub sparsity: Option<f64>,
    pub scope: Scope,
    pub pattern: Pattern,
    pub min_params: u64,
    pub max_layer_sparsity: f64,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub rules: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneTotals {
    pub layers: usize,
    /// Parameters in the pruned tensors.
    pub eligible_params: u64,
    pub eligible_sparsity_before: f64,
    pub eligible_sparsity_after: f64,
    /// Every parameter of the model (weights, biases, normalization), each counted once.
    pub model_params: u64,
    pub model_sparsity_before: f64,
    pub model_sparsity_after: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub schema: &'static str,
    pub settings: Settings,
    pub layers: Vec<LayerResult>,
    pub skipped: Vec<SkippedWeight>,
    pub warnings: Vec<String>,
    pub totals: PruneTotals,
    /// The written files and their verification against the original; absent when nothing
    /// was written (a failed validation gate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write: Option<WriteReport>,
    /// With `--scope sensitivity`: the common drop tolerance (points) of the allocation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sensitivity_tolerance: Option<f64>,
    /// The comparison with the original on the user's data (`--validate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation: Option<crate::validate::ValidateReport>,
    /// The steps of `--search`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchReport>,
    /// Structural pruning (`--channels`, `--target-macs`, `--target-params`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<structural::ChannelReport>,
    /// Calibration passes (`--calib`): the structural refit, then the unstructured criterion.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub calibration: Vec<crate::calib::CalibReport>,
}

impl PruneReport {
    /// A validation gate failed, or a search found no sparsity within the gates.
    pub fn gate_failed(&self) -> bool {
        self.validation.as_ref().is_some_and(|v| !v.passed)
            || self.search.as_ref().is_some_and(|s| s.chosen.is_none())
    }
}

/// The outcome of pruning in memory: new payloads by storage handle, and the report.
pub struct Plan {
    pub edits: HashMap<usize, Bytes>,
    /// Pruned float32 payloads left to the writer (only when planned with `defer`; see
    /// [`crate::model::payload`]).
    pub deferred: Vec<ZeroedF32>,
    pub report: PruneReport,
}

/// A tensor's new payload: computed, or left to the writer.
enum Edit {
    Data(Bytes),
    Deferred(ZeroedF32),
}

/// Finds every weight of every weight-bearing node in every graph, deduplicated by storage.
fn discover(model: &Model) -> (Vec<Candidate>, Vec<SkippedWeight>) {
    let mut cands: Vec<Candidate> = Vec::new();
    let mut by_handle: HashMap<usize, usize> = HashMap::new();
    let mut skipped: Vec<SkippedWeight> = Vec::new();
    let mut skipped_names: HashMap<(usize, String), usize> = HashMap::new();
    for (gi, g) in model.graphs.iter().enumerate() {
        let prod = stats::producers(g);
        for (node_index, node) in g.nodes.iter().enumerate() {
            let Some((indices, kind)) = stats::weight_inputs(&node.op) else {
                continue;
            };
            for &i in indices {
                let Some(Some(input)) = node.inputs.get(i) else {
                    continue;
                };
                let Some(wid) = stats::stored_constant(g, &prod, *input) else {
                    continue;
                };
                let via = (wid != *input).then(|| g.nodes[prod[input]].op.clone());
                add_weight(
                    g,
                    gi,
                    (node_index, node),
                    i,
                    wid,
                    via,
                    &mut cands,
                    &mut by_handle,
                    &mut skipped,
                    &mut skipped_names,
                );
                if matches!(kind, WeightKind::Dense) {
                    break;
                }
            }
        }
    }
    (cands, skipped)
}

#[allow(clippy::too_many_arguments)]
fn add_weight(
    g: &Graph,
    gi: usize,
    (node_index, node): (usize, &crate::model::Node),
    input: usize,
    wid: TensorId,
    via: Option<String>,
    cands: &mut Vec<Candidate>,
    by_handle: &mut HashMap<usize, usize>,
    skipped: &mut Vec<SkippedWeight>,
    skipped_names: &mut HashMap<(usize, String), usize>,
) {
    let t = &g.tensors[wid];
    let params = t.numel().unwrap_or(0);
    let mut skip = |reason: String| {
        let key = (gi, t.name.clone());
        if let Some(&i) = skipped_names.get(&key) {
            let s: &mut SkippedWeight = &mut skipped[i];
            s.nodes.push(node.name.clone());
            s.ops.push(node.op.clone());
        } else {
            skipped_names.insert(key, skipped.len());
            skipped.push(SkippedWeight {
                name: t.name.clone(),
                nodes: vec![node.name.clone()],
                ops: vec![node.op.clone()],
                params,
                reason,
            });
        }
    };
    let (Some(handle), Some(data)) = (t.handle, t.data.clone()) else {
        skip(if t.sparse {
            format!(
                "stored sparse as {}, which pare cannot read as dense values",
                t.dtype
            )
        } else {
            format!(
                "stored as {}, which pare cannot read as dense values",
                t.dtype
            )
        });
        return;
    };
    if let Some(&ci) = by_handle.get(&handle) {
        let c = &mut cands[ci];
        c.nodes.push(node.name.clone());
        c.ops.push(node.op.clone());
        return;
    }
    let Some(shape) = t.fixed_shape() else {
        skip("its shape is not fully known".into());
        return;
    };
    if shape.len() < 2 {
        skip(format!(
            "rank {} (pare prunes weight matrices and kernels)",
            shape.len()
        ));
        return;
    }
    let size = t.dtype.size().unwrap_or(0) as u64;
    if size == 0 || params.checked_mul(size) != Some(data.len() as u64) {
        skip(format!(
            "its data has {} bytes but its shape and type need {}",
            data.len(),
            params.saturating_mul(size)
        ));
        return;
    }
    let (out_axis, in_axis) = layout(&node.op, input, node.attrs.trans_b, shape.len());
    by_handle.insert(handle, cands.len());
    cands.push(Candidate {
        handle,
        graph: gi,
        name: t.name.clone(),
        nodes: vec![node.name.clone()],
        ops: vec![node.op.clone()],
        via,
        dtype: t.dtype,
        shape,
        quant: t.quant.clone(),
        data,
        out_axis,
        in_axis,
        node: node_index,
        slot: input,
        tensor: wid,
    });
}

/// The scores a global / LAMP threshold pools for one tensor.
enum PooledScores<'a> {
    Held(Vec<f32>),
    /// Element magnitudes of the job's weight, computed chunk by chunk when visited.
    Magnitudes(&'a Job),
}

impl select::Scores for PooledScores<'_> {
    fn len(&self) -> usize {
        match self {
            PooledScores::Held(v) => v.len(),
            PooledScores::Magnitudes(j) => j.codec.count(&j.cand.data),
        }
    }

    fn visit(&self, f: &mut dyn FnMut(&[f32])) {
        match self {
            PooledScores::Held(v) => f(v),
            PooledScores::Magnitudes(j) => j.codec.visit_magnitudes(&j.cand.data, f),
        }
    }
}

/// How one candidate is to be pruned.
struct Job {
    cand: Candidate,
    codec: Codec,
    pattern: Pattern,
    sparsity: Option<f64>,
    /// Decided by the global / LAMP threshold rather than its own sparsity.
    pooled: bool,
    rule: Option<String>,
}

/// Block geometry: which block each element belongs to.
struct Blocks {
    dims: Vec<usize>,
    strides: Vec<usize>,
    out_axis: usize,
    in_axis: usize,
    rows: usize,
    cols: usize,
}

impl Blocks {
    fn new(shape: &[u64], out_axis: usize, in_axis: usize, rows: usize, cols: usize) -> Self {
        let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        let mut strides = vec![1; dims.len()];
        for a in (0..dims.len().saturating_sub(1)).rev() {
            strides[a] = strides[a + 1] * dims[a + 1];
        }
        Blocks {
            dims,
            strides,
            out_axis,
            in_axis,
            rows,
            cols,
        }
    }

    fn count(&self) -> usize {
        self.dims.iter().product::<usize>() / (self.rows * self.cols)
    }

    fn unit(&self, e: usize) -> usize {
        let (mut rest, mut o, mut i) = (0, 0, 0);
        for a in 0..self.dims.len() {
            let x = (e / self.strides[a]) % self.dims[a];
            if a == self.out_axis {
                o = x;
            } else if a == self.in_axis {
                i = x;
            } else {
                rest = rest * self.dims[a] + x;
            }
        }
        let nb_out = self.dims[self.out_axis] / self.rows;
        let nb_in = self.dims[self.in_axis] / self.cols;
        (rest * nb_out + o / self.rows) * nb_in + i / self.cols
    }
}

/// Why a pattern does not fit a tensor, if it does not.
fn pattern_misfit(c: &Candidate, p: Pattern) -> Option<String> {
    let dim = |a: usize| c.shape[a];
    match p {
        Pattern::Unstructured => None,
        Pattern::NOfM { m, .. } => match c.in_axis {
            None => Some(format!(
                "{p} needs an input-channel axis and {} kernels have none",
                c.ops[0]
            )),
            Some(a) if dim(a) % m as u64 != 0 => Some(format!(
                "{p} needs the input-channel axis (axis {a}, length {}) to be a multiple of {m}",
                dim(a)
            )),
            _ => None,
        },
        Pattern::Block { rows, cols } => match c.in_axis {
            None => Some(format!(
                "{p} needs an input-channel axis and {} kernels have none",
                c.ops[0]
            )),
            Some(a) if a == c.out_axis => Some(format!("{p} needs two distinct channel axes")),
            Some(a) => {
                let mut why = Vec::new();
                if dim(c.out_axis) % rows as u64 != 0 {
                    why.push(format!(
                        "output channels (axis {}, {}) divisible by {rows}",
                        c.out_axis,
                        dim(c.out_axis)
                    ));
                }
                if dim(a) % cols as u64 != 0 {
                    why.push(format!(
                        "input channels (axis {a}, {}) divisible by {cols}",
                        dim(a)
                    ));
                }
                (!why.is_empty()).then(|| format!("{p} needs {}", why.join(" and ")))
            }
        },
    }
}

/// Unit scores: element magnitudes, or block L2 norms.
fn unit_scores<'a>(job: &Job, mags: &'a [f32]) -> std::borrow::Cow<'a, [f32]> {
    match job.pattern {
        Pattern::Block { rows, cols } => {
            let c = &job.cand;
            let b = Blocks::new(
                &c.shape,
                c.out_axis,
                c.in_axis.expect("checked"),
                rows,
                cols,
            );
            let mut acc = vec![0f64; b.count()];
            for (e, &m) in mags.iter().enumerate() {
                acc[b.unit(e)] += (m as f64) * (m as f64);
            }
            acc.into_iter().map(|s| s.sqrt() as f32).collect()
        }
        _ => std::borrow::Cow::Borrowed(mags),
    }
}

/// Element mask from a unit mask.
fn expand(job: &Job, unit_mask: Vec<bool>, n: usize) -> Vec<bool> {
    match job.pattern {
        Pattern::Block { rows, cols } => {
            let c = &job.cand;
            let b = Blocks::new(
                &c.shape,
                c.out_axis,
                c.in_axis.expect("checked"),
                rows,
                cols,
            );
            (0..n).map(|e| unit_mask[b.unit(e)]).collect()
        }
        _ => unit_mask,
    }
}

fn n_of_m_mask(job: &Job, mags: &[f32], n: usize, m: usize) -> Vec<bool> {
    let c = &job.cand;
    let a = c.in_axis.expect("checked");
    let dims: Vec<usize> = c.shape.iter().map(|&d| d as usize).collect();
    let stride: usize = dims[a + 1..].iter().product();
    let len = dims[a];
    let groups: Vec<usize> = (0..mags.len())
        .filter(|&e| (e / stride) % len % m == 0)
        .collect();
    select::n_of_m(mags, n, m, &groups, stride)
}

/// Units to prune for a fraction `s` of `units`: the nearest count, never all of them.
fn target_count(s: f64, units: usize) -> usize {
    ((s * units as f64).round() as usize).min(units.saturating_sub(1))
}

fn fraction(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Zeros of a tensor: counted by the cut when it ran on the magnitudes themselves.
fn cut_zeros(mags: &[f32], cut: &select::Cut, on_other_scores: bool) -> u64 {
    if on_other_scores {
        mags.par_iter().filter(|&&m| m == 0.0).count() as u64
    } else {
        cut.zeros as u64
    }
}

/// The largest score among selected units.
fn max_selected(scores: &[f32], mask: &[bool]) -> Option<f64> {
    scores
        .par_iter()
        .zip(mask)
        .filter(|p| *p.1)
        .map(|p| *p.0 as f64)
        .reduce_with(f64::max)
}

/// Prunes one tensor: its new payload (when anything changed) and its report line. `pooled`
/// A pruned tensor: its new payload (storage handle, edit), if any, and its report line.
type Outcome = (Option<(usize, Edit)>, LayerResult);

/// is the count a global / LAMP threshold assigned to it.
fn prune_one(job: &Job, pooled: Option<usize>, lamp: Option<&[f32]>, defer: bool) -> Outcome {
    let c = &job.cand;
    let mags = job.codec.magnitudes(&c.data);
    let n = mags.len();
    let count = |units: usize| match pooled {
        Some(k) => k,
        None => target_count(job.sparsity.expect("set"), units),
    };
    // (new payload, zeros before, zeros after, threshold)
    let (new, zeros_before, zeros_after, threshold) = match job.pattern {
        Pattern::Unstructured => {
            // The hot path: select and zero in streaming passes, no mask. Every already-zero
            // weight is among the k smallest, so zeros after = max(k, zeros before).
            let scores = lamp.unwrap_or(&mags);
            let cut = select::cut(scores, count(n));
            let zeros_before = cut_zeros(&mags, &cut, lamp.is_some());
            let zeros_after = (cut.k as u64).max(zeros_before);
            let threshold = if lamp.is_some() {
                max_selected(&mags, &cut.mask(scores))
            } else {
                cut.threshold().map(f64::from)
            };
            let new = (zeros_after > zeros_before).then(|| {
                // Float32 weights selected on their own magnitudes can be zeroed while they
                // are written; every weight selected is written as +0.0, so n - k non-zeros
                // remain (k >= zeros before here).
                if defer && lamp.is_none() && c.dtype == DType::F32 && c.quant.is_none() {
                    Edit::Deferred(ZeroedF32::new(
                        c.name.clone(),
                        c.handle,
                        c.data.clone(),
                        cut.clone(),
                        n - cut.k,
                    ))
                } else {
                    Edit::Data(Bytes::from(job.codec.zeroed_cut(&c.data, scores, &cut)))
                }
            });
            (new, zeros_before, zeros_after, threshold)
        }
        _ => {
            let (mask, threshold) = match job.pattern {
                Pattern::NOfM { n: keep, m } => (n_of_m_mask(job, &mags, keep, m), None),
                _ => {
                    let units = unit_scores(job, &mags);
                    let scores = lamp.unwrap_or(&units);
                    let unit_mask = select::lowest_k(scores, count(units.len()));
                    let threshold = max_selected(&units, &unit_mask);
                    (expand(job, unit_mask, n), threshold)
                }
            };
            let (zeros_before, zeros_after) = mags
                .par_iter()
                .zip(&mask)
                .map(|(&m, &p)| ((m == 0.0) as u64, (p || m == 0.0) as u64))
                .reduce(|| (0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
            let new = (zeros_after > zeros_before)
                .then(|| Edit::Data(Bytes::from(job.codec.zeroed(&c.data, &mask))));
            (new, zeros_before, zeros_after, threshold)
        }
    };
    let edit = new.map(|e| (c.handle, e));
    let layer = layer_result(job, zeros_before, zeros_after, threshold);
    (edit, layer)
}

/// Prunes the jobs calibration covers with `opts.criterion`: new payloads by job index.
fn prune_calibrated(
    doc: &Document,
    model: &Model,
    jobs: &[Job],
    pooled_counts: &HashMap<usize, usize>,
    opts: &PruneOptions,
    progress: &dyn Progress,
) -> Result<(
    HashMap<usize, crate::calib::Pruned>,
    crate::calib::CalibReport,
)> {
    use crate::calib::solve::Amount;
    let calib = opts.calib.as_ref().expect("validated");
    let mut index = Vec::new();
    let mut targets = Vec::new();
    let mut skipped = Vec::new();
    for (i, j) in jobs.iter().enumerate() {
        let c = &j.cand;
        let why = if c.graph != 0 {
            Some("in a subgraph (calibration runs the main graph)".to_string())
        } else if c.nodes.len() > 1 {
            Some(format!("shared by {} layers", c.nodes.len()))
        } else {
            None
        };
        if let Some(reason) = why {
            skipped.push(crate::calib::Fallback {
                name: c.name.clone(),
                reason,
            });
            continue;
        }
        let amount = match j.pattern {
            Pattern::Unstructured => Amount::Count(
                pooled_counts
                    .get(&i)
                    .copied()
                    .unwrap_or_else(|| target_count(j.sparsity.expect("set"), c.numel() as usize)),
            ),
            Pattern::NOfM { n, m } => Amount::NOfM { n, m },
            Pattern::Block { .. } => continue,
        };
        index.push(i);
        targets.push(crate::calib::Target {
            node: c.node,
            slot: c.slot,
            weight: c.tensor,
            name: &c.name,
            codec: &j.codec,
            data: &c.data,
            amount,
            nm: matches!(j.pattern, Pattern::NOfM { .. }),
        });
    }
    let (pruned, mut report) = crate::calib::prune_targets(
        doc,
        &model.graphs[0],
        &targets,
        opts.criterion,
        calib,
        progress,
    )?;
    report.fallbacks.extend(skipped);
    let out = index
        .into_iter()
        .zip(pruned)
        .filter_map(|(i, p)| Some((i, p?)))
        .collect();
    Ok((out, report))
}

/// The edit and report line of a tensor pruned with calibration data.
fn calibrated_result(job: &Job, p: crate::calib::Pruned) -> Outcome {
    let layer = layer_result(job, p.zeros_before, p.zeros_after, None);
    (Some((job.cand.handle, Edit::Data(p.data))), layer)
}

/// A tensor's report line.
fn layer_result(
    job: &Job,
    zeros_before: u64,
    zeros_after: u64,
    threshold: Option<f64>,
) -> LayerResult {
    let c = &job.cand;
    let params = c.numel();
    LayerResult {
        graph: c.graph,
        name: c.name.clone(),
        nodes: c.nodes.clone(),
        ops: c.ops.clone(),
        stored_via: c.via.clone(),
        dtype: c.dtype,
        shape: c.shape.clone(),
        params,
        pattern: job.pattern,
        target: if job.pooled { None } else { job.sparsity },
        zeros_before,
        zeros_after,
        sparsity_before: fraction(zeros_before, params),
        sparsity_after: fraction(zeros_after, params),
        threshold,
        rule: job.rule.clone(),
    }
}

/// Prunes `doc` in memory: the new payloads and the report (without `write`).
pub fn plan(doc: &Document, opts: &PruneOptions) -> Result<Plan> {
    plan_with(doc, opts, false, &Silent)
}

/// [`plan`]; with `defer`, float32 payloads pruned on their own magnitudes are left to the
/// writer ([`Plan::deferred`]) instead of being computed.
fn plan_with(
    doc: &Document,
    opts: &PruneOptions,
    defer: bool,
    progress: &dyn Progress,
) -> Result<Plan> {
    opts.validate()?;
    let path = doc.path();
    let model = doc.to_model()?;
    let (cands, mut skipped) = discover(&model);
    let mut warnings = Vec::new();

    // Rules that match nothing are almost always typos: refuse them.
    for r in &opts.rules {
        let hit = cands.iter().any(|c| c.matches(&r.regex))
            || skipped
                .iter()
                .any(|s| r.regex.is_match(&s.name) || s.nodes.iter().any(|n| r.regex.is_match(n)));
        if !hit {
            return Err(Error::Usage(format!(
                "{} matches no weight tensor or node of {}",
                r.source,
                path.display()
            )));
        }
    }

    let mut jobs = Vec::new();
    for c in cands {
        let mut skip = |reason: String| {
            skipped.push(SkippedWeight {
                name: c.name.clone(),
                nodes: c.nodes.clone(),
                ops: c.ops.clone(),
                params: c.numel(),
                reason,
            })
        };
        if let Some(r) = opts.exclude.iter().find(|r| c.matches(r)) {
            skip(format!("excluded by {:?}", r.as_str()));
            continue;
        }
        if !opts.include.is_empty() && !opts.include.iter().any(|r| c.matches(r)) {
            skip("not matched by any --include".into());
            continue;
        }
        let rule = opts.rules.iter().find(|r| c.matches(&r.regex));
        if let Some(r) = rule.filter(|r| r.skip) {
            skip(format!("skipped by {}", r.source));
            continue;
        }
        if c.numel() < opts.min_params {
            skip(format!(
                "{} parameters, fewer than --min-params {}",
                c.numel(),
                opts.min_params
            ));
            continue;
        }
        let codec = match Codec::new(c.dtype, &c.shape, c.quant.as_ref()) {
            Ok(codec) => codec,
            Err(reason) => {
                skip(reason);
                continue;
            }
        };
        let pattern = rule.and_then(|r| r.pattern).unwrap_or(opts.pattern);
        if let Some(why) = pattern_misfit(&c, pattern) {
            skip(format!("{why}; left unchanged"));
            continue;
        }
        let sparsity = match pattern {
            Pattern::NOfM { n, m } => Some(1.0 - n as f64 / m as f64),
            _ => rule.and_then(|r| r.sparsity).or(opts.sparsity),
        };
        let Some(sparsity) = sparsity else {
            skip("no sparsity given for it (no --sparsity and no matching rule sets one)".into());
            continue;
        };
        let pooled = opts.scope != Scope::Layer
            && rule.and_then(|r| r.sparsity).is_none()
            && pattern == opts.pattern;
        jobs.push(Job {
            cand: c,
            codec,
            pattern,
            sparsity: Some(sparsity),
            pooled,
            rule: rule.map(|r| r.source.clone()),
        });
    }
    if jobs.is_empty() {
        let why: Vec<String> = skipped
            .iter()
            .take(8)
            .map(|s| format!("{}: {}", s.name, s.reason))
            .collect();
        return Err(Error::unsupported(
            path,
            if skipped.is_empty() {
                "no prunable weight: the model has no Conv/Gemm/MatMul/LSTM-style layer with a constant weight".to_string()
            } else {
                format!(
                    "no prunable weight ({} found, all skipped: {}{})",
                    skipped.len(),
                    why.join("; "),
                    if skipped.len() > 8 { "; …" } else { "" }
                )
            },
        ));
    }

    // Sensitivity: per-tensor sparsities from the profile, then pruned as layer scope.
    let mut sensitivity_tolerance = None;
    if opts.scope == Scope::Sensitivity {
        let profile = opts.sensitivity.as_ref().expect("validated");
        let pooled: Vec<usize> = (0..jobs.len()).filter(|&i| jobs[i].pooled).collect();
        let layers: Vec<(String, u64)> = pooled
            .iter()
            .map(|&i| (jobs[i].cand.name.clone(), jobs[i].cand.numel()))
            .collect();
        let target = opts.sparsity.expect("validated");
        let (alloc, t) =
            crate::allocate::allocate(profile, &layers, target, opts.max_layer_sparsity)
                .map_err(|e| Error::Usage(format!("--scope sensitivity: {e}")))?;
        let total: u64 = layers.iter().map(|l| l.1).sum();
        let reached: f64 = alloc
            .iter()
            .zip(&layers)
            .map(|(s, l)| s * l.1 as f64)
            .sum::<f64>()
            / total.max(1) as f64;
        if reached + 1e-6 < target {
            warnings.push(format!(
                "--scope sensitivity: the profile's ratios reach {:.2}% at most, not {:.2}%; measure higher ratios with pare sensitivity --ratios",
                100.0 * reached,
                100.0 * target
            ));
        }
        for (&i, s) in pooled.iter().zip(alloc) {
            jobs[i].sparsity = Some(s);
            jobs[i].pooled = false;
        }
        sensitivity_tolerance = Some(t);
    }

    // Global / LAMP: one threshold over the pooled tensors' unit scores.
    let pooled: Vec<usize> = (0..jobs.len()).filter(|&i| jobs[i].pooled).collect();
    let mut pooled_counts: HashMap<usize, usize> = HashMap::new();
    let mut lamp_scores: HashMap<usize, Vec<f32>> = HashMap::new();
    if !pooled.is_empty() {
        let s = opts.sparsity.expect("validated");
        // Element magnitudes are computed on the fly in both passes of the selection (never
        // held for the whole model); block norms and LAMP scores are held.
        let scores: Vec<PooledScores> = pooled
            .par_iter()
            .map(|&i| {
                let j = &jobs[i];
                if opts.scope == Scope::Global && j.pattern == Pattern::Unstructured {
                    return PooledScores::Magnitudes(j);
                }
                let mags = j.codec.magnitudes(&j.cand.data);
                let units = match unit_scores(j, &mags) {
                    std::borrow::Cow::Owned(v) => v,
                    std::borrow::Cow::Borrowed(_) => mags,
                };
                PooledScores::Held(if opts.scope == Scope::Lamp {
                    select::lamp(&units)
                } else {
                    units
                })
            })
            .collect();
        let caps: Vec<usize> = scores
            .iter()
            .map(|s| {
                ((opts.max_layer_sparsity * s.len() as f64).floor() as usize)
                    .min(s.len().saturating_sub(1))
            })
            .collect();
        let total: usize = scores.iter().map(select::Scores::len).sum();
        let k = (s * total as f64).round() as usize;
        let counts = select::global_counts(&scores, &caps, k);
        let got: usize = counts.iter().sum();
        if got < k {
            warnings.push(format!(
                "--scope {}: reached {:.2}% instead of {:.2}% over the pooled tensors: --max-layer-sparsity {} stops each tensor earlier",
                opts.scope,
                100.0 * fraction(got as u64, total as u64),
                100.0 * s,
                opts.max_layer_sparsity
            ));
        }
        // Only the counts are kept, so that after selection at most a few tensors' scores are
        // alive at a time. LAMP scores cost a sort: those are kept.
        if opts.scope == Scope::Lamp {
            lamp_scores.extend(
                pooled
                    .iter()
                    .copied()
                    .zip(scores)
                    .filter_map(|(i, s)| match s {
                        PooledScores::Held(v) => Some((i, v)),
                        PooledScores::Magnitudes(_) => None,
                    }),
            );
        } else {
            drop(scores);
        }
        pooled_counts.extend(pooled.iter().copied().zip(counts));
    }

    // With calibration data: the criterion prunes (and reconstructs) what the calibration
    // covers, at the count the scope gave each tensor; the rest falls back to magnitude.
    let (calibrated, calibration) = if opts.criterion != crate::calib::Criterion::Magnitude {
        let (c, mut r) = prune_calibrated(doc, &model, &jobs, &pooled_counts, opts, progress)?;
        if !r.fallbacks.is_empty() {
            warnings.push(format!(
                "--criterion {}: {} of {} tensors pruned by magnitude instead (see calibration.fallbacks)",
                opts.criterion,
                r.fallbacks.len(),
                jobs.len()
            ));
        }
        warnings.append(&mut r.warnings);
        (c, Some(r))
    } else {
        (HashMap::new(), None)
    };

    // Tensors are pruned in parallel (and each one's scoring, selection and masking is itself
    // parallel); results come back in model order.
    // Calibrated tensors come with their results (and corrected biases); the others are
    // pruned here.
    let mut bias_edits = Vec::new();
    let mut done: Vec<Option<Outcome>> = jobs.iter().map(|_| None).collect();
    for (i, mut p) in calibrated {
        bias_edits.extend(p.bias.take());
        done[i] = Some(calibrated_result(&jobs[i], p));
    }
    let results: Vec<Outcome> = jobs
        .par_iter()
        .zip(done)
        .enumerate()
        .map(|(i, (job, done))| {
            done.unwrap_or_else(|| {
                prune_one(
                    job,
                    pooled_counts.get(&i).copied(),
                    lamp_scores.get(&i).map(Vec::as_slice),
                    defer,
                )
            })
        })
        .collect();
    let mut edits: HashMap<usize, Bytes> = bias_edits.into_iter().collect();
    let mut deferred = Vec::new();
    let mut layers = Vec::with_capacity(results.len());
    for (edit, layer) in results {
        match edit {
            Some((h, Edit::Data(b))) => {
                edits.insert(h, b);
            }
            Some((_, Edit::Deferred(r))) => deferred.push(r),
            None => {}
        }
        layers.push(layer);
    }

    let eligible_params: u64 = layers.iter().map(|l| l.params).sum();
    let before: u64 = layers.iter().map(|l| l.zeros_before).sum();
    let after: u64 = layers.iter().map(|l| l.zeros_after).sum();
    // Only the pruned tensors changed: the model's zeros after are its zeros before plus what
    // pruning added (no second pass over the weights).
    let (_, t_before) = stats::collect(&model.graphs, &HashMap::new());
    let model_zeros_after = (t_before.params.saturating_sub(t_before.nonzero_params))
        .saturating_add(after.saturating_sub(before));
    let totals = PruneTotals {
        layers: layers.len(),
        eligible_params,
        eligible_sparsity_before: fraction(before, eligible_params),
        eligible_sparsity_after: fraction(after, eligible_params),
        model_params: t_before.params,
        model_sparsity_before: t_before.sparsity,
        model_sparsity_after: fraction(model_zeros_after, t_before.params),
    };
    let settings = opts.settings();
    Ok(Plan {
        edits,
        deferred,
        report: PruneReport {
            schema: REPORT_SCHEMA,
            settings,
            layers,
            skipped,
            warnings,
            totals,
            write: None,
            sensitivity_tolerance,
            validation: None,
            search: None,
            channels: None,
            calibration: calibration.into_iter().collect(),
        },
    })
}

/// Prunes `doc` in memory as `opts` say: channels first (structural), then magnitude on what
/// remains. The edited document and the report (without `write`).
pub fn prune_document(doc: &Document, opts: &PruneOptions) -> Result<(Document, PruneReport)> {
    prune_document_with(doc, opts, false, &Silent)
}

/// [`prune_document`]; with `defer`, the returned document carries float32 pruning recipes
/// ([`crate::model::payload`]) that only its writers apply: it is for writing, not for reading.
pub(crate) fn prune_document_with(
    doc: &Document,
    opts: &PruneOptions,
    defer: bool,
    progress: &dyn Progress,
) -> Result<(Document, PruneReport)> {
    opts.validate()?;
    // Sparse weights (and their DENSIFY ops) are pruned dense; the write stores them as its
    // storage policy says.
    let dense;
    let doc = if doc.has_sparse() {
        dense = doc.densified()?;
        &dense
    } else {
        doc
    };
    let mut calibration = Vec::new();
    let (base, channels) = match &opts.channels {
        Some(c) => {
            let with_energy;
            let c = match &opts.calib {
                Some(calib) if c.importance == structural::Importance::Activation => {
                    let mut c2 = c.clone();
                    c2.energy = Some(std::sync::Arc::new(crate::calib::channel_energy(
                        doc, calib, progress,
                    )?));
                    with_energy = c2;
                    &with_energy
                }
                _ => c,
            };
            let (d, r, edits) = structural::prune_channels_with_edits(doc, c)?;
            let d = match (&opts.calib, edits) {
                (Some(calib), Some(edits)) if calib.refit => {
                    let (d, r) = crate::calib::refit_structure(doc, &d, &edits, calib, progress)?;
                    calibration.push(r);
                    d
                }
                _ => d,
            };
            (d, Some(r))
        }
        None => (doc.clone(), None),
    };
    let (edited, mut report) = if opts.magnitude_requested() {
        // Calibrated pruning computes every payload (no deferred recipes).
        let defer = defer && opts.criterion == crate::calib::Criterion::Magnitude;
        let mut p = plan_with(&base, opts, defer, progress)?;
        // A recipe works only where the document stores the very bytes it was planned from
        // (raw or external data, TFLite buffers); weights decoded from typed fields
        // (float_data) are computed now.
        let stored = if p.deferred.is_empty() {
            Default::default()
        } else {
            base.stored_payloads()
        };
        let (recipes, computed): (Vec<_>, Vec<_>) = std::mem::take(&mut p.deferred)
            .into_iter()
            .partition(|r| stored.contains(&crate::model::payload::payload_key(r.source())));
        for r in computed {
            p.edits.insert(r.handle, r.materialize(false));
        }
        let edited = base.with_tensor_data(&p.edits);
        let edited = if recipes.is_empty() {
            edited
        } else {
            edited.with_deferred(crate::model::payload::Deferred::new(recipes))
        };
        (edited, p.report)
    } else {
        let report = PruneReport {
            schema: REPORT_SCHEMA,
            settings: opts.settings(),
            layers: Vec::new(),
            skipped: Vec::new(),
            warnings: Vec::new(),
            totals: PruneTotals::default(),
            write: None,
            sensitivity_tolerance: None,
            validation: None,
            search: None,
            channels: None,
            calibration: Vec::new(),
        };
        (base, report)
    };
    report.channels = channels;
    calibration.append(&mut report.calibration);
    report.calibration = calibration;
    Ok((edited, report))
}

/// `pare prune`: read, prune, write atomically, verify against the original in tract.
pub fn prune(
    input: &Path,
    output: &Path,
    opts: &PruneOptions,
    write: &WriteOptions,
) -> Result<PruneReport> {
    prune_with_progress(input, output, opts, write, &Silent)
}

/// [`prune`], reporting its stages to `progress`.
pub fn prune_with_progress(
    input: &Path,
    output: &Path,
    opts: &PruneOptions,
    write: &WriteOptions,
    progress: &dyn Progress,
) -> Result<PruneReport> {
    opts.validate()?; // before reading: a usage error should not wait for a large model
    progress.stage("reading");
    let doc = Document::open(input)?;
    progress.stage("pruning");
    // Written once and read back from disk: pruned weights are produced as they are written.
    let (edited, mut report) = prune_document_with(&doc, opts, true, progress)?;
    let written =
        crate::convert::write_checked_with_progress(&doc, &edited, output, write, false, progress)?;
    report.write = Some(written);
    Ok(report)
}

/// The human-readable report: a per-layer table, skipped weights and totals.
pub fn render(r: &PruneReport, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let pct = |f: f64| format!("{:.1}%", 100.0 * f);
    let name_w = crate::text::name_width(r.layers.iter().map(|l| l.name.as_str()), 48);
    writeln!(
        out,
        "{:<name_w$}  {:<18} {:<14} {:<5} {:>9}  {:>16}  {:>10}",
        "weight", "op", "shape", "dtype", "params", "sparsity", "threshold"
    )?;
    for l in &r.layers {
        let shape: Vec<String> = l.shape.iter().map(u64::to_string).collect();
        let op = match &l.stored_via {
            Some(v) => format!("{}←{}", l.ops[0], v),
            None => l.ops[0].clone(),
        };
        writeln!(
            out,
            "{:<name_w$}  {:<18} {:<14} {:<5} {:>9}  {:>16}  {:>10}",
            crate::text::ellipsize(&l.name, name_w),
            op,
            shape.join("x"),
            l.dtype.to_string(),
            l.params,
            format!("{} → {}", pct(l.sparsity_before), pct(l.sparsity_after)),
            l.threshold.map_or("-".into(), |t| format!("{t:.4e}")),
        )?;
    }
    for s in &r.skipped {
        writeln!(
            out,
            "skipped {} ({}): {}",
            s.name,
            s.ops.join(","),
            s.reason
        )?;
    }
    for w in &r.warnings {
        writeln!(out, "warning: {w}")?;
    }
    let t = &r.totals;
    writeln!(
        out,
        "pruned {} tensors ({} params): {} → {} sparse; whole model ({} params): {} → {}",
        t.layers,
        t.eligible_params,
        pct(t.eligible_sparsity_before),
        pct(t.eligible_sparsity_after),
        t.model_params,
        pct(t.model_sparsity_before),
        pct(t.model_sparsity_after)
    )
}
