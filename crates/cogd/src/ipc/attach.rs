//! Open files attached to frames on a slot socket (`SCM_RIGHTS`).
//!
//! A JSON text too large for one frame travels as a sealed memory file
//! attached to the frame that names it: a large input with `predict`
//! (`input_attached`), a large output with `output`/`done`
//! (`output_attached`). It never touches a disk, and the server serves an
//! output from the pages the worker wrote, with no copy. The kernel hands a
//! file over with the first bytes of the `sendmsg` that carried it, and each
//! file is attached to the first bytes of its own frame; so by the time a
//! frame is decoded, its file has arrived, and files come in the order of
//! the frames that carry them. Both sides read slot sockets through a
//! [`FileReceiver`], which queues them in that order, and the frame's
//! consumer takes the oldest.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::io::retry_on_intr;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tokio::io::{AsyncRead, Interest, ReadBuf};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use super::Carrier;

/// The seals put on a memory file before it is attached, and that the server
/// checks before it maps one: the file's size and bytes are fixed for good,
/// so a map of it can neither change under a reader nor end short of it
/// (which would fault the server).
pub const SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::WRITE);

/// True when `file` carries every one of [`SEALS`].
pub fn is_sealed(file: BorrowedFd<'_>) -> bool {
    rustix::fs::fcntl_get_seals(file).is_ok_and(|seals| seals.contains(SEALS))
}

/// A new, empty memory file that can be sealed.
pub fn memory_file() -> io::Result<std::fs::File> {
    let fd = rustix::fs::memfd_create(
        c"cogd-spill",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    Ok(fd.into())
}

/// Seals `file` with [`SEALS`], so nothing in the process that wrote it
/// (model code included) can change or shrink it once it has been checked,
/// and no further seal can be added.
pub fn seal(file: &std::fs::File) -> io::Result<()> {
    rustix::fs::fcntl_add_seals(file, SEALS | SealFlags::SEAL)?;
    Ok(())
}

/// Writes a text too large for one frame with `write`: into a sealed memory
/// file, to attach to the frame that names it ([`Carrier::Attached`]), or,
/// where memory files cannot be made, into `name` in `dir`, made if need be
/// ([`Carrier::File`]); never [`Carrier::Inline`]. Long strings are written
/// straight from where they are (a write that large passes the buffer by);
/// the buffer gathers small pieces.
pub fn spill(
    dir: &Path,
    name: &str,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<Carrier<OwnedFd>> {
    match memory_file() {
        Ok(file) => {
            write_buffered(&file, write)?;
            // Should sealing ever fail, the text still goes: the server
            // copies an unsealed file instead of mapping it.
            let _ = seal(&file);
            Ok(Carrier::Attached(file.into()))
        }
        Err(_) => spill_to_file(dir, name, write),
    }
}

/// [`spill`]'s fallback: the text into `name` in `dir`.
fn spill_to_file(
    dir: &Path,
    name: &str,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<Carrier<OwnedFd>> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(name);
    write_buffered(&std::fs::File::create(&path)?, write)?;
    Ok(Carrier::File(path))
}

fn write_buffered(
    mut file: &std::fs::File,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let mut out = io::BufWriter::with_capacity(64 * 1024, &mut file);
    write(&mut out)?;
    out.flush()
}

/// Files one read takes at most: the worker attaches one per frame, and
/// one read never takes the files of two `sendmsg` calls.
const FILES_PER_READ: usize = 8;

/// Sends `bytes` on the stream socket `socket` with `file` attached, and
/// returns how many of them went: at least one, and the file went with the
/// first. The caller writes the rest as usual. Blocks as `write` does.
pub fn send_with_file(
    socket: BorrowedFd<'_>,
    bytes: &[u8],
    file: BorrowedFd<'_>,
) -> io::Result<usize> {
    if bytes.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a file must come with at least one byte",
        ));
    }
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let files = [file];
    let pushed = control.push(SendAncillaryMessage::ScmRights(&files));
    debug_assert!(pushed, "the space holds one file");
    let iov = [IoSlice::new(bytes)];
    let sent =
        retry_on_intr(|| rustix::net::sendmsg(socket, &iov, &mut control, SendFlags::NOSIGNAL))?;
    Ok(sent)
}

