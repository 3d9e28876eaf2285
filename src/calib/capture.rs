//! Running the calibration data through the model in tract and accumulating, per layer, the
//! second moments of its inputs.
//!
//! Every layer input is made an output of a copy of the model (an ONNX graph output, a TFLite
//! subgraph output), so one tract run per batch yields all of them. Each batch's activations
//! are folded into the layers' statistics and dropped: memory holds one batch's activations and
//! the statistics, never the calibration set's activations.

use super::layer::{patches, Kind, Layout, Linear};
use super::CalibOptions;
use crate::data::{DataSummary, Dataset};
use crate::document::Document;
use crate::error::{Error, Result};
use crate::model::{DType, Graph, Quant};
use crate::progress::Progress;
use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular as tri;
use faer::{Accum, Mat, MatRef, Par};
use rayon::prelude::*;
use serde::Serialize;
use tract_onnx::prelude::*;

/// What a pass accumulates per layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extent {
    /// The whole Gram matrix, and the cross matrix with a reference (SparseGPT, the refit).
    Full,
    /// What Wanda reads: the Gram matrix's diagonal, the feature sums and the row count, and
    /// with a reference its feature sums; `O(k)` per group instead of `O(k²)`.
    Diagonal,
}

/// The statistics a pass collects: of `layers`, with cross products against `reference` (the
/// same layers in the original model) when given, to `extent`.
#[derive(Clone, Copy)]
pub struct Want<'a> {
    pub layers: &'a [Linear],
    pub reference: Option<&'a [Linear]>,
    pub extent: Extent,
}

/// One layer's input statistics: per group, `Σ x̃ x̃ᵀ` over every calibration row (an im2col
/// patch, a dense input row), with `x̃ = [x, 1]`: the Gram matrix `XᵀX` in the top-left
/// `k × k` block, the feature sums in the last row and column, the row count in the corner.
/// With [`Extent::Diagonal`] each group holds `(k + 1) × 2`: `Σ x̃_j²` and `Σ x̃_j`.
pub struct Stats {
    pub gram: Vec<Mat<f64>>,
    /// With a reference model: per group, `Σ x̃ ỹᵀ` of this layer's rows `x̃` with the
    /// reference layer's rows `ỹ` on the same samples ((k + 1) × (k_ref + 1)); with
    /// [`Extent::Diagonal`], `Σ ỹ_j` ((k_ref + 1) × 1).
    pub cross: Option<Vec<Mat<f64>>>,
    pub rows: u64,
    pub extent: Extent,
}

impl Stats {
    pub fn k(&self) -> usize {
        self.gram[0].nrows() - 1
    }

    /// Group `gi`'s `Σ x_j²` per input feature (the Gram matrix's diagonal).
    pub fn diagonal(&self, gi: usize) -> Vec<f64> {
        let g = &self.gram[gi];
        match self.extent {
            Extent::Full => (0..self.k()).map(|j| g[(j, j)]).collect(),
            Extent::Diagonal => (0..self.k()).map(|j| g[(j, 0)]).collect(),
        }
    }

    /// Group `gi`'s mean input per feature, and with a reference the reference layer's
    /// (`None`: no rows).
    pub fn means(&self, gi: usize) -> Option<(Vec<f64>, Option<Vec<f64>>)> {
        let (k, g) = (self.k(), &self.gram[gi]);
        // The row count: the corner of the full matrix, the last sum of the diagonal one.
        let n = match self.extent {
            Extent::Full => g[(k, k)],
            Extent::Diagonal => g[(k, 1)],
        };
        if n <= 0.0 {
            return None;
        }
        let cur = match self.extent {
            Extent::Full => (0..k).map(|j| g[(k, j)] / n).collect(),
            Extent::Diagonal => (0..k).map(|j| g[(j, 1)] / n).collect(),
        };
        let reference = self.cross.as_ref().map(|c| {
            let c = &c[gi];
            match self.extent {
                Extent::Full => (0..c.ncols() - 1).map(|j| c[(k, j)] / n).collect(),
                Extent::Diagonal => (0..c.nrows() - 1).map(|j| c[(j, 0)] / n).collect(),
            }
        });
        Some((cur, reference))
    }
}

