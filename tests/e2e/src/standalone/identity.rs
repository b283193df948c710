//! Identity at the standalone edge: a case's token issuers, its `jwt_authn`, its revoked
//! token ids and its virtual servers' authorization, as an operator writes them into the
//! registry.
//!
//! - each of the snapshot's `auth.issuers` is `PUT /issuers/{name}` verbatim: its keys given
//!   inline (`jwks`), which the control plane inlines into the `jwt_authn` it sends over ECDS
//!   (an issuer without keys would have them fetched through OpenID discovery, from an
//!   issuer the cases do not run);
//! - the harness's static `jwt_authn` ([`crate::identity::jwt_authn_filter`]) must be exactly
//!   the one the control plane generates from those issuers
//!   (`control-plane/src/edge_config/jwt.rs`: one provider per issuer, the default clock
//!   skew), and the headers the case strips before any filter must be among those the
//!   control plane's listener strips: anything else is refused. Once Envoy runs, the
//!   `jwt_authn` it got over ECDS is compared with the case's ([`check_jwt_authn`]);
//! - `auth.revoked` is `PUT /revocations/{jti}` per token id, kept for a day (longer than
//!   any case's tokens live);
//! - a virtual server's `auth` is `PUT /policies/{server id}` verbatim (the control plane
//!   checks its rules with the `cel` crate and the filter's compiler on write).
//!
//! Upstream identities are not translated: see [`upstream_identity`].

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure};
use serde_json::{Map, Value, json};

use super::Standalone;
use crate::envoy::EnvoyConfig;
use crate::identity::{PAYLOAD_HEADER, jwt_authn_filter};

/// How long a revocation the harness writes is kept (the cases' tokens live minutes).
const REVOKED_FOR_SECONDS: u64 = 24 * 60 * 60;

/// Request headers the control plane's listener removes before any filter runs, of those
/// a case may ask to remove: the verified-payload header and the upstream identity header
/// (`IDENTITY_HEADERS` and `IDENTITY_HEADER` in `control-plane/src/edge_config/translate.rs`).
const STRIPPED_BY_THE_LISTENER: [&str; 2] = [
    PAYLOAD_HEADER,
    mcpgw_core::upstream_identity::IDENTITY_HEADER,
];

/// The identity part of a case's registry.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct IdentityPlan {
    /// `(name, the snapshot's auth.issuers.{name})`: the bodies of `PUT /issuers/{name}`.
    pub issuers: Vec<(String, Value)>,
    /// Token ids to revoke (`auth.revoked`).
    pub revoked: Vec<String>,
    /// `(server key, the snapshot's servers.{key}.auth)`: the bodies of `PUT /policies/{id}`.
    pub policies: Vec<(String, Value)>,
    /// The snapshot's `auth.passthrough`: the body of `PUT /policies/passthrough`.
    pub passthrough: Option<Value>,
}

/// Reads the identity part of `doc` (the snapshot) and checks `config`'s `jwt_authn` and
/// early header removal against what the control plane generates from it.
pub(super) fn plan(doc: &Map<String, Value>, config: &EnvoyConfig) -> anyhow::Result<IdentityPlan> {
    let auth = doc.get("auth").cloned().unwrap_or_else(|| json!({}));
    let auth = auth
        .as_object()
        .ok_or_else(|| anyhow!("auth is not an object"))?;
    let mut plan = IdentityPlan::default();
    for (key, value) in auth {
        match key.as_str() {
            "issuers" => {
                for (name, issuer) in value.as_object().into_iter().flatten() {
                    ensure!(
                        issuer.get("jwks").is_some(),
                        "auth.issuers.{name} has no inline jwks: the control plane would fetch its keys through OpenID discovery"
                    );
                    plan.issuers.push((name.clone(), issuer.clone()));
                }
            }
            "revoked" => {
                for jti in value.as_array().into_iter().flatten() {
                    let jti = jti
                        .as_str()
                        .ok_or_else(|| anyhow!("auth.revoked holds a non-string: {jti}"))?;
                    plan.revoked.push(jti.to_owned());
                }
            }
            "clock_skew_seconds" => ensure!(
                value.as_u64() == Some(mcpgw_core::snapshot::auth::DEFAULT_CLOCK_SKEW_SECONDS),
                "auth.clock_skew_seconds {value}: the control plane's edge allows the default {} s, no other",
                mcpgw_core::snapshot::auth::DEFAULT_CLOCK_SKEW_SECONDS
            ),
            "passthrough" => plan.passthrough = Some(value.clone()),
            other => bail!("auth.{other} is not translated into the registry"),
        }
    }
    // What the control plane's listener runs before the mcpgw filter: `jwt_authn` with one
    // provider per issuer (with none, it passes every request untouched, as no filter does).
    let providers: Vec<(&str, &str, &Value)> = plan
        .issuers
        .iter()
        .map(|(name, i)| {
            (
                name.as_str(),
                i["issuer"].as_str().unwrap_or_default(),
                &i["jwks"],
            )
        })
        .collect();
    let generated = if providers.is_empty() {
        Vec::new()
    } else {
        vec![jwt_authn_filter(
            &providers,
            mcpgw_core::snapshot::auth::DEFAULT_CLOCK_SKEW_SECONDS,
        )]
    };
    ensure!(
        config.before_filter == generated,
        "HTTP filters before mcpgw: only the jwt_authn the control plane generates from the snapshot's issuers (one provider per issuer, inline keys, {} s skew) runs there",
        mcpgw_core::snapshot::auth::DEFAULT_CLOCK_SKEW_SECONDS
    );
    for h in &config.strip_headers {
        ensure!(
            STRIPPED_BY_THE_LISTENER.contains(&h.to_ascii_lowercase().as_str()),
            "header {h} removed before any filter: the control plane's listener does not remove it"
        );
    }
    for (key, server) in doc
        .get("servers")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        if let Some(a) = server.get("auth") {
            plan.policies.push((key.clone(), a.clone()));
        }
    }
    Ok(plan)
}

