//! Leader election on a `coordination.k8s.io/v1` Lease: every replica serves xDS and the
//! admin API from the shared registry, but only the Lease's holder reconciles (writes the
//! registry, statuses, finalizers and Events), so two replicas never race on one object.
//!
//! The protocol is client-go's: the holder renews `renewTime` every `renew_every`; a
//! candidate takes the Lease over only when `renewTime + leaseDurationSeconds` has passed.
//! Every write is a `replace` carrying the `resourceVersion` read, so of two candidates that
//! saw the same expired Lease exactly one wins (the other gets 409 and stays a follower).
//! The cost: after a holder dies, reconciling pauses for up to one lease duration.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

/// Default lease duration.
pub const DEFAULT_LEASE_SECONDS: i32 = 15;

/// One replica's view of the Lease.
#[derive(Clone)]
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration_seconds: i32,
}

impl std::fmt::Debug for LeaseLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseLock")
            .field("name", &self.name)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// What one attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leadership {
    /// This replica holds the Lease (acquired, taken over or renewed).
    Leader,
    /// Another replica holds an unexpired Lease (or won the race for it).
    Follower {
        /// The holder, as far as known.
        holder: Option<String>,
    },
}

impl LeaseLock {
    /// A lock on Lease `name` in `namespace` for this replica (`identity`: its pod name).
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        LeaseLock {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration_seconds: DEFAULT_LEASE_SECONDS,
        }
    }

    /// This replica's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// How often a holder renews (a third of the duration, as client-go's defaults).
    pub fn renew_every(&self) -> Duration {
        Duration::from_secs(u64::try_from(self.duration_seconds / 3).unwrap_or(1).max(1))
    }

    /// Acquires, takes over or renews the Lease at time `now`. A conflict (another replica
    /// wrote the Lease since it was read) means it lost: `Follower`.
    pub async fn try_acquire_or_renew(&self, now: Timestamp) -> Result<Leadership, kube::Error> {
        let current = match self.api.get_opt(&self.name).await? {
            Some(l) => l,
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(now, now, 0)),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(Leadership::Leader),
                    Err(e) if is_conflict(&e) => Ok(Leadership::Follower { holder: None }),
                    Err(e) => Err(e),
                };
            }
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.identity.as_str());
        let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(MicroTime(renewed)), Some(secs)) => renewed
                .checked_add(SignedDuration::from_secs(i64::from(secs)))
                .is_ok_and(|until| until <= now),
            _ => true,
        };
        if !ours && holder.is_some() && !expired {
            return Ok(Leadership::Follower { holder });
        }
        let (acquired, transitions) = if ours {
            (
                spec.acquire_time.map(|t| t.0).unwrap_or(now),
                spec.lease_transitions.unwrap_or(0),
            )
        } else {
            (now, spec.lease_transitions.unwrap_or(0).saturating_add(1))
        };
        let lease = Lease {
            metadata: current.metadata.clone(),
            spec: Some(self.spec(now, acquired, transitions)),
        };
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Leadership::Leader),
            Err(e) if is_conflict(&e) => Ok(Leadership::Follower { holder }),
            Err(e) => Err(e),
        }
    }

    fn spec(&self, now: Timestamp, acquired: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration_seconds),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }
}

/// Whether the API server answered 409 Conflict.
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}
