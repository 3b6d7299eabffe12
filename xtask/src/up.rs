//! `cargo xtask up`: the whole system on this machine. PostgreSQL and Kafka
//! keep their data in `.data/`, so a second `up` resumes where the first
//! stopped; the services and the relay run from the workspace's debug build
//! (`--release`: the optimised one, for load tests). Every process logs into
//! this terminal with its name as prefix. Ctrl-C (or SIGTERM) first drains:
//! the gateway stops taking requests and the sagas in flight settle (at most
//! 15 s; a second Ctrl-C skips it); then everything stops in order:
//! services, relay, broker, PostgreSQL. A child that dies on its own is
//! restarted with backoff, as compose's `restart:` policy does
//! (`--fail-fast`: the whole stack stops instead).

use std::{
    collections::HashMap,
    ffi::OsString,
    io::IsTerminal,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use anyhow::Context;

use crate::{
    broker, http, keys, paths, ports,
    postgres::{self, Cluster},
    process::{self, Options, Proc, say},
    signals,
};

pub const POSTGRES_PORT: u16 = 55432;
pub const BROKER_PORT: u16 = 9092;
/// The Kafka node's controller listener (KRaft).
pub const CONTROLLER_PORT: u16 = 9093;
pub const RELAY_PORT: u16 = 8090;
/// Logins from db/bootstrap: the services own their databases; the relay
/// has replication and connect rights only.
const SERVICE_LOGIN: &str = "commerce:commerce";
const RELAY_LOGIN: &str = "outbox_relay:relay";

/// One service of the stack: binary, port, database, whether it consumes.
struct Service {
    binary: &'static str,
    port: u16,
    database: &'static str,
    /// Relay source name (`APP__SOURCES__<NAME>__URL`); with
    /// `--postgres-per-service` its server logs as `pg-<source>`.
    source: &'static str,
}

const SERVICES: [Service; 4] = [
    Service {
        binary: "gateway",
        port: 8084,
        database: "commerce_gateway",
        source: "gateway",
    },
    Service {
        binary: "order-service",
        port: 8081,
        database: "commerce_order",
        source: "order",
    },
    Service {
        binary: "payment-service",
        port: 8082,
        database: "commerce_payment",
        source: "payment",
    },
    Service {
        binary: "delivery-service",
        port: 8083,
        database: "commerce_delivery",
        source: "delivery",
    },
];

pub struct Args {
    kafka: Option<String>,
    partitions: u32,
    release: bool,
    postgres_per_service: bool,
    /// Where PostgreSQL, Kafka and the dev keys keep their data.
    data_dir: PathBuf,
    /// Added to every port of the stack, so a second stack (another clone,
    /// a test) can run beside the first.
    port_offset: u16,
    /// A child that dies stops the whole stack instead of being restarted.
    fail_fast: bool,
    /// Relay sources whose missing or lost slot `outbox-relay create-slots`
    /// re-creates (`--recreate-slot <source>`, repeatable).
    recreate_slots: Vec<String>,
    /// Settings for one binary, `--set <binary>:APP__KEY=value` (repeatable):
    /// the inherited `APP__*` variables are stripped, so this is how a run
    /// tries another value (a perf experiment, a feature switch).
    settings: Vec<Setting>,
}

/// One `--set`: a binary of the stack, an `APP__*` variable and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Setting {
    binary: String,
    key: String,
    value: String,
}

impl Setting {
    fn parse(spec: &str) -> anyhow::Result<Self> {
        let binaries = [
            "gateway",
            "order-service",
            "payment-service",
            "delivery-service",
            "outbox-relay",
        ];
        let (binary, assignment) = spec
            .split_once(':')
            .context("--set needs <binary>:APP__KEY=value")?;
        anyhow::ensure!(
            binaries.contains(&binary),
            "--set: unknown binary {binary:?} (one of {})",
            binaries.join(", ")
        );
        let (key, value) = assignment
            .split_once('=')
            .context("--set needs <binary>:APP__KEY=value")?;
        anyhow::ensure!(
            key.starts_with("APP__"),
            "--set: {key:?} is not a setting (APP__SECTION__KEY)"
        );
        Ok(Self {
            binary: binary.into(),
            key: key.into(),
            value: value.into(),
        })
    }
}

impl Args {
    /// The `--set` settings of `binary`, as environment variables.
    fn settings_of(&self, binary: &str) -> impl Iterator<Item = (String, OsString)> + '_ {
        let binary = binary.to_owned();
        self.settings
            .iter()
            .filter(move |s| s.binary == binary)
            .map(|s| (s.key.clone(), OsString::from(&s.value)))
    }

    /// A port of the stack: its default plus `--port-offset`.
    fn port(&self, default: u16) -> u16 {
        default + self.port_offset
    }
}

