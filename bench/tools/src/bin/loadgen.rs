//! `cogd-loadgen`: the benchmark suite's HTTP load generator.
//!
//! Opens `--connections` keep-alive HTTP/1.1 connections (Nagle off) and sends
//! `--requests` copies of one request over them, each connection sending its
//! next request the moment it has read the previous reply, so a connection
//! never has two requests in flight (a sequential client when there is one
//! connection). Every reply body is read in full; a 2xx body's top-level
//! `status` is tallied, so a prediction that *failed* is not counted as a
//! success. The client runs on one thread, to leave the rest of the machine to
//! the server being measured.
//!
//! It prints one JSON object: wall time, answers by HTTP status, predictions by
//! status, successes per second and latency percentiles in milliseconds.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::Barrier;

/// Command-line flags.
#[derive(Parser, Debug)]
#[command(about = "Send N identical HTTP requests over C keep-alive connections")]
struct Args {
    /// Target, e.g. http://127.0.0.1:5000/predictions.
    #[arg(long)]
    url: String,
    /// Request body (sent as application/json); empty sends a GET.
    #[arg(long, default_value = "")]
    body: String,
    /// Concurrent connections, each with at most one request in flight.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Measured requests, over all connections.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Requests sent first, over all connections, and not measured.
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    /// Extra request headers, `Name: value`.
    #[arg(long = "header")]
    headers: Vec<String>,
}

/// The part of a prediction envelope the tally needs.
#[derive(Deserialize)]
struct Envelope {
    status: Option<String>,
}

/// What one connection saw.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    http: BTreeMap<u16, usize>,
    predictions: BTreeMap<String, usize>,
    reconnects: usize,
    errors: usize,
}

/// The printed report.
#[derive(Serialize)]
struct Report {
    requests: usize,
    connections: usize,
    seconds: f64,
    http: BTreeMap<u16, usize>,
    predictions: BTreeMap<String, usize>,
    succeeded: usize,
    succeeded_per_s: f64,
    transport_errors: usize,
    reconnects: usize,
    latency_ms: BTreeMap<&'static str, f64>,
}

/// Where to connect and what to send, parsed once.
struct Target {
    addr: String,
    host: String,
    path: String,
    body: Bytes,
    headers: Vec<(String, String)>,
}

impl Target {
    fn parse(args: &Args) -> Result<Self, String> {
        let rest = args
            .url
            .strip_prefix("http://")
            .ok_or("only http:// URLs are supported")?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let headers = args
            .headers
            .iter()
            .map(|h| {
                h.split_once(':')
                    .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
                    .ok_or_else(|| format!("header {h:?} is not `Name: value`"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            addr: authority.to_owned(),
            host: authority.to_owned(),
            path: path.to_owned(),
            body: Bytes::from(args.body.clone()),
            headers,
        })
    }

    fn request(&self) -> Request<Full<Bytes>> {
        let method = if self.body.is_empty() { "GET" } else { "POST" };
        let mut req = Request::builder()
            .method(method)
            .uri(&self.path)
            .header("host", &self.host);
        if !self.body.is_empty() {
            req = req.header("content-type", "application/json");
        }
        for (name, value) in &self.headers {
            req = req.header(name, value);
        }
        req.body(Full::new(self.body.clone()))
            .expect("request parts were validated")
    }

    async fn connect(&self) -> std::io::Result<SendRequest<Full<Bytes>>> {
        let stream = TcpStream::connect(&self.addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(sender)
    }
}

/// Sends one request on `sender` (reconnecting once if the connection was
/// closed) and returns its HTTP status and body.
async fn send(
    target: &Target,
    sender: &mut SendRequest<Full<Bytes>>,
    tally: &mut Tally,
) -> Option<(u16, Bytes)> {
    for attempt in 0..2 {
        if sender.ready().await.is_err() {
            tally.reconnects += 1;
            *sender = target.connect().await.ok()?;
        }
        match sender.send_request(target.request()).await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let body = resp.into_body().collect().await.ok()?.to_bytes();
                return Some((status, body));
            }
            Err(_) if attempt == 0 => {
                tally.reconnects += 1;
                *sender = target.connect().await.ok()?;
            }
            Err(_) => return None,
        }
    }
    None
}

/// One connection: warm up, wait for the others, then take requests from the
/// shared counter until all are sent.
async fn drive(
    target: Arc<Target>,
    warmup: usize,
    remaining: Arc<AtomicUsize>,
    start: Arc<Barrier>,
) -> Tally {
    let mut tally = Tally::default();
    let mut sender = match target.connect().await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cogd-loadgen: connect {}: {e}", target.addr);
            start.wait().await;
            tally.errors += 1;
            return tally;
        }
    };
    let mut scratch = Tally::default();
    for _ in 0..warmup {
        send(&target, &mut sender, &mut scratch).await;
    }
    start.wait().await;
    loop {
        let previous = remaining.fetch_sub(1, Ordering::Relaxed);
        if previous == 0 || previous > usize::MAX / 2 {
            break;
        }
        let t0 = Instant::now();
        let Some((status, body)) = send(&target, &mut sender, &mut tally).await else {
            tally.errors += 1;
            continue;
        };
        tally
            .latencies_us
            .push(t0.elapsed().as_micros().try_into().unwrap_or(u64::MAX));
        *tally.http.entry(status).or_default() += 1;
        if (200..300).contains(&status) {
            let outcome = serde_json::from_slice::<Envelope>(&body)
                .ok()
                .and_then(|e| e.status)
                .unwrap_or_else(|| "?".to_owned());
            *tally.predictions.entry(outcome).or_default() += 1;
        }
    }
    tally
}

