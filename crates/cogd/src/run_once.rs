//! `cogd predict`: one prediction (or training) without an HTTP server.
//!
//! It starts the worker the way the server does ([`crate::server::start_model`])
//! and hands the run to the same service, so the input is validated, files are
//! fetched, and the run is carried out exactly as over HTTP. Around that, this
//! module does what a terminal needs: it turns `-i NAME=VALUE` and `--json`
//! into an input object typed by the model's schema, shows setup and run logs
//! on stderr as they come, and writes file outputs (data URIs) to files in the
//! current directory, printing their paths.
//!
//! Exit codes: 0 when the run succeeded; 1 when setup or the run failed (or
//! was interrupted); 2 for bad usage or an input the model's schema refuses.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::config::Config;
use crate::files::data_uri::DataUri;
use crate::ipc::Mode;
use crate::prediction::{Prediction, Status};
use crate::schema::{InputError, PathSegment};
use crate::service::{Admission, AdmissionError, Health, NewPrediction};

/// How often a setup that takes a while says it is still running.
const SETUP_PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// How long the worker gets to exit once the run is over.
const WORKER_EXIT_GRACE: Duration = Duration::from_secs(5);

/// What the command line gave for the input.
#[derive(Debug, Clone, Default)]
pub struct InputArgs {
    /// `-i NAME=VALUE` / `-i NAME=@FILE`, in order.
    pub inputs: Vec<String>,
    /// `--json '{…}'` or `--json @FILE`: a whole input object.
    pub json: Option<String>,
}

/// Why the command stops early.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// Bad usage or an invalid input: exit 2.
    #[error("{0}")]
    Usage(String),
    /// Setup or the run failed: exit 1.
    #[error("{0}")]
    Failed(String),
}

impl Failure {
    fn code(&self) -> i32 {
        match self {
            Self::Usage(_) => 2,
            Self::Failed(_) => 1,
        }
    }
}

/// One `-i` value before the schema says what it means.
#[derive(Debug, Clone, PartialEq)]
enum Given {
    /// `NAME=VALUE`.
    Text(String),
    /// `NAME=@FILE`: a file input, or the text of a file.
    File(PathBuf),
}

/// Runs the model once with `args` and prints the result; returns the exit code.
pub fn run(runtime: &tokio::runtime::Runtime, config: Config, args: InputArgs) -> i32 {
    match runtime.block_on(run_async(config, args)) {
        Ok(()) => 0,
        Err(failure) => {
            eprintln!("cogd predict: {failure}");
            failure.code()
        }
    }
}

async fn run_async(config: Config, args: InputArgs) -> Result<(), Failure> {
    // Everything that can be checked without the model is checked first.
    let given = args
        .inputs
        .iter()
        .map(|arg| parse_input_arg(arg))
        .collect::<Result<Vec<_>, _>>()?;
    let base = match &args.json {
        Some(json) => parse_json_arg(json)?,
        None => Map::new(),
    };
    let temp = tempfile::Builder::new()
        .prefix("cogd-")
        .tempdir()
        .map_err(|e| Failure::Failed(format!("cannot create temp space: {e}")))?;
    let predictions_dir = temp.path().join("predictions");
    std::fs::create_dir_all(&predictions_dir)
        .map_err(|e| Failure::Failed(format!("cannot create temp space: {e}")))?;
    let (supervisor, service) =
        crate::server::start_model(&config, temp.path(), predictions_dir, None);
    let outcome = async {
        wait_for_setup(&config, &supervisor, &service).await?;
        let schema = supervisor.schema();
        let component = crate::schema::input_component(config.mode);
        let mut input = base;
        for (name, value) in given {
            add_input(&mut input, &schema, component, name, value)?;
        }
        let output = predict(&service, input).await?;
        print_output(&schema, config.mode, output)
    }
    .await;
    supervisor.shutdown(WORKER_EXIT_GRACE).await;
    outcome
}

