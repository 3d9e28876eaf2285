//! The numerical methods, on one weight matrix `W` (rows: output channels, columns: input
//! features) and the Gram matrix `XᵀX` of its inputs, all in f64.
//!
//! - [`wanda`]: Sun et al., "A Simple and Effective Pruning Approach for Large Language
//!   Models" (ICLR 2024): prune by `|W_ij| · ‖X_j‖₂`, compared within each output row.
//! - [`sparsegpt`]: Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately
//!   Pruned in One-Shot" (ICML 2023), after Optimal Brain Surgeon (Hassibi & Stork, 1993) and
//!   OBC (Frantar & Alistarh, NeurIPS 2022): columns are pruned left to right and each pruned
//!   weight's error is spread over the columns not yet visited, through the upper Cholesky
//!   factor of `H⁻¹`, `H = XᵀX + λI`.
//! - [`refit`]: ridge least squares of a layer on the inputs that remain after channel pruning
//!   (He et al., "Channel Pruning for Accelerating Very Deep Neural Networks", ICCV 2017; Luo
//!   et al., "ThiNet", ICCV 2017), with an intercept, so the mean of what the removed channels
//!   contributed lands in the bias.

use faer::linalg::matmul::matmul;
use faer::linalg::solvers::{DenseSolveCore, Solve};
use faer::{Accum, Mat, MatRef, Par, Side};

/// What to prune in one matrix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    /// This many elements in all.
    Count(usize),
    /// In every run of `m` consecutive columns of each row, prune `m - n` (keep `n`).
    NOfM { n: usize, m: usize },
}

/// Maps a real value of row `o` to the value the stored type can hold (the quantization grid
/// of an int8 weight); identity for floats.
pub type Snap<'a> = &'a (dyn Fn(usize, f64) -> f64 + Sync);

/// `λ = dampening · mean(diag H)`, added to the diagonal (a floor keeps an all-zero H
/// invertible).
fn damp(h: &mut Mat<f64>, dampening: f64) {
    let k = h.nrows();
    let mean = (0..k).map(|i| h[(i, i)]).sum::<f64>() / k.max(1) as f64;
    let lambda = (dampening * mean).max(1e-12);
    for i in 0..k {
        h[(i, i)] += lambda;
    }
}

/// Splits `total` over parts of sizes `sizes` in proportion, summing exactly to `total`.
pub fn spread_counts(total: usize, sizes: &[usize]) -> Vec<usize> {
    let all: usize = sizes.iter().sum();
    let mut out = Vec::with_capacity(sizes.len());
    let (mut acc, mut prev) = (0usize, 0usize);
    for &s in sizes {
        acc += s;
        let upto = ((total as u128 * acc as u128 + all as u128 / 2) / all.max(1) as u128) as usize;
        out.push((upto - prev).min(s));
        prev = upto;
    }
    out
}

/// Indices of the `k` smallest of `scores` (ties: lower index first).
fn lowest(scores: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    if k == 0 {
        return Vec::new();
    }
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, |&a, &b| {
            scores[a].total_cmp(&scores[b]).then(a.cmp(&b))
        });
        idx.truncate(k);
    }
    idx
}

/// Wanda: the mask (true = prune) of `w` (rows × k), scores `|W_ij| · ‖X_j‖`; `norms` are
/// the input features' squared norms (the Gram matrix' diagonal).
pub fn wanda(w: MatRef<f64>, norms: &[f64], amount: Amount) -> Vec<bool> {
    let (rows, k) = (w.nrows(), w.ncols());
    let mut mask = vec![false; rows * k];
    let per_row = match amount {
        Amount::Count(total) => spread_counts(total, &vec![k; rows]),
        Amount::NOfM { .. } => vec![0; rows],
    };
    for o in 0..rows {
        let score: Vec<f64> = (0..k)
            .map(|j| w[(o, j)].abs() * norms[j].max(0.0).sqrt())
            .collect();
        match amount {
            Amount::Count(_) => {
                for j in lowest(&score, per_row[o]) {
                    mask[o * k + j] = true;
                }
            }
            Amount::NOfM { n, m } => {
                for start in (0..k).step_by(m) {
                    let end = (start + m).min(k);
                    for j in lowest(&score[start..end], (end - start).saturating_sub(n)) {
                        mask[o * k + start + j] = true;
                    }
                }
            }
        }
    }
    mask
}

