//! Encryption at rest of upstream credentials (AES-256-GCM, random 96-bit nonces), and the
//! other keys the control plane derives from its one configured key.
//!
//! Every purpose gets its own key, derived with HKDF-SHA256 under a distinct label
//! ([`SecretBox::derive`]), so a key that leaks from one place (an Envoy's snapshot, a
//! relay route) opens nothing else.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine as _;

use crate::model::Credentials;

/// Associated data binding ciphertexts to their purpose (and format version).
const AAD: &[u8] = b"mcpgw/gateway-credentials/v1";
/// Prefix of sealed values, so a future format can coexist.
const PREFIX: &str = "v1:";
/// The fixed key of `--dev` mode. Never secret: dev mode is for laptops and tests only.
const DEV_KEY: [u8; 32] = *b"mcpgw-dev-mode-insecure-key-0001";

/// Errors of sealing and opening.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The configured key is malformed.
    #[error(
        "MCPGW_ENCRYPTION_KEY must be 32 bytes, base64 or hex encoded (e.g. `openssl rand -base64 32`)"
    )]
    BadKey,
    /// A sealed value could not be opened (wrong key or tampered data).
    #[error("stored credentials cannot be decrypted with the configured key")]
    Open,
    /// Encryption failed.
    #[error("encryption failed")]
    Seal,
}

/// HKDF label of the secret the relay route adds and the relay checks.
const RELAY_AUTH_LABEL: &str = "mcpgw/relay-auth/v1";
/// HKDF label of the key that seals virtual-server session tokens at the edge.
const SESSION_KEY_LABEL: &str = "mcpgw/session-key/v2";

/// HKDF-SHA256 of `master` with `label` as the info, 32 bytes.
fn derive(master: &[u8; 32], label: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    // HKDF-SHA256 can expand up to 255 * 32 bytes: 32 never fails.
    let _ = hkdf::Hkdf::<sha2::Sha256>::new(None, master).expand(label.as_bytes(), &mut out);
    out
}

/// Seals and opens credentials with one key.
#[derive(Clone)]
pub struct SecretBox {
    /// The configured key, kept only to derive purpose keys from.
    master: [u8; 32],
    cipher: Aes256Gcm,
    /// Key that seals virtual-server sessions at the edge, derived from this one.
    session_key: String,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    /// Builds from an encoded 32-byte key: standard base64 or 64 hex digits.
    pub fn from_encoded_key(encoded: &str) -> Result<Self, CryptoError> {
        let encoded = encoded.trim();
        let bytes = if encoded.len() == 64 && encoded.chars().all(|c| c.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&encoded[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| CryptoError::BadKey)?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|_| CryptoError::BadKey)?
        };
        let key: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::BadKey)?;
        Ok(Self::from_key(key))
    }

    /// Builds from raw key bytes.
    pub fn from_key(key: [u8; 32]) -> Self {
        Self {
            master: key,
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key)),
            session_key: base64::engine::general_purpose::STANDARD
                .encode(derive(&key, SESSION_KEY_LABEL)),
        }
    }

    /// A 32-byte key for one purpose, derived from the configured key with HKDF-SHA256
    /// (RFC 5869; no salt, `label` as the info). Distinct labels give independent keys.
    pub fn derive(&self, label: &str) -> [u8; 32] {
        derive(&self.master, label)
    }

    /// The secret the relay route adds to every request it sends to the relay
    /// ([`mcpgw_core::edge::RELAY_AUTH_HEADER`]) and the relay checks: hex, so it is a
    /// valid header value.
    pub fn relay_auth(&self) -> String {
        self.derive(RELAY_AUTH_LABEL)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The session key every Envoy receives in its snapshot (base64): derived from the
    /// encryption key under its own label, so it is stable across restarts and replicas
    /// sharing the key, and opens nothing else.
    pub fn session_key(&self) -> &str {
        &self.session_key
    }

    /// The insecure, well-known key used in `--dev` mode.
    pub fn dev() -> Self {
        Self::from_key(DEV_KEY)
    }

    /// Encrypts `plaintext` into `v1:<base64(nonce || ciphertext)>`.
    pub fn seal(&self, plaintext: &[u8]) -> Result<String, CryptoError> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ct = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: AAD,
                },
            )
            .map_err(|_| CryptoError::Seal)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(out)
        ))
    }

    /// Decrypts a value produced by [`SecretBox::seal`].
    pub fn open(&self, sealed: &str) -> Result<Vec<u8>, CryptoError> {
        let raw = sealed.strip_prefix(PREFIX).ok_or(CryptoError::Open)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(raw)
            .map_err(|_| CryptoError::Open)?;
        if bytes.len() < 12 + 16 {
            return Err(CryptoError::Open);
        }
        let (nonce, ct) = bytes.split_at(12);
        self.cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: AAD })
            .map_err(|_| CryptoError::Open)
    }

    /// Seals credentials.
    pub fn seal_credentials(&self, c: &Credentials) -> Result<String, CryptoError> {
        let json = serde_json::to_vec(c).map_err(|_| CryptoError::Seal)?;
        self.seal(&json)
    }

    /// Opens sealed credentials.
    pub fn open_credentials(&self, sealed: &str) -> Result<Credentials, CryptoError> {
        let bytes = self.open(sealed)?;
        serde_json::from_slice(&bytes).map_err(|_| CryptoError::Open)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper_detection() {
        let b = SecretBox::from_key([7; 32]);
        let c = Credentials::Bearer {
            token: "s3cret".into(),
        };
        let sealed = b.seal_credentials(&c).unwrap();
        assert!(!sealed.contains("s3cret"));
        assert_eq!(b.open_credentials(&sealed).unwrap(), c);
        // Two seals of the same value differ (random nonce).
        assert_ne!(sealed, b.seal_credentials(&c).unwrap());
        // Another key cannot open it.
        assert!(SecretBox::from_key([8; 32]).open(&sealed).is_err());
        // A flipped bit is detected.
        let mut raw = sealed.clone().into_bytes();
        let last = raw.len() - 2;
        raw[last] = if raw[last] == b'A' { b'B' } else { b'A' };
        assert!(b.open(&String::from_utf8(raw).unwrap()).is_err());
    }

    #[test]
    fn derived_keys_are_stable_and_distinct_per_label_and_master() {
        let a = SecretBox::from_key([1; 32]);
        let b = SecretBox::from_key([2; 32]);
        assert_eq!(a.derive("x"), a.derive("x"));
        assert_ne!(a.derive("x"), a.derive("y"));
        assert_ne!(a.derive("x"), b.derive("x"));
        assert_ne!(a.derive("x"), [1; 32], "not the master key itself");
        let auth = a.relay_auth();
        assert_eq!(auth.len(), 64);
        assert!(auth.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(auth, b.relay_auth());
    }

    #[test]
    fn key_encodings() {
        let cases: &[(&str, &str, bool)] = &[
            (
                "base64",
                "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
                true,
            ),
            (
                "hex",
                "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
                true,
            ),
            ("too short", "AAECAw==", false),
            ("garbage", "not a key!", false),
        ];
        for (name, key, ok) in cases {
            assert_eq!(SecretBox::from_encoded_key(key).is_ok(), *ok, "{name}");
        }
    }
}
