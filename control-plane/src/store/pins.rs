//! Tool pins: the approved definition of each federated tool, the changes discovery held
//! for review, and each gateway's pinning policy (see [`crate::pinning`]).
//!
//! The catalog's `tools` rows always hold the approved definition: the discovery merge
//! passes every listed tool through [`gate_tools`] first, which swaps a changed pinned tool
//! for its approved definition (and records the change), and leaves a held new tool out.
//! Everything that reads the catalog (snapshot, admin API, export) therefore sees approved
//! definitions only; the one extra rule, for the `withhold` policy, is
//! [`Store::withheld_tool_ids`], which the snapshot leaves out.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::catalog::parse_spec;
use super::{Store, StoreError, WriteTx, get_bool, new_id, now};
use crate::model::{CatalogSpec, DiscoveredItem, GatewayName, ItemName, ToolSpec};
use crate::pinning::{
    self, ChangeKind, ChangeStatus, FieldDiff, Finding, FirstDiscovery, NewTools, OnChange,
    PinPolicy,
};

/// One approved tool definition of a gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolPin {
    /// The tool's name at the upstream.
    pub tool: String,
    /// `sha256:…` of the pinned fields.
    pub hash: String,
    /// Left out of snapshots while a change is pending (`withhold` policy).
    pub withheld: bool,
    /// When it was approved.
    pub approved_at: String,
    /// Who approved it (`None`: approved on discovery by policy).
    pub approved_by: Option<String>,
}

// A tool definition discovery found that differs from what is approved (or a new tool).
// The admin API answers it as is, as the schema `Change`, whose description is this:
/// A tool-definition change held for review.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
#[schema(as = Change)]
pub struct ToolChange {
    /// Change id.
    pub id: String,
    /// The gateway.
    pub gateway_id: String,
    /// The tool's name at the upstream.
    pub tool: String,
    /// `new` (a tool without a pin) or `modified` (a pinned tool listed differently).
    pub kind: ChangeKind,
    /// `pending`, `approved`, `rejected` or `superseded` (the upstream listed something
    /// else since).
    pub status: ChangeStatus,
    /// Hash of the approved definition (absent for a new tool).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_hash: Option<String>,
    /// Hash of the discovered definition.
    pub new_hash: String,
    /// The approved definition (`name`, `description`, `inputSchema`, `outputSchema`,
    /// `annotations`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old: Option<Value>,
    /// The discovered definition.
    pub new: Value,
    /// What changed, field by field (JSON Pointers into the definitions).
    pub diff: Vec<FieldDiff>,
    /// Hidden-instruction patterns found in the discovered definition: approving needs
    /// `force`.
    pub findings: Vec<Finding>,
    /// When discovery found it.
    pub detected_at: String,
    /// When it was decided (or superseded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<String>,
    /// Who decided it (email).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
}

/// Why a decision on a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// No such change for this gateway.
    #[error("gateway {gateway} has no change {id}")]
    NotFound {
        /// Gateway id.
        gateway: String,
        /// Change id.
        id: String,
    },
    /// The change was decided already (or superseded by a later discovery).
    #[error("change {id} is {status}, not pending; only a pending change can be decided")]
    NotPending {
        /// Change id.
        id: String,
        /// Its status.
        status: &'static str,
    },
    /// The definition carries hidden-instruction patterns and `force` was not given.
    #[error(
        "change {id} is flagged ({}); review it and approve with force=true to pin it anyway",
        describe(.findings)
    )]
    Flagged {
        /// Change id.
        id: String,
        /// What the scan found.
        findings: Vec<Finding>,
    },
    /// Store failure (a missing gateway included).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The findings on one line: what, where.
