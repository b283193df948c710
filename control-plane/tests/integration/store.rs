//! Store tests, each run on SQLite and on the real PostgreSQL.

use mcpgw::model::{
    AuthType, CatalogKind, GatewayPatch, ItemPatch, ListQuery, NewGateway, NewItem, Transport,
};
use mcpgw::store::{Discovered, DiscoveredItem, HealthTransition, NewServer, StoreError};
use serde_json::{Map, json};

use super::harness::both_backends;

fn gateway(name: &str) -> NewGateway {
    NewGateway {
        name: name.into(),
        url: "http://upstream.example/mcp".into(),
        transport: Transport::StreamableHttp,
        description: None,
        tags: vec!["Team-A".into()],
        enabled: true,
        auth_type: AuthType::None,
        auth_sealed: None,
    }
}

fn tool(name: &str, tags: &[&str]) -> NewItem {
    NewItem {
        name: name.into(),
        original_name: name.into(),
        gateway_id: None,
        uri: None,
        description: Some(format!("{name} tool")),
        spec: Map::new(),
        tags: tags.iter().map(|s| s.to_string()).collect(),
        enabled: true,
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
                spec: Map::new(),
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
        assert_eq!(g.tags, vec!["team-a"], "{backend}: tags normalized");
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

        let bad = store.create_gateway(gateway("has space")).await;
        assert!(
            matches!(bad, Err(StoreError::Invalid { ref field, .. }) if field == "name"),
            "{backend}"
        );

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
            store
                .create_item(CatalogKind::Tool, tool(n, &tags))
                .await
                .unwrap();
        }
        let dup = store.create_item(CatalogKind::Tool, tool("t1", &[])).await;
        assert!(
            matches!(dup, Err(StoreError::Duplicate { .. })),
            "{backend}"
        );

        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = store
                .list_items(
                    CatalogKind::Tool,
                    &ListQuery {
                        cursor: cursor.clone(),
                        limit: Some(2),
                        ..Default::default()
                    },
                )
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
            .list_items(
                CatalogKind::Tool,
                &ListQuery {
                    tags: Some("x".into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let names: Vec<_> = tagged.items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, vec!["t1", "t3"], "{backend}: tag filter");
        // `_` in a tag is literal, not a LIKE wildcard.
        let underscore = store
            .list_items(
                CatalogKind::Tool,
                &ListQuery {
                    tags: Some("a_b".into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(underscore.items.len(), 1, "{backend}");
        let axb = store
            .list_items(
                CatalogKind::Tool,
                &ListQuery {
                    tags: Some("axb".into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(axb.items.is_empty(), "{backend}");

        let t2 = store
            .find_item_by_name(CatalogKind::Tool, "t2")
            .await
            .unwrap()
            .unwrap();
        let off = store
            .update_item(
                CatalogKind::Tool,
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
            .list_items(
                CatalogKind::Tool,
                &ListQuery {
                    enabled: Some(true),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(enabled_only.items.len(), 4, "{backend}: enabled filter");
        let renamed_clash = store
            .update_item(
                CatalogKind::Tool,
                &t2.id,
                ItemPatch {
                    name: Some("t1".into()),
                    ..Default::default()
                },
            )
            .await;
        assert!(
            matches!(renamed_clash, Err(StoreError::Duplicate { .. })),
            "{backend}"
        );

        let bad_cursor = store
            .list_items(
                CatalogKind::Tool,
                &ListQuery {
                    cursor: Some("%%%".into()),
                    ..Default::default()
                },
            )
            .await;
        assert!(
            matches!(bad_cursor, Err(StoreError::Invalid { ref field, .. }) if field == "cursor"),
            "{backend}"
        );

        // Servers reference items; unknown ids are refused, deletes cascade.
        let t1 = store
            .find_item_by_name(CatalogKind::Tool, "t1")
            .await
            .unwrap()
            .unwrap();
        let bad = store
            .create_server(NewServer {
                name: "s".into(),
                enabled: true,
                tools: vec!["nope".into()],
                ..Default::default()
            })
            .await;
        assert!(
            matches!(bad, Err(StoreError::Invalid { ref field, .. }) if field == "associated_tools[0]"),
            "{backend}: {bad:?}"
        );
        let s = store
            .create_server(NewServer {
                name: "s".into(),
                enabled: true,
                tools: vec![t1.id.clone(), t2.id.clone()],
                ..Default::default()
            })
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
            store.get_item(CatalogKind::Tool, &t1.id).await,
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
        store
            .create_item(CatalogKind::Tool, tool("gw__b", &[]))
            .await
            .unwrap();
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
            .find_item_by_name(CatalogKind::Tool, "gw__b")
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
        assert_eq!(
            (r.added, r.updated, r.removed),
            (1, 1, 1),
            "{backend}: {r:?}"
        );
        assert!(store.registry_version().await.unwrap() > v);
        let names: Vec<_> = store
            .list_items(
                CatalogKind::Tool,
                &ListQuery {
                    gateway_id: Some(g.id.clone()),
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|i| (i.name, i.original_name))
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
            .find_item_by_name(CatalogKind::Tool, "gw__a")
            .await
            .unwrap()
            .unwrap();
        assert!(!a.reachable, "{backend}: items follow the gateway");
        assert_eq!(
            store.record_health(&g.id, true, None, 2).await.unwrap(),
            HealthTransition::BecameReachable
        );
        let a = store
            .find_item_by_name(CatalogKind::Tool, "gw__a")
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
            .find_item_by_name(CatalogKind::Tool, "gw__a")
            .await
            .unwrap()
            .unwrap();
        assert!(!a.enabled, "{backend}");
        store.delete_gateway(&g.id).await.unwrap();
        assert!(
            store
                .find_item_by_name(CatalogKind::Tool, "gw__a")
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .find_item_by_name(CatalogKind::Tool, "gw__b")
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
        store
            .create_item(
                CatalogKind::Prompt,
                NewItem {
                    spec: Map::from_iter([("arguments".to_owned(), json!([]))]),
                    ..tool("p", &[])
                },
            )
            .await
            .unwrap();
        rx.changed().await.unwrap();
        assert!(*rx.borrow() > before, "{backend}");
        store.close().await;
        // Reconnecting runs the migrations again: a no-op.
        let again = db.store().await;
        assert!(
            again
                .find_item_by_name(CatalogKind::Prompt, "p")
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
    std::fs::copy(data.join("mcpgw.db"), loose.join("mcpgw.db")).unwrap();
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
