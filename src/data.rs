//! Validation data: NumPy arrays (`.npy`, `.npz`), the ONNX model zoo's `test_data_set_*`
//! folders, or seeded random inputs, delivered batch by batch.
//!
//! Arrays are streamed: a pass over the data holds one batch in memory, whatever the size of
//! the files. Every pass re-opens the files, so passes see the same samples in the same order.

use crate::document::Document;
use crate::error::{Error, Result};
use crate::model::{DType, Dim};
use rand::SeedableRng;
use serde::Serialize;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
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

/// Element types of NumPy arrays pare reads.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Elem {
    F16,
    F32,
    F64,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    Bool,
}

impl Elem {
    fn size(self) -> usize {
        match self {
            Elem::I8 | Elem::U8 | Elem::Bool => 1,
            Elem::F16 | Elem::I16 | Elem::U16 => 2,
            Elem::F32 | Elem::I32 | Elem::U32 => 4,
            Elem::F64 | Elem::I64 | Elem::U64 => 8,
        }
    }
    fn is_float(self) -> bool {
        matches!(self, Elem::F16 | Elem::F32 | Elem::F64)
    }
    fn name(self) -> &'static str {
        match self {
            Elem::F16 => "float16",
            Elem::F32 => "float32",
            Elem::F64 => "float64",
            Elem::I8 => "int8",
            Elem::I16 => "int16",
            Elem::I32 => "int32",
            Elem::I64 => "int64",
            Elem::U8 => "uint8",
            Elem::U16 => "uint16",
            Elem::U32 => "uint32",
            Elem::U64 => "uint64",
            Elem::Bool => "bool",
        }
    }
    fn from_dtype(dt: DType) -> Option<Elem> {
        Some(match dt {
            DType::F16 => Elem::F16,
            DType::F32 => Elem::F32,
            DType::F64 => Elem::F64,
            DType::I8 => Elem::I8,
            DType::I16 => Elem::I16,
            DType::I32 => Elem::I32,
            DType::I64 => Elem::I64,
            DType::U8 => Elem::U8,
            DType::U16 => Elem::U16,
            DType::U32 => Elem::U32,
            DType::U64 => Elem::U64,
            DType::Bool => Elem::Bool,
            _ => return None,
        })
    }
}

/// Decoded values of a run of elements: floats as f64, integers as i64.
enum Values {
    Float(Vec<f64>),
    Int(Vec<i64>),
}

fn decode(elem: Elem, big_endian: bool, b: &[u8]) -> Values {
    macro_rules! each {
        ($n:literal, $f:expr) => {
            b.chunks_exact($n)
                .map(|c| {
                    let mut a = [0u8; $n];
                    a.copy_from_slice(c);
                    if big_endian {
                        a.reverse();
                    }
                    $f(a)
                })
                .collect()
        };
    }
    match elem {
        Elem::F16 => Values::Float(each!(2, |a| half::f16::from_le_bytes(a).to_f64())),
        Elem::F32 => Values::Float(each!(4, |a| f32::from_le_bytes(a) as f64)),
        Elem::F64 => Values::Float(each!(8, f64::from_le_bytes)),
        Elem::I8 => Values::Int(b.iter().map(|&v| v as i8 as i64).collect()),
        Elem::U8 | Elem::Bool => Values::Int(b.iter().map(|&v| v as i64).collect()),
        Elem::I16 => Values::Int(each!(2, |a| i16::from_le_bytes(a) as i64)),
        Elem::U16 => Values::Int(each!(2, |a| u16::from_le_bytes(a) as i64)),
        Elem::I32 => Values::Int(each!(4, |a| i32::from_le_bytes(a) as i64)),
        Elem::U32 => Values::Int(each!(4, |a| u32::from_le_bytes(a) as i64)),
        Elem::I64 => Values::Int(each!(8, i64::from_le_bytes)),
        Elem::U64 => Values::Int(each!(8, |a| u64::from_le_bytes(a).min(i64::MAX as u64) as i64)),
    }
}

