//! The `pare prune` pipeline: read, remove channels (structural), zero weights (magnitude,
//! optionally calibrated), store, verify and write; with validation gates and a search.
//!
//! Files, in the order data flows: `options` (what is asked), `candidate` (the weights a prune
//! can reach in the format-neutral [`crate::model::Model`]), `plan` (sparsity allocation and
//! the parallel pass over tensors), `tensor` (one tensor's masks and cut), `report`; this file
//! chains structural and magnitude pruning on a document, and `validated` adds gates and the
//! search. The document applies the new payloads; nothing else in the file changes.
//!
//! Layer: pipeline (imports its own layer and the ones below; see ARCHITECTURE.md).

mod candidate;
pub mod config;
mod options;
mod plan;
mod report;
mod tensor;
pub mod validated;

pub use options::*;
pub use plan::{plan, Plan};
pub use report::*;
pub use validated::{prune_validated, Search, Validation};

use crate::convert::WriteOptions;
use crate::document::Document;
use crate::error::Result;
use crate::model::payload::Recipe as _;
use crate::progress::{Progress, Silent};
use crate::structural;
use plan::plan_with;
use std::path::Path;

/// Prunes `doc` in memory as `opts` say: channels first (structural), then magnitude on what
/// remains. The edited document and the report (without `write`).
pub fn prune_document(doc: &Document, opts: &PruneOptions) -> Result<(Document, PruneReport)> {
    prune_document_with(doc, opts, false, &Silent)
}

/// [`prune_document`]; with `defer`, the returned document carries float32 pruning recipes
/// ([`crate::model::payload`]) that only its writers apply: it is for writing, not for reading.
pub(crate) fn prune_document_with(
    doc: &Document,
    opts: &PruneOptions,
    defer: bool,
    progress: &dyn Progress,
) -> Result<(Document, PruneReport)> {
    opts.validate()?;
    // Sparse weights (and their DENSIFY ops) are pruned dense; the write stores them as its
    // storage policy says.
    let dense;
    let doc = if doc.has_sparse() {
        dense = doc.densified()?;
        &dense
    } else {
        doc
    };
    let mut calibration = Vec::new();
    let (base, channels) = match &opts.channels {
        Some(c) => {
            let with_energy;
            let c = match &opts.calib {
                Some(calib) if c.importance == structural::Importance::Activation => {
                    let mut c2 = c.clone();
                    c2.energy = Some(std::sync::Arc::new(crate::calib::channel_energy(
                        doc, calib, progress,
                    )?));
                    with_energy = c2;
                    &with_energy
                }
                _ => c,
            };
            let (d, r, edits) = structural::prune_channels_with_edits(doc, c)?;
            let d = match (&opts.calib, edits) {
                (Some(calib), Some(edits)) if calib.refit => {
                    let (d, r) = crate::calib::refit_structure(doc, &d, &edits, calib, progress)?;
                    calibration.push(r);
                    d
                }
                _ => d,
            };
            (d, Some(r))
        }
        None => (doc.clone(), None),
    };
    let (edited, mut report) = if opts.magnitude_requested() {
        // Calibrated pruning computes every payload (no deferred recipes).
        let defer = defer && opts.criterion == crate::calib::Criterion::Magnitude;
        let mut p = plan_with(&base, opts, defer, progress)?;
        // A recipe works only where the document stores the very bytes it was planned from
        // (raw or external data, TFLite buffers); weights decoded from typed fields
        // (float_data) are computed now.
        let stored = if p.deferred.is_empty() {
            Default::default()
        } else {
            base.stored_payloads()
        };
        let (recipes, computed): (Vec<_>, Vec<_>) = std::mem::take(&mut p.deferred)
            .into_iter()
            .partition(|r| stored.contains(&crate::model::payload::payload_key(r.source())));
        for r in computed {
            p.edits.insert(r.handle, r.materialize(false));
        }
        let edited = base.with_tensor_data(&p.edits);
        let edited = if recipes.is_empty() {
            edited
        } else {
            edited.with_deferred(crate::model::payload::Deferred::new(recipes))
        };
        (edited, p.report)
    } else {
        let report = PruneReport {
            schema: REPORT_SCHEMA,
            settings: opts.settings(),
            layers: Vec::new(),
            skipped: Vec::new(),
            warnings: Vec::new(),
            totals: PruneTotals::default(),
            write: None,
            sensitivity_tolerance: None,
            validation: None,
            search: None,
            channels: None,
            calibration: Vec::new(),
            phases: Vec::new(),
        };
        (base, report)
    };
    report.channels = channels;
    calibration.append(&mut report.calibration);
    report.calibration = calibration;
    Ok((edited, report))
}

/// `pare prune`: read, prune, write atomically, verify against the original in tract.
pub fn prune(
    input: &Path,
    output: &Path,
    opts: &PruneOptions,
    write: &WriteOptions,
) -> Result<PruneReport> {
    prune_with_progress(input, output, opts, write, &Silent)
}

/// [`prune`], reporting its stages to `progress`.
pub fn prune_with_progress(
    input: &Path,
    output: &Path,
    opts: &PruneOptions,
    write: &WriteOptions,
    progress: &dyn Progress,
) -> Result<PruneReport> {
    opts.validate()?; // before reading: a usage error should not wait for a large model
    let start = std::time::Instant::now();
    progress.stage("reading");
    let doc = Document::open(input)?;
    let mut phases = vec![Phase::since("read", start)];
    progress.stage("pruning");
    let pruning = std::time::Instant::now();
    // Written once and read back from disk: pruned weights are produced as they are written.
    let (edited, mut report) = prune_document_with(&doc, opts, true, progress)?;
    let mut prune = Phase::since("prune", pruning);
    if !report.calibration.is_empty() {
        let t = &report.calibration;
        let seconds: f64 = t
            .iter()
            .map(|c| c.timing.capture_seconds + c.timing.solve_seconds)
            .sum();
        phases.push(Phase {
            phase: "calibrate",
            seconds,
            peak_rss: t.iter().filter_map(|c| c.timing.peak_rss).max(),
        });
        prune.seconds = (prune.seconds - seconds).max(0.0);
    }
    phases.push(prune);
    let writing = std::time::Instant::now();
    let written =
        crate::convert::write_checked_with_progress(&doc, &edited, output, write, false, progress)?;
    phases.push(Phase::since("write and verify", writing));
    report.write = Some(written);
    report.phases = phases;
    Ok(report)
}
