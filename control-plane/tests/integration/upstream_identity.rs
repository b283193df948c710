//! A gateway's upstream identity through the admin API: each mode stored, shown and
//! delivered in the snapshot; bad values refused with the field named and nothing changed;
//! the client secret sealed and never returned; the identity-header key readable by
//! whoever may change the gateway.

use serde_json::{Value, json};
use sqlx::Row as _;

use super::harness::{TestCp, TestDb, settings};

fn exchange(secret: Option<&str>) -> Value {
    let mut identity = json!({
        "mode": "token-exchange",
        "token_exchange": {"token_endpoint": "http://127.0.0.1:9/oauth/token",
                           "client_id": "mcpgw-gw", "audience": "upstream-a"},
    });
    if let Some(s) = secret {
        identity["client_secret"] = json!(s);
    }
    identity
}

#[tokio::test]
async fn identity_modes_are_stored_checked_and_delivered() {
    let db = TestDb::sqlite();
    let cp = TestCp::start(settings(&db)).await;
    let (s, g) = cp
        .post(
            "/gateways",
            json!({"name": "plain", "url": "http://127.0.0.1:9/mcp", "discover": false}),
        )
        .await;
    assert_eq!(s, 201, "{g}");
    assert_eq!(
        g["gateway"]["identity"],
        json!({"mode": "static"}),
        "the default"
    );
    let id = g["gateway"]["id"].as_str().unwrap().to_owned();

    // Refused, naming the field; the gateway is unchanged.
    let bad = [
        (json!({"mode": "passthrough"}), "identity"),
        (json!({"mode": "token-exchange"}), "identity.token_exchange"),
        (exchange(None), "identity.client_secret"),
        (
            json!({"mode": "identity-header", "client_secret": "s"}),
            "identity.client_secret",
        ),
        (
            json!({"mode": "token-exchange", "client_secret": "s",
                   "token_exchange": {"token_endpoint": "file:///etc/passwd", "client_id": "c", "audience": "a"}}),
            "identity.token_exchange.token_endpoint",
        ),
        (
            json!({"mode": "token-exchange", "client_secret": "s",
                   "token_exchange": {"token_endpoint": "http://127.0.0.1:9/t", "client_id": "c"}}),
            "identity.token_exchange.audience",
        ),
    ];
    for (identity, field) in bad {
        let (s, p) = cp
            .put(&format!("/gateways/{id}"), json!({"identity": identity}))
            .await;
        assert_eq!(s, 422, "{identity}: {p}");
        assert!(p.to_string().contains(field), "{identity}: {p}");
    }
    let (_, now) = cp.get(&format!("/gateways/{id}")).await;
    assert_eq!(now["identity"], json!({"mode": "static"}));
    assert_eq!(now["version"], g["gateway"]["version"], "nothing changed");

    // identity-header: stored, its key readable, the snapshot carries it (redacted at
    // /snapshot: it is for Envoys only).
    let (s, v) = cp
        .put(
            &format!("/gateways/{id}"),
            json!({"identity": {"mode": "identity-header"}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["identity"], json!({"mode": "identity-header"}));
    let (s, key) = cp.get(&format!("/gateways/{id}/identity-key")).await;
    assert_eq!(s, 200, "{key}");
    assert_eq!(key["alg"], "HS256");
    assert_eq!(key["header"], "x-mcpgw-identity");
    assert_eq!(key["audience"], id.as_str());
    assert_eq!(
        key["key"].as_str().unwrap().len(),
        43,
        "32 bytes, base64url"
    );
    let (_, again) = cp.get(&format!("/gateways/{id}/identity-key")).await;
    assert_eq!(again, key, "derived: the same key every time");

    // token-exchange: the secret is sealed, never returned, kept when not given again.
    let secret = "very-secret-client-secret";
    let (s, v) = cp
        .put(
            &format!("/gateways/{id}"),
            json!({"identity": exchange(Some(secret))}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["identity"]["mode"], "token-exchange");
    assert_eq!(v["identity"]["token_exchange"]["client_id"], "mcpgw-gw");
    let (s, _) = cp.get(&format!("/gateways/{id}/identity-key")).await;
    assert_eq!(s, 409, "no identity key outside identity-header");
    for path in [
        format!("/gateways/{id}"),
        "/gateways".into(),
        "/export".into(),
    ] {
        let (_, v) = cp.get(&path).await;
        assert!(
            !v.to_string().contains(secret),
            "{path} leaks the client secret"
        );
    }
    let (_, doc) = cp.get("/export").await;
    assert_eq!(doc["gateways"][0]["identity"]["mode"], "token-exchange");
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(db.url())
        .await
        .unwrap();
    let row = sqlx::query("SELECT identity_sealed FROM gateways WHERE id = $1")
        .bind(&id)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let sealed: String = row.try_get("identity_sealed").unwrap();
    assert!(!sealed.contains(secret));
    let (open, _) = mcpgw::crypto::SecretBox::dev()
        .open_for(mcpgw::model::CLIENT_SECRET_LABEL, id.as_bytes(), &sealed)
        .unwrap();
    assert_eq!(open, secret.as_bytes());
    let (s, v) = cp
        .put(
            &format!("/gateways/{id}"),
            json!({"identity": exchange(None)}),
        )
        .await;
    assert_eq!(s, 200, "the stored secret is kept: {v}");
    let row = sqlx::query("SELECT identity_sealed FROM gateways WHERE id = $1")
        .bind(&id)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(row.try_get::<String, _>("identity_sealed").unwrap(), sealed);
    // Another mode drops it.
    let (s, _) = cp
        .put(
            &format!("/gateways/{id}"),
            json!({"identity": {"mode": "none"}}),
        )
        .await;
    assert_eq!(s, 200);
    let row = sqlx::query("SELECT identity_sealed FROM gateways WHERE id = $1")
        .bind(&id)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        row.try_get::<Option<String>, _>("identity_sealed").unwrap(),
        None
    );
    cp.stop().await;
}
