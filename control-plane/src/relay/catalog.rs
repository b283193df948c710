//! Changes of virtual servers' catalogs, for the `list_changed` notifications of listen
//! streams: every published snapshot is compared with the one before, server by server,
//! and the lists that changed are announced to the relay's listen streams once the Envoys
//! serve them.
//!
//! Announced only once every connected Envoy acknowledged the snapshot (or rejected it,
//! or [`APPLY_WAIT`] passed): a client refetches a list as soon as it hears it changed,
//! and the edge answers lists from the snapshot it holds, so an earlier notice would let
//! it fetch the old list and keep it. Envoys that never acknowledge (gone, or stuck) cost
//! at most [`APPLY_WAIT`] of delay, never a lost notice.

use std::sync::Arc;
use std::time::Duration;

use mcpgw_core::catalog::{Entry, VirtualServer};
use mcpgw_core::snapshot::Snapshot;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{broadcast, watch};

use super::listen::Kind;
use crate::xds::{AdsServer, TypeUrl};

/// Longest wait for the Envoys to acknowledge a snapshot before its changes are announced.
pub(super) const APPLY_WAIT: Duration = Duration::from_secs(15);
/// How often the Envoys' acknowledgements are checked while waiting.
const APPLY_POLL: Duration = Duration::from_millis(50);
/// Changes queued for the listen streams; one that falls further behind hears of every
/// list of its server as changed (a spurious `list_changed` costs a refetch, a lost one a
/// stale client).
pub(super) const CHANGES: usize = 256;

/// The lists of one virtual server that changed between two snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CatalogChange {
    /// The virtual server's id.
    pub(super) server: String,
    /// The lists that changed (resources stand for resource templates too).
    pub(super) kinds: Vec<Kind>,
}

/// A server's lists: tools, prompts, resources, resource templates (a server that does
/// not exist has none).
fn lists(server: Option<&VirtualServer>) -> [&[Entry]; 4] {
    match server {
        Some(s) => [&s.tools, &s.prompts, &s.resources, &s.resource_templates],
        None => [&[], &[], &[], &[]],
    }
}

/// The lists of `before` that differ in `after` (a server that appears or goes away
/// changes every list it has on either side).
fn changed_kinds(before: Option<&VirtualServer>, after: Option<&VirtualServer>) -> Vec<Kind> {
    let ([bt, bp, br, brt], [at, ap, ar, art]) = (lists(before), lists(after));
    Kind::ALL
        .into_iter()
        .filter(|kind| match kind {
            Kind::Tools => bt != at,
            Kind::Prompts => bp != ap,
            Kind::Resources => br != ar || brt != art,
        })
        .collect()
}

/// Every server whose catalog differs between `before` and `after`, by id.
pub(super) fn changes(before: &Snapshot, after: &Snapshot) -> Vec<CatalogChange> {
    let ids: std::collections::BTreeSet<&String> =
        before.servers.keys().chain(after.servers.keys()).collect();
    ids.into_iter()
        .filter_map(|id| {
            let kinds = changed_kinds(before.servers.get(id), after.servers.get(id));
            (!kinds.is_empty()).then(|| CatalogChange {
                server: id.clone(),
                kinds,
            })
        })
        .collect()
}

/// Whether every connected Envoy has acknowledged (or rejected) filter configuration
/// `version`, or a later one.
fn applied_everywhere(ads: &AdsServer, version: &str) -> bool {
    let wanted = version.parse::<i64>().ok();
    let reached = |v: &str| match (wanted, v.parse::<i64>().ok()) {
        (Some(want), Some(got)) => got >= want,
        _ => v == version,
    };
    ads.nodes()
        .iter()
        .filter(|n| n.connected_streams > 0)
        .all(|n| {
            n.types
                .get(TypeUrl::ExtensionConfig.as_str())
                .is_some_and(|t| {
                    t.version_acked.as_deref().is_some_and(reached)
                        || t.last_nack.as_ref().is_some_and(|n| reached(&n.version))
                })
        })
}

/// Waits until the Envoys serve `version` (at most [`APPLY_WAIT`]).
async fn until_applied(ads: Option<&AdsServer>, version: &str) {
    let Some(ads) = ads else { return };
    let deadline = tokio::time::Instant::now() + APPLY_WAIT;
    while !applied_everywhere(ads, version) {
        if tokio::time::Instant::now() >= deadline {
            tracing::debug!(%version, "relay: announcing catalog changes before every Envoy acknowledged them");
            return;
        }
        tokio::time::sleep(APPLY_POLL).await;
    }
}

