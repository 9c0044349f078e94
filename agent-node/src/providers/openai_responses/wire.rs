//! The Responses stream's wire shapes, as little as conclave reads. Unknown fields
//! (`sequence_number`, `obfuscation`, `annotations`, the echoed request settings, ...) are
//! skipped without allocating.

use serde::Deserialize;
use serde_json::Value;

/// Every event in one flat shape: each type fills the fields it has.
#[derive(Deserialize)]
pub(super) struct WireEvent {
    #[serde(default, rename = "type")]
    pub(super) kind: Option<String>,
    #[serde(default)]
    pub(super) output_index: Option<u64>,
    #[serde(default)]
    pub(super) item_id: Option<String>,
    #[serde(default)]
    pub(super) delta: Option<String>,
    #[serde(default)]
    pub(super) arguments: Option<String>,
    #[serde(default)]
    pub(super) item: Option<WireItem>,
    #[serde(default)]
    pub(super) response: Option<WireResponse>,
}

/// For a payload that does not fit [`WireEvent`]: only its type, to decide whether that
/// matters.
#[derive(Deserialize)]
pub(super) struct TypeOnly {
    #[serde(default, rename = "type")]
    pub(super) kind: Option<String>,
}

#[derive(Deserialize, Default)]
pub(super) struct WireItem {
    #[serde(default, rename = "type")]
    pub(super) kind: Option<String>,
    #[serde(default)]
    pub(super) id: Option<String>,
    #[serde(default)]
    pub(super) call_id: Option<String>,
    #[serde(default)]
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) arguments: Option<String>,
    #[serde(default)]
    pub(super) encrypted_content: Option<String>,
    #[serde(default)]
    pub(super) summary: Option<Vec<WirePart>>,
    #[serde(default)]
    pub(super) content: Option<Vec<WirePart>>,
}

/// A content part (`output_text`, `refusal`) or a reasoning summary / text part.
#[derive(Deserialize)]
pub(super) struct WirePart {
    #[serde(default, rename = "type")]
    pub(super) kind: Option<String>,
    #[serde(default)]
    pub(super) text: Option<String>,
    #[serde(default)]
    pub(super) refusal: Option<String>,
}

#[derive(Deserialize, Default)]
pub(super) struct WireResponse {
    #[serde(default)]
    pub(super) status: Option<String>,
    #[serde(default)]
    pub(super) usage: Option<WireUsage>,
    #[serde(default)]
    pub(super) error: Option<WireError>,
    #[serde(default)]
    pub(super) incomplete_details: Option<WireIncomplete>,
    #[serde(default)]
    pub(super) output: Option<Vec<WireItem>>,
}

#[derive(Deserialize)]
pub(super) struct WireUsage {
    #[serde(default)]
    pub(super) input_tokens: Option<u64>,
    #[serde(default)]
    pub(super) output_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
pub(super) struct WireError {
    #[serde(default)]
    pub(super) code: Option<Value>,
    #[serde(default)]
    pub(super) message: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct WireIncomplete {
    #[serde(default)]
    pub(super) reason: Option<String>,
}
