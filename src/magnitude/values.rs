//! Reading weight magnitudes and writing zeros, each in the weight's stored type.
//!
//! A weight's magnitude is what it contributes at run time: |w| for float types, and the
//! dequantized |q − zero_point| · scale for quantized integers (per tensor or per channel).
//! A pruned element becomes +0.0, or its channel's zero point, so that it dequantizes to
//! exactly 0.

use super::CHUNK;
use crate::model::{DType, Quant};
use rayon::prelude::*;

/// Magnitude of one little-endian float32 (4 bytes); NaN counts as +∞ (never pruned first).
#[inline]
pub fn f32_magnitude(b: &[u8]) -> f32 {
    let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]).abs();
    if v.is_nan() {
        f32::INFINITY
    } else {
        v
    }
}

/// How one stored tensor's elements map to magnitudes and what its zero is.
#[derive(Debug, Clone)]
pub struct Codec {
    dtype: DType,
    size: usize,
    /// Per channel (one entry when per-tensor): scale and zero point.
    scale: Vec<f32>,
    zero_point: Vec<i64>,
    /// Elements per step along the quantization axis, and that axis' length.
    inner: usize,
    channels: usize,
}

impl Codec {
    /// `Err` carries the reason the tensor cannot be pruned in its stored type.
    pub fn new(dtype: DType, shape: &[u64], quant: Option<&Quant>) -> Result<Codec, String> {
        let size = match dtype {
            DType::F32 | DType::F64 | DType::F16 | DType::BF16 => dtype.size().expect("sized"),
            DType::I8 | DType::U8 | DType::I16 | DType::U16 => dtype.size().expect("sized"),
            other => {
                return Err(format!(
                    "stored as {other}; pare prunes float (f32, f64, f16, bf16) and 8/16-bit integer weights"
                ))
            }
        };
        let (scale, zero_point, inner, channels) = match quant {
            None => (vec![1.0], vec![0], 1, 1),
            Some(q) => {
                let n = q.scale.len().max(q.zero_point.len()).max(1);
                let pick = |v: &[f32]| -> Vec<f32> {
                    if v.is_empty() {
                        vec![1.0; n]
                    } else {
                        v.to_vec()
                    }
                };
                let scale = pick(&q.scale);
                let zero_point = if q.zero_point.is_empty() {
                    vec![0; n]
                } else {
                    q.zero_point.clone()
                };
                if n > 1 {
                    let axis = q.axis.ok_or("per-channel quantization without an axis")?;
                    let channels = *shape
                        .get(axis)
                        .ok_or_else(|| format!("quantization axis {axis} is outside the shape"))?
                        as usize;
                    let broadcast = |len: usize| len == channels || len == 1;
                    if !broadcast(scale.len()) || !broadcast(zero_point.len()) {
                        return Err(format!(
                            "{} scales and {} zero points for {channels} channels on axis {axis}",
                            scale.len(),
                            zero_point.len()
                        ));
                    }
                    let inner: u64 = shape[axis + 1..].iter().product();
                    (scale, zero_point, inner.max(1) as usize, channels)
                } else {
                    (scale, zero_point, 1, 1)
                }
            }
        };
        if dtype.is_float() && zero_point.iter().any(|&z| z != 0) {
            return Err("float weight with a nonzero zero point".into());
        }
        let (lo, hi) = match dtype {
            DType::I8 => (i8::MIN as i64, i8::MAX as i64),
            DType::U8 => (0, u8::MAX as i64),
            DType::I16 => (i16::MIN as i64, i16::MAX as i64),
            DType::U16 => (0, u16::MAX as i64),
            _ => (0, 0),
        };
        if let Some(z) = zero_point
            .iter()
            .find(|&&z| !dtype.is_float() && !(lo..=hi).contains(&z))
        {
            return Err(format!("zero point {z} does not fit {dtype}"));
        }
        if scale.iter().any(|s| !s.is_finite()) {
            return Err("a quantization scale is not finite".into());
        }
        Ok(Codec {
            dtype,
            size,
            scale,
            zero_point,
            inner,
            channels,
        })
    }

    /// Channel of element `e` along the quantization axis (0 when per tensor).
    pub(crate) fn channel(&self, e: usize) -> usize {
        if self.channels <= 1 {
            0
        } else {
            (e / self.inner) % self.channels
        }
    }

    fn params(&self, c: usize) -> (f32, i64) {
        let s = *self.scale.get(c).unwrap_or(&self.scale[0]);
        let z = *self.zero_point.get(c).unwrap_or(&self.zero_point[0]);
        (s.abs(), z)
    }

