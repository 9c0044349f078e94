//! Tool schemas in the OpenAPI subset Gemini's `Schema` type accepts (see [`gemini_schema`]).

use serde_json::{Map, Value, json};

/// Schema keywords Gemini's `Schema` type accepts. Everything else (`additionalProperties`,
/// `$schema`, `exclusiveMinimum`, `examples`, ...) makes the request fail with 400.
const SCHEMA_KEYS: &[&str] = &[
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "properties",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "anyOf",
    "propertyOrdering",
    "default",
    "items",
    "minimum",
    "maximum",
];

/// How deep `$ref`s are inlined; a recursive schema is cut off there (as a bare object).
const MAX_REF_DEPTH: usize = 8;

/// Rewrites a JSON schema into the OpenAPI subset Gemini accepts:
///
/// - unsupported keywords are dropped, recursively (property *names* are kept, whatever
///   they are);
/// - `{"$ref": "#/$defs/X"}` (or `#/definitions/X`) is replaced by the definition, since
///   Gemini has no references;
/// - `type: ["string", "null"]` becomes `type: string, nullable: true`; several non-null
///   types become an `anyOf`;
/// - `const` becomes a one-value `enum`, `oneOf` becomes `anyOf` (close enough for the
///   model: it picks one);
/// - `format` is kept only where Gemini supports it (`enum`, `date-time`, and the number
///   formats), since e.g. `format: uri` is a 400;
/// - `required` keeps only names that are among the properties.
pub fn gemini_schema(schema: &Value) -> Value {
    let definitions = schema
        .get("$defs")
        .or_else(|| schema.get("definitions"))
        .and_then(Value::as_object);
    convert_schema(schema, definitions, 0)
}

fn convert_schema(schema: &Value, definitions: Option<&Map<String, Value>>, depth: usize) -> Value {
    let Some(object) = schema.as_object() else {
        // `true`/`false` schemas and other oddities: "anything".
        return json!({});
    };
    if let Some(reference) = object.get("$ref").and_then(Value::as_str) {
        let name = reference
            .strip_prefix("#/$defs/")
            .or_else(|| reference.strip_prefix("#/definitions/"));
        let target = name.and_then(|name| definitions.and_then(|defs| defs.get(name)));
        return match target {
            Some(target) if depth < MAX_REF_DEPTH => {
                let mut inlined = convert_schema(target, definitions, depth + 1);
                // Keywords next to the `$ref` (often a description) refine the target.
                if let Value::Object(inlined) = &mut inlined
                    && let Some(Value::String(description)) = object.get("description")
                {
                    inlined.insert("description".into(), Value::String(description.clone()));
                }
                inlined
            }
            _ => {
                tracing::debug!(
                    reference,
                    "schema reference not inlined (unknown or too deep)"
                );
                json!({ "type": "object" })
            }
        };
    }

    let mut out = Map::new();
    for (key, value) in object {
        match key.as_str() {
            "type" => convert_type(value, &mut out),
            "properties" => {
                if let Some(properties) = value.as_object() {
                    let converted = properties
                        .iter()
                        .map(|(name, property)| {
                            (name.clone(), convert_schema(property, definitions, depth))
                        })
                        .collect();
                    out.insert("properties".into(), Value::Object(converted));
                }
            }
            "items" => {
                let items = match value {
                    // Tuple form: Gemini has one item schema.
                    Value::Array(items) => items.first().cloned().unwrap_or_else(|| json!({})),
                    other => other.clone(),
                };
                out.insert("items".into(), convert_schema(&items, definitions, depth));
            }
            "anyOf" | "oneOf" => {
                if let Some(options) = value.as_array() {
                    let converted: Vec<Value> = options
                        .iter()
                        .filter(|option| option.get("type").and_then(Value::as_str) != Some("null"))
                        .map(|option| convert_schema(option, definitions, depth))
                        .collect();
                    if converted.len() < options.len() {
                        out.insert("nullable".into(), Value::Bool(true));
                    }
                    match converted.len() {
                        0 => {}
                        1 => {
                            if let Some(Value::Object(only)) = converted.into_iter().next() {
                                for (k, v) in only {
                                    out.entry(k).or_insert(v);
                                }
                            }
                        }
                        _ => {
                            out.insert("anyOf".into(), Value::Array(converted));
                        }
                    }
                }
            }
            "const" => {
                out.insert("enum".into(), json!([value]));
            }
            "format" => {
                if let Some(format) = value.as_str()
                    && matches!(
                        format,
                        "enum" | "date-time" | "int32" | "int64" | "float" | "double"
                    )
                {
                    out.insert("format".into(), value.clone());
                }
            }
            key if SCHEMA_KEYS.contains(&key) => {
                out.insert(key.to_owned(), value.clone());
            }
            _ => {}
        }
    }
    // Gemini enums are string enums and want the type said.
    if !out.contains_key("type")
        && !out.contains_key("anyOf")
        && out
            .get("enum")
            .and_then(Value::as_array)
            .is_some_and(|values| values.iter().all(Value::is_string))
    {
        out.insert("type".into(), Value::String("string".into()));
    }
    if let Some(Value::Array(required)) = out.get("required") {
        let properties = out.get("properties").and_then(Value::as_object);
        let kept: Vec<Value> = required
            .iter()
            .filter(|name| {
                name.as_str()
                    .is_some_and(|name| properties.is_some_and(|p| p.contains_key(name)))
            })
            .cloned()
            .collect();
        if kept.is_empty() {
            out.remove("required");
        } else {
            out.insert("required".into(), Value::Array(kept));
        }
    }
    Value::Object(out)
}

/// `type` may be a list in JSON schema; Gemini wants one type plus `nullable`.
fn convert_type(value: &Value, out: &mut Map<String, Value>) {
    match value {
        Value::String(_) => {
            out.insert("type".into(), value.clone());
        }
        Value::Array(types) => {
            let names: Vec<&str> = types.iter().filter_map(Value::as_str).collect();
            if names.contains(&"null") {
                out.insert("nullable".into(), Value::Bool(true));
            }
            let concrete: Vec<&str> = names.into_iter().filter(|t| *t != "null").collect();
            match concrete.as_slice() {
                [] => {}
                [one] => {
                    out.insert("type".into(), Value::String((*one).to_owned()));
                }
                many => {
                    let options = many.iter().map(|t| json!({ "type": t })).collect();
                    out.insert("anyOf".into(), Value::Array(options));
                }
            }
        }
        _ => {}
    }
}
