//! The original model bound to the data: its outputs (cached within a budget), and the
//! comparison of a candidate with it, output by output, batch by batch, with latency and gates.

use super::{AccuracyReport, Comparison, GateResult, Gates, LatencyReport, OutputMetrics, Timing};
use crate::data::{input_decls, DataOptions, Dataset, InputDecl};
use crate::document::Document;
use crate::error::{Error, Result};
use crate::model::Format;
use crate::progress::Progress;
use crate::verify::agreement::{real_values, Accumulator};
use crate::verify::load_at;
use crate::verify::Runner;
use std::time::{Duration, Instant};
use tract_onnx::prelude::*;

/// Reference outputs are kept in memory up to this many bytes; beyond it the original model is
/// run again for every comparison.
pub(super) const CACHE_LIMIT: usize = 256 << 20;

/// The original model, loaded in tract and bound to the validation data.
pub struct Reference {
    pub(super) path: std::path::PathBuf,
    pub(super) decls: Vec<InputDecl>,
    pub(super) output_names: Vec<String>,
    pub dataset: Dataset,
    pub(super) runner: Runner,
    pub(super) input_dts: Vec<DatumType>,
    /// The original's outputs per batch, once computed (if they fit in [`CACHE_LIMIT`]).
    pub(super) cache: Option<Vec<TVec<Tensor>>>,
    /// Correct predictions of the original, once computed.
    pub(super) correct: Option<usize>,
    /// The data's settings both models are specialised to ([`Dataset::settings`]).
    pub(super) settings: Vec<Option<Tensor>>,
}

impl Reference {
    /// Loads `original` and binds `data` to its inputs.
    pub fn new(original: &Document, data: &DataOptions) -> Result<Reference> {
        let (decls, output_names) = input_decls(original)?;
        let mut dataset = Dataset::open(data, &decls, original.format() == Format::Onnx)?;
        let settings = dataset.settings(&decls)?;
        let runner = load_at(original, &dataset.shapes, &settings, "the original model")?;
        let input_dts = runner.input_datum_types().to_vec();
        for (i, dt) in input_dts.iter().enumerate() {
            if dt.is_quantized() && dataset.input_is_float(i) {
                dataset.mark_quantized(i);
            }
        }
        Ok(Reference {
            path: original.path().to_path_buf(),
            decls,
            output_names,
            dataset,
            runner,
            input_dts,
            cache: None,
            correct: None,
            settings,
        })
    }

    /// Rewrites tract needed to run the original (empty when it ran the file as it is).
    pub fn lowered(&self) -> Vec<String> {
        self.runner.lowered.describe()
    }

    /// Loads a candidate, refusing one whose interface differs from the original's.
    pub fn load_candidate(&self, candidate: &Document) -> Result<Runner> {
        let (decls, outputs) = input_decls(candidate)?;
        let differs = |what: String| -> Error {
            Error::Usage(format!(
                "{} and {} have different interfaces: {what}",
                self.path.display(),
                candidate.path().display()
            ))
        };
        if decls.len() != self.decls.len() || outputs.len() != self.output_names.len() {
            return Err(differs(format!(
                "{} inputs / {} outputs vs {} / {}",
                self.decls.len(),
                self.output_names.len(),
                decls.len(),
                outputs.len()
            )));
        }
        for (a, b) in self.decls.iter().zip(&decls) {
            if a.name != b.name || a.dtype != b.dtype || a.dims != b.dims {
                return Err(differs(format!(
                    "input {:?} ({} {}) vs {:?} ({} {})",
                    a.name,
                    a.dtype,
                    crate::model::shape_to_string(a.dims.as_deref()),
                    b.name,
                    b.dtype,
                    crate::model::shape_to_string(b.dims.as_deref())
                )));
            }
        }
        let runner = load_at(
            candidate,
            &self.dataset.shapes,
            &self.settings,
            "the candidate model",
        )?;
        if runner.inputs != self.runner.inputs {
            return Err(differs(format!(
                "tract sees inputs {:?} vs {:?}",
                self.runner.inputs, runner.inputs
            )));
        }
        Ok(runner)
    }

