//! Calibrated unstructured pruning (SparseGPT, Wanda) of the targets a prune hands over: each
//! layer's statistics, its mask and reconstruction, and the bias correction of its mean shift.

use super::layer::{Kind, Linear};
use super::sequential::{self, Side};
use super::{capture, layer, solve};
use super::{waves, CalibOptions, CalibReport, Criterion, Fallback, Pruned, Target};
use crate::document::Document;
use crate::error::{Error, Result};
use crate::model::{Graph, TensorId};
use crate::progress::Progress;
use bytes::Bytes;
use faer::Mat;
use rayon::prelude::*;
use std::collections::HashMap;

/// The layers of `targets` that calibration can cover (main graph, a linear view, statistics
/// within the memory caps), and the fallbacks.
pub(super) fn views(
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

pub(super) fn few_rows_warning(lin: &Linear, s: &capture::Stats) -> Option<String> {
    (s.rows < lin.k as u64).then(|| {
        format!(
            "{}: {} calibration rows for {} input features; the fit is regularized by the dampening (use more samples for a better one)",
            lin.name, s.rows, lin.k
        )
    })
}

/// Columns of `lin` in N:M order: position `new` reads column `perm[new]`.
pub(super) fn nm_permutation(lin: &Linear) -> Option<Vec<usize>> {
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
pub(super) fn prune_one(
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
            let amount = match t.amount {
                solve::Amount::Count(_) => solve::Amount::Count(counts[gi]),
                a => a,
            };
            let new = match criterion {
                Criterion::Wanda => {
                    let diag = stats.diagonal(gi);
                    let norms: Vec<f64> = (0..k).map(|i| diag[col(i)]).collect();
                    let mask = solve::wanda(stored.as_ref(), &norms, amount);
                    zeroed(stored.clone(), &mask)
                }
                Criterion::Sparsegpt => {
                    let gram =
                        Mat::<f64>::from_fn(k + 1, k + 1, |i, j| stats.gram[gi][(aug(i), aug(j))]);
                    let cross = stats
                        .cross
                        .as_ref()
                        .map(|c| Mat::<f64>::from_fn(k + 1, k + 1, |i, j| c[gi][(aug(i), aug(j))]));
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
            let deltas = match stats
                .means(gi)
                .filter(|_| lin.bias.is_some() && opts.correct)
            {
                Some((cur, reference)) => {
                    let order = |m: &[f64]| (0..k).map(|j| m[col(j)]).collect::<Vec<_>>();
                    let cur = order(&cur);
                    let reference = reference.as_deref().map(order);
                    mean_shift(&stored, &new, &cur, reference.as_deref().unwrap_or(&cur))
                        .into_iter()
                        .enumerate()
                        .map(|(r, d)| (rows[r], d))
                        .collect()
                }
                None => Vec::new(),
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
pub(super) fn zeroed(mut w: Mat<f64>, mask: &[bool]) -> Mat<f64> {
    let k = w.ncols();
    for (e, _) in mask.iter().enumerate().filter(|p| *p.1) {
        w[(e / k, e % k)] = 0.0;
    }
    w
}

/// SparseGPT on one group: `stored` (rows × k) with its augmented Gram matrix `gram`
/// ((k + 1)²) and, after the first sequential pass, the cross statistics with the original
/// model's inputs. Returns the new weights and whether plain zeroing was kept instead.
pub(super) fn sparsegpt_group(
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
/// `Σ_j W_j x̄_j − Σ_j W'_j x̄'_j` (x̄ = `mean_ref`: the original model's mean input, from the
/// cross statistics when there are some; x̄' = `mean_cur`: the mean input the pruned layer
/// sees).
pub(super) fn mean_shift(
    stored: &Mat<f64>,
    new: &Mat<f64>,
    mean_cur: &[f64],
    mean_ref: &[f64],
) -> Vec<f64> {
    (0..stored.nrows())
        .map(|r| {
            (0..stored.ncols())
                .map(|j| stored[(r, j)] * mean_ref[j] - new[(r, j)] * mean_cur[j])
                .sum()
        })
        .collect()
}

/// The payload of bias `b` (a main-graph constant) plus `delta` (real units), by its storage
/// handle.
pub(super) fn bias_payload(
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
    let nodes: Vec<usize> = covered.iter().map(|(_, l)| l.node).collect();
    // Wanda reads only the diagonal and the means: no Gram products.
    let extent = match criterion {
        Criterion::Wanda => capture::Extent::Diagonal,
        _ => capture::Extent::Full,
    };
    let mut timing = super::CalibTiming::default();
    let started = std::time::Instant::now();
    let mut staged = sequential::open(
        Side { doc, g },
        &nodes,
        waves.len(),
        opts,
        &mut warnings,
        progress,
    )?;
    for (wi, wave) in waves.iter().enumerate() {
        let lins: Vec<Linear> = wave.iter().map(|&c| covered[c].1.clone()).collect();
        let label = if waves.len() > 1 {
            format!(
                "calibrating ({criterion}, layer depth {} of {})",
                wi + 1,
                waves.len()
            )
        } else {
            format!("calibrating ({criterion})")
        };
        progress.stage(&label);
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
        let cross = reference.as_ref().map(|r| r.layers);
        let run = staged.as_mut().map(|sq| {
            let original = opts.correct.then_some(Side { doc, g });
            sq.wave(
                Side { doc: source, g },
                original,
                capture::Want {
                    layers: &lins,
                    reference: cross,
                    extent,
                },
                &label,
                progress,
            )
        });
        let (stats, s) = match sequential::or_whole(run, &mut staged, &mut warnings)? {
            Some(done) => done,
            None => capture::collect(source, g, &lins, reference, extent, opts, progress)?,
        };
        summary = Some(match summary {
            None => s,
            Some(acc) => acc.merge(s),
        });
        let solving = std::time::Instant::now();
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
        timing.solve_seconds += solving.elapsed().as_secs_f64();
    }
    timing.capture_seconds = started.elapsed().as_secs_f64() - timing.solve_seconds;
    timing.peak_rss = crate::io::peak_rss();
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
            timing,
        },
    ))
}
