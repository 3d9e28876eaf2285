//! Activations kept between the stages of a sequential calibration: in memory within a budget
//! (`--calib-memory`), in an anonymous temporary file beyond it (deleted when dropped).

use crate::error::{Error, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tract_onnx::prelude::*;

/// What the held activations may take in memory, and what they took.
#[derive(Debug, Default)]
pub struct Budget {
    pub limit: u64,
    used: AtomicU64,
    peak: AtomicU64,
    spilled: AtomicU64,
}

impl Budget {
    pub fn new(limit: u64) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            ..Default::default()
        })
    }

    /// Most bytes held in memory at once.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Bytes written to the temporary files.
    pub fn spilled(&self) -> u64 {
        self.spilled.load(Ordering::Relaxed)
    }

    /// Takes `bytes` if they fit.
    fn take(&self, bytes: u64) -> bool {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            if used + bytes > self.limit {
                return false;
            }
            match self.used.compare_exchange(
                used,
                used + bytes,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.peak.fetch_max(used + bytes, Ordering::Relaxed);
                    return true;
                }
                Err(now) => used = now,
            }
        }
    }
}

/// An append-only temporary file for one generation of activations.
pub struct Spill {
    file: Arc<File>,
    len: u64,
}

impl Spill {
    pub fn new() -> Result<Spill> {
        let file = tempfile::tempfile().map_err(|e| {
            Error::Usage(format!(
                "--calib-memory: cannot create a temporary file for the activations beyond the budget ({e}); set TMPDIR or raise --calib-memory"
            ))
        })?;
        Ok(Spill {
            file: Arc::new(file),
            len: 0,
        })
    }
}

/// One batch's activations, in memory or in a spill file.
pub enum Held {
    Memory {
        tensors: Vec<Tensor>,
        bytes: u64,
        budget: Arc<Budget>,
    },
    Disk {
        file: Arc<File>,
        /// Type, shape, offset and length of each tensor.
        parts: Vec<(DatumType, Vec<usize>, u64, usize)>,
    },
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Held::Memory { bytes, budget, .. } = self {
            budget.used.fetch_sub(*bytes, Ordering::Relaxed);
        }
    }
}

fn io_error(e: std::io::Error) -> Error {
    Error::Usage(format!(
        "--calib-memory: the temporary file of the activations beyond the budget failed ({e}); free disk space in TMPDIR or raise --calib-memory"
    ))
}

impl Held {
    /// Keeps `tensors` in memory if the budget allows, else appends them to `spill` (created
    /// on first use).
    pub fn keep(
        tensors: Vec<Tensor>,
        budget: &Arc<Budget>,
        spill: &mut Option<Spill>,
    ) -> Result<Held> {
        let bytes: u64 = tensors.iter().map(|t| t.as_bytes().len() as u64).sum();
        let fits = budget.take(bytes);
        // Strings and other non-plain values stay in memory whatever the budget.
        if fits || tensors.iter().any(|t| !t.datum_type().is_copy()) {
            if !fits {
                let now = budget.used.fetch_add(bytes, Ordering::Relaxed) + bytes;
                budget.peak.fetch_max(now, Ordering::Relaxed);
            }
            return Ok(Held::Memory {
                tensors,
                bytes,
                budget: budget.clone(),
            });
        }
        if spill.is_none() {
            *spill = Some(Spill::new()?);
        }
        let s = spill.as_mut().expect("created above");
        let mut parts = Vec::with_capacity(tensors.len());
        for t in &tensors {
            let b = t.as_bytes();
            s.file.write_all_at(b, s.len).map_err(io_error)?;
            parts.push((t.datum_type(), t.shape().to_vec(), s.len, b.len()));
            s.len += b.len() as u64;
        }
        budget.spilled.fetch_add(bytes, Ordering::Relaxed);
        Ok(Held::Disk {
            file: s.file.clone(),
            parts,
        })
    }

    /// The activations (a copy).
    pub fn tensors(&self) -> Result<Vec<Tensor>> {
        match self {
            Held::Memory { tensors, .. } => Ok(tensors.clone()),
            Held::Disk { file, parts } => parts
                .iter()
                .map(|(dt, shape, offset, len)| {
                    // Only types whose values are plain bytes are spilled (`is_copy`): read
                    // straight into the tensor's storage.
                    let mut t = unsafe { Tensor::uninitialized_dt(*dt, shape) }
                        .map_err(|e| Error::Usage(format!("reading back an activation: {e}")))?;
                    let bytes = t.as_bytes_mut();
                    debug_assert_eq!(bytes.len(), *len);
                    file.read_exact_at(bytes, *offset).map_err(io_error)?;
                    Ok(t)
                })
                .collect(),
        }
    }

    /// The tensors, moved out when no one else holds them (else as [`Held::tensors`]).
    pub fn take(held: Arc<Held>) -> Result<Vec<Tensor>> {
        match Arc::try_unwrap(held) {
            Ok(mut h) => match &mut h {
                Held::Memory { tensors, .. } => Ok(std::mem::take(tensors)),
                Held::Disk { .. } => h.tensors(),
            },
            Err(shared) => shared.tensors(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activations_beyond_the_budget_go_to_disk_and_come_back_the_same() {
        let budget = Budget::new(64);
        let mut spill = None;
        let small = tensor1(&[1f32, 2.0, 3.0]);
        let big =
            Tensor::from_shape(&[4, 8], &(0..32).map(|v| v as f32).collect::<Vec<_>>()).unwrap();
        let a = Held::keep(vec![small.clone()], &budget, &mut spill).unwrap();
        assert!(matches!(a, Held::Memory { .. }));
        let b = Held::keep(vec![big.clone(), small.clone()], &budget, &mut spill).unwrap();
        assert!(matches!(b, Held::Disk { .. }));
        assert_eq!(b.tensors().unwrap(), vec![big, small.clone()]);
        assert_eq!(budget.spilled(), 32 * 4 + 12);
        assert_eq!(budget.peak(), 12);
        // Shared, the tensors are copied; held once, moved out; either way the budget frees.
        let shared = Arc::new(a);
        let again = shared.clone();
        assert_eq!(Held::take(shared).unwrap(), vec![small.clone()]);
        assert_eq!(budget.used.load(Ordering::Relaxed), 12);
        assert_eq!(Held::take(again).unwrap(), vec![small]);
        assert_eq!(budget.used.load(Ordering::Relaxed), 0);
    }
}
