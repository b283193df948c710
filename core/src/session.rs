//! Client sessions of virtual servers: the `Mcp-Session-Id` a client holds is a sealed token
//! naming the virtual server, the negotiated protocol version, when it was issued and when it
//! expires, and what the client declared in `initialize` (so any Envoy can open upstream
//! sessions on its behalf, with its capabilities).
//!
//! Sealed, not just signed: the payload is encrypted and authenticated with
//! ChaCha20-Poly1305 under a key from the snapshot, so a token can be neither forged nor
//! read. Which upstream sessions a client session holds is not in the token: they are opened
//! lazily, on the first call that needs them, and kept per Envoy in the session table
//! ([`table`]), which also remembers ended sessions and expires idle upstream sessions.
//!
//! Format: `mcpgw2.<key id>.<base64url(nonce ‖ ciphertext ‖ tag)>`. The key id (8 hex digits
//! derived from the key) lets several keys be accepted at once: the snapshot's first key
//! seals, every listed key opens, so a key can be rotated without ending live sessions.

pub mod table;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::Sha256;

const PREFIX: &str = "mcpgw2.";
/// Length of a key in bytes.
pub const KEY_BYTES: usize = 32;
/// Longest token accepted (header values beyond this are refused unread).
pub const MAX_TOKEN_BYTES: usize = 8192;
/// Largest `capabilities` plus `clientInfo` a token carries; larger declarations are
/// dropped from the token (upstream sessions then open with empty capabilities).
pub const MAX_CLIENT_BYTES: usize = 2048;
/// How far in the future a token's issue time may lie (clock skew between Envoys).
pub const CLOCK_SKEW_SECS: u64 = 300;

/// What a session token carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The session's id: 16 random bytes, hex. Keys the session table.
    #[serde(rename = "i")]
    pub id: String,
    /// The virtual server the session belongs to.
    #[serde(rename = "s")]
    pub server: String,
    /// The protocol version negotiated with the client.
    #[serde(rename = "v")]
    pub protocol_version: String,
    /// Issue time, seconds since the Unix epoch.
    #[serde(rename = "t")]
    pub issued_at: u64,
    /// Expiry, seconds since the Unix epoch.
    #[serde(rename = "e")]
    pub expires_at: u64,
    /// The client's `initialize` `capabilities`, as sent.
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Box<RawValue>>,
    /// The client's `initialize` `clientInfo`, as sent.
    #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
    pub client_info: Option<Box<RawValue>>,
    /// The principal the session belongs to (`crate::auth::Principal::digest`): a request
    /// with another principal's token (or none, or one when the session had none) cannot
    /// use it.
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
}

impl PartialEq for Claims {
    fn eq(&self, other: &Self) -> bool {
        let raw = |v: &Option<Box<RawValue>>| v.as_ref().map(|r| r.get().to_owned());
        self.id == other.id
            && self.server == other.server
            && self.protocol_version == other.protocol_version
            && self.issued_at == other.issued_at
            && self.expires_at == other.expires_at
            && raw(&self.capabilities) == raw(&other.capabilities)
            && raw(&self.client_info) == raw(&other.client_info)
            && self.principal == other.principal
    }
}

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// Not of the token format.
    #[error("malformed session id")]
    Malformed,
    /// Sealed with a key this gateway no longer (or never) had.
    #[error("session id sealed with an unknown key")]
    UnknownKey,
    /// The seal does not open (forged or tampered).
    #[error("session id does not verify")]
    BadSeal,
    /// Issued for another virtual server.
    #[error("session belongs to another virtual server")]
    WrongServer,
    /// Past its expiry (or issued in the future).
    #[error("session expired")]
    Expired,
    /// Ended by the client (`DELETE`).
    #[error("session was ended")]
    Ended,
    /// Opened by another principal (or used with another principal's token).
    #[error("session belongs to another principal")]
    OtherPrincipal,
}

struct SealKey {
    id: String,
    cipher: ChaCha20Poly1305,
}

/// The keys that seal and open session tokens (from the snapshot).
pub struct SessionKeys {
    /// The first seals; all open.
    keys: Vec<SealKey>,
    /// Tags the ids the gateway gives upstreams' requests to clients (derived from the
    /// sealing key, under its own label).
    tag_key: [u8; 32],
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        write!(f, "SessionKeys({ids:?})")
    }
}

