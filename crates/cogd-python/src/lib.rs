//! `cogd._native`: the Rust half of the `cogd` Python package.
//!
//! Entry points: [`main`] runs the `cogd` command line (the server never
//! holds the GIL while it serves), and [`run_worker`] runs the worker's event
//! loop inside the worker process with [`PyHandler`], which drives
//! `cogd.runner.Runner`; [`write_log`] is how the worker's `sys.stdout` and
//! `sys.stderr` reach the logs, [`write_output`] how a stream's chunks reach
//! the server, and [`record_metric`] / [`read_metric`] how `cogd.scope`
//! records and reads a run's custom metrics. What crosses from Python is
//! named data read by attribute ([`Loaded`], [`EncodedOutput`]), never a
//! positional tuple; `cogd/_native.pyi` types it for Python.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::types::PyString;

use cogd::ipc::{BatchSettings, LogSource};
use cogd::worker::{
    Handler, InitInfo, LoadInfo, OutputJson, RunError, RunOutput, RunRequest, SetupInfo,
};

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
/// to the logs of the run in `slot` (or the current run), or with `detached`
/// (code that belongs to no run: the model's `healthcheck()`) to the server's
/// log; false outside a worker process.
#[pyfunction]
#[pyo3(signature = (source, data, slot=None, detached=false))]
fn write_log(
    py: Python<'_>,
    source: &str,
    data: &str,
    slot: Option<usize>,
    detached: bool,
) -> PyResult<bool> {
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
    Ok(py.detach(|| {
        if detached {
            cogd::worker::write_detached_log(data)
        } else {
            cogd::worker::write_log(source, data, slot)
        }
    }))
}

/// Sends one chunk of the streaming run in `slot` to the server (a
/// `cogd.coercion.EncodedOutput`, see [`EncodedOutput`]). False outside a
/// worker or when no run is active in `slot`.
#[pyfunction]
fn write_output(
    py: Python<'_>,
    slot: usize,
    index: u64,
    output: EncodedOutput<'_>,
) -> PyResult<bool> {
    let (output, files) = output
        .into_parts()
        .map_err(pyo3::exceptions::PyValueError::new_err)?;
    py.detach(|| cogd::worker::write_output(slot, index, output, files))
        .map_err(|e| pyo3::exceptions::PyOSError::new_err(format!("cannot send the output: {e}")))
}

/// `cogd.coercion.EncodedOutput`, read by attribute name: an output's JSON
/// text in `pieces`, with a long string from `strings` between each two (see
/// [`output_json`]), and the files it refers to as a JSON list.
#[derive(FromPyObject)]
struct EncodedOutput<'py> {
    pieces: Vec<Bound<'py, PyString>>,
    files: String,
    strings: Vec<Bound<'py, PyString>>,
}

impl EncodedOutput<'_> {
    /// The output as the worker sends it, and its files.
    fn into_parts(self) -> Result<(OutputJson, Vec<cogd::ipc::FileOutput>), String> {
        let output = output_json(self.pieces, self.strings)?;
        Ok((output, parse_files(&self.files)?))
    }
}

/// `cogd.runner.Loaded`, read by attribute name: what loading the model says.
#[derive(FromPyObject)]
struct Loaded {
    concurrency: Option<usize>,
    is_async: bool,
    streaming: bool,
    healthcheck: bool,
    batch: Option<LoadedBatch>,
}

/// `cogd.decorators.BatchSettings`, read by attribute name: `@cog.batch`'s
/// settings.
#[derive(FromPyObject)]
struct LoadedBatch {
    max_size: usize,
    max_wait_ms: f64,
}

/// One member's result among what `Runner.run_batch` returns: its output,
/// or a `cogd.runner.MemberFailure` (read by its `error`).
#[derive(FromPyObject)]
enum MemberResult<'py> {
    Output(EncodedOutput<'py>),
    Failed {
        #[pyo3(attribute("error"))]
        error: String,
    },
}

/// An output as `cogd.coercion.output_json` makes it: JSON text in pieces,
/// with its long strings between them, borrowed from Python as they are (a
/// `str` of ASCII is read in place; others through the UTF-8 copy Python
/// keeps with the `str`) and escaped only as the output is written. Python's
/// JSON text is UTF-8 (not `\u` escapes), so a lone surrogate, which UTF-8
/// cannot carry, is written as U+FFFD: the output stays valid JSON.
fn output_json(
    pieces: Vec<Bound<'_, PyString>>,
    strings: Vec<Bound<'_, PyString>>,
) -> Result<OutputJson, String> {
    let pieces = pieces.iter().map(utf8_lossy).collect();
    let strings = strings
        .into_iter()
        .map(|s| match PyBackedStr::try_from(s.clone()) {
            Ok(borrowed) => Box::new(borrowed) as cogd::worker::LongString,
            Err(_) => Box::new(utf8_lossy(&s)) as cogd::worker::LongString,
        })
        .collect();
    OutputJson::from_pieces(pieces, strings)
}

