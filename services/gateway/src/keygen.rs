//! `gateway generate-keys <dir> [<public-dir>]`: the Ed25519 key pair that
//! signs and verifies access tokens, for a new deployment (compose's `keys`
//! job). Writes `jwt.pem` (PKCS#8, private, mode 0600) and `jwt.pub.pem`
//! (SPKI) only when missing, so re-running it never invalidates issued
//! tokens. With `<public-dir>` it also keeps a copy of the public key there:
//! the directory the services mount, which never holds the private key.

use std::{
    fmt,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::Context;
use ed25519_dalek::{
    SigningKey,
    pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, spki::der::pem::LineEnding},
};

/// File name of the private key (what `auth.private_key_file` names).
pub const PRIVATE_KEY_FILE: &str = "jwt.pem";
/// File name of the public key (what `auth.public_key_file` names).
pub const PUBLIC_KEY_FILE: &str = "jwt.pub.pem";

/// What [`ensure_key_pair`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Both files were there and belong together; nothing was written.
    Kept { private: PathBuf, public: PathBuf },
    /// Only the private key was there; its public key was written.
    DerivedPublic { private: PathBuf, public: PathBuf },
    /// A new pair was written.
    Generated { private: PathBuf, public: PathBuf },
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Kept { private, public } => write!(
                f,
                "kept the existing key pair {} and {}",
                private.display(),
                public.display()
            ),
            Outcome::DerivedPublic { private, public } => write!(
                f,
                "wrote the public key {} of the existing private key {}",
                public.display(),
                private.display()
            ),
            Outcome::Generated { private, public } => write!(
                f,
                "generated a new Ed25519 key pair: {} (private, PKCS#8) and {} (public, SPKI)",
                private.display(),
                public.display()
            ),
        }
    }
}

/// Makes sure `dir` holds a matching key pair; creates the directory and
/// whatever is missing. Refuses a public key without its private key and a
/// pair that does not belong together (replacing either would silently
/// invalidate tokens or break verification).
pub fn ensure_key_pair(dir: &Path) -> anyhow::Result<Outcome> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let private = dir.join(PRIVATE_KEY_FILE);
    let public = dir.join(PUBLIC_KEY_FILE);
    match (private.exists(), public.exists()) {
        (true, true) => {
            let signing = read_private(&private)?;
            let expected = public_pem(&signing)?;
            let found = std::fs::read_to_string(&public)
                .with_context(|| format!("reading {}", public.display()))?;
            anyhow::ensure!(
                found.trim() == expected.trim(),
                "{} does not belong to {}: remove both to generate a new pair",
                public.display(),
                private.display()
            );
            Ok(Outcome::Kept { private, public })
        }
        (true, false) => {
            let signing = read_private(&private)?;
            write_new(&public, public_pem(&signing)?.as_bytes(), 0o644)?;
            Ok(Outcome::DerivedPublic { private, public })
        }
        (false, true) => anyhow::bail!(
            "{} exists without {}: restore the private key, or remove the public key to generate a new pair",
            public.display(),
            private.display()
        ),
        (false, false) => {
            let signing = SigningKey::generate(&mut rand::rngs::OsRng);
            let private_pem = signing
                .to_pkcs8_pem(LineEnding::LF)
                .context("encoding the private key")?;
            write_new(&private, private_pem.as_bytes(), 0o600)?;
            write_new(&public, public_pem(&signing)?.as_bytes(), 0o644)?;
            Ok(Outcome::Generated { private, public })
        }
    }
}

