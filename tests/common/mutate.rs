//! Mutations of model files for robustness testing: byte-level damage (truncation, bit flips,
//! interesting values over length fields and offsets) and structural damage decoded through
//! the format (dims made huge or negative, tensor data shorter than its shape, cycles, missing
//! inputs, indices out of range). Deterministic for a given seed.
//!
//! Used by the mutation corpus test (`tests/mutations.rs`) and the long-running harness
//! (`examples/mutate.rs`); not part of pare's normal operation.

use pare::onnx_pb as pb;
use pare::tflite_gen::tflite as fb;
use prost::Message;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// The kinds of mutation, for reporting.
pub const KINDS: &[&str] = &[
    "truncate",
    "bit-flips",
    "interesting-u32",
    "varint-huge",
    "structural",
];

/// A mutated copy of `input` (a model file) and the kind of mutation applied.
pub fn mutate(input: &[u8], seed: u64) -> (Vec<u8>, &'static str) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let kind = KINDS[rng.gen_range(0..KINDS.len())];
    let out = match kind {
        "truncate" => input[..rng.gen_range(0..input.len().max(1))].to_vec(),
        "bit-flips" => {
            let mut v = input.to_vec();
            for _ in 0..rng.gen_range(1..=8) {
                let i = rng.gen_range(0..v.len().max(1));
                if let Some(b) = v.get_mut(i) {
                    *b ^= 1 << rng.gen_range(0..8);
                }
            }
            v
        }
        "interesting-u32" => {
            // Length fields and offsets: flatbuffer offsets and vector lengths are u32, and
            // protobuf lengths are varints whose bytes this also hits.
            let mut v = input.to_vec();
            let len = v.len() as u32;
            let values = [
                0u32,
                1,
                0x7F,
                0x80,
                0xFF,
                0x7FFF_FFFF,
                0x8000_0000,
                0xFFFF_FFFF,
                len,
                len.wrapping_sub(4),
                len.wrapping_mul(2),
            ];
            for _ in 0..rng.gen_range(1..=3) {
                if v.len() >= 4 {
                    let i = rng.gen_range(0..v.len() / 4) * 4;
                    let x = *values.choose(&mut rng).expect("non-empty");
                    v[i..i + 4].copy_from_slice(&x.to_le_bytes());
                }
            }
            v
        }
        "varint-huge" => {
            // Insert a maximal varint somewhere: protobuf lengths and dims become enormous.
            let mut v = input.to_vec();
            let i = rng.gen_range(0..v.len().max(1));
            let huge: &[u8] = [
                &[0xFF, 0xFF, 0xFF, 0xFF, 0x0F][..],
                &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01][..],
                &[0x80, 0x80, 0x80, 0x80, 0x08][..],
            ]
            .choose(&mut rng)
            .expect("non-empty");
            let end = (i + huge.len()).min(v.len());
            v.splice(i..end, huge.iter().copied());
            v
        }
        _ => structural(input, &mut rng).unwrap_or_else(|| input.to_vec()),
    };
    (out, kind)
}

fn huge_dim(rng: &mut SmallRng) -> i64 {
    *[-1i64, -7, 0, 1 << 31, 1 << 40, i64::MAX, i64::MIN]
        .choose(rng)
        .expect("non-empty")
}

/// Decodes the file, damages its structure, and encodes it again.
fn structural(input: &[u8], rng: &mut SmallRng) -> Option<Vec<u8>> {
    if pare::tflite::has_identifier(input) {
        let model = fb::root_as_model(input).ok()?.unpack();
        Some(structural_tflite(model, rng))
    } else {
        let model = pb::ModelProto::decode(input).ok()?;
        Some(structural_onnx(model, rng))
    }
}

