//! The worker's side of the protocol: the event loop that runs in the child
//! process, generic over a [`Handler`] that knows how to set up and run a model.
//!
//! `cogd._native.run_worker` calls [`run`] with the Python handler; nothing here
//! knows Python. The loop owns the control channel (the process's original
//! stdin/stdout, moved aside by [`capture`]), one thread per slot socket, and
//! the capture thread that turns everything written to fd 1 and 2 into logs.

mod capture;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::value::RawValue;

use crate::ipc::{
    encode_line, ControlRequest, ControlResponse, FrameReader, LogSource, Mode, SlotRequest,
    SlotResponse, PROTOCOL_VERSION,
};
use capture::LogRouter;

/// What the handler learns from `init`.
#[derive(Debug, Clone)]
pub struct InitInfo {
    /// `FILE.py:NAME`, relative to the working directory.
    pub predictor_ref: String,
    /// Predict or train.
    pub mode: Mode,
    /// The number of slots.
    pub slots: usize,
}

/// What a successful setup reports.
#[derive(Debug, Clone, Default)]
pub struct SetupInfo {
    /// The model's OpenAPI document, or `null`.
    pub schema: serde_json::Value,
    /// Runtime versions for `/health-check`.
    pub versions: serde_json::Map<String, serde_json::Value>,
}

/// One prediction handed to [`Handler::run`].
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The prediction id.
    pub id: String,
    /// The input object as JSON text.
    pub input_json: String,
    /// The request context as JSON text.
    pub context_json: String,
    /// A directory owned by this prediction.
    pub output_dir: PathBuf,
}

/// Sets up and runs a model. Called from several threads: `run` from each
/// slot's thread, `cancel` from the control thread.
pub trait Handler: Send + Sync + 'static {
    /// Loads the model and runs its setup. The error is the failure's summary;
    /// details (a traceback) are expected to have been written to stderr.
    fn setup(&self) -> Result<SetupInfo, String>;

    /// Runs one prediction in `slot`, returning its output as JSON.
    fn run(&self, slot: usize, request: RunRequest) -> Result<Box<RawValue>, String>;
}

/// The worker's output router, for [`write_log`].
static ROUTER: std::sync::OnceLock<LogRouter> = std::sync::OnceLock::new();

/// Routes text the model wrote at the language level (Python's `sys.stdout`
/// and `sys.stderr`) to the current run's logs, in order with what was
/// written to the file descriptors. False when called outside a worker.
pub fn write_log(source: LogSource, data: &str) -> bool {
    match ROUTER.get() {
        Some(router) => {
            router.write_direct(source, data);
            true
        }
        None => false,
    }
}

/// Serialises frames onto one channel from several threads.
#[derive(Clone)]
pub(crate) struct Sender {
    inner: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl Sender {
    fn new(inner: impl Write + Send + 'static) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Box::new(inner))),
        }
    }

    /// Writes one message; an error means the peer is gone.
    pub(crate) fn send<T: serde::Serialize>(&self, message: &T) -> std::io::Result<()> {
        let line = encode_line(message).map_err(std::io::Error::other)?;
        self.send_frame(&line)
    }

    /// Writes one already-encoded frame.
    pub(crate) fn send_frame(&self, frame: &[u8]) -> std::io::Result<()> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.write_all(frame)?;
        inner.flush()
    }
}

/// Runs the worker until the server says `shutdown` or goes away; returns the
/// process exit code. `make_handler` is called once `init` has arrived, after
/// output capture is in place, so no model code runs before that.
pub fn run<H, F>(make_handler: F) -> i32
where
    H: Handler,
    F: FnOnce(&InitInfo) -> Result<H, String>,
{
    // Without the server there is nothing to do: die with it.
    // SAFETY: prctl with PR_SET_PDEATHSIG only sets a flag on this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };

    let stdio = match capture::take_stdio() {
        Ok(stdio) => stdio,
        Err(e) => {
            eprintln!("cogd worker: cannot set up output capture: {e}");
            return 1;
        }
    };
    let control = Sender::new(stdio.control_out);
    install_panic_hook(control.clone());
    let router = LogRouter::start(control.clone(), stdio.stdout, stdio.stderr);
    let _ = ROUTER.set(router.clone());
    let mut requests = FrameReader::new(stdio.control_in);

    let (predictor_ref, mode, slot_sockets) = match requests.next_message::<ControlRequest>() {
        Ok(Some(ControlRequest::Init {
            protocol_version,
            predictor_ref,
            mode,
            slot_sockets,
        })) => {
            if protocol_version != PROTOCOL_VERSION {
                return fatal(
                    &control,
                    format!(
                        "protocol version mismatch: server speaks {protocol_version}, \
                         worker speaks {PROTOCOL_VERSION}; reinstall cogd"
                    ),
                );
            }
            (predictor_ref, mode, slot_sockets)
        }
        Ok(Some(other)) => return fatal(&control, format!("expected init, got {other:?}")),
        Ok(None) => return 0,
        Err(e) => return fatal(&control, format!("cannot read init: {e}")),
    };
    let info = InitInfo {
        predictor_ref,
        mode,
        slots: slot_sockets.len(),
    };

    let mut slots = Vec::with_capacity(slot_sockets.len());
    for path in &slot_sockets {
        match connect_slot(path) {
            Ok(slot) => slots.push(slot),
            Err(e) => {
                return fatal(
                    &control,
                    format!("cannot connect slot socket {path:?}: {e}"),
                )
            }
        }
    }

    let setup = make_handler(&info).and_then(|handler| handler.setup().map(|s| (handler, s)));
    // Every line setup printed must be in the setup logs before ready/fatal.
    router.sync();
    let (handler, setup) = match setup {
        Ok(ok) => ok,
        Err(reason) => return fatal(&control, reason),
    };
    router.setup_done();
    let handler = Arc::new(handler);
    for (index, (reader, writer)) in slots.into_iter().enumerate() {
        let handler = Arc::clone(&handler);
        let router = router.clone();
        let control = control.clone();
        std::thread::Builder::new()
            .name(format!("cogd-slot-{index}"))
            .spawn(move || slot_loop(index, reader, writer, &*handler, &router, &control))
            .expect("spawn slot thread");
    }
    if control
        .send(&ControlResponse::Ready {
            slots: info.slots,
            schema: setup.schema,
            versions: setup.versions,
        })
        .is_err()
    {
        return 0;
    }

    loop {
        match requests.next_message::<ControlRequest>() {
            Ok(Some(ControlRequest::Shutdown)) | Ok(None) => {
                let _ = control.send(&ControlResponse::ShuttingDown);
                return 0;
            }
            Ok(Some(ControlRequest::Healthcheck { id })) => {
                let _ = control.send(&ControlResponse::HealthcheckResult {
                    id,
                    status: "healthy".into(),
                    error: None,
                });
            }
            Ok(Some(ControlRequest::Cancel { slot })) => {
                worker_log(
                    &control,
                    "warn",
                    format!("cancel of slot {slot} is not supported"),
                );
            }
            Ok(Some(ControlRequest::Init { .. })) => {
                worker_log(&control, "warn", "ignoring a second init".into());
            }
            Err(e) => return fatal(&control, format!("control channel broken: {e}")),
        }
    }
}

