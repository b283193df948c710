//! The reconcilers: `MCPBackend` → a registry gateway, `MCPVirtualServer` → a registry
//! server, `MCPPolicy` → validation and status (its registry translation is
//! [`super::policy`]). Each reconcile is idempotent, writes the registry only when the
//! resource asks for something the registry does not hold (so a periodic requeue costs
//! reads, not snapshot pushes), and then writes the resource's status only when it changed.
//!
//! Failures the operator must fix (a bad spec, a missing Secret or Service, a registry name
//! taken) become a condition and a Warning Event; the resource is retried on its own
//! schedule or when what it refers to changes. Failures of the API server or the database
//! are errors: the controller retries them with a backoff.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{self, finalizer};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::crd::{
    BackendStatus, BackendTransport, CredentialKind, MCPBackend, MCPBackendSpec, MCPPolicy,
    MCPVirtualServer, NamingMode, PolicyStatus, SecretKeyRef, VirtualServerStatus,
};
use crate::crypto::{CredentialBinding, SecretBox};
use crate::federation::Federation;
use crate::model::{
    AllowedOrigins, AuthType, CatalogItem, CatalogSpec, Credentials, FieldInvalid, GatewayName,
    GatewayPatch, HeaderPair, ItemName, Naming, NewGateway, NewServer, PromptSpec, ResourceSpec,
    ServerPatch, Tags, ToolSpec, Transport, UpstreamUrl,
};
use crate::store::k8s::{K8sOwner, OwnedObject};
use crate::store::{Store, StoreError};

/// The finalizer the controller puts on backends and virtual servers: the registry object
/// goes before the resource does.
pub const FINALIZER: &str = "mcpgw.io/registry";
/// How often a reconciled resource is looked at again (tool counts, new discoveries).
pub const RESYNC: Duration = Duration::from_secs(300);
/// How soon a resource waiting for a Secret, a Service or a backend is looked at again
/// (also woken by a change of what it waits for).
pub const WAIT: Duration = Duration::from_secs(30);
/// Attempts of a write the API server refused with 409 Conflict.
pub const CONFLICT_ATTEMPTS: u32 = 4;

/// What every reconcile needs.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// The registry.
    pub store: Store,
    /// Seals the credentials read from Secrets.
    pub secrets: SecretBox,
    /// The name separator (`{gateway}{separator}{tool}`).
    pub separator: String,
    /// Discovery after a backend changes (`None`: the registry only; tests).
    pub federation: Option<Arc<Federation>>,
    /// Who reports Events.
    pub reporter: Reporter,
    /// Whether this replica holds the Lease: a follower writes nothing.
    pub leader: Arc<AtomicBool>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("reporter", &self.reporter)
            .finish_non_exhaustive()
    }
}

impl Context {
    fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Acquire)
    }
}

/// Why a reconcile failed (it is retried with a backoff).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The API server refused or failed a call.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The registry failed.
    #[error("registry: {0}")]
    Store(#[from] StoreError),
    /// Adding or removing the finalizer failed, or the work inside it did.
    #[error("{0}")]
    Finalizer(#[source] Box<finalizer::Error<ReconcileError>>),
    /// The resource has no name or namespace (never from the API server).
    #[error("the resource has no namespace or name")]
    Unnamed,
}

impl ReconcileError {
    /// Low-cardinality label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Store(_) => "store",
            Self::Finalizer(_) => "finalizer",
            Self::Unnamed => "unnamed",
        }
    }
}

fn wrap(e: finalizer::Error<ReconcileError>) -> ReconcileError {
    ReconcileError::Finalizer(Box::new(e))
}

/// `(namespace, name)` of a namespaced resource.
fn key<K: Resource>(obj: &K) -> Result<(String, String), ReconcileError> {
    match (obj.meta().namespace.clone(), obj.meta().name.clone()) {
        (Some(ns), Some(name)) => Ok((ns, name)),
        _ => Err(ReconcileError::Unnamed),
    }
}

fn owner<K: Resource<DynamicType = ()>>(obj: &K) -> Result<K8sOwner, ReconcileError> {
    let (namespace, name) = key(obj)?;
    Ok(K8sOwner {
        kind: K::kind(&()).into_owned(),
        namespace,
        name,
        uid: obj.meta().uid.clone().unwrap_or_default(),
    })
}

// ---- conditions, status, events ----------------------------------------------------

/// One condition as the reconcile found it (the transition time is filled in against the
/// previous status).
#[derive(Debug, Clone)]
struct Found {
    kind: &'static str,
    ok: bool,
    reason: &'static str,
    message: String,
}

fn found(kind: &'static str, ok: bool, reason: &'static str, message: impl Into<String>) -> Found {
    Found {
        kind,
        ok,
        reason,
        message: message.into(),
    }
}

/// Conditions for `found`, keeping each one's `lastTransitionTime` when its status did not
/// change (so an unchanged status compares equal and is not written again).
fn conditions(previous: &[Condition], found: &[Found], generation: Option<i64>) -> Vec<Condition> {
    let now = Time(Timestamp::now());
    found
        .iter()
        .map(|f| {
            let status = if f.ok { "True" } else { "False" }.to_owned();
            let since = previous
                .iter()
                .find(|c| c.type_ == f.kind && c.status == status)
                .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
            Condition {
                type_: f.kind.to_owned(),
                status,
                reason: f.reason.to_owned(),
                message: f.message.clone(),
                observed_generation: generation,
                last_transition_time: since,
            }
        })
        .collect()
}

