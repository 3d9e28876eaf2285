//! `pare validate`: compare a candidate with its original in tract on the user's data, with
//! pass/fail gates.

use super::flags::{EvalFlags, GateFlags, LatencyFlags};
use super::{emit, exit, spinner::Spinner, Cli};
use crate::error::Error;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub(super) struct ValidateArgs {
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
}

impl ValidateArgs {
    pub(super) fn run(&self, cli: &Cli) -> Result<i32, Error> {
        let ValidateArgs {
            original,
            candidate,
            data,
            eval,
            gates,
            latency,
            report,
        } = self;
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
            let a = crate::document::Document::open(original)?;
            let b = crate::document::Document::open(candidate)?;
            crate::validate::validate(&a, &b, &opts, &spinner)
        })();
        spinner.finish();
        let result = result?;
        emit(cli, report.as_deref(), &result)?;
        if cli.text() {
            let _ = crate::validate::render(&result, &mut std::io::stderr().lock());
        }
        if !result.passed {
            cli.fail(format!("{} fails a validation gate", candidate.display()));
            return Ok(exit::GATE);
        }
        Ok(exit::OK)
    }
}

pub(super) const HELP: &str = "\
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
