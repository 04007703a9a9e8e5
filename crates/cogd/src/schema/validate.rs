//! Checking a request's `input` against the model's `Input` schema.
//!
//! An [`InputValidator`] is compiled once from the OpenAPI document (one
//! `jsonschema` validator per input, so each error knows its field at no cost)
//! and then checks each request in a few microseconds: unknown inputs, missing
//! required ones, and each value against its own schema. Every problem is
//! reported, not just the first, in the shape FastAPI clients already parse.
//! On success the declared defaults are filled in, so the run (and the
//! prediction's `input`) see them.
//!
//! Messages describe what was expected and the JSON type that was sent, never
//! the value itself, so a secret never ends up in an error or a log.

use std::collections::HashMap;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::paths::LocationSegment;
use jsonschema::{Draft, ValidationError, Validator};
use serde::ser::{SerializeMap, SerializeSeq};
use serde_json::{Map, Value};

use super::openapi;

/// What the prediction's `input` shows in place of a secret.
pub const REDACTED: &str = "**********";

/// One reason an input was refused: `{"loc": ["body", "input", FIELD, …], "msg", "type"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    /// The input's name.
    pub field: String,
    /// Where inside the value the problem is (list indexes, object keys);
    /// empty for the value as a whole.
    pub path: Vec<PathSegment>,
    /// What is wrong, for people.
    pub msg: String,
    /// What is wrong, for programs: pydantic's error type names where one fits.
    pub kind: &'static str,
}

/// One step into a value, as a `loc` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSegment {
    /// An object key.
    Key(String),
    /// A list index.
    Index(usize),
}

impl serde::Serialize for InputError {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Loc<'a>(&'a InputError);
        impl serde::Serialize for Loc<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut seq = serializer.serialize_seq(Some(3 + self.0.path.len()))?;
                seq.serialize_element("body")?;
                seq.serialize_element("input")?;
                seq.serialize_element(&self.0.field)?;
                for segment in &self.0.path {
                    match segment {
                        PathSegment::Key(key) => seq.serialize_element(key)?,
                        PathSegment::Index(index) => seq.serialize_element(index)?,
                    }
                }
                seq.end()
            }
        }
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry("loc", &Loc(self))?;
        map.serialize_entry("msg", &self.msg)?;
        map.serialize_entry("type", self.kind)?;
        map.end()
    }
}

impl InputError {
    fn new(field: &str, kind: &'static str, msg: impl Into<String>) -> Self {
        Self {
            field: field.to_string(),
            path: Vec::new(),
            msg: msg.into(),
            kind,
        }
    }
}

/// A schema the validator cannot be built from.
#[derive(Debug, thiserror::Error)]
#[error("cannot compile the schema of input {field:?}: {message}")]
pub struct CompileError {
    /// The input whose schema failed.
    pub field: String,
    /// Why.
    pub message: String,
}

/// How an input holds a secret, for redaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SecretShape {
    None,
    Value,
    List,
}

/// One declared input.
#[derive(Debug)]
struct Field {
    name: String,
    /// `None` when the schema accepts any value.
    validator: Option<Validator>,
    required: bool,
    default: Option<Value>,
    secret: SecretShape,
    /// Where the input holds integers, which must fit in 64 bits.
    integers: IntegerShape,
}

/// Where an input holds integers: `int`, or `list[int]`. A whole number
/// beyond 64 bits cannot reach the model exactly (the JSON parser keeps it
/// as the nearest double), so it is refused rather than changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IntegerShape {
    None,
    Value,
    List,
}

impl IntegerShape {
    fn of(schema: &Map<String, Value>) -> Self {
        let is_integer = |s: &Value| s.get("type").and_then(Value::as_str) == Some("integer");
        match schema.get("type").and_then(Value::as_str) {
            Some("integer") => Self::Value,
            Some("array") if schema.get("items").is_some_and(is_integer) => Self::List,
            _ => Self::None,
        }
    }
}

/// A whole number the parser could keep only as a double: one beyond the
/// 64-bit range, whose digits were lost on the way in.
fn is_beyond_64_bits(value: &Value) -> bool {
    const TWO_TO_63: f64 = 9_223_372_036_854_775_808.0;
    match value {
        Value::Number(n) if n.is_f64() => n
            .as_f64()
            .is_some_and(|x| x.fract() == 0.0 && (x >= 2.0 * TWO_TO_63 || x <= -TWO_TO_63)),
        _ => false,
    }
}

