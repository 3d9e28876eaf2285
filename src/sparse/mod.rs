//! Sparse tensor encodings, format-neutral: TFLite's `SparsityParameters` (a traversal order
//! over the dimensions and optional dense blocks, each level stored DENSE or SPARSE_CSR) and
//! ONNX's `SparseTensorProto` (ascending linear indices of the non-zero values).
//!
//! "Zero" is the all-zero byte pattern of an element (`0.0`, `0`; `-0.0` is kept as a value),
//! which is what densifying fills in, so encode → decode is exact bit for bit.
//!
//! Decoders check everything a damaged file can get wrong (index ranges, ordering, segment
//! arrays, value counts, sizes) before writing a byte, and never allocate more than
//! [`max_dense_bytes`] allows.
//!
//! Layer: core (imports its own layer and the ones below; see ARCHITECTURE.md).

mod coo;
mod levels;

pub use coo::{coo_densify, coo_encode, count_nonzero, count_nonzero_upto};
pub use levels::{candidate_plans, densify, encode, index_width, plan_bytes, stored_bytes};

use serde::Serialize;

/// How constants are stored in a written model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// As they were read: sparse constants stay sparse, dense ones dense.
    Keep,
    /// Each eligible weight in the smaller of its dense and sparse encodings.
    Auto,
    /// Every eligible weight sparse, smaller or not.
    Sparse,
    /// Every constant dense (a sparse model densified back).
    Dense,
}

impl std::str::FromStr for Storage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "keep" => Ok(Storage::Keep),
            "auto" => Ok(Storage::Auto),
            "sparse" => Ok(Storage::Sparse),
            "dense" => Ok(Storage::Dense),
            _ => Err(format!("{s:?}: expected keep, auto, sparse or dense")),
        }
    }
}

impl std::fmt::Display for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Storage::Keep => "keep",
            Storage::Auto => "auto",
            Storage::Sparse => "sparse",
            Storage::Dense => "dense",
        })
    }
}

/// What the storage pass of a write does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoragePolicy {
    pub storage: Storage,
    /// Also try TFLite block layouts of (rows, cols) on the first and last dimensions (the
    /// blocks of `--pattern block:RxC`).
    pub block: Option<(usize, usize)>,
}

impl StoragePolicy {
    pub fn new(storage: Storage) -> Self {
        StoragePolicy {
            storage,
            block: None,
        }
    }
}

/// One constant stored sparse in a written model.
#[derive(Debug, Clone, Serialize)]
pub struct SparseTensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Fraction of non-zero elements.
    pub density: f64,
    pub dense_bytes: u64,
    /// Values plus index arrays.
    pub stored_bytes: u64,
    /// The encoding: TFLite levels (`d0,d1:csr`, blocks) or ONNX `coo int64`.
    pub layout: String,
}

/// What the storage pass did.
#[derive(Debug, Clone, Serialize)]
pub struct StorageReport {
    pub storage: Storage,
    /// Dense constants this write stored sparse.
    pub made_sparse: usize,
    /// Sparse constants this write stored dense.
    pub densified: usize,
    /// Every sparse constant of the written model.
    pub sparse_tensors: Vec<SparseTensor>,
    /// Their bytes dense, and as stored.
    pub sparse_dense_bytes: u64,
    pub sparse_stored_bytes: u64,
}

impl StorageReport {
    pub fn new(storage: Storage) -> Self {
        StorageReport {
            storage,
            made_sparse: 0,
            densified: 0,
            sparse_tensors: vec![],
            sparse_dense_bytes: 0,
            sparse_stored_bytes: 0,
        }
    }

    /// Fills the totals from `sparse_tensors`.
    pub fn total(&mut self) {
        self.sparse_dense_bytes = self.sparse_tensors.iter().map(|t| t.dense_bytes).sum();
        self.sparse_stored_bytes = self.sparse_tensors.iter().map(|t| t.stored_bytes).sum();
    }
}

/// One level of a TFLite sparse layout, in traversal order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Level {
    /// Every index of the (blocked) dimension is present.
    Dense { size: usize },
    /// Compressed: entry `p` of the parent level owns `indices[segments[p]..segments[p + 1]]`.
    Csr {
        segments: Vec<u32>,
        indices: Vec<u32>,
    },
}

/// TFLite `SparsityParameters` in neutral form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// A permutation of the tensor's dimensions, then the block dimensions `n, n+1, …`.
    pub traversal_order: Vec<usize>,
    /// The original dimension each block dimension subdivides, ascending.
    pub block_map: Vec<usize>,
    /// One per entry of `traversal_order`.
    pub levels: Vec<Level>,
}

/// How to encode: the shape of a [`Layout`] before the data decides its index arrays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Permutation of the tensor's dimensions (block dimensions follow implicitly).
    pub order: Vec<usize>,
    /// (dimension, block size), dimensions ascending; stored as dense blocks.
    pub blocks: Vec<(usize, usize)>,
    /// Position in `order` of the one SPARSE_CSR level; every other level is DENSE.
    pub csr: usize,
}

/// Deepest layout accepted (rank plus block dimensions).
pub const MAX_LEVELS: usize = 16;

/// The largest dense tensor a sparse one may expand to: 64 MiB, or 1024 times the bytes it is
/// stored in, whichever is larger. Real pruned weights are a few times larger dense than
/// sparse; a damaged shape must not become a huge allocation.
pub fn max_dense_bytes(stored: usize) -> usize {
    (stored.saturating_mul(1024)).max(64 << 20)
}