/// What the calibration pass did, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct CalibSummary {
    pub data: DataSummary,
    /// Layers whose inputs were collected.
    pub layers: usize,
    /// Calibration rows (patches or dense rows) seen by the widest layer.
    pub max_rows: u64,
    /// Bytes of statistics held at once (the Gram and cross matrices of one pass).
    pub stats_bytes: u64,
    /// Passes over the calibration data.
    pub passes: usize,
    /// Sequential calibration run stage by stage from held activations (absent: every pass
    /// ran the whole model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub staged: Option<Staged>,
}

/// What a stage-by-stage sequential calibration ran and held.
#[derive(Debug, Clone, Serialize)]
pub struct Staged {
    /// Stages the graph was cut into (one more than its layer depths).
    pub stages: usize,
    /// Stage models run over the calibration data (per stage: the model as pruned so far,
    /// and the original where they differ).
    pub segments_run: usize,
    /// `--calib-memory`: bytes of activations held in memory at most.
    pub memory_limit: u64,
    /// Most bytes of activations held in memory at once.
    pub held_peak: u64,
    /// Bytes of activations written to temporary files beyond the limit.
    pub spilled: u64,
}

impl CalibSummary {
    /// The summary of two passes over the same data: layers added, the largest row count and
    /// the largest statistics held at once.
    pub fn merge(mut self, other: CalibSummary) -> CalibSummary {
        self.layers += other.layers;
        self.max_rows = self.max_rows.max(other.max_rows);
        self.stats_bytes = self.stats_bytes.max(other.stats_bytes);
        self.passes += other.passes;
        self.staged = other.staged.or(self.staged);
        self
    }
}

/// No single layer's statistics may exceed this (a 11585-wide dense layer, in f64).
pub const MAX_LAYER_STATS_BYTES: u64 = 1 << 30;
/// Nor all layers' together.
pub const MAX_TOTAL_STATS_BYTES: u64 = 8 << 30;

/// Bytes the statistics of `lin` take.
pub fn stats_bytes(lin: &Linear) -> u64 {
    let k = lin.k as u64 + 1;
    k * k * 8 * lin.groups as u64
}

/// A copy of `doc` whose outputs are `taps` (tensor ids of the main graph), and only those:
/// tract then computes no more of the graph than the taps need.
fn tapped(doc: &Document, g: &Graph, taps: &[usize]) -> Document {
    if taps.is_empty() {
        // Every layer reads a model input: run the model as it is (a graph needs an output).
        return doc.clone();
    }
    match doc {
        Document::Onnx(d) => {
            let mut d = d.clone();
            if let Some(graph) = d.model.graph.as_mut() {
                graph.output = taps
                    .iter()
                    .map(|&t| crate::onnx_pb::ValueInfoProto {
                        name: Some(g.tensor(t).name.clone()),
                        ..Default::default()
                    })
                    .collect();
            }
            d.edited = true;
            Document::Onnx(d)
        }
        Document::Tflite(d) => {
            let mut d = d.clone();
            if let Some(sg) = d.model.subgraphs.as_mut().and_then(|s| s.first_mut()) {
                sg.outputs = Some(taps.iter().map(|&t| t as i32).collect());
            }
            d.edited = true;
            Document::Tflite(d)
        }
    }
}

/// Real values of an activation: float as it is, 8-bit integers through their quantization.
fn real_values(t: &Tensor, quant: Option<&Quant>) -> TractResult<Vec<f32>> {
    let (scale, zp) = quant
        .and_then(|q| Some((*q.scale.first()?, *q.zero_point.first().unwrap_or(&0))))
        .unwrap_or((1.0, 0));
    Ok(match t.datum_type().unquantized() {
        DatumType::F32 => t.to_plain_array_view::<f32>()?.iter().copied().collect(),
        DatumType::I8 => t
            .to_plain_array_view::<i8>()?
            .iter()
            .map(|&q| (q as i64 - zp) as f32 * scale)
            .collect(),
        DatumType::U8 => t
            .to_plain_array_view::<u8>()?
            .iter()
            .map(|&q| (q as i64 - zp) as f32 * scale)
            .collect(),
        _ => t
            .cast_to::<f32>()?
            .to_plain_array_view::<f32>()?
            .iter()
            .copied()
            .collect(),
    })
}

