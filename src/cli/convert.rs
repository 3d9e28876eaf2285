//! `pare convert`: re-serialize a model without changing its meaning (storage, ONNX external
//! data), verified in tract before it lands.

use super::flags::{DataFlags, WriteFlags};
use super::{exit, render_write, spinner::Spinner, Cli};
use crate::convert::WriteOptions;
use crate::error::Error;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub(super) struct ConvertArgs {
    /// The input model.
    input: PathBuf,
    /// Where to write the result.
    #[arg(short, long)]
    output: PathBuf,
    /// Weight storage: keep (as read), auto (each weight in the smaller of dense and sparse),
    /// sparse (every eligible weight sparse), dense (densify a sparse model back).
    #[arg(long, value_name = "keep|auto|sparse|dense", default_value = "keep")]
    storage: crate::sparse::Storage,
    /// Shape an input is verified at, e.g. input=1,512 (repeatable; sets dynamic dimensions,
    /// which are otherwise 1).
    #[arg(long, value_name = "NAME=DIMS", value_parser = super::flags::parse_input_shape)]
    input_shape: Vec<(String, Vec<usize>)>,
    #[command(flatten)]
    data: DataFlags,
    #[command(flatten)]
    write: WriteFlags,
}

impl ConvertArgs {
    pub(super) fn run(&self, cli: &Cli) -> Result<i32, Error> {
        let ConvertArgs {
            input,
            output,
            storage,
            input_shape,
            data,
            write,
        } = self;
        let opts = WriteOptions {
            external_data: data.mode(output),
            storage: crate::sparse::StoragePolicy::new(*storage),
            compressed_sizes: write.compressed_sizes,
            verify: write.policy(),
            force: write.force,
            verify_data: super::flags::random_shaped(input_shape),
            ..WriteOptions::default()
        };
        let spinner = Spinner::new(cli.quiet);
        let report = crate::convert::convert_with_progress(input, output, &opts, &spinner);
        spinner.finish();
        let report = report?;
        cli.print_json(&report)?;
        if cli.text() {
            render_write(&report);
        }
        Ok(exit::OK)
    }
}