/// The compiled `Input` schema of one model; cheap to share, immutable.
#[derive(Debug)]
pub struct InputValidator {
    /// In the schema's `x-order`, so errors come in the order inputs are declared.
    fields: Vec<Field>,
    /// Field index by name.
    index: HashMap<String, usize>,
    /// Whether any input is a secret (most models have none: no copy to redact).
    has_secrets: bool,
    /// Inputs that are files (`format: uri`, or lists of them), fetched
    /// before the run.
    file_inputs: Vec<String>,
}

/// A file input: `format: uri`, directly, in `items`, or in an `anyOf` member.
fn is_file(schema: &Value) -> bool {
    if schema.get("format").and_then(Value::as_str) == Some("uri") {
        return true;
    }
    if schema.get("items").is_some_and(is_file) {
        return true;
    }
    schema
        .get("anyOf")
        .and_then(Value::as_array)
        .is_some_and(|members| members.iter().any(is_file))
}

impl InputValidator {
    /// Compiles the component `component` (`Input`, `TrainingInput`) of an
    /// OpenAPI `document`; `Ok(None)` when the document has no such schema.
    pub fn compile(document: &Value, component: &str) -> Result<Option<Self>, CompileError> {
        let empty = Map::new();
        let components = document
            .pointer("/components/schemas")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let Some(schema) = components.get(component).and_then(Value::as_object) else {
            return Ok(None);
        };
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|names| names.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut declared: Vec<(&String, &Value)> = schema
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.iter().collect())
            .unwrap_or_default();
        declared.sort_by_key(|(name, prop)| {
            let order = prop.get("x-order").and_then(Value::as_u64);
            (order.unwrap_or(u64::MAX), name.to_string())
        });

        let mut fields = Vec::with_capacity(declared.len());
        let mut file_inputs = Vec::new();
        for (name, prop) in declared {
            if is_file(prop) {
                file_inputs.push(name.clone());
            }
            let own = prop.as_object().cloned().unwrap_or_default();
            let default = own.get("default").filter(|d| !d.is_null()).cloned();
            let secret = secret_shape(&own);
            let integers = IntegerShape::of(&own);
            let standalone = openapi::standalone(&Value::Object(own), components);
            let validator = compile_one(name, &standalone)?;
            fields.push(Field {
                name: name.clone(),
                validator,
                required: required.contains(&name.as_str()),
                default,
                secret,
                integers,
            });
        }
        // A required input the schema does not describe still must be sent.
        for name in required {
            if !fields.iter().any(|f| f.name == name) {
                fields.push(Field {
                    name: name.to_string(),
                    validator: None,
                    required: true,
                    default: None,
                    secret: SecretShape::None,
                    integers: IntegerShape::None,
                });
            }
        }
        let index = fields
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name.clone(), i))
            .collect();
        let has_secrets = fields.iter().any(|f| f.secret != SecretShape::None);
        Ok(Some(Self {
            fields,
            index,
            has_secrets,
            file_inputs,
        }))
    }

    /// The inputs that are files, fetched into the prediction before the run.
    pub fn file_inputs(&self) -> &[String] {
        &self.file_inputs
    }

    /// Checks `input`; on success fills in the defaults of the inputs it
    /// leaves out. On failure returns every problem, input by input.
    pub fn check(&self, input: &mut Map<String, Value>) -> Result<(), Vec<InputError>> {
        let mut errors = Vec::new();
        for field in &self.fields {
            match input.get(&field.name) {
                Some(value) => field.check(value, &mut errors),
                None if field.required => {
                    errors.push(InputError::new(&field.name, "missing", "Field required"))
                }
                None => {}
            }
        }
        for name in input.keys() {
            if !self.index.contains_key(name) {
                errors.push(InputError::new(
                    name,
                    "extra_forbidden",
                    "Extra inputs are not permitted: this model has no such input",
                ));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        for field in &self.fields {
            if let Some(default) = &field.default {
                if !input.contains_key(&field.name) {
                    input.insert(field.name.clone(), default.clone());
                }
            }
        }
        Ok(())
    }

    /// Whether any input is a secret, so that [`Self::redacted`] differs from
    /// the input.
    pub fn has_secrets(&self) -> bool {
        self.has_secrets
    }

    /// `input` as a prediction may show it: secrets replaced by `**********`.
    pub fn redacted(&self, input: &Map<String, Value>) -> Map<String, Value> {
        let mut shown = input.clone();
        if !self.has_secrets {
            return shown;
        }
        for field in &self.fields {
            let Some(value) = shown.get_mut(&field.name) else {
                continue;
            };
            match (field.secret, value) {
                (SecretShape::Value, v @ Value::String(_)) => *v = REDACTED.into(),
                (SecretShape::List, Value::Array(items)) => {
                    for item in items.iter_mut().filter(|i| i.is_string()) {
                        *item = REDACTED.into();
                    }
                }
                _ => {}
            }
        }
        shown
    }
}

impl Field {
    fn check(&self, value: &Value, errors: &mut Vec<InputError>) {
        if self.has_integers_beyond_64_bits(value, errors) {
            return;
        }
        let Some(validator) = &self.validator else {
            return;
        };
        for error in validator.iter_errors(value) {
            describe(&self.name, &error, errors);
        }
    }
}

impl Field {
    /// Reports each whole number beyond 64 bits where integers go; true if
    /// there was one.
    fn has_integers_beyond_64_bits(&self, value: &Value, errors: &mut Vec<InputError>) -> bool {
        let too_big = |path: Vec<PathSegment>| InputError {
            field: self.name.clone(),
            path,
            msg: "Input should be a whole number within 64 bits: a larger one cannot reach \
                  the model exactly"
                .into(),
            kind: "int_parsing",
        };
        let before = errors.len();
        match (self.integers, value) {
            (IntegerShape::Value, value) if is_beyond_64_bits(value) => {
                errors.push(too_big(Vec::new()));
            }
            (IntegerShape::List, Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    if is_beyond_64_bits(item) {
                        errors.push(too_big(vec![PathSegment::Index(i)]));
                    }
                }
            }
            _ => {}
        }
        errors.len() > before
    }
}