/// Rows (im2col patches or dense rows, from as many samples as fit) gathered per product:
/// bounds the f32 scratch at about 32 MiB per layer group in flight.
const SCRATCH_ELEMENTS: usize = 8 << 20;

/// Rows summed in f32 by one product before the sum goes into the f64 statistics: keeps the
/// f32 rounding of each partial sum at a few thousand terms, however large the data.
const ROWS_PER_PRODUCT: usize = 4096;

/// One sample's input to a layer, seen as rows of features (im2col patches, dense rows).
struct Sample<'a> {
    lin: &'a Linear,
    x: &'a [f32],
    /// (channels, height, width, geometry) of a convolution's input.
    conv: Option<(usize, usize, usize, super::layer::Geometry)>,
    positions: usize,
}

impl<'a> Sample<'a> {
    /// `x` is the sample's input, `dims` its shape without the batch axis.
    fn new(lin: &'a Linear, x: &'a [f32], dims: &[usize]) -> std::result::Result<Self, String> {
        let k = lin.k;
        match &lin.kind {
            Kind::Dense => {
                if x.len() % k != 0 {
                    return Err(format!(
                        "the input has {} values per sample, not a multiple of the {k} input features",
                        x.len()
                    ));
                }
                Ok(Sample {
                    lin,
                    x,
                    conv: None,
                    positions: x.len() / k,
                })
            }
            Kind::Conv(conv) => {
                if dims.len() != 3 {
                    return Err(format!(
                        "the input has rank {} per sample, not 3",
                        dims.len()
                    ));
                }
                let (c, h, w) = match conv.layout {
                    Layout::Nchw => (dims[0], dims[1], dims[2]),
                    Layout::Nhwc => (dims[2], dims[0], dims[1]),
                };
                if c != conv.cin * lin.groups {
                    return Err(format!(
                        "the input has {c} channels, the kernel expects {}",
                        conv.cin * lin.groups
                    ));
                }
                let geo = conv
                    .geometry(h, w)
                    .ok_or("the kernel is larger than the padded input")?;
                let positions = geo.out_h * geo.out_w;
                Ok(Sample {
                    lin,
                    x,
                    conv: Some((c, h, w, geo)),
                    positions,
                })
            }
        }
    }

    /// Fills `buf` (rows of `k + 1`: the features, then 1) with the rows of group `gi` at
    /// positions `start ..` (as many as `buf` holds).
    fn fill(&self, gi: usize, start: usize, buf: &mut [f32]) {
        let k = self.lin.k;
        match (&self.lin.kind, &self.conv) {
            (Kind::Conv(conv), Some((c, h, w, geo))) => {
                patches(conv, self.x, *c, *h, *w, geo, gi, start, buf)
            }
            _ => {
                for (r, dst) in buf.chunks_exact_mut(k + 1).enumerate() {
                    let src = &self.x[(start + r) * k..(start + r + 1) * k];
                    dst[..k].copy_from_slice(src);
                    dst[k] = 1.0;
                }
            }
        }
    }
}