/// The id of a key: 8 hex digits of HMAC-SHA256(key, "mcpgw/session-key-id"), so the id
/// names the key without revealing it.
pub fn key_id(key: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new(&Default::default()));
    mac.update(b"mcpgw/session-key-id");
    mac.finalize()
        .into_bytes()
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Decodes one standard-base64 key of exactly [`KEY_BYTES`] bytes.
pub fn decode_key(text: &str) -> Result<[u8; KEY_BYTES], String> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    let len = bytes.len();
    bytes
        .try_into()
        .map_err(|_| format!("{len} bytes; a key is exactly {KEY_BYTES}"))
}

impl SessionKeys {
    /// Keys from standard-base64 texts, the sealing key first.
    pub fn from_base64<S: AsRef<str>>(keys: &[S]) -> Result<SessionKeys, String> {
        if keys.is_empty() {
            return Err("at least one key is required".into());
        }
        let mut tag_key = [0u8; 32];
        let keys = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let key = decode_key(k.as_ref())?;
                if i == 0 {
                    tag_key = hmac(&key, b"mcpgw/server-request-id");
                }
                Ok(SealKey {
                    id: key_id(&key),
                    cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(SessionKeys { keys, tag_key })
    }

    /// Seals `claims` into a token, with `nonce` (12 random bytes, never reused).
    pub fn seal(&self, claims: &Claims, nonce: [u8; 12]) -> Option<String> {
        let key = self.keys.first()?;
        let payload = serde_json::to_vec(claims).ok()?;
        let aad = aad(&key.id);
        let sealed = key
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &payload,
                    aad: aad.as_bytes(),
                },
            )
            .ok()?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&sealed);
        Some(format!(
            "{PREFIX}{}.{}",
            key.id,
            URL_SAFE_NO_PAD.encode(blob)
        ))
    }

    /// Opens `token`, which must belong to `server` and be valid at `now` (seconds since
    /// the Unix epoch).
    pub fn open(&self, token: &str, server: &str, now: u64) -> Result<Claims, SessionError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(SessionError::Malformed);
        }
        let rest = token.strip_prefix(PREFIX).ok_or(SessionError::Malformed)?;
        let (id, blob) = rest.split_once('.').ok_or(SessionError::Malformed)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or(SessionError::UnknownKey)?;
        let blob = URL_SAFE_NO_PAD
            .decode(blob)
            .map_err(|_| SessionError::Malformed)?;
        if blob.len() < 12 + 16 {
            return Err(SessionError::Malformed);
        }
        let (nonce, sealed) = blob.split_at(12);
        let aad = aad(&key.id);
        let payload = key
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| SessionError::BadSeal)?;
        let claims: Claims =
            serde_json::from_slice(&payload).map_err(|_| SessionError::Malformed)?;
        if claims.server != server {
            return Err(SessionError::WrongServer);
        }
        if now >= claims.expires_at || claims.issued_at > now.saturating_add(CLOCK_SKEW_SECS) {
            return Err(SessionError::Expired);
        }
        Ok(claims)
    }
}

impl SessionKeys {
    /// A tag binding `parts` to this gateway's key: 12 characters of base64url.
    pub fn tag(&self, parts: &[&str]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.tag_key)
            .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new(&Default::default()));
        for p in parts {
            mac.update(p.as_bytes());
            mac.update(&[0]);
        }
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes().get(..9).unwrap_or_default())
    }
}

fn hmac(key: &[u8], label: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new(&Default::default()));
    mac.update(label);
    mac.finalize().into_bytes().into()
}

/// Associated data: binds a ciphertext to the token format and the key id it names.
fn aad(key_id: &str) -> String {
    format!("{PREFIX}{key_id}")
}