/// Nearest-rank percentile of sorted microseconds, in milliseconds.
fn percentile_ms(sorted: &[u64], pct: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1] as f64 / 1000.0
}

fn main() {
    let args = Args::parse();
    let target = match Target::parse(&args) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            eprintln!("cogd-loadgen: {e}");
            std::process::exit(2);
        }
    };
    let connections = args.connections.max(1);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let (tallies, seconds) = runtime.block_on(async {
        let remaining = Arc::new(AtomicUsize::new(args.requests));
        // The connections plus this task: the clock starts once all are warm.
        let start = Arc::new(Barrier::new(connections + 1));
        let tasks: Vec<_> = (0..connections)
            .map(|i| {
                let share = args.warmup / connections + usize::from(i < args.warmup % connections);
                tokio::spawn(drive(
                    target.clone(),
                    share,
                    remaining.clone(),
                    start.clone(),
                ))
            })
            .collect();
        start.wait().await;
        let t0 = Instant::now();
        let mut tallies = Vec::with_capacity(connections);
        for task in tasks {
            tallies.push(task.await.expect("a connection task panicked"));
        }
        (
            tallies,
            t0.elapsed().max(Duration::from_nanos(1)).as_secs_f64(),
        )
    });

    let mut all = Tally::default();
    for t in tallies {
        all.latencies_us.extend(t.latencies_us);
        for (k, v) in t.http {
            *all.http.entry(k).or_default() += v;
        }
        for (k, v) in t.predictions {
            *all.predictions.entry(k).or_default() += v;
        }
        all.reconnects += t.reconnects;
        all.errors += t.errors;
    }
    all.latencies_us.sort_unstable();
    let succeeded = all.predictions.get("succeeded").copied().unwrap_or(0);
    let latency_ms = [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("max", 100.0)]
        .into_iter()
        .map(|(name, pct)| (name, percentile_ms(&all.latencies_us, pct)))
        .collect();
    let report = Report {
        requests: args.requests,
        connections,
        seconds,
        http: all.http,
        predictions: all.predictions,
        succeeded,
        succeeded_per_s: succeeded as f64 / seconds,
        transport_errors: all.errors,
        reconnects: all.reconnects,
        latency_ms,
    };
    println!(
        "{}",
        serde_json::to_string(&report).expect("the report serializes")
    );
}
