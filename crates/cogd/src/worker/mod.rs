//! The worker's side of the protocol: the event loop that runs in the child
//! process, generic over a [`Handler`] that knows how to set up and run a model.
//!
//! `cogd._native.run_worker` calls [`run`] with the Python handler; nothing here
//! knows Python. The loop owns the control channel (the process's original
//! stdin/stdout, moved aside by [`capture`]), one listening socket and thread per
//! slot (slot 0 on the main thread), the capture thread that turns
//! everything written to fd 1 and 2 into logs, the healthcheck thread that runs
//! the model's own `healthcheck()` off the control thread, and each run's copy
//! of its custom metrics ([`record_metric`]).
//!
//! A `@cog.batch` model is called once for the `predict` frames that follow
//! a `batch` frame ([`Handler::run_batch`]), and once per lone `predict` as
//! a batch of one; each member's result goes back as its own final message
//! (see the protocol in [`crate::ipc`]'s messages).

mod capture;
mod output;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use crate::custom_metrics::MetricError;
use crate::ipc::{
    encode_line, BatchSettings, Carrier, ControlRequest, ControlResponse, FileOutput, FileReceiver,
    FrameReader, HealthcheckStatus, LogSource, MetricMode, Mode, SlotRequest, SlotResponse,
    PROTOCOL_VERSION,
};
use capture::LogRouter;
pub use output::{LongString, OutputJson};

/// What the handler learns from `init`.
#[derive(Debug, Clone)]
pub struct InitInfo {
    /// `FILE.py:NAME`, relative to the working directory.
    pub predictor_ref: String,
    /// Predict or train.
    pub mode: Mode,
    /// `FILE.py:NAME` of the other mode's function, described in the schema.
    pub other_ref: Option<String>,
}

/// What loading the model says about how it may be run.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadInfo {
    /// The concurrency the model declares (`@cog.concurrent(max=N)`).
    pub concurrency: Option<usize>,
    /// Whether its run is `async def` (required for more than one slot).
    pub is_async: bool,
    /// Whether its run is marked `@streaming`.
    pub streaming: bool,
    /// Whether it defines its own `healthcheck()`.
    pub healthcheck: bool,
    /// Its `@cog.batch` settings, when its run takes batches.
    pub batch: Option<BatchSettings>,
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

/// What a successful run produced.
#[derive(Debug)]
pub enum RunOutput {
    /// One value: the run's return value, and the files it refers to.
    Value(OutputJson, Vec<FileOutput>),
    /// A stream: every chunk has been sent with [`write_output`] already.
    Streamed,
}

/// How a run can end without an output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunError {
    /// The run raised; the exception's type and message.
    Failed(String),
    /// The run stopped because it was canceled.
    Canceled,
}

/// Sets up and runs a model. `load` and `setup` are called once, on the
/// process's main thread; `run` on each slot's thread (slot 0's is the main
/// thread, where a signal can interrupt a blocking call); `cancel` from the
/// control thread while a run is in progress; `healthcheck` from the
/// healthcheck thread, at any time after setup, runs in progress or not.
pub trait Handler: Send + Sync + 'static {
    /// Imports the model and inspects it, without running its setup.
    fn load(&self) -> Result<LoadInfo, String>;

    /// Runs the model's setup. The error is the failure's summary; details (a
    /// traceback) are expected to have been written to stderr.
    fn setup(&self) -> Result<SetupInfo, String>;

    /// Runs one prediction in `slot`, returning its output as JSON.
    fn run(&self, slot: usize, request: RunRequest) -> Result<RunOutput, RunError>;

    /// Runs a batch of predictions in `slot` with one call of a
    /// `@cog.batch` model ([`LoadInfo::batch`]): one result per member, in
    /// order, or one error for them all (the call raised, returned the wrong
    /// number of outputs, or was canceled).
    fn run_batch(
        &self,
        slot: usize,
        requests: Vec<RunRequest>,
    ) -> Result<Vec<Result<RunOutput, RunError>>, RunError> {
        let _ = (slot, requests);
        Err(RunError::Failed("this worker cannot run batches".into()))
    }

    /// Asks the run of prediction `id` in `slot` to stop; it should end with
    /// [`RunError::Canceled`]. The cancel may come before the run (it
    /// travels on the control channel, the run on the slot socket): then
    /// the run is to end so as soon as it starts.
    fn cancel(&self, slot: usize, id: &str);

    /// Runs the model's own health check, if [`LoadInfo::healthcheck`] said
    /// it has one. The error says why it is unhealthy, readably.
    fn healthcheck(&self) -> Result<(), String> {
        Ok(())
    }
}