/// An array inside a `.npy` file or a `.npz` member: where its data starts and how to read it.
#[derive(Debug, Clone)]
struct ArrayRef {
    /// For messages: `x.npy` or `data.npz:images`.
    origin: String,
    file: PathBuf,
    /// Offset of the `.npy` stream in `file` (0 for a `.npy` file).
    offset: u64,
    /// Deflate-compressed (`np.savez_compressed`) rather than stored.
    deflated: bool,
    compressed_len: u64,
    shape: Vec<u64>,
    elem: Elem,
    big_endian: bool,
}

impl ArrayRef {
    fn row_elems(&self) -> Result<u64> {
        self.shape[1..]
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| {
                Error::malformed(&self.file, format!("{}: shape overflows", self.origin))
            })
    }

    /// Opens the array's stream positioned at its first element.
    fn open(&self) -> Result<Box<dyn Read + Send>> {
        let io = |e| Error::io(&self.file, e);
        let mut f = BufReader::with_capacity(1 << 20, File::open(&self.file).map_err(io)?);
        f.seek(SeekFrom::Start(self.offset)).map_err(io)?;
        let mut r: Box<dyn Read + Send> = if self.deflated {
            Box::new(BufReader::new(flate2::read::DeflateDecoder::new(
                f.take(self.compressed_len),
            )))
        } else {
            Box::new(f)
        };
        // Skip the header: parsed again, it leaves the reader at the data.
        npyz::NpyHeader::from_reader(&mut r)
            .map_err(|e| Error::malformed(&self.file, format!("{}: {e}", self.origin)))?;
        Ok(r)
    }
}

/// Parses a `.npy` header from `r` into an [`ArrayRef`] (with `file`/`offset` filled by the
/// caller), refusing what pare cannot feed to a model.
fn header_of(
    r: impl Read,
    origin: String,
    file: &Path,
) -> Result<(Vec<u64>, Elem, bool, u64, String)> {
    let bad = |msg: String| Error::malformed(file, format!("{origin}: {msg}"));
    let h = npyz::NpyHeader::from_reader(r).map_err(|e| bad(format!("not a NumPy array ({e})")))?;
    let npy = npyz::NpyFile::with_header(h, std::io::empty());
    if npy.order() == npyz::Order::Fortran {
        return Err(bad(
            "Fortran-ordered array; save it with np.ascontiguousarray(x) first".into(),
        ));
    }
    let npyz::DType::Plain(ts) = npy.dtype() else {
        return Err(bad(format!(
            "structured dtype {:?} is not a tensor",
            npy.dtype().descr()
        )));
    };
    use npyz::TypeChar as T;
    let elem = match (ts.type_char(), ts.size_field()) {
        (T::Float, 2) => Elem::F16,
        (T::Float, 4) => Elem::F32,
        (T::Float, 8) => Elem::F64,
        (T::Int, 1) => Elem::I8,
        (T::Int, 2) => Elem::I16,
        (T::Int, 4) => Elem::I32,
        (T::Int, 8) => Elem::I64,
        (T::Uint, 1) => Elem::U8,
        (T::Uint, 2) => Elem::U16,
        (T::Uint, 4) => Elem::U32,
        (T::Uint, 8) => Elem::U64,
        (T::Bool, 1) => Elem::Bool,
        _ => return Err(bad(format!("unsupported dtype {ts}"))),
    };
    let big = ts.endianness() == npyz::Endianness::Big;
    let shape = npy.shape().to_vec();
    let n = shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
    let bytes = n
        .checked_mul(elem.size() as u64)
        .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
    Ok((shape, elem, big, bytes, ts.to_string()))
}

