//! Session lifetimes at the standalone edge: the snapshot's `session.ttl_seconds` and
//! `session.idle_seconds` are the control plane's `--mcp-session-ttl` and
//! `--mcp-session-idle` (60 s to 30 days), not registry entries; its `keys` are ignored (the
//! control plane derives the sealing key from its encryption key).

use anyhow::{anyhow, bail};
use serde_json::Value;

/// The shortest lifetime the control plane takes.
const MIN_SECONDS: u64 = 60;
/// The longest.
const MAX_SECONDS: u64 = 30 * 86_400;

/// The `mcpgw serve` flags for the snapshot's `session` (none for the defaults).
pub(super) fn control_plane_flags(session: &Value) -> anyhow::Result<Vec<String>> {
    let mut flags = Vec::new();
    for (key, value) in session.as_object().into_iter().flatten() {
        let flag = match key.as_str() {
            "keys" => continue,
            "ttl_seconds" => "--mcp-session-ttl",
            "idle_seconds" => "--mcp-session-idle",
            other => bail!("session.{other} is not translated"),
        };
        let secs = value
            .as_u64()
            .ok_or_else(|| anyhow!("session.{key} is not a number of seconds: {value}"))?;
        if !(MIN_SECONDS..=MAX_SECONDS).contains(&secs) {
            bail!(
                "session.{key} {secs}: the control plane's {flag} takes {MIN_SECONDS} s to 30 days"
            );
        }
        flags.extend([flag.to_owned(), secs.to_string()]);
    }
    Ok(flags)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lifetimes_become_flags_and_what_the_control_plane_refuses_is_refused() {
        assert_eq!(
            control_plane_flags(&json!({"keys": ["k"], "idle_seconds": 60, "ttl_seconds": 3600}))
                .unwrap(),
            ["--mcp-session-idle", "60", "--mcp-session-ttl", "3600"]
        );
        assert!(
            control_plane_flags(&json!({"keys": ["k"]}))
                .unwrap()
                .is_empty()
        );
        for (session, why) in [
            (json!({"idle_seconds": 5}), "--mcp-session-idle takes 60 s"),
            (
                json!({"ttl_seconds": 40_000_000}),
                "--mcp-session-ttl takes 60 s",
            ),
            (json!({"idle_seconds": "1m"}), "not a number"),
        ] {
            let err = control_plane_flags(&session).unwrap_err();
            assert!(format!("{err}").contains(why), "{session}: {err}");
        }
    }
}
