//! `MCPPolicy` → registry: what the policies of a namespace add up to for one virtual
//! server ([`super::policy::effective`]) is written where the REST API would write it,
//! so the snapshot builder has one source for both:
//!
//! - authentication and rules → the server's policy (`/policies/{server id}`);
//! - rate and concurrency limits → the server's limits (`/limits/{server id}`);
//! - plugins → one plugin each, named `k8s:{namespace}:{server}:{plugin}` (`:` is in no
//!   Kubernetes name, so one server's plugins are never taken for another's), limited to
//!   the server by `conditions.servers`.
//!
//! The Kubernetes resources are the source of truth for a server they own: what a REST
//! write put there is replaced at the next reconcile. Nothing is written when nothing
//! changed (a resync costs reads only), and a policy that no longer attaches leaves
//! nothing behind: its server's entries are removed at the server's next reconcile, which
//! a policy's deletion triggers.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use mcpgw_core::snapshot::auth::ServerAuth;
use mcpgw_core::snapshot::limits::ServerLimits;
use mcpgw_core::snapshot::plugins::Plugin;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::controller::{Context, ReconcileError};
use super::crd::{MCPPolicy, MCPVirtualServer};
use super::policy::{Attached, Attachment, Effective, effective, translate};
use crate::store::StoreError;
use crate::store::policies::EdgeKind;

/// The prefix of the plugins a virtual server's policies put in the registry.
pub fn plugin_prefix(namespace: &str, server: &str) -> String {
    format!("k8s:{namespace}:{server}:")
}

/// How `policy` attaches to the virtual server `vs` with labels `labels`, if it does.
fn attachment(
    vs: &str,
    labels: &BTreeMap<String, String>,
    policy: &MCPPolicy,
) -> Option<Attachment> {
    if policy.spec.target_refs.iter().any(|t| t.name == vs) {
        return Some(Attachment::TargetRef);
    }
    let sel = policy.spec.target_selector.as_ref()?;
    selects(sel, labels).then_some(Attachment::Selector)
}

/// Whether a label selector selects an object with `labels`, as the API server answers a
/// list by [`super::controller::selector_string`] (an operator it does not know reads as `DoesNotExist`).
fn selects(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    by_labels
        && sel.match_expressions.iter().flatten().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            let have = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => have.is_some_and(|v| values.contains(v)),
                "NotIn" => have.is_none_or(|v| !values.contains(v)),
                "Exists" => have.is_some(),
                _ => have.is_none(),
            }
        })
}

/// What the policies of `ns` add up to for the virtual server `vs` (policies that do not
/// translate are left out: their own status says why). Two reads: the policies and the
/// server's labels, whatever the number of selectors.
pub async fn effective_for(ctx: &Context, ns: &str, vs: &str) -> Result<Effective, ReconcileError> {
    let api: Api<MCPPolicy> = Api::namespaced(ctx.client.clone(), ns);
    let policies = api.list(&ListParams::default()).await?;
    let labels = if policies.iter().any(|p| p.spec.target_selector.is_some()) {
        let servers: Api<MCPVirtualServer> = Api::namespaced(ctx.client.clone(), ns);
        servers
            .get_opt(vs)
            .await?
            .map(|v| v.labels().clone())
            .unwrap_or_default()
    } else {
        BTreeMap::new()
    };
    let mut attached = Vec::new();
    for p in policies {
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(how) = attachment(vs, &labels, &p) else {
            continue;
        };
        let Ok(parts) = translate(&p.spec) else {
            continue;
        };
        attached.push(Attached {
            policy: format!("{ns}/{}", p.name_any()),
            attachment: how,
            created: p
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default(),
            parts,
        });
    }
    Ok(effective(attached))
}

