//! Custom metrics: what a metric name may be, the three ways a value is
//! recorded, and how one record changes a metrics document.
//!
//! This is the one implementation of those rules, and both sides run it. In
//! the worker, every `record_metric` (and `scope.metrics[...] = ...`, `del`)
//! is applied to the run's own copy first, so a bad name or a type change
//! raises in the model's code at the line that did it, and `scope.metrics`
//! can be read back; then the record itself (name, value, mode) travels as
//! `metric` on the slot socket. The server applies the same record to the
//! prediction's `metrics` with [`apply`], so the two copies cannot drift:
//! same code, same records, same order. Sending the record rather than the
//! resulting value keeps each message small (an `append` sends one item, not
//! the whole list).
//!
//! The rules (SPEC §2): a name is up to 4 dot-separated segments and 128
//! characters; each segment starts with a letter, ends with a letter or digit
//! and holds letters, digits and single underscores; dots nest
//! (`timing.inference` -> `{"timing": {"inference": …}}`); `predict_time` and
//! everything under `cog.` are the server's. A bad name is refused with the
//! message Cog's runtime gives for the first rule it breaks. A key keeps its type (bool, number,
//! str, list, dict) until it is deleted; `replace` with `null` deletes, and
//! parents left empty by a deletion go too.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

/// The longest metric name, in bytes (Cog's runtime counts bytes too; a
/// name of more than ASCII is refused anyway).
pub const MAX_NAME_LEN: usize = 128;
/// The most dot-separated segments in a metric name.
pub const MAX_SEGMENTS: usize = 4;

/// How a recorded value combines with the metric's current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricMode {
    /// The value becomes the metric's value; `null` deletes the metric.
    Replace,
    /// The value (a number) is added to the metric (absent counts as 0).
    /// Written `increment`, as Cog's runtime writes it in stream events;
    /// `incr`, the spelling model code uses, is read too.
    #[serde(rename = "increment", alias = "incr")]
    Incr,
    /// The value is appended to the metric, a list (absent counts as `[]`).
    Append,
}

impl MetricMode {
    /// Parses the mode as model code spells it (`incr` or `increment`).
    pub fn parse(mode: &str) -> Option<Self> {
        match mode {
            "replace" => Some(Self::Replace),
            "incr" | "increment" => Some(Self::Incr),
            "append" => Some(Self::Append),
            _ => None,
        }
    }

    /// Why `mode` is not a mode, in Cog's words (raised as `TypeError`).
    pub fn invalid(mode: &str) -> String {
        format!("Invalid metric mode: '{mode}'. Expected 'replace', 'incr', or 'append'.")
    }
}

/// Why a record was refused. [`MetricError::is_type_error`] tells the worker
/// which Python exception to raise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricError {
    /// The name breaks a naming rule; the message says which, in the words
    /// of Cog's runtime (scripts match on them).
    #[error("{0}")]
    InvalidName(String),
    /// The metric (or a parent of it) holds another type than the record needs.
    #[error("{0}")]
    TypeChange(String),
    /// `incr` was given something that is not a number.
    #[error("metric {name:?}: incr needs a number, got {got}")]
    NotANumber {
        /// The metric.
        name: String,
        /// The type it was given.
        got: &'static str,
    },
    /// An `incr` whose result is not a finite number.
    #[error("metric {0:?}: incr overflowed")]
    Overflow(String),
}

impl MetricError {
    /// True for the errors about types (Python `TypeError`); the rest are
    /// about names and values (`ValueError`).
    pub fn is_type_error(&self) -> bool {
        matches!(self, Self::TypeChange(_) | Self::NotANumber { .. })
    }
}

