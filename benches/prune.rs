//! `cargo bench --bench prune`: what magnitude pruning costs next to the I/O floor.
//!
//! Generates a ResNet-50 (bottleneck blocks with projections and residual Adds, batch-norm
//! folded, 25.5 M parameters, ~102 MB) with seeded random weights, then times, interleaved and
//! repeated, in one run:
//!
//! - `cp` of the file (the floor),
//! - `pare convert --no-verify`,
//! - `pare prune --sparsity 0.5 --no-verify` with layer, global and LAMP scope,
//! - `pare prune --sparsity 0.5` with the tract check, reported separately,
//!
//! and prints medians, ratios against `pare convert`, and peak resident memory (from
//! `/usr/bin/time -f %M` when it exists). Ratios measured in one run hold on a noisy machine
//! better than absolute times.

use pare::onnx_pb as pb;
use prost::Message;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const RUNS: usize = 5;

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

fn resnet50(path: &Path) {
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
    let vi = |name: &str, dims: &[i64]| pb::ValueInfoProto {
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
    };
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
            input: vec![vi("input", &[1, 3, 224, 224])],
            output: vec![vi(&logits, &[1, 1000])],
            ..Default::default()
        }),
        ..Default::default()
    };
    std::fs::write(path, model.encode_to_vec()).unwrap();
}

struct Measure {
    times: Vec<Duration>,
    peak_kb: Option<u64>,
}

/// Runs `args` once, timed; with /usr/bin/time, also its peak RSS.
fn run(args: &[String]) -> (Duration, Option<u64>) {
    let time = Path::new("/usr/bin/time");
    let mut cmd = if time.exists() {
        let mut c = Command::new(time);
        c.args(["-f", "%M"]).args(args);
        c
    } else {
        let mut c = Command::new(&args[0]);
        c.args(&args[1..]);
        c
    };
    let start = Instant::now();
    let out = cmd.output().expect("spawn");
    let elapsed = start.elapsed();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let peak = time
        .exists()
        .then(|| {
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .and_then(|l| l.trim().parse().ok())
        })
        .flatten();
    (elapsed, peak)
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument filters nothing here.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-prune");
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("resnet50.onnx");
    let gen = Instant::now();
    resnet50(&model);
    let size = std::fs::metadata(&model).unwrap().len();
    println!(
        "model: ResNet-50 shapes, random weights, {:.1} MB (generated in {:.2?})",
        size as f64 / 1e6,
        gen.elapsed()
    );
    let pare = env!("CARGO_BIN_EXE_pare").to_string();
    let m = model.display().to_string();
    let out = |n: &str| dir.join(n).display().to_string();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("cp", s(&["cp", &m, &out("cp.onnx")])),
        (
            "pare convert --no-verify",
            s(&[
                &pare,
                "-q",
                "convert",
                &m,
                "-o",
                &out("conv.onnx"),
                "--force",
                "--no-verify",
            ]),
        ),
        (
            "pare prune 0.5 layer --no-verify",
            s(&[
                &pare,
                "-q",
                "prune",
                &m,
                "-o",
                &out("layer.onnx"),
                "--sparsity",
                "0.5",
                "--force",
                "--no-verify",
            ]),
        ),
        (
            "pare prune 0.5 global --no-verify",
            s(&[
                &pare,
                "-q",
                "prune",
                &m,
                "-o",
                &out("global.onnx"),
                "--sparsity",
                "0.5",
                "--scope",
                "global",
                "--force",
                "--no-verify",
            ]),
        ),
        (
            "pare prune 0.5 lamp --no-verify",
            s(&[
                &pare,
                "-q",
                "prune",
                &m,
                "-o",
                &out("lamp.onnx"),
                "--sparsity",
                "0.5",
                "--scope",
                "lamp",
                "--force",
                "--no-verify",
            ]),
        ),
        (
            "pare prune 0.5 layer (tract check)",
            s(&[
                &pare,
                "-q",
                "prune",
                &m,
                "-o",
                &out("checked.onnx"),
                "--sparsity",
                "0.5",
                "--force",
            ]),
        ),
    ];
    let mut results: Vec<Measure> = cases
        .iter()
        .map(|_| Measure {
            times: Vec::new(),
            peak_kb: None,
        })
        .collect();
    // Interleave the cases so that drift on a shared machine hits them all alike.
    for _ in 0..RUNS {
        for (i, (_, args)) in cases.iter().enumerate() {
            let (t, peak) = run(args);
            results[i].times.push(t);
            results[i].peak_kb = results[i].peak_kb.max(peak);
        }
    }
    let convert = median(&results[1].times).as_secs_f64();
    println!(
        "{:<36} {:>10} {:>12} {:>14} {:>12}",
        "case", "median", "vs convert", "peak RSS", "RSS / model"
    );
    for ((name, _), r) in cases.iter().zip(&results) {
        let t = median(&r.times).as_secs_f64();
        let (rss, ratio) = match r.peak_kb {
            Some(kb) => (
                format!("{:.0} MB", kb as f64 * 1024.0 / 1e6),
                format!("{:.2}x", kb as f64 * 1024.0 / size as f64),
            ),
            None => ("-".into(), "-".into()),
        };
        println!(
            "{name:<36} {:>9.3}s {:>11.2}x {rss:>14} {ratio:>12}",
            t,
            t / convert
        );
    }
    println!(
        "({RUNS} interleaved runs each; median; machine: {} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
}
