//! The harness against a real Envoy (`MCPGW_ENVOY`, default `.venv/bin/envoy`): no filter,
//! no upstream, a listener that answers by itself.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use mcpgw_harness::bootstrap::{LISTENER, StaticBootstrap};
use mcpgw_harness::{Artifacts, Envoy, Launch, admin};
use serde_json::json;

fn launch(name: &str) -> Launch {
    Launch::new(Artifacts::from_env().envoy().unwrap()).name(name)
}

fn answering(route: serde_json::Value) -> String {
    StaticBootstrap {
        routes: vec![route],
        ..StaticBootstrap::default()
    }
    .to_json()
    .to_string()
}

#[tokio::test]
async fn a_started_envoy_serves_counts_and_dies_with_its_handle() {
    let bootstrap = answering(json!({
        "match": {"prefix": "/"},
        "direct_response": {"status": 200, "body": {"inline_string": "hello"}}
    }));
    let mut envoy = Envoy::start(launch("serves"), &bootstrap).await.unwrap();
    let listener = envoy.listener(LISTENER).await.unwrap();
    assert!(listener.ip().is_loopback() && listener.port() != 0);
    assert_ne!(listener, envoy.admin);

    // The admin client speaks plain HTTP/1.1, to any loopback server.
    let (status, body) = admin::get(listener, "/anything").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "hello"));
    let requests = envoy
        .counter_sum("http\\.mcp\\.downstream_rq_total")
        .await
        .unwrap();
    assert_eq!(requests, 1);
    assert!(
        envoy
            .prometheus()
            .await
            .unwrap()
            .contains("envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix=\"mcp\"} 1"),
    );
    assert!(envoy.exited().is_none());

    // A probe that never yields fails with what was awaited and Envoy's state.
    let err = envoy
        .wait("nothing", Duration::from_millis(200), || async {
            None::<()>
        })
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("waiting for nothing") && text.contains("still running"),
        "{text}"
    );

    let (pid, dir) = (envoy.pid(), envoy.dir().to_owned());
    assert!(dir.join("bootstrap.json").exists());
    drop(envoy);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "Envoy {pid} outlived its handle"
    );
    assert!(!dir.exists(), "{} outlived its Envoy", dir.display());
}

#[tokio::test]
async fn a_rejected_bootstrap_is_reported_with_envoys_words() {
    let bootstrap = answering(json!({"match": {"prefix": "/"}, "route": {"cluster": "nowhere"}}));
    let (status, log) = Envoy::start_rejected(launch("rejected"), &bootstrap)
        .await
        .unwrap();
    assert!(!status.success());
    assert!(log.contains("nowhere"), "{log}");

    let err = Envoy::start(launch("rejected"), &bootstrap)
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("exited") && text.contains("nowhere"),
        "{text}"
    );
}
