//! The flag groups several commands share (data, calibration, channels, gates, latency,
//! output), each with the conversion into the library's options.

use crate::convert::VerifyPolicy;
use crate::error::Error;
use crate::onnx::ExternalDataMode;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub(super) struct EvalFlags {
    /// Integer class labels (.npy, one per sample).
    #[arg(long, value_name = "FILE")]
    pub(super) labels: Option<PathBuf>,
    /// Use at most this many samples (random inputs: this many) [default: all; random: 32].
    #[arg(long, value_name = "N")]
    pub(super) samples: Option<usize>,
    /// Samples per run when the batch dimension is dynamic.
    #[arg(long, value_name = "N", default_value_t = crate::data::DEFAULT_BATCH_SIZE)]
    pub(super) batch_size: usize,
    /// Shape of a random input, e.g. input=1,3,224,224 (repeatable; sets dynamic dimensions).
    #[arg(long, value_name = "NAME=DIMS", value_parser = parse_input_shape)]
    pub(super) input_shape: Vec<(String, Vec<usize>)>,
    /// Seed of random inputs.
    #[arg(long, value_name = "N", default_value_t = crate::verify::DEFAULT_SEED)]
    pub(super) seed: u64,
}

impl EvalFlags {
    pub(super) fn options(&self, source: crate::data::DataSource) -> crate::data::DataOptions {
        crate::data::DataOptions {
            source,
            labels: self.labels.clone(),
            samples: self.samples,
            batch_size: self.batch_size,
            input_shapes: self.input_shape.clone(),
            seed: self.seed,
        }
    }
}

/// Verification on random inputs of the given shapes, when some are given (else the default
/// verification: seeded random inputs with dynamic dimensions 1).
pub(super) fn random_shaped(shapes: &[(String, Vec<usize>)]) -> Option<crate::data::DataOptions> {
    (!shapes.is_empty()).then(|| crate::data::DataOptions {
        input_shapes: shapes.to_vec(),
        ..Default::default()
    })
}

pub(super) fn parse_input_shape(s: &str) -> Result<(String, Vec<usize>), String> {
    let (name, dims) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=D1,D2,…"))?;
    let dims = dims
        .split(',')
        .map(|d| {
            d.trim()
                .parse::<usize>()
                .map_err(|_| format!("{s:?}: {d:?} is not a dimension"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((name.to_string(), dims))
}

/// Calibration flags of `pare prune`.
#[derive(Args, Debug)]
pub(super) struct CalibFlags {
    /// Calibration inputs: a .npy (single-input models), a .npz (one array per input name) or
    /// an ONNX test_data_set folder; a few hundred representative samples, preprocessed like
    /// the model's real inputs. Drives --criterion wanda/sparsegpt, and refits the layers that
    /// lose input channels in a structural prune.
    #[arg(long, value_name = "DATA")]
    pub(super) calib: Option<PathBuf>,
    /// How unstructured pruning chooses weights: magnitude (|W|), wanda (|W|·‖X‖ per output
    /// row) or sparsegpt (Hessian-guided, compensating the error on the kept weights).
    #[arg(
        long,
        value_name = "magnitude|wanda|sparsegpt",
        default_value = "magnitude"
    )]
    pub(super) criterion: crate::calib::Criterion,
    /// Use at most this many calibration samples [default: all].
    #[arg(long, value_name = "N", requires = "calib")]
    pub(super) calib_samples: Option<usize>,
    /// Calibration samples per run when the batch dimension is dynamic.
    #[arg(long, value_name = "N", default_value_t = 16, requires = "calib")]
    pub(super) calib_batch_size: usize,
    /// Ridge / Hessian dampening, as a fraction of the mean diagonal of XᵀX.
    #[arg(long, value_name = "F", default_value_t = crate::calib::DEFAULT_DAMPENING, requires = "calib")]
    pub(super) dampening: f64,
    /// With --calib and channel pruning: do not refit the layers after the removed channels.
    #[arg(long, requires = "calib")]
    pub(super) no_refit: bool,
    /// Collect every layer's calibration statistics from the original model in one pass
    /// (faster on deep models) instead of layer by layer from the model as pruned so far.
    #[arg(long, requires = "calib")]
    pub(super) one_pass: bool,
    /// Reconstruct each layer's outputs on the inputs it sees in the model pruned so far
    /// (SparseGPT's own objective), without correcting the earlier layers' error or the bias.
    #[arg(long, requires = "calib")]
    pub(super) no_correct: bool,
    /// Sequential calibration keeps each stage's activations for the next: at most this much
    /// in memory (e.g. 512M, 2G; bytes without a suffix), the rest in a temporary file.
    #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = parse_size, requires = "calib")]
    pub(super) calib_memory: u64,
}

/// A size in bytes: a number with an optional K, M or G suffix (powers of 1024; `KiB`, `MB`
/// and the like are read the same way).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 512M, 2G)"))?;
    let shift = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use K, M or G)")),
    };
    let bytes = value * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("{s:?} is not a size (e.g. 512M, 2G)"));
    }
    Ok(bytes as u64)
}

