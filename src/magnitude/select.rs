//! Choosing which units to prune: exact, deterministic, and without sorting whole tensors.
//!
//! Scores are non-negative floats (magnitudes, block norms, LAMP scores), never NaN, so their
//! IEEE bit patterns order like the values and comparisons can run on `u32`. Ties are broken by
//! position: among equal scores, the lower index is pruned first. The same scores and counts
//! therefore always give the same mask, whatever the number of threads.

use super::CHUNK;
use rayon::prelude::*;

#[inline]
fn bits(s: f32) -> u32 {
    debug_assert!(!s.is_nan() && s >= 0.0);
    // Clearing the sign bit makes -0.0 the zero it is; scores are never negative otherwise.
    s.to_bits() & 0x7fff_ffff
}

/// The `k` lowest-scoring units of a score vector, described without a mask: everything
/// scoring below `t`, plus, in each chunk of `CHUNK` units, the first `quota[chunk]` units
/// scoring exactly `t` (ties: lower index first). Applying it streams over the scores once.
#[derive(Debug, Clone)]
pub struct Cut {
    t: u32,
    quota: Vec<usize>,
    /// Units selected.
    pub k: usize,
    /// Units that scored exactly zero (already-zero weights).
    pub zeros: usize,
}

impl Cut {
    /// The largest selected score, if any unit is selected.
    pub fn threshold(&self) -> Option<f32> {
        (self.k > 0).then(|| f32::from_bits(self.t))
    }

    /// Calls `f(i)` for every selected unit of chunk `chunk` (`scores` is that chunk).
    #[inline]
    pub fn for_each_in_chunk(&self, chunk: usize, scores: &[f32], mut f: impl FnMut(usize)) {
        if self.k == 0 {
            return;
        }
        let mut q = self.quota[chunk];
        for (i, &s) in scores.iter().enumerate() {
            let b = bits(s);
            if b < self.t {
                f(i);
            } else if b == self.t && q > 0 {
                q -= 1;
                f(i);
            }
        }
    }

    /// Copies chunk `chunk` of a float32 tensor (`src`, little-endian, one element per score)
    /// into `dst` with the selected elements zeroed, in one pass. Branch-free but for ties.
    #[inline]
    pub fn copy_zeroed_f32(&self, chunk: usize, scores: &[f32], src: &[u8], dst: &mut [u8]) {
        if self.k == 0 {
            dst.copy_from_slice(src);
            return;
        }
        let mut q = self.quota[chunk];
        for ((d, s), &score) in dst.chunks_exact_mut(4).zip(src.chunks_exact(4)).zip(scores) {
            let b = bits(score);
            let mut selected = b < self.t;
            if b == self.t && q > 0 {
                q -= 1;
                selected = true;
            }
            let v = u32::from_ne_bytes([s[0], s[1], s[2], s[3]]);
            d.copy_from_slice(&(if selected { 0 } else { v }).to_ne_bytes());
        }
    }

    /// The selection as a mask over units.
    pub fn mask(&self, scores: &[f32]) -> Vec<bool> {
        let mut mask = vec![false; scores.len()];
        mask.par_chunks_mut(CHUNK)
            .zip(scores.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(ci, (m, s))| self.for_each_in_chunk(ci, s, |i| m[i] = true));
        mask
    }
}

/// Selects the `k` lowest-scoring units (ties: lower index first; `k` is capped at the number
/// of units).
///
/// Finds the k-th smallest score by a two-level radix select (16-bit histograms, computed in
/// parallel, no copy of the scores), then counts per chunk what lies below and at it.
pub fn cut(scores: &[f32], k: usize) -> Cut {
    let k = k.min(scores.len());
    let t = if k == 0 { 0 } else { kth_smallest(scores, k) };
    let per_chunk: Vec<(usize, usize, usize)> = scores
        .par_chunks(CHUNK)
        .map(|c| {
            c.iter().fold((0, 0, 0), |(lt, eq, z), &s| {
                let b = bits(s);
                (
                    lt + (b < t) as usize,
                    eq + (b == t) as usize,
                    z + (b == 0) as usize,
                )
            })
        })
        .collect();
    let below: usize = per_chunk.iter().map(|p| p.0).sum();
    let mut ties_left = k.saturating_sub(below);
    let quota = per_chunk
        .iter()
        .map(|&(_, eq, _)| {
            let q = eq.min(ties_left);
            ties_left -= q;
            q
        })
        .collect();
    Cut {
        t,
        quota,
        k,
        zeros: per_chunk.iter().map(|p| p.2).sum(),
    }
}

