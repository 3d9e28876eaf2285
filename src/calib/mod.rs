//! Calibration: run representative inputs through the model (in tract), collect each layer's
//! input statistics, and use them to choose which weights to prune and to reconstruct the ones
//! that stay, so a pruned model keeps its accuracy without retraining.
//!
//! - [`layer`] views each Conv / dense layer as a matrix product `y = W x` over im2col rows;
//! - [`capture`] streams the calibration set through the model once and accumulates every
//!   layer's Gram matrix `XᵀX` (with feature sums and the row count), in f64;
//! - [`solve`] holds Wanda, SparseGPT and the least-squares refit, on those matrices.
//!
//! Everything is computed in real (dequantized) values and written back in the tensor's own
//! type: an int8 weight keeps its scales and zero points, and SparseGPT compensates the
//! rounding onto that grid like any other error.

pub mod capture;
pub mod layer;
pub mod solve;

use crate::data::DataOptions;
use crate::document::Document;
use crate::error::{Error, Result};
use crate::magnitude::values::Codec;
use crate::model::{Graph, StructureEdits, TensorId};
use crate::progress::Progress;
use bytes::Bytes;
use faer::Mat;
use layer::{Kind, Linear};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// How unstructured pruning chooses (and treats) the weights it removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Criterion {
    /// Smallest |W| (no calibration data needed).
    #[default]
    Magnitude,
    /// Smallest |W_ij| · ‖X_j‖, per output row (Wanda); weights are only zeroed.
    Wanda,
    /// SparseGPT: per-layer Hessian-guided choice with error compensation on the kept weights.
    Sparsegpt,
}

impl FromStr for Criterion {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "magnitude" => Ok(Criterion::Magnitude),
            "wanda" => Ok(Criterion::Wanda),
            "sparsegpt" => Ok(Criterion::Sparsegpt),
            _ => Err(format!(
                "unknown criterion {s:?}: expected magnitude, wanda or sparsegpt"
            )),
        }
    }
}

impl fmt::Display for Criterion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Criterion::Magnitude => "magnitude",
            Criterion::Wanda => "wanda",
            Criterion::Sparsegpt => "sparsegpt",
        })
    }
}

/// SparseGPT's default dampening (`percdamp`): 1% of the mean Hessian diagonal.
pub const DEFAULT_DAMPENING: f64 = 0.01;
/// Columns decided together by SparseGPT (the paper's block size).
pub const DEFAULT_BLOCK: usize = 128;

#[derive(Debug, Clone)]
pub struct CalibOptions {
    /// The calibration inputs (`.npy` / `.npz` or ONNX test-data folders), read in batches.
    pub data: DataOptions,
    /// Ridge / dampening: `λ = dampening · mean(diag XᵀX)`.
    pub dampening: f64,
    pub block: usize,
    /// Refit the layers that lose input channels in a structural prune.
    pub refit: bool,
    /// Collect every layer's statistics from the original model in one pass, instead of
    /// wave by wave from the model as pruned so far (faster on deep models, less accurate).
    pub one_pass: bool,
    /// In sequential passes, reconstruct the original model's outputs (not the pruned
    /// model's), correcting the error of the layers pruned before.
    pub correct: bool,
}

impl CalibOptions {
    pub fn new(data: DataOptions) -> Self {
        CalibOptions {
            data,
            dampening: DEFAULT_DAMPENING,
            block: DEFAULT_BLOCK,
            refit: true,
            one_pass: false,
            correct: true,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.dampening > 0.0 && self.dampening.is_finite()) {
            return Err(Error::Usage(format!(
                "--dampening {} must be a positive number (0.01 is SparseGPT's default)",
                self.dampening
            )));
        }
        Ok(())
    }
}

/// A layer calibration did not cover, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Fallback {
    pub name: String,
    pub reason: String,
}

/// What calibration did, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct CalibReport {
    /// What the calibration served: `prune` (unstructured) or `refit` (structural).
    pub purpose: &'static str,
    pub criterion: Option<Criterion>,
    pub dampening: f64,
    pub capture: capture::CalibSummary,
    /// Layers reconstructed with calibration data.
    pub layers: Vec<String>,
    /// Layers left to magnitude pruning (or not refit), with the reason.
    pub fallbacks: Vec<Fallback>,
    /// SparseGPT layers where zeroing the smallest weights of each row reconstructed the
    /// calibration outputs better than the compensated weights, and was kept.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub plain: Vec<String>,
    pub warnings: Vec<String>,
}

