//! The generated ResNet-50 the benchmarks share: bottleneck blocks with projections and
//! residual Adds, batch-norm folded, 25.5 M parameters (~102 MB), seeded random weights.

use pare::onnx_pb as pb;
use prost::Message;
use rand::{Rng, SeedableRng};
use std::path::Path;

struct Builder {
    rng: rand::rngs::SmallRng,
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
    n: usize,
}

impl Builder {
    fn weight(&mut self, name: &str, dims: &[i64], fan_in: i64) -> String {
        let a = (6.0 / fan_in as f32).sqrt();
        let count: i64 = dims.iter().product();
        let mut raw = Vec::with_capacity(count as usize * 4);
        for _ in 0..count {
            raw.extend_from_slice(&self.rng.gen_range(-a..a).to_le_bytes());
        }
        self.inits.push(pb::TensorProto {
            name: Some(name.into()),
            dims: dims.to_vec(),
            data_type: Some(pb::tensor_proto::DataType::Float as i32),
            raw_data: Some(raw.into()),
            ..Default::default()
        });
        name.into()
    }

    fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<pb::AttributeProto>) -> String {
        self.n += 1;
        let out = format!("{op}_{}", self.n);
        self.nodes.push(pb::NodeProto {
            op_type: Some(op.into()),
            name: Some(out.clone()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            attribute: attrs,
            ..Default::default()
        });
        out
    }

    fn conv(&mut self, x: &str, cin: i64, cout: i64, k: i64, stride: i64, relu: bool) -> String {
        let id = self.n + 1;
        let w = self.weight(&format!("conv{id}.weight"), &[cout, cin, k, k], cin * k * k);
        let b = self.weight(&format!("conv{id}.bias"), &[cout], cin * k * k);
        let p = k / 2;
        let y = self.node(
            "Conv",
            &[x, &w, &b],
            vec![
                ints("kernel_shape", &[k, k]),
                ints("strides", &[stride, stride]),
                ints("pads", &[p, p, p, p]),
            ],
        );
        if relu {
            self.node("Relu", &[&y], vec![])
        } else {
            y
        }
    }
}

fn ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        ints: v.to_vec(),
        r#type: Some(pb::attribute_proto::AttributeType::Ints as i32),
        ..Default::default()
    }
}

pub fn resnet50(path: &Path) {
    let mut b = Builder {
        rng: rand::rngs::SmallRng::seed_from_u64(50),
        nodes: Vec::new(),
        inits: Vec::new(),
        n: 0,
    };
    let mut x = b.conv("input", 3, 64, 7, 2, true);
    x = b.node(
        "MaxPool",
        &[&x],
        vec![
            ints("kernel_shape", &[3, 3]),
            ints("strides", &[2, 2]),
            ints("pads", &[1, 1, 1, 1]),
        ],
    );
    let mut cin = 64;
    for (mid, out, blocks, stride) in [
        (64, 256, 3, 1),
        (128, 512, 4, 2),
        (256, 1024, 6, 2),
        (512, 2048, 3, 2),
    ] {
        for i in 0..blocks {
            let s = if i == 0 { stride } else { 1 };
            let shortcut = if i == 0 {
                b.conv(&x, cin, out, 1, s, false)
            } else {
                x.clone()
            };
            let h = b.conv(&x, cin, mid, 1, 1, true);
            let h = b.conv(&h, mid, mid, 3, s, true);
            let h = b.conv(&h, mid, out, 1, 1, false);
            let sum = b.node("Add", &[&h, &shortcut], vec![]);
            x = b.node("Relu", &[&sum], vec![]);
            cin = out;
        }
    }
    let pooled = b.node("GlobalAveragePool", &[&x], vec![]);
    let flat = b.node("Flatten", &[&pooled], vec![]);
    let w = b.weight("fc.weight", &[1000, 2048], 2048);
    let bias = b.weight("fc.bias", &[1000], 2048);
    let mut t = ints("transB", &[]);
    t.r#type = Some(pb::attribute_proto::AttributeType::Int as i32);
    t.i = Some(1);
    let logits = b.node("Gemm", &[&flat, &w, &bias], vec![t]);
    let model = pb::ModelProto {
        ir_version: Some(8),
        producer_name: Some("pare benches/prune.rs".into()),
        opset_import: vec![pb::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(pb::GraphProto {
            name: Some("resnet50_random".into()),
            node: b.nodes,
            initializer: b.inits,
            input: vec![value_info("input", &[1, 3, 224, 224])],
            output: vec![value_info(&logits, &[1, 1000])],
            ..Default::default()
        }),
        ..Default::default()
    };
    std::fs::write(path, model.encode_to_vec()).unwrap();
}

/// A float32 graph input/output of fixed shape.
pub fn value_info(name: &str, dims: &[i64]) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: Some(pb::tensor_proto::DataType::Float as i32),
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| pb::tensor_shape_proto::Dimension {
                            value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(d)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}