fn npy_array(path: &Path) -> Result<ArrayRef> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut r = BufReader::new(f);
    let origin = path.display().to_string();
    let (shape, elem, big_endian, bytes, _) = header_of(&mut r, origin.clone(), path)?;
    let data_start = r.stream_position().map_err(|e| Error::io(path, e))?;
    if len.saturating_sub(data_start) < bytes {
        return Err(Error::malformed(
            path,
            format!(
                "truncated: its header declares shape {shape:?} ({bytes} bytes of data) but only {} bytes follow",
                len.saturating_sub(data_start)
            ),
        ));
    }
    Ok(ArrayRef {
        origin,
        file: path.to_path_buf(),
        offset: 0,
        deflated: false,
        compressed_len: 0,
        shape,
        elem,
        big_endian,
    })
}

/// The arrays of a `.npz` archive, by name (the member name without `.npy`).
fn npz_arrays(path: &Path) -> Result<Vec<(String, ArrayRef)>> {
    let bad = |msg: String| Error::malformed(path, msg);
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(f))
        .map_err(|e| bad(format!("not a valid .npz (zip) archive: {e}")))?;
    let mut out = Vec::new();
    for i in 0..zip.len() {
        let entry = zip
            .by_index_raw(i)
            .map_err(|e| bad(format!("damaged .npz member {i}: {e}")))?;
        let Some(name) = entry.name().strip_suffix(".npy").map(str::to_string) else {
            continue;
        };
        // pare inflates deflate members itself (flate2), so zip needs no codec features.
        let deflated = match entry.compression() {
            zip::CompressionMethod::STORE => false,
            m if m == zip::CompressionMethod::DEFLATE => true,
            _ => {
                let other = entry.compression();
                return Err(bad(format!(
                    "member {name:?} uses {other} compression; np.savez and np.savez_compressed write stored or deflate members"
                )));
            }
        };
        let offset = entry
            .data_start()
            .ok_or_else(|| bad(format!("member {name:?}: no data offset")))?;
        let (compressed_len, size) = (entry.compressed_size(), entry.size());
        drop(entry);
        let mut a = ArrayRef {
            origin: format!("{}:{name}", path.display()),
            file: path.to_path_buf(),
            offset,
            deflated,
            compressed_len,
            shape: vec![],
            elem: Elem::F32,
            big_endian: false,
        };
        let mut r = a.open_raw()?;
        let mut counted = CountingReader {
            inner: &mut r,
            n: 0,
        };
        let (shape, elem, big, bytes, _) = header_of(&mut counted, a.origin.clone(), path)?;
        let header_len = counted.n;
        let available = if deflated { size } else { compressed_len }.saturating_sub(header_len);
        if available < bytes {
            return Err(bad(format!(
                "member {name:?} is truncated: shape {shape:?} needs {bytes} bytes, {available} present"
            )));
        }
        (a.shape, a.elem, a.big_endian) = (shape, elem, big);
        out.push((name, a));
    }
    Ok(out)
}

impl ArrayRef {
    /// The member's stream before its header.
    fn open_raw(&self) -> Result<Box<dyn Read + Send>> {
        let io = |e| Error::io(&self.file, e);
        let mut f = BufReader::new(File::open(&self.file).map_err(io)?);
        f.seek(SeekFrom::Start(self.offset)).map_err(io)?;
        Ok(if self.deflated {
            Box::new(flate2::read::DeflateDecoder::new(
                f.take(self.compressed_len),
            ))
        } else {
            Box::new(f.take(self.compressed_len))
        })
    }
}

/// Counts the bytes read through it (npyz reads the header exactly, not ahead).
struct CountingReader<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n += k as u64;
        Ok(k)
    }
}