/// Marks the `k` lowest-scoring units (ties: lower index first).
pub fn lowest_k(scores: &[f32], k: usize) -> Vec<bool> {
    cut(scores, k).mask(scores)
}

/// Bits of the k-th smallest score (k ≥ 1).
fn kth_smallest(scores: &[f32], k: usize) -> u32 {
    // Small tensors: a selection on a copy is cheapest (tensors run in parallel anyway).
    if scores.len() < 1 << 20 {
        let mut keys: Vec<u32> = scores.iter().map(|&s| bits(s)).collect();
        return *keys.select_nth_unstable(k - 1).1;
    }
    // Large tensors: two 16-bit radix passes, one histogram per thread-sized slice.
    let grain = scores
        .len()
        .div_ceil(2 * rayon::current_num_threads())
        .max(CHUNK);
    let merge = |mut a: Vec<u32>, b: Vec<u32>| {
        a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        a
    };
    let empty = || vec![0u32; 1 << 16];
    let high = scores
        .par_chunks(grain)
        .map(|c| {
            let mut h = empty();
            for &s in c {
                h[(bits(s) >> 16) as usize] += 1;
            }
            h
        })
        .reduce(empty, merge);
    // Bucket holding the rank-th smallest (1-based) in `h`, and the count below it.
    let find = |h: &[u32], rank: usize| -> (u32, usize) {
        let mut below = 0;
        for (b, &c) in h.iter().enumerate() {
            if below + c as usize >= rank {
                return (b as u32, below);
            }
            below += c as usize;
        }
        unreachable!("rank {rank} beyond the histogram's {below} entries")
    };
    let (hi, below) = find(&high, k);
    let low = scores
        .par_chunks(grain)
        .map(|c| {
            let mut h = empty();
            for &s in c {
                let b = bits(s);
                if b >> 16 == hi {
                    h[(b & 0xffff) as usize] += 1;
                }
            }
            h
        })
        .reduce(empty, merge);
    let (lo, _) = find(&low, k - below);
    (hi << 16) | lo
}

/// The scores of one tensor, visited in order in pieces: held in memory, or computed on the fly
/// (magnitudes of a memory-mapped weight), so that a global threshold never needs every
/// tensor's scores at once.
pub trait Scores: Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn visit(&self, f: &mut dyn FnMut(&[f32]));
}

impl Scores for &[f32] {
    fn len(&self) -> usize {
        <[f32]>::len(self)
    }
    fn visit(&self, f: &mut dyn FnMut(&[f32])) {
        f(self)
    }
}

impl Scores for Vec<f32> {
    fn len(&self) -> usize {
        <[f32]>::len(self)
    }
    fn visit(&self, f: &mut dyn FnMut(&[f32])) {
        f(self)
    }
}

/// A 16-bit histogram kept as its cumulative counts at the non-empty buckets (a few thousand
/// at most for real weights, instead of 65,536 counters per tensor).
struct Cumulative(Vec<(u16, usize)>);

impl Cumulative {
    fn of(scores: &dyn Scores, bucket: &dyn Fn(u32) -> Option<u16>) -> Self {
        let mut h = vec![0u32; 1 << 16];
        scores.visit(&mut |c| {
            for &s in c {
                if let Some(b) = bucket(bits(s)) {
                    h[b as usize] += 1;
                }
            }
        });
        let mut total = 0usize;
        Cumulative(
            h.iter()
                .enumerate()
                .filter(|p| *p.1 > 0)
                .map(|(b, &c)| {
                    total += c as usize;
                    (b as u16, total)
                })
                .collect(),
        )
    }