    /// Real (dequantized) value of element `e` (stored bytes `b`), NaN included.
    fn real(&self, e: usize, b: &[u8]) -> f32 {
        match self.dtype {
            DType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            DType::F64 => f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32,
            DType::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
            DType::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            int => {
                let q = match int {
                    DType::I8 => b[0] as i8 as i64,
                    DType::U8 => b[0] as i64,
                    DType::I16 => i16::from_le_bytes([b[0], b[1]]) as i64,
                    _ => u16::from_le_bytes([b[0], b[1]]) as i64,
                };
                let (s, z) = self.params(self.channel(e));
                (q - z) as f32 * s
            }
        }
    }

    /// Magnitude of element `e`. NaN weights get +∞: they are never preferred for pruning,
    /// and pruning never creates one.
    fn magnitude(&self, e: usize, b: &[u8]) -> f32 {
        let v = self.real(e, b).abs();
        if v.is_nan() {
            f32::INFINITY
        } else {
            v
        }
    }

    /// Real value of element `e`; NaN reads as 0.
    fn value(&self, e: usize, b: &[u8]) -> f32 {
        let v = self.real(e, b);
        if v.is_nan() {
            0.0
        } else {
            v
        }
    }

    /// Real (dequantized) values of every element of `data`, computed on all cores.
    pub fn values(&self, data: &[u8]) -> Vec<f32> {
        data.par_chunks_exact(self.size)
            .with_min_len(CHUNK)
            .enumerate()
            .map(|(e, c)| self.value(e, c))
            .collect()
    }

    /// Magnitudes of every element of `data`, computed on all cores.
    pub fn magnitudes(&self, data: &[u8]) -> Vec<f32> {
        // Collected straight into place (no zero-filled buffer first).
        match self.dtype {
            // The common case, without per-element dispatch.
            DType::F32 => data
                .par_chunks_exact(4)
                .with_min_len(CHUNK)
                .map(f32_magnitude)
                .collect(),
            _ => data
                .par_chunks_exact(self.size)
                .with_min_len(CHUNK)
                .enumerate()
                .map(|(e, c)| self.magnitude(e, c))
                .collect(),
        }
    }

    /// Number of elements in `data`.
    pub fn count(&self, data: &[u8]) -> usize {
        data.len() / self.size
    }

    /// Magnitudes of `data`'s elements, handed to `f` in order, [`CHUNK`] at a time (one
    /// buffer reused: nothing the size of the tensor is allocated).
    pub fn visit_magnitudes(&self, data: &[u8], f: &mut dyn FnMut(&[f32])) {
        let mut buf = Vec::with_capacity(CHUNK);
        for (ci, chunk) in data.chunks(CHUNK * self.size).enumerate() {
            buf.clear();
            let start = ci * CHUNK;
            match self.dtype {
                DType::F32 => buf.extend(chunk.chunks_exact(4).map(f32_magnitude)),
                _ => buf.extend(
                    chunk
                        .chunks_exact(self.size)
                        .enumerate()
                        .map(|(j, c)| self.magnitude(start + j, c)),
                ),
            }
            f(&buf);
        }
    }

    /// `data` with every element whose `mask` entry is set replaced by zero (+0.0, or the
    /// channel's zero point).
    pub fn zeroed(&self, data: &[u8], mask: &[bool]) -> Vec<u8> {
        let mut out = data.to_vec();
        let size = self.size;
        out.par_chunks_mut(CHUNK * size)
            .enumerate()
            .for_each(|(ci, chunk)| {
                let start = ci * CHUNK;
                for (j, el) in chunk.chunks_exact_mut(size).enumerate() {
                    let e = start + j;
                    if mask[e] {
                        self.write_zero(e, el);
                    }
                }
            });
        out
    }

    /// `data` with the elements selected by `cut` (over this tensor's element magnitudes
    /// `mags`) replaced by zero: one streaming pass, no mask.
    pub fn zeroed_cut(&self, data: &[u8], mags: &[f32], cut: &super::select::Cut) -> Vec<u8> {
        let size = self.size;
        if self.dtype == DType::F32 {
            // The common case: copy and zero in one parallel pass over fresh (untouched,
            // kernel-zeroed) memory.
            let mut out = vec![0u8; data.len()];
            out.par_chunks_mut(CHUNK * size)
                .zip(data.par_chunks(CHUNK * size))
                .zip(mags.par_chunks(CHUNK))
                .enumerate()
                .for_each(|(ci, ((dst, src), m))| cut.copy_zeroed_f32(ci, m, src, dst));
            return out;
        }
        let mut out = data.to_vec();
        out.par_chunks_mut(CHUNK * size)
            .zip(mags.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(ci, (chunk, m))| {
                let start = ci * CHUNK;
                cut.for_each_in_chunk(ci, m, |j| {
                    self.write_zero(start + j, &mut chunk[j * size..(j + 1) * size])
                });
            });
        out
    }

