//! Per-layer sparsities from a sensitivity profile: the profile's schema and types, and the
//! tolerance bisection that turns measured drops into an allocation. Imports only `error`.
//!
//! Layer: methods (imports its own layer and the ones below; see ARCHITECTURE.md).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const SCHEMA: &str = "pare.sensitivity/1";

/// What "loss" means in a profile. Every metric is expressed as a drop in points (0 = no loss).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Top-1 accuracy against labels; drop in percentage points.
    Accuracy,
    /// Top-1 agreement with the original; drop = disagreement in percent.
    Top1,
    /// Mean cosine similarity of the worst output; drop = (1 − cosine) × 100.
    Cosine,
}

impl std::str::FromStr for Metric {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "accuracy" => Ok(Metric::Accuracy),
            "top1" => Ok(Metric::Top1),
            "cosine" => Ok(Metric::Cosine),
            _ => Err(format!("unknown metric {s:?} (accuracy, top1, cosine)")),
        }
    }
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Metric::Accuracy => "accuracy",
            Metric::Top1 => "top1",
            Metric::Cosine => "cosine",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Point {
    /// The sparsity asked of the layer.
    pub ratio: f64,
    /// The layer's sparsity reached (pre-existing zeros count).
    pub sparsity: f64,
    /// The drop in points of the profile's metric.
    pub drop: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerSensitivity {
    /// The weight tensor's name.
    pub name: String,
    pub ops: Vec<String>,
    pub params: u64,
    pub points: Vec<Point>,
}

/// A profile read back from JSON (only what allocation needs).
#[derive(Debug, Clone, Deserialize)]
pub struct Profile {
    pub schema: String,
    pub metric: Metric,
    pub layers: Vec<LayerSensitivity>,
}

impl Profile {
    pub fn load(path: &Path) -> Result<Profile> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let p: Profile = serde_json::from_slice(&bytes).map_err(|e| {
            Error::Usage(format!(
                "{}: not a pare sensitivity profile: {e}",
                path.display()
            ))
        })?;
        if p.schema != SCHEMA {
            return Err(Error::Usage(format!(
                "{}: schema {:?}, expected {SCHEMA:?}",
                path.display(),
                p.schema
            )));
        }
        for l in &p.layers {
            let ok = l.points.windows(2).all(|w| w[0].ratio < w[1].ratio)
                && l.points
                    .iter()
                    .all(|p| p.ratio > 0.0 && p.ratio < 1.0 && p.drop.is_finite());
            if !ok {
                return Err(Error::Usage(format!(
                    "{}: layer {:?}: points must have ascending ratios in (0, 1) and finite drops",
                    path.display(),
                    l.name
                )));
            }
        }
        Ok(p)
    }
}

/// The largest sparsity of a layer whose (monotone envelope of) drop stays within `t`, with
/// linear interpolation between measured points; never beyond the last measured ratio.
fn allowed(points: &[(f64, f64)], t: f64) -> f64 {
    // points: (ratio, envelope drop), starting at (0, 0), drops non-decreasing.
    let mut best = 0.0;
    for w in points.windows(2) {
        let ((r0, d0), (r1, d1)) = (w[0], w[1]);
        if d1 <= t {
            best = r1;
            continue;
        }
        if d0 <= t && d1 > d0 {
            best = r0 + (r1 - r0) * (t - d0) / (d1 - d0);
        }
        break;
    }
    best
}

/// Per-layer sparsities that reach `target` over `layers` (name, params) with the smallest
/// common tolerance: each layer gets the largest sparsity whose measured drop stays within a
/// tolerance t (the "sensitivity threshold" method), and t is bisected until the parameter-
/// weighted sparsity meets the target. Returns the sparsities and t.
pub fn allocate(
    profile: &Profile,
    layers: &[(String, u64)],
    target: f64,
    cap: f64,
) -> std::result::Result<(Vec<f64>, f64), String> {
    let mut curves = Vec::new();
    for (name, _) in layers {
        let l = profile
            .layers
            .iter()
            .find(|l| &l.name == name)
            .ok_or_else(|| {
                format!(
                    "layer {name:?} is not in the sensitivity profile; run pare sensitivity with the same selection flags"
                )
            })?;
        let mut pts = vec![(0.0, 0.0)];
        let mut env: f64 = 0.0;
        for p in &l.points {
            if p.ratio > cap {
                break;
            }
            env = env.max(p.drop);
            pts.push((p.ratio, env));
        }
        curves.push(pts);
    }
    let total: f64 = layers.iter().map(|(_, n)| *n as f64).sum();
    let reach = |t: f64| -> (Vec<f64>, f64) {
        let s: Vec<f64> = curves.iter().map(|c| allowed(c, t)).collect();
        let w = s
            .iter()
            .zip(layers)
            .map(|(s, (_, n))| s * *n as f64)
            .sum::<f64>()
            / total.max(1.0);
        (s, w)
    };
    let tmax = curves
        .iter()
        .flat_map(|c| c.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        + 1.0;
    let (s_max, w_max) = reach(tmax);
    if w_max < target {
        return Ok((s_max, tmax));
    }
    // Below 0 every layer is allowed nothing.
    let (mut lo, mut hi) = (-1.0, tmax);
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if reach(mid).1 >= target {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    // reach(lo) is just short of the target, reach(hi) at or above it: blend the two
    // allocations so that the weighted sparsity is the target exactly.
    let ((a, wa), (b, wb)) = (reach(lo), reach(hi));
    let lam = if wb > wa {
        ((target - wa) / (wb - wa)).clamp(0.0, 1.0)
    } else {
        1.0
    };
    Ok((
        a.iter().zip(&b).map(|(x, y)| x + lam * (y - x)).collect(),
        hi,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(name: &str, drops: &[f64]) -> LayerSensitivity {
        LayerSensitivity {
            name: name.into(),
            ops: vec![],
            params: 100,
            points: [0.25, 0.5, 0.75, 0.9]
                .iter()
                .zip(drops)
                .map(|(&ratio, &drop)| Point {
                    ratio,
                    sparsity: ratio,
                    drop,
                })
                .collect(),
        }
    }

    #[test]
    fn insensitive_layers_get_more_sparsity_at_the_same_target() {
        let p = Profile {
            schema: SCHEMA.into(),
            metric: Metric::Accuracy,
            layers: vec![
                layer("robust", &[0.0, 0.1, 0.3, 1.0]),
                layer("fragile", &[2.0, 10.0, 40.0, 80.0]),
            ],
        };
        let layers = vec![("robust".to_string(), 100), ("fragile".to_string(), 100)];
        let (s, _) = allocate(&p, &layers, 0.5, 0.98).unwrap();
        assert!((s[0] + s[1]) / 2.0 - 0.5 < 1e-6, "{s:?}");
        assert!(s[0] > 0.75 && s[1] < 0.25, "{s:?}");
        // A non-monotone measurement never lets a layer go further at a lower tolerance.
        assert_eq!(
            allowed(&[(0.0, 0.0), (0.5, 3.0), (0.9, 3.0)], 1.0),
            0.5 / 3.0
        );
        assert!(allocate(&p, &[("missing".into(), 1)], 0.5, 0.98).is_err());
    }
}
