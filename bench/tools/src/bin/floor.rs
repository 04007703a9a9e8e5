//! `cogd-floor`: the benchmark suite's floor, the least a Python-backed
//! prediction server can do per request.
//!
//! An axum server whose `POST /predictions` sends the request body, as one
//! line, over a Unix socket to a Python process (`bench/floor_worker.py`),
//! which calls a function with the input and answers one line, and returns
//! that line as the reply. No validation, no state, no logs: one HTTP parse,
//! one socket round trip and one Python call. A server that does all of
//! Cog's work cannot be faster than this; the suite reports how close cogd
//! gets.
//!
//! `--connections N` opens N sockets to the worker (one per concurrent
//! request, like slots); a request waits for a free one.

use std::process::Stdio;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use clap::Parser;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{Mutex, Semaphore};

/// Command-line flags.
#[derive(Parser, Debug)]
#[command(about = "HTTP -> Unix socket -> Python call -> reply, and nothing else")]
struct Args {
    /// Port to listen on (127.0.0.1).
    #[arg(long)]
    port: u16,
    /// Python interpreter for the worker.
    #[arg(long, default_value = "python3")]
    python: String,
    /// The worker script.
    #[arg(long)]
    worker: String,
    /// Worker mode: `sync` (a plain call) or `async` (an awaited coroutine).
    #[arg(long, default_value = "sync")]
    mode: String,
    /// Sockets to the worker, i.e. concurrent requests.
    #[arg(long, default_value_t = 1)]
    connections: usize,
}

/// One socket to the worker.
struct Conn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    line: Vec<u8>,
}

/// Free sockets and a permit per socket.
struct Pool {
    free: Mutex<Vec<Conn>>,
    permits: Semaphore,
}

async fn predict(State(pool): State<Arc<Pool>>, body: Bytes) -> impl IntoResponse {
    let _permit = pool
        .permits
        .acquire()
        .await
        .expect("the pool is never closed");
    let mut conn = pool
        .free
        .lock()
        .await
        .pop()
        .expect("a permit means a free socket");
    conn.line.clear();
    let answered = async {
        conn.writer.write_all(&body).await?;
        conn.writer.write_all(b"\n").await?;
        conn.reader.read_until(b'\n', &mut conn.line).await
    }
    .await;
    let reply = match answered {
        Ok(n) if n > 0 => Ok(Bytes::copy_from_slice(&conn.line)),
        _ => Err(StatusCode::BAD_GATEWAY),
    };
    pool.free.lock().await.push(conn);
    reply.map(|b| ([(header::CONTENT_TYPE, "application/json")], b))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("cogd-floor-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("worker.sock");
    let mut child = tokio::process::Command::new(&args.python)
        .arg(&args.worker)
        .arg(&socket)
        .arg(&args.mode)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    // The worker prints one line once it listens.
    let mut ready = String::new();
    BufReader::new(child.stdout.take().expect("stdout is piped"))
        .read_line(&mut ready)
        .await?;

    let mut free = Vec::with_capacity(args.connections);
    for _ in 0..args.connections.max(1) {
        let (read, writer) = UnixStream::connect(&socket).await?.into_split();
        free.push(Conn {
            reader: BufReader::new(read),
            writer,
            line: Vec::new(),
        });
    }
    let pool = Arc::new(Pool {
        permits: Semaphore::new(free.len()),
        free: Mutex::new(free),
    });
    let app = Router::new()
        .route("/predictions", post(predict))
        .route(
            "/health-check",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    "{\"status\":\"READY\"}",
                )
            }),
        )
        .with_state(pool);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async {
            // SIGTERM too, so a stopped floor never leaves its worker behind.
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::terminate()) {
                Ok(mut terminate) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = terminate.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        })
        .await;
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
    served
}
