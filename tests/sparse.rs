//! Sparse storage as users run it: pruned fixtures written sparse (TFLite sparse tensors feeding
//! DENSIFY, ONNX sparse_initializer), run by onnxruntime and LiteRT against their dense twins;
//! the TensorFlow converter's own sparse models read, round-tripped, pruned further and
//! densified; block layouts; damaged sparse metadata refused.

use crate::common::*;
use pare::tflite_gen::tflite as fb;
use pare::Document;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn sparse_fixture(name: &str) -> PathBuf {
    fixtures().join("sparse").join(name)
}

fn tflite_pair(a: &Path, b: &Path) -> Value {
    interop(
        &["tflite-pair", a.to_str().unwrap(), b.to_str().unwrap()],
        None,
    )
}

/// `pare prune MODEL ARGS` to `out`, and the same with `--storage dense` to `dense` (the twin
/// the runtimes compare it with); the report of the first.
fn prune_with_dense_twin(model: &Path, dense: &Path, out: &Path, args: &[&str]) -> Value {
    write_json(
        "prune",
        model,
        dense,
        &[args, &["--storage", "dense"]].concat(),
    );
    write_json("prune", model, out, args)
}

fn assert_runs_identically(r: &Value, what: &str) {
    for k in [
        "litert_output_error",
        "litert_output_error_builtin",
        "ort_output_error",
    ] {
        assert!(r.get(k).is_none(), "{what}: the runtime refused it: {r}");
    }
    assert!(
        r.get("checker_output").is_none_or(Value::is_null),
        "{what}: checker: {r}"
    );
    // LiteRT's default interpreter refuses the converter's own int8 sparse model (XNNPACK
    // fails to prepare an int8 FULLY_CONNECTED fed by DENSIFY): then only the builtin kernels
    // can compare the two.
    if r.get("litert_input_error").is_none() {
        assert_eq!(r["identical"], true, "{what}: outputs differ: {r}");
    }
    if r.get("ort_input_error").is_none()
        && r["output"].as_str().is_some_and(|o| o.ends_with(".tflite"))
    {
        assert_eq!(
            r["identical_builtin"], true,
            "{what}: builtin kernels differ: {r}"
        );
    }
}

/// The matrix: every fixture pruned to 87.5% (unstructured, per layer), written dense
/// and with `--storage auto` (the default) and `sparse`. The sparse files run in onnxruntime /
/// LiteRT (with and without XNNPACK) exactly like the dense ones; tract verified them (on the
/// densified equivalent, which the report says). Prints the README's size table.
#[test]
fn pruned_fixtures_are_stored_sparse_and_run_like_their_dense_twins() {
    let dir = tmpdir();
    let mut onnx_pairs = Vec::new();
    let mut table = Vec::new();
    for m in fixture_models() {
        let file = m["file"].as_str().unwrap();
        let model = fixtures().join(file);
        let dense = dir.path().join(format!("dense-{file}"));
        write_json(
            "prune",
            &model,
            &dense,
            &["--sparsity", "0.875", "--storage", "dense"],
        );
        for storage in ["auto", "sparse"] {
            let out = dir.path().join(format!("{storage}-{file}"));
            let r = write_json(
                "prune",
                &model,
                &out,
                &[
                    "--sparsity",
                    "0.875",
                    "--storage",
                    storage,
                    "--compressed-sizes",
                ],
            );
            let w = &r["write"];
            assert_eq!(w["verification"]["checked"], true, "{file} {storage}: {w}");
            let st = &w["storage"];
            assert_eq!(st["storage"], storage);
            let n = st["sparse_tensors"].as_array().unwrap().len();
            let int8_mlp = file == "mlp_int8.tflite"; // int8 FULLY_CONNECTED weights stay dense
            assert_eq!(
                n > 0,
                !int8_mlp,
                "{file} {storage}: {n} sparse weights: {st}"
            );
            if n > 0 {
                let lowered = &w["verification"]["lowered"]["rewrites"];
                let key = if file.ends_with(".onnx") {
                    "sparse initializers densified"
                } else {
                    "sparse weights densified (DENSIFY removed)"
                };
                assert!(
                    lowered.get(key).is_some(),
                    "{file}: tract check not on the densified model: {w}"
                );
                // `inspect` on the written file sees the sparse weights and their true density.
                let ins = inspect_json(&out);
                assert_eq!(
                    ins["totals"]["sparse_tensors"].as_u64().unwrap() as usize,
                    n
                );
                let dense_ins = inspect_json(&dense);
                assert_eq!(
                    ins["totals"]["nonzero_params"],
                    dense_ins["totals"]["nonzero_params"]
                );
                assert_eq!(ins["totals"]["macs"], dense_ins["totals"]["macs"], "{file}");
                for t in st["sparse_tensors"].as_array().unwrap() {
                    assert!(t["stored_bytes"].as_u64() > Some(0));
                    if storage == "auto" {
                        assert!(
                            t["stored_bytes"].as_u64() < t["dense_bytes"].as_u64(),
                            "{t}"
                        );
                    }
                }
            }
            let s = &w["sizes"];
            // Auto never loses: at most the dense file plus a rounding of the flatbuffer.
            if storage == "auto" {
                let dense_bytes = std::fs::metadata(&dense).unwrap().len();
                assert!(
                    s["written"]["file_bytes"].as_u64().unwrap() <= dense_bytes + 64,
                    "{file}: auto wrote {} bytes, dense {dense_bytes}",
                    s["written"]["file_bytes"]
                );
                table.push(format!(
                    "| {file} | {n} | {} → {} | {:.2}x | {} → {} | {:.2}x | {:.2}x |",
                    s["original"]["file_bytes"],
                    s["written"]["file_bytes"],
                    s["file_ratio"].as_f64().unwrap(),
                    s["original"]["gzip_bytes"],
                    s["written"]["gzip_bytes"],
                    s["gzip_ratio"].as_f64().unwrap(),
                    s["zstd_ratio"].as_f64().unwrap(),
                ));
            }
            if file.ends_with(".onnx") {
                onnx_pairs.push(json!({"model": dense, "output": out}));
            } else {
                assert_runs_identically(&tflite_pair(&dense, &out), &format!("{file} {storage}"));
            }
        }
    }
    let answers = interop(&["onnx-pairs"], Some(&Value::from(onnx_pairs).to_string()));
    for r in answers.as_array().unwrap() {
        assert_runs_identically(r, r["output"].as_str().unwrap());
    }
    eprintln!("| fixture | sparse weights | file bytes | smaller | gzip -9 bytes | smaller | zstd -9 smaller |");
    eprintln!("| --- | --- | --- | --- | --- | --- | --- |");
    for row in table {
        eprintln!("{row}");
    }
}