/// Reads `path` as a `.npy` (or `.npz` member `labels`) of integer class labels.
fn read_labels(a: &ArrayRef) -> Result<Vec<i64>> {
    let bad = |msg: String| Error::malformed(&a.file, format!("{}: {msg}", a.origin));
    let ok_shape = a.shape.len() == 1 || (a.shape.len() == 2 && a.shape[1] == 1);
    if !ok_shape {
        return Err(bad(format!(
            "labels must be one integer per sample (shape (N,) or (N, 1)), not shape {:?}",
            a.shape
        )));
    }
    if a.elem.is_float() || a.elem == Elem::Bool {
        return Err(bad(format!(
            "labels must be integers (class indices), not {}",
            a.elem.name()
        )));
    }
    let n = a.shape[0];
    if n > (1 << 31) {
        return Err(bad(format!("{n} labels: too many")));
    }
    let mut r = a.open()?;
    let mut buf = vec![0u8; n as usize * a.elem.size()];
    r.read_exact(&mut buf)
        .map_err(|e| bad(format!("reading the labels: {e}")))?;
    match decode(a.elem, a.big_endian, &buf) {
        Values::Int(v) => Ok(v),
        Values::Float(_) => unreachable!("checked above"),
    }
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

    fn random(opts: &DataOptions, decls: &[InputDecl], resizable: bool) -> Result<Self> {
        let mut shapes = Vec::new();
        for d in decls {
            let shape = match opts.input_shapes.iter().find(|(n, _)| n == &d.name) {
                Some((_, s)) => {
                    if let Some(dims) = &d.dims {
                        if dims.len() != s.len() {
                            return Err(usage(format!(
                                "--input-shape {}: rank {} but the input has rank {}",
                                d.name,
                                s.len(),
                                dims.len()
                            )));
                        }
                        for (ax, (dim, &v)) in dims.iter().zip(s).enumerate() {
                            if let Some(f) = dim.fixed() {
                                if f != v as u64 && (resizable || ax > 0) {
                                    return Err(usage(format!(
                                        "--input-shape {}: axis {ax} is fixed at {f} in the model, not {v}",
                                        d.name
                                    )));
                                }
                            }
                        }
                    }
                    s.clone()
                }
                None => {
                    let dims = d.dims.as_ref().ok_or_else(|| {
                        usage(format!(
                            "input {:?} has no declared shape; give one with --input-shape {}=…",
                            d.name, d.name
                        ))
                    })?;
                    dims.iter()
                        .enumerate()
                        .map(|(ax, dim)| match dim.fixed() {
                            Some(f) => f as usize,
                            None if ax == 0 && resizable => opts.batch_size,
                            None => 1,
                        })
                        .collect()
                }
            };
            shapes.push(shape);
        }
        let batch = batch_of(&shapes);
        let samples = opts.samples.unwrap_or(DEFAULT_RANDOM_SAMPLES);
        let summary = DataSummary {
            kind: "random",
            path: None,
            seed: Some(opts.seed),
            samples,
            batch_size: batch,
            inputs: decls
                .iter()
                .zip(&shapes)
                .map(|(d, s)| DataInput {
                    name: d.name.clone(),
                    shape: s.clone(),
                    data_dtype: "random".into(),
                    quantized: false,
                })
                .collect(),
            labels: None,
        };
        Ok(Dataset {
            feed: Feed::Random { seed: opts.seed },
            shapes,
            samples,
            batch,
            labels: None,
            summary,
            input_names: decls.iter().map(|d| d.name.clone()).collect(),
        })
    }

    fn arrays(
        path: &Path,
        opts: &DataOptions,
        decls: &[InputDecl],
        resizable: bool,
    ) -> Result<Self> {
        let is_npz = is_zip(path)?;
        let (arrays, labels, kind) = if is_npz {
            let mut all = npz_arrays(path)?;
            let labels = all
                .iter()
                .position(|(n, _)| n == "labels")
                .map(|i| all.remove(i).1);
            let mut picked = Vec::new();
            for d in decls {
                match all.iter().position(|(n, _)| n == &d.name) {
                    Some(i) => picked.push(all[i].1.clone()),
                    None if decls.len() == 1 && all.len() == 1 => picked.push(all[0].1.clone()),
                    None => {
                        return Err(usage(format!(
                            "{}: no array named {:?} for the model's input (arrays: {}; the model's inputs: {})",
                            path.display(),
                            d.name,
                            all.iter().map(|(n, _)| format!("{n:?}")).collect::<Vec<_>>().join(", "),
                            names(decls)
                        )))
                    }
                }
            }
            (picked, labels, "npz")
        } else {
            if decls.len() != 1 {
                return Err(usage(format!(
                    "{}: a .npy file feeds a single-input model; this one has {} inputs ({}): use a .npz with one array per input name",
                    path.display(),
                    decls.len(),
                    names(decls)
                )));
            }
            (vec![npy_array(path)?], None, "npy")
        };

        let n = arrays[0].shape.first().copied().unwrap_or(0);
        let mut shapes = Vec::new();
        let mut batch_fixed: Option<usize> = None;
        for (d, a) in decls.iter().zip(&arrays) {
            if a.shape.is_empty() {
                return Err(usage(format!(
                    "{}: a 0-d array cannot hold samples for input {:?}",
                    a.origin, d.name
                )));
            }
            if a.shape[0] != n {
                return Err(usage(format!(
                    "{}: {} samples, but {} has {n}",
                    a.origin, a.shape[0], arrays[0].origin
                )));
            }
            if let Some(dims) = &d.dims {
                if dims.len() != a.shape.len() {
                    return Err(usage(format!(
                        "{}: shape {:?} does not fit input {:?} of shape [{}] (rank {} vs {}; axis 0 of the data is the sample axis)",
                        a.origin,
                        a.shape,
                        d.name,
                        dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "),
                        a.shape.len(),
                        dims.len()
                    )));
                }
                for (ax, (dim, &v)) in dims.iter().zip(&a.shape).enumerate().skip(1) {
                    if let Some(f) = dim.fixed() {
                        if f != v {
                            return Err(usage(format!(
                                "{}: shape {:?} does not fit input {:?}: axis {ax} is {v}, the model expects {f}",
                                a.origin, a.shape, d.name
                            )));
                        }
                    }
                }
                if let Some(f) = dims[0].fixed() {
                    batch_fixed = Some(f as usize);
                }
            }
            check_dtype(a, d)?;
            let mut s: Vec<usize> = a.shape.iter().map(|&v| v as usize).collect();
            s[0] = 0; // set below
            shapes.push(s);
        }
        if n == 0 {
            return Err(usage(format!("{}: no samples", arrays[0].origin)));
        }
        let available = n as usize;
        let samples = opts.samples.map_or(available, |s| s.min(available));
        let batch = match batch_fixed {
            Some(b) => b.max(1),
            None if resizable => opts.batch_size.min(samples),
            None => 1,
        };
        for s in &mut shapes {
            s[0] = batch;
        }
        let summary = DataSummary {
            kind,
            path: Some(path.display().to_string()),
            seed: None,
            samples,
            batch_size: batch,
            inputs: decls
                .iter()
                .zip(&arrays)
                .zip(&shapes)
                .map(|((d, a), s)| DataInput {
                    name: d.name.clone(),
                    shape: s.clone(),
                    data_dtype: a.elem.name().into(),
                    quantized: false,
                })
                .collect(),
            labels: None,
        };
        let mut ds = Dataset {
            feed: Feed::Arrays(arrays),
            shapes,
            samples,
            batch,
            labels: None,
            summary,
            input_names: decls.iter().map(|d| d.name.clone()).collect(),
        };
        if let Some(l) = labels {
            let v = read_labels(&l)?;
            ds.set_labels(v, l.origin.clone())?;
        }
        Ok(ds)
    }

    fn test_sets(dir: &Path, opts: &DataOptions, decls: &[InputDecl]) -> Result<Self> {
        let mut set_dirs: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_dir()
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("test_data_set_"))
            })
            .collect();
        set_dirs.sort_by_key(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            (n.len(), n.to_string())
        });
        if set_dirs.is_empty() {
            if dir.join("input_0.pb").is_file() {
                set_dirs.push(dir.to_path_buf());
            } else {
                return Err(usage(format!(
                    "{}: a data folder must hold ONNX test_data_set_*/input_K.pb sets (or input_K.pb files)",
                    dir.display()
                )));
            }
        }
        if let Some(s) = opts.samples {
            set_dirs.truncate(s);
        }
        let mut sets = Vec::new();
        for d in &set_dirs {
            let files: Vec<PathBuf> = (0..decls.len())
                .map(|k| d.join(format!("input_{k}.pb")))
                .collect();
            if let Some(missing) = files.iter().find(|f| !f.is_file()) {
                return Err(usage(format!(
                    "{}: missing for the model's {} input(s) ({})",
                    missing.display(),
                    decls.len(),
                    names(decls)
                )));
            }
            sets.push(files);
        }
        // The first set fixes the shapes; every set must agree.
        let mut shapes = Vec::new();
        let mut dtypes = Vec::new();
        for (k, f) in sets[0].iter().enumerate() {
            let (t, dt) = read_pb_tensor(f)?;
            check_pb(f, &t, dt, &decls[k])?;
            shapes.push(t.shape().to_vec());
            dtypes.push(dt);
        }
        let batch = batch_of(&shapes);
        let summary = DataSummary {
            kind: "onnx-test-data",
            path: Some(dir.display().to_string()),
            seed: None,
            samples: sets.len() * batch,
            batch_size: batch,
            inputs: decls
                .iter()
                .zip(&shapes)
                .zip(&dtypes)
                .map(|((d, s), dt)| DataInput {
                    name: d.name.clone(),
                    shape: s.clone(),
                    data_dtype: dt.name().into(),
                    quantized: false,
                })
                .collect(),
            labels: None,
        };
        Ok(Dataset {
            samples: sets.len() * batch,
            feed: Feed::TestSets(sets),
            shapes,
            batch,
            labels: None,
            summary,
            input_names: decls.iter().map(|d| d.name.clone()).collect(),
        })
    }

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