/// Shows setup's logs on stderr as they come, with a line when it starts and
/// ends, until the model takes work or cannot.
async fn wait_for_setup(
    config: &Config,
    supervisor: &crate::supervisor::Supervisor,
    service: &crate::service::Service,
) -> Result<(), Failure> {
    let what = match config.mode {
        Mode::Predict => "predictor",
        Mode::Train => "training function",
    };
    eprintln!(
        "cogd: setting up the {what} {} in {}…",
        config.predictor_ref,
        config.model_dir.display()
    );
    let started = Instant::now();
    let mut logs = supervisor.subscribe_setup_logs();
    let mut shown = 0;
    let settled = service.settled();
    tokio::pin!(settled);
    // A long, quiet setup (weights loading) still shows that it is alive.
    let mut progress = tokio::time::interval_at(
        tokio::time::Instant::now() + SETUP_PROGRESS_EVERY,
        SETUP_PROGRESS_EVERY,
    );
    let health = loop {
        shown = show_new(&supervisor.setup_record().logs, shown);
        tokio::select! {
            health = &mut settled => break health,
            changed = logs.changed() => if changed.is_err() { break service.health() },
            _ = progress.tick() => eprintln!(
                "cogd: setup still running ({:.0} s)…",
                started.elapsed().as_secs_f64()
            ),
        }
    };
    show_new(&supervisor.setup_record().logs, shown);
    match health {
        Health::Ready | Health::Busy => {
            eprintln!(
                "cogd: setup finished in {:.1} s; running…",
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Health::SetupFailed | Health::Defunct | Health::Starting => Err(Failure::Failed(
            "setup failed (its logs are above)".to_string(),
        )),
    }
}

/// Writes what `logs` holds past `shown` bytes to stderr; returns the new mark.
/// A shorter text (a restarted worker's setup) is shown from its start.
fn show_new(logs: &str, shown: usize) -> usize {
    show(unread(logs, shown));
    logs.len()
}

/// What `logs` holds past `read` bytes: all of it when it is shorter (a
/// restarted worker's setup) or `read` is not where a character starts.
fn unread(logs: &str, read: usize) -> &str {
    logs.get(read..).unwrap_or(logs)
}

/// Writes `text` to stderr at once.
fn show(text: &str) {
    if !text.is_empty() {
        let mut stderr = std::io::stderr().lock();
        let _ = stderr.write_all(text.as_bytes());
        let _ = stderr.flush();
    }
}

/// The latest change to a prediction: whether it has finished, and the log
/// text added since `read` bytes were read, which moves `read` past it. Only
/// that text is copied, so a long, chatty run's logs are read once in all
/// rather than whole at each change; and it is copied out, so writing it to
/// a slow terminal never holds the state's lock (and the run) up.
fn read_change(changes: &mut watch::Receiver<Prediction>, read: &mut usize) -> (bool, String) {
    let state = changes.borrow_and_update();
    let new = unread(&state.logs, *read).to_owned();
    *read = state.logs.len();
    (state.status.is_terminal(), new)
}

/// Runs the prediction, showing its logs as they come; Ctrl-C cancels it.
/// Returns the output of a run that succeeded.
async fn predict(
    service: &crate::service::Service,
    input: Map<String, Value>,
) -> Result<Value, Failure> {
    let admission = service.create(NewPrediction {
        input,
        ..NewPrediction::default()
    });
    let handle = match admission {
        Ok(Admission::Created(handle) | Admission::Existing(handle)) => handle,
        Err(AdmissionError::Invalid(errors)) => {
            let lines: Vec<String> = errors
                .iter()
                .map(|e| format!("  {}: {} ({})", location(e), e.msg, e.kind))
                .collect();
            return Err(Failure::Usage(format!(
                "the input is invalid:\n{}",
                lines.join("\n")
            )));
        }
        Err(e) => return Err(Failure::Failed(e.to_string())),
    };
    let mut changes = handle.subscribe();
    let mut shown = 0;
    let mut interrupted = false;
    loop {
        let (terminal, logs) = read_change(&mut changes, &mut shown);
        show(&logs);
        if terminal {
            break;
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { break },
            _ = tokio::signal::ctrl_c(), if !interrupted => {
                eprintln!("cogd: interrupted; cancelling the run");
                interrupted = true;
                handle.cancel();
            }
        }
    }
    let prediction = handle.finished().await;
    match prediction.status {
        Status::Succeeded => Ok(prediction
            .output
            .and_then(|output| serde_json::from_str(output.get()).ok())
            .unwrap_or(Value::Null)),
        Status::Canceled => Err(Failure::Failed("the run was canceled".into())),
        // `finished` returns a terminal state: failed.
        Status::Failed | Status::Starting | Status::Processing => Err(Failure::Failed(format!(
            "the run failed: {}",
            prediction.error.as_deref().unwrap_or("no error given")
        ))),
    }
}

/// Where an input problem is: `steps`, `tags[1]`, `point.x`.
fn location(error: &InputError) -> String {
    let mut loc = error.field.clone();
    for segment in &error.path {
        match segment {
            PathSegment::Key(key) => {
                loc.push('.');
                loc.push_str(key);
            }
            PathSegment::Index(index) => loc.push_str(&format!("[{index}]")),
        }
    }
    loc
}

/// Splits `NAME=VALUE`; a value starting with `@` names a file.
fn parse_input_arg(arg: &str) -> Result<(String, Given), Failure> {
    let Some((name, value)) = arg.split_once('=').filter(|(name, _)| !name.is_empty()) else {
        return Err(Failure::Usage(format!(
            "-i {arg:?}: expected NAME=VALUE (or NAME=@FILE)"
        )));
    };
    let given = match value.strip_prefix('@') {
        Some(path) => {
            let path = PathBuf::from(path);
            if !path.is_file() {
                return Err(Failure::Usage(format!(
                    "-i {name}=@{}: no such file",
                    path.display()
                )));
            }
            Given::File(path)
        }
        None => Given::Text(value.to_string()),
    };
    Ok((name.to_string(), given))
}

/// `--json '{…}'` or `--json @FILE`: a JSON object.
fn parse_json_arg(arg: &str) -> Result<Map<String, Value>, Failure> {
    let text = match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| Failure::Usage(format!("--json @{path}: cannot read it: {e}")))?,
        None => arg.to_string(),
    };
    match serde_json::from_str(&text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Failure::Usage(
            "--json: the input must be a JSON object".into(),
        )),
        Err(e) => Err(Failure::Usage(format!("--json: not valid JSON: {e}"))),
    }
}

