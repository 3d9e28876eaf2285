//! The library as Rust users call it, on models built here to reach the corners of both formats.

use crate::common::*;
use pare::convert::{convert, VerifyPolicy, WriteOptions};
use pare::onnx::ExternalDataMode;
use pare::onnx_pb as pb;
use pare::Document;
use prost::Message;
use std::fs;
use std::path::Path;

fn dim(n: i64) -> pb::tensor_shape_proto::Dimension {
    pb::tensor_shape_proto::Dimension {
        value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(n)),
        ..Default::default()
    }
}

fn value_info(name: &str, elem: i32, dims: &[i64]) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: Some(elem),
                shape: Some(pb::TensorShapeProto {
                    dim: dims.iter().map(|&d| dim(d)).collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> pb::NodeProto {
    pb::NodeProto {
        op_type: Some(op.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn model(graph: pb::GraphProto, opset: i64) -> pb::ModelProto {
    pb::ModelProto {
        ir_version: Some(9),
        producer_name: Some("pare-tests".into()),
        doc_string: Some("built by tests/library.rs".into()),
        metadata_props: vec![pb::StringStringEntryProto {
            key: Some("k".into()),
            value: Some("v".into()),
        }],
        opset_import: vec![pb::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }],
        graph: Some(graph),
        ..Default::default()
    }
}

/// One 2x3 constant per element type, stored once in raw_data and once in the typed field the
/// spec assigns to it; each is a graph output through Identity.
fn all_dtypes_model() -> (pb::ModelProto, Vec<(String, Vec<u8>)>) {
    use pb::tensor_proto::DataType as D;
    let vals: [i64; 6] = [0, 1, -2, 3, 0, 5];
    let mut inits = Vec::new();
    let mut nodes = Vec::new();
    let mut outputs = Vec::new();
    let mut expected = Vec::new();
    let cases: Vec<(D, Vec<u8>)> = vec![
        (
            D::Float,
            vals.iter()
                .flat_map(|&v| (v as f32).to_le_bytes())
                .collect(),
        ),
        (
            D::Float16,
            vals.iter()
                .flat_map(|&v| half::f16::from_f32(v as f32).to_le_bytes())
                .collect(),
        ),
        (
            D::Bfloat16,
            vals.iter()
                .flat_map(|&v| half::bf16::from_f32(v as f32).to_le_bytes())
                .collect(),
        ),
        (
            D::Double,
            vals.iter()
                .flat_map(|&v| (v as f64).to_le_bytes())
                .collect(),
        ),
        (
            D::Int8,
            vals.iter().flat_map(|&v| (v as i8).to_le_bytes()).collect(),
        ),
        (
            D::Uint8,
            vals.iter()
                .flat_map(|&v| (v.unsigned_abs() as u8).to_le_bytes())
                .collect(),
        ),
        (
            D::Int16,
            vals.iter()
                .flat_map(|&v| (v as i16).to_le_bytes())
                .collect(),
        ),
        (
            D::Int32,
            vals.iter()
                .flat_map(|&v| (v as i32).to_le_bytes())
                .collect(),
        ),
        (
            D::Int64,
            vals.iter().flat_map(|&v| v.to_le_bytes()).collect(),
        ),
        (D::Bool, vals.iter().map(|&v| (v != 0) as u8).collect()),
    ];
    for (dt, bytes) in cases {
        let size = bytes.len() / 6;
        let name = format!("{dt:?}").to_lowercase();
        for storage in ["raw", "typed"] {
            let tname = format!("{name}_{storage}");
            let mut t = pb::TensorProto {
                name: Some(tname.clone()),
                dims: vec![2, 3],
                data_type: Some(dt as i32),
                ..Default::default()
            };
            if storage == "raw" {
                t.raw_data = Some(bytes.clone().into());
            } else {
                let elems = bytes.chunks(size);
                match dt {
                    D::Float => {
                        t.float_data = elems
                            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                            .collect()
                    }
                    D::Double => {
                        t.double_data = elems
                            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                            .collect()
                    }
                    D::Int64 => {
                        t.int64_data = elems
                            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                            .collect()
                    }
                    D::Int8 => t.int32_data = elems.map(|c| c[0] as i8 as i32).collect(),
                    D::Float16 | D::Bfloat16 => {
                        t.int32_data = elems
                            .map(|c| u16::from_le_bytes([c[0], c[1]]) as i32)
                            .collect()
                    }
                    D::Int16 => {
                        t.int32_data = elems
                            .map(|c| i16::from_le_bytes([c[0], c[1]]) as i32)
                            .collect()
                    }
                    D::Int32 => {
                        t.int32_data = elems
                            .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
                            .collect()
                    }
                    _ => t.int32_data = elems.map(|c| c[0] as i32).collect(),
                }
            }
            let out = format!("out_{tname}");
            if dt == D::Bfloat16 {
                // onnxruntime's Python API cannot return bfloat16 arrays: compare as float.
                let mut cast = node("Cast", &[&tname], &[&out]);
                cast.attribute.push(pb::AttributeProto {
                    name: Some("to".into()),
                    r#type: Some(pb::attribute_proto::AttributeType::Int as i32),
                    i: Some(D::Float as i64),
                    ..Default::default()
                });
                nodes.push(cast);
                outputs.push(value_info(&out, D::Float as i32, &[2, 3]));
            } else {
                nodes.push(node("Identity", &[&tname], &[&out]));
                outputs.push(value_info(&out, dt as i32, &[2, 3]));
            }
            inits.push(t);
            expected.push((tname, bytes.clone()));
        }
    }
    let graph = pb::GraphProto {
        name: Some("dtypes".into()),
        node: nodes,
        initializer: inits,
        output: outputs,
        ..Default::default()
    };
    (model(graph, 17), expected)
}

#[test]
fn every_element_type_in_raw_and_typed_storage_reads_and_round_trips() {
    let dir = tmpdir();
    let (m, expected) = all_dtypes_model();
    let path = dir.path().join("dtypes.onnx");
    fs::write(&path, m.encode_to_vec()).unwrap();

    let doc = Document::open(&path).unwrap();
    let view = doc.to_model().unwrap();
    for (name, bytes) in &expected {
        let t = view
            .main()
            .tensors
            .iter()
            .find(|t| &t.name == name)
            .unwrap();
        assert_eq!(
            t.data.as_deref(),
            Some(&bytes[..]),
            "{name}: dense little-endian view"
        );
    }
    // Inline, external and back: every element type survives, and onnxruntime agrees.
    let ext = dir.path().join("ext.onnx");
    let opts = WriteOptions {
        external_data: ExternalDataMode::Into("ext.bin".into()),
        ..WriteOptions::default()
    };
    convert(&path, &ext, &opts).unwrap();
    let back = dir.path().join("back.onnx");
    convert(
        &ext,
        &back,
        &WriteOptions {
            external_data: ExternalDataMode::Inline,
            ..WriteOptions::default()
        },
    )
    .unwrap();
    assert_eq!(
        fs::read(&back).unwrap(),
        fs::read(&path).unwrap(),
        "typed fields stay typed when nothing moved them"
    );
    for out in [&ext, &back] {
        let r = interop(
            &["onnx-pair", path.to_str().unwrap(), out.to_str().unwrap()],
            None,
        );
        assert!(r["checker_output"].is_null(), "{r}");
        assert_eq!(r["identical"], true, "{r}");
    }
}

/// `If` whose branches each hold a Constant weight for a MatMul: exporters put real weights in
/// nested graphs (audio and detection models do).
fn if_model() -> pb::ModelProto {
    let weight = |name: &str, scale: f32| pb::NodeProto {
        op_type: Some("Constant".into()),
        output: vec![name.into()],
        attribute: vec![pb::AttributeProto {
            name: Some("value".into()),
            r#type: Some(pb::attribute_proto::AttributeType::Tensor as i32),
            t: Some(pb::TensorProto {
                name: Some(format!("{name}_value")),
                dims: vec![4, 4],
                data_type: Some(1),
                float_data: (0..16).map(|i| (i as f32 - 7.5) * scale).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let branch = |tag: &str, scale: f32| pb::GraphProto {
        name: Some(tag.into()),
        node: vec![
            weight(&format!("w_{tag}"), scale),
            node(
                "MatMul",
                &["x", &format!("w_{tag}")],
                &[&format!("y_{tag}")],
            ),
        ],
        output: vec![value_info(&format!("y_{tag}"), 1, &[1, 4])],
        ..Default::default()
    };
    let if_node = pb::NodeProto {
        op_type: Some("If".into()),
        name: Some("branch".into()),
        input: vec!["cond".into()],
        output: vec!["y".into()],
        attribute: vec![
            pb::AttributeProto {
                name: Some("then_branch".into()),
                r#type: Some(pb::attribute_proto::AttributeType::Graph as i32),
                g: Some(branch("then", 0.5)),
                ..Default::default()
            },
            pb::AttributeProto {
                name: Some("else_branch".into()),
                r#type: Some(pb::attribute_proto::AttributeType::Graph as i32),
                g: Some(branch("else", -0.25)),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let graph = pb::GraphProto {
        name: Some("main".into()),
        node: vec![if_node],
        input: vec![value_info("x", 1, &[1, 4]), value_info("cond", 9, &[])],
        output: vec![value_info("y", 1, &[1, 4])],
        ..Default::default()
    };
    model(graph, 17)
}

#[test]
fn weights_in_nested_graphs_are_seen_and_kept() {
    let dir = tmpdir();
    let path = dir.path().join("if.onnx");
    fs::write(&path, if_model().encode_to_vec()).unwrap();
    let doc = Document::open(&path).unwrap();
    let report = pare::inspect::inspect(&doc).unwrap();
    assert_eq!(report.graphs, 3, "main graph plus two branches");
    let weights: Vec<&str> = report.layers.iter().map(|l| l.weight.as_str()).collect();
    assert_eq!(weights, ["w_then", "w_else"]);
    assert!(report.layers.iter().all(|l| l.graph > 0 && l.params == 16));

    let ext = dir.path().join("if_ext.onnx");
    // Constant-node tensors move to external data too (they are 64 bytes: force the threshold
    // by checking the inline path and the external path separately).
    convert(
        &path,
        &ext,
        &WriteOptions {
            external_data: ExternalDataMode::Into("if.bin".into()),
            ..WriteOptions::default()
        },
    )
    .unwrap();
    let same = dir.path().join("if_same.onnx");
    convert(&path, &same, &WriteOptions::default()).unwrap();
    assert_eq!(fs::read(&same).unwrap(), fs::read(&path).unwrap());
    for out in [&ext, &same] {
        let r = interop(
            &["onnx-pair", path.to_str().unwrap(), out.to_str().unwrap()],
            None,
        );
        assert!(r["checker_input"].is_null(), "{r}");
        assert!(r["checker_output"].is_null(), "{r}");
        assert_eq!(r["identical"], true, "{r}");
    }
    // Metadata, doc string and producer survive.
    let back = pb::ModelProto::decode(&fs::read(&ext).unwrap()[..]).unwrap();
    assert_eq!(back.doc_string(), "built by tests/library.rs");
    assert_eq!(back.metadata_props[0].value(), "v");
    assert_eq!(back.producer_name(), "pare-tests");
}

/// A 2.25 GiB external tensor followed by a small one that starts past 2^31: lengths and
/// offsets must be 64-bit all the way. The input data file is sparse (no disk cost); only pare's
/// output is really written.
#[test]
fn external_data_over_2_gib_round_trips() {
    let dir = tmpdir();
    let big_n: u64 = 9 << 26; // f32 elements: 2.25 GiB
    let big = big_n * 4;
    let small_n: u64 = 1 << 20; // 4 MiB
    let small = small_n * 4;
    let data = dir.path().join("big.bin");
    let f = fs::File::create(&data).unwrap();
    f.set_len(big + small).unwrap();
    use std::os::unix::fs::FileExt;
    let marks: [(u64, f32); 4] = [
        (0, 1.5),
        (big - 4, -2.0),
        (big, 3.25),
        (big + small - 4, 4.0),
    ];
    for (off, v) in marks {
        f.write_all_at(&v.to_le_bytes(), off).unwrap();
    }
    drop(f);
    let entry = |k: &str, v: String| pb::StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v),
    };
    let ext = |name: &str, n: u64, offset: u64| pb::TensorProto {
        name: Some(name.into()),
        dims: vec![n as i64],
        data_type: Some(1),
        data_location: Some(1),
        external_data: vec![
            entry("location", "big.bin".into()),
            entry("offset", offset.to_string()),
            entry("length", (n * 4).to_string()),
        ],
        ..Default::default()
    };
    let graph = pb::GraphProto {
        name: Some("big".into()),
        node: vec![
            node("Identity", &["a"], &["ya"]),
            node("Identity", &["b"], &["yb"]),
        ],
        initializer: vec![ext("a", big_n, 0), ext("b", small_n, big)],
        output: vec![
            value_info("ya", 1, &[big_n as i64]),
            value_info("yb", 1, &[small_n as i64]),
        ],
        ..Default::default()
    };
    let path = dir.path().join("big.onnx");
    fs::write(&path, model(graph, 17).encode_to_vec()).unwrap();

    let out = dir.path().join("out.onnx");
    let opts = WriteOptions {
        verify: VerifyPolicy::Skip,
        ..WriteOptions::default()
    };
    let report = convert(&path, &out, &opts).unwrap();
    assert_eq!(
        report.output_bytes,
        fs::metadata(&out).unwrap().len()
            + fs::metadata(dir.path().join("out.onnx.data"))
                .unwrap()
                .len()
    );

    let written = Document::open(&out).unwrap();
    let view = written.to_model().unwrap();
    let b = view.main().tensors.iter().find(|t| t.name == "b").unwrap();
    let a = view.main().tensors.iter().find(|t| t.name == "a").unwrap();
    let get = |t: &pare::model::Tensor, i: u64| {
        f32::from_le_bytes(
            t.data.as_ref().unwrap()[i as usize..i as usize + 4]
                .try_into()
                .unwrap(),
        )
    };
    assert_eq!(
        (get(a, 0), get(a, big - 4), get(b, 0), get(b, small - 4)),
        (1.5, -2.0, 3.25, 4.0)
    );
    let Document::Onnx(d) = &written else {
        panic!()
    };
    let b_proto = &d.model.graph.as_ref().unwrap().initializer[1];
    let offset: u64 = b_proto
        .external_data
        .iter()
        .find(|e| e.key() == "offset")
        .unwrap()
        .value()
        .parse()
        .unwrap();
    assert!(
        offset >= 1 << 31,
        "second tensor lies past 2 GiB ({offset})"
    );
    // Inlining it would break protobuf's 2 GiB limit: refused with advice, nothing written.
    let inline = dir.path().join("inline.onnx");
    let e = convert(
        &path,
        &inline,
        &WriteOptions {
            external_data: ExternalDataMode::Inline,
            ..opts
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("--external-data"), "{e}");
    assert!(!inline.exists());
}

#[test]
fn tflite_offset_form_for_models_over_2_gib_is_read_and_written() {
    // Building a real >2 GiB TFLite file takes minutes; the offset form itself is what matters,
    // so write a fixture in that form and check LiteRT runs it and pare reads it back.
    let dir = tmpdir();
    for name in ["mlp.tflite", "cnn_int8.tflite"] {
        let src = fixtures().join(name);
        let Document::Tflite(mut doc) = Document::open(&src).unwrap() else {
            panic!()
        };
        doc.offset_form = true;
        let (bytes, summary) = doc.encode().unwrap();
        assert!(summary.offset_buffers > 0);
        let out = dir.path().join(name);
        fs::write(&out, &bytes).unwrap();

        let Document::Tflite(back) = Document::open(&out).unwrap() else {
            panic!()
        };
        assert!(back.offset_form);
        assert_eq!(
            back.buffers, doc.buffers,
            "{name}: every payload read back from its offset"
        );
        let r = interop(
            &["tflite-pair", src.to_str().unwrap(), out.to_str().unwrap()],
            None,
        );
        assert!(
            r.get("litert_output_error").is_none(),
            "{name}: LiteRT refuses the offset form: {r}"
        );
        assert_eq!(r["identical"], true, "{r}");
        // And pare keeps the form when converting it.
        let again = dir.path().join(format!("again_{name}"));
        convert(&out, &again, &WriteOptions::default()).unwrap();
        assert_eq!(fs::read(&again).unwrap(), bytes);
    }
}

/// Regression: the flatbuffer verifier's size bound once refused every TFLite file over ~1 MB.
#[test]
fn multi_megabyte_tflite_files_are_read() {
    let dir = tmpdir();
    let Document::Tflite(mut doc) = Document::open(&fixtures().join("mlp.tflite")).unwrap() else {
        panic!()
    };
    // Make every weight 64 times larger (64 times the rows, zeros): LiteRT requires a buffer
    // to hold exactly its tensor's bytes, so the shapes grow with the buffers.
    let mut grown = Vec::new();
    for (i, b) in doc.buffers.iter_mut().enumerate() {
        if let Some(b) = b.as_mut().filter(|b| b.len() > 1000) {
            let mut v = b.to_vec();
            v.resize(v.len() * 64, 0);
            *b = v.into();
            grown.push(i as u32);
        }
    }
    for sg in doc.model.subgraphs.iter_mut().flatten() {
        for t in sg.tensors.iter_mut().flatten() {
            if grown.contains(&t.buffer) {
                if let Some(s) = t.shape.as_mut() {
                    s[0] *= 64;
                }
                t.shape_signature = None;
            }
        }
    }
    let (bytes, _) = doc.encode().unwrap();
    assert!(bytes.len() > 4 << 20, "{} bytes", bytes.len());
    // The verifier's apparent size exceeds the file's length: a bound at the file length (the
    // old setting) refuses this valid file.
    let old = flatbuffers::VerifierOptions {
        max_apparent_size: bytes.len(),
        ..Default::default()
    };
    assert!(pare::tflite_gen::tflite::root_as_model_with_opts(&old, &bytes).is_err());
    let path = dir.path().join("big.tflite");
    fs::write(&path, &bytes).unwrap();
    let Document::Tflite(back) = Document::open(&path).unwrap() else {
        panic!()
    };
    assert_eq!(back.buffers, doc.buffers);
}

#[test]
fn convert_is_idempotent_on_every_fixture() {
    let dir = tmpdir();
    for m in fixture_models() {
        let file = m["file"].as_str().unwrap();
        let once = dir.path().join(format!("once_{file}"));
        let twice = dir.path().join(format!("twice_{file}"));
        convert(&fixtures().join(file), &once, &WriteOptions::default()).unwrap();
        convert(&once, &twice, &WriteOptions::default()).unwrap();
        assert_eq!(
            fs::read(&once).unwrap(),
            fs::read(&twice).unwrap(),
            "{file}"
        );
    }
}

#[test]
fn errors_name_the_file() {
    let dir = tmpdir();
    let p = dir.path().join("nope.tflite");
    fs::write(&p, b"TFL").unwrap();
    let e = Document::open(&p).unwrap_err();
    assert!(matches!(e, pare::Error::Malformed { .. }));
    assert!(e.to_string().contains("nope.tflite"), "{e}");
}

mod properties {
    use super::*;
    use pare::model::DType;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn nonzero_count_matches_a_plain_count(v in proptest::collection::vec(prop_oneof![Just(0.0f32), Just(-0.0f32), any::<f32>()], 0..200)) {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            prop_assert_eq!(DType::F32.count_nonzero(&bytes, None), Some(v.iter().filter(|x| **x != 0.0).count() as u64));
        }

        #[test]
        fn quantized_zero_is_the_zero_point(v in proptest::collection::vec(any::<i8>(), 0..200), zp in any::<i8>()) {
            let bytes: Vec<u8> = v.iter().map(|&x| x as u8).collect();
            prop_assert_eq!(DType::I8.count_nonzero(&bytes, Some(zp as i64)), Some(v.iter().filter(|&&x| x != zp).count() as u64));
        }

        #[test]
        fn locations_with_parent_or_absolute_components_are_refused(parts in proptest::collection::vec("[a-z]{1,4}|\\.\\.|\\.", 1..5), absolute in any::<bool>()) {
            let dir = tmpdir();
            let mut loc = parts.join("/");
            if absolute { loc.insert(0, '/'); }
            let r = pare::onnx::resolve_location(Path::new("m.onnx"), dir.path(), &loc);
            if absolute || parts.iter().any(|p| p == "..") {
                prop_assert!(r.is_err(), "{loc} accepted");
            }
        }
    }
}

/// A model with weights in every place exporters put them: an initializer used by a main-graph
/// MatMul *and* (by outer scope) inside an If body, and Constant-node weights in both branches.
fn shared_weight_if_model() -> pb::ModelProto {
    let mut m = if_model();
    let g = m.graph.as_mut().unwrap();
    g.initializer.push(pb::TensorProto {
        name: Some("w_outer".into()),
        dims: vec![4, 4],
        data_type: Some(1),
        float_data: (0..16).map(|i| ((i * 7) % 16) as f32 - 7.5).collect(),
        ..Default::default()
    });
    g.node.insert(0, node("MatMul", &["x", "w_outer"], &["z"]));
    g.output.push(value_info("z", 1, &[1, 4]));
    let then = g.node[1].attribute[0].g.as_mut().unwrap();
    then.node
        .push(node("MatMul", &["y_then", "w_outer"], &["y2_then"]));
    then.output[0] = value_info("y2_then", 1, &[1, 4]);
    m
}

#[test]
fn library_prunes_constant_nodes_if_bodies_and_shared_weights_once() {
    use pare::prune::{plan, prune, PruneOptions};
    let dir = tmpdir();
    let path = dir.path().join("shared.onnx");
    fs::write(&path, shared_weight_if_model().encode_to_vec()).unwrap();
    let doc = Document::open(&path).unwrap();
    let opts = PruneOptions {
        sparsity: Some(0.5),
        min_params: 1,
        ..PruneOptions::default()
    };
    let p = plan(&doc, &opts).unwrap();
    let mut names: Vec<&str> = p.report.layers.iter().map(|l| l.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["w_else", "w_outer", "w_then"]);
    let outer = p
        .report
        .layers
        .iter()
        .find(|l| l.name == "w_outer")
        .unwrap();
    assert_eq!(
        outer.nodes.len(),
        2,
        "shared by the main graph and the then-branch"
    );
    assert!(p.report.layers.iter().all(|l| l.zeros_after == 8));
    assert_eq!(p.edits.len(), 3);

    let out = dir.path().join("pruned.onnx");
    let r = prune(&path, &out, &opts, &WriteOptions::default()).unwrap();
    let v = r.write.unwrap().verification.unwrap();
    assert!(v.checked, "{:?}", v.reason);
    let pair = interop(
        &["onnx-pair", path.to_str().unwrap(), out.to_str().unwrap()],
        None,
    );
    assert!(pair["checker_output"].is_null(), "{pair}");
    assert_eq!(pair["outputs"], 2, "{pair}");
    // Only weight values changed: names, nodes and metadata are as they were.
    let back = pb::ModelProto::decode(&fs::read(&out).unwrap()[..]).unwrap();
    assert_eq!(back.metadata_props[0].value(), "v");
    assert_eq!(back.graph.as_ref().unwrap().node.len(), 2);
}

mod prune_properties {
    use super::*;
    use pare::prune::{plan, PruneOptions};
    use proptest::prelude::*;

    fn gemm_model(w: &[f32], rows: i64, cols: i64) -> pb::ModelProto {
        let graph = pb::GraphProto {
            name: Some("g".into()),
            node: vec![node("MatMul", &["x", "w"], &["y"])],
            initializer: vec![pb::TensorProto {
                name: Some("w".into()),
                dims: vec![rows, cols],
                data_type: Some(1),
                raw_data: Some(
                    w.iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect::<Vec<u8>>()
                        .into(),
                ),
                ..Default::default()
            }],
            input: vec![value_info("x", 1, &[1, rows])],
            output: vec![value_info("y", 1, &[1, cols])],
            ..Default::default()
        };
        model(graph, 17)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Layer scope prunes exactly round(S·n) weights (or keeps the zeros already there),
        /// never creates NaN, and prunes only weights no larger than any it keeps.
        #[test]
        fn layer_scope_is_exact(
            v in proptest::collection::vec(prop_oneof![Just(0.0f32), -4.0f32..4.0, Just(1.0f32)], 16..160),
            s in 0.0f64..0.99
        ) {
            let cols = 8;
            let rows = (v.len() / 8) as i64;
            let w = &v[..(rows * cols) as usize];
            let dir = tmpdir();
            let path = dir.path().join("m.onnx");
            fs::write(&path, gemm_model(w, rows, cols).encode_to_vec()).unwrap();
            let doc = Document::open(&path).unwrap();
            let opts = PruneOptions { sparsity: Some(s), min_params: 1, ..PruneOptions::default() };
            let p = plan(&doc, &opts).unwrap();
            let l = &p.report.layers[0];
            let n = w.len() as f64;
            let before = w.iter().filter(|x| **x == 0.0).count() as u64;
            let want = ((s * n).round() as u64).min(w.len() as u64 - 1).max(before);
            prop_assert_eq!(l.zeros_before, before);
            prop_assert_eq!(l.zeros_after, want);
            if let Some(new) = p.edits.values().next() {
                let after: Vec<f32> = new.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
                prop_assert!(after.iter().all(|x| !x.is_nan()));
                let max_pruned = w.iter().zip(&after).filter(|(o, a)| **a == 0.0 && **o != 0.0).map(|(o, _)| o.abs()).fold(0.0, f32::max);
                let min_kept = after.iter().filter(|a| **a != 0.0).map(|a| a.abs()).fold(f32::INFINITY, f32::min);
                prop_assert!(max_pruned <= min_kept);
                // Unpruned weights are untouched, bit for bit.
                prop_assert!(w.iter().zip(&after).all(|(o, a)| *a == 0.0 || o.to_bits() == a.to_bits()));
            } else {
                prop_assert_eq!(want, before, "no edit although weights had to go");
            }
        }

        #[test]
        fn sparsity_zero_edits_nothing(v in proptest::collection::vec(-4.0f32..4.0, 64..65)) {
            let dir = tmpdir();
            let path = dir.path().join("m.onnx");
            fs::write(&path, gemm_model(&v, 8, 8).encode_to_vec()).unwrap();
            let doc = Document::open(&path).unwrap();
            let opts = PruneOptions { sparsity: Some(0.0), min_params: 1, ..PruneOptions::default() };
            prop_assert!(plan(&doc, &opts).unwrap().edits.is_empty());
        }
    }
}

/// The validation API as a Rust user calls it: a reference bound to data, candidates pruned in
/// memory compared without writing anything, and the same numbers for the written file.
#[test]
fn validation_api_compares_in_memory_and_written_candidates_alike() {
    use pare::data::{DataOptions, DataSource};
    use pare::prune::{plan, PruneOptions, Scope};
    use pare::validate::{Gates, Reference, ValidateOptions};
    let dir = tmpdir();
    let original = Document::open(&fixtures().join("cnn.tflite")).unwrap();
    let data = DataOptions {
        source: DataSource::Path(fixtures().join("data/test_cnn_tflite.npz")),
        ..Default::default()
    };
    let mut reference = Reference::new(&original, &data).unwrap();
    assert_eq!(reference.dataset.samples, 360);
    let gates = Gates {
        max_accuracy_drop: Some(1.0),
        ..Default::default()
    };
    let quiet = pare::progress::Silent;

    // The original against itself: no difference, every gate passes.
    let same = reference.load_candidate(&original).unwrap();
    let c = reference.compare(&same, &gates, &quiet).unwrap();
    assert!(c.passed);
    assert_eq!(c.outputs[0].max_abs_diff, 0.0);
    assert_eq!(c.accuracy.as_ref().unwrap().drop_points, 0.0);

    // Pruned in memory.
    let opts = PruneOptions {
        sparsity: Some(0.5),
        scope: Scope::Lamp,
        ..Default::default()
    };
    let p = plan(&original, &opts).unwrap();
    let edited = original.with_tensor_data(&p.edits);
    let runner = reference.load_candidate(&edited).unwrap();
    let in_memory = reference.compare(&runner, &gates, &quiet).unwrap();
    assert!(
        in_memory.outputs[0].max_abs_diff > 0.0,
        "the edits are seen"
    );

    // Written, then validated from disk: the same numbers.
    let out = dir.path().join("p.tflite");
    pare::prune::prune(
        &fixtures().join("cnn.tflite"),
        &out,
        &opts,
        &WriteOptions::default(),
    )
    .unwrap();
    let written = Document::open(&out).unwrap();
    let r = pare::validate::validate_quiet(
        &original,
        &written,
        &ValidateOptions {
            data: data.clone(),
            gates: gates.clone(),
            latency_runs: 0,
            warmup: 0,
        },
    )
    .unwrap();
    assert_eq!(
        serde_json::to_value(&r.outputs).unwrap(),
        serde_json::to_value(&in_memory.outputs).unwrap()
    );
    assert_eq!(r.passed, in_memory.passed);
    assert!(r.latency.is_none());
}

/// A written model tract cannot run while it runs the original is pare's bug, never a file to
/// ship: it is refused even under the default policy, which otherwise writes unverifiable models.
#[test]
fn a_written_model_that_breaks_in_tract_is_refused() {
    let dir = tmpdir();
    let original = Document::open(&fixtures().join("mlp.onnx")).unwrap();
    let Document::Onnx(mut broken) = original.clone() else {
        panic!()
    };
    // Drop the node that produces the graph's output.
    let g = broken.model.graph.as_mut().unwrap();
    let out = g.output[0].name.clone().unwrap();
    g.node.retain(|n| !n.output.contains(&out));
    broken.edited = true;
    let dest = dir.path().join("broken.onnx");
    let err = pare::convert::write_checked(
        &original,
        &Document::Onnx(broken),
        &dest,
        &WriteOptions::default(),
        false,
    )
    .unwrap_err();
    assert!(matches!(err, pare::Error::Verification(_)), "{err}");
    assert!(
        err.to_string()
            .contains("tract runs the original but not the written model"),
        "{err}"
    );
    assert!(!dest.exists());
}
