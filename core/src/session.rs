//! Client sessions of virtual servers: the `Mcp-Session-Id` a client holds is a signed
//! token naming the virtual server and the session each upstream opened for it.
//!
//! Any Envoy worker or replica holding the snapshot's signing key can serve any request of
//! the session: nothing is stored at the edge. A token that does not verify is refused
//! (MCP: HTTP 404 for an unknown session), so a client can neither forge a session nor
//! point it at another server's upstream sessions.
//!
//! Format: `mcpgw1.<base64url(JSON payload)>.<base64url(HMAC-SHA256(payload))>`.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::BTreeMap;

const PREFIX: &str = "mcpgw1.";
/// Shortest signing key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 32;
/// Longest token accepted (header values beyond this are refused unread).
pub const MAX_TOKEN_BYTES: usize = 8192;

/// What a session token carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The virtual server the session belongs to.
    #[serde(rename = "s")]
    pub server: String,
    /// Upstream id → the `Mcp-Session-Id` that upstream assigned (absent: stateless).
    #[serde(rename = "u", default)]
    pub upstreams: BTreeMap<String, String>,
    /// The protocol version negotiated with the client.
    #[serde(rename = "v")]
    pub protocol_version: String,
}

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// Not of the token format.
    #[error("malformed session id")]
    Malformed,
    /// The signature does not match (forged or tampered).
    #[error("session id signature does not verify")]
    BadSignature,
    /// Signed for another virtual server.
    #[error("session belongs to another virtual server")]
    WrongServer,
}

/// The signing key (from the snapshot).
#[derive(Clone)]
pub struct SessionKey(Vec<u8>);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

impl SessionKey {
    /// Decodes a standard base64 key of at least [`MIN_KEY_BYTES`] bytes.
    pub fn from_base64(text: &str) -> Result<SessionKey, String> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|e| format!("not base64: {e}"))?;
        if bytes.len() < MIN_KEY_BYTES {
            return Err(format!(
                "{} bytes; at least {MIN_KEY_BYTES} are required",
                bytes.len()
            ));
        }
        Ok(SessionKey(bytes))
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new(&Default::default()))
    }

    /// Signs `session` into a token.
    pub fn seal(&self, session: &Session) -> String {
        let payload = serde_json::to_vec(session).unwrap_or_default();
        let mut mac = self.mac();
        mac.update(&payload);
        let tag = mac.finalize().into_bytes();
        format!(
            "{PREFIX}{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// Verifies `token` and returns its session, which must belong to `server`.
    pub fn open(&self, token: &str, server: &str) -> Result<Session, SessionError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(SessionError::Malformed);
        }
        let rest = token.strip_prefix(PREFIX).ok_or(SessionError::Malformed)?;
        let (payload, tag) = rest.split_once('.').ok_or(SessionError::Malformed)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| SessionError::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| SessionError::Malformed)?;
        let mut mac = self.mac();
        mac.update(&payload);
        mac.verify_slice(&tag)
            .map_err(|_| SessionError::BadSignature)?;
        let session: Session =
            serde_json::from_slice(&payload).map_err(|_| SessionError::Malformed)?;
        if session.server != server {
            return Err(SessionError::WrongServer);
        }
        Ok(session)
    }
}

/// Derives a session signing key (standard base64, 32 bytes) from another secret, so a
/// control plane can hand every Envoy the same key without storing a second secret.
pub fn derive_signing_key(master: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(master)
        .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new(&Default::default()));
    mac.update(b"mcpgw/session-signing-key/v1");
    STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SessionKey {
        SessionKey::from_base64(&STANDARD.encode([byte; 32])).unwrap()
    }

    fn session() -> Session {
        Session {
            server: "team".into(),
            upstreams: BTreeMap::from([("a".into(), "sid-1".into())]),
            protocol_version: "2025-06-18".into(),
        }
    }

    #[test]
    fn a_sealed_session_opens_with_the_same_key_only() {
        let token = key(1).seal(&session());
        assert!(token.starts_with("mcpgw1."));
        assert!(
            token.bytes().all(|b| b.is_ascii_graphic()),
            "a valid header value"
        );
        assert_eq!(key(1).open(&token, "team").unwrap(), session());
        assert_eq!(key(2).open(&token, "team"), Err(SessionError::BadSignature));
        assert_eq!(key(1).open(&token, "other"), Err(SessionError::WrongServer));
    }

    #[test]
    fn tampering_and_garbage_are_refused() {
        let k = key(1);
        let token = k.seal(&session());
        let (head, tag) = token.rsplit_once('.').unwrap();
        // Another payload under the original signature.
        let mut forged = session();
        forged.upstreams.insert("a".into(), "someone-else".into());
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        let swapped = format!("{PREFIX}{forged_payload}.{tag}");
        assert_eq!(k.open(&swapped, "team"), Err(SessionError::BadSignature));
        // One flipped signature character.
        let mut flipped = tag.to_owned();
        let last = if flipped.ends_with('A') { "B" } else { "A" };
        flipped.replace_range(flipped.len() - 1.., last);
        assert_eq!(
            k.open(&format!("{head}.{flipped}"), "team"),
            Err(SessionError::BadSignature)
        );
        for junk in [
            "",
            "mcpgw1.",
            "mcpgw1.x",
            "mcpgw1.!!.??",
            "uuid-4242",
            &"x".repeat(10_000),
        ] {
            assert_eq!(
                k.open(junk, "team"),
                Err(SessionError::Malformed),
                "{junk:.20}"
            );
        }
    }

    #[test]
    fn derived_keys_are_stable_usable_and_distinct() {
        let a = derive_signing_key(b"master one");
        assert_eq!(a, derive_signing_key(b"master one"));
        assert_ne!(a, derive_signing_key(b"master two"));
        let k = SessionKey::from_base64(&a).unwrap();
        assert_eq!(k.open(&k.seal(&session()), "team").unwrap(), session());
    }

    #[test]
    fn short_or_invalid_keys_are_refused() {
        assert!(SessionKey::from_base64(&STANDARD.encode([0u8; 16])).is_err());
        assert!(SessionKey::from_base64("not base64!").is_err());
    }
}
