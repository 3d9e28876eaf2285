//! Validation data: NumPy arrays (`.npy`, `.npz`), the ONNX model zoo's `test_data_set_*`
//! folders, or seeded random inputs, delivered batch by batch.
//!
//! Arrays are streamed: a pass over the data holds one batch in memory, whatever the size of
//! the files. Every pass re-opens the files, so passes see the same samples in the same order.
//! `npy` reads the NumPy formats, `feeds` binds each kind of data to a model's inputs,
//! `batches` delivers one pass; this file holds the options, the bound [`Dataset`] and its
//! summary.
//!
//! Layer: runtime (imports its own layer and the ones below; see ARCHITECTURE.md).

mod batches;
mod feeds;
mod npy;

use crate::document::Document;
use crate::error::{Error, Result};
use crate::model::{DType, Dim};
use batches::Batches;
use npy::{npy_array, read_labels, ArrayRef};
use rand::SeedableRng;
use serde::Serialize;
use std::path::PathBuf;
use tract_onnx::prelude::*;

/// Where validation inputs come from.
#[derive(Debug, Clone, PartialEq)]
pub enum DataSource {
    /// Seeded random inputs of the declared shapes (floats in [-1, 1), integers over their range).
    Random,
    /// A `.npy` file (single-input models), a `.npz` file (one array per input name, optional
    /// `labels`), or a folder of ONNX `test_data_set_*` sets (or one such set).
    Path(PathBuf),
}

impl std::str::FromStr for DataSource {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "random" {
            Ok(DataSource::Random)
        } else if s.is_empty() {
            Err("empty data path".into())
        } else {
            Ok(DataSource::Path(PathBuf::from(s)))
        }
    }
}

/// How to read the data for a model.
#[derive(Debug, Clone)]
pub struct DataOptions {
    pub source: DataSource,
    /// Integer class labels, one per sample (`.npy`); a `.npz` may hold them as `labels`.
    pub labels: Option<PathBuf>,
    /// Use at most this many samples (the first ones).
    pub samples: Option<usize>,
    /// Samples per run when the model's batch dimension is dynamic (ONNX).
    pub batch_size: usize,
    /// Shapes for random inputs, by input name (dynamic dimensions otherwise become 1, or the
    /// batch size for a dynamic first dimension).
    pub input_shapes: Vec<(String, Vec<usize>)>,
    /// Seed of random inputs.
    pub seed: u64,
}

/// Samples used with random inputs when `--samples` is not given.
pub const DEFAULT_RANDOM_SAMPLES: usize = 32;

/// Samples per run for models with a dynamic batch dimension.
pub const DEFAULT_BATCH_SIZE: usize = 32;

/// No single input batch may exceed this many bytes (a bad `--batch-size` or a corrupt header
/// must not exhaust memory).
const MAX_BATCH_BYTES: u64 = 2 << 30;

impl Default for DataOptions {
    fn default() -> Self {
        DataOptions {
            source: DataSource::Random,
            labels: None,
            samples: None,
            batch_size: DEFAULT_BATCH_SIZE,
            input_shapes: vec![],
            seed: crate::verify::DEFAULT_SEED,
        }
    }
}

/// A model input as the file declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct InputDecl {
    pub name: String,
    pub dtype: DType,
    /// `None` when the rank is unknown.
    pub dims: Option<Vec<Dim>>,
    /// The input carries quantization parameters (int8 TFLite): float data is quantized.
    pub quantized: bool,
}

