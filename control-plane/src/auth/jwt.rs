//! The control plane's JWTs: compact JWS signed with ES256 (default), RS256 or HS256, with
//! ring (already in the tree through rustls).
//!
//! Every key has a `kid` and one algorithm; a token is checked only with the key its `kid`
//! names and only if its `alg` is that key's, so `alg: none`, an HS256 token "signed" with an
//! RS256 public key, or any other algorithm confusion fails before a signature is looked at.
//! The public halves of ES256 and RS256 keys are served as a JWKS; HS256 keys are secrets
//! (derived from the encryption key under their own HKDF label and `kid`) and never leave.

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, KeyPair as _};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A signing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Algorithm {
    /// ECDSA P-256 with SHA-256.
    #[default]
    Es256,
    /// RSASSA-PKCS1-v1_5 with SHA-256 (a key of 2048 to 8192 bits, from a file).
    Rs256,
    /// HMAC-SHA256 (the key never leaves the control plane).
    Hs256,
}

impl Algorithm {
    /// The JOSE name.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Es256 => "ES256",
            Algorithm::Rs256 => "RS256",
            Algorithm::Hs256 => "HS256",
        }
    }

    /// Parses a JOSE name (exactly; `none` and the rest are not algorithms here).
    pub fn parse(s: &str) -> Option<Algorithm> {
        [Algorithm::Es256, Algorithm::Rs256, Algorithm::Hs256]
            .into_iter()
            .find(|a| a.as_str() == s)
    }
}

/// Why a token was refused (never shown in detail to the client: see `auth::AuthError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts of JSON.
    #[error("malformed token")]
    Malformed,
    /// `alg` is not the algorithm of the key `kid` names (or not one at all).
    #[error("algorithm not accepted")]
    Algorithm,
    /// No accepted key has this `kid`.
    #[error("unknown key id")]
    UnknownKey,
    /// The signature does not verify.
    #[error("bad signature")]
    Signature,
    /// Expired, not yet valid, or issued in the future.
    #[error("token expired or not yet valid")]
    Time,
    /// Wrong issuer or audience.
    #[error("token not issued for this API")]
    Audience,
    /// The key could not be used.
    #[error("key error: {0}")]
    Key(String),
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(s: &str) -> Result<Vec<u8>, JwtError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| JwtError::Malformed)
}

/// The private half of a key.
pub enum Signer {
    /// ES256.
    Ec(signature::EcdsaKeyPair),
    /// RS256.
    Rsa(signature::RsaKeyPair),
    /// HS256.
    Hmac(ring::hmac::Key),
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Signer::Ec(_) => "Signer::Ec(..)",
            Signer::Rsa(_) => "Signer::Rsa(..)",
            Signer::Hmac(_) => "Signer::Hmac(..)",
        })
    }
}

/// What checks a signature.
#[derive(Clone)]
pub enum Verifier {
    /// ES256: the uncompressed point.
    Ec(Vec<u8>),
    /// RS256: modulus and exponent, big-endian.
    Rsa {
        /// n.
        n: Vec<u8>,
        /// e.
        e: Vec<u8>,
    },
    /// HS256.
    Hmac(ring::hmac::Key),
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(..)")
    }
}

/// A key of the keyring: its id, algorithm and the halves this process has.
#[derive(Debug)]
pub struct Key {
    /// Key id.
    pub kid: String,
    /// Algorithm.
    pub alg: Algorithm,
    /// The private half (only the current key has one).
    pub signer: Option<Signer>,
    /// The public half (or the HMAC key).
    pub verifier: Verifier,
}

/// A new ES256 private key, PKCS#8 DER.
pub fn generate_ec_pkcs8() -> Result<Vec<u8>, JwtError> {
    signature::EcdsaKeyPair::generate_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &SystemRandom::new(),
    )
    .map(|d| d.as_ref().to_vec())
    .map_err(|_| JwtError::Key("generating an EC key failed".into()))
}

/// The ES256 key pair of a PKCS#8 document.
pub fn ec_signer(pkcs8: &[u8]) -> Result<(Signer, Verifier), JwtError> {
    let kp = signature::EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        pkcs8,
        &SystemRandom::new(),
    )
    .map_err(|e| JwtError::Key(format!("EC key: {e}")))?;
    let point = kp.public_key().as_ref().to_vec();
    Ok((Signer::Ec(kp), Verifier::Ec(point)))
}

/// The RS256 key pair of a PKCS#8 document (from a PEM `PRIVATE KEY` block).
pub fn rsa_signer(pkcs8: &[u8]) -> Result<(Signer, Verifier), JwtError> {
    let kp = signature::RsaKeyPair::from_pkcs8(pkcs8)
        .map_err(|e| JwtError::Key(format!("RSA key: {e}")))?;
    let (n, e) = rsa_public_parts(kp.public().as_ref())?;
    Ok((Signer::Rsa(kp), Verifier::Rsa { n, e }))
}