/// TensorFlow's converter writes pruned models with sparse weights feeding DENSIFY ops
/// (fixtures/sparse, float32, float16 and int8). pare reads them (inspect sees the true
/// density), round-trips them exactly, prunes them further and writes them back sparse, and
/// densifies them back.
#[test]
fn converter_sparse_models_read_round_trip_prune_further_and_densify() {
    let dir = tmpdir();
    let mut accuracy_jobs = Vec::new();
    let x = fixtures().join("data/test_x_nhwc.npy");
    let y = fixtures().join("data/test_y.npy");
    for name in [
        "cnn_sparse.tflite",
        "cnn_sparse_f16.tflite",
        "cnn_sparse_int8.tflite",
    ] {
        let model = sparse_fixture(name);
        let ins = inspect_json(&model);
        assert_eq!(ins["totals"]["sparse_tensors"], 6, "{name}");
        for l in ins["layers"].as_array().unwrap() {
            assert_eq!(l["stored_sparse"], true, "{name}: {l}");
            let s = l["sparsity"].as_f64().unwrap();
            assert!((0.78..0.82).contains(&s), "{name}: {l}");
        }

        // convert keeps everything: the same model, tensor for tensor, buffer for buffer.
        let same = dir.path().join(format!("same-{name}"));
        let r = convert_json(&model, &same, &[]);
        assert_eq!(r["verification"]["outputs"][0]["identical"], true, "{name}");
        let (Document::Tflite(a), Document::Tflite(b)) = (
            Document::open(&model).unwrap(),
            Document::open(&same).unwrap(),
        ) else {
            panic!("not TFLite")
        };
        assert!(
            a.model == b.model,
            "{name}: the model changed in a round trip"
        );
        assert_eq!(
            a.buffers, b.buffers,
            "{name}: buffers changed in a round trip"
        );

        // Densified back: no DENSIFY, same outputs in LiteRT, bigger file.
        let dense = dir.path().join(format!("dense-{name}"));
        let r = convert_json(&model, &dense, &["--storage", "dense"]);
        assert_eq!(r["storage"]["densified"], 6, "{name}");
        assert_eq!(r["verification"]["outputs"][0]["identical"], true, "{name}");
        let ops = inspect_json(&dense)["op_histogram"].clone();
        assert!(ops.get("DENSIFY").is_none(), "{name}: {ops}");
        assert!(
            r["sizes"]["file_ratio"].as_f64().unwrap() < 0.9,
            "{name}: {r}"
        );
        assert_runs_identically(&tflite_pair(&model, &dense), &format!("{name} densified"));

        // Pruned further: written sparse again, runs in LiteRT.
        let more = dir.path().join(format!("more-{name}"));
        let r = write_json("prune", &model, &more, &["--sparsity", "0.85"]);
        let st = &r["write"]["storage"];
        assert!(
            !st["sparse_tensors"].as_array().unwrap().is_empty(),
            "{name}: {st}"
        );
        let after = inspect_json(&more);
        assert!(
            after["totals"]["nonzero_params"].as_u64() < ins["totals"]["nonzero_params"].as_u64(),
            "{name}: nothing more was pruned"
        );
        assert!(
            std::fs::metadata(&more).unwrap().len() < std::fs::metadata(&model).unwrap().len(),
            "{name}: pruning further did not make the file smaller"
        );
        accuracy_jobs.push(json!({"model": model, "x": x, "y": y}));
        accuracy_jobs.push(json!({"model": more, "x": x, "y": y}));
    }
    let results = interop(
        &["accuracy"],
        Some(&Value::from(accuracy_jobs.clone()).to_string()),
    );
    let results = results.as_array().unwrap();
    for job in accuracy_jobs.chunks(2) {
        let a = accuracy_in(results, Path::new(job[0]["model"].as_str().unwrap()));
        let b = accuracy_in(results, Path::new(job[1]["model"].as_str().unwrap()));
        eprintln!(
            "{}: LiteRT accuracy {:.1}% → {:.1}% at 85% sparsity",
            job[0]["model"],
            100.0 * a,
            100.0 * b
        );
        assert!(a > 0.95, "{job:?}: the converter's model scores {a}");
    }
}