impl CalibFlags {
    pub(super) fn options(&self) -> Option<crate::calib::CalibOptions> {
        let path = self.calib.as_ref()?;
        let mut o = crate::calib::CalibOptions::new(crate::data::DataOptions {
            source: crate::data::DataSource::Path(path.clone()),
            labels: None,
            samples: self.calib_samples,
            batch_size: self.calib_batch_size,
            input_shapes: Vec::new(),
            seed: crate::verify::DEFAULT_SEED,
        });
        o.dampening = self.dampening;
        o.refit = !self.no_refit;
        o.one_pass = self.one_pass;
        o.correct = !self.no_correct;
        o.memory = self.calib_memory;
        Some(o)
    }
}

/// Structural pruning flags of `pare prune`.
#[derive(Args, Debug)]
pub(super) struct ChannelFlags {
    /// Remove this fraction of the prunable channels (conv filters, dense neurons) in [0, 1),
    /// rewiring every dependent layer. Combines with --sparsity (channels first).
    #[arg(long, value_name = "R", group = "channel_amount")]
    pub(super) channels: Option<f64>,
    /// Remove channels until the MACs are at most this fraction of the original's.
    #[arg(long, value_name = "F", group = "channel_amount")]
    pub(super) target_macs: Option<f64>,
    /// Remove channels until the parameters are at most this fraction of the original's.
    #[arg(long, value_name = "F", group = "channel_amount")]
    pub(super) target_params: Option<f64>,
    /// How channels are ranked: l1 or l2 (filter norm), bn (|gamma| of an explicit
    /// batch-norm), fpgm (distance to the geometric median of the layer's filters), activation
    /// (what the channel contributes to the next layers' outputs on --calib data) [default: l1].
    #[arg(long, value_name = "l1|l2|bn|fpgm|activation")]
    pub(super) importance: Option<crate::structural::Importance>,
    /// layer: every group of coupled layers loses the ratio; global: one ranking of
    /// normalized scores over all groups [default: --scope if layer or global, else layer].
    #[arg(long, value_name = "layer|global")]
    pub(super) channel_scope: Option<crate::structural::ChannelScope>,
    /// Keep channel counts multiples of K (e.g. 8 for SIMD-friendly kernels).
    #[arg(long, value_name = "K")]
    pub(super) round_to: Option<usize>,
    /// With a global channel scope, no group loses more than this fraction [default: 0.9].
    #[arg(long, value_name = "F")]
    pub(super) max_layer_ratio: Option<f64>,
    /// Drop removed channels' constant output instead of folding it into the next layer's bias.
    #[arg(long)]
    pub(super) no_fold: bool,
}

impl ChannelFlags {
    pub(super) fn options(
        &self,
        scope: Option<crate::prune::Scope>,
        exclude: &[regex::Regex],
        config: Option<crate::structural::ChannelOptions>,
    ) -> Result<Option<crate::structural::ChannelOptions>, Error> {
        use crate::structural::{Amount, ChannelOptions, ChannelScope};
        let amount = match (self.channels, self.target_macs, self.target_params) {
            (Some(r), _, _) => Amount::Ratio(r),
            (_, Some(f), _) => Amount::TargetMacs(f),
            (_, _, Some(f)) => Amount::TargetParams(f),
            _ if config.is_some() => Amount::Ratio(0.0),
            _ => {
                let tuning = self.importance.is_some()
                    || self.channel_scope.is_some()
                    || self.round_to.is_some()
                    || self.max_layer_ratio.is_some()
                    || self.no_fold;
                if tuning {
                    return Err(Error::Usage(
                        "--importance, --channel-scope, --round-to, --max-layer-ratio and --no-fold tune channel pruning: give --channels R, --target-macs F or --target-params F (or `channels` in a config rule)".into(),
                    ));
                }
                return Ok(None);
            }
        };
        let d = ChannelOptions::default();
        Ok(Some(ChannelOptions {
            amount,
            importance: self.importance.unwrap_or(d.importance),
            scope: self.channel_scope.unwrap_or(match scope {
                Some(crate::prune::Scope::Global) => ChannelScope::Global,
                _ => ChannelScope::Layer,
            }),
            round_to: self.round_to.unwrap_or(d.round_to),
            max_layer_ratio: self.max_layer_ratio.unwrap_or(d.max_layer_ratio),
            exclude: exclude.to_vec(),
            rules: config.map(|c| c.rules).unwrap_or_default(),
            fold: !self.no_fold,
            energy: None,
        }))
    }
}

