//! The guardrail plugins of the policy variants: PII masking and a regex rewrite, each on
//! the request and on the response, and the full policy set of issue 14's benchmark
//! (identity with ten rules, local limits, both plugins).

use serde_json::{Value, json};

use crate::catalog;

/// PII detection with every detector, masking, on the call's arguments and its result.
pub fn pii() -> Value {
    json!({"name": "pii", "priority": 10,
           "hooks": ["tool_pre_invoke", "tool_post_invoke"],
           "pii": {"action": "mask"}})
}

/// A regex search and replace on the call's arguments and its result.
pub fn regex() -> Value {
    json!({"name": "regex", "priority": 20,
    "hooks": ["tool_pre_invoke", "tool_post_invoke"],
    "regex": {"rules": [
        {"pattern": "(?i)password=[^ \"]+", "replacement": "password=[redacted]"},
        {"pattern": "internal\\.example\\.com", "replacement": "[host]"}
    ]}})
}

/// `snapshot` (a snapshot's JSON) with `plugins`, and with the local limits of
/// [`catalog::LOCAL_LIMITS`] when `limited`.
pub fn with_policy(snapshot: &str, plugins: &[Value], limited: bool) -> anyhow::Result<String> {
    let mut doc: Value = serde_json::from_str(snapshot)?;
    doc["plugins"] = Value::Array(plugins.to_vec());
    if limited {
        doc["limits"] = serde_json::from_str(catalog::LOCAL_LIMITS)?;
    }
    Ok(doc.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_snapshots_are_valid_snapshots() {
        for (plugins, limited) in [
            (vec![pii()], false),
            (vec![regex()], false),
            (vec![pii(), regex()], true),
        ] {
            let doc = with_policy(&catalog::snapshot("tools"), &plugins, limited).unwrap();
            let snap = mcpgw_core::snapshot::Snapshot::from_json(doc.as_bytes());
            assert!(snap.is_ok(), "{doc}: {:?}", snap.err());
            let snap = snap.unwrap();
            assert_eq!(snap.plugins.len(), plugins.len());
            assert_eq!(snap.limits.default.is_some(), limited);
        }
    }
}