fn is_zip(path: &Path) -> Result<bool> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic).map_err(|e| Error::io(path, e))?;
    Ok(n == 4 && &magic == b"PK\x03\x04")
}

/// Refuses data whose type cannot feed the input: floats feed float and quantized inputs,
/// integers feed integer inputs, booleans feed booleans.
fn check_dtype(a: &ArrayRef, d: &InputDecl) -> Result<()> {
    let ok = match (a.elem, d.dtype) {
        (e, DType::F32 | DType::F16 | DType::F64 | DType::BF16) => e.is_float(),
        (e, DType::I8 | DType::U8) => {
            (e.is_float() && d.quantized) || Elem::from_dtype(d.dtype) == Some(e)
        }
        (Elem::Bool, DType::Bool) => true,
        (e, t) => !e.is_float() && e != Elem::Bool && Elem::from_dtype(t).is_some(),
    };
    if ok {
        Ok(())
    } else {
        Err(usage(format!(
            "{}: {} data cannot feed input {:?}, which takes {}{}",
            a.origin,
            a.elem.name(),
            d.name,
            d.dtype,
            if !a.elem.is_float() && d.dtype.is_float() {
                " (convert it, with the model's preprocessing, e.g. x.astype(np.float32) / 255)"
            } else {
                ""
            }
        )))
    }
}

