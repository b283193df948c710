//! The session table: which upstream sessions each client session holds, which client
//! sessions were ended, and when each upstream session was last used.
//!
//! It lives in proxy-wasm shared data, so every worker of one Envoy sees the same table (an
//! Envoy replica has its own: with several replicas, route a client's requests to one
//! replica by its `Mcp-Session-Id`, or each replica opens its own upstream sessions).
//! Shared data cannot delete a key, so the table is a fixed set of slots (keys), each
//! holding the records of the sessions whose id hashes to it; updates are compare-and-swap
//! on a slot, and expired records are removed from their slot by the periodic sweep, so the
//! table's size follows the live sessions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Number of slots.
pub const SLOTS: u32 = 4096;
/// Prefix of a slot's shared-data key.
pub const KEY_PREFIX: &str = "mcpgw.sessions.";
/// Most records one slot holds (so at most `SLOTS × MAX_RECORDS` sessions with upstream
/// state per Envoy, and a slot read stays small). A new session in a full slot evicts the
/// live one used least recently (its upstream sessions are left to the upstream's own
/// expiry, and its next call opens new ones); ended sessions are evicted only when the slot
/// holds nothing else.
pub const MAX_RECORDS: usize = 32;
/// An upstream session used within this many seconds is not re-stamped (a shared-data
/// write per call would cost more than the precision is worth).
pub const TOUCH_AFTER_SECS: u64 = 60;

/// The shared-data key of the slot that holds session `id` (hex).
pub fn slot_key(id: &str) -> String {
    let n = id
        .get(..8)
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .unwrap_or(0);
    format!("{KEY_PREFIX}{}", n % SLOTS)
}

/// One upstream session a client session holds at one upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamSession {
    /// The upstream's `Mcp-Session-Id`; `None` for a stateless upstream (initialized,
    /// nothing to carry).
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Protocol version it was opened with (its `DELETE` carries it).
    #[serde(rename = "v")]
    pub protocol_version: String,
    /// Last use, seconds since the Unix epoch.
    #[serde(rename = "l")]
    pub last_used: u64,
}

/// One client session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The session's id.
    #[serde(rename = "i")]
    pub id: String,
    /// When the client's token expires: the record goes then.
    #[serde(rename = "e")]
    pub expires_at: u64,
    /// The client ended the session (`DELETE`): its token is refused until it expires.
    #[serde(rename = "d", default, skip_serializing_if = "std::ops::Not::not")]
    pub ended: bool,
    /// Upstream id → its session.
    #[serde(rename = "u", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub upstreams: BTreeMap<String, UpstreamSession>,
    /// The log level the client set (`logging/setLevel`): upstream sessions opened later
    /// are told it too.
    #[serde(rename = "g", default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
}

impl Record {
    /// When any of its upstream sessions was last used (0 for none).
    pub fn last_used(&self) -> u64 {
        self.upstreams
            .values()
            .map(|u| u.last_used)
            .max()
            .unwrap_or(0)
    }

    /// A record with no upstream sessions.
    pub fn new(id: &str, expires_at: u64) -> Record {
        Record {
            id: id.to_owned(),
            expires_at,
            ended: false,
            upstreams: BTreeMap::new(),
            log_level: None,
        }
    }
}

/// The records of one slot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// Records, at most one per session id.
    #[serde(rename = "r", default)]
    pub records: Vec<Record>,
}

/// An upstream session the sweep ended: the gateway sends it a `DELETE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// Upstream id.
    pub upstream: String,
    /// Its session id.
    pub session_id: String,
    /// The protocol version to send.
    pub protocol_version: String,
}

impl Slot {
    /// Reads a slot's value; an absent or unreadable one is empty (the table is the
    /// gateway's own, so unreadable means a format from another build: start afresh).
    pub fn parse(bytes: Option<&[u8]>) -> Slot {
        bytes
            .filter(|b| !b.is_empty())
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_default()
    }

    /// The value to store.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Session `id`'s record.
    pub fn get(&self, id: &str) -> Option<&Record> {
        self.records.iter().find(|r| r.id == id)
    }

    /// Session `id`'s record, created (expiring at `expires_at`) if absent; a full slot
    /// makes room by evicting the record used least recently.
    pub fn entry(&mut self, id: &str, expires_at: u64) -> &mut Record {
        let at = match self.records.iter().position(|r| r.id == id) {
            Some(at) => at,
            None => {
                if self.records.len() >= MAX_RECORDS
                    && let Some(oldest) = (0..self.records.len()).min_by_key(|&i| {
                        // Ended sessions go last: evicting one would accept its token again.
                        self.records
                            .get(i)
                            .map_or((false, 0), |r| (r.ended, r.last_used()))
                    })
                {
                    self.records.remove(oldest);
                }
                self.records.push(Record::new(id, expires_at));
                self.records.len() - 1
            }
        };
        // `at` is in bounds: found, or just pushed.
        #[allow(clippy::indexing_slicing)]
        &mut self.records[at]
    }

