//! The Python extension `pare._pare`: the CLI's entry point, and its commands as calls that
//! return the JSON report; both run off the GIL on a worker thread that Ctrl-C stops cleanly.

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use std::sync::mpsc;
use std::time::Duration;

/// How often the waiting thread looks for Ctrl-C (Python's signal handlers run only there).
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// Runs `work` on a worker thread with the GIL released. On Ctrl-C (a pending
/// `KeyboardInterrupt`), asks the work to stop ([`pare::cancel`]), waits until it has (staged
/// files are removed on the way out) and raises the interrupt.
fn stoppable<T: Send + 'static>(
    py: Python<'_>,
    work: impl FnOnce() -> T + Send + 'static,
) -> PyResult<T> {
    pare::cancel::reset();
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::Builder::new()
        .name("pare".into())
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            let _ = tx.send(r);
        })
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start a thread: {e}")))?;
    let mut rx = rx;
    loop {
        // The receiver is not Sync: it moves into the GIL-free closure and back out.
        let (got, back) = py.detach(move || (rx.recv_timeout(SIGNAL_POLL), rx));
        rx = back;
        match got {
            Ok(r) => {
                let _ = worker.join();
                return r.map_err(panic_error);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(PyRuntimeError::new_err("pare's worker thread vanished"))
            }
        }
        if let Err(interrupt) = py.check_signals() {
            pare::cancel::request();
            // The work stops at its next check; whatever it returns is dropped.
            let _ = py.detach(move || rx.recv());
            let _ = worker.join();
            pare::cancel::reset();
            return Err(interrupt);
        }
    }
}

/// A panic in the work, as the exception it becomes (pare catches tract's panics itself; this
/// is a bug in pare).
fn panic_error(p: Box<dyn std::any::Any + Send>) -> PyErr {
    let what = p
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| p.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    PyRuntimeError::new_err(format!("internal error in pare (please report it): {what}"))
}

/// Runs the `pare` command line on `argv` (program name first) and returns its exit code.
#[pyfunction]
fn main(py: Python<'_>, argv: Vec<String>) -> PyResult<i32> {
    stoppable(py, move || pare::cli::main_from(argv))
}

/// Runs one command (`args` without the program name) as `pare --json` would and returns
/// `(exit code, JSON report or None, error message or None)`; progress shows on a terminal's
/// stderr unless `quiet`.
#[pyfunction]
#[pyo3(signature = (args, quiet = false))]
fn call(
    py: Python<'_>,
    args: Vec<String>,
    quiet: bool,
) -> PyResult<(i32, Option<String>, Option<String>)> {
    let o = stoppable(py, move || pare::cli::call(args, quiet))?;
    Ok((o.code, o.json, o.error))
}

#[pymodule]
fn _pare(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(main, m)?)?;
    m.add_function(wrap_pyfunction!(call, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