/// Writes `status` (a merge patch of `.status`) unless it equals `current`; a 409 is retried.
async fn write_status<K, S>(
    api: &Api<K>,
    name: &str,
    current: Option<&S>,
    status: &S,
) -> Result<(), ReconcileError>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if current == Some(status) {
        return Ok(());
    }
    let patch = Patch::Merge(serde_json::json!({ "status": status }));
    let params = PatchParams::default();
    retry_conflict(|| api.patch_status(name, &params, &patch)).await?;
    Ok(())
}

/// Runs `write` until it does not fail with 409 Conflict, at most [`CONFLICT_ATTEMPTS`]
/// times, with a short growing pause between attempts.
pub async fn retry_conflict<T, F, Fut>(mut write: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let mut attempt = 1;
    loop {
        match write().await {
            Err(e) if super::lease::is_conflict(&e) && attempt < CONFLICT_ATTEMPTS => {
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Publishes a Warning Event about `obj` (best effort: a failure is logged, not returned).
async fn warn<K: Resource<DynamicType = ()>>(ctx: &Context, obj: &K, reason: &str, note: String) {
    tracing::warn!(kind = %K::kind(&()), name = %obj.meta().name.clone().unwrap_or_default(), reason, %note, "reconcile");
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    let event = Event {
        type_: EventType::Warning,
        reason: reason.to_owned(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &obj.object_ref(&())).await {
        tracing::warn!(error = %e, "could not record an Event");
    }
}

// ---- MCPBackend ----------------------------------------------------------------------

/// Where a backend is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A URL given as is.
    Url(String),
    /// A Service: `(namespace, name, port, path, tls)`.
    Service {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Service port.
        port: i32,
        /// Path of the MCP endpoint.
        path: String,
        /// `https`.
        tls: bool,
    },
}

impl Endpoint {
    /// The URL the gateway is reached at.
    pub fn url(&self) -> String {
        match self {
            Endpoint::Url(u) => u.clone(),
            Endpoint::Service {
                namespace,
                name,
                port,
                path,
                tls,
            } => format!(
                "{}://{name}.{namespace}.svc:{port}{path}",
                if *tls { "https" } else { "http" }
            ),
        }
    }
}

impl MCPBackendSpec {
    /// Where the backend is, checked as the CRD's CEL rules check it (exactly one of `url`
    /// and `serviceRef`; an http(s) URL), for API servers that do not run them.
    pub fn endpoint(&self, namespace: &str) -> Result<Endpoint, FieldInvalid> {
        match (&self.url, &self.service_ref) {
            (Some(_), Some(_)) | (None, None) => Err(FieldInvalid::new(
                "spec",
                "set exactly one of url and serviceRef",
            )),
            (Some(u), None) => {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return Err(FieldInvalid::new(
                        "spec.url",
                        "must start with http:// or https://",
                    ));
                }
                Ok(Endpoint::Url(u.clone()))
            }
            (None, Some(s)) => {
                if !(1..=65535).contains(&s.port) {
                    return Err(FieldInvalid::new(
                        "spec.serviceRef.port",
                        "must be between 1 and 65535",
                    ));
                }
                let path = s.path.clone().unwrap_or_else(|| "/mcp".to_owned());
                if !path.starts_with('/') {
                    return Err(FieldInvalid::new(
                        "spec.serviceRef.path",
                        "must start with /",
                    ));
                }
                Ok(Endpoint::Service {
                    namespace: s.namespace.clone().unwrap_or_else(|| namespace.to_owned()),
                    name: s.name.clone(),
                    port: s.port,
                    path,
                    tls: s.tls,
                })
            }
        }
    }
}

/// What a backend asks of the registry, once everything it refers to was read.
struct DesiredGateway {
    name: GatewayName,
    url: UpstreamUrl,
    transport: Transport,
    credentials: Option<Credentials>,
    enabled: bool,
    description: Option<String>,
    tags: Tags,
    identity: crate::model::GatewayIdentity,
    /// The token exchange's client secret, read from its Secret (mode token-exchange only).
    client_secret: Option<String>,
}

/// Something the operator must fix: a condition reason and a message.
struct Blocked {
    accepted: bool,
    reason: &'static str,
    message: String,
}

fn invalid(e: FieldInvalid) -> Blocked {
    Blocked {
        accepted: false,
        reason: "Invalid",
        message: e.to_string(),
    }
}

fn waiting(reason: &'static str, message: String) -> Blocked {
    Blocked {
        accepted: true,
        reason,
        message,
    }
}

/// Reads the text a Secret holds under a key (a trailing newline dropped); `field` names
/// the spec field that refers to it.
async fn secret_value(
    ctx: &Context,
    namespace: &str,
    r: &SecretKeyRef,
    field: &str,
) -> Result<Result<String, Blocked>, ReconcileError> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(secret) = api.get_opt(&r.name).await? else {
        return Ok(Err(waiting(
            "SecretNotFound",
            format!("Secret {namespace}/{} not found", r.name),
        )));
    };
    let raw = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(&r.key))
                .map(|s| s.clone().into_bytes())
        });
    let Some(raw) = raw else {
        return Ok(Err(waiting(
            "SecretKeyNotFound",
            format!("Secret {namespace}/{} has no key {:?}", r.name, r.key),
        )));
    };
    let Ok(value) = String::from_utf8(raw) else {
        return Ok(Err(invalid(FieldInvalid::new(
            field,
            "the Secret's value is not UTF-8 text",
        ))));
    };
    Ok(Ok(value.trim_end_matches(['\r', '\n']).to_owned()))
}