/// Folds the samples `cur` of one layer into `stats`: their rows into the Gram matrices and,
/// with `reference` (the same layer in the original model, on the same samples), the products
/// of `cur`'s rows with the reference's into the cross matrices. Rows of many samples go into
/// one f32 product (faer, on all cores), whose result is added into the f64 sums.
fn accumulate(
    cur: &[Sample],
    reference: Option<&[Sample]>,
    stats: &mut Stats,
) -> std::result::Result<(), String> {
    let Some(first) = cur.first() else {
        return Ok(());
    };
    let width = first.lin.k + 1;
    let rwidth = reference.and_then(|r| r.first()).map_or(0, |r| r.lin.k + 1);
    if let Some(r) = reference {
        for (a, b) in cur.iter().zip(r) {
            if a.positions != b.positions {
                return Err(format!(
                    "{} rows per sample here, {} in the original model",
                    a.positions, b.positions
                ));
            }
        }
    }
    let total: usize = cur.iter().map(|s| s.positions).sum();
    let per = (SCRATCH_ELEMENTS / (width + rwidth))
        .clamp(1, ROWS_PER_PRODUCT)
        .min(total.max(1));
    let Stats {
        gram,
        cross,
        extent,
        ..
    } = stats;
    let extent = *extent;
    let (pw, prw) = match extent {
        Extent::Full => (width, rwidth),
        Extent::Diagonal => (0, 0),
    };
    let mut crosses: Vec<Option<&mut Mat<f64>>> = match cross {
        Some(c) => c.iter_mut().map(Some).collect(),
        None => gram.iter().map(|_| None).collect(),
    };
    // Groups are independent: in parallel for depthwise and grouped convolutions.
    gram.par_iter_mut()
        .zip(crosses.par_iter_mut())
        .enumerate()
        .for_each(|(gi, (g, x))| {
            let mut rows = Rows {
                buf: vec![0f32; per * width],
                rbuf: vec![0f32; per * rwidth],
                width,
                rwidth,
                n: 0,
                extent,
                prod: Mat::zeros(pw, pw),
                rprod: x.as_ref().map(|_| Mat::zeros(pw, prw)),
            };
            for (si, s) in cur.iter().enumerate() {
                let mut start = 0;
                while start < s.positions {
                    let take = (per - rows.n).min(s.positions - start);
                    let at = rows.n;
                    s.fill(gi, start, &mut rows.buf[at * width..(at + take) * width]);
                    if let Some(r) = reference {
                        r[si].fill(gi, start, &mut rows.rbuf[at * rwidth..(at + take) * rwidth]);
                    }
                    rows.n += take;
                    start += take;
                    if rows.n == per {
                        rows.flush(g, x.as_deref_mut());
                    }
                }
            }
            rows.flush(g, x.as_deref_mut());
        });
    stats.rows += total as u64;
    Ok(())
}

/// The rows gathered for one group's next product, and the f32 products' scratch.
struct Rows {
    buf: Vec<f32>,
    rbuf: Vec<f32>,
    width: usize,
    rwidth: usize,
    /// Rows gathered.
    n: usize,
    extent: Extent,
    /// The products' f32 results (empty for [`Extent::Diagonal`]).
    prod: Mat<f32>,
    rprod: Option<Mat<f32>>,
}

impl Rows {
    /// Adds the gathered rows' products into `gram` (its lower half; mirrored at the end) and
    /// `cross`, and empties the scratch.
    fn flush(&mut self, gram: &mut Mat<f64>, cross: Option<&mut Mat<f64>>) {
        let (n, width, rwidth) = (self.n, self.width, self.rwidth);
        if n == 0 {
            return;
        }
        if self.extent == Extent::Diagonal {
            for row in self.buf[..n * width].chunks_exact(width) {
                for (j, &v) in row.iter().enumerate() {
                    let v = v as f64;
                    gram[(j, 0)] += v * v;
                    gram[(j, 1)] += v;
                }
            }
            if let Some(x) = cross {
                for row in self.rbuf[..n * rwidth].chunks_exact(rwidth) {
                    for (j, &v) in row.iter().enumerate() {
                        x[(j, 0)] += v as f64;
                    }
                }
            }
            self.n = 0;
            return;
        }
        let p = MatRef::from_row_major_slice(&self.buf[..n * width], n, width);
        tri::matmul(
            self.prod.as_mut(),
            tri::BlockStructure::TriangularLower,
            Accum::Replace,
            p.transpose(),
            tri::BlockStructure::Rectangular,
            p,
            tri::BlockStructure::Rectangular,
            1.0f32,
            Par::rayon(0),
        );
        for j in 0..width {
            let (mut dst, src) = (gram.col_mut(j), self.prod.col(j));
            for i in j..width {
                dst[i] += src[i] as f64;
            }
        }
        if let (Some(x), Some(rprod)) = (cross, self.rprod.as_mut()) {
            let r = MatRef::from_row_major_slice(&self.rbuf[..n * rwidth], n, rwidth);
            matmul(
                rprod.as_mut(),
                Accum::Replace,
                p.transpose(),
                r,
                1.0f32,
                Par::rayon(0),
            );
            for j in 0..rwidth {
                let (mut dst, src) = (x.col_mut(j), rprod.col(j));
                for i in 0..width {
                    dst[i] += src[i] as f64;
                }
            }
        }
        self.n = 0;
    }
}