/// The worker's output router, for [`write_log`].
static ROUTER: std::sync::OnceLock<LogRouter> = std::sync::OnceLock::new();

/// Routes text the model wrote at the language level (Python's `sys.stdout`
/// and `sys.stderr`) to the current run's logs, in order with what was
/// written to the file descriptors. `slot` is the writing run's slot when
/// known. False when called outside a worker.
pub fn write_log(source: LogSource, data: &str, slot: Option<usize>) -> bool {
    match ROUTER.get() {
        Some(router) => {
            router.write_direct(source, data, slot);
            true
        }
        None => false,
    }
}

/// Routes text written by code that belongs to no run (the model's
/// `healthcheck()`) to the server's log, even while a run is active, so it
/// never lands in a prediction's logs. False when called outside a worker.
pub fn write_detached_log(data: &str) -> bool {
    match ROUTER.get() {
        Some(router) => {
            router.write_detached(data);
            true
        }
        None => false,
    }
}

/// Sends one chunk of a streaming run in `slot` to the server now, after
/// whatever output the run wrote before it, with the files it refers to. A
/// chunk too large for one frame goes in a memory file attached to its
/// message (see [`output`]). Err when it cannot be spilled; false when no
/// such run is active.
pub fn write_output(
    slot: usize,
    index: u64,
    output: OutputJson,
    files: Vec<FileOutput>,
) -> std::io::Result<bool> {
    let Some(dir) = run_dir(slot) else {
        return Ok(false);
    };
    let carrier = output::spill(output, &dir, &format!("output-{index}.json"))?;
    let (output, file) = carrier.detach();
    let message = SlotResponse::Output {
        output,
        index,
        files,
    };
    let sent = ROUTER
        .get()
        .is_some_and(|router| router.send_to_run(slot, message, file));
    if sent && index == 0 {
        crate::nudge::give_way();
    }
    Ok(sent)
}

/// Outputs larger than this (as JSON) reach the server through a file, so
/// frames stay under [`crate::ipc::MAX_FRAME_BYTES`] with room for the rest
/// of the message.
pub const SPILL_OUTPUT_BYTES: usize = 6 * 1024 * 1024;

/// Each slot's current run's directory (where large outputs are spilled).
static RUN_DIRS: Mutex<BTreeMap<usize, PathBuf>> = Mutex::new(BTreeMap::new());

fn run_dir(slot: usize) -> Option<PathBuf> {
    let dirs = RUN_DIRS.lock().unwrap_or_else(|e| e.into_inner());
    dirs.get(&slot).cloned()
}

/// The custom metrics of each slot's current run: the worker's copy, which
/// every record is checked against and applied to before it is sent. A slot
/// has an entry exactly while a run is in it.
static RUN_METRICS: Mutex<BTreeMap<usize, Arc<Mutex<Metrics>>>> = Mutex::new(BTreeMap::new());

type Metrics = serde_json::Map<String, serde_json::Value>;

fn run_metrics(slot: usize) -> Option<Arc<Mutex<Metrics>>> {
    let runs = RUN_METRICS.lock().unwrap_or_else(|e| e.into_inner());
    runs.get(&slot).cloned()
}

/// Records a custom metric for the run in `slot`: applies it to the run's
/// metrics (an error means the record breaks a rule, and nothing changed),
/// then sends it to the server, after whatever output the run wrote before.
/// `Ok(false)` when no run is active in `slot`.
pub fn record_metric(
    slot: usize,
    name: &str,
    value: serde_json::Value,
    mode: MetricMode,
) -> Result<bool, MetricError> {
    let Some(metrics) = run_metrics(slot) else {
        return Ok(false);
    };
    // Held while sending, so records reach the server in the order applied.
    let mut metrics = metrics.lock().unwrap_or_else(|e| e.into_inner());
    crate::custom_metrics::apply(&mut metrics, name, value.clone(), mode)?;
    let message = SlotResponse::Metric {
        name: name.to_string(),
        value,
        mode,
    };
    Ok(ROUTER
        .get()
        .is_some_and(|router| router.send_to_run(slot, message, None)))
}