fn structural_onnx(mut m: pb::ModelProto, rng: &mut SmallRng) -> Vec<u8> {
    let g = m.graph.get_or_insert_with(Default::default);
    match rng.gen_range(0..7) {
        // Dims of an initializer made huge, negative or zero.
        0 if !g.initializer.is_empty() => {
            let i = rng.gen_range(0..g.initializer.len());
            let t = &mut g.initializer[i];
            if t.dims.is_empty() {
                t.dims.push(huge_dim(rng));
            } else {
                let k = rng.gen_range(0..t.dims.len());
                t.dims[k] = huge_dim(rng);
            }
        }
        // Tensor data shorter than its shape says.
        1 if !g.initializer.is_empty() => {
            let i = rng.gen_range(0..g.initializer.len());
            let t = &mut g.initializer[i];
            if let Some(raw) = t.raw_data.as_mut() {
                let keep = rng.gen_range(0..raw.len().max(1));
                *raw = raw.slice(..keep.min(raw.len()));
            } else {
                t.float_data.truncate(t.float_data.len() / 2);
            }
        }
        // A cycle: a node consumes its own output, or a later node's.
        2 if !g.node.is_empty() => {
            let i = rng.gen_range(0..g.node.len());
            let j = rng.gen_range(i..g.node.len());
            if let Some(o) = g.node[j].output.first().cloned() {
                if g.node[i].input.is_empty() {
                    g.node[i].input.push(o);
                } else {
                    let k = rng.gen_range(0..g.node[i].input.len());
                    g.node[i].input[k] = o;
                }
            }
        }
        // A missing input: a node refers to a value nothing defines.
        3 if !g.node.is_empty() => {
            let i = rng.gen_range(0..g.node.len());
            g.node[i].input.push("pare_mutation_missing".into());
        }
        // An input of the graph removed, or an initializer removed.
        4 if !g.input.is_empty() => {
            let i = rng.gen_range(0..g.input.len());
            g.input.remove(i);
        }
        5 if !g.initializer.is_empty() => {
            let i = rng.gen_range(0..g.initializer.len());
            g.initializer.remove(i);
        }
        // An input's declared shape made huge or negative.
        _ => {
            if let Some(vi) = g.input.first_mut() {
                if let Some(pb::type_proto::Value::TensorType(tt)) =
                    vi.r#type.as_mut().and_then(|t| t.value.as_mut())
                {
                    if let Some(shape) = tt.shape.as_mut() {
                        for d in &mut shape.dim {
                            d.value = Some(pb::tensor_shape_proto::dimension::Value::DimValue(
                                huge_dim(rng),
                            ));
                        }
                    }
                }
            }
        }
    }
    m.encode_to_vec()
}