/// Why an upstream's `identity` is not translated: the registry has the modes (a gateway's
/// `identity`), but what the case fixes itself is the control plane's to choose.
pub(super) fn upstream_identity(key: &str, identity: &Value) -> anyhow::Error {
    match identity["mode"].as_str() {
        Some("identity-header") => anyhow!(
            "upstream {key}: identity-header signs with a key the control plane derives per gateway from its encryption key (GET /gateways/{{id}}/identity-key), with its own kid, issuer and audience; the case fixes its own"
        ),
        Some("token-exchange") => anyhow!(
            "upstream {key}: token-exchange's endpoint, client id and secret are the gateway's `identity.token_exchange` settings and the control plane makes the token endpoint's cluster; the case gives them as static clusters"
        ),
        Some(mode) => anyhow!(
            "upstream {key}: identity mode {mode} is a gateway setting together with the cluster's credentials, which the case gives as static clusters"
        ),
        None => anyhow!("upstream {key}: an identity without a mode"),
    }
}

/// Writes `plan`: issuers and revocations, then the policies of the servers
/// `standalone.servers` maps (created before this).
pub(super) async fn register(sa: &mut Standalone, plan: &IdentityPlan) -> anyhow::Result<()> {
    for (name, issuer) in &plan.issuers {
        let req = sa
            .admin
            .put(format!("{}/issuers/{name}", sa.api))
            .json(issuer);
        sa.call(req, 201, &format!("PUT /issuers/{name}")).await?;
    }
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + REVOKED_FOR_SECONDS;
    for jti in &plan.revoked {
        let req = sa
            .admin
            .put(format!("{}/revocations/{jti}", sa.api))
            .json(&json!({ "exp": exp }));
        sa.call(req, 201, &format!("PUT /revocations/{jti}"))
            .await?;
    }
    for (key, policy) in &plan.policies {
        let id = sa
            .servers
            .get(key)
            .cloned()
            .ok_or_else(|| anyhow!("server {key} was not created"))?;
        let req = sa
            .admin
            .put(format!("{}/policies/{id}", sa.api))
            .json(policy);
        sa.call(req, 201, &format!("PUT /policies/{key}")).await?;
    }
    if let Some(policy) = &plan.passthrough {
        let req = sa
            .admin
            .put(format!("{}/policies/passthrough", sa.api))
            .json(policy);
        sa.call(req, 201, "PUT /policies/passthrough").await?;
    }
    Ok(())
}