/// Connects one slot socket and announces the protocol version on it.
fn connect_slot(path: &PathBuf) -> std::io::Result<(FrameReader<UnixStream>, Sender)> {
    let stream = UnixStream::connect(path)?;
    let writer = Sender::new(stream.try_clone()?);
    writer.send(&SlotResponse::ProtocolVersion {
        version: PROTOCOL_VERSION,
    })?;
    Ok((FrameReader::new(stream), writer))
}

/// One slot's thread: takes a prediction, runs it, reports, repeats.
fn slot_loop(
    slot: usize,
    mut reader: FrameReader<UnixStream>,
    writer: Sender,
    handler: &dyn Handler,
    router: &LogRouter,
    control: &Sender,
) {
    loop {
        let request = match reader.next_message::<SlotRequest>() {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(e) => {
                let _ = control.send(&ControlResponse::Failed {
                    slot,
                    error: format!("slot socket broken: {e}"),
                });
                return;
            }
        };
        let SlotRequest::Predict {
            id,
            input,
            input_file,
            output_dir,
            context,
        } = request;
        let input_json = match (input, input_file) {
            (Some(input), _) => Ok(input.to_string()),
            (None, Some(file)) => std::fs::read_to_string(&file)
                .map_err(|e| format!("cannot read input file {}: {e}", file.display())),
            (None, None) => Ok("{}".to_string()),
        };
        router.begin_run(slot, writer.clone());
        let started = Instant::now();
        let result = input_json.and_then(|input_json| {
            handler.run(
                slot,
                RunRequest {
                    id: id.clone(),
                    input_json,
                    context_json: serde_json::Value::Object(context).to_string(),
                    output_dir,
                },
            )
        });
        let predict_time = started.elapsed().as_secs_f64();
        // The run's last lines must reach its logs before its result does.
        router.sync();
        router.end_run(slot);
        let sent = match result.and_then(|output| {
            // An output too large for one frame fails the prediction, not the slot.
            encode_line(&SlotResponse::Output { output, index: 0 })
                .map_err(|e| format!("cannot send the output: {e}"))
        }) {
            Ok(frame) => writer.send_frame(&frame).and_then(|_| {
                writer.send(&SlotResponse::Done {
                    id,
                    predict_time,
                    is_stream: false,
                })
            }),
            Err(error) => writer.send(&SlotResponse::Failed { id, error }),
        };
        if let Err(e) = sent {
            let _ = control.send(&ControlResponse::Failed {
                slot,
                error: format!("slot socket broken: {e}"),
            });
            return;
        }
    }
}

/// Sends a worker diagnostic to the server's log.
pub(crate) fn worker_log(control: &Sender, level: &str, message: String) {
    let _ = control.send(&ControlResponse::WorkerLog {
        target: "cogd::worker".into(),
        level: level.into(),
        message,
    });
}

/// Reports a fatal error and returns the exit code for it.
fn fatal(control: &Sender, reason: String) -> i32 {
    let _ = control.send(&ControlResponse::Fatal { reason });
    1
}

/// A panic anywhere in the worker is reported as `fatal` before the process aborts.
fn install_panic_hook(control: Sender) {
    std::panic::set_hook(Box::new(move |info| {
        let _ = control.send(&ControlResponse::Fatal {
            reason: format!("worker panicked: {info}"),
        });
        std::process::abort();
    }));
}