/// SparseGPT on `w` (rows × k, changed in place) with the inputs' Gram matrix `gram` (k × k).
/// Returns the mask (true = pruned). `block` columns are decided together (the mask of each
/// block is chosen just before it is pruned, after the earlier blocks' updates); `snap` puts
/// every kept weight on its storage grid as it is fixed, so its rounding error is compensated
/// like a pruning error.
pub fn sparsegpt(
    w: &mut Mat<f64>,
    gram: MatRef<f64>,
    amount: Amount,
    dampening: f64,
    block: usize,
    snap: Option<Snap>,
) -> Result<Vec<bool>, String> {
    let (rows, k) = (w.nrows(), w.ncols());
    let mut h = gram.to_owned();
    // Inputs that are always zero carry no information: their weights go, and H stays
    // invertible.
    for j in 0..k {
        if h[(j, j)] == 0.0 {
            h[(j, j)] = 1.0;
            for o in 0..rows {
                w[(o, j)] = 0.0;
            }
        }
    }
    damp(&mut h, dampening);
    let hinv = h
        .llt(Side::Lower)
        .map_err(|_| "the calibration Hessian is not positive definite even with dampening; raise --dampening".to_string())?
        .inverse();
    // Upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU): the transpose of its lower factor.
    let l = hinv.llt(Side::Lower).map_err(|_| {
        "the inverse calibration Hessian is not positive definite; raise --dampening".to_string()
    })?;
    let u: Mat<f64> = l.L().transpose().to_owned();

    // N:M groups never straddle two blocks.
    let block = match amount {
        Amount::NOfM { m, .. } => block.max(m) / m * m,
        Amount::Count(_) => block.max(1),
    };
    let starts: Vec<usize> = (0..k).step_by(block).collect();
    let quota = match amount {
        Amount::Count(total) => {
            let sizes: Vec<usize> = starts
                .iter()
                .map(|&s| rows * ((s + block).min(k) - s))
                .collect();
            spread_counts(total, &sizes)
        }
        Amount::NOfM { .. } => vec![0; starts.len()],
    };
    let mut mask = vec![false; rows * k];
    for (bi, &i1) in starts.iter().enumerate() {
        let i2 = (i1 + block).min(k);
        let count = i2 - i1;
        let mut w1: Mat<f64> = w.as_ref().submatrix(0, i1, rows, count).to_owned();
        let mut err = Mat::<f64>::zeros(rows, count);
        let d: Vec<f64> = (0..count).map(|i| u[(i1 + i, i1 + i)]).collect();
        let mut m1 = vec![false; rows * count];
        if let Amount::Count(_) = amount {
            let scores: Vec<f64> = (0..rows * count)
                .map(|e| {
                    let (o, i) = (e / count, e % count);
                    let v = w1[(o, i)] / d[i];
                    v * v
                })
                .collect();
            for e in lowest(&scores, quota[bi]) {
                m1[e] = true;
            }
        }
        for i in 0..count {
            if let Amount::NOfM { n, m } = amount {
                if i % m == 0 {
                    let end = (i + m).min(count);
                    for o in 0..rows {
                        let scores: Vec<f64> = (i..end)
                            .map(|j| {
                                let v = w1[(o, j)] / d[j];
                                v * v
                            })
                            .collect();
                        for j in lowest(&scores, (end - i).saturating_sub(n)) {
                            m1[o * count + i + j] = true;
                        }
                    }
                }
            }
            for o in 0..rows {
                let wv = w1[(o, i)];
                let q = if m1[o * count + i] {
                    0.0
                } else {
                    snap.map_or(wv, |s| s(o, wv))
                };
                let e = (wv - q) / d[i];
                w1[(o, i)] = q;
                err[(o, i)] = e;
                if e != 0.0 {
                    for j in i + 1..count {
                        w1[(o, j)] -= e * u[(i1 + i, i1 + j)];
                    }
                }
            }
        }
        for o in 0..rows {
            for i in 0..count {
                w[(o, i1 + i)] = w1[(o, i)];
                mask[o * k + i1 + i] = m1[o * count + i];
            }
        }
        if i2 < k {
            let rest = k - i2;
            let mut tail = w.as_mut().submatrix_mut(0, i2, rows, rest);
            matmul(
                tail.rb_mut(),
                Accum::Add,
                err.as_ref(),
                u.as_ref().submatrix(i1, i2, count, rest),
                -1.0,
                Par::rayon(0),
            );
        }
    }
    Ok(mask)
}