/// One weight to prune with calibration data.
pub(crate) struct Target<'a> {
    pub node: usize,
    pub slot: usize,
    pub weight: TensorId,
    pub name: &'a str,
    pub codec: &'a Codec,
    pub data: &'a Bytes,
    pub amount: solve::Amount,
    /// Permute the columns so that N:M groups are contiguous (ONNX Conv columns run
    /// channel-major).
    pub nm: bool,
}

/// A weight pruned with calibration data.
pub(crate) struct Pruned {
    pub data: Bytes,
    pub zeros_before: u64,
    pub zeros_after: u64,
    /// Groups (a whole layer unless grouped) where SparseGPT's result reconstructed the
    /// outputs worse than zeroing the smallest weights, which was kept instead.
    pub plain_groups: usize,
    /// The corrected bias (storage handle, payload), when the layer has one.
    pub bias: Option<(usize, Bytes)>,
}

/// The layers of `targets` that calibration can cover (main graph, a linear view, statistics
/// within the memory caps), and the fallbacks.
fn views(
    g: &Graph,
    targets: impl Iterator<Item = (usize, usize, TensorId, String)>,
) -> (Vec<(usize, Linear)>, Vec<Fallback>) {
    let mut ok = Vec::new();
    let mut fallbacks = Vec::new();
    let mut total = 0u64;
    for (i, (node, slot, weight, name)) in targets.enumerate() {
        match layer::linear(g, node, slot, weight) {
            Ok(l) => {
                let bytes = capture::stats_bytes(&l);
                if bytes > capture::MAX_LAYER_STATS_BYTES
                    || total + bytes > capture::MAX_TOTAL_STATS_BYTES
                {
                    fallbacks.push(Fallback {
                        name,
                        reason: format!(
                            "its input statistics would take {} MiB ({} features{})",
                            bytes >> 20,
                            l.k,
                            if l.groups > 1 {
                                format!(" × {} groups", l.groups)
                            } else {
                                String::new()
                            }
                        ),
                    });
                    continue;
                }
                total += bytes;
                ok.push((i, l));
            }
            Err(reason) => fallbacks.push(Fallback { name, reason }),
        }
    }
    (ok, fallbacks)
}

fn few_rows_warning(lin: &Linear, s: &capture::Stats) -> Option<String> {
    (s.rows < lin.k as u64).then(|| {
        format!(
            "{}: {} calibration rows for {} input features; the fit is regularized by the dampening (use more samples for a better one)",
            lin.name, s.rows, lin.k
        )
    })
}

/// Columns of `lin` in N:M order: position `new` reads column `perm[new]`.
fn nm_permutation(lin: &Linear) -> Option<Vec<usize>> {
    match &lin.kind {
        Kind::Conv(c) if c.channel_first && c.kernel[0] * c.kernel[1] > 1 => {
            let [kh, kw] = c.kernel;
            let mut perm = Vec::with_capacity(lin.k);
            for ky in 0..kh {
                for kx in 0..kw {
                    for ci in 0..c.cin {
                        perm.push((ci * kh + ky) * kw + kx);
                    }
                }
            }
            Some(perm)
        }
        _ => None,
    }
}

