//! The prune report (schema `pare.prune/1`): one line per pruned tensor, the skipped
//! weights, totals, and the human-readable table.

use super::options::{Pattern, Settings};
use crate::convert::WriteReport;
use crate::model::DType;
use crate::structural;
use serde::Serialize;

/// Version of the JSON report (`pare prune --json`, `--report`).
pub const REPORT_SCHEMA: &str = "pare.prune/1";

/// A weight pare found and left alone.
#[derive(Debug, Clone, Serialize)]
pub struct SkippedWeight {
    pub name: String,
    pub nodes: Vec<String>,
    pub ops: Vec<String>,
    pub params: u64,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerResult {
    pub graph: usize,
    /// The weight tensor's name.
    pub name: String,
    /// The nodes that use it (one entry per node; a shared weight is pruned once).
    pub nodes: Vec<String>,
    pub ops: Vec<String>,
    /// The widening op in front of the consumer (DequantizeLinear, Cast, DEQUANTIZE), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored_via: Option<String>,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub params: u64,
    pub pattern: Pattern,
    /// The sparsity asked of this tensor (`None` when a global or LAMP threshold decided it).
    pub target: Option<f64>,
    pub zeros_before: u64,
    pub zeros_after: u64,
    pub sparsity_before: f64,
    pub sparsity_after: f64,
    /// The largest magnitude (block norm for blocks) that was pruned, in real units
    /// (dequantized for quantized weights); `None` when nothing was or for N:M.
    pub threshold: Option<f64>,
    /// The config rule that set this tensor's sparsity or pattern.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneTotals {
    pub layers: usize,
    /// Parameters in the pruned tensors.
    pub eligible_params: u64,
    pub eligible_sparsity_before: f64,
    pub eligible_sparsity_after: f64,
    /// Every parameter of the model (weights, biases, normalization), each counted once.
    pub model_params: u64,
    pub model_sparsity_before: f64,
    pub model_sparsity_after: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub schema: &'static str,
    pub settings: Settings,
    pub layers: Vec<LayerResult>,
    pub skipped: Vec<SkippedWeight>,
    pub warnings: Vec<String>,
    pub totals: PruneTotals,
    /// The written files and their verification against the original; absent when nothing
    /// was written (a failed validation gate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write: Option<WriteReport>,
    /// With `--scope sensitivity`: the common drop tolerance (points) of the allocation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sensitivity_tolerance: Option<f64>,
    /// The comparison with the original on the user's data (`--validate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation: Option<crate::validate::ValidateReport>,
    /// The steps of `--search`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchReport>,
    /// Structural pruning (`--channels`, `--target-macs`, `--target-params`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<structural::ChannelReport>,
    /// Calibration passes (`--calib`): the structural refit, then the unstructured criterion.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub calibration: Vec<crate::calib::CalibReport>,
    /// Where the time went (`pare prune`: read, calibrate, prune, write and verify).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<Phase>,
}

/// One phase of a command: its wall time and the process's memory peak when it ended.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub phase: &'static str,
    pub seconds: f64,
    /// Peak resident memory of the process so far (bytes; Linux), read at the phase's end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss: Option<u64>,
}

impl Phase {
    /// The phase `phase` that began at `since`, ending now.
    pub fn since(phase: &'static str, since: std::time::Instant) -> Phase {
        Phase {
            phase,
            seconds: since.elapsed().as_secs_f64(),
            peak_rss: crate::io::peak_rss(),
        }
    }
}

