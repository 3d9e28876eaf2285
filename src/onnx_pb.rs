//! The ONNX protobuf types, generated from `proto/onnx.proto` by prost in `build.rs`.
//! Layer: generated (imports nothing of the crate; see ARCHITECTURE.md).

include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
