//! Every way a token must be refused, on `GET /api/me`.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use commerce_common::auth::Claims;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};
use test_support::{claims_for, jwt_keys, mint_token, mint_token_with};
use uuid::Uuid;

use crate::helpers::{TestApp, spawn_app};

const PASSWORD: &str = "correct horse battery";

async fn registered_user(app: &TestApp) -> (Uuid, String) {
    let body: Value = app
        .register("tokens@example.com", PASSWORD, "Tokens")
        .await
        .json()
        .await
        .unwrap();
    let id = body["user"]["id"].as_str().unwrap().parse().unwrap();
    (id, body["token"].as_str().unwrap().to_owned())
}

async fn assert_rejected(app: &TestApp, authorization: &str, case: &str) {
    let response = app.me(Some(authorization)).await;
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "{case} accepted"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "UNAUTHORIZED", "{case}");
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

#[tokio::test]
async fn the_issued_token_and_a_test_minted_one_are_accepted() {
    let app = spawn_app().await;
    let (user_id, token) = registered_user(&app).await;
    assert_eq!(
        app.me(Some(&format!("Bearer {token}"))).await.status(),
        StatusCode::OK
    );
    // Any token signed with the configured key works (same key pair).
    assert_eq!(
        app.me(Some(&format!("Bearer {}", mint_token(user_id))))
            .await
            .status(),
        StatusCode::OK
    );
    // Inside the 30 s leeway an expired token still passes.
    let just_expired = mint_token_with(&claims_for(user_id, chrono::Duration::seconds(-10)));
    assert_eq!(
        app.me(Some(&format!("Bearer {just_expired}")))
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn every_bad_token_is_rejected() {
    let app = spawn_app().await;
    let (user_id, token) = registered_user(&app).await;
    let claims = claims_for(user_id, chrono::Duration::hours(1));

    let missing = app.me(None).await;
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);

    // alg: none, no signature.
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&json!(claims))
    );
    assert_rejected(&app, &format!("Bearer {none}"), "alg none").await;

    // Algorithm confusion: HS256 keyed with the public key's PEM.
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(jwt_keys().public_pem.as_bytes()),
    )
    .unwrap();
    assert_rejected(
        &app,
        &format!("Bearer {confused}"),
        "HS256 with the public key",
    )
    .await;

    // Tampered payload: another user's id under the original signature.
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut forged = claims.clone();
    forged.sub = Uuid::new_v4();
    parts[1] = b64(&json!(forged));
    assert_rejected(
        &app,
        &format!("Bearer {}", parts.join(".")),
        "tampered payload",
    )
    .await;

    // Tampered signature.
    let mut sig = token.clone();
    let last = sig.pop().unwrap();
    sig.push(if last == 'A' { 'B' } else { 'A' });
    assert_rejected(&app, &format!("Bearer {sig}"), "tampered signature").await;

    // Expired beyond the leeway.
    let expired = mint_token_with(&claims_for(user_id, chrono::Duration::minutes(-5)));
    assert_rejected(&app, &format!("Bearer {expired}"), "expired").await;

    let wrong_aud = mint_token_with(&Claims {
        aud: "someone-else".into(),
        ..claims.clone()
    });
    assert_rejected(&app, &format!("Bearer {wrong_aud}"), "wrong audience").await;

    let wrong_iss = mint_token_with(&Claims {
        iss: "evil-issuer".into(),
        ..claims.clone()
    });
    assert_rejected(&app, &format!("Bearer {wrong_iss}"), "wrong issuer").await;

    // Signed by another Ed25519 key.
    let other_key = ed25519_other_key();
    let foreign =
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &other_key).unwrap();
    assert_rejected(&app, &format!("Bearer {foreign}"), "foreign key").await;

    for garbage in [
        "Bearer ",
        "Bearer not.a.token",
        "Bearer abc",
        &format!("Basic {token}"),
        &token,
    ] {
        assert_rejected(&app, garbage, garbage).await;
    }
}

/// A fixed Ed25519 key that is not the test key pair (RFC 8032 test 1).
fn ed25519_other_key() -> EncodingKey {
    let pem = "-----BEGIN PRIVATE KEY-----\n\
               MC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n\
               -----END PRIVATE KEY-----\n";
    EncodingKey::from_ed_pem(pem.as_bytes()).unwrap()
}
