//! Spawning the worker process and describing how it ended.

use std::process::{ExitStatus, Stdio};

use tokio::process::{Child, Command};

use super::WorkerConfig;

/// Starts `python -m cogd.worker` in the model directory with the control
/// channel on its stdin/stdout. Its stderr is the server's until the worker
/// captures it, so a crash before that is still visible to the operator.
/// The API token and the webhook token are left out of its environment.
pub(super) fn spawn(config: &WorkerConfig) -> Result<Child, String> {
    Command::new(&config.python)
        .args(["-m", "cogd.worker"])
        .current_dir(&config.model_dir)
        // Python output reaches the capture pipes as it is written, so each line
        // lands in the logs of the run that wrote it.
        .env("PYTHONUNBUFFERED", "1")
        // The server's own secrets are not the model's to read.
        .env_remove("COG_API_TOKEN")
        .env_remove("WEBHOOK_AUTH_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            format!(
                "cannot start the worker with {}: {e}",
                config.python.display()
            )
        })
}

/// "exited with code 1", "was killed by signal 11 (SIGSEGV)".
pub(super) fn describe_exit(status: std::io::Result<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exited with code {code}"),
            (None, Some(signal)) => {
                format!("was killed by signal {signal} ({})", signal_name(signal))
            }
            _ => "ended".to_string(),
        },
        Err(e) => format!("could not be waited for: {e}"),
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGILL => "SIGILL",
        libc::SIGINT => "SIGINT",
        libc::SIGKILL => "SIGKILL: out of memory or killed",
        libc::SIGSEGV => "SIGSEGV: segmentation fault",
        libc::SIGTERM => "SIGTERM",
        libc::SIGPIPE => "SIGPIPE",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn exits_are_described_for_people() {
        assert_eq!(
            describe_exit(Ok(ExitStatus::from_raw(1 << 8))),
            "exited with code 1"
        );
        assert_eq!(
            describe_exit(Ok(ExitStatus::from_raw(11))),
            "was killed by signal 11 (SIGSEGV: segmentation fault)"
        );
    }
}