/// Layer inputs of one run by tensor id: real values (borrowed from the run's float tensors,
/// computed for quantized ones) and the per-run shape.
pub(super) type Activations<'a> =
    std::collections::HashMap<usize, (std::borrow::Cow<'a, [f32]>, Vec<usize>)>;

/// Copies the lower triangle of `m` onto its upper triangle.
fn mirror_lower(m: &mut Mat<f64>) {
    for j in 0..m.ncols() {
        for i in 0..j {
            m[(i, j)] = m[(j, i)];
        }
    }
}

/// The real values of `t`, the run's value of tensor `id` of `g` (the input of layer `layer`),
/// with its shape; refused when not finite.
pub(super) fn activation<'a>(
    path: &std::path::Path,
    g: &Graph,
    id: usize,
    t: &'a Tensor,
    layer: &str,
) -> Result<(std::borrow::Cow<'a, [f32]>, Vec<usize>)> {
    let tensor = g.tensor(id);
    let quant = tensor.quant.as_ref().filter(|_| tensor.dtype != DType::F32);
    // Float values held in RAM are read where they are.
    let plain = (t.datum_type() == DatumType::F32)
        .then(|| t.as_plain_ram())
        .flatten()
        .and_then(|v| v.as_slice::<f32>().ok());
    let v = match plain {
        Some(v) => Ok(std::borrow::Cow::Borrowed(v)),
        None => real_values(t, quant).map(std::borrow::Cow::Owned),
    }
    .map_err(|e| {
        Error::unsupported(path, format!("calibration: reading {:?}: {e}", tensor.name))
    })?;
    if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
        return Err(Error::Usage(format!(
            "--calib: the calibration data drives tensor {:?} (input of {layer}) to {bad}; check its preprocessing (scale, dtype)",
            tensor.name
        )));
    }
    Ok((v, t.shape().to_vec()))
}

/// A model with its layers' inputs as extra outputs, loaded in tract.
struct Tapped<'a> {
    g: &'a Graph,
    layers: &'a [Linear],
    runner: crate::verify::Runner,
    taps: Vec<usize>,
}

impl<'a> Tapped<'a> {
    fn new(
        doc: &Document,
        g: &'a Graph,
        layers: &'a [Linear],
        shapes: &[Vec<usize>],
    ) -> Result<Self> {
        let mut taps: Vec<usize> = layers
            .iter()
            .map(|l| l.input)
            .filter(|t| !g.inputs.contains(t))
            .collect();
        taps.sort_unstable();
        taps.dedup();
        let copy = tapped(doc, g, &taps);
        let runner = crate::verify::load_at(
            &copy,
            shapes,
            &[],
            "the calibration copy (the model with its layers' inputs as outputs)",
        )?;
        Ok(Tapped {
            g,
            layers,
            runner,
            taps,
        })
    }

    /// The tapped outputs of one run on `inputs`.
    fn run(&self, path: &std::path::Path, inputs: &[Tensor]) -> Result<TVec<Tensor>> {
        self.runner
            .run(inputs.iter().cloned().collect())
            .map_err(|e| Error::unsupported(path, format!("calibration run: {e}")))
    }

