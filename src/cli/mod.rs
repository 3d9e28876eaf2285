//! The command line: parse flags, call the library, render results, map errors to exit codes.

use crate::convert::{VerifyPolicy, WriteOptions, WriteReport};
use crate::error::Error;
use crate::onnx::ExternalDataMode;
use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;

/// Exit codes, stable for pipelines.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// The input could not be read or is not a valid model, or an I/O error occurred.
    pub const ERROR: i32 = 1;
    /// Bad command line, or a refused output path (existing file without --force, the input).
    pub const USAGE: i32 = 2;
    /// A written model could not be verified with tract and --require-verified was given, or
    /// verification found a difference where none was allowed. Nothing was written.
    pub const VERIFICATION: i32 = 3;
    /// A validation gate failed (`--max-accuracy-drop`, `--min-cosine`,
    /// `--min-top1-agreement`), or `--search` found no sparsity within the gates. `pare prune`
    /// wrote nothing unless `--keep-failed`.
    pub const GATE: i32 = 4;
}

#[derive(Parser, Debug)]
#[command(
    name = "pare",
    version,
    about = "Make trained ONNX and TFLite models smaller after export",
    long_about = "pare reads ONNX (.onnx, with external data) and TFLite (.tflite, float and int8) model files, \
and writes them back losslessly. Every model it writes is loaded and run in tract on seeded random inputs \
and compared with the original before the command reports success. TFLite models run in tract \
through a validation copy that rewrites what tract cannot run as it is (constant DEQUANTIZE, int8 \
kernels emulated in float, PRELU, masked STRIDED_SLICE, …); the written file is never rewritten.\n\n\
Exit codes: 0 success, 1 error (unreadable or invalid input, I/O, a model with no prunable channels, \
a --target-macs/--target-params that cannot be reached), 2 usage (bad flags, bad data, refused output path), \
3 verification failed (with --require-verified, or outputs changed by a conversion), \
4 a validation gate failed (validate; prune --validate / --search); nothing is written on failure \
(prune --keep-failed writes a model that failed its gate, and still exits 4)."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Print results as JSON on stdout (human messages still go to stderr).
    #[arg(long, global = true)]
    json: bool,
    /// Print nothing on stderr except errors.
    #[arg(long, short, global = true)]
    quiet: bool,
}