/// Splits `name` into its segments, or says which rule it breaks. The rules
/// are checked in the order Cog's runtime checks them, so a name that breaks
/// several gets the message Cog would give: empty, reserved, too long (in
/// bytes, as Cog counts), too many segments, dots in the wrong place, then
/// each segment from the left.
pub fn parse_name(name: &str) -> Result<Vec<&str>, MetricError> {
    let invalid = |message: String| Err(MetricError::InvalidName(message));
    if name.is_empty() {
        return invalid("metric name must not be empty".into());
    }
    // `predict_time.x` would turn the server's own number into a dict.
    if name == "predict_time" || name.starts_with("predict_time.") {
        return invalid("'predict_time' is reserved by the runtime".into());
    }
    if name.starts_with("cog.") {
        return invalid("the 'cog.' prefix is reserved for system metrics".into());
    }
    if name.len() > MAX_NAME_LEN {
        return invalid(format!(
            "metric name must be {MAX_NAME_LEN} characters or fewer (got {} characters)",
            name.len()
        ));
    }
    let segments: Vec<&str> = name.split('.').collect();
    if segments.len() > MAX_SEGMENTS {
        return invalid(format!(
            "metric name must have at most {MAX_SEGMENTS} dot-separated segments (got {})",
            segments.len()
        ));
    }
    if name.starts_with('.') {
        return invalid("metric name must not start with a dot".into());
    }
    if name.contains("..") {
        return invalid("metric name must not contain empty segments (consecutive dots)".into());
    }
    if name.ends_with('.') {
        return invalid("metric name must not end with a dot".into());
    }
    for segment in &segments {
        if let Some(rule) = broken_segment_rule(segment) {
            return invalid(format!("metric name segment '{segment}' {rule}"));
        }
    }
    Ok(segments)
}

/// The rule a (non-empty) segment breaks, if any: it starts with a letter,
/// holds letters, digits and single underscores, and ends with a letter or
/// digit.
fn broken_segment_rule(segment: &str) -> Option<String> {
    if !segment.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Some("must start with a letter".into());
    }
    let mut previous = '\0';
    for c in segment.chars() {
        if !(c.is_ascii_alphanumeric() || c == '_') {
            return Some(format!("contains invalid character '{c}'"));
        }
        if c == '_' && previous == '_' {
            return Some("must not contain consecutive underscores".into());
        }
        previous = c;
    }
    if segment.ends_with('_') {
        return Some("must end with a letter or digit".into());
    }
    None
}

/// The metric at `name` (dots nest), if there is one. Names are not checked:
/// a name that breaks the rules is simply never there.
pub fn get<'a>(metrics: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    let mut segments = name.split('.');
    let mut value = metrics.get(segments.next()?)?;
    for segment in segments {
        value = value.as_object()?.get(segment)?;
    }
    Some(value)
}

/// Applies one record to `metrics`. On an error nothing has changed.
pub fn apply(
    metrics: &mut Map<String, Value>,
    name: &str,
    value: Value,
    mode: MetricMode,
) -> Result<(), MetricError> {
    let segments = parse_name(name)?;
    apply_in(metrics, &segments, 0, value, mode)
}

/// Applies the record to `map`, which is the object at `segments[..depth]`.
fn apply_in(
    map: &mut Map<String, Value>,
    segments: &[&str],
    depth: usize,
    value: Value,
    mode: MetricMode,
) -> Result<(), MetricError> {
    let key = segments[depth];
    if depth + 1 == segments.len() {
        return apply_leaf(map, key, &segments.join("."), value, mode);
    }
    let deleting = mode == MetricMode::Replace && value.is_null();
    match map.get_mut(key) {
        Some(Value::Object(child)) => {
            let was_empty = child.is_empty();
            apply_in(child, segments, depth + 1, value, mode)?;
            // A parent that the deletion left empty goes too.
            if deleting && child.is_empty() && !was_empty {
                map.shift_remove(key);
            }
            Ok(())
        }
        // Nothing there: nothing to delete.
        None | Some(_) if deleting => Ok(()),
        Some(other) => Err(MetricError::TypeChange(format!(
            "metric {:?} is a {}, so it cannot hold {:?}; delete it first",
            segments[..=depth].join("."),
            type_name(other),
            segments.join(".")
        ))),
        None => {
            // Built aside and inserted only on success, so an error leaves no trace.
            let mut child = Map::new();
            apply_in(&mut child, segments, depth + 1, value, mode)?;
            map.insert(key.to_string(), Value::Object(child));
            Ok(())
        }
    }
}