/// Prunes one weight with its statistics.
fn prune_one(
    g: &Graph,
    t: &Target,
    lin: &Linear,
    stats: &capture::Stats,
    criterion: Criterion,
    opts: &CalibOptions,
) -> std::result::Result<Pruned, String> {
    if t.codec.per_channel() {
        // Snapping goes by row: the quantization must follow the output channels.
        let c0 = t.codec.channel(lin.index(0, 0));
        if (0..lin.k).any(|c| t.codec.channel(lin.index(0, c)) != c0) {
            return Err("per-channel quantization along the input axis".into());
        }
    }
    if t.amount == solve::Amount::Count(0) {
        // Nothing to prune: the weight stays exactly as it is.
        let zeros = t.codec.values(t.data).iter().filter(|&&v| v == 0.0).count() as u64;
        return Ok(Pruned {
            data: t.data.clone(),
            zeros_before: zeros,
            zeros_after: zeros,
            plain_groups: 0,
            bias: None,
        });
    }
    let values = t.codec.values(t.data);
    let zeros_before = values.iter().filter(|&&v| v == 0.0).count() as u64;
    let k = lin.k;
    let mut out: Vec<f64> = values.iter().map(|&v| v as f64).collect();
    drop(values);
    // Rows of each group.
    let mut rows_of: Vec<Vec<usize>> = vec![Vec::new(); lin.groups];
    for o in 0..lin.out {
        rows_of[lin.group_of(o)].push(o);
    }
    let perm = if t.nm { nm_permutation(lin) } else { None };
    let col = |c: usize| perm.as_ref().map_or(c, |p| p[c]);
    // The same, with the constant column last.
    let aug = |c: usize| if c == k { k } else { col(c) };
    let counts = match t.amount {
        solve::Amount::Count(total) => {
            let sizes: Vec<usize> = rows_of.iter().map(|r| r.len() * k).collect();
            solve::spread_counts(total, &sizes)
        }
        solve::Amount::NOfM { .. } => vec![0; lin.groups],
    };
    let plain_kept = std::sync::atomic::AtomicUsize::new(0);
    // Per group: the new weights (by element) and each row's bias correction.
    type GroupResult = (Vec<(usize, f64)>, Vec<(usize, f64)>);
    let results: Vec<std::result::Result<GroupResult, String>> = rows_of
        .par_iter()
        .enumerate()
        .map(|(gi, rows)| {
            // The group's weights and statistics, in the criterion's column order.
            let stored = Mat::<f64>::from_fn(rows.len(), k, |r, c| out[lin.index(rows[r], col(c))]);
            let gram = Mat::<f64>::from_fn(k + 1, k + 1, |i, j| stats.gram[gi][(aug(i), aug(j))]);
            let cross = stats
                .cross
                .as_ref()
                .map(|c| Mat::<f64>::from_fn(k + 1, k + 1, |i, j| c[gi][(aug(i), aug(j))]));
            let h = gram.as_ref().submatrix(0, 0, k, k);
            let amount = match t.amount {
                solve::Amount::Count(_) => solve::Amount::Count(counts[gi]),
                a => a,
            };
            let new = match criterion {
                Criterion::Wanda => {
                    let norms: Vec<f64> = (0..k).map(|i| h[(i, i)]).collect();
                    let mask = solve::wanda(stored.as_ref(), &norms, amount);
                    zeroed(stored.clone(), &mask)
                }
                Criterion::Sparsegpt => {
                    let snap = |r: usize, v: f64| t.codec.snap(lin.index(rows[r], 0), v);
                    let (w, plain) = sparsegpt_group(
                        &stored,
                        &gram,
                        cross.as_ref(),
                        amount,
                        t.codec.is_integer().then_some(&snap as solve::Snap),
                        opts,
                    )?;
                    if plain {
                        plain_kept.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    w
                }
                Criterion::Magnitude => unreachable!("magnitude needs no calibration"),
            };
            let deltas = if lin.bias.is_some() && opts.correct {
                mean_shift(&stored, &new, &gram, cross.as_ref())
                    .into_iter()
                    .enumerate()
                    .map(|(r, d)| (rows[r], d))
                    .collect()
            } else {
                Vec::new()
            };
            Ok((
                (0..rows.len())
                    .flat_map(|r| (0..k).map(move |c| (r, c)))
                    .map(|(r, c)| (lin.index(rows[r], col(c)), new[(r, c)]))
                    .collect(),
                deltas,
            ))
        })
        .collect();
    let mut delta = vec![0f64; lin.out];
    for r in results {
        let (values, deltas) = r?;
        for (e, v) in values {
            out[e] = v;
        }
        for (o, d) in deltas {
            delta[o] = d;
        }
    }
    // A bias pare cannot write keeps its value (the weights are still pruned).
    let bias = lin
        .bias
        .filter(|_| delta.iter().any(|&d| d != 0.0))
        .and_then(|b| bias_payload(g, b, &delta).ok());
    let data = t.codec.encode(&out);
    // Zeros as stored (an int8 weight that rounds to its zero point is zero).
    let zeros_after = t.codec.values(&data).iter().filter(|&&v| v == 0.0).count() as u64;
    Ok(Pruned {
        data: Bytes::from(data),
        zeros_before,
        zeros_after,
        plain_groups: plain_kept.into_inner(),
        bias,
    })
}

/// `w` with the elements where `mask` is set zeroed (`mask` row-major over `w`).
fn zeroed(mut w: Mat<f64>, mask: &[bool]) -> Mat<f64> {
    let k = w.ncols();
    for (e, _) in mask.iter().enumerate().filter(|p| *p.1) {
        w[(e / k, e % k)] = 0.0;
    }
    w
}

/// SparseGPT on one group: `stored` (rows × k) with its augmented Gram matrix `gram`
/// ((k + 1)²) and, after the first sequential pass, the cross statistics with the original
/// model's inputs. Returns the new weights and whether plain zeroing was kept instead.
fn sparsegpt_group(
    stored: &Mat<f64>,
    gram: &Mat<f64>,
    cross: Option<&Mat<f64>>,
    amount: solve::Amount,
    snap: Option<solve::Snap>,
    opts: &CalibOptions,
) -> std::result::Result<(Mat<f64>, bool), String> {
    let k = stored.ncols();
    let h = gram.as_ref().submatrix(0, 0, k, k);
    // Sequential passes after the first see the inputs x' of the model pruned so far: the
    // target is then the weights that best reproduce the original outputs from x'
    // (W* = argmin ‖W* x' − W x‖), which SparseGPT sparsifies.
    let target = match cross {
        Some(c) => {
            solve::refit_cross(
                stored.as_ref(),
                None,
                gram.as_ref(),
                c.as_ref(),
                opts.dampening,
            )?
            .0
        }
        None => stored.clone(),
    };
    // Integer weights live in a box (their scale × the integer range): the compensation may
    // push them against it, and clamped weights are error nothing later corrects. More
    // dampening compensates less; for them the dampening (×1, ×10, ×100) that reconstructs
    // the layer best is kept.
    let factors: &[f64] = if snap.is_some() {
        &[1.0, 10.0, 100.0]
    } else {
        &[1.0]
    };
    let mut best: Option<(f64, Mat<f64>)> = None;
    for &f in factors {
        let mut w = target.clone();
        solve::sparsegpt(&mut w, h, amount, opts.dampening * f, opts.block, snap)?;
        let e = solve::output_error(target.as_ref(), w.as_ref(), h);
        if best.as_ref().is_none_or(|(b, _)| e < *b) {
            best = Some((e, w));
        }
    }
    let (error, w) = best.expect("one factor at least");
    // Guard: the compensated weights must reconstruct the layer's outputs better than plain
    // zeroing of the same number of smallest weights per row. Otherwise the plain choice is
    // kept.
    let ones = vec![1.0; k];
    let plain = zeroed(
        stored.clone(),
        &solve::wanda(stored.as_ref(), &ones, amount),
    );
    if solve::output_error(target.as_ref(), plain.as_ref(), h) < error {
        Ok((plain, true))
    } else {
        Ok((w, false))
    }
}

/// Per row: what the bias must absorb so that the layer's mean output stays the original's,
/// `Σ_j W_j x̄_j − Σ_j W'_j x̄'_j` (x̄: the original model's mean input, from the cross
/// statistics when there are some; x̄': the mean input the pruned layer sees).
fn mean_shift(
    stored: &Mat<f64>,
    new: &Mat<f64>,
    gram: &Mat<f64>,
    cross: Option<&Mat<f64>>,
) -> Vec<f64> {
    let k = stored.ncols();
    let n = gram[(k, k)];
    if n <= 0.0 {
        return vec![0.0; stored.nrows()];
    }
    let mean_cur: Vec<f64> = (0..k).map(|j| gram[(k, j)] / n).collect();
    let mean_ref: Vec<f64> = match cross {
        Some(c) => (0..k).map(|j| c[(k, j)] / n).collect(),
        None => mean_cur.clone(),
    };
    (0..stored.nrows())
        .map(|r| {
            (0..k)
                .map(|j| stored[(r, j)] * mean_ref[j] - new[(r, j)] * mean_cur[j])
                .sum()
        })
        .collect()
}

/// The payload of bias `b` (a main-graph constant) plus `delta` (real units), by its storage
/// handle.
fn bias_payload(
    g: &Graph,
    b: TensorId,
    delta: &[f64],
) -> std::result::Result<(usize, Bytes), String> {
    let t = g.tensor(b);
    let (Some(handle), Some(data)) = (t.handle, t.data.as_ref()) else {
        return Err("the bias has no storage".into());
    };
    let scale = t.quant.as_ref().map(|q| q.scale.clone());
    let new = crate::structural::fold::apply_delta(t.dtype, data, delta, scale.as_deref())
        .ok_or_else(|| format!("cannot write a {} bias", t.dtype))?;
    Ok((handle, Bytes::from(new)))
}

/// Unstructured pruning with calibration data: every target the calibration covers is pruned
/// by `criterion`; the others come back as `None` with a fallback entry in the report.
pub(crate) fn prune_targets(
    doc: &Document,
    g: &Graph,
    targets: &[Target],
    criterion: Criterion,
    opts: &CalibOptions,
    progress: &dyn Progress,
) -> Result<(Vec<Option<Pruned>>, CalibReport)> {
    let (covered, mut fallbacks) = views(
        g,
        targets
            .iter()
            .map(|t| (t.node, t.slot, t.weight, t.name.to_string())),
    );
    if covered.is_empty() {
        return Err(Error::unsupported(
            doc.path(),
            format!(
                "--criterion {criterion}: no layer can be calibrated ({})",
                fallbacks
                    .iter()
                    .take(4)
                    .map(|f| format!("{}: {}", f.name, f.reason))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ));
    }
    let mut out: Vec<Option<Pruned>> = targets.iter().map(|_| None).collect();
    let mut warnings = Vec::new();
    let mut layers = Vec::new();
    // Sequential (as SparseGPT and Wanda do it): a layer's statistics come from the model with
    // every layer before it already pruned, so it also corrects their error. Layers at the
    // same depth (no covered layer between them) share a pass.
    let waves: Vec<Vec<usize>> = if opts.one_pass {
        vec![(0..covered.len()).collect()]
    } else {
        waves(g, &covered.iter().map(|(_, l)| l.node).collect::<Vec<_>>())
    };
    let mut edits: HashMap<usize, Bytes> = HashMap::new();
    let mut plain = Vec::new();
    let mut summary: Option<capture::CalibSummary> = None;
    for (wi, wave) in waves.iter().enumerate() {
        let lins: Vec<Linear> = wave.iter().map(|&c| covered[c].1.clone()).collect();
        progress.stage(&if waves.len() > 1 {
            format!(
                "calibrating ({criterion}, layer group {} of {})",
                wi + 1,
                waves.len()
            )
        } else {
            format!("calibrating ({criterion})")
        });
        let current;
        let source = if edits.is_empty() {
            doc
        } else {
            current = doc.with_tensor_data(&edits);
            &current
        };
        // After the first pass, also the original's inputs (the target, see prune_one).
        let reference = (!edits.is_empty() && opts.correct).then_some(capture::Reference {
            doc,
            g,
            layers: &lins,
        });
        let (stats, s) = capture::collect(source, g, &lins, reference, opts, progress)?;
        summary = Some(match summary {
            None => s,
            Some(acc) => acc.merge(s),
        });
        for (&c, st) in wave.iter().zip(&stats) {
            let (i, lin) = &covered[c];
            let t = &targets[*i];
            warnings.extend(few_rows_warning(lin, st));
            match prune_one(g, t, lin, st, criterion, opts) {
                Ok(p) => {
                    if p.plain_groups > 0 {
                        plain.push(t.name.to_string());
                    }
                    if let Some(h) = g.tensor(t.weight).handle {
                        edits.insert(h, p.data.clone());
                    }
                    if let Some((h, b)) = &p.bias {
                        edits.insert(*h, b.clone());
                    }
                    out[*i] = Some(p);
                    layers.push(t.name.to_string());
                }
                Err(reason) => fallbacks.push(Fallback {
                    name: t.name.to_string(),
                    reason,
                }),
            }
        }
    }
    let summary = summary.expect("at least one wave");
    Ok((
        out,
        CalibReport {
            purpose: "prune",
            criterion: Some(criterion),
            dampening: opts.dampening,
            capture: summary,
            layers,
            fallbacks,
            plain,
            warnings,
        },
    ))
}

/// Every weight-bearing node of `g` with a stored constant weight (its first weight input):
/// (node, slot, weight, node name).
fn layer_weights(g: &Graph) -> impl Iterator<Item = (usize, usize, TensorId, String)> + '_ {
    let prod = crate::model::stats::producers(g);
    g.nodes.iter().enumerate().filter_map(move |(ni, node)| {
        let slot = *crate::model::stats::weight_inputs(&node.op)?.0.first()?;
        let input = (*node.inputs.get(slot)?)?;
        let w = crate::model::stats::stored_constant(g, &prod, input)?;
        Some((ni, slot, w, node.name.clone()))
    })
}

/// Groups layer nodes `nodes` by depth: wave `d` holds the layers with `d` of the others on
/// their longest path from the inputs. Nodes are in topological order (as both formats store
/// them).
fn waves(g: &Graph, nodes: &[usize]) -> Vec<Vec<usize>> {
    let layer_of: HashMap<usize, usize> = nodes.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let mut depth: HashMap<TensorId, usize> = HashMap::new();
    let mut level = vec![0usize; nodes.len()];
    for (ni, node) in g.nodes.iter().enumerate() {
        let d = node
            .inputs
            .iter()
            .flatten()
            .filter_map(|t| depth.get(t))
            .copied()
            .max()
            .unwrap_or(0);
        let out = match layer_of.get(&ni) {
            Some(&l) => {
                level[l] = d;
                d + 1
            }
            None => d,
        };
        for &t in &node.outputs {
            depth.insert(t, out);
        }
    }
    let mut waves: Vec<Vec<usize>> = vec![Vec::new(); level.iter().max().map_or(0, |m| m + 1)];
    for (l, &d) in level.iter().enumerate() {
        waves[d].push(l);
    }
    waves.retain(|w| !w.is_empty());
    waves
}

/// For `--importance activation`: per layer that mixes channels (by main-graph node), what
/// each of its input channels contributes to its outputs on the calibration data,
/// `Σ_o Σ_k W[o, c, k]² · E[x_{c,k}²]` (the output energy lost if the channel went and nothing
/// were compensated), from one pass over the original model.
pub(crate) fn channel_energy(
    doc: &Document,
    opts: &CalibOptions,
    progress: &dyn Progress,
) -> Result<crate::structural::importance::Energy> {
    let model = doc.to_model()?;
    let g = model.main();
    let (covered, _) = views(g, layer_weights(g));
    let lins: Vec<Linear> = covered
        .into_iter()
        .map(|(_, l)| l)
        .filter(|l| l.mixes_channels())
        .collect();
    progress.stage("calibrating (channel importance)");
    let (stats, _) = capture::collect(doc, g, &lins, None, opts, progress)?;
    let mut out = HashMap::new();
    for (lin, s) in lins.iter().zip(&stats) {
        let Some(w) = constant_values(g, lin.weight) else {
            continue;
        };
        let gram = &s.gram[0];
        let n = gram[(lin.k, lin.k)].max(1.0);
        let (channels, channel_of): (usize, Box<dyn Fn(usize) -> usize>) = match &lin.kind {
            Kind::Dense => (lin.k, Box::new(|j| j)),
            Kind::Conv(c) => {
                let (cin, per) = (c.cin, c.kernel[0] * c.kernel[1]);
                if c.channel_first {
                    (cin, Box::new(move |j| j / per))
                } else {
                    (cin, Box::new(move |j| j % cin))
                }
            }
        };
        let mut e = vec![0f64; channels];
        for j in 0..lin.k {
            let col: f64 = (0..lin.out)
                .map(|o| (w[lin.index(o, j)] as f64).powi(2))
                .sum();
            e[channel_of(j)] += col * gram[(j, j)] / n;
        }
        out.insert(lin.node, e);
    }
    Ok(out)
}

/// Real values of a constant: through its codec, or for an int32 bias, `q · scale` (per
/// output channel, or one scale).
fn constant_values(g: &Graph, t: TensorId) -> Option<Vec<f32>> {
    let tensor = g.tensor(t);
    if tensor.dtype != crate::model::DType::I32 {
        return crate::structural::importance::real_values(g, t).map(|(v, _)| v);
    }
    let scale = &tensor.quant.as_ref()?.scale;
    Some(
        tensor
            .data
            .as_ref()?
            .chunks_exact(4)
            .enumerate()
            .map(|(o, c)| {
                i32::from_le_bytes(c.try_into().expect("4")) as f32
                    * *scale.get(o).or(scale.first()).unwrap_or(&1.0)
            })
            .collect(),
    )
}

/// Structural pruning with calibration data: every layer that lost input channels (and mixes
/// channels) is refit by ridge least squares so that its outputs on the calibration data
/// match the original model's, its bias absorbing the mean of what the removed inputs
/// contributed. `edited` is `original` with `edits` applied.
pub(crate) fn refit_structure(
    original: &Document,
    edited: &Document,
    edits: &StructureEdits,
    opts: &CalibOptions,
    progress: &dyn Progress,
) -> Result<(Document, CalibReport)> {
    let m0 = original.to_model()?;
    let m1 = edited.to_model()?;
    let (g0, g1) = (m0.main(), m1.main());
    // Layers whose weight lost input positions, with the kept columns and rows.
    let candidates: Vec<_> = layer_weights(g0)
        .filter_map(|(ni, slot, wid, name)| {
            let edit = edits.constants.get(&g0.tensor(wid).handle?)?;
            Some((ni, slot, wid, name, edit))
        })
        .collect();
    let (covered, mut fallbacks) = views(
        g0,
        candidates
            .iter()
            .map(|(ni, slot, wid, name, _)| (*ni, *slot, *wid, name.clone())),
    );
    let mut jobs = Vec::new();
    for (i, lin) in covered {
        let edit = candidates[i].4;
        let node = &g0.nodes[lin.node];
        let rank = g0.tensor(lin.weight).shape.as_ref().map_or(2, |s| s.len());
        let (out_axis, in_axis) =
            crate::magnitude::layout(&node.op, WEIGHT_SLOT, node.attrs.trans_b, rank);
        let Some(in_axis) = in_axis.filter(|_| lin.mixes_channels()) else {
            continue; // depthwise / grouped: no channel mixing to refit
        };
        let Some((_, kept_in)) = edit.keeps.iter().find(|(a, _)| *a == in_axis) else {
            continue; // only its output channels went
        };
        let rows = edit
            .keeps
            .iter()
            .find(|(a, _)| *a == out_axis)
            .map(|(_, k)| k.clone())
            .unwrap_or_else(|| (0..lin.out).collect());
        let cols: Vec<usize> = match &lin.kind {
            Kind::Dense => kept_in.clone(),
            Kind::Conv(c) => {
                let kept: std::collections::HashSet<usize> = kept_in.iter().copied().collect();
                let [kh, kw] = c.kernel;
                (0..lin.k)
                    .filter(|&col| {
                        let ci = if c.channel_first {
                            col / (kh * kw)
                        } else {
                            col % c.cin
                        };
                        kept.contains(&ci)
                    })
                    .collect()
            }
        };
        jobs.push(RefitJob { lin, cols, rows });
    }
    // The edited layer of each job: same node, its weight and bias as the edit left them.
    let mut ready = Vec::new();
    let prod1 = crate::model::stats::producers(g1);
    for job in jobs {
        let lin = &job.lin;
        let w1 = g1.nodes[lin.node]
            .inputs
            .get(WEIGHT_SLOT)
            .copied()
            .flatten()
            .and_then(|w| crate::model::stats::stored_constant(g1, &prod1, w));
        match w1.map(|w| layer::linear(g1, lin.node, WEIGHT_SLOT, w)) {
            Some(Ok(l)) if l.out == job.rows.len() && l.k == job.cols.len() => ready.push((job, l)),
            _ => fallbacks.push(Fallback {
                name: lin.name.clone(),
                reason: "the edited layer's weight does not follow its keeps".into(),
            }),
        }
    }
    if ready.is_empty() {
        return Err(Error::unsupported(
            original.path(),
            "--calib with channel pruning: no layer that lost input channels can be refit"
                .to_string(),
        ));
    }
    // Sequential (default): layer by layer in depth order, each refit on the inputs it sees in
    // the model refit so far, against the original model's outputs. One pass: every layer on
    // the original model's inputs, restricted to the kept channels.
    let waves: Vec<Vec<usize>> = if opts.one_pass {
        vec![(0..ready.len()).collect()]
    } else {
        waves(
            g0,
            &ready.iter().map(|(j, _)| j.lin.node).collect::<Vec<_>>(),
        )
    };
    let mut payloads: HashMap<usize, Bytes> = HashMap::new();
    let mut layers = Vec::new();
    let mut warnings = Vec::new();
    let mut summary: Option<capture::CalibSummary> = None;
    for (wi, wave) in waves.iter().enumerate() {
        progress.stage(&if waves.len() > 1 {
            format!("refitting (layer group {} of {})", wi + 1, waves.len())
        } else {
            "refitting".to_string()
        });
        let lins0: Vec<Linear> = wave.iter().map(|&i| ready[i].0.lin.clone()).collect();
        let (stats, s) = if opts.one_pass {
            capture::collect(original, g0, &lins0, None, opts, progress)?
        } else {
            let lins1: Vec<Linear> = wave.iter().map(|&i| ready[i].1.clone()).collect();
            let current = edited.with_tensor_data(&payloads);
            capture::collect(
                &current,
                g1,
                &lins1,
                Some(capture::Reference {
                    doc: original,
                    g: g0,
                    layers: &lins0,
                }),
                opts,
                progress,
            )?
        };
        summary = Some(match summary {
            None => s,
            Some(acc) => acc.merge(s),
        });
        for (&i, s) in wave.iter().zip(&stats) {
            let (job, lin1) = &ready[i];
            match refit_one(g0, g1, job, lin1, s, opts) {
                Ok(p) => {
                    warnings.extend(few_rows_warning(lin1, s));
                    payloads.extend(p);
                    layers.push(job.lin.name.clone());
                }
                Err(reason) => fallbacks.push(Fallback {
                    name: job.lin.name.clone(),
                    reason,
                }),
            }
        }
    }
    let summary = summary.expect("at least one wave");
    let refit = edited.with_tensor_data(&payloads);
    Ok((
        refit,
        CalibReport {
            purpose: "refit",
            criterion: None,
            dampening: opts.dampening,
            capture: summary,
            layers,
            fallbacks,
            plain: Vec::new(),
            warnings,
        },
    ))
}

/// A layer that lost input channels: its original view, kept columns and kept rows.
struct RefitJob {
    lin: Linear,
    cols: Vec<usize>,
    rows: Vec<usize>,
}

/// Refits one layer: the new payloads of its edited weight (`lin1`) and bias.
fn refit_one(
    g0: &Graph,
    g1: &Graph,
    job: &RefitJob,
    lin1: &Linear,
    s: &capture::Stats,
    opts: &CalibOptions,
) -> std::result::Result<Vec<(usize, Bytes)>, String> {
    let lin = &job.lin;
    let w0 = constant_values(g0, lin.weight).ok_or("its weight cannot be read as real values")?;
    let b0 = lin.bias.and_then(|b| constant_values(g0, b));
    if lin.bias.is_some() && b0.as_ref().is_none_or(|b| b.len() != lin.out) {
        return Err("its bias cannot be read as one real value per output".into());
    }
    // Without a bias in the edited layer there is nothing to put the intercept in.
    let b0: Option<Vec<f64>> = b0
        .filter(|_| lin1.bias.is_some())
        .map(|b| b.iter().map(|&x| x as f64).collect());
    let w = Mat::<f64>::from_fn(lin.out, lin.k, |o, c| w0[lin.index(o, c)] as f64);
    let (wn, bn) = match &s.cross {
        Some(cross) => solve::refit_cross(
            w.as_ref(),
            b0.as_deref(),
            s.gram[0].as_ref(),
            cross[0].as_ref(),
            opts.dampening,
        )?,
        None => solve::refit(
            w.as_ref(),
            b0.as_deref(),
            s.gram[0].as_ref(),
            &job.cols,
            opts.dampening,
        )?,
    };
    let t1 = g1.tensor(lin1.weight);
    let (Some(h1), Some(shape1)) = (t1.handle, t1.fixed_shape()) else {
        return Err("the edited weight has no storage".into());
    };
    let codec = Codec::new(t1.dtype, &shape1, t1.quant.as_ref())?;
    let mut values = vec![0f64; lin1.out * lin1.k];
    for (r, &o) in job.rows.iter().enumerate() {
        for c in 0..lin1.k {
            values[lin1.index(r, c)] = wn[(o, c)];
        }
    }
    let mut out = vec![(h1, Bytes::from(codec.encode(&values)))];
    if let (Some(bn), Some(b1)) = (bn, lin1.bias) {
        let current = constant_values(g1, b1).ok_or("the edited bias cannot be read")?;
        if current.len() != job.rows.len() {
            return Err("the edited bias does not follow the kept outputs".into());
        }
        let delta: Vec<f64> = job
            .rows
            .iter()
            .zip(&current)
            .map(|(&o, &c)| bn[o] - c as f64)
            .collect();
        out.push(bias_payload(g1, b1, &delta)?);
    }
    Ok(out)
}

/// The weight input of every layer [`layer::linear`] covers (Conv, Gemm, MatMul, CONV_2D, …).
const WEIGHT_SLOT: usize = 1;
