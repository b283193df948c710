//! Password hashes: Argon2id in the PHC string format (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`),
//! so each stored hash says with which parameters it was made and a login can tell when
//! it must be rehashed.
//!
//! Hashing costs [`PasswordParams::memory_kib`] of memory and a good part of a second of
//! CPU: it runs on the blocking pool, at most [`MAX_CONCURRENT_HASHES`] at a time, so a
//! flood of logins costs bounded memory and never stalls the async workers.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

/// Most Argon2 computations at once (each holds `memory_kib` of memory).
pub const MAX_CONCURRENT_HASHES: usize = 4;
/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest password accepted (bytes).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Argon2id parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordParams {
    /// Passes (t).
    pub iterations: u32,
    /// Memory in KiB (m).
    pub memory_kib: u32,
    /// Lanes (p).
    pub parallelism: u32,
}

impl Default for PasswordParams {
    /// t=3, m=64 MiB, p=1.
    fn default() -> Self {
        PasswordParams {
            iterations: 3,
            memory_kib: 64 * 1024,
            parallelism: 1,
        }
    }
}

/// Errors of hashing.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// The password breaks the policy.
    #[error("{0}")]
    Policy(String),
    /// The hasher failed (bad parameters, no randomness).
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// The outcome of checking a password against a stored hash.
#[derive(Debug, PartialEq, Eq)]
pub enum Verified {
    /// Wrong password, or no usable hash.
    No,
    /// Right, and the hash uses the current parameters.
    Yes,
    /// Right, and here is a hash with the current parameters to store instead.
    Rehashed(String),
}

/// Hashes and checks passwords.
#[derive(Debug, Clone)]
pub struct Hasher {
    params: PasswordParams,
    permits: Arc<Semaphore>,
    /// A hash of nothing anyone knows: checked when the user does not exist, so that an
    /// unknown email costs the same time as a wrong password.
    decoy: Arc<tokio::sync::OnceCell<String>>,
}

impl Hasher {
    /// A hasher with `params`.
    pub fn new(params: PasswordParams) -> Self {
        Hasher {
            params,
            permits: Arc::new(Semaphore::new(MAX_CONCURRENT_HASHES)),
            decoy: Arc::new(tokio::sync::OnceCell::new()),
        }
    }

    /// The parameters new hashes use.
    pub fn params(&self) -> PasswordParams {
        self.params
    }

    /// Checks the password policy: length only (NIST SP 800-63B: no composition rules).
    pub fn check_policy(password: &str) -> Result<(), PasswordError> {
        if password.chars().count() < MIN_PASSWORD_CHARS {
            return Err(PasswordError::Policy(format!(
                "must be at least {MIN_PASSWORD_CHARS} characters"
            )));
        }
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(PasswordError::Policy(format!(
                "must be at most {MAX_PASSWORD_BYTES} bytes"
            )));
        }
        Ok(())
    }

    /// Hashes `password` with the current parameters (policy checked first).
    pub async fn hash(&self, password: &str) -> Result<String, PasswordError> {
        Self::check_policy(password)?;
        self.hash_unchecked(password.to_owned()).await
    }

    async fn hash_unchecked(&self, password: String) -> Result<String, PasswordError> {
        let params = self.params;
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| PasswordError::Hash(e.to_string()))?;
        tokio::task::spawn_blocking(move || hash_now(&password, params))
            .await
            .map_err(|e| PasswordError::Hash(e.to_string()))?
    }

    /// Checks `password` against `stored` (a PHC string; `None`: the user has no
    /// password, or does not exist — a decoy hash is checked so the answer takes as long).
    pub async fn verify(&self, password: &str, stored: Option<&str>) -> Verified {
        if password.len() > MAX_PASSWORD_BYTES {
            return Verified::No;
        }
        let stored = match stored {
            Some(s) => s.to_owned(),
            None => {
                let decoy = self
                    .decoy
                    .get_or_try_init(|| self.hash_unchecked(random_decoy()))
                    .await;
                if let Ok(d) = decoy {
                    let _ = self.verify_blocking(password.to_owned(), d.clone()).await;
                }
                return Verified::No;
            }
        };
        match self.verify_blocking(password.to_owned(), stored).await {
            Some(true) => {}
            _ => return Verified::No,
        }
        Verified::Yes
    }

    /// [`Hasher::verify`], then a new hash when the stored one's parameters differ from the
    /// current ones (or it is not Argon2id).
    pub async fn verify_and_upgrade(&self, password: &str, stored: Option<&str>) -> Verified {
        match self.verify(password, stored).await {
            Verified::Yes => {}
            other => return other,
        }
        let current = stored.is_some_and(|s| uses(s, self.params));
        if current {
            return Verified::Yes;
        }
        match self.hash_unchecked(password.to_owned()).await {
            Ok(h) => Verified::Rehashed(h),
            // Still the right password: keep the old hash and try again next time.
            Err(e) => {
                tracing::warn!(error = %e, "rehashing a password failed");
                Verified::Yes
            }
        }
    }

    async fn verify_blocking(&self, password: String, stored: String) -> Option<bool> {
        let _permit = self.permits.acquire().await.ok()?;
        tokio::task::spawn_blocking(move || {
            let parsed = PasswordHash::new(&stored).ok()?;
            // Any Argon2 variant verifies (the hash names its own); bounds on what a stored
            // hash may ask for keep a tampered row from costing gigabytes.
            let p = Params::try_from(&parsed).ok()?;
            if p.m_cost() > 1024 * 1024 || p.t_cost() > 64 || p.p_cost() > 16 {
                return Some(false);
            }
            Some(
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok(),
            )
        })
        .await
        .ok()
        .flatten()
    }
}