/// The run in `slot`'s metric at `name` (dots nest), or all of its metrics
/// when `name` is `None`; `None` when there is no such metric or run.
pub fn read_metric(slot: usize, name: Option<&str>) -> Option<serde_json::Value> {
    let metrics = run_metrics(slot)?;
    let metrics = metrics.lock().unwrap_or_else(|e| e.into_inner());
    match name {
        Some(name) => crate::custom_metrics::get(&metrics, name).cloned(),
        None => Some(serde_json::Value::Object(metrics.clone())),
    }
}

/// Serialises frames onto one channel from several threads.
#[derive(Clone)]
pub(crate) struct Sender {
    inner: Arc<Mutex<Channel>>,
}

/// Where a [`Sender`] writes.
enum Channel {
    /// A slot socket: a frame can carry a file.
    Socket(UnixStream),
    /// Anything else (the control channel).
    Other(Box<dyn Write + Send>),
}

impl Sender {
    fn new(inner: impl Write + Send + 'static) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Channel::Other(Box::new(inner)))),
        }
    }

    /// A sender on a slot socket, whose frames can carry files.
    fn socket(socket: UnixStream) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Channel::Socket(socket))),
        }
    }

    /// Writes one message; an error means the peer is gone.
    pub(crate) fn send<T: serde::Serialize>(&self, message: &T) -> std::io::Result<()> {
        self.send_with(message, None)
    }

    /// Writes one message with `file` attached to it (a slot socket only).
    pub(crate) fn send_with<T: serde::Serialize>(
        &self,
        message: &T,
        file: Option<&OwnedFd>,
    ) -> std::io::Result<()> {
        let line = encode_line(message).map_err(std::io::Error::other)?;
        self.send_frame(&line, file)
    }

    /// Writes one already-encoded frame, with `file` attached to its first
    /// bytes (a slot socket only).
    pub(crate) fn send_frame(&self, frame: &[u8], file: Option<&OwnedFd>) -> std::io::Result<()> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match (&mut *inner, file) {
            (Channel::Socket(socket), None) => socket.write_all(frame),
            (Channel::Socket(socket), Some(file)) => {
                let sent = crate::ipc::send_with_file(socket.as_fd(), frame, file.as_fd())?;
                socket.write_all(&frame[sent..])
            }
            (Channel::Other(out), None) => {
                out.write_all(frame)?;
                out.flush()
            }
            (Channel::Other(_), Some(_)) => Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "only a slot socket carries files",
            )),
        }
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

    let (info, slots_override, slots_default, socket_dir) =
        match requests.next_message::<ControlRequest>() {
            Ok(Some(ControlRequest::Init {
                protocol_version,
                predictor_ref,
                mode,
                other_ref,
                slots_override,
                slots_default,
                socket_dir,
            })) => {
                if protocol_version != PROTOCOL_VERSION {
                    return fatal(
                        &control,
                        format!(
                            "protocol version mismatch: the server speaks {protocol_version}, \
                             the worker speaks {PROTOCOL_VERSION}; reinstall cogd so both \
                             come from one build"
                        ),
                    );
                }
                let info = InitInfo {
                    predictor_ref,
                    mode,
                    other_ref,
                };
                (info, slots_override, slots_default, socket_dir)
            }
            Ok(Some(other)) => return fatal(&control, format!("expected init, got {other:?}")),
            Ok(None) => return 0,
            Err(e) => return fatal(&control, format!("cannot read init: {e}")),
        };

    let prepared = make_handler(&info).and_then(|handler| {
        let load = handler.load()?;
        let slots = slot_count(&info, load, slots_override, slots_default)?;
        let setup = handler.setup()?;
        Ok((handler, slots, setup, load))
    });
    // Every line setup printed must be in the setup logs before ready/fatal.
    router.sync();
    let (handler, slots, setup, load) = match prepared {
        Ok(ok) => ok,
        Err(reason) => return fatal(&control, reason),
    };
    router.setup_done();

    let mut listeners = Vec::with_capacity(slots);
    for index in 0..slots {
        let path = socket_dir.join(format!("slot-{index}.sock"));
        let _ = std::fs::remove_file(&path);
        match UnixListener::bind(&path) {
            Ok(listener) => listeners.push(listener),
            Err(e) => {
                return fatal(
                    &control,
                    format!("cannot create slot socket {}: {e}", path.display()),
                )
            }
        }
    }
    if control
        .send(&ControlResponse::Ready {
            slots,
            schema: setup.schema,
            versions: setup.versions,
            streaming: load.streaming,
            healthcheck: load.healthcheck,
            batch: load.batch,
        })
        .is_err()
    {
        return 0;
    }

    let handler = Arc::new(handler);
    let sockets = Arc::new(Mutex::new(Vec::new()));
    {
        let healthchecks = load.healthcheck.then(|| {
            Healthchecks::start(Arc::clone(&handler) as Arc<dyn Handler>, control.clone())
        });
        let handler = Arc::clone(&handler);
        let control = control.clone();
        let sockets = Arc::clone(&sockets);
        std::thread::Builder::new()
            .name("cogd-control".into())
            .spawn(move || {
                control_loop(
                    requests,
                    &*handler,
                    healthchecks.as_ref(),
                    &control,
                    &sockets,
                )
            })
            .expect("spawn control thread");
    }
    let mut listeners = listeners.into_iter().enumerate();
    let (_, main_listener) = listeners.next().expect("at least one slot");
    for (index, listener) in listeners {
        let slot = SlotContext {
            index,
            handler: Arc::clone(&handler) as Arc<dyn Handler>,
            router: router.clone(),
            control: control.clone(),
            sockets: Arc::clone(&sockets),
            batched: load.batch.is_some(),
        };
        std::thread::Builder::new()
            .name(format!("cogd-slot-{index}"))
            .spawn(move || slot.serve(&listener))
            .expect("spawn slot thread");
    }
    // Slot 0 runs on the main thread: a sync run there can be interrupted by a
    // signal even inside a blocking call.
    SlotContext {
        index: 0,
        handler,
        router,
        control,
        sockets,
        batched: load.batch.is_some(),
    }
    .serve(&main_listener);
    0
}