/// `--pattern block:RxC` blocks are stored as TFLite blocks (block_map, dense block levels),
/// which LiteRT runs exactly like the dense model.
#[test]
fn block_patterns_are_stored_as_blocks() {
    let dir = tmpdir();
    let model = fixtures().join("mlp.tflite");
    for (pattern, block_dim) in [("block:4x1", 0), ("block:1x4", 1)] {
        let dense = dir.path().join(format!("dense-{}.tflite", &pattern[6..]));
        let out = dir.path().join(format!("{}.tflite", &pattern[6..]));
        let args = ["--sparsity", "0.875", "--pattern", pattern];
        let r = prune_with_dense_twin(&model, &dense, &out, &args);
        let tensors = r["write"]["storage"]["sparse_tensors"]
            .as_array()
            .unwrap()
            .clone();
        assert!(!tensors.is_empty(), "{pattern}: {r}");
        let Document::Tflite(d) = Document::open(&out).unwrap() else {
            panic!()
        };
        let mut blocked = 0;
        for t in d.model.subgraphs.as_ref().unwrap()[0]
            .tensors
            .iter()
            .flatten()
        {
            if let Some(sp) = &t.sparsity {
                if sp.block_map.as_deref() == Some(&[block_dim][..]) {
                    blocked += 1;
                    let levels = sp.dim_metadata.as_ref().unwrap();
                    assert_eq!(levels.last().unwrap().format, fb::DimensionType::DENSE);
                    assert_eq!(levels.last().unwrap().dense_size, 4);
                }
            }
        }
        assert!(
            blocked > 0,
            "{pattern}: no tensor stored in blocks: {tensors:?}"
        );
        assert_runs_identically(&tflite_pair(&dense, &out), pattern);
    }
}

