//! State-of-the-world ADS (`StreamAggregatedResources`): every response carries all the
//! subscribed resources of its type; a type is pushed only when that selection changed.

use std::collections::{BTreeSet, HashMap};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use tonic::Status;

use super::status::StreamKind;
use super::stream::{Pending, Protocol, Subscription, Tracker, request_type};
use super::{ResourceSet, TypeUrl};

/// What one stream was sent, per type.
#[derive(Debug)]
struct TypeState {
    subscription: Subscription,
    /// Nonce of the last response; a request quoting an older one is stale.
    nonce: String,
    /// Responses not answered yet.
    pending: Pending,
    /// Hash of the resources in the last response.
    sent: u64,
}

/// One state-of-the-world stream.
#[derive(Debug, Default)]
pub(crate) struct Sotw {
    nonces: u64,
    types: HashMap<TypeUrl, TypeState>,
}

fn subscription(t: TypeUrl, names: &[String]) -> Subscription {
    // Legacy wildcard: an empty name list on LDS/CDS means "everything".
    if t.supports_wildcard() && (names.is_empty() || names.iter().any(|n| n == "*")) {
        return Subscription::Wildcard;
    }
    Subscription::Names(
        names
            .iter()
            .filter(|n| !n.is_empty() && n.as_str() != "*")
            .cloned()
            .collect::<BTreeSet<_>>(),
    )
}

impl Sotw {
    fn respond(
        &mut self,
        t: TypeUrl,
        set: &ResourceSet,
        tracker: &Tracker<'_>,
    ) -> Option<DiscoveryResponse> {
        let state = self.types.get_mut(&t)?;
        let selected = state.subscription.select(t, set);
        self.nonces += 1;
        let nonce = self.nonces.to_string();
        state.nonce.clone_from(&nonce);
        state.pending.push(&nonce, set.version());
        state.sent = Subscription::hash(&selected);
        tracker.sent(t, set.version(), &nonce, selected.len());
        Some(DiscoveryResponse {
            version_info: set.version().to_owned(),
            resources: selected.iter().map(|r| r.body().clone()).collect(),
            type_url: t.as_str().to_owned(),
            nonce,
            ..Default::default()
        })
    }
}