/// `COG_MAX_CONCURRENCY`, else the model's own, else `cog.yaml`'s, else 1;
/// more than one needs an async run.
fn slot_count(
    info: &InitInfo,
    load: LoadInfo,
    slots_override: Option<usize>,
    slots_default: Option<usize>,
) -> Result<usize, String> {
    let (slots, source) = match (slots_override, load.concurrency, slots_default) {
        (Some(n), _, _) => (n, "COG_MAX_CONCURRENCY"),
        (None, Some(n), _) => (n, "@cog.concurrent(max=...)"),
        (None, None, Some(n)) => (n, "cog.yaml concurrency.max"),
        (None, None, None) => (1, "the default"),
    };
    if slots == 0 {
        return Err(format!("{source} must be at least 1"));
    }
    if slots > 1 && !load.is_async {
        return Err(format!(
            "{source} asks for {slots} concurrent predictions, but the run method of {} is \
             synchronous: make it `async def`, or set the concurrency to 1",
            info.predictor_ref
        ));
    }
    Ok(slots)
}

/// Runs the model's `healthcheck()` on a thread of its own, so a slow or
/// stuck check never holds up the control thread (and with it cancels), and
/// one at a time: a check asked for while one is still running is answered
/// at once with that fact, so stuck checks never pile up.
struct Healthchecks {
    /// Hands a check's id to the healthcheck thread.
    requests: mpsc::Sender<u64>,
    /// When the running check started; `None` while none runs.
    running: Arc<Mutex<Option<Instant>>>,
    control: Sender,
}

impl Healthchecks {
    fn start(handler: Arc<dyn Handler>, control: Sender) -> Self {
        let (requests, ids) = mpsc::channel::<u64>();
        let running = Arc::new(Mutex::new(None));
        {
            let running = Arc::clone(&running);
            let control = control.clone();
            std::thread::Builder::new()
                .name("cogd-healthcheck".into())
                .spawn(move || {
                    for id in ids {
                        let result = handler.healthcheck();
                        // Idle again before the answer, so the next check may start at once.
                        *running.lock().unwrap_or_else(|e| e.into_inner()) = None;
                        let _ = control.send(&healthcheck_result(id, result));
                    }
                })
                .expect("spawn healthcheck thread");
        }
        Self {
            requests,
            running,
            control,
        }
    }

    /// Starts check `id`, or answers it at once if the last one still runs.
    fn check(&self, id: u64) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(started) = *running {
            drop(running);
            let error = format!(
                "user-defined healthcheck has not returned from an earlier check, started {:.1} s ago",
                started.elapsed().as_secs_f64()
            );
            let _ = self.control.send(&healthcheck_result(id, Err(error)));
            return;
        }
        *running = Some(Instant::now());
        drop(running);
        let _ = self.requests.send(id);
    }
}

