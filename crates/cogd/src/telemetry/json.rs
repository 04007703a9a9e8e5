//! The JSON log line: one object per event, with its time, level, the
//! prediction of its log context (`context.rs`), the fields of every span the
//! event is in (outermost first, so a nearer span or the event itself wins a
//! clash), the event's own fields, and its target, all at the top level. A
//! line logged anywhere while a prediction is handled thus has
//! `prediction_id` beside `message`, where log pipelines look for it.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::io::Write as _;

use chrono::{Datelike, Timelike, Utc};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats events as flat JSON objects. Span fields must be recorded with
/// `JsonFields`, so they can be read back as JSON.
///
/// The line is written straight into one reused buffer: a key appears once,
/// where it first appears, with the value of the nearest source (the event,
/// then the innermost span). `timestamp`, `level` and `target` are the line's
/// own and always the event's.
pub(super) struct FlatJson;

/// The key that names the prediction a line is about.
const PREDICTION_ID: &str = "prediction_id";

/// The keys every line has, which fields do not override.
const OWN_KEYS: [&str; 3] = ["timestamp", "level", "target"];

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        thread_local! {
            static SCRATCH: RefCell<(Vec<u8>, Vec<u8>)> = const { RefCell::new((Vec::new(), Vec::new())) };
        }
        let metadata = event.metadata();
        // The spans' fields, outermost first, as the JSON text they were
        // recorded in; read back without copying their values.
        let scope: Vec<_> = ctx
            .event_scope()
            .into_iter()
            .flat_map(|s| s.from_root())
            .collect();
        let extensions: Vec<_> = scope.iter().map(|span| span.extensions()).collect();
        let spans: Vec<Entries<'_>> = extensions
            .iter()
            .filter_map(|e| e.get::<FormattedFields<N>>())
            .filter_map(|fields| serde_json::from_str(fields.as_str()).ok())
            .collect();
        SCRATCH.with(|scratch| {
            let (line, values) = &mut *scratch.borrow_mut();
            line.clear();
            values.clear();
            // The event's own fields: names, and their values' text in `values`.
            let mut fields = Fields {
                names: Vec::new(),
                values,
            };
            event.record(&mut fields);
            let Fields { names, values } = fields;
            super::context::with_current(|prediction| {
                write_line(line, metadata, prediction, &spans, &names, values)
            })
            .map_err(|_| fmt::Error)?;
            let text = std::str::from_utf8(line).map_err(|_| fmt::Error)?;
            writer.write_str(text)
        })
    }
}

