//! Credentials and tokens: password hashing, token signing, failed-login
//! throttling, request rate limits and the client address they key on. Verification lives in `commerce_common::auth` (shared with the
//! services, which hold only the public key).

pub mod client;
pub mod edge;
pub mod password;
pub mod rate_limit;
pub mod throttle;
pub mod tokens;
