//! Round-trip of the whole ONNX backend test corpus shipped in the `onnx` wheel (149 models,
//! single operators to full CNNs), checked in onnxruntime and with `onnx.checker`.

use crate::common::*;
use serde_json::json;

/// Converts every corpus model with `extra` flags and checks each pair in Python. Returns how
/// many outputs were byte-identical to their input.
fn round_trip(extra: &[&str], tag: &str) -> (usize, usize) {
    let dir = tmpdir();
    let corpus = onnx_corpus();
    assert!(
        corpus.len() >= 140,
        "the onnx wheel ships ~149 backend test models, found {}",
        corpus.len()
    );
    let mut pairs = Vec::new();
    let mut identical = 0;
    let mut unverified = Vec::new();
    for (i, (model, data)) in corpus.iter().enumerate() {
        let sub = dir.path().join(format!("{tag}{i}"));
        std::fs::create_dir(&sub).unwrap();
        let out = sub.join("model.onnx");
        let report = convert_json(model, &out, extra);
        if report["verification"]["checked"] != true {
            unverified.push(model.clone());
        }
        if std::fs::read(&out).unwrap() == std::fs::read(model).unwrap() {
            identical += 1;
        }
        pairs.push(json!({"model": model, "output": out, "data": data}));
    }
    let results = interop(
        &["onnx-pairs"],
        Some(&serde_json::to_string(&pairs).unwrap()),
    );
    let mut ort_checked = 0;
    let mut failures = Vec::new();
    for r in results.as_array().unwrap() {
        let name = r["model"].as_str().unwrap();
        if r["checker_input"].is_null() && !r["checker_output"].is_null() {
            failures.push(format!(
                "{name}: onnx.checker accepts the input but not the output: {}",
                r["checker_output"]
            ));
        }
        if let Some(e) = r.get("ort_output_error") {
            failures.push(format!("{name}: onnxruntime fails on the output only: {e}"));
        }
        if r.get("ort_input_error").is_none() && r.get("ort_output_error").is_none() {
            ort_checked += 1;
            if r["identical"] != true {
                failures.push(format!(
                    "{name}: outputs differ in onnxruntime (max abs diff {})",
                    r["max_abs_diff"]
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!(
        "[{tag}] {} models: {identical} byte-identical, {ort_checked} compared in onnxruntime, {} not verifiable by tract",
        corpus.len(),
        unverified.len()
    );
    // onnxruntime cannot run some old-opset corpus models at all; they must at least come back
    // byte-identical when no option changes their layout.
    assert!(
        ort_checked >= 100,
        "only {ort_checked} models could be compared in onnxruntime"
    );
    (identical, corpus.len())
}

#[test]
fn every_corpus_model_round_trips_byte_identical() {
    let (identical, total) = round_trip(&[], "plain");
    assert_eq!(
        identical, total,
        "convert without options must reproduce every corpus file exactly"
    );
}

#[test]
fn every_corpus_model_round_trips_through_external_data() {
    round_trip(&["--external-data"], "ext");
}
