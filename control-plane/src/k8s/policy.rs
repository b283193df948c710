//! `MCPPolicy` → the snapshot's own types (`core::snapshot::{auth, limits, plugins}`), and
//! how the policies attached to one virtual server combine. Both are pure functions: the
//! controller uses [`translate`] to accept or refuse a policy, and whatever writes policies
//! into the registry feeds [`effective`] the attached ones and stores its answer.
//!
//! Merge rules (docs/kubernetes-crds.md says the same for operators):
//! - **authentication and authorization**: one policy decides, never a blend: a policy
//!   attached by `targetRefs` (naming the server) beats one attached by `targetSelector`;
//!   between equals the oldest (`creationTimestamp`, then namespace/name) wins. The winner's
//!   `authentication` and `authorization` apply together (a rule set is only safe with the
//!   issuers it was written for);
//! - **rate limits and plugins** concatenate across policies, keyed by name; on a clash the
//!   more specific attachment wins, then the older policy: the loser's entry is dropped and
//!   the loser reports it in its status (`Degraded`, reason `Overridden`).

use std::collections::BTreeMap;

use mcpgw_core::guard::Guard;
use mcpgw_core::snapshot::auth::{Effect, Rule, ServerAuth};
use mcpgw_core::snapshot::limits::{
    ConcurrencyLimit, DEFAULT_HOLD_SECONDS, KeyPart, Limits, RateLimit, RateLimitService,
    ServerLimits,
};
use mcpgw_core::snapshot::plugins::Plugin;

use super::crd::{LimitKey, MCPPolicySpec, RuleEffect};
use crate::model::FieldInvalid;

/// What one policy contributes, in the snapshot's types.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PolicyParts {
    /// `authentication` and `authorization` (`None`: the policy says nothing of them).
    pub auth: Option<ServerAuth>,
    /// Rate and concurrency limits (`None`: none given).
    pub limits: Option<ServerLimits>,
    /// Guardrail plugins.
    pub plugins: Vec<Plugin>,
}

fn key_part(k: LimitKey) -> KeyPart {
    match k {
        LimitKey::Principal => KeyPart::Principal,
        LimitKey::Team => KeyPart::Team,
        LimitKey::Server => KeyPart::Server,
        LimitKey::Method => KeyPart::Method,
        LimitKey::Tool => KeyPart::Tool,
    }
}

fn core_error(e: mcpgw_core::snapshot::ConfigError, prefix: &str, strip: &str) -> FieldInvalid {
    match e {
        mcpgw_core::snapshot::ConfigError::FieldInvalid { field, reason } => FieldInvalid::new(
            format!("{prefix}{}", field.strip_prefix(strip).unwrap_or(&field)),
            reason,
        ),
        other => FieldInvalid::new(prefix.trim_end_matches('.'), other.to_string()),
    }
}