    /// The value nearest `v` that element `e` can hold (its quantization grid, clamped to the
    /// integer range; the type's rounding for floats).
    pub fn snap(&self, e: usize, v: f64) -> f64 {
        match self.dtype {
            DType::F32 => v as f32 as f64,
            DType::F64 => v,
            DType::F16 => half::f16::from_f64(v).to_f64(),
            DType::BF16 => half::bf16::from_f64(v).to_f64(),
            _ => {
                let (s, z) = self.params(self.channel(e));
                (self.quantize(e, v) - z) as f64 * s as f64
            }
        }
    }

    /// The stored integer nearest real value `v` for element `e`.
    fn quantize(&self, e: usize, v: f64) -> i64 {
        let (lo, hi) = match self.dtype {
            DType::I8 => (i8::MIN as i64, i8::MAX as i64),
            DType::U8 => (0, u8::MAX as i64),
            DType::I16 => (i16::MIN as i64, i16::MAX as i64),
            _ => (0, u16::MAX as i64),
        };
        let (s, z) = self.params(self.channel(e));
        let q = if s > 0.0 { (v / s as f64).round() } else { 0.0 };
        (q.clamp(-(1i64 << 40) as f64, (1i64 << 40) as f64) as i64 + z).clamp(lo, hi)
    }

    /// Whether the stored type is an integer (quantized) one.
    pub fn is_integer(&self) -> bool {
        !self.dtype.is_float()
    }

    /// Whether the quantization is per channel.
    pub fn per_channel(&self) -> bool {
        self.channels > 1
    }

    /// Stored bytes of real values `values` (quantized with each element's channel
    /// parameters for integer types).
    pub fn encode(&self, values: &[f64]) -> Vec<u8> {
        let mut out = Vec::with_capacity(values.len() * self.size);
        for (e, &v) in values.iter().enumerate() {
            match self.dtype {
                DType::F32 => out.extend_from_slice(&(v as f32).to_le_bytes()),
                DType::F64 => out.extend_from_slice(&v.to_le_bytes()),
                DType::F16 => out.extend_from_slice(&half::f16::from_f64(v).to_le_bytes()),
                DType::BF16 => out.extend_from_slice(&half::bf16::from_f64(v).to_le_bytes()),
                DType::I8 | DType::U8 => out.push(self.quantize(e, v) as u8),
                _ => out.extend_from_slice(&(self.quantize(e, v) as u16).to_le_bytes()),
            }
        }
        out
    }

    fn write_zero(&self, e: usize, el: &mut [u8]) {
        match self.dtype {
            DType::F32 | DType::F64 | DType::F16 | DType::BF16 => el.fill(0),
            DType::I8 | DType::U8 => el[0] = self.params(self.channel(e)).1 as u8,
            _ => el.copy_from_slice(&(self.params(self.channel(e)).1 as u16).to_le_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantized_magnitudes_use_each_channels_zero_point_and_scale() {
        let q = Quant {
            scale: vec![0.5, 2.0],
            zero_point: vec![10, 0],
            axis: Some(0),
        };
        let c = Codec::new(DType::U8, &[2, 2], Some(&q)).unwrap();
        let data = [10u8, 14, 0, 3];
        assert_eq!(c.magnitudes(&data), vec![0.0, 2.0, 0.0, 6.0]);
        let z = c.zeroed(&data, &[true, true, true, true]);
        assert_eq!(z, vec![10, 10, 0, 0]);
        // Encoding rounds onto each channel's grid; zero is the zero point.
        assert_eq!(c.encode(&[0.0, 2.2, 0.0, 1000.0]), vec![10, 14, 0, 255]);
        assert_eq!(c.snap(1, 2.2), 2.0);
        assert_eq!(c.snap(3, 5.1), 6.0);
    }

    #[test]
    fn half_types_are_read_and_zeroed_in_place() {
        let data: Vec<u8> = [-1.5f32, 0.25]
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        let c = Codec::new(DType::F16, &[2], None).unwrap();
        assert_eq!(c.magnitudes(&data), vec![1.5, 0.25]);
        let z = c.zeroed(&data, &[false, true]);
        assert_eq!(&z[..2], &data[..2]);
        assert_eq!(&z[2..], &[0, 0]);
    }

    #[test]
    fn nan_is_never_the_smallest() {
        let data: Vec<u8> = [f32::NAN, 0.5]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let c = Codec::new(DType::F32, &[2], None).unwrap();
        assert_eq!(c.magnitudes(&data), vec![f32::INFINITY, 0.5]);
    }

    #[test]
    fn unsupported_types_and_bad_quantization_are_reasons_not_panics() {
        assert!(Codec::new(DType::I32, &[4], None).is_err());
        let q = Quant {
            scale: vec![1.0, 1.0, 1.0],
            zero_point: vec![0, 0, 0],
            axis: Some(0),
        };
        assert!(Codec::new(DType::I8, &[2, 2], Some(&q)).is_err());
        let q = Quant {
            scale: vec![1.0],
            zero_point: vec![300],
            axis: None,
        };
        assert!(Codec::new(DType::I8, &[2, 2], Some(&q)).is_err());
    }
}
