//! The integration tests, as one test binary: each file below is a module. Every test binary
//! links tract, so one binary instead of thirteen saves about 1 GB of disk and twelve links on
//! a fresh build (`cargo test` on CI). `validate_memory.rs` stays a binary of its own: it reads
//! the peak memory of its process's children, which must be pare's alone.
//!
//! Run one file's tests with `cargo test --test suite calib::`.

mod common;

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
