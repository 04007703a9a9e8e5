//! Output capture in the worker: fd 1 and 2 become pipes that one thread reads,
//! and every line is routed to whoever is writing right now — setup, the run in
//! a slot, or the server's log.
//!
//! Capturing at the file-descriptor level (not `sys.stdout`) is what makes C
//! extensions and child processes land in the logs too, and what keeps anything
//! the model prints off the control channel. Before a run's result is sent,
//! [`LogRouter::sync`] reads, on the run's own thread, whatever the pipes still
//! hold (it asks the kernel how much), so the run's last lines reach its logs
//! first; when the pipes are empty, as they are unless native code or a child
//! process wrote, that costs two `ioctl`s and no thread hand-off.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use super::Sender;
use crate::ipc::{ControlResponse, LogSource, SlotResponse};

/// The process's standard streams after [`take_stdio`].
pub(crate) struct Stdio {
    /// Control requests from the server (the original stdin).
    pub control_in: File,
    /// Control responses to the server (the original stdout).
    pub control_out: File,
    /// The read end of the pipe that is now fd 1.
    pub stdout: File,
    /// The read end of the pipe that is now fd 2.
    pub stderr: File,
}

/// Moves the control channel off fd 0/1 and points fd 1 and 2 at fresh pipes.
/// Must run before any model code, so nothing can write to the real stdout.
pub(crate) fn take_stdio() -> std::io::Result<Stdio> {
    let control_in = dup_cloexec(0)?;
    let control_out = dup_cloexec(1)?;
    let devnull = File::open("/dev/null")?;
    dup2(devnull.as_raw_fd(), 0)?;
    let stdout = redirect_to_pipe(1)?;
    let stderr = redirect_to_pipe(2)?;
    Ok(Stdio {
        control_in: File::from(control_in),
        control_out: File::from(control_out),
        stdout,
        stderr,
    })
}

