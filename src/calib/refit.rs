//! Calibration for structural pruning: channel energies for `--importance activation`, and
//! the least-squares refit of the layers that lost input channels.

use super::capture::Extent;
use super::layer::{Kind, Linear};
use super::sequential::{self, Side};
use super::unstructured::{bias_payload, few_rows_warning, views};
use super::{capture, layer, solve};
use super::{layer_weights, waves, CalibOptions, CalibReport, Fallback, WEIGHT_SLOT};
use crate::document::Document;
use crate::error::{Error, Result};
use crate::magnitude::values::Codec;
use crate::model::{Graph, StructureEdits, TensorId};
use crate::progress::Progress;
use bytes::Bytes;
use faer::Mat;
use std::collections::HashMap;

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
    let (stats, _) = capture::collect(doc, g, &lins, None, Extent::Full, opts, progress)?;
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
pub(super) fn constant_values(g: &Graph, t: TensorId) -> Option<Vec<f32>> {
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
    let mut timing = super::CalibTiming::default();
    let started = std::time::Instant::now();
    let nodes: Vec<usize> = ready.iter().map(|(j, _)| j.lin.node).collect();
    let mut staged = if sequential::same_topology(g0, g1) {
        sequential::open(
            Side {
                doc: original,
                g: g0,
            },
            &nodes,
            waves.len(),
            opts,
            &mut warnings,
            progress,
        )?
    } else {
        None
    };
    for (wi, wave) in waves.iter().enumerate() {
        let label = if waves.len() > 1 {
            format!("refitting (layer depth {} of {})", wi + 1, waves.len())
        } else {
            "refitting".to_string()
        };
        progress.stage(&label);
        let lins0: Vec<Linear> = wave.iter().map(|&i| ready[i].0.lin.clone()).collect();
        let (stats, s) = if opts.one_pass {
            capture::collect(original, g0, &lins0, None, Extent::Full, opts, progress)?
        } else {
            let lins1: Vec<Linear> = wave.iter().map(|&i| ready[i].1.clone()).collect();
            let current = edited.with_tensor_data(&payloads);
            let run = staged.as_mut().map(|sq| {
                let (cur, original) = (
                    Side {
                        doc: &current,
                        g: g1,
                    },
                    Side {
                        doc: original,
                        g: g0,
                    },
                );
                let want = capture::Want {
                    layers: &lins1,
                    reference: Some(&lins0),
                    extent: Extent::Full,
                };
                sq.wave(cur, Some(original), want, &label, progress)
            });
            match sequential::or_whole(run, &mut staged, &mut warnings)? {
                Some(done) => done,
                None => capture::collect(
                    &current,
                    g1,
                    &lins1,
                    Some(capture::Reference {
                        doc: original,
                        g: g0,
                        layers: &lins0,
                    }),
                    Extent::Full,
                    opts,
                    progress,
                )?,
            }
        };
        summary = Some(match summary {
            None => s,
            Some(acc) => acc.merge(s),
        });
        let solving = std::time::Instant::now();
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
        timing.solve_seconds += solving.elapsed().as_secs_f64();
    }
    timing.capture_seconds = started.elapsed().as_secs_f64() - timing.solve_seconds;
    timing.peak_rss = crate::io::peak_rss();
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
            timing,
        },
    ))
}

/// A layer that lost input channels: its original view, kept columns and kept rows.
pub(super) struct RefitJob {
    pub(super) lin: Linear,
    pub(super) cols: Vec<usize>,
    pub(super) rows: Vec<usize>,
}

/// Refits one layer: the new payloads of its edited weight (`lin1`) and bias.
pub(super) fn refit_one(
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
