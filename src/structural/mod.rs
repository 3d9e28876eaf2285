//! Structural pruning: remove whole channels (conv filters, dense neurons) and rewire every
//! layer that depends on them, so the written model has smaller tensors and fewer MACs.
//!
//! Three steps, each its own module:
//! 1. [`rules`] builds the channel dependency graph ([`graph::DepGraph`]): which tensors
//!    slice along which axis when a channel goes, which channels are coupled, and where
//!    tracking stops (boundaries keep their channels);
//! 2. [`importance`] scores every coupled group of channels;
//! 3. [`plan`] picks the channels to remove (per layer or globally, to a ratio or to a MACs /
//!    parameter target), [`fold`] carries what dead channels still output into the next
//!    layer's bias, and the plan turns the choice into [`crate::model::StructureEdits`], which
//!    the document applies.
//!
//! This module holds the options, the report and the entry point, [`prune_channels`].
//!
//! Layer: methods (imports its own layer and the ones below; see ARCHITECTURE.md).

mod edits;
pub(crate) mod fold;
mod graph;
pub mod importance;
mod plan;
mod rules;

pub use graph::Boundary;
pub use importance::Importance;

use crate::document::Document;
use crate::error::{Error, Result};
use crate::model::stats;
use plan::Planner;
use regex::Regex;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// How much to remove.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum Amount {
    /// Remove this fraction of the prunable channels.
    Ratio(f64),
    /// Remove channels until the model's MACs are at most this fraction of the original's.
    TargetMacs(f64),
    /// The same for parameters.
    TargetParams(f64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelScope {
    /// Every group of coupled layers loses the ratio of its channels.
    Layer,
    /// One ranking over all groups (scores normalized per layer), capped per group.
    Global,
}

impl FromStr for ChannelScope {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "layer" => Ok(ChannelScope::Layer),
            "global" => Ok(ChannelScope::Global),
            _ => Err(format!(
                "unknown scope {s:?} for channel pruning: expected layer or global"
            )),
        }
    }
}

impl fmt::Display for ChannelScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChannelScope::Layer => "layer",
            ChannelScope::Global => "global",
        })
    }
}

/// A per-layer channel ratio from the config file (`[[layer]] channels = R`).
#[derive(Debug, Clone)]
pub struct ChannelRule {
    pub source: String,
    pub regex: Regex,
    pub ratio: f64,
}

pub const DEFAULT_MAX_LAYER_RATIO: f64 = 0.9;

#[derive(Debug, Clone)]
pub struct ChannelOptions {
    pub amount: Amount,
    pub importance: Importance,
    pub scope: ChannelScope,
    /// Kept channel counts are multiples of this (when a group has at least this many).
    pub round_to: usize,
    /// With `--scope global`: no group loses more than this fraction of its channels.
    pub max_layer_ratio: f64,
    /// Layers (node or weight names) whose output channels are kept.
    pub exclude: Vec<Regex>,
    pub rules: Vec<ChannelRule>,
    /// Fold the constant that removed channels still output into the consumers' biases.
    pub fold: bool,
    /// With `Importance::Activation`: the consumers' per-channel output energy on calibration
    /// data (filled in by the pruning pipeline from `--calib`).
    pub energy: Option<std::sync::Arc<importance::Energy>>,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        ChannelOptions {
            amount: Amount::Ratio(0.0),
            importance: Importance::L1,
            scope: ChannelScope::Layer,
            round_to: 1,
            max_layer_ratio: DEFAULT_MAX_LAYER_RATIO,
            exclude: Vec::new(),
            rules: Vec::new(),
            fold: true,
            energy: None,
        }
    }
}

