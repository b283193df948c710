//! Encryption at rest of upstream credentials (AES-256-GCM, random 96-bit nonces), and the
//! other keys the control plane derives from its one configured key.
//!
//! Every purpose gets its own key, derived with HKDF-SHA256 under a distinct label
//! ([`SecretBox::derive`]), so a key that leaks from one place (an Envoy's snapshot, a
//! relay route) opens nothing else.
//!
//! Sealed credentials (`v2:`) are bound to what they were given for: the AEAD's associated
//! data is the purpose label, the gateway's id and the origin (scheme, host, port) of its
//! URL ([`CredentialBinding`]). A value copied to another gateway's row, or left in place
//! when the URL moves to another origin, does not open: credentials reach only the server
//! they were entered for. Values of the first format (`v1:`, sealed with the configured key
//! itself and a fixed associated data) still open, through
//! [`SecretBox::open_legacy_credentials`]: the store re-seals them as `v2:` at start and on
//! first read (`store::Store::gateway_credentials`).
//!
//! Rotation: the keys an operator retires are given as previous keys
//! (`MCPGW_PREVIOUS_ENCRYPTION_KEYS`, [`SecretBox::with_previous`]). Credentials sealed
//! with one still open and are re-sealed with the current key (at start, and on first
//! read); sessions signed with one's session key still open at the edge until they expire;
//! the relay admits requests carrying one's relay secret. New values use the current key
//! only. Once every stored value is re-sealed and the session lifetime has passed, the
//! previous key can be dropped (`docs/security.md`).

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine as _;

use crate::model::Credentials;

/// Associated data of the first format: purpose and version only, no binding.
const LEGACY_AAD: &[u8] = b"mcpgw/gateway-credentials/v1";
/// Prefix of first-format values.
const LEGACY_PREFIX: &str = "v1:";
/// HKDF label of the credential key, and the first part of every binding's associated data.
const CREDENTIALS_LABEL: &str = "mcpgw/gateway-credentials/v2";
/// Prefix of sealed values.
const PREFIX: &str = "v2:";
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
    /// A sealed value could not be opened: another key, tampered data, or bound to another
    /// gateway or origin.
    #[error(
        "stored credentials cannot be opened: sealed with another key, altered, or bound to another gateway or URL origin"
    )]
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

/// What sealed credentials are bound to: the gateway they belong to and the origin of its
/// URL (`UpstreamUrl::origin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CredentialBinding<'a> {
    /// The gateway's id.
    pub gateway_id: &'a str,
    /// `scheme://host:port` of its URL.
    pub origin: &'a str,
}

impl CredentialBinding<'_> {
    /// The associated data: label, id and origin, each length-prefixed so no two bindings
    /// encode alike.
    fn aad(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for part in [CREDENTIALS_LABEL, self.gateway_id, self.origin] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part.as_bytes());
        }
        out
    }
}

/// Seals and opens credentials; derives the other purpose keys.
#[derive(Clone)]
pub struct SecretBox {
    /// The configured key, kept only to derive purpose keys from.
    master: [u8; 32],
    /// The first format's cipher (the configured key itself): opens `v1:` values only.
    legacy: Aes256Gcm,
    /// The credential cipher, keyed by `derive(CREDENTIALS_LABEL)`.
    cipher: Aes256Gcm,
    /// Key that seals virtual-server sessions at the edge, derived from this one.
    session_key: String,
    /// Retired keys, newest first: they open what they sealed, and seal nothing.
    previous: Vec<SecretBox>,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    /// Builds from an encoded 32-byte key: standard base64 or 64 hex digits.
    pub fn from_encoded_key(encoded: &str) -> Result<Self, CryptoError> {
        Ok(Self::from_key(decode_key(encoded)?))
    }

