//! `pare prune`: the flags of magnitude, structural and calibrated pruning turned into
//! `PruneOptions`, the run with optional validation and search, and its reports on stderr.

use super::flags::{
    CalibFlags, ChannelFlags, DataFlags, EvalFlags, GateFlags, LatencyFlags, WriteFlags,
};
use super::{emit, exit, render_write, spinner::Spinner, Cli};
use crate::convert::WriteOptions;
use crate::error::Error;
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub(super) struct PruneArgs {
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
}

impl PruneArgs {
    pub(super) fn run(&self, cli: &Cli) -> Result<i32, Error> {
        let PruneArgs {
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
        } = self;
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
            compressed_sizes: write.compressed_sizes,
            verify: write.policy(),
            // The user's data says more than random noise about an image or audio model.
            verify_data: match validate {
                Some(source) => Some(eval.options(source.clone())),
                None => (opts.calib.as_ref().map(|c| c.data.clone()))
                    .or_else(|| super::flags::random_shaped(&eval.input_shape)),
            },
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
        if cli.text() {
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
            cli.fail(match (&result.write, &result.search) {
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
                });
            return Ok(exit::GATE);
        }
        Ok(exit::OK)
    }
}

pub(super) const HELP: &str = "\
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