impl PruneReport {
    /// A validation gate failed, or a search found no sparsity within the gates.
    pub fn gate_failed(&self) -> bool {
        self.validation.as_ref().is_some_and(|v| !v.passed)
            || self.search.as_ref().is_some_and(|s| s.chosen.is_none())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SearchStep {
    pub step: usize,
    /// The value tried: the sparsity, or with `parameter: "channels"` the channel ratio.
    pub sparsity: f64,
    /// The sparsity reached over the pruned tensors, or with `parameter: "channels"` the
    /// fraction of the model's parameters removed.
    pub eligible_sparsity: f64,
    pub passed: bool,
    /// Candidate accuracy (percent) and drop (points), with labels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drop_points: Option<f64>,
    /// The worst output's mean cosine similarity.
    pub cosine: f64,
    /// The worst classifier output's top-1 agreement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top1_agreement: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SearchReport {
    /// What is searched: `sparsity` (magnitude), or `channels` (the channel ratio, when
    /// channels are pruned without a sparsity).
    pub parameter: &'static str,
    pub strategy: &'static str,
    pub step: f64,
    pub upper_bound: f64,
    pub steps: Vec<SearchStep>,
    /// The sparsity written; `None` when no sparsity on the grid met the gates.
    pub chosen: Option<f64>,
}

/// The human-readable report: a per-layer table, skipped weights and totals.
pub fn render(r: &PruneReport, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let pct = |f: f64| format!("{:.1}%", 100.0 * f);
    let name_w = crate::text::name_width(r.layers.iter().map(|l| l.name.as_str()), 48);
    writeln!(
        out,
        "{:<name_w$}  {:<18} {:<14} {:<5} {:>9}  {:>16}  {:>10}",
        "weight", "op", "shape", "dtype", "params", "sparsity", "threshold"
    )?;
    for l in &r.layers {
        let shape: Vec<String> = l.shape.iter().map(u64::to_string).collect();
        let op = match &l.stored_via {
            Some(v) => format!("{}←{}", l.ops[0], v),
            None => l.ops[0].clone(),
        };
        writeln!(
            out,
            "{:<name_w$}  {:<18} {:<14} {:<5} {:>9}  {:>16}  {:>10}",
            crate::text::ellipsize(&l.name, name_w),
            op,
            shape.join("x"),
            l.dtype.to_string(),
            l.params,
            format!("{} → {}", pct(l.sparsity_before), pct(l.sparsity_after)),
            l.threshold.map_or("-".into(), |t| format!("{t:.4e}")),
        )?;
    }
    for s in &r.skipped {
        writeln!(
            out,
            "skipped {} ({}): {}",
            s.name,
            s.ops.join(","),
            s.reason
        )?;
    }
    for w in &r.warnings {
        writeln!(out, "warning: {w}")?;
    }
    for c in &r.calibration {
        render_calibration(c, out)?;
    }
    if !r.phases.is_empty() {
        let parts: Vec<String> = r
            .phases
            .iter()
            .map(|p| format!("{} {:.1} s", p.phase, p.seconds))
            .collect();
        let peak = r.phases.iter().filter_map(|p| p.peak_rss).max();
        writeln!(
            out,
            "time: {}{}",
            parts.join(", "),
            peak.map_or(String::new(), |b| format!(
                "; peak memory {}",
                crate::text::bytes(b)
            ))
        )?;
    }
    let t = &r.totals;
    writeln!(
        out,
        "pruned {} tensors ({} params): {} → {} sparse; whole model ({} params): {} → {}",
        t.layers,
        t.eligible_params,
        pct(t.eligible_sparsity_before),
        pct(t.eligible_sparsity_after),
        t.model_params,
        pct(t.model_sparsity_before),
        pct(t.model_sparsity_after)
    )
}

/// One calibration's line: what it covered, what it ran and held, and its warnings.
fn render_calibration(
    c: &crate::calib::CalibReport,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    let what = match c.criterion {
        Some(k) => format!("calibration ({k})"),
        None => "calibration (refit)".to_string(),
    };
    let cap = &c.capture;
    let mode = match &cap.staged {
        Some(s) => format!(
            ", {} layer depths run stage by stage ({} stage runs; activations held {} of {}{})",
            cap.passes,
            s.segments_run,
            crate::text::bytes(s.held_peak),
            crate::text::bytes(s.memory_limit),
            if s.spilled > 0 {
                format!(", {} in a temporary file", crate::text::bytes(s.spilled))
            } else {
                String::new()
            }
        ),
        None if cap.passes > 1 => format!(", {} whole-model passes", cap.passes),
        None => ", one pass".to_string(),
    };
    writeln!(
        out,
        "{what}: {} layers on {} samples{mode}; {:.1} s capture, {:.1} s solve",
        c.layers.len(),
        cap.data.samples,
        c.timing.capture_seconds,
        c.timing.solve_seconds,
    )?;
    for f in &c.fallbacks {
        writeln!(out, "  not calibrated: {}: {}", f.name, f.reason)?;
    }
    for w in &c.warnings {
        writeln!(out, "  warning: {w}")?;
    }
    Ok(())
}