/// What a report says about the data used.
#[derive(Debug, Clone, Serialize)]
pub struct DataSummary {
    /// `random`, `npy`, `npz` or `onnx-test-data`.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    pub samples: usize,
    /// Samples per model run.
    pub batch_size: usize,
    pub inputs: Vec<DataInput>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DataInput {
    pub name: String,
    /// Shape of one model run (first axis: samples).
    pub shape: Vec<usize>,
    /// Element type in the data (`float32`, …; `random` for generated inputs).
    pub data_dtype: String,
    /// The data was float and the model input quantized: values were quantized with the
    /// input's scale and zero point.
    pub quantized: bool,
}

/// One model run's inputs.
pub struct Batch {
    pub tensors: TVec<Tensor>,
    /// Index of the batch's first sample.
    pub first: usize,
    /// Real samples in the batch; the rest (up to the run's batch size) repeat the last sample
    /// and are ignored.
    pub valid: usize,
}

/// Where each input's values come from.
#[derive(Debug, Clone)]
enum Feed {
    Random {
        seed: u64,
    },
    Arrays(Vec<ArrayRef>),
    /// ONNX test data sets: per set, one `input_K.pb` per model input, in input order.
    TestSets(Vec<Vec<PathBuf>>),
}

/// Validation data bound to a model's interface: the shape of each run, the number of samples,
/// the labels. [`Dataset::batches`] starts a pass.
#[derive(Debug, Clone)]
pub struct Dataset {
    feed: Feed,
    /// Shape of one run per input (axis 0 = samples).
    pub shapes: Vec<Vec<usize>>,
    pub samples: usize,
    /// Samples per run.
    pub batch: usize,
    pub labels: Option<Vec<i64>>,
    pub summary: DataSummary,
    input_names: Vec<String>,
}

fn usage(msg: String) -> Error {
    Error::Usage(msg)
}

impl Dataset {
    /// Binds `opts` to a model with inputs `decls`. `resizable_batch` says whether a dynamic
    /// first dimension may be set to more than 1 (ONNX; tract runs TFLite at its stored shape).
    pub fn open(opts: &DataOptions, decls: &[InputDecl], resizable_batch: bool) -> Result<Self> {
        if opts.batch_size == 0 {
            return Err(usage("--batch-size must be at least 1".into()));
        }
        if opts.samples == Some(0) {
            return Err(usage("--samples must be at least 1".into()));
        }
        for (name, _) in &opts.input_shapes {
            if !decls.iter().any(|d| &d.name == name) {
                return Err(usage(format!(
                    "--input-shape {name}=…: the model has no input {name:?} (inputs: {})",
                    names(decls)
                )));
            }
        }
        let mut ds = match &opts.source {
            DataSource::Random => Self::random(opts, decls, resizable_batch)?,
            DataSource::Path(p) => {
                if !opts.input_shapes.is_empty() {
                    return Err(usage(
                        "--input-shape sets the shapes of random inputs; with --data the arrays give the shapes".into(),
                    ));
                }
                let meta = std::fs::metadata(p).map_err(|e| Error::io(p, e))?;
                if meta.is_dir() {
                    Self::test_sets(p, opts, decls)?
                } else {
                    Self::arrays(p, opts, decls, resizable_batch)?
                }
            }
        };
        if let Some(l) = &opts.labels {
            if ds.labels.is_some() {
                return Err(usage(format!(
                    "--labels {}: the data file already holds labels",
                    l.display()
                )));
            }
            let a = npy_array(l)?;
            let labels = read_labels(&a)?;
            ds.set_labels(labels, l.display().to_string())?;
        }
        // Every run's input must fit in memory.
        for (d, s) in decls.iter().zip(&ds.shapes) {
            let bytes = s
                .iter()
                .try_fold(8u64, |a, &x| a.checked_mul(x as u64))
                .unwrap_or(u64::MAX);
            if bytes > MAX_BATCH_BYTES {
                return Err(usage(format!(
                    "input {:?}: one run of shape {s:?} would need {bytes} bytes; lower --batch-size",
                    d.name
                )));
            }
        }
        Ok(ds)
    }

    fn set_labels(&mut self, labels: Vec<i64>, origin: String) -> Result<()> {
        if labels.len() != self.total_samples() {
            return Err(usage(format!(
                "{origin}: {} labels for {} samples",
                labels.len(),
                self.total_samples()
            )));
        }
        if let Some((i, v)) = labels.iter().enumerate().find(|(_, &v)| v < 0) {
            return Err(usage(format!(
                "{origin}: label {i} is {v}; class labels are indices from 0"
            )));
        }
        let mut labels = labels;
        labels.truncate(self.samples);
        self.summary.labels = Some(origin);
        self.labels = Some(labels);
        Ok(())
    }

    /// Samples in the data before `--samples` (labels must match this count).
    fn total_samples(&self) -> usize {
        match &self.feed {
            Feed::Arrays(a) => a[0].shape[0] as usize,
            _ => self.samples,
        }
    }
}

impl Dataset {
    /// Records that float data is quantized for input `i` (int8 models).
    pub(crate) fn mark_quantized(&mut self, i: usize) {
        if let Some(d) = self.summary.inputs.get_mut(i) {
            d.quantized = true;
        }
    }

