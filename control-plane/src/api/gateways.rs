//! `/gateways`: upstream MCP servers.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::face::{Face, registry_face};
use super::types::{
    Gateway, GatewayChange, GatewayCreate, GatewayDraft, GatewayPage, GatewaySync, GatewayUpdate,
    ListQuery,
};
use super::{ApiError, AppState, Problem};
use crate::crypto::{CredentialBinding, SecretBox};
use crate::model::{self, Credentials, GatewayPatch, ListFilter, NewGateway, Page, UpstreamUrl};

/// Seals credentials bound to the gateway and its URL's origin.
pub(crate) fn seal(
    secrets: &SecretBox,
    creds: Option<&Credentials>,
    gateway_id: &str,
    url: &UpstreamUrl,
) -> Result<Option<String>, Problem> {
    let origin = url.origin();
    let binding = CredentialBinding {
        gateway_id,
        origin: &origin,
    };
    creds
        .map(|c| secrets.seal_credentials(c, binding))
        .transpose()
        .map_err(|e| {
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
                e.to_string(),
            )
        })
}

/// Seals a token-exchange client secret, bound to the gateway.
pub(crate) fn seal_client_secret(
    secrets: &SecretBox,
    secret: Option<&str>,
    gateway_id: &str,
) -> Result<Option<String>, Problem> {
    secret
        .map(|c| {
            secrets.seal_for(
                model::CLIENT_SECRET_LABEL,
                gateway_id.as_bytes(),
                c.as_bytes(),
            )
        })
        .transpose()
        .map_err(|e| {
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
                e.to_string(),
            )
        })
}

/// The face of gateways.
pub struct Gateways;

impl Face for Gateways {
    const OWNED: crate::store::identity::OwnedKind = crate::store::identity::OwnedKind::Gateway;
    type View = Gateway;
    type Create = GatewayCreate;
    type Created = GatewaySync;
    type Update = GatewayUpdate;

    async fn list(s: &AppState, q: ListQuery) -> Result<Page<Gateway>, ApiError> {
        let filter = ListFilter::try_from(q)?;
        Ok(s.store.list_gateways(&filter).await?.map(Gateway::from))
    }

    /// Registers a gateway: connects, initializes and discovers its catalog (unless
    /// `discover` is false), storing gateway and catalog atomically.
    async fn create(s: &AppState, body: GatewayCreate) -> Result<GatewaySync, ApiError> {
        let draft = GatewayDraft::try_from(body)?;
        draft
            .name
            .check_separator(&s.federation.settings().separator)?;
        let id = crate::store::new_id();
        let sealed = seal(&s.secrets, draft.credentials.as_ref(), &id, &draft.url)?;
        check_token_endpoint(s, &draft.identity.0).await?;
        let identity_sealed = seal_client_secret(&s.secrets, draft.identity.1.as_deref(), &id)?;
        if s.store
            .find_gateway_by_name(draft.name.as_str())
            .await?
            .is_some()
        {
            return Err(crate::store::StoreError::Duplicate {
                kind: "gateway",
                name: draft.name.to_string(),
            }
            .into());
        }
        let g = NewGateway {
            id,
            name: draft.name,
            url: draft.url,
            transport: draft.transport,
            description: draft.description,
            tags: draft.tags,
            enabled: draft.enabled,
            auth_type: draft
                .credentials
                .as_ref()
                .map_or(model::AuthType::None, Credentials::auth_type),
            auth_sealed: sealed,
            identity_sealed,
            identity: draft.identity.0,
        };
        let (gateway, sync) = s
            .federation
            .register(g, draft.credentials.as_ref(), draft.discover)
            .await?;
        Ok(GatewaySync {
            gateway: gateway.into(),
            sync: sync.map(Into::into),
        })
    }

    async fn get(s: &AppState, id: &str) -> Result<Gateway, ApiError> {
        Ok(s.store.get_gateway(id).await?.into())
    }

    async fn update(s: &AppState, id: &str, body: GatewayUpdate) -> Result<Gateway, ApiError> {
        let mut change = GatewayChange::try_from(body)?;
        if let Some(name) = &change.name {
            name.check_separator(&s.federation.settings().separator)?;
        }
        let before = s.store.get_gateway(id).await?;
        // A client that read the gateway and writes it back sends the redacted URL: that
        // is no change, and must not overwrite the stored query secrets with `***`.
        if change
            .url
            .as_ref()
            .is_some_and(|u| before.url.is_redacted_form(u.as_str()))
        {
            change.url = None;
        }
        // Credentials are sealed to the origin they will be used with; moving to another
        // origin without giving them again is refused (and re-checked by the store).
        let target = change.url.as_ref().unwrap_or(&before.url);
        let auth = match change.auth {
            Some((t, creds)) => Some((t, seal(&s.secrets, creds.as_ref(), id, target)?)),
            None => {
                before.check_move(target)?;
                None
            }
        };
        if let Some(url) = &change.url {
            crate::federation::check_upstream_url(
                url,
                s.federation.settings().ssrf,
                s.federation.settings().timeout,
            )
            .await
            .map_err(crate::federation::FederationError::from)?;
        }
        if let Some((identity, _)) = &change.identity {
            check_token_endpoint(s, identity).await?;
        }
        let identity = match change.identity {
            Some((identity, secret)) => Some((
                identity,
                seal_client_secret(&s.secrets, secret.as_deref(), id)?,
            )),
            None => None,
        };
        let credentials_changed = auth.is_some();
        let patch = GatewayPatch {
            name: change.name,
            url: change.url,
            transport: change.transport,
            description: change.description,
            tags: change.tags,
            enabled: change.enabled,
            auth,
            identity,
            expected_version: change.version,
        };
        let after = s.store.update_gateway(id, patch).await?;
        drop_stale_session(s, &before, &after, credentials_changed).await;
        Ok(after.into())
    }

