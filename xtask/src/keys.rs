//! The dev stack's token signing keys: an Ed25519 pair generated on first
//! `up` into `.data/keys/` (the gateway signs with the private key, every
//! service verifies with the public one).

use std::{os::unix::fs::PermissionsExt, path::PathBuf};

use anyhow::Context;
use ed25519_dalek::{
    SigningKey,
    pkcs8::{EncodePrivateKey, EncodePublicKey, spki::der::pem::LineEnding},
};

pub struct KeyFiles {
    /// PKCS#8 PEM.
    pub private: PathBuf,
    /// SPKI PEM.
    pub public: PathBuf,
}

pub fn ensure(dir: PathBuf) -> anyhow::Result<KeyFiles> {
    let files = KeyFiles {
        private: dir.join("jwt.pem"),
        public: dir.join("jwt.pub.pem"),
    };
    if files.private.is_file() && files.public.is_file() {
        return Ok(files);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let signing = SigningKey::generate(&mut rand::rngs::OsRng);
    let private = signing
        .to_pkcs8_pem(LineEnding::LF)
        .context("encoding the private key")?;
    let public = signing
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .context("encoding the public key")?;
    std::fs::write(&files.private, private.as_bytes())?;
    std::fs::set_permissions(&files.private, std::fs::Permissions::from_mode(0o600))?;
    std::fs::write(&files.public, public)?;
    crate::process::say(&format!(
        "generated the dev JWT key pair in {}",
        dir.display()
    ));
    Ok(files)
}