/// Reads the Secret value a credential refers to.
async fn credential(
    ctx: &Context,
    namespace: &str,
    spec: &MCPBackendSpec,
) -> Result<Result<Option<Credentials>, Blocked>, ReconcileError> {
    let Some(c) = &spec.credentials else {
        return Ok(Ok(None));
    };
    let value =
        match secret_value(ctx, namespace, &c.secret_ref, "spec.credentials.secretRef").await? {
            Ok(v) => v,
            Err(b) => return Ok(Err(b)),
        };
    let creds = match c.kind {
        CredentialKind::Bearer => Credentials::Bearer { token: value },
        CredentialKind::Basic => match value.split_once(':') {
            Some((user, password)) => Credentials::Basic {
                username: user.to_owned(),
                password: password.to_owned(),
            },
            None => {
                return Ok(Err(invalid(FieldInvalid::new(
                    "spec.credentials.secretRef",
                    "a basic credential's value is user:password",
                ))));
            }
        },
        CredentialKind::Header => match &c.header {
            Some(h) if !h.is_empty() => Credentials::Headers {
                headers: vec![HeaderPair {
                    key: h.clone(),
                    value,
                }],
            },
            _ => {
                return Ok(Err(invalid(FieldInvalid::new(
                    "spec.credentials.header",
                    "a header credential names its header",
                ))));
            }
        },
    };
    Ok(Ok(Some(creds)))
}

/// Checks a Service exists and has the port.
async fn service(
    ctx: &Context,
    endpoint: &Endpoint,
) -> Result<Result<(), Blocked>, ReconcileError> {
    let Endpoint::Service {
        namespace,
        name,
        port,
        ..
    } = endpoint
    else {
        return Ok(Ok(()));
    };
    let api: Api<Service> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(svc) = api.get_opt(name).await? else {
        return Ok(Err(waiting(
            "ServiceNotFound",
            format!("Service {namespace}/{name} not found"),
        )));
    };
    let has_port = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .is_some_and(|ports| ports.iter().any(|p| p.port == *port));
    if !has_port {
        return Ok(Err(waiting(
            "ServicePortNotFound",
            format!("Service {namespace}/{name} has no port {port}"),
        )));
    }
    Ok(Ok(()))
}

async fn desired_gateway(
    ctx: &Context,
    be: &MCPBackend,
    namespace: &str,
    name: &str,
) -> Result<Result<DesiredGateway, Blocked>, ReconcileError> {
    let spec = &be.spec;
    let endpoint = match spec.endpoint(namespace) {
        Ok(e) => e,
        Err(e) => return Ok(Err(invalid(e))),
    };
    let url = match UpstreamUrl::parse(&endpoint.url()) {
        Ok(u) => u,
        Err(e) => return Ok(Err(invalid(e.at("spec")))),
    };
    let gw_name = spec.registry_name.as_deref().unwrap_or(name);
    let gw_name = match GatewayName::parse_input(gw_name, &ctx.separator) {
        Ok(n) => n,
        Err(e) => {
            return Ok(Err(invalid(FieldInvalid::new(
                "spec.registryName",
                e.reason,
            ))));
        }
    };
    let tags = match Tags::parse(&spec.tags) {
        Ok(t) => t,
        Err(e) => return Ok(Err(invalid(e.at("spec")))),
    };
    if let Err(b) = service(ctx, &endpoint).await? {
        return Ok(Err(b));
    }
    let credentials = match credential(ctx, namespace, spec).await? {
        Ok(c) => c,
        Err(b) => return Ok(Err(b)),
    };
    // `none` and `static` both mean "the backend's credential, if any" in the CRD, which is
    // the registry's `static`.
    let mut client_secret = None;
    let mut token_exchange = None;
    let mode = match spec.upstream_identity.mode {
        super::crd::IdentityMode::None | super::crd::IdentityMode::Static => {
            crate::model::IdentityMode::Static
        }
        super::crd::IdentityMode::IdentityHeader => crate::model::IdentityMode::IdentityHeader,
        super::crd::IdentityMode::TokenExchange => {
            let Some(te) = &spec.upstream_identity.token_exchange else {
                return Ok(Err(invalid(FieldInvalid::new(
                    "spec.upstreamIdentity.tokenExchange",
                    "required with mode token-exchange",
                ))));
            };
            let field = "spec.upstreamIdentity.tokenExchange.clientSecretRef";
            match secret_value(ctx, namespace, &te.client_secret_ref, field).await? {
                Ok(v) if v.is_empty() => {
                    return Ok(Err(invalid(FieldInvalid::new(
                        field,
                        "the Secret's value is empty",
                    ))));
                }
                Ok(v) => client_secret = Some(v),
                Err(b) => return Ok(Err(b)),
            }
            token_exchange = Some(crate::model::TokenExchangeSettings {
                token_endpoint: te.token_endpoint.clone(),
                client_id: te.client_id.clone(),
                audience: te.audience.clone(),
                resource: te.resource.clone(),
                scope: te.scope.clone(),
            });
            crate::model::IdentityMode::TokenExchange
        }
    };
    if spec.upstream_identity.token_exchange.is_some() && token_exchange.is_none() {
        return Ok(Err(invalid(FieldInvalid::new(
            "spec.upstreamIdentity.tokenExchange",
            "only with mode token-exchange",
        ))));
    }
    let identity = crate::model::GatewayIdentity {
        mode,
        token_exchange,
    };
    if let Err(e) = identity.check() {
        // The registry's field names, under the CRD's.
        return Ok(Err(invalid(FieldInvalid::new(
            format!("spec.upstreamIdentity ({})", e.field),
            e.reason,
        ))));
    }
    Ok(Ok(DesiredGateway {
        name: gw_name,
        url,
        transport: match spec.transport {
            BackendTransport::StreamableHttp => Transport::StreamableHttp,
            BackendTransport::Sse => Transport::Sse,
        },
        credentials,
        enabled: spec.enabled,
        description: spec.description.clone(),
        tags,
        identity,
        client_secret,
    }))
}

