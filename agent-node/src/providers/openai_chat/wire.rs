//! The Chat Completions stream's wire shapes, as little as conclave reads. Unknown fields
//! (`id`, `model`, `logprobs`, `obfuscation`, `channel`, ...) are skipped without allocating.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, Visitor};
use serde_json::Value;

#[derive(Deserialize)]
pub(super) struct WireChunk {
    #[serde(default)]
    pub(super) choices: Option<Vec<WireChoice>>,
    #[serde(default)]
    pub(super) usage: Option<WireUsage>,
    #[serde(default)]
    pub(super) x_groq: Option<GroqExtension>,
    /// Only looked at for presence; the text is re-parsed on this rare path.
    #[serde(default)]
    pub(super) error: Option<IgnoredValue>,
}

/// Records whether a field held something other than `null`, without keeping it.
pub(super) struct IgnoredValue {
    pub(super) null: bool,
}

impl IgnoredValue {
    pub(super) fn is_null(&self) -> bool {
        self.null
    }
}

impl<'de> Deserialize<'de> for IgnoredValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Option::<IgnoredAny>::deserialize(deserializer)?;
        Ok(Self {
            null: value.is_none(),
        })
    }
}

#[derive(Deserialize)]
pub(super) struct GroqExtension {
    #[serde(default)]
    pub(super) usage: Option<WireUsage>,
}

#[derive(Deserialize)]
pub(super) struct WireChoice {
    #[serde(default)]
    pub(super) index: Option<u32>,
    #[serde(default)]
    pub(super) delta: Option<WireDelta>,
    #[serde(default, deserialize_with = "lenient_text")]
    pub(super) finish_reason: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct WireDelta {
    #[serde(default, deserialize_with = "lenient_text")]
    pub(super) content: Option<String>,
    #[serde(default, deserialize_with = "lenient_text")]
    pub(super) reasoning_content: Option<String>,
    #[serde(default, deserialize_with = "lenient_text")]
    pub(super) reasoning: Option<String>,
    #[serde(default, deserialize_with = "lenient_text")]
    pub(super) refusal: Option<String>,
    #[serde(default)]
    pub(super) tool_calls: Option<Vec<WireToolCall>>,
}

#[derive(Deserialize)]
pub(super) struct WireToolCall {
    #[serde(default)]
    pub(super) index: Option<u32>,
    #[serde(default, deserialize_with = "lenient_text")]
    pub(super) id: Option<String>,
    #[serde(default)]
    pub(super) function: Option<WireFunction>,
}

#[derive(Deserialize)]
pub(super) struct WireFunction {
    #[serde(default, deserialize_with = "lenient_text")]
    pub(super) name: Option<String>,
    #[serde(default, deserialize_with = "lenient_text")]
    pub(super) arguments: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct WireUsage {
    #[serde(default)]
    pub(super) prompt_tokens: Option<u64>,
    #[serde(default)]
    pub(super) completion_tokens: Option<u64>,
}

/// A text field that some hosts fill with something else: `null` and numbers/booleans give
/// `None`; an array of parts (`[{"type":"text","text":"..."}]` or strings) gives the
/// concatenation of its text parts; an object gives its `text` field, if any.
pub(super) fn lenient_text<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    struct LenientText;

    impl<'de> Visitor<'de> for LenientText {
        type Value = Option<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string, null, or text parts")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_owned()))
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut text: Option<String> = None;
            while let Some(part) = seq.next_element::<Value>()? {
                if let Some(piece) = part_text(&part) {
                    text.get_or_insert_default().push_str(piece);
                }
            }
            Ok(text)
        }
        fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut text = None;
            while let Some(key) = map.next_key::<String>()? {
                if key == "text" {
                    text = map.next_value_seed(LenientTextSeed)?;
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(text)
        }
    }

    struct LenientTextSeed;

    impl<'de> de::DeserializeSeed<'de> for LenientTextSeed {
        type Value = Option<String>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(LenientText)
        }
    }

    deserializer.deserialize_any(LenientText)
}

/// The text of one content part; parts of other types (images, thinking blocks) give none.
pub(super) fn part_text(part: &Value) -> Option<&str> {
    match part {
        Value::String(text) => Some(text),
        Value::Object(object) => {
            let kind = object.get("type").and_then(Value::as_str);
            if kind.is_none_or(|k| k == "text" || k == "output_text") {
                object.get("text").and_then(Value::as_str)
            } else {
                None
            }
        }
        _ => None,
    }
}
