//! Outputs are all or nothing: a run that fails while writing (here: the file size limit, as a
//! full disk would) or is killed at any moment leaves the previous output exactly as it was,
//! or the complete new one, never a half-written model.

use crate::common::*;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

const OLD: &[u8] = b"the previous output, which must survive";

#[test]
fn a_write_that_fails_midway_leaves_the_old_output_and_no_staging() {
    let dir = tmpdir();
    let out = dir.path().join("m.onnx");
    std::fs::write(&out, OLD).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pare"));
    cmd.args([
        "convert",
        fixtures().join("mobilenet.onnx").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--force",
    ]);
    // Files may not grow past 20 KB (the model is 75 KB): writes fail with EFBIG, as they would
    // with ENOSPC on a full disk. SIGXFSZ is ignored so that pare sees the error.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit {
                rlim_cur: 20_000,
                rlim_max: 20_000,
            };
            libc::setrlimit(libc::RLIMIT_FSIZE, &limit);
            Ok(())
        });
    }
    let o = cmd.output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("m.onnx"),
        "the error names the file: {}",
        stderr(&o)
    );
    assert_eq!(std::fs::read(&out).unwrap(), OLD);
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("m.onnx")],
        "staging left behind"
    );
}

#[test]
fn a_killed_run_leaves_the_old_output_or_the_complete_new_one() {
    let dir = tmpdir();
    let input = fixtures().join("mobilenet.tflite");
    let reference = dir.path().join("reference.tflite");
    convert_json(&input, &reference, &[]);
    let expected = std::fs::read(&reference).unwrap();
    let out = dir.path().join("m.tflite");
    let (mut old_seen, mut new_seen) = (0, 0);
    // Kill at a spread of moments: before reading, while verifying in tract, while renaming.
    let delays = (0..60).step_by(3).chain([100, 200, 400, 800, 1600, 3200]);
    for delay_ms in delays {
        std::fs::write(&out, OLD).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_pare"))
            .args([
                "convert",
                input.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
                "--force",
                "--quiet",
            ])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms as u64));
        let _ = child.kill();
        let _ = child.wait();
        let now = std::fs::read(&out).unwrap();
        if now == OLD {
            old_seen += 1;
        } else {
            assert_eq!(
                now, expected,
                "killed after {delay_ms} ms: a partial output"
            );
            new_seen += 1;
        }
    }
    eprintln!("old output kept {old_seen} times, complete new output {new_seen} times");
    assert!(old_seen > 0, "no kill landed before the rename");
    assert!(
        new_seen > 0,
        "no run finished: the test did not cover the rename"
    );
}
