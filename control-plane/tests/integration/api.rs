//! Admin API over real HTTP.

use serde_json::{Value, json};
use sqlx::Row;

use super::harness::{TestCp, TestDb, settings};

#[tokio::test]
async fn system_endpoints_and_errors_are_problem_json() {
    let db = TestDb::sqlite();
    let cp = TestCp::start(settings(&db)).await;
    assert_eq!(cp.get("/health").await, (200, json!({"status": "healthy"})));
    assert_eq!(cp.get("/ready").await, (200, json!({"status": "ready"})));
    let (s, v) = cp.get("/version").await;
    assert_eq!(s, 200);
    assert_eq!(v["name"], "mcpgw");
    assert_eq!(v["database"], "sqlite");
    assert_eq!(v["name_separator"], "__");

    // Errors, each a problem document with a precise type.
    let cases: Vec<(&str, (u16, serde_json::Value), u16, &str)> = vec![
        ("unknown route", cp.get("/nope").await, 404, "not-found"),
        (
            "unknown id",
            cp.get("/tools/does-not-exist").await,
            404,
            "not-found",
        ),
        (
            "unknown field",
            cp.post("/prompts", json!({"name": "p", "bogus": 1})).await,
            422,
            "validation",
        ),
        (
            "wrong type",
            cp.post("/prompts", json!({"name": 5})).await,
            422,
            "validation",
        ),
        (
            "empty name",
            cp.post("/prompts", json!({"name": " "})).await,
            422,
            "validation",
        ),
        (
            "bad limit",
            cp.get("/tools?limit=0").await,
            422,
            "validation",
        ),
        (
            "bad enabled",
            cp.get("/tools?enabled=maybe").await,
            400,
            "invalid-query",
        ),
        (
            "bad cursor",
            cp.get("/tools?cursor=%25%25").await,
            422,
            "validation",
        ),
        (
            "tool without url",
            cp.post("/tools", json!({"name": "t"})).await,
            422,
            "validation",
        ),
        (
            "bad schema",
            cp.post(
                "/tools",
                json!({"name": "t", "url": "http://x.test/", "input_schema": 3}),
            )
            .await,
            422,
            "validation",
        ),
        (
            "bearer without token",
            cp.post(
                "/gateways",
                json!({"name": "g", "url": "http://x.test/mcp", "auth_type": "bearer"}),
            )
            .await,
            422,
            "validation",
        ),
        (
            "bad gateway name",
            cp.post(
                "/gateways",
                json!({"name": "a b", "url": "http://x.test/mcp", "discover": false}),
            )
            .await,
            422,
            "validation",
        ),
        (
            "ssrf metadata",
            cp.post(
                "/gateways",
                json!({"name": "meta", "url": "http://169.254.169.254/latest", "discover": false}),
            )
            .await,
            422,
            "validation",
        ),
        (
            "sse upstream down",
            cp.post(
                "/gateways",
                json!({"name": "old", "url": "http://127.0.0.1:9/sse", "transport": "sse"}),
            )
            .await,
            502,
            "upstream-failed",
        ),
        (
            "bad types",
            cp.get("/export?types=widgets").await,
            422,
            "validation",
        ),
    ];
    for (name, (status, body), want_status, want_type) in cases {
        assert_eq!(status, want_status, "{name}: {body}");
        assert_eq!(
            body["type"],
            format!("urn:mcpgw:problem:{want_type}"),
            "{name}: {body}"
        );
        assert_eq!(body["status"], want_status, "{name}");
        assert!(
            body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{name}"
        );
    }
    let (_, body) = cp.post("/prompts", json!({"name": "p", "bogus": 1})).await;
    assert!(body["detail"].as_str().unwrap().contains("bogus"), "{body}");
    let resp = cp
        .http
        .post(cp.url("/prompts"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");

    let (s, metrics) = cp.get("/metrics").await;
    assert_eq!(s, 200);
    let text = metrics.as_str().unwrap();
    assert!(text.contains("mcpgw_http_requests_total{"), "{text}");
    assert!(text.contains("route=\"/tools/{id}\""), "{text}");
    assert!(text.contains("mcpgw_registry_version"), "{text}");
    cp.stop().await;
}

#[tokio::test]
async fn crud_state_pagination_and_filters_over_http() {
    let db = TestDb::postgres().await;
    let cp = TestCp::start(settings(&db)).await;
    let (s, v) = cp.get("/version").await;
    assert_eq!((s, v["database"].as_str()), (200, Some("postgres")));

    let mut ids = Vec::new();
    for i in 0..7 {
        let (s, t) = cp
            .post(
                "/tools",
                json!({"name": format!("rest-{i}"), "url": "https://api.example/x", "request_type": "get",
                       "tags": if i % 2 == 0 { vec!["Even"] } else { vec!["odd"] }}),
            )
            .await;
        assert_eq!(s, 201, "{t}");
        assert_eq!(t["integration_type"], "REST");
        assert_eq!(t["request_type"], "GET");
        assert_eq!(t["tags"], json!([if i % 2 == 0 { "even" } else { "odd" }]));
        ids.push(t["id"].as_str().unwrap().to_owned());
    }
    let (s, dup) = cp
        .post(
            "/tools",
            json!({"name": "rest-0", "url": "https://api.example/x"}),
        )
        .await;
    assert_eq!(
        (s, dup["type"].as_str()),
        (409, Some("urn:mcpgw:problem:duplicate-name"))
    );

    // Walk pages of 3.
    let mut names = Vec::new();
    let mut path = "/tools?limit=3".to_owned();
    loop {
        let (s, page) = cp.get(&path).await;
        assert_eq!(s, 200);
        for t in page["items"].as_array().unwrap() {
            names.push(t["name"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/tools?limit=3&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(
        names,
        (0..7).map(|i| format!("rest-{i}")).collect::<Vec<_>>()
    );
    let (_, even) = cp.get("/tools?tags=even").await;
    assert_eq!(even["items"].as_array().unwrap().len(), 4);

    // Disable / enable (ContextForge's toggle alias too), filter on enabled.
    let (s, t) = cp
        .post(
            &format!("/tools/{}/state?activate=false", ids[0]),
            json!({}),
        )
        .await;
    assert_eq!((s, &t["enabled"]), (200, &json!(false)));
    let (_, active) = cp.get("/tools?enabled=true").await;
    assert_eq!(active["items"].as_array().unwrap().len(), 6);
    let (_, cf) = cp.get("/tools?include_inactive=false").await;
    assert_eq!(cf["items"].as_array().unwrap().len(), 6);
    let (s, t) = cp
        .post(
            &format!("/tools/{}/toggle?activate=true", ids[0]),
            json!({}),
        )
        .await;
    assert_eq!((s, &t["enabled"]), (200, &json!(true)));
    let (s, _) = cp
        .post(&format!("/tools/{}/state", ids[0]), json!({}))
        .await;
    assert_eq!(s, 400, "activate is required");

    // Update with a stale version is a conflict.
    let (_, t) = cp.get(&format!("/tools/{}", ids[1])).await;
    let (s, t2) = cp
        .put(
            &format!("/tools/{}", ids[1]),
            json!({"description": "v2", "version": t["version"]}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(t2["version"], t["version"].as_i64().unwrap() + 1);
    let (s, c) = cp
        .put(
            &format!("/tools/{}", ids[1]),
            json!({"description": "v3", "version": t["version"]}),
        )
        .await;
    assert_eq!(
        (s, c["type"].as_str()),
        (409, Some("urn:mcpgw:problem:version-conflict"))
    );

    // Resources and prompts.
    let (s, r) = cp.post("/resources", json!({"name": "readme", "uri": "file:///readme.md", "mime_type": "text/markdown", "content": "# hi"})).await;
    assert_eq!(s, 201, "{r}");
    assert_eq!(r["is_template"], false);
    let (s, _) = cp
        .post("/resources", json!({"name": "bad", "uri": "no-scheme"}))
        .await;
    assert_eq!(s, 422);
    let (s, p) = cp.post("/prompts", json!({"name": "greet", "template": "Hi {{who}}", "arguments": [{"name": "who", "required": true}]})).await;
    assert_eq!(s, 201, "{p}");
    let (s, _) = cp
        .post(
            "/prompts",
            json!({"name": "bad", "arguments": [{"description": "no name"}]}),
        )
        .await;
    assert_eq!(s, 422);

    // Virtual servers.
    let (s, srv) = cp
        .post("/servers", json!({"name": "dev", "associated_tools": [ids[0], ids[1]],
                                  "associated_resources": [r["id"]], "associated_prompts": [p["id"]]}))
        .await;
    assert_eq!(s, 201, "{srv}");
    let sid = srv["id"].as_str().unwrap();
    let (s, bad) = cp
        .put(
            &format!("/servers/{sid}"),
            json!({"associated_tools": ["nope"]}),
        )
        .await;
    assert_eq!(s, 422);
    assert_eq!(bad["errors"][0]["field"], "associated_tools[0]");
    let (_, same) = cp.get(&format!("/servers/{sid}")).await;
    assert_eq!(
        same["associated_tools"].as_array().unwrap().len(),
        2,
        "failed update changed nothing"
    );
    let (s, _) = cp.delete(&format!("/tools/{}", ids[0])).await;
    assert_eq!(s, 204);
    let (_, srv) = cp.get(&format!("/servers/{sid}")).await;
    assert_eq!(srv["associated_tools"], json!([ids[1]]));
    let (s, _) = cp.delete(&format!("/servers/{sid}")).await;
    assert_eq!(s, 204);
    let (s, _) = cp.delete(&format!("/servers/{sid}")).await;
    assert_eq!(s, 404);
    cp.stop().await;
}

/// Keys anywhere in `v` that name a credential (sealed or clear): everything `auth_*`
/// except the kind, and any key mentioning a secret.
fn credential_keys(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let lower = k.to_lowercase();
                let credential = (lower.starts_with("auth") && lower != "auth_type")
                    || ["sealed", "secret", "token", "password", "credential"]
                        .iter()
                        .any(|w| lower.contains(w));
                if credential {
                    out.push(k.clone());
                }
                out.extend(credential_keys(child));
            }
        }
        Value::Array(a) => a.iter().for_each(|c| out.extend(credential_keys(c))),
        _ => {}
    }
    out
}

#[tokio::test]
async fn credentials_are_sealed_at_rest_and_never_returned() {
    let db = TestDb::sqlite();
    let cp = TestCp::start(settings(&db)).await;
    let token = "super-secret-token-value";
    let (s, g) = cp
        .post(
            "/gateways",
            json!({"name": "sealed", "url": "http://127.0.0.1:9/mcp", "auth_type": "bearer",
                   "auth_token": token, "discover": false}),
        )
        .await;
    assert_eq!(s, 201, "{g}");
    assert_eq!(g["gateway"]["auth_type"], "bearer");
    let id = g["gateway"]["id"].as_str().unwrap().to_owned();
    for path in [
        format!("/gateways/{id}"),
        "/gateways".into(),
        "/export".into(),
    ] {
        let (_, v) = cp.get(&path).await;
        assert!(!v.to_string().contains(token), "{path} leaks the token");
        assert!(
            !v.to_string().contains("\"v1:"),
            "{path} returns ciphertext: {v}"
        );
        let leaked = credential_keys(&v);
        assert!(leaked.is_empty(), "{path} has credential fields {leaked:?}");
    }
    // The export says why credentials are missing.
    let (_, doc) = cp.get("/export").await;
    assert_eq!(doc["gateways"][0]["auth_type"], "bearer");
    assert!(
        doc["notes"].to_string().contains("re-enter"),
        "{}",
        doc["notes"]
    );
    let (s, _) = cp
        .put(
            &format!("/gateways/{id}"),
            json!({"auth_type": "headers", "auth_headers": [{"key": "X-Api-Key", "value": "k2-key!"}]}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = cp
        .put(&format!("/gateways/{id}"), json!({"auth_token": "x"}))
        .await;
    assert_eq!(s, 422, "credentials without auth_type are refused");

    // The stored value is ciphertext that opens only with the key, for this gateway and
    // its URL's origin. (The secret holds `-` and `!`, outside base64's alphabet: the
    // ciphertext cannot contain it by chance, as it could a two-letter one.)
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(db.url())
        .await
        .unwrap();
    let row = sqlx::query("SELECT auth_sealed FROM gateways WHERE id = $1")
        .bind(&id)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let sealed: String = row.try_get("auth_sealed").unwrap();
    assert!(
        !sealed.contains("k2-key!") && sealed.starts_with("v2:"),
        "{sealed}"
    );
    let binding = mcpgw::crypto::CredentialBinding {
        gateway_id: &id,
        origin: "http://127.0.0.1:9",
    };
    let creds = mcpgw::crypto::SecretBox::dev()
        .open_credentials(&sealed, binding)
        .unwrap();
    assert_eq!(creds.auth_type(), mcpgw::model::AuthType::Headers);
    assert!(
        mcpgw::crypto::SecretBox::from_key([1; 32])
            .open_credentials(&sealed, binding)
            .is_err()
    );
    cp.stop().await;
}

#[tokio::test]
async fn serve_refuses_to_start_without_a_key_and_creates_its_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("nested/data");
    let args = mcpgw::config::ServeArgs {
        data_dir: Some(data.clone()),
        listen: Some("127.0.0.1:0".into()),
        ..Default::default()
    };
    let err = args.resolve(None).unwrap_err();
    assert!(err.to_string().contains("MCPGW_ENCRYPTION_KEY"), "{err}");
    let settings = args
        .resolve(Some("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="))
        .unwrap();
    let store = mcpgw::open_store(&settings).await.unwrap();
    assert!(data.join("mcpgw.db").exists());
    store.close().await;
}

/// Every state-changing endpoint (from the OpenAPI document, plus the `/toggle` aliases):
/// a form-like request, a request the browser marks cross-site and one from a foreign
/// origin are refused; a program's body-less request passes.
#[tokio::test]
async fn state_changes_cannot_be_forged_cross_site() {
    let db = TestDb::sqlite();
    let cp = TestCp::start(settings(&db)).await;
    let doc: Value = serde_json::from_str(&mcpgw::api::openapi_json()).unwrap();
    let mut endpoints: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["post", "put", "patch", "delete"] {
            if item.get(method).is_some() {
                let concrete = path
                    .replace("{id}", "no-such-id")
                    .replace("{user_id}", "no-such-user")
                    .replace("{invitation_id}", "no-such-invitation")
                    .replace("{change_id}", "no-such-change")
                    .replace("{name}", "no-such-name")
                    .replace("{jti}", "no-such-jti");
                endpoints.push((method.to_uppercase(), concrete.clone()));
                if concrete.ends_with("/state") {
                    endpoints.push((method.to_uppercase(), concrete.replace("/state", "/toggle")));
                }
            }
        }
    }
    assert_eq!(endpoints.len(), 66, "{endpoints:?}");
    for p in [
        "/gateways/no-such-id/refresh",
        "/issuers/no-such-name/refresh",
        "/tools/no-such-id/state",
        "/import",
    ] {
        assert!(endpoints.iter().any(|(_, e)| e == p), "{p} covered");
    }
    let v0 = cp.get("/registry").await.1;
    let send = |method: &str, path: &str| {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let q = if path.ends_with("/state") || path.ends_with("/toggle") {
            "?activate=false"
        } else {
            ""
        };
        cp.http.request(m, cp.url(&format!("{path}{q}")))
    };
    for (method, path) in &endpoints {
        let forged: Vec<(&str, reqwest::RequestBuilder)> = vec![
            (
                "form-like body",
                send(method, path)
                    .header("content-type", "text/plain")
                    .body("{}"),
            ),
            ("no body, no header", send(method, path)),
            (
                "cross-site fetch",
                send(method, path)
                    .header("sec-fetch-site", "cross-site")
                    .json(&json!({})),
            ),
            (
                "same-site fetch",
                send(method, path)
                    .header("sec-fetch-site", "same-site")
                    .header("x-mcpgw-request", "1"),
            ),
            (
                "foreign origin",
                send(method, path)
                    .header("origin", "http://evil.example")
                    .json(&json!({})),
            ),
            (
                "empty JSON",
                send(method, path).header("content-type", "application/json"),
            ),
        ];
        for (what, req) in forged {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            assert_eq!(status, 403, "{method} {path} {what}: {body}");
            assert_eq!(
                body["type"], "urn:mcpgw:problem:cross-site-request",
                "{body}"
            );
        }
        // A program passes the guard (and then meets the handler: unknown id, bad body…).
        let ok = send(method, path)
            .header("x-mcpgw-request", "1")
            .header("sec-fetch-site", "same-origin")
            .header("origin", format!("http://{}", cp.addr))
            .send()
            .await
            .unwrap();
        assert_ne!(ok.status().as_u16(), 403, "{method} {path}");
    }
    assert_eq!(cp.get("/registry").await.1, v0, "nothing changed");
    // Reading stays open to anything (GET has no side effects).
    let resp = cp
        .http
        .get(cp.url("/gateways"))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    cp.stop().await;
}

/// Credentials in a URL's userinfo are refused, pointing at `auth_type`; a query's values
/// are kept where they are needed (the stored URL, the connection) and shown as `***`
/// everywhere else: answers, lists, export, errors, `last_error`.
#[tokio::test]
async fn secrets_in_gateway_urls_are_refused_or_redacted() {
    let db = TestDb::sqlite();
    let cp = TestCp::start(settings(&db)).await;
    let secret = "s3cret-in-the-query";

    // Userinfo: refused, nothing stored, the answer does not repeat the password.
    for url in [
        "http://admin:hunter2@127.0.0.1:9/mcp",
        "http://hunter2@127.0.0.1:9/mcp",
    ] {
        let (s, p) = cp
            .post(
                "/gateways",
                json!({"name": "ui", "url": url, "discover": false}),
            )
            .await;
        assert_eq!(s, 422, "{p}");
        assert_eq!(p["errors"][0]["field"], "url", "{p}");
        let reason = p["errors"][0]["reason"].as_str().unwrap();
        assert!(
            reason.contains("auth_type") && reason.contains("auth_headers"),
            "{reason}"
        );
        assert!(!p.to_string().contains("hunter2"), "{p}");
    }
    assert!(
        cp.get("/gateways").await.1["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // A query: stored whole, shown redacted.
    let url = format!("http://127.0.0.1:9/mcp?token={secret}&team=a");
    let (s, g) = cp
        .post(
            "/gateways",
            json!({"name": "q", "url": url, "discover": false}),
        )
        .await;
    assert_eq!(s, 201, "{g}");
    let shown = "http://127.0.0.1:9/mcp?token=***&team=***";
    assert_eq!(g["gateway"]["url"], shown);
    let id = g["gateway"]["id"].as_str().unwrap().to_owned();
    let stored = || async {
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(db.url())
            .await
            .unwrap();
        let row = sqlx::query("SELECT url FROM gateways WHERE id = $1")
            .bind(&id)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        row.try_get::<String, _>("url").unwrap()
    };
    assert_eq!(stored().await, url, "the stored URL keeps its query");
    // A failed refresh records its error without the secret either, whichever client
    // words it (the legacy SSE client quotes the URL it called).
    let (s, _) = cp.post(&format!("/gateways/{id}/refresh"), json!({})).await;
    assert_eq!(s, 502);
    let (s, _) = cp
        .put(&format!("/gateways/{id}"), json!({"transport": "sse"}))
        .await;
    assert_eq!(s, 200);
    let (s, p) = cp.post(&format!("/gateways/{id}/refresh"), json!({})).await;
    assert_eq!(s, 502, "{p}");
    assert!(!p.to_string().contains(secret), "{p}");
    for path in [
        format!("/gateways/{id}"),
        "/gateways".into(),
        "/export".into(),
        "/metrics".into(),
    ] {
        let (_, v) = cp.get(&path).await;
        assert!(
            !v.to_string().contains(secret),
            "{path} leaks the query: {v}"
        );
    }
    let (_, gw) = cp.get(&format!("/gateways/{id}")).await;
    assert!(gw["last_error"].is_string(), "{gw}");
    assert_eq!(cp.get("/export").await.1["gateways"][0]["url"], shown);

    // Writing back what was read changes nothing; a new query replaces the old one.
    let (s, v) = cp
        .put(
            &format!("/gateways/{id}"),
            json!({"url": shown, "description": "read, then written back"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        stored().await,
        url,
        "the redacted form did not overwrite the secret"
    );
    // So does importing the export back.
    let (_, doc) = cp.get("/export").await;
    let (s, rep) = cp
        .post("/import?conflict_strategy=update", doc.clone())
        .await;
    assert_eq!(s, 200, "{rep}");
    assert_eq!(
        stored().await,
        url,
        "re-importing the export kept the secret"
    );
    // Imported elsewhere, the redacted URL is flagged.
    let other_db = TestDb::sqlite();
    let other = TestCp::start(settings(&other_db)).await;
    let (s, rep) = other.post("/import", doc).await;
    assert_eq!(s, 200, "{rep}");
    assert!(rep["warnings"].to_string().contains("redacted"), "{rep}");
    let (s, v) = cp
        .put(
            &format!("/gateways/{id}"),
            json!({"url": "http://127.0.0.1:9/mcp?token=new"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(stored().await, "http://127.0.0.1:9/mcp?token=new");
    // Userinfo is refused on update and in imports too.
    let (s, p) = cp
        .put(
            &format!("/gateways/{id}"),
            json!({"url": "http://u:p@127.0.0.1:9/mcp"}),
        )
        .await;
    assert_eq!(
        (s, p["errors"][0]["field"].as_str()),
        (422, Some("url")),
        "{p}"
    );
    let bad_doc = json!({"format": "mcpgw-export", "version": 1, "gateways": [
        {"name": "ui", "url": "http://u:p@127.0.0.1:9/mcp", "transport": "streamable_http",
         "enabled": true, "auth_type": "none", "description": null}]});
    let (s, p) = cp.post("/import", bad_doc).await;
    assert_eq!(
        (s, p["errors"][0]["field"].as_str()),
        (422, Some("gateway ui")),
        "{p}"
    );
    other.stop().await;
    cp.stop().await;
}

/// `a` serving `b__c` and `a__b` serving `c` would both expose `a__b__c`: gateway names may
/// not contain the configured separator, on create, rename and import; stored ones from
/// before are reported at start.
#[tokio::test]
async fn gateway_names_cannot_contain_the_separator() {
    for (sep, bad, fine) in [("__", "a__b", "a-b"), ("-", "a-b", "a__b")] {
        let db = TestDb::sqlite();
        let mut s = settings(&db);
        s.federation.separator = sep.into();
        let cp = TestCp::start(s).await;
        let create =
            |name: &str| json!({"name": name, "url": "http://127.0.0.1:9/mcp", "discover": false});
        let (s, p) = cp.post("/gateways", create(bad)).await;
        assert_eq!(s, 422, "{sep}: {p}");
        assert_eq!(p["errors"][0]["field"], "name");
        assert!(p["detail"].as_str().unwrap().contains("separator"), "{p}");
        let (s, g) = cp.post("/gateways", create(fine)).await;
        assert_eq!(s, 201, "{sep}: {g}");
        let id = g["gateway"]["id"].as_str().unwrap();
        let (s, p) = cp
            .put(&format!("/gateways/{id}"), json!({"name": bad}))
            .await;
        assert_eq!(
            (s, p["errors"][0]["field"].as_str()),
            (422, Some("name")),
            "{p}"
        );
        let doc = json!({"format": "mcpgw-export", "version": 1, "gateways": [
            {"name": bad, "url": "http://127.0.0.1:9/mcp", "transport": "streamable_http",
             "enabled": true, "auth_type": "none", "description": null}]});
        let (s, p) = cp.post("/import", doc).await;
        assert_eq!(s, 422, "{p}");
        assert_eq!(p["errors"][0]["field"], format!("gateway {bad}"), "{p}");
        assert!(cp.federation.names_with_separator().await.is_empty());
        cp.stop().await;
        // A stored name from before the rule: the control plane starts, serves it, and
        // reports it.
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(db.url())
            .await
            .unwrap();
        sqlx::query("UPDATE gateways SET name = $1")
            .bind(bad)
            .execute(&mut conn)
            .await
            .unwrap();
        drop(conn);
        let mut s = settings(&db);
        s.federation.separator = sep.into();
        let cp = TestCp::start(s).await;
        assert_eq!(cp.federation.names_with_separator().await, [bad]);
        assert_eq!(cp.get("/gateways").await.1["items"][0]["name"], bad);
        cp.stop().await;
    }
}