// One Command exists per process: boxing the large variant buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Show a model's format, inputs/outputs, ops, per-layer weights, params, sparsity, MACs and size.
    Inspect {
        /// The model file (.onnx or .tflite; the format is detected from the content).
        model: PathBuf,
    },
    /// Re-serialize a model without changing its meaning (optionally moving ONNX weights to or
    /// from an external data file).
    Convert {
        /// The input model.
        input: PathBuf,
        /// Where to write the result.
        #[arg(short, long)]
        output: PathBuf,
        /// Weight storage: keep (as read), auto (each weight in the smaller of dense and sparse),
        /// sparse (every eligible weight sparse), dense (densify a sparse model back).
        #[arg(long, value_name = "keep|auto|sparse|dense", default_value = "keep")]
        storage: crate::sparse::Storage,
        #[command(flatten)]
        data: DataFlags,
        #[command(flatten)]
        write: WriteFlags,
    },
    /// Zero the weights closest to zero (magnitude pruning: per layer, global, LAMP; unstructured,
    /// N:M or blocks; float, f16 and int8 weights in their stored type), and/or remove whole
    /// channels (structural pruning: --channels, --target-macs); with calibration data
    /// (--calib), reconstruct what stays (SparseGPT, Wanda, least-squares refit). The written
    /// model is checked against the original in tract.
    #[command(after_help = PRUNE_HELP)]
    Prune {
        /// The input model.
        input: PathBuf,
        /// Where to write the pruned model.
        #[arg(short, long)]
        output: PathBuf,
        /// Fraction of weights to zero, in [0, 1). Not needed with an N:M pattern.
        #[arg(long)]
        sparsity: Option<f64>,
        /// layer: every weight tensor reaches the sparsity; global: one magnitude threshold over
        /// all of them; lamp: one threshold over layer-adaptive (LAMP) scores.
        #[arg(long, value_name = "layer|global|lamp")]
        scope: Option<crate::prune::Scope>,
        /// unstructured, N:M (keep N of every M weights along the input-channel axis, e.g. 2:4),
        /// or block:RxC (R output channels × C input channels, scored by L2 norm, e.g. block:4x1).
        #[arg(long, value_name = "PATTERN")]
        pattern: Option<crate::prune::Pattern>,
        /// Leave weight tensors with fewer elements alone [default: 128].
        #[arg(long, value_name = "N")]
        min_params: Option<u64>,
        /// With --scope global or lamp, no tensor loses more than this fraction [default: 0.98].
        #[arg(long, value_name = "F")]
        max_layer_sparsity: Option<f64>,
        /// Prune only weights whose tensor or node name matches this regex (repeatable).
        #[arg(long, value_name = "REGEX")]
        include: Vec<String>,
        /// Leave alone weights whose tensor or node name matches this regex (repeatable).
        #[arg(long, value_name = "REGEX")]
        exclude: Vec<String>,
        /// A TOML file with settings and per-layer rules; command-line flags override it.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// With --scope sensitivity: the profile written by `pare sensitivity --report`.
        #[arg(long, value_name = "FILE")]
        sensitivity: Option<PathBuf>,
        #[command(flatten)]
        structural: ChannelFlags,
        #[command(flatten)]
        calib: CalibFlags,
        /// Compare the pruned model with the original on this data before writing it: a .npy,
        /// a .npz (one array per input name, optional `labels`), an ONNX test_data_set folder,
        /// or `random`. The comparison goes into the report; gates decide whether it is written.
        #[arg(long, value_name = "DATA")]
        validate: Option<crate::data::DataSource>,
        #[command(flatten)]
        eval: EvalFlags,
        #[command(flatten)]
        gates: GateFlags,
        #[command(flatten)]
        latency: LatencyFlags,
        /// Write the model even when a gate fails (the exit code is still 4).
        #[arg(long, requires = "validate")]
        keep_failed: bool,
        /// Find the largest sparsity within the gates (bisection, see below); --sparsity is
        /// then the upper bound [default: 0.99].
        #[arg(long, requires = "validate")]
        search: bool,
        /// Grid step of --search.
        #[arg(long, value_name = "F", default_value_t = 0.01, requires = "search")]
        search_step: f64,
        /// Also write the JSON report to this file.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// Weight storage: auto (each weight in the smaller of dense and sparse: TFLite sparse
        /// tensors feeding DENSIFY, ONNX sparse_initializer), sparse (every eligible weight
        /// sparse), dense, or keep (as read).
        #[arg(long, value_name = "auto|sparse|dense|keep", default_value = "auto")]
        storage: crate::sparse::Storage,
        #[command(flatten)]
        data: DataFlags,
        #[command(flatten)]
        write: WriteFlags,
    },
    /// Compare a candidate model (pruned, converted) with its original in tract on the same
    /// inputs: per-output error, cosine similarity, top-1 agreement, accuracy against labels,
    /// latency, file and gzip sizes, params, nonzeros and MACs; optional pass/fail gates.
    #[command(after_help = VALIDATE_HELP)]
    Validate {
        /// The reference model.
        original: PathBuf,
        /// The model to check against it.
        candidate: PathBuf,
        /// Inputs: a .npy, a .npz (one array per input name, optional `labels`), an ONNX
        /// test_data_set folder, or `random` (seeded, of the declared shapes).
        #[arg(long, value_name = "DATA", default_value = "random")]
        data: crate::data::DataSource,
        #[command(flatten)]
        eval: EvalFlags,
        #[command(flatten)]
        gates: GateFlags,
        #[command(flatten)]
        latency: LatencyFlags,
        /// Also write the JSON report to this file.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
    },
    /// Prune each prunable layer alone at a ladder of sparsities and measure the loss on your
    /// data: a table, a JSON profile (--report) for `pare prune --scope sensitivity`, and an
    /// SVG chart (--plot).
    Sensitivity {
        /// The model.
        model: PathBuf,
        /// Inputs: a .npy, a .npz, an ONNX test_data_set folder, or `random`.
        #[arg(long, value_name = "DATA", default_value = "random")]
        data: crate::data::DataSource,
        #[command(flatten)]
        eval: EvalFlags,
        /// Sparsities tried for each layer.
        #[arg(
            long,
            value_name = "LIST",
            value_delimiter = ',',
            default_value = "0.25,0.5,0.75,0.9"
        )]
        ratios: Vec<f64>,
        /// accuracy (needs labels), top1 (agreement with the original) or cosine
        /// [default: accuracy with labels, else top1, else cosine].
        #[arg(long, value_name = "METRIC")]
        metric: Option<crate::sensitivity::Metric>,
        /// unstructured or block:RxC.
        #[arg(long, value_name = "PATTERN", default_value = "unstructured")]
        pattern: crate::prune::Pattern,
        /// Leave weight tensors with fewer elements alone.
        #[arg(long, value_name = "N", default_value_t = crate::prune::DEFAULT_MIN_PARAMS)]
        min_params: u64,
        /// Only weights whose tensor or node name matches (repeatable).
        #[arg(long, value_name = "REGEX")]
        include: Vec<String>,
        /// Leave alone weights whose tensor or node name matches (repeatable).
        #[arg(long, value_name = "REGEX")]
        exclude: Vec<String>,
        /// Write the chart (one curve per layer) to this SVG file.
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<PathBuf>,
        /// Write the JSON profile to this file.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
    },
}

