//! The command line: parse flags, call the library, render results, map errors to exit codes.
//! One file per command over shared flag groups (`flags`) and the progress display (`spinner`).
//!
//! Layer: command (imports its own layer and the ones below; see ARCHITECTURE.md).

mod convert;
mod flags;
mod inspect;
mod prune;
mod sensitivity;
mod spinner;
mod validate;

use crate::convert::WriteReport;
use crate::error::Error;
use clap::{Parser, Subcommand};
use std::io::Write;

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
    /// The written model's outputs diverge from the original's and --require-verified was
    /// given. Nothing was written.
    pub const DIVERGED: i32 = 5;
    /// Interrupted (Ctrl-C in the Python package). Nothing was written.
    pub const INTERRUPTED: i32 = 130;
}

#[derive(Parser, Debug)]
#[command(
    name = "pare",
    version,
    about = "Make trained ONNX and TFLite models smaller after export",
    long_about = "pare reads ONNX (.onnx, with external data) and TFLite (.tflite, float and int8) model files, \
and writes them back losslessly. Every model it writes is loaded and run in tract on 16 seeded random inputs \
(on the first 32 samples of the data, with prune --validate or --calib) and compared with the original: it is verified when its outputs agree (cosine per sample ≥ 0.95 on average, \
and top-1 agreement ≥ 90% for classifier-like outputs; quantized outputs dequantized); otherwise the report says \
the outputs diverge, or that tract could not run it. TFLite models run in tract \
through a validation copy that rewrites what tract cannot run as it is (constant DEQUANTIZE, int8 \
kernels emulated in float, PRELU, masked STRIDED_SLICE, …); the written file is never rewritten.\n\n\
Exit codes: 0 success, 1 error (unreadable or invalid input, I/O, a model with no prunable channels, \
a --target-macs/--target-params that cannot be reached), 2 usage (bad flags, bad data, refused output path), \
3 verification failed (with --require-verified, or outputs changed by a conversion), \
4 a validation gate failed (validate; prune --validate / --search), 5 the outputs diverge from the original's \
(with --require-verified); nothing is written on failure \
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
    /// Set by [`call`]: the JSON result is kept here instead of printed, and no report text
    /// or error line goes to stderr (the caller renders them).
    #[arg(skip)]
    capture: Option<std::sync::Arc<std::sync::Mutex<Captured>>>,
}

/// What [`call`] keeps instead of printing.
#[derive(Debug, Default)]
struct Captured {
    json: Option<String>,
    /// A failure reported with an exit code rather than an [`Error`] (a failed gate).
    error: Option<String>,
}

impl Cli {
    /// Whether human-readable reports go to stderr.
    fn text(&self) -> bool {
        !self.quiet && self.capture.is_none()
    }

    /// Reports a failure that ends in an exit code rather than an [`Error`] (a failed gate):
    /// on stderr, or kept for [`call`].
    fn fail(&self, msg: String) {
        match &self.capture {
            Some(c) => c.lock().unwrap_or_else(|p| p.into_inner()).error = Some(msg),
            None => eprintln!("error: {msg}"),
        }
    }

    /// The machine-readable result: kept for [`call`], or on stdout with `--json`.
    fn print_json(&self, value: &impl serde::Serialize) -> Result<(), Error> {
        if let Some(c) = &self.capture {
            let text = serde_json::to_string_pretty(value)
                .map_err(|e| Error::Usage(format!("the report cannot be serialized: {e}")))?;
            c.lock().unwrap_or_else(|p| p.into_inner()).json = Some(text);
            return Ok(());
        }
        if self.json {
            print_json(value)?;
        }
        Ok(())
    }
}

// One Command exists per process: boxing the large variant buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Show a model's format, inputs/outputs, ops, per-layer weights, params, sparsity, MACs and size.
    Inspect(inspect::InspectArgs),
    /// Re-serialize a model without changing its meaning (optionally moving ONNX weights to or
    /// from an external data file).
    Convert(convert::ConvertArgs),
    /// Zero the weights closest to zero (magnitude pruning: per layer, global, LAMP; unstructured,
    /// N:M or blocks; float, f16 and int8 weights in their stored type), and/or remove whole
    /// channels (structural pruning: --channels, --target-macs); with calibration data
    /// (--calib), reconstruct what stays (SparseGPT, Wanda, least-squares refit). The written
    /// model is checked against the original in tract.
    #[command(after_help = prune::HELP)]
    Prune(prune::PruneArgs),
    /// Compare a candidate model (pruned, converted) with its original in tract on the same
    /// inputs: per-output error, cosine similarity, top-1 agreement, accuracy against labels,
    /// latency, file and gzip sizes, params, nonzeros and MACs; optional pass/fail gates.
    #[command(after_help = validate::HELP)]
    Validate(validate::ValidateArgs),
    /// Prune each prunable layer alone at a ladder of sparsities and measure the loss on your
    /// data: a table, a JSON profile (--report) for `pare prune --scope sensitivity`, and an
    /// SVG chart (--plot).
    Sensitivity(sensitivity::SensitivityArgs),
}

/// Runs the CLI on the process's arguments and returns the exit code.
pub fn main() -> i32 {
    main_from(std::env::args_os())
}

