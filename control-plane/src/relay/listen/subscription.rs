//! One client's `subscriptions/listen` (MCP 2026-07-28): what it opted into, and the
//! frames of its stream. Pure: the relay's plumbing decides where frames come from.
//!
//! Every frame of a listen stream carries the listen request's JSON-RPC id under
//! `_meta["io.modelcontextprotocol/subscriptionId"]`, and a server never sends a kind the
//! client did not ask for. The relay's frames come from several places (each upstream's
//! own listen stream, the 2025-era GET stream of an upstream that predates listen, the
//! gateway's catalog), so every notification is checked against the client's filter and
//! stamped again here, whatever its source stamped or did not.

use serde_json::{Map, Value, json};

use super::super::error::RelayError;

/// The `_meta` key naming the subscription on every frame of its stream.
pub(in crate::relay) const SUBSCRIPTION_ID_META: &str = "io.modelcontextprotocol/subscriptionId";
/// The first frame of a listen stream.
pub(in crate::relay) const ACKNOWLEDGED: &str = "notifications/subscriptions/acknowledged";
/// `notifications/resources/updated`.
const RESOURCE_UPDATED: &str = "notifications/resources/updated";
/// Resource URIs one listen may subscribe to; more are refused (-32602): each one is a
/// `resources/subscribe` the relay may send to a 2025-era upstream.
pub(in crate::relay) const MAX_URIS: usize = 256;
/// Longest resource URI a listen may subscribe to (bytes).
pub(in crate::relay) const MAX_URI_BYTES: usize = 4096;

/// A catalog list whose changes a client may listen to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::relay) enum Kind {
    /// `tools/list`.
    Tools,
    /// `prompts/list`.
    Prompts,
    /// `resources/list` and `resources/templates/list`.
    Resources,
}

impl Kind {
    /// Every kind.
    pub(in crate::relay) const ALL: [Kind; 3] = [Kind::Tools, Kind::Prompts, Kind::Resources];

    /// Its `list_changed` notification.
    pub(in crate::relay) fn list_changed(self) -> &'static str {
        match self {
            Kind::Tools => "notifications/tools/list_changed",
            Kind::Prompts => "notifications/prompts/list_changed",
            Kind::Resources => "notifications/resources/list_changed",
        }
    }

    /// The kind whose `list_changed` notification is `method`.
    fn of_list_changed(method: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.list_changed() == method)
    }
}

/// What a client's `subscriptions/listen` opted into (the relay honors all of it: a kind
/// no upstream ever changes is honored and never fires, as the reference SDK does).
#[derive(Debug, Clone, PartialEq)]
pub(in crate::relay) struct Subscription {
    /// The listen request's JSON-RPC id: the subscription id.
    id: Value,
    tools: bool,
    prompts: bool,
    resources: bool,
    /// `resourceSubscriptions`: `notifications/resources/updated` for these URIs.
    uris: Vec<String>,
}

/// The request id of `message`, when it is usable as one (a string or a number).
fn request_id(message: &Map<String, Value>) -> Option<&Value> {
    message
        .get("id")
        .filter(|id| id.is_string() || id.is_number())
}

