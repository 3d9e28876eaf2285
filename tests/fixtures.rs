//! The bundled fixtures (real Keras models exported by tf2onnx and TFLiteConverter): inspect
//! agrees with what the exporter-side script saw, and `convert` output runs identically in
//! onnxruntime and LiteRT.

use crate::common::*;
use pare::tflite_gen::tflite as fb;
use std::fs;

#[test]
fn fixtures_are_all_present_and_small() {
    let models = fixture_models();
    assert_eq!(
        models.len(),
        9,
        "3 families × (ONNX, TFLite float32, TFLite int8)"
    );
    let total: u64 = walk(&fixtures())
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    assert!(
        total < 5 << 20,
        "fixtures/ is {total} bytes; keep it under 5 MB"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            v.extend(walk(&p));
        } else {
            v.push(p);
        }
    }
    v
}

#[test]
fn inspect_agrees_with_the_exporter_side_view_of_every_fixture() {
    for m in fixture_models() {
        let path = fixtures().join(m["file"].as_str().unwrap());
        let o = run(&["inspect", "--json", path.to_str().unwrap()]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}: {}",
            path.display(),
            stderr(&o)
        );
        let r = json(&o);
        assert_eq!(r["info"]["format"], m["format"], "{}", path.display());
        assert_eq!(
            r["op_histogram"],
            m["op_histogram"],
            "{}: op histogram",
            path.display()
        );
        assert_eq!(
            r["inputs"][0]["name"],
            m["input_name"],
            "{}",
            path.display()
        );
        assert_eq!(
            r["outputs"][0]["name"],
            m["output_name"],
            "{}",
            path.display()
        );
        assert_eq!(r["sizes"]["file_bytes"], m["size_bytes"]);
        assert!(
            r["totals"]["macs"].as_u64().unwrap() > 0,
            "{}: MACs",
            path.display()
        );
        assert!(!r["layers"].as_array().unwrap().is_empty());
        if m["variant"] == "int8" {
            let q = &r["inputs"][0]["quantization"];
            assert_eq!(
                q["scale"][0].as_f64().unwrap() as f32,
                m["input_quantization"]["scale"].as_f64().unwrap() as f32
            );
            assert_eq!(q["zero_point"][0], m["input_quantization"]["zero_point"]);
            // Every weight of a full-integer model is int8.
            for l in r["layers"].as_array().unwrap() {
                assert_eq!(l["dtype"], "i8", "{}: {}", path.display(), l["node"]);
            }
        }
        if m["format"] == "tflite" {
            assert_eq!(
                r["info"]["signatures"],
                serde_json::json!(["serving_default"])
            );
            assert!(r["info"]["min_runtime_version"].is_string());
        }
    }
}

/// Byte offset of every buffer payload in a TFLite file.
fn buffer_offsets(bytes: &[u8]) -> Vec<usize> {
    let model = fb::root_as_model(bytes).unwrap();
    model
        .buffers()
        .unwrap()
        .iter()
        .filter_map(|b| {
            b.data()
                .map(|d| d.bytes().as_ptr() as usize - bytes.as_ptr() as usize)
        })
        .collect()
}

#[test]
fn every_tflite_fixture_round_trips_in_litert_with_metadata_and_aligned_buffers() {
    let dir = tmpdir();
    for m in fixture_models().iter().filter(|m| m["format"] == "tflite") {
        let input = fixtures().join(m["file"].as_str().unwrap());
        let out = dir.path().join(m["file"].as_str().unwrap());
        let report = convert_json(&input, &out, &[]);
        // tract verifies every fixture, int8 included, through the validation copy.
        let v = &report["verification"];
        assert_eq!(v["checked"], true, "{}: {v}", input.display());
        assert_eq!(v["outputs"][0]["identical"], true, "{}", input.display());
        if m["variant"] == "int8" {
            assert!(
                v["lowered"]["rewrites"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .any(|k| k.starts_with("int8 emulation")),
                "{v}"
            );
        }

        let r = interop(
            &[
                "tflite-pair",
                input.to_str().unwrap(),
                out.to_str().unwrap(),
            ],
            None,
        );
        assert!(
            r.get("litert_output_error").is_none(),
            "{}: {r}",
            input.display()
        );
        assert_eq!(
            r["identical"],
            true,
            "{}: LiteRT outputs differ: {r}",
            input.display()
        );
        assert_eq!(r["signatures_equal"], true);

        let bytes = fs::read(&out).unwrap();
        for off in buffer_offsets(&bytes) {
            assert_eq!(
                off % 16,
                0,
                "{}: buffer at {off} is not 16-byte aligned",
                out.display()
            );
        }
        // Everything inspect knows about the file, except its size, is unchanged.
        let before = json(&run(&["inspect", "--json", input.to_str().unwrap()]));
        let after = json(&run(&["inspect", "--json", out.to_str().unwrap()]));
        for key in [
            "info",
            "inputs",
            "outputs",
            "op_histogram",
            "layers",
            "totals",
        ] {
            assert_eq!(
                before[key],
                after[key],
                "{}: {key} changed",
                input.display()
            );
        }
    }
}

#[test]
fn onnx_fixtures_round_trip_byte_identical_and_in_onnxruntime() {
    let dir = tmpdir();
    for m in fixture_models().iter().filter(|m| m["format"] == "onnx") {
        let input = fixtures().join(m["file"].as_str().unwrap());
        let out = dir.path().join(m["file"].as_str().unwrap());
        let report = convert_json(&input, &out, &[]);
        assert_eq!(
            report["verification"]["checked"], true,
            "tract runs the ONNX fixtures"
        );
        assert_eq!(fs::read(&out).unwrap(), fs::read(&input).unwrap());

        let ext = dir
            .path()
            .join(format!("ext_{}", m["file"].as_str().unwrap()));
        let o = run(&[
            "convert",
            input.to_str().unwrap(),
            "-o",
            ext.to_str().unwrap(),
            "--external-data",
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let r = interop(
            &["onnx-pair", input.to_str().unwrap(), ext.to_str().unwrap()],
            None,
        );
        assert!(r["checker_output"].is_null(), "{r}");
        assert_eq!(r["identical"], true, "{r}");
    }
}
