//! The server's configuration: command-line flags, environment variables and
//! the model's `cog.yaml`, resolved once at start-up into a [`Config`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::ipc::Mode;

/// Everything the server needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// The model directory (the worker's working directory).
    pub model_dir: PathBuf,
    /// `FILE.py:NAME` of the predictor (or training function).
    pub predictor_ref: String,
    /// Predict or train.
    pub mode: Mode,
    /// `FILE.py:NAME` of the other mode's function (the training function
    /// when predicting, the predictor when training), when one is configured
    /// and differs: its part of the schema document is described too.
    pub other_ref: Option<String>,
    /// Concurrent runs from `COG_MAX_CONCURRENCY`, which wins over the model.
    pub slots_override: Option<usize>,
    /// Concurrent runs from `cog.yaml`, for models that declare none.
    pub slots_default: Option<usize>,
    /// Predictions that may wait for a slot (`COG_QUEUE_SIZE`, default 0).
    pub queue_size: usize,
    /// What wins over a `@cog.batch` model's own settings
    /// (`COG_MAX_BATCH_SIZE`, `COG_BATCH_WAIT_MS`); nothing for other models.
    pub batch_override: BatchOverride,
    /// How long a canceled run has to stop before its prediction ends
    /// without it; the run keeps its slot until it returns
    /// (`COG_CANCEL_GRACE`, seconds, default 1).
    pub cancel_grace: Duration,
    /// How long after a cancel a run that has not stopped is given up on,
    /// and its worker replaced (`COG_CANCEL_KILL_AFTER`, seconds; unset or
    /// 0: never).
    pub cancel_kill_after: Option<Duration>,
    /// The least time between two `output`/`logs` webhooks of one prediction
    /// (`COG_THROTTLE_RESPONSE_INTERVAL`, seconds).
    pub webhook_throttle: Duration,
    /// The largest request body accepted (`COG_MAX_BODY_BYTES`, default 100 MiB).
    pub max_body_bytes: usize,
    /// Runs longer than this are stopped and fail (`COG_PREDICT_TIMEOUT`,
    /// seconds; unset or 0: no limit).
    pub predict_timeout: Option<Duration>,
    /// Worker restarts allowed within `restart_window` (`COG_MAX_WORKER_RESTARTS`,
    /// default 3) before the model is defunct.
    pub max_restarts: usize,
    /// The window restarts are counted in (`COG_WORKER_RESTART_WINDOW`,
    /// seconds, default 600).
    pub restart_window: Duration,
    /// How long in-flight predictions may take to finish on shutdown before
    /// they are canceled (`COG_SHUTDOWN_GRACE`, seconds, default 30).
    pub shutdown_grace: Duration,
    /// How long one file input's download may take (`COG_DOWNLOAD_TIMEOUT`,
    /// seconds, default 300).
    pub download_timeout: Duration,
    /// The largest file input accepted (`COG_DOWNLOAD_MAX_BYTES`, default 2 GiB).
    pub download_max_bytes: u64,
    /// Refuse file inputs, webhooks and uploads whose address is loopback,
    /// private, link-local or the server's own
    /// (`COG_BLOCK_PRIVATE_NETWORKS=1`, default off).
    pub block_private_networks: bool,
    /// How long one attempt at uploading a file output may take, reply
    /// included (`COG_UPLOAD_TIMEOUT`, seconds, default 30).
    pub upload_timeout: Duration,
    /// Stream events replayed to SSE readers who attach late
    /// (`COG_STREAM_HISTORY_CAPACITY`, default 1024, 0 for live only).
    pub stream_history: usize,
    /// Event streams open at once (`COG_MAX_STREAMS`, default 1024); past
    /// it, 429.
    pub max_streams: usize,
    /// How long a client may take to send a request head, each piece of a
    /// body, or its next request on an idle kept-alive connection
    /// (`COG_CLIENT_TIMEOUT`, seconds, default 30).
    pub client_timeout: Duration,
    /// Serve the web playground at `GET /` to browsers (`COG_PLAYGROUND`,
    /// default on; `0` turns it off).
    pub playground: bool,
    /// Address to listen on.
    pub host: String,
    /// Port to listen on.
    pub port: u16,
    /// Base URL file outputs are uploaded to (`PUT BASE/<filename>`);
    /// without it they are inlined as `data:` URIs.
    pub upload_url: Option<String>,
    /// Ignore SIGTERM until `POST /shutdown`.
    pub await_explicit_shutdown: bool,
    /// The Python interpreter that runs the worker.
    pub python: PathBuf,
    /// Give up on setup after this long (`COG_SETUP_TIMEOUT`).
    pub setup_timeout: Option<Duration>,
    /// How long the model's own `healthcheck()` may take before
    /// `/health-check` calls it unhealthy (`COG_HEALTHCHECK_TIMEOUT`,
    /// seconds, default 5).
    pub healthcheck_timeout: Duration,
    /// The Redis Streams queue to consume, when one is given
    /// (`--queue-url` / `COG_QUEUE_URL`).
    pub queue: Option<QueueConfig>,
}