use faer::prelude::ReborrowMut;

/// `Σ_rows (w − w') XᵀX (w − w')ᵀ`: the squared output error of `w2` against `w` over the
/// calibration rows whose Gram matrix is `gram`.
pub fn output_error(w: MatRef<f64>, w2: MatRef<f64>, gram: MatRef<f64>) -> f64 {
    let d = Mat::<f64>::from_fn(w.nrows(), w.ncols(), |o, j| w[(o, j)] - w2[(o, j)]);
    let mut dh = Mat::<f64>::zeros(d.nrows(), d.ncols());
    matmul(
        dh.as_mut(),
        Accum::Replace,
        d.as_ref(),
        gram,
        1.0,
        Par::rayon(0),
    );
    (0..d.nrows())
        .map(|o| (0..d.ncols()).map(|j| d[(o, j)] * dh[(o, j)]).sum::<f64>())
        .sum()
}

/// Ridge least squares of a layer after its inputs were reduced to `keep` (column indices):
/// the weights `w'` (rows × keep.len()) and bias `b'` minimizing
/// `Σ ‖w' x_keep + b' − (w x + b)‖² + λ ‖w'‖²` over the calibration rows, from the augmented
/// Gram matrix `gram` ((k + 1)², see [`super::capture::Stats`]). Without a bias (`b` is
/// `None`) the fit has no intercept and `b'` is `None`.
pub fn refit(
    w: MatRef<f64>,
    b: Option<&[f64]>,
    gram: MatRef<f64>,
    keep: &[usize],
    dampening: f64,
) -> Result<(Mat<f64>, Option<Vec<f64>>), String> {
    let k = w.ncols();
    let kept: Vec<usize> = keep.iter().copied().chain([k]).collect();
    let h = Mat::<f64>::from_fn(kept.len(), kept.len(), |i, j| gram[(kept[i], kept[j])]);
    let cross = Mat::<f64>::from_fn(kept.len(), k + 1, |i, j| gram[(kept[i], j)]);
    refit_cross(w, b, h.as_ref(), cross.as_ref(), dampening)
}

