//! How a candidate's outputs agree with the original's, sample by sample: dequantized values,
//! cosine per sample, arg-max agreement of classifier-like outputs. Shared by `verify` (seeded
//! random inputs) and `validate` (the user's data).

use crate::error::{Error, Result};
use tract_onnx::prelude::*;

/// The agreement of one output over the samples seen.
#[derive(Debug, Clone)]
pub(crate) struct Stats {
    pub(crate) index: usize,
    pub(crate) shape: Vec<usize>,
    /// One row per sample with a single axis of size ≥ 2: top-1 agreement applies.
    pub(crate) classifier: bool,
    pub(crate) max_abs_diff: f64,
    pub(crate) mean_abs_diff: f64,
    pub(crate) cosine_mean: f64,
    pub(crate) cosine_min: f64,
    pub(crate) top1_agreement: Option<f64>,
    pub(crate) candidate_nonfinite: u64,
}

/// Real values of an output: dequantized when the tensor is quantized.
pub(crate) fn real_values(t: &Tensor) -> Result<Vec<f32>> {
    let fail = |e: TractError| Error::Verification(format!("reading an output: {e}"));
    if t.datum_type().is_quantized() {
        let (zp, scale) = t.datum_type().zp_scale();
        let mut plain = t.clone();
        unsafe { plain.set_datum_type(t.datum_type().unquantized()) };
        let ints = plain.cast_to::<i32>().map_err(fail)?;
        return Ok(ints
            .to_plain_array_view::<i32>()
            .map_err(fail)?
            .iter()
            .map(|&q| (q - zp) as f32 * scale)
            .collect());
    }
    let f = t.cast_to::<f32>().map_err(fail)?;
    Ok(f.to_plain_array_view::<f32>()
        .map_err(fail)?
        .iter()
        .copied()
        .collect())
}

/// Streaming statistics of one output.
pub(crate) struct Accumulator {
    pub(crate) index: usize,
    pub(crate) shape: Vec<usize>,
    /// Values per sample (the whole output when it has no sample axis).
    pub(crate) row_len: usize,
    pub(crate) batched: bool,
    pub(crate) classifier: bool,
    pub(crate) max: f64,
    pub(crate) sum: f64,
    pub(crate) n: u64,
    pub(crate) cos_sum: f64,
    pub(crate) cos_min: f64,
    pub(crate) rows: u64,
    pub(crate) agree: u64,
    pub(crate) nonfinite: u64,
    /// One value per sample: the cosine is taken over the samples' values together (a single
    /// value's cosine is only its sign), from these sums.
    pub(crate) pooled: bool,
    pooled_sums: [f64; 3],
}

/// Cosine similarity from a dot product and the two squared norms: 1 for two zero vectors, 0
/// when one is zero or not finite.
fn cosine(dot: f64, na: f64, nb: f64) -> f64 {
    if na == 0.0 && nb == 0.0 {
        1.0
    } else if na == 0.0 || nb == 0.0 || !(dot.is_finite() && nb.is_finite()) {
        0.0
    } else {
        (dot / (na.sqrt() * nb.sqrt())).clamp(-1.0, 1.0)
    }
}

/// Index of the largest value; the first on ties (as numpy's argmax), NaN never wins.
pub(crate) fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] || v[best].is_nan() && !x.is_nan() {
            best = i;
        }
    }
    best
}

impl Accumulator {
    pub(crate) fn new(index: usize, shape: &[usize], batch: usize) -> Self {
        let batched = !shape.is_empty() && shape[0] == batch;
        let len: usize = shape.iter().product();
        let row_len = if batched { len / batch.max(1) } else { len };
        let row_shape = if batched { &shape[1..] } else { shape };
        let classifier = row_len >= 2 && row_shape.iter().filter(|&&d| d > 1).count() == 1;
        Accumulator {
            index,
            shape: shape.to_vec(),
            row_len,
            batched,
            classifier,
            max: 0.0,
            sum: 0.0,
            n: 0,
            cos_sum: 0.0,
            cos_min: f64::INFINITY,
            rows: 0,
            agree: 0,
            nonfinite: 0,
            pooled: row_len == 1,
            pooled_sums: [0.0; 3],
        }
    }

    /// Adds the first `valid` samples of a batch; returns the arg-maxes of both (classifiers).
    pub(crate) fn add(&mut self, a: &[f32], b: &[f32], valid: usize) -> (Vec<usize>, Vec<usize>) {
        let rows = if self.batched { valid } else { 1 };
        let (mut ka, mut kb) = (Vec::new(), Vec::new());
        for r in 0..rows {
            let lo = r * self.row_len;
            let (x, y) = (&a[lo..lo + self.row_len], &b[lo..lo + self.row_len]);
            let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
            for (&p, &q) in x.iter().zip(y) {
                if !q.is_finite() {
                    self.nonfinite += 1;
                }
                let (p, q) = (p as f64, q as f64);
                let d = (p - q).abs();
                if d.is_nan() {
                    self.max = f64::INFINITY;
                } else {
                    self.max = self.max.max(d);
                    self.sum += d;
                }
                dot += p * q;
                na += p * p;
                nb += q * q;
            }
            self.n += x.len() as u64;
            self.rows += 1;
            if self.pooled {
                for (s, v) in self.pooled_sums.iter_mut().zip([dot, na, nb]) {
                    *s += v;
                }
            } else {
                let cos = cosine(dot, na, nb);
                self.cos_sum += cos;
                self.cos_min = self.cos_min.min(cos);
            }
            if self.classifier {
                let (i, j) = (argmax(x), argmax(y));
                self.agree += (i == j) as u64;
                ka.push(i);
                kb.push(j);
            }
        }
        (ka, kb)
    }

    pub(crate) fn finish(self) -> Stats {
        let rows = self.rows.max(1) as f64;
        let (cosine_mean, cosine_min) = if self.pooled {
            let [dot, na, nb] = self.pooled_sums;
            let c = cosine(dot, na, nb);
            (c, c)
        } else if self.rows == 0 {
            (1.0, 1.0)
        } else {
            (self.cos_sum / rows, self.cos_min)
        };
        Stats {
            index: self.index,
            shape: self.shape,
            classifier: self.classifier,
            max_abs_diff: self.max,
            mean_abs_diff: if self.n == 0 {
                0.0
            } else {
                self.sum / self.n as f64
            },
            cosine_mean,
            cosine_min,
            top1_agreement: self.classifier.then(|| self.agree as f64 / rows),
            candidate_nonfinite: self.nonfinite,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_value_per_sample_is_compared_across_the_samples() {
        // A VAD-like probability per sample: each value alone has cosine 1 with any positive
        // value, so the samples' values are compared together.
        let mut acc = Accumulator::new(0, &[1, 1], 1);
        for (a, b) in [(0.9, 0.5), (0.1, 0.5), (0.8, 0.5)] {
            acc.add(&[a], &[b], 1);
        }
        let s = acc.finish();
        assert!((s.cosine_mean - 0.8607).abs() < 1e-3, "{}", s.cosine_mean);
        assert_eq!(s.cosine_min, s.cosine_mean);
        assert!(!s.classifier);
        // Rows of several values keep their per-sample cosine.
        let mut acc = Accumulator::new(0, &[1, 2], 1);
        acc.add(&[1.0, 0.0], &[1.0, 0.0], 1);
        acc.add(&[1.0, 0.0], &[0.0, 1.0], 1);
        assert_eq!(acc.finish().cosine_mean, 0.5);
    }
}
