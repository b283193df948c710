//! The part both ADS variants share: one task per stream that feeds client requests and
//! published resource sets to a protocol state machine ([`Protocol`]) and reports what
//! happens to the node registry and the metrics ([`Tracker`]).

use std::collections::BTreeSet;
use std::hash::{Hash as _, Hasher as _};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};

use super::status::{MAX_NACK_DETAIL_BYTES, NodeRegistry, StreamKind, XdsMetrics};
use super::{Published, Resource, ResourceSet, Shared, TypeUrl};

/// How many responses may wait for a slow client before the stream stops reading requests.
const OUTBOX: usize = 16;
/// How many requests a stream holds while nothing has been published yet. Envoy sends one
/// per resource type and then waits; a client that keeps sending is cut off.
const HELD: usize = 64;

/// An ADS variant: what it does with a request and with a newly published set.
pub(crate) trait Protocol: Default + Send + 'static {
    /// The client's message.
    type Request: Send + 'static;
    /// The server's message.
    type Response: Send + 'static;
    /// For the node registry.
    const KIND: StreamKind;

    /// The node, which Envoy sends on the first request of a stream.
    fn node(request: &Self::Request) -> Option<&Node>;

    /// Handles a request (subscription change, ACK or NACK); at most one response.
    fn on_request(
        &mut self,
        request: &Self::Request,
        set: &ResourceSet,
        tracker: &Tracker<'_>,
    ) -> Result<Option<Self::Response>, Status>;

    /// Handles a new resource set: one response per type whose subscribed resources changed,
    /// clusters before listeners.
    fn on_publish(&mut self, set: &ResourceSet, tracker: &Tracker<'_>) -> Vec<Self::Response>;
}

/// Where a stream reports what it sent and what its client accepted or rejected.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tracker<'a> {
    pub(crate) node_id: &'a str,
    pub(crate) registry: &'a NodeRegistry,
    pub(crate) metrics: &'a XdsMetrics,
}

impl Tracker<'_> {
    pub(crate) fn sent(&self, t: TypeUrl, version: &str, nonce: &str, resources: usize) {
        tracing::debug!(
            node = self.node_id,
            r#type = t.label(),
            version,
            nonce,
            resources,
            "xDS push"
        );
        self.registry.sent(self.node_id, t, version);
        self.metrics.pushed(t);
    }

    pub(crate) fn acked(&self, t: TypeUrl, version: &str) {
        tracing::debug!(node = self.node_id, r#type = t.label(), version, "xDS ACK");
        self.registry.acked(self.node_id, t, version);
        self.metrics.acked(t);
    }

    /// Records the client's answer to a response: ACK, or NACK when `error` is set.
    pub(crate) fn answered(
        &self,
        t: TypeUrl,
        version: &str,
        error: Option<&envoy_types::pb::google::rpc::Status>,
    ) {
        match error {
            Some(e) => self.nacked(t, version, &e.message),
            None => self.acked(t, version),
        }
    }

    pub(crate) fn nacked(&self, t: TypeUrl, version: &str, error: &str) {
        // The client's text, bounded like what the registry keeps.
        let shown = error.get(..MAX_NACK_DETAIL_BYTES).unwrap_or(error);
        tracing::warn!(
            node = self.node_id,
            r#type = t.label(),
            version,
            error = shown,
            error_bytes = error.len(),
            "xDS NACK: Envoy rejected the configuration"
        );
        self.registry.nacked(self.node_id, t, version, error);
        self.metrics.nacked(t);
    }
}

/// The type of a request, or `None` for a type this server does not serve (ignored:
/// Envoy then waits for its initial-fetch timeout and goes on without it).
pub(crate) fn request_type(type_url: &str, node_id: &str) -> Result<Option<TypeUrl>, Status> {
    if type_url.is_empty() {
        return Err(Status::invalid_argument(
            "type_url is empty: every request on an ADS stream must name its resource type",
        ));
    }
    match type_url.parse::<TypeUrl>() {
        Ok(t) => Ok(Some(t)),
        Err(e) => {
            tracing::warn!(node = node_id, error = %e, "ignoring a subscription to a type this server does not serve");
            Ok(None)
        }
    }
}