/// Makes `dir/jwt.pub.pem` the public key of the pair in `keys_dir`
/// (written when missing or different: it follows the private key).
/// Returns its path.
pub fn publish_public_key(keys_dir: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let signing = read_private(&keys_dir.join(PRIVATE_KEY_FILE))?;
    let expected = public_pem(&signing)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let public = dir.join(PUBLIC_KEY_FILE);
    if std::fs::read_to_string(&public).is_ok_and(|found| found.trim() == expected.trim()) {
        return Ok(public);
    }
    // Replaced in one rename: a service starting meanwhile reads the old
    // file or the new one, never half of it.
    let partial = dir.join(format!("{PUBLIC_KEY_FILE}.partial"));
    let _ = std::fs::remove_file(&partial);
    write_new(&partial, expected.as_bytes(), 0o644)?;
    std::fs::rename(&partial, &public)
        .with_context(|| format!("replacing {}", public.display()))?;
    Ok(public)
}

fn read_private(path: &Path) -> anyhow::Result<SigningKey> {
    let pem =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    SigningKey::from_pkcs8_pem(&pem)
        .with_context(|| format!("{}: expected an Ed25519 PKCS#8 PEM", path.display()))
}

fn public_pem(signing: &SigningKey) -> anyhow::Result<String> {
    signing
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .context("encoding the public key")
}

/// Writes a file that must not exist yet (no clobbering a concurrent run),
/// then fixes its mode (the umask may have narrowed it).
fn write_new(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_then_keeps_and_derives_a_missing_public_key() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let Outcome::Generated { private, public } = ensure_key_pair(&keys).unwrap() else {
            panic!("a new pair in an empty directory");
        };
        let mode = std::fs::metadata(&private).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the private key is private");
        let first = std::fs::read(&private).unwrap();
        assert!(matches!(
            ensure_key_pair(&keys).unwrap(),
            Outcome::Kept { .. }
        ));
        assert_eq!(std::fs::read(&private).unwrap(), first, "never rewritten");

        let public_pem = std::fs::read_to_string(&public).unwrap();
        std::fs::remove_file(&public).unwrap();
        assert!(matches!(
            ensure_key_pair(&keys).unwrap(),
            Outcome::DerivedPublic { .. }
        ));
        assert_eq!(std::fs::read_to_string(&public).unwrap(), public_pem);
    }

    #[test]
    fn publishes_the_public_key_alone_and_follows_a_new_pair() {
        let dir = tempfile::tempdir().unwrap();
        let (keys, public_dir) = (dir.path().join("keys"), dir.path().join("public"));
        ensure_key_pair(&keys).unwrap();
        let published = publish_public_key(&keys, &public_dir).unwrap();
        let names: Vec<_> = std::fs::read_dir(&public_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            [PUBLIC_KEY_FILE],
            "no private key in the public directory"
        );
        assert_eq!(
            std::fs::read(&published).unwrap(),
            std::fs::read(keys.join(PUBLIC_KEY_FILE)).unwrap()
        );
        // A new pair (the operator replaced the keys): the copy follows.
        std::fs::remove_dir_all(&keys).unwrap();
        ensure_key_pair(&keys).unwrap();
        publish_public_key(&keys, &public_dir).unwrap();
        assert_eq!(
            std::fs::read(&published).unwrap(),
            std::fs::read(keys.join(PUBLIC_KEY_FILE)).unwrap()
        );
    }

    #[test]
    fn refuses_a_public_key_alone_and_a_mismatched_pair() {
        let dir = tempfile::tempdir().unwrap();
        ensure_key_pair(dir.path()).unwrap();
        let other = tempfile::tempdir().unwrap();
        ensure_key_pair(other.path()).unwrap();
        std::fs::copy(
            other.path().join(PUBLIC_KEY_FILE),
            dir.path().join(PUBLIC_KEY_FILE),
        )
        .unwrap();
        let error = ensure_key_pair(dir.path()).unwrap_err().to_string();
        assert!(error.contains("does not belong"), "{error}");

        std::fs::remove_file(dir.path().join(PRIVATE_KEY_FILE)).unwrap();
        let error = ensure_key_pair(dir.path()).unwrap_err().to_string();
        assert!(error.contains("exists without"), "{error}");
    }
}
