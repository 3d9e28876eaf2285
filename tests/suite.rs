//! The integration tests, as one test binary: each file below is a module. Every test binary
//! links tract: with one instead of thirteen, a fresh `cargo test` build (as on CI) writes 294 MB
//! of executables instead of 983 MB, and links twelve fewer. `validate_memory.rs` stays a binary
//! of its own: it reads the peak memory of its process's children, which must be pare's alone.
//!
//! Run one file's tests with `cargo test --test suite calib::`.

mod common;

mod architecture;
mod atomic;
mod calib;
mod cli;
mod fixtures;
mod library;
mod lowering;
mod mutations;
mod onnx_corpus;
mod prune;
mod sparse;
mod structural;
mod tflite_corpus;
mod validate;
