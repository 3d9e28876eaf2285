//! Pruning with validation on the user's data: gate the written model (`--validate` with
//! `--max-accuracy-drop` …), or search for the largest sparsity within the gates (`--search`).
//!
//! Search strategy (documented in `pare prune --help`): bisection over the sparsity on a grid
//! of `step` (default 0.01) between 0 and the upper bound (`--sparsity`, default 0.99). The
//! upper bound is tried first; then each step halves the interval between the largest sparsity
//! known to pass and the smallest known to fail, until they are one grid step apart. Every
//! step prunes the original in memory with the same settings and compares the result with the
//! original on the data. Accuracy is not strictly monotonic in sparsity, so bisection finds *a*
//! passing sparsity with a failing one a step above, not necessarily the largest passing one;
//! the report lists every step so this is visible.

use super::{prune_document, PruneOptions, PruneReport, SearchReport, SearchStep};
use crate::convert::WriteOptions;
use crate::document::Document;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::structural::Amount;
use crate::validate::{self, Comparison, Reference, ValidateOptions};
use std::path::Path;

/// Validation settings of a `pare prune` run.
#[derive(Debug, Clone)]
pub struct Validation {
    pub options: ValidateOptions,
    /// Write the model even when a gate fails (the exit code still says it failed).
    pub keep_failed: bool,
    pub search: Option<Search>,
}

#[derive(Debug, Clone)]
pub struct Search {
    /// Grid step of the searched sparsity.
    pub step: f64,
}

impl Default for Search {
    fn default() -> Self {
        Search { step: 0.01 }
    }
}

/// Upper bound of the search when `--sparsity` does not give one.
pub const SEARCH_MAX: f64 = 0.99;

/// Upper bound of a channel-ratio search when `--channels` does not give one.
pub const CHANNEL_SEARCH_MAX: f64 = 0.9;

/// `opts` with the searched value set: the sparsity, or the channel ratio when channels are
/// pruned without magnitude pruning.
fn with_value(opts: &PruneOptions, x: f64) -> PruneOptions {
    let mut o = opts.clone();
    if !opts.magnitude_requested() {
        if let Some(c) = o.channels.as_mut() {
            c.amount = Amount::Ratio(x);
        }
    } else {
        o.sparsity = Some(x);
    }
    o
}

fn record(step: usize, sparsity: f64, report: &PruneReport, c: &Comparison) -> SearchStep {
    let reached = match (&report.channels, report.layers.is_empty()) {
        (Some(ch), true) => 1.0 - ch.params_after as f64 / ch.params_before.max(1) as f64,
        _ => report.totals.eligible_sparsity_after,
    };
    SearchStep {
        step,
        sparsity,
        eligible_sparsity: reached,
        passed: c.passed,
        accuracy: c.accuracy.as_ref().map(|a| a.candidate),
        drop_points: c.accuracy.as_ref().map(|a| a.drop_points),
        cosine: c
            .outputs
            .iter()
            .map(|o| o.cosine_mean)
            .fold(f64::INFINITY, f64::min),
        top1_agreement: c
            .outputs
            .iter()
            .filter_map(|o| o.top1_agreement)
            .reduce(f64::min),
    }
}

/// Prunes `doc` at `opts` in memory and compares the result with the reference.
fn evaluate(
    doc: &Document,
    opts: &PruneOptions,
    reference: &mut Reference,
    v: &ValidateOptions,
    progress: &dyn Progress,
) -> Result<(PruneReport, Comparison)> {
    let (edited, report) = prune_document(doc, opts)?;
    let runner = reference.load_candidate(&edited)?;
    let c = reference.compare(&runner, &v.gates, progress)?;
    Ok((report, c))
}