    /// Removes records past their expiry and upstream sessions unused for `idle_secs`,
    /// and returns the upstream sessions that must be ended (of both).
    pub fn sweep(&mut self, now: u64, idle_secs: u64) -> Vec<Ended> {
        let mut ended = Vec::new();
        let mut end = |up: &str, s: &UpstreamSession| {
            if let Some(sid) = &s.session_id {
                ended.push(Ended {
                    upstream: up.to_owned(),
                    session_id: sid.clone(),
                    protocol_version: s.protocol_version.clone(),
                });
            }
        };
        self.records.retain_mut(|r| {
            if now >= r.expires_at {
                for (up, s) in &r.upstreams {
                    end(up, s);
                }
                return false;
            }
            r.upstreams.retain(|up, s| {
                let idle = now.saturating_sub(s.last_used) >= idle_secs;
                if idle {
                    end(up, s);
                }
                !idle
            });
            true
        });
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(sid: Option<&str>, last: u64) -> UpstreamSession {
        UpstreamSession {
            session_id: sid.map(str::to_owned),
            protocol_version: "2025-06-18".into(),
            last_used: last,
        }
    }

    #[test]
    fn slots_are_stable_bounded_and_spread() {
        assert_eq!(slot_key("0000000a55"), slot_key("0000000a55"));
        assert_eq!(slot_key("00000001ff"), "mcpgw.sessions.1");
        assert_eq!(
            slot_key("ffffffffff"),
            format!("mcpgw.sessions.{}", u32::MAX % SLOTS)
        );
        assert_eq!(slot_key("not hex"), "mcpgw.sessions.0");
        let distinct: std::collections::HashSet<String> = (0u32..64)
            .map(|i| slot_key(&format!("{:08x}", i * 977)))
            .collect();
        assert_eq!(distinct.len(), 64);
    }

    #[test]
    fn a_slot_round_trips_and_reads_garbage_as_empty() {
        let mut slot = Slot::default();
        slot.entry("a", 100)
            .upstreams
            .insert("u1".into(), up(Some("s1"), 5));
        slot.entry("b", 200).ended = true;
        slot.entry("a", 999)
            .upstreams
            .insert("u2".into(), up(None, 6));
        assert_eq!(slot.records.len(), 2, "one record per id");
        assert_eq!(
            slot.get("a").map(|r| r.expires_at),
            Some(100),
            "entry keeps the first expiry"
        );
        let again = Slot::parse(Some(&slot.to_bytes()));
        assert_eq!(again, slot);
        assert_eq!(Slot::parse(None), Slot::default());
        assert_eq!(Slot::parse(Some(b"")), Slot::default());
        assert_eq!(Slot::parse(Some(b"{\"x\":")), Slot::default());
    }

    #[test]
    fn a_full_slot_evicts_the_session_used_least_recently() {
        let mut slot = Slot::default();
        for i in 0..MAX_RECORDS {
            let used = 100 + i as u64;
            slot.entry(&format!("s{i}"), 1_000)
                .upstreams
                .insert("u".into(), up(Some("x"), if i == 7 { 1 } else { used }));
        }
        slot.entry("s3", 1_000).ended = true;
        slot.entry("s3", 1_000).upstreams.clear();
        slot.entry("new", 1_000);
        assert_eq!(slot.records.len(), MAX_RECORDS);
        assert!(slot.get("s7").is_none(), "the least recently used went");
        assert!(
            slot.get("s3").is_some(),
            "an ended session outlives live ones"
        );
        assert!(slot.get("new").is_some() && slot.get("s0").is_some());
    }

    #[test]
    fn the_sweep_ends_idle_upstream_sessions_and_expired_records() {
        let mut slot = Slot::default();
        let r = slot.entry("live", 1_000);
        r.upstreams.insert("busy".into(), up(Some("s-busy"), 950));
        r.upstreams.insert("idle".into(), up(Some("s-idle"), 100));
        r.upstreams.insert("stateless".into(), up(None, 100));
        let r = slot.entry("old", 900);
        r.upstreams.insert("x".into(), up(Some("s-old"), 899));
        let ended = slot.sweep(960, 600);
        let ids: Vec<&str> = ended.iter().map(|e| e.session_id.as_str()).collect();
        assert_eq!(ids, ["s-idle", "s-old"]);
        assert_eq!(slot.records.len(), 1);
        let live = slot.get("live").unwrap();
        assert_eq!(live.upstreams.keys().collect::<Vec<_>>(), ["busy"]);
        assert!(
            slot.sweep(960, 600).is_empty(),
            "a second sweep finds nothing"
        );
    }
}