/// Ridge least squares of a layer on new inputs `x'` against its original outputs on the
/// original inputs `x` (the same samples): `w'`, `b'` minimizing
/// `Σ ‖w' x' + b' − (w x + b)‖² + λ ‖w'‖²`, from `h` = `Σ x̃' x̃'ᵀ` ((m + 1)², with the
/// constant 1 last) and `cross` = `Σ x̃' x̃ᵀ` ((m + 1) × (k + 1)). Without a bias the fit has no
/// intercept.
pub fn refit_cross(
    w: MatRef<f64>,
    b: Option<&[f64]>,
    h: MatRef<f64>,
    cross: MatRef<f64>,
    dampening: f64,
) -> Result<(Mat<f64>, Option<Vec<f64>>), String> {
    let (rows, k) = (w.nrows(), w.ncols());
    let m = h.nrows() - 1;
    let with_bias = b.is_some();
    // Without a bias the constant column takes no part.
    let ns = m + with_bias as usize;
    let nf = k + with_bias as usize;
    let mut gss = h.submatrix(0, 0, ns, ns).to_owned();
    // Ridge on the weights only (not the intercept), scaled to the inputs.
    let mean = (0..m).map(|i| gss[(i, i)]).sum::<f64>() / m.max(1) as f64;
    let lambda = (dampening * mean).max(1e-12);
    for i in 0..m {
        gss[(i, i)] += lambda;
    }
    if h[(m, m)] <= 0.0 {
        return Err("no calibration rows".into());
    }
    // A = [W | b]; R = cross · Aᵀ  (ns × rows).
    let a = Mat::<f64>::from_fn(rows, nf, |o, j| {
        if j < k {
            w[(o, j)]
        } else {
            b.expect("bias")[o]
        }
    });
    let mut r = Mat::<f64>::zeros(ns, rows);
    matmul(
        r.as_mut(),
        Accum::Replace,
        cross.submatrix(0, 0, ns, nf),
        a.transpose(),
        1.0,
        Par::rayon(0),
    );
    let llt = gss
        .llt(Side::Lower)
        .map_err(|_| "the inputs' Gram matrix is singular even with dampening".to_string())?;
    let x = llt.solve(r.as_ref()); // ns × rows
    let w_new = Mat::<f64>::from_fn(rows, m, |o, i| x[(i, o)]);
    let b_new = with_bias.then(|| (0..rows).map(|o| x[(ns - 1, o)]).collect());
    Ok((w_new, b_new))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gram matrix (with the constant column) of rows `xs`.
    fn gram(xs: &[Vec<f64>]) -> Mat<f64> {
        let k = xs[0].len() + 1;
        Mat::from_fn(k, k, |i, j| {
            xs.iter()
                .map(|x| {
                    let a = if i < k - 1 { x[i] } else { 1.0 };
                    let b = if j < k - 1 { x[j] } else { 1.0 };
                    a * b
                })
                .sum()
        })
    }

    fn rows() -> Vec<Vec<f64>> {
        // x2 = x0 + x1 exactly; x0, x1 independent.
        let mut s = 1u64;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        };
        (0..64)
            .map(|_| {
                let (a, b) = (next(), next());
                vec![a, b, a + b]
            })
            .collect()
    }

    fn outputs(w: MatRef<f64>, xs: &[Vec<f64>]) -> Vec<f64> {
        xs.iter()
            .flat_map(|x| {
                (0..w.nrows()).map(move |o| (0..x.len()).map(|j| w[(o, j)] * x[j]).sum::<f64>())
            })
            .collect()
    }

    #[test]
    fn sparsegpt_recovers_a_weight_its_neighbours_can_express() {
        let xs = rows();
        let g = gram(&xs);
        let w0 = Mat::from_fn(2, 3, |o, j| [[0.5, -0.3, 0.4], [0.2, 0.7, -0.35]][o][j]);
        let mut w = w0.clone();
        let mask = sparsegpt(
            &mut w,
            g.as_ref().submatrix(0, 0, 3, 3),
            Amount::Count(2),
            1e-10,
            128,
            None,
        )
        .unwrap();
        assert_eq!(mask.iter().filter(|&&m| m).count(), 2);
        for (e, &m) in mask.iter().enumerate() {
            if m {
                assert_eq!(w[(e / 3, e % 3)], 0.0);
            }
        }
        // The pruned column is a sum of the others: the outputs are exactly the original's.
        let (a, b) = (outputs(w0.as_ref(), &xs), outputs(w.as_ref(), &xs));
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-6, "{worst}");
        // Zeroing the same weights without compensation does not.
        let mut z = w0.clone();
        for (e, &m) in mask.iter().enumerate() {
            if m {
                z[(e / 3, e % 3)] = 0.0;
            }
        }
        let c = outputs(z.as_ref(), &xs);
        assert!(
            a.iter()
                .zip(&c)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max)
                > 0.1
        );
    }

    #[test]
    fn sparsegpt_keeps_n_of_every_m_and_snaps_kept_weights() {
        let xs: Vec<Vec<f64>> = rows()
            .iter()
            .map(|r| vec![r[0], r[1], r[2], r[0] - r[1]])
            .collect();
        let g = gram(&xs);
        let mut w = Mat::from_fn(3, 4, |o, j| ((o * 4 + j) as f64 * 0.37).sin());
        let snap = |_: usize, v: f64| (v * 8.0).round() / 8.0;
        let mask = sparsegpt(
            &mut w,
            g.as_ref().submatrix(0, 0, 4, 4),
            Amount::NOfM { n: 2, m: 4 },
            0.01,
            2,
            Some(&snap),
        )
        .unwrap();
        for o in 0..3 {
            assert_eq!((0..4).filter(|&j| mask[o * 4 + j]).count(), 2);
            for j in 0..4 {
                let v = w[(o, j)];
                assert_eq!(v, (v * 8.0).round() / 8.0, "off the grid");
                if mask[o * 4 + j] {
                    assert_eq!(v, 0.0);
                }
            }
        }
    }

    #[test]
    fn dead_inputs_lose_their_weights_and_do_not_break_the_factorization() {
        let xs: Vec<Vec<f64>> = rows().iter().map(|r| vec![r[0], 0.0, r[1]]).collect();
        let g = gram(&xs);
        let mut w = Mat::from_fn(1, 3, |_, j| [1.0, 5.0, 2.0][j]);
        sparsegpt(
            &mut w,
            g.as_ref().submatrix(0, 0, 3, 3),
            Amount::Count(1),
            0.01,
            128,
            None,
        )
        .unwrap();
        assert_eq!(w[(0, 1)], 0.0);
        assert!(w[(0, 0)] != 0.0 && w[(0, 2)] != 0.0);
    }

    #[test]
    fn wanda_weighs_magnitudes_by_input_norms() {
        let w = Mat::from_fn(2, 2, |_, _| 1.0);
        // Feature 0 is ten times larger than feature 1: equal weights, feature 1's go.
        let mask = wanda(w.as_ref(), &[100.0, 1.0], Amount::Count(2));
        assert_eq!(mask, vec![false, true, false, true]);
        let w = Mat::from_fn(1, 4, |_, j| [1.0, 0.1, 0.2, 3.0][j]);
        let mask = wanda(
            w.as_ref(),
            &[1.0, 100.0, 1.0, 1.0],
            Amount::NOfM { n: 2, m: 4 },
        );
        // Scores 1, 1, 0.2, 3: the two lowest (0.2, then the first 1) go.
        assert_eq!(mask, vec![true, false, true, false]);
    }

    #[test]
    fn refit_recovers_an_affine_channel_and_its_mean() {
        // Channel 2 = 2·x0 − 1: removing it and refitting with an intercept is exact.
        let xs: Vec<Vec<f64>> = rows()
            .iter()
            .map(|r| vec![r[0], r[1], 2.0 * r[0] - 1.0])
            .collect();
        let g = gram(&xs);
        let w = Mat::from_fn(2, 3, |o, j| [[0.5, -0.3, 0.4], [0.2, 0.7, -0.35]][o][j]);
        let b = [0.1, -0.2];
        let (w2, b2) = refit(w.as_ref(), Some(&b), g.as_ref(), &[0, 1], 1e-12).unwrap();
        let b2 = b2.unwrap();
        for x in &xs {
            for o in 0..2 {
                let y: f64 = (0..3).map(|j| w[(o, j)] * x[j]).sum::<f64>() + b[o];
                let y2 = w2[(o, 0)] * x[0] + w2[(o, 1)] * x[1] + b2[o];
                assert!((y - y2).abs() < 1e-6, "{y} vs {y2}");
            }
        }
        // The closed form: w0' = w0 + 2 w2, b' = b − w2.
        assert!((w2[(0, 0)] - 1.3).abs() < 1e-6 && (b2[0] - (0.1 - 0.4)).abs() < 1e-6);
    }

    #[test]
    fn refit_cross_matches_the_original_outputs_from_shifted_inputs() {
        // The new inputs are the old ones scaled and shifted (x' = 2x + 1, as after an
        // upstream change): the refit undoes it exactly.
        let xs = rows();
        let k = 3;
        let xp: Vec<Vec<f64>> = xs
            .iter()
            .map(|x| x.iter().map(|v| 2.0 * v + 1.0).collect())
            .collect();
        let aug = |x: &Vec<f64>, i: usize| if i < k { x[i] } else { 1.0 };
        let h = Mat::from_fn(k + 1, k + 1, |i, j| {
            xp.iter().map(|x| aug(x, i) * aug(x, j)).sum()
        });
        let c = Mat::from_fn(k + 1, k + 1, |i, j| {
            xp.iter().zip(&xs).map(|(a, b)| aug(a, i) * aug(b, j)).sum()
        });
        let w = Mat::from_fn(2, 3, |o, j| [[0.5, -0.3, 0.4], [0.2, 0.7, -0.35]][o][j]);
        let b = [0.1, -0.2];
        let (w2, b2) = refit_cross(w.as_ref(), Some(&b), h.as_ref(), c.as_ref(), 1e-12).unwrap();
        let b2 = b2.unwrap();
        for (x, x2) in xs.iter().zip(&xp) {
            for o in 0..2 {
                let y: f64 = (0..3).map(|j| w[(o, j)] * x[j]).sum::<f64>() + b[o];
                let y2: f64 = (0..3).map(|j| w2[(o, j)] * x2[j]).sum::<f64>() + b2[o];
                assert!((y - y2).abs() < 1e-6, "{y} vs {y2}");
            }
        }
    }

    #[test]
    fn spread_sums_exactly() {
        assert_eq!(spread_counts(9, &[3, 3, 3]), vec![3, 3, 3]);
        assert_eq!(spread_counts(7, &[128, 128, 44]).iter().sum::<usize>(), 7);
        assert_eq!(spread_counts(0, &[5]), vec![0]);
    }
}