/// Writes `want` as the item `name` of `kind` (`None`: removes it), only when it differs
/// from what is stored. Whether anything was written.
async fn put_or_remove<T>(
    ctx: &Context,
    kind: EdgeKind,
    name: &str,
    want: Option<&T>,
) -> Result<bool, ReconcileError>
where
    T: Serialize + DeserializeOwned + PartialEq,
{
    let have = match ctx.store.edge_item::<T>(kind, name).await {
        Ok(r) => Some(r.spec),
        Err(StoreError::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    match (have, want) {
        (Some(h), Some(w)) if &h == w => Ok(false),
        (_, Some(w)) => {
            ctx.store.put_edge_item(kind, name, w).await?;
            Ok(true)
        }
        (Some(_), None) => {
            ctx.store.delete_edge_item(kind, name).await?;
            Ok(true)
        }
        (None, None) => Ok(false),
    }
}

/// Brings the registry entries of the server `server_id` (the `MCPVirtualServer` `vs` in
/// `ns`) in line with the policies attached to it; what it ended with.
pub async fn sync_server(
    ctx: &Context,
    ns: &str,
    vs: &str,
    server_id: &str,
) -> Result<Effective, ReconcileError> {
    let eff = effective_for(ctx, ns, vs).await?;
    put_or_remove::<ServerAuth>(ctx, EdgeKind::Policy, server_id, eff.auth.as_ref()).await?;
    put_or_remove::<ServerLimits>(ctx, EdgeKind::Limits, server_id, eff.limits.as_ref()).await?;
    let prefix = plugin_prefix(ns, vs);
    let mut want: BTreeMap<String, Plugin> = BTreeMap::new();
    for p in &eff.plugins {
        let mut p = p.clone();
        p.name = format!("{prefix}{}", p.name);
        p.conditions.servers = vec![server_id.to_owned()];
        want.insert(p.name.clone(), p);
    }
    remove_plugins_except(ctx, &prefix, &want).await?;
    for (name, p) in &want {
        put_or_remove(ctx, EdgeKind::Plugin, name, Some(p)).await?;
    }
    Ok(eff)
}

/// Removes the plugins under `prefix` that `keep` does not name.
async fn remove_plugins_except(
    ctx: &Context,
    prefix: &str,
    keep: &BTreeMap<String, Plugin>,
) -> Result<(), ReconcileError> {
    for stale in ctx
        .store
        .edge_items::<Plugin>(EdgeKind::Plugin)
        .await?
        .into_iter()
        .filter(|r| r.name.starts_with(prefix) && !keep.contains_key(&r.name))
    {
        match ctx
            .store
            .delete_edge_item(EdgeKind::Plugin, &stale.name)
            .await
        {
            Ok(()) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Removes every plugin a deleted virtual server's policies put in the registry (its
/// policy and limits go with the server).
pub async fn forget_server(ctx: &Context, ns: &str, vs: &str) -> Result<(), ReconcileError> {
    remove_plugins_except(ctx, &plugin_prefix(ns, vs), &BTreeMap::new()).await
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

    use super::selects;

    fn req(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| (*v).to_owned()).collect()),
        }
    }

    #[test]
    fn a_selector_is_read_as_the_api_server_reads_it() {
        let labels: BTreeMap<String, String> = [("tier", "gold"), ("team", "a")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let sel = |labels: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>| LabelSelector {
            match_labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            match_expressions: Some(exprs),
        };
        assert!(
            selects(&LabelSelector::default(), &labels),
            "empty selects all"
        );
        assert!(selects(&sel(&[("tier", "gold")], vec![]), &labels));
        assert!(!selects(&sel(&[("tier", "silver")], vec![]), &labels));
        assert!(selects(
            &sel(&[], vec![req("team", "In", &["a", "b"])]),
            &labels
        ));
        assert!(!selects(
            &sel(&[], vec![req("team", "NotIn", &["a"])]),
            &labels
        ));
        assert!(selects(
            &sel(&[], vec![req("zone", "NotIn", &["x"])]),
            &labels
        ));
        assert!(selects(
            &sel(&[], vec![req("team", "Exists", &[])]),
            &labels
        ));
        assert!(!selects(
            &sel(&[], vec![req("team", "DoesNotExist", &[])]),
            &labels
        ));
        assert!(!selects(
            &sel(&[("tier", "gold")], vec![req("zone", "Exists", &[])]),
            &labels
        ));
    }
}