fn is_secret(schema: &Map<String, Value>) -> bool {
    schema.get("x-cog-secret").and_then(Value::as_bool) == Some(true)
        || schema.get("format").and_then(Value::as_str) == Some("password")
}

fn secret_shape(schema: &Map<String, Value>) -> SecretShape {
    if is_secret(schema) {
        SecretShape::Value
    } else if schema
        .get("items")
        .and_then(Value::as_object)
        .is_some_and(is_secret)
    {
        SecretShape::List
    } else {
        SecretShape::None
    }
}

fn options() -> jsonschema::ValidationOptions<'static> {
    // Formats (`uri`, `password`) are descriptions for clients here: a file
    // input may be a URL or a data URI, and that is for the files step to judge.
    jsonschema::options()
        .with_draft(Draft::Draft202012)
        .should_validate_formats(false)
}

/// Compiles one input's schema. A `pattern` written for Python's `re` that the
/// Rust regex engine cannot compile is dropped (with a warning) rather than
/// leaving the whole model without validation.
fn compile_one(name: &str, schema: &Value) -> Result<Option<Validator>, CompileError> {
    if schema.as_object().is_some_and(Map::is_empty) || schema == &Value::Bool(true) {
        return Ok(None);
    }
    match options().build(schema) {
        Ok(validator) => Ok(Some(validator)),
        Err(first) => {
            let mut without_patterns = schema.clone();
            if !strip_patterns(&mut without_patterns) {
                return Err(CompileError {
                    field: name.to_string(),
                    message: first.to_string(),
                });
            }
            let validator = options()
                .build(&without_patterns)
                .map_err(|e| CompileError {
                    field: name.to_string(),
                    message: e.to_string(),
                })?;
            tracing::warn!(
                input = name,
                error = %first,
                "the input's pattern cannot be compiled; it is not checked"
            );
            Ok(Some(validator))
        }
    }
}

/// Removes every `pattern` keyword; true when there was one.
fn strip_patterns(schema: &mut Value) -> bool {
    match schema {
        Value::Object(map) => {
            let mut found = map.remove("pattern").is_some();
            for (key, child) in map.iter_mut() {
                if key != "default" && key != "enum" && key != "const" {
                    found |= strip_patterns(child);
                }
            }
            found
        }
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |found, item| strip_patterns(item) | found),
        _ => false,
    }
}