/// Seals a token exchange's client secret, bound to its gateway.
fn seal_client_secret(
    secrets: &SecretBox,
    secret: Option<&str>,
    gateway_id: &str,
) -> Result<Option<String>, ReconcileError> {
    secret
        .map(|c| {
            secrets.seal_for(
                crate::model::CLIENT_SECRET_LABEL,
                gateway_id.as_bytes(),
                c.as_bytes(),
            )
        })
        .transpose()
        .map_err(|e| ReconcileError::Store(StoreError::Sealed(e)))
}

fn seal(
    secrets: &SecretBox,
    creds: Option<&Credentials>,
    gateway_id: &str,
    url: &UpstreamUrl,
) -> Result<(AuthType, Option<String>), ReconcileError> {
    let origin = url.origin();
    let sealed = creds
        .map(|c| {
            secrets.seal_credentials(
                c,
                CredentialBinding {
                    gateway_id,
                    origin: &origin,
                },
            )
        })
        .transpose()
        .map_err(|e| ReconcileError::Store(StoreError::Sealed(e)))?;
    Ok((creds.map_or(AuthType::None, Credentials::auth_type), sealed))
}

/// Brings the registry in line with `want`; returns the gateway id and whether the
/// upstream must be discovered again (new, or its URL, transport or credential changed).
async fn write_gateway(
    ctx: &Context,
    owner: &K8sOwner,
    want: DesiredGateway,
) -> Result<Result<(String, bool), Blocked>, ReconcileError> {
    let store = &ctx.store;
    let existing = store
        .k8s_owned(
            OwnedObject::Gateway,
            &owner.kind,
            &owner.namespace,
            &owner.name,
        )
        .await?;
    let current = match &existing {
        Some((id, _)) => match store.get_gateway(id).await {
            Ok(g) => Some(g),
            // Gone behind the controller's back: forget the row, create it again.
            Err(StoreError::NotFound { .. }) => {
                store.delete_owned(OwnedObject::Gateway, id).await?;
                None
            }
            Err(e) => return Err(e.into()),
        },
        None => None,
    };
    let Some(gw) = current else {
        if let Some(other) = store.find_gateway_by_name(want.name.as_str()).await? {
            let holder = store
                .k8s_owner(OwnedObject::Gateway, &other.id)
                .await?
                .map_or_else(|| "the REST API".to_owned(), |o| o.to_string());
            return Ok(Err(Blocked {
                accepted: false,
                reason: "NameConflict",
                message: format!(
                    "a gateway named {:?} already exists (created by {holder}); set spec.registryName",
                    want.name.as_str()
                ),
            }));
        }
        let id = crate::store::new_id();
        let (auth_type, auth_sealed) =
            seal(&ctx.secrets, want.credentials.as_ref(), &id, &want.url)?;
        let identity_sealed = seal_client_secret(&ctx.secrets, want.client_secret.as_deref(), &id)?;
        let created = store
            .create_owned_gateway(
                NewGateway {
                    id,
                    name: want.name,
                    url: want.url,
                    transport: want.transport,
                    description: want.description,
                    tags: want.tags,
                    enabled: want.enabled,
                    auth_type,
                    auth_sealed,
                    identity: want.identity,
                    identity_sealed,
                },
                owner,
            )
            .await;
        return match created {
            Ok(g) => Ok(Ok((g.id, true))),
            Err(StoreError::Invalid { field, reason }) => {
                Ok(Err(invalid(FieldInvalid::new(field, reason))))
            }
            Err(e) => Err(e.into()),
        };
    };
    let stored_creds = match store.gateway_credentials(&gw.id, &ctx.secrets).await {
        Ok(c) => c,
        // Sealed with a key no longer known: give them again.
        Err(StoreError::Sealed(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let url_changed = gw.url != want.url;
    let creds_changed = stored_creds != want.credentials;
    let stored_client_secret = match store.gateway_identity_secret(&gw.id).await? {
        Some(sealed) => ctx
            .secrets
            .open_for(crate::model::CLIENT_SECRET_LABEL, gw.id.as_bytes(), &sealed)
            .ok()
            .and_then(|(plain, _)| String::from_utf8(plain).ok()),
        None => None,
    };
    let identity_changed =
        gw.identity != want.identity || stored_client_secret != want.client_secret;
    let patch = GatewayPatch {
        name: (gw.name != want.name).then(|| want.name.clone()),
        url: url_changed.then(|| want.url.clone()),
        transport: (gw.transport != want.transport).then_some(want.transport),
        description: (gw.description != want.description)
            .then(|| want.description.clone().unwrap_or_default()),
        tags: (gw.tags != want.tags).then(|| want.tags.clone()),
        enabled: (gw.enabled != want.enabled).then_some(want.enabled),
        // Credentials are sealed to the URL's origin: a new URL seals them again.
        auth: if url_changed || creds_changed {
            Some(seal(
                &ctx.secrets,
                want.credentials.as_ref(),
                &gw.id,
                &want.url,
            )?)
        } else {
            None
        },
        identity: if identity_changed {
            Some((
                want.identity.clone(),
                seal_client_secret(&ctx.secrets, want.client_secret.as_deref(), &gw.id)?,
            ))
        } else {
            None
        },
        expected_version: Some(gw.version),
    };
    let rediscover =
        url_changed || creds_changed || patch.transport.is_some() || patch.enabled == Some(true);
    if patch_is_empty(&patch) {
        return Ok(Ok((gw.id, false)));
    }
    match store.update_gateway(&gw.id, patch).await {
        Ok(_) => {}
        Err(StoreError::Invalid { field, reason }) => {
            return Ok(Err(invalid(FieldInvalid::new(field, reason))));
        }
        Err(StoreError::Duplicate { name, .. }) => {
            return Ok(Err(Blocked {
                accepted: false,
                reason: "NameConflict",
                message: format!("a gateway named {name:?} already exists; set spec.registryName"),
            }));
        }
        Err(e) => return Err(e.into()),
    }
    if rediscover && let Some(f) = &ctx.federation {
        f.disconnect(&gw.id).await;
    }
    Ok(Ok((gw.id, rediscover)))
}

fn patch_is_empty(p: &GatewayPatch) -> bool {
    p.name.is_none()
        && p.url.is_none()
        && p.transport.is_none()
        && p.description.is_none()
        && p.tags.is_none()
        && p.enabled.is_none()
        && p.auth.is_none()
        && p.identity.is_none()
}

async fn count_items<S: CatalogSpec>(
    store: &Store,
    mut keep: impl FnMut(&CatalogItem<S>) -> bool,
) -> Result<i64, StoreError> {
    let all = store.all_items::<S>().await?;
    Ok(i64::try_from(all.iter().filter(|i| keep(i)).count()).unwrap_or(i64::MAX))
}

/// Reconciles one `MCPBackend` (with its finalizer).
pub async fn reconcile_backend(
    be: Arc<MCPBackend>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    if !ctx.is_leader() {
        return Ok(Action::requeue(WAIT));
    }
    let (ns, _) = key(be.as_ref())?;
    let api: Api<MCPBackend> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, be, |event| async {
        match event {
            finalizer::Event::Apply(be) => apply_backend(&be, &ctx, &api).await,
            finalizer::Event::Cleanup(be) => cleanup(&ctx, be.as_ref(), OwnedObject::Gateway).await,
        }
    })
    .await
    .map_err(wrap)
}

async fn cleanup<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    obj: &K,
    object: OwnedObject,
) -> Result<Action, ReconcileError> {
    let who = owner(obj)?;
    if let Some((id, _)) = ctx
        .store
        .k8s_owned(object, &who.kind, &who.namespace, &who.name)
        .await?
    {
        ctx.store.delete_owned(object, &id).await?;
        if object == OwnedObject::Gateway
            && let Some(f) = &ctx.federation
        {
            f.forget(&id).await;
        }
        tracing::info!(resource = %who, %id, "removed from the registry");
    }
    Ok(Action::await_change())
}

async fn apply_backend(
    be: &MCPBackend,
    ctx: &Context,
    api: &Api<MCPBackend>,
) -> Result<Action, ReconcileError> {
    let (ns, name) = key(be)?;
    let who = owner(be)?;
    let generation = be.metadata.generation;
    let previous = be.status.clone().unwrap_or_default();
    let url = be.spec.endpoint(&ns).ok().map(|e| e.url());
    let outcome = match desired_gateway(ctx, be, &ns, &name).await? {
        Ok(want) => write_gateway(ctx, &who, want).await?,
        Err(b) => Err(b),
    };
    let (found, status, next) = match outcome {
        Err(b) => {
            warn(ctx, be, b.reason, b.message.clone()).await;
            let found = vec![
                found(
                    "Accepted",
                    b.accepted,
                    if b.accepted { "Accepted" } else { b.reason },
                    if b.accepted {
                        String::new()
                    } else {
                        b.message.clone()
                    },
                ),
                found("Ready", false, b.reason, b.message.clone()),
                found("Degraded", false, "NotServed", ""),
            ];
            let status = BackendStatus {
                url,
                ..previous.clone()
            };
            (
                found,
                status,
                if b.accepted {
                    Action::requeue(WAIT)
                } else {
                    Action::await_change()
                },
            )
        }
        Ok((id, rediscover)) => {
            let mut degraded: Option<String> = None;
            if let Some(f) = &ctx.federation {
                let gw = ctx.store.get_gateway(&id).await?;
                if gw.enabled
                    && (rediscover || previous.discovered_tools.is_none())
                    && let Err(e) = f.refresh(&id).await
                {
                    let msg = crate::model::redact_urls(&e.to_string());
                    warn(ctx, be, "DiscoveryFailed", msg.clone()).await;
                    degraded = Some(msg);
                }
            }
            let gw = ctx.store.get_gateway(&id).await?;
            if degraded.is_none() && !gw.reachable {
                degraded = Some(
                    gw.last_error
                        .clone()
                        .unwrap_or_else(|| "the upstream is unreachable".to_owned()),
                );
            }
            let tools = count_items::<ToolSpec>(&ctx.store, |t| {
                t.gateway_id.as_deref() == Some(id.as_str())
            })
            .await?;
            let pending = ctx
                .federation
                .as_ref()
                .map_or(0, |f| i64::from(f.change_pending(&id)));
            let found = vec![
                found("Accepted", true, "Accepted", ""),
                found(
                    "Ready",
                    true,
                    "Reconciled",
                    format!("gateway {} ({id})", gw.name.as_str()),
                ),
                match &degraded {
                    Some(m) => found("Degraded", true, "UpstreamFailing", m.clone()),
                    None => found("Degraded", false, "Healthy", ""),
                },
            ];
            let status = BackendStatus {
                gateway_id: Some(id),
                url: Some(gw.url.redacted()),
                discovered_tools: Some(tools),
                pending_tool_changes: Some(pending),
                ..previous.clone()
            };
            (found, status, Action::requeue(RESYNC))
        }
    };
    let status = BackendStatus {
        conditions: conditions(&previous.conditions, &found, generation),
        observed_generation: generation,
        ..status
    };
    write_status(api, &name, be.status.as_ref(), &status).await?;
    Ok(next)
}

// ---- MCPVirtualServer ----------------------------------------------------------------

/// A label selector as the API's `labelSelector` query string (`a=b,c in (d,e),!f`).
pub fn selector_string(s: &LabelSelector) -> String {
    let mut parts: Vec<String> = s
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in s.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    parts.join(",")
}

/// The catalog items of the gateways in `picks` (gateway id → names wanted, `None`: all).
fn pick<S: CatalogSpec>(
    items: &[CatalogItem<S>],
    picks: &BTreeMap<String, Option<BTreeSet<String>>>,
    name_of: impl Fn(&CatalogItem<S>) -> String,
) -> Vec<String> {
    items
        .iter()
        .filter(|i| {
            i.gateway_id
                .as_ref()
                .and_then(|g| picks.get(g))
                .is_some_and(|want| want.as_ref().is_none_or(|w| w.contains(&name_of(i))))
        })
        .map(|i| i.id.clone())
        .collect()
}

type Picks = BTreeMap<String, Option<BTreeSet<String>>>;

fn merge_pick(into: &mut Picks, gateway: &str, names: Option<&Vec<String>>) {
    let names = names.map(|n| n.iter().cloned().collect::<BTreeSet<_>>());
    match (into.get_mut(gateway), names) {
        (None, n) => {
            into.insert(gateway.to_owned(), n);
        }
        (Some(slot @ Some(_)), None) => *slot = None,
        (Some(Some(have)), Some(more)) => have.extend(more),
        (Some(None), _) => {}
    }
}

/// Reconciles one `MCPVirtualServer` (with its finalizer).
pub async fn reconcile_virtual_server(
    vs: Arc<MCPVirtualServer>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    if !ctx.is_leader() {
        return Ok(Action::requeue(WAIT));
    }
    let (ns, _) = key(vs.as_ref())?;
    let api: Api<MCPVirtualServer> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, vs, |event| async {
        match event {
            finalizer::Event::Apply(vs) => apply_virtual_server(&vs, &ctx, &api).await,
            finalizer::Event::Cleanup(vs) => {
                let action = cleanup(&ctx, vs.as_ref(), OwnedObject::Server).await?;
                super::attach::forget_server(&ctx, &ns, &vs.name_any()).await?;
                Ok(action)
            }
        }
    })
    .await
    .map_err(wrap)
}