fn cvt(ret: libc::c_int) -> std::io::Result<libc::c_int> {
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn dup_cloexec(fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor that we then own.
    let new = cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

fn dup2(from: RawFd, to: RawFd) -> std::io::Result<()> {
    // SAFETY: dup2 on descriptors this process owns; `to` is a standard stream.
    cvt(unsafe { libc::dup2(from, to) }).map(|_| ())
}

/// Makes `target` the write end of a new pipe; returns the read end.
fn redirect_to_pipe(target: RawFd) -> std::io::Result<File> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills `fds` with two new descriptors that we own.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // The duplicate at `target` is not close-on-exec: child processes inherit it.
    dup2(write.as_raw_fd(), target)?;
    Ok(File::from(read))
}

/// Output without a newline is sent in pieces of at most this many bytes.
const MAX_LINE: usize = 64 * 1024;
/// The most the reader thread reads before it lets a writer at the pipes, so
/// output that never stops cannot hold [`LogRouter::sync`] off.
const READ_BUDGET: usize = 1024 * 1024;

/// Where captured output goes; shared by the reader thread, the slots, and
/// Python-level writes ([`LogRouter::write_direct`]).
#[derive(Clone)]
pub(crate) struct LogRouter {
    inner: Arc<Inner>,
}

struct Inner {
    control: Sender,
    state: Mutex<RouteState>,
    /// The pipes and their unfinished lines. Held while reading and routing,
    /// so a direct write can first drain what the pipes already hold and
    /// output keeps the order in which it was written.
    io: Mutex<[Stream; 2]>,
}

struct RouteState {
    /// True until setup has finished: unattributed output is setup's.
    in_setup: bool,
    /// The slots running a prediction, with their sockets.
    active: Vec<(usize, Sender)>,
}

impl LogRouter {
    /// Starts the reader thread over the two pipes.
    pub(crate) fn start(control: Sender, stdout: File, stderr: File) -> Self {
        for file in [&stdout, &stderr] {
            set_nonblocking(file.as_raw_fd());
        }
        let fds = [stdout.as_raw_fd(), stderr.as_raw_fd()];
        let router = Self {
            inner: Arc::new(Inner {
                control,
                state: Mutex::new(RouteState {
                    in_setup: true,
                    active: Vec::new(),
                }),
                io: Mutex::new([
                    Stream::new(LogSource::Stdout, stdout),
                    Stream::new(LogSource::Stderr, stderr),
                ]),
            }),
        };
        let reader = router.clone();
        std::thread::Builder::new()
            .name("cogd-capture".into())
            .spawn(move || reader.read_loop(fds))
            .expect("spawn capture thread");
        router
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RouteState> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_io(&self) -> std::sync::MutexGuard<'_, [Stream; 2]> {
        self.inner.io.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// From now on unattributed output goes to the server's log.
    pub(crate) fn setup_done(&self) {
        self.lock().in_setup = false;
    }

    /// Output from now on belongs to the run in `slot` (while it is the only one).
    pub(crate) fn begin_run(&self, slot: usize, socket: Sender) {
        self.lock().active.push((slot, socket));
    }

    /// The run in `slot` has finished.
    pub(crate) fn end_run(&self, slot: usize) {
        self.lock().active.retain(|(s, _)| *s != slot);
    }

    /// Routes text written at the Python level (`sys.stdout`/`sys.stderr`),
    /// after everything the pipes already hold, so the two kinds of output
    /// stay in the order they were written.
    /// `slot` names the run that wrote, when the writer knows it (concurrent
    /// runs), else output goes where fd-level output would.
    pub(crate) fn write_direct(&self, source: LogSource, data: &str, slot: Option<usize>) {
        let mut streams = self.lock_io();
        self.catch_up(&mut streams, true);
        self.emit(source, data.as_bytes(), slot);
    }

    /// Sends `message` (a stream chunk, a metric), with `file` attached, on
    /// the socket of the run in `slot`, after everything the pipes already
    /// hold; false if no such run is active.
    pub(crate) fn send_to_run(
        &self,
        slot: usize,
        message: SlotResponse,
        file: Option<OwnedFd>,
    ) -> bool {
        let mut streams = self.lock_io();
        self.catch_up(&mut streams, false);
        let socket = {
            let state = self.lock();
            state
                .active
                .iter()
                .find(|(s, _)| *s == slot)
                .map(|(_, socket)| socket.clone())
        };
        drop(streams);
        socket.is_some_and(|socket| socket.send_with(&message, file.as_ref()).is_ok())
    }

    /// Sends text written by code that belongs to no run to the server's log.
    pub(crate) fn write_detached(&self, data: &str) {
        for piece in pieces(data, MAX_LINE) {
            super::worker_log(&self.inner.control, "info", piece.to_string());
        }
    }

    /// Returns once everything written to fd 1 and 2 before this call has
    /// been routed, a last unfinished line included.
    pub(crate) fn sync(&self) {
        let mut streams = self.lock_io();
        self.catch_up(&mut streams, true);
    }

    /// Routes what the pipes hold right now (read on the caller's thread,
    /// under the pipes' lock, so the reader thread is not mid-line), and with
    /// `flush`, the start of a line not yet ended: what comes next was
    /// written after it.
    fn catch_up(&self, streams: &mut [Stream; 2], flush: bool) {
        for stream in streams.iter_mut() {
            let queued = stream.queued();
            self.drain(stream, queued);
            if flush {
                let partial = std::mem::take(&mut stream.pending);
                self.emit(stream.source, &partial, None);
            }
        }
    }

    /// Routes `data` (lossily decoded: binary output becomes U+FFFD) in
    /// pieces of at most [`MAX_LINE`] bytes, so no write, however large or
    /// however many escapes its JSON needs, makes a frame over the limit.
    fn emit(&self, source: LogSource, data: &[u8], slot: Option<usize>) {
        if data.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(data);
        let target = {
            let state = self.lock();
            let named = slot.and_then(|slot| state.active.iter().find(|(s, _)| *s == slot));
            match (named, state.active.as_slice()) {
                (Some((_, socket)), _) | (None, [(_, socket)]) => Some(socket.clone()),
                _ if state.in_setup => None,
                // Several runs at once: fd-level output cannot be attributed.
                _ => {
                    drop(state);
                    // Output outside any single run: the server logs it.
                    self.write_detached(&text);
                    return;
                }
            }
        };
        for piece in pieces(&text, MAX_LINE) {
            let data = piece.to_string();
            let sent = match &target {
                Some(socket) => socket.send(&SlotResponse::Log { source, data }),
                None => self
                    .inner
                    .control
                    .send(&ControlResponse::Log { source, data }),
            };
            if sent.is_err() {
                return;
            }
        }
    }

    fn read_loop(self, fds: [RawFd; 2]) {
        let mut open = [true, true];
        loop {
            let mut pollfds: Vec<libc::pollfd> = fds
                .iter()
                .zip(open)
                .filter(|(_, open)| *open)
                .map(|(&fd, _)| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            if pollfds.is_empty() {
                return;
            }
            // SAFETY: `pollfds` is a valid array of pollfd for the call's duration.
            let ready =
                unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, -1) };
            if ready < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return;
            }
            let mut streams = self.lock_io();
            for (index, stream) in streams.iter_mut().enumerate() {
                self.drain(stream, READ_BUDGET);
                open[index] = stream.open;
            }
        }
    }

    /// Reads from the pipe until it is empty or at least `budget` bytes have
    /// been read, and routes what was read.
    fn drain(&self, stream: &mut Stream, budget: usize) {
        if budget == 0 {
            return;
        }
        let mut chunk = [0u8; 16 * 1024];
        let mut read = 0;
        while stream.open && read < budget {
            match stream.file.read(&mut chunk) {
                Ok(0) => {
                    stream.open = false;
                    let rest = std::mem::take(&mut stream.pending);
                    self.emit(stream.source, &rest, None);
                }
                Ok(n) => {
                    read += n;
                    stream.pending.extend_from_slice(&chunk[..n]);
                    self.route_pending(stream);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => stream.open = false,
            }
        }
    }

    /// Routes every complete line in the stream's buffer, and long partial ones.
    fn route_pending(&self, stream: &mut Stream) {
        let mut start = 0;
        while let Some(offset) = stream.pending[start..].iter().position(|&b| b == b'\n') {
            let end = start + offset + 1;
            self.emit(stream.source, &stream.pending[start..end], None);
            start = end;
        }
        stream.pending.drain(..start);
        while stream.pending.len() > MAX_LINE {
            let cut = piece_end(&stream.pending[..MAX_LINE]);
            let piece: Vec<u8> = stream.pending.drain(..cut).collect();
            self.emit(stream.source, &piece, None);
        }
    }
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a descriptor we own, changing only its status flags.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

/// Where to cut a long partial line: not inside a UTF-8 character.
fn piece_end(piece: &[u8]) -> usize {
    match std::str::from_utf8(piece) {
        Err(e) if e.error_len().is_none() && e.valid_up_to() > 0 => e.valid_up_to(),
        _ => piece.len(),
    }
}

/// `text` in pieces of at most `max` (at least 4) bytes, cut between
/// characters.
fn pieces(text: &str, max: usize) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = rest.len().min(max);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let (piece, tail) = rest.split_at(end);
        rest = tail;
        Some(piece)
    })
}