impl Args {
    pub fn parse(args: &[String]) -> anyhow::Result<Self> {
        let mut options = Self {
            kafka: None,
            partitions: 3,
            release: false,
            postgres_per_service: false,
            data_dir: paths::data_dir(),
            port_offset: 0,
            fail_fast: false,
            recreate_slots: Vec::new(),
            settings: Vec::new(),
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) => (flag, Some(value.to_owned())),
                None => (arg.as_str(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| args.next().cloned())
                    .with_context(|| format!("{flag} needs a value"))
            };
            match flag {
                "--kafka" => options.kafka = Some(value()?),
                "--release" => options.release = true,
                "--fail-fast" => options.fail_fast = true,
                "--recreate-slot" => options.recreate_slots.push(value()?),
                "--set" => options.settings.push(Setting::parse(&value()?)?),
                "--postgres-per-service" => options.postgres_per_service = true,
                "--data-dir" => options.data_dir = PathBuf::from(value()?),
                "--port-offset" => {
                    options.port_offset = value()?
                        .parse()
                        .ok()
                        .filter(|n| *n <= 5000)
                        .context("--port-offset needs a number from 0 to 5000")?;
                }
                "--partitions" => {
                    options.partitions = value()?
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .context("--partitions needs a positive number")?;
                }
                other => anyhow::bail!("unknown option {other} (see `cargo xtask --help`)"),
            }
        }
        Ok(options)
    }
}

/// Starts one process of the stack, again after it died.
type Starter = Box<dyn FnMut() -> anyhow::Result<Proc>>;

/// Everything started so far; stopped in order when dropped.
#[derive(Default)]
struct Stack {
    /// One server, or one per service (`--postgres-per-service`).
    postgres: Vec<Proc>,
    broker: Option<Proc>,
    services: Vec<Proc>,
    relay: Option<Proc>,
    /// How to start each of them again, by name.
    starters: HashMap<String, Starter>,
}

impl Stack {
    /// Starts a process and keeps `starter` to restart it.
    fn start(
        &mut self,
        name: &str,
        mut starter: impl FnMut() -> anyhow::Result<Proc> + 'static,
    ) -> anyhow::Result<Proc> {
        let proc = starter()?;
        self.starters.insert(name.to_owned(), Box::new(starter));
        Ok(proc)
    }

    /// Every running process, in start order.
    fn all(&mut self) -> impl Iterator<Item = &mut Proc> {
        self.postgres
            .iter_mut()
            .chain(self.broker.iter_mut())
            .chain(self.services.iter_mut())
            .chain(self.relay.iter_mut())
    }

    fn shutdown(&mut self) {
        let any = !self.postgres.is_empty() || self.broker.is_some();
        if any {
            say("stopping: services, relay, broker, PostgreSQL");
        }
        // Services first so the relay can publish their last outbox rows.
        for service in &mut self.services {
            service.begin_stop();
        }
        for mut service in self.services.drain(..) {
            service.stop();
        }
        for mut proc in [self.relay.take(), self.broker.take()]
            .into_iter()
            .flatten()
        {
            proc.stop();
        }
        for server in &mut self.postgres {
            server.begin_stop();
        }
        for mut server in self.postgres.drain(..) {
            server.stop();
        }
        if any {
            say("stopped");
        }
    }

    /// The first child that exited, with its status.
    fn exited(&mut self) -> Option<(String, std::process::ExitStatus)> {
        self.all()
            .find_map(|proc| Some((proc.name().to_owned(), proc.exited()?)))
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown();
    }
}