fn apply_leaf(
    map: &mut Map<String, Value>,
    key: &str,
    name: &str,
    value: Value,
    mode: MetricMode,
) -> Result<(), MetricError> {
    let current = map.get_mut(key);
    match (mode, current) {
        (MetricMode::Replace, _) if value.is_null() => {
            map.shift_remove(key);
        }
        (MetricMode::Replace, Some(current)) => {
            if type_name(current) != type_name(&value) {
                return Err(type_change(name, current, &value));
            }
            *current = value;
        }
        (MetricMode::Replace, None) => {
            map.insert(key.to_string(), value);
        }
        (MetricMode::Incr, current) => {
            let Value::Number(add) = &value else {
                return Err(MetricError::NotANumber {
                    name: name.to_string(),
                    got: type_name(&value),
                });
            };
            match current {
                None => {
                    map.insert(key.to_string(), value);
                }
                Some(Value::Number(sum)) => {
                    let total = add_numbers(sum, add)
                        .ok_or_else(|| MetricError::Overflow(name.to_string()))?;
                    *sum = total;
                }
                Some(current) => {
                    return Err(MetricError::TypeChange(format!(
                        "metric {name:?} is a {}; incr needs a number",
                        type_name(current)
                    )))
                }
            }
        }
        (MetricMode::Append, None) => {
            map.insert(key.to_string(), Value::Array(vec![value]));
        }
        (MetricMode::Append, Some(Value::Array(items))) => items.push(value),
        (MetricMode::Append, Some(current)) => {
            return Err(MetricError::TypeChange(format!(
                "metric {name:?} is a {}; append needs a list",
                type_name(current)
            )))
        }
    }
    Ok(())
}

fn type_change(name: &str, current: &Value, new: &Value) -> MetricError {
    MetricError::TypeChange(format!(
        "metric {name:?} is a {}, not a {}; a metric keeps its type until it is deleted \
         (set it to None or `del` it first)",
        type_name(current),
        type_name(new)
    ))
}

/// Integers stay integers while they fit; otherwise the sum is a float.
fn add_numbers(a: &Number, b: &Number) -> Option<Number> {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        if let Some(sum) = x.checked_add(y) {
            return Some(sum.into());
        }
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        if let Some(sum) = x.checked_add(y) {
            return Some(sum.into());
        }
    }
    Number::from_f64(a.as_f64()? + b.as_f64()?)
}