    async fn delete(s: &AppState, id: &str) -> Result<(), ApiError> {
        s.store.delete_gateway(id).await?;
        s.federation.forget(id).await;
        Ok(())
    }

    async fn set_state(s: &AppState, id: &str, activate: bool) -> Result<Gateway, ApiError> {
        let patch = GatewayPatch {
            enabled: Some(activate),
            ..Default::default()
        };
        let gateway = s.store.update_gateway(id, patch).await?;
        if !gateway.enabled {
            s.federation.disconnect(id).await;
        }
        Ok(gateway.into())
    }
}

/// A live session belongs to one enabled gateway at one URL with one transport (and
/// credentials): after any of these change, its notifications must not reach the
/// catalog. The next refresh or health check connects again if the gateway is enabled.
async fn drop_stale_session(
    s: &AppState,
    before: &model::Gateway,
    after: &model::Gateway,
    credentials_changed: bool,
) {
    let stale = !after.enabled
        || before.url != after.url
        || before.transport != after.transport
        || credentials_changed;
    if stale {
        s.federation.disconnect(&after.id).await;
    }
}

registry_face! {
    pub mod handlers: Gateways {
        path: "/gateways", tag: "gateways",
        view: Gateway, page: GatewayPage, create: GatewayCreate, created: GatewaySync, update: GatewayUpdate,
        list: (list, "List gateways.", [(status = 400, body = Problem, content_type = "application/problem+json"),]),
        create: (create, "Register a gateway: connects, initializes and discovers its catalog (unless\n`discover` is false), storing gateway and catalog atomically.", [
            (status = 502, body = Problem, content_type = "application/problem+json"),
            (status = 504, body = Problem, content_type = "application/problem+json"),
        ]),
        get: (get, "Get a gateway.", []),
        update: (update, "Update a gateway (partial). Pass `version` to detect concurrent changes.", []),
        delete: (delete, "Delete a gateway and everything discovered from it.", []),
        state: (set_state, "Enable or disable a gateway (and its items). `/gateways/{id}/toggle` is an alias.", []),
    }
}

/// Re-discover a gateway's catalog now (409 when the gateway is disabled).
#[utoipa::path(post, path = "/gateways/{id}/refresh", tag = "gateways", params(("id" = String, Path)),
    responses((status = 200, body = GatewaySync),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 502, body = Problem, content_type = "application/problem+json"),
              (status = 504, body = Problem, content_type = "application/problem+json")))]
pub async fn refresh(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<GatewaySync>, ApiError> {
    let (gateway, report) = s.federation.refresh(&id).await?;
    Ok(Json(GatewaySync {
        gateway: gateway.into(),
        sync: Some(report.into()),
    }))
}

/// How an upstream verifies the identity headers of a gateway in mode identity-header.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct IdentityKey {
    /// The header the Envoys send: `x-mcpgw-identity`.
    pub header: &'static str,
    /// `HS256`: the header is a compact JWS, HMAC-SHA256 with `key`.
    pub alg: &'static str,
    /// The key's id (the JWS header's `kid`); it changes when the control plane's
    /// encryption key is rotated.
    pub kid: String,
    /// The key, base64url without padding (32 bytes). Give it to the upstream only.
    pub key: String,
    /// `iss` of every header.
    pub issuer: String,
    /// `aud` of every header: the gateway's id.
    pub audience: String,
    /// Lifetime of each header (`exp` - `iat`), in seconds.
    pub ttl_seconds: u64,
}

/// The key an upstream verifies this gateway's identity headers with (`gateways.update`
/// on the gateway; 409 unless its identity mode is identity-header). The key is derived
/// from the control plane's encryption key, so it can be read again at any time by whoever
/// may change the gateway, and changes when that key is rotated.
#[utoipa::path(get, path = "/gateways/{id}/identity-key", tag = "gateways", params(("id" = String, Path)),
    responses((status = 200, body = IdentityKey),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json")))]
pub async fn identity_key(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<IdentityKey>, ApiError> {
    use base64::Engine as _;
    let gateway = s.store.get_gateway(&id).await?;
    if gateway.identity.mode != model::IdentityMode::IdentityHeader {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "identity-mode",
            "Not an identity-header gateway",
            format!(
                "gateway {} has identity mode {}: its upstream receives no identity header",
                gateway.name,
                gateway.identity.mode.as_str()
            ),
        )
        .into());
    }
    let h = crate::edge_config::identity_header(&s.secrets, &id);
    Ok(Json(IdentityKey {
        header: mcpgw_core::upstream_identity::IDENTITY_HEADER,
        alg: "HS256",
        kid: h.kid,
        key: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(h.key.0),
        issuer: h.issuer,
        audience: h.audience,
        ttl_seconds: h.ttl_seconds,
    }))
}

/// The SSRF guard of gateway URLs, for a token exchange's endpoint.
async fn check_token_endpoint(
    s: &AppState,
    identity: &model::GatewayIdentity,
) -> Result<(), ApiError> {
    if let Some(t) = &identity.token_exchange {
        let url = t.endpoint()?;
        crate::federation::check_upstream_url(
            &url,
            s.federation.settings().ssrf,
            s.federation.settings().timeout,
        )
        .await
        .map_err(crate::federation::FederationError::from)?;
    }
    Ok(())
}
