//! One tensor's magnitude pruning: its job (pattern, sparsity, codec), block geometry and
//! masks, the streaming cut of the unstructured hot path, and its report line.

use super::candidate::Candidate;
use super::options::Pattern;
use super::report::LayerResult;
use crate::magnitude::recipe::ZeroedF32;
use crate::magnitude::select;
use crate::magnitude::values::Codec;
use crate::model::DType;
use bytes::Bytes;
use rayon::prelude::*;

/// A tensor's new payload: computed, or left to the writer.
pub(super) enum Edit {
    Data(Bytes),
    Deferred(ZeroedF32),
}

/// The scores a global / LAMP threshold pools for one tensor.
pub(super) enum PooledScores<'a> {
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
pub(super) struct Job {
    pub(super) cand: Candidate,
    pub(super) codec: Codec,
    pub(super) pattern: Pattern,
    pub(super) sparsity: Option<f64>,
    /// Decided by the global / LAMP threshold rather than its own sparsity.
    pub(super) pooled: bool,
    pub(super) rule: Option<String>,
}

/// Block geometry: which block each element belongs to.
pub(super) struct Blocks {
    pub(super) dims: Vec<usize>,
    pub(super) strides: Vec<usize>,
    pub(super) out_axis: usize,
    pub(super) in_axis: usize,
    pub(super) rows: usize,
    pub(super) cols: usize,
}

impl Blocks {
    pub(super) fn new(
        shape: &[u64],
        out_axis: usize,
        in_axis: usize,
        rows: usize,
        cols: usize,
    ) -> Self {
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

    pub(super) fn count(&self) -> usize {
        self.dims.iter().product::<usize>() / (self.rows * self.cols)
    }

    pub(super) fn unit(&self, e: usize) -> usize {
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

/// Unit scores: element magnitudes, or block L2 norms.
pub(super) fn unit_scores<'a>(job: &Job, mags: &'a [f32]) -> std::borrow::Cow<'a, [f32]> {
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
pub(super) fn expand(job: &Job, unit_mask: Vec<bool>, n: usize) -> Vec<bool> {
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

pub(super) fn n_of_m_mask(job: &Job, mags: &[f32], n: usize, m: usize) -> Vec<bool> {
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
pub(super) fn target_count(s: f64, units: usize) -> usize {
    ((s * units as f64).round() as usize).min(units.saturating_sub(1))
}

pub(super) fn fraction(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Zeros of a tensor: counted by the cut when it ran on the magnitudes themselves.
pub(super) fn cut_zeros(mags: &[f32], cut: &select::Cut, on_other_scores: bool) -> u64 {
    if on_other_scores {
        mags.par_iter().filter(|&&m| m == 0.0).count() as u64
    } else {
        cut.zeros as u64
    }
}

/// The largest score among selected units.
pub(super) fn max_selected(scores: &[f32], mask: &[bool]) -> Option<f64> {
    scores
        .par_iter()
        .zip(mask)
        .filter(|p| *p.1)
        .map(|p| *p.0 as f64)
        .reduce_with(f64::max)
}

/// A pruned tensor: its new payload (storage handle, edit), if any, and its report line.
pub(super) type Outcome = (Option<(usize, Edit)>, LayerResult);

/// Prunes one tensor: its new payload (when anything changed) and its report line. `pooled`
/// is the count a global / LAMP threshold assigned to it.
pub(super) fn prune_one(
    job: &Job,
    pooled: Option<usize>,
    lamp: Option<&[f32]>,
    defer: bool,
) -> Outcome {
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

/// The edit and report line of a tensor pruned with calibration data.
pub(super) fn calibrated_result(job: &Job, p: crate::calib::Pruned) -> Outcome {
    let layer = layer_result(job, p.zeros_before, p.zeros_after, None);
    (Some((job.cand.handle, Edit::Data(p.data))), layer)
}

/// A tensor's report line.
pub(super) fn layer_result(
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