/// One `recvmsg` on `socket` into `buf` with `flags`, queueing the files that
/// came with the bytes on `files` (opened close-on-exec). `Ok(0)` at the end
/// of the stream (or when `buf` is empty).
fn recv_with_files(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    flags: RecvFlags,
    files: &mut VecDeque<OwnedFd>,
) -> io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FILES_PER_READ))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(buf)];
    let read = retry_on_intr(|| {
        rustix::net::recvmsg(
            socket,
            &mut iov,
            &mut control,
            flags | RecvFlags::CMSG_CLOEXEC,
        )
    })?;
    // The files are owned (and queued) before anything else can fail, so
    // none leaks.
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            files.extend(received);
        }
    }
    if read.flags.contains(ReturnFlags::CTRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "more files came with one read than it has room for",
        ));
    }
    Ok(read.bytes)
}

/// Writes `frame` on `socket` with `file` attached to its first bytes: the
/// server's side of [`send_with_file`], for the `predict` frame of a large
/// input.
pub async fn write_with_file(
    socket: &mut OwnedWriteHalf,
    frame: &[u8],
    file: BorrowedFd<'_>,
) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let sent = {
        let stream = socket.as_ref();
        loop {
            stream.writable().await?;
            match stream.try_io(Interest::WRITABLE, || {
                send_with_file(stream.as_fd(), frame, file)
            }) {
                Ok(sent) => break sent,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    };
    socket.write_all(&frame[sent..]).await
}

/// A slot socket that keeps the files attached to what it reads: the
/// worker's blocking one (`std` `UnixStream`, read by [`super::FrameReader`])
/// or the server's half of a tokio one (read by `FramedRead`).
#[derive(Debug)]
pub struct FileReceiver<S> {
    socket: S,
    files: VecDeque<OwnedFd>,
}

impl<S> FileReceiver<S> {
    /// Reads `socket`.
    pub fn new(socket: S) -> Self {
        Self {
            socket,
            files: VecDeque::new(),
        }
    }

    /// The oldest attached file not yet taken: the one attached to the
    /// earliest frame, among those read, that says it carries one.
    pub fn take_file(&mut self) -> Option<OwnedFd> {
        self.files.pop_front()
    }
}

impl io::Read for FileReceiver<std::os::unix::net::UnixStream> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        recv_with_files(
            self.socket.as_fd(),
            buf,
            RecvFlags::empty(),
            &mut self.files,
        )
    }
}