fn describe(findings: &[Finding]) -> String {
    findings
        .iter()
        .map(|f| {
            let what = match f.kind {
                pinning::FindingKind::InvisibleUnicode => "invisible characters",
                pinning::FindingKind::InjectionPhrase => "injection phrase",
            };
            format!("{what} at {}: {}", f.path, f.detail)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<sqlx::Error> for ChangeError {
    fn from(e: sqlx::Error) -> Self {
        ChangeError::Store(e.into())
    }
}

/// A gateway's pinning as an export carries it.
#[derive(Debug, Clone)]
pub struct PinningState {
    /// The policy.
    pub policy: PinPolicy,
    /// Whether a discovery was merged under it.
    pub baselined: bool,
    /// Every pin with its approved definition.
    pub pins: Vec<(ToolPin, DiscoveredItem<ToolSpec>)>,
}

/// One pin to write as it was approved elsewhere (an import).
#[derive(Debug, Clone)]
pub struct ImportedPin {
    /// The approved definition.
    pub item: DiscoveredItem<ToolSpec>,
    /// Its hash, checked against the definition by the caller.
    pub hash: String,
    /// When it was approved.
    pub approved_at: String,
    /// Who approved it.
    pub approved_by: Option<String>,
}

/// Sets a gateway's pinning policy and writes `pins` (replacing pins of the same tools), in
/// `tx`: what an import of a gateway's pinning does. Pending changes stay as they are.
pub(crate) async fn put_pinning_tx(
    tx: &mut WriteTx<'_>,
    gateway_id: &str,
    policy: PinPolicy,
    baselined: bool,
    pins: &[ImportedPin],
) -> Result<(), StoreError> {
    let (_, was_baselined) = policy_tx(tx, gateway_id).await?;
    write_policy_tx(tx, gateway_id, policy, baselined || was_baselined).await?;
    for p in pins {
        sqlx::query("DELETE FROM tool_pins WHERE gateway_id = $1 AND original_name = $2")
            .bind(gateway_id)
            .bind(&p.item.original_name)
            .execute(tx.conn())
            .await?;
        sqlx::query(
            "INSERT INTO tool_pins (gateway_id, original_name, hash, item, withheld, approved_at, \
             approved_by) VALUES ($1, $2, $3, $4, 0, $5, $6)",
        )
        .bind(gateway_id)
        .bind(&p.item.original_name)
        .bind(&p.hash)
        .bind(item_json(&p.item))
        .bind(&p.approved_at)
        .bind(p.approved_by.clone())
        .execute(tx.conn())
        .await?;
    }
    Ok(())
}

/// A pin policy change: the fields given are set.
#[derive(Debug, Clone, Copy, Default)]
pub struct PinPolicyPatch {
    /// What a changed pinned tool serves meanwhile.
    pub on_change: Option<OnChange>,
    /// What a new tool of an approved gateway does.
    pub new_tools: Option<NewTools>,
    /// What the first discovery does.
    pub first_discovery: Option<FirstDiscovery>,
}

fn item_json(item: &DiscoveredItem<ToolSpec>) -> String {
    json!({"description": item.description, "spec": Value::Object(item.spec.to_json())}).to_string()
}

fn parse_item(tool: &str, raw: &str) -> Result<DiscoveredItem<ToolSpec>, StoreError> {
    let v: Value = serde_json::from_str(raw)
        .map_err(|e| StoreError::Corrupt(format!("pinned item {tool}: {e}")))?;
    let spec = v
        .get("spec")
        .map(Value::to_string)
        .ok_or_else(|| StoreError::Corrupt(format!("pinned item {tool}: no spec")))?;
    Ok(DiscoveredItem {
        original_name: tool.to_owned(),
        uri: None,
        description: v
            .get("description")
            .and_then(Value::as_str)
            .map(str::to_owned),
        spec: parse_spec(&spec)?,
    })
}

fn parse_policy(row: &AnyRow) -> Result<(PinPolicy, bool), StoreError> {
    let bad = |col: &str, v: &str| StoreError::Corrupt(format!("{col} {v:?}"));
    let on_change: String = row.try_get("on_change")?;
    let new_tools: String = row.try_get("new_tools")?;
    let first: String = row.try_get("first_discovery")?;
    Ok((
        PinPolicy {
            on_change: OnChange::parse(&on_change).ok_or_else(|| bad("on_change", &on_change))?,
            new_tools: NewTools::parse(&new_tools).ok_or_else(|| bad("new_tools", &new_tools))?,
            first_discovery: FirstDiscovery::parse(&first)
                .ok_or_else(|| bad("first_discovery", &first))?,
        },
        get_bool(row, "baselined")?,
    ))
}

const CHANGE_COLS: &str = "id, gateway_id, original_name, kind, status, old_hash, old_item, \
    new_hash, new_item, findings, detected_at, decided_at, decided_by";

fn row_to_change(row: &AnyRow) -> Result<ToolChange, StoreError> {
    let tool: String = row.try_get("original_name")?;
    let kind: String = row.try_get("kind")?;
    let status: String = row.try_get("status")?;
    let old_item: Option<String> = row.try_get("old_item")?;
    let new_item: String = row.try_get("new_item")?;
    let findings: String = row.try_get("findings")?;
    let old = old_item
        .map(|raw| parse_item(&tool, &raw).map(|i| pinning::definition(&i)))
        .transpose()?;
    let new = pinning::definition(&parse_item(&tool, &new_item)?);
    Ok(ToolChange {
        id: row.try_get("id")?,
        gateway_id: row.try_get("gateway_id")?,
        kind: ChangeKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("change kind {kind:?}")))?,
        status: ChangeStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("change status {status:?}")))?,
        old_hash: row.try_get("old_hash")?,
        new_hash: row.try_get("new_hash")?,
        diff: pinning::diff(old.as_ref(), &new),
        old,
        new,
        findings: serde_json::from_str(&findings)
            .map_err(|e| StoreError::Corrupt(format!("findings: {e}")))?,
        detected_at: row.try_get("detected_at")?,
        decided_at: row.try_get("decided_at")?,
        decided_by: row.try_get("decided_by")?,
        tool,
    })
}