    /// Adds retired keys (comma-separated, each encoded as for
    /// [`from_encoded_key`](Self::from_encoded_key), newest first): what they sealed still
    /// opens, and is re-sealed with the current key by the store. Blank items are ignored;
    /// a malformed one fails, naming its position.
    pub fn with_previous(mut self, encoded: &str) -> Result<Self, PreviousKeyError> {
        for (i, item) in encoded.split(',').map(str::trim).enumerate() {
            if item.is_empty() {
                continue;
            }
            let key = decode_key(item).map_err(|_| PreviousKeyError(i + 1))?;
            if key != self.master {
                self.previous.push(Self::from_key(key));
            }
        }
        Ok(self)
    }

    /// How many retired keys this box still opens with.
    pub fn previous_keys(&self) -> usize {
        self.previous.len()
    }
}

/// A malformed item of `MCPGW_PREVIOUS_ENCRYPTION_KEYS` (1-based position; the value is
/// never printed).
#[derive(Debug, thiserror::Error)]
#[error("MCPGW_PREVIOUS_ENCRYPTION_KEYS item {0} is not a 32-byte key, base64 or hex encoded")]
pub struct PreviousKeyError(pub usize);

/// Decodes a 32-byte key: standard base64 or 64 hex digits.
fn decode_key(encoded: &str) -> Result<[u8; 32], CryptoError> {
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
    bytes.try_into().map_err(|_| CryptoError::BadKey)
}

impl SecretBox {
    /// Builds from raw key bytes.
    pub fn from_key(key: [u8; 32]) -> Self {
        let mut b = Self {
            master: key,
            legacy: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key)),
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key)),
            session_key: base64::engine::general_purpose::STANDARD
                .encode(derive(&key, SESSION_KEY_LABEL)),
            previous: Vec::new(),
        };
        let credentials_key = b.derive(CREDENTIALS_LABEL);
        b.cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&credentials_key));
        b
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

    /// The session keys every Envoy receives: the current one (which seals) first, then
    /// the previous keys' (which still open sessions issued before a rotation).
    pub fn session_keys(&self) -> Vec<String> {
        std::iter::once(self)
            .chain(&self.previous)
            .map(|b| b.session_key.clone())
            .collect()
    }

    /// The relay secrets the relay admits: the current one (which the routes add) and the
    /// previous keys' (routes of replicas that have not rotated yet).
    pub fn relay_auths(&self) -> Vec<String> {
        std::iter::once(self)
            .chain(&self.previous)
            .map(SecretBox::relay_auth)
            .collect()
    }

    /// The insecure, well-known key used in `--dev` mode.
    pub fn dev() -> Self {
        Self::from_key(DEV_KEY)
    }

    /// Seals credentials for `binding`: `v2:<base64(nonce || ciphertext)>`.
    pub fn seal_credentials(
        &self,
        c: &Credentials,
        binding: CredentialBinding<'_>,
    ) -> Result<String, CryptoError> {
        let json = serde_json::to_vec(c).map_err(|_| CryptoError::Seal)?;
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let aad = binding.aad();
        let ct = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: &json,
                    aad: &aad,
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

    /// Opens credentials sealed for `binding` with the current key or a previous one;
    /// anything else (another gateway, another origin, an unknown key, a `v1:` value) is
    /// [`CryptoError::Open`].
    pub fn open_credentials(
        &self,
        sealed: &str,
        binding: CredentialBinding<'_>,
    ) -> Result<Credentials, CryptoError> {
        self.open_current_or_previous(sealed, binding)
            .map(|(creds, _)| creds)
    }

    /// As [`open_credentials`](Self::open_credentials), and whether a previous key opened
    /// them (they are then to be re-sealed with the current one).
    pub fn open_current_or_previous(
        &self,
        sealed: &str,
        binding: CredentialBinding<'_>,
    ) -> Result<(Credentials, bool), CryptoError> {
        let raw = sealed.strip_prefix(PREFIX).ok_or(CryptoError::Open)?;
        let aad = binding.aad();
        std::iter::once(self)
            .chain(&self.previous)
            .enumerate()
            .find_map(|(i, b)| {
                open_with(&b.cipher, raw, &aad)
                    .ok()
                    .map(|plain| (plain, i > 0))
            })
            .ok_or(CryptoError::Open)
            .and_then(|(plain, stale)| {
                let creds = serde_json::from_slice(&plain).map_err(|_| CryptoError::Open)?;
                Ok((creds, stale))
            })
    }

    /// Seals `plain` under the key derived for `label`, bound to `aad` (another label or
    /// another `aad` does not open it): `base64(nonce || ciphertext)`. For the control
    /// plane's own secrets (the JWT signing keys), not for credentials.
    pub fn seal_for(&self, label: &str, aad: &[u8], plain: &[u8]) -> Result<String, CryptoError> {
        let key = self.derive(label);
        let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key));
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ct = cipher
            .encrypt(&nonce, Payload { msg: plain, aad })
            .map_err(|_| CryptoError::Seal)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(base64::engine::general_purpose::STANDARD.encode(out))
    }

    /// Opens what [`SecretBox::seal_for`] sealed with the same `label` and `aad`, with the
    /// current key or a previous one; also says whether a previous one opened it (the
    /// caller then seals it again, or replaces it, before that key is dropped).
    pub fn open_for(
        &self,
        label: &str,
        aad: &[u8],
        sealed: &str,
    ) -> Result<(Vec<u8>, bool), CryptoError> {
        std::iter::once(self)
            .chain(&self.previous)
            .enumerate()
            .find_map(|(i, b)| {
                let key = b.derive(label);
                let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key));
                open_with(&cipher, sealed, aad)
                    .ok()
                    .map(|plain| (plain, i > 0))
            })
            .ok_or(CryptoError::Open)
    }

    /// Whether `sealed` is of the first, unbound format (to re-seal).
    pub fn is_legacy(sealed: &str) -> bool {
        sealed.starts_with(LEGACY_PREFIX)
    }

    /// Opens a first-format (`v1:`) value: only to re-seal it bound (the store does, at
    /// start and on first read). It is not bound to anything, so it must not be used as is.
    pub fn open_legacy_credentials(&self, sealed: &str) -> Result<Credentials, CryptoError> {
        let raw = sealed
            .strip_prefix(LEGACY_PREFIX)
            .ok_or(CryptoError::Open)?;
        let plain = std::iter::once(self)
            .chain(&self.previous)
            .find_map(|b| open_with(&b.legacy, raw, LEGACY_AAD).ok())
            .ok_or(CryptoError::Open)?;
        serde_json::from_slice(&plain).map_err(|_| CryptoError::Open)
    }
}