const VALIDATE_HELP: &str = "\
Data: axis 0 of every array is the sample axis. A model with a dynamic batch dimension (ONNX) runs \
--batch-size samples at a time; a fixed batch (TFLite) runs at its stored size. Float data feeding an \
int8 TFLite input is quantized with the input's scale and zero point. Labels are integer class indices \
compared with the arg-max of the first classifier-like output (one score per class per sample).

Metrics: max/mean absolute difference and per-sample cosine similarity of every output (quantized \
outputs are dequantized first), top-1 agreement of classifier-like outputs, accuracy of both models \
with labels, latency (median and p90 of interleaved timed runs on the first batch), sizes, params, \
nonzeros, MACs. JSON schema: pare.validate/1 (see the README).

Gates: --max-accuracy-drop P (percentage points), --min-cosine C (worst output's mean cosine), \
--min-top1-agreement A (fraction). A failed gate exits with 4.

Examples:
  pare validate model.onnx model.pruned.onnx --data test.npz --max-accuracy-drop 1
  pare validate model.tflite pruned.tflite --data x.npy --labels y.npy --json
  pare validate model.onnx pruned.onnx --input-shape input=1,3,224,224 --min-cosine 0.99";

#[derive(Args, Debug)]
struct EvalFlags {
    /// Integer class labels (.npy, one per sample).
    #[arg(long, value_name = "FILE")]
    labels: Option<PathBuf>,
    /// Use at most this many samples (random inputs: this many) [default: all; random: 32].
    #[arg(long, value_name = "N")]
    samples: Option<usize>,
    /// Samples per run when the batch dimension is dynamic.
    #[arg(long, value_name = "N", default_value_t = crate::data::DEFAULT_BATCH_SIZE)]
    batch_size: usize,
    /// Shape of a random input, e.g. input=1,3,224,224 (repeatable; sets dynamic dimensions).
    #[arg(long, value_name = "NAME=DIMS", value_parser = parse_input_shape)]
    input_shape: Vec<(String, Vec<usize>)>,
    /// Seed of random inputs.
    #[arg(long, value_name = "N", default_value_t = crate::verify::DEFAULT_SEED)]
    seed: u64,
}

impl EvalFlags {
    fn options(&self, source: crate::data::DataSource) -> crate::data::DataOptions {
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

fn parse_input_shape(s: &str) -> Result<(String, Vec<usize>), String> {
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
struct CalibFlags {
    /// Calibration inputs: a .npy (single-input models), a .npz (one array per input name) or
    /// an ONNX test_data_set folder; a few hundred representative samples, preprocessed like
    /// the model's real inputs. Drives --criterion wanda/sparsegpt, and refits the layers that
    /// lose input channels in a structural prune.
    #[arg(long, value_name = "DATA")]
    calib: Option<PathBuf>,
    /// How unstructured pruning chooses weights: magnitude (|W|), wanda (|W|·‖X‖ per output
    /// row) or sparsegpt (Hessian-guided, compensating the error on the kept weights).
    #[arg(
        long,
        value_name = "magnitude|wanda|sparsegpt",
        default_value = "magnitude"
    )]
    criterion: crate::calib::Criterion,
    /// Use at most this many calibration samples [default: all].
    #[arg(long, value_name = "N", requires = "calib")]
    calib_samples: Option<usize>,
    /// Calibration samples per run when the batch dimension is dynamic.
    #[arg(long, value_name = "N", default_value_t = 16, requires = "calib")]
    calib_batch_size: usize,
    /// Ridge / Hessian dampening, as a fraction of the mean diagonal of XᵀX.
    #[arg(long, value_name = "F", default_value_t = crate::calib::DEFAULT_DAMPENING, requires = "calib")]
    dampening: f64,
    /// With --calib and channel pruning: do not refit the layers after the removed channels.
    #[arg(long, requires = "calib")]
    no_refit: bool,
    /// Collect every layer's calibration statistics from the original model in one pass
    /// (faster on deep models) instead of layer by layer from the model as pruned so far.
    #[arg(long, requires = "calib")]
    one_pass: bool,
    /// Reconstruct each layer's outputs on the inputs it sees in the model pruned so far
    /// (SparseGPT's own objective), without correcting the earlier layers' error or the bias.
    #[arg(long, requires = "calib")]
    no_correct: bool,
}

impl CalibFlags {
    fn options(&self) -> Option<crate::calib::CalibOptions> {
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
        Some(o)
    }
}

/// Structural pruning flags of `pare prune`.
#[derive(Args, Debug)]
struct ChannelFlags {
    /// Remove this fraction of the prunable channels (conv filters, dense neurons) in [0, 1),
    /// rewiring every dependent layer. Combines with --sparsity (channels first).
    #[arg(long, value_name = "R", group = "channel_amount")]
    channels: Option<f64>,
    /// Remove channels until the MACs are at most this fraction of the original's.
    #[arg(long, value_name = "F", group = "channel_amount")]
    target_macs: Option<f64>,
    /// Remove channels until the parameters are at most this fraction of the original's.
    #[arg(long, value_name = "F", group = "channel_amount")]
    target_params: Option<f64>,
    /// How channels are ranked: l1 or l2 (filter norm), bn (|gamma| of an explicit
    /// batch-norm), fpgm (distance to the geometric median of the layer's filters), activation
    /// (what the channel contributes to the next layers' outputs on --calib data) [default: l1].
    #[arg(long, value_name = "l1|l2|bn|fpgm|activation")]
    importance: Option<crate::structural::Importance>,
    /// layer: every group of coupled layers loses the ratio; global: one ranking of
    /// normalized scores over all groups [default: --scope if layer or global, else layer].
    #[arg(long, value_name = "layer|global")]
    channel_scope: Option<crate::structural::ChannelScope>,
    /// Keep channel counts multiples of K (e.g. 8 for SIMD-friendly kernels).
    #[arg(long, value_name = "K")]
    round_to: Option<usize>,
    /// With a global channel scope, no group loses more than this fraction [default: 0.9].
    #[arg(long, value_name = "F")]
    max_layer_ratio: Option<f64>,
    /// Drop removed channels' constant output instead of folding it into the next layer's bias.
    #[arg(long)]
    no_fold: bool,
}

impl ChannelFlags {
    fn options(
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
struct LatencyFlags {
    /// Timed runs of each model on the first batch (0: skip latency).
    #[arg(long, value_name = "N", default_value_t = 20)]
    latency_runs: usize,
    /// Untimed runs of each model before timing.
    #[arg(long, value_name = "N", default_value_t = 3)]
    warmup: usize,
}

#[derive(Args, Debug)]
struct GateFlags {
    /// Fail (exit 4) when accuracy drops by more than P percentage points (needs labels).
    #[arg(long, value_name = "P")]
    max_accuracy_drop: Option<f64>,
    /// Fail (exit 4) when any output's mean cosine similarity is below C.
    #[arg(long, value_name = "C")]
    min_cosine: Option<f64>,
    /// Fail (exit 4) when any classifier-like output's top-1 agreement is below A (a fraction).
    #[arg(long, value_name = "A")]
    min_top1_agreement: Option<f64>,
}

impl GateFlags {
    fn gates(&self) -> crate::validate::Gates {
        crate::validate::Gates {
            max_accuracy_drop: self.max_accuracy_drop,
            min_cosine: self.min_cosine,
            min_top1_agreement: self.min_top1_agreement,
        }
    }
}

const PRUNE_HELP: &str = "\
Eligible weights: Conv, ConvTranspose, Gemm, MatMul (constant operand), LSTM/GRU/RNN W and R, \
QLinearConv, QLinearMatMul, ConvInteger, MatMulInteger (ONNX); CONV_2D, CONV_3D, DEPTHWISE_CONV_2D, \
FULLY_CONNECTED, TRANSPOSE_CONV, BATCH_MATMUL, sequence LSTMs (TFLite); including weights behind \
DequantizeLinear, Cast or DEQUANTIZE, in Constant nodes and in If/Loop/Scan bodies. Biases and \
normalization parameters are never pruned. Quantized weights are ranked by |q - zero_point| * scale \
and pruned to their zero point.

Structural pruning (--channels R, --target-macs F, --target-params F): removes whole output \
channels of Conv/Gemm/MatMul/CONV_2D/FULLY_CONNECTED layers and slices every tensor coupled to them \
(biases, batch-norm, depthwise kernels and groups, the next layer's input axis, residual Add/Mul \
partners, Concat offsets, flattened rows, per-channel quantization, Reshape targets), so the written \
model has smaller tensors and fewer MACs with the same inputs and outputs. Channels that reach an op \
pare cannot reason about are kept; the report lists these boundaries. The constant output of removed \
channels with all-zero filters is folded into the next layer's bias (exact for dense and unpadded \
consumers). Runs before magnitude pruning when both are given; --search with --channels and no \
--sparsity searches the channel ratio.

Storage (--storage, default auto): each eligible weight is written in the smaller of its dense and sparse encodings: TFLite sparse tensors (SparsityParameters, SPARSE_CSR with the narrowest index vectors; blocks with --pattern block:RxC) feeding a DENSIFY op, as TensorFlow's converter writes them; ONNX sparse_initializer with INT64 indices. int8 FULLY_CONNECTED weights stay dense (LiteRT's default XNNPACK delegate cannot prepare them behind DENSIFY). sparse forces it, dense writes every weight dense, keep leaves the input's encoding. Sparse files are smaller on disk, not in RAM: runtimes expand them at load. tract verifies the densified equivalent, and the report says so. Sparse inputs are pruned dense and written back as --storage says.

Calibration (--calib DATA, a few hundred representative inputs as .npy/.npz): --criterion wanda \
prunes by |W|·‖X‖ per output row; --criterion sparsegpt prunes layer by layer with Hessian-guided \
error compensation on the weights that stay (int8 weights stay on their quantization grid), \
reproducing the original model's outputs and mean; with channel pruning, every layer that lost \
input channels is refit by least squares, and --importance activation ranks channels by what they \
contribute on the data. Layers calibration cannot cover are pruned by magnitude and listed in the \
report (calibration[].fallbacks). --one-pass trades accuracy for speed on deep models.

Config file (--config pare.toml): top-level keys sparsity, scope, pattern, min_params, \
max_layer_sparsity, include, exclude, and [[layer]] tables with match (regex), sparsity, pattern, \
channels (a channel ratio for the matching layers) or skip = true; the first matching rule wins. A \
magnitude rule that matches nothing is an error.

Validation: --validate DATA compares the pruned model with the original on DATA (see pare validate \
--help) and puts the result in the report; with a gate, a model that fails it is not written and pare \
exits with 4 (--keep-failed writes it anyway). --search finds the largest sparsity within the gates \
by bisection on a grid of --search-step between 0 and --sparsity (default 0.99): the upper bound is \
tried first, then each step halves the interval between the largest passing and the smallest failing \
sparsity until they are one step apart. Every step is in the report.

Sensitivity: --scope sensitivity --sensitivity profile.json --sparsity S gives each tensor the largest \
sparsity whose measured drop stays within one common tolerance, chosen so that the parameter-weighted \
sparsity is S: insensitive layers are pruned harder. Make the profile with pare sensitivity --report.

Examples:
  pare prune model.onnx -o model.pruned.onnx --sparsity 0.75
  pare prune model.tflite -o model.24.tflite --pattern 2:4
  pare prune model.onnx -o out.onnx --sparsity 0.8 --scope lamp --exclude '^classifier' --json
  pare prune model.onnx -o out.onnx --scope lamp --validate test.npz --max-accuracy-drop 1 --search
  pare prune model.tflite -o small.tflite --target-macs 0.5 --round-to 8
  pare prune model.tflite -o sparse.tflite --sparsity 0.875 --pattern block:1x4 --json
  pare prune model.onnx -o out.onnx --channels 0.5 --validate val.npz --max-accuracy-drop 1 --search
  pare prune model.onnx -o out.onnx --sparsity 0.75 --criterion sparsegpt --calib calib.npy
  pare prune model.tflite -o small.tflite --target-macs 0.5 --importance activation --calib calib.npy";

#[derive(Args, Debug)]
struct DataFlags {
    /// ONNX: store every tensor of at least 1 KiB in an external data file beside the output
    /// (default name: OUTPUT.data). Large tensors are aligned to 64 KiB so runtimes can map them.
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "", conflicts_with = "inline_data")]
    external_data: Option<String>,
    /// ONNX: pull all external data back into the model file (which must stay under 2 GiB).
    #[arg(long)]
    inline_data: bool,
}

impl DataFlags {
    fn mode(&self, output: &std::path::Path) -> ExternalDataMode {
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
struct WriteFlags {
    /// Replace the output file if it exists.
    #[arg(long)]
    force: bool,
    /// Do not check the written model with tract.
    #[arg(long, conflicts_with = "require_verified")]
    no_verify: bool,
    /// Fail (exit 3, nothing written) when tract cannot verify the written model.
    #[arg(long)]
    require_verified: bool,
    /// Report raw file sizes only: skip the gzip -9 / zstd -9 measurement of the input and
    /// output (about 5 s per 100 MB of model on 2 cores, overlapped with verification).
    #[arg(long)]
    no_compressed_sizes: bool,
}

impl WriteFlags {
    fn policy(&self) -> VerifyPolicy {
        if self.no_verify {
            VerifyPolicy::Skip
        } else if self.require_verified {
            VerifyPolicy::Require
        } else {
            VerifyPolicy::Check
        }
    }
}

/// Runs the CLI and returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            return code;
        }
    };
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            match e {
                Error::Usage(_) => exit::USAGE,
                Error::Verification(_) => exit::VERIFICATION,
                _ => exit::ERROR,
            }
        }
    }
}