async fn apply_virtual_server(
    vs: &MCPVirtualServer,
    ctx: &Context,
    api: &Api<MCPVirtualServer>,
) -> Result<Action, ReconcileError> {
    let (ns, name) = key(vs)?;
    let who = owner(vs)?;
    let generation = vs.metadata.generation;
    let previous = vs.status.clone().unwrap_or_default();
    let spec = &vs.spec;
    let store = &ctx.store;

    // Which gateways, and what of each.
    let mut tool_picks = Picks::new();
    let mut resource_picks = Picks::new();
    let mut prompt_picks = Picks::new();
    let mut missing: Vec<String> = Vec::new();
    let mut wanted: Vec<(String, Option<&super::crd::BackendSelection>)> = spec
        .backend_refs
        .iter()
        .map(|b| (b.name.clone(), Some(b)))
        .collect();
    if let Some(sel) = &spec.backend_selector {
        let backends: Api<MCPBackend> = Api::namespaced(ctx.client.clone(), &ns);
        let lp = ListParams::default().labels(&selector_string(sel));
        for b in backends.list(&lp).await? {
            wanted.push((b.name_any(), None));
        }
    }
    for (backend, selection) in wanted {
        let Some((gateway, _)) = store
            .k8s_owned(OwnedObject::Gateway, "MCPBackend", &ns, &backend)
            .await?
        else {
            missing.push(backend);
            continue;
        };
        merge_pick(
            &mut tool_picks,
            &gateway,
            selection.and_then(|s| s.tools.as_ref()),
        );
        merge_pick(
            &mut resource_picks,
            &gateway,
            selection.and_then(|s| s.resources.as_ref()),
        );
        merge_pick(
            &mut prompt_picks,
            &gateway,
            selection.and_then(|s| s.prompts.as_ref()),
        );
    }
    let tools = pick(&store.all_items::<ToolSpec>().await?, &tool_picks, |i| {
        i.original_name.clone()
    });
    let resources = pick(
        &store.all_items::<ResourceSpec>().await?,
        &resource_picks,
        |i| i.uri.clone().unwrap_or_default(),
    );
    let prompts = pick(
        &store.all_items::<PromptSpec>().await?,
        &prompt_picks,
        |i| i.original_name.clone(),
    );

    let parsed = (|| {
        let server_name = ItemName::parse(spec.registry_name.as_deref().unwrap_or(&name))
            .map_err(|e| FieldInvalid::new("spec.registryName", e.reason))?;
        let origins = AllowedOrigins::parse(&spec.allowed_origins).map_err(|e| e.at("spec"))?;
        let tags = Tags::parse(&spec.tags).map_err(|e| e.at("spec"))?;
        Ok::<_, FieldInvalid>((server_name, origins, tags))
    })();
    let naming = match spec.naming {
        NamingMode::Prefixed => Naming::Prefixed,
        NamingMode::Upstream => Naming::Upstream,
    };
    let outcome: Result<String, Blocked> = match parsed {
        Err(e) => Err(invalid(e)),
        Ok((server_name, origins, tags)) => {
            write_server(
                ctx,
                &who,
                NewServer {
                    name: server_name,
                    description: spec.description.clone(),
                    icon: None,
                    tags,
                    enabled: spec.enabled,
                    naming,
                    allowed_origins: origins,
                    tools: tools.clone(),
                    resources: resources.clone(),
                    prompts: prompts.clone(),
                },
            )
            .await?
        }
    };
    let (found, status, next) = match outcome {
        Err(b) => {
            warn(ctx, vs, b.reason, b.message.clone()).await;
            (
                vec![
                    found("Accepted", false, b.reason, b.message.clone()),
                    found("Ready", false, b.reason, b.message),
                    found("Degraded", false, "NotServed", ""),
                ],
                previous.clone(),
                Action::await_change(),
            )
        }
        Ok(id) => {
            // The policies attached to it, into the registry beside it.
            super::attach::sync_server(ctx, &ns, &name, &id).await?;
            let count = |v: &Vec<String>| Some(i64::try_from(v.len()).unwrap_or(i64::MAX));
            let degraded = if missing.is_empty() {
                found("Degraded", false, "AllBackendsReady", "")
            } else {
                let msg = format!("backends not in the registry (yet): {}", missing.join(", "));
                warn(ctx, vs, "BackendNotReady", msg.clone()).await;
                found("Degraded", true, "BackendNotReady", msg)
            };
            let pending = match &ctx.federation {
                Some(f) => tool_picks.keys().filter(|g| f.change_pending(g)).count(),
                None => 0,
            };
            (
                vec![
                    found("Accepted", true, "Accepted", ""),
                    found("Ready", true, "Reconciled", format!("server {id}")),
                    degraded,
                ],
                VirtualServerStatus {
                    server_id: Some(id),
                    tools: count(&tools),
                    resources: count(&resources),
                    prompts: count(&prompts),
                    pending_tool_changes: Some(i64::try_from(pending).unwrap_or(i64::MAX)),
                    ..previous.clone()
                },
                // New discoveries on a backend show up at the next look.
                if missing.is_empty() {
                    Action::requeue(RESYNC)
                } else {
                    Action::requeue(WAIT)
                },
            )
        }
    };
    let status = VirtualServerStatus {
        conditions: conditions(&previous.conditions, &found, generation),
        observed_generation: generation,
        ..status
    };
    write_status(api, &name, vs.status.as_ref(), &status).await?;
    Ok(next)
}

