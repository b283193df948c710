//! Incremental ADS (`DeltaAggregatedResources`): responses carry only resources the
//! client does not have in their current version, and the names of those that are gone.

use std::collections::{BTreeSet, HashMap};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as WireResource,
};
use tonic::Status;

use super::status::StreamKind;
use super::stream::{Pending, Protocol, Tracker, request_type};
use super::{ResourceSet, TypeUrl};

/// What the client holds of one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    /// This content hash.
    Version(u64),
    /// Nothing, and it was told so (the name was subscribed but does not exist).
    Absent,
}

/// One type on one stream.
#[derive(Debug, Default)]
struct TypeState {
    wildcard: bool,
    names: BTreeSet<String>,
    known: HashMap<String, Known>,
    /// Responses not answered yet.
    pending: Pending,
}

impl TypeState {
    fn subscribed(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// What the client lacks: (resources to send, names to remove); updates `known`.
    fn diff(&mut self, t: TypeUrl, set: &ResourceSet) -> (Vec<WireResource>, Vec<String>) {
        let mut send = Vec::new();
        let mut removed = Vec::new();
        for r in set.resources(t) {
            if !self.subscribed(r.name()) {
                continue;
            }
            if self.known.get(r.name()) != Some(&Known::Version(r.hash())) {
                self.known
                    .insert(r.name().to_owned(), Known::Version(r.hash()));
                send.push(WireResource {
                    name: r.name().to_owned(),
                    version: r.version(),
                    resource: Some(r.body().clone()),
                    ..Default::default()
                });
            }
        }
        // Names asked for explicitly that do not exist: say so once, so that the client
        // does not wait for its initial-fetch timeout.
        for name in &self.names {
            if set.get(t, name).is_none() && self.known.get(name) != Some(&Known::Absent) {
                self.known.insert(name.clone(), Known::Absent);
                removed.push(name.clone());
            }
        }
        // Resources the client has that are gone (or no longer subscribed).
        let gone: Vec<String> = self
            .known
            .iter()
            .filter(|(name, k)| {
                matches!(k, Known::Version(_))
                    && (set.get(t, name).is_none() || !self.subscribed(name))
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            self.known.remove(&name);
            removed.push(name);
        }
        removed.sort();
        (send, removed)
    }
}

/// One delta stream.
#[derive(Debug, Default)]
pub(crate) struct Delta {
    nonces: u64,
    types: HashMap<TypeUrl, TypeState>,
}

impl Delta {
    fn respond(
        &mut self,
        t: TypeUrl,
        set: &ResourceSet,
        tracker: &Tracker<'_>,
        even_if_empty: bool,
    ) -> Option<DeltaDiscoveryResponse> {
        let state = self.types.get_mut(&t)?;
        let (resources, removed_resources) = state.diff(t, set);
        if resources.is_empty() && removed_resources.is_empty() && !even_if_empty {
            return None;
        }
        self.nonces += 1;
        let nonce = self.nonces.to_string();
        state.pending.push(&nonce, set.version());
        tracker.sent(t, set.version(), &nonce, resources.len());
        Some(DeltaDiscoveryResponse {
            system_version_info: set.version().to_owned(),
            resources,
            type_url: t.as_str().to_owned(),
            removed_resources,
            nonce,
            ..Default::default()
        })
    }
}

impl Protocol for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    const KIND: StreamKind = StreamKind::Delta;

    fn node(request: &DeltaDiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn on_request(
        &mut self,
        request: &DeltaDiscoveryRequest,
        set: &ResourceSet,
        tracker: &Tracker<'_>,
    ) -> Result<Option<DeltaDiscoveryResponse>, Status> {
        let Some(t) = request_type(&request.type_url, tracker.node_id)? else {
            return Ok(None);
        };
        if !request.resource_locators_subscribe.is_empty()
            || !request.resource_locators_unsubscribe.is_empty()
        {
            return Err(Status::unimplemented(
                "resource_locators_subscribe/unsubscribe are not supported: use resource_names_subscribe/unsubscribe",
            ));
        }
        let first = !self.types.contains_key(&t);
        let state = self.types.entry(t).or_default();
        if first {
            // Legacy wildcard: a first request naming nothing on LDS/CDS means "everything".
            state.wildcard = t.supports_wildcard()
                && request.resource_names_subscribe.is_empty()
                && request.resource_names_unsubscribe.is_empty();
        }
        for name in &request.resource_names_subscribe {
            if name == "*" {
                state.wildcard = t.supports_wildcard();
            } else if !name.is_empty() {
                state.names.insert(name.clone());
                // The client may have dropped it: it must be sent again.
                state.known.remove(name);
            }
        }
        for name in &request.resource_names_unsubscribe {
            if name == "*" {
                state.wildcard = false;
            } else {
                state.names.remove(name);
                if !state.wildcard {
                    state.known.remove(name);
                }
            }
        }
        if first {
            // A reconnecting client says what it has (versions are our content hashes):
            // those need not be sent again, although they are also being subscribed.
            for (name, version) in &request.initial_resource_versions {
                if let Ok(h) = u64::from_str_radix(version, 16) {
                    state.known.insert(name.clone(), Known::Version(h));
                }
            }
        }
        if !state.wildcard {
            let names = &state.names;
            state.known.retain(|n, _| names.contains(n));
        }
        if !request.response_nonce.is_empty() {
            match state.pending.answer(&request.response_nonce) {
                Some(answered) => {
                    tracker.answered(t, &answered.version, request.error_detail.as_ref());
                }
                None => {
                    tracing::debug!(node = tracker.node_id, r#type = t.label(), nonce = %request.response_nonce, "unknown nonce ignored");
                }
            }
        }
        // The first request of a type is always answered (Envoy waits for it to finish
        // initialising); later ones only when the client lacks something.
        Ok(self.respond(t, set, tracker, first))
    }

    fn on_publish(
        &mut self,
        set: &ResourceSet,
        tracker: &Tracker<'_>,
    ) -> Vec<DeltaDiscoveryResponse> {
        TypeUrl::ALL
            .into_iter()
            .filter_map(|t| self.respond(t, set, tracker, false))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;

    use super::*;
    use crate::status::{NodeRegistry, XdsMetrics};

    fn set(version: &str, configs: &[(&str, &str)]) -> ResourceSet {
        let mut b = ResourceSet::builder(version);
        for (name, body) in configs {
            let c = TypedExtensionConfig {
                name: (*name).to_owned(),
                typed_config: Some(envoy_types::pb::google::protobuf::Any {
                    type_url: "type.googleapis.com/google.protobuf.StringValue".into(),
                    value: body.as_bytes().to_vec(),
                }),
            };
            b.insert(*name, &c).unwrap();
        }
        b.build()
    }

    fn req(sub: &[&str], unsub: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: TypeUrl::ExtensionConfig.as_str().into(),
            resource_names_subscribe: sub.iter().map(|s| (*s).to_owned()).collect(),
            resource_names_unsubscribe: unsub.iter().map(|s| (*s).to_owned()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
        r.resources.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn named_subscription_lifecycle() {
        let registry = NodeRegistry::new(Duration::from_secs(60), 8);
        let metrics = XdsMetrics::default();
        let tr = Tracker {
            node_id: "n",
            registry: &registry,
            metrics: &metrics,
        };
        let mut d = Delta::default();
        let v1 = set("1", &[("a", "x"), ("b", "x"), ("c", "x")]);
        let r = d
            .on_request(&req(&["a", "b", "zz"], &[], ""), &v1, &tr)
            .unwrap()
            .unwrap();
        assert_eq!(names(&r), ["a", "b"]);
        assert_eq!(
            r.removed_resources,
            ["zz"],
            "missing names are reported once"
        );
        assert!(
            d.on_request(&req(&[], &[], &r.nonce), &v1, &tr)
                .unwrap()
                .is_none()
        );
        assert_eq!(metrics.counts().acks, 1);
        // c is not subscribed; b changes; a is removed.
        let v2 = set("2", &[("b", "y"), ("c", "y")]);
        let r2 = d.on_publish(&v2, &tr).pop().unwrap();
        assert_eq!(names(&r2), ["b"]);
        assert_eq!(r2.removed_resources, ["a"]);
        // Nothing new: nothing sent.
        assert!(
            d.on_publish(&set("3", &[("b", "y"), ("c", "y")]), &tr)
                .is_empty()
        );
        // Re-subscribing to a known name resends it; unsubscribing stops updates.
        let r3 = d
            .on_request(&req(&["b"], &[], ""), &v2, &tr)
            .unwrap()
            .unwrap();
        assert_eq!(names(&r3), ["b"]);
        assert!(
            d.on_request(&req(&[], &["b"], ""), &v2, &tr)
                .unwrap()
                .is_none()
        );
        assert!(d.on_publish(&set("4", &[("b", "z")]), &tr).is_empty());
        // A resource that appears later is sent.
        let r5 = d
            .on_publish(&set("5", &[("zz", "new")]), &tr)
            .pop()
            .unwrap();
        assert_eq!(names(&r5), ["zz"]);
    }

    #[test]
    fn reconnect_with_initial_versions_skips_what_the_client_has() {
        let registry = NodeRegistry::new(Duration::from_secs(60), 8);
        let metrics = XdsMetrics::default();
        let tr = Tracker {
            node_id: "n",
            registry: &registry,
            metrics: &metrics,
        };
        let v1 = set("1", &[("a", "x"), ("b", "x")]);
        let mut request = req(&["a", "b"], &[], "");
        let a = v1.get(TypeUrl::ExtensionConfig, "a").unwrap().version();
        request.initial_resource_versions.insert("a".into(), a);
        request
            .initial_resource_versions
            .insert("b".into(), "stale".into());
        let mut d = Delta::default();
        let r = d.on_request(&request, &v1, &tr).unwrap().unwrap();
        assert_eq!(names(&r), ["b"]);
    }
}
