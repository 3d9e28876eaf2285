//! Compiles `proto/onnx.proto` into prost types with protox (pure Rust, no system protoc).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let fds = protox::compile(["proto/onnx.proto"], ["proto"])?;
    prost_build::Config::new()
        // Tensor payloads become `bytes::Bytes`: decoding from a memory-mapped file then
        // points into the mapping instead of copying every weight.
        .bytes([".onnx.TensorProto.raw_data"])
        .compile_fds(fds)?;
    Ok(())
}