async fn write_server(
    ctx: &Context,
    owner: &K8sOwner,
    want: NewServer,
) -> Result<Result<String, Blocked>, ReconcileError> {
    let store = &ctx.store;
    let existing = store
        .k8s_owned(
            OwnedObject::Server,
            &owner.kind,
            &owner.namespace,
            &owner.name,
        )
        .await?;
    let current = match &existing {
        Some((id, _)) => match store.get_server(id).await {
            Ok(s) => Some(s),
            Err(StoreError::NotFound { .. }) => {
                store.delete_owned(OwnedObject::Server, id).await?;
                None
            }
            Err(e) => return Err(e.into()),
        },
        None => None,
    };
    let result = match current {
        None => store.create_owned_server(want, owner).await.map(|s| s.id),
        Some(s) => {
            let same = |a: &[String], b: &[String]| {
                a.iter().collect::<BTreeSet<_>>() == b.iter().collect::<BTreeSet<_>>()
            };
            let patch = ServerPatch {
                name: (s.name != want.name).then(|| want.name.clone()),
                description: (s.description != want.description)
                    .then(|| want.description.clone().unwrap_or_default()),
                icon: None,
                tags: (s.tags != want.tags).then(|| want.tags.clone()),
                enabled: (s.enabled != want.enabled).then_some(want.enabled),
                naming: (s.naming != want.naming).then_some(want.naming),
                allowed_origins: (s.allowed_origins != want.allowed_origins)
                    .then(|| want.allowed_origins.clone()),
                tools: (!same(&s.associated_tools, &want.tools)).then(|| want.tools.clone()),
                resources: (!same(&s.associated_resources, &want.resources))
                    .then(|| want.resources.clone()),
                prompts: (!same(&s.associated_prompts, &want.prompts))
                    .then(|| want.prompts.clone()),
                expected_version: Some(s.version),
            };
            let empty = patch.name.is_none()
                && patch.description.is_none()
                && patch.tags.is_none()
                && patch.enabled.is_none()
                && patch.naming.is_none()
                && patch.allowed_origins.is_none()
                && patch.tools.is_none()
                && patch.resources.is_none()
                && patch.prompts.is_none();
            if empty {
                Ok(s.id)
            } else {
                store.update_server(&s.id, patch).await.map(|s| s.id)
            }
        }
    };
    match result {
        Ok(id) => Ok(Ok(id)),
        Err(StoreError::Duplicate { name, .. }) => Ok(Err(Blocked {
            accepted: false,
            reason: "NameConflict",
            message: format!("a server named {name:?} already exists; set spec.registryName"),
        })),
        Err(e @ (StoreError::Invalid { .. } | StoreError::NameCollisions(_))) => Ok(Err(Blocked {
            accepted: false,
            reason: "Invalid",
            message: e.to_string(),
        })),
        Err(e) => Err(e.into()),
    }
}