impl AsyncRead for FileReceiver<OwnedReadHalf> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let Self { socket, files } = self.get_mut();
        let stream = socket.as_ref();
        loop {
            std::task::ready!(stream.poll_read_ready(cx))?;
            // SAFETY: the kernel only writes into this memory, never reads
            // it, and only the bytes it reports are marked filled below (as
            // tokio reads its own sockets into a `ReadBuf`). Zeroing it
            // first would cost a `memset` of the buffer's spare room, which
            // can be megabytes after a large frame, on every read.
            let unfilled =
                unsafe { &mut *(buf.unfilled_mut() as *mut [MaybeUninit<u8>] as *mut [u8]) };
            let read = stream.try_io(Interest::READABLE, || {
                recv_with_files(stream.as_fd(), unfilled, RecvFlags::DONTWAIT, files)
            });
            match read {
                Ok(read) => {
                    // SAFETY: the kernel wrote `read` bytes at the start of
                    // the unfilled part.
                    unsafe { buf.assume_init(read) };
                    buf.advance(read);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::{FrameError, LineDecoder};
    use futures_util::StreamExt;
    use std::io::{Read, Seek};
    use tokio_util::codec::FramedRead;

    /// The server's reader of the server end of a socket pair.
    fn server_frames(
        server: std::os::unix::net::UnixStream,
    ) -> FramedRead<FileReceiver<OwnedReadHalf>, LineDecoder> {
        server.set_nonblocking(true).unwrap();
        let (read, _write) = tokio::net::UnixStream::from_std(server)
            .unwrap()
            .into_split();
        FramedRead::new(FileReceiver::new(read), LineDecoder::default())
    }

    fn file_with(text: &str) -> std::fs::File {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    fn text_of(fd: OwnedFd) -> String {
        let mut file = std::fs::File::from(fd);
        file.rewind().unwrap();
        let mut text = String::new();
        file.read_to_string(&mut text).unwrap();
        text
    }

    #[tokio::test]
    async fn files_arrive_in_the_order_of_the_frames_that_carry_them() {
        let (worker, server) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut reader = server_frames(server);
        let sender = std::thread::spawn(move || {
            let mut worker = worker;
            worker.write_all(b"{\"n\":0}\n").unwrap();
            for n in 1..=3 {
                let frame = format!("{{\"n\":{n}}}\n");
                let file = file_with(&format!("file {n}"));
                let sent = send_with_file(worker.as_fd(), frame.as_bytes(), file.as_fd()).unwrap();
                assert!(sent >= 1);
                worker.write_all(&frame.as_bytes()[sent..]).unwrap();
                // The sender's copy is closed; the server's stays open.
            }
            worker.write_all(b"{\"n\":4}\n").unwrap();
        });
        let mut seen = Vec::new();
        while let Some(frame) = reader.next().await {
            let frame = frame.unwrap();
            let n: serde_json::Value = serde_json::from_slice(&frame).unwrap();
            let n = n["n"].as_u64().unwrap();
            let file = (1..=3)
                .contains(&n)
                .then(|| text_of(reader.get_mut().take_file().unwrap()));
            seen.push((n, file));
        }
        sender.join().unwrap();
        assert_eq!(
            seen,
            vec![
                (0, None),
                (1, Some("file 1".into())),
                (2, Some("file 2".into())),
                (3, Some("file 3".into())),
                (4, None),
            ]
        );
        assert!(reader.get_mut().take_file().is_none());
    }

    #[tokio::test]
    async fn the_worker_reads_the_files_the_server_attaches_in_order() {
        let (server, worker) = std::os::unix::net::UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        let (_read, mut write) = tokio::net::UnixStream::from_std(server)
            .unwrap()
            .into_split();
        let reader = std::thread::spawn(move || {
            let mut frames = super::super::FrameReader::new(FileReceiver::new(worker));
            let mut seen = Vec::new();
            while let Some(frame) = frames.next_frame().unwrap() {
                let file =
                    (frame[0] == b'f').then(|| text_of(frames.get_mut().take_file().unwrap()));
                seen.push((String::from_utf8(frame.to_vec()).unwrap(), file));
            }
            seen
        });
        for n in 0..3 {
            let file = file_with(&format!("input {n}"));
            write_with_file(&mut write, format!("f{n}\n").as_bytes(), file.as_fd())
                .await
                .unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut write, b"plain\n")
                .await
                .unwrap();
        }
        drop(write);
        let seen = reader.join().unwrap();
        let want: Vec<(String, Option<String>)> = (0..3)
            .flat_map(|n| {
                [
                    (format!("f{n}"), Some(format!("input {n}"))),
                    ("plain".into(), None),
                ]
            })
            .collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn a_spill_file_holds_the_whole_text() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("run");
        let big = vec![b'x'; 200 * 1024];
        let spilled = spill_to_file(&sub, "output.json", |out| {
            out.write_all(b"[\"")?;
            out.write_all(&big)?;
            out.write_all(b"\"]")
        })
        .unwrap();
        let Carrier::File(path) = spilled else {
            panic!("not a file: {spilled:?}");
        };
        assert_eq!(path, sub.join("output.json"));
        let text = std::fs::read(path).unwrap();
        assert!(text == [&b"[\""[..], &big, b"\"]"].concat());
    }

    #[tokio::test]
    async fn a_stream_cut_inside_a_frame_is_an_error() {
        let (mut worker, server) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut reader = server_frames(server);
        worker.write_all(b"{\"n\":0}\n{\"n\"").unwrap();
        drop(worker);
        assert_eq!(&reader.next().await.unwrap().unwrap()[..], b"{\"n\":0}");
        assert!(matches!(reader.next().await, Some(Err(FrameError::Io(_)))));
        assert!(reader.next().await.is_none());
    }

    #[tokio::test]
    async fn a_frame_larger_than_one_read_comes_whole() {
        let (worker, server) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut reader = server_frames(server);
        let long = format!("\"{}\"", "x".repeat(3 << 20));
        let wire = format!("{long}\n");
        let sender = std::thread::spawn(move || {
            let mut worker = worker;
            worker.write_all(wire.as_bytes()).unwrap();
        });
        let frame = reader.next().await.unwrap().unwrap();
        assert_eq!(frame.len(), long.len());
        sender.join().unwrap();
        assert!(reader.next().await.is_none());
    }
}