    /// Units in buckets up to and including `b`.
    fn upto(&self, b: u32) -> usize {
        let i = self.0.partition_point(|&(k, _)| (k as u32) <= b);
        if i == 0 {
            0
        } else {
            self.0[i - 1].1
        }
    }
}

/// Smallest `x` in `0..=max` with `ok(x)` (monotone), given `ok(max)`.
fn first(max: u32, ok: impl Fn(u32) -> bool) -> u32 {
    let (mut lo, mut hi) = (0u32, max);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if ok(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

/// One threshold over several tensors: how many units to prune in each so that `k` units are
/// pruned in all, the lowest scores first, no tensor beyond its cap. Ties at the threshold go
/// to earlier tensors first. Returns fewer than `k` in total only when the caps forbid more.
///
/// The threshold is the smallest score bit pattern `t` at which the capped counts reach `k`.
/// It is found in two passes over the scores (tensors in parallel): per-tensor histograms of
/// the high 16 bits locate its bucket, histograms of the low 16 bits within that bucket
/// locate `t`; every count then comes from the histograms.
pub fn global_counts<S: Scores>(scores: &[S], caps: &[usize], k: usize) -> Vec<usize> {
    let reachable: usize = caps.iter().zip(scores).map(|(&c, s)| c.min(s.len())).sum();
    let k = k.min(reachable);
    if k == 0 {
        return vec![0; scores.len()];
    }
    let high: Vec<Cumulative> = scores
        .par_iter()
        .map(|s| Cumulative::of(s, &|b| Some((b >> 16) as u16)))
        .collect();
    let capped = |count: &dyn Fn(usize) -> usize| -> usize {
        caps.iter()
            .enumerate()
            .map(|(i, &cap)| count(i).min(cap))
            .sum()
    };
    let hi = first(0xffff, |hi| capped(&|i| high[i].upto(hi)) >= k);
    let below: Vec<usize> = high
        .iter()
        .map(|h| if hi == 0 { 0 } else { h.upto(hi - 1) })
        .collect();
    let low: Vec<Cumulative> = scores
        .par_iter()
        .map(|s| Cumulative::of(s, &|b| (b >> 16 == hi).then_some((b & 0xffff) as u16)))
        .collect();
    let le = |i: usize, lo: u32| below[i] + low[i].upto(lo);
    let lo = first(0xffff, |lo| capped(&|i| le(i, lo)) >= k);
    let lt = |i: usize| if lo == 0 { below[i] } else { le(i, lo - 1) };
    let mut counts: Vec<usize> = (0..scores.len()).map(|i| lt(i).min(caps[i])).collect();
    let mut left = k - counts.iter().sum::<usize>();
    for (i, count) in counts.iter_mut().enumerate() {
        if left == 0 {
            break;
        }
        let ties = le(i, lo) - lt(i);
        let take = ties.min(caps[i].saturating_sub(*count)).min(left);
        *count += take;
        left -= take;
    }
    counts
}

/// LAMP scores (Lee et al., "Layer-adaptive sparsity for the magnitude-based pruning", ICLR
/// 2021): a unit's squared magnitude divided by the sum of the squared magnitudes of every unit
/// of its tensor that is not smaller. Scores are comparable across tensors, and every tensor's
/// largest unit scores 1, so LAMP never empties a layer.
pub fn lamp(scores: &[f32]) -> Vec<f32> {
    // Sort (score bits, index) packed in one u64: contiguous keys sort much faster than
    // indices compared through the scores.
    let mut order: Vec<u64> = scores
        .par_iter()
        .enumerate()
        .map(|(i, &s)| ((bits(s) as u64) << 32) | i as u64)
        .collect();
    order.par_sort_unstable();
    let mut out = vec![0f32; scores.len()];
    let mut suffix = 0f64;
    for &key in order.iter().rev() {
        let i = (key & 0xffff_ffff) as u32;
        let sq = (scores[i as usize] as f64).powi(2);
        suffix += sq;
        out[i as usize] = if suffix > 0.0 && suffix.is_finite() {
            (sq / suffix) as f32
        } else if sq.is_infinite() {
            1.0
        } else {
            0.0
        };
    }
    out
}

/// N:M: in every group of `m` consecutive units (stride `stride` apart, starting where
/// `group_start(e)` holds), prune the `m - n` lowest (ties: lower index first).
pub fn n_of_m(scores: &[f32], n: usize, m: usize, groups: &[usize], stride: usize) -> Vec<bool> {
    let mut mask = vec![false; scores.len()];
    let drop = m - n;
    let mut idx: Vec<usize> = Vec::with_capacity(m);
    for &start in groups {
        idx.clear();
        idx.extend((0..m).map(|j| start + j * stride));
        idx.sort_by_key(|&e| (bits(scores[e]), e));
        for &e in &idx[..drop] {
            mask[e] = true;
        }
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ties_go_to_the_lower_index() {
        let s = [1.0, 0.5, 0.5, 0.5, 2.0];
        assert_eq!(lowest_k(&s, 2), vec![false, true, true, false, false]);
        assert_eq!(lowest_k(&s, 0), vec![false; 5]);
        assert_eq!(lowest_k(&s, 5), vec![true; 5]);
    }

    #[test]
    fn radix_select_on_large_tensors_matches_a_sort() {
        // Over 2^20 units takes the histogram path; many ties and zeros.
        let n = (1 << 20) + 12345;
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let s: Vec<f32> = (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x % 5000) as f32 / 100.0).max(0.0) * if x % 7 == 0 { 0.0 } else { 1.0 }
            })
            .collect();
        let mut sorted: Vec<(u32, usize)> = s
            .iter()
            .enumerate()
            .map(|(i, &v)| (v.to_bits(), i))
            .collect();
        sorted.sort();
        for k in [1, 777, n / 3, n / 2, n - 1] {
            let m = lowest_k(&s, k);
            let want: std::collections::HashSet<usize> = sorted[..k].iter().map(|p| p.1).collect();
            assert_eq!(m.iter().filter(|&&b| b).count(), k);
            assert!(
                m.iter().enumerate().all(|(i, &b)| b == want.contains(&i)),
                "k = {k}"
            );
            let c = cut(&s, k);
            assert_eq!(c.zeros, s.iter().filter(|&&v| v == 0.0).count());
            assert_eq!(c.threshold(), Some(f32::from_bits(sorted[k - 1].0)));
        }
    }

    #[test]
    fn global_threshold_respects_caps_and_fills_from_the_rest() {
        let a = [0.1f32, 0.2, 0.3, 0.4];
        let b = [1.0f32, 2.0, 3.0, 4.0];
        // Uncapped, the 4 smallest are all in `a`.
        let s = [&a[..], &b[..]];
        assert_eq!(global_counts(&s, &[4, 4], 4), vec![4, 0]);
        // Capped at 3 per tensor: the fourth comes from `b`.
        assert_eq!(global_counts(&s, &[3, 3], 4), vec![3, 1]);
        // Unreachable targets stop at the caps.
        assert_eq!(global_counts(&s, &[1, 1], 4), vec![1, 1]);
    }

    #[test]
    fn lamp_gives_the_largest_unit_one() {
        let l = lamp(&[3.0, 4.0, 0.0]);
        assert_eq!(l[1], 1.0);
        assert!((l[0] - 9.0 / 25.0).abs() < 1e-6);
        assert_eq!(l[2], 0.0);
    }

    #[test]
    fn n_of_m_keeps_the_largest_in_each_group() {
        let s = [0.1, 0.9, 0.8, 0.2, 5.0, 4.0, 3.0, 2.0];
        let m = n_of_m(&s, 2, 4, &[0, 4], 1);
        assert_eq!(m, vec![true, false, false, true, false, false, true, true]);
    }

    // The previous implementation (bisection over every bit pattern, 31 passes), kept as
    // the oracle of the two-pass one.
    /// Number of units scoring at most `t` (as bits).
    fn count_le(scores: &[f32], t: u32) -> usize {
        scores
            .par_chunks(CHUNK)
            .map(|c| c.iter().filter(|&&s| bits(s) <= t).count())
            .sum()
    }

    fn count_lt(scores: &[f32], t: u32) -> usize {
        scores
            .par_chunks(CHUNK)
            .map(|c| c.iter().filter(|&&s| bits(s) < t).count())
            .sum()
    }

    fn global_counts_bisect(scores: &[&[f32]], caps: &[usize], k: usize) -> Vec<usize> {
        let capped = |t: u32| -> usize {
            scores
                .iter()
                .zip(caps)
                .map(|(s, &cap)| count_le(s, t).min(cap))
                .sum()
        };
        let reachable: usize = caps.iter().zip(scores).map(|(&c, s)| c.min(s.len())).sum();
        let k = k.min(reachable);
        if k == 0 {
            return vec![0; scores.len()];
        }
        let t = first(f32::INFINITY.to_bits(), |t| capped(t) >= k);
        let mut counts: Vec<usize> = scores
            .iter()
            .zip(caps)
            .map(|(s, &cap)| count_lt(s, t).min(cap))
            .collect();
        let mut left = k - counts.iter().sum::<usize>();
        for ((count, s), &cap) in counts.iter_mut().zip(scores).zip(caps) {
            let ties = count_le(s, t) - count_lt(s, t);
            let take = ties.min(cap.saturating_sub(*count)).min(left);
            *count += take;
            left -= take;
        }
        counts
    }

    proptest! {
        #[test]
        fn lowest_k_prunes_exactly_k_and_nothing_above_what_it_keeps(
            s in proptest::collection::vec(0u8..8, 1..300), frac in 0.0f64..1.0
        ) {
            let s: Vec<f32> = s.into_iter().map(|v| v as f32 / 4.0).collect();
            let k = (frac * s.len() as f64) as usize;
            let m = lowest_k(&s, k);
            prop_assert_eq!(m.iter().filter(|&&b| b).count(), k);
            let max_pruned = s.iter().zip(&m).filter(|p| *p.1).map(|p| *p.0).fold(0.0, f32::max);
            let min_kept = s.iter().zip(&m).filter(|p| !*p.1).map(|p| *p.0).fold(f32::INFINITY, f32::min);
            prop_assert!(k == 0 || max_pruned <= min_kept);
        }

        #[test]
        fn global_counts_sum_to_k_when_reachable(
            a in proptest::collection::vec(0u8..16, 1..100),
            b in proptest::collection::vec(0u8..16, 1..100),
            frac in 0.0f64..0.9
        ) {
            let a: Vec<f32> = a.into_iter().map(f32::from).collect();
            let b: Vec<f32> = b.into_iter().map(f32::from).collect();
            let caps = [a.len() - 1, b.len() - 1];
            let k = (frac * (a.len() + b.len()) as f64) as usize;
            let c = global_counts(&[&a[..], &b[..]], &caps, k);
            prop_assert_eq!(c[0] + c[1], k.min(caps[0] + caps[1]));
            prop_assert!(c[0] <= caps[0] && c[1] <= caps[1]);
        }

        #[test]
        fn two_pass_global_counts_equal_the_bisection(
            t in proptest::collection::vec(
                proptest::collection::vec(prop_oneof![0u32..4, 0x3f00_0000u32..0x3f00_0010, 0u32..0x7f80_0001], 1..200),
                1..5,
            ),
            cap_frac in 0.3f64..1.0,
            frac in 0.0f64..1.0
        ) {
            let t: Vec<Vec<f32>> = t.into_iter().map(|v| v.into_iter().map(f32::from_bits).collect()).collect();
            let caps: Vec<usize> = t.iter().map(|v| (cap_frac * v.len() as f64) as usize).collect();
            let n: usize = t.iter().map(Vec::len).sum();
            let k = (frac * n as f64) as usize;
            let refs: Vec<&[f32]> = t.iter().map(Vec::as_slice).collect();
            prop_assert_eq!(global_counts(&refs, &caps, k), global_counts_bisect(&refs, &caps, k));
        }
    }
}