/// How many unanswered responses per type are remembered for matching ACKs; a client
/// answers every response in order, so only a burst of pushes overflows it.
const PENDING: usize = 32;

/// The responses of one type a client has not answered yet: the one place nonces are
/// matched to versions, for both ADS variants.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// (nonce, version), oldest first.
    sent: std::collections::VecDeque<(String, String)>,
}

/// What a client's answer refers to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Answered {
    /// The version of the response answered.
    pub(crate) version: String,
    /// Whether it was the latest response (else the client has a newer one to answer).
    pub(crate) latest: bool,
}

impl Pending {
    /// Records a response sent.
    pub(crate) fn push(&mut self, nonce: &str, version: &str) {
        if self.sent.len() == PENDING {
            self.sent.pop_front();
        }
        self.sent.push_back((nonce.to_owned(), version.to_owned()));
    }

    /// Matches an answer's nonce; forgets that response and every older one.
    pub(crate) fn answer(&mut self, nonce: &str) -> Option<Answered> {
        let i = self.sent.iter().position(|(n, _)| n == nonce)?;
        let latest = i + 1 == self.sent.len();
        let (_, version) = self.sent.drain(..=i).next_back()?;
        Some(Answered { version, latest })
    }
}

/// Which resources of one type a stream wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Subscription {
    /// Every resource of the type.
    Wildcard,
    /// These names.
    Names(BTreeSet<String>),
}

impl Subscription {
    /// The resources of `set` this subscription selects, sorted by name.
    pub(crate) fn select<'s>(&self, t: TypeUrl, set: &'s ResourceSet) -> Vec<&'s Resource> {
        match self {
            Subscription::Wildcard => set.resources(t).collect(),
            Subscription::Names(names) => names.iter().filter_map(|n| set.get(t, n)).collect(),
        }
    }

    /// A hash of the selected resources' names and contents.
    pub(crate) fn hash(selected: &[&Resource]) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for r in selected {
            r.name().hash(&mut h);
            r.hash().hash(&mut h);
        }
        h.finish()
    }
}

/// Removes the stream from the registry and the gauge however its task ends.
struct Connected<'a> {
    shared: &'a Shared,
    node_id: String,
}

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        self.shared.registry.disconnected(&self.node_id);
        self.shared.metrics.stream_closed();
        tracing::info!(node = %self.node_id, "ADS stream closed");
    }
}

