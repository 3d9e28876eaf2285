//! `pare validate`: run an original model and a candidate (pruned, converted) in tract on the
//! same data and report how far apart they are: per-output error, cosine similarity, top-1
//! agreement, accuracy against labels, latency, sizes; then check the user's gates.
//!
//! The original's side is a [`Reference`]: loaded once, bound to the data, its outputs kept in
//! memory after the first pass (when they are small enough), so that iterative pruning can
//! compare many candidates at the cost of running each candidate once. `table` renders the
//! report for people.
//!
//! Layer: checks (imports its own layer and the ones below; see ARCHITECTURE.md).

mod reference;
mod table;

use crate::data::{DataOptions, DataSummary};
use crate::document::Document;
use crate::error::{Error, Result};
use crate::model::Format;
use crate::progress::{Progress, Silent};
use crate::verify::Runner;
pub use reference::Reference;
use serde::Serialize;
pub use table::render;

/// Version of the JSON report; bumped when a field changes meaning or disappears.
pub const SCHEMA: &str = "pare.validate/1";

/// Thresholds a candidate must meet.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Gates {
    /// Largest allowed accuracy drop, in percentage points (needs labels).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_accuracy_drop: Option<f64>,
    /// Smallest allowed mean cosine similarity of every output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_cosine: Option<f64>,
    /// Smallest allowed top-1 agreement (fraction of samples) of every classifier-like output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_top1_agreement: Option<f64>,
}

impl Gates {
    pub fn is_empty(&self) -> bool {
        self.max_accuracy_drop.is_none()
            && self.min_cosine.is_none()
            && self.min_top1_agreement.is_none()
    }

    /// Refuses gates that cannot mean anything.
    pub fn check(&self) -> Result<()> {
        if let Some(p) = self.max_accuracy_drop {
            if !(0.0..=100.0).contains(&p) {
                return Err(Error::Usage(format!(
                    "--max-accuracy-drop {p}: give percentage points in [0, 100]"
                )));
            }
        }
        if let Some(c) = self.min_cosine {
            if !(-1.0..=1.0).contains(&c) {
                return Err(Error::Usage(format!(
                    "--min-cosine {c}: a cosine similarity lies in [-1, 1]"
                )));
            }
        }
        if let Some(a) = self.min_top1_agreement {
            if !(0.0..=1.0).contains(&a) {
                return Err(Error::Usage(format!(
                    "--min-top1-agreement {a}: give a fraction in [0, 1]"
                )));
            }
        }
        Ok(())
    }
}

/// Everything `pare validate` needs besides the two models.
#[derive(Debug, Clone)]
pub struct ValidateOptions {
    pub data: DataOptions,
    pub gates: Gates,
    /// Timed runs per model (0: no latency measurement).
    pub latency_runs: usize,
    /// Untimed runs per model before timing.
    pub warmup: usize,
}

impl Default for ValidateOptions {
    fn default() -> Self {
        ValidateOptions {
            data: DataOptions::default(),
            gates: Gates::default(),
            latency_runs: 20,
            warmup: 3,
        }
    }
}

/// Size and weight statistics of one model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    pub path: String,
    pub format: Format,
    /// Model file plus external data.
    pub file_bytes: u64,
    pub gzip_bytes: u64,
    pub zstd_bytes: u64,
    pub params: u64,
    pub nonzero_params: u64,
    pub sparsity: f64,
    /// Dense multiply-accumulates of one run at the declared shapes.
    pub macs: u64,
}

impl ModelSummary {
    pub fn of(doc: &Document) -> Result<ModelSummary> {
        let r = crate::inspect::inspect(doc)?;
        Ok(ModelSummary {
            path: doc.path().display().to_string(),
            format: doc.format(),
            file_bytes: r.sizes.file_bytes,
            gzip_bytes: r.sizes.gzip_bytes.unwrap_or_default(),
            zstd_bytes: r.sizes.zstd_bytes.unwrap_or_default(),
            params: r.totals.params,
            nonzero_params: r.totals.nonzero_params,
            sparsity: r.totals.sparsity,
            macs: r.totals.macs,
        })
    }
}

/// How one output of the candidate compares with the original's.
#[derive(Debug, Clone, Serialize)]
pub struct OutputMetrics {
    pub index: usize,
    pub name: String,
    /// Shape of one run's output.
    pub shape: Vec<usize>,
    /// One row per sample with a single axis of size ≥ 2: top-1 agreement applies.
    pub classifier: bool,
    pub max_abs_diff: f64,
    pub mean_abs_diff: f64,
    /// Cosine similarity per sample, averaged over the samples.
    pub cosine_mean: f64,
    pub cosine_min: f64,
    /// Fraction of samples whose arg-max agrees (classifier-like outputs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top1_agreement: Option<f64>,
    /// Values that are NaN or infinite in the candidate's output (never in a sound model).
    pub candidate_nonfinite: u64,
}

impl OutputMetrics {
    pub(crate) fn new(name: String, s: crate::verify::agreement::Stats) -> Self {
        OutputMetrics {
            index: s.index,
            name,
            shape: s.shape,
            classifier: s.classifier,
            max_abs_diff: s.max_abs_diff,
            mean_abs_diff: s.mean_abs_diff,
            cosine_mean: s.cosine_mean,
            cosine_min: s.cosine_min,
            top1_agreement: s.top1_agreement,
            candidate_nonfinite: s.candidate_nonfinite,
        }
    }

