//! Element types shared by both formats, and the few per-type operations the algorithms need.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F16,
    BF16,
    F64,
    I4,
    I8,
    U8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    Bool,
    String,
    Complex64,
    Complex128,
    /// Anything else (resource, variant, float8 …): carried through, never interpreted.
    Other,
}

impl DType {
    /// Bytes per element when stored densely, little-endian; `None` for variable-size or
    /// sub-byte types.
    pub fn size(self) -> Option<usize> {
        use DType::*;
        Some(match self {
            F32 | I32 | U32 => 4,
            F16 | BF16 | I16 | U16 => 2,
            F64 | I64 | U64 | Complex64 => 8,
            Complex128 => 16,
            I8 | U8 | Bool => 1,
            I4 | String | Other => return None,
        })
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16 | DType::F64)
    }

    pub fn name(self) -> &'static str {
        use DType::*;
        match self {
            F32 => "f32",
            F16 => "f16",
            BF16 => "bf16",
            F64 => "f64",
            I4 => "i4",
            I8 => "i8",
            U8 => "u8",
            I16 => "i16",
            U16 => "u16",
            I32 => "i32",
            U32 => "u32",
            I64 => "i64",
            U64 => "u64",
            Bool => "bool",
            String => "string",
            Complex64 => "complex64",
            Complex128 => "complex128",
            Other => "other",
        }
    }

    /// Counts elements whose stored value is not zero (for quantized tensors pass the zero
    /// points: a value equal to its zero point dequantizes to exactly 0).
    pub fn count_nonzero(self, bytes: &[u8], zero_point: Option<i64>) -> Option<u64> {
        let zp = zero_point.unwrap_or(0);
        let n = match self {
            // ±0 are the only zeros: mask the sign bit. Large tensors are counted on all cores.
            DType::F32 => {
                use rayon::prelude::*;
                bytes
                    .par_chunks(1 << 20)
                    .map(|c| {
                        c.chunks_exact(4)
                            .filter(|c| {
                                u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & 0x7fff_ffff != 0
                            })
                            .count()
                    })
                    .sum()
            }
            DType::F64 => bytes
                .chunks_exact(8)
                .filter(|c| f64::from_le_bytes(<[u8; 8]>::try_from(*c).unwrap()) != 0.0)
                .count(),
            // ±0 are the only zeros of IEEE half types: mask the sign bit.
            DType::F16 | DType::BF16 => bytes
                .chunks_exact(2)
                .filter(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7fff != 0)
                .count(),
            DType::I8 => bytes.iter().filter(|&&b| b as i8 as i64 != zp).count(),
            DType::U8 | DType::Bool => bytes.iter().filter(|&&b| b as i64 != zp).count(),
            DType::I16 => bytes
                .chunks_exact(2)
                .filter(|c| i16::from_le_bytes([c[0], c[1]]) as i64 != zp)
                .count(),
            DType::U16 => bytes
                .chunks_exact(2)
                .filter(|c| u16::from_le_bytes([c[0], c[1]]) as i64 != zp)
                .count(),
            DType::I32 => bytes
                .chunks_exact(4)
                .filter(|c| i32::from_le_bytes(<[u8; 4]>::try_from(*c).unwrap()) as i64 != zp)
                .count(),
            DType::U32 => bytes
                .chunks_exact(4)
                .filter(|c| u32::from_le_bytes(<[u8; 4]>::try_from(*c).unwrap()) as i64 != zp)
                .count(),
            DType::I64 | DType::U64 => bytes
                .chunks_exact(8)
                .filter(|c| i64::from_le_bytes(<[u8; 8]>::try_from(*c).unwrap()) != zp)
                .count(),
            _ => return None,
        };
        Some(n as u64)
    }
}

impl DType {
    /// Dense little-endian values as f64, for the numeric types quantization parameters and
    /// weights use (float, 8/16/32-bit integers); `None` for anything else.
    pub fn decode_f64(self, b: &[u8]) -> Option<Vec<f64>> {
        Some(match self {
            DType::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
            DType::F16 => b
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
                .collect(),
            DType::BF16 => b
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
                .collect(),
            DType::I8 => b.iter().map(|&v| v as i8 as f64).collect(),
            DType::U8 => b.iter().map(|&v| v as f64).collect(),
            DType::I16 => b
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]) as f64)
                .collect(),
            DType::U16 => b
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]) as f64)
                .collect(),
            DType::I32 => b
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
            _ => return None,
        })
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