/// Properties: sparsity 0 with `--storage auto` stores nothing sparse (the fixtures' weights
/// have no zeros) and changes no output; sparse then dense gives back the original weights.
#[test]
fn storage_round_trips_are_exact() {
    let dir = tmpdir();
    for file in ["cnn.onnx", "cnn.tflite", "cnn_int8.tflite"] {
        let model = fixtures().join(file);
        let zero = dir.path().join(format!("zero-{file}"));
        let r = write_json("prune", &model, &zero, &["--sparsity", "0"]);
        assert_eq!(r["write"]["storage"]["made_sparse"], 0, "{file}");
        assert_eq!(r["write"]["verification"]["outputs"][0]["identical"], true);

        let sparse = dir.path().join(format!("sparse-{file}"));
        let r = convert_json(&model, &sparse, &["--storage", "sparse"]);
        assert!(
            r["storage"]["made_sparse"].as_u64() > Some(0),
            "{file}: {r}"
        );
        assert_eq!(r["verification"]["outputs"][0]["identical"], true);
        let back = dir.path().join(format!("back-{file}"));
        let r = convert_json(&sparse, &back, &["--storage", "dense"]);
        // Raw sizes only by default: no gzip/zstd figures or ratios.
        let sizes = &r["sizes"];
        assert!(sizes["file_ratio"].as_f64().unwrap() > 0.0, "{sizes}");
        for k in ["gzip_ratio", "zstd_ratio"] {
            assert!(sizes.get(k).is_none(), "{k}: {sizes}");
        }
        assert!(sizes["written"].get("gzip_bytes").is_none(), "{sizes}");
        let (a, b) = (
            Document::open(&model).unwrap(),
            Document::open(&back).unwrap(),
        );
        let (a, b) = (a.to_model().unwrap(), b.to_model().unwrap());
        for t in a.main().tensors.iter().filter(|t| t.data.is_some()) {
            let u = b.main().tensors.iter().find(|u| u.name == t.name).unwrap();
            assert_eq!(t.data, u.data, "{file}: {} changed", t.name);
            assert!(!u.sparse);
        }
        assert!(!Document::open(&back).unwrap().has_sparse());
    }
}

/// Damaged sparse metadata: a clear error naming the tensor, exit 1, never a panic.
#[test]
fn damaged_sparse_tensors_are_refused() {
    let dir = tmpdir();
    let Document::Tflite(doc) = Document::open(&sparse_fixture("cnn_sparse.tflite")).unwrap()
    else {
        panic!()
    };
    type Damage = fn(&mut fb::SparsityParametersT);
    let damages: Vec<(&str, Damage, &str)> = vec![
        (
            "index out of range",
            |sp| {
                let d = sp.dim_metadata.as_mut().unwrap().last_mut().unwrap();
                d.array_indices = i32_vector(vec![1000; indices_len(d)]);
            },
            "out of range",
        ),
        (
            "unsorted indices",
            |sp| {
                let d = sp.dim_metadata.as_mut().unwrap().last_mut().unwrap();
                let n = indices_len(d);
                d.array_indices = i32_vector((0..n as i32).map(|i| i % 2).collect());
                d.array_segments = i32_vector(segments_all_in_first(d, n));
            },
            "ascending",
        ),
        (
            "segments of the wrong length",
            |sp| {
                let d = sp.dim_metadata.as_mut().unwrap().last_mut().unwrap();
                d.array_segments = i32_vector(vec![0, 1]);
            },
            "segment",
        ),
        (
            "traversal order",
            |sp| {
                sp.traversal_order = Some(vec![0, 0, 1, 2]);
            },
            "permutation",
        ),
        (
            "dimension metadata count",
            |sp| {
                sp.dim_metadata.as_mut().unwrap().pop();
            },
            "dimension metadata",
        ),
        (
            "negative dense size",
            |sp| {
                sp.dim_metadata.as_mut().unwrap()[0].dense_size = -5;
            },
            "negative",
        ),
    ];
    for (what, damage, expect) in damages {
        let mut d = doc.clone();
        let sg = &mut d.model.subgraphs.as_mut().unwrap()[0];
        let t = sg
            .tensors
            .as_mut()
            .unwrap()
            .iter_mut()
            .find(|t| t.sparsity.is_some() && t.shape.as_ref().unwrap()[3] > 4)
            .unwrap();
        let name = t.name.clone().unwrap();
        damage(t.sparsity.as_mut().unwrap());
        let path = dir
            .path()
            .join(format!("{}.tflite", what.replace(' ', "_")));
        std::fs::write(&path, d.encode().unwrap().0).unwrap();
        for cmd in [
            &["inspect", path.to_str().unwrap()][..],
            &[
                "convert",
                path.to_str().unwrap(),
                "-o",
                dir.path().join("x.tflite").to_str().unwrap(),
            ],
        ] {
            let o = run(cmd);
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(1), "{what}: {err}");
            assert!(err.contains(&name) && err.contains(expect), "{what}: {err}");
            assert!(!err.contains("panicked"), "{what}: {err}");
        }
        assert!(!dir.path().join("x.tflite").exists());
    }

    // ONNX: indices out of range, unsorted, of the wrong count.
    let sparse = dir.path().join("sparse.onnx");
    convert_json(
        &fixtures().join("mlp.onnx"),
        &sparse,
        &["--storage", "sparse"],
    );
    let bytes = std::fs::read(&sparse).unwrap();
    type OnnxDamage = fn(&mut Vec<i64>);
    let onnx_damages: Vec<(&str, OnnxDamage, &str)> = vec![
        (
            "out of range",
            |v| *v.last_mut().unwrap() = 1 << 40,
            "out of range",
        ),
        ("unsorted", |v| v.swap(0, 1), "ascending"),
        (
            "count",
            |v| {
                v.pop();
            },
            "indices",
        ),
    ];
    for (what, damage, expect) in onnx_damages {
        use prost::Message;
        let mut m = pare::onnx_pb::ModelProto::decode(&bytes[..]).unwrap();
        let s = &mut m.graph.as_mut().unwrap().sparse_initializer[0];
        let name = s.values.as_ref().unwrap().name().to_string();
        let ix = s.indices.as_mut().unwrap();
        let mut v: Vec<i64> = ix
            .raw_data
            .as_ref()
            .unwrap()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        damage(&mut v);
        ix.dims = vec![v.len() as i64];
        ix.raw_data = Some(
            v.iter()
                .flat_map(|i| i.to_le_bytes())
                .collect::<Vec<u8>>()
                .into(),
        );
        let path = dir.path().join(format!("{}.onnx", what.replace(' ', "_")));
        std::fs::write(&path, m.encode_to_vec()).unwrap();
        let o = run(&["inspect", path.to_str().unwrap()]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{what}: {err}");
        assert!(err.contains(&name) && err.contains(expect), "{what}: {err}");
    }
}