pub fn run(options: Args) -> anyhow::Result<ExitCode> {
    signals::install();
    let started = Instant::now();
    let root = paths::workspace_root();

    // Everything that can be checked before starting anything.
    postgres::check_binaries()?;
    let needed_ports = needed_ports(&options);
    ports::ensure_free(&needed_ports)?;
    let account = postgres::server_account()?;
    let (pg_dir, pg_note) = postgres_location(&options.data_dir, account)?;
    if options.kafka.is_none() {
        broker::ensure_installed()?;
    }

    let bin_dir = match std::env::var_os("COMMERCE_BIN_DIR").filter(|d| !d.is_empty()) {
        // Binaries built already (the tests' build): used as they are.
        Some(dir) => {
            say(&format!("using the binaries in {}", dir.to_string_lossy()));
            PathBuf::from(dir)
        }
        None => {
            say("building the services and the relay (cargo build)");
            let mut build = Command::new(paths::cargo());
            build.arg("build").current_dir(&root);
            if options.release {
                build.arg("--release");
            }
            for service in &SERVICES {
                build.args(["-p", service.binary]);
            }
            build.args(["-p", "outbox-relay"]);
            process::run_inherited(build)
                .context("building the binaries failed (see the errors above)")?;
            let profile = if options.release { "release" } else { "debug" };
            paths::target_dir()?.join(profile)
        }
    };
    // The build may have taken a while.
    ports::ensure_free(&needed_ports)?;

    let keys = keys::ensure(options.data_dir.join("keys"))?;
    let mut stack = Stack::default();

    // PostgreSQL.
    if let Some(note) = pg_note {
        say(&note);
    }
    let servers = servers(
        &pg_dir,
        account,
        options.postgres_per_service,
        options.port(POSTGRES_PORT),
    );
    for server in &servers {
        if server.cluster.init(false)? {
            say(&format!(
                "created a PostgreSQL cluster in {}",
                server.cluster.data_dir.display()
            ));
        }
    }
    for server in &servers {
        let cluster = server.cluster.clone();
        let server_proc = stack.start(&cluster.name.clone(), move || cluster.start())?;
        stack.postgres.push(server_proc);
        bootstrap(server, &root.join("db").join("bootstrap"))?;
    }

    // The broker.
    let brokers = match &options.kafka {
        Some(brokers) => {
            say(&format!("using the broker at {brokers}"));
            brokers.clone()
        }
        None => {
            let node = broker::Node {
                port: options.port(BROKER_PORT),
                controller_port: options.port(CONTROLLER_PORT),
                dir: options.data_dir.join("kafka"),
                heap: "512m",
                log_file: None,
            };
            let brokers = node.brokers();
            stack.broker = Some(stack.start("kafka", move || node.start())?);
            broker::create_topics(&brokers, options.partitions)?;
            brokers
        }
    };

    // The relay's slots before anything can write an outbox row: an event
    // committed before its database's slot exists would never be published.
    let relay = relay_env(&options, &brokers, &servers);
    create_slots(&bin_dir, &relay, &options.recreate_slots)?;

    // The services (their migrations create the outbox tables and the
    // relay's publications), then the relay.
    for service in &SERVICES {
        let server = server_of(&servers, service);
        let mut env: Vec<(String, OsString)> = vec![
            (
                "APP__HTTP__PORT".into(),
                options.port(service.port).to_string().into(),
            ),
            (
                "APP__DATABASE__URL".into(),
                server.service_url(service.database).into(),
            ),
            (
                "APP__AUTH__PUBLIC_KEY_FILE".into(),
                keys.public.clone().into(),
            ),
            // Everything shares this machine's cores: one HTTP worker and one
            // runtime thread per service (fewer threads waking each other;
            // measured in docs/perf.md).
            ("APP__HTTP__WORKERS".into(), "1".into()),
            ("TOKIO_WORKER_THREADS".into(), "1".into()),
        ];
        if service.binary == "gateway" {
            env.push((
                "APP__AUTH__PRIVATE_KEY_FILE".into(),
                keys.private.clone().into(),
            ));
            // Every client of a development stack is 127.0.0.1: the
            // per-address limits would count a load run (perf/) and the
            // developer's curl as one client. The global bcrypt limit stays.
            for key in [
                "APP__RATE_LIMIT__REGISTER_PER_ADDRESS__REQUESTS",
                "APP__RATE_LIMIT__LOGIN_PER_ADDRESS__REQUESTS",
            ] {
                env.push((key.into(), "1000000".into()));
            }
            for upstream in &SERVICES[1..] {
                env.push((
                    format!("APP__UPSTREAMS__{}", upstream.source.to_uppercase()),
                    format!("http://127.0.0.1:{}", options.port(upstream.port)).into(),
                ));
            }
        } else {
            env.push(("APP__KAFKA__BROKERS".into(), brokers.clone().into()));
        }
        // A load run (perf/) places hundreds of orders a second for 20
        // customers: the per-customer quotas would refuse most of them.
        let quotas: &[(&str, &str)] = match service.binary {
            "order-service" => &[
                ("APP__QUOTAS__MAX_OPEN_ORDERS", "1000000"),
                ("APP__QUOTAS__MAX_ORDERS_PER_INTERVAL", "1000000"),
                ("APP__QUOTAS__PLACEMENT_INTERVAL", "1s"),
            ],
            "delivery-service" => &[("APP__QUOTAS__BOOKINGS_PER_CUSTOMER_PER_DAY", "1000000")],
            _ => &[],
        };
        env.extend(
            quotas
                .iter()
                .map(|&(key, value)| (key.into(), value.into())),
        );
        env.extend(options.settings_of(service.binary));
        let proc = stack.start(service.binary, binary(&bin_dir, service.binary, env))?;
        stack.services.push(proc);
    }
    for service in &SERVICES {
        wait_ready(
            &mut stack,
            service.binary,
            options.port(service.port),
            "/ready",
        )?;
    }

    stack.relay = Some(stack.start("outbox-relay", binary(&bin_dir, "outbox-relay", relay))?);
    let relay_port = options.port(RELAY_PORT);
    wait_ready(&mut stack, "outbox-relay", relay_port, "/health")?;
    wait_streaming(&mut stack, relay_port)?;

    summary(&options, &brokers, started.elapsed(), &servers);
    supervise(&mut stack, &options)
}

