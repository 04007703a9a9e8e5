//! From an OpenAPI 3.0 schema to a JSON Schema a validator can compile.
//!
//! OpenAPI 3.0 schemas are JSON Schema with three differences that matter for
//! validation: `nullable: true`, boolean `exclusiveMinimum`/`exclusiveMaximum`
//! (JSON Schema puts the limit there), and references into the document
//! (`#/components/schemas/X`), which mean nothing in a schema compiled on its
//! own. [`standalone`] rewrites one schema of the document with all three
//! resolved: the components it refers to (transitively) travel with it under
//! `$defs`, and its references point there. `nullable` is dropped: Cog's
//! validator ignores it, so an explicit `null` is refused where the type says
//! otherwise (an optional input left out is still `None` for the run), and
//! clients written against Cog rely on that answer.
//!
//! Data inside a schema (`default`, `enum`, `const`, examples, `x-` extensions)
//! is copied as it is, never rewritten.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

/// Where OpenAPI keeps named schemas, as references spell it.
const COMPONENTS_PREFIX: &str = "#/components/schemas/";

/// Where the same schemas live in a standalone JSON Schema.
const DEFS_PREFIX: &str = "#/$defs/";

/// Keywords whose values are data, not schemas.
fn is_data_keyword(key: &str) -> bool {
    matches!(key, "default" | "enum" | "const" | "example" | "examples") || key.starts_with("x-")
}

/// `schema` (taken from a document whose `components.schemas` are
/// `components`) as a JSON Schema that compiles on its own.
pub(crate) fn standalone(schema: &Value, components: &Map<String, Value>) -> Value {
    let mut translated = translate(schema);
    let mut wanted = BTreeSet::new();
    collect_refs(schema, &mut wanted);
    let mut defs = Map::new();
    // Follow references from referenced components too, each name once.
    let mut queue: Vec<String> = wanted.iter().cloned().collect();
    while let Some(name) = queue.pop() {
        if defs.contains_key(&name) {
            continue;
        }
        let Some(component) = components.get(&name) else {
            continue;
        };
        let mut more = BTreeSet::new();
        collect_refs(component, &mut more);
        queue.extend(more.into_iter().filter(|n| !defs.contains_key(n)));
        defs.insert(name, translate(component));
    }
    if defs.is_empty() {
        return translated;
    }
    match &mut translated {
        Value::Object(map) => {
            map.insert("$defs".into(), Value::Object(defs));
            translated
        }
        // `true`/`false` schemas have no room for definitions and need none.
        _ => translated,
    }
}

/// The names of the components `schema` refers to.
fn collect_refs(value: &Value, names: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                if key == "$ref" {
                    if let Some(name) = child
                        .as_str()
                        .and_then(|r| r.strip_prefix(COMPONENTS_PREFIX))
                    {
                        names.insert(unescape_pointer(name));
                    }
                } else if !is_data_keyword(key) {
                    collect_refs(child, names);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, names)),
        _ => {}
    }
}

/// One schema with OpenAPI's spellings turned into JSON Schema's.
fn translate(value: &Value) -> Value {
    match value {
        Value::Object(map) => translate_object(map),
        Value::Array(items) => Value::Array(items.iter().map(translate).collect()),
        other => other.clone(),
    }
}

fn translate_object(map: &Map<String, Value>) -> Value {
    let mut out = Map::with_capacity(map.len());
    for (key, value) in map {
        match key.as_str() {
            "nullable" => {}
            "$ref" => {
                let target = value
                    .as_str()
                    .and_then(|r| r.strip_prefix(COMPONENTS_PREFIX))
                    .map(|name| Value::String(format!("{DEFS_PREFIX}{name}")))
                    .unwrap_or_else(|| value.clone());
                out.insert(key.clone(), target);
            }
            k if is_data_keyword(k) => {
                out.insert(key.clone(), value.clone());
            }
            _ => {
                out.insert(key.clone(), translate(value));
            }
        }
    }
    // OpenAPI 3.0: `exclusiveMinimum: true` makes `minimum` exclusive.
    for (flag, limit) in [
        ("exclusiveMinimum", "minimum"),
        ("exclusiveMaximum", "maximum"),
    ] {
        match out.get(flag).and_then(Value::as_bool) {
            Some(true) => {
                out.remove(flag);
                if let Some(bound) = out.remove(limit) {
                    out.insert(flag.into(), bound);
                }
            }
            Some(false) => {
                out.remove(flag);
            }
            None => {}
        }
    }
    Value::Object(out)
}

/// A JSON pointer segment (`~1` is `/`, `~0` is `~`) as the name it encodes.
fn unescape_pointer(segment: &str) -> String {
    segment.replace("~1", "/").replace("~0", "~")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn components() -> Map<String, Value> {
        json!({
            "color": {"title": "color", "enum": ["red", "nullable"], "type": "string"},
            "Nested": {"type": "object", "properties": {"c": {"$ref": "#/components/schemas/color"}}},
            "Unused": {"type": "integer"},
        })
        .as_object()
        .unwrap()
        .clone()
    }

    #[test]
    fn nullable_is_dropped_as_cog_validates_without_it() {
        let out = standalone(
            &json!({"type": "array", "nullable": true, "items": {"type": "string", "nullable": true}}),
            &components(),
        );
        assert_eq!(out, json!({"type": "array", "items": {"type": "string"}}));
    }

    #[test]
    fn references_travel_with_the_schema_transitively() {
        let out = standalone(
            &json!({"allOf": [{"$ref": "#/components/schemas/Nested"}], "x-order": 1}),
            &components(),
        );
        assert_eq!(out["allOf"][0]["$ref"], "#/$defs/Nested");
        assert_eq!(
            out["$defs"]["Nested"]["properties"]["c"]["$ref"],
            "#/$defs/color"
        );
        assert!(out["$defs"].get("color").is_some());
        assert!(out["$defs"].get("Unused").is_none());
    }

    #[test]
    fn data_is_copied_untouched() {
        let schema = json!({
            "type": "object",
            "default": {"nullable": true, "$ref": "#/components/schemas/color"},
            "enum": [{"nullable": true}],
        });
        let out = standalone(&schema, &components());
        assert_eq!(out, schema);
    }

    #[test]
    fn boolean_exclusive_bounds_take_the_limit() {
        let out = standalone(
            &json!({"type": "number", "minimum": 1, "exclusiveMinimum": true, "maximum": 5, "exclusiveMaximum": false}),
            &Map::new(),
        );
        assert_eq!(
            out,
            json!({"type": "number", "exclusiveMinimum": 1, "maximum": 5})
        );
    }
}
