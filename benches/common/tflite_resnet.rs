//! A generated TFLite ResNet-50 (NHWC, float32, batch-norm folded, fused ReLU): the same
//! bottleneck blocks as the ONNX one in `resnet.rs`, 25.6 M parameters (~102 MB), seeded random
//! weights, written with pare's own flatbuffer writer.

use bytes::Bytes;
use pare::tflite::TfliteDocument;
use pare::tflite_gen::tflite as fb;
use rand::{Rng, SeedableRng};
use std::path::Path;

struct Builder {
    rng: rand::rngs::SmallRng,
    tensors: Vec<fb::TensorT>,
    buffers: Vec<Option<Bytes>>,
    ops: Vec<fb::OperatorT>,
}

const CONV: u32 = 0;
const ADD: u32 = 1;
const MAX_POOL: u32 = 2;
const MEAN: u32 = 3;
const FC: u32 = 4;

impl Builder {
    fn tensor(
        &mut self,
        name: String,
        shape: &[i32],
        ty: fb::TensorType,
        data: Option<Vec<u8>>,
    ) -> i32 {
        let mut t = fb::TensorT::default();
        t.name = Some(name);
        t.shape = Some(shape.to_vec());
        t.type_ = ty;
        t.has_rank = true;
        if let Some(d) = data {
            self.buffers.push(Some(Bytes::from(d)));
            t.buffer = (self.buffers.len() - 1) as u32;
        }
        self.tensors.push(t);
        (self.tensors.len() - 1) as i32
    }

    fn weight(&mut self, name: String, shape: &[i32], fan_in: i32) -> i32 {
        let a = (6.0 / fan_in as f32).sqrt();
        let n: i32 = shape.iter().product();
        let mut raw = Vec::with_capacity(n as usize * 4);
        for _ in 0..n {
            raw.extend_from_slice(&self.rng.gen_range(-a..a).to_le_bytes());
        }
        self.tensor(name, shape, fb::TensorType::FLOAT32, Some(raw))
    }

    fn op(&mut self, code: u32, inputs: Vec<i32>, output: i32, options: fb::BuiltinOptionsT) {
        let mut op = fb::OperatorT::default();
        op.opcode_index = code;
        op.inputs = Some(inputs);
        op.outputs = Some(vec![output]);
        op.builtin_options = options;
        self.ops.push(op);
    }

    /// Conv (SAME padding) with bias and optional fused ReLU on an [1, hw, hw, cin] input.
    fn conv(
        &mut self,
        x: i32,
        hw: i32,
        (cin, cout): (i32, i32),
        k: i32,
        stride: i32,
        relu: bool,
    ) -> (i32, i32) {
        let id = self.ops.len();
        let w = self.weight(format!("conv{id}/kernel"), &[cout, k, k, cin], cin * k * k);
        let b = self.weight(format!("conv{id}/bias"), &[cout], cin * k * k);
        let out_hw = (hw + stride - 1) / stride;
        let y = self.tensor(
            format!("conv{id}"),
            &[1, out_hw, out_hw, cout],
            fb::TensorType::FLOAT32,
            None,
        );
        let mut o = fb::Conv2DOptionsT::default();
        o.padding = fb::Padding::SAME;
        o.stride_h = stride;
        o.stride_w = stride;
        o.dilation_h_factor = 1;
        o.dilation_w_factor = 1;
        if relu {
            o.fused_activation_function = fb::ActivationFunctionType::RELU;
        }
        self.op(
            CONV,
            vec![x, w, b],
            y,
            fb::BuiltinOptionsT::Conv2DOptions(Box::new(o)),
        );
        (y, out_hw)
    }
}

fn code(op: fb::BuiltinOperator) -> fb::OperatorCodeT {
    let mut c = fb::OperatorCodeT::default();
    c.builtin_code = op;
    c.deprecated_builtin_code = op.0.min(127) as i8;
    c.version = 1;
    c
}