/// The relay's configuration: its port, the broker and one source per
/// service database.
fn relay_env(options: &Args, brokers: &str, servers: &[Server]) -> Vec<(String, OsString)> {
    let mut relay: Vec<(String, OsString)> = vec![
        (
            "APP__HTTP__PORT".into(),
            options.port(RELAY_PORT).to_string().into(),
        ),
        ("APP__KAFKA__BROKERS".into(), brokers.into()),
        (
            "APP__KAFKA__PARTITIONS".into(),
            options.partitions.to_string().into(),
        ),
    ];
    for service in &SERVICES {
        relay.push((
            format!("APP__SOURCES__{}__URL", service.source.to_uppercase()),
            server_of(servers, service)
                .relay_url(service.database)
                .into(),
        ));
    }
    relay.extend(options.settings_of("outbox-relay"));
    relay
}

/// `outbox-relay create-slots`: every source's slot exists (created on the
/// first start, kept after), or the stack does not start. A slot that went
/// missing or was lost is re-created only when named in `--recreate-slot`.
fn create_slots(
    bin_dir: &Path,
    relay_env: &[(String, OsString)],
    recreate: &[String],
) -> anyhow::Result<()> {
    let mut command = Command::new(bin_dir.join("outbox-relay"));
    base_env(&mut command);
    command
        .envs(relay_env.iter().map(|(k, v)| (k, v)))
        .arg("create-slots");
    for source in recreate {
        command.args(["--recreate", source]);
    }
    process::run("relay-slots", command, None).context(
        "the relay's replication slots are not ready (see relay-slots above). A slot that is \
         missing or lost is re-created only on request: `cargo xtask up --recreate-slot \
         <source>` (the events it had not published are healed by the sagas' re-drive; \
         docs/operations.md)",
    )?;
    say("the relay's replication slots exist");
    Ok(())
}

/// Starts one of our binaries with `env` (on top of [`base_env`]); stopped
/// with SIGTERM, SIGKILL after 10 s.
fn binary(
    bin_dir: &Path,
    name: &'static str,
    env: Vec<(String, OsString)>,
) -> impl FnMut() -> anyhow::Result<Proc> + 'static {
    let program = bin_dir.join(name);
    move || {
        let mut command = Command::new(&program);
        base_env(&mut command);
        command.envs(env.iter().map(|(k, v)| (k, v)));
        Proc::spawn(name, command, Options::term(Duration::from_secs(10)))
    }
}

fn needed_ports(options: &Args) -> Vec<(u16, &'static str)> {
    let mut ports: Vec<(u16, &'static str)> = servers(
        Path::new("."),
        None,
        options.postgres_per_service,
        options.port(POSTGRES_PORT),
    )
    .iter()
    .map(|server| (server.cluster.port, "PostgreSQL"))
    .collect();
    if options.kafka.is_none() {
        ports.push((options.port(BROKER_PORT), "Kafka"));
        ports.push((options.port(CONTROLLER_PORT), "Kafka controller"));
    }
    ports.extend(SERVICES.iter().map(|s| (options.port(s.port), s.binary)));
    ports.push((options.port(RELAY_PORT), "outbox-relay dashboard"));
    ports
}

/// Where the cluster lives: `.data/postgres`, unless the server's account
/// cannot reach the clone (e.g. under a 0700 home directory), then a
/// directory under /var/tmp named after the clone. Returns a note to show
/// in that case.
fn postgres_location(
    data_dir: &Path,
    account: Option<process::RunAs>,
) -> anyhow::Result<(PathBuf, Option<String>)> {
    let preferred = data_dir.join("postgres");
    let Some(account) = account else {
        return Ok((preferred, None));
    };
    std::fs::create_dir_all(&preferred)?;
    std::os::unix::fs::chown(&preferred, Some(account.uid), Some(account.gid))?;
    if postgres::reachable_by(&preferred, account) {
        return Ok((preferred, None));
    }
    let hash = data_dir
        .to_string_lossy()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    let fallback = PathBuf::from(format!("/var/tmp/cdc-commerce-{hash:016x}"));
    std::fs::create_dir_all(&fallback)?;
    std::os::unix::fs::chown(&fallback, Some(account.uid), Some(account.gid))?;
    let note = format!(
        "{} is not reachable by the PostgreSQL account (a parent directory is private), \
         so the cluster lives in {} instead",
        preferred.display(),
        fallback.display()
    );
    Ok((fallback, Some(note)))
}

/// One PostgreSQL server of the stack and the databases it holds.
struct Server {
    cluster: Cluster,
    databases: Vec<&'static str>,
}