/// "a string", "null": a JSON value's type, for messages (never the value).
fn json_type_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The word for an expected JSON type, and pydantic's error type for it.
fn expected(kind: jsonschema::JsonType) -> (&'static str, &'static str) {
    use jsonschema::JsonType;
    match kind {
        JsonType::String => ("a valid string", "string_type"),
        JsonType::Integer => ("a valid integer", "int_type"),
        JsonType::Number => ("a valid number", "float_type"),
        JsonType::Boolean => ("a valid boolean", "bool_type"),
        JsonType::Array => ("a valid list", "list_type"),
        JsonType::Object => ("a valid dictionary", "dict_type"),
        JsonType::Null => ("null", "none_required"),
    }
}

fn type_kinds(kind: &TypeKind) -> Vec<jsonschema::JsonType> {
    match kind {
        TypeKind::Single(t) => vec![*t],
        TypeKind::Multiple(set) => set.iter().collect(),
    }
}

/// "a, b or c".
fn one_of(words: &[String]) -> String {
    match words {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// A choice as the message shows it: strings quoted, anything else as JSON.
fn choice(value: &Value) -> String {
    match value {
        Value::String(s) => format!("'{s}'"),
        other => other.to_string(),
    }
}

/// Turns one `jsonschema` error about input `field` into entries of `errors`.
fn describe(field: &str, error: &ValidationError<'_>, errors: &mut Vec<InputError>) {
    let mut path: Vec<PathSegment> = error
        .instance_path()
        .iter()
        .map(|segment| match segment {
            LocationSegment::Property(key) => PathSegment::Key(key.to_string()),
            LocationSegment::Index(index) => PathSegment::Index(index),
        })
        .collect();
    let got = json_type_of(error.instance());
    let (kind, msg): (&'static str, String) = match error.kind() {
        ValidationErrorKind::Type { kind } => {
            let kinds = type_kinds(kind);
            let words: Vec<String> = kinds.iter().map(|k| expected(*k).0.to_string()).collect();
            let code = kinds.first().map_or("type_error", |k| expected(*k).1);
            (
                code,
                format!("Input should be {} (got {got})", one_of(&words)),
            )
        }
        ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
            // A union: say which types would have done, when every branch
            // failed on its type.
            let mut words = Vec::new();
            for branch in context {
                match branch.as_slice() {
                    [only] => match only.kind() {
                        ValidationErrorKind::Type { kind } => {
                            for k in type_kinds(kind) {
                                let word = expected(k).0.trim_start_matches("a valid ").to_string();
                                if !words.contains(&word) {
                                    words.push(word);
                                }
                            }
                        }
                        _ => words.clear(),
                    },
                    _ => words.clear(),
                }
                if words.is_empty() {
                    break;
                }
            }
            let msg = if words.is_empty() {
                format!("Input does not match any of the allowed types (got {got})")
            } else {
                format!("Input should be a valid {} (got {got})", one_of(&words))
            };
            ("union_type", msg)
        }
        ValidationErrorKind::Minimum { limit } => (
            "greater_than_equal",
            format!("Input should be greater than or equal to {limit}"),
        ),
        ValidationErrorKind::Maximum { limit } => (
            "less_than_equal",
            format!("Input should be less than or equal to {limit}"),
        ),
        ValidationErrorKind::ExclusiveMinimum { limit } => (
            "greater_than",
            format!("Input should be greater than {limit}"),
        ),
        ValidationErrorKind::ExclusiveMaximum { limit } => {
            ("less_than", format!("Input should be less than {limit}"))
        }
        ValidationErrorKind::MinLength { limit } => (
            "string_too_short",
            format!(
                "String should have at least {limit} character{}",
                plural(*limit)
            ),
        ),
        ValidationErrorKind::MaxLength { limit } => (
            "string_too_long",
            format!(
                "String should have at most {limit} character{}",
                plural(*limit)
            ),
        ),
        ValidationErrorKind::MinItems { limit } => (
            "too_short",
            format!("List should have at least {limit} item{}", plural(*limit)),
        ),
        ValidationErrorKind::MaxItems { limit } => (
            "too_long",
            format!("List should have at most {limit} item{}", plural(*limit)),
        ),
        ValidationErrorKind::Pattern { pattern } => (
            "string_pattern_mismatch",
            format!("String should match pattern '{pattern}'"),
        ),
        ValidationErrorKind::Enum { options } => {
            let choices: Vec<String> = options
                .as_array()
                .map(|o| o.iter().map(choice).collect())
                .unwrap_or_default();
            ("enum", format!("Input should be {}", one_of(&choices)))
        }
        ValidationErrorKind::Constant { expected_value } => (
            "literal_error",
            format!("Input should be {}", choice(expected_value)),
        ),
        ValidationErrorKind::MultipleOf { multiple_of } => (
            "multiple_of",
            format!("Input should be a multiple of {multiple_of}"),
        ),
        ValidationErrorKind::UniqueItems => ("unique_items", "List items should be unique".into()),
        ValidationErrorKind::Required { property } => {
            path.push(PathSegment::Key(
                property
                    .as_str()
                    .map_or_else(|| property.to_string(), str::to_string),
            ));
            ("missing", "Field required".into())
        }
        ValidationErrorKind::AdditionalProperties { unexpected }
        | ValidationErrorKind::UnevaluatedProperties { unexpected } => {
            for key in unexpected {
                let mut at = path.clone();
                at.push(PathSegment::Key(key.clone()));
                errors.push(InputError {
                    field: field.to_string(),
                    path: at,
                    msg: "Extra inputs are not permitted".into(),
                    kind: "extra_forbidden",
                });
            }
            return;
        }
        // Anything else: the library's own words, with the value masked.
        _ => ("value_error", error.masked().to_string()),
    };
    errors.push(InputError {
        field: field.to_string(),
        path,
        msg,
        kind,
    });
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The shape the Python side generates (see python/cogd/schema.py).
    fn document() -> Value {
        json!({
            "components": {"schemas": {
                "Input": {
                    "title": "Input",
                    "type": "object",
                    "required": ["prompt", "api_key"],
                    "properties": {
                        "prompt": {"title": "Prompt", "type": "string", "x-order": 0,
                                   "minLength": 1, "maxLength": 5},
                        "steps": {"title": "Steps", "type": "integer", "x-order": 1,
                                  "default": 10, "minimum": 1, "maximum": 100},
                        "scale": {"title": "Scale", "type": "number", "x-order": 2, "default": 7.5},
                        "scheduler": {"allOf": [{"$ref": "#/components/schemas/scheduler"}],
                                      "x-order": 3, "default": "ddim"},
                        "code": {"title": "Code", "type": "string", "x-order": 4,
                                 "pattern": "^[a-z]+[0-9]+$"},
                        "seed": {"title": "Seed", "type": "integer", "x-order": 5,
                                 "nullable": true},
                        "api_key": {"title": "Api Key", "type": "string", "format": "password",
                                    "writeOnly": true, "x-cog-secret": true, "x-order": 6},
                        "either": {"title": "Either", "anyOf": [{"type": "integer"},
                                   {"type": "string"}], "x-order": 7},
                        "tags": {"title": "Tags", "type": "array", "x-order": 8,
                                 "items": {"type": "number", "minimum": 0}},
                        "image": {"title": "Image", "type": "string", "format": "uri",
                                  "x-order": 9, "nullable": true},
                        "choice": {"allOf": [{"$ref": "#/components/schemas/choice"}],
                                   "x-order": 10, "nullable": true},
                    }
                },
                "scheduler": {"title": "scheduler", "enum": ["ddim", "euler"], "type": "string"},
                "choice": {"title": "choice", "enum": [1, 2], "type": "integer"},
            }}
        })
    }

    fn validator() -> InputValidator {
        InputValidator::compile(&document(), "Input")
            .unwrap()
            .unwrap()
    }

    fn check(input: Value) -> Result<Map<String, Value>, Vec<InputError>> {
        let mut input = input.as_object().unwrap().clone();
        validator().check(&mut input).map(|()| input)
    }

    fn fields(errors: &[InputError]) -> Vec<(&str, &str)> {
        errors.iter().map(|e| (e.field.as_str(), e.kind)).collect()
    }

    #[test]
    fn a_valid_input_gets_its_defaults() {
        let input = check(json!({"prompt": "hi", "api_key": "k"})).unwrap();
        assert_eq!(input["steps"], 10);
        assert_eq!(input["scale"], 7.5);
        assert_eq!(input["scheduler"], "ddim");
        assert!(!input.contains_key("seed"), "no default: left out");
    }

    #[test]
    fn every_error_is_reported_with_its_field() {
        let errors = check(json!({
            "prompt": "far too long", "steps": "ten", "scheduler": "nope",
            "code": "12ab", "bogus": 1, "tags": [1, -1, "x"], "either": true,
        }))
        .unwrap_err();
        assert_eq!(
            fields(&errors),
            vec![
                ("prompt", "string_too_long"),
                ("steps", "int_type"),
                ("scheduler", "enum"),
                ("code", "string_pattern_mismatch"),
                ("api_key", "missing"),
                ("either", "union_type"),
                ("tags", "greater_than_equal"),
                ("tags", "float_type"),
                ("bogus", "extra_forbidden"),
            ]
        );
        let tags: Vec<_> = errors.iter().filter(|e| e.field == "tags").collect();
        assert_eq!(tags[0].path, vec![PathSegment::Index(1)]);
        assert_eq!(tags[1].path, vec![PathSegment::Index(2)]);
        let either = errors.iter().find(|e| e.field == "either").unwrap();
        assert_eq!(
            either.msg,
            "Input should be a valid integer or string (got a boolean)"
        );
        let scheduler = errors.iter().find(|e| e.field == "scheduler").unwrap();
        assert_eq!(scheduler.msg, "Input should be 'ddim' or 'euler'");
    }

    #[test]
    fn bounds_and_lengths() {
        let errors = check(json!({"prompt": "", "api_key": "k", "steps": 0})).unwrap_err();
        assert_eq!(
            fields(&errors),
            vec![
                ("prompt", "string_too_short"),
                ("steps", "greater_than_equal")
            ]
        );
        assert_eq!(errors[1].msg, "Input should be greater than or equal to 1");
        let errors = check(json!({"prompt": "a", "api_key": "k", "steps": 101})).unwrap_err();
        assert_eq!(fields(&errors), vec![("steps", "less_than_equal")]);
    }

    #[test]
    fn integers_beyond_64_bits_are_refused_not_rounded() {
        let input: Value = serde_json::from_str(
            r#"{"prompt": "a", "api_key": "k", "seed": 18446744073709551617}"#,
        )
        .unwrap();
        let errors = check(input).unwrap_err();
        assert_eq!(fields(&errors), vec![("seed", "int_parsing")]);
        for edge in ["18446744073709551615", "-9223372036854775808"] {
            let text = format!(r#"{{"prompt": "a", "api_key": "k", "seed": {edge}}}"#);
            let input = check(serde_json::from_str(&text).unwrap()).unwrap();
            assert_eq!(input["seed"].to_string(), edge);
        }
        let text = r#"{"prompt": "a", "api_key": "k", "seed": -9223372036854775809}"#;
        assert!(check(serde_json::from_str(text).unwrap()).is_err());
        // A number input takes a large double as it is.
        let input = check(json!({"prompt": "a", "api_key": "k", "scale": 1e30})).unwrap();
        assert_eq!(input["scale"], json!(1e30));
    }

    #[test]
    fn ints_pass_for_numbers_and_null_is_refused_even_where_nullable() {
        let input = check(json!({"prompt": "a", "api_key": "k", "scale": 3})).unwrap();
        assert_eq!(input["scale"], 3, "an int reaches a number input as it is");
        assert!(
            !input.contains_key("seed"),
            "an omitted optional input stays out"
        );
        // Cog's validator ignores `nullable`: an explicit null is refused.
        let errors = check(json!({
            "prompt": "a", "api_key": "k", "seed": null, "image": null, "choice": null,
        }))
        .unwrap_err();
        assert_eq!(
            fields(&errors),
            vec![
                ("seed", "int_type"),
                ("image", "string_type"),
                ("choice", "int_type"),
                ("choice", "enum")
            ]
        );
        let errors = check(json!({"prompt": "a", "api_key": "k", "steps": null})).unwrap_err();
        assert_eq!(errors[0].msg, "Input should be a valid integer (got null)");
        let errors = check(json!({"prompt": "a", "api_key": "k", "choice": 3})).unwrap_err();
        assert_eq!(fields(&errors), vec![("choice", "enum")]);
    }

    #[test]
    fn a_secret_never_appears_in_an_error_and_is_redacted_for_display() {
        let secret = "hunter2-very-secret";
        let errors =
            check(json!({"prompt": secret, "api_key": secret, "code": secret})).unwrap_err();
        for error in &errors {
            assert!(!error.msg.contains(secret), "{error:?}");
        }
        let errors = check(json!({"prompt": "a", "api_key": 12345})).unwrap_err();
        assert!(!errors[0].msg.contains("12345"), "{:?}", errors[0]);
        let input = check(json!({"prompt": "a", "api_key": secret})).unwrap();
        let shown = validator().redacted(&input);
        assert_eq!(shown["api_key"], REDACTED);
        assert_eq!(input["api_key"], secret, "the run still gets the value");
    }

    #[test]
    fn a_list_of_secrets_is_redacted_item_by_item() {
        let doc = json!({"components": {"schemas": {"Input": {"properties": {
            "keys": {"type": "array", "items": {"type": "string", "x-cog-secret": true}},
            "plain": {"type": "string"},
        }}}}});
        let validator = InputValidator::compile(&doc, "Input").unwrap().unwrap();
        let mut input = json!({"keys": ["a", "b"], "plain": "p"})
            .as_object()
            .unwrap()
            .clone();
        validator.check(&mut input).unwrap();
        let shown = validator.redacted(&input);
        assert_eq!(shown["keys"], json!([REDACTED, REDACTED]));
        assert_eq!(shown["plain"], "p");
    }

    #[test]
    fn errors_serialize_as_fastapi_detail_entries() {
        let errors = check(json!({"prompt": "a", "api_key": "k", "tags": ["x"]})).unwrap_err();
        assert_eq!(
            serde_json::to_value(&errors[0]).unwrap(),
            json!({"loc": ["body", "input", "tags", 0], "msg": "Input should be a valid number (got a string)", "type": "float_type"})
        );
    }

    #[test]
    fn a_document_without_the_component_gives_no_validator() {
        assert!(InputValidator::compile(&json!({}), "Input")
            .unwrap()
            .is_none());
        assert!(InputValidator::compile(&document(), "TrainingInput")
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_pattern_rust_cannot_compile_is_dropped_not_fatal() {
        let doc = json!({"components": {"schemas": {"Input": {"properties": {
            "x": {"type": "string", "pattern": "(?<!a)b(?P=nope)"}
        }}}}});
        let validator = InputValidator::compile(&doc, "Input").unwrap().unwrap();
        let mut ok = json!({"x": "b"}).as_object().unwrap().clone();
        validator.check(&mut ok).unwrap();
        let mut bad = json!({"x": 1}).as_object().unwrap().clone();
        assert!(validator.check(&mut bad).is_err());
    }

    /// Not a real benchmark: shows the cost of one check of a 20-input
    /// request. `cargo test -p cogd --release -- --ignored --nocapture validation_cost`
    #[test]
    #[ignore]
    fn validation_cost() {
        let mut properties = Map::new();
        let mut input = Map::new();
        for i in 0..20 {
            let (schema, value) = match i % 4 {
                0 => (
                    json!({"type": "string", "maxLength": 100}),
                    json!("some text"),
                ),
                1 => (
                    json!({"type": "integer", "minimum": 0, "maximum": 1000}),
                    json!(42),
                ),
                2 => (json!({"type": "number", "minimum": 0}), json!(0.5)),
                _ => (json!({"type": "boolean"}), json!(true)),
            };
            let mut schema = schema;
            schema["x-order"] = json!(i);
            properties.insert(format!("input_{i}"), schema);
            input.insert(format!("input_{i}"), value);
        }
        let doc = json!({"components": {"schemas": {"Input": {"properties": properties}}}});
        let validator = InputValidator::compile(&doc, "Input").unwrap().unwrap();
        let rounds = 100_000;
        let started = std::time::Instant::now();
        for _ in 0..rounds {
            let mut copy = input.clone();
            validator.check(&mut copy).unwrap();
            std::hint::black_box(&copy);
        }
        let per = started.elapsed() / rounds;
        println!("one check of a 20-input request (with a copy of it): {per:?}");
    }
}