/// A `str` as UTF-8, each lone surrogate replaced by one U+FFFD.
fn utf8_lossy(text: &Bound<'_, PyString>) -> String {
    match text.to_str() {
        Ok(utf8) => utf8.to_owned(),
        // Only a str with a lone surrogate gets here: read as UTF-16, where
        // a surrogate is one unit, so it becomes one replacement character.
        Err(_) => text
            .call_method1("encode", ("utf-16-le", "surrogatepass"))
            .and_then(|bytes| bytes.extract::<Vec<u8>>())
            .map(|bytes| {
                let units: Vec<u16> = bytes
                    .chunks_exact(2)
                    .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
                    .collect();
                String::from_utf16_lossy(&units)
            })
            .unwrap_or_else(|_| text.to_string_lossy().into_owned()),
    }
}

/// A run's result as the worker sends it: what `Runner.run` returned, or
/// `None` for a stream, whose chunks were sent as they came.
fn run_output(output: Option<EncodedOutput<'_>>) -> Result<RunOutput, RunError> {
    let Some(output) = output else {
        return Ok(RunOutput::Streamed);
    };
    let (output, files) = output.into_parts().map_err(RunError::Failed)?;
    Ok(RunOutput::Value(output, files))
}

/// The files an output refers to, as `cogd.coercion` lists them in JSON.
fn parse_files(files: &str) -> Result<Vec<cogd::ipc::FileOutput>, String> {
    serde_json::from_str(files).map_err(|e| format!("the file list is not valid: {e}"))
}

/// Records a custom metric (its value as JSON text) for the run in `slot`
/// and sends it to the server. Raises `ValueError` for a bad name or value
/// and `TypeError` for a bad mode or a type change (as Cog does); false when
/// no run is active in `slot`.
#[pyfunction]
fn record_metric(
    py: Python<'_>,
    slot: usize,
    name: &str,
    value: &str,
    mode: &str,
) -> PyResult<bool> {
    use pyo3::exceptions::{PyTypeError, PyValueError};
    let mode = cogd::custom_metrics::MetricMode::parse(mode)
        .ok_or_else(|| PyTypeError::new_err(cogd::custom_metrics::MetricMode::invalid(mode)))?;
    let value: serde_json::Value = serde_json::from_str(value)
        .map_err(|e| PyValueError::new_err(format!("the metric value is not JSON: {e}")))?;
    py.detach(|| cogd::worker::record_metric(slot, name, value, mode))
        .map_err(|e| {
            if e.is_type_error() {
                PyTypeError::new_err(e.to_string())
            } else {
                PyValueError::new_err(e.to_string())
            }
        })
}

/// The run in `slot`'s metric at `name` as JSON text, or all its metrics
/// when `name` is `None`; `None` when there is no such metric or run.
#[pyfunction]
#[pyo3(signature = (slot, name=None))]
fn read_metric(slot: usize, name: Option<&str>) -> Option<String> {
    cogd::worker::read_metric(slot, name).map(|value| value.to_string())
}

/// JSON text as the Python objects `json.loads` makes of it (dict, list,
/// str, int, float, bool, None), read by serde_json: each string is copied
/// once, straight from the text into its `str`, where `json.loads` scans it
/// character by character (a few milliseconds for an 8 MiB input instead of
/// about fifteen). Numbers are as serde_json reads them: the server wrote the
/// text with serde_json, so no integer in it is beyond 64 bits.
fn py_json<'py>(py: Python<'py>, text: &str) -> Result<Bound<'py, PyAny>, serde_json::Error> {
    use serde::de::DeserializeSeed;
    let mut reader = serde_json::Deserializer::from_str(text);
    let value = PyJson(py).deserialize(&mut reader)?;
    reader.end()?;
    Ok(value)
}

/// Reads one JSON value as a Python object (see [`py_json`]).
#[derive(Clone, Copy)]
struct PyJson<'py>(Python<'py>);

impl<'de, 'py> serde::de::DeserializeSeed<'de> for PyJson<'py> {
    type Value = Bound<'py, PyAny>;

    fn deserialize<D: serde::Deserializer<'de>>(self, reader: D) -> Result<Self::Value, D::Error> {
        reader.deserialize_any(self)
    }
}