    /// The data's element type for input `i` is float.
    pub(crate) fn input_is_float(&self, i: usize) -> bool {
        match &self.feed {
            Feed::Random { .. } => false,
            Feed::Arrays(a) => a[i].elem.is_float(),
            Feed::TestSets(_) => self.summary.inputs[i].data_dtype.starts_with("float"),
        }
    }

    /// The value of each scalar integer input in the first sample of the user's data (`None`
    /// for other inputs, and for random data): such an input is a setting (a sample rate, a
    /// mode), and the copy tract runs is specialised to it (`If`s on it resolved), so every
    /// sample must carry the same value ([`crate::verify::Runner::run`] checks).
    pub fn settings(&self, decls: &[InputDecl]) -> Result<Vec<Option<Tensor>>> {
        let setting = |d: &InputDecl| {
            d.dims.as_ref().is_some_and(|d| d.is_empty())
                && matches!(d.dtype, DType::I64 | DType::I32 | DType::Bool)
        };
        if matches!(self.feed, Feed::Random { .. }) || !decls.iter().any(setting) {
            return Ok(vec![None; decls.len()]);
        }
        let dts: Option<Vec<DatumType>> = decls
            .iter()
            .map(|d| {
                Some(match d.dtype {
                    DType::F32 => f32::datum_type(),
                    DType::F16 => f16::datum_type(),
                    DType::F64 => f64::datum_type(),
                    DType::I8 => i8::datum_type(),
                    DType::U8 => u8::datum_type(),
                    DType::I16 => i16::datum_type(),
                    DType::I32 => i32::datum_type(),
                    DType::I64 => i64::datum_type(),
                    DType::Bool => bool::datum_type(),
                    _ => return None,
                })
            })
            .collect();
        let Some(dts) = dts else {
            return Ok(vec![None; decls.len()]);
        };
        let Some(first) = self.batches(&dts)?.next_batch()? else {
            return Ok(vec![None; decls.len()]);
        };
        Ok(decls
            .iter()
            .zip(first.tensors)
            .map(|(d, t)| setting(d).then_some(t))
            .collect())
    }

    /// Starts a pass over the data; tensors are converted to `dts` (the model's input types).
    pub fn batches(&self, dts: &[DatumType]) -> Result<Batches<'_>> {
        let streams = match &self.feed {
            Feed::Arrays(a) => a.iter().map(|a| a.open()).collect::<Result<Vec<_>>>()?,
            _ => vec![],
        };
        Ok(Batches {
            ds: self,
            dts: dts.to_vec(),
            streams,
            next: 0,
            rng: match self.feed {
                Feed::Random { seed } => Some(rand::rngs::SmallRng::seed_from_u64(seed)),
                _ => None,
            },
        })
    }
}

fn names(decls: &[InputDecl]) -> String {
    decls
        .iter()
        .map(|d| format!("{:?}", d.name))
        .collect::<Vec<_>>()
        .join(", ")
}

fn batch_of(shapes: &[Vec<usize>]) -> usize {
    shapes
        .iter()
        .find_map(|s| s.first().copied())
        .unwrap_or(1)
        .max(1)
}

/// The declared inputs of a model, for binding data.
pub fn input_decls(doc: &Document) -> Result<(Vec<InputDecl>, Vec<String>)> {
    let model = doc.to_model()?;
    let g = model.main();
    let inputs = g
        .inputs
        .iter()
        .map(|&id| {
            let t = g.tensor(id);
            InputDecl {
                name: t.name.clone(),
                dtype: t.dtype,
                dims: t.shape.clone(),
                quantized: t.quant.is_some(),
            }
        })
        .collect();
    let outputs = g
        .outputs
        .iter()
        .map(|&id| g.tensor(id).name.clone())
        .collect();
    Ok((inputs, outputs))
}

#[cfg(test)]
mod tests {
    use super::batches::to_input;
    use super::npy::{Elem, Values};
    use super::*;
    use std::path::Path;

