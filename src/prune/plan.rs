//! Planning a prune in memory: discover the weights, allocate sparsities (layer, global,
//! LAMP, sensitivity), prune every tensor in parallel, with calibration where asked.

use super::candidate::{discover, pattern_misfit};
use super::options::{Pattern, PruneOptions, Scope};
use super::report::{PruneReport, PruneTotals, SkippedWeight, REPORT_SCHEMA};
use super::tensor::{
    calibrated_result, fraction, prune_one, target_count, unit_scores, Edit, Job, Outcome,
    PooledScores,
};
use crate::document::Document;
use crate::error::{Error, Result};
use crate::magnitude::recipe::ZeroedF32;
use crate::magnitude::select::{self, Scores as _};
use crate::magnitude::values::Codec;
use crate::model::stats;
use crate::model::Model;
use crate::progress::{Progress, Silent};
use bytes::Bytes;
use rayon::prelude::*;
use std::collections::HashMap;

/// The outcome of pruning in memory: new payloads by storage handle, and the report.
pub struct Plan {
    pub edits: HashMap<usize, Bytes>,
    /// Pruned float32 payloads left to the writer (only when planned with `defer`; see
    /// [`crate::model::payload`]).
    pub deferred: Vec<ZeroedF32>,
    pub report: PruneReport,
}

/// Prunes the jobs calibration covers with `opts.criterion`: new payloads by job index.
pub(super) fn prune_calibrated(
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

/// Prunes `doc` in memory: the new payloads and the report (without `write`).
pub fn plan(doc: &Document, opts: &PruneOptions) -> Result<Plan> {
    plan_with(doc, opts, false, &Silent)
}

/// [`plan`]; with `defer`, float32 payloads pruned on their own magnitudes are left to the
/// writer ([`Plan::deferred`]) instead of being computed.
pub(super) fn plan_with(
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
            phases: Vec::new(),
        },
    })
}