/// Where and how to consume a Redis Streams queue (`docs/scale-out.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// `redis://HOST:PORT/DB` (`--queue-url`, `COG_QUEUE_URL`).
    pub url: String,
    /// The stream (`--queue-stream`, `COG_QUEUE_STREAM`, default `cog:predictions`).
    pub stream: String,
    /// The consumer group (`--queue-group`, `COG_QUEUE_GROUP`, default the stream's name).
    pub group: String,
    /// This replica's consumer name (`--consumer`, `COG_QUEUE_CONSUMER`,
    /// default `HOSTNAME-PID`).
    pub consumer: String,
    /// How long a claim lasts unrenewed; renewed every third of it, and
    /// entries idle past it are reclaimed (`COG_QUEUE_LEASE`, seconds, default 30).
    pub lease: Duration,
    /// Deliveries before an entry goes to `<stream>:dead`
    /// (`COG_QUEUE_MAX_DELIVERIES`, default 3).
    pub max_deliveries: u64,
    /// Failed predictions in a row after which the replica stops
    /// (`COG_QUEUE_MAX_FAILURES`; unset: never).
    pub max_failures: Option<usize>,
}

/// The queue as the command line gives it.
#[derive(Debug, Clone, Default)]
pub struct QueueFlags {
    /// `--queue-url` / `COG_QUEUE_URL`.
    pub url: Option<String>,
    /// `--queue-stream` / `COG_QUEUE_STREAM`.
    pub stream: Option<String>,
    /// `--queue-group` / `COG_QUEUE_GROUP`.
    pub group: Option<String>,
    /// `--consumer` / `COG_QUEUE_CONSUMER`.
    pub consumer: Option<String>,
}

/// What the command line gives.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    /// The model directory.
    pub model_dir: PathBuf,
    /// `--host`.
    pub host: String,
    /// `--port` / `PORT`.
    pub port: u16,
    /// `--upload-url`.
    pub upload_url: Option<String>,
    /// `--await-explicit-shutdown`.
    pub await_explicit_shutdown: bool,
    /// `--python` / `COGD_PYTHON`, or the interpreter the `cogd` command runs in.
    pub python: PathBuf,
    /// `--train` (the launcher's `--x-mode train`): run the training function.
    pub train: bool,
    /// The queue to consume, if any.
    pub queue: QueueFlags,
}

/// A configuration the server cannot start with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The model directory does not exist.
    #[error("model directory {0} does not exist")]
    NoModelDir(PathBuf),
    /// `cog.yaml` could not be read or parsed.
    #[error("cannot read {path}: {message}")]
    CogYaml {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Nothing says what to run.
    #[error("no predictor: set `run: \"run.py:Runner\"` in {0}/cog.yaml or COG_PREDICT_TYPE_STUB")]
    NoPredictor(PathBuf),
    /// `cog.yaml` names the entry point twice, as Cog refuses too.
    #[error(
        "'run' and 'predict' cannot both be set in {0}/cog.yaml; use 'run' (predict is deprecated)"
    )]
    RunAndPredict(PathBuf),
    /// Training mode, and nothing says what trains.
    #[error("no training function: set `train: \"train.py:train\"` in {0}/cog.yaml or COG_TRAIN_TYPE_STUB")]
    NoTrainer(PathBuf),
    /// `--queue-url` is not a Redis URL.
    #[error("--queue-url {0:?} is not a redis:// (or rediss://) URL")]
    BadQueueUrl(String),
    /// `--upload-url` is not an http(s) URL.
    #[error("--upload-url {0:?} is not an http:// or https:// URL")]
    BadUploadUrl(String),
    /// An environment variable has a value that makes no sense.
    #[error("{name}={value:?}: {message}")]
    BadEnv {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is expected.
        message: &'static str,
    },
}

