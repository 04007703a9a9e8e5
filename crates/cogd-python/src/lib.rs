//! `cogd._native`: the Rust half of the `cogd` Python package.
//!
//! Entry points: [`main`] runs the `cogd` command line (the server never
//! holds the GIL while it serves), and [`run_worker`] runs the worker's event
//! loop inside the worker process with [`PyHandler`], which drives
//! `cogd.runner.Runner`; [`write_log`] is how the worker's `sys.stdout` and
//! `sys.stderr` reach the logs.

use std::path::PathBuf;

use pyo3::prelude::*;
use serde_json::value::RawValue;

use cogd::ipc::LogSource;
use cogd::worker::{Handler, InitInfo, LoadInfo, RunError, RunOutput, RunRequest, SetupInfo};

/// Runs the `cogd` command line; `python` is the interpreter workers use.
#[pyfunction]
fn main(py: Python<'_>, argv: Vec<String>, python: PathBuf) -> i32 {
    py.detach(|| cogd::cli::main(argv, Some(python)))
}

/// Runs the worker until the server stops it; returns the exit code.
#[pyfunction]
fn run_worker(py: Python<'_>) -> i32 {
    py.detach(|| cogd::worker::run(PyHandler::new))
}

/// Routes text written to `sys.stdout` (`source="stdout"`) or `sys.stderr`
/// to the logs of the run in `slot` (or the current run); false outside a
/// worker process.
#[pyfunction]
#[pyo3(signature = (source, data, slot=None))]
fn write_log(py: Python<'_>, source: &str, data: &str, slot: Option<usize>) -> PyResult<bool> {
    let source = match source {
        "stdout" => LogSource::Stdout,
        "stderr" => LogSource::Stderr,
        other => {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "unknown log source {other:?}"
            )))
        }
    };
    // Sending may wait on the server; other Python threads keep running.
    Ok(py.detach(|| cogd::worker::write_log(source, data, slot)))
}

/// Sends one chunk of the streaming run in `slot` (its JSON text) to the
/// server; false outside a worker or when no run is active in `slot`.
#[pyfunction]
fn write_output(py: Python<'_>, slot: usize, index: u64, output: String) -> PyResult<bool> {
    let output = RawValue::from_string(output)
        .map_err(|e| pyo3::exceptions::PyValueError::new_err(format!("not JSON: {e}")))?;
    Ok(py.detach(|| cogd::worker::write_output(slot, index, output)))
}

/// The worker's handler: a `cogd.runner.Runner` for the model.
struct PyHandler {
    runner: Py<PyAny>,
    /// `cog.CancelationException`: a run that raises it was cancelled.
    cancelation: Py<PyAny>,
}

impl PyHandler {
    fn new(info: &InitInfo) -> Result<Self, String> {
        let mode = match info.mode {
            cogd::ipc::Mode::Predict => "predict",
            cogd::ipc::Mode::Train => "train",
        };
        Python::attach(|py| {
            let module = py.import("cogd.runner")?;
            let runner = module
                .getattr("Runner")?
                .call1((info.predictor_ref.as_str(), mode))?;
            let cancelation = py.import("cogd.types")?.getattr("CancelationException")?;
            Ok(Self {
                runner: runner.unbind(),
                cancelation: cancelation.unbind(),
            })
        })
        .map_err(|e: PyErr| Python::attach(|py| describe(py, &e)))
    }
}

/// "ValueError: boom": the exception's type and message, as users read it.
fn describe(py: Python<'_>, err: &PyErr) -> String {
    let name = err
        .get_type(py)
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Exception".into());
    let message = err
        .value(py)
        .str()
        .map(|s| s.to_string())
        .unwrap_or_default();
    if message.is_empty() {
        name
    } else {
        format!("{name}: {message}")
    }
}

impl Handler for PyHandler {
    fn load(&self) -> Result<LoadInfo, String> {
        Python::attach(|py| {
            let (concurrency, is_async, streaming) = self
                .runner
                .bind(py)
                .call_method0("load")
                .and_then(|info| info.extract::<(Option<usize>, bool, bool)>())
                .map_err(|e| describe(py, &e))?;
            Ok(LoadInfo {
                concurrency,
                is_async,
                streaming,
            })
        })
    }

    fn setup(&self) -> Result<SetupInfo, String> {
        Python::attach(|py| {
            let result = self
                .runner
                .bind(py)
                .call_method0("setup")
                .and_then(|schema| schema.extract::<String>());
            let schema = match result {
                Ok(text) => serde_json::from_str(&text)
                    .map_err(|e| format!("the model's schema is not valid JSON: {e}"))?,
                Err(e) => return Err(describe(py, &e)),
            };
            let mut versions = serde_json::Map::new();
            if let Ok(version) = py
                .import("platform")
                .and_then(|m| m.getattr("python_version")?.call0())
                .and_then(|v| v.extract::<String>())
            {
                versions.insert("python".into(), version.into());
            }
            Ok(SetupInfo { schema, versions })
        })
    }

    fn run(&self, slot: usize, request: RunRequest) -> Result<RunOutput, RunError> {
        let output = Python::attach(|py| {
            self.runner
                .bind(py)
                .call_method1(
                    "run",
                    (
                        request.input_json,
                        request.context_json,
                        request.output_dir.to_string_lossy().into_owned(),
                        slot,
                    ),
                )
                .and_then(|out| out.extract::<(Option<String>, bool)>())
                .map_err(|e| {
                    if e.is_instance(py, self.cancelation.bind(py)) {
                        RunError::Canceled
                    } else {
                        RunError::Failed(describe(py, &e))
                    }
                })
        })?;
        match output {
            (Some(json), _) => RawValue::from_string(json)
                .map(RunOutput::Value)
                .map_err(|e| RunError::Failed(format!("the output is not valid JSON: {e}"))),
            (None, _) => Ok(RunOutput::Streamed),
        }
    }

    fn cancel(&self, slot: usize) {
        Python::attach(|py| {
            if let Err(e) = self.runner.bind(py).call_method1("cancel", (slot,)) {
                let message = describe(py, &e);
                drop(e);
                eprintln!("cogd worker: cancel failed: {message}");
            }
        });
    }
}

/// The extension module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(main, m)?)?;
    m.add_function(wrap_pyfunction!(run_worker, m)?)?;
    m.add_function(wrap_pyfunction!(write_log, m)?)?;
    m.add_function(wrap_pyfunction!(write_output, m)?)?;
    Ok(())
}
