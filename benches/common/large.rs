//! A generated ONNX model over protobuf's 2 GiB limit: a chain of MatMul + Relu layers whose
//! float32 weights (seeded random) live in an external data file, written streaming (the
//! weights are never all in memory). Included beside `resnet.rs`, whose value-info builder it
//! shares.

use super::resnet::value_info;
use pare::onnx_pb as pb;
use prost::Message;
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::path::Path;

/// Writes `path` and `<path>.data`: `layers` MatMul weights of `width` x `width`. Returns the
/// total size in bytes (model + data).
pub fn mlp_external(path: &Path, layers: usize, width: i64) -> u64 {
    let data_name = format!("{}.data", path.file_name().unwrap().to_string_lossy());
    let data_path = path.with_file_name(&data_name);
    let mut data = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(&data_path).expect("create data file"),
    );
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let a = (6.0 / width as f32).sqrt();
    let tensor_bytes = (width * width * 4) as u64;
    let mut inits = Vec::new();
    let mut nodes = Vec::new();
    let mut x = "x".to_string();
    let mut row = vec![0u8; width as usize * 4];
    for l in 0..layers {
        for _ in 0..width {
            for v in row.chunks_exact_mut(4) {
                v.copy_from_slice(&rng.gen_range(-a..a).to_le_bytes());
            }
            data.write_all(&row).expect("write data");
        }
        let name = format!("fc{l}.weight");
        let entry = |k: &str, v: String| pb::StringStringEntryProto {
            key: Some(k.into()),
            value: Some(v),
        };
        inits.push(pb::TensorProto {
            name: Some(name.clone()),
            dims: vec![width, width],
            data_type: Some(pb::tensor_proto::DataType::Float as i32),
            data_location: Some(pb::tensor_proto::DataLocation::External as i32),
            external_data: vec![
                entry("location", data_name.clone()),
                entry("offset", (l as u64 * tensor_bytes).to_string()),
                entry("length", tensor_bytes.to_string()),
            ],
            ..Default::default()
        });
        let mm = format!("fc{l}");
        nodes.push(node("MatMul", &[&x, &name], &mm));
        let relu = format!("relu{l}");
        nodes.push(node("Relu", &[&mm], &relu));
        x = relu;
    }
    data.flush().expect("flush data");
    let model = pb::ModelProto {
        ir_version: Some(8),
        opset_import: vec![pb::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        producer_name: Some("pare-bench".into()),
        graph: Some(pb::GraphProto {
            name: Some("mlp_external".into()),
            node: nodes,
            initializer: inits,
            input: vec![value_info("x", &[1, width])],
            output: vec![value_info(&x, &[1, width])],
            ..Default::default()
        }),
        ..Default::default()
    };
    std::fs::write(path, model.encode_to_vec()).expect("write model");
    std::fs::metadata(path).unwrap().len() + std::fs::metadata(&data_path).unwrap().len()
}

fn node(op: &str, inputs: &[&str], output: &str) -> pb::NodeProto {
    pb::NodeProto {
        op_type: Some(op.into()),
        name: Some(output.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    }
}