/// The policy of a gateway (defaults when none was set) and whether it is baselined.
async fn policy_tx(
    tx: &mut WriteTx<'_>,
    gateway_id: &str,
) -> Result<(PinPolicy, bool), StoreError> {
    let row = sqlx::query(
        "SELECT on_change, new_tools, first_discovery, baselined FROM gateway_pin_policies \
         WHERE gateway_id = $1",
    )
    .bind(gateway_id)
    .fetch_optional(tx.conn())
    .await?;
    row.as_ref()
        .map(parse_policy)
        .transpose()
        .map(|p| p.unwrap_or_default())
}

/// Writes a gateway's policy row (created with defaults if missing).
async fn write_policy_tx(
    tx: &mut WriteTx<'_>,
    gateway_id: &str,
    policy: PinPolicy,
    baselined: bool,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM gateway_pin_policies WHERE gateway_id = $1")
        .bind(gateway_id)
        .execute(tx.conn())
        .await?;
    sqlx::query(
        "INSERT INTO gateway_pin_policies (gateway_id, on_change, new_tools, first_discovery, \
         baselined, updated_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(gateway_id)
    .bind(policy.on_change.as_str())
    .bind(policy.new_tools.as_str())
    .bind(policy.first_discovery.as_str())
    .bind(i64::from(baselined))
    .bind(now())
    .execute(tx.conn())
    .await?;
    Ok(())
}

async fn write_pin(
    tx: &mut WriteTx<'_>,
    gateway_id: &str,
    item: &DiscoveredItem<ToolSpec>,
    hash: &str,
    by: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM tool_pins WHERE gateway_id = $1 AND original_name = $2")
        .bind(gateway_id)
        .bind(&item.original_name)
        .execute(tx.conn())
        .await?;
    sqlx::query(
        "INSERT INTO tool_pins (gateway_id, original_name, hash, item, withheld, approved_at, \
         approved_by) VALUES ($1, $2, $3, $4, 0, $5, $6)",
    )
    .bind(gateway_id)
    .bind(&item.original_name)
    .bind(hash)
    .bind(item_json(item))
    .bind(now())
    .bind(by.map(str::to_owned))
    .execute(tx.conn())
    .await?;
    Ok(())
}

async fn set_withheld(
    tx: &mut WriteTx<'_>,
    gateway_id: &str,
    tool: &str,
    withheld: bool,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE tool_pins SET withheld = $1 WHERE gateway_id = $2 AND original_name = $3")
        .bind(i64::from(withheld))
        .bind(gateway_id)
        .bind(tool)
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// Marks the pending changes of `tool` superseded (discovery found another definition).
async fn supersede(tx: &mut WriteTx<'_>, gateway_id: &str, tool: &str) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "UPDATE tool_changes SET status = 'superseded', decided_at = $1 \
         WHERE gateway_id = $2 AND original_name = $3 AND status = 'pending'",
    )
    .bind(now())
    .bind(gateway_id)
    .bind(tool)
    .execute(tx.conn())
    .await?;
    Ok(done.rows_affected())
}

struct Held<'a> {
    kind: ChangeKind,
    old: Option<(&'a str, &'a str)>,
    item: &'a DiscoveredItem<ToolSpec>,
    hash: &'a str,
    findings: &'a [Finding],
}