/// What the schema says an input holds, as far as `-i` needs to know.
#[derive(Debug, Default, Clone, PartialEq)]
struct Shape {
    /// The JSON type (`string`, `integer`, …), when there is one.
    kind: Option<String>,
    /// A file input (`format: uri`).
    file: bool,
    /// A list's items.
    items: Option<Box<Shape>>,
}

/// The shape of `schema`, following `$ref` and a one-element `allOf` (how
/// Cog refers to an enum of choices).
fn shape(document: &Value, schema: &Value) -> Shape {
    let schema = resolve(document, schema);
    Shape {
        kind: schema.get("type").and_then(Value::as_str).map(String::from),
        file: schema.get("format").and_then(Value::as_str) == Some("uri"),
        items: schema
            .get("items")
            .map(|items| Box::new(shape(document, items))),
    }
}

fn resolve<'a>(document: &'a Value, schema: &'a Value) -> &'a Value {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let pointer = reference.trim_start_matches('#');
        return document.pointer(pointer).unwrap_or(schema);
    }
    match schema.get("allOf").and_then(Value::as_array) {
        Some(parts) if parts.len() == 1 => resolve(document, &parts[0]),
        _ => schema,
    }
}

/// Adds one `-i` to `input`, typed by the schema's `component`: numbers,
/// booleans, lists and objects from their text, files as data URIs, the text
/// of a file for the rest. A value that does not convert stays text, so the
/// schema's own check reports it. Repeating a list input adds items.
fn add_input(
    input: &mut Map<String, Value>,
    document: &Value,
    component: &str,
    name: String,
    given: Given,
) -> Result<(), Failure> {
    let property = document
        .pointer(&format!("/components/schemas/{component}/properties"))
        .and_then(|p| p.get(&name));
    let shape = property.map_or_else(Shape::default, |p| shape(document, p));
    let item_shape = shape.items.as_deref().cloned().unwrap_or_default();
    let is_list = shape.kind.as_deref() == Some("array");
    let value = match given {
        Given::File(path) if shape.file || (is_list && item_shape.file) => data_uri(&path)?,
        Given::File(path) => {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                Failure::Usage(format!(
                    "-i {name}=@{}: cannot read it as text: {e}",
                    path.display()
                ))
            })?;
            typed(&text, &shape)
        }
        Given::Text(text) => typed(&text, &shape),
    };
    if is_list && !value.is_array() {
        match input
            .entry(name)
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            Value::Array(items) => items.push(value),
            other => *other = Value::Array(vec![value]),
        }
    } else {
        input.insert(name, value);
    }
    Ok(())
}

