//! Sequential calibration that runs only what changed: the main graph is cut into stages
//! ([`super::stages`]) and each stage runs once per side (the model as pruned so far, and the
//! original), fed from the activations the stage before it left ([`super::store`]). A
//! calibration then costs about two forward passes of the model, whatever its depth.
//!
//! Each stage is a model of its own ([`Document::segment`]) loaded in tract, at the shapes of
//! the activations it is fed; small integer activations (computed shapes) are fixed as
//! constants of the stage, and checked on every batch.

use super::capture::{self, Activations, CalibSummary, Stats, Want};
use super::layer::Linear;
use super::stages::{self, Stage};
use super::store::{Budget, Held, Spill};
use super::CalibOptions;
use crate::data::DataSummary;
use crate::document::Document;
use crate::error::{Error, Result};
use crate::model::{DType, Graph, Segment, TensorId};
use crate::progress::Progress;
use std::sync::Arc;
use tract_onnx::prelude::*;

/// One model a stage runs in: a document and its main graph.
#[derive(Clone, Copy)]
pub(super) struct Side<'a> {
    pub doc: &'a Document,
    pub g: &'a Graph,
}

/// Ops that reach outside their node (subgraphs, variables): a graph with one is calibrated
/// by whole-model passes.
const UNCUT: &[&str] = &[
    "If",
    "Loop",
    "Scan",
    "SequenceMap",
    "IF",
    "WHILE",
    "CALL",
    "CALL_ONCE",
    "VAR_HANDLE",
    "READ_VARIABLE",
    "ASSIGN_VARIABLE",
];

/// Integer activations up to this many elements are fixed as constants of the stages that
/// read them (ONNX): shape computations must stay constant for tract.
const BAKED_ELEMENTS: usize = 64;

/// Why `g` cannot be run stage by stage, if it cannot.
pub(super) fn uncut_reason(g: &Graph) -> Option<String> {
    g.nodes.iter().find(|n| UNCUT.contains(&n.op.as_str())).map(|n| {
        format!(
            "node {:?} ({}) holds a subgraph or a variable, so every layer depth runs the whole model",
            n.name, n.op
        )
    })
}

/// The same nodes reading and writing the same tensors: a structural edit of `a` is `b`.
pub(super) fn same_topology(a: &Graph, b: &Graph) -> bool {
    a.nodes.len() == b.nodes.len()
        && a.nodes
            .iter()
            .zip(&b.nodes)
            .all(|(x, y)| x.inputs == y.inputs && x.outputs == y.outputs)
}