/// Reads an ONNX TensorProto file (test data) as a tract tensor.
fn read_pb_tensor(path: &Path) -> Result<(Tensor, Elem)> {
    use prost::Message;
    let bytes = crate::io::map_file(path)?;
    let t = crate::onnx_pb::TensorProto::decode(bytes)
        .map_err(|e| Error::malformed(path, format!("not an ONNX TensorProto: {e}")))?;
    let dtype = crate::onnx::dtype_from_onnx(t.data_type());
    let elem = Elem::from_dtype(dtype).ok_or_else(|| {
        Error::malformed(
            path,
            format!("tensor of type {dtype}: not a model input pare can feed"),
        )
    })?;
    let payload = crate::onnx::payload_of_standalone(&t, path)?;
    let shape: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    let tensor = values_tensor(decode(elem, false, &payload), elem, &shape)
        .map_err(|e| Error::malformed(path, e.to_string()))?;
    Ok((tensor, elem))
}

fn check_pb(path: &Path, t: &Tensor, elem: Elem, d: &InputDecl) -> Result<()> {
    if let Some(dims) = &d.dims {
        let fits = dims.len() == t.rank()
            && dims
                .iter()
                .zip(t.shape())
                .all(|(dim, &v)| dim.fixed().is_none_or(|f| f == v as u64));
        if !fits {
            return Err(usage(format!(
                "{}: shape {:?} does not fit input {:?} [{}]",
                path.display(),
                t.shape(),
                d.name,
                dims.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    if Elem::from_dtype(d.dtype) != Some(elem) {
        return Err(usage(format!(
            "{}: {} data for input {:?}, which takes {}",
            path.display(),
            elem.name(),
            d.name,
            d.dtype
        )));
    }
    Ok(())
}

/// A tensor of `shape` holding `values` (in their natural tract type).
fn values_tensor(values: Values, elem: Elem, shape: &[usize]) -> TractResult<Tensor> {
    Ok(match values {
        Values::Float(v) => match elem {
            Elem::F64 => Tensor::from_shape(shape, &v)?,
            _ => Tensor::from_shape(shape, &v.iter().map(|&x| x as f32).collect::<Vec<_>>())?,
        },
        Values::Int(v) if elem == Elem::Bool => {
            Tensor::from_shape(shape, &v.iter().map(|&x| x != 0).collect::<Vec<_>>())?
        }
        Values::Int(v) => Tensor::from_shape(shape, &v)?,
    })
}

/// A pass over a [`Dataset`].
pub struct Batches<'a> {
    ds: &'a Dataset,
    dts: Vec<DatumType>,
    streams: Vec<Box<dyn Read + Send>>,
    next: usize,
    rng: Option<rand::rngs::SmallRng>,
}

impl Batches<'_> {
    /// The next run's inputs, or `None` at the end of the data.
    pub fn next_batch(&mut self) -> Result<Option<Batch>> {
        let ds = self.ds;
        if self.next >= ds.samples {
            return Ok(None);
        }
        let first = self.next;
        let valid = (ds.samples - first).min(ds.batch);
        let mut tensors = TVec::new();
        match &ds.feed {
            Feed::Random { .. } => {
                let rng = self.rng.as_mut().expect("random feed has an rng");
                for (s, &dt) in ds.shapes.iter().zip(&self.dts) {
                    let t = crate::verify::random_tensor(rng, dt, s)
                        .map_err(|e| Error::Usage(format!("generating random inputs: {e}")))?;
                    tensors.push(t);
                }
            }
            Feed::Arrays(arrays) => {
                for (k, a) in arrays.iter().enumerate() {
                    let row = a.row_elems()? as usize * a.elem.size();
                    let mut buf = vec![0u8; row * valid];
                    self.streams[k].read_exact(&mut buf).map_err(|e| {
                        Error::malformed(
                            &a.file,
                            format!(
                                "{}: reading samples {first}..{}: {e}",
                                a.origin,
                                first + valid
                            ),
                        )
                    })?;
                    // Pad a short last batch by repeating its last sample.
                    for _ in valid..ds.batch {
                        buf.extend_from_within(buf.len() - row..);
                    }
                    let values = decode(a.elem, a.big_endian, &buf);
                    if let Values::Float(v) = &values {
                        if let Some(i) = v[..row / a.elem.size() * valid]
                            .iter()
                            .position(|x| !x.is_finite())
                        {
                            let per = (row / a.elem.size()).max(1);
                            return Err(Error::Usage(format!(
                                "{}: sample {} holds {} (input {:?}); validation data must be finite",
                                a.origin,
                                first + i / per,
                                v[i],
                                ds.input_names[k]
                            )));
                        }
                    }
                    let t = to_input(values, a.elem, &ds.shapes[k], self.dts[k])
                        .map_err(|e| Error::Usage(format!("{}: {e}", a.origin)))?;
                    tensors.push(t);
                }
            }
            Feed::TestSets(sets) => {
                let set = &sets[first / ds.batch];
                for (k, f) in set.iter().enumerate() {
                    let (t, _) = read_pb_tensor(f)?;
                    if t.shape() != ds.shapes[k].as_slice() {
                        return Err(Error::Usage(format!(
                            "{}: shape {:?} differs from the first set's {:?}; every set must have the same shapes",
                            f.display(),
                            t.shape(),
                            ds.shapes[k]
                        )));
                    }
                    if let Ok(v) = t.cast_to::<f64>() {
                        if let Some(x) = v
                            .to_plain_array_view::<f64>()
                            .ok()
                            .and_then(|a| a.iter().copied().find(|x| !x.is_finite()))
                        {
                            return Err(Error::Usage(format!(
                                "{}: holds {x}; validation data must be finite",
                                f.display()
                            )));
                        }
                    }
                    let t = t
                        .cast_to_dt(self.dts[k].unquantized())
                        .map_err(|e| Error::Usage(format!("{}: {e}", f.display())))?
                        .into_owned();
                    tensors.push(t);
                }
            }
        }
        self.next += valid;
        Ok(Some(Batch {
            tensors,
            first,
            valid,
        }))
    }
}

/// Converts decoded data to the model input type `dt`: floats cast to the float type or
/// quantized with the input's parameters; integers range-checked into the integer type.
fn to_input(values: Values, elem: Elem, shape: &[usize], dt: DatumType) -> TractResult<Tensor> {
    if dt.is_quantized() && elem.is_float() {
        let Values::Float(v) = values else {
            unreachable!("float elements decode to floats")
        };
        let (zp, scale) = dt.zp_scale();
        let (lo, hi) = match dt.unquantized() {
            DatumType::U8 => (0i64, 255i64),
            _ => (-128, 127),
        };
        let q: Vec<i64> = v
            .iter()
            .map(|&x| ((x / scale as f64).round() as i64 + zp as i64).clamp(lo, hi))
            .collect();
        let mut t = Tensor::from_shape(shape, &q)?
            .cast_to_dt(dt.unquantized())?
            .into_owned();
        unsafe { t.set_datum_type(dt) };
        return Ok(t);
    }
    if let Values::Int(v) = &values {
        let (lo, hi): (i64, i64) = match dt.unquantized() {
            DatumType::I8 => (i8::MIN as i64, i8::MAX as i64),
            DatumType::U8 => (0, u8::MAX as i64),
            DatumType::I16 => (i16::MIN as i64, i16::MAX as i64),
            DatumType::U16 => (0, u16::MAX as i64),
            DatumType::I32 => (i32::MIN as i64, i32::MAX as i64),
            DatumType::U32 => (0, u32::MAX as i64),
            DatumType::Bool => (0, 1),
            _ => (i64::MIN, i64::MAX),
        };
        if let Some(x) = v.iter().find(|&&x| x < lo || x > hi) {
            return Err(TractError::msg(format!(
                "value {x} does not fit the input's type {dt:?}"
            )));
        }
    }
    let t = values_tensor(values, elem, shape)?;
    let mut t = t.cast_to_dt(dt.unquantized())?.into_owned();
    if dt.is_quantized() {
        unsafe { t.set_datum_type(dt) };
    }
    Ok(t)
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
    use super::*;

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
