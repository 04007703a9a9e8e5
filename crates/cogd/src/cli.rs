//! The `cogd` command line, shared by the standalone binary and the `cogd`
//! command of the Python package (which passes its own interpreter):
//! `serve` (the HTTP server), `predict` (one run, `run_once.rs`) and
//! `schema`. `--train` on each selects the model's training function.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{Config, Flags, QueueFlags};

#[derive(Debug, Parser)]
#[command(
    name = "cogd",
    version,
    about = "A fast, Cog-compatible prediction server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a model over HTTP.
    Serve {
        /// The model directory, with cog.yaml and the predictor.
        #[arg(default_value = ".")]
        model_dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0")]
        host: String,
        /// Port to listen on.
        #[arg(long, env = "PORT", default_value_t = 5000)]
        port: u16,
        /// Upload file outputs with PUT to this base URL.
        #[arg(long)]
        upload_url: Option<String>,
        /// Ignore SIGTERM; stop only on POST /shutdown.
        #[arg(long)]
        await_explicit_shutdown: bool,
        /// The Python interpreter for the worker (default: the one cogd is
        /// installed in, else python3).
        #[arg(long, env = "COGD_PYTHON")]
        python: Option<PathBuf>,
        /// Serve the model's training function (`train:` in cog.yaml, or
        /// COG_TRAIN_TYPE_STUB) on /trainings instead of its predictor.
        #[arg(long)]
        train: bool,
        /// Also take predictions from this Redis Streams queue
        /// (redis://HOST:PORT/DB), shared with other replicas.
        #[arg(long, env = "COG_QUEUE_URL")]
        queue_url: Option<String>,
        /// The stream to consume [default: cog:predictions].
        #[arg(long, env = "COG_QUEUE_STREAM")]
        queue_stream: Option<String>,
        /// The consumer group [default: the stream's name].
        #[arg(long, env = "COG_QUEUE_GROUP")]
        queue_group: Option<String>,
        /// This replica's consumer name [default: HOSTNAME-PID].
        #[arg(long, env = "COG_QUEUE_CONSUMER")]
        consumer: Option<String>,
    },
    /// Print the model's OpenAPI schema (what /openapi.json serves) without serving it.
    Schema {
        /// The model directory, with cog.yaml and the predictor.
        #[arg(default_value = ".")]
        model_dir: PathBuf,
        /// The Python interpreter that imports the model (default: the one
        /// cogd is installed in, else python3).
        #[arg(long, env = "COGD_PYTHON")]
        python: Option<PathBuf>,
        /// The schema a training server (`serve --train`) serves.
        #[arg(long)]
        train: bool,
    },
    /// Run one prediction (or, with --train, one training) and print its
    /// output; file outputs are written to the current directory.
    Predict {
        /// The model directory, with cog.yaml and the predictor.
        #[arg(default_value = ".")]
        model_dir: PathBuf,
        /// An input: NAME=VALUE (typed by the model's schema: numbers,
        /// booleans, JSON lists and objects), or NAME=@FILE (a file input, or
        /// the file's text). Repeat for more inputs, or for more list items.
        #[arg(short = 'i', long = "input", value_name = "NAME=VALUE")]
        inputs: Vec<String>,
        /// The whole input as a JSON object, or @FILE holding one; -i values
        /// are added to it.
        #[arg(long, value_name = "JSON|@FILE")]
        json: Option<String>,
        /// Run the model's training function instead of its predictor.
        #[arg(long)]
        train: bool,
        /// The Python interpreter for the worker (default: the one cogd is
        /// installed in, else python3).
        #[arg(long, env = "COGD_PYTHON")]
        python: Option<PathBuf>,
    },
}

