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
Exit codes: 0 success, 1 error (unreadable or invalid input, I/O), 2 usage (bad flags, refused output path), \
3 verification failed (with --require-verified, or outputs changed by a conversion); nothing is written on failure."
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
        #[command(flatten)]
        data: DataFlags,
        #[command(flatten)]
        write: WriteFlags,
    },
    /// Zero the weights closest to zero (magnitude pruning): per layer, with one global
    /// threshold, or by LAMP score; unstructured, N:M or in blocks; float, f16 and int8 weights
    /// in their stored type. The written model is checked against the original in tract.
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
        /// Also write the JSON report to this file.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        #[command(flatten)]
        data: DataFlags,
        #[command(flatten)]
        write: WriteFlags,
    },
}

const PRUNE_HELP: &str = "\
Eligible weights: Conv, ConvTranspose, Gemm, MatMul (constant operand), LSTM/GRU/RNN W and R, \
QLinearConv, QLinearMatMul, ConvInteger, MatMulInteger (ONNX); CONV_2D, CONV_3D, DEPTHWISE_CONV_2D, \
FULLY_CONNECTED, TRANSPOSE_CONV, BATCH_MATMUL, sequence LSTMs (TFLite); including weights behind \
DequantizeLinear, Cast or DEQUANTIZE, in Constant nodes and in If/Loop/Scan bodies. Biases and \
normalization parameters are never pruned. Quantized weights are ranked by |q - zero_point| * scale \
and pruned to their zero point.

Config file (--config pare.toml): top-level keys sparsity, scope, pattern, min_params, \
max_layer_sparsity, include, exclude, and [[layer]] tables with match (regex), sparsity, pattern \
or skip = true; the first matching rule wins. A rule that matches nothing is an error.

Examples:
  pare prune model.onnx -o model.pruned.onnx --sparsity 0.75
  pare prune model.tflite -o model.24.tflite --pattern 2:4
  pare prune model.onnx -o out.onnx --sparsity 0.8 --scope lamp --exclude '^classifier' --json";

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
            data,
            write,
        } => {
            let opts = WriteOptions {
                external_data: data.mode(output),
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
            report,
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
            let wopts = WriteOptions {
                external_data: data.mode(output),
                verify: write.policy(),
                force: write.force,
                ..WriteOptions::default()
            };
            let spinner = Spinner::new(cli.quiet);
            let result = crate::prune::prune_with_progress(input, output, &opts, &wopts, &spinner);
            spinner.finish();
            let result = result?;
            if let Some(path) = report {
                write_report_file(path, &result)?;
            }
            if cli.json {
                print_json(&result)?;
            }
            if !cli.quiet {
                let _ = crate::prune::render(&result, &mut std::io::stderr().lock());
                if let Some(w) = &result.write {
                    render_write(w);
                }
            }
            Ok(exit::OK)
        }
    }
}

/// Writes a JSON report atomically (temporary file beside it, then rename).
fn write_report_file(path: &std::path::Path, value: &impl serde::Serialize) -> Result<(), Error> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(path, e))?;
    serde_json::to_writer_pretty(&mut tmp, value)
        .map_err(|e| Error::io(path, std::io::Error::other(e)))?;
    tmp.write_all(b"\n").map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
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

impl crate::convert::Progress for Spinner {
    fn stage(&self, what: &str) {
        self.0.set_message(what.to_string());
    }
}

fn render_write(r: &WriteReport) {
    eprintln!(
        "wrote {} ({} bytes; input {} bytes)",
        r.files.join(", "),
        r.output_bytes,
        r.input_bytes
    );
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
