//! Running the calibration data through the model in tract and accumulating, per layer, the
//! second moments of its inputs.
//!
//! Every layer input is made an output of a copy of the model (an ONNX graph output, a TFLite
//! subgraph output), so one tract run per batch yields all of them. Each batch's activations
//! are folded into the layers' statistics and dropped: memory holds one batch's activations and
//! the statistics, never the calibration set's activations.

use super::layer::{patches, Kind, Layout, Linear};
use super::CalibOptions;
use crate::convert::Progress;
use crate::document::Document;
use crate::error::{Error, Result};
use crate::model::{DType, Graph, Quant};
use crate::validate::data::{DataSummary, Dataset};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};
use rayon::prelude::*;
use serde::Serialize;
use tract_onnx::prelude::*;

/// One layer's input statistics: per group, `Σ x̃ x̃ᵀ` over every calibration row (an im2col
/// patch, a dense input row), with `x̃ = [x, 1]`: the Gram matrix `XᵀX` in the top-left
/// `k × k` block, the feature sums in the last row and column, the row count in the corner.
pub struct Stats {
    pub gram: Vec<Mat<f64>>,
    pub rows: u64,
}

impl Stats {
    pub fn k(&self) -> usize {
        self.gram[0].nrows() - 1
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
    /// Bytes of statistics held (the Gram matrices).
    pub stats_bytes: u64,
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

/// A copy of `doc` whose outputs also include `taps` (tensor ids of the main graph).
fn tapped(doc: &Document, g: &Graph, taps: &[usize]) -> Document {
    match doc {
        Document::Onnx(d) => {
            let mut d = d.clone();
            if let Some(graph) = d.model.graph.as_mut() {
                for &t in taps {
                    graph.output.push(crate::onnx_pb::ValueInfoProto {
                        name: Some(g.tensor(t).name.clone()),
                        ..Default::default()
                    });
                }
            }
            d.edited = true;
            Document::Onnx(d)
        }
        Document::Tflite(d) => {
            let mut d = d.clone();
            if let Some(sg) = d.model.subgraphs.as_mut().and_then(|s| s.first_mut()) {
                let outs = sg.outputs.get_or_insert_with(Vec::new);
                outs.extend(taps.iter().map(|&t| t as i32));
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

/// Positions of im2col rows (or dense rows) built per multiplication: bounds the scratch
/// matrix at about 32 MiB.
const SCRATCH_ELEMENTS: usize = 4 << 20;

/// Folds one sample's input `x` (its shape without the batch axis: `dims`) into `stats`.
fn accumulate(
    lin: &Linear,
    x: &[f32],
    dims: &[usize],
    stats: &mut Stats,
) -> std::result::Result<(), String> {
    let k = lin.k;
    let width = k + 1;
    let add = |gram: &mut Mat<f64>, buf: &[f64], rows: usize| {
        let p = MatRef::from_row_major_slice(&buf[..rows * width], rows, width);
        matmul(
            gram.as_mut(),
            Accum::Add,
            p.transpose(),
            p,
            1.0,
            Par::rayon(0),
        );
    };
    match &lin.kind {
        Kind::Dense => {
            if x.len() % k != 0 {
                return Err(format!(
                    "the input has {} values per sample, not a multiple of the {k} input features",
                    x.len()
                ));
            }
            let rows = x.len() / k;
            let per = (SCRATCH_ELEMENTS / width).max(1);
            let mut buf = vec![0f64; per.min(rows) * width];
            for start in (0..rows).step_by(per) {
                let n = per.min(rows - start);
                for r in 0..n {
                    let src = &x[(start + r) * k..(start + r + 1) * k];
                    let dst = &mut buf[r * width..(r + 1) * width];
                    for (d, &s) in dst.iter_mut().zip(src) {
                        *d = s as f64;
                    }
                    dst[k] = 1.0;
                }
                add(&mut stats.gram[0], &buf, n);
            }
            stats.rows += rows as u64;
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
            let per = (SCRATCH_ELEMENTS / width).max(1).min(positions);
            // Groups are independent: in parallel for depthwise and grouped convolutions.
            stats
                .gram
                .par_iter_mut()
                .enumerate()
                .for_each(|(gi, gram)| {
                    let mut buf = vec![0f64; per * width];
                    for start in (0..positions).step_by(per) {
                        let n = per.min(positions - start);
                        patches(conv, x, c, h, w, &geo, gi, start, &mut buf[..n * width]);
                        add(gram, &buf, n);
                    }
                });
            stats.rows += positions as u64;
        }
    }
    Ok(())
}

/// Runs the calibration data through `doc` and returns every layer's statistics (in the order
/// of `layers`).
pub fn collect(
    doc: &Document,
    g: &Graph,
    layers: &[Linear],
    opts: &CalibOptions,
    progress: &dyn Progress,
) -> Result<(Vec<Stats>, CalibSummary)> {
    let path = doc.path();
    let (decls, _) = crate::validate::input_decls(doc)?;
    let mut dataset = Dataset::open(
        &opts.data,
        &decls,
        doc.format() == crate::model::Format::Onnx,
    )
    .map_err(|e| match e {
        Error::Usage(m) => Error::Usage(format!("--calib: {m}")),
        e => e,
    })?;
    let mut taps: Vec<usize> = layers
        .iter()
        .map(|l| l.input)
        .filter(|t| !g.inputs.contains(t) && !g.outputs.contains(t))
        .collect();
    taps.sort_unstable();
    taps.dedup();
    let copy = tapped(doc, g, &taps);
    let runner = crate::validate::load(&copy, &dataset.shapes, "calibration")?;
    let dts = runner.input_datum_types().to_vec();
    for (i, dt) in dts.iter().enumerate() {
        if dt.is_quantized() && dataset.input_is_float(i) {
            dataset.mark_quantized(i);
        }
    }
    let mut stats: Vec<Stats> = layers
        .iter()
        .map(|l| Stats {
            gram: (0..l.groups)
                .map(|_| Mat::zeros(l.k + 1, l.k + 1))
                .collect(),
            rows: 0,
        })
        .collect();
    let n_out = g.outputs.len();
    let total = dataset.samples as u64;
    progress.begin("calibrating", total);
    let mut batches = dataset.batches(&dts)?;
    while let Some(batch) = batches.next_batch()? {
        let inputs = batch.tensors.clone();
        let outs = runner
            .run(batch.tensors)
            .map_err(|e| Error::unsupported(path, format!("calibration run: {e}")))?;
        // Each tapped tensor once, as real values with its per-run shape.
        let mut values: std::collections::HashMap<usize, (Vec<f32>, Vec<usize>)> =
            std::collections::HashMap::new();
        for l in layers {
            if values.contains_key(&l.input) {
                continue;
            }
            let t = if let Some(i) = g.inputs.iter().position(|&x| x == l.input) {
                &inputs[i]
            } else if let Some(i) = g.outputs.iter().position(|&x| x == l.input) {
                &outs[i]
            } else {
                &outs[n_out + taps.binary_search(&l.input).expect("tapped")]
            };
            let tensor = g.tensor(l.input);
            let quant = tensor.quant.as_ref().filter(|_| tensor.dtype != DType::F32);
            let v = real_values(t, quant).map_err(|e| {
                Error::unsupported(path, format!("calibration: reading {:?}: {e}", tensor.name))
            })?;
            if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
                return Err(Error::Usage(format!(
                    "--calib: the calibration data drives tensor {:?} (input of {}) to {bad}; check its preprocessing (scale, dtype)",
                    tensor.name, l.name
                )));
            }
            values.insert(l.input, (v, t.shape().to_vec()));
        }
        let valid = batch.valid;
        let results: Vec<std::result::Result<(), String>> = layers
            .par_iter()
            .zip(stats.par_iter_mut())
            .map(|(l, s)| {
                let (v, shape) = &values[&l.input];
                let run = shape.first().copied().unwrap_or(1).max(1);
                let per = v.len() / run;
                // A dense layer after a flatten sees [batch, features]; a TFLite
                // FULLY_CONNECTED may see its input as it is and flatten it itself.
                let dims: Vec<usize> = shape.iter().skip(1).copied().collect();
                for sample in 0..valid.min(run) {
                    accumulate(l, &v[sample * per..(sample + 1) * per], &dims, s)?;
                }
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
        progress.advance(valid as u64);
    }
    progress.finish_bar();
    let summary = CalibSummary {
        data: dataset.summary.clone(),
        layers: layers.len(),
        max_rows: stats.iter().map(|s| s.rows).max().unwrap_or(0),
        stats_bytes: layers.iter().map(stats_bytes).sum(),
    };
    Ok((stats, summary))
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
            rows: 0,
        };
        accumulate(&lin, &[1.0, 2.0, 3.0, 4.0], &[2, 2], &mut s).unwrap();
        let g = &s.gram[0];
        assert_eq!(s.rows, 2);
        assert_eq!(g[(0, 0)], 1.0 + 9.0);
        assert_eq!(g[(0, 1)], 2.0 + 12.0);
        assert_eq!(g[(1, 1)], 4.0 + 16.0);
        assert_eq!(g[(0, 2)], 4.0);
        assert_eq!(g[(2, 2)], 2.0);
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
            rows: 0,
        };
        // [H=1, W=2, C=2]: channel 0 holds 1, 2; channel 1 holds 10, 20.
        accumulate(&lin, &[1.0, 10.0, 2.0, 20.0], &[1, 2, 2], &mut s).unwrap();
        assert_eq!(s.gram[0][(0, 0)], 5.0);
        assert_eq!(s.gram[1][(0, 0)], 500.0);
        assert_eq!(s.rows, 2);
    }
}
