//! Generators for the property tests: arbitrary JSON values and the raw
//! bytes a misbehaving peer or client might send. Test-only.

use proptest::prelude::*;
use serde_json::{Map, Value};

/// Any JSON value, nested a few levels deep, with strings that include
/// control characters, NULs and non-ASCII text.
pub(crate) fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((any::<String>(), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

/// A JSON object whose keys are mostly drawn from `known` (with values of
/// any type), plus some unknown ones: the inputs a schema-aware decoder must
/// sort out without panicking.
pub(crate) fn json_object_with_keys(
    known: &'static [&'static str],
) -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        4 => prop::sample::select(known).prop_map(str::to_string),
        1 => any::<String>(),
    ];
    prop::collection::vec((key, json_value()), 0..8)
        .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>()))
}

/// Bytes that are often almost-JSON: real JSON with bytes flipped, cut or
/// inserted, or plain noise.
pub(crate) fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        (
            json_value(),
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            any::<prop::sample::Index>(),
        )
            .prop_map(|(value, flips, cut)| {
                let mut bytes = serde_json::to_vec(&value).expect("a Value serialises");
                if !bytes.is_empty() {
                    for (at, byte) in flips {
                        let at = at.index(bytes.len());
                        bytes[at] = byte;
                    }
                    bytes.truncate(cut.index(bytes.len() + 1));
                }
                bytes
            }),
    ]
}
