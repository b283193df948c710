//! Store tests, each run on SQLite and on the real PostgreSQL.

use mcpgw::model::{
    AllowedOrigins, AuthType, CatalogKind, GatewayName, GatewayPatch, ItemName, ItemPatch,
    ListFilter, Naming, NewGateway, NewItem, PromptSpec, Tags, ToolSpec, Transport, UpstreamUrl,
};
use mcpgw::store::{Discovered, DiscoveredItem, HealthTransition, NewServer, StoreError};

use super::harness::both_backends;

fn gateway(name: &str) -> NewGateway {
    NewGateway {
        id: mcpgw::store::new_id(),
        name: GatewayName::parse(name).unwrap(),
        url: UpstreamUrl::parse("http://upstream.example/mcp").unwrap(),
        transport: Transport::StreamableHttp,
        description: None,
        tags: Tags::parse(&["Team-A"]).unwrap(),
        enabled: true,
        auth_type: AuthType::None,
        auth_sealed: None,
        identity: Default::default(),
        identity_sealed: None,
    }
}

fn tool(name: &str, tags: &[&str]) -> NewItem<ToolSpec> {
    NewItem {
        name: ItemName::parse(name).unwrap(),
        original_name: name.into(),
        gateway_id: None,
        uri: None,
        description: Some(format!("{name} tool")),
        spec: ToolSpec::default(),
        tags: Tags::parse(tags).unwrap(),
        enabled: true,
    }
}

fn server(name: &str, tools: Vec<String>) -> NewServer {
    NewServer {
        name: ItemName::parse(name).unwrap(),
        description: None,
        icon: None,
        tags: Tags::default(),
        enabled: true,
        naming: Naming::Prefixed,
        allowed_origins: AllowedOrigins::default(),
        tools,
        resources: vec![],
        prompts: vec![],
    }
}