fn search(
    doc: &Document,
    opts: &PruneOptions,
    reference: &mut Reference,
    v: &Validation,
    s: &Search,
    progress: &dyn Progress,
) -> Result<SearchReport> {
    let channels = !opts.magnitude_requested();
    let hi0 = if channels {
        match opts.channels.as_ref().map(|c| c.amount) {
            Some(Amount::Ratio(r)) if r > 0.0 => r,
            _ => CHANNEL_SEARCH_MAX,
        }
    } else {
        opts.sparsity.unwrap_or(SEARCH_MAX)
    };
    let grid = |x: f64| ((x / s.step).round() * s.step).clamp(0.0, hi0);
    let mut steps = Vec::new();
    let mut try_at = |sp: f64, steps: &mut Vec<SearchStep>| -> Result<bool> {
        let n = steps.len() + 1;
        progress.stage(&format!(
            "search step {n}: {} {sp:.4}",
            if channels { "channels" } else { "sparsity" }
        ));
        let o = with_value(opts, sp);
        let (report, c) = evaluate(doc, &o, reference, &v.options, progress)?;
        steps.push(record(n, sp, &report, &c));
        Ok(c.passed)
    };
    let (mut lo, mut hi) = (0.0f64, hi0);
    if try_at(hi, &mut steps)? {
        lo = hi;
    } else {
        loop {
            let mid = grid((lo + hi) / 2.0);
            if mid <= lo + 1e-12 || mid >= hi - 1e-12 {
                break;
            }
            if try_at(mid, &mut steps)? {
                lo = mid;
            } else {
                hi = mid;
            }
        }
    }
    Ok(SearchReport {
        parameter: if channels { "channels" } else { "sparsity" },
        strategy: "bisection",
        step: s.step,
        upper_bound: hi0,
        steps,
        chosen: (lo > 0.0).then_some(lo),
    })
}

/// `pare prune` with validation: prune (or search), write to the staging area, validate the
/// staged model against the original on the data, and commit it only if the gates pass (or
/// `keep_failed`). A failed gate is not an error: the report says `passed: false`.
pub fn prune_validated(
    input: &Path,
    output: &Path,
    opts: &PruneOptions,
    write: &WriteOptions,
    v: &Validation,
    progress: &dyn Progress,
) -> Result<PruneReport> {
    let mut opts = opts.clone();
    if v.search.is_some() && opts.sparsity.is_none() && opts.magnitude_requested() {
        opts.sparsity = Some(SEARCH_MAX);
    }
    opts.validate()?;
    v.options.gates.check()?;
    if let Some(s) = &v.search {
        if v.options.gates.is_empty() {
            return Err(Error::Usage(
                "--search needs a gate to search within: --max-accuracy-drop, --min-cosine or --min-top1-agreement".into(),
            ));
        }
        if !opts.magnitude_requested()
            && opts
                .channels
                .as_ref()
                .is_some_and(|c| !matches!(c.amount, Amount::Ratio(_)))
        {
            return Err(Error::Usage(
                "--search varies the channel ratio; --target-macs/--target-params fix it".into(),
            ));
        }
        if matches!(opts.pattern, super::Pattern::NOfM { .. }) {
            return Err(Error::Usage(
                "--search varies the sparsity; an N:M pattern fixes it".into(),
            ));
        }
        if !(s.step > 0.0 && s.step < 0.5) {
            return Err(Error::Usage(format!(
                "--search-step {}: give a step in (0, 0.5)",
                s.step
            )));
        }
    }
    progress.stage("reading");
    let doc = Document::open(input)?;
    progress.stage("loading the original in tract");
    let mut reference = Reference::new(&doc, &v.options.data)?;

    let search_report = match &v.search {
        Some(s) => {
            let r = search(&doc, &opts, &mut reference, v, s, progress)?;
            match r.chosen {
                Some(sp) => opts = with_value(&opts, sp),
                None => {
                    // Nothing to write: report the steps (the report says why).
                    let (_, mut p) = prune_document(&doc, &with_value(&opts, 0.0))?;
                    p.search = Some(r);
                    return Ok(p);
                }
            }
            Some(r)
        }
        None => None,
    };
    progress.stage("pruning");
    let (edited, mut report) = prune_document(&doc, &opts)?;
    let staged = crate::convert::stage_checked(&doc, &edited, output, write, false, progress)?;
    let runner = reference.load_candidate(&staged.doc)?;
    let mut vr = validate::validate_with(
        &mut reference,
        &doc,
        &staged.doc,
        &runner,
        &v.options,
        progress,
    )?;
    vr.candidate.path = output.display().to_string();
    report.search = search_report;
    if vr.passed || v.keep_failed {
        report.write = Some(staged.commit()?);
    } else {
        drop(staged);
    }
    report.validation = Some(vr);
    Ok(report)
}
