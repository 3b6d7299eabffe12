//! A private PostgreSQL cluster: `initdb` on first use, started as the
//! unprivileged `postgres` account when xtask runs as root, logical
//! replication enabled for the relay, stopped with a fast shutdown.

use std::{
    ffi::CString,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context;

use crate::{
    paths,
    process::{self, Options, Proc, RunAs, StopPolicy, say},
    signals,
};

/// The settings the relay and the tests need, appended to postgresql.conf.
const BASE_SETTINGS: &str = "
# --- cargo xtask ---
listen_addresses = '127.0.0.1'
wal_level = logical
max_wal_senders = 32
max_replication_slots = 32
# An abandoned slot must not fill the disk (it becomes `lost` instead).
max_slot_wal_keep_size = '2GB'
max_connections = 200
";

/// Extra settings of throwaway test clusters: durability traded for speed,
/// room for the slots of many tests.
const TEST_SETTINGS: &str = "
fsync = off
full_page_writes = off
max_wal_senders = 200
max_replication_slots = 200
max_slot_wal_keep_size = '1GB'
max_connections = 300
log_min_messages = warning
";

#[derive(Clone)]
pub struct Cluster {
    /// The server's name in the logs.
    pub name: String,
    pub data_dir: PathBuf,
    pub socket_dir: PathBuf,
    pub port: u16,
    pub run_as: Option<RunAs>,
    /// Write the server log here instead of our stdout.
    pub log_file: Option<PathBuf>,
}

impl Cluster {
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The data directory exists and was initialised.
    pub fn is_initialised(&self) -> bool {
        self.data_dir.join("PG_VERSION").is_file()
    }

    /// Creates the directories (owned by the server's account) and runs
    /// `initdb` unless the cluster exists. Returns whether it was created.
    pub fn init(&self, test: bool) -> anyhow::Result<bool> {
        check_binaries()?;
        for dir in [&self.data_dir, &self.socket_dir] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            if let Some(user) = self.run_as {
                chown(dir, user)?;
            }
        }
        std::fs::set_permissions(&self.data_dir, std::fs::Permissions::from_mode(0o700))?;
        if self.is_initialised() {
            return Ok(false);
        }
        // A half-made data directory (interrupted initdb) is started over.
        if std::fs::read_dir(&self.data_dir)?.next().is_some() {
            say(&format!(
                "{} holds an incomplete cluster: removing it",
                self.data_dir.display()
            ));
            std::fs::remove_dir_all(&self.data_dir)?;
            std::fs::create_dir_all(&self.data_dir)?;
            if let Some(user) = self.run_as {
                chown(&self.data_dir, user)?;
            }
            std::fs::set_permissions(&self.data_dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let mut initdb = Command::new(paths::pg_bin_dir().join("initdb"));
        initdb
            .arg("-D")
            .arg(&self.data_dir)
            .args([
                "--username=postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-instructions",
            ])
            .env("LC_ALL", "C");
        if test {
            initdb.arg("--no-sync");
        }
        process::run("initdb", initdb, self.run_as)?;
        let conf = self.data_dir.join("postgresql.conf");
        let mut settings = BASE_SETTINGS.to_owned();
        if test {
            settings.push_str(TEST_SETTINGS);
        }
        let mut text = std::fs::read_to_string(&conf)?;
        text.push_str(&settings);
        std::fs::write(&conf, text)?;
        Ok(true)
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&self) -> anyhow::Result<Proc> {
        let mut command = Command::new(paths::pg_bin_dir().join("postgres"));
        command
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(&self.socket_dir)
            .env("LC_ALL", "C");
        let options = Options {
            run_as: self.run_as,
            // A fast shutdown if xtask dies.
            death_signal: libc::SIGINT,
            // SIGINT is a fast shutdown (what `pg_ctl stop -m fast` sends);
            // SIGQUIT the immediate one.
            stop: StopPolicy(vec![
                (libc::SIGINT, Duration::from_secs(30)),
                (libc::SIGQUIT, Duration::from_secs(5)),
            ]),
            log_file: self.log_file.clone(),
        };
        let mut server = Proc::spawn(&self.name, command, options)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = server.exited() {
                let log = self
                    .log_file
                    .as_ref()
                    .map(|f| format!(" (log: {})", f.display()))
                    .unwrap_or_default();
                anyhow::bail!(
                    "PostgreSQL exited during start-up ({}){log}",
                    process::describe(status)
                );
            }
            if let Some(signal) = signals::received() {
                anyhow::bail!("interrupted by {}", signals::name(signal));
            }
            if self.accepts_connections() {
                return Ok(server);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "PostgreSQL did not accept connections on port {} within 60 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn accepts_connections(&self) -> bool {
        Command::new(paths::pg_bin_dir().join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-U", "postgres", "-t", "1", "-p"])
            .arg(self.port.to_string())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Runs an SQL file with psql as the superuser, stopping at the first
    /// error, with psql `variables` set.
    pub fn psql_file(
        &self,
        database: &str,
        file: &Path,
        variables: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let mut command = self.psql(database);
        for (name, value) in variables {
            command.arg("-v").arg(format!("{name}={value}"));
        }
        command.arg("-f").arg(file);
        process::run("psql", command, None).with_context(|| format!("running {}", file.display()))
    }

    fn psql(&self, database: &str) -> Command {
        let mut command = Command::new(paths::pg_bin_dir().join("psql"));
        command
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-d")
            .arg(database)
            .env("PGCONNECT_TIMEOUT", "10");
        command
    }
}

/// The account PostgreSQL runs as: none when we are not root; the
/// `postgres` user (or `XTASK_PG_USER`) when we are, since the server
/// refuses to run as root.
pub fn server_account() -> anyhow::Result<Option<RunAs>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = std::env::var("XTASK_PG_USER").unwrap_or_else(|_| "postgres".into());
    let c_name = CString::new(name.clone())?;
    // SAFETY: getpwnam with a valid C string; the result is copied at once.
    let entry = unsafe { libc::getpwnam(c_name.as_ptr()) };
    anyhow::ensure!(
        !entry.is_null(),
        "running as root, but there is no unprivileged user `{name}` to run PostgreSQL as: \
         create one (`useradd --system --home /var/lib/postgresql postgres`) or set XTASK_PG_USER"
    );
    // SAFETY: non-null pointer to a static passwd entry.
    let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
    Ok(Some(RunAs { uid, gid }))
}

/// Whether `account` can create files in `dir` (every parent traversable).
pub fn reachable_by(dir: &Path, account: RunAs) -> bool {
    use std::os::unix::process::CommandExt;
    Command::new("/bin/sh")
        .args(["-c", "cd \"$1\" && test -w .", "sh"])
        .arg(dir)
        .uid(account.uid)
        .gid(account.gid)
        .status()
        .is_ok_and(|s| s.success())
}

pub fn check_binaries() -> anyhow::Result<()> {
    let dir = paths::pg_bin_dir();
    for bin in ["initdb", "postgres", "pg_isready", "psql"] {
        anyhow::ensure!(
            dir.join(bin).is_file(),
            "PostgreSQL 15 server binaries not found ({} is missing): install them with \
             `apt-get install postgresql-15` (or set PG_BIN_DIR)",
            dir.join(bin).display()
        );
    }
    Ok(())
}

fn chown(path: &Path, account: RunAs) -> anyhow::Result<()> {
    std::os::unix::fs::chown(path, Some(account.uid), Some(account.gid))
        .with_context(|| format!("chown {}", path.display()))
}