fn open_with(cipher: &Aes256Gcm, raw: &str, aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(raw)
        .map_err(|_| CryptoError::Open)?;
    if bytes.len() < 12 + 16 {
        return Err(CryptoError::Open);
    }
    let (nonce, ct) = bytes.split_at(12);
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .map_err(|_| CryptoError::Open)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const AT: CredentialBinding<'static> = CredentialBinding {
        gateway_id: "g1",
        origin: "https://up.example:443",
    };

    #[test]
    fn seal_open_round_trip_and_tamper_detection() {
        let b = SecretBox::from_key([7; 32]);
        let c = Credentials::Bearer {
            token: "s3cret".into(),
        };
        let sealed = b.seal_credentials(&c, AT).unwrap();
        assert!(sealed.starts_with("v2:") && !sealed.contains("s3cret"));
        assert_eq!(b.open_credentials(&sealed, AT).unwrap(), c);
        // Two seals of the same value differ (random nonce).
        assert_ne!(sealed, b.seal_credentials(&c, AT).unwrap());
        // Another key cannot open it.
        assert!(
            SecretBox::from_key([8; 32])
                .open_credentials(&sealed, AT)
                .is_err()
        );
        // A flipped bit is detected.
        let mut raw = sealed.clone().into_bytes();
        let last = raw.len() - 2;
        raw[last] = if raw[last] == b'A' { b'B' } else { b'A' };
        assert!(
            b.open_credentials(&String::from_utf8(raw).unwrap(), AT)
                .is_err()
        );
    }

    #[test]
    fn previous_keys_open_what_they_sealed_and_seal_nothing() {
        let hex = |k: [u8; 32]| k.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let old = SecretBox::from_key([1; 32]);
        let c = Credentials::Bearer { token: "t".into() };
        let sealed_by_old = old.seal_credentials(&c, AT).unwrap();
        let rotated = SecretBox::from_key([2; 32])
            .with_previous(&format!(" {} ,, {}", hex([1; 32]), hex([2; 32])))
            .unwrap();
        // The current key given again as a previous one is not counted twice.
        assert_eq!(rotated.previous_keys(), 1);
        assert_eq!(
            rotated
                .open_current_or_previous(&sealed_by_old, AT)
                .unwrap(),
            (c.clone(), true)
        );
        // A previous key still checks the binding.
        let other = CredentialBinding {
            gateway_id: "g2",
            ..AT
        };
        assert!(rotated.open_credentials(&sealed_by_old, other).is_err());
        // New values are sealed with the current key: the old key alone cannot open them.
        let sealed_now = rotated.seal_credentials(&c, AT).unwrap();
        assert_eq!(
            rotated.open_current_or_previous(&sealed_now, AT).unwrap(),
            (c.clone(), false)
        );
        assert!(old.open_credentials(&sealed_now, AT).is_err());
        // Sessions: the current key signs (first), the old one still opens; the relay
        // admits both secrets.
        assert_eq!(
            rotated.session_keys(),
            vec![
                SecretBox::from_key([2; 32]).session_key().to_owned(),
                old.session_key().to_owned()
            ]
        );
        assert_eq!(rotated.relay_auths()[1], old.relay_auth());
        // A malformed item is named by position, without its value.
        let e = SecretBox::from_key([2; 32])
            .with_previous(&format!("{},not-a-key", hex([1; 32])))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("item 2") && !e.contains("not-a-key"), "{e}");
    }

    #[test]
    fn sealed_credentials_open_only_where_they_were_given() {
        let b = SecretBox::from_key([7; 32]);
        let c = Credentials::Basic {
            username: "u".into(),
            password: "p".into(),
        };
        let sealed = b.seal_credentials(&c, AT).unwrap();
        let elsewhere: &[(&str, CredentialBinding<'_>)] = &[
            (
                "copied to another gateway",
                CredentialBinding {
                    gateway_id: "g2",
                    ..AT
                },
            ),
            (
                "other host",
                CredentialBinding {
                    origin: "https://evil.example:443",
                    ..AT
                },
            ),
            (
                "other port",
                CredentialBinding {
                    origin: "https://up.example:8443",
                    ..AT
                },
            ),
            (
                "other scheme",
                CredentialBinding {
                    origin: "http://up.example:443",
                    ..AT
                },
            ),
            (
                "boundary moved",
                CredentialBinding {
                    gateway_id: "g1https://up.example",
                    origin: ":443",
                },
            ),
        ];
        for (name, binding) in elsewhere {
            assert!(b.open_credentials(&sealed, *binding).is_err(), "{name}");
        }
    }

    /// A value the first format wrote (`v1:`, this one by the code of that time under the
    /// dev key) opens only through the legacy path, and never as a bound value.
    #[test]
    fn first_format_values_open_only_through_the_legacy_path() {
        let v1 = "v1:UrV8+ImSMdqmXIu1Dd05sTSEqXYRX0ym7qd4Fz9DS/gOXqzv1fNFtFRsCZrJ0jfc8SEJ1mvg9tHTd6krRX5J8PVr81RC9z0=";
        let b = SecretBox::dev();
        assert!(SecretBox::is_legacy(v1));
        assert_eq!(
            b.open_legacy_credentials(v1).unwrap(),
            Credentials::Bearer {
                token: "legacy-v1-token".into()
            }
        );
        assert!(b.open_credentials(v1, AT).is_err());
        assert!(
            SecretBox::from_key([3; 32])
                .open_legacy_credentials(v1)
                .is_err()
        );
        // The credential key is derived, not the configured key itself.
        let resealed = b
            .seal_credentials(&b.open_legacy_credentials(v1).unwrap(), AT)
            .unwrap();
        assert!(b.open_legacy_credentials(&resealed).is_err());
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
