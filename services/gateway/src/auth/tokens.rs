//! Issuing access tokens: EdDSA (Ed25519) JWTs whose claims are
//! `commerce_common::auth::Claims`. Only the gateway holds the private key.

use std::time::Duration;

use anyhow::Context;
use commerce_common::auth::{AUDIENCE, Claims, ISSUER, JwtVerifier};
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePublicKey, spki::der::pem::LineEnding};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use uuid::Uuid;

use crate::config::AuthConfig;

/// Signs tokens; also hands out the matching verifier.
#[derive(Clone)]
pub struct TokenIssuer {
    key: EncodingKey,
    header: Header,
    ttl: Duration,
}

/// A freshly issued token.
pub struct IssuedToken {
    pub token: String,
    pub expires_in: u64,
}

impl TokenIssuer {
    /// Loads the key pair named by the config (PEM strings or files); the
    /// public key is derived from the private one when not given. Fails if
    /// the configured public key does not belong to the private key.
    pub fn from_config(config: &AuthConfig) -> anyhow::Result<(Self, JwtVerifier)> {
        let private_pem = match (&config.private_key_pem, &config.private_key_file) {
            (Some(pem), _) => pem.expose().to_owned(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .with_context(|| format!("reading auth.private_key_file {}", path.display()))?,
            (None, None) => {
                anyhow::bail!("auth.private_key_pem or auth.private_key_file is required")
            }
        };
        let signing = ed25519_dalek::SigningKey::from_pkcs8_pem(&private_pem)
            .context("auth private key: expected an Ed25519 PKCS#8 PEM")?;
        let derived_public = signing
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .context("encoding the public key")?;
        let public_pem = match (&config.public_key_pem, &config.public_key_file) {
            (Some(pem), _) => pem.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .with_context(|| format!("reading auth.public_key_file {}", path.display()))?,
            (None, None) => derived_public.clone(),
        };
        let key = EncodingKey::from_ed_pem(private_pem.as_bytes())
            .context("auth private key: expected an Ed25519 PKCS#8 PEM")?;
        let verifier = JwtVerifier::from_public_pem(public_pem.as_bytes())
            .context("auth public key: expected an Ed25519 SPKI PEM")?;
        let issuer = Self {
            key,
            header: Header::new(Algorithm::EdDSA),
            ttl: config.token_ttl,
        };
        let probe = issuer.issue(Uuid::nil())?;
        verifier
            .verify(&probe.token)
            .context("auth public key does not match the private key")?;
        Ok((issuer, verifier))
    }

    pub fn issue(&self, user_id: Uuid) -> anyhow::Result<IssuedToken> {
        let now = chrono::Utc::now().timestamp();
        let ttl = self.ttl.as_secs();
        let claims = Claims {
            sub: user_id,
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            iat: now,
            exp: now + i64::try_from(ttl).unwrap_or(i64::MAX / 2),
        };
        let token = encode(&self.header, &claims, &self.key).context("signing a token")?;
        Ok(IssuedToken {
            token,
            expires_in: ttl,
        })
    }
}
