//! The token check in front of forwarded requests. The services verify every
//! token themselves; the gateway checks too, so that requests without a valid
//! token never reach them. [`JwtVerifier`] remembers the tokens it has
//! verified until they expire, so a client's repeated token costs a lookup,
//! not an Ed25519 verification.

use actix_web::HttpRequest;
use commerce_common::{
    auth::{self, JwtVerifier},
    http::ApiError,
};

pub struct EdgeAuth {
    verifier: JwtVerifier,
}

impl EdgeAuth {
    pub fn new(verifier: JwtVerifier) -> Self {
        Self { verifier }
    }

    /// Ok when the request carries a valid bearer token; the same answers as
    /// `commerce_common::auth::AuthUser` otherwise.
    pub fn check(&self, req: &HttpRequest) -> Result<(), ApiError> {
        // An empty token counts as none here.
        let token = auth::bearer_token(req)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| ApiError::unauthorized("missing bearer token"))?;
        self.verifier.verify(token).map_err(|e| {
            tracing::debug!(error = %e, "token rejected at the edge");
            ApiError::unauthorized("invalid or expired token")
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;
    use ed25519_dalek::pkcs8::{EncodePrivateKey, spki::der::pem::LineEnding};
    use uuid::Uuid;

    use super::*;
    use crate::{auth::tokens::TokenIssuer, config::AuthConfig};

    fn issuer_with_ttl(seconds: u64) -> (TokenIssuer, JwtVerifier) {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let pem = key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
        let config = AuthConfig {
            private_key_pem: Some(commerce_common::config::Secret::new(pem)),
            token_ttl: std::time::Duration::from_secs(seconds),
            ..AuthConfig::default()
        };
        TokenIssuer::from_config(&config).unwrap()
    }

    fn request(token: &str) -> HttpRequest {
        TestRequest::default()
            .insert_header(("Authorization", format!("Bearer {token}")))
            .to_http_request()
    }

    #[test]
    fn remembers_valid_tokens_and_never_bad_ones() {
        let (issuer, verifier) = issuer_with_ttl(60);
        let edge = EdgeAuth::new(verifier);
        let token = issuer.issue(Uuid::new_v4()).unwrap().token;
        // The issuer's own start-up probe may be remembered already.
        let before = edge.verifier.remembered();
        assert!(edge.check(&request(&token)).is_ok());
        assert!(edge.check(&request(&token)).is_ok());
        assert_eq!(edge.verifier.remembered(), before + 1);

        let mut tampered = token.clone();
        tampered.insert(tampered.len() - 2, 'x');
        assert!(edge.check(&request(&tampered)).is_err());
        assert!(edge.check(&request("garbage")).is_err());
        assert_eq!(edge.verifier.remembered(), before + 1);
        assert!(
            edge.check(&TestRequest::default().to_http_request())
                .is_err()
        );
    }

    #[test]
    fn an_expired_token_is_refused() {
        let keys = test_support::jwt_keys();
        let edge = EdgeAuth::new(JwtVerifier::from_public_pem(keys.public_pem.as_bytes()).unwrap());
        let claims = test_support::claims_for(Uuid::new_v4(), chrono::Duration::seconds(-40));
        let token = test_support::mint_token_with(&claims);
        assert!(edge.check(&request(&token)).is_err());
        assert_eq!(edge.verifier.remembered(), 0);
    }
}
