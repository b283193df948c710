//! The `edge-call-auth` variant's identity: a token issuer's key and one token (made once per
//! run by `tests/py/jwt_issuer.py`, real RS256), Envoy's `jwt_authn` as the control plane
//! generates it, and the catalog's virtual server protected with ten rules.
//!
//! The client sends the same token on every request: `jwt_authn` verifies it once and then
//! finds it in its verified-token cache, as it does for a client that keeps its token. The
//! `edge-call-auth-fresh` variant sends [`FRESH_TOKENS`] distinct tokens in turn instead:
//! more than `jwt_authn`'s cache holds, so every request is a cache miss and its RS256
//! signature is verified.

use crate::catalog;
use anyhow::{Context, ensure};
use serde_json::{Value, json};
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The issuer of the benchmark's token.
pub const ISSUER: &str = "https://idp.mcpgw-bench.test";
/// The protected virtual server's resource (the token's audience).
pub const RESOURCE: &str = "https://mcpgw-bench.test/servers/bench/mcp";
/// The header `jwt_authn` forwards the verified payload in.
pub const PAYLOAD_HEADER: &str = "x-mcpgw-jwt-payload";
/// Distinct tokens `edge-call-auth-fresh` sends in turn: more than the 4096 verified tokens
/// `jwt_authn` caches per worker, so a token is evicted before it comes round again.
pub const FRESH_TOKENS: usize = 5000;

/// The issuer's JWKS and the client's `Authorization` value.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// JWKS text, inlined into `jwt_authn`.
    pub jwks: String,
    /// `Bearer <token>`.
    pub authorization: String,
    /// [`FRESH_TOKENS`] more `Bearer <token>` values (same claims, each its own `jti`), or
    /// none when not asked for.
    pub fresh: Vec<String>,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

/// Makes the key and the token (valid for a day) with the Python issuer, and the
/// [`FRESH_TOKENS`] more if `fresh`; once per run.
pub fn prepare(
    artifacts: &mcpgw_harness::Artifacts,
    fresh: bool,
) -> anyhow::Result<&'static Fixture> {
    if let Some(f) = FIXTURE.get() {
        return Ok(f);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("clock before 1970")?
        .as_secs();
    let claims = |jti: String| {
        json!({"claims": {
            "iss": ISSUER, "sub": "bench-user", "aud": RESOURCE, "exp": now + 86_400,
            "iat": now, "jti": jti, "email": "bench@mcpgw-bench.test",
            "groups": ["g-eng", "g-dev"], "scope": "openid tools.execute"
        }})
    };
    let extra = if fresh { FRESH_TOKENS } else { 0 };
    let tokens: Vec<Value> = std::iter::once(claims(format!("bench-{now}")))
        .chain((0..extra).map(|i| claims(format!("bench-{now}-{i}"))))
        .collect();
    let spec = json!({ "tokens": tokens });
    let mut child = Command::new(artifacts.python()?)
        .arg(artifacts.repo_file("tests/py/jwt_issuer.py")?)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running tests/py/jwt_issuer.py")?;
    child
        .stdin
        .take()
        .context("jwt_issuer.py stdin")?
        .write_all(spec.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "jwt_issuer.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).context("jwt_issuer.py output")?;
    let all: Vec<&str> = doc["tokens"]
        .as_array()
        .context("no tokens")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    ensure!(
        all.len() == 1 + extra,
        "jwt_issuer.py made {} tokens",
        all.len()
    );
    let fixture = Fixture {
        jwks: doc["jwks"].to_string(),
        authorization: format!("Bearer {}", all[0]),
        fresh: all[1..].iter().map(|t| format!("Bearer {t}")).collect(),
    };
    Ok(FIXTURE.get_or_init(|| fixture))
}

/// The fixture, once [`prepare`]d.
pub fn fixture() -> Option<&'static Fixture> {
    FIXTURE.get()
}