impl<'de, 'py> serde::de::Visitor<'de> for PyJson<'py> {
    type Value = Bound<'py, PyAny>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(pyo3::types::PyBool::new(self.0, v).to_owned().into_any())
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into_pyobject(self.0).map_err(E::custom)?.into_any())
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into_pyobject(self.0).map_err(E::custom)?.into_any())
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(pyo3::types::PyFloat::new(self.0, v).into_any())
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(pyo3::types::PyString::new(self.0, v).into_any())
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(self.0.None().into_bound(self.0))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error;
        let list = pyo3::types::PyList::empty(self.0);
        while let Some(item) = seq.next_element_seed(self)? {
            list.append(item).map_err(A::Error::custom)?;
        }
        Ok(list.into_any())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error;
        let dict = pyo3::types::PyDict::new(self.0);
        while let Some(key) = map.next_key_seed(self)? {
            let value = map.next_value_seed(self)?;
            dict.set_item(key, value).map_err(A::Error::custom)?;
        }
        Ok(dict.into_any())
    }
}

/// The worker's handler: a `cogd.runner.Runner` for the model.
struct PyHandler {
    runner: Py<PyAny>,
    /// `cog.CancelationException`: a run that raises it was canceled.
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
            let runner = module.getattr("Runner")?.call1((
                info.predictor_ref.as_str(),
                mode,
                info.other_ref.as_deref(),
            ))?;
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
            let loaded: Loaded = self
                .runner
                .bind(py)
                .call_method0("load")
                .and_then(|info| info.extract())
                .map_err(|e| describe(py, &e))?;
            Ok(LoadInfo {
                concurrency: loaded.concurrency,
                is_async: loaded.is_async,
                streaming: loaded.streaming,
                healthcheck: loaded.healthcheck,
                batch: loaded.batch.map(|batch| BatchSettings {
                    max_size: batch.max_size,
                    max_wait_ms: batch.max_wait_ms,
                }),
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
        Python::attach(|py| {
            let inputs = py_json(py, &request.input_json)
                .map_err(|e| RunError::Failed(format!("the input is not valid JSON: {e}")))?;
            drop(request.input_json);
            self.runner
                .bind(py)
                .call_method1(
                    "run",
                    (
                        inputs,
                        request.context_json,
                        request.output_dir.to_string_lossy().into_owned(),
                        slot,
                        request.id,
                    ),
                )
                .and_then(|out| out.extract::<Option<EncodedOutput<'_>>>())
                .map_err(|e| {
                    if e.is_instance(py, self.cancelation.bind(py)) {
                        RunError::Canceled
                    } else {
                        RunError::Failed(describe(py, &e))
                    }
                })
                .and_then(run_output)
        })
    }

    fn run_batch(
        &self,
        slot: usize,
        requests: Vec<RunRequest>,
    ) -> Result<Vec<Result<RunOutput, RunError>>, RunError> {
        Python::attach(|py| {
            let mut members = Vec::with_capacity(requests.len());
            for request in requests {
                let inputs = py_json(py, &request.input_json)
                    .map_err(|e| RunError::Failed(format!("the input is not valid JSON: {e}")))?;
                members.push((
                    inputs,
                    request.context_json,
                    request.output_dir.to_string_lossy().into_owned(),
                    request.id,
                ));
            }
            let results = self
                .runner
                .bind(py)
                .call_method1("run_batch", (members, slot))
                .and_then(|out| out.extract::<Vec<MemberResult<'_>>>())
                .map_err(|e| {
                    if e.is_instance(py, self.cancelation.bind(py)) {
                        RunError::Canceled
                    } else {
                        RunError::Failed(describe(py, &e))
                    }
                })?;
            Ok(results
                .into_iter()
                .map(|result| match result {
                    MemberResult::Output(output) => run_output(Some(output)),
                    MemberResult::Failed { error } => Err(RunError::Failed(error)),
                })
                .collect())
        })
    }

    fn cancel(&self, slot: usize, id: &str) {
        Python::attach(|py| {
            if let Err(e) = self.runner.bind(py).call_method1("cancel", (slot, id)) {
                let message = describe(py, &e);
                drop(e);
                eprintln!("cogd worker: cancel failed: {message}");
            }
        });
    }

    fn healthcheck(&self) -> Result<(), String> {
        Python::attach(|py| {
            // `Runner.healthcheck` turns every way of failing into a message.
            let error = self
                .runner
                .bind(py)
                .call_method0("healthcheck")
                .and_then(|error| error.extract::<Option<String>>())
                .map_err(|e| format!("the healthcheck could not run: {}", describe(py, &e)))?;
            error.map_or(Ok(()), Err)
        })
    }
}

/// The extension module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(main, m)?)?;
    m.add_function(wrap_pyfunction!(run_worker, m)?)?;
    m.add_function(wrap_pyfunction!(write_log, m)?)?;
    m.add_function(wrap_pyfunction!(write_output, m)?)?;
    m.add_function(wrap_pyfunction!(record_metric, m)?)?;
    m.add_function(wrap_pyfunction!(read_metric, m)?)?;
    m.add("__version__", cogd::VERSION)?;
    Ok(())
}