/// Runs the command line `argv` (program name first); returns the exit code.
/// `python` is the interpreter to start workers with when none is given.
pub fn main(argv: Vec<String>, python: Option<PathBuf>) -> i32 {
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    // Built before telemetry, whose trace exporter sends on this runtime.
    // One worker thread. The server's own work per request is small next to
    // the model's; what costs is handing it between threads (a futex or
    // eventfd wake-up each time a task is scheduled while the other worker
    // sleeps). On one thread a request is read, dispatched and answered
    // without a wake-up: about 15% less CPU per prediction and a lower p50.
    // Files and large payloads go to the blocking pool, which stays
    // multi-threaded.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cogd: cannot start the runtime: {e}");
            return 1;
        }
    };
    let telemetry = {
        let _context = runtime.enter();
        if matches!(cli.command, Command::Predict { .. }) {
            // A command for a terminal: the server's own log only when it matters.
            crate::telemetry::init_for_terminal()
        } else {
            crate::telemetry::init()
        }
    };
    let python = |flag: Option<PathBuf>| {
        flag.or(python.clone())
            .unwrap_or_else(|| PathBuf::from("python3"))
    };
    let code = match cli.command {
        Command::Schema {
            model_dir,
            python: python_flag,
            train,
        } => print_schema(Flags {
            model_dir,
            python: python(python_flag),
            train,
            ..Flags::default()
        }),
        Command::Predict {
            model_dir,
            inputs,
            json,
            train,
            python: python_flag,
        } => {
            let flags = Flags {
                model_dir,
                python: python(python_flag),
                train,
                ..Flags::default()
            };
            match Config::resolve(flags, |k| std::env::var(k).ok()) {
                Ok(config) => crate::run_once::run(
                    &runtime,
                    config,
                    crate::run_once::InputArgs { inputs, json },
                ),
                Err(e) => {
                    eprintln!("cogd: {e}");
                    2
                }
            }
        }
        Command::Serve {
            model_dir,
            host,
            port,
            upload_url,
            await_explicit_shutdown,
            python: python_flag,
            train,
            queue_url,
            queue_stream,
            queue_group,
            consumer,
        } => {
            let flags = Flags {
                model_dir,
                host,
                port,
                upload_url,
                await_explicit_shutdown,
                python: python(python_flag),
                train,
                queue: QueueFlags {
                    url: queue_url,
                    stream: queue_stream,
                    group: queue_group,
                    consumer,
                },
            };
            let config = match Config::resolve(flags, |k| std::env::var(k).ok()) {
                Ok(config) => config,
                Err(e) => {
                    tracing::error!(error = %e, "invalid configuration");
                    eprintln!("cogd: {e}");
                    return 2;
                }
            };
            // On a worker thread, not this one: the accept loop then hands
            // each new connection to a worker without waking another thread.
            let served = runtime.block_on(async {
                tokio::spawn(crate::server::serve(config))
                    .await
                    .unwrap_or_else(|e| Err(crate::server::ServeError::Panicked(e.to_string())))
            });
            match served {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!(error = %e, "the server stopped with an error");
                    eprintln!("cogd: {e}");
                    1
                }
            }
        }
    };
    // Spans still buffered are sent while the runtime is still there.
    telemetry.shutdown();
    code
}

/// `cogd schema`: the schema comes from the model's code, so it is built where
/// the model runs: `python -m cogd.schema FILE.py:NAME` in the model
/// directory (with `--other` naming the other mode's function, as the worker
/// is told in `init`), whose stdout is the document. Returns its exit code.
fn print_schema(flags: Flags) -> i32 {
    let config = match Config::resolve(flags, |k| std::env::var(k).ok()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("cogd: {e}");
            return 2;
        }
    };
    let mode = match config.mode {
        crate::ipc::Mode::Predict => "predict",
        crate::ipc::Mode::Train => "train",
    };
    let mut command = std::process::Command::new(&config.python);
    command.args(["-m", "cogd.schema", &config.predictor_ref, "--mode", mode]);
    if let Some(other) = &config.other_ref {
        command.args(["--other", other]);
    }
    let status = command.current_dir(&config.model_dir).status();
    match status {
        Ok(status) => status.code().unwrap_or(1),
        Err(e) => {
            eprintln!("cogd schema: cannot run {}: {e}", config.python.display());
            1
        }
    }
}