/// The stage-by-stage runner for a sequential calibration of `layers` (nodes of `side`'s
/// graph) in `waves` depths, or `None` where whole-model passes serve: `--one-pass`, a single
/// depth, or a graph that cannot be cut (the reason goes to `warnings`). A model tract cannot
/// load is left to the whole-model path, whose error names the calibration copy.
pub(super) fn open(
    side: Side,
    layers: &[usize],
    waves: usize,
    opts: &CalibOptions,
    warnings: &mut Vec<String>,
    progress: &dyn Progress,
) -> Result<Option<Sequential>> {
    if opts.one_pass || waves < 2 {
        return Ok(None);
    }
    if let Some(reason) = uncut_reason(side.g) {
        warnings.push(format!("sequential calibration: {reason}"));
        return Ok(None);
    }
    match Sequential::open(side, layers, opts, opts.memory, progress) {
        Ok(s) => Ok(Some(s)),
        Err(Error::Unsupported { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The result of a stage-by-stage `run`, or `None` (and no more stages) when tract could not
/// run a stage: the caller then runs the whole model for this depth and the ones after it,
/// and `warnings` says why.
pub(super) fn or_whole<T>(
    run: Option<Result<T>>,
    staged: &mut Option<Sequential>,
    warnings: &mut Vec<String>,
) -> Result<Option<T>> {
    match run {
        None => Ok(None),
        Some(Ok(t)) => Ok(Some(t)),
        Some(Err(Error::Unsupported { msg, .. })) => {
            *staged = None;
            warnings.push(format!(
                "sequential calibration: a stage could not run on its own ({msg}); the remaining layer depths run the whole model"
            ));
            Ok(None)
        }
        Some(Err(e)) => Err(e),
    }
}

fn dtype_of(dt: DatumType) -> DType {
    match dt.unquantized() {
        DatumType::F32 => DType::F32,
        DatumType::F16 => DType::F16,
        DatumType::F64 => DType::F64,
        DatumType::I8 => DType::I8,
        DatumType::U8 => DType::U8,
        DatumType::I16 => DType::I16,
        DatumType::U16 => DType::U16,
        DatumType::I32 => DType::I32,
        DatumType::U32 => DType::U32,
        DatumType::I64 => DType::I64,
        DatumType::U64 => DType::U64,
        DatumType::Bool => DType::Bool,
        _ => DType::Other,
    }
}

/// A stage loaded in tract for one side.
struct Loaded {
    runner: crate::verify::Runner,
    /// Position in the activations before the stage of each runner input.
    feeds: Vec<usize>,
    /// Fixed inputs: position before the stage and the value every batch must have.
    baked: Vec<(usize, Tensor)>,
}

/// Where one activation live after a stage comes from.
enum Route {
    /// Held before the stage, at this position.
    Held(usize),
    /// Made by the stage: its runner's output at this position.
    Made(usize),
}

/// How a stage maps the activations before it to the ones after it.
struct Routes {
    /// What the stage's runner must give, in order.
    produced: Vec<TensorId>,
    /// Per activation live after the stage (in `Stage::live` order).
    live: Vec<Route>,
    /// Per activation held before the stage: still live after it (so a feed copies it).
    kept: Vec<bool>,
}

/// Where the activations stand: the tensors held and, per batch, their values on each side.
pub(super) struct Sequential {
    path: std::path::PathBuf,
    stages: Vec<Stage>,
    /// The next stage to run.
    next: usize,
    /// The tensors held, in order (graph inputs before stage 0).
    live: Vec<TensorId>,
    cur: Vec<Arc<Held>>,
    /// The original model's activations; `None` while they are the current side's.
    reference: Option<Vec<Arc<Held>>>,
    valid: Vec<usize>,
    budget: Arc<Budget>,
    data: DataSummary,
    samples: usize,
    stages_run: usize,
    /// When the stage runs began (after the data was read).
    opened: std::time::Instant,
}

impl Sequential {
    /// Reads the calibration data for `side` (the original model) and cuts its graph for the
    /// layer nodes `layers`. `memory` bounds the activations held in memory.
    pub fn open(
        side: Side,
        layers: &[usize],
        opts: &CalibOptions,
        memory: u64,
        progress: &dyn Progress,
    ) -> Result<Sequential> {
        let doc = side.doc;
        let mut dataset = capture::open_dataset(doc, opts)?;
        progress.stage("calibrating: loading the model in tract");
        let runner = crate::verify::load_at(doc, &dataset.shapes, &[], "the model")?;
        let dts = runner.input_datum_types().to_vec();
        drop(runner);
        capture::mark_quantized(&mut dataset, &dts);
        let budget = Budget::new(memory);
        let mut spill = None;
        let mut cur = Vec::new();
        let mut valid = Vec::new();
        let mut batches = dataset.batches(&dts)?;
        while let Some(b) = batches.next_batch()? {
            valid.push(b.valid);
            cur.push(Arc::new(Held::keep(
                b.tensors.into_vec(),
                &budget,
                &mut spill,
            )?));
        }
        drop(batches);
        Ok(Sequential {
            path: doc.path().to_path_buf(),
            stages: stages::split(side.g, layers),
            next: 0,
            live: side.g.inputs.clone(),
            cur,
            reference: None,
            valid,
            budget,
            data: dataset.summary.clone(),
            samples: dataset.samples,
            stages_run: 0,
            opened: std::time::Instant::now(),
        })
    }

    /// Runs the next stage (the one that completes the inputs of the next layer depth) on the
    /// current side `cur` and, when `reference` is a different model, on it too; returns the
    /// statistics `want` names (cross statistics with its reference layers, the same layers
    /// in `reference`, when given).
    pub fn wave(
        &mut self,
        cur: Side,
        reference: Option<Side>,
        want: Want,
        label: &str,
        progress: &dyn Progress,
    ) -> Result<(Vec<Stats>, CalibSummary)> {
        let wave = self.next;
        if wave + 1 >= self.stages.len() {
            return Err(Error::unsupported(
                &self.path,
                format!("calibration: no layer depth after the {wave} run"),
            ));
        }
        let stage = self.stages[wave].clone();
        let routes = self.routes(&stage);
        // The sides part when the reference is another model than the current one.
        let apart = reference.filter(|r| !std::ptr::eq(r.doc, cur.doc));
        if apart.is_some() && self.reference.is_none() {
            self.reference = Some(self.cur.clone());
        }
        if apart.is_none() {
            self.reference = None;
        }
        let (layers, ref_layers) = (want.layers, want.reference);
        let mut stats = capture::empty(want);
        let mut loaded_cur: Option<Loaded> = None;
        let mut loaded_ref: Option<Loaded> = None;
        let mut spill_cur: Option<Spill> = None;
        let mut spill_ref: Option<Spill> = None;
        let mut old_cur: Vec<Option<Arc<Held>>> = std::mem::take(&mut self.cur)
            .into_iter()
            .map(Some)
            .collect();
        let mut old_ref: Option<Vec<Option<Arc<Held>>>> = self
            .reference
            .take()
            .map(|r| r.into_iter().map(Some).collect());
        let mut new_cur = Vec::with_capacity(old_cur.len());
        let mut new_ref = Vec::with_capacity(old_cur.len());
        // The whole calibration's remaining time, from the depths done so far (solves included).
        let label = match wave {
            0 => label.to_string(),
            w => {
                let per = self.opened.elapsed().as_secs_f64() / w as f64;
                let left = per * (self.stages.len() - 1 - w) as f64;
                format!("{label}, about {left:.0} s left in all")
            }
        };
        progress.begin(&label, self.samples as u64);
        for b in 0..old_cur.len() {
            crate::cancel::check()?;
            let held = old_cur[b].take().expect("each batch once");
            let out = self.run(&stage, &routes, cur, &mut loaded_cur, Held::take(held)?)?;
            let rout = match (apart, old_ref.as_mut()) {
                (Some(r), Some(old)) => {
                    let held = old[b].take().expect("each batch once");
                    Some(self.run(&stage, &routes, r, &mut loaded_ref, Held::take(held)?)?)
                }
                _ => None,
            };
            let values = self.layer_inputs(&stage, cur.g, layers, &out)?;
            let rvalues = match (ref_layers, &rout, reference) {
                (Some(rl), Some(ro), Some(r)) => Some(self.layer_inputs(&stage, r.g, rl, ro)?),
                _ => None,
            };
            // Shared sides: the reference's inputs are the current ones.
            let rpair = ref_layers.map(|rl| (rl, rvalues.as_ref().unwrap_or(&values)));
            capture::fold(
                &self.path,
                cur.g,
                layers,
                &values,
                rpair,
                self.valid[b],
                &mut stats,
            )?;
            drop((values, rvalues));
            new_cur.push(Arc::new(Held::keep(out, &self.budget, &mut spill_cur)?));
            if let Some(ro) = rout {
                new_ref.push(Arc::new(Held::keep(ro, &self.budget, &mut spill_ref)?));
            }
            progress.advance(self.valid[b] as u64);
        }
        progress.finish_bar();
        self.stages_run += 1 + usize::from(loaded_ref.is_some());
        self.cur = new_cur;
        self.reference = (!new_ref.is_empty()).then_some(new_ref);
        self.live = stage.live.clone();
        self.next += 1;
        let mut summary = capture::finish(&mut stats, &self.data);
        summary.staged = Some(self.staged());
        Ok((stats, summary))
    }

    /// What the stage-by-stage runs held, for the report.
    fn staged(&self) -> capture::Staged {
        capture::Staged {
            stages: self.stages.len(),
            segments_run: self.stages_run,
            memory_limit: self.budget.limit,
            held_peak: self.budget.peak(),
            spilled: self.budget.spilled(),
        }
    }

    /// Where each activation live after `stage` comes from: held before it, or made by it.
    fn routes(&self, stage: &Stage) -> Routes {
        let mut produced = Vec::new();
        let live = stage
            .live
            .iter()
            .map(|t| match self.live.iter().position(|x| x == t) {
                Some(p) => Route::Held(p),
                None => {
                    produced.push(*t);
                    Route::Made(produced.len() - 1)
                }
            })
            .collect::<Vec<_>>();
        let mut kept = vec![false; self.live.len()];
        for r in &live {
            if let Route::Held(p) = r {
                kept[*p] = true;
            }
        }
        Routes {
            produced,
            live,
            kept,
        }
    }

    /// Runs `stage` on `side` for one batch (`before`: the held activations, in `self.live`
    /// order) and returns the activations live after it, in `stage.live` order.
    fn run(
        &self,
        stage: &Stage,
        routes: &Routes,
        side: Side,
        loaded: &mut Option<Loaded>,
        before: Vec<Tensor>,
    ) -> Result<Vec<Tensor>> {
        let mut before: Vec<Option<Tensor>> = before.into_iter().map(Some).collect();
        let outs = if routes.produced.is_empty() {
            TVec::new()
        } else {
            if loaded.is_none() {
                *loaded = Some(self.load(stage, side, &routes.produced, &before)?);
            }
            let l = loaded.as_ref().expect("loaded above");
            for (pos, value) in &l.baked {
                if before[*pos].as_ref() != Some(value) {
                    return Err(Error::unsupported(
                        &self.path,
                        format!(
                            "calibration: tensor {:?} was fixed to its first value ({value:?}) for tract and a later batch gives {:?}",
                            side.g.tensor(self.live[*pos]).name,
                            before[*pos].as_ref()
                        ),
                    ));
                }
            }
            // Fed by value: moved unless still live after the stage.
            let inputs: TVec<Tensor> = l
                .feeds
                .iter()
                .map(|&p| match routes.kept[p] {
                    true => before[p].clone(),
                    false => before[p].take(),
                })
                .collect::<Option<_>>()
                .expect("each held activation is fed once");
            l.runner.run(inputs).map_err(|e| {
                Error::unsupported(
                    &self.path,
                    format!("calibration run (stage {}): {e}", self.next),
                )
            })?
        };
        let mut outs: Vec<Option<Tensor>> = outs.into_iter().map(Some).collect();
        routes
            .live
            .iter()
            .zip(&stage.live)
            .map(|(route, t)| {
                let v = match *route {
                    Route::Held(p) => before[p].take(),
                    Route::Made(i) => outs.get_mut(i).and_then(Option::take),
                };
                v.ok_or_else(|| {
                    Error::unsupported(
                        &self.path,
                        format!(
                            "calibration: stage {} gave no {:?}",
                            self.next,
                            side.g.tensor(*t).name
                        ),
                    )
                })
            })
            .collect()
    }

    /// Loads `stage` of `side` in tract, at the shapes of the first batch `before`.
    fn load(
        &self,
        stage: &Stage,
        side: Side,
        produced: &[TensorId],
        before: &[Option<Tensor>],
    ) -> Result<Loaded> {
        let onnx = side.doc.format() == crate::model::Format::Onnx;
        let mut seg = Segment {
            nodes: stage.nodes.clone(),
            outputs: produced.to_vec(),
            ..Default::default()
        };
        let mut feeds = Vec::new();
        let mut baked = Vec::new();
        let mut shapes = Vec::new();
        for t in &stage.reads {
            let p = self.live.iter().position(|x| x == t).ok_or_else(|| {
                Error::unsupported(
                    &self.path,
                    format!(
                        "calibration: stage {} reads {:?}, which no stage before it keeps",
                        self.next,
                        side.g.tensor(*t).name
                    ),
                )
            })?;
            let v = before[p].as_ref().expect("nothing fed yet");
            let dt = dtype_of(v.datum_type());
            let integer = matches!(dt, DType::I64 | DType::I32);
            if onnx && integer && v.len() <= BAKED_ELEMENTS {
                seg.constants.push((
                    *t,
                    dt,
                    v.shape().to_vec(),
                    bytes::Bytes::copy_from_slice(v.as_bytes()),
                ));
                baked.push((p, v.clone()));
            } else {
                seg.inputs.push((*t, dt, v.shape().to_vec()));
                shapes.push(v.shape().to_vec());
                feeds.push(p);
            }
        }
        let doc = side.doc.segment(side.g, &seg)?;
        let runner = crate::verify::load_at(
            &doc,
            &shapes,
            &[],
            &format!(
                "stage {} of {} of the calibration copy",
                self.next + 1,
                self.stages.len()
            ),
        )?;
        Ok(Loaded {
            runner,
            feeds,
            baked,
        })
    }

    /// The real values of `layers`' inputs among `out` (activations in the stage's order).
    fn layer_inputs<'o>(
        &self,
        stage: &Stage,
        g: &Graph,
        layers: &[Linear],
        out: &'o [Tensor],
    ) -> Result<Activations<'o>> {
        let mut values = Activations::new();
        for l in layers {
            if values.contains_key(&l.input) {
                continue;
            }
            let p = stage
                .live
                .iter()
                .position(|&t| t == l.input)
                .ok_or_else(|| {
                    Error::unsupported(
                        &self.path,
                        format!(
                            "calibration: the input of {} is not live after stage {}",
                            l.name, self.next
                        ),
                    )
                })?;
            values.insert(
                l.input,
                capture::activation(&self.path, g, l.input, &out[p], &l.name)?,
            );
        }
        Ok(values)
    }
}
