//! Kubernetes: the `mcpgw.io/v1alpha1` custom resources ([`crd`]), their reconcilers
//! ([`controller`]), leader election ([`lease`]) and the policy translation ([`policy`]).
//!
//! `mcpgw serve --kubernetes` runs [`run`] beside everything else: every replica serves the
//! admin API and xDS from the shared registry, and the replica holding the Lease runs the
//! three controllers, which write the registry, statuses, finalizers and Events.

pub mod attach;
pub mod controller;
pub mod crd;
pub mod lease;
pub mod policy;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};

use self::controller::{Context, ReconcileError};
use self::crd::{MCPBackend, MCPPolicy, MCPVirtualServer};
use self::lease::{Leadership, LeaseLock};

/// Settings of the controller (`mcpgw serve --kubernetes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeSettings {
    /// The namespace to watch (`None`: all).
    pub namespace: Option<String>,
    /// Namespace of the Lease.
    pub lease_namespace: String,
    /// Name of the Lease.
    pub lease_name: String,
    /// This replica's identity in the Lease and in Events (its pod name).
    pub identity: String,
}

impl KubeSettings {
    /// Settings from the pod's environment (`POD_NAMESPACE`, `POD_NAME`, the downward API)
    /// with `namespace` watched (`None`: all).
    pub fn from_env(namespace: Option<String>, env: impl Fn(&str) -> Option<String>) -> Self {
        let lease_namespace = env("POD_NAMESPACE").unwrap_or_else(|| "mcpgw-system".to_owned());
        let identity = env("POD_NAME")
            .or_else(|| env("HOSTNAME"))
            .unwrap_or_else(|| format!("mcpgw-{}", crate::store::new_id()));
        KubeSettings {
            namespace,
            lease_namespace,
            lease_name: "mcpgw-controller".to_owned(),
            identity,
        }
    }
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn error_policy<K>(_obj: Arc<K>, e: &ReconcileError, _ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %e, label = e.label(), "reconcile failed; retrying");
    Action::requeue(std::time::Duration::from_secs(15))
}

/// Runs the three controllers until the future is dropped.
async fn controllers(ctx: Arc<Context>, namespace: Option<String>) {
    let ns = namespace.as_deref();
    let client = ctx.client.clone();
    let cfg = watcher::Config::default;

    // Backends: also woken by the Secrets and Services they refer to (a rotated Secret
    // reaches the registry, and so the edge, at once).
    let backends = Controller::new(api::<MCPBackend>(&client, ns), cfg());
    let by_secret = backends.store();
    let by_service = backends.store();
    let backends = backends
        .watches(api::<Secret>(&client, ns), cfg(), move |s: Secret| {
            let (sns, sname) = (s.namespace(), s.name_any());
            by_secret
                .state()
                .into_iter()
                .filter(|b| b.namespace() == sns && b.spec.secret_names().any(|n| n == sname))
                .map(|b| ObjectRef::from_obj(b.as_ref()))
                .collect::<Vec<_>>()
        })
        .watches(api::<Service>(&client, ns), cfg(), move |s: Service| {
            let (sns, sname) = (s.namespace().unwrap_or_default(), s.name_any());
            by_service
                .state()
                .into_iter()
                .filter(|b| {
                    b.spec.service_ref.as_ref().is_some_and(|r| {
                        r.name == sname
                            && r.namespace.clone().or_else(|| b.namespace()).as_deref()
                                == Some(sns.as_str())
                    })
                })
                .map(|b| ObjectRef::from_obj(b.as_ref()))
                .collect::<Vec<_>>()
        })
        .run(controller::reconcile_backend, error_policy, ctx.clone())
        .for_each(|_| async {});

    // Virtual servers: woken by any backend of their namespace (its gateway appeared,
    // its catalog changed).
    let servers = Controller::new(api::<MCPVirtualServer>(&client, ns), cfg());
    let by_backend = servers.store();
    let by_backend_policy = by_backend.clone();
    let servers = servers
        .watches(
            api::<MCPBackend>(&client, ns),
            cfg(),
            move |b: MCPBackend| {
                by_backend
                    .state()
                    .into_iter()
                    .filter(|v| v.namespace() == b.namespace())
                    .map(|v| ObjectRef::from_obj(v.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        // ... and by any policy of their namespace (created, changed or deleted: what it
        // adds up to on each server is written by the server's reconcile).
        .watches(api::<MCPPolicy>(&client, ns), cfg(), {
            let by_policy = by_backend_policy.clone();
            move |p: MCPPolicy| {
                by_policy
                    .state()
                    .into_iter()
                    .filter(|v| v.namespace() == p.namespace())
                    .map(|v| ObjectRef::from_obj(v.as_ref()))
                    .collect::<Vec<_>>()
            }
        })
        .run(
            controller::reconcile_virtual_server,
            error_policy,
            ctx.clone(),
        )
        .for_each(|_| async {});

    // Policies: woken by any virtual server of their namespace.
    let policies = Controller::new(api::<MCPPolicy>(&client, ns), cfg());
    let by_server = policies.store();
    let policies = policies
        .watches(
            api::<MCPVirtualServer>(&client, ns),
            cfg(),
            move |v: MCPVirtualServer| {
                by_server
                    .state()
                    .into_iter()
                    .filter(|p| p.namespace() == v.namespace())
                    .map(|p| ObjectRef::from_obj(p.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .run(controller::reconcile_policy, error_policy, ctx)
        .for_each(|_| async {});

    futures::join!(backends, servers, policies);
}

/// Runs leader election forever: while this replica holds the Lease the controllers run;
/// when it loses it they stop (and every reconcile checks the flag before it writes).
pub async fn run(
    client: Client,
    settings: KubeSettings,
    store: crate::store::Store,
    secrets: crate::crypto::SecretBox,
    federation: Arc<crate::federation::Federation>,
) {
    let leader = Arc::new(AtomicBool::new(false));
    let ctx = Arc::new(Context {
        client: client.clone(),
        store,
        secrets,
        separator: federation.settings().separator.clone(),
        federation: Some(federation),
        reporter: Reporter {
            controller: "mcpgw".to_owned(),
            instance: Some(settings.identity.clone()),
        },
        leader: leader.clone(),
    });
    let lock = LeaseLock::new(
        client,
        &settings.lease_namespace,
        &settings.lease_name,
        &settings.identity,
    );
    let mut running: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let now = k8s_openapi::jiff::Timestamp::now();
        let leading = match lock.try_acquire_or_renew(now).await {
            Ok(Leadership::Leader) => true,
            Ok(Leadership::Follower { holder }) => {
                tracing::debug!(holder = ?holder, "following the controller lease");
                false
            }
            Err(e) => {
                // Cannot tell: stop writing (another replica may take over).
                tracing::warn!(error = %e, "controller lease unreachable");
                false
            }
        };
        leader.store(leading, Ordering::Release);
        match (leading, &running) {
            (true, None) => {
                tracing::info!(identity = %lock.identity(), "leading: starting the Kubernetes controllers");
                running = Some(tokio::spawn(controllers(
                    ctx.clone(),
                    settings.namespace.clone(),
                )));
            }
            (false, Some(_)) => {
                tracing::info!("lost the controller lease: stopping the Kubernetes controllers");
                if let Some(h) = running.take() {
                    h.abort();
                }
            }
            _ => {}
        }
        tokio::time::sleep(lock.renew_every()).await;
    }
}
