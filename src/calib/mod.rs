//! Calibration: run representative inputs through the model (in tract), collect each layer's
//! input statistics, and use them to choose which weights to prune and to reconstruct the ones
//! that stay, so a pruned model keeps its accuracy without retraining.
//!
//! - [`layer`] views each Conv / dense layer as a matrix product `y = W x` over im2col rows;
//! - [`capture`] streams the calibration set through the model once and accumulates every
//!   layer's Gram matrix `XᵀX` (with feature sums and the row count), in f64;
//! - [`solve`] holds Wanda, SparseGPT and the least-squares refit, on those matrices;
//! - `unstructured` prunes the targets a magnitude plan hands over with them, and `refit`
//!   serves structural pruning (channel energies, the refit of the layers after a cut).
//!
//! Everything is computed in real (dequantized) values and written back in the tensor's own
//! type: an int8 weight keeps its scales and zero points, and SparseGPT compensates the
//! rounding onto that grid like any other error.
//!
//! Layer: methods (imports its own layer and the ones below; see ARCHITECTURE.md).

pub mod capture;
pub mod layer;
mod refit;
mod sequential;
pub mod solve;
mod stages;
mod store;
mod unstructured;

pub(crate) use refit::{channel_energy, refit_structure};
pub(crate) use unstructured::prune_targets;

use crate::data::DataOptions;
use crate::error::{Error, Result};
use crate::magnitude::values::Codec;
use crate::model::{Graph, TensorId};
use bytes::Bytes;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// How unstructured pruning chooses (and treats) the weights it removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Criterion {
    /// Smallest |W| (no calibration data needed).
    #[default]
    Magnitude,
    /// Smallest |W_ij| · ‖X_j‖, per output row (Wanda); weights are only zeroed.
    Wanda,
    /// SparseGPT: per-layer Hessian-guided choice with error compensation on the kept weights.
    Sparsegpt,
}

impl FromStr for Criterion {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "magnitude" => Ok(Criterion::Magnitude),
            "wanda" => Ok(Criterion::Wanda),
            "sparsegpt" => Ok(Criterion::Sparsegpt),
            _ => Err(format!(
                "unknown criterion {s:?}: expected magnitude, wanda or sparsegpt"
            )),
        }
    }
}

impl fmt::Display for Criterion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Criterion::Magnitude => "magnitude",
            Criterion::Wanda => "wanda",
            Criterion::Sparsegpt => "sparsegpt",
        })
    }
}

/// SparseGPT's default dampening (`percdamp`): 1% of the mean Hessian diagonal.
pub const DEFAULT_DAMPENING: f64 = 0.01;

/// Columns decided together by SparseGPT (the paper's block size).
pub const DEFAULT_BLOCK: usize = 128;

#[derive(Debug, Clone)]
pub struct CalibOptions {
    /// The calibration inputs (`.npy` / `.npz` or ONNX test-data folders), read in batches.
    pub data: DataOptions,
    /// Ridge / dampening: `λ = dampening · mean(diag XᵀX)`.
    pub dampening: f64,
    pub block: usize,
    /// Refit the layers that lose input channels in a structural prune.
    pub refit: bool,
    /// Collect every layer's statistics from the original model in one pass, instead of
    /// wave by wave from the model as pruned so far (faster on deep models, less accurate).
    pub one_pass: bool,
    /// In sequential passes, reconstruct the original model's outputs (not the pruned
    /// model's), correcting the error of the layers pruned before.
    pub correct: bool,
    /// Sequential calibration: bytes of activations held in memory between stages (beyond
    /// them, a temporary file).
    pub memory: u64,
}

/// `--calib-memory`'s default: activations held in memory between sequential stages.
pub const DEFAULT_CALIB_MEMORY: u64 = 1 << 30;

impl CalibOptions {
    pub fn new(data: DataOptions) -> Self {
        CalibOptions {
            data,
            dampening: DEFAULT_DAMPENING,
            block: DEFAULT_BLOCK,
            refit: true,
            one_pass: false,
            correct: true,
            memory: DEFAULT_CALIB_MEMORY,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.dampening > 0.0 && self.dampening.is_finite()) {
            return Err(Error::Usage(format!(
                "--dampening {} must be a positive number (0.01 is SparseGPT's default)",
                self.dampening
            )));
        }
        Ok(())
    }
}

/// A layer calibration did not cover, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Fallback {
    pub name: String,
    pub reason: String,
}

