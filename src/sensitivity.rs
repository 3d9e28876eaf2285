//! `pare sensitivity`: prune each prunable layer alone at a ladder of ratios and measure what
//! the model loses on the user's data. The result is a table, a JSON profile (schema
//! `pare.sensitivity/1`) and an SVG chart; `pare prune --scope sensitivity --sensitivity FILE`
//! turns the profile into per-layer sparsities for a global target ([`allocate`]).

use crate::convert::{Progress, Silent};
use crate::document::Document;
use crate::error::{Error, Result};
use crate::prune::{plan, Pattern, PruneOptions, Scope};
use crate::validate::{Comparison, DataOptions, DataSummary, Gates, Reference};
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

impl Metric {
    /// The drop (in points) a comparison shows under this metric.
    fn drop(self, c: &Comparison) -> Result<f64> {
        match self {
            Metric::Accuracy => c
                .accuracy
                .as_ref()
                .map(|a| a.drop_points)
                .ok_or_else(|| Error::Usage("--metric accuracy needs labels".into())),
            Metric::Top1 => c
                .outputs
                .iter()
                .filter_map(|o| o.top1_agreement)
                .reduce(f64::min)
                .map(|a| 100.0 * (1.0 - a))
                .ok_or_else(|| Error::Usage("--metric top1: no output is classifier-like".into())),
            Metric::Cosine => Ok(100.0
                * (1.0
                    - c.outputs
                        .iter()
                        .map(|o| o.cosine_mean)
                        .fold(f64::INFINITY, f64::min)
                        .min(1.0))),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SensitivityOptions {
    /// Sparsities tried for each layer, ascending, in (0, 1).
    pub ratios: Vec<f64>,
    /// `None`: accuracy with labels, else top-1 agreement for classifiers, else cosine.
    pub metric: Option<Metric>,
    pub pattern: Pattern,
    pub min_params: u64,
    pub include: Vec<regex::Regex>,
    pub exclude: Vec<regex::Regex>,
    pub data: DataOptions,
}

impl Default for SensitivityOptions {
    fn default() -> Self {
        SensitivityOptions {
            ratios: vec![0.25, 0.5, 0.75, 0.9],
            metric: None,
            pattern: Pattern::Unstructured,
            min_params: PruneOptions::default().min_params,
            include: vec![],
            exclude: vec![],
            data: DataOptions::default(),
        }
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

#[derive(Debug, Clone, Serialize)]
pub struct SensitivityReport {
    pub schema: &'static str,
    pub model: String,
    pub metric: Metric,
    /// The original's value of the metric's base quantity (accuracy in percent, or 100 for
    /// agreement/cosine, which are relative to the original).
    pub baseline: f64,
    pub pattern: Pattern,
    pub ratios: Vec<f64>,
    pub data: DataSummary,
    pub layers: Vec<LayerSensitivity>,
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

/// `pare sensitivity`.
pub fn sensitivity(
    input: &Path,
    opts: &SensitivityOptions,
    progress: &dyn Progress,
) -> Result<SensitivityReport> {
    if opts.ratios.is_empty()
        || opts.ratios.iter().any(|&r| !(r > 0.0 && r < 1.0))
        || opts.ratios.windows(2).any(|w| w[0] >= w[1])
    {
        return Err(Error::Usage(format!(
            "--ratios {:?}: give ascending sparsities in (0, 1)",
            opts.ratios
        )));
    }
    if matches!(opts.pattern, Pattern::NOfM { .. }) {
        return Err(Error::Usage(
            "sensitivity varies each layer's sparsity; an N:M pattern fixes it".into(),
        ));
    }
    progress.stage("reading");
    // Sparse weights are pruned dense (as `pare prune` does).
    let doc = Document::open(input)?.densified()?;
    progress.stage("loading the original in tract");
    let mut reference = Reference::new(&doc, &opts.data)?;
    let base = PruneOptions {
        sparsity: Some(opts.ratios[0]),
        scope: Scope::Layer,
        pattern: opts.pattern,
        min_params: opts.min_params,
        include: opts.include.clone(),
        exclude: opts.exclude.clone(),
        ..PruneOptions::default()
    };
    // The layers `pare prune` would touch with these settings.
    let layers = plan(&doc, &base)?.report.layers;
    let metric = match opts.metric {
        Some(m) => m,
        None if reference.dataset.labels.is_some() => Metric::Accuracy,
        None => Metric::Top1,
    };
    // The original against itself: fills the reference cache and gives the baseline.
    let self_runner = reference.load_candidate(&doc)?;
    let base_cmp = reference.compare(&self_runner, &Gates::default(), &Silent)?;
    let metric = match (metric, opts.metric) {
        // No classifier output and no explicit choice: fall back to cosine.
        (Metric::Top1, None) if base_cmp.outputs.iter().all(|o| !o.classifier) => Metric::Cosine,
        (m, _) => m,
    };
    metric.drop(&base_cmp)?;
    let baseline = match metric {
        Metric::Accuracy => base_cmp.accuracy.as_ref().map_or(0.0, |a| a.original),
        _ => 100.0,
    };
    drop(self_runner);

    let total = (layers.len() * opts.ratios.len()) as u64;
    let mut out = Vec::new();
    let mut done = 0u64;
    for l in &layers {
        let only = regex::Regex::new(&format!("^{}$", regex::escape(&l.name)))
            .expect("an escaped name is a valid regex");
        let mut points = Vec::new();
        for &r in &opts.ratios {
            done += 1;
            progress.stage(&format!(
                "[{done}/{total}] {} at {:.0}%",
                crate::inspect::ellipsize(&l.name, 40),
                100.0 * r
            ));
            let o = PruneOptions {
                sparsity: Some(r),
                include: vec![only.clone()],
                ..base.clone()
            };
            let p = plan(&doc, &o)?;
            let edited = doc.with_tensor_data(&p.edits);
            let runner = reference.load_candidate(&edited)?;
            let c = reference.compare(&runner, &Gates::default(), &Silent)?;
            let reached = p
                .report
                .layers
                .iter()
                .find(|x| x.name == l.name)
                .map_or(r, |x| x.sparsity_after);
            points.push(Point {
                ratio: r,
                sparsity: reached,
                drop: metric.drop(&c)?,
            });
        }
        out.push(LayerSensitivity {
            name: l.name.clone(),
            ops: l.ops.clone(),
            params: l.params,
            points,
        });
    }
    Ok(SensitivityReport {
        schema: SCHEMA,
        model: input.display().to_string(),
        metric,
        baseline,
        pattern: opts.pattern,
        ratios: opts.ratios.clone(),
        data: reference.dataset.summary.clone(),
        layers: out,
    })
}

/// The table: one row per layer, one column per ratio (drop in points).
pub fn render(r: &SensitivityReport, w: &mut dyn std::io::Write) -> std::io::Result<()> {
    let name_w = crate::inspect::name_width(r.layers.iter().map(|l| l.name.as_str()), 40);
    writeln!(
        w,
        "metric: {} drop in points ({}baseline {:.2}); {} samples",
        r.metric,
        if r.metric == Metric::Accuracy {
            "accuracy "
        } else {
            ""
        },
        r.baseline,
        r.data.samples
    )?;
    write!(w, "{:<name_w$} {:>9}", "layer", "params")?;
    for ratio in &r.ratios {
        write!(w, " {:>8}", format!("{:.0}%", 100.0 * ratio))?;
    }
    writeln!(w)?;
    for l in &r.layers {
        write!(
            w,
            "{:<name_w$} {:>9}",
            crate::inspect::ellipsize(&l.name, name_w),
            l.params
        )?;
        for p in &l.points {
            write!(w, " {:>8.2}", p.drop)?;
        }
        writeln!(w)?;
    }
    Ok(())
}

/// Writes the chart: one curve per layer, drop (points) against sparsity.
pub fn plot(r: &SensitivityReport, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let err = |e: String| Error::io(path, std::io::Error::other(e));
    let mut svg = String::new();
    {
        let height = 480 + 18 * r.layers.len().saturating_sub(12) as u32;
        let root = SVGBackend::with_string(&mut svg, (900, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let ymax = r
            .layers
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.drop))
            .fold(1.0f64, f64::max)
            * 1.05;
        let ymin = r
            .layers
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.drop))
            .fold(0.0f64, f64::min);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "pare sensitivity: {}",
                    Path::new(&r.model)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default()
                ),
                ("sans-serif", 20),
            )
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..1f64, ymin..ymax)
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("sparsity of the layer")
            .y_desc(format!("{} drop (points)", r.metric))
            .draw()
            .map_err(|e| err(e.to_string()))?;
        for (i, l) in r.layers.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let pts: Vec<(f64, f64)> = std::iter::once((0.0, 0.0))
                .chain(l.points.iter().map(|p| (p.ratio, p.drop)))
                .collect();
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(|e| err(e.to_string()))?
                .label(crate::inspect::ellipsize(&l.name, 36))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    crate::output::write_atomic(path, svg.as_bytes())
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
