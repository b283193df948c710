#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use super::*;
use serde_json::json;

fn principal() -> Principal {
    let s = crate::snapshot::Snapshot::from_json(
        crate::auth::tests::snapshot_json().to_string().as_bytes(),
    )
    .unwrap();
    let access = crate::auth::Access::new(&s);
    let c = crate::auth::tests::claims(json!({}));
    let policy = access.server("team").unwrap();
    let payload = crate::auth::tests::payload(&c);
    let bearer = crate::auth::tests::bearer("RS256", &c);
    let p = access
        .authenticate(
            policy,
            Some(bearer.as_bytes()),
            Some(payload.as_bytes()),
            crate::auth::tests::NOW,
        )
        .unwrap()
        .unwrap();
    (*p).clone()
}

fn header_mode() -> IdentityHeader {
    IdentityHeader {
        key: SigningKey([7; 32]),
        kid: "k1".into(),
        audience: "gw-1".into(),
        issuer: "mcpgw".into(),
        ttl_seconds: 60,
    }
}

#[test]
fn identity_header_is_an_hs256_jws_the_upstream_can_verify() {
    let h = header_mode();
    let p = principal();
    let jws = sign_identity(&h, &p, 1000);
    let parts: Vec<&str> = jws.split('.').collect();
    assert_eq!(parts.len(), 3);
    let head: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(head, json!({"alg": "HS256", "typ": "JWT", "kid": "k1"}));
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["teams"], json!(["eng"]));
    assert_eq!(claims["roles"], json!(["developer"]));
    assert_eq!(claims["idp"], crate::auth::tests::ISS);
    assert_eq!(
        (claims["iss"].clone(), claims["aud"].clone()),
        (json!("mcpgw"), json!("gw-1"))
    );
    assert_eq!(
        (claims["iat"].as_u64(), claims["exp"].as_u64()),
        (Some(1000), Some(1060))
    );
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&[7; 32]).unwrap();
    mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
    mac.verify_slice(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap())
        .expect("signature verifies with the upstream's key");
    // Another upstream's key does not verify it.
    let mut other = <Hmac<Sha256> as Mac>::new_from_slice(&[8; 32]).unwrap();
    other.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
    assert!(
        other
            .verify_slice(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap())
            .is_err()
    );
}

#[test]
fn snapshot_form_round_trips_and_is_checked() {
    let doc = json!({"mode": "identity-header", "key": URL_SAFE_NO_PAD.encode([7u8; 32]),
                     "kid": "k1", "audience": "gw-1", "issuer": "mcpgw"});
    let parsed: UpstreamIdentity = serde_json::from_value(doc.clone()).unwrap();
    assert_eq!(parsed, UpstreamIdentity::IdentityHeader(header_mode()));
    assert!(
        format!("{parsed:?}").contains("<redacted>"),
        "the key is never printed"
    );
    let cases = [
        (
            "short key",
            json!({"mode": "identity-header", "key": "AAAA", "kid": "k", "audience": "a", "issuer": "i"}),
        ),
        ("unknown mode", json!({"mode": "passthrough"})),
    ];
    for (name, doc) in cases {
        assert!(
            serde_json::from_value::<UpstreamIdentity>(doc).is_err(),
            "{name}"
        );
    }
    let mut h = header_mode();
    h.ttl_seconds = 3600;
    assert_eq!(
        UpstreamIdentity::IdentityHeader(h).check().unwrap_err().0,
        "ttl_seconds"
    );
    let t = TokenExchange {
        cluster: "tx".into(),
        path: "/token".into(),
        authority: "as".into(),
        audience: None,
        resource: None,
        scope: None,
    };
    assert_eq!(
        UpstreamIdentity::TokenExchange(t).check().unwrap_err().0,
        "audience"
    );
    assert!(UpstreamIdentity::default().is_static());
    assert_eq!(
        serde_json::from_value::<UpstreamIdentity>(json!({"mode": "none"})).unwrap(),
        UpstreamIdentity::None
    );
}

#[test]
fn exchange_request_is_rfc_8693_form() {
    let t = TokenExchange {
        cluster: "tx".into(),
        path: "/token".into(),
        authority: "as.example".into(),
        audience: Some("upstream one".into()),
        resource: Some("https://up.example/mcp".into()),
        scope: None,
    };
    let (headers, body) = exchange_request(&t, "a.b+c/=");
    let body = String::from_utf8(body).unwrap();
    assert_eq!(
        body,
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange\
         &subject_token=a.b%2Bc%2F%3D\
         &subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token\
         &requested_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token\
         &audience=upstream+one&resource=https%3A%2F%2Fup.example%2Fmcp"
    );
    assert!(headers.contains(&(":path", "/token".into())));
    assert!(headers.contains(&("content-type", "application/x-www-form-urlencoded".into())));
    assert!(
        !headers.iter().any(|(n, _)| *n == "authorization"),
        "the cluster authenticates the gateway"
    );
}

