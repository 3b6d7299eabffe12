//! compose.yaml checked without a Docker engine: every file it references
//! exists, every image it builds is a binary of this workspace, ports are
//! unique and the documented ones, every long-running container has a
//! healthcheck and a restart policy, the database URLs name roles and
//! databases that db/bootstrap/docker-init.sh creates, and
//! `docker-compose config` (when installed) accepts the file and resolves
//! the same environments as our parser. The per-binary config checks live in
//! the `compose` module of each binary's tests.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
};

use test_support::compose::{Compose, workspace_root};

/// The ports users reach on the host (docs/operations.md): the gateway and
/// the relay's dashboard, nothing else.
const DOCUMENTED_HOST_PORTS: [(&str, u16); 2] = [("gateway", 8084), ("outbox-relay", 8090)];

/// The container port each long-running service listens on.
const SERVICE_PORTS: [(&str, u16); 5] = [
    ("gateway", 8084),
    ("order", 8081),
    ("payment", 8082),
    ("delivery", 8083),
    ("outbox-relay", 8090),
];

fn workspace_binaries() -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(workspace_root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn every_referenced_file_and_binary_exists() {
    let compose = Compose::load();
    let binaries = workspace_binaries();
    let volumes = compose.volume_names();
    let mut built = 0;
    for service in compose.services() {
        if let Some((context, dockerfile)) = service.build() {
            built += 1;
            let context = compose.dir().join(context);
            assert!(
                context.is_dir(),
                "{}: build context {context:?}",
                service.name
            );
            let dockerfile = context.join(dockerfile);
            assert!(dockerfile.is_file(), "{}: {dockerfile:?}", service.name);
            let bin = service
                .build_arg("BIN")
                .unwrap_or_else(|| panic!("{}: the Dockerfile needs build arg BIN", service.name));
            assert!(
                binaries.contains(&bin),
                "{}: BIN={bin} is not a binary of the workspace ({binaries:?})",
                service.name
            );
            let recipe = std::fs::read_to_string(&dockerfile).unwrap();
            assert!(recipe.contains("ARG BIN"), "{dockerfile:?} reads ARG BIN");
        }
        for (source, target) in service.volumes() {
            if source.starts_with('.') || source.starts_with('/') {
                let path = compose.dir().join(&source);
                assert!(
                    path.exists(),
                    "{}: bind mount {source} -> {target}",
                    service.name
                );
            } else {
                assert!(
                    volumes.contains(&source),
                    "{}: named volume {source} is not declared under `volumes:`",
                    service.name
                );
            }
        }
    }
    assert_eq!(
        built, 7,
        "five binaries, the keys job and the relay-slots job are built from docker/"
    );
    let init = compose.dir().join("db/bootstrap/docker-init.sh");
    let mode = std::os::unix::fs::PermissionsExt::mode(&init.metadata().unwrap().permissions());
    assert!(
        mode & 0o111 != 0 || std::fs::read_to_string(&init).unwrap().starts_with("#!"),
        "docker-init.sh runs (the entrypoint sources non-executable .sh files, which also works)"
    );
}

#[test]
fn the_build_context_keeps_what_the_build_needs() {
    let root = workspace_root();
    let ignored = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    let ignored: Vec<&str> = ignored.lines().map(str::trim).collect();
    // The build is `--locked` and embeds db/migrations at compile time.
    for needed in [
        "Cargo.lock",
        "Cargo.toml",
        "db",
        "services",
        "outbox-relay",
        "xtask",
        "perf",
    ] {
        assert!(
            !ignored.contains(&needed),
            ".dockerignore must not exclude {needed}"
        );
        assert!(root.join(needed).exists(), "{needed} exists");
    }
    // The target dir is big and host-specific; it must not be sent.
    assert!(ignored.contains(&"target"), ".dockerignore excludes target");
    let recipe = std::fs::read_to_string(root.join("docker/Dockerfile")).unwrap();
    assert!(
        recipe.contains("--locked"),
        "the image builds from Cargo.lock"
    );
    // The builder image must be at least the workspace's rust-version.
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let version = |text: &str, prefix: &str| -> Vec<u32> {
        let line = text
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .unwrap_or_else(|| panic!("a line starting with {prefix}"));
        line.trim_matches(|c: char| c == '"' || c.is_whitespace())
            .split('.')
            .map(|n| n.parse().expect("a numeric version"))
            .collect()
    };
    let toolchain = version(&recipe, "ARG RUST_VERSION=");
    let required = version(&manifest, "rust-version =");
    assert!(
        toolchain >= required,
        "docker/Dockerfile builds with Rust {toolchain:?}, the workspace needs {required:?}"
    );
    let runtime = recipe
        .rsplit_once("\nFROM ")
        .map(|(_, last)| last)
        .expect("a multi-stage Dockerfile");
    assert!(
        runtime
            .lines()
            .any(|l| l.starts_with("USER ") && !l.contains("root") && !l.contains(" 0")),
        "the runtime stage runs as a non-root user"
    );
    assert!(
        runtime.contains("curl"),
        "the healthchecks run curl, so the runtime stage installs it"
    );
}

/// Only the gateway and the dashboard are published, on 127.0.0.1 unless
/// PUBLISH_ADDRESS says otherwise; Kafka (no listener for the host),
/// PostgreSQL and the services stay on the compose network.
#[test]
fn only_the_gateway_and_the_dashboard_are_published_on_localhost() {
    let compose = Compose::load();
    let mut published = BTreeSet::new();
    for service in compose.services() {
        for port in service.value["ports"].as_sequence().into_iter().flatten() {
            let raw = port.as_str().expect("ports are strings").to_owned();
            let bound = test_support::compose::interpolate(&raw).unwrap();
            assert!(
                bound.starts_with("127.0.0.1:"),
                "{}: {raw} is published on 127.0.0.1 by default",
                service.name
            );
            assert!(
                raw.starts_with("${PUBLISH_ADDRESS:-127.0.0.1}:"),
                "{}: {raw}: PUBLISH_ADDRESS chooses the address",
                service.name
            );
            published.insert(service.name.clone());
        }
    }
    assert_eq!(
        published,
        BTreeSet::from(["gateway".to_owned(), "outbox-relay".to_owned()])
    );
    let kafka = compose.service("kafka").environment();
    for key in ["KAFKA_LISTENERS", "KAFKA_ADVERTISED_LISTENERS"] {
        let listeners = &kafka[key];
        assert!(
            !listeners.contains("localhost") && !listeners.contains("HOST"),
            "{key}: no listener for the host ({listeners})"
        );
    }
}

#[test]
fn ports_are_unique_and_the_documented_ones() {
    let compose = Compose::load();
    let mut seen = BTreeMap::new();
    for service in compose.services() {
        for (host, container) in service.published_ports() {
            if let Some(other) = seen.insert(host, service.name.clone()) {
                panic!(
                    "host port {host} published by both {other} and {}",
                    service.name
                );
            }
            if let Some((_, port)) = SERVICE_PORTS.iter().find(|(n, _)| *n == service.name) {
                assert_eq!(container, *port, "{} publishes its own port", service.name);
            }
        }
    }
    for (name, port) in DOCUMENTED_HOST_PORTS {
        assert_eq!(
            seen.get(&port),
            Some(&name.to_owned()),
            "{name} on host port {port}"
        );
    }
    let operations = std::fs::read_to_string(workspace_root().join("docs/operations.md")).unwrap();
    for (name, port) in SERVICE_PORTS {
        assert!(
            operations.contains(&format!("| {port} |")),
            "docs/operations.md lists port {port} ({name})"
        );
        let service = compose.service(name);
        assert_eq!(
            service.environment().get("APP__HTTP__PORT"),
            Some(&port.to_string()),
            "{name} listens on {port}"
        );
        assert_eq!(
            service.healthcheck_http().map(|(p, _)| p),
            Some(port),
            "{name}'s healthcheck asks its own port"
        );
    }
}

#[test]
fn containers_have_healthchecks_restart_policies_and_sound_dependencies() {
    let compose = Compose::load();
    let names: BTreeSet<String> = compose.service_names().into_iter().collect();
    let mut one_shot = BTreeSet::new();
    let mut waited_healthy = BTreeSet::new();
    for service in compose.services() {
        for (dependency, condition) in service.depends_on() {
            assert!(
                names.contains(&dependency),
                "{} depends on {dependency}",
                service.name
            );
            match condition.as_str() {
                "service_completed_successfully" => one_shot.insert(dependency),
                "service_healthy" => waited_healthy.insert(dependency),
                other => panic!("{} waits for {dependency} with {other}", service.name),
            };
        }
    }
    for service in compose.services() {
        let restart = service.restart();
        if one_shot.contains(&service.name) {
            assert_eq!(
                restart.as_deref(),
                Some("no"),
                "one-shot job {} must not be restarted",
                service.name
            );
            assert!(!waited_healthy.contains(&service.name));
            continue;
        }
        assert!(
            matches!(
                restart.as_deref(),
                Some("always" | "unless-stopped" | "on-failure")
            ),
            "{} needs a restart policy, has {restart:?}",
            service.name
        );
        assert!(
            service.healthcheck_command().is_some_and(|c| !c.is_empty()),
            "{} needs a healthcheck",
            service.name
        );
    }
    // The init scripts run on a server that listens on the Unix socket only;
    // a healthcheck over TCP therefore turns healthy only after they finished
    // (the databases exist).
    let postgres = compose.service("postgres").healthcheck_command().unwrap();
    let host = postgres
        .iter()
        .position(|w| w == "-h")
        .map(|i| &postgres[i + 1]);
    assert_eq!(
        host.map(String::as_str),
        Some("127.0.0.1"),
        "postgres healthcheck over TCP"
    );
}

/// Every PostgreSQL URL in any container's environment names the
/// `postgres` service, a role and a database that docker-init.sh creates, and
/// the password variable the postgres container hands to that script.
#[test]
fn database_urls_match_the_bootstrap() {
    let compose = Compose::load();
    let init = std::fs::read_to_string(compose.dir().join("db/bootstrap/docker-init.sh")).unwrap();
    let postgres_env = compose.service("postgres").environment();
    let mut urls = 0;
    for service in compose.services() {
        for (key, value) in service.environment() {
            let Some(rest) = value.strip_prefix("postgres://") else {
                continue;
            };
            urls += 1;
            let (credentials, location) = rest.split_once('@').expect("user:password@host");
            let (user, password) = credentials.split_once(':').expect("user:password");
            let (host_port, database) = location.split_once('/').expect("host/database");
            assert_eq!(host_port, "postgres:5432", "{}: {key}", service.name);
            assert!(
                init.contains(&format!("CREATE DATABASE {database} OWNER")),
                "{}: {key}: docker-init.sh creates {database}",
                service.name
            );
            assert!(
                init.contains(&format!("CREATE ROLE {user} LOGIN")),
                "{}: {key}: docker-init.sh creates role {user}",
                service.name
            );
            // One role per service, named like its database; the relay's
            // role reads every database.
            let password_var = match user {
                "outbox_relay" => "RELAY_DB_PASSWORD".to_owned(),
                role if role == database => format!(
                    "{}_DB_PASSWORD",
                    role.trim_start_matches("commerce_").to_uppercase()
                ),
                other => panic!(
                    "{}: {key}: role {other} does not own {database}",
                    service.name
                ),
            };
            if user != "outbox_relay" {
                assert!(
                    init.contains(&format!("CREATE DATABASE {database} OWNER {user};")),
                    "{}: {key}: {user} owns {database}",
                    service.name
                );
                assert!(
                    service.name != "outbox-relay",
                    "the relay connects with its own role"
                );
            }
            let password_var = password_var.as_str();
            assert_eq!(
                postgres_env.get(password_var).map(String::as_str),
                Some(password),
                "{}: {key}: the password docker-init.sh sets for {user}",
                service.name
            );
            if user == "outbox_relay" {
                assert!(init.contains("CREATE ROLE outbox_relay LOGIN REPLICATION"));
            }
        }
    }
    // 4 services + 4 relay sources + the same 4 for the relay-slots job.
    assert_eq!(urls, 12);
}

/// docker-compose (when installed) validates the file and resolves the same
/// environment for every container as our parser does.
#[test]
fn docker_compose_agrees() {
    let root = workspace_root();
    let run = |args: &[&str]| {
        Command::new("docker-compose")
            .args(args)
            .current_dir(&root)
            // Interpolate with the defaults, as our parser does.
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .output()
    };
    let output = match run(&["config", "-q"]) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("skipped: docker-compose is not installed, `docker-compose config` not run");
            return;
        }
        other => other.expect("docker-compose runs"),
    };
    assert!(
        output.status.success(),
        "docker-compose config -q: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = run(&["config"]).unwrap();
    assert!(output.status.success());
    let resolved = Compose::parse(&String::from_utf8(output.stdout).unwrap()).unwrap();
    let ours = Compose::load();
    for service in ours.services() {
        let theirs = test_support::compose::Service {
            name: service.name.clone(),
            value: &resolved["services"][service.name.as_str()],
        };
        assert_eq!(
            service.environment(),
            theirs.environment(),
            "{}: environment as docker-compose resolves it",
            service.name
        );
        assert_eq!(
            service.depends_on(),
            theirs.depends_on(),
            "{}",
            service.name
        );
        assert_eq!(service.restart(), theirs.restart(), "{}", service.name);
    }
}