#[derive(Args, Debug)]
pub(super) struct LatencyFlags {
    /// Timed runs of each model on the first batch (0: skip latency).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub(super) latency_runs: usize,
    /// Untimed runs of each model before timing.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub(super) warmup: usize,
}

#[derive(Args, Debug)]
pub(super) struct GateFlags {
    /// Fail (exit 4) when accuracy drops by more than P percentage points (needs labels).
    #[arg(long, value_name = "P")]
    pub(super) max_accuracy_drop: Option<f64>,
    /// Fail (exit 4) when any output's mean cosine similarity is below C.
    #[arg(long, value_name = "C")]
    pub(super) min_cosine: Option<f64>,
    /// Fail (exit 4) when any classifier-like output's top-1 agreement is below A (a fraction).
    #[arg(long, value_name = "A")]
    min_top1_agreement: Option<f64>,
}

impl GateFlags {
    pub(super) fn gates(&self) -> crate::validate::Gates {
        crate::validate::Gates {
            max_accuracy_drop: self.max_accuracy_drop,
            min_cosine: self.min_cosine,
            min_top1_agreement: self.min_top1_agreement,
        }
    }
}

#[derive(Args, Debug)]
pub(super) struct DataFlags {
    /// ONNX: store every tensor of at least 1 KiB in an external data file beside the output
    /// (default name: OUTPUT.data). Large tensors are aligned to 64 KiB so runtimes can map them.
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "", conflicts_with = "inline_data")]
    pub(super) external_data: Option<String>,
    /// ONNX: pull all external data back into the model file (which must stay under 2 GiB).
    #[arg(long)]
    pub(super) inline_data: bool,
}

impl DataFlags {
    pub(super) fn mode(&self, output: &std::path::Path) -> ExternalDataMode {
        match (&self.external_data, self.inline_data) {
            (Some(name), _) if name.is_empty() => {
                ExternalDataMode::Into(crate::onnx::write::default_data_file(output))
            }
            (Some(name), _) => ExternalDataMode::Into(name.clone()),
            (None, true) => ExternalDataMode::Inline,
            (None, false) => ExternalDataMode::Keep,
        }
    }
}

#[derive(Args, Debug)]
pub(super) struct WriteFlags {
    /// Replace the output file if it exists.
    #[arg(long)]
    pub(super) force: bool,
    /// Do not check the written model with tract.
    #[arg(long, conflicts_with = "require_verified")]
    pub(super) no_verify: bool,
    /// Fail unless the written model's outputs agree with the original's: exit 3 when tract
    /// cannot run it, exit 5 when the outputs diverge; nothing is written.
    #[arg(long)]
    pub(super) require_verified: bool,
    /// Also measure the input's and output's gzip -9 and zstd -9 sizes (about 5 s per 100 MB
    /// of model on 2 cores, overlapped with verification; raw sizes are always reported).
    #[arg(long)]
    pub(super) compressed_sizes: bool,
    /// Raw sizes only: the default since compressed sizes became opt-in; still accepted.
    #[arg(long, hide = true, conflicts_with = "compressed_sizes")]
    pub(super) no_compressed_sizes: bool,
}

impl WriteFlags {
    pub(super) fn policy(&self) -> VerifyPolicy {
        if self.no_verify {
            VerifyPolicy::Skip
        } else if self.require_verified {
            VerifyPolicy::Require
        } else {
            VerifyPolicy::Check
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_read_with_binary_suffixes() {
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("64kb"), Ok(64 << 10));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("3X").is_err());
    }
}