impl Protocol for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    const KIND: StreamKind = StreamKind::StateOfTheWorld;

    fn node(request: &DiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn on_request(
        &mut self,
        request: &DiscoveryRequest,
        set: &ResourceSet,
        tracker: &Tracker<'_>,
    ) -> Result<Option<DiscoveryResponse>, Status> {
        let Some(t) = request_type(&request.type_url, tracker.node_id)? else {
            return Ok(None);
        };
        let wanted = subscription(t, &request.resource_names);
        let Some(state) = self.types.get_mut(&t) else {
            // First request for this type on this stream (a reconnecting Envoy quotes a
            // version and nonce from its previous stream: answer it all the same).
            self.types.insert(
                t,
                TypeState {
                    subscription: wanted,
                    nonce: String::new(),
                    pending: Pending::default(),
                    sent: 0,
                },
            );
            return Ok(self.respond(t, set, tracker));
        };
        if !request.response_nonce.is_empty() {
            // Envoy answers every response in order, so an answer to an older one still
            // says what it applied; but only a request quoting the latest response may
            // change the subscription (a subscription change quotes the last nonce again,
            // after its ACK: that is not a second ACK).
            let latest = request.response_nonce == state.nonce;
            match state.pending.answer(&request.response_nonce) {
                Some(answered) => {
                    tracker.answered(t, &answered.version, request.error_detail.as_ref())
                }
                None if latest => {}
                None => {
                    tracing::debug!(node = tracker.node_id, r#type = t.label(), nonce = %request.response_nonce, "unknown nonce ignored")
                }
            }
            if !latest {
                return Ok(None);
            }
        }
        if request.response_nonce.is_empty() || state.subscription != wanted {
            state.subscription = wanted;
            return Ok(self.respond(t, set, tracker));
        }
        Ok(None)
    }

    fn on_publish(&mut self, set: &ResourceSet, tracker: &Tracker<'_>) -> Vec<DiscoveryResponse> {
        let changed: Vec<TypeUrl> = TypeUrl::ALL
            .into_iter()
            .filter(|t| {
                self.types
                    .get(t)
                    .is_some_and(|s| Subscription::hash(&s.subscription.select(*t, set)) != s.sent)
            })
            .collect();
        changed
            .into_iter()
            .filter_map(|t| self.respond(t, set, tracker))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::google::rpc;

    use super::*;
    use crate::status::{NodeRegistry, XdsMetrics};

    fn set(version: &str, clusters: &[(&str, i64)]) -> ResourceSet {
        let mut b = ResourceSet::builder(version);
        for (name, t) in clusters {
            let c = Cluster {
                name: (*name).to_owned(),
                connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
                    seconds: *t,
                    nanos: 0,
                }),
                ..Default::default()
            };
            b.insert(*name, &c).unwrap();
        }
        b.build()
    }

    fn req(names: &[&str], version: &str, nonce: &str, error: Option<&str>) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: TypeUrl::Cluster.as_str().into(),
            resource_names: names.iter().map(|s| (*s).to_owned()).collect(),
            version_info: version.into(),
            response_nonce: nonce.into(),
            error_detail: error.map(|m| rpc::Status {
                code: 3,
                message: m.into(),
                details: vec![],
            }),
            ..Default::default()
        }
    }

    #[test]
    fn ack_nack_stale_and_unchanged() {
        let registry = NodeRegistry::new(Duration::from_secs(60), 8);
        registry
            .connected("n", "c", StreamKind::StateOfTheWorld)
            .unwrap();
        let metrics = XdsMetrics::default();
        let tr = Tracker {
            node_id: "n",
            registry: &registry,
            metrics: &metrics,
        };
        let mut s = Sotw::default();
        let v1 = set("1", &[("a", 1), ("b", 1)]);
        let r = s
            .on_request(&req(&[], "", "", None), &v1, &tr)
            .unwrap()
            .unwrap();
        assert_eq!((r.resources.len(), r.version_info.as_str()), (2, "1"));
        // ACK: nothing to send.
        assert!(
            s.on_request(&req(&[], "1", &r.nonce, None), &v1, &tr)
                .unwrap()
                .is_none()
        );
        // Same content under a new version: no push.
        assert!(
            s.on_publish(&set("2", &[("a", 1), ("b", 1)]), &tr)
                .is_empty()
        );
        // A change: push.
        let v3 = set("3", &[("a", 1), ("b", 2)]);
        let r3 = s.on_publish(&v3, &tr).pop().unwrap();
        // A stale nonce is ignored, even as a NACK.
        assert!(
            s.on_request(&req(&[], "1", &r.nonce, Some("x")), &v3, &tr)
                .unwrap()
                .is_none()
        );
        assert!(
            s.on_request(&req(&[], "1", &r3.nonce, Some("bad")), &v3, &tr)
                .unwrap()
                .is_none()
        );
        let st = registry.node("n").unwrap().types[TypeUrl::Cluster.as_str()].clone();
        assert_eq!(st.version_acked.as_deref(), Some("1"));
        assert_eq!(st.last_nack.unwrap().version, "3");
        // The rejected content is not re-sent by itself.
        assert!(
            s.on_publish(&set("4", &[("a", 1), ("b", 2)]), &tr)
                .is_empty()
        );
        assert_eq!(metrics.counts().nacks, 1);
    }

    #[test]
    fn named_subscriptions_and_errors() {
        let registry = NodeRegistry::new(Duration::from_secs(60), 8);
        let metrics = XdsMetrics::default();
        let tr = Tracker {
            node_id: "n",
            registry: &registry,
            metrics: &metrics,
        };
        let mut s = Sotw::default();
        let v1 = set("1", &[("a", 1), ("b", 1)]);
        let r = s
            .on_request(&req(&["a"], "", "", None), &v1, &tr)
            .unwrap()
            .unwrap();
        assert_eq!(r.resources.len(), 1);
        // Changing only b does not concern this stream.
        assert!(
            s.on_publish(&set("2", &[("a", 1), ("b", 2)]), &tr)
                .is_empty()
        );
        // Subscribing to more names answers at once.
        let r2 = s
            .on_request(&req(&["a", "b"], "1", &r.nonce, None), &v1, &tr)
            .unwrap()
            .unwrap();
        assert_eq!(r2.resources.len(), 2);
        let mut bad = req(&[], "", "", None);
        bad.type_url.clear();
        let e = s.on_request(&bad, &v1, &tr).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        bad.type_url =
            "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret".into();
        assert!(s.on_request(&bad, &v1, &tr).unwrap().is_none());
    }
}