fn structural_tflite(mut m: fb::ModelT, rng: &mut SmallRng) -> Vec<u8> {
    let nbuf = m.buffers.as_ref().map_or(0, |b| b.len()) as i64;
    if let Some(sg) = m.subgraphs.as_mut().and_then(|s| s.first_mut()) {
        let ntensors = sg.tensors.as_ref().map_or(0, |t| t.len()) as i64;
        match rng.gen_range(0..6) {
            // A shape dim made huge or negative.
            0 => {
                if let Some(t) = sg.tensors.as_mut().and_then(|t| t.choose_mut(rng)) {
                    let d = *[-5i32, -1, 0, i32::MAX, 1 << 20]
                        .choose(rng)
                        .expect("non-empty");
                    match t.shape.as_mut() {
                        Some(s) if !s.is_empty() => {
                            let k = rng.gen_range(0..s.len());
                            s[k] = d;
                        }
                        _ => t.shape = Some(vec![d]),
                    }
                }
            }
            // An operator input or output index out of range, or -2.
            1 => {
                if let Some(op) = sg.operators.as_mut().and_then(|o| o.choose_mut(rng)) {
                    let bad = *[-2i32, ntensors as i32, i32::MAX]
                        .choose(rng)
                        .expect("non-empty");
                    match op.inputs.as_mut() {
                        Some(v) if !v.is_empty() => {
                            let k = rng.gen_range(0..v.len());
                            v[k] = bad;
                        }
                        _ => op.outputs = Some(vec![bad]),
                    }
                }
            }
            // A tensor pointing at a buffer that does not exist.
            2 => {
                if let Some(t) = sg.tensors.as_mut().and_then(|t| t.choose_mut(rng)) {
                    t.buffer = (nbuf + rng.gen_range(0..3)) as u32;
                }
            }
            // A cycle: an operator consumes a later operator's output.
            3 => {
                if let Some(ops) = sg.operators.as_mut() {
                    if ops.len() >= 2 {
                        let i = rng.gen_range(0..ops.len() - 1);
                        let o = ops[ops.len() - 1]
                            .outputs
                            .as_ref()
                            .and_then(|v| v.first().copied());
                        if let (Some(o), Some(inp)) = (o, ops[i].inputs.as_mut()) {
                            if !inp.is_empty() {
                                inp[0] = o;
                            }
                        }
                    }
                }
            }
            // A subgraph input removed.
            4 => {
                if let Some(v) = sg.inputs.as_mut() {
                    v.pop();
                }
            }
            // An operator's opcode index out of range.
            _ => {
                if let Some(op) = sg.operators.as_mut().and_then(|o| o.choose_mut(rng)) {
                    op.opcode_index = rng.gen_range(1000..100_000);
                }
            }
        }
    }
    // Buffer data shorter than the tensor needs.
    if rng.gen_bool(0.3) {
        if let Some(b) = m
            .buffers
            .as_mut()
            .and_then(|b| b.iter_mut().filter(|b| b.data.is_some()).last())
        {
            if let Some(d) = b.data.as_mut() {
                let keep = rng.gen_range(0..d.len().max(1));
                d.truncate(keep);
            }
        }
    }
    let mut builder = flatbuffers::FlatBufferBuilder::new();
    let root = m.pack(&mut builder);
    fb::finish_model_buffer(&mut builder, root);
    builder.finished_data().to_vec()
}

/// Runs one in-process target on `bytes` (read as if from `path`): `onnx-read` / `tflite-read`
/// decode, build the view and count parameters; `prune` also plans a 50% prune, applies it and
/// encodes the result. Returns how far it got; a panic is a bug.
pub fn exercise(target: &str, path: &std::path::Path, bytes: Vec<u8>) -> &'static str {
    use pare::Document;
    let doc = match Document::from_bytes(path, bytes::Bytes::from(bytes)) {
        Ok(d) => d,
        Err(_) => return "rejected at read",
    };
    let model = match doc.to_model() {
        Ok(m) => m,
        Err(_) => return "rejected at view",
    };
    let _ = pare::model::stats::collect(&model.graphs, &Default::default());
    if target == "channels" {
        let opts = pare::structural::ChannelOptions {
            amount: pare::structural::Amount::Ratio(0.5),
            ..Default::default()
        };
        return match pare::structural::prune_channels(&doc, &opts) {
            Err(_) => "rejected at channels",
            Ok((Document::Tflite(d), _)) => match d.encode() {
                Ok(_) => "channels removed and encoded",
                Err(_) => "rejected at encode",
            },
            Ok((Document::Onnx(d), _)) => {
                let _ = prost::Message::encode_to_vec(&d.model);
                "channels removed and encoded"
            }
        };
    }
    if target != "prune" {
        return "read";
    }
    let opts = pare::prune::PruneOptions {
        sparsity: Some(0.5),
        ..Default::default()
    };
    let plan = match pare::prune::plan(&doc, &opts) {
        Ok(p) => p,
        Err(_) => return "rejected at prune",
    };
    // The storage pass of every write: sparse where smaller, then everything dense.
    let edited = doc.with_tensor_data(&plan.edits);
    for storage in [pare::sparse::Storage::Auto, pare::sparse::Storage::Dense] {
        let stored = match edited.with_storage(&pare::sparse::StoragePolicy::new(storage)) {
            Ok((d, _)) => d,
            Err(_) => return "rejected at storage",
        };
        match stored {
            Document::Tflite(d) => {
                if d.encode().is_err() {
                    return "rejected at encode";
                }
            }
            Document::Onnx(d) => {
                let _ = prost::Message::encode_to_vec(&d.model);
            }
        }
    }
    "pruned and encoded"
}