/// 16 random bytes as the hex id of a session.
pub fn session_id(random: [u8; 16]) -> String {
    random.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(bytes: &[u8]) -> SessionKeys {
        let texts: Vec<String> = bytes.iter().map(|b| STANDARD.encode([*b; 32])).collect();
        SessionKeys::from_base64(&texts).unwrap()
    }

    fn claims() -> Claims {
        Claims {
            id: session_id([9; 16]),
            server: "team".into(),
            protocol_version: "2025-06-18".into(),
            issued_at: 1_000,
            expires_at: 2_000,
            capabilities: RawValue::from_string(r#"{"sampling":{}}"#.into()).ok(),
            client_info: None,
            principal: Some("cHJpbmNpcGFs".into()),
        }
    }

    #[test]
    fn a_sealed_session_opens_with_its_key_only_and_is_unreadable() {
        let token = keys(&[1]).seal(&claims(), [3; 12]).unwrap();
        assert!(token.starts_with("mcpgw2."));
        assert!(
            token.bytes().all(|b| b.is_ascii_graphic()),
            "a valid header value"
        );
        assert!(!token.contains("team") && !token.contains("sampling"));
        let payload = token.rsplit('.').next().unwrap();
        let raw = URL_SAFE_NO_PAD.decode(payload).unwrap();
        assert!(
            !String::from_utf8_lossy(&raw).contains("team"),
            "encrypted, not encoded"
        );
        assert_eq!(keys(&[1]).open(&token, "team", 1_500).unwrap(), claims());
        assert_eq!(
            keys(&[2]).open(&token, "team", 1_500),
            Err(SessionError::UnknownKey)
        );
        assert_eq!(
            keys(&[1]).open(&token, "other", 1_500),
            Err(SessionError::WrongServer)
        );
    }

    #[test]
    fn tokens_expire_and_rotation_keeps_old_keys_opening() {
        let token = keys(&[1]).seal(&claims(), [3; 12]).unwrap();
        assert_eq!(
            keys(&[1]).open(&token, "team", 2_000),
            Err(SessionError::Expired)
        );
        assert_eq!(
            keys(&[1]).open(&token, "team", 1_000 - CLOCK_SKEW_SECS - 1),
            Err(SessionError::Expired),
            "issued in the future"
        );
        // A new key seals; the previous one still opens what it sealed.
        let rotated = keys(&[2, 1]);
        assert_eq!(rotated.open(&token, "team", 1_500).unwrap(), claims());
        let fresh = rotated.seal(&claims(), [4; 12]).unwrap();
        assert_ne!(
            fresh.split('.').nth(1),
            token.split('.').nth(1),
            "new key id"
        );
        assert_eq!(
            keys(&[1]).open(&fresh, "team", 1_500),
            Err(SessionError::UnknownKey)
        );
    }

    #[test]
    fn tampering_and_garbage_are_refused() {
        let k = keys(&[1]);
        let token = k.seal(&claims(), [3; 12]).unwrap();
        let mut flipped = token.clone();
        let last = if flipped.ends_with('A') { "B" } else { "A" };
        flipped.replace_range(flipped.len() - 1.., last);
        assert_eq!(k.open(&flipped, "team", 1_500), Err(SessionError::BadSeal));
        // Another key id on the same blob does not verify (it is in the associated data).
        let (_, blob) = token.rsplit_once('.').unwrap();
        let other_id = keys(&[2]).seal(&claims(), [3; 12]).unwrap();
        let (head, _) = other_id.rsplit_once('.').unwrap();
        assert_eq!(
            keys(&[2, 1]).open(&format!("{head}.{blob}"), "team", 1_500),
            Err(SessionError::BadSeal)
        );
        let id = key_id(&[1; 32]);
        for junk in [
            String::new(),
            "mcpgw2.".into(),
            format!("mcpgw2.{id}"),
            format!("mcpgw2.{id}.!!"),
            format!("mcpgw2.{id}.AAAA"),
            "mcpgw1.e30.AAAA".into(),
            "x".repeat(10_000),
        ] {
            assert_eq!(
                k.open(&junk, "team", 1_500),
                Err(SessionError::Malformed),
                "{junk:.30}"
            );
        }
    }

    #[test]
    fn keys_must_be_32_bytes_of_base64() {
        assert!(SessionKeys::from_base64(&[STANDARD.encode([0u8; 16])]).is_err());
        assert!(SessionKeys::from_base64(&[STANDARD.encode([0u8; 33])]).is_err());
        assert!(SessionKeys::from_base64(&["not base64!"]).is_err());
        assert!(SessionKeys::from_base64::<&str>(&[]).is_err());
        assert_eq!(key_id(&[1; 32]), key_id(&[1; 32]));
        assert_ne!(key_id(&[1; 32]), key_id(&[2; 32]));
    }
}