fn healthcheck_result(id: u64, result: Result<(), String>) -> ControlResponse {
    let (status, error) = match result {
        Ok(()) => (HealthcheckStatus::Healthy, None),
        Err(error) => (HealthcheckStatus::Unhealthy, Some(error)),
    };
    ControlResponse::HealthcheckResult { id, status, error }
}

/// The control thread: cancels, health checks, shutdown.
fn control_loop(
    mut requests: FrameReader<std::fs::File>,
    handler: &dyn Handler,
    healthchecks: Option<&Healthchecks>,
    control: &Sender,
    sockets: &Mutex<Vec<UnixStream>>,
) {
    loop {
        match requests.next_message::<ControlRequest>() {
            Ok(Some(ControlRequest::Cancel { slot, id })) => handler.cancel(slot, &id),
            Ok(Some(ControlRequest::Healthcheck { id })) => match healthchecks {
                Some(healthchecks) => healthchecks.check(id),
                // The model defines none: nothing can be wrong with it.
                None => {
                    let _ = control.send(&healthcheck_result(id, Ok(())));
                }
            },
            Ok(Some(ControlRequest::Init { .. })) => {
                worker_log(control, "warn", "ignoring a second init".into());
            }
            Ok(Some(ControlRequest::Shutdown)) | Ok(None) | Err(_) => break,
        }
    }
    let _ = control.send(&ControlResponse::ShuttingDown);
    // Closing the slot sockets ends the slot loops and so the main thread.
    for socket in sockets.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let _ = socket.shutdown(std::net::Shutdown::Both);
    }
    // A slot the server never connected would keep the main thread waiting.
    std::thread::sleep(std::time::Duration::from_secs(2));
    std::process::exit(0);
}

/// What one slot's loop needs.
struct SlotContext {
    index: usize,
    handler: Arc<dyn Handler>,
    router: LogRouter,
    control: Sender,
    /// Every connected slot socket, so shutdown can close them all.
    sockets: Arc<Mutex<Vec<UnixStream>>>,
    /// Whether the model takes batches (`@cog.batch`).
    batched: bool,
}

impl SlotContext {
    /// Accepts the server's connection on the slot's socket and serves it.
    fn serve(self, listener: &UnixListener) {
        let connected = listener.accept().and_then(|(stream, _)| {
            self.sockets
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(stream.try_clone()?);
            let writer = Sender::socket(stream.try_clone()?);
            writer.send(&SlotResponse::ProtocolVersion {
                version: PROTOCOL_VERSION,
            })?;
            Ok((FrameReader::new(FileReceiver::new(stream)), writer))
        });
        match connected {
            Ok((reader, writer)) => slot_loop(
                self.index,
                reader,
                writer,
                &*self.handler,
                &self.router,
                &self.control,
                self.batched,
            ),
            Err(e) => {
                let _ = self.control.send(&ControlResponse::Failed {
                    slot: self.index,
                    error: format!("cannot accept the slot connection: {e}"),
                });
            }
        }
    }
}

/// One prediction as its `predict` frame said it, its input read.
struct Member {
    id: String,
    /// The input's JSON text, or why it could not be read.
    input: Result<String, RunError>,
    context: serde_json::Map<String, serde_json::Value>,
    output_dir: PathBuf,
}

impl Member {
    /// The handler's request (or why there is none), and what sending the
    /// result needs: the id and the prediction's directory.
    fn into_request(self) -> (String, PathBuf, Result<RunRequest, RunError>) {
        let request = self.input.map(|input_json| RunRequest {
            id: self.id.clone(),
            input_json,
            context_json: serde_json::Value::Object(self.context).to_string(),
            output_dir: self.output_dir.clone(),
        });
        (self.id, self.output_dir, request)
    }
}

/// What the slot's loop reads next.
enum Work {
    /// One prediction, run on its own.
    Single(Member),
    /// The members of one batch, in order.
    Batch(Vec<Member>),
}