// ---- MCPPolicy -----------------------------------------------------------------------

/// Reconciles one `MCPPolicy`: checks it translates into the snapshot's types and finds
/// its targets, writes what it adds up to on each of them into the registry
/// ([`super::attach`]), and its status. (No finalizer: a deleted policy wakes the virtual
/// servers of its namespace, whose reconcile removes what it gave them.)
pub async fn reconcile_policy(
    policy: Arc<MCPPolicy>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    if !ctx.is_leader() {
        return Ok(Action::requeue(WAIT));
    }
    let (ns, name) = key(policy.as_ref())?;
    let api: Api<MCPPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    let previous = policy.status.clone().unwrap_or_default();
    let generation = policy.metadata.generation;
    let (found, attached, next) = match super::policy::translate(&policy.spec) {
        Err(e) => {
            warn(ctx.as_ref(), policy.as_ref(), "Invalid", e.to_string()).await;
            (
                vec![
                    found("Accepted", false, "Invalid", e.to_string()),
                    found("Ready", false, "Invalid", e.to_string()),
                    found("Degraded", false, "NotAttached", ""),
                ],
                None,
                Action::await_change(),
            )
        }
        Ok(_) => {
            let mut targets: BTreeSet<String> = policy
                .spec
                .target_refs
                .iter()
                .map(|t| t.name.clone())
                .collect();
            if let Some(sel) = &policy.spec.target_selector {
                let servers: Api<MCPVirtualServer> = Api::namespaced(ctx.client.clone(), &ns);
                let lp = ListParams::default().labels(&selector_string(sel));
                targets.extend(servers.list(&lp).await?.iter().map(ResourceExt::name_any));
            }
            let mut missing = Vec::new();
            let mut attached = 0i64;
            let mut lost = Vec::new();
            let me = format!("{ns}/{name}");
            for t in &targets {
                match ctx
                    .store
                    .k8s_owned(OwnedObject::Server, "MCPVirtualServer", &ns, t)
                    .await?
                {
                    Some((server_id, _)) => {
                        attached += 1;
                        let eff = super::attach::sync_server(&ctx, &ns, t, &server_id).await?;
                        lost.extend(
                            eff.overridden
                                .into_iter()
                                .filter(|(p, _)| *p == me)
                                .map(|(_, what)| format!("{what} on {t}")),
                        );
                    }
                    None => missing.push(t.clone()),
                }
            }
            let degraded = if !missing.is_empty() {
                found(
                    "Degraded",
                    true,
                    "TargetNotFound",
                    format!("virtual servers not found: {}", missing.join(", ")),
                )
            } else if !lost.is_empty() {
                found(
                    "Degraded",
                    true,
                    "Overridden",
                    format!("overridden by another policy: {}", lost.join(", ")),
                )
            } else {
                found("Degraded", false, "AllTargetsFound", "")
            };
            (
                vec![
                    found("Accepted", true, "Accepted", ""),
                    found(
                        "Ready",
                        attached > 0,
                        if attached > 0 {
                            "Attached"
                        } else {
                            "NoTargets"
                        },
                        format!("attached to {attached} virtual server(s)"),
                    ),
                    degraded,
                ],
                Some(attached),
                if missing.is_empty() {
                    Action::requeue(RESYNC)
                } else {
                    Action::requeue(WAIT)
                },
            )
        }
    };
    let status = PolicyStatus {
        conditions: conditions(&previous.conditions, &found, generation),
        observed_generation: generation,
        attached_servers: attached,
    };
    write_status(&api, &name, policy.status.as_ref(), &status).await?;
    Ok(next)
}