/// The queue settings, when a queue URL is given.
fn queue_config(
    flags: QueueFlags,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Option<QueueConfig>, ConfigError> {
    let given = |value: Option<String>| value.filter(|v| !v.trim().is_empty());
    let Some(url) = given(flags.url) else {
        return Ok(None);
    };
    if !matches!(
        url.split_once("://").map(|(scheme, _)| scheme),
        Some("redis" | "rediss" | "redis+unix" | "unix")
    ) {
        return Err(ConfigError::BadQueueUrl(url));
    }
    let stream = given(flags.stream).unwrap_or_else(|| "cog:predictions".into());
    let group = given(flags.group).unwrap_or_else(|| stream.clone());
    let consumer = given(flags.consumer).unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| env("HOSTNAME"))
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "cogd".into());
        format!("{host}-{}", std::process::id())
    });
    let lease = match seconds(env, "COG_QUEUE_LEASE")? {
        Some(lease) if lease < Duration::from_millis(300) => {
            return Err(ConfigError::BadEnv {
                name: "COG_QUEUE_LEASE",
                value: env("COG_QUEUE_LEASE").unwrap_or_default(),
                message: "expected a number of seconds of at least 0.3",
            })
        }
        lease => lease.unwrap_or(Duration::from_secs(30)),
    };
    let max_deliveries = positive(env, "COG_QUEUE_MAX_DELIVERIES")?.unwrap_or(3) as u64;
    let max_failures = positive(env, "COG_QUEUE_MAX_FAILURES")?;
    Ok(Some(QueueConfig {
        url,
        stream,
        group,
        consumer,
        lease,
        max_deliveries,
        max_failures,
    }))
}

/// The parts of `cog.yaml` the server reads; the rest is for builds.
#[derive(Debug, Default, Deserialize)]
struct CogYaml {
    /// The entry point as current Cog writes it (`run: "run.py:Runner"`).
    run: Option<String>,
    /// The entry point as older Cog wrote it; the same meaning as `run`.
    predict: Option<String>,
    train: Option<String>,
    concurrency: Option<Concurrency>,
}

#[derive(Debug, Default, Deserialize)]
struct Concurrency {
    max: Option<usize>,
}

/// Settings that win over a `@cog.batch` model's own.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BatchOverride {
    /// The most predictions per call (`COG_MAX_BATCH_SIZE`, at least 1).
    pub max_size: Option<usize>,
    /// How long a batch waits to fill (`COG_BATCH_WAIT_MS`, milliseconds, 0
    /// or more; fractions allowed).
    pub max_wait: Option<Duration>,
}