/// What calibration did, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct CalibReport {
    /// What the calibration served: `prune` (unstructured) or `refit` (structural).
    pub purpose: &'static str,
    pub criterion: Option<Criterion>,
    pub dampening: f64,
    pub capture: capture::CalibSummary,
    /// Layers reconstructed with calibration data.
    pub layers: Vec<String>,
    /// Layers left to magnitude pruning (or not refit), with the reason.
    pub fallbacks: Vec<Fallback>,
    /// SparseGPT layers where zeroing the smallest weights of each row reconstructed the
    /// calibration outputs better than the compensated weights, and was kept.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub plain: Vec<String>,
    pub warnings: Vec<String>,
    /// Where the time went and the memory peak when done.
    pub timing: CalibTiming,
}

/// A calibration's time, by part, and the process's memory peak at its end.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CalibTiming {
    /// Running the data through the model and accumulating the statistics.
    pub capture_seconds: f64,
    /// Choosing and reconstructing the weights (SparseGPT, Wanda, the refit).
    pub solve_seconds: f64,
    /// Peak resident memory of the process when the calibration ended (bytes; Linux).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss: Option<u64>,
}

/// One weight to prune with calibration data.
pub(crate) struct Target<'a> {
    pub node: usize,
    pub slot: usize,
    pub weight: TensorId,
    pub name: &'a str,
    pub codec: &'a Codec,
    pub data: &'a Bytes,
    pub amount: solve::Amount,
    /// Permute the columns so that N:M groups are contiguous (ONNX Conv columns run
    /// channel-major).
    pub nm: bool,
}

/// A weight pruned with calibration data.
pub(crate) struct Pruned {
    pub data: Bytes,
    pub zeros_before: u64,
    pub zeros_after: u64,
    /// Groups (a whole layer unless grouped) where SparseGPT's result reconstructed the
    /// outputs worse than zeroing the smallest weights, which was kept instead.
    pub plain_groups: usize,
    /// The corrected bias (storage handle, payload), when the layer has one.
    pub bias: Option<(usize, Bytes)>,
}

/// Every weight-bearing node of `g` with a stored constant weight (its first weight input):
/// (node, slot, weight, node name).
fn layer_weights(g: &Graph) -> impl Iterator<Item = (usize, usize, TensorId, String)> + '_ {
    let prod = crate::model::stats::producers(g);
    g.nodes.iter().enumerate().filter_map(move |(ni, node)| {
        let slot = *crate::model::stats::weight_inputs(&node.op)?.0.first()?;
        let input = (*node.inputs.get(slot)?)?;
        let w = crate::model::stats::stored_constant(g, &prod, input)?;
        Some((ni, slot, w, node.name.clone()))
    })
}

/// Per node of `g`: its depth, the number of `layers` (node indices) on the longest path from
/// the inputs to the node's inputs. Nodes are in topological order (as both formats store
/// them).
fn input_depths(g: &Graph, layers: &std::collections::HashSet<usize>) -> Vec<usize> {
    let mut depth: HashMap<TensorId, usize> = HashMap::new();
    let mut level = vec![0usize; g.nodes.len()];
    for (ni, node) in g.nodes.iter().enumerate() {
        let d = node
            .inputs
            .iter()
            .flatten()
            .filter_map(|t| depth.get(t))
            .copied()
            .max()
            .unwrap_or(0);
        level[ni] = d;
        let out = if layers.contains(&ni) { d + 1 } else { d };
        for &t in &node.outputs {
            depth.insert(t, out);
        }
    }
    level
}

/// Groups layer nodes `nodes` by depth: wave `d` holds the layers with `d` of the others on
/// their longest path from the inputs (positions in `nodes`).
fn waves(g: &Graph, nodes: &[usize]) -> Vec<Vec<usize>> {
    let level = input_depths(g, &nodes.iter().copied().collect());
    let mut waves: Vec<Vec<usize>> = Vec::new();
    for (l, &n) in nodes.iter().enumerate() {
        let d = level[n];
        if waves.len() <= d {
            waves.resize(d + 1, Vec::new());
        }
        waves[d].push(l);
    }
    waves.retain(|w| !w.is_empty());
    waves
}

/// The weight input of every layer [`layer::linear`] covers (Conv, Gemm, MatMul, CONV_2D, …).
const WEIGHT_SLOT: usize = 1;