pub fn resnet50(path: &Path) {
    let mut b = Builder {
        rng: rand::rngs::SmallRng::seed_from_u64(50),
        tensors: vec![],
        buffers: vec![None],
        ops: vec![],
    };
    let input = b.tensor(
        "input".into(),
        &[1, 224, 224, 3],
        fb::TensorType::FLOAT32,
        None,
    );
    let (x, hw) = b.conv(input, 224, (3, 64), 7, 2, true);
    let pooled = b.tensor(
        "pool".into(),
        &[1, 56, 56, 64],
        fb::TensorType::FLOAT32,
        None,
    );
    let mut p = fb::Pool2DOptionsT::default();
    p.padding = fb::Padding::SAME;
    p.stride_h = 2;
    p.stride_w = 2;
    p.filter_height = 3;
    p.filter_width = 3;
    b.op(
        MAX_POOL,
        vec![x],
        pooled,
        fb::BuiltinOptionsT::Pool2DOptions(Box::new(p)),
    );
    let (mut x, mut hw, mut cin) = (pooled, hw / 2, 64);
    for (stage, (blocks, width)) in [(3, 64), (4, 128), (6, 256), (3, 512)]
        .into_iter()
        .enumerate()
    {
        for block in 0..blocks {
            let stride = if block == 0 && stage > 0 { 2 } else { 1 };
            let (a, _) = b.conv(x, hw, (cin, width), 1, 1, true);
            let (m, out_hw) = b.conv(a, hw, (width, width), 3, stride, true);
            let (c, _) = b.conv(m, out_hw, (width, width * 4), 1, 1, false);
            let shortcut = if block == 0 {
                b.conv(x, hw, (cin, width * 4), 1, stride, false).0
            } else {
                x
            };
            let y = b.tensor(
                format!("add{}", b.ops.len()),
                &[1, out_hw, out_hw, width * 4],
                fb::TensorType::FLOAT32,
                None,
            );
            let mut o = fb::AddOptionsT::default();
            o.fused_activation_function = fb::ActivationFunctionType::RELU;
            b.op(
                ADD,
                vec![c, shortcut],
                y,
                fb::BuiltinOptionsT::AddOptions(Box::new(o)),
            );
            (x, hw, cin) = (y, out_hw, width * 4);
        }
    }
    let axes: Vec<u8> = [1i32, 2].iter().flat_map(|a| a.to_le_bytes()).collect();
    let axes = b.tensor("axes".into(), &[2], fb::TensorType::INT32, Some(axes));
    let mean = b.tensor("mean".into(), &[1, cin], fb::TensorType::FLOAT32, None);
    b.op(
        MEAN,
        vec![x, axes],
        mean,
        fb::BuiltinOptionsT::ReducerOptions(Box::default()),
    );
    let w = b.weight("fc/kernel".into(), &[1000, cin], cin);
    let bias = b.weight("fc/bias".into(), &[1000], cin);
    let logits = b.tensor("logits".into(), &[1, 1000], fb::TensorType::FLOAT32, None);
    b.op(
        FC,
        vec![mean, w, bias],
        logits,
        fb::BuiltinOptionsT::FullyConnectedOptions(Box::default()),
    );

    let mut sg = fb::SubGraphT::default();
    sg.tensors = Some(b.tensors);
    sg.inputs = Some(vec![input]);
    sg.outputs = Some(vec![logits]);
    sg.operators = Some(b.ops);
    sg.name = Some("main".into());
    let mut m = fb::ModelT::default();
    m.version = 3;
    m.description = Some("pare bench: generated ResNet-50".into());
    m.operator_codes = Some(
        [
            fb::BuiltinOperator::CONV_2D,
            fb::BuiltinOperator::ADD,
            fb::BuiltinOperator::MAX_POOL_2D,
            fb::BuiltinOperator::MEAN,
            fb::BuiltinOperator::FULLY_CONNECTED,
        ]
        .into_iter()
        .map(code)
        .collect(),
    );
    m.subgraphs = Some(vec![sg]);
    m.buffers = Some(vec![fb::BufferT::default(); b.buffers.len()]);
    let doc = TfliteDocument::new(path, m, b.buffers);
    std::fs::write(path, doc.encode().expect("encodes").0).unwrap();
}
