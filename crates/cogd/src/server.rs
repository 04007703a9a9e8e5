//! Wires the parts together: temp space, supervisor, service, HTTP listener,
//! signals, and the orderly stop.

use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::api::{self, AppState};
use crate::config::Config;
use crate::files::outputs::OutputSender;
use crate::files::Fetcher;
use crate::outbound::AddressPolicy;
use crate::queue::Queue;
use crate::service::{Outbound, Service, ServiceConfig};
use crate::supervisor::{Supervisor, WorkerConfig, WorkerState};
use crate::telemetry::Metrics;
use crate::webhook::WebhookSender;

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The temp directory could not be made.
    #[error("cannot create temp space: {0}")]
    TempDir(std::io::Error),
    /// The port could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// host:port.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("HTTP server error: {0}")]
    Http(std::io::Error),
    /// The queue could not be used.
    #[error("{0}")]
    Queue(String),
    /// The server's task panicked (a bug).
    #[error("the server failed: {0}")]
    Panicked(String),
}

/// How long the worker gets to exit after `shutdown` before it is killed.
const WORKER_EXIT_GRACE: Duration = Duration::from_secs(5);
/// How long a stopping server waits for webhooks still being delivered.
const WEBHOOK_FLUSH: Duration = Duration::from_secs(10);
/// The file Kubernetes probes read: it exists exactly while the model is ready.
const READY_FILE: &str = "/var/run/cog/ready";

/// Keeps [`READY_FILE`] in step with the worker's state (under Kubernetes).
async fn keep_ready_file(mut state: watch::Receiver<WorkerState>) {
    loop {
        let ready = *state.borrow_and_update() == WorkerState::Ready;
        if ready {
            let path = std::path::Path::new(READY_FILE);
            let written = path
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(path, b""));
            if let Err(e) = written {
                tracing::warn!(error = %e, path = READY_FILE, "cannot write the ready file");
            }
        } else {
            remove_ready_file();
        }
        if state.changed().await.is_err() {
            return;
        }
    }
}

fn remove_ready_file() {
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        let _ = std::fs::remove_file(READY_FILE);
    }
}

/// Starts the worker and the service that runs predictions on it, as the
/// server and `cogd predict` both do: slot sockets go in `socket_dir`, each
/// prediction's files in `predictions_dir`; outbound requests never reach
/// `listen_port` on this host.
pub(crate) fn start_model(
    config: &Config,
    socket_dir: &std::path::Path,
    predictions_dir: std::path::PathBuf,
    listen_port: Option<u16>,
) -> (Supervisor, Service) {
    let metrics = Metrics::new();
    let supervisor = Supervisor::start(
        WorkerConfig {
            python: config.python.clone(),
            model_dir: config.model_dir.clone(),
            predictor_ref: config.predictor_ref.clone(),
            mode: config.mode,
            other_ref: config.other_ref.clone(),
            slots_override: config.slots_override,
            slots_default: config.slots_default,
            setup_timeout: config.setup_timeout,
            socket_dir: socket_dir.to_path_buf(),
            max_restarts: config.max_restarts,
            restart_window: config.restart_window,
        },
        metrics.clone(),
    );
    let user_agent =
        std::env::var("COG_USER_AGENT").unwrap_or_else(|_| format!("cogd/{}", crate::VERSION));
    let policy = AddressPolicy::new(config.block_private_networks, listen_port);
    let outbound = Outbound {
        webhooks: WebhookSender::new(
            std::env::var("WEBHOOK_AUTH_TOKEN").ok(),
            config.webhook_throttle,
            &user_agent,
            metrics.clone(),
            &policy,
        ),
        fetcher: Fetcher::new(
            config.download_timeout,
            config.download_max_bytes,
            &user_agent,
            &policy,
        ),
        outputs: OutputSender::new(
            config.upload_url.clone(),
            &user_agent,
            config.upload_timeout,
            &policy,
        ),
    };
    let service = Service::new(
        supervisor.clone(),
        outbound,
        ServiceConfig {
            predictions_dir,
            queue_size: config.queue_size,
            cancel_grace: config.cancel_grace,
            cancel_kill_after: config.cancel_kill_after,
            stream_history: config.stream_history,
            predict_timeout: config.predict_timeout,
            batch_override: config.batch_override,
            healthcheck_timeout: config.healthcheck_timeout,
        },
        metrics,
    );
    (supervisor, service)
}