/// `text` as the JSON value the shape asks for, or as text when it does not
/// convert (or the shape is not known).
fn typed(text: &str, shape: &Shape) -> Value {
    let parsed = || serde_json::from_str::<Value>(text.trim()).ok();
    let string = || Value::String(text.to_string());
    match shape.kind.as_deref() {
        Some("string") => string(),
        Some("integer" | "number") => parsed().filter(Value::is_number).unwrap_or_else(string),
        Some("boolean") => match text.trim().to_ascii_lowercase().as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => string(),
        },
        Some("array") => match parsed().filter(Value::is_array) {
            Some(list) => list,
            // One item; repeating the input adds more.
            None => typed(text, shape.items.as_deref().unwrap_or(&Shape::default())),
        },
        Some("object") => parsed().filter(Value::is_object).unwrap_or_else(string),
        _ => parsed().unwrap_or_else(string),
    }
}

/// A local file as a data URI, which the server's file step turns back into
/// a file for the run.
fn data_uri(path: &Path) -> Result<Value, Failure> {
    let bytes = std::fs::read(path)
        .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    Ok(Value::String(format!(
        "data:{};base64,{encoded}",
        crate::files::media_type(path)
    )))
}

/// Prints the output on stdout: text as it is, a file as the path it was
/// written to, anything else as JSON (with files replaced by their paths).
fn print_output(document: &Value, mode: Mode, output: Value) -> Result<(), Failure> {
    let component = match mode {
        Mode::Predict => "Output",
        Mode::Train => "TrainingOutput",
    };
    let concatenate = document
        .pointer(&format!(
            "/components/schemas/{component}/x-cog-array-display"
        ))
        .and_then(Value::as_str)
        == Some("concatenate");
    let output = save_files(
        output,
        "output",
        &std::env::current_dir().unwrap_or_default(),
    )?;
    let text = match output {
        Value::String(text) => text,
        Value::Array(items) if concatenate && items.iter().all(Value::is_string) => {
            items.iter().filter_map(Value::as_str).collect()
        }
        other => serde_json::to_string_pretty(&other).unwrap_or_default(),
    };
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
        // The reader stopped early (`cogd predict … | head`): it has what
        // it wanted, and that is no failure.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Failure::Failed(format!("cannot write the output: {e}")))
        }
        _ => Ok(()),
    }
}

/// Writes every `data:` URI in `value` to a file in `dir`, named after where
/// it sits (`output.png`, `output.1.png`, `weights.bin`), never over an
/// existing file; returns `value` with each URI replaced by the file's path.
fn save_files(value: Value, name: &str, dir: &Path) -> Result<Value, Failure> {
    Ok(match value {
        Value::String(text) if text.starts_with("data:") => {
            Value::String(save_data_uri(&text, name, dir)?.display().to_string())
        }
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| save_files(item, &format!("{name}.{i}"), dir))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(key, item)| {
                    let stem = crate::files::sanitize(&key);
                    let stem = if stem.is_empty() {
                        name.to_string()
                    } else {
                        stem
                    };
                    save_files(item, &stem, dir).map(|v| (key, v))
                })
                .collect::<Result<_, _>>()?,
        ),
        other => other,
    })
}