impl Subscription {
    /// Reads a `subscriptions/listen` request. Refusals are JSON-RPC errors: a body that
    /// is no JSON (-32700), no listen request with an id (-32600), or whose filter is
    /// malformed or too large (-32602).
    pub(in crate::relay) fn parse(body: &[u8]) -> Result<Subscription, RelayError> {
        let message: Value =
            serde_json::from_slice(body).map_err(|e| RelayError::Parse(e.to_string()))?;
        let Value::Object(message) = message else {
            return Err(RelayError::NotOneMessage);
        };
        let id = request_id(&message).cloned();
        let (Some(id), Some("subscriptions/listen")) =
            (id.clone(), message.get("method").and_then(Value::as_str))
        else {
            return Err(RelayError::NotAListen { id });
        };
        let invalid = |reason: String| RelayError::ListenParams {
            id: Some(id.clone()),
            reason,
        };
        let filter = message
            .get("params")
            .and_then(|p| p.get("notifications"))
            .and_then(Value::as_object)
            .ok_or_else(|| invalid("params.notifications must be an object".into()))?;
        let flag = |key: &str| -> Result<bool, RelayError> {
            match filter.get(key) {
                None | Some(Value::Null) => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(other) => Err(invalid(format!(
                    "params.notifications.{key} must be a boolean (got {other})"
                ))),
            }
        };
        let uris = match filter.get("resourceSubscriptions") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                if items.len() > MAX_URIS {
                    return Err(invalid(format!(
                        "params.notifications.resourceSubscriptions names {} URIs; at most {MAX_URIS} are served",
                        items.len()
                    )));
                }
                let mut uris = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let uri = item
                        .as_str()
                        .filter(|u| !u.is_empty() && u.len() <= MAX_URI_BYTES)
                        .ok_or_else(|| {
                            invalid(format!(
                                "params.notifications.resourceSubscriptions[{i}] must be a URI of 1 to {MAX_URI_BYTES} bytes"
                            ))
                        })?;
                    if !uris.iter().any(|u| u == uri) {
                        uris.push(uri.to_owned());
                    }
                }
                uris
            }
            Some(_) => {
                return Err(invalid(
                    "params.notifications.resourceSubscriptions must be an array of URIs".into(),
                ));
            }
        };
        Ok(Subscription {
            tools: flag("toolsListChanged")?,
            prompts: flag("promptsListChanged")?,
            resources: flag("resourcesListChanged")?,
            uris,
            id,
        })
    }

    /// The resource URIs subscribed to.
    pub(in crate::relay) fn uris(&self) -> &[String] {
        &self.uris
    }

    /// Whether the client listens to changes of `kind`.
    pub(in crate::relay) fn wants(&self, kind: Kind) -> bool {
        match kind {
            Kind::Tools => self.tools,
            Kind::Prompts => self.prompts,
            Kind::Resources => self.resources,
        }
    }

    /// Whether an update of `uri` is within the subscription: a URI subscribed to, or a
    /// sub-resource of one (which MCP allows a server to report).
    fn covers(&self, uri: &str) -> bool {
        self.uris.iter().any(|s| {
            uri == s
                || uri
                    .strip_prefix(s.as_str())
                    .is_some_and(|rest| s.ends_with('/') || rest.starts_with(['/', '?', '#']))
        })
    }

    fn meta(&self) -> Value {
        json!({ SUBSCRIPTION_ID_META: self.id })
    }

    /// The acknowledgement, the stream's first frame: what the relay honors (every kind
    /// asked for; extension keys it does not know are left out, as not honored).
    pub(in crate::relay) fn acknowledgement(&self) -> String {
        let mut honored = Map::new();
        for (key, on) in [
            ("toolsListChanged", self.tools),
            ("promptsListChanged", self.prompts),
            ("resourcesListChanged", self.resources),
        ] {
            if on {
                honored.insert(key.into(), Value::Bool(true));
            }
        }
        if !self.uris.is_empty() {
            honored.insert("resourceSubscriptions".into(), json!(self.uris));
        }
        json!({"jsonrpc": "2.0", "method": ACKNOWLEDGED,
            "params": {"notifications": honored, "_meta": self.meta()}})
        .to_string()
    }

    /// The result that ends the stream gracefully (its last frame): the subscription was
    /// ended on purpose, not lost.
    pub(in crate::relay) fn closing(&self) -> String {
        json!({"jsonrpc": "2.0", "id": self.id,
            "result": {"_meta": self.meta(), "resultType": "complete"}})
        .to_string()
    }

    /// `kind`'s `list_changed` for this stream, if the client listens to it.
    pub(in crate::relay) fn list_changed(&self, kind: Kind) -> Option<String> {
        self.wants(kind).then(|| {
            json!({"jsonrpc": "2.0", "method": kind.list_changed(),
                "params": {"_meta": self.meta()}})
            .to_string()
        })
    }

    /// A notification from an upstream (a 2026-era listen stream, or a 2025-era GET
    /// stream) as this stream's frame: only the listen kinds the client opted into, with
    /// the rest of its params kept and `_meta` stamped with this subscription. `None` for
    /// anything else (requests, responses, acknowledgements, logs, progress).
    pub(in crate::relay) fn admit(&self, message: &Value) -> Option<String> {
        let message = message.as_object()?;
        if message.contains_key("id") {
            return None;
        }
        let method = message.get("method")?.as_str()?;
        let admitted = match Kind::of_list_changed(method) {
            Some(kind) => self.wants(kind),
            None if method == RESOURCE_UPDATED => message
                .get("params")
                .and_then(|p| p.get("uri"))
                .and_then(Value::as_str)
                .is_some_and(|uri| self.covers(uri)),
            None => false,
        };
        if !admitted {
            return None;
        }
        let mut params = match message.get("params") {
            Some(Value::Object(p)) => p.clone(),
            _ => Map::new(),
        };
        let mut meta = match params.remove("_meta") {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        meta.insert(SUBSCRIPTION_ID_META.into(), self.id.clone());
        params.insert("_meta".into(), Value::Object(meta));
        Some(json!({"jsonrpc": "2.0", "method": method, "params": params}).to_string())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn listen(notifications: Value) -> Vec<u8> {
        json!({"jsonrpc": "2.0", "id": "sub-1", "method": "subscriptions/listen",
            "params": {"notifications": notifications, "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28"}}})
        .to_string()
        .into_bytes()
    }

    fn sub(notifications: Value) -> Subscription {
        Subscription::parse(&listen(notifications)).unwrap()
    }

    fn parsed(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn the_acknowledgement_echoes_what_is_honored_stamped() {
        let s = sub(
            json!({"toolsListChanged": true, "promptsListChanged": false,
            "resourceSubscriptions": ["a://1", "a://1", "b://2"], "taskIds": ["t"]}),
        );
        assert_eq!(
            parsed(&s.acknowledgement()),
            json!({"jsonrpc": "2.0", "method": ACKNOWLEDGED, "params": {
                "notifications": {"toolsListChanged": true,
                                  "resourceSubscriptions": ["a://1", "b://2"]},
                "_meta": {SUBSCRIPTION_ID_META: "sub-1"}}})
        );
        let nothing = sub(json!({}));
        assert_eq!(
            parsed(&nothing.acknowledgement())["params"]["notifications"],
            json!({})
        );
        assert_eq!(
            parsed(&s.closing()),
            json!({"jsonrpc": "2.0", "id": "sub-1", "result": {
                "_meta": {SUBSCRIPTION_ID_META: "sub-1"}, "resultType": "complete"}})
        );
        let numeric = Subscription::parse(
            br#"{"jsonrpc":"2.0","id":7,"method":"subscriptions/listen","params":{"notifications":{"promptsListChanged":true}}}"#,
        )
        .unwrap();
        assert_eq!(
            parsed(&numeric.list_changed(Kind::Prompts).unwrap())["params"]["_meta"],
            json!({SUBSCRIPTION_ID_META: 7})
        );
    }

    #[test]
    fn upstream_notifications_are_filtered_and_restamped() {
        let s = sub(json!({"toolsListChanged": true,
            "resourceSubscriptions": ["file:///docs/", "peer://greeting"]}));
        let note = |method: &str, params: Value| json!({"jsonrpc": "2.0", "method": method, "params": params});
        let stamped = |method: &str, params: Value| Some(note(method, params));
        let cases: Vec<(&str, Value, Option<Value>)> = vec![
            (
                "a 2025 list_changed, unstamped",
                json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}),
                stamped(
                    "notifications/tools/list_changed",
                    json!({"_meta": {SUBSCRIPTION_ID_META: "sub-1"}}),
                ),
            ),
            (
                "an upstream's stamp is replaced, its other _meta kept",
                note(
                    "notifications/tools/list_changed",
                    json!({"_meta": {SUBSCRIPTION_ID_META: "up-9", "x": 1}}),
                ),
                stamped(
                    "notifications/tools/list_changed",
                    json!({"_meta": {SUBSCRIPTION_ID_META: "sub-1", "x": 1}}),
                ),
            ),
            (
                "a kind not asked for",
                note("notifications/prompts/list_changed", json!({})),
                None,
            ),
            (
                "resources/list_changed not asked for",
                note("notifications/resources/list_changed", json!({})),
                None,
            ),
            (
                "an update of a subscribed URI",
                note(
                    "notifications/resources/updated",
                    json!({"uri": "peer://greeting"}),
                ),
                stamped(
                    "notifications/resources/updated",
                    json!({"uri": "peer://greeting", "_meta": {SUBSCRIPTION_ID_META: "sub-1"}}),
                ),
            ),
            (
                "an update of a sub-resource",
                note(
                    "notifications/resources/updated",
                    json!({"uri": "file:///docs/a.md"}),
                ),
                stamped(
                    "notifications/resources/updated",
                    json!({"uri": "file:///docs/a.md", "_meta": {SUBSCRIPTION_ID_META: "sub-1"}}),
                ),
            ),
            (
                "an update of a URI that only shares a prefix",
                note(
                    "notifications/resources/updated",
                    json!({"uri": "peer://greetings"}),
                ),
                None,
            ),
            (
                "an update without a URI",
                note("notifications/resources/updated", json!({})),
                None,
            ),
            (
                "a log message (no listen kind)",
                note(
                    "notifications/message",
                    json!({"level": "info", "data": "x"}),
                ),
                None,
            ),
            (
                "the upstream's own acknowledgement",
                note(ACKNOWLEDGED, json!({"notifications": {}})),
                None,
            ),
            (
                "a request (a 2025 upstream's ping)",
                json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}),
                None,
            ),
            (
                "the upstream's closing result",
                json!({"jsonrpc": "2.0", "id": "sub-1", "result": {}}),
                None,
            ),
            ("not an object", json!([1]), None),
        ];
        for (name, from, want) in cases {
            let got = s.admit(&from).map(|t| parsed(&t));
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn bad_listen_requests_are_refused_with_their_code() {
        let cases: Vec<(&str, Vec<u8>, i64, Option<Value>)> = vec![
            ("not JSON", b"{".to_vec(), -32700, None),
            ("not an object", b"[1]".to_vec(), -32600, None),
            (
                "another method",
                br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#.to_vec(),
                -32600,
                Some(json!(1)),
            ),
            (
                "no id",
                br#"{"jsonrpc":"2.0","method":"subscriptions/listen","params":{"notifications":{}}}"#.to_vec(),
                -32600,
                None,
            ),
            (
                "a null id",
                br#"{"jsonrpc":"2.0","id":null,"method":"subscriptions/listen","params":{"notifications":{}}}"#.to_vec(),
                -32600,
                None,
            ),
            (
                "no filter",
                br#"{"jsonrpc":"2.0","id":"s","method":"subscriptions/listen","params":{}}"#.to_vec(),
                -32602,
                Some(json!("s")),
            ),
            (
                "a flag that is no boolean",
                listen(json!({"toolsListChanged": "yes"})),
                -32602,
                Some(json!("sub-1")),
            ),
            (
                "URIs that are no array",
                listen(json!({"resourceSubscriptions": "peer://x"})),
                -32602,
                Some(json!("sub-1")),
            ),
            (
                "an empty URI",
                listen(json!({"resourceSubscriptions": [""]})),
                -32602,
                Some(json!("sub-1")),
            ),
            (
                "a URI too long",
                listen(json!({"resourceSubscriptions": ["x".repeat(MAX_URI_BYTES + 1)]})),
                -32602,
                Some(json!("sub-1")),
            ),
            (
                "too many URIs",
                listen(json!({"resourceSubscriptions": (0..=MAX_URIS).map(|i| format!("u://{i}")).collect::<Vec<_>>()})),
                -32602,
                Some(json!("sub-1")),
            ),
        ];
        for (name, body, code, id) in cases {
            let e = Subscription::parse(&body).unwrap_err();
            assert_eq!(e.code(), code, "{name}: {e}");
            assert_eq!(e.status().as_u16(), 400, "{name}");
            assert_eq!(e.request_id(), id.as_ref(), "{name}");
        }
    }
}
