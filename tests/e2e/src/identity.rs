//! Identity for the gateway under test: a token issuer with fresh keys (`tests/py/jwt_issuer.py`,
//! real RSA signatures) and Envoy's `jwt_authn` filter configured as the control plane
//! generates it (`control-plane/src/edge_config/jwt.rs`): one provider per issuer, the JWKS
//! inline, the payload forwarded in `x-mcpgw-jwt-payload`, `allow_missing_or_failed`.

use anyhow::Context as _;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;

use crate::Artifacts;

/// The header `jwt_authn` forwards the verified payload in (what the filter reads).
pub const PAYLOAD_HEADER: &str = mcpgw_core::auth::PAYLOAD_HEADER;

/// How a token is made.
#[derive(Debug, Clone)]
pub enum Forge {
    /// Signed with the issuer's key, as issued.
    Signed,
    /// `alg: none`, no signature.
    AlgNone,
    /// HS256 keyed with the issuer's RSA public key (the key-confusion attack).
    Hs256WithPublicKey,
    /// Signed by another key under a `kid` the JWKS does not have.
    UnknownKid,
    /// Signed, then the payload replaced by these claims.
    Tampered(Value),
}

/// Keys and tokens from one run of the issuer script.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The JWKS of the issuer's public key.
    pub jwks: Value,
    /// The tokens, in the order asked for.
    pub tokens: Vec<String>,
}

/// Generates a key pair and `tokens` (claims and how each is made) with the Python issuer.
pub async fn issue(artifacts: &Artifacts, tokens: &[(Value, Forge)]) -> anyhow::Result<Issued> {
    let spec: Vec<Value> = tokens
        .iter()
        .map(|(claims, forge)| match forge {
            Forge::Signed => json!({"claims": claims}),
            Forge::AlgNone => json!({"claims": claims, "forge": "none"}),
            Forge::Hs256WithPublicKey => {
                json!({"claims": claims, "forge": "hs256-with-public-key"})
            }
            Forge::UnknownKid => json!({"claims": claims, "forge": "unknown-kid"}),
            Forge::Tampered(t) => json!({"claims": claims, "forge": "tampered", "tamper": t}),
        })
        .collect();
    let script = artifacts.repo_file("tests/py/jwt_issuer.py")?;
    let mut child = tokio::process::Command::new(artifacts.python()?)
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("run jwt_issuer.py")?;
    let mut stdin = child.stdin.take().context("jwt_issuer.py stdin")?;
    stdin
        .write_all(json!({"tokens": spec}).to_string().as_bytes())
        .await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    anyhow::ensure!(
        out.status.success(),
        "jwt_issuer.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).context("jwt_issuer.py output")?;
    let tokens = doc["tokens"]
        .as_array()
        .context("no tokens")?
        .iter()
        .map(|t| t.as_str().map(str::to_owned).context("token not a string"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Issued {
        jwks: doc["jwks"].clone(),
        tokens,
    })
}

/// The `jwt_authn` HTTP filter for `providers` (name, issuer, JWKS), as the control plane
/// generates it.
pub fn jwt_authn_filter(providers: &[(&str, &str, &Value)], clock_skew_seconds: u64) -> Value {
    let providers: serde_json::Map<String, Value> = providers
        .iter()
        .map(|(name, issuer, jwks)| {
            (
                (*name).to_owned(),
                json!({
                    "issuer": issuer,
                    "require_expiration": true,
                    "forward": true,
                    "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
                    "forward_payload_header": PAYLOAD_HEADER,
                    "clock_skew_seconds": clock_skew_seconds,
                    "jwt_cache_config": {"jwt_cache_size": 4096, "jwt_max_token_size": 8192},
                    "local_jwks": {"inline_string": jwks.to_string()}
                }),
            )
        })
        .collect();
    // Each provider by name (their verified-token caches work only so), then
    // `allow_missing_or_failed`.
    let any: Vec<Value> = providers
        .keys()
        .map(|n| json!({"provider_name": n}))
        .chain([json!({"allow_missing_or_failed": {}})])
        .collect();
    json!({
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": providers,
            "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": any}}}],
            "stat_prefix": "mcpgw"
        }
    })
}