/// Translates one policy, checking what the snapshot would refuse (rule conditions parse,
/// names are unique, limits and plugins pass the filter's own checks), each mistake named
/// by its field path in the resource.
pub fn translate(spec: &MCPPolicySpec) -> Result<PolicyParts, FieldInvalid> {
    let rules = match &spec.authorization {
        Some(a) => {
            let mut seen = BTreeMap::new();
            let mut rules = Vec::new();
            for (i, r) in a.rules.iter().enumerate() {
                let at = format!("spec.authorization.rules[{i}]");
                if r.name.is_empty() {
                    return Err(FieldInvalid::new(format!("{at}.name"), "must not be empty"));
                }
                if let Some(j) = seen.insert(r.name.clone(), i) {
                    return Err(FieldInvalid::new(
                        format!("{at}.name"),
                        format!("{:?} is also the name of rules[{j}]", r.name),
                    ));
                }
                crate::rules::check(&r.when)
                    .map_err(|e| FieldInvalid::new(format!("{at}.when"), e.to_string()))?;
                rules.push(Rule {
                    name: r.name.clone(),
                    effect: match r.effect {
                        RuleEffect::Allow => Effect::Allow,
                        RuleEffect::Deny => Effect::Deny,
                    },
                    when: r.when.clone(),
                });
            }
            Some(rules)
        }
        None => None,
    };
    let auth = match (&spec.authentication, rules) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(FieldInvalid::new(
                "spec.authorization",
                "rules need spec.authentication (rules apply to authenticated callers)",
            ));
        }
        (Some(a), rules) => {
            if !a.resource.starts_with("https://") && !a.resource.starts_with("http://") {
                return Err(FieldInvalid::new(
                    "spec.authentication.resource",
                    "must be the absolute URL clients reach the server at",
                ));
            }
            Some(ServerAuth {
                required: a.required,
                resource: a.resource.clone(),
                issuers: a.issuers.clone(),
                scopes: a.scopes.clone(),
                rules: rules.unwrap_or_default(),
            })
        }
    };
    let limits = match &spec.rate_limits {
        None => None,
        Some(l) => {
            let limits = ServerLimits {
                rates: l
                    .rates
                    .iter()
                    .map(|r| RateLimit {
                        name: r.name.clone(),
                        by: r.by.iter().copied().map(key_part).collect(),
                        methods: r.methods.clone(),
                        requests: r.requests,
                        per_seconds: r.per_seconds,
                        burst: r.burst,
                        cost: r.cost.unwrap_or(1),
                        global: r.global,
                    })
                    .collect(),
                concurrency: l
                    .concurrency
                    .iter()
                    .map(|c| ConcurrencyLimit {
                        name: c.name.clone(),
                        by: c.by.iter().copied().map(key_part).collect(),
                        max: c.max,
                        hold_seconds: c.hold_seconds.unwrap_or(DEFAULT_HOLD_SECONDS),
                    })
                    .collect(),
            };
            check_limits(&limits)?;
            Some(limits)
        }
    };
    let mut plugins = Vec::new();
    for (i, p) in spec.plugins.iter().enumerate() {
        let at = format!("spec.plugins[{i}].config");
        let mut object: serde_json::Map<String, serde_json::Value> =
            p.config.clone().into_iter().collect();
        if object.contains_key("name") {
            return Err(FieldInvalid::new(
                format!("{at}.name"),
                "the plugin's name is spec.plugins[].name",
            ));
        }
        object.insert("name".into(), serde_json::Value::String(p.name.clone()));
        let plugin: Plugin = serde_json::from_value(serde_json::Value::Object(object))
            .map_err(|e| FieldInvalid::new(at.clone(), e.to_string()))?;
        plugins.push(plugin);
    }
    Guard::check(&plugins).map_err(|e| core_error(e, "spec.", ""))?;
    Ok(PolicyParts {
        auth,
        limits,
        plugins,
    })
}

/// The filter's own checks of one server's limits (a global limit is checked as if the
/// rate-limit service were configured: whether it is, is the control plane's setting).
fn check_limits(limits: &ServerLimits) -> Result<(), FieldInvalid> {
    let global = limits.rates.iter().any(|r| r.global);
    let doc = Limits {
        default: None,
        servers: BTreeMap::from([("policy".to_owned(), limits.clone())]),
        service: global.then(|| RateLimitService::with_cluster("mcpgw-ratelimit")),
    };
    doc.check(|_| true)
        .map_err(|e| core_error(e, "spec.rateLimits.", "limits.servers.policy."))
}

/// How a policy reaches a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Attachment {
    /// By name, in `targetRefs` (more specific: wins).
    TargetRef,
    /// By label, through `targetSelector`.
    Selector,
}

/// A policy attached to one server, with what orders it against the others.
#[derive(Debug, Clone)]
pub struct Attached {
    /// `namespace/name` of the policy.
    pub policy: String,
    /// How it is attached.
    pub attachment: Attachment,
    /// Its `creationTimestamp` (RFC 3339; compared as text, which orders RFC 3339 UTC).
    pub created: String,
    /// What it contributes.
    pub parts: PolicyParts,
}