fn save_data_uri(uri: &str, name: &str, dir: &Path) -> Result<PathBuf, Failure> {
    let failed =
        |why: String| Failure::Failed(format!("cannot save the output file {name}: {why}"));
    let DataUri { media_type, bytes } = DataUri::decode(uri).map_err(failed)?;
    let ext = crate::files::extension(&media_type);
    let mut path = dir.join(format!("{name}{ext}"));
    let mut n = 1;
    while path.exists() {
        path = dir.join(format!("{name}-{n}{ext}"));
        n += 1;
    }
    std::fs::write(&path, bytes).map_err(|e| failed(e.to_string()))?;
    Ok(path
        .strip_prefix(dir)
        .map(Path::to_path_buf)
        .unwrap_or(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prediction::Outcome;
    use serde_json::json;

    fn document() -> Value {
        json!({"components": {"schemas": {
            "Input": {"properties": {
                "name": {"type": "string"},
                "steps": {"type": "integer"},
                "scale": {"type": "number"},
                "loud": {"type": "boolean"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "image": {"type": "string", "format": "uri"},
                "images": {"type": "array", "items": {"type": "string", "format": "uri"}},
                "mode": {"allOf": [{"$ref": "#/components/schemas/mode"}]},
            }},
            "mode": {"type": "integer", "enum": [1, 2]},
        }}})
    }

    fn build(args: &[&str]) -> Result<Map<String, Value>, Failure> {
        let document = document();
        let mut input = Map::new();
        for arg in args {
            let (name, given) = parse_input_arg(arg)?;
            add_input(&mut input, &document, "Input", name, given)?;
        }
        Ok(input)
    }

    #[test]
    fn values_are_typed_by_the_schema() {
        let input = build(&[
            "name=007",
            "steps=3",
            "scale=0.5",
            "loud=true",
            "mode=2",
            "tags=[\"a\",\"b\"]",
            "extra={\"k\":1}",
        ])
        .unwrap();
        assert_eq!(
            Value::Object(input),
            json!({"name": "007", "steps": 3, "scale": 0.5, "loud": true, "mode": 2,
                   "tags": ["a", "b"], "extra": {"k": 1}})
        );
    }

    #[test]
    fn a_value_that_does_not_convert_stays_text_for_the_schema_to_refuse() {
        let input = build(&["steps=three", "loud=maybe"]).unwrap();
        assert_eq!(
            Value::Object(input),
            json!({"steps": "three", "loud": "maybe"})
        );
    }

    #[test]
    fn repeating_a_list_input_adds_items() {
        let input = build(&["tags=a", "tags=b"]).unwrap();
        assert_eq!(input["tags"], json!(["a", "b"]));
    }

    #[test]
    fn files_become_data_uris_for_file_inputs_and_text_for_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("note.txt");
        std::fs::write(&path, "hi there").unwrap();
        let at = format!("@{}", path.display());
        let input = build(&[
            &format!("image={at}"),
            &format!("images={at}"),
            &format!("name={at}"),
        ])
        .unwrap();
        let uri = "data:text/plain;base64,aGkgdGhlcmU=";
        assert_eq!(input["image"], uri);
        assert_eq!(input["images"], json!([uri]));
        assert_eq!(input["name"], "hi there");
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        assert!(matches!(parse_input_arg("novalue"), Err(Failure::Usage(_))));
        assert!(matches!(parse_input_arg("=x"), Err(Failure::Usage(_))));
        assert!(matches!(
            parse_input_arg("f=@/no/such/file"),
            Err(Failure::Usage(_))
        ));
        assert!(matches!(parse_json_arg("[1]"), Err(Failure::Usage(_))));
        assert!(matches!(parse_json_arg("{"), Err(Failure::Usage(_))));
        assert_eq!(parse_json_arg(r#"{"a":1}"#).unwrap()["a"], 1);
    }

    #[test]
    fn a_chatty_runs_logs_are_read_once() {
        use crate::prediction::PredictionHandle;
        let handle = PredictionHandle::new(Prediction::new("p".into(), &json!({}), None));
        handle.update(|p| {
            p.start();
            true
        });
        let mut changes = handle.subscribe();
        let (mut read, mut shown, mut copied) = (0, String::new(), 0);
        for i in 0..20_000 {
            let line = format!("step {i}: {}\n", "é".repeat(i % 7));
            handle.update(|p| p.append_log(&line).is_some());
            // Some changes are read at once, some after a few more.
            if i % 3 != 1 {
                let (terminal, new) = read_change(&mut changes, &mut read);
                assert!(!terminal);
                copied += new.len();
                shown.push_str(&new);
            }
        }
        handle.update(|p| p.finish(Outcome::Canceled));
        let (terminal, new) = read_change(&mut changes, &mut read);
        assert!(terminal);
        copied += new.len();
        shown.push_str(&new);
        let logs = handle.snapshot().logs;
        assert!(logs.len() > 200_000);
        assert_eq!(shown, logs, "every line is shown, in order");
        assert_eq!(copied, logs.len(), "each byte is read once");
        let (_, nothing) = read_change(&mut changes, &mut read);
        assert_eq!(nothing, "", "nothing is shown twice");
    }

    #[test]
    fn setup_logs_that_start_again_are_shown_from_their_start() {
        assert_eq!(unread("abc", 1), "bc");
        assert_eq!(unread("ab", 5), "ab");
        assert_eq!(unread("é", 1), "é");
    }

    #[test]
    fn file_outputs_are_written_without_overwriting() {
        let dir = tempfile::tempdir().unwrap();
        let output = json!({"weights": "data:text/plain;base64,aGk=", "steps": 2,
                            "more": ["data:application/octet-stream;base64,AAE="]});
        let saved = save_files(output.clone(), "output", dir.path()).unwrap();
        assert_eq!(saved["weights"], "weights.txt");
        assert_eq!(saved["more"][0], "more.0");
        assert_eq!(
            std::fs::read(dir.path().join("weights.txt")).unwrap(),
            b"hi"
        );
        let again = save_files(output, "output", dir.path()).unwrap();
        assert_eq!(again["weights"], "weights-1.txt");
    }
}