/// Resolves once the server is shutting down (or gone).
async fn closing(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: drop it here, not in the caller.
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Starts the task serving one ADS stream; returns the receiving end of its responses.
pub(crate) fn spawn<P: Protocol>(
    shared: Arc<Shared>,
    requests: Streaming<P::Request>,
) -> mpsc::Receiver<Result<P::Response, Status>> {
    let (tx, rx) = mpsc::channel(OUTBOX);
    tokio::spawn(async move {
        run::<P>(&shared, requests, &tx).await;
    });
    rx
}

async fn run<P: Protocol>(
    shared: &Shared,
    mut requests: Streaming<P::Request>,
    tx: &mpsc::Sender<Result<P::Response, Status>>,
) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut sets: watch::Receiver<Published> = shared.sets.clone();
    let first = tokio::select! {
        m = requests.message() => m,
        _ = closing(&mut shutdown) => return,
    };
    let first = match first {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(status) => {
            tracing::debug!(%status, "ADS stream failed before its first request");
            return;
        }
    };
    let Some(node) = P::node(&first).filter(|n| !n.id.is_empty()) else {
        let _ = tx
            .send(Err(Status::invalid_argument(
                "the first request on an ADS stream must carry node.id",
            )))
            .await;
        return;
    };
    if let Err(refused) = shared.registry.connected(&node.id, &node.cluster, P::KIND) {
        let shown: String = node.id.chars().take(64).collect();
        tracing::warn!(node = %shown, reason = refused.label(), "ADS stream refused: {refused}");
        shared.metrics.refused(&refused);
        let status = match refused {
            super::NodeRefused::IdTooLong { .. } => Status::invalid_argument(refused.to_string()),
            super::NodeRefused::Full { .. } => Status::resource_exhausted(refused.to_string()),
        };
        let _ = tx.send(Err(status)).await;
        return;
    }
    let node_id = node.id.clone();
    shared.metrics.stream_opened();
    let _connected = Connected {
        shared,
        node_id: node_id.clone(),
    };
    tracing::info!(node = %node_id, cluster = %node.cluster, kind = ?P::KIND, "ADS stream opened");
    let tracker = Tracker {
        node_id: &node_id,
        registry: &shared.registry,
        metrics: &shared.metrics,
    };
    let mut state = P::default();
    let mut next = Some(first);
    // Requests that arrived before anything was published: answered once the first set
    // is, so that a reconnecting Envoy keeps its configuration instead of being told that
    // it is empty.
    let mut held: Vec<P::Request> = Vec::new();
    loop {
        let responses = if let Some(request) = next.take() {
            let current = sets.borrow().clone();
            let Some(set) = current else {
                if held.len() == HELD {
                    let _ = tx
                        .send(Err(Status::resource_exhausted(
                            "too many requests before the control plane has a configuration to serve",
                        )))
                        .await;
                    return;
                }
                if held.is_empty() {
                    tracing::info!(node = %node_id, "no configuration built yet: holding the stream's requests");
                }
                held.push(request);
                continue;
            };
            match state.on_request(&request, &set, &tracker) {
                Ok(r) => r.into_iter().collect(),
                Err(status) => {
                    tracing::warn!(node = %node_id, %status, "closing an ADS stream on a malformed request");
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            }
        } else {
            tokio::select! {
                m = requests.message() => match m {
                    Ok(Some(r)) => { next = Some(r); continue; }
                    Ok(None) => return,
                    Err(status) => {
                        tracing::debug!(node = %node_id, %status, "ADS stream ended by the client");
                        return;
                    }
                },
                changed = sets.changed() => {
                    if changed.is_err() {
                        let _ = tx.send(Err(Status::unavailable("xDS publisher stopped"))).await;
                        return;
                    }
                    let Some(set) = sets.borrow_and_update().clone() else {
                        continue;
                    };
                    let mut out = Vec::new();
                    for request in held.drain(..) {
                        match state.on_request(&request, &set, &tracker) {
                            Ok(r) => out.extend(r),
                            Err(status) => {
                                tracing::warn!(node = %node_id, %status, "closing an ADS stream on a malformed request");
                                let _ = tx.send(Err(status)).await;
                                return;
                            }
                        }
                    }
                    out.extend(state.on_publish(&set, &tracker));
                    out
                }
                _ = closing(&mut shutdown) => {
                    let _ = tx.send(Err(Status::unavailable("control plane shutting down"))).await;
                    return;
                }
                _ = tx.closed() => return,
            }
        };
        for r in responses {
            // A client that stops reading must not hold up shutdown.
            tokio::select! {
                sent = tx.send(Ok(r)) => if sent.is_err() { return },
                _ = closing(&mut shutdown) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_matches_answers_in_order() {
        let mut p = Pending::default();
        p.push("1", "v1");
        p.push("2", "v2");
        p.push("3", "v3");
        let cases = [
            ("unknown nonce", "9", None),
            (
                "an older response",
                "2",
                Some(Answered {
                    version: "v2".into(),
                    latest: false,
                }),
            ),
            ("older than one answered", "1", None),
            (
                "the latest",
                "3",
                Some(Answered {
                    version: "v3".into(),
                    latest: true,
                }),
            ),
            ("answered twice", "3", None),
        ];
        for (case, nonce, want) in cases {
            assert_eq!(p.answer(nonce), want, "{case}");
        }
    }

    #[test]
    fn pending_forgets_the_oldest_beyond_its_bound() {
        let mut p = Pending::default();
        for i in 0..=PENDING {
            p.push(&i.to_string(), "v");
        }
        assert_eq!(p.answer("0"), None);
        assert!(p.answer("1").is_some());
    }
}