/// The type of a value as Python code names it, for messages.
fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "None",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(metrics: &mut Map<String, Value>, name: &str, value: Value, mode: MetricMode) {
        apply(metrics, name, value, mode).unwrap_or_else(|e| panic!("{name}: {e}"));
    }

    fn doc(metrics: &Map<String, Value>) -> Value {
        Value::Object(metrics.clone())
    }

    #[test]
    fn good_names_parse_into_their_segments() {
        for name in [
            "a",
            "tokens",
            "timing.inference",
            "a1.b_2.c3d.e",
            "Gpu_Mem2",
        ] {
            assert!(parse_name(name).is_ok(), "{name}");
        }
        assert_eq!(
            parse_name("timing.inference").unwrap(),
            ["timing", "inference"]
        );
        assert!(parse_name(&"a".repeat(MAX_NAME_LEN)).is_ok());
    }

    #[test]
    fn names_that_break_a_rule_say_which_in_cogs_words() {
        let long = "a".repeat(MAX_NAME_LEN + 1);
        let cases = [
            ("", "metric name must not be empty"),
            (
                "1abc",
                "metric name segment '1abc' must start with a letter",
            ),
            (
                "_invalid",
                "metric name segment '_invalid' must start with a letter",
            ),
            ("é", "metric name segment 'é' must start with a letter"),
            (
                "a_",
                "metric name segment 'a_' must end with a letter or digit",
            ),
            (
                "a__b",
                "metric name segment 'a__b' must not contain consecutive underscores",
            ),
            (
                "a__",
                "metric name segment 'a__' must not contain consecutive underscores",
            ),
            (
                "a-b",
                "metric name segment 'a-b' contains invalid character '-'",
            ),
            (
                "a_-",
                "metric name segment 'a_-' contains invalid character '-'",
            ),
            (
                "a b",
                "metric name segment 'a b' contains invalid character ' '",
            ),
            ("a.1b", "metric name segment '1b' must start with a letter"),
            (".a", "metric name must not start with a dot"),
            ("..a", "metric name must not start with a dot"),
            (
                "a..b",
                "metric name must not contain empty segments (consecutive dots)",
            ),
            (
                "a..",
                "metric name must not contain empty segments (consecutive dots)",
            ),
            ("a.", "metric name must not end with a dot"),
            (
                "a.b.c.d.e",
                "metric name must have at most 4 dot-separated segments (got 5)",
            ),
            (
                ".a.b.c.d.e",
                "metric name must have at most 4 dot-separated segments (got 6)",
            ),
            (
                &long,
                "metric name must be 128 characters or fewer (got 129 characters)",
            ),
        ];
        for (name, message) in cases {
            let err = parse_name(name).unwrap_err();
            assert_eq!(err.to_string(), message, "{name:?}");
            assert!(!err.is_type_error());
        }
    }

    #[test]
    fn predict_time_and_the_cog_prefix_are_reserved() {
        for name in ["predict_time", "predict_time.x"] {
            assert_eq!(
                parse_name(name).unwrap_err().to_string(),
                "'predict_time' is reserved by the runtime"
            );
        }
        // Reserved comes before length and segment count, as in Cog.
        let long = format!("cog.{}", "a".repeat(MAX_NAME_LEN));
        for name in ["cog.anything", "cog.a.b.c.d", "cog._x", &long] {
            assert_eq!(
                parse_name(name).unwrap_err().to_string(),
                "the 'cog.' prefix is reserved for system metrics",
                "{name}"
            );
        }
        for name in ["cog", "cogs", "predict_times", "x.cog", "x.predict_time"] {
            assert!(parse_name(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn replace_sets_and_dots_nest() {
        let mut m = Map::new();
        record(&mut m, "a", json!(1), MetricMode::Replace);
        record(&mut m, "timing.inference", json!(0.5), MetricMode::Replace);
        record(&mut m, "timing.setup.load", json!("x"), MetricMode::Replace);
        record(&mut m, "a", json!(2.5), MetricMode::Replace);
        assert_eq!(
            doc(&m),
            json!({"a": 2.5, "timing": {"inference": 0.5, "setup": {"load": "x"}}})
        );
        assert_eq!(get(&m, "timing.setup.load"), Some(&json!("x")));
        assert_eq!(get(&m, "timing.setup"), Some(&json!({"load": "x"})));
        assert_eq!(get(&m, "timing.nothing"), None);
        assert_eq!(get(&m, "a.b"), None);
    }

    #[test]
    fn incr_adds_numbers_keeping_integers_while_they_fit() {
        let mut m = Map::new();
        record(&mut m, "n", json!(2), MetricMode::Incr);
        record(&mut m, "n", json!(3), MetricMode::Incr);
        assert_eq!(m["n"], json!(5));
        record(&mut m, "n", json!(0.5), MetricMode::Incr);
        assert_eq!(m["n"], json!(5.5));
        record(&mut m, "big", json!(i64::MAX), MetricMode::Incr);
        record(&mut m, "big", json!(1), MetricMode::Incr);
        assert_eq!(m["big"], json!(i64::MAX as u64 + 1));
        record(&mut m, "nested.count", json!(1), MetricMode::Incr);
        assert_eq!(m["nested"], json!({"count": 1}));
    }

    #[test]
    fn incr_refuses_what_is_not_a_number() {
        let mut m = Map::new();
        for value in [json!("1"), json!(true), json!([1]), json!(null)] {
            let err = apply(&mut m, "n", value, MetricMode::Incr).unwrap_err();
            assert!(err.is_type_error(), "{err}");
        }
        record(&mut m, "s", json!("text"), MetricMode::Replace);
        let err = apply(&mut m, "s", json!(1), MetricMode::Incr).unwrap_err();
        assert!(err.is_type_error());
        assert!(err.to_string().contains("is a str"), "{err}");
        assert!(m.get("n").is_none());
    }

    #[test]
    fn append_builds_a_list_one_item_at_a_time() {
        let mut m = Map::new();
        record(&mut m, "steps", json!(1), MetricMode::Append);
        record(&mut m, "steps", json!("two"), MetricMode::Append);
        record(&mut m, "steps", json!([3]), MetricMode::Append);
        record(&mut m, "steps", json!(null), MetricMode::Append);
        assert_eq!(m["steps"], json!([1, "two", [3], null]));
        record(&mut m, "n", json!(1), MetricMode::Replace);
        let err = apply(&mut m, "n", json!(2), MetricMode::Append).unwrap_err();
        assert!(err.is_type_error() && err.to_string().contains("append needs a list"));
    }

    #[test]
    fn a_key_keeps_its_type_until_it_is_deleted() {
        let mut m = Map::new();
        record(&mut m, "x", json!(1), MetricMode::Replace);
        for other in [json!("1"), json!(true), json!([1]), json!({"a": 1})] {
            let err = apply(&mut m, "x", other, MetricMode::Replace).unwrap_err();
            assert!(err.is_type_error(), "{err}");
            assert!(err.to_string().contains("is a number"), "{err}");
        }
        assert_eq!(m["x"], json!(1));
        record(&mut m, "x", json!(null), MetricMode::Replace);
        record(&mut m, "x", json!("now a string"), MetricMode::Replace);
        assert_eq!(m["x"], json!("now a string"));
    }

    #[test]
    fn a_leaf_cannot_become_a_parent_nor_a_parent_a_leaf() {
        let mut m = Map::new();
        record(&mut m, "a", json!(1), MetricMode::Replace);
        let err = apply(&mut m, "a.b", json!(2), MetricMode::Replace).unwrap_err();
        assert!(err.is_type_error());
        assert!(err.to_string().contains("cannot hold \"a.b\""), "{err}");
        record(&mut m, "t.x", json!(1), MetricMode::Replace);
        let err = apply(&mut m, "t", json!(5), MetricMode::Replace).unwrap_err();
        assert!(err.to_string().contains("is a dict"), "{err}");
        assert_eq!(doc(&m), json!({"a": 1, "t": {"x": 1}}));
    }

    #[test]
    fn a_failed_record_leaves_no_empty_parents_behind() {
        let mut m = Map::new();
        assert!(apply(&mut m, "p.q", json!("s"), MetricMode::Incr).is_err());
        assert!(m.is_empty(), "{m:?}");
    }

    #[test]
    fn deleting_removes_the_key_and_parents_it_left_empty() {
        let mut m = Map::new();
        record(&mut m, "timing.a.x", json!(1), MetricMode::Replace);
        record(&mut m, "timing.b", json!(2), MetricMode::Replace);
        record(&mut m, "keep", json!(0), MetricMode::Replace);
        record(&mut m, "timing.a.x", json!(null), MetricMode::Replace);
        assert_eq!(doc(&m), json!({"timing": {"b": 2}, "keep": 0}));
        record(&mut m, "timing.b", json!(null), MetricMode::Replace);
        assert_eq!(doc(&m), json!({"keep": 0}));
        // Deleting what is not there changes nothing.
        record(&mut m, "nothing.here", json!(null), MetricMode::Replace);
        record(&mut m, "keep.below", json!(null), MetricMode::Replace);
        assert_eq!(doc(&m), json!({"keep": 0}));
    }

    #[test]
    fn deletion_keeps_the_order_of_the_other_keys() {
        let mut m = Map::new();
        for name in ["a", "b", "c"] {
            record(&mut m, name, json!(1), MetricMode::Replace);
        }
        record(&mut m, "a", json!(null), MetricMode::Replace);
        assert_eq!(m.keys().collect::<Vec<_>>(), ["b", "c"]);
    }

    #[test]
    fn modes_parse_as_model_code_spells_them_and_incr_is_written_increment() {
        assert_eq!(MetricMode::parse("replace"), Some(MetricMode::Replace));
        assert_eq!(MetricMode::parse("incr"), Some(MetricMode::Incr));
        assert_eq!(MetricMode::parse("increment"), Some(MetricMode::Incr));
        assert_eq!(MetricMode::parse("append"), Some(MetricMode::Append));
        assert_eq!(MetricMode::parse("Replace"), None);
        assert_eq!(
            serde_json::to_string(&MetricMode::Incr).unwrap(),
            r#""increment""#
        );
        for text in [r#""incr""#, r#""increment""#] {
            let mode: MetricMode = serde_json::from_str(text).unwrap();
            assert_eq!(mode, MetricMode::Incr);
        }
        assert_eq!(
            MetricMode::invalid("decr"),
            "Invalid metric mode: 'decr'. Expected 'replace', 'incr', or 'append'."
        );
    }
}