/// Writes the whole line, newline included, into `line`.
fn write_line(
    line: &mut Vec<u8>,
    metadata: &tracing::Metadata<'_>,
    prediction: Option<&str>,
    spans: &[Entries<'_>],
    names: &[(&'static str, std::ops::Range<usize>)],
    values: &[u8],
) -> std::io::Result<()> {
    line.extend_from_slice(b"{\"timestamp\":\"");
    write_timestamp(line);
    line.extend_from_slice(b"\",\"level\":\"");
    line.extend_from_slice(metadata.level().as_str().as_bytes());
    line.push(b'"');
    // Each key once, where it first appears, with its nearest value.
    let mut written: Vec<&str> = Vec::new();
    let nearest = |key: &str| -> &[u8] {
        if let Some((_, range)) = names.iter().find(|(name, _)| *name == key) {
            return &values[range.clone()];
        }
        spans
            .iter()
            .rev()
            .find_map(|span| span.0.iter().find(|(k, _)| k == key))
            .map_or(b"null", |(_, value)| value.get().as_bytes())
    };
    let keys = spans
        .iter()
        .flat_map(|span| span.0.iter().map(|(key, _)| &**key))
        .chain(names.iter().map(|(name, _)| *name));
    // The prediction the line is about, unless a span or the line says it.
    if let Some(id) = prediction {
        if keys.clone().all(|key| key != PREDICTION_ID) {
            line.extend_from_slice(b",\"prediction_id\":");
            crate::json::write_str(line, id)?;
        }
    }
    for key in keys {
        if OWN_KEYS.contains(&key) || written.contains(&key) {
            continue;
        }
        write_entry(line, key, nearest(key))?;
        written.push(key);
    }
    line.extend_from_slice(b",\"target\":");
    crate::json::write_str(line, metadata.target())?;
    line.extend_from_slice(b"}\n");
    Ok(())
}

/// Writes `,"key":value`, the value already JSON text.
fn write_entry(line: &mut Vec<u8>, key: &str, value: &[u8]) -> std::io::Result<()> {
    line.push(b',');
    crate::json::write_str(line, key)?;
    line.push(b':');
    line.extend_from_slice(value);
    Ok(())
}

/// The time now as RFC 3339 in UTC to the microsecond: `2026-01-02T03:04:05.123456Z`.
fn write_timestamp(line: &mut Vec<u8>) {
    let now = Utc::now();
    let _ = write!(
        line,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        now.year(),
        now.month(),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        // A leap second's nanoseconds run past a second: still six digits.
        (now.nanosecond() % 1_000_000_000) / 1000,
    );
}

/// A JSON object's entries in order, values left as text.
struct Entries<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Entries<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> Visitor<'de> for Object {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries<'de>, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(Object)
    }
}

/// Collects an event's fields: each name with the range of its value's JSON
/// text in `values`. A name recorded twice keeps its last value.
struct Fields<'a> {
    names: Vec<(&'static str, std::ops::Range<usize>)>,
    values: &'a mut Vec<u8>,
}

impl Fields<'_> {
    fn record(&mut self, field: &Field, write: impl FnOnce(&mut Vec<u8>)) {
        let start = self.values.len();
        write(self.values);
        let range = start..self.values.len();
        match self
            .names
            .iter_mut()
            .find(|(name, _)| *name == field.name())
        {
            Some((_, old)) => *old = range,
            None => self.names.push((field.name(), range)),
        }
    }

    fn record_text(&mut self, field: &Field, text: &str) {
        self.record(field, |values| {
            let _ = crate::json::write_str(values, text);
        });
    }
}