fn indices_len(d: &fb::DimensionMetadataT) -> usize {
    match &d.array_indices {
        fb::SparseIndexVectorT::Int32Vector(v) => v.values.as_ref().map_or(0, Vec::len),
        fb::SparseIndexVectorT::Uint16Vector(v) => v.values.as_ref().map_or(0, Vec::len),
        fb::SparseIndexVectorT::Uint8Vector(v) => v.values.as_ref().map_or(0, Vec::len),
        _ => 0,
    }
}

/// A segment array with the same length that puts all `n` indices in the first segment.
fn segments_all_in_first(d: &fb::DimensionMetadataT, n: usize) -> Vec<i32> {
    let len = match &d.array_segments {
        fb::SparseIndexVectorT::Int32Vector(v) => v.values.as_ref().map_or(0, Vec::len),
        fb::SparseIndexVectorT::Uint16Vector(v) => v.values.as_ref().map_or(0, Vec::len),
        fb::SparseIndexVectorT::Uint8Vector(v) => v.values.as_ref().map_or(0, Vec::len),
        _ => 0,
    };
    let mut s = vec![n as i32; len];
    s[0] = 0;
    s
}

fn i32_vector(values: Vec<i32>) -> fb::SparseIndexVectorT {
    let mut v = fb::Int32VectorT::default();
    v.values = Some(values);
    fb::SparseIndexVectorT::Int32Vector(Box::new(v))
}

/// With `--external-data`, dense weights go to the data file and sparse ones stay inline (the
/// onnx package cannot read sparse values from external data; onnxruntime can): the checker
/// and onnxruntime accept the result, and it computes what the dense twin computes.
#[test]
fn external_data_keeps_sparse_tensors_inline() {
    let dir = tmpdir();
    let model = fixtures().join("mobilenet.onnx");
    let dense = dir.path().join("dense.onnx");
    let out = dir.path().join("sparse.onnx");
    // One large weight left unpruned stays dense, and so goes to the data file.
    let args = [
        "--sparsity",
        "0.875",
        "--external-data",
        "--exclude",
        "ir1_expand",
    ];
    let r = prune_with_dense_twin(&model, &dense, &out, &args);
    assert!(
        r["write"]["storage"]["made_sparse"].as_u64() > Some(0),
        "{r}"
    );
    assert!(
        dir.path().join("sparse.onnx.data").exists(),
        "no data file: {r}"
    );
    use prost::Message;
    let m = pare::onnx_pb::ModelProto::decode(&std::fs::read(&out).unwrap()[..]).unwrap();
    let g = m.graph.unwrap();
    assert!(!g.sparse_initializer.is_empty());
    for s in &g.sparse_initializer {
        for t in [&s.values, &s.indices].into_iter().flatten() {
            assert!(t.external_data.is_empty(), "{:?} is external", t.name);
        }
    }
    assert!(g.initializer.iter().any(|t| !t.external_data.is_empty()));
    let r = interop(
        &["onnx-pair", dense.to_str().unwrap(), out.to_str().unwrap()],
        None,
    );
    assert_runs_identically(&r, "external data");
}