    /// Each layer input of a run (`inputs`, and `outs` from [`Tapped::run`]), as real values
    /// with its per-run shape.
    fn values<'v>(
        &self,
        path: &std::path::Path,
        inputs: &'v [Tensor],
        outs: &'v [Tensor],
    ) -> Result<Activations<'v>> {
        let g = self.g;
        let mut values = std::collections::HashMap::new();
        for l in self.layers {
            if values.contains_key(&l.input) {
                continue;
            }
            let t = match g.inputs.iter().position(|&x| x == l.input) {
                Some(i) => &inputs[i],
                None => &outs[self.taps.binary_search(&l.input).expect("tapped")],
            };
            values.insert(l.input, activation(path, g, l.input, t, &l.name)?);
        }
        Ok(values)
    }
}

/// The model a calibration pass compares with: the original document, its main graph and the
/// same layers there (in the order of the layers calibrated).
pub struct Reference<'a> {
    pub doc: &'a Document,
    pub g: &'a Graph,
    pub layers: &'a [Linear],
}

/// Zeroed statistics for `layers`, with cross matrices against `reference` (the same layers
/// in the original model) when given.
pub(super) fn empty(want: Want) -> Vec<Stats> {
    let Want {
        layers,
        reference,
        extent,
    } = want;
    layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            // Gram and cross shapes per group, from this layer's and the reference's widths.
            let (w, rw) = (l.k + 1, reference.map_or(0, |r| r[i].k + 1));
            let ((gr, gc), (cr, cc)) = match extent {
                Extent::Full => ((w, w), (w, rw)),
                Extent::Diagonal => ((w, 2), (rw, 1)),
            };
            Stats {
                gram: (0..l.groups).map(|_| Mat::zeros(gr, gc)).collect(),
                cross: reference.map(|_| (0..l.groups).map(|_| Mat::zeros(cr, cc)).collect()),
                rows: 0,
                extent,
            }
        })
        .collect()
}

/// Folds one run's layer inputs (`values`, by tensor id; the first `valid` samples count) into
/// `stats`, and with a reference its layers' inputs on the same samples into the cross
/// statistics.
pub(super) fn fold(
    path: &std::path::Path,
    g: &Graph,
    layers: &[Linear],
    values: &Activations,
    reference: Option<(&[Linear], &Activations)>,
    valid: usize,
    stats: &mut [Stats],
) -> Result<()> {
    let results: Vec<std::result::Result<(), String>> = layers
        .par_iter()
        .enumerate()
        .zip(stats.par_iter_mut())
        .map(|((i, l), s)| {
            // A dense layer after a flatten sees [batch, features]; a TFLite
            // FULLY_CONNECTED may see its input as it is and flatten it itself.
            let split = |(v, shape): &(std::borrow::Cow<[f32]>, Vec<usize>)| {
                let run = shape.first().copied().unwrap_or(1).max(1);
                (
                    run,
                    v.len() / run,
                    shape.iter().skip(1).copied().collect::<Vec<_>>(),
                )
            };
            let cv = &values[&l.input];
            let (run, per, dims) = split(cv);
            let rl = reference.map(|r| &r.0[i]);
            let rv = reference.zip(rl).map(|((_, m), rl)| &m[&rl.input]);
            let rsplit = rv.map(split);
            let mut samples = Vec::with_capacity(valid.min(run));
            let mut refs = Vec::with_capacity(valid.min(run));
            for sample in 0..valid.min(run) {
                let x = &cv.0[sample * per..(sample + 1) * per];
                samples.push(Sample::new(l, x, &dims)?);
                if let (Some(rl), Some(rv), Some((_, rper, rdims))) = (rl, rv, &rsplit) {
                    refs.push(
                        Sample::new(rl, &rv.0[sample * rper..(sample + 1) * rper], rdims)
                            .map_err(|e| format!("in the original model: {e}"))?,
                    );
                }
            }
            accumulate(&samples, rv.map(|_| refs.as_slice()), s)?;
            Ok(())
        })
        .collect();
    for (l, r) in layers.iter().zip(results) {
        r.map_err(|e| {
            Error::unsupported(
                path,
                format!(
                    "calibration of {} (input {:?}): {e}",
                    l.name,
                    g.tensor(l.input).name
                ),
            )
        })?;
    }
    Ok(())
}