impl Visit for Fields<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.record(field, |values| {
            // As serde_json writes a number; JSON has no NaN or infinity.
            let _ = serde_json::to_writer(values, &serde_json::Value::from(value));
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record(field, |values| {
            let _ = write!(values, "{value}");
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record(field, |values| {
            let _ = write!(values, "{value}");
        });
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.record(field, |values| {
            values.extend_from_slice(if value { b"true" } else { b"false" });
        });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_text(field, value);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_text(field, &value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record_text(field, &format!("{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::format::JsonFields;
    use tracing_subscriber::fmt::MakeWriter;

    /// Collects what the formatter writes.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    /// The lines written while `log` runs, each as its keys and values in order.
    fn lines_of(log: impl FnOnce()) -> Vec<Vec<(String, Value)>> {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .with_writer(buffer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert!(text.ends_with('\n'));
        text.lines()
            .map(|l| {
                let entries: Entries<'_> = serde_json::from_str(l).unwrap();
                entries
                    .0
                    .into_iter()
                    .map(|(k, v)| (k.into_owned(), serde_json::from_str(v.get()).unwrap()))
                    .collect()
            })
            .collect()
    }

    fn get<'a>(line: &'a [(String, Value)], key: &str) -> &'a Value {
        let found: Vec<_> = line.iter().filter(|(k, _)| k == key).collect();
        assert_eq!(found.len(), 1, "{key} once in {line:?}");
        &found[0].1
    }

    #[test]
    fn lines_carry_the_fields_of_the_spans_they_are_in() {
        let lines = lines_of(|| {
            let span = tracing::info_span!("prediction", prediction_id = tracing::field::Empty);
            span.record("prediction_id", "p-1");
            let _entered = span.enter();
            tracing::info_span!("inner", slot = 2).in_scope(|| {
                tracing::info!(status = "succeeded", seconds = 0.5, "prediction finished");
            });
            tracing::warn!(prediction_id = "p-2", "the event's own field wins");
        });
        assert_eq!(lines.len(), 2);
        let first = &lines[0];
        assert_eq!(get(first, "prediction_id"), "p-1");
        assert_eq!(get(first, "slot"), 2);
        assert_eq!(get(first, "status"), "succeeded");
        assert_eq!(get(first, "seconds"), 0.5);
        assert_eq!(get(first, "message"), "prediction finished");
        assert_eq!(get(first, "level"), "INFO");
        assert_eq!(get(first, "target"), module_path!());
        let keys: Vec<&str> = first.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "timestamp",
                "level",
                "prediction_id",
                "slot",
                "message",
                "status",
                "seconds",
                "target"
            ]
        );
        let second = &lines[1];
        assert_eq!(get(second, "prediction_id"), "p-2");
        assert_eq!(get(second, "level"), "WARN");
    }

    #[test]
    fn a_key_appears_once_with_its_nearest_value() {
        let lines = lines_of(|| {
            let outer = tracing::info_span!("outer", id = "outer", depth = 1, level = "span's");
            let _outer = outer.enter();
            let inner = tracing::info_span!("inner", depth = 2, note = "a \"quoted\"\nline");
            let _inner = inner.enter();
            tracing::info!(id = "event", target = "event's", "message with \u{e9}");
        });
        let line = &lines[0];
        let keys: Vec<&str> = line.iter().map(|(k, _)| k.as_str()).collect();
        // A span's fields come in the order `JsonFields` keeps them (by name).
        assert_eq!(
            keys,
            [
                "timestamp",
                "level",
                "depth",
                "id",
                "note",
                "message",
                "target"
            ]
        );
        assert_eq!(get(line, "id"), "event");
        assert_eq!(get(line, "depth"), 2);
        assert_eq!(get(line, "note"), "a \"quoted\"\nline");
        assert_eq!(get(line, "message"), "message with \u{e9}");
        // The line's own keys are not fields'.
        assert_eq!(get(line, "level"), "INFO");
        assert_eq!(get(line, "target"), module_path!());
    }

    #[test]
    fn the_timestamp_is_rfc3339_utc_to_the_microsecond() {
        let lines =
            lines_of(|| tracing::info!(n = -3i64, big = u64::MAX, ok = true, nan = f64::NAN, "t"));
        let line = &lines[0];
        let stamp = get(line, "timestamp").as_str().unwrap();
        let parsed = chrono::DateTime::parse_from_rfc3339(stamp).unwrap();
        assert_eq!(stamp.len(), "2026-01-02T03:04:05.123456Z".len(), "{stamp}");
        assert!(stamp.ends_with('Z'));
        assert!(
            (Utc::now() - parsed.with_timezone(&Utc))
                .num_seconds()
                .abs()
                < 60
        );
        assert_eq!(get(line, "n"), -3);
        assert_eq!(get(line, "big"), u64::MAX);
        assert_eq!(get(line, "ok"), true);
        assert_eq!(get(line, "nan"), &Value::Null);
    }

    #[test]
    fn lines_name_the_prediction_of_their_context_unless_they_say_another() {
        let lines = lines_of(|| {
            tracing::info!("before");
            let _logged = crate::telemetry::Entered::new(&std::sync::Arc::from("p-ctx"));
            tracing::info!(status = "ok", "inside");
            tracing::info_span!("prediction", prediction_id = "p-span")
                .in_scope(|| tracing::info!("a span says another"));
            tracing::info!(prediction_id = "p-event", "the line says another");
        });
        assert!(lines[0].iter().all(|(k, _)| k != "prediction_id"));
        let keys: Vec<&str> = lines[1].iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "timestamp",
                "level",
                "prediction_id",
                "message",
                "status",
                "target"
            ]
        );
        assert_eq!(get(&lines[1], "prediction_id"), "p-ctx");
        assert_eq!(get(&lines[2], "prediction_id"), "p-span");
        assert_eq!(get(&lines[3], "prediction_id"), "p-event");
    }
}
