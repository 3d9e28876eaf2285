//! NumPy files: `.npy` headers and `.npz` archives read as streamed arrays (any element type
//! NumPy writes, either byte order), and integer labels.

use super::{usage, InputDecl};
use crate::error::{Error, Result};
use crate::model::DType;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use tract_onnx::prelude::*;

/// Element types of NumPy arrays pare reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Elem {
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
    pub(super) fn size(self) -> usize {
        match self {
            Elem::I8 | Elem::U8 | Elem::Bool => 1,
            Elem::F16 | Elem::I16 | Elem::U16 => 2,
            Elem::F32 | Elem::I32 | Elem::U32 => 4,
            Elem::F64 | Elem::I64 | Elem::U64 => 8,
        }
    }
    pub(super) fn is_float(self) -> bool {
        matches!(self, Elem::F16 | Elem::F32 | Elem::F64)
    }
    pub(super) fn name(self) -> &'static str {
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
    pub(super) fn from_dtype(dt: DType) -> Option<Elem> {
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
pub(super) enum Values {
    Float(Vec<f64>),
    Int(Vec<i64>),
}

pub(super) fn decode(elem: Elem, big_endian: bool, b: &[u8]) -> Values {
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
pub(super) struct ArrayRef {
    /// For messages: `x.npy` or `data.npz:images`.
    pub(super) origin: String,
    pub(super) file: PathBuf,
    /// Offset of the `.npy` stream in `file` (0 for a `.npy` file).
    pub(super) offset: u64,
    /// Deflate-compressed (`np.savez_compressed`) rather than stored.
    pub(super) deflated: bool,
    pub(super) compressed_len: u64,
    pub(super) shape: Vec<u64>,
    pub(super) elem: Elem,
    pub(super) big_endian: bool,
}

impl ArrayRef {
    pub(super) fn row_elems(&self) -> Result<u64> {
        self.shape[1..]
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| {
                Error::malformed(&self.file, format!("{}: shape overflows", self.origin))
            })
    }

    /// Opens the array's stream positioned at its first element.
    pub(super) fn open(&self) -> Result<Box<dyn Read + Send>> {
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
pub(super) fn header_of(
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

pub(super) fn npy_array(path: &Path) -> Result<ArrayRef> {
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
pub(super) fn npz_arrays(path: &Path) -> Result<Vec<(String, ArrayRef)>> {
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
    pub(super) fn open_raw(&self) -> Result<Box<dyn Read + Send>> {
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
pub(super) struct CountingReader<R> {
    pub(super) inner: R,
    pub(super) n: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n += k as u64;
        Ok(k)
    }
}

/// Reads `path` as a `.npy` (or `.npz` member `labels`) of integer class labels.
pub(super) fn read_labels(a: &ArrayRef) -> Result<Vec<i64>> {
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

pub(super) fn is_zip(path: &Path) -> Result<bool> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic).map_err(|e| Error::io(path, e))?;
    Ok(n == 4 && &magic == b"PK\x03\x04")
}

/// Refuses data whose type cannot feed the input: floats feed float and quantized inputs,
/// integers feed integer inputs, booleans feed booleans.
pub(super) fn check_dtype(a: &ArrayRef, d: &InputDecl) -> Result<()> {
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

/// A tensor of `shape` holding `values` (in their natural tract type).
pub(super) fn values_tensor(values: Values, elem: Elem, shape: &[usize]) -> TractResult<Tensor> {
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