/// Checks that the `jwt_authn` `envoy` runs (from the control plane, over ECDS) is the one
/// the case's static configuration has, as [`plan`] assumed: the same providers, keys (as
/// JSON), rules and settings. Envoy's config dump leaves out what is at its default, as the
/// static one may not, so both are compared after dropping `false`, `0`, `""` and empty
/// lists and objects, and with the inline JWKS parsed.
pub(super) async fn check_jwt_authn(
    envoy: &mcpgw_harness::Envoy,
    config: &EnvoyConfig,
) -> anyhow::Result<()> {
    let Some(want) = config.before_filter.first() else {
        return Ok(());
    };
    let dump: Value = serde_json::from_str(
        &envoy
            .admin_get("/config_dump?resource=ecds_filters")
            .await?,
    )?;
    let got = dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["ecds_filter"]["name"] == want["name"])
        .map(|c| c["ecds_filter"]["typed_config"].clone())
        .ok_or_else(|| anyhow!("Envoy runs no {} from ECDS: {dump}", want["name"]))?;
    let (got, want) = (comparable(got), comparable(want["typed_config"].clone()));
    ensure!(
        got == want,
        "the control plane's jwt_authn is not the case's:\n{got:#}\nthe case's:\n{want:#}"
    );
    Ok(())
}

/// `v` without default-valued fields, inline JWKS parsed.
fn comparable(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| match (k.as_str(), v) {
                    ("inline_string", Value::String(s)) => {
                        let parsed = serde_json::from_str(&s).unwrap_or(Value::String(s));
                        (k, parsed)
                    }
                    (_, v) => (k, comparable(v)),
                })
                .filter(|(_, v)| !is_default(v))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(comparable).collect()),
        other => other,
    }
}

fn is_default(v: &Value) -> bool {
    match v {
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(_) | Value::Null => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn jwks() -> Value {
        json!({"keys": [{"kty": "RSA", "kid": "k", "n": "AQAB", "e": "AQAB"}]})
    }

    fn doc(auth: Value) -> Map<String, Value> {
        json!({"auth": auth, "servers": {"s": {"auth": {"resource": "https://x/servers/s/mcp"}}}})
            .as_object()
            .cloned()
            .unwrap()
    }

    fn config(before: Vec<Value>, strip: &[&str]) -> EnvoyConfig {
        let mut c = EnvoyConfig::with_filter("{}", ([127, 0, 0, 1], 7).into());
        c.before_filter = before;
        c.strip_headers = strip.iter().map(|h| (*h).to_owned()).collect();
        c
    }

    #[test]
    fn issuers_revocations_and_policies_are_read_with_the_generated_jwt_authn() {
        let auth = json!({"issuers": {"idp": {"issuer": "https://idp", "algorithms": ["RS256"], "jwks": jwks()}},
                          "revoked": ["r-1"], "passthrough": {"resource": "https://x/mcp"}});
        let jwt = jwt_authn_filter(&[("idp", "https://idp", &jwks())], 30);
        let plan = plan(&doc(auth), &config(vec![jwt], &[PAYLOAD_HEADER])).unwrap();
        assert_eq!(plan.issuers[0].0, "idp");
        assert_eq!(plan.revoked, ["r-1"]);
        assert_eq!(plan.passthrough, Some(json!({"resource": "https://x/mcp"})));
        assert_eq!(
            plan.policies,
            [(
                "s".to_owned(),
                json!({"resource": "https://x/servers/s/mcp"})
            )]
        );
    }

    #[test]
    fn what_the_control_plane_would_not_generate_is_refused_with_the_reason() {
        let issuers = json!({"issuers": {"idp": {"issuer": "https://idp", "algorithms": ["RS256"], "jwks": jwks()}}});
        let jwt = |skew| jwt_authn_filter(&[("idp", "https://idp", &jwks())], skew);
        for (name, auth, before, strip, why) in [
            (
                "no jwt_authn",
                issuers.clone(),
                vec![],
                vec![],
                "only the jwt_authn",
            ),
            (
                "another skew",
                issuers.clone(),
                vec![jwt(5)],
                vec![],
                "only the jwt_authn",
            ),
            (
                "jwt_authn without issuers",
                json!({}),
                vec![jwt(30)],
                vec![],
                "only the jwt_authn",
            ),
            (
                "keys fetched",
                json!({"issuers": {"idp": {"issuer": "https://idp", "algorithms": ["RS256"]}}}),
                vec![],
                vec![],
                "no inline jwks",
            ),
            (
                "skew",
                json!({"clock_skew_seconds": 5}),
                vec![],
                vec![],
                "clock_skew_seconds 5",
            ),
            (
                "a header the listener keeps",
                json!({}),
                vec![],
                vec!["x-other"],
                "header x-other",
            ),
        ] {
            let err = plan(&doc(auth), &config(before, &strip)).unwrap_err();
            assert!(format!("{err}").contains(why), "{name}: {err}");
        }
        let err = upstream_identity("h", &json!({"mode": "identity-header"}));
        assert!(format!("{err}").contains("identity-key"), "{err}");
    }
}