impl Config {
    /// Resolves `flags`, the environment (through `env`) and `cog.yaml`.
    pub fn resolve(
        flags: Flags,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let model_dir = flags.model_dir;
        if !model_dir.is_dir() {
            return Err(ConfigError::NoModelDir(model_dir));
        }
        let cog_yaml = read_cog_yaml(&model_dir)?;
        // Training mode runs `train:` where predict mode runs `run:` (or
        // `predict:`); each has its own variable, which wins over cog.yaml.
        // This is the one place that rule lives: the worker is told both
        // references in `init`.
        let set = |value: Option<String>| value.filter(|s| !s.trim().is_empty());
        let train_stub = set(env("COG_TRAIN_TYPE_STUB"));
        let predict_stub = set(env("COG_PREDICT_TYPE_STUB"));
        let (mode, predictor_ref, other_ref) = if flags.train {
            let train = train_stub
                .or(cog_yaml.train)
                .ok_or_else(|| ConfigError::NoTrainer(model_dir.clone()))?;
            // Only described here, never run: both `run:` and `predict:` set
            // (refused when predicting) is read as `run:`.
            let predict = predict_stub.or(set(cog_yaml.run)).or(set(cog_yaml.predict));
            (Mode::Train, train, predict)
        } else {
            let predict = predict_stub
                .or(entry_point(cog_yaml.run, cog_yaml.predict, &model_dir)?)
                .ok_or_else(|| ConfigError::NoPredictor(model_dir.clone()))?;
            let train = train_stub.or(set(cog_yaml.train));
            (Mode::Predict, predict, train)
        };
        let other_ref = other_ref
            .map(|r| r.trim().to_string())
            .filter(|r| r != predictor_ref.trim());
        let slots_override = positive(&env, "COG_MAX_CONCURRENCY")?;
        let slots_default = cog_yaml.concurrency.and_then(|c| c.max).map(|n| n.max(1));
        let queue_size = number(
            &env,
            "COG_QUEUE_SIZE",
            "expected a whole number (0 for no queue)",
        )?
        .unwrap_or(0);
        let batch_override = BatchOverride {
            max_size: positive(&env, "COG_MAX_BATCH_SIZE")?,
            max_wait: milliseconds(&env, "COG_BATCH_WAIT_MS")?,
        };
        let stream_history = number(
            &env,
            "COG_STREAM_HISTORY_CAPACITY",
            "expected a whole number of events (0 for live only)",
        )?
        .unwrap_or(1024);
        let max_streams = positive(&env, "COG_MAX_STREAMS")?.unwrap_or(1024);
        let playground = switch(&env, "COG_PLAYGROUND")?.unwrap_or(true);
        let max_body_bytes =
            number(&env, "COG_MAX_BODY_BYTES", "expected a number of bytes")?.unwrap_or(100 << 20);
        let max_restarts = number(
            &env,
            "COG_MAX_WORKER_RESTARTS",
            "expected a whole number (0: never restart)",
        )?
        .unwrap_or(3);
        let predict_timeout = seconds(&env, "COG_PREDICT_TIMEOUT")?.filter(|t| !t.is_zero());
        let restart_window =
            seconds(&env, "COG_WORKER_RESTART_WINDOW")?.unwrap_or(Duration::from_secs(600));
        let shutdown_grace =
            seconds(&env, "COG_SHUTDOWN_GRACE")?.unwrap_or(Duration::from_secs(30));
        let download_timeout =
            seconds(&env, "COG_DOWNLOAD_TIMEOUT")?.unwrap_or(Duration::from_secs(300));
        let download_max_bytes =
            number(&env, "COG_DOWNLOAD_MAX_BYTES", "expected a number of bytes")?
                .unwrap_or(2 << 30);
        let block_private_networks = switch(&env, "COG_BLOCK_PRIVATE_NETWORKS")?.unwrap_or(false);
        let client_timeout = above_zero(&env, "COG_CLIENT_TIMEOUT", Duration::from_secs(30))?;
        let upload_timeout = above_zero(&env, "COG_UPLOAD_TIMEOUT", Duration::from_secs(30))?;
        let cancel_grace = seconds(&env, "COG_CANCEL_GRACE")?.unwrap_or(Duration::from_secs(1));
        let cancel_kill_after = seconds(&env, "COG_CANCEL_KILL_AFTER")?.filter(|t| !t.is_zero());
        let healthcheck_timeout = match seconds(&env, "COG_HEALTHCHECK_TIMEOUT")? {
            Some(timeout) if timeout.is_zero() => {
                return Err(ConfigError::BadEnv {
                    name: "COG_HEALTHCHECK_TIMEOUT",
                    value: env("COG_HEALTHCHECK_TIMEOUT").unwrap_or_default(),
                    message: "expected a number of seconds above 0",
                })
            }
            timeout => timeout.unwrap_or(Duration::from_secs(5)),
        };
        let webhook_throttle =
            seconds(&env, "COG_THROTTLE_RESPONSE_INTERVAL")?.unwrap_or(Duration::from_millis(500));
        let setup_timeout = match env("COG_SETUP_TIMEOUT").filter(|s| !s.trim().is_empty()) {
            Some(value) => match value.trim().parse::<f64>() {
                Ok(0.0) => None,
                Ok(secs) if secs > 0.0 && secs.is_finite() => Some(Duration::from_secs_f64(secs)),
                _ => {
                    return Err(ConfigError::BadEnv {
                        name: "COG_SETUP_TIMEOUT",
                        value,
                        message: "expected a number of seconds (0 for none)",
                    })
                }
            },
            None => None,
        };
        if let Some(url) = &flags.upload_url {
            let scheme = url.split_once("://").map(|(scheme, _)| scheme);
            if !matches!(scheme, Some("http" | "https")) {
                return Err(ConfigError::BadUploadUrl(url.clone()));
            }
        }
        let queue = queue_config(flags.queue, &env)?;
        Ok(Config {
            queue,
            model_dir,
            predictor_ref,
            mode,
            other_ref,
            slots_override,
            slots_default,
            queue_size,
            batch_override,
            cancel_grace,
            cancel_kill_after,
            webhook_throttle,
            stream_history,
            max_streams,
            playground,
            max_body_bytes,
            predict_timeout,
            max_restarts,
            restart_window,
            shutdown_grace,
            download_timeout,
            download_max_bytes,
            upload_timeout,
            block_private_networks,
            client_timeout,
            host: flags.host,
            port: flags.port,
            upload_url: flags.upload_url,
            await_explicit_shutdown: flags.await_explicit_shutdown,
            python: flags.python,
            setup_timeout,
            healthcheck_timeout,
        })
    }
}