impl ChannelOptions {
    pub fn validate(&self) -> Result<()> {
        let usage = |m: String| Err(Error::Usage(m));
        match self.amount {
            Amount::Ratio(r) if !(0.0..1.0).contains(&r) => {
                return usage(format!("--channels {r} is outside [0, 1)"))
            }
            Amount::TargetMacs(f) | Amount::TargetParams(f) if !(f > 0.0 && f <= 1.0) => {
                let flag = if matches!(self.amount, Amount::TargetMacs(_)) {
                    "--target-macs"
                } else {
                    "--target-params"
                };
                return usage(format!(
                    "{flag} {f} is outside (0, 1]: it is the fraction of the original to keep"
                ));
            }
            _ => {}
        }
        if self.round_to == 0 {
            return usage("--round-to must be at least 1".into());
        }
        if !(self.max_layer_ratio > 0.0 && self.max_layer_ratio < 1.0) {
            return usage(format!(
                "--max-layer-ratio {} is outside (0, 1)",
                self.max_layer_ratio
            ));
        }
        for r in &self.rules {
            if !(0.0..1.0).contains(&r.ratio) {
                return usage(format!(
                    "{}: channels {} is outside [0, 1)",
                    r.source, r.ratio
                ));
            }
        }
        Ok(())
    }
}

