//! `pare sensitivity`: prune each prunable layer alone at a ladder of ratios and measure what
//! the model loses on the user's data. The result is a table, a JSON profile (schema
//! `pare.sensitivity/1`) and an SVG chart; `pare prune --scope sensitivity --sensitivity FILE`
//! turns the profile into per-layer sparsities for a global target
//! ([`crate::allocate::allocate`]).
//!
//! Layer: pipeline (imports its own layer and the ones below; see ARCHITECTURE.md).

pub use crate::allocate::{LayerSensitivity, Metric, Point, Profile, SCHEMA};
use crate::data::{DataOptions, DataSummary};
use crate::document::Document;
use crate::error::{Error, Result};
use crate::progress::{Progress, Silent};
use crate::prune::{plan, Pattern, PruneOptions, Scope};
use crate::validate::{Comparison, Gates, Reference};
use serde::Serialize;
use std::path::Path;

/// The drop (in points) a comparison shows under `metric`.
fn metric_drop(metric: Metric, c: &Comparison) -> Result<f64> {
    match metric {
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
    metric_drop(metric, &base_cmp)?;
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
                crate::text::ellipsize(&l.name, 40),
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
                drop: metric_drop(metric, &c)?,
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
    let name_w = crate::text::name_width(r.layers.iter().map(|l| l.name.as_str()), 40);
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
            crate::text::ellipsize(&l.name, name_w),
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
                .label(crate::text::ellipsize(&l.name, 36))
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