const AT_LEAST_ONE: &str = "expected a whole number of at least 1";

/// A whole number from the environment, if set; `message` says what is expected.
fn number<T: std::str::FromStr>(
    env: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    message: &'static str,
) -> Result<Option<T>, ConfigError> {
    match env(name).filter(|s| !s.trim().is_empty()) {
        Some(value) => match value.trim().parse::<T>() {
            Ok(n) => Ok(Some(n)),
            Err(_) => Err(ConfigError::BadEnv {
                name,
                value,
                message,
            }),
        },
        None => Ok(None),
    }
}

/// A whole number of at least one from the environment, if set.
fn positive(
    env: &impl Fn(&str) -> Option<String>,
    name: &'static str,
) -> Result<Option<usize>, ConfigError> {
    match number::<usize>(env, name, AT_LEAST_ONE)? {
        Some(0) => Err(ConfigError::BadEnv {
            name,
            value: "0".into(),
            message: AT_LEAST_ONE,
        }),
        n => Ok(n),
    }
}

/// A duration above zero in (fractional) seconds from the environment, or
/// `default` when it is not set.
fn above_zero(
    env: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match seconds(env, name)? {
        Some(duration) if duration.is_zero() => Err(ConfigError::BadEnv {
            name,
            value: env(name).unwrap_or_default(),
            message: "expected a number of seconds above 0",
        }),
        duration => Ok(duration.unwrap_or(default)),
    }
}

/// On or off from the environment, if set: `1 true on yes` or `0 false off no`.
fn switch(
    env: &impl Fn(&str) -> Option<String>,
    name: &'static str,
) -> Result<Option<bool>, ConfigError> {
    match env(name).filter(|s| !s.trim().is_empty()) {
        Some(value) => match value.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "on" | "yes" => Ok(Some(true)),
            "0" | "false" | "off" | "no" => Ok(Some(false)),
            _ => Err(ConfigError::BadEnv {
                name,
                value,
                message: "expected 1 or 0 (true/false, on/off, yes/no)",
            }),
        },
        None => Ok(None),
    }
}

/// A duration in (fractional) seconds from the environment, if set.
fn seconds(
    env: &impl Fn(&str) -> Option<String>,
    name: &'static str,
) -> Result<Option<Duration>, ConfigError> {
    match env(name).filter(|s| !s.trim().is_empty()) {
        Some(value) => match value.trim().parse::<f64>() {
            Ok(secs) if secs >= 0.0 && secs.is_finite() => Ok(Some(Duration::from_secs_f64(secs))),
            _ => Err(ConfigError::BadEnv {
                name,
                value,
                message: "expected a number of seconds",
            }),
        },
        None => Ok(None),
    }
}

/// A duration in (fractional) milliseconds from the environment.
fn milliseconds(
    env: &impl Fn(&str) -> Option<String>,
    name: &'static str,
) -> Result<Option<Duration>, ConfigError> {
    match env(name).filter(|s| !s.trim().is_empty()) {
        Some(value) => match value.trim().parse::<f64>() {
            Ok(ms) if ms >= 0.0 && ms.is_finite() => Ok(Some(Duration::from_secs_f64(ms / 1000.0))),
            _ => Err(ConfigError::BadEnv {
                name,
                value,
                message: "expected a number of milliseconds (0 or more)",
            }),
        },
        None => Ok(None),
    }
}