async fn record_change(
    tx: &mut WriteTx<'_>,
    gateway_id: &str,
    h: Held<'_>,
) -> Result<(), StoreError> {
    let findings = serde_json::to_string(h.findings)
        .map_err(|e| StoreError::Corrupt(format!("findings: {e}")))?;
    sqlx::query(&format!(
        "INSERT INTO tool_changes ({CHANGE_COLS}) \
         VALUES ($1, $2, $3, $4, 'pending', $5, $6, $7, $8, $9, $10, NULL, NULL)"
    ))
    .bind(new_id())
    .bind(gateway_id)
    .bind(&h.item.original_name)
    .bind(h.kind.as_str())
    .bind(h.old.map(|(hash, _)| hash.to_owned()))
    .bind(h.old.map(|(_, item)| item.to_owned()))
    .bind(h.hash)
    .bind(item_json(h.item))
    .bind(findings)
    .bind(now())
    .execute(tx.conn())
    .await?;
    tracing::warn!(
        gateway = %gateway_id,
        tool = %h.item.original_name,
        kind = h.kind.as_str(),
        flagged = !h.findings.is_empty(),
        "tool definition held for review"
    );
    tx.store.metrics().tool_change("held");
    Ok(())
}

/// What [`gate_tools`] lets through.
pub(super) struct Gated {
    /// The tools to merge: approved definitions only.
    pub tools: Vec<DiscoveredItem<ToolSpec>>,
    /// Whether something a snapshot contains changed here (a tool withheld or released).
    pub changed: bool,
}

struct PinRow {
    hash: String,
    item: String,
    withheld: bool,
}

