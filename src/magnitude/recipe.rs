//! Pruned payloads that are produced while the model is written, never held whole.
//!
//! Magnitude pruning of a float32 tensor is fully described by its source bytes (a slice of
//! the memory-mapped input) and its [`Cut`] (a threshold and a few tie quotas). Instead of a
//! pruned copy of every weight, which would double the memory a prune needs, the document
//! carries these recipes, keyed by the identity of the source bytes it stores. The writers
//! stream each one into the output in 256 KiB pieces when they reach its bytes; the storage
//! pass reads the non-zero count off the recipe and materializes a tensor only to encode it
//! sparse (a fraction of its dense size). Every recipe must be used: a write that leaves one
//! unused fails instead of silently writing the unpruned weight.

use super::select::Cut;
use super::values::f32_magnitude as magnitude;
use super::CHUNK;
use crate::model::payload::Recipe;
use bytes::Bytes;
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};

/// A float32 tensor with the elements selected by a cut over its magnitudes set to +0.0.
#[derive(Debug)]
pub struct ZeroedF32 {
    /// The tensor's name (for messages).
    pub name: String,
    /// Its storage handle ([`crate::model::Tensor::handle`]).
    pub handle: usize,
    source: Bytes,
    cut: Cut,
    /// Non-zero elements after pruning, counted as the storage pass counts (bit patterns).
    nonzero: usize,
    used: AtomicBool,
}

impl ZeroedF32 {
    /// `cut` selected over the magnitudes of `source` (float32, little-endian), in chunks of
    /// [`CHUNK`] elements; `nonzero` is the element count whose bits stay non-zero.
    pub fn new(name: String, handle: usize, source: Bytes, cut: Cut, nonzero: usize) -> Self {
        ZeroedF32 {
            name,
            handle,
            source,
            cut,
            nonzero,
            used: AtomicBool::new(false),
        }
    }

    /// The stored bytes it replaces.
    pub fn source(&self) -> &Bytes {
        &self.source
    }
}

impl Recipe for ZeroedF32 {
    fn name(&self) -> &str {
        &self.name
    }

    fn source(&self) -> &Bytes {
        &self.source
    }

    fn nonzero(&self) -> usize {
        self.nonzero
    }

    fn used(&self) -> bool {
        self.used.load(Ordering::Relaxed)
    }

    /// Hands the pruned bytes to `sink` in order, a few chunks at a time, and marks the recipe
    /// used.
    fn write_to(&self, sink: &mut dyn FnMut(&[u8])) {
        const GROUP: usize = 4; // chunks per piece: 4 x 64 Ki elements = 1 MiB
        let mut out = vec![0u8; CHUNK * 4 * GROUP];
        let mut mags = vec![0f32; CHUNK];
        for (gi, group) in self.source.chunks(CHUNK * 4 * GROUP).enumerate() {
            for (j, src) in group.chunks(CHUNK * 4).enumerate() {
                let n = src.len() / 4;
                for (m, b) in mags.iter_mut().zip(src.chunks_exact(4)) {
                    *m = magnitude(b);
                }
                let dst = &mut out[j * CHUNK * 4..j * CHUNK * 4 + src.len()];
                self.cut
                    .copy_zeroed_f32(gi * GROUP + j, &mags[..n], src, dst);
            }
            sink(&out[..group.len()]);
        }
        self.used.store(true, Ordering::Relaxed);
    }

    /// Marks the recipe used by a writer that stored its [`ZeroedF32::materialize`]d bytes
    /// in another form (sparse).
    fn mark_used(&self) {
        self.used.store(true, Ordering::Relaxed);
    }

    /// The pruned bytes as one buffer (computed on all cores); marks the recipe used when
    /// `use_it` (the caller writes them in the recipe's place).
    fn materialize(&self, use_it: bool) -> Bytes {
        let mut out = vec![0u8; self.source.len()];
        out.par_chunks_mut(CHUNK * 4)
            .zip(self.source.par_chunks(CHUNK * 4))
            .enumerate()
            .for_each(|(ci, (dst, src))| {
                let mags: Vec<f32> = src.chunks_exact(4).map(magnitude).collect();
                self.cut.copy_zeroed_f32(ci, &mags, src, dst);
            });
        if use_it {
            self.used.store(true, Ordering::Relaxed);
        }
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::payload::Deferred;

    #[test]
    fn streamed_and_materialized_recipes_equal_the_pruned_copy() {
        // Several chunks, a partial last one, ties at the threshold and a NaN.
        let n = 3 * CHUNK + 123;
        let mut vals: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 - 500.0).collect();
        vals[5] = f32::NAN;
        let source: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mags: Vec<f32> = source.chunks_exact(4).map(magnitude).collect();
        let k = n / 2 + 17;
        let cut = super::super::select::cut(&mags, k);
        let expected =
            super::super::values::Codec::new(crate::model::DType::F32, &[n as u64], None)
                .unwrap()
                .zeroed_cut(&source, &mags, &cut);
        let r = ZeroedF32::new("w".into(), 0, Bytes::from(source), cut, 0);
        let mut streamed = Vec::new();
        r.write_to(&mut |b| streamed.extend_from_slice(b));
        assert_eq!(streamed, expected);
        assert_eq!(&r.materialize(false)[..], &expected[..]);
        let zeros = expected
            .chunks_exact(4)
            .filter(|b| b == &[0, 0, 0, 0])
            .count();
        assert!(zeros >= k);
    }

    #[test]
    fn unused_recipes_are_reported_by_name() {
        let src = Bytes::from(vec![1u8; 16]);
        let mags = vec![1.0f32; 4];
        let d = Deferred::new(vec![ZeroedF32::new(
            "w".into(),
            0,
            src.clone(),
            super::super::select::cut(&mags, 2),
            2,
        )]);
        assert_eq!(d.unused(), vec!["w".to_string()]);
        assert!(d.get(&src).is_some());
        assert!(d.get(&src.slice(0..8)).is_none());
        d.get(&src).unwrap().write_to(&mut |_| {});
        assert!(d.unused().is_empty());
    }
}