/// One group of coupled layers and what happened to its channels.
#[derive(Debug, Clone, Serialize)]
pub struct GroupResult {
    /// The producing layers (more than one when a residual Add or a Mul couples them).
    pub layers: Vec<String>,
    pub channels: usize,
    pub removed: usize,
    pub kept: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChannelCounts {
    /// Output channels of every weight-bearing layer (coupled channels counted once).
    pub total: usize,
    /// Those pare may remove (not pinned by a boundary, an output or --exclude).
    pub prunable: usize,
    pub removed: usize,
    pub prunable_fraction: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChannelReport {
    pub amount: Amount,
    pub importance: Importance,
    pub scope: ChannelScope,
    pub round_to: usize,
    /// The ratio applied (equal to `--channels`, or found for a target).
    pub ratio: f64,
    pub channels: ChannelCounts,
    pub params_before: u64,
    pub params_after: u64,
    pub macs_before: u64,
    pub macs_after: u64,
    /// Removed channels whose constant output was folded into a consumer's bias, and those
    /// whose constant could not be (no bias to fold into, or an op pare cannot evaluate).
    pub folded: usize,
    pub not_folded: usize,
    pub groups: Vec<GroupResult>,
    /// Where channel tracking stopped, and why (channels reaching them were kept).
    pub boundaries: Vec<Boundary>,
}

/// Removes channels from `doc` in memory: the edited document and the report.
pub fn prune_channels(doc: &Document, opts: &ChannelOptions) -> Result<(Document, ChannelReport)> {
    prune_channels_with_edits(doc, opts).map(|(d, r, _)| (d, r))
}

/// [`prune_channels`], also returning the edits applied (none when nothing was removed).
pub(crate) fn prune_channels_with_edits(
    doc: &Document,
    opts: &ChannelOptions,
) -> Result<(
    Document,
    ChannelReport,
    Option<crate::model::StructureEdits>,
)> {
    opts.validate()?;
    let model = doc.to_model()?;
    let p = Planner::new(doc, &model, opts)?;
    if p.prunable() == 0 {
        let why: Vec<String> =
            p.d.boundaries
                .iter()
                .take(6)
                .map(|b| format!("{} ({}): {}", b.node, b.op, b.reason))
                .collect();
        return Err(Error::unsupported(
            doc.path(),
            format!(
                "no prunable channels: {}{}",
                if why.is_empty() {
                    "the model has no Conv/Gemm/MatMul/FULLY_CONNECTED layer with constant weights"
                        .to_string()
                } else {
                    format!("every channel reaches a boundary: {}", why.join("; "))
                },
                if p.d.boundaries.len() > 6 {
                    "; …"
                } else {
                    ""
                }
            ),
        ));
    }
    let ratio = match opts.amount {
        Amount::Ratio(r) => r,
        Amount::TargetMacs(f) | Amount::TargetParams(f) => {
            let macs = matches!(opts.amount, Amount::TargetMacs(_));
            let (before, what) = if macs {
                (p.macs_before, "MACs")
            } else {
                (p.params_before, "parameters")
            };
            let reached = |r: f64| -> f64 {
                let (pa, ma) = p.estimate(&p.select(r));
                (if macs { ma } else { pa }) as f64 / before.max(1) as f64
            };
            let max = 0.999;
            let best = reached(max);
            if best > f + 1e-9 {
                return Err(Error::unsupported(
                    doc.path(),
                    format!(
                        "cannot reach {:.1}% of the original {what}: removing every channel the scope allows ({} of {} channels are prunable{}) leaves {:.1}%",
                        100.0 * f,
                        p.prunable(),
                        p.clusters.iter().map(|c| c.channels).sum::<usize>(),
                        if opts.scope == ChannelScope::Global {
                            format!(", at most {:.0}% per layer", 100.0 * opts.max_layer_ratio)
                        } else {
                            String::new()
                        },
                        100.0 * best
                    ),
                ));
            }
            // The smallest ratio that reaches the target (the cost falls as the ratio rises).
            let (mut lo, mut hi) = (0.0, max);
            for _ in 0..40 {
                let mid = 0.5 * (lo + hi);
                if reached(mid) <= f + 1e-9 {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            hi
        }
    };
    let removed = p.select(ratio);
    let folds = if opts.fold {
        fold::fold(p.g, &p.d, &removed)
    } else {
        fold::Folds {
            deltas: HashMap::new(),
            folded: 0,
            dropped: 0,
        }
    };
    let report = p.report(ratio, &removed, &folds);
    if removed.is_empty() {
        return Ok((doc.clone(), report, None));
    }
    let edits = p.edits(&removed, &folds);
    let edited = doc.with_structure(&edits);
    let mut report = report;
    if !edits.copies.is_empty() {
        // Copies of shared constants add parameters the plan's estimate does not see:
        // count the result.
        let inferred = match &edited {
            Document::Onnx(d) => crate::verify::onnx_value_shapes(d),
            Document::Tflite(_) => HashMap::new(),
        };
        let (_, t) = stats::collect(&edited.to_model()?.graphs, &inferred);
        report.params_after = t.params;
        report.macs_after = t.macs;
    }
    Ok((edited, report, Some(edits)))
}

/// The human-readable summary of a channel prune.
pub fn render(r: &ChannelReport, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let pct = |a: u64, b: u64| {
        if b == 0 {
            0.0
        } else {
            100.0 * a as f64 / b as f64
        }
    };
    let width = crate::text::name_width(
        r.groups
            .iter()
            .map(|g| g.layers.first().map_or("", String::as_str)),
        48,
    );
    writeln!(
        out,
        "{:<width$}  {:>8}  {:>8}  {:>8}",
        "layer group", "channels", "kept", "removed"
    )?;
    for g in &r.groups {
        let mut name = crate::text::ellipsize(g.layers.first().map_or("", String::as_str), width);
        if g.layers.len() > 1 {
            name = format!("{name} +{}", g.layers.len() - 1);
        }
        writeln!(
            out,
            "{:<width$}  {:>8}  {:>8}  {:>8}",
            name, g.channels, g.kept, g.removed
        )?;
    }
    writeln!(
        out,
        "channels: {} of {} removed ({} prunable, {:.1}% of all; ratio {:.4}, importance {}, scope {})",
        r.channels.removed,
        r.channels.total,
        r.channels.prunable,
        100.0 * r.channels.prunable_fraction,
        r.ratio,
        r.importance,
        r.scope
    )?;
    writeln!(
        out,
        "params: {} -> {} ({:.1}%); MACs: {} -> {} ({:.1}%)",
        r.params_before,
        r.params_after,
        pct(r.params_after, r.params_before),
        r.macs_before,
        r.macs_after,
        pct(r.macs_after, r.macs_before)
    )?;
    if r.folded + r.not_folded > 0 {
        writeln!(
            out,
            "folded the constant output of {} removed channels into the next layer's bias{}",
            r.folded,
            if r.not_folded > 0 {
                format!(" ({} could not be folded)", r.not_folded)
            } else {
                String::new()
            }
        )?;
    }
    if !r.boundaries.is_empty() {
        writeln!(
            out,
            "boundaries (channels reaching them are kept): {}",
            r.boundaries.len()
        )?;
        for b in r.boundaries.iter().take(10) {
            writeln!(out, "  {} ({}): {}", b.node, b.op, b.reason)?;
        }
        if r.boundaries.len() > 10 {
            writeln!(
                out,
                "  … {} more in the JSON report",
                r.boundaries.len() - 10
            )?;
        }
    }
    Ok(())
}
