//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod litert;
pub mod mutate;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures() -> PathBuf {
    root().join("fixtures")
}

/// `pare` as users run it: the built binary in a child process.
pub fn pare() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pare"))
}

pub fn run(args: &[&str]) -> Output {
    pare().args(args).output().expect("spawning pare")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            stdout(o),
            stderr(o)
        )
    })
}

/// The Python interpreter of the interop environment (onnx, onnxruntime, LiteRT), created on
/// first use by scripts/pyenv.sh. Creating it must work: a test that needs it fails loudly
/// rather than skipping.
pub fn python() -> &'static Path {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| setup_script("scripts/pyenv.sh", "create the Python test environment"))
}

/// Runs a setup script that prints a path on stdout (environments, generated corpora) and
/// returns that path. A failing setup fails the test loudly; nothing is skipped.
pub fn setup_script(script: &str, what: &str) -> PathBuf {
    let out = Command::new("bash")
        .arg(root().join(script))
        .output()
        .unwrap_or_else(|e| panic!("running {script}: {e}"));
    assert!(
        out.status.success(),
        "could not {what} ({script}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Runs tests/py/interop.py with `args`, feeding `stdin`, and parses its JSON answer.
pub fn interop(args: &[&str], stdin: Option<&str>) -> serde_json::Value {
    use std::io::Write;
    let mut child = Command::new(python())
        .arg(root().join("tests/py/interop.py"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawning python");
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "interop.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("interop.py output is not JSON: {e}"))
}

/// Every model of the ONNX backend test corpus shipped in the onnx wheel, with its
/// test_data_set_0 folder when there is one.
pub fn onnx_corpus() -> Vec<(PathBuf, Option<PathBuf>)> {
    let list = interop(&["onnx-corpus-list"], None);
    list.as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                PathBuf::from(x["model"].as_str().unwrap()),
                x["data"].as_str().map(PathBuf::from),
            )
        })
        .collect()
}

pub fn corpus_model(rel: &str) -> PathBuf {
    let (m, _) = onnx_corpus()
        .into_iter()
        .find(|(m, _)| m.to_string_lossy().contains(rel))
        .unwrap_or_else(|| panic!("corpus model {rel} not found"));
    m
}

/// Fixture model files listed in fixtures/manifest.json.
pub fn fixture_models() -> Vec<serde_json::Value> {
    let text =
        std::fs::read_to_string(fixtures().join("manifest.json")).expect("fixtures/manifest.json");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["models"].as_array().expect("manifest.models").clone()
}

pub fn tmpdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Reads a little-endian, C-ordered `.npy` file of float32 (the fixtures' data files).
pub fn read_npy_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{}: not .npy", path.display());
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).unwrap();
    assert!(
        header.contains("'<f4'") && header.contains("'fortran_order': False"),
        "{header}"
    );
    let shape_txt = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape: Vec<usize> = shape_txt
        .split(',')
        .filter_map(|d| d.trim().parse().ok())
        .collect();
    let data = bytes[start + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (shape, data)
}

/// Runs `pare COMMAND INPUT -o OUT --json EXTRA…`, asserts it succeeded, returns the report.
pub fn write_json(command: &str, input: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        command,
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    let o = run(&args);
    assert_eq!(
        o.status.code(),
        Some(0),
        "pare {}: {}",
        args.join(" "),
        stderr(&o)
    );
    json(&o)
}

/// `pare inspect MODEL --json`, asserted to succeed.
pub fn inspect_json(model: &Path) -> serde_json::Value {
    let o = run(&["inspect", model.to_str().unwrap(), "--json"]);
    assert!(
        o.status.success(),
        "inspect {}: {}",
        model.display(),
        stderr(&o)
    );
    json(&o)
}

/// Runs `pare convert INPUT -o OUT --json EXTRA…`, asserts it succeeded, returns the report.
pub fn convert_json(input: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    write_json("convert", input, out, extra)
}

/// Writes a `.npy` file of `data` with `shape` (C order), streaming the elements.
pub fn write_npy<T: npyz::AutoSerialize>(
    path: &Path,
    shape: &[usize],
    data: impl IntoIterator<Item = T>,
) {
    use npyz::WriterBuilder;
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&shape)
        .writer(file)
        .begin_nd()
        .unwrap();
    w.extend(data).unwrap();
    w.finish().unwrap();
}

/// Runs pare with `args` plus `--json`; returns the exit code and the parsed report (`Null`
/// when stdout is empty, as after a usage error).
pub fn run_json(args: &[&str]) -> (i32, serde_json::Value, String) {
    let mut a = args.to_vec();
    a.push("--json");
    let o = run(&a);
    let v = if o.stdout.is_empty() {
        serde_json::Value::Null
    } else {
        json(&o)
    };
    (o.status.code().unwrap_or(-1), v, stderr(&o))
}

/// The accuracy of `model` in the answer of `interop accuracy`; fails the test if the model did
/// not pass the checker or did not run.
pub fn accuracy_in(results: &[serde_json::Value], model: &Path) -> f64 {
    let r = results
        .iter()
        .find(|r| Path::new(r["model"].as_str().unwrap()) == model)
        .unwrap_or_else(|| panic!("{}: not in the interop answer", model.display()));
    assert!(
        r.get("error").is_none() && r.get("checker_error").is_none(),
        "{}: does not run in {}: {r}",
        model.display(),
        r["runtime"]
    );
    r["accuracy"].as_f64().unwrap()
}