fn print_json(value: &impl serde::Serialize) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    // A closed pipe (`pare inspect --json m.onnx | head`) is the reader's choice, not an error.
    if serde_json::to_writer_pretty(&mut out, value).is_ok() {
        let _ = writeln!(out);
    }
    Ok(())
}

fn run(cli: &Cli) -> Result<i32, Error> {
    match &cli.command {
        Command::Inspect { model } => {
            let doc = crate::Document::open(model)?;
            let report = crate::inspect::inspect(&doc)?;
            if cli.json {
                print_json(&report)?;
            } else {
                let mut out = std::io::stdout().lock();
                let _ = crate::inspect::render(&report, &mut out);
            }
            Ok(exit::OK)
        }
        Command::Convert {
            input,
            output,
            storage,
            data,
            write,
        } => {
            let opts = WriteOptions {
                external_data: data.mode(output),
                storage: crate::sparse::StoragePolicy::new(*storage),
                compressed_sizes: !write.no_compressed_sizes,
                verify: write.policy(),
                force: write.force,
                ..WriteOptions::default()
            };
            let spinner = Spinner::new(cli.quiet);
            let report = crate::convert::convert_with_progress(input, output, &opts, &spinner);
            spinner.finish();
            let report = report?;
            if cli.json {
                print_json(&report)?;
            }
            if !cli.quiet {
                render_write(&report);
            }
            Ok(exit::OK)
        }
        Command::Prune {
            input,
            output,
            sparsity,
            scope,
            pattern,
            min_params,
            max_layer_sparsity,
            include,
            exclude,
            config,
            sensitivity,
            structural,
            calib,
            validate,
            eval,
            gates,
            latency,
            keep_failed,
            search,
            search_step,
            report,
            storage,
            data,
            write,
        } => {
            use crate::prune::{config as pcfg, PruneOptions};
            let mut opts = PruneOptions::default();
            if let Some(c) = config {
                pcfg::load(c, &mut opts)?;
            }
            // Flags override the config file.
            opts.sparsity = sparsity.or(opts.sparsity);
            opts.scope = scope.unwrap_or(opts.scope);
            opts.pattern = pattern.unwrap_or(opts.pattern);
            opts.min_params = min_params.unwrap_or(opts.min_params);
            opts.max_layer_sparsity = max_layer_sparsity.unwrap_or(opts.max_layer_sparsity);
            for r in include {
                opts.include.push(pcfg::regex("--include", r)?);
            }
            for r in exclude {
                opts.exclude.push(pcfg::regex("--exclude", r)?);
            }
            if sensitivity.is_some() && opts.scope != crate::prune::Scope::Sensitivity {
                return Err(Error::Usage(
                    "--sensitivity FILE applies to --scope sensitivity".into(),
                ));
            }
            if let Some(p) = sensitivity {
                opts.sensitivity = Some(std::sync::Arc::new(crate::sensitivity::Profile::load(p)?));
            }
            opts.channels = structural.options(*scope, &opts.exclude, opts.channels.take())?;
            opts.criterion = calib.criterion;
            opts.calib = calib.options();
            let gates = gates.gates();
            if validate.is_none() && !gates.is_empty() {
                return Err(Error::Usage(
                    "a gate (--max-accuracy-drop, --min-cosine, --min-top1-agreement) needs --validate DATA".into(),
                ));
            }
            let wopts = WriteOptions {
                external_data: data.mode(output),
                storage: crate::sparse::StoragePolicy {
                    storage: *storage,
                    block: match opts.pattern {
                        crate::prune::Pattern::Block { rows, cols } => Some((rows, cols)),
                        _ => None,
                    },
                },
                compressed_sizes: !write.no_compressed_sizes,
                verify: write.policy(),
                force: write.force,
                ..WriteOptions::default()
            };
            let spinner = Spinner::new(cli.quiet);
            let result = match validate {
                None => crate::prune::prune_with_progress(input, output, &opts, &wopts, &spinner),
                Some(source) => {
                    let v = crate::prune::Validation {
                        options: crate::validate::ValidateOptions {
                            data: eval.options(source.clone()),
                            gates,
                            latency_runs: latency.latency_runs,
                            warmup: latency.warmup,
                        },
                        keep_failed: *keep_failed,
                        search: search.then(|| crate::prune::Search { step: *search_step }),
                    };
                    crate::prune::prune_validated(input, output, &opts, &wopts, &v, &spinner)
                }
            };
            spinner.finish();
            let result = result?;
            emit(cli, report.as_deref(), &result)?;
            if !cli.quiet {
                let mut err = std::io::stderr().lock();
                if let Some(s) = &result.search {
                    let _ = render_search(s, &mut err);
                }
                if let Some(c) = &result.channels {
                    let _ = crate::structural::render(c, &mut err);
                }
                if s_layers_nonempty(&result) && !result.layers.is_empty() {
                    let _ = crate::prune::render(&result, &mut err);
                }
                if let Some(v) = &result.validation {
                    let _ = writeln!(err);
                    let _ = crate::validate::render(v, &mut err);
                }
                drop(err);
                if let Some(w) = &result.write {
                    render_write(w);
                }
            }
            if result.gate_failed() {
                eprintln!(
                    "error: {}",
                    match (&result.write, &result.search) {
                        (_, Some(s)) if s.chosen.is_none() =>
                            "no sparsity on the search grid meets the gates; nothing written".to_string(),
                        (Some(_), _) => format!(
                            "the pruned model fails its validation gate; written anyway (--keep-failed) to {}",
                            output.display()
                        ),
                        (None, _) => format!(
                            "the pruned model fails its validation gate; {} not written",
                            output.display()
                        ),
                    }
                );
                return Ok(exit::GATE);
            }
            Ok(exit::OK)
        }
        Command::Validate {
            original,
            candidate,
            data,
            eval,
            gates,
            latency,
            report,
        } => {
            let opts = crate::validate::ValidateOptions {
                data: eval.options(data.clone()),
                gates: gates.gates(),
                latency_runs: latency.latency_runs,
                warmup: latency.warmup,
            };
            opts.gates.check()?;
            let spinner = Spinner::new(cli.quiet);
            let result = (|| {
                crate::progress::Progress::stage(&spinner, "reading");
                let a = crate::Document::open(original)?;
                let b = crate::Document::open(candidate)?;
                crate::validate::validate(&a, &b, &opts, &spinner)
            })();
            spinner.finish();
            let result = result?;
            emit(cli, report.as_deref(), &result)?;
            if !cli.quiet {
                let _ = crate::validate::render(&result, &mut std::io::stderr().lock());
            }
            if !result.passed {
                eprintln!("error: {} fails a validation gate", candidate.display());
                return Ok(exit::GATE);
            }
            Ok(exit::OK)
        }
        Command::Sensitivity {
            model,
            data,
            eval,
            ratios,
            metric,
            pattern,
            min_params,
            include,
            exclude,
            plot,
            report,
        } => {
            use crate::prune::config as pcfg;
            let mut opts = crate::sensitivity::SensitivityOptions {
                ratios: ratios.clone(),
                metric: *metric,
                pattern: *pattern,
                min_params: *min_params,
                data: eval.options(data.clone()),
                ..Default::default()
            };
            for r in include {
                opts.include.push(pcfg::regex("--include", r)?);
            }
            for r in exclude {
                opts.exclude.push(pcfg::regex("--exclude", r)?);
            }
            let spinner = Spinner::new(cli.quiet);
            let result = crate::sensitivity::sensitivity(model, &opts, &spinner);
            spinner.finish();
            let result = result?;
            if let Some(path) = plot {
                crate::sensitivity::plot(&result, path)?;
            }
            emit(cli, report.as_deref(), &result)?;
            if !cli.quiet {
                let _ = crate::sensitivity::render(&result, &mut std::io::stderr().lock());
            }
            Ok(exit::OK)
        }
    }
}