/// Applies the gateway's pins to a discovery's tools, in the merge's transaction: an
/// approved (or policy-approved) definition passes, a changed pinned tool is replaced by
/// its approved definition and its change recorded (once per distinct definition: one
/// rejected stays rejected), a held new tool is left out.
pub(super) async fn gate_tools(
    tx: &mut WriteTx<'_>,
    gateway_id: &str,
    tools: &[DiscoveredItem<ToolSpec>],
) -> Result<Gated, StoreError> {
    let (policy, baselined) = policy_tx(tx, gateway_id).await?;
    let mut pins: HashMap<String, PinRow> = HashMap::new();
    for r in sqlx::query(
        "SELECT original_name, hash, item, withheld FROM tool_pins WHERE gateway_id = $1",
    )
    .bind(gateway_id)
    .fetch_all(tx.conn())
    .await?
    {
        pins.insert(
            r.try_get("original_name")?,
            PinRow {
                hash: r.try_get("hash")?,
                item: r.try_get("item")?,
                withheld: get_bool(&r, "withheld")?,
            },
        );
    }
    // Changes still open to a rediscovery: pending ones, and rejected ones (not raised again).
    let mut open: HashMap<(String, String), ChangeStatus> = HashMap::new();
    let mut pending_tools: HashSet<String> = HashSet::new();
    for r in sqlx::query(
        "SELECT original_name, new_hash, status FROM tool_changes \
         WHERE gateway_id = $1 AND status IN ('pending', 'rejected')",
    )
    .bind(gateway_id)
    .fetch_all(tx.conn())
    .await?
    {
        let tool: String = r.try_get("original_name")?;
        let status: String = r.try_get("status")?;
        let status = ChangeStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("change status {status:?}")))?;
        if status == ChangeStatus::Pending {
            pending_tools.insert(tool.clone());
        }
        // A pending change wins over a rejected one of the same definition.
        let e = open.entry((tool, r.try_get("new_hash")?)).or_insert(status);
        if status == ChangeStatus::Pending {
            *e = status;
        }
    }
    let mut out = Vec::with_capacity(tools.len());
    let mut changed = false;
    let mut touched = false;
    let mut listed: HashSet<&str> = HashSet::new();
    for t in tools {
        let name = t.original_name.as_str();
        if !listed.insert(name) {
            // Listed twice: the merge reports the collision.
            out.push(t.clone());
            continue;
        }
        let def = pinning::definition(t);
        let hash = pinning::hash(&def);
        let seen = open.get(&(name.to_owned(), hash.clone())).copied();
        match pins.get(name) {
            Some(pin) if pin.hash == hash => {
                // The approved definition (again): whatever was pending is moot.
                if pin.withheld {
                    set_withheld(tx, gateway_id, name, false).await?;
                    changed = true;
                }
                touched |= supersede(tx, gateway_id, name).await? > 0;
                out.push(t.clone());
            }
            Some(pin) => {
                let approved = parse_item(name, &pin.item)?;
                match seen {
                    Some(ChangeStatus::Pending) => {}
                    Some(_) => {
                        // Back to a definition already rejected: the approved one is served.
                        touched |= supersede(tx, gateway_id, name).await? > 0;
                        if pin.withheld {
                            set_withheld(tx, gateway_id, name, false).await?;
                            changed = true;
                        }
                    }
                    None => {
                        supersede(tx, gateway_id, name).await?;
                        let findings = pinning::scan(&def);
                        record_change(
                            tx,
                            gateway_id,
                            Held {
                                kind: ChangeKind::Modified,
                                old: Some((&pin.hash, &pin.item)),
                                item: t,
                                hash: &hash,
                                findings: &findings,
                            },
                        )
                        .await?;
                        touched = true;
                        let withhold = policy.on_change == OnChange::Withhold;
                        if withhold != pin.withheld {
                            set_withheld(tx, gateway_id, name, withhold).await?;
                            changed = true;
                        }
                    }
                }
                out.push(approved);
            }
            None => {
                let findings = pinning::scan(&def);
                let auto = if baselined {
                    policy.new_tools == NewTools::AutoApprove
                } else {
                    policy.first_discovery == FirstDiscovery::Approve
                };
                if auto && findings.is_empty() {
                    write_pin(tx, gateway_id, t, &hash, None).await?;
                    touched |= supersede(tx, gateway_id, name).await? > 0;
                    out.push(t.clone());
                } else if seen == Some(ChangeStatus::Rejected) {
                    touched |= supersede(tx, gateway_id, name).await? > 0;
                } else if seen.is_none() {
                    supersede(tx, gateway_id, name).await?;
                    record_change(
                        tx,
                        gateway_id,
                        Held {
                            kind: ChangeKind::New,
                            old: None,
                            item: t,
                            hash: &hash,
                            findings: &findings,
                        },
                    )
                    .await?;
                    touched = true;
                }
            }
        }
    }
    for tool in &pending_tools {
        if !listed.contains(tool.as_str()) {
            touched |= supersede(tx, gateway_id, tool).await? > 0;
        }
    }
    if !baselined {
        write_policy_tx(tx, gateway_id, policy, true).await?;
    }
    if touched {
        let n = pending_count(tx).await?;
        tx.store.metrics().set_pending_changes(n);
    }
    Ok(Gated {
        tools: out,
        changed,
    })
}

/// Pending changes in the whole registry, from inside a transaction.
pub(super) async fn pending_count(tx: &mut WriteTx<'_>) -> Result<i64, StoreError> {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM tool_changes WHERE status = 'pending'")
        .fetch_one(tx.conn())
        .await?;
    Ok(row.try_get("n")?)
}

impl Store {
    async fn require_gateway(&self, id: &str) -> Result<(), StoreError> {
        let row = sqlx::query("SELECT id FROM gateways WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        match row {
            Some(_) => Ok(()),
            None => Err(StoreError::NotFound {
                kind: "gateway",
                id: id.to_owned(),
            }),
        }
    }