impl Server {
    /// The services reach their server through its Unix socket: a round
    /// trip costs both sides less kernel time than over TCP loopback (a
    /// third more `pgbench -S` transactions per second on this machine;
    /// within the noise for the whole stack, docs/perf.md). The relay stays
    /// on TCP (its replication client speaks TCP only, and it streams
    /// rather than round-trips).
    fn service_url(&self, database: &str) -> String {
        format!(
            "postgres://{SERVICE_LOGIN}@{}:{}/{database}",
            percent_encode(&self.cluster.socket_dir.to_string_lossy()),
            self.cluster.port
        )
    }

    /// The relay's URL (TCP, see [`Server::service_url`]).
    fn relay_url(&self, database: &str) -> String {
        format!(
            "postgres://{RELAY_LOGIN}@127.0.0.1:{}/{database}",
            self.cluster.port
        )
    }
}

/// The servers: one holding the four databases in `pg_dir` (port
/// `first_port`), or with `per_service` one per database in
/// `pg_dir/<database>` on consecutive ports. Separate servers are what a
/// production deployment of database-per-service looks like, and they
/// spare PostgreSQL 15 work: it wakes every walsender of a server on each
/// commit, and each logical walsender reads the whole server's WAL, so in
/// one server each commit wakes all four relay streams (docs/perf.md).
fn servers(
    pg_dir: &Path,
    account: Option<process::RunAs>,
    per_service: bool,
    first_port: u16,
) -> Vec<Server> {
    let cluster = |name: String, dir: PathBuf, port: u16| Cluster {
        name,
        socket_dir: dir.join("socket"),
        data_dir: dir.join("data"),
        port,
        run_as: account,
        log_file: None,
    };
    if !per_service {
        return vec![Server {
            cluster: cluster("postgres".into(), pg_dir.to_owned(), first_port),
            databases: SERVICES.iter().map(|s| s.database).collect(),
        }];
    }
    SERVICES
        .iter()
        .zip(first_port..)
        .map(|(service, port)| Server {
            cluster: cluster(
                format!("pg-{}", service.source),
                pg_dir.join(service.database),
                port,
            ),
            databases: vec![service.database],
        })
        .collect()
}

fn server_of<'a>(servers: &'a [Server], service: &Service) -> &'a Server {
    servers
        .iter()
        .find(|s| s.databases.contains(&service.database))
        .expect("every database has a server")
}

/// Percent-encodes everything but unreserved characters (RFC 3986), for a
/// socket directory in the host part of a connection URL.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Roles and the server's databases (db/bootstrap/*.sql with `databases`
/// set to their comma-separated names; idempotent, every `up`).
fn bootstrap(server: &Server, dir: &Path) -> anyhow::Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    let databases = server.databases.join(",");
    for file in files {
        server
            .cluster
            .psql_file("postgres", &file, &[("databases", &databases)])?;
    }
    Ok(())
}

/// Pretty logs; strips inherited `APP__*` settings (the configs reject
/// unknown keys, and the stack must not depend on the caller's shell).
fn base_env(command: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("APP__") || key == "APP_CONFIG_FILE" {
            command.env_remove(key.as_ref());
        }
    }
    command
        .env("LOG_FORMAT", "pretty")
        .env("APP__HTTP__HOST", "127.0.0.1");
    if std::env::var_os("RUST_LOG").is_none() {
        // rskafka narrates every connection at info.
        command.env("RUST_LOG", "info,rskafka=warn");
    }
    if !std::io::stdout().is_terminal() {
        command.env("NO_COLOR", "1");
    }
}

