//! `pare sensitivity`: prune each layer alone at a ladder of ratios and report the loss, as a
//! table, a JSON profile and an SVG chart.

use super::flags::EvalFlags;
use super::{emit, exit, spinner::Spinner, Cli};
use crate::error::Error;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub(super) struct SensitivityArgs {
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
}

impl SensitivityArgs {
    pub(super) fn run(&self, cli: &Cli) -> Result<i32, Error> {
        let SensitivityArgs {
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
        } = self;
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
        if cli.text() {
            let _ = crate::sensitivity::render(&result, &mut std::io::stderr().lock());
        }
        Ok(exit::OK)
    }
}
