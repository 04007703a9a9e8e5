//! Where log lines go: stderr, in batches. A busy server logs a line per
//! prediction, thousands a second; a `write` each costs more than the rest of
//! the line's work (most of all into a file, whose times the file system
//! updates on every write). Lines at info and below are gathered for at most
//! [`DELAY`] and written together by a thread of their own; a warning or an
//! error is written at once, with every line before it, so what matters is
//! never held back and the order is kept. The lines still gathered are written
//! when the telemetry is dropped or shut down, and before a panic's message.

use std::io::{self, Write};
use std::sync::{Condvar, Mutex, MutexGuard, Once, OnceLock};
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// How long a line may wait for others to be written with.
const DELAY: Duration = Duration::from_millis(10);

/// Gathered bytes past which the line that goes past is written at once
/// (with the rest): memory stays bounded whatever the rate of logging.
const MOST_GATHERED: usize = 256 * 1024;

/// Where gathered lines are written.
type Sink = Box<dyn Fn(&[u8]) -> io::Result<()> + Send + Sync>;

/// Log lines gathered for their sink.
struct Gathered {
    lines: Mutex<Vec<u8>>,
    /// Signalled when a line lands in an empty buffer.
    arrived: Condvar,
    sink: Sink,
}

/// The process's lines, bound for stderr.
fn gathered() -> &'static Gathered {
    static GATHERED: OnceLock<Gathered> = OnceLock::new();
    GATHERED.get_or_init(|| Gathered::new(Box::new(|lines| io::stderr().lock().write_all(lines))))
}

impl Gathered {
    fn new(sink: Sink) -> Self {
        Self {
            lines: Mutex::new(Vec::new()),
            arrived: Condvar::new(),
            sink,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `line`; writes everything gathered now when `at_once`, or when
    /// there is too much, else wakes the writing thread if it was idle.
    fn add(&self, line: &[u8], at_once: bool) -> io::Result<()> {
        let mut lines = self.lock();
        let was_empty = lines.is_empty();
        lines.extend_from_slice(line);
        if at_once || lines.len() > MOST_GATHERED {
            return self.write_out(&mut lines);
        }
        drop(lines);
        if was_empty {
            self.arrived.notify_one();
        }
        Ok(())
    }

    /// Writes `lines` to the sink and empties them. Called with the lock
    /// held, so lines are written in the order they were logged.
    fn write_out(&self, lines: &mut Vec<u8>) -> io::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let written = (self.sink)(lines);
        lines.clear();
        if lines.capacity() > MOST_GATHERED {
            lines.shrink_to(MOST_GATHERED);
        }
        written
    }

    /// Writes every line gathered so far.
    fn flush(&self) -> io::Result<()> {
        self.write_out(&mut self.lock())
    }

    /// The writing thread: waits for a line, lets others join it for
    /// [`DELAY`], writes them all.
    fn write_forever(&self) {
        loop {
            {
                let lines = self.lock();
                let _lines = self
                    .arrived
                    .wait_while(lines, |lines| lines.is_empty())
                    .unwrap_or_else(|e| e.into_inner());
            }
            std::thread::sleep(DELAY);
            // A failed write has nowhere to be reported but where it failed.
            let _ = self.flush();
        }
    }
}

/// Writes every line gathered so far.
pub(super) fn flush() {
    let _ = gathered().flush();
}

/// Makes sure a panic's message follows the lines logged before it.
pub(super) fn flush_before_panics() {
    static HOOKED: Once = Once::new();
    HOOKED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // Not if the panic is in a write, under the lock: waiting for it
            // would never end.
            let gathered = gathered();
            if let Ok(mut lines) = gathered.lines.try_lock() {
                let _ = gathered.write_out(&mut lines);
            }
            previous(info);
        }));
    });
}

/// The log layer's writer: lines into the batch, warnings and errors at once.
#[derive(Debug, Clone, Copy)]
pub(super) struct Stderr {
    /// Whether every line is written at once (no writing thread).
    at_once: bool,
}

impl Stderr {
    /// Lines at info and below gathered by a writing thread, started here.
    /// Without a thread, every line is written at once.
    pub(super) fn gathering() -> Self {
        static STARTED: OnceLock<bool> = OnceLock::new();
        let started = STARTED.get_or_init(|| {
            std::thread::Builder::new()
                .name("cogd-log".into())
                .spawn(|| gathered().write_forever())
                .is_ok()
        });
        Self { at_once: !started }
    }
}

/// One log line on its way (the formatter writes a whole line, then drops
/// its writer).
pub(super) struct Line {
    at_once: bool,
}

impl Write for Line {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.write_all(bytes)?;
        Ok(bytes.len())
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        gathered().add(bytes, self.at_once)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line { at_once: true }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line {
        Line {
            at_once: self.at_once || *meta.level() <= Level::WARN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{mpsc, Arc};

    /// A buffer whose writes are sent down a channel.
    fn gathered_into() -> (Arc<Gathered>, mpsc::Receiver<Vec<u8>>) {
        let (sent, written) = mpsc::channel();
        let sent = Mutex::new(sent);
        let sink: Sink = Box::new(move |lines| {
            let _ = sent.lock().unwrap().send(lines.to_vec());
            Ok(())
        });
        (Arc::new(Gathered::new(sink)), written)
    }

    #[test]
    fn a_warning_writes_the_lines_before_it_in_one_write() {
        let (gathered, written) = gathered_into();
        gathered.add(b"one\n", false).unwrap();
        gathered.add(b"two\n", false).unwrap();
        assert!(written.try_recv().is_err(), "info lines wait");
        gathered.add(b"three\n", true).unwrap();
        assert_eq!(written.try_recv().unwrap(), b"one\ntwo\nthree\n");
        assert!(gathered.lock().is_empty());
    }

    #[test]
    fn too_much_gathered_is_written_at_once() {
        let (gathered, written) = gathered_into();
        let line = [b'x'; 1024];
        for _ in 0..MOST_GATHERED / 1024 {
            gathered.add(&line, false).unwrap();
        }
        assert!(written.try_recv().is_err());
        gathered.add(b"past the bound\n", false).unwrap();
        assert_eq!(written.try_recv().unwrap().len(), MOST_GATHERED + 15);
    }

    #[test]
    fn the_writing_thread_writes_the_lines_in_order() {
        let (gathered, written) = gathered_into();
        let writer = Arc::clone(&gathered);
        std::thread::spawn(move || writer.write_forever());
        let read_until = |expected: &[u8]| {
            let mut all = Vec::new();
            while all.len() < expected.len() {
                all.extend(written.recv_timeout(Duration::from_secs(10)).unwrap());
            }
            assert_eq!(all, expected);
        };
        gathered.add(b"one\n", false).unwrap();
        gathered.add(b"two\n", false).unwrap();
        read_until(b"one\ntwo\n");
        // The thread goes back to waiting, and wakes for the next line.
        gathered.add(b"three\n", false).unwrap();
        read_until(b"three\n");
    }

    #[test]
    fn flush_writes_what_waits() {
        let (gathered, written) = gathered_into();
        gathered.add(b"last words\n", false).unwrap();
        gathered.flush().unwrap();
        assert_eq!(written.try_recv().unwrap(), b"last words\n");
        gathered.flush().unwrap();
        assert!(written.try_recv().is_err(), "nothing left to write");
    }
}