    /// Back to the statistics, for a verdict ([`verify_on_data`]).
    fn into_stats(self) -> crate::verify::agreement::Stats {
        crate::verify::agreement::Stats {
            index: self.index,
            shape: self.shape,
            classifier: self.classifier,
            max_abs_diff: self.max_abs_diff,
            mean_abs_diff: self.mean_abs_diff,
            cosine_mean: self.cosine_mean,
            cosine_min: self.cosine_min,
            top1_agreement: self.top1_agreement,
            candidate_nonfinite: self.candidate_nonfinite,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct AccuracyReport {
    /// The classifier-like output labels are compared with (the first one).
    pub output: String,
    pub samples: usize,
    /// Top-1 accuracy in percent.
    pub original: f64,
    pub candidate: f64,
    /// original − candidate, in percentage points.
    pub drop_points: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    pub median_ms: f64,
    pub p90_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyReport {
    /// Samples per timed run.
    pub batch_size: usize,
    pub warmup: usize,
    pub runs: usize,
    pub original: Timing,
    pub candidate: Timing,
    /// Original median / candidate median.
    pub speedup: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GateResult {
    pub gate: &'static str,
    pub limit: f64,
    /// The measured value the limit applies to (the worst output's, for per-output gates).
    pub value: f64,
    pub passed: bool,
}

/// The comparison of a candidate with the reference on the data (no sizes, no latency):
/// what iterative pruning evaluates at each step.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub outputs: Vec<OutputMetrics>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<AccuracyReport>,
    pub gates: Vec<GateResult>,
    pub passed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ValidateReport {
    pub schema: &'static str,
    pub original: ModelSummary,
    pub candidate: ModelSummary,
    pub data: DataSummary,
    /// Rewrites of the validation copies tract runs (see `pare convert --help`); empty when
    /// tract runs the files as they are.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lowered: Vec<String>,
    pub outputs: Vec<OutputMetrics>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<AccuracyReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyReport>,
    pub gates: Vec<GateResult>,
    /// Every gate passed (true when there are none).
    pub passed: bool,
}

/// `pare validate`: compares `candidate` with `original` on `opts.data`.
pub fn validate(
    original: &Document,
    candidate: &Document,
    opts: &ValidateOptions,
    progress: &dyn Progress,
) -> Result<ValidateReport> {
    opts.gates.check()?;
    progress.stage("loading models");
    let mut reference = Reference::new(original, &opts.data)?;
    let cand = reference.load_candidate(candidate)?;
    validate_with(&mut reference, original, candidate, &cand, opts, progress)
}

/// [`validate`] with a reference already loaded (pruning validates against the same one).
pub fn validate_with(
    reference: &mut Reference,
    original: &Document,
    candidate: &Document,
    cand: &Runner,
    opts: &ValidateOptions,
    progress: &dyn Progress,
) -> Result<ValidateReport> {
    let cmp = reference.compare(cand, &opts.gates, progress)?;
    progress.stage("timing");
    let latency = reference.latency(cand, opts.warmup, opts.latency_runs)?;
    progress.stage("measuring sizes");
    let mut lowered = reference.lowered();
    for l in cand.lowered.describe() {
        if !lowered.contains(&l) {
            lowered.push(l);
        }
    }
    Ok(ValidateReport {
        schema: SCHEMA,
        original: ModelSummary::of(original)?,
        candidate: ModelSummary::of(candidate)?,
        data: reference.dataset.summary.clone(),
        lowered,
        outputs: cmp.outputs,
        accuracy: cmp.accuracy,
        latency,
        gates: cmp.gates,
        passed: cmp.passed,
    })
}

/// [`validate`] without progress.
pub fn validate_quiet(
    original: &Document,
    candidate: &Document,
    opts: &ValidateOptions,
) -> Result<ValidateReport> {
    validate(original, candidate, opts, &Silent)
}

/// Samples of the user's data a written model is verified on (the first ones).
pub const VERIFY_SAMPLES: usize = 32;

/// Verifies `candidate` against `original` on the first [`VERIFY_SAMPLES`] samples of `data`
/// (the user's `--validate` or `--calib` data) instead of seeded random inputs: the verdict of
/// [`crate::verify::compare`], with the same thresholds, on inputs that look like the real ones.
pub fn verify_on_data(
    original: &Document,
    candidate: &Document,
    data: &DataOptions,
) -> Result<crate::verify::Verification> {
    use crate::verify::Verification;
    let mut data = data.clone();
    data.samples = Some(
        data.samples
            .map_or(VERIFY_SAMPLES, |n| n.min(VERIFY_SAMPLES)),
    );
    data.labels = None;
    let mut reference = match Reference::new(original, &data) {
        Ok(r) => r,
        Err(e) => return Ok(Verification::unverified(format!("original model: {e}"))),
    };
    let outcome = reference.load_candidate(candidate).and_then(|runner| {
        let c = reference.compare(&runner, &Gates::default(), &crate::progress::Silent)?;
        Ok((runner, c))
    });
    let (runner, comparison) = match outcome {
        Ok(r) => r,
        Err(e) => return Ok(Verification::regressed(format!("written model: {e}"))),
    };
    let outputs = comparison
        .outputs
        .into_iter()
        .map(|o| {
            let identical = o.max_abs_diff == 0.0 && o.candidate_nonfinite == 0;
            (o.into_stats(), identical)
        })
        .collect();
    let on = match &data.source {
        crate::data::DataSource::Random => "random".to_string(),
        crate::data::DataSource::Path(p) => p.display().to_string(),
    };
    let samples = reference.dataset.samples as u64;
    let mut v = Verification::judge(outputs, on, samples, reference.runner.inputs.clone());
    v.lowered = reference.runner.lowered.with(&runner.lowered);
    Ok(v)
}