/// Announces on `out` the catalog changes of every snapshot published on `snapshots`,
/// until the publisher goes away.
pub(super) async fn follow(
    mut snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    ads: Option<AdsServer>,
    out: broadcast::Sender<Arc<CatalogChange>>,
    announced: Counter,
) {
    let mut last = snapshots.borrow_and_update().clone();
    while snapshots.changed().await.is_ok() {
        let Some(next) = snapshots.borrow_and_update().clone() else {
            continue;
        };
        let found = match &last {
            Some(before) => changes(before, &next),
            // The first snapshot: nobody listened to a catalog before it.
            None => Vec::new(),
        };
        last = Some(next.clone());
        if found.is_empty() {
            continue;
        }
        until_applied(ads.as_ref(), &next.version).await;
        for change in found {
            announced.inc();
            // No receiver: no listen stream open, nobody to tell.
            let _ = out.send(Arc::new(change));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn entry(name: &str) -> Entry {
        serde_json::from_value(json!({"name": name, "upstream": "u", "upstream_name": name,
            "item": {"name": name}}))
        .unwrap()
    }

    fn server(tools: &[&str], prompts: &[&str], resources: &[&str]) -> VirtualServer {
        let mut s: VirtualServer = serde_json::from_value(json!({"name": "s"})).unwrap();
        s.tools = tools.iter().map(|n| entry(n)).collect();
        s.prompts = prompts.iter().map(|n| entry(n)).collect();
        s.resources = resources.iter().map(|n| entry(n)).collect();
        s
    }

    fn snapshot(servers: &[(&str, VirtualServer)]) -> Snapshot {
        Snapshot {
            servers: servers
                .iter()
                .map(|(id, s)| ((*id).to_owned(), s.clone()))
                .collect(),
            ..Snapshot::default()
        }
    }

    #[test]
    fn each_server_s_changed_lists_are_found() {
        let base = server(&["t1"], &["p1"], &["r://1"]);
        let mut described = base.clone();
        described.tools[0] = serde_json::from_value(json!({"name": "t1", "upstream": "u",
            "upstream_name": "t1", "item": {"name": "t1", "description": "new"}}))
        .unwrap();
        let mut templated = base.clone();
        templated.resource_templates.push(entry("r://{x}"));
        let mut renamed = base.clone();
        renamed.name = "another title".into();
        let cases: Vec<(&str, Option<VirtualServer>, Vec<Kind>)> = vec![
            ("unchanged", Some(base.clone()), vec![]),
            (
                "a tool added",
                Some(server(&["t1", "t2"], &["p1"], &["r://1"])),
                vec![Kind::Tools],
            ),
            (
                "a tool's description changed",
                Some(described),
                vec![Kind::Tools],
            ),
            (
                "a prompt and a resource gone",
                Some(server(&["t1"], &[], &[])),
                vec![Kind::Prompts, Kind::Resources],
            ),
            ("a template added", Some(templated), vec![Kind::Resources]),
            ("only the server's title", Some(renamed), vec![]),
            (
                "the server deleted",
                None,
                vec![Kind::Tools, Kind::Prompts, Kind::Resources],
            ),
        ];
        for (name, after, want) in cases {
            let before = snapshot(&[("s1", base.clone()), ("s2", base.clone())]);
            let mut servers = vec![("s2", base.clone())];
            if let Some(a) = after {
                servers.push(("s1", a));
            }
            let got = changes(&before, &snapshot(&servers));
            let want: Vec<CatalogChange> = if want.is_empty() {
                vec![]
            } else {
                vec![CatalogChange {
                    server: "s1".into(),
                    kinds: want,
                }]
            };
            assert_eq!(got, want, "{name}");
        }
        let created = changes(
            &snapshot(&[]),
            &snapshot(&[("s3", server(&["t"], &[], &[]))]),
        );
        assert_eq!(
            created,
            [CatalogChange {
                server: "s3".into(),
                kinds: vec![Kind::Tools]
            }]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn changes_are_announced_per_snapshot_and_the_first_is_the_baseline() {
        let (tx, rx) = watch::channel(None::<Arc<Snapshot>>);
        let (out, mut heard) = broadcast::channel(CHANGES);
        tx.send_replace(Some(Arc::new(snapshot(&[(
            "s1",
            server(&["a"], &[], &[]),
        )]))));
        let announced = Counter::default();
        let following = tokio::spawn(follow(rx, None, out, announced.clone()));
        tokio::task::yield_now().await;
        tx.send_replace(Some(Arc::new(snapshot(&[(
            "s1",
            server(&["a"], &["p"], &[]),
        )]))));
        let change = heard.recv().await.unwrap();
        assert_eq!(
            *change,
            CatalogChange {
                server: "s1".into(),
                kinds: vec![Kind::Prompts]
            }
        );
        // A snapshot with the same catalogs announces nothing; the publisher going away
        // ends the follower.
        tx.send_replace(Some(Arc::new(snapshot(&[(
            "s1",
            server(&["a"], &["p"], &[]),
        )]))));
        drop(tx);
        following.await.unwrap();
        assert_eq!(announced.get(), 1);
        assert!(matches!(
            heard.try_recv(),
            Err(broadcast::error::TryRecvError::Closed)
        ));
    }
}