/// The outcome for one server.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Effective {
    /// The authentication and rules that apply (from one policy).
    pub auth: Option<ServerAuth>,
    /// The policy `auth` came from.
    pub auth_from: Option<String>,
    /// The limits that apply (`None`: no policy gives any; the server's defaults stay).
    pub limits: Option<ServerLimits>,
    /// The plugins that apply.
    pub plugins: Vec<Plugin>,
    /// `(losing policy, what it lost)`: entries dropped in favour of another policy's.
    pub overridden: Vec<(String, String)>,
}

/// Combines the policies attached to one server (see the module documentation).
pub fn effective(mut attached: Vec<Attached>) -> Effective {
    attached.sort_by(|a, b| {
        (a.attachment, &a.created, &a.policy).cmp(&(b.attachment, &b.created, &b.policy))
    });
    let mut out = Effective::default();
    for a in &attached {
        match (&out.auth, &a.parts.auth) {
            (None, Some(auth)) => {
                out.auth = Some(auth.clone());
                out.auth_from = Some(a.policy.clone());
            }
            (Some(_), Some(_)) => out
                .overridden
                .push((a.policy.clone(), "authentication".to_owned())),
            _ => {}
        }
        if let Some(l) = &a.parts.limits {
            let into = out.limits.get_or_insert_with(|| ServerLimits {
                rates: Vec::new(),
                concurrency: Vec::new(),
            });
            for r in &l.rates {
                if into.rates.iter().any(|x| x.name == r.name) {
                    out.overridden
                        .push((a.policy.clone(), format!("rate limit {}", r.name)));
                } else {
                    into.rates.push(r.clone());
                }
            }
            for c in &l.concurrency {
                if into.concurrency.iter().any(|x| x.name == c.name) {
                    out.overridden
                        .push((a.policy.clone(), format!("concurrency limit {}", c.name)));
                } else {
                    into.concurrency.push(c.clone());
                }
            }
        }
        for p in &a.parts.plugins {
            if out.plugins.iter().any(|x| x.name == p.name) {
                out.overridden
                    .push((a.policy.clone(), format!("plugin {}", p.name)));
            } else {
                out.plugins.push(p.clone());
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::k8s::crd::MCPPolicySpec;

    fn spec(yaml: &str) -> MCPPolicySpec {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    const FULL: &str = r#"
targetRefs: [{group: mcpgw.io, kind: MCPVirtualServer, name: support}]
authentication: {issuers: [corp], scopes: [mcp], resource: "https://mcp.example.com/servers/support/mcp"}
authorization:
  rules:
    - {name: staff, when: "principal.teams.exists(t, t == 'support')"}
    - {name: no-delete, effect: deny, when: "request.name == 'delete_ticket'"}
rateLimits:
  rates: [{name: per-user, by: [principal], requests: 60, perSeconds: 60}]
  concurrency: [{name: in-flight, by: [tool], max: 4}]
plugins:
  - name: mask-pii
    config: {priority: 10, pii: {action: mask, detectors: [email]}}
"#;

    #[test]
    fn a_full_policy_translates_into_the_snapshot_types() {
        let parts = translate(&spec(FULL)).unwrap();
        let auth = parts.auth.unwrap();
        assert!(auth.required);
        assert_eq!(auth.issuers, ["corp"]);
        assert_eq!(auth.rules.len(), 2);
        assert_eq!(auth.rules[1].effect, Effect::Deny);
        let limits = parts.limits.unwrap();
        assert_eq!(limits.rates[0].by, [KeyPart::Principal]);
        assert_eq!(limits.rates[0].cost, 1);
        assert_eq!(limits.concurrency[0].hold_seconds, DEFAULT_HOLD_SECONDS);
        assert_eq!(parts.plugins.len(), 1);
        assert_eq!(parts.plugins[0].name, "mask-pii");
        assert_eq!(parts.plugins[0].priority, 10);
        assert!(parts.plugins[0].pii.is_some());
    }

    #[test]
    fn mistakes_are_named_by_their_path_in_the_resource() {
        let cases = [
            (
                "bad CEL",
                "targetRefs: []\nauthentication: {resource: 'https://x/mcp'}\nauthorization: {rules: [{name: a, when: 'principal.'}]}",
                "spec.authorization.rules[0].when",
            ),
            (
                "duplicate rule",
                "authentication: {resource: 'https://x/mcp'}\nauthorization: {rules: [{name: a, when: 'true'}, {name: a, when: 'false'}]}",
                "spec.authorization.rules[1].name",
            ),
            (
                "rules without authentication",
                "authorization: {rules: [{name: a, when: 'true'}]}",
                "spec.authorization",
            ),
            (
                "relative resource",
                "authentication: {resource: '/mcp'}",
                "spec.authentication.resource",
            ),
            (
                "unknown plugin field",
                "plugins: [{name: p, config: {pii: {action: mask}, colour: red}}]",
                "spec.plugins[0].config",
            ),
            (
                "zero requests",
                "rateLimits: {rates: [{name: r, requests: 0, perSeconds: 60}]}",
                "spec.rateLimits.",
            ),
        ];
        for (case, yaml, field) in cases {
            let e = translate(&spec(yaml)).expect_err(case);
            assert!(e.field.starts_with(field), "{case}: {e}");
        }
    }

    fn attached(policy: &str, attachment: Attachment, created: &str, yaml: &str) -> Attached {
        Attached {
            policy: policy.to_owned(),
            attachment,
            created: created.to_owned(),
            parts: translate(&spec(yaml)).unwrap(),
        }
    }

    #[test]
    fn the_more_specific_then_the_older_policy_wins_and_lists_concatenate() {
        let by_label_old = attached(
            "ns/broad",
            Attachment::Selector,
            "2026-01-01T00:00:00Z",
            "authentication: {resource: 'https://a/mcp', issuers: [broad]}\nrateLimits: {rates: [{name: shared, requests: 1, perSeconds: 1}, {name: broad-only, requests: 5, perSeconds: 1}]}\nplugins: [{name: p1, config: {pii: {action: mask}}}]",
        );
        let by_name_new = attached(
            "ns/narrow",
            Attachment::TargetRef,
            "2026-06-01T00:00:00Z",
            "authentication: {resource: 'https://a/mcp', issuers: [narrow]}\nrateLimits: {rates: [{name: shared, requests: 9, perSeconds: 1}]}",
        );
        let by_name_newer = attached(
            "ns/later",
            Attachment::TargetRef,
            "2026-07-01T00:00:00Z",
            "authentication: {resource: 'https://a/mcp', issuers: [later]}\nplugins: [{name: p1, config: {secrets: {action: block}}}, {name: p2, config: {pii: {action: block}}}]",
        );
        let e = effective(vec![by_label_old, by_name_newer, by_name_new]);
        assert_eq!(e.auth.unwrap().issuers, ["narrow"]);
        assert_eq!(e.auth_from.as_deref(), Some("ns/narrow"));
        let limits = e.limits.unwrap();
        let rates: Vec<_> = limits
            .rates
            .iter()
            .map(|r| (r.name.as_str(), r.requests))
            .collect();
        assert_eq!(rates, [("shared", 9), ("broad-only", 5)]);
        let plugins: Vec<_> = e.plugins.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(plugins, ["p1", "p2"]);
        assert!(
            e.plugins[0].secrets.is_some(),
            "the by-name policy's p1 wins"
        );
        assert_eq!(
            e.overridden,
            [
                ("ns/later".to_owned(), "authentication".to_owned()),
                ("ns/broad".to_owned(), "authentication".to_owned()),
                ("ns/broad".to_owned(), "rate limit shared".to_owned()),
                ("ns/broad".to_owned(), "plugin p1".to_owned()),
            ]
        );
    }

    #[test]
    fn no_policy_with_limits_leaves_the_defaults() {
        let e = effective(vec![attached(
            "ns/a",
            Attachment::TargetRef,
            "2026-01-01T00:00:00Z",
            "authentication: {resource: 'https://a/mcp'}",
        )]);
        assert!(e.limits.is_none());
        assert!(e.plugins.is_empty());
    }
}