/// Completes `stats` (the Gram matrices' upper halves) and summarises the pass.
pub(super) fn finish(stats: &mut [Stats], data: &DataSummary) -> CalibSummary {
    for s in stats.iter_mut().filter(|s| s.extent == Extent::Full) {
        for g in &mut s.gram {
            mirror_lower(g);
        }
    }
    CalibSummary {
        data: data.clone(),
        layers: stats.len(),
        passes: 1,
        staged: None,
        max_rows: stats.iter().map(|s| s.rows).max().unwrap_or(0),
        stats_bytes: stats
            .iter()
            .map(|s| {
                s.gram
                    .iter()
                    .chain(s.cross.iter().flatten())
                    .map(|m| (m.nrows() * m.ncols() * 8) as u64)
                    .sum::<u64>()
            })
            .sum(),
    }
}

/// Runs the calibration data through `doc` and returns every layer's statistics (in the order
/// of `layers`). With a `reference`, each statistics also holds the cross products of the
/// layer's inputs with the reference layer's inputs on the same samples.
pub fn collect(
    doc: &Document,
    g: &Graph,
    layers: &[Linear],
    reference: Option<Reference>,
    extent: Extent,
    opts: &CalibOptions,
    progress: &dyn Progress,
) -> Result<(Vec<Stats>, CalibSummary)> {
    let path = doc.path();
    let mut dataset = open_dataset(doc, opts)?;
    let cur = Tapped::new(doc, g, layers, &dataset.shapes)?;
    let refd = match &reference {
        Some(r) => Some(Tapped::new(r.doc, r.g, r.layers, &dataset.shapes)?),
        None => None,
    };
    let dts = cur.runner.input_datum_types().to_vec();
    mark_quantized(&mut dataset, &dts);
    let mut stats = empty(Want {
        layers,
        reference: reference.as_ref().map(|r| r.layers),
        extent,
    });
    progress.begin("calibrating", dataset.samples as u64);
    let mut batches = dataset.batches(&dts)?;
    while let Some(batch) = batches.next_batch()? {
        let valid = batch.valid;
        let outs = cur.run(path, &batch.tensors)?;
        let values = cur.values(path, &batch.tensors, &outs)?;
        let routs = match &refd {
            Some(r) => Some(r.run(path, &batch.tensors)?),
            None => None,
        };
        let rvalues = match (&refd, &routs) {
            (Some(r), Some(o)) => Some(r.values(path, &batch.tensors, o)?),
            _ => None,
        };
        let rpair = reference.as_ref().map(|r| r.layers).zip(rvalues.as_ref());
        fold(path, g, layers, &values, rpair, valid, &mut stats)?;
        progress.advance(valid as u64);
    }
    progress.finish_bar();
    let summary = finish(&mut stats, &dataset.summary);
    Ok((stats, summary))
}

/// The calibration data bound to `doc`'s inputs.
pub(super) fn open_dataset(doc: &Document, opts: &CalibOptions) -> Result<Dataset> {
    let (decls, _) = crate::data::input_decls(doc)?;
    Dataset::open(
        &opts.data,
        &decls,
        doc.format() == crate::model::Format::Onnx,
    )
    .map_err(|e| match e {
        Error::Usage(m) => Error::Usage(format!("--calib: {m}")),
        e => e,
    })
}