    /// Runs `candidate` over the data and compares it with the original.
    pub fn compare(
        &mut self,
        candidate: &Runner,
        gates: &Gates,
        progress: &dyn Progress,
    ) -> Result<Comparison> {
        let labels = self.dataset.labels.clone();
        let mut accs: Vec<Accumulator> = Vec::new();
        let mut correct_a = 0usize;
        let mut correct_b = 0usize;
        let mut label_output: Option<usize> = None;
        let cache = self.cache.take();
        let fill_cache = cache.is_none();
        let mut new_cache: Vec<TVec<Tensor>> = Vec::new();
        let mut cached_bytes = 0usize;
        // A streaming model's samples are one stream, from its initial state, for both models.
        self.runner.reset_state();
        candidate.reset_state();
        let mut batches = self.dataset.batches(&self.input_dts)?;
        let total = self.dataset.samples as u64;
        progress.begin("validating", total);
        let mut bi = 0usize;
        while let Some(batch) = batches.next_batch()? {
            let out_a = match &cache {
                Some(c) => c[bi].clone(),
                None => self
                    .runner
                    .run(batch.tensors.clone())
                    .map_err(|e| Error::unsupported(&self.path, format!("original model: {e}")))?,
            };
            let out_b = candidate.run(batch.tensors).map_err(|e| {
                Error::Verification(format!("the candidate model failed to run: {e}"))
            })?;
            if out_a.len() != out_b.len() {
                return Err(Error::Verification(format!(
                    "the candidate gives {} outputs, the original {}",
                    out_b.len(),
                    out_a.len()
                )));
            }
            if accs.is_empty() {
                for (i, t) in out_a.iter().enumerate() {
                    accs.push(Accumulator::new(i, t.shape(), self.dataset.batch));
                }
                label_output = accs.iter().position(|a| a.classifier);
            }
            for (i, (a, b)) in out_a.iter().zip(&out_b).enumerate() {
                let (va, vb) = (real_values(a)?, real_values(b)?);
                if va.len() != vb.len() {
                    return Err(Error::Verification(format!(
                        "output {i}: the candidate's shape {:?} differs from the original's {:?}",
                        b.shape(),
                        a.shape()
                    )));
                }
                let (ka, kb) = accs[i].add(&va, &vb, batch.valid);
                if Some(i) == label_output {
                    if let Some(l) = &labels {
                        for (r, (&pa, &pb)) in ka.iter().zip(&kb).enumerate() {
                            let y = l[batch.first + r];
                            let classes = accs[i].row_len as i64;
                            if y >= classes {
                                return Err(Error::Usage(format!(
                                    "label {} of sample {} is out of range: output {:?} has {classes} classes",
                                    y,
                                    batch.first + r,
                                    self.output_names.get(i).cloned().unwrap_or_default()
                                )));
                            }
                            correct_a += (pa as i64 == y) as usize;
                            correct_b += (pb as i64 == y) as usize;
                        }
                    }
                }
            }
            if fill_cache {
                cached_bytes += out_a
                    .iter()
                    .map(|t| t.len() * t.datum_type().size_of())
                    .sum::<usize>();
                if cached_bytes <= CACHE_LIMIT {
                    new_cache.push(out_a);
                }
            }
            progress.advance(batch.valid as u64);
            bi += 1;
        }
        progress.finish_bar();
        self.cache = match cache {
            Some(c) => Some(c),
            None if cached_bytes <= CACHE_LIMIT => Some(new_cache),
            None => None,
        };
        let correct_a = *self.correct.get_or_insert(correct_a);
        let outputs: Vec<OutputMetrics> = accs
            .into_iter()
            .map(|a| {
                let name = self.output_names.get(a.index).cloned().unwrap_or_default();
                OutputMetrics::new(name, a.finish())
            })
            .collect();
        if labels.is_some() && label_output.is_none() {
            return Err(Error::Usage(
                "labels were given but no output is classifier-like (one score per class per sample)".into(),
            ));
        }
        let accuracy = match (&labels, label_output) {
            (Some(l), Some(i)) => {
                let n = l.len().max(1) as f64;
                let (a, b) = (100.0 * correct_a as f64 / n, 100.0 * correct_b as f64 / n);
                Some(AccuracyReport {
                    output: outputs[i].name.clone(),
                    samples: l.len(),
                    original: a,
                    candidate: b,
                    drop_points: a - b,
                })
            }
            _ => None,
        };
        let gates = check_gates(gates, &outputs, accuracy.as_ref())?;
        let passed = gates.iter().all(|g| g.passed);
        Ok(Comparison {
            outputs,
            accuracy,
            gates,
            passed,
        })
    }