    /// A gateway's pinning policy (the defaults when none was set).
    pub async fn pin_policy(&self, gateway_id: &str) -> Result<PinPolicy, StoreError> {
        self.require_gateway(gateway_id).await?;
        let row = sqlx::query(
            "SELECT on_change, new_tools, first_discovery, baselined FROM gateway_pin_policies \
             WHERE gateway_id = $1",
        )
        .bind(gateway_id)
        .fetch_optional(self.pool())
        .await?;
        Ok(row
            .as_ref()
            .map(parse_policy)
            .transpose()?
            .map(|(p, _)| p)
            .unwrap_or_default())
    }

    /// Sets fields of a gateway's pinning policy. Switching `on_change` applies at once to
    /// the tools with a pending change (withheld, or served approved again).
    pub async fn set_pin_policy(
        &self,
        gateway_id: &str,
        patch: PinPolicyPatch,
    ) -> Result<PinPolicy, StoreError> {
        let mut tx = self.begin_write().await?;
        let found = sqlx::query("SELECT id FROM gateways WHERE id = $1")
            .bind(gateway_id)
            .fetch_optional(tx.conn())
            .await?;
        if found.is_none() {
            return Err(StoreError::NotFound {
                kind: "gateway",
                id: gateway_id.to_owned(),
            });
        }
        let (cur, baselined) = policy_tx(&mut tx, gateway_id).await?;
        let next = PinPolicy {
            on_change: patch.on_change.unwrap_or(cur.on_change),
            new_tools: patch.new_tools.unwrap_or(cur.new_tools),
            first_discovery: patch.first_discovery.unwrap_or(cur.first_discovery),
        };
        write_policy_tx(&mut tx, gateway_id, next, baselined).await?;
        if next.on_change != cur.on_change {
            sqlx::query(
                "UPDATE tool_pins SET withheld = $1 WHERE gateway_id = $2 AND original_name IN \
                 (SELECT original_name FROM tool_changes WHERE gateway_id = $2 \
                  AND status = 'pending' AND kind = 'modified')",
            )
            .bind(i64::from(next.on_change == OnChange::Withhold))
            .bind(gateway_id)
            .execute(tx.conn())
            .await?;
        }
        tx.commit().await?;
        Ok(next)
    }

    /// A gateway's pinning for an export: `None` when no policy was ever set and nothing
    /// is pinned (the defaults).
    pub async fn pinning_state(
        &self,
        gateway_id: &str,
    ) -> Result<Option<PinningState>, StoreError> {
        let row = sqlx::query(
            "SELECT on_change, new_tools, first_discovery, baselined FROM gateway_pin_policies \
             WHERE gateway_id = $1",
        )
        .bind(gateway_id)
        .fetch_optional(self.pool())
        .await?;
        let (policy, baselined) = row
            .as_ref()
            .map(parse_policy)
            .transpose()?
            .unwrap_or_default();
        let rows = sqlx::query(
            "SELECT original_name, hash, item, withheld, approved_at, approved_by FROM tool_pins \
             WHERE gateway_id = $1 ORDER BY original_name",
        )
        .bind(gateway_id)
        .fetch_all(self.pool())
        .await?;
        if row.is_none() && rows.is_empty() {
            return Ok(None);
        }
        let mut pins = Vec::with_capacity(rows.len());
        for r in &rows {
            let tool: String = r.try_get("original_name")?;
            let raw: String = r.try_get("item")?;
            let item = parse_item(&tool, &raw)?;
            pins.push((
                ToolPin {
                    tool,
                    hash: r.try_get("hash")?,
                    withheld: get_bool(r, "withheld")?,
                    approved_at: r.try_get("approved_at")?,
                    approved_by: r.try_get("approved_by")?,
                },
                item,
            ));
        }
        Ok(Some(PinningState {
            policy,
            baselined,
            pins,
        }))
    }