struct Stream {
    source: LogSource,
    file: File,
    open: bool,
    /// Bytes read but not yet routed: the start of an unfinished line.
    pending: Vec<u8>,
}

impl Stream {
    fn new(source: LogSource, file: File) -> Self {
        Self {
            source,
            file,
            open: true,
            pending: Vec::new(),
        }
    }

    /// Bytes waiting in the pipe (FIONREAD); a pipe buffer's worth if the
    /// kernel will not say, so a reader still makes progress.
    fn queued(&self) -> usize {
        if !self.open {
            return 0;
        }
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD stores one c_int through the pointer, which is valid.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::FIONREAD, &mut n) };
        if r < 0 {
            64 * 1024
        } else {
            usize::try_from(n).unwrap_or(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_partial_lines_are_cut_on_character_boundaries() {
        let text = "é".repeat(10);
        let bytes = text.as_bytes();
        // Cutting at an odd byte count would split a two-byte character.
        assert_eq!(piece_end(&bytes[..7]), 6);
        assert_eq!(piece_end(&bytes[..8]), 8);
    }

    #[test]
    fn a_huge_write_goes_out_in_frames_under_the_limit() {
        // NULs take six bytes each in JSON; even so each piece fits a frame.
        let text = "\0".repeat(3 * MAX_LINE + 5) + &"é".repeat(MAX_LINE);
        let mut total = 0;
        for piece in pieces(&text, MAX_LINE) {
            assert!(!piece.is_empty() && piece.len() <= MAX_LINE);
            let frame = crate::ipc::encode_line(&SlotResponse::Log {
                source: LogSource::Stdout,
                data: piece.to_string(),
            })
            .unwrap();
            assert!(frame.len() <= crate::ipc::MAX_FRAME_BYTES);
            total += piece.len();
        }
        assert_eq!(total, text.len());
    }
}