fn found(names: &[&str]) -> Discovered {
    Discovered {
        tools: names
            .iter()
            .map(|n| DiscoveredItem {
                original_name: n.to_string(),
                uri: None,
                description: Some(format!("{n}!")),
                spec: ToolSpec::default(),
            })
            .collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn crud_uniqueness_versions_and_registry_version() {
    for (backend, db) in both_backends().await {
        let store = db.store().await;
        let v0 = store.registry_version().await.unwrap();
        let g = store.create_gateway(gateway("alpha")).await.unwrap();
        assert_eq!(
            g.tags.to_strings(),
            vec!["team-a"],
            "{backend}: tags normalized"
        );
        let v1 = store.registry_version().await.unwrap();
        assert!(v1 > v0, "{backend}: registry version bumps on create");

        let dup = store.create_gateway(gateway("alpha")).await;
        assert!(
            matches!(dup, Err(StoreError::Duplicate { .. })),
            "{backend}: {dup:?}"
        );
        assert_eq!(
            store.registry_version().await.unwrap(),
            v1,
            "{backend}: failed write does not bump"
        );

        // An invalid name cannot reach the store: it does not parse.
        let bad = GatewayName::parse("has space");
        assert!(matches!(bad, Err(ref e) if e.field == "name"), "{backend}");

        // Optimistic concurrency: a stale version is refused.
        let up = store
            .update_gateway(
                &g.id,
                GatewayPatch {
                    description: Some("d".into()),
                    expected_version: Some(g.version),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(up.version, g.version + 1);
        let stale = store
            .update_gateway(
                &g.id,
                GatewayPatch {
                    description: Some("e".into()),
                    expected_version: Some(g.version),
                    ..Default::default()
                },
            )
            .await;
        assert!(
            matches!(stale, Err(StoreError::VersionConflict { .. })),
            "{backend}: {stale:?}"
        );

        // Items: create, unique names, update, filters, pagination.
        for (n, tags) in [
            ("t1", vec!["x"]),
            ("t2", vec!["y"]),
            ("t3", vec!["x", "y"]),
            ("t4", vec![]),
            ("t_5", vec!["a_b"]),
        ] {
            store.create_item(tool(n, &tags)).await.unwrap();
        }
        let dup = store.create_item(tool("t1", &[])).await;
        assert!(
            matches!(dup, Err(StoreError::Duplicate { .. })),
            "{backend}"
        );

        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = store
                .list_items::<ToolSpec>(&ListFilter {
                    cursor: cursor.clone(),
                    limit: Some(2),
                    ..Default::default()
                })
                .await
                .unwrap();
            assert!(page.items.len() <= 2);
            seen.extend(page.items.iter().map(|i| i.name.clone()));
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(
            seen,
            vec!["t1", "t2", "t3", "t4", "t_5"],
            "{backend}: pages in name order, no gaps"
        );

        let tagged = store
            .list_items::<ToolSpec>(&ListFilter {
                tags: Tags::parse_filter("x").unwrap(),
                ..Default::default()
            })
            .await
            .unwrap();
        let names: Vec<_> = tagged.items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, vec!["t1", "t3"], "{backend}: tag filter");
        // `_` in a tag is literal, not a LIKE wildcard.
        let underscore = store
            .list_items::<ToolSpec>(&ListFilter {
                tags: Tags::parse_filter("a_b").unwrap(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(underscore.items.len(), 1, "{backend}");
        let axb = store
            .list_items::<ToolSpec>(&ListFilter {
                tags: Tags::parse_filter("axb").unwrap(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(axb.items.is_empty(), "{backend}");

        let t2 = store
            .find_item_by_name::<ToolSpec>("t2")
            .await
            .unwrap()
            .unwrap();
        let off = store
            .update_item::<ToolSpec>(
                &t2.id,
                ItemPatch {
                    enabled: Some(false),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(!off.enabled);
        let enabled_only = store
            .list_items::<ToolSpec>(&ListFilter {
                enabled: Some(true),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(enabled_only.items.len(), 4, "{backend}: enabled filter");
        let renamed_clash = store
            .update_item::<ToolSpec>(
                &t2.id,
                ItemPatch {
                    name: Some(ItemName::parse("t1").unwrap()),
                    ..Default::default()
                },
            )
            .await;
        assert!(
            matches!(renamed_clash, Err(StoreError::Duplicate { .. })),
            "{backend}"
        );

        let bad_cursor = store
            .list_items::<ToolSpec>(&ListFilter {
                cursor: Some("%%%".into()),
                ..Default::default()
            })
            .await;
        assert!(
            matches!(bad_cursor, Err(StoreError::Invalid { ref field, .. }) if field == "cursor"),
            "{backend}"
        );

        // Servers reference items; unknown ids are refused, deletes cascade.
        let t1 = store
            .find_item_by_name::<ToolSpec>("t1")
            .await
            .unwrap()
            .unwrap();
        let bad = store.create_server(server("s", vec!["nope".into()])).await;
        assert!(
            matches!(bad, Err(StoreError::Invalid { ref field, .. }) if field == "associated_tools[0]"),
            "{backend}: {bad:?}"
        );
        let s = store
            .create_server(server("s", vec![t1.id.clone(), t2.id.clone()]))
            .await
            .unwrap();
        assert_eq!(s.associated_tools.len(), 2);
        store.delete_item(CatalogKind::Tool, &t1.id).await.unwrap();
        let s = store.get_server(&s.id).await.unwrap();
        assert_eq!(
            s.associated_tools,
            vec![t2.id.clone()],
            "{backend}: association removed with the tool"
        );
        assert!(matches!(
            store.get_item::<ToolSpec>(&t1.id).await,
            Err(StoreError::NotFound { .. })
        ));
        store.close().await;
    }
}

#[tokio::test]
async fn catalog_sync_adds_updates_removes_and_reports_collisions() {
    for (backend, db) in both_backends().await {
        let store = db.store().await;
        // A hand-made tool squats the name the gateway's `b` would get.
        store.create_item(tool("gw__b", &[])).await.unwrap();
        let (g, report) = store
            .create_gateway_with_catalog(gateway("gw"), Some(&found(&["a", "b", "c"])), "__")
            .await
            .unwrap();
        let report = report.unwrap();
        assert_eq!(report.added, 2, "{backend}");
        assert_eq!(report.collisions.len(), 1, "{backend}");
        assert_eq!(report.collisions[0].name, "gw__b");
        assert_eq!(report.collisions[0].existing_gateway_id, None);
        // The squatter is untouched.
        let squatter = store
            .find_item_by_name::<ToolSpec>("gw__b")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(squatter.gateway_id, None, "{backend}: not overwritten");

        let v = store.registry_version().await.unwrap();
        let same = store
            .sync_gateway_catalog(&g.id, &found(&["a", "b", "c"]), "__")
            .await
            .unwrap();
        assert_eq!(
            (same.added, same.updated, same.removed),
            (0, 0, 0),
            "{backend}"
        );
        assert_eq!(
            store.registry_version().await.unwrap(),
            v,
            "{backend}: no-op sync keeps the version"
        );

        let mut changed = found(&["a", "d"]);
        changed.tools[0].description = Some("new".into());
        let r = store
            .sync_gateway_catalog(&g.id, &changed, "__")
            .await
            .unwrap();
        // `a` is pinned (approved on first discovery): its new description is held for
        // review, the catalog keeps the approved one (see `pinning.rs`).
        assert_eq!(
            (r.added, r.updated, r.removed),
            (1, 0, 1),
            "{backend}: {r:?}"
        );
        let held = store
            .tool_changes(&g.id, Some(mcpgw::pinning::ChangeStatus::Pending))
            .await
            .unwrap();
        assert_eq!(held.len(), 1, "{backend}");
        assert_eq!(held[0].diff[0].path, "/description", "{backend}");
        assert!(store.registry_version().await.unwrap() > v);
        let names: Vec<(String, String)> = store
            .list_items::<ToolSpec>(&ListFilter {
                gateway_id: Some(g.id.clone()),
                ..Default::default()
            })
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|i| (i.name.to_string(), i.original_name))
            .collect();
        assert_eq!(
            names,
            vec![("gw__a".into(), "a".into()), ("gw__d".into(), "d".into())],
            "{backend}"
        );

        // Health: threshold 2 marks gateway and items unreachable, one success restores.
        assert_eq!(
            store
                .record_health(&g.id, false, Some("boom"), 2)
                .await
                .unwrap(),
            HealthTransition::Unchanged
        );
        assert_eq!(
            store
                .record_health(&g.id, false, Some("boom"), 2)
                .await
                .unwrap(),
            HealthTransition::BecameUnreachable
        );
        let gw = store.get_gateway(&g.id).await.unwrap();
        assert!(!gw.reachable);
        assert_eq!(gw.last_error.as_deref(), Some("boom"));
        let a = store
            .find_item_by_name::<ToolSpec>("gw__a")
            .await
            .unwrap()
            .unwrap();
        assert!(!a.reachable, "{backend}: items follow the gateway");
        assert_eq!(
            store.record_health(&g.id, true, None, 2).await.unwrap(),
            HealthTransition::BecameReachable
        );
        let a = store
            .find_item_by_name::<ToolSpec>("gw__a")
            .await
            .unwrap()
            .unwrap();
        assert!(a.reachable);

        // Disabling a gateway disables its items; deleting it removes them.
        store
            .update_gateway(
                &g.id,
                GatewayPatch {
                    enabled: Some(false),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let a = store
            .find_item_by_name::<ToolSpec>("gw__a")
            .await
            .unwrap()
            .unwrap();
        assert!(!a.enabled, "{backend}");
        store.delete_gateway(&g.id).await.unwrap();
        assert!(
            store
                .find_item_by_name::<ToolSpec>("gw__a")
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .find_item_by_name::<ToolSpec>("gw__b")
                .await
                .unwrap()
                .is_some()
        );
        store.close().await;
    }
}

#[tokio::test]
async fn registry_version_is_observable_and_migrations_are_idempotent() {
    for (backend, db) in both_backends().await {
        let store = db.store().await;
        let mut rx = store.subscribe();
        let before = *rx.borrow_and_update();
        let t = tool("p", &[]);
        store
            .create_item(NewItem {
                name: t.name,
                original_name: t.original_name,
                gateway_id: None,
                uri: None,
                description: t.description,
                spec: PromptSpec {
                    arguments: Some(vec![]),
                    ..PromptSpec::default()
                },
                tags: t.tags,
                enabled: true,
            })
            .await
            .unwrap();
        rx.changed().await.unwrap();
        assert!(*rx.borrow() > before, "{backend}");
        store.close().await;
        // Reconnecting runs the migrations again: a no-op.
        let again = db.store().await;
        assert!(
            again
                .find_item_by_name::<PromptSpec>("p")
                .await
                .unwrap()
                .is_some(),
            "{backend}"
        );
        again.close().await;
    }
}

#[cfg(unix)]
#[tokio::test]
async fn sqlite_data_dir_and_files_are_private_to_this_user() {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let dir = tempfile::tempdir().unwrap();

    // Fresh: created private, whatever the umask.
    let data = dir.path().join("fresh/data");
    let settings = mcpgw::config::ServeArgs {
        data_dir: Some(data.clone()),
        ..Default::default()
    }
    .resolve(Some(key))
    .unwrap();
    let store = mcpgw::open_store(&settings).await.unwrap();
    store.create_gateway(gateway("g")).await.unwrap();
    assert_eq!(mode(&data), 0o700, "data dir");
    assert_eq!(mode(&data.join("mcpgw.db")), 0o600, "database file");
    assert_eq!(mode(&data.join("mcpgw.db-wal")), 0o600, "WAL file");
    store.close().await;

    // Existing and loose (an older version, or a permissive umask): tightened on start.
    let loose = dir.path().join("loose");
    std::fs::create_dir_all(&loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The database and its write-ahead log: a closed store may leave pages in the log.
    std::fs::copy(data.join("mcpgw.db"), loose.join("mcpgw.db")).unwrap();
    if data.join("mcpgw.db-wal").exists() {
        std::fs::copy(data.join("mcpgw.db-wal"), loose.join("mcpgw.db-wal")).unwrap();
    }
    std::fs::set_permissions(
        loose.join("mcpgw.db"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let settings = mcpgw::config::ServeArgs {
        data_dir: Some(loose.clone()),
        ..Default::default()
    }
    .resolve(Some(key))
    .unwrap();
    let store = mcpgw::open_store(&settings).await.unwrap();
    assert_eq!(mode(&loose), 0o700, "data dir tightened");
    assert_eq!(
        mode(&loose.join("mcpgw.db")),
        0o600,
        "database file tightened"
    );
    store.close().await;

    // An explicit database URL gets the same file mode.
    let url = format!("sqlite://{}/explicit.db?mode=rwc", dir.path().display());
    let store = mcpgw::store::Store::connect(&url).await.unwrap();
    assert_eq!(mode(&dir.path().join("explicit.db")), 0o600);
    store.close().await;
}

/// Rows the current rules cannot read (damaged, written by hand or by an older version) are
/// left out of every list and of the snapshot, counted and logged; the rest is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_does_not_parse_is_left_out_and_never_fails_the_snapshot() {
    use super::harness::{TestCp, eventually, settings};
    use serde_json::Value;
    use std::time::Duration;
    for (backend, db) in both_backends().await {
        let cp = TestCp::start(settings(&db)).await;
        // An address the edge can use as it is (a name would have to resolve).
        let mut good_gateway = gateway("good");
        good_gateway.url = UpstreamUrl::parse("http://127.0.0.1:9/mcp").unwrap();
        let (good, _) = cp
            .store
            .create_gateway_with_catalog(good_gateway, Some(&found(&["ok"])), "__")
            .await
            .unwrap();
        let ok = cp
            .store
            .find_item_by_name::<ToolSpec>("good__ok")
            .await
            .unwrap()
            .unwrap();
        // Damage: a gateway whose URL is no URL, a tool whose spec has an impossible
        // method, one whose tags are not JSON, a server without a name. All enabled,
        // reachable and served by one virtual server.
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(db.url())
            .await
            .unwrap();
        let ts = "2025-01-01T00:00:00.000Z";
        for sql in [
            format!(
                "INSERT INTO gateways (id, name, url, transport, tags, enabled, reachable, auth_type, created_at, updated_at, version) \
                 VALUES ('bad-gw', 'bad', 'not a url', 'streamable_http', '[]', 1, 1, 'none', '{ts}', '{ts}', 1)"
            ),
            format!(
                "INSERT INTO tools (id, name, original_name, gateway_id, spec, tags, enabled, reachable, created_at, updated_at, version) \
                 VALUES ('bad-spec', 'good__brew', 'brew', '{}', '{{\"request_type\": \"BREW\"}}', '[]', 1, 1, '{ts}', '{ts}', 1)",
                good.id
            ),
            format!(
                "INSERT INTO tools (id, name, original_name, gateway_id, spec, tags, enabled, reachable, created_at, updated_at, version) \
                 VALUES ('bad-tags', 'good__tagged', 'tagged', '{}', '{{}}', 'not json', 1, 1, '{ts}', '{ts}', 1)",
                good.id
            ),
            format!(
                "INSERT INTO servers (id, name, tags, enabled, created_at, updated_at, version) \
                 VALUES ('bad-srv', '', '[]', 1, '{ts}', '{ts}', 1)"
            ),
        ] {
            sqlx::query(&sql).execute(&mut conn).await.unwrap();
        }
        drop(conn);
        let (s, srv) = cp
            .post(
                "/servers",
                serde_json::json!({"name": "team", "associated_tools": [ok.id, "bad-spec", "bad-tags"]}),
            )
            .await;
        assert_eq!(s, 201, "{backend}: {srv}");
        let sid = srv["id"].as_str().unwrap().to_owned();
        let version = cp.get("/registry").await.1["registry_version"]
            .as_i64()
            .unwrap();

        // The snapshot of this version is built, with what parses.
        let snap = eventually(
            "a snapshot of the registry with the damaged rows",
            Duration::from_secs(20),
            || async {
                let (_, snap) = cp.get("/snapshot").await;
                (snap["version"].as_str() == Some(version.to_string().as_str())).then_some(snap)
            },
        )
        .await;
        let upstreams: Vec<&String> = snap["upstreams"].as_object().unwrap().keys().collect();
        assert_eq!(upstreams, [&good.id], "{backend}: {snap}");
        let tools: Vec<&str> = snap["servers"][&sid]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(tools, ["good__ok"], "{backend}");

        // Lists answer, without the damaged rows; one damaged row is an error only when
        // asked for by id.
        let names = |v: &Value| -> Vec<String> {
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["name"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(names(&cp.get("/gateways").await.1), ["good"], "{backend}");
        assert_eq!(names(&cp.get("/tools").await.1), ["good__ok"], "{backend}");
        assert_eq!(names(&cp.get("/servers").await.1), ["team"], "{backend}");
        let (s, _) = cp.get("/tools/bad-spec").await;
        assert_eq!(s, 500, "{backend}");
        // Paging does not stop at a skipped row.
        let (_, page) = cp.get("/tools?limit=1").await;
        let mut seen = names(&page);
        let mut cursor = page["next_cursor"].as_str().map(str::to_owned);
        while let Some(c) = cursor {
            let (_, page) = cp.get(&format!("/tools?limit=1&cursor={c}")).await;
            seen.extend(names(&page));
            cursor = page["next_cursor"].as_str().map(str::to_owned);
        }
        assert_eq!(seen, ["good__ok"], "{backend}");

        let (_, metrics) = cp.get("/metrics").await;
        let m = metrics.as_str().unwrap();
        for table in ["gateways", "tools", "servers"] {
            assert!(
                m.lines().any(|l| l.starts_with(&format!(
                    "mcpgw_store_rows_skipped_total{{table=\"{table}\"}}"
                )) && !l.ends_with(" 0")),
                "{backend}: {table} skips counted: {m}"
            );
        }
        cp.stop().await;
    }
}