/// What `run:` or (the older spelling) `predict:` names; both at once is an
/// error, as Cog's own check of `cog.yaml` makes it. An empty value is unset.
fn entry_point(
    run: Option<String>,
    predict: Option<String>,
    model_dir: &Path,
) -> Result<Option<String>, ConfigError> {
    let set = |value: Option<String>| value.filter(|s| !s.trim().is_empty());
    match (set(run), set(predict)) {
        (Some(_), Some(_)) => Err(ConfigError::RunAndPredict(model_dir.to_path_buf())),
        (run, predict) => Ok(run.or(predict)),
    }
}

fn read_cog_yaml(model_dir: &Path) -> Result<CogYaml, ConfigError> {
    let path = model_dir.join("cog.yaml");
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim().is_empty() => Ok(CogYaml::default()),
        Ok(text) => serde_yaml::from_str(&text).map_err(|e| ConfigError::CogYaml {
            path,
            message: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CogYaml::default()),
        Err(e) => Err(ConfigError::CogYaml {
            path,
            message: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn model(yaml: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cog.yaml"), yaml).unwrap();
        dir
    }

    fn resolve(dir: &Path, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        resolve_flags(
            Flags {
                model_dir: dir.to_path_buf(),
                ..Flags::default()
            },
            env,
        )
    }

    fn resolve_flags(flags: Flags, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::resolve(flags, |k| env.get(k).cloned())
    }

    #[test]
    fn cog_yaml_names_the_predictor_and_concurrency() {
        let dir = model("build:\n  python_version: '3.11'\npredict: predict.py:Predictor\nconcurrency:\n  max: 4\n");
        let config = resolve(dir.path(), &[]).unwrap();
        assert_eq!(config.predictor_ref, "predict.py:Predictor");
        assert_eq!(config.slots_default, Some(4));
        assert_eq!(config.slots_override, None);
    }

    #[test]
    fn cog_yaml_run_names_the_entry_point_as_predict_does() {
        let dir = model("build:\n  python_version: '3.11'\nrun: \"run.py:Runner\"\n");
        let config = resolve(dir.path(), &[]).unwrap();
        assert_eq!(config.predictor_ref, "run.py:Runner");
        assert_eq!(config.mode, Mode::Predict);
        let empty_run = model("run: ''\npredict: predict.py:Predictor\n");
        let config = resolve(empty_run.path(), &[]).unwrap();
        assert_eq!(config.predictor_ref, "predict.py:Predictor");
    }

    #[test]
    fn cog_yaml_with_both_run_and_predict_is_refused() {
        let dir = model("run: run.py:Runner\npredict: predict.py:Predictor\n");
        let error = resolve(dir.path(), &[]).unwrap_err();
        assert!(matches!(error, ConfigError::RunAndPredict(_)), "{error}");
        assert!(error
            .to_string()
            .contains("'run' and 'predict' cannot both be set"));
    }

    #[test]
    fn without_an_entry_point_the_error_names_run() {
        let dir = model("build:\n  python_version: '3.11'\n");
        let error = resolve(dir.path(), &[]).unwrap_err();
        assert!(
            error.to_string().contains("`run: \"run.py:Runner\"`"),
            "{error}"
        );
    }

    #[test]
    fn batch_overrides_come_from_the_environment() {
        let dir = model("predict: predict.py:Predictor\n");
        let config = resolve(dir.path(), &[]).unwrap();
        assert_eq!(config.batch_override, BatchOverride::default());
        let config = resolve(
            dir.path(),
            &[("COG_MAX_BATCH_SIZE", "32"), ("COG_BATCH_WAIT_MS", "2.5")],
        )
        .unwrap();
        assert_eq!(config.batch_override.max_size, Some(32));
        assert_eq!(
            config.batch_override.max_wait,
            Some(Duration::from_micros(2500))
        );
        let config = resolve(dir.path(), &[("COG_BATCH_WAIT_MS", "0")]).unwrap();
        assert_eq!(config.batch_override.max_wait, Some(Duration::ZERO));
        for (name, value) in [
            ("COG_MAX_BATCH_SIZE", "0"),
            ("COG_MAX_BATCH_SIZE", "many"),
            ("COG_BATCH_WAIT_MS", "-1"),
            ("COG_BATCH_WAIT_MS", "soon"),
        ] {
            let error = resolve(dir.path(), &[(name, value)]).unwrap_err();
            assert!(error.to_string().contains(name), "{error}");
        }
    }

    #[test]
    fn the_environment_wins_over_cog_yaml() {
        let dir = model("predict: predict.py:Predictor\nconcurrency:\n  max: 4\n");
        let config = resolve(
            dir.path(),
            &[
                ("COG_PREDICT_TYPE_STUB", "run.py:Runner"),
                ("COG_MAX_CONCURRENCY", "2"),
            ],
        )
        .unwrap();
        assert_eq!(config.predictor_ref, "run.py:Runner");
        assert_eq!(config.slots_override, Some(2));
    }

    #[test]
    fn training_mode_runs_the_train_reference_and_its_variable_wins() {
        let dir = model("predict: predict.py:Predictor\ntrain: train.py:train\n");
        let train = |env: &[(&str, &str)]| {
            resolve_flags(
                Flags {
                    model_dir: dir.path().to_path_buf(),
                    train: true,
                    ..Flags::default()
                },
                env,
            )
        };
        let config = train(&[]).unwrap();
        assert_eq!(config.mode, Mode::Train);
        assert_eq!(config.predictor_ref, "train.py:train");
        assert_eq!(config.other_ref.as_deref(), Some("predict.py:Predictor"));
        let config = train(&[("COG_TRAIN_TYPE_STUB", "other.py:Trainer")]).unwrap();
        assert_eq!(config.predictor_ref, "other.py:Trainer");
        assert_eq!(resolve(dir.path(), &[]).unwrap().mode, Mode::Predict);

        let untrained = model("predict: predict.py:Predictor\n");
        let err = resolve_flags(
            Flags {
                model_dir: untrained.path().to_path_buf(),
                train: true,
                ..Flags::default()
            },
            &[],
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::NoTrainer(_)), "{err}");
    }

    #[test]
    fn the_other_mode_reference_follows_the_same_rule() {
        let dir = model("run: run.py:Runner\ntrain: train.py:train\n");
        let config = resolve(dir.path(), &[]).unwrap();
        assert_eq!(config.other_ref.as_deref(), Some("train.py:train"));
        // Its variable wins over cog.yaml, as the served one's does.
        let config = resolve(dir.path(), &[("COG_TRAIN_TYPE_STUB", " t.py:T ")]).unwrap();
        assert_eq!(config.other_ref.as_deref(), Some("t.py:T"));
        let config = resolve(dir.path(), &[("COG_TRAIN_TYPE_STUB", "  ")]).unwrap();
        assert_eq!(config.other_ref.as_deref(), Some("train.py:train"));
        // One function serving both modes is described once.
        let same = model("run: main.py:Model\ntrain: main.py:Model\n");
        assert_eq!(resolve(same.path(), &[]).unwrap().other_ref, None);
        let alone = model("run: run.py:Runner\ntrain: ''\n");
        assert_eq!(resolve(alone.path(), &[]).unwrap().other_ref, None);
        // Training with both entry points set describes `run:`.
        let both = model("run: run.py:Runner\npredict: p.py:P\ntrain: train.py:train\n");
        let config = resolve_flags(
            Flags {
                model_dir: both.path().to_path_buf(),
                train: true,
                ..Flags::default()
            },
            &[],
        )
        .unwrap();
        assert_eq!(config.other_ref.as_deref(), Some("run.py:Runner"));
    }

    #[test]
    fn bad_values_are_named() {
        let dir = model("predict: predict.py:Predictor\n");
        let err = resolve(dir.path(), &[("COG_MAX_CONCURRENCY", "lots")]).unwrap_err();
        assert!(err.to_string().contains("COG_MAX_CONCURRENCY"), "{err}");
        let err = resolve(dir.path(), &[("COG_SETUP_TIMEOUT", "-1")]).unwrap_err();
        assert!(err.to_string().contains("COG_SETUP_TIMEOUT"), "{err}");
        let empty = model("build: {}\n");
        assert!(matches!(
            resolve(empty.path(), &[]),
            Err(ConfigError::NoPredictor(_))
        ));
        let broken = model("predict: [unclosed\n");
        assert!(matches!(
            resolve(broken.path(), &[]),
            Err(ConfigError::CogYaml { .. })
        ));
    }

    #[test]
    fn the_healthcheck_timeout_defaults_to_five_seconds_and_must_be_positive() {
        let dir = model("predict: predict.py:Predictor\n");
        assert_eq!(
            resolve(dir.path(), &[]).unwrap().healthcheck_timeout,
            Duration::from_secs(5)
        );
        assert_eq!(
            resolve(dir.path(), &[("COG_HEALTHCHECK_TIMEOUT", "0.5")])
                .unwrap()
                .healthcheck_timeout,
            Duration::from_millis(500)
        );
        for bad in ["0", "-1", "soon"] {
            let err = resolve(dir.path(), &[("COG_HEALTHCHECK_TIMEOUT", bad)]).unwrap_err();
            assert!(err.to_string().contains("COG_HEALTHCHECK_TIMEOUT"), "{err}");
        }
    }

    #[test]
    fn the_stream_cap_defaults_to_1024_and_must_be_positive() {
        let dir = model("predict: predict.py:Predictor\n");
        assert_eq!(resolve(dir.path(), &[]).unwrap().max_streams, 1024);
        assert_eq!(
            resolve(dir.path(), &[("COG_MAX_STREAMS", "2")])
                .unwrap()
                .max_streams,
            2
        );
        for bad in ["0", "-1", "many"] {
            let err = resolve(dir.path(), &[("COG_MAX_STREAMS", bad)]).unwrap_err();
            assert!(err.to_string().contains("COG_MAX_STREAMS"), "{err}");
        }
    }

    #[test]
    fn the_playground_is_on_unless_turned_off() {
        let dir = model("predict: predict.py:Predictor\n");
        assert!(resolve(dir.path(), &[]).unwrap().playground);
        for (value, on) in [("0", false), ("off", false), ("FALSE", false), ("1", true)] {
            let config = resolve(dir.path(), &[("COG_PLAYGROUND", value)]).unwrap();
            assert_eq!(config.playground, on, "COG_PLAYGROUND={value}");
        }
        let err = resolve(dir.path(), &[("COG_PLAYGROUND", "maybe")]).unwrap_err();
        assert!(err.to_string().contains("COG_PLAYGROUND"), "{err}");
    }

    #[test]
    fn a_zero_setup_timeout_means_none() {
        let dir = model("predict: predict.py:Predictor\n");
        assert!(resolve(dir.path(), &[("COG_SETUP_TIMEOUT", "0")])
            .unwrap()
            .setup_timeout
            .is_none());
        assert_eq!(
            resolve(dir.path(), &[("COG_SETUP_TIMEOUT", "2.5")])
                .unwrap()
                .setup_timeout,
            Some(Duration::from_millis(2500))
        );
    }

    #[test]
    fn a_queue_url_turns_queue_mode_on_with_cogs_defaults() {
        let dir = model("predict: predict.py:Predictor\n");
        assert_eq!(resolve(dir.path(), &[]).unwrap().queue, None);
        let flags = |url: &str| Flags {
            model_dir: dir.path().to_path_buf(),
            queue: QueueFlags {
                url: Some(url.into()),
                ..QueueFlags::default()
            },
            ..Flags::default()
        };
        let queue = resolve_flags(flags("redis://h:6379/2"), &[])
            .unwrap()
            .queue
            .unwrap();
        assert_eq!(queue.stream, "cog:predictions");
        assert_eq!(queue.group, "cog:predictions");
        assert!(queue
            .consumer
            .ends_with(&format!("-{}", std::process::id())));
        assert_eq!(queue.lease, Duration::from_secs(30));
        assert_eq!(queue.max_deliveries, 3);
        assert_eq!(queue.max_failures, None);
        let mut named = flags("redis://h");
        named.queue.stream = Some("jobs".into());
        let queue = resolve_flags(
            named,
            &[
                ("COG_QUEUE_LEASE", "2.5"),
                ("COG_QUEUE_MAX_DELIVERIES", "5"),
                ("COG_QUEUE_MAX_FAILURES", "10"),
            ],
        )
        .unwrap()
        .queue
        .unwrap();
        assert_eq!(
            (queue.stream.as_str(), queue.group.as_str()),
            ("jobs", "jobs")
        );
        assert_eq!(queue.lease, Duration::from_millis(2500));
        assert_eq!(queue.max_deliveries, 5);
        assert_eq!(queue.max_failures, Some(10));
        let refused = resolve_flags(flags("http://h"), &[]).unwrap_err();
        assert!(matches!(refused, ConfigError::BadQueueUrl(_)), "{refused}");
        let refused = resolve_flags(flags("redis://h"), &[("COG_QUEUE_LEASE", "0.1")]);
        assert!(refused.is_err());
    }
}