    /// The approved definitions of a gateway's tools, by tool name.
    pub async fn tool_pins(&self, gateway_id: &str) -> Result<Vec<ToolPin>, StoreError> {
        self.require_gateway(gateway_id).await?;
        let rows = sqlx::query(
            "SELECT original_name, hash, withheld, approved_at, approved_by FROM tool_pins \
             WHERE gateway_id = $1 ORDER BY original_name",
        )
        .bind(gateway_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ToolPin {
                    tool: r.try_get("original_name")?,
                    hash: r.try_get("hash")?,
                    withheld: get_bool(r, "withheld")?,
                    approved_at: r.try_get("approved_at")?,
                    approved_by: r.try_get("approved_by")?,
                })
            })
            .collect()
    }

    /// A gateway's changes, newest first (`status`: only those).
    pub async fn tool_changes(
        &self,
        gateway_id: &str,
        status: Option<ChangeStatus>,
    ) -> Result<Vec<ToolChange>, StoreError> {
        self.require_gateway(gateway_id).await?;
        let rows =
            match status {
                Some(s) => sqlx::query(&format!(
                    "SELECT {CHANGE_COLS} FROM tool_changes WHERE gateway_id = $1 AND status = $2 \
                     ORDER BY detected_at DESC, id"
                ))
                .bind(gateway_id)
                .bind(s.as_str())
                .fetch_all(self.pool())
                .await?,
                None => {
                    sqlx::query(&format!(
                        "SELECT {CHANGE_COLS} FROM tool_changes WHERE gateway_id = $1 \
                     ORDER BY detected_at DESC, id"
                    ))
                    .bind(gateway_id)
                    .fetch_all(self.pool())
                    .await?
                }
            };
        Ok(rows
            .iter()
            .filter_map(|r| self.keep_parsed("tool_changes", r, row_to_change(r)))
            .collect())
    }

    /// One change of a gateway.
    pub async fn tool_change(&self, gateway_id: &str, id: &str) -> Result<ToolChange, ChangeError> {
        self.require_gateway(gateway_id).await?;
        let row = sqlx::query(&format!(
            "SELECT {CHANGE_COLS} FROM tool_changes WHERE id = $1 AND gateway_id = $2"
        ))
        .bind(id)
        .bind(gateway_id)
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| ChangeError::NotFound {
            gateway: gateway_id.to_owned(),
            id: id.to_owned(),
        })?;
        Ok(row_to_change(&row)?)
    }

    /// The ids of the catalog's tools withheld by their pin (left out of snapshots).
    pub async fn withheld_tool_ids(&self) -> Result<HashSet<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT t.id AS id FROM tools t JOIN tool_pins p \
             ON p.gateway_id = t.gateway_id AND p.original_name = t.original_name \
             WHERE p.withheld = 1",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| r.try_get("id").map_err(StoreError::from))
            .collect()
    }

    async fn open_change(
        tx: &mut WriteTx<'_>,
        gateway_id: &str,
        id: &str,
    ) -> Result<ToolChange, ChangeError> {
        let found = sqlx::query("SELECT id FROM gateways WHERE id = $1")
            .bind(gateway_id)
            .fetch_optional(tx.conn())
            .await?;
        if found.is_none() {
            return Err(StoreError::NotFound {
                kind: "gateway",
                id: gateway_id.to_owned(),
            }
            .into());
        }
        let row = sqlx::query(&format!(
            "SELECT {CHANGE_COLS} FROM tool_changes WHERE id = $1 AND gateway_id = $2"
        ))
        .bind(id)
        .bind(gateway_id)
        .fetch_optional(tx.conn())
        .await?
        .ok_or_else(|| ChangeError::NotFound {
            gateway: gateway_id.to_owned(),
            id: id.to_owned(),
        })?;
        let c = row_to_change(&row)?;
        if c.status != ChangeStatus::Pending {
            return Err(ChangeError::NotPending {
                id: id.to_owned(),
                status: c.status.as_str(),
            });
        }
        Ok(c)
    }

    /// Approves a pending change: its definition is pinned and goes into the catalog (a
    /// new tool is added under the gateway's exposed name). A flagged definition needs
    /// `force`. Nothing changes when it fails.
    pub async fn approve_change(
        &self,
        gateway_id: &str,
        id: &str,
        force: bool,
        by: &str,
        separator: &str,
    ) -> Result<ToolChange, ChangeError> {
        let mut tx = self.begin_write().await?;
        let c = Self::open_change(&mut tx, gateway_id, id).await?;
        // Scanned again on approval: the patterns may have grown since discovery.
        let findings = pinning::scan(&c.new);
        if !findings.is_empty() && !force {
            return Err(ChangeError::Flagged {
                id: id.to_owned(),
                findings,
            });
        }
        let raw: String = sqlx::query("SELECT new_item FROM tool_changes WHERE id = $1")
            .bind(id)
            .fetch_one(tx.conn())
            .await?
            .try_get("new_item")?;
        let item = parse_item(&c.tool, &raw)?;
        write_pin(&mut tx, gateway_id, &item, &c.new_hash, Some(by)).await?;
        let spec = Value::Object(item.spec.to_json()).to_string();
        let ts = now();
        let existing =
            sqlx::query("SELECT id FROM tools WHERE gateway_id = $1 AND original_name = $2")
                .bind(gateway_id)
                .bind(&c.tool)
                .fetch_optional(tx.conn())
                .await?;
        match existing {
            Some(r) => {
                let tool_id: String = r.try_get("id")?;
                sqlx::query(
                    "UPDATE tools SET description = $1, spec = $2, updated_at = $3, \
                     version = version + 1 WHERE id = $4",
                )
                .bind(item.description.clone())
                .bind(&spec)
                .bind(&ts)
                .bind(&tool_id)
                .execute(tx.conn())
                .await?;
            }
            None => {
                let g = sqlx::query("SELECT name, enabled, reachable FROM gateways WHERE id = $1")
                    .bind(gateway_id)
                    .fetch_one(tx.conn())
                    .await?;
                let gname: String = g.try_get("name")?;
                let gname =
                    GatewayName::parse(&gname).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let name = gname.expose(separator, &c.tool);
                ItemName::parse(&name).map_err(StoreError::from)?;
                let done = sqlx::query(
                    "INSERT INTO tools (id, name, original_name, gateway_id, uri, description, spec, \
                     tags, enabled, reachable, created_at, updated_at, version) \
                     VALUES ($1, $2, $3, $4, NULL, $5, $6, '[]', $7, $8, $9, $9, 1) \
                     ON CONFLICT (name) DO NOTHING",
                )
                .bind(new_id())
                .bind(&name)
                .bind(&c.tool)
                .bind(gateway_id)
                .bind(item.description.clone())
                .bind(&spec)
                .bind(i64::from(get_bool(&g, "enabled")?))
                .bind(i64::from(get_bool(&g, "reachable")?))
                .bind(&ts)
                .execute(tx.conn())
                .await?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::Duplicate { kind: "tool", name }.into());
                }
            }
        }
        sqlx::query(
            "UPDATE tool_changes SET status = 'approved', decided_at = $1, decided_by = $2 \
             WHERE id = $3",
        )
        .bind(&ts)
        .bind(by)
        .bind(id)
        .execute(tx.conn())
        .await?;
        let pending = pending_count(&mut tx).await?;
        tx.commit().await?;
        self.metrics().tool_change("approved");
        self.metrics().set_pending_changes(pending);
        self.tool_change(gateway_id, id).await
    }

    /// Rejects a pending change: the approved definition keeps being served (a withheld
    /// tool is served again), and the same definition is not raised again; a different one
    /// is a new change.
    pub async fn reject_change(
        &self,
        gateway_id: &str,
        id: &str,
        by: &str,
    ) -> Result<ToolChange, ChangeError> {
        let mut tx = self.begin_write().await?;
        let c = Self::open_change(&mut tx, gateway_id, id).await?;
        sqlx::query(
            "UPDATE tool_changes SET status = 'rejected', decided_at = $1, decided_by = $2 \
             WHERE id = $3",
        )
        .bind(now())
        .bind(by)
        .bind(id)
        .execute(tx.conn())
        .await?;
        set_withheld(&mut tx, gateway_id, &c.tool, false).await?;
        let pending = pending_count(&mut tx).await?;
        tx.commit().await?;
        self.metrics().tool_change("rejected");
        self.metrics().set_pending_changes(pending);
        self.tool_change(gateway_id, id).await
    }

    /// Sets the pending-changes gauge from the database (at start).
    pub async fn refresh_pending_changes_gauge(&self) -> Result<(), StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM tool_changes WHERE status = 'pending'")
            .fetch_one(self.pool())
            .await?;
        self.metrics().set_pending_changes(row.try_get("n")?);
        Ok(())
    }
}