/// Serves the model until a shutdown request or signal.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    // Everything on disk lives under one directory removed on exit:
    // the slot sockets, and a directory per prediction while it runs.
    let temp = tempfile::Builder::new()
        .prefix("cogd-")
        .tempdir()
        .map_err(ServeError::TempDir)?;
    let predictions_dir = temp.path().join("predictions");
    std::fs::create_dir_all(&predictions_dir).map_err(ServeError::TempDir)?;

    let addr = format!("{}:{}", config.host, config.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: addr.clone(),
            source,
        })?;

    let listen_port = listener.local_addr().ok().map(|addr| addr.port());
    let (supervisor, service) = start_model(&config, temp.path(), predictions_dir, listen_port);
    let (shutdown, stop) = watch::channel(false);
    tokio::spawn(watch_signals(
        shutdown.clone(),
        config.await_explicit_shutdown,
    ));

    tracing::info!(
        %addr,
        model_dir = %config.model_dir.display(),
        predictor = %config.predictor_ref,
        mode = ?config.mode,
        "serving"
    );
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        tokio::spawn(keep_ready_file(supervisor.subscribe_state()));
    }
    let queue = match config.queue.clone() {
        Some(settings) => match Queue::start(service.clone(), settings, shutdown.clone()) {
            Ok(queue) => Some(queue),
            Err(message) => {
                supervisor.shutdown(WORKER_EXIT_GRACE).await;
                return Err(ServeError::Queue(message));
            }
        },
        None => None,
    };
    let app = api::router(
        AppState {
            service: service.clone(),
            shutdown,
            api_token: std::env::var("COG_API_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
                .map(Into::into),
            streams: api::StreamLimit::new(config.max_streams),
            playground: config.playground,
            queue: queue.clone(),
        },
        config.max_body_bytes,
    );
    let mut stopped = stop.clone();
    if let Some(queue) = &queue {
        // The queue stops taking entries as soon as the stop begins.
        let queue = queue.clone();
        let mut stopping = stop.clone();
        tokio::spawn(async move {
            let _ = stopping.wait_for(|stop| *stop).await;
            queue.stop_taking();
        });
    }
    // A body that stops arriving fails its request instead of holding it.
    let app = app.layer(RequestBodyTimeoutLayer::new(config.client_timeout));
    let server = serve_connections(listener, app, stop, config.client_timeout);
    // Waiting synchronous requests end with their predictions; a connection
    // that never ends must not keep the server up past the grace period.
    let grace = config.shutdown_grace;
    tokio::select! {
        served = server => served.map_err(ServeError::Http)?,
        () = async {
            let _ = stopped.wait_for(|stop| *stop).await;
            tokio::time::sleep(grace + config.cancel_grace + Duration::from_secs(2)).await;
        } => tracing::warn!("closing connections still open after the grace period"),
    }

    tracing::info!("letting predictions in flight finish");
    if let Some(queue) = &queue {
        queue.stop_taking();
    }
    service.drain(grace).await;
    if let Some(queue) = &queue {
        // Finished runs are marked and acknowledged; canceled ones are left
        // for another replica.
        queue.finish(WEBHOOK_FLUSH).await;
    }
    service.flush_webhooks(WEBHOOK_FLUSH).await;
    remove_ready_file();
    tracing::info!("stopping the worker");
    supervisor.shutdown(WORKER_EXIT_GRACE).await;
    drop(temp);
    tracing::info!("stopped");
    Ok(())
}

/// Serves HTTP/1 connections from `listener` with `app` until `stop`, then
/// lets those still open finish their request in flight and close.
///
/// Served here rather than by `axum::serve` to give hyper a timer, so that
/// `client_timeout` bounds the wait for each request head: the first on a
/// connection (a client that connects and sends nothing, or sends its head a
/// byte at a time) and each next one on a kept-alive connection (an idle
/// one). Without it, idle connections hold descriptors until the client
/// closes them, and a few hundred lock every client out at the fd limit.
/// Each connection gets the router by an `Arc` clone; Nagle's algorithm is
/// off on each, as a stream's events are small writes, each of which would
/// otherwise wait for the client's acknowledgement of the one before (up to
/// its delayed-ACK timer, 40 ms).
async fn serve_connections(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    mut stop: watch::Receiver<bool>,
    client_timeout: Duration,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(client_timeout);
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    accept_failed(error).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot turn Nagle's algorithm off on a connection");
        }
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection closed with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Returns once `stop` is set.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// After a failed `accept`: a connection the client gave up on is nothing;
/// anything else (out of descriptors, above all) gets a pause, so the loop
/// does not spin while the condition lasts.
async fn accept_failed(error: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
    ) {
        return;
    }
    tracing::error!(%error, "cannot accept a connection");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// SIGTERM stops the server (unless shutdown must be explicit); SIGINT always.
async fn watch_signals(shutdown: watch::Sender<bool>, await_explicit: bool) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => {
                if await_explicit {
                    tracing::info!("ignoring SIGTERM: waiting for POST /shutdown");
                    continue;
                }
                tracing::info!("SIGTERM: shutting down");
            }
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        shutdown.send_replace(true);
        return;
    }
}
