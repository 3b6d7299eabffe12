//! Verification of the gateway's tokens. Services hold only the public key:
//! they can check a token but never mint one. The user id handlers act on
//! comes from [`AuthUser`], that is from a verified token and nowhere else.

use std::{
    collections::HashMap,
    future::Ready,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
};

use actix_web::{FromRequest, HttpRequest, dev::Payload, http::header, web};
use anyhow::Context;
use jsonwebtoken::{
    Algorithm, DecodingKey, Validation, decode,
    errors::{Error as JwtError, ErrorKind},
    get_current_timestamp,
};
use paperclip::actix::Apiv2Security;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{config::Secret, http::ApiError};

pub const ISSUER: &str = "commerce-gateway";
pub const AUDIENCE: &str = "commerce-api";
/// Tolerated clock skew between gateway and services, in seconds.
pub const LEEWAY_SECONDS: u64 = 30;

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: Uuid,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
}

/// Checks signature (EdDSA only), expiry, issuer and audience.
///
/// A client sends the same token with every request until it expires, so
/// tokens that passed are remembered with their claims (keyed by the whole
/// token: a token that differs in one byte is checked anew) and later
/// requests with them only have their expiry checked again. The Ed25519
/// signature check was about 7% of the order service's CPU under load, and
/// the gateway checks every request too. Only valid tokens are remembered,
/// at most [`JwtVerifier::CACHE_CAPACITY`] of them.
#[derive(Clone)]
pub struct JwtVerifier {
    key: Arc<DecodingKey>,
    validation: Arc<Validation>,
    verified: Arc<Mutex<HashMap<Box<str>, Claims>>>,
    capacity: usize,
}

impl JwtVerifier {
    /// Valid tokens remembered at most (a few hundred bytes each).
    pub const CACHE_CAPACITY: usize = 4096;

    /// From the gateway's Ed25519 public key in PEM (SPKI) form.
    pub fn from_public_pem(pem: &[u8]) -> Result<Self, JwtError> {
        Self::with_cache_capacity(pem, Self::CACHE_CAPACITY)
    }

    /// As [`Self::from_public_pem`], remembering at most `capacity` tokens.
    pub fn with_cache_capacity(pem: &[u8], capacity: usize) -> Result<Self, JwtError> {
        let key = DecodingKey::from_ed_pem(pem)?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_SECONDS;
        Ok(Self {
            key: Arc::new(key),
            validation: Arc::new(validation),
            verified: Arc::default(),
            capacity,
        })
    }

    pub fn verify(&self, token: &str) -> Result<Claims, JwtError> {
        self.verify_at(token, get_current_timestamp())
    }

    /// [`Self::verify`] with `now` (seconds since the epoch) for the expiry
    /// of a remembered token.
    pub fn verify_at(&self, token: &str, now: u64) -> Result<Claims, JwtError> {
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(claims) = verified.get(token) {
            // What `Validation` checks with the same leeway.
            if claims.exp >= now.saturating_sub(LEEWAY_SECONDS) as i64 {
                return Ok(claims.clone());
            }
            verified.remove(token);
            return Err(ErrorKind::ExpiredSignature.into());
        }
        // Not held across the signature check: other requests go on.
        drop(verified);
        let claims = decode::<Claims>(token, &self.key, &self.validation)?.claims;
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        if verified.len() >= self.capacity {
            let oldest_valid = now.saturating_sub(LEEWAY_SECONDS) as i64;
            verified.retain(|_, claims| claims.exp >= oldest_valid);
            if verified.len() >= self.capacity {
                verified.clear();
            }
        }
        verified.insert(token.into(), claims.clone());
        Ok(claims)
    }

    /// Tokens remembered.
    pub fn remembered(&self) -> usize {
        self.verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// The authenticated caller. Extracting it fails with 401 unless the request
/// carries `Authorization: Bearer <valid token>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Apiv2Security)]
#[openapi(
    apiKey,
    in = "header",
    name = "Authorization",
    description = "Bearer token from /api/login or /api/register"
)]
pub struct AuthUser {
    pub user_id: Uuid,
}

impl FromRequest for AuthUser {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(authenticate(req))
    }
}

fn authenticate(req: &HttpRequest) -> Result<AuthUser, ApiError> {
    let verifier = req
        .app_data::<web::Data<JwtVerifier>>()
        .ok_or_else(|| ApiError::internal("JwtVerifier missing from app data"))?;
    let token = bearer_token(req).ok_or_else(|| ApiError::unauthorized("missing bearer token"))?;
    let claims = verifier.verify(token).map_err(|e| {
        tracing::debug!(error = %e, "token rejected");
        ApiError::unauthorized("invalid or expired token")
    })?;
    Ok(AuthUser {
        user_id: claims.sub,
    })
}

/// The token of an `Authorization: Bearer <token>` header, trimmed (it may
/// be empty); `None` without such a header.
pub fn bearer_token(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    Some(token.trim())
}

/// A service's `auth` config section: the gateway's Ed25519 public key,
/// inline or from a file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublicKeyConfig {
    pub public_key_pem: Option<Secret>,
    pub public_key_file: Option<PathBuf>,
}

impl PublicKeyConfig {
    pub fn verifier(&self) -> anyhow::Result<JwtVerifier> {
        let pem = match (&self.public_key_pem, &self.public_key_file) {
            (Some(pem), _) if !pem.expose().trim().is_empty() => pem.expose().as_bytes().to_vec(),
            (_, Some(path)) => std::fs::read(path)
                .with_context(|| format!("reading auth.public_key_file {}", path.display()))?,
            _ => anyhow::bail!("set auth.public_key_pem or auth.public_key_file"),
        };
        JwtVerifier::from_public_pem(&pem).context("auth: not an Ed25519 public key in PEM form")
    }
}
