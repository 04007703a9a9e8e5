//! The `cogd` command line, shared by the standalone binary and the `cogd`
//! command of the Python package (which passes its own interpreter).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{Config, Flags};

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
    crate::telemetry::init();
    match cli.command {
        Command::Serve {
            model_dir,
            host,
            port,
            upload_url,
            await_explicit_shutdown,
            python: python_flag,
        } => {
            let flags = Flags {
                model_dir,
                host,
                port,
                upload_url,
                await_explicit_shutdown,
                python: python_flag
                    .or(python)
                    .unwrap_or_else(|| PathBuf::from("python3")),
            };
            let config = match Config::resolve(flags, |k| std::env::var(k).ok()) {
                Ok(config) => config,
                Err(e) => {
                    tracing::error!(error = %e, "invalid configuration");
                    eprintln!("cogd: {e}");
                    return 2;
                }
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    eprintln!("cogd: cannot start the runtime: {e}");
                    return 1;
                }
            };
            match runtime.block_on(crate::server::serve(config)) {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!(error = %e, "the server stopped with an error");
                    eprintln!("cogd: {e}");
                    1
                }
            }
        }
    }
}