/// Waits until `GET path` answers 200; fails if the child exits first, on
/// Ctrl-C, or after 120 s.
fn wait_ready(stack: &mut Stack, name: &str, port: u16, path: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        check_children(stack, "during start-up")?;
        let last = match http::get(port, path) {
            Ok((200, _)) => {
                say(&format!("{name} is ready on http://127.0.0.1:{port}"));
                return Ok(());
            }
            Ok((status, body)) => format!("HTTP {status}: {}", body.trim()),
            Err(e) => e.to_string(),
        };
        anyhow::ensure!(
            Instant::now() < deadline,
            "{name} did not become ready within 120 s (GET http://127.0.0.1:{port}{path}: {last})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits (up to 30 s) for every relay source to stream; only warns if one
/// does not, since the relay keeps retrying and the dashboard says why.
fn wait_streaming(stack: &mut Stack, relay_port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        check_children(stack, "during start-up")?;
        let body = http::get(relay_port, "/api/status")
            .map(|(_, b)| b)
            .unwrap_or_default();
        let status: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let sources = status["sources"].as_array().cloned().unwrap_or_default();
        let waiting: Vec<String> = sources
            .iter()
            .filter(|s| s["state"] != "streaming")
            .map(|s| {
                format!(
                    "{} is {}{}",
                    s["name"].as_str().unwrap_or("?"),
                    s["state"].as_str().unwrap_or("?"),
                    s["last_error"]
                        .as_str()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                )
            })
            .collect();
        if !sources.is_empty() && waiting.is_empty() {
            say(&format!("outbox-relay streams {} sources", sources.len()));
            return Ok(());
        }
        if Instant::now() >= deadline {
            say(&format!(
                "WARNING: the relay is not streaming every source yet: {}",
                if waiting.is_empty() {
                    "no sources reported".to_owned()
                } else {
                    waiting.join("; ")
                }
            ));
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn check_children(stack: &mut Stack, when: &str) -> anyhow::Result<()> {
    if let Some(signal) = signals::received() {
        anyhow::bail!("interrupted by {}", signals::name(signal));
    }
    if let Some((name, status)) = stack.exited() {
        anyhow::bail!(
            "{name} exited {when} ({}); its log is above",
            process::describe(status)
        );
    }
    Ok(())
}

fn summary(options: &Args, brokers: &str, elapsed: Duration, servers: &[Server]) {
    let port = |service: usize| options.port(SERVICES[service].port);
    let gateway = port(0);
    let mut lines = vec![
        format!("the stack is ready ({:.1} s)", elapsed.as_secs_f64()),
        format!(
            "  gateway     http://127.0.0.1:{gateway}   (curl http://127.0.0.1:{gateway}/api/health)"
        ),
        format!("  Swagger UI  http://127.0.0.1:{gateway}/swagger-ui.html"),
        format!(
            "  dashboard   http://127.0.0.1:{}/   (relay metrics: /metrics, /api/status)",
            options.port(RELAY_PORT)
        ),
        format!(
            "  services    order :{}, payment :{}, delivery :{}",
            port(1),
            port(2),
            port(3)
        ),
    ];
    for server in servers {
        lines.push(format!(
            "  PostgreSQL  {}  ({}; data: {})",
            server.cluster.admin_url(),
            server.databases.join(", "),
            server.cluster.data_dir.display()
        ));
    }
    lines.push(format!("  broker      {brokers}"));
    lines.push("Ctrl-C stops everything.".into());
    for line in lines {
        say(&line);
    }
}

/// A process that died and waits for its restart.
struct Restart {
    name: String,
    due: Instant,
    /// Restarts in a row, each after a longer pause.
    attempt: u32,
}

/// The pause before restart number `attempt` (1 s, doubling, at most 30 s).
fn restart_delay(attempt: u32) -> Duration {
    Duration::from_secs(1 << attempt.saturating_sub(1).min(5)).min(Duration::from_secs(30))
}

/// A process that ran this long before dying starts its backoff over.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Runs until Ctrl-C/SIGTERM (a drained stop, exit 0). A child that dies is
/// restarted with backoff, as compose's `restart:` does; with `--fail-fast`
/// the whole stack stops instead (exit 1).
fn supervise(stack: &mut Stack, options: &Args) -> anyhow::Result<ExitCode> {
    let mut restarts: Vec<Restart> = Vec::new();
    let mut attempts: HashMap<String, u32> = HashMap::new();
    loop {
        if let Some(signal) = signals::received() {
            say(&format!("{} received", signals::name(signal)));
            drain(stack, options);
            stack.shutdown();
            return Ok(ExitCode::SUCCESS);
        }
        let died: Vec<(String, std::process::ExitStatus, Duration)> = stack
            .all()
            .filter(|proc| !restarts.iter().any(|r| r.name == proc.name()))
            .filter_map(|proc| Some((proc.name().to_owned(), proc.exited()?, proc.uptime())))
            .collect();
        for (name, status, ran) in died {
            if options.fail_fast {
                say(&format!(
                    "ERROR: {name} exited unexpectedly ({}); stopping the stack (--fail-fast). \
                     Its log is above.",
                    process::describe(status)
                ));
                stack.shutdown();
                return Ok(ExitCode::FAILURE);
            }
            let attempt = attempts.entry(name.clone()).or_default();
            if ran >= HEALTHY_RUN {
                *attempt = 0;
            }
            *attempt += 1;
            let delay = restart_delay(*attempt);
            say(&format!(
                "ERROR: {name} exited unexpectedly ({}) after {:.0} s; restarting it in {:.0?} \
                 (restart {} in a row). Its log is above.",
                process::describe(status),
                ran.as_secs_f64(),
                delay,
                attempt
            ));
            restarts.push(Restart {
                name,
                due: Instant::now() + delay,
                attempt: *attempt,
            });
        }
        let now = Instant::now();
        let (due, waiting): (Vec<Restart>, Vec<Restart>) =
            restarts.drain(..).partition(|r| r.due <= now);
        restarts = waiting;
        for restart in due {
            let started = stack
                .starters
                .get_mut(&restart.name)
                .map(|start| start())
                .unwrap_or_else(|| Err(anyhow::anyhow!("no way to start {}", restart.name)));
            match started {
                Ok(proc) => {
                    say(&format!("{} is back (pid {})", restart.name, proc.pid()));
                    if let Some(slot) = stack.all().find(|p| p.name() == restart.name) {
                        *slot = proc;
                    }
                }
                Err(error) => {
                    let attempt = restart.attempt + 1;
                    attempts.insert(restart.name.clone(), attempt);
                    let delay = restart_delay(attempt);
                    say(&format!(
                        "ERROR: restarting {} failed: {error:#}; next try in {delay:.0?}",
                        restart.name
                    ));
                    restarts.push(Restart {
                        due: Instant::now() + delay,
                        attempt,
                        ..restart
                    });
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// How long a stop waits for the sagas in flight to settle.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);
/// Consecutive quiet probes (200 ms apart) that count as settled.
const QUIET_PROBES: u32 = 5;

/// The first part of a stop: the gateway stops taking requests, then the
/// sagas in flight settle: the relay has published every outbox row and
/// every consumer has read its partitions to the end, with nothing new
/// published for a moment. Bounded by [`DRAIN_TIMEOUT`], with a progress
/// line a second; a second Ctrl-C ends it at once.
fn drain(stack: &mut Stack, options: &Args) {
    let relay_running = stack.relay.as_mut().is_some_and(|r| r.exited().is_none());
    let gateway = stack.services.iter_mut().find(|p| p.name() == "gateway");
    let Some(gateway) = gateway.filter(|_| relay_running) else {
        return;
    };
    gateway.stop();
    say(&format!(
        "draining: the gateway takes no more requests; waiting up to {DRAIN_TIMEOUT:?} for the \
         relay and the consumers to catch up (Ctrl-C again stops at once)"
    ));
    let signals_before = signals::count();
    let started = Instant::now();
    let mut last_published = None;
    let mut quiet = 0;
    let mut last_report = Instant::now();
    loop {
        if signals::count() > signals_before {
            say("second signal: stopping without waiting");
            return;
        }
        let progress = Progress::probe(options);
        let settled = progress.is_idle() && last_published == Some(progress.published);
        last_published = Some(progress.published);
        quiet = if settled { quiet + 1 } else { 0 };
        if quiet >= QUIET_PROBES {
            say(&format!(
                "drained in {:.1} s: every outbox row published, every consumer caught up",
                started.elapsed().as_secs_f64()
            ));
            return;
        }
        if started.elapsed() >= DRAIN_TIMEOUT {
            say(&format!(
                "WARNING: not drained after {DRAIN_TIMEOUT:?} ({progress}); stopping anyway: \
                 the rest resumes on the next `up`"
            ));
            return;
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            say(&format!("draining: {progress}"));
            last_report = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What is still in flight, from the relay's `/api/status` and the
/// services' `consumer_lag` metrics.
struct Progress {
    /// Events the relay published so far (all sources).
    published: u64,
    /// Sources with work not yet confirmed, or not streaming.
    relay_busy: Vec<String>,
    /// Records behind the end of their partitions, all consumers.
    consumer_lag: f64,
    /// A probe that did not answer.
    unknown: Vec<String>,
}

impl Progress {
    fn probe(options: &Args) -> Progress {
        let mut progress = Progress {
            published: 0,
            relay_busy: Vec::new(),
            consumer_lag: 0.0,
            unknown: Vec::new(),
        };
        match http::get(options.port(RELAY_PORT), "/api/status") {
            Ok((200, body)) => {
                let status: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                for source in status["sources"].as_array().into_iter().flatten() {
                    progress.published += source["events_published"].as_u64().unwrap_or(0);
                    let idle = source["state"] == "streaming"
                        && source["lag_seconds"].as_f64() == Some(0.0);
                    if !idle {
                        progress
                            .relay_busy
                            .push(source["name"].as_str().unwrap_or("?").to_owned());
                    }
                }
            }
            _ => progress.unknown.push("outbox-relay".into()),
        }
        for service in SERVICES.iter().filter(|s| s.binary != "gateway") {
            match http::get(options.port(service.port), "/metrics") {
                Ok((200, body)) => progress.consumer_lag += consumer_lag(&body),
                _ => progress.unknown.push(service.binary.into()),
            }
        }
        progress
    }

    fn is_idle(&self) -> bool {
        self.relay_busy.is_empty() && self.consumer_lag == 0.0 && self.unknown.is_empty()
    }
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "relay sources with work in flight: {}; consumers {} records behind",
            if self.relay_busy.is_empty() {
                "none".to_owned()
            } else {
                self.relay_busy.join(", ")
            },
            self.consumer_lag
        )?;
        if !self.unknown.is_empty() {
            write!(f, "; no answer from {}", self.unknown.join(", "))?;
        }
        Ok(())
    }
}

/// The sum of the `consumer_lag` samples of a Prometheus text exposition.
fn consumer_lag(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with("consumer_lag{") || line.starts_with("consumer_lag "))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_directories_are_percent_encoded_into_the_url() {
        assert_eq!(
            percent_encode("/work/my clone/.data/postgres/socket"),
            "%2Fwork%2Fmy%20clone%2F.data%2Fpostgres%2Fsocket"
        );
        let server = &servers(Path::new("/d/postgres"), None, false, POSTGRES_PORT)[0];
        assert_eq!(
            server.service_url("commerce_order"),
            format!("postgres://{SERVICE_LOGIN}@%2Fd%2Fpostgres%2Fsocket:55432/commerce_order")
        );
    }

    #[test]
    fn one_server_holds_every_database_or_each_has_its_own() {
        let one = servers(Path::new("/d"), None, false, POSTGRES_PORT);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].cluster.data_dir, Path::new("/d/data"));
        for service in &SERVICES {
            assert_eq!(server_of(&one, service).cluster.port, POSTGRES_PORT);
        }

        let each = servers(Path::new("/d"), None, true, POSTGRES_PORT);
        let ports: Vec<u16> = SERVICES
            .iter()
            .map(|s| server_of(&each, s).cluster.port)
            .collect();
        assert_eq!(ports, [55432, 55433, 55434, 55435]);
        let order = server_of(&each, &SERVICES[1]);
        assert_eq!(order.databases, ["commerce_order"]);
        assert_eq!(order.cluster.name, "pg-order");
        assert_eq!(one[0].cluster.name, "postgres");
        assert_eq!(order.cluster.data_dir, Path::new("/d/commerce_order/data"));
        let postgres_ports = |args: &[String]| -> Vec<u16> {
            needed_ports(&Args::parse(args).unwrap())
                .into_iter()
                .filter(|(_, what)| *what == "PostgreSQL")
                .map(|(port, _)| port)
                .collect()
        };
        assert_eq!(postgres_ports(&[]), [55432]);
        assert_eq!(
            postgres_ports(&["--postgres-per-service".into()]),
            [55432, 55433, 55434, 55435]
        );
        assert_eq!(
            postgres_ports(&["--port-offset=100".into(), "--postgres-per-service".into()]),
            [55532, 55533, 55534, 55535]
        );
        let shifted = Args::parse(&["--port-offset".into(), "7".into()]).unwrap();
        let all: Vec<u16> = needed_ports(&shifted).into_iter().map(|(p, _)| p).collect();
        assert_eq!(all, [55439, 9099, 9100, 8091, 8088, 8089, 8090, 8097]);
        assert!(Args::parse(&["--port-offset".into(), "9000".into()]).is_err());
        assert!(!Args::parse(&[]).unwrap().fail_fast);
        assert!(Args::parse(&["--fail-fast".into()]).unwrap().fail_fast);
    }

    #[test]
    fn set_gives_one_binary_a_setting_and_refuses_what_is_not_one() {
        let strings = |args: &[&str]| args.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        let options = Args::parse(&strings(&[
            "--set",
            "order-service:APP__CONSUMER__BUSY_FETCH_INTERVAL=20ms",
            "--set=outbox-relay:APP__KAFKA__BUSY_PRODUCE_INTERVAL_MS=20",
        ]))
        .unwrap();
        let of = |binary| options.settings_of(binary).collect::<Vec<_>>();
        assert_eq!(
            of("order-service"),
            [(
                "APP__CONSUMER__BUSY_FETCH_INTERVAL".to_string(),
                OsString::from("20ms")
            )]
        );
        assert_eq!(of("outbox-relay").len(), 1);
        assert!(of("payment-service").is_empty());
        for bad in [
            "orders:APP__X=1",
            "order-service:X=1",
            "order-service:APP__X",
        ] {
            assert!(Args::parse(&strings(&["--set", bad])).is_err(), "{bad}");
        }
    }

    #[test]
    fn recreate_slot_names_sources_for_create_slots() {
        let args: Vec<String> = ["--recreate-slot", "order", "--recreate-slot=payment"]
            .map(String::from)
            .into();
        let options = Args::parse(&args).unwrap();
        assert_eq!(options.recreate_slots, ["order", "payment"]);
        assert!(Args::parse(&["--recreate-slot".to_owned()]).is_err());
    }

    #[test]
    fn restarts_back_off_from_one_second_to_thirty() {
        let delays: Vec<u64> = (1..=8).map(|n| restart_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn consumer_lag_sums_every_partition() {
        let metrics = "# HELP consumer_lag Records not yet handled\n\
             # TYPE consumer_lag gauge\n\
             consumer_lag{group=\"payment\",topic=\"orders\",partition=\"0\"} 3\n\
             consumer_lag{group=\"payment\",topic=\"users\",partition=\"0\"} 0\n\
             consumer_lag_other 7\n\
             consumer_records_total{outcome=\"handled\"} 12\n";
        assert_eq!(consumer_lag(metrics), 3.0);
        assert_eq!(consumer_lag(""), 0.0);
    }
}
