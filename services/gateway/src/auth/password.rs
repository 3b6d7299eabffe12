//! Password hashing. bcrypt reads at most 72 bytes, so a longer password
//! would be silently truncated; every password is therefore pre-hashed with
//! SHA-256 (64 hex characters) and bcrypt hashes that. The work runs on
//! tokio's blocking pool, never on the async executor.

use sha2::{Digest, Sha256};

use crate::domain::Password;

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("bcrypt: {0}")]
    Bcrypt(#[from] bcrypt::BcryptError),
    #[error("blocking pool: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Hashes passwords with one cost and verifies them; also verifies against a
/// dummy hash of the same cost when the account does not exist, so that an
/// unknown email costs as much time as a wrong password.
#[derive(Clone)]
pub struct PasswordHasher {
    cost: u32,
    dummy_hash: String,
}

impl PasswordHasher {
    pub async fn new(cost: u32) -> Result<Self, HashError> {
        let dummy_hash = tokio::task::spawn_blocking(move || {
            bcrypt::hash(prehash("not-a-real-password-for-timing"), cost)
        })
        .await??;
        Ok(Self { cost, dummy_hash })
    }

    pub async fn hash(&self, password: &Password) -> Result<String, HashError> {
        let input = prehash(password.expose());
        let cost = self.cost;
        Ok(tokio::task::spawn_blocking(move || bcrypt::hash(input, cost)).await??)
    }

    /// True when `password` matches `stored`; with `None` (no such user) it
    /// does the same work and answers false.
    pub async fn verify(&self, password: &str, stored: Option<String>) -> Result<bool, HashError> {
        let input = prehash(password);
        let exists = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.dummy_hash.clone());
        let matches = tokio::task::spawn_blocking(move || bcrypt::verify(input, &hash)).await??;
        Ok(exists && matches)
    }
}

fn prehash(password: &str) -> String {
    let digest = Sha256::digest(password.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn long_passwords_differ_beyond_72_bytes() {
        let hasher = PasswordHasher::new(4).await.unwrap();
        let base = "a".repeat(80);
        let hash = hasher
            .hash(&Password::parse(format!("{base}1")).unwrap())
            .await
            .unwrap();
        assert!(
            hasher
                .verify(&format!("{base}1"), Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(
            !hasher
                .verify(&format!("{base}2"), Some(hash))
                .await
                .unwrap()
        );
        assert!(!hasher.verify("anything-at-all", None).await.unwrap());
    }
}