/// The machine-readable result: `--report FILE` (atomically) and `--json` (stdout).
fn emit(
    cli: &Cli,
    report: Option<&std::path::Path>,
    value: &impl serde::Serialize,
) -> Result<(), Error> {
    if let Some(path) = report {
        write_report_file(path, value)?;
    }
    if cli.json {
        print_json(value)?;
    }
    Ok(())
}

/// Writes a JSON report atomically (temporary file beside it, then rename).
fn write_report_file(path: &std::path::Path, value: &impl serde::Serialize) -> Result<(), Error> {
    let mut bytes =
        serde_json::to_vec_pretty(value).map_err(|e| Error::io(path, std::io::Error::other(e)))?;
    bytes.push(b'\n');
    crate::output::write_atomic(path, &bytes)
}

/// A spinner on stderr naming the current stage: drawn only on a terminal (indicatif hides it
/// when stderr is a pipe or a file, as in CI) and never with --quiet.
struct Spinner(indicatif::ProgressBar);

impl Spinner {
    fn new(quiet: bool) -> Self {
        let bar = if quiet {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::new_spinner()
        };
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        Spinner(bar)
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl crate::progress::Progress for Spinner {
    fn stage(&self, what: &str) {
        self.0.set_message(what.to_string());
    }

    fn begin(&self, what: &str, total: u64) {
        self.0.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {pos}/{len} samples ({per_sec}, eta {eta})",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        self.0.set_length(total);
        self.0.set_position(0);
        self.0.set_message(what.to_string());
    }

    fn advance(&self, n: u64) {
        self.0.inc(n);
    }

    fn finish_bar(&self) {
        self.0
            .set_style(indicatif::ProgressStyle::default_spinner());
        self.0.set_length(0);
        self.0.set_position(0);
    }
}

/// Whether a prune report has layers to show (a search that found nothing has only the
/// discovery at sparsity 0).
fn s_layers_nonempty(r: &crate::prune::PruneReport) -> bool {
    r.search.as_ref().is_none_or(|s| s.chosen.is_some())
}

fn render_search(s: &crate::prune::SearchReport, w: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        w,
        "search ({}): {} on a {} grid up to {}",
        s.parameter, s.strategy, s.step, s.upper_bound
    )?;
    writeln!(
        w,
        "{:>4} {:>9} {:>9} {:>10} {:>9} {:>10} {:>7}  result",
        "step",
        s.parameter,
        if s.parameter == "channels" {
            "params-"
        } else {
            "reached"
        },
        "accuracy",
        "drop",
        "cosine",
        "top-1"
    )?;
    for st in &s.steps {
        writeln!(
            w,
            "{:>4} {:>9.4} {:>9.4} {:>10} {:>9} {:>10.6} {:>7}  {}",
            st.step,
            st.sparsity,
            st.eligible_sparsity,
            st.accuracy.map_or("-".into(), |a| format!("{a:.2}%")),
            st.drop_points.map_or("-".into(), |d| format!("{d:.2}pt")),
            st.cosine,
            st.top1_agreement
                .map_or("-".into(), |a| format!("{:.1}%", 100.0 * a)),
            if st.passed { "pass" } else { "fail" }
        )?;
    }
    match s.chosen {
        Some(c) => writeln!(w, "chosen {}: {c:.4}\n", s.parameter),
        None => writeln!(w, "no {} meets the gates\n", s.parameter),
    }
}

fn render_write(r: &WriteReport) {
    eprintln!("wrote {}", r.files.join(", "));
    let _ = r.sizes.render(&mut std::io::stderr().lock());
    if let Some(s) = &r.storage {
        if s.sparse_tensors.is_empty() {
            eprintln!("storage {}: every weight dense", s.storage);
        } else {
            eprintln!(
                "storage {}: {} weights sparse ({} bytes dense, {} stored, {:.2}x){}",
                s.storage,
                s.sparse_tensors.len(),
                s.sparse_dense_bytes,
                s.sparse_stored_bytes,
                s.sparse_dense_bytes as f64 / s.sparse_stored_bytes.max(1) as f64,
                if s.densified > 0 {
                    format!("; {} densified", s.densified)
                } else {
                    String::new()
                }
            );
        }
        if s.densified > 0 && s.sparse_tensors.is_empty() {
            eprintln!("  {} sparse weights written dense", s.densified);
        }
    }
    match &r.verification {
        None => eprintln!("verification skipped (--no-verify)"),
        Some(v) if !v.verified => {
            eprintln!("verified: false: {}", v.reason.as_deref().unwrap_or(""))
        }
        Some(v) => {
            let identical = v.outputs.iter().filter(|o| o.identical).count();
            eprintln!(
                "verified: true (tract ran both models on seeded random inputs; {identical}/{} outputs bit-identical)",
                v.outputs.len()
            );
            for o in v.outputs.iter().filter(|o| !o.identical) {
                eprintln!(
                    "  output {}: max abs diff {:.3e}, mean abs diff {:.3e}, cosine {:.6}",
                    o.index, o.max_abs_diff, o.mean_abs_diff, o.cosine
                );
            }
        }
    }
}
