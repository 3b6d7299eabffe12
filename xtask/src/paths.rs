//! Where things live: the workspace, its git-ignored `.data/`, the per-machine
//! cache (`~/.cache/cdc-commerce`: the broker's jars, shared target dir), and
//! the PostgreSQL binaries.

use std::path::PathBuf;

use anyhow::Context;

/// The workspace `cargo xtask` was run in. `cargo run` passes the manifest
/// directory at run time; that one wins over the compile-time value, since a
/// target directory shared by several clones holds one `xtask` binary that
/// any of them may have built.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest_dir
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// The git-ignored state of `cargo xtask up`, kept across runs.
pub fn data_dir() -> PathBuf {
    workspace_root().join(".data")
}

/// Per-machine cache outside the clone.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("cdc-commerce");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".cache").join("cdc-commerce")
}

/// The pom naming the broker's jars and pinning Kafka's version.
pub fn kafka_pom() -> PathBuf {
    workspace_root().join("xtask/kafka/pom.xml")
}

/// The script that configures, formats and starts one Kafka node.
pub fn kafka_run_script() -> PathBuf {
    workspace_root().join("xtask/kafka/run.sh")
}

/// Where one Kafka version's jars live (`<home>/libs`).
pub fn kafka_home(version: &str) -> PathBuf {
    cache_dir().join(format!("kafka-{version}"))
}

/// PostgreSQL server binaries: `PG_BIN_DIR`, default Debian's PostgreSQL 15.
pub fn pg_bin_dir() -> PathBuf {
    std::env::var_os("PG_BIN_DIR")
        .filter(|p| !p.is_empty())
        .map_or_else(
            || PathBuf::from("/usr/lib/postgresql/15/bin"),
            PathBuf::from,
        )
}

/// The cargo binary that runs us.
pub fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// The workspace's target directory as cargo resolves it (honours
/// `CARGO_TARGET_DIR` and config files).
pub fn target_dir() -> anyhow::Result<PathBuf> {
    let output = std::process::Command::new(cargo())
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(workspace_root())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo metadata")?;
    anyhow::ensure!(output.status.success(), "cargo metadata failed");
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("parsing cargo metadata")?;
    let dir = metadata["target_directory"]
        .as_str()
        .context("cargo metadata has no target_directory")?;
    Ok(PathBuf::from(dir))
}