/// Whether `stored` is an Argon2id hash made with `params`.
pub fn uses(stored: &str, params: PasswordParams) -> bool {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return false;
    };
    let Ok(p) = Params::try_from(&parsed) else {
        return false;
    };
    parsed.algorithm.as_str() == "argon2id"
        && parsed.version == Some(Version::V0x13.into())
        && p.t_cost() == params.iterations
        && p.m_cost() == params.memory_kib
        && p.p_cost() == params.parallelism
}

fn hash_now(password: &str, params: PasswordParams) -> Result<String, PasswordError> {
    let p = Params::new(
        params.memory_kib,
        params.iterations,
        params.parallelism,
        None,
    )
    .map_err(|e| PasswordError::Hash(e.to_string()))?;
    let mut salt = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
        .map_err(|_| PasswordError::Hash("no randomness".into()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| PasswordError::Hash(e.to_string()))?;
    Argon2::new(Algorithm::Argon2id, Version::V0x13, p)
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

fn random_decoy() -> String {
    let mut b = [0u8; 24];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SMALL: PasswordParams = PasswordParams {
        iterations: 1,
        memory_kib: 1024,
        parallelism: 1,
    };

    #[tokio::test]
    async fn hash_verify_and_rehash_when_parameters_change() {
        let old = Hasher::new(SMALL);
        let h = old.hash("correct horse battery").await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"), "{h}");
        assert!(uses(&h, SMALL));
        assert_eq!(
            old.verify_and_upgrade("correct horse battery", Some(&h))
                .await,
            Verified::Yes
        );
        assert_eq!(
            old.verify("wrong horse battery", Some(&h)).await,
            Verified::No
        );
        assert_eq!(
            old.verify("correct horse battery", None).await,
            Verified::No
        );
        let new = Hasher::new(PasswordParams {
            iterations: 2,
            ..SMALL
        });
        match new
            .verify_and_upgrade("correct horse battery", Some(&h))
            .await
        {
            Verified::Rehashed(h2) => {
                assert!(h2.starts_with("$argon2id$v=19$m=1024,t=2,p=1$"), "{h2}");
                assert_eq!(
                    new.verify_and_upgrade("correct horse battery", Some(&h2))
                        .await,
                    Verified::Yes
                );
            }
            other => panic!("expected a rehash, got {other:?}"),
        }
        assert_eq!(
            new.verify_and_upgrade("wrong horse battery", Some(&h))
                .await,
            Verified::No
        );
    }

    #[test]
    fn the_default_is_t3_m64mib_p1_and_short_passwords_are_refused() {
        assert_eq!(
            PasswordParams::default(),
            PasswordParams {
                iterations: 3,
                memory_kib: 65536,
                parallelism: 1
            }
        );
        assert!(Hasher::check_policy("short").is_err());
        assert!(Hasher::check_policy(&"x".repeat(2000)).is_err());
        assert!(Hasher::check_policy("twelve chars").is_ok());
    }

    #[tokio::test]
    async fn garbage_and_hostile_hashes_do_not_verify() {
        let h = Hasher::new(SMALL);
        for stored in [
            "",
            "plain",
            "$argon2id$v=19$m=4194304,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
        ] {
            assert_eq!(h.verify("whatever pass", Some(stored)).await, Verified::No);
        }
    }
}