#[test]
fn exchange_answers_are_read_or_refused_by_step() {
    let ok = |body: Value| serde_json::to_vec(&body).unwrap();
    let now = 1000;
    let read = |status: Option<u16>, body: Option<Vec<u8>>, exp: Option<u64>| {
        read_exchange_answer(status, body.as_deref(), now, exp)
    };
    let good = read(Some(200), Some(ok(json!({"access_token": "xt", "token_type": "Bearer", "expires_in": 300, "issued_token_type": ACCESS_TOKEN_TYPE}))), None).unwrap();
    assert_eq!(
        good,
        CachedToken {
            use_until: now + 300 - EXPIRY_SKEW_S,
            token: "xt".into()
        }
    );
    // Never past the client's own token.
    let capped = read(
        Some(200),
        Some(ok(
            json!({"access_token": "xt", "token_type": "bearer", "expires_in": 300}),
        )),
        Some(now + 100),
    )
    .unwrap();
    assert_eq!(capped.use_until, now + 100);
    let default = read(
        Some(200),
        Some(ok(json!({"access_token": "xt", "token_type": "Bearer"}))),
        None,
    )
    .unwrap();
    assert_eq!(
        default.use_until,
        now + DEFAULT_EXPIRES_IN_S - EXPIRY_SKEW_S
    );
    type Case = (&'static str, Option<u16>, Option<Vec<u8>>, ExchangeFailure);
    let cases: [Case; 7] = [
        ("down", None, None, ExchangeFailure::Unreachable),
        (
            "invalid_grant",
            Some(400),
            Some(ok(json!({"error": "invalid_grant"}))),
            ExchangeFailure::Refused {
                status: 400,
                error: Some("invalid_grant".into()),
            },
        ),
        (
            "invalid_client",
            Some(401),
            Some(ok(json!({"error": "invalid_client"}))),
            ExchangeFailure::Failed {
                status: 401,
                error: Some("invalid_client".into()),
            },
        ),
        (
            "5xx html",
            Some(503),
            Some(b"<html>".to_vec()),
            ExchangeFailure::Failed {
                status: 503,
                error: None,
            },
        ),
        (
            "not json",
            Some(200),
            Some(b"nope".to_vec()),
            ExchangeFailure::BadAnswer("not JSON"),
        ),
        (
            "no token",
            Some(200),
            Some(ok(json!({"token_type": "Bearer"}))),
            ExchangeFailure::BadAnswer("no access_token"),
        ),
        (
            "not bearer",
            Some(200),
            Some(ok(json!({"access_token": "x", "token_type": "N_A"}))),
            ExchangeFailure::BadAnswer("token_type is not Bearer"),
        ),
    ];
    for (name, status, body, want) in cases {
        assert_eq!(read(status, body, None).unwrap_err(), want, "{name}");
    }
    let header_breaking = read(
        Some(200),
        Some(ok(
            json!({"access_token": "a\r\nb", "token_type": "Bearer"}),
        )),
        None,
    );
    assert!(header_breaking.is_err());
    // Messages name the step and never a token.
    let m = ExchangeFailure::Refused {
        status: 400,
        error: Some("invalid_grant".into()),
    }
    .message("gw");
    assert_eq!(
        m,
        "token exchange for upstream \"gw\": the authorization server refused the client's token (HTTP 400, error \"invalid_grant\")"
    );
}

#[test]
fn cached_tokens_expire() {
    let c = CachedToken {
        use_until: 50,
        token: "t".into(),
    };
    assert_eq!(CachedToken::decode(&c.encode(), 49), Some(c.clone()));
    assert_eq!(CachedToken::decode(&c.encode(), 50), None);
    assert_eq!(CachedToken::decode(b"garbage", 1), None);
    assert_eq!(cache_key("u", "d"), "mcpgw.tx.u.d");
    assert_eq!(bearer_token(b"Bearer abc"), Some("abc"));
    assert_eq!(bearer_token(b"bearer  abc "), Some("abc"));
    assert_eq!(bearer_token(b"Basic abc"), None);
}
