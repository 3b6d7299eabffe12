//! Credentials and tokens: password hashing, token signing, failed-login
//! throttling. Verification lives in `commerce_common::auth` (shared with the
//! services, which hold only the public key).

pub mod edge;
pub mod password;
pub mod throttle;
pub mod tokens;