/// compose.yaml and the native stack run the same Kafka: every
/// `apache/kafka` image has the version xtask/kafka/pom.xml pins.
#[test]
fn compose_runs_the_kafka_version_of_the_native_stack() {
    let pom = std::fs::read_to_string(workspace_root().join("xtask/kafka/pom.xml")).unwrap();
    let version = pom
        .split("<kafka.version>")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .expect("xtask/kafka/pom.xml pins <kafka.version>")
        .trim();
    let compose = Compose::load();
    let images: Vec<String> = compose
        .services()
        .iter()
        .filter_map(|s| s.value["image"].as_str().map(str::to_owned))
        .filter(|image| image.starts_with("apache/kafka:"))
        .collect();
    assert!(
        !images.is_empty(),
        "compose.yaml runs no apache/kafka image"
    );
    for image in images {
        assert_eq!(
            image,
            format!("apache/kafka:{version}"),
            "compose.yaml and xtask/kafka/pom.xml disagree on the Kafka version"
        );
    }
}

/// The private signing key lives only where the gateway (and the job that
/// writes it) can read it; every other container mounts the public copy.
#[test]
fn only_the_gateway_mounts_the_private_key() {
    let compose = Compose::load();
    let (private_volume, _) = compose.jwt_keys_location();
    let (public_volume, _) = compose.jwt_public_key_location();
    assert_ne!(private_volume, public_volume);
    let readers: BTreeSet<String> = compose
        .services()
        .iter()
        .filter(|s| s.volumes().iter().any(|(v, _)| *v == private_volume))
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(
        readers,
        BTreeSet::from(["gateway".to_owned(), "keys".to_owned()])
    );
    for service in ["order", "payment", "delivery"] {
        assert!(
            compose
                .service(service)
                .volumes()
                .iter()
                .any(|(v, _)| *v == public_volume),
            "{service} mounts the public key"
        );
    }
}

/// Every `docker compose exec <service> <program>` in the docs runs a
/// program the container has: in the images built from docker/Dockerfile
/// that is `app` (the binary) or a tool of its base image.
#[test]
fn documented_exec_commands_name_programs_the_containers_have() {
    let compose = Compose::load();
    let dockerfile = std::fs::read_to_string(workspace_root().join("docker/Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("/usr/local/bin/app"),
        "the binary is `app`"
    );
    let mut checked = 0;
    for doc in [
        "README.md",
        "docs/operations.md",
        "docs/consumer-runtime.md",
    ] {
        let text = std::fs::read_to_string(workspace_root().join(doc)).unwrap();
        for line in text.lines() {
            let Some(rest) = line.split("docker compose exec ").nth(1) else {
                continue;
            };
            let words: Vec<&str> = rest.split_whitespace().filter(|w| *w != "-T").collect();
            let (Some(service), Some(program)) = (words.first(), words.get(1)) else {
                continue;
            };
            if compose.service(service).build().is_some() {
                assert!(
                    ["app", "curl", "sh", "bash"].contains(program),
                    "{doc}: `{line}`: the {service} image has no `{program}` (its binary is `app`)"
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked > 0,
        "the docs show a command run in a built container"
    );
}