    /// Times the original and `candidate` on the first batch, interleaved.
    pub fn latency(
        &self,
        candidate: &Runner,
        warmup: usize,
        runs: usize,
    ) -> Result<Option<LatencyReport>> {
        if runs == 0 {
            return Ok(None);
        }
        let Some(batch) = self.dataset.batches(&self.input_dts)?.next_batch()? else {
            return Ok(None);
        };
        let run = |r: &Runner, who: &str| -> Result<Duration> {
            crate::cancel::check()?;
            let t = Instant::now();
            r.run(batch.tensors.clone())
                .map_err(|e| Error::Verification(format!("{who} model: {e}")))?;
            Ok(t.elapsed())
        };
        for _ in 0..warmup {
            run(&self.runner, "original")?;
            run(candidate, "candidate")?;
        }
        let (mut ta, mut tb) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
        for i in 0..runs {
            // Alternate which model goes first so neither always runs on a warmer cache.
            if i % 2 == 0 {
                ta.push(run(&self.runner, "original")?);
                tb.push(run(candidate, "candidate")?);
            } else {
                tb.push(run(candidate, "candidate")?);
                ta.push(run(&self.runner, "original")?);
            }
        }
        let (a, b) = (timing(&mut ta), timing(&mut tb));
        Ok(Some(LatencyReport {
            batch_size: self.dataset.batch,
            warmup,
            runs,
            speedup: if b.median_ms > 0.0 {
                a.median_ms / b.median_ms
            } else {
                1.0
            },
            original: a,
            candidate: b,
        }))
    }
}

pub(super) fn timing(v: &mut [Duration]) -> Timing {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let at = |q: f64| ms(v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]);
    Timing {
        median_ms: at(0.5),
        p90_ms: at(0.9),
    }
}

pub(super) fn check_gates(
    gates: &Gates,
    outputs: &[OutputMetrics],
    accuracy: Option<&AccuracyReport>,
) -> Result<Vec<GateResult>> {
    let mut out = Vec::new();
    if let Some(p) = gates.max_accuracy_drop {
        let acc = accuracy.ok_or_else(|| {
            Error::Usage(
                "--max-accuracy-drop needs labels (--labels, or `labels` in the .npz)".into(),
            )
        })?;
        out.push(GateResult {
            gate: "max_accuracy_drop",
            limit: p,
            value: acc.drop_points,
            // A hair of tolerance: accuracies are ratios of counts printed with decimals.
            passed: acc.drop_points <= p + 1e-9,
        });
    }
    if let Some(c) = gates.min_cosine {
        let worst = outputs
            .iter()
            .map(|o| o.cosine_mean)
            .fold(f64::INFINITY, f64::min);
        out.push(GateResult {
            gate: "min_cosine",
            limit: c,
            value: worst,
            passed: worst >= c,
        });
    }
    if let Some(a) = gates.min_top1_agreement {
        let worst = outputs
            .iter()
            .filter_map(|o| o.top1_agreement)
            .fold(f64::INFINITY, f64::min);
        if worst.is_infinite() {
            return Err(Error::Usage(
                "--min-top1-agreement: no output is classifier-like (one score per class per sample)".into(),
            ));
        }
        out.push(GateResult {
            gate: "min_top1_agreement",
            limit: a,
            value: worst,
            passed: worst >= a,
        });
    }
    Ok(out)
}