/// Runs the CLI on `args` (the first is the program name) and returns the exit code.
pub fn main_from<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
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
            exit_code(&e)
        }
    }
}

/// The exit code of an error.
fn exit_code(e: &Error) -> i32 {
    match e {
        Error::Usage(_) => exit::USAGE,
        Error::Verification(_) => exit::VERIFICATION,
        Error::Diverged(_) => exit::DIVERGED,
        Error::Interrupted => exit::INTERRUPTED,
        _ => exit::ERROR,
    }
}

/// What a command run through [`call`] produced.
#[derive(Debug)]
pub struct Outcome {
    /// The exit code the CLI would have returned.
    pub code: i32,
    /// The report, as `--json` prints it.
    pub json: Option<String>,
    /// The error message the CLI would have printed (without `error: `).
    pub error: Option<String>,
}

/// Runs a command as the CLI would with `--json` (`args` without the program name), for an
/// embedding: the report is returned, not printed, and no report text or error line goes to
/// stderr; progress shows unless `quiet`. Clap's parse errors come back with exit code 2.
pub fn call<I, T>(args: I, quiet: bool) -> Outcome
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let argv =
        std::iter::once(std::ffi::OsString::from("pare")).chain(args.into_iter().map(Into::into));
    let mut cli = match Cli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => {
            return Outcome {
                code: exit::USAGE,
                json: None,
                error: Some(
                    e.render()
                        .to_string()
                        .trim()
                        .trim_start_matches("error: ")
                        .to_string(),
                ),
            }
        }
    };
    let sink = std::sync::Arc::new(std::sync::Mutex::new(Captured::default()));
    cli.capture = Some(sink.clone());
    cli.quiet |= quiet;
    let result = run(&cli);
    let kept = std::mem::take(&mut *sink.lock().unwrap_or_else(|p| p.into_inner()));
    let (code, error) = match result {
        Ok(code) => (code, kept.error),
        Err(e) => (exit_code(&e), Some(e.to_string())),
    };
    Outcome {
        code,
        json: kept.json,
        error,
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
        Command::Inspect(args) => args.run(cli),
        Command::Convert(args) => args.run(cli),
        Command::Prune(args) => args.run(cli),
        Command::Validate(args) => args.run(cli),
        Command::Sensitivity(args) => args.run(cli),
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
    cli.print_json(value)
}

/// Writes a JSON report atomically (temporary file beside it, then rename).
fn write_report_file(path: &std::path::Path, value: &impl serde::Serialize) -> Result<(), Error> {
    let mut bytes =
        serde_json::to_vec_pretty(value).map_err(|e| Error::io(path, std::io::Error::other(e)))?;
    bytes.push(b'\n');
    crate::output::write_atomic(path, &bytes)
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
        Some(v) => print_verification(v),
    }
}

/// The verdict in words: agrees, diverges (with the figures and what to try), not verified.
fn print_verification(v: &crate::verify::Verification) {
    use crate::verify::Verdict;
    let worst = |f: fn(&crate::verify::OutputAgreement) -> Option<f64>| {
        v.outputs.iter().filter_map(f).reduce(f64::min)
    };
    match v.verdict {
        Verdict::NotVerified => {
            eprintln!("not verified: {}", v.reason.as_deref().unwrap_or(""))
        }
        Verdict::Agrees => {
            let identical = v.outputs.iter().filter(|o| o.identical).count();
            let mut figures = format!("{identical}/{} outputs bit-identical", v.outputs.len());
            if identical < v.outputs.len() {
                if let Some(c) = worst(|o| Some(o.cosine)) {
                    figures += &format!(", cosine ≥ {c:.4}");
                }
                if let Some(t) = worst(|o| o.top1_agreement) {
                    figures += &format!(", top-1 agreement {:.0}%", 100.0 * t);
                }
            }
            let inputs = if v.on == "random" {
                format!("{} seeded random inputs", v.samples)
            } else {
                format!("{} samples of {}", v.samples, v.on)
            };
            eprintln!(
                "verified: the outputs agree with the original's (tract, {inputs}; {figures})"
            );
        }
        Verdict::Diverges => {
            eprintln!(
                "NOT VERIFIED: {}",
                v.reason.as_deref().unwrap_or("the outputs diverge")
            );
            eprintln!(
                "  written anyway (--require-verified refuses it): try a lower --sparsity, --calib DATA or --scope lamp"
            );
            if v.on == "random" {
                eprintln!(
                    "  random inputs say little about image or audio models: --validate DATA or --calib DATA verifies on your data"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// The help states the verification's sample counts and thresholds as the code has them.
    #[test]
    fn help_states_the_verification_as_it_runs() {
        let help = super::Cli::command().get_long_about().unwrap().to_string();
        let v = crate::verify::SAMPLES;
        let d = crate::validate::VERIFY_SAMPLES;
        assert!(
            help.contains(&format!("{v} seeded random inputs")),
            "{help}"
        );
        assert!(
            help.contains(&format!("first {d} samples of the data")),
            "{help}"
        );
        assert!(
            help.contains(&format!("≥ {}", crate::verify::MIN_COSINE)),
            "{help}"
        );
        let top1 = format!("≥ {:.0}%", 100.0 * crate::verify::MIN_TOP1_AGREEMENT);
        assert!(help.contains(&top1), "{help}");
    }
}