    fn decl(name: &str, dims: &[Option<u64>]) -> InputDecl {
        InputDecl {
            name: name.into(),
            dtype: DType::F32,
            quantized: false,
            dims: Some(
                dims.iter()
                    .map(|d| d.map_or(Dim::Dynamic("N".into()), Dim::Fixed))
                    .collect(),
            ),
        }
    }

    fn write_npy<T: npyz::AutoSerialize>(path: &Path, shape: &[u64], data: Vec<T>) {
        use npyz::WriterBuilder;
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(shape)
            .writer(std::fs::File::create(path).unwrap())
            .begin_nd()
            .unwrap();
        w.extend(data).unwrap();
        w.finish().unwrap();
    }

    #[test]
    fn npy_streams_in_batches_and_pads_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        let v: Vec<f32> = (0..10).map(|i| i as f32).collect();
        write_npy(&p, &[5, 2], v);
        let opts = DataOptions {
            source: DataSource::Path(p),
            batch_size: 2,
            ..Default::default()
        };
        let ds = Dataset::open(&opts, &[decl("x", &[None, Some(2)])], true).unwrap();
        assert_eq!((ds.samples, ds.batch), (5, 2));
        let mut b = ds.batches(&[DatumType::F32]).unwrap();
        let mut seen = vec![];
        while let Some(batch) = b.next_batch().unwrap() {
            let t = batch.tensors[0].to_plain_array_view::<f32>().unwrap();
            assert_eq!(t.shape(), &[2, 2]);
            seen.push((
                batch.first,
                batch.valid,
                t.iter().copied().collect::<Vec<_>>(),
            ));
        }
        assert_eq!(seen[2], (4, 1, vec![8.0, 9.0, 8.0, 9.0]));
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn bad_data_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        write_npy(&p, &[2, 3], vec![0.0f32, 1.0, 2.0, 3.0, f32::NAN, 5.0]);
        let opts = DataOptions {
            source: DataSource::Path(p.clone()),
            ..Default::default()
        };
        // Wrong feature size.
        let e = Dataset::open(&opts, &[decl("x", &[None, Some(4)])], true).unwrap_err();
        assert!(
            e.to_string().contains("axis 1 is 3, the model expects 4"),
            "{e}"
        );
        // NaN in sample 1.
        let ds = Dataset::open(&opts, &[decl("x", &[None, Some(3)])], true).unwrap();
        let e = ds
            .batches(&[DatumType::F32])
            .unwrap()
            .next_batch()
            .err()
            .unwrap();
        assert!(e.to_string().contains("sample 1 holds NaN"), "{e}");
        // Truncated file.
        let t = dir.path().join("t.npy");
        // A header for 4 samples, data for 2.
        write_npy(&t, &[2, 3], vec![0.0f32; 6]);
        let mut bytes = std::fs::read(&t).unwrap();
        let at = bytes.windows(6).position(|w| w == b"(2, 3,").unwrap();
        bytes[at + 1] = b'4';
        std::fs::write(&t, bytes).unwrap();
        let opts = DataOptions {
            source: DataSource::Path(t),
            ..Default::default()
        };
        let e = Dataset::open(&opts, &[decl("x", &[None, Some(3)])], true).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        // Labels of the wrong length.
        let l = dir.path().join("y.npy");
        write_npy(&l, &[3], vec![0i64; 3]);
        let opts = DataOptions {
            source: DataSource::Path(p),
            labels: Some(l),
            ..Default::default()
        };
        let e = Dataset::open(&opts, &[decl("x", &[None, Some(3)])], true).unwrap_err();
        assert!(e.to_string().contains("3 labels for 2 samples"), "{e}");
    }

    #[test]
    fn float_data_is_quantized_for_int8_inputs() {
        let dt = DatumType::QI8(QParams::ZpScale {
            zero_point: -3,
            scale: 0.5,
        });
        let t = to_input(
            Values::Float(vec![0.0, 1.0, 100.0, -100.0]),
            Elem::F32,
            &[1, 4],
            dt,
        )
        .unwrap();
        let mut plain = t.clone();
        unsafe { plain.set_datum_type(DatumType::I8) };
        assert_eq!(
            plain
                .to_plain_array_view::<i8>()
                .unwrap()
                .as_slice()
                .unwrap(),
            &[-3, -1, 127, -128],
            "round(x / scale) + zero point, saturated"
        );
    }
}