/// The HS256 key for `secret`.
pub fn hmac_key(secret: &[u8]) -> ring::hmac::Key {
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret)
}

/// Splits a DER `RSAPublicKey` (SEQUENCE { INTEGER n, INTEGER e }) into n and e.
fn rsa_public_parts(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>), JwtError> {
    fn read(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
        let (&t, rest) = input.split_first()?;
        if t != tag {
            return None;
        }
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |a, b| a << 8 | usize::from(*b));
            (len, &rest[n..])
        };
        (rest.len() >= len).then(|| rest.split_at(len))
    }
    let bad = || JwtError::Key("RSA public key is not DER RSAPublicKey".into());
    let (seq, _) = read(der, 0x30).ok_or_else(bad)?;
    let (n, rest) = read(seq, 0x02).ok_or_else(bad)?;
    let (e, _) = read(rest, 0x02).ok_or_else(bad)?;
    let strip = |v: &[u8]| {
        let i = v.iter().position(|b| *b != 0).unwrap_or(v.len());
        v[i..].to_vec()
    };
    Ok((strip(n), strip(e)))
}

/// Decodes the first PEM block labelled `label` (base64 between the armour lines).
pub fn pem_block(text: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    let body: String = text[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

impl Verifier {
    /// The public JWK of this key (`None` for HS256: a secret is never published).
    pub fn jwk(&self, kid: &str, alg: Algorithm) -> Option<Value> {
        match self {
            Verifier::Ec(point) if point.len() == 65 => Some(json!({
                "kty": "EC", "crv": "P-256", "use": "sig", "alg": alg.as_str(), "kid": kid,
                "x": b64(&point[1..33]), "y": b64(&point[33..65]),
            })),
            Verifier::Rsa { n, e } => Some(json!({
                "kty": "RSA", "use": "sig", "alg": alg.as_str(), "kid": kid,
                "n": b64(n), "e": b64(e),
            })),
            _ => None,
        }
    }

    /// The verifier of a stored public JWK.
    pub fn from_jwk(jwk: &Value) -> Result<Verifier, JwtError> {
        let field = |k: &str| {
            jwk[k]
                .as_str()
                .ok_or_else(|| JwtError::Key(format!("JWK without {k}")))
                .and_then(|v| unb64(v).map_err(|_| JwtError::Key(format!("JWK {k}"))))
        };
        match jwk["kty"].as_str() {
            Some("EC") => {
                let (x, y) = (field("x")?, field("y")?);
                if x.len() != 32 || y.len() != 32 {
                    return Err(JwtError::Key("JWK point size".into()));
                }
                let mut point = vec![4u8];
                point.extend(x);
                point.extend(y);
                Ok(Verifier::Ec(point))
            }
            Some("RSA") => Ok(Verifier::Rsa {
                n: field("n")?,
                e: field("e")?,
            }),
            _ => Err(JwtError::Key("JWK kty".into())),
        }
    }

    pub(crate) fn verify(&self, alg: Algorithm, input: &[u8], sig: &[u8]) -> bool {
        match (self, alg) {
            (Verifier::Ec(point), Algorithm::Es256) => {
                signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(input, sig)
                    .is_ok()
            }
            (Verifier::Rsa { n, e }, Algorithm::Rs256) => signature::RsaPublicKeyComponents {
                n: n.as_slice(),
                e: e.as_slice(),
            }
            .verify(&signature::RSA_PKCS1_2048_8192_SHA256, input, sig)
            .is_ok(),
            (Verifier::Hmac(k), Algorithm::Hs256) => ring::hmac::verify(k, input, sig).is_ok(),
            _ => false,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
}

/// The claims of a session token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Subject: the user id.
    pub sub: String,
    /// Audience.
    pub aud: String,
    /// Expiry (seconds since the epoch).
    pub exp: i64,
    /// Not before.
    pub nbf: i64,
    /// Issued at.
    pub iat: i64,
    /// Token id (revocation).
    pub jti: String,
    /// The user's email.
    pub email: String,
    /// The teams the user belongs to (ids). For consumers at the edge; the admin API reads
    /// roles from the store. Absent and empty mean the same: no team.
    #[serde(default)]
    pub teams: Vec<String>,
}

/// Signs `claims` with `key` (which must have its private half).
pub fn sign(key: &Key, claims: &Claims) -> Result<String, JwtError> {
    let header = Header {
        alg: key.alg.as_str().into(),
        kid: Some(key.kid.clone()),
        typ: Some("JWT".into()),
    };
    let input = format!("{}.{}", enc(&header)?, enc(claims)?);
    let sig = match &key.signer {
        Some(Signer::Ec(kp)) => kp
            .sign(&SystemRandom::new(), input.as_bytes())
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| JwtError::Key("EC signing failed".into()))?,
        Some(Signer::Rsa(kp)) => {
            let mut sig = vec![0u8; kp.public().modulus_len()];
            kp.sign(
                &signature::RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                input.as_bytes(),
                &mut sig,
            )
            .map_err(|_| JwtError::Key("RSA signing failed".into()))?;
            sig
        }
        Some(Signer::Hmac(k)) => ring::hmac::sign(k, input.as_bytes()).as_ref().to_vec(),
        None => return Err(JwtError::Key("not a signing key".into())),
    };
    Ok(format!("{input}.{}", b64(&sig)))
}

fn enc<T: Serialize>(v: &T) -> Result<String, JwtError> {
    serde_json::to_vec(v)
        .map(|b| b64(&b))
        .map_err(|_| JwtError::Malformed)
}

/// The `kid` a token names (unverified: to pick the key).
pub fn kid_of(token: &str) -> Result<String, JwtError> {
    let head = token.split('.').next().ok_or(JwtError::Malformed)?;
    let h: Header = serde_json::from_slice(&unb64(head)?).map_err(|_| JwtError::Malformed)?;
    h.kid.ok_or(JwtError::UnknownKey)
}

/// What a token must be, besides well signed.
#[derive(Debug, Clone)]
pub struct Expect<'a> {
    /// `iss`.
    pub issuer: &'a str,
    /// `aud`.
    pub audience: &'a str,
    /// Now (seconds since the epoch).
    pub now: i64,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway: i64,
}

/// Verifies `token` with `key` (found by the token's `kid`) and returns its claims.
pub fn verify(token: &str, key: &Key, expect: &Expect<'_>) -> Result<Claims, JwtError> {
    if token.len() > 8 * 1024 {
        return Err(JwtError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(head), Some(body), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let header: Header = serde_json::from_slice(&unb64(head)?).map_err(|_| JwtError::Malformed)?;
    if header.kid.as_deref() != Some(key.kid.as_str()) {
        return Err(JwtError::UnknownKey);
    }
    if Algorithm::parse(&header.alg) != Some(key.alg) {
        return Err(JwtError::Algorithm);
    }
    let sig = unb64(sig)?;
    let input_len = head.len() + 1 + body.len();
    if !key
        .verifier
        .verify(key.alg, &token.as_bytes()[..input_len], &sig)
    {
        return Err(JwtError::Signature);
    }
    let claims: Claims = serde_json::from_slice(&unb64(body)?).map_err(|_| JwtError::Malformed)?;
    if claims.iss != expect.issuer || claims.aud != expect.audience {
        return Err(JwtError::Audience);
    }
    if claims.exp + expect.leeway <= expect.now
        || claims.nbf - expect.leeway > expect.now
        || claims.iat - expect.leeway > expect.now
    {
        return Err(JwtError::Time);
    }
    Ok(claims)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn claims(now: i64) -> Claims {
        Claims {
            iss: "mcpgw".into(),
            sub: "u1".into(),
            aud: "mcpgw-api".into(),
            exp: now + 600,
            nbf: now,
            iat: now,
            jti: "j1".into(),
            email: "a@example.com".into(),
            teams: vec!["t1".into()],
        }
    }

    fn expect(now: i64) -> Expect<'static> {
        Expect {
            issuer: "mcpgw",
            audience: "mcpgw-api",
            now,
            leeway: 30,
        }
    }

    fn ec_key(kid: &str) -> Key {
        let (signer, verifier) = ec_signer(&generate_ec_pkcs8().unwrap()).unwrap();
        Key {
            kid: kid.into(),
            alg: Algorithm::Es256,
            signer: Some(signer),
            verifier,
        }
    }

    fn tamper_body(token: &str, f: impl Fn(&mut Value)) -> String {
        let parts: Vec<&str> = token.split('.').collect();
        let mut body: Value = serde_json::from_slice(&unb64(parts[1]).unwrap()).unwrap();
        f(&mut body);
        format!(
            "{}.{}.{}",
            parts[0],
            b64(&serde_json::to_vec(&body).unwrap()),
            parts[2]
        )
    }

    fn with_header(token: &str, header: Value, sig: &[u8]) -> String {
        let parts: Vec<&str> = token.split('.').collect();
        format!(
            "{}.{}.{}",
            b64(&serde_json::to_vec(&header).unwrap()),
            parts[1],
            b64(sig)
        )
    }

    #[test]
    fn es256_round_trip_and_every_bad_token_refused() {
        let now = 1_800_000_000;
        let key = ec_key("k1");
        let t = sign(&key, &claims(now)).unwrap();
        assert_eq!(kid_of(&t).unwrap(), "k1");
        assert_eq!(verify(&t, &key, &expect(now)).unwrap(), claims(now));
        // The public half alone verifies (a retired key, or one loaded from its JWK).
        let jwk = key.verifier.jwk("k1", Algorithm::Es256).unwrap();
        assert_eq!(jwk["kty"], "EC");
        let public = Key {
            kid: "k1".into(),
            alg: Algorithm::Es256,
            signer: None,
            verifier: Verifier::from_jwk(&jwk).unwrap(),
        };
        assert!(verify(&t, &public, &expect(now)).is_ok());

        let other = ec_key("k1");
        let hs = Key {
            kid: "k1".into(),
            alg: Algorithm::Hs256,
            signer: Some(Signer::Hmac(hmac_key(b"secret"))),
            verifier: Verifier::Hmac(hmac_key(b"secret")),
        };
        let hs_token = sign(&hs, &claims(now)).unwrap();
        let input = {
            let p: Vec<&str> = t.split('.').collect();
            format!("{}.{}", b64(br#"{"alg":"HS256","kid":"k1"}"#), p[1])
        };
        // HS256 "signed" with the EC public key as the secret: the classic confusion.
        let confused = format!(
            "{input}.{}",
            b64(ring::hmac::sign(&hmac_key(jwk.to_string().as_bytes()), input.as_bytes()).as_ref())
        );
        let cases: Vec<(&str, String, Expect<'_>, JwtError)> = vec![
            ("expired", t.clone(), expect(now + 700), JwtError::Time),
            (
                "not yet valid",
                t.clone(),
                expect(now - 100),
                JwtError::Time,
            ),
            (
                "wrong audience",
                t.clone(),
                Expect {
                    audience: "edge",
                    ..expect(now)
                },
                JwtError::Audience,
            ),
            (
                "wrong issuer",
                t.clone(),
                Expect {
                    issuer: "other",
                    ..expect(now)
                },
                JwtError::Audience,
            ),
            (
                "tampered payload",
                tamper_body(&t, |b| b["sub"] = "admin".into()),
                expect(now),
                JwtError::Signature,
            ),
            (
                "alg none",
                with_header(&t, json!({"alg": "none", "kid": "k1"}), b""),
                expect(now),
                JwtError::Algorithm,
            ),
            (
                "HS256 with the public key",
                confused,
                expect(now),
                JwtError::Algorithm,
            ),
            (
                "HS256 token for an ES256 key",
                hs_token,
                expect(now),
                JwtError::Algorithm,
            ),
            (
                "unknown kid",
                with_header(&t, json!({"alg": "ES256", "kid": "k9"}), b"x"),
                expect(now),
                JwtError::UnknownKey,
            ),
            ("garbage", "a.b".into(), expect(now), JwtError::Malformed),
        ];
        for (name, token, e, want) in cases {
            assert_eq!(verify(&token, &key, &e).unwrap_err(), want, "{name}");
        }
        // Another key with the same kid does not verify.
        assert_eq!(
            verify(&t, &other, &expect(now)).unwrap_err(),
            JwtError::Signature
        );
    }

    #[test]
    fn hs256_round_trip() {
        let now = 1_800_000_000;
        let key = Key {
            kid: "h1".into(),
            alg: Algorithm::Hs256,
            signer: Some(Signer::Hmac(hmac_key(&[7; 32]))),
            verifier: Verifier::Hmac(hmac_key(&[7; 32])),
        };
        let t = sign(&key, &claims(now)).unwrap();
        assert!(verify(&t, &key, &expect(now)).is_ok());
        assert!(key.verifier.jwk("h1", Algorithm::Hs256).is_none());
    }

    #[test]
    fn pem_blocks_and_rsa_public_parts() {
        let pem = "junk\n-----BEGIN PRIVATE KEY-----\nAAEC\nAwQ=\n-----END PRIVATE KEY-----\n";
        assert_eq!(pem_block(pem, "PRIVATE KEY").unwrap(), [0, 1, 2, 3, 4]);
        assert!(pem_block(pem, "PUBLIC KEY").is_none());
        // SEQUENCE { INTEGER 0x00c5, INTEGER 0x010001 }
        let der = [
            0x30, 0x09, 0x02, 0x02, 0x00, 0xc5, 0x02, 0x03, 0x01, 0x00, 0x01,
        ];
        let (n, e) = rsa_public_parts(&der).unwrap();
        assert_eq!((n, e), (vec![0xc5], vec![1, 0, 1]));
        assert!(rsa_public_parts(&der[..5]).is_err());
    }
}
