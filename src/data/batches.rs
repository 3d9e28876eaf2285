//! One pass over a dataset: batches of tract tensors in the model's input types, float data
//! quantized for int8 inputs, the last batch padded.

use super::feeds::read_pb_tensor;
use super::npy::{decode, values_tensor, Elem, Values};
use super::{Batch, Dataset, Feed};
use crate::error::{Error, Result};
use std::io::Read;
use tract_onnx::prelude::*;

/// A pass over a [`Dataset`].
pub struct Batches<'a> {
    pub(super) ds: &'a Dataset,
    pub(super) dts: Vec<DatumType>,
    pub(super) streams: Vec<Box<dyn Read + Send>>,
    pub(super) next: usize,
    pub(super) rng: Option<rand::rngs::SmallRng>,
}

impl Batches<'_> {
    /// The next run's inputs, or `None` at the end of the data.
    pub fn next_batch(&mut self) -> Result<Option<Batch>> {
        crate::cancel::check()?;
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
pub(super) fn to_input(
    values: Values,
    elem: Elem,
    shape: &[usize],
    dt: DatumType,
) -> TractResult<Tensor> {
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
