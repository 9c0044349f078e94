//! The W3C trace-context carrier that rides inside every message, so spans on an agent node
//! hang under the orchestrator's session trace.

use serde::{Deserialize, Serialize};

/// W3C trace-context fields (`traceparent`, `tracestate`, and any baggage) as ordered
/// key/value pairs. Empty when tracing is off.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TraceContext {
    pub fields: Vec<(String, String)>,
}

impl TraceContext {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    pub fn set(&mut self, key: &str, value: String) {
        if let Some(slot) = self
            .fields
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
        {
            slot.1 = value;
        } else {
            self.fields.push((key.to_owned(), value));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}