fn is_zero(e: &[u8]) -> bool {
    e.iter().all(|&b| b == 0)
}

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for a in (0..shape.len().saturating_sub(1)).rev() {
        s[a] = s[a + 1] * shape[a + 1];
    }
    s
}

fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn csr_of_a_matrix_matches_tflite() {
        // The example of TFLite's sparsity documentation: a 4x4 matrix stored [DENSE, CSR].
        let m = f32s(&[
            1., 0., 2., 3., //
            0., 4., 0., 0., //
            0., 0., 5., 0., //
            0., 0., 0., 6.,
        ]);
        let plan = Plan {
            order: vec![0, 1],
            blocks: vec![],
            csr: 1,
        };
        let (layout, values) = encode(&[4, 4], 4, &m, &plan);
        assert_eq!(values, f32s(&[1., 2., 3., 4., 5., 6.]));
        assert_eq!(
            layout.levels[1],
            Level::Csr {
                segments: vec![0, 3, 4, 5, 6],
                indices: vec![0, 2, 3, 1, 2, 3]
            }
        );
        assert_eq!(densify(&[4, 4], 4, &values, &layout).unwrap(), m);
    }

    #[test]
    fn blocks_are_stored_whole() {
        // 2x4 matrix, 1x2 blocks along columns: the block (0, 1) holding [0, 7] is kept whole.
        let m = f32s(&[0., 0., 0., 7., 0., 0., 0., 0.]);
        let plan = Plan {
            order: vec![0, 1],
            blocks: vec![(1, 2)],
            csr: 1,
        };
        let (layout, values) = encode(&[2, 4], 4, &m, &plan);
        assert_eq!(values, f32s(&[0., 7.]));
        assert_eq!(layout.traversal_order, vec![0, 1, 2]);
        assert_eq!(layout.block_map, vec![1]);
        assert_eq!(densify(&[2, 4], 4, &values, &layout).unwrap(), m);
    }

    #[test]
    fn damaged_layouts_are_refused() {
        let m = f32s(&[1., 0., 0., 2.]);
        let plan = Plan {
            order: vec![0, 1],
            blocks: vec![],
            csr: 1,
        };
        let (layout, values) = encode(&[2, 2], 4, &m, &plan);
        let mut bad = layout.clone();
        bad.levels[1] = Level::Csr {
            segments: vec![0, 1, 2],
            indices: vec![0, 2],
        };
        assert!(densify(&[2, 2], 4, &values, &bad)
            .unwrap_err()
            .contains("out of range"));
        bad.levels[1] = Level::Csr {
            segments: vec![0, 2, 1],
            indices: vec![0, 1],
        };
        assert!(densify(&[2, 2], 4, &values, &bad).is_err());
        // A middle offset past the index count (found by the in-process fuzzer: it sliced out
        // of bounds before the decrease after it was seen).
        bad.levels[1] = Level::Csr {
            segments: vec![0, 100, 2],
            indices: vec![0, 1],
        };
        assert!(densify(&[2, 2], 4, &values, &bad)
            .unwrap_err()
            .contains("segment"));
        bad.levels[1] = Level::Csr {
            segments: vec![0, 1],
            indices: vec![0],
        };
        assert!(densify(&[2, 2], 4, &values, &bad)
            .unwrap_err()
            .contains("segment"));
        assert!(densify(&[2, 2], 4, &values[..4], &layout).is_err());
        bad = layout.clone();
        bad.traversal_order = vec![0, 0];
        assert!(densify(&[2, 2], 4, &values, &bad).is_err());
        // A huge declared shape is refused before any allocation.
        let mut huge = layout;
        huge.levels[0] = Level::Dense { size: 1 << 30 };
        assert!(densify(&[1 << 30, 2], 4, &values, &huge).is_err());
        assert!(coo_densify(4, 4, &values, &[3, 1]).is_err());
        assert!(coo_densify(4, 4, &values, &[1, 4]).is_err());
        assert!(coo_densify(1 << 40, 4, &values, &[1, 4]).is_err());
    }

    proptest! {
        #[test]
        fn every_plan_round_trips_and_its_size_is_predicted(
            dims in proptest::collection::vec(1usize..6, 1..5),
            density in 0.0f64..1.0,
            seed in any::<u64>(),
            block in proptest::option::of((1usize..4, 1usize..4)),
        ) {
            use rand::{Rng, SeedableRng};
            let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
            let numel: usize = dims.iter().product();
            let data: Vec<u8> = (0..numel)
                .flat_map(|_| {
                    let v: f32 = if rng.gen_bool(density) { rng.gen_range(-1.0..1.0) } else { 0.0 };
                    v.to_le_bytes()
                })
                .collect();
            for plan in candidate_plans(&dims, block) {
                let (layout, values) = encode(&dims, 4, &data, &plan);
                prop_assert_eq!(densify(&dims, 4, &values, &layout).unwrap(), data.clone());
                prop_assert_eq!(plan_bytes(&dims, 4, &data, &plan), stored_bytes(&layout, values.len()));
            }
            let (idx, values) = coo_encode(&data, 4);
            let idx: Vec<u64> = idx.iter().map(|&i| i as u64).collect();
            prop_assert_eq!(coo_densify(numel, 4, &values, &idx).unwrap(), data);
        }
    }
}
