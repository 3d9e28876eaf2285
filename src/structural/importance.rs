//! Channel importance: one score per coupled channel group (a union-find root), from the
//! tensors the dependency graph marked as filters (or batch-norm scales).
//!
//! Scores of different tensors are made comparable by dividing each tensor's per-channel
//! scores by their mean, so that a group spanning several layers (a residual stage) averages
//! normalized scores, and a global ranking compares layers of different widths and scales.

use super::graph::{ChannelId, DepGraph, Role};
use crate::magnitude::values::Codec;
use crate::model::Graph;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Importance {
    /// Sum of |w| of each filter (Li et al., ICLR 2017).
    L1,
    /// Euclidean norm of each filter.
    L2,
    /// |gamma| of the batch-norm after the filter ("network slimming", Liu et al., ICCV 2017).
    Bn,
    /// Distance to the geometric median of the layer's filters (He et al., CVPR 2019): the
    /// filters most replaceable by the others go first.
    Fpgm,
    /// What the channel contributes to its consumers' outputs on calibration data:
    /// `Σ_o Σ_k W[o, c, k]² · E[x_{c,k}²]` over every layer that reads it (needs `--calib`).
    Activation,
}

impl FromStr for Importance {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "l1" => Ok(Importance::L1),
            "l2" => Ok(Importance::L2),
            "bn" => Ok(Importance::Bn),
            "fpgm" => Ok(Importance::Fpgm),
            "activation" => Ok(Importance::Activation),
            _ => Err(format!(
                "unknown importance {s:?}: expected l1, l2, bn, fpgm or activation"
            )),
        }
    }
}

impl fmt::Display for Importance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Importance::L1 => "l1",
            Importance::L2 => "l2",
            Importance::Bn => "bn",
            Importance::Fpgm => "fpgm",
            Importance::Activation => "activation",
        })
    }
}

/// Real values of a constant tensor and its shape, or `None` when its type cannot be read or
/// its payload does not match its shape.
pub(crate) fn real_values(g: &Graph, t: usize) -> Option<(Vec<f32>, Vec<u64>)> {
    let t = &g.tensors[t];
    let shape = t.fixed_shape()?;
    let codec = Codec::new(t.dtype, &shape, t.quant.as_ref()).ok()?;
    let values = codec.values(t.data.as_ref()?);
    (values.len() as u64 == shape.iter().product::<u64>()).then_some((values, shape))
}

/// Per-position scores of one tensor along `axis`.
fn position_scores(values: &[f32], shape: &[u64], axis: usize, how: Importance) -> Vec<f64> {
    let c = shape[axis] as usize;
    let inner: usize = shape[axis + 1..].iter().product::<u64>() as usize;
    let outer: usize = shape[..axis].iter().product::<u64>() as usize;
    let filter = |p: usize| -> Vec<f32> {
        let mut f = Vec::with_capacity(outer * inner);
        for o in 0..outer {
            let start = (o * c + p) * inner;
            f.extend_from_slice(&values[start..start + inner]);
        }
        f
    };
    match how {
        Importance::L1 | Importance::Bn => (0..c)
            .into_par_iter()
            .map(|p| filter(p).iter().map(|v| v.abs() as f64).sum())
            .collect(),
        Importance::L2 => (0..c)
            .into_par_iter()
            .map(|p| {
                filter(p)
                    .iter()
                    .map(|v| (*v as f64).powi(2))
                    .sum::<f64>()
                    .sqrt()
            })
            .collect(),
        Importance::Fpgm => {
            let filters: Vec<Vec<f32>> = (0..c).map(filter).collect();
            (0..c)
                .into_par_iter()
                .map(|p| {
                    filters
                        .iter()
                        .map(|q| {
                            filters[p]
                                .iter()
                                .zip(q)
                                .map(|(a, b)| ((a - b) as f64).powi(2))
                                .sum::<f64>()
                                .sqrt()
                        })
                        .sum()
                })
                .collect()
        }
        Importance::Activation => {
            unreachable!("activation scores come from calibration data, not weights (scores)")
        }
    }
}

/// Per consumer node (main graph): the output energy each of its input-channel positions
/// carries, from calibration data (see [`Importance::Activation`]).
pub type Energy = HashMap<usize, Vec<f64>>;

/// Score of every group root that has one. With `Bn`, only groups with a batch-norm scale
/// are scored; with `Activation`, groups read by a calibrated consumer (`energy`).
pub fn scores(
    g: &Graph,
    d: &DepGraph,
    how: Importance,
    energy: Option<&Energy>,
) -> HashMap<ChannelId, f64> {
    let wanted = match how {
        Importance::Bn => Role::BnScale,
        Importance::Activation => Role::Inputs,
        _ => Role::Filters,
    };
    let mut sum: HashMap<ChannelId, (f64, u32)> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for s in &d.slices {
        // Derived views (slot None) repeat the stored tensor's record.
        if s.role != wanted || s.slot.is_none() || !seen.insert((s.tensor, s.axis)) {
            continue;
        }
        let per = if how == Importance::Activation {
            match energy.and_then(|e| e.get(&s.node)) {
                Some(e) if e.len() == s.ids.len() => e.clone(),
                _ => continue,
            }
        } else {
            let Some((values, shape)) = real_values(g, s.tensor) else {
                continue;
            };
            position_scores(&values, &shape, s.axis, how)
        };
        let mean = per.iter().sum::<f64>() / per.len().max(1) as f64;
        for (p, v) in per.iter().enumerate() {
            let norm = if mean > 0.0 { v / mean } else { 0.0 };
            let e = sum.entry(d.find(s.ids[p])).or_default();
            e.0 += norm;
            e.1 += 1;
        }
    }
    sum.into_iter()
        .map(|(k, (s, n))| (k, s / n as f64))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_follow_the_axis() {
        // shape [2, 3]: along axis 1 the filters are columns.
        let v = [1.0, -2.0, 0.0, 3.0, 0.0, 0.0];
        assert_eq!(
            position_scores(&v, &[2, 3], 1, Importance::L1),
            vec![4.0, 2.0, 0.0]
        );
        assert_eq!(
            position_scores(&v, &[2, 3], 0, Importance::L1),
            vec![3.0, 3.0]
        );
        let l2 = position_scores(&v, &[2, 3], 1, Importance::L2);
        assert!((l2[0] - 10f64.sqrt()).abs() < 1e-9);
    }

    #[test]
    fn fpgm_ranks_the_filter_nearest_the_others_lowest() {
        // Filters 0 and 1 are near each other, 2 is far: the middle one of the close pair is
        // the most replaceable.
        let v = [0.0, 0.1, 5.0];
        let s = position_scores(&v, &[3, 1], 0, Importance::Fpgm);
        assert!(s[1] < s[2] && s[0] < s[2]);
    }
}