/// Marks float data that feeds a quantized input (`dts`: the runner's input types) as
/// quantized by that input's parameters.
pub(super) fn mark_quantized(dataset: &mut Dataset, dts: &[DatumType]) {
    for (i, dt) in dts.iter().enumerate() {
        if dt.is_quantized() && dataset.input_is_float(i) {
            dataset.mark_quantized(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calib::layer::{Conv, Pads, Weights};

    #[test]
    fn gram_of_a_dense_input_is_xtx_with_sums_and_count() {
        let lin = Linear {
            node: 0,
            name: "fc".into(),
            input: 0,
            weight: 1,
            bias: None,
            kind: Kind::Dense,
            weights: Weights::RowMajor,
            out: 1,
            k: 2,
            groups: 1,
        };
        let mut s = Stats {
            gram: vec![Mat::zeros(3, 3)],
            cross: Some(vec![Mat::zeros(3, 3)]),
            rows: 0,
            extent: Extent::Full,
        };
        let x = [1.0, 2.0, 3.0, 4.0];
        let y = [2.0, 2.0, 6.0, 4.0];
        let (a, b) = (
            Sample::new(&lin, &x, &[2, 2]).unwrap(),
            Sample::new(&lin, &y, &[2, 2]).unwrap(),
        );
        accumulate(&[a], Some(&[b]), &mut s).unwrap();
        mirror_lower(&mut s.gram[0]);
        // Cross products: Σ x_i y_j.
        let c = &s.cross.as_ref().unwrap()[0];
        assert_eq!(c[(0, 0)], 1.0 * 2.0 + 3.0 * 6.0);
        assert_eq!(c[(1, 0)], 2.0 * 2.0 + 4.0 * 6.0);
        assert_eq!(c[(2, 1)], 2.0 + 4.0);
        let g = &s.gram[0];
        assert_eq!(s.rows, 2);
        assert_eq!(g[(0, 0)], 1.0 + 9.0);
        assert_eq!(g[(0, 1)], 2.0 + 12.0);
        assert_eq!(g[(1, 1)], 4.0 + 16.0);
        assert_eq!(g[(0, 2)], 4.0);
        assert_eq!(g[(2, 2)], 2.0);
        // The diagonal extent holds what Wanda reads of the same, and nothing else.
        let one = std::slice::from_ref(&lin);
        let mut d = empty(Want {
            layers: one,
            reference: Some(one),
            extent: Extent::Diagonal,
        })
        .remove(0);
        let (a, b) = (
            Sample::new(&lin, &x, &[2, 2]).unwrap(),
            Sample::new(&lin, &y, &[2, 2]).unwrap(),
        );
        accumulate(&[a], Some(&[b]), &mut d).unwrap();
        assert_eq!(d.diagonal(0), s.diagonal(0));
        assert_eq!(d.means(0), s.means(0));
        assert_eq!(d.means(0).unwrap().1.unwrap(), vec![(2.0 + 6.0) / 2.0, 3.0]);
        assert_eq!(
            (d.gram[0].ncols(), d.cross.as_ref().unwrap()[0].ncols()),
            (2, 1)
        );
    }

    #[test]
    fn depthwise_groups_see_only_their_channel() {
        let conv = Conv {
            layout: Layout::Nhwc,
            cin: 1,
            kernel: [1, 1],
            strides: [1, 1],
            dilations: [1, 1],
            pads: Pads::Explicit([0; 4]),
            channel_first: false,
            depth_multiplier: Some(1),
        };
        let lin = Linear {
            node: 0,
            name: "dw".into(),
            input: 0,
            weight: 1,
            bias: None,
            kind: Kind::Conv(conv),
            weights: Weights::ColMajor,
            out: 2,
            k: 1,
            groups: 2,
        };
        let mut s = Stats {
            gram: vec![Mat::zeros(2, 2), Mat::zeros(2, 2)],
            cross: None,
            rows: 0,
            extent: Extent::Full,
        };
        // [H=1, W=2, C=2]: channel 0 holds 1, 2; channel 1 holds 10, 20.
        let x = [1.0, 10.0, 2.0, 20.0];
        accumulate(&[Sample::new(&lin, &x, &[1, 2, 2]).unwrap()], None, &mut s).unwrap();
        assert_eq!(s.gram[0][(0, 0)], 5.0);
        assert_eq!(s.gram[1][(0, 0)], 500.0);
        assert_eq!(s.rows, 2);
    }
}
