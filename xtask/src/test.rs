//! `cargo xtask test`: every test of the workspace against a real PostgreSQL
//! cluster and a real Kafka. Both are throwaway (a temp directory, free
//! ports) unless `TEST_DATABASE_URL` /
//! `TEST_KAFKA_BROKERS` name existing ones. Torn down when the tests end,
//! fail or are interrupted; the exit status is the tests'.

use std::{
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use anyhow::Context;

use crate::{
    broker, paths, ports,
    postgres::{self, Cluster},
    process::{self, Proc, say},
    signals,
};

/// Started infrastructure; stopped and deleted when dropped.
struct Environment {
    dir: PathBuf,
    broker: Option<Proc>,
    postgres: Option<Proc>,
}

impl Drop for Environment {
    fn drop(&mut self) {
        for mut proc in [self.broker.take(), self.postgres.take()]
            .into_iter()
            .flatten()
        {
            proc.stop();
        }
        if std::env::var_os("XTASK_KEEP_TEST_DIR").is_some() {
            say(&format!("kept {}", self.dir.display()));
        } else if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            say(&format!("could not remove {}: {e}", self.dir.display()));
        }
    }
}

pub fn run(args: &[String]) -> anyhow::Result<ExitCode> {
    signals::install();
    let started = Instant::now();
    let root = paths::workspace_root();
    let runner_args: Vec<String> = match args.iter().position(|a| a == "--") {
        Some(i) => args[..i].iter().chain(&args[i + 1..]).cloned().collect(),
        None => args.to_vec(),
    };

    let external_db = non_empty_env("TEST_DATABASE_URL");
    let external_kafka = non_empty_env("TEST_KAFKA_BROKERS");
    if external_db.is_none() {
        postgres::check_binaries()?;
    }
    // Tests that need a broker of their own (a whole saga stack, a broker
    // outage) start one from these jars with xtask/kafka/run.sh.
    let kafka_libs = broker::ensure_installed()?;

    say("building the binaries the tests start (cargo build)");
    // The workspace's feature set, as the test build uses, so the two
    // builds share their artifacts.
    let mut build = Command::new(paths::cargo());
    build
        .args(["build", "--workspace", "--bins"])
        .current_dir(&root);
    process::run_inherited(build).context("building the binaries failed (see the errors above)")?;
    let bin_dir = paths::target_dir()?.join("debug");

    let dir = std::env::temp_dir().join(format!(
        "xtask-test-{}-{}",
        std::process::id(),
        started.elapsed().subsec_nanos()
    ));
    std::fs::create_dir_all(dir.join("tmp"))?;
    // The PostgreSQL account must be able to enter it.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let mut env = Environment {
        dir: dir.clone(),
        broker: None,
        postgres: None,
    };

    let database_url = match external_db {
        Some(url) => {
            say(&format!("using the PostgreSQL cluster at {url}"));
            url
        }
        None => {
            let cluster = Cluster {
                name: "postgres".into(),
                data_dir: dir.join("pg"),
                socket_dir: dir.join("pg-socket"),
                port: ports::free_port()?,
                run_as: postgres::server_account()?,
                log_file: Some(dir.join("postgres.log")),
            };
            cluster.init(true)?;
            env.postgres = Some(cluster.start()?);
            say(&format!(
                "PostgreSQL on port {} (log: {})",
                cluster.port,
                dir.join("postgres.log").display()
            ));
            cluster.admin_url()
        }
    };
    let brokers = match external_kafka {
        Some(brokers) => {
            say(&format!("using the broker at {brokers}"));
            brokers
        }
        None => {
            let mut attempt = 1;
            let (node, proc) = loop {
                let node = broker::Node {
                    port: ports::free_port()?,
                    controller_port: ports::free_port()?,
                    dir: dir.join("kafka"),
                    heap: "384m",
                    log_file: Some(dir.join("kafka.log")),
                };
                match node.start() {
                    Ok(proc) => break (node, proc),
                    // A free port can be taken by another process before
                    // Kafka binds it: try other ones.
                    Err(e) if attempt < 3 && e.is::<broker::StartupExit>() => {
                        say(&format!("{e:#}; trying other ports"));
                        attempt += 1;
                    }
                    Err(e) => return Err(e),
                }
            };
            env.broker = Some(proc);
            say(&format!(
                "Kafka on port {} (log: {})",
                node.port,
                dir.join("kafka.log").display()
            ));
            node.brokers()
        }
    };

    let test_env: [(&str, std::ffi::OsString); 5] = [
        ("TEST_DATABASE_URL", database_url.into()),
        ("TEST_KAFKA_BROKERS", brokers.into()),
        ("TEST_KAFKA_LIBS", kafka_libs.into()),
        ("COMMERCE_BIN_DIR", bin_dir.into()),
        ("TMPDIR", dir.join("tmp").into()),
    ];
    let nextest = use_nextest();
    // The picked packages, or the whole workspace.
    let picks_packages = runner_args
        .iter()
        .any(|a| a == "-p" || a.starts_with("--package") || (a.starts_with("-p") && a.len() > 2));
    let mut code = 0;
    // nextest does not run doctests: they go first, so that the runner's
    // summary is the last test result printed.
    if nextest && runner_args.is_empty() {
        let mut doc = Command::new(paths::cargo());
        doc.args(["test", "--workspace", "--doc"])
            .current_dir(&root)
            .envs(test_env.clone());
        say("running the doctests (cargo test --doc)");
        code = run_tests(doc)?;
    }
    if code == 0 && signals::received().is_none() {
        let mut runner = Command::new(paths::cargo());
        runner.current_dir(&root);
        if nextest {
            runner.args(["nextest", "run"]);
        } else {
            runner.arg("test");
        }
        if !picks_packages {
            runner.arg("--workspace");
        }
        runner
            .arg("--no-fail-fast")
            .args(&runner_args)
            .envs(test_env);
        say(&format!(
            "running the tests ({})",
            if nextest {
                "cargo nextest"
            } else {
                "cargo test"
            }
        ));
        code = run_tests(runner)?;
    }

    if let Some(signal) = signals::received() {
        drop(env);
        say(&format!(
            "interrupted by {}; everything is stopped and removed",
            signals::name(signal)
        ));
        return Ok(ExitCode::from(130));
    }
    if code != 0 {
        for log in ["postgres.log", "kafka.log"] {
            print_tail(&dir.join(log), 15);
        }
    }
    drop(env);
    say(&format!(
        "tests {} in {:.0} s",
        if code == 0 { "passed" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    ));
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// Runs the test runner in our process group (Ctrl-C reaches it directly),
/// forwards SIGTERM, and returns its exit code.
fn run_tests(mut command: Command) -> anyhow::Result<i32> {
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().context("starting the test runner")?;
    let mut forwarded = false;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status.code().unwrap_or(1).max(i32::from(!status.success())));
        }
        if !forwarded && let Some(signal) = signals::received() {
            say(&format!(
                "{} received: stopping the tests",
                signals::name(signal)
            ));
            // SAFETY: kill(2) on our own, not yet reaped child.
            unsafe { libc::kill(child.id() as i32, signal) };
            forwarded = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// cargo-nextest when installed, unless `XTASK_TEST_RUNNER=cargo`.
fn use_nextest() -> bool {
    if std::env::var("XTASK_TEST_RUNNER").is_ok_and(|r| r == "cargo") {
        return false;
    }
    Command::new(paths::cargo())
        .args(["nextest", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn print_tail(path: &Path, lines: usize) {
    let tail = process::log_tail(path, lines);
    if tail.is_empty() {
        return;
    }
    say(&format!("last lines of {}:", path.display()));
    for line in tail {
        say(&format!("  {line}"));
    }
}
