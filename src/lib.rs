//! pare: make trained ONNX and TFLite models smaller after export.
//!
//! The library reads a model file into a [`Document`] (the decoded file, kept whole so that
//! nothing pare does not understand is lost), offers a format-neutral [`model::Model`] view for
//! algorithms, writes documents back atomically, and verifies written models with tract.
//!
//! ```
//! use pare::{convert, inspect, Document};
//! # let dir = tempfile::tempdir()?;
//! let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/cnn.onnx");
//! let doc = Document::open(&fixture)?;
//! let report = inspect::inspect(&doc)?;
//! assert_eq!(report.op_histogram["Conv"], 5);
//!
//! // Re-serialize with weights in an external data file, verified in tract before it lands.
//! let out = dir.path().join("cnn.onnx");
//! let opts = convert::WriteOptions {
//!     external_data: pare::onnx::ExternalDataMode::Into("cnn.onnx.data".into()),
//!     ..Default::default()
//! };
//! let written = convert::convert(&fixture, &out, &opts)?;
//! assert!(written.verification.unwrap().identical());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

// The flatc-generated TFLite code names `alloc::` paths.
extern crate alloc;

pub mod allocate;
pub mod calib;
pub mod cancel;
pub mod cli;
pub mod convert;
pub mod data;
pub mod document;
pub mod error;
pub mod inspect;
pub mod io;
pub mod magnitude;
pub mod model;
pub mod onnx;
pub mod output;
pub mod progress;
pub mod prune;
pub mod sensitivity;
pub mod sparse;
pub mod structural;
pub mod text;
pub mod tflite;
pub mod validate;
pub mod verify;

pub use document::Document;
pub use error::{Error, Result};

/// Types generated from `proto/onnx.proto` by prost (see `build.rs`).
#[allow(clippy::all, missing_docs)]
pub mod onnx_pb;

/// Types generated from `schemas/schema.fbs` by flatc 25.12.19 (see `scripts/gen-tflite.sh`).
#[allow(
    clippy::all,
    unused_imports,
    dead_code,
    non_camel_case_types,
    deprecated,
    mismatched_lifetime_syntaxes,
    unsafe_op_in_unsafe_fn
)]
#[path = "tflite/schema_generated.rs"]
pub mod tflite_gen;