/// Ten rules a real server might have: the one that allows the call is the last allow
/// rule, and every deny rule is evaluated (reading the call's arguments).
pub fn rules() -> Value {
    json!([
        {"name": "admins", "when": "'platform_admin' in principal.roles"},
        {"name": "ops-team", "when": "'ops' in principal.teams && request.name.startsWith('bench__tool_')"},
        {"name": "finance", "when": "'finance' in principal.teams && request.name.endsWith('_report')"},
        {"name": "readers", "when": "request.method == 'resources/read' && 'eng' in principal.teams"},
        {"name": "prompts", "when": "request.method == 'prompts/get'"},
        {"name": "by-email", "when": "has(principal.email) && principal.email.endsWith('@partner.example')"},
        {"name": "eng", "when": "'eng' in principal.teams && request.server == 'bench' && !request.name.contains('admin')"},
        {"name": "no-etc", "effect": "deny",
         "when": "has(args.path) && args.path.startsWith('/etc')"},
        {"name": "no-huge", "effect": "deny",
         "when": "has(args.count) && args.count > 1000"},
        {"name": "no-suspended", "effect": "deny",
         "when": "has(claims.suspended) && claims.suspended == true"}
    ])
}

/// One allow rule that reads only the principal (`edge-call-auth-1`).
pub fn one_rule() -> Value {
    json!([{"name": "eng", "when": "'eng' in principal.teams"}])
}

/// The catalog snapshot with the issuer and the server protected by [`rules`].
pub fn snapshot(cluster: &str, jwks: &str) -> anyhow::Result<String> {
    snapshot_with(cluster, jwks, rules())
}

/// The catalog snapshot with the issuer and the server protected by `rules`.
pub fn snapshot_with(cluster: &str, jwks: &str, rules: Value) -> anyhow::Result<String> {
    let mut doc: Value = serde_json::from_str(&catalog::snapshot(cluster))?;
    let jwks: Value = serde_json::from_str(jwks)?;
    doc["auth"] = json!({"issuers": {"idp": {
        "issuer": ISSUER, "algorithms": ["RS256"], "jwks": jwks,
        "claims": {"group_teams": {"g-eng": ["eng"]}, "group_roles": {"g-dev": ["developer"]}}
    }}});
    doc["servers"][catalog::SERVER_ID]["auth"] = json!({
        "resource": RESOURCE,
        "scopes": ["tools.read", "tools.execute"],
        "rules": rules
    });
    Ok(doc.to_string())
}

/// Envoy's `jwt_authn` for the issuer, as the control plane generates it
/// (`control-plane/src/edge_config/jwt.rs`).
pub fn jwt_authn(jwks: &str) -> Value {
    json!({
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"idp": {
                "issuer": ISSUER,
                "require_expiration": true,
                "forward": true,
                "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
                "forward_payload_header": PAYLOAD_HEADER,
                "clock_skew_seconds": 30,
                "jwt_cache_config": {"jwt_cache_size": 4096, "jwt_max_token_size": 8192},
                "local_jwks": {"inline_string": jwks}
            }},
            "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [
                {"provider_name": "idp"}, {"allow_missing_or_failed": {}}
            ]}}}],
            "stat_prefix": "mcpgw"
        }
    })
}

/// `jwt_authn` as the generated listener has it when no issuer has keys: no provider, no
/// rule.
pub fn empty_jwt_authn() -> Value {
    json!({
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "stat_prefix": "mcpgw"
        }
    })
}

/// Adds the generated listener's early header mutation (the payload header removed from
/// client requests) to a static bootstrap's connection manager.
pub fn strip_payload_header(bootstrap: &mut Value) {
    if let Some(manager) = bootstrap
        .pointer_mut("/static_resources/listeners/0/filter_chains/0/filters/0/typed_config")
    {
        manager["early_header_mutation_extensions"] = json!([{
            "name": "envoy.http.early_header_mutation.header_mutation",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation",
                "mutations": [{"remove": PAYLOAD_HEADER}]
            }
        }]);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_protected_snapshot_keeps_the_catalog_and_adds_ten_rules() {
        let jwks = r#"{"keys":[{"kty":"RSA","kid":"k1","n":"bg","e":"AQAB"}]}"#;
        let doc: Value = serde_json::from_str(&snapshot("c", jwks).unwrap()).unwrap();
        let server = &doc["servers"][catalog::SERVER_ID];
        assert_eq!(server["tools"].as_array().unwrap().len(), catalog::TOOLS);
        assert_eq!(server["auth"]["rules"].as_array().unwrap().len(), 10);
        assert_eq!(
            doc["auth"]["issuers"]["idp"]["jwks"]["keys"][0]["kid"],
            "k1"
        );
        let mut b = json!({"static_resources": {"listeners": [{"filter_chains": [{"filters": [{"typed_config": {}}]}]}]}});
        strip_payload_header(&mut b);
        assert!(b.to_string().contains(PAYLOAD_HEADER));
    }
}
