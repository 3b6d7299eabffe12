//! A throwaway Ed25519 key pair per test process and tokens signed with it,
//! accepted by any service configured with [`TestKeys::public_pem`].

use std::{path::PathBuf, sync::OnceLock};

use commerce_common::auth::{AUDIENCE, Claims, ISSUER};
use ed25519_dalek::{
    SigningKey,
    pkcs8::{EncodePrivateKey, EncodePublicKey, spki::der::pem::LineEnding},
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use uuid::Uuid;

pub struct TestKeys {
    /// PKCS#8 PEM of the private key (what the gateway signs with).
    pub private_pem: String,
    /// SPKI PEM of the public key (what the services verify with).
    pub public_pem: String,
    /// The same keys as files, for `*_KEY_FILE` settings.
    pub private_key_file: PathBuf,
    pub public_key_file: PathBuf,
    encoding_key: EncodingKey,
}

/// The key pair of this test process, generated on first use.
pub fn jwt_keys() -> &'static TestKeys {
    static KEYS: OnceLock<TestKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let signing = SigningKey::generate(&mut rand::rngs::OsRng);
        let private_pem = signing
            .to_pkcs8_pem(LineEnding::LF)
            .expect("encode private key")
            .to_string();
        let public_pem = signing
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("encode public key");
        let dir = std::env::temp_dir().join(format!("test-support-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create key dir");
        let private_key_file = dir.join("jwt.pem");
        let public_key_file = dir.join("jwt.pub.pem");
        std::fs::write(&private_key_file, &private_pem).expect("write private key");
        std::fs::write(&public_key_file, &public_pem).expect("write public key");
        let encoding_key =
            EncodingKey::from_ed_pem(private_pem.as_bytes()).expect("private key as EncodingKey");
        TestKeys {
            private_pem,
            public_pem,
            private_key_file,
            public_key_file,
            encoding_key,
        }
    })
}

/// Claims as the gateway issues them, valid from now for `ttl`.
pub fn claims_for(user_id: Uuid, ttl: chrono::Duration) -> Claims {
    let now = chrono::Utc::now().timestamp();
    Claims {
        sub: user_id,
        iss: ISSUER.to_owned(),
        aud: AUDIENCE.to_owned(),
        iat: now,
        exp: now + ttl.num_seconds(),
    }
}

/// A valid access token for `user_id`, expiring in one hour.
pub fn mint_token(user_id: Uuid) -> String {
    mint_token_with(&claims_for(user_id, chrono::Duration::hours(1)))
}

/// A token with arbitrary claims (expired, wrong audience, ...), signed with
/// the test key.
pub fn mint_token_with(claims: &Claims) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::EdDSA),
        claims,
        &jwt_keys().encoding_key,
    )
    .expect("sign token")
}

#[cfg(test)]
mod tests {
    use commerce_common::auth::JwtVerifier;

    use super::*;

    #[test]
    fn minted_tokens_verify_with_the_public_key() {
        let user = Uuid::new_v4();
        let verifier = JwtVerifier::from_public_pem(jwt_keys().public_pem.as_bytes()).unwrap();
        assert_eq!(verifier.verify(&mint_token(user)).unwrap().sub, user);

        let expired = mint_token_with(&claims_for(user, chrono::Duration::hours(-2)));
        assert!(verifier.verify(&expired).is_err());
    }

    #[test]
    fn a_remembered_token_still_expires() {
        let user = Uuid::new_v4();
        let verifier = JwtVerifier::from_public_pem(jwt_keys().public_pem.as_bytes()).unwrap();
        let claims = claims_for(user, chrono::Duration::minutes(5));
        let token = mint_token_with(&claims);
        let now = chrono::Utc::now().timestamp() as u64;
        assert_eq!(verifier.verify_at(&token, now).unwrap().sub, user);
        assert_eq!(verifier.remembered(), 1);
        // Within the leeway after `exp`: still accepted, from memory.
        let leeway = commerce_common::auth::LEEWAY_SECONDS;
        let last_second = claims.exp as u64 + leeway;
        assert_eq!(verifier.verify_at(&token, last_second).unwrap(), claims);
        let error = verifier.verify_at(&token, last_second + 1).unwrap_err();
        assert_eq!(
            error.kind(),
            &jsonwebtoken::errors::ErrorKind::ExpiredSignature
        );
        assert_eq!(verifier.remembered(), 0);
    }

    #[test]
    fn a_tampered_copy_of_a_remembered_token_is_rejected() {
        let verifier = JwtVerifier::from_public_pem(jwt_keys().public_pem.as_bytes()).unwrap();
        let token = mint_token(Uuid::new_v4());
        verifier.verify(&token).unwrap();
        // Another subject under the same signature.
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let other = claims_for(Uuid::new_v4(), chrono::Duration::hours(1));
        let forged_claims = mint_token_with(&other);
        parts[1] = forged_claims.split('.').nth(1).unwrap().to_owned();
        assert!(verifier.verify(&parts.join(".")).is_err());
        // A changed signature (a character inside it: the last one also
        // carries unused bits).
        let mut bad_signature = token.clone().into_bytes();
        let at = bad_signature.len() - 10;
        bad_signature[at] = if bad_signature[at] == b'A' {
            b'B'
        } else {
            b'A'
        };
        let bad_signature = String::from_utf8(bad_signature).unwrap();
        assert!(verifier.verify(&bad_signature).is_err());
        assert_eq!(
            verifier.remembered(),
            1,
            "only the valid token is remembered"
        );
    }

    #[test]
    fn remembered_tokens_are_bounded() {
        let verifier =
            JwtVerifier::with_cache_capacity(jwt_keys().public_pem.as_bytes(), 3).unwrap();
        let tokens: Vec<String> = (0..7).map(|_| mint_token(Uuid::new_v4())).collect();
        for token in &tokens {
            verifier.verify(token).unwrap();
            assert!(verifier.remembered() <= 3);
        }
        // Forgotten tokens are checked again and still pass.
        for token in &tokens {
            verifier.verify(token).unwrap();
        }
        assert!(verifier.remembered() <= 3);
    }
}
