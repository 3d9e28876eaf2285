//! `pare inspect`: a model's format, inputs and outputs, ops, per-layer weights and sizes,
//! as a table on stdout or JSON.

use super::{exit, Cli};
use crate::error::Error;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub(super) struct InspectArgs {
    /// The model file (.onnx or .tflite; the format is detected from the content).
    model: PathBuf,
}

impl InspectArgs {
    pub(super) fn run(&self, cli: &Cli) -> Result<i32, Error> {
        let InspectArgs { model } = self;
        let doc = crate::document::Document::open(model)?;
        let report = crate::inspect::inspect(&doc)?;
        if cli.json || cli.capture.is_some() {
            cli.print_json(&report)?;
        } else {
            let mut out = std::io::stdout().lock();
            let _ = crate::inspect::render(&report, &mut out);
        }
        Ok(exit::OK)
    }
}