/// One slot's thread: takes a prediction (or a batch), runs it, reports, repeats.
fn slot_loop(
    slot: usize,
    mut reader: FrameReader<FileReceiver<UnixStream>>,
    writer: Sender,
    handler: &dyn Handler,
    router: &LogRouter,
    control: &Sender,
    batched: bool,
) {
    loop {
        let work = match read_work(&mut reader) {
            Ok(Some(work)) => work,
            Ok(None) => return,
            Err(e) => {
                let _ = control.send(&ControlResponse::Failed {
                    slot,
                    error: format!("slot socket broken: {e}"),
                });
                return;
            }
        };
        let sent = match work {
            // A batched model takes lists even for one prediction.
            Work::Single(member) if batched => {
                run_batch(slot, vec![member], &writer, handler, router)
            }
            Work::Single(member) => run_single(slot, member, &writer, handler, router),
            Work::Batch(members) => run_batch(slot, members, &writer, handler, router),
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

/// Reads the next prediction, or a `batch` frame and its members.
fn read_work(reader: &mut FrameReader<FileReceiver<UnixStream>>) -> Result<Option<Work>, String> {
    let first = match reader.next_message::<SlotRequest>() {
        Ok(Some(request)) => request,
        Ok(None) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let size = match first {
        SlotRequest::Predict { .. } => return Ok(Some(Work::Single(read_member(reader, first)?))),
        SlotRequest::Batch { size } => size,
    };
    let mut members = Vec::with_capacity(size);
    for _ in 0..size {
        match reader.next_message::<SlotRequest>() {
            Ok(Some(request @ SlotRequest::Predict { .. })) => {
                members.push(read_member(reader, request)?)
            }
            Ok(Some(SlotRequest::Batch { .. })) => {
                return Err("a batch frame came inside a batch".into())
            }
            Ok(None) => return Err("the socket closed inside a batch".into()),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(Some(Work::Batch(members)))
}

/// A `predict` frame's member, its input read from wherever it travelled.
fn read_member(
    reader: &mut FrameReader<FileReceiver<UnixStream>>,
    request: SlotRequest,
) -> Result<Member, String> {
    let SlotRequest::Predict {
        id,
        input,
        output_dir,
        context,
    } = request
    else {
        return Err("expected a predict frame".into());
    };
    // The frame's file is taken when it says one is attached (and only
    // then), so the next frame's file is never mistaken for this one's.
    let input = input.map(|carrier| carrier.attach(|| reader.get_mut().take_file()));
    let input = match input {
        None => Ok("{}".to_string()),
        Some(Some(Carrier::Inline(input))) => Ok(String::from(Box::<str>::from(input))),
        Some(Some(Carrier::Attached(file))) => {
            // From its start: the server's writes left its offset at the end.
            let mut file = std::fs::File::from(file);
            std::io::Seek::rewind(&mut file)
                .and_then(|()| std::io::read_to_string(file))
                .map_err(|e| RunError::Failed(format!("cannot read the attached input: {e}")))
        }
        Some(Some(Carrier::File(file))) => std::fs::read_to_string(&file).map_err(|e| {
            RunError::Failed(format!("cannot read input file {}: {e}", file.display()))
        }),
        Some(None) => Err(RunError::Failed(
            "the input was to come attached to its message, and no file came".into(),
        )),
    };
    Ok(Member {
        id,
        input,
        context,
        output_dir,
    })
}

/// Sets up what a run in `slot` records into (its logs' destination, its
/// metrics, and `dir` for a stream's spilled chunks), until [`end_run`].
fn begin_run(slot: usize, writer: &Sender, router: &LogRouter, dir: Option<PathBuf>) {
    router.begin_run(slot, writer.clone());
    RUN_METRICS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(slot, Arc::default());
    if let Some(dir) = dir {
        RUN_DIRS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(slot, dir);
    }
}

/// Ends what [`begin_run`] set up, once every line the run wrote has been
/// sent: its last lines must reach its logs before its result does.
fn end_run(slot: usize, router: &LogRouter) {
    RUN_METRICS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&slot);
    RUN_DIRS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&slot);
    router.sync();
    router.end_run(slot);
}

/// Runs one prediction and sends its result.
fn run_single(
    slot: usize,
    member: Member,
    writer: &Sender,
    handler: &dyn Handler,
    router: &LogRouter,
) -> std::io::Result<()> {
    let (id, output_dir, request) = member.into_request();
    begin_run(slot, writer, router, Some(output_dir.clone()));
    let started = Instant::now();
    let result = request.and_then(|request| handler.run(slot, request));
    let predict_time = started.elapsed().as_secs_f64();
    end_run(slot, router);
    send_result(writer, id, predict_time, &output_dir, result)
}

/// Runs a batch with one call of the model and sends each member's result,
/// in order. A member whose input could not be read fails alone; an error of
/// the whole call is every member's.
fn run_batch(
    slot: usize,
    members: Vec<Member>,
    writer: &Sender,
    handler: &dyn Handler,
    router: &LogRouter,
) -> std::io::Result<()> {
    let mut ids = Vec::with_capacity(members.len());
    let mut dirs = Vec::with_capacity(members.len());
    let mut results: Vec<Option<Result<RunOutput, RunError>>> = Vec::new();
    let mut requests = Vec::new();
    for member in members {
        let (id, dir, request) = member.into_request();
        ids.push(id);
        dirs.push(dir);
        match request {
            Ok(request) => {
                requests.push(request);
                results.push(None);
            }
            Err(e) => results.push(Some(Err(e))),
        }
    }
    begin_run(slot, writer, router, None);
    let started = Instant::now();
    let outcome = if requests.is_empty() {
        Ok(Vec::new())
    } else {
        let count = requests.len();
        handler.run_batch(slot, requests).and_then(|outputs| {
            if outputs.len() == count {
                Ok(outputs)
            } else {
                Err(RunError::Failed(format!(
                    "the worker's handler gave {} results for a batch of {count}",
                    outputs.len()
                )))
            }
        })
    };
    let predict_time = started.elapsed().as_secs_f64();
    end_run(slot, router);
    let mut outputs = match outcome {
        Ok(outputs) => outputs.into_iter(),
        Err(error) => {
            for result in results.iter_mut().filter(|r| r.is_none()) {
                *result = Some(Err(error.clone()));
            }
            Vec::new().into_iter()
        }
    };
    for ((id, dir), result) in ids.into_iter().zip(dirs).zip(results) {
        let result = match result {
            Some(result) => result,
            None => outputs.next().expect("one output per member that ran"),
        };
        send_result(writer, id, predict_time, &dir, result)?;
    }
    Ok(())
}

/// Sends the final message of prediction `id`: `done` with its output
/// (spilled into `dir` when too large for a frame), `failed` or `cancelled`.
/// Err when the socket is broken.
fn send_result(
    writer: &Sender,
    id: String,
    predict_time: f64,
    dir: &std::path::Path,
    result: Result<RunOutput, RunError>,
) -> std::io::Result<()> {
    match result {
        Ok(RunOutput::Value(output, files)) => {
            let done = output::spill(output, dir, "output.json").map(|carrier| {
                let (output, file) = carrier.detach();
                let done = SlotResponse::Done {
                    id: id.clone(),
                    predict_time,
                    is_stream: false,
                    output: Some(output),
                    files,
                };
                (done, file)
            });
            // An output that cannot be sent fails the prediction, not the slot.
            match done.map_err(|e| e.to_string()).and_then(|(done, file)| {
                let frame = encode_line(&done).map_err(|e| e.to_string())?;
                Ok((frame, file))
            }) {
                Ok((frame, file)) => writer.send_frame(&frame, file.as_ref()),
                Err(e) => writer.send(&SlotResponse::Failed {
                    id,
                    error: format!("cannot send the output: {e}"),
                }),
            }
        }
        Ok(RunOutput::Streamed) => writer.send(&SlotResponse::Done {
            id,
            predict_time,
            is_stream: true,
            output: None,
            files: Vec::new(),
        }),
        Err(RunError::Failed(error)) => writer.send(&SlotResponse::Failed {
            id,
            error: clip_message(error),
        }),
        Err(RunError::Canceled) => writer.send(&SlotResponse::Canceled { id }),
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
    let _ = control.send(&ControlResponse::Fatal {
        reason: clip_message(reason),
    });
    1
}

/// The longest error message sent as it is; even escaped, it fits a frame.
const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Cuts an error message (a model may raise with any text) to
/// [`MAX_MESSAGE_BYTES`], so that reporting it can never fail for its size
/// and take the slot down with it; the whole traceback is in the logs.
fn clip_message(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_BYTES {
        let mut end = MAX_MESSAGE_BYTES;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str(" [cut: the message was longer than 1 MiB]");
    }
    message
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_error_message_is_cut_to_fit_one_frame() {
        let error = clip_message("\0".repeat(10 * MAX_MESSAGE_BYTES));
        assert!(error.ends_with("longer than 1 MiB]"));
        let frame = encode_line(&SlotResponse::Failed {
            id: "p".into(),
            error,
        });
        assert!(frame.is_ok());
        assert_eq!(clip_message("short".into()), "short");
    }
}
