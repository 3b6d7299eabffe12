//! compose.yaml as the containers will see it, without a Docker engine:
//! anchors and merge keys (`<<`) resolved, `${VAR:-default}` interpolated
//! with the defaults (never the caller's shell), so tests can check each
//! container's environment against the binaries' real configuration types.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use commerce_common::service::ServiceSettings;
use serde_yaml::Value;

/// The workspace root (where compose.yaml lives).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root exists")
}

/// The parsed compose file.
pub struct Compose {
    pub path: PathBuf,
    /// The whole document with merge keys applied (not interpolated).
    pub document: Value,
}

impl Compose {
    /// Reads `compose.yaml` at the workspace root.
    pub fn load() -> Compose {
        Self::from_path(workspace_root().join("compose.yaml"))
    }

    pub fn from_path(path: PathBuf) -> Compose {
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let document = Self::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Compose { path, document }
    }

    /// Parses YAML text: aliases are expanded by the parser, `<<` merge keys
    /// by `apply_merge` (nested merges included).
    pub fn parse(text: &str) -> Result<Value, serde_yaml::Error> {
        let mut document: Value = serde_yaml::from_str(text)?;
        document.apply_merge()?;
        Ok(document)
    }

    /// The directory the file's relative paths are relative to.
    pub fn dir(&self) -> &Path {
        self.path.parent().expect("compose.yaml has a directory")
    }

    /// Names of all services, in file order.
    pub fn service_names(&self) -> Vec<String> {
        self.document["services"]
            .as_mapping()
            .expect("compose.yaml has a `services` mapping")
            .keys()
            .map(|k| k.as_str().expect("service names are strings").to_owned())
            .collect()
    }

    /// One service; panics naming the service when it is missing.
    pub fn service(&self, name: &str) -> Service<'_> {
        let value = self.document["services"]
            .get(name)
            .unwrap_or_else(|| panic!("compose.yaml has no service `{name}`"));
        Service {
            name: name.into(),
            value,
        }
    }

    pub fn services(&self) -> Vec<Service<'_>> {
        self.service_names()
            .iter()
            .map(|name| self.service(name))
            .collect()
    }

    /// Names of the top-level named volumes.
    pub fn volume_names(&self) -> Vec<String> {
        self.document["volumes"]
            .as_mapping()
            .map(|m| {
                m.keys()
                    .filter_map(|k| k.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Compose {
    /// `host:port` the containers reach Kafka at: the broker's advertised
    /// `INTERNAL` listener.
    pub fn kafka_internal_address(&self) -> String {
        let env = self.service("kafka").environment();
        let listeners = env
            .get("KAFKA_ADVERTISED_LISTENERS")
            .expect("kafka advertises its listeners");
        listeners
            .split(',')
            .find_map(|l| l.trim().strip_prefix("INTERNAL://"))
            .expect("an INTERNAL listener for the containers")
            .to_owned()
    }

    /// The base URL the gateway forwards to for `upstream` (`order`, ...).
    pub fn gateway_upstream(&self, upstream: &str) -> String {
        let key = format!("APP__UPSTREAMS__{}", upstream.to_uppercase());
        self.service("gateway")
            .environment()
            .remove(&key)
            .unwrap_or_else(|| panic!("the gateway sets {key}"))
    }

    /// `(volume, directory)` the `keys` job writes the JWT key pair into
    /// (its `generate-keys <dir> <public-dir>` first argument and the volume
    /// mounted there).
    pub fn jwt_keys_location(&self) -> (String, String) {
        self.keys_job_location(1)
    }

    /// `(volume, directory)` the `keys` job copies the public key into (its
    /// second argument): what the services mount.
    pub fn jwt_public_key_location(&self) -> (String, String) {
        self.keys_job_location(2)
    }

    fn keys_job_location(&self, argument: usize) -> (String, String) {
        let keys = self.service("keys");
        let command = keys.command();
        assert_eq!(
            command.first().map(String::as_str),
            Some("generate-keys"),
            "the keys job runs `generate-keys <dir> <public-dir>`"
        );
        let dir = command
            .get(argument)
            .expect("generate-keys <dir> <public-dir>")
            .clone();
        let volume = keys
            .volumes()
            .into_iter()
            .find(|(_, target)| *target == dir)
            .unwrap_or_else(|| panic!("the keys job mounts a volume at {dir}"))
            .0;
        (volume, dir)
    }

    /// Asserts that `service` reads `file` from a volume the keys job
    /// writes `name` into (mounted at `file`'s directory): the private key
    /// only from the pair's volume, the public key from either.
    pub fn assert_reads_jwt_key(&self, service: &str, file: &Path, name: &str) {
        assert_eq!(
            file.file_name().and_then(|f| f.to_str()),
            Some(name),
            "{service}: the file the keys job writes"
        );
        let mut volumes = vec![self.jwt_keys_location().0];
        if name != "jwt.pem" {
            volumes.push(self.jwt_public_key_location().0);
        }
        let dir = file.parent().expect("a file in a directory");
        let mounted = self.service(service).volumes();
        assert!(
            mounted
                .iter()
                .any(|(source, target)| volumes.contains(source) && Path::new(target) == dir),
            "{service}: {} is {name} from one of the volumes {volumes:?}, mounted at {} \
             (mounts: {mounted:?})",
            file.display(),
            dir.display()
        );
    }
}

impl Compose {
    /// The checks every service behind the gateway shares (`order`,
    /// `payment`, `delivery`) on its container's loaded `settings`: the
    /// container serves HTTP on the port its healthcheck probes and the
    /// gateway forwards to, uses the `commerce_<service>` database and the
    /// broker's internal listener (for its consumer), and reads the public
    /// key the keys job writes. Returns the healthcheck path.
    pub fn assert_service_container(
        &self,
        service: &str,
        settings: &impl ServiceSettings,
    ) -> String {
        let settings = settings.common();
        let health_path = self
            .service(service)
            .assert_serves_http(&settings.http.host, settings.http.port);
        assert_eq!(
            self.gateway_upstream(service),
            format!("http://{service}:{}", settings.http.port),
            "the gateway forwards to the {service} container's port"
        );
        assert!(
            settings
                .database
                .url
                .expose()
                .ends_with(&format!("@postgres:5432/commerce_{service}")),
            "{service}: the commerce_{service} database on the postgres container"
        );
        let (kafka, _) = settings
            .consumer
            .unwrap_or_else(|| panic!("{service}: the container runs its consumer"));
        assert_eq!(
            kafka.broker_list(),
            [self.kafka_internal_address()],
            "{service}: the broker's internal listener"
        );
        let key_file = settings
            .auth
            .and_then(|auth| auth.public_key_file.as_deref())
            .expect("a public key file");
        self.assert_reads_jwt_key(service, key_file, "jwt.pub.pem");
        health_path
    }
}

/// Loads a config from `environment` plus one misspelled key and asserts
/// the loader refuses it (the configs use `deny_unknown_fields`).
pub fn assert_rejects_misspelled_key<T, E: std::fmt::Display>(
    environment: &BTreeMap<String, String>,
    misspelled: &str,
    load: impl FnOnce() -> Result<T, E>,
) {
    let mut environment = environment.clone();
    environment.insert(misspelled.to_owned(), "1".to_owned());
    match with_exact_env(&environment, load) {
        Ok(_) => panic!("{misspelled} was accepted; a typo in compose.yaml would go unnoticed"),
        Err(e) => {
            let message = e.to_string().to_lowercase();
            let key = misspelled.rsplit("__").next().unwrap().to_lowercase();
            assert!(
                message.contains(&key),
                "the error names the unknown key {key}: {message}"
            );
        }
    }
}

/// Asserts `GET http://127.0.0.1:{port}{path}` answers 200 within 10 s:
/// the container's healthcheck path is a route of the real app.
pub async fn assert_health_answers(port: u16, path: &str) {
    let response = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await
        .expect("the healthcheck path answers");
    assert_eq!(response.status(), 200, "GET {path}");
}

/// One service of the compose file.
pub struct Service<'a> {
    pub name: String,
    pub value: &'a Value,
}

impl Service<'_> {
    /// The container's configuration, loaded by `load` (the crate's own
    /// loader) from exactly the container's environment; a misspelled key
    /// must be refused too, so a typo in compose.yaml cannot go unnoticed.
    pub fn load_config<T, E: std::fmt::Display>(&self, load: impl Fn() -> Result<T, E>) -> T {
        let environment = self.environment();
        let config = with_exact_env(&environment, &load)
            .unwrap_or_else(|e| panic!("compose.yaml's {} environment: {e}", self.name));
        assert_rejects_misspelled_key(&environment, "APP__HTTP__PROT", load);
        config
    }

    /// Asserts the container serves HTTP where the others reach it: on
    /// every interface (`host`), on the port its healthcheck probes.
    /// Returns the healthcheck's path.
    pub fn assert_serves_http(&self, host: &str, port: u16) -> String {
        assert_eq!(
            host, "0.0.0.0",
            "{}: reachable from outside the container",
            self.name
        );
        let (health_port, health_path) = self.healthcheck_http().expect("an HTTP healthcheck");
        assert_eq!(
            health_port, port,
            "{}: the healthcheck probes the app's port",
            self.name
        );
        health_path
    }

    /// [`Self::assert_serves_http`], and the host publishes that port as
    /// itself. Returns the healthcheck's path.
    pub fn assert_serves_published_http(&self, host: &str, port: u16) -> String {
        let health_path = self.assert_serves_http(host, port);
        assert!(
            self.published_ports().contains(&(port, port)),
            "{} is published on its own port",
            self.name
        );
        health_path
    }

    /// The container's environment, interpolated with the defaults. Both
    /// compose forms (mapping and `KEY=value` list) are accepted; numbers and
    /// booleans become their text, as compose passes them.
    pub fn environment(&self) -> BTreeMap<String, String> {
        let raw: Vec<(String, String)> = match &self.value["environment"] {
            Value::Null => Vec::new(),
            Value::Mapping(map) => map
                .iter()
                .map(|(k, v)| (scalar_text(k), scalar_text(v)))
                .collect(),
            Value::Sequence(items) => items
                .iter()
                .map(|item| {
                    let text = scalar_text(item);
                    let (k, v) = text.split_once('=').unwrap_or((&text, ""));
                    (k.to_owned(), v.to_owned())
                })
                .collect(),
            other => panic!("service {}: environment is {other:?}", self.name),
        };
        raw.into_iter()
            .map(|(k, v)| {
                let value = interpolate(&v)
                    .unwrap_or_else(|e| panic!("service {}: environment {k}: {e}", self.name));
                (k, value)
            })
            .collect()
    }

    /// Only the `APP__...` variables (what the binaries' config reads).
    pub fn app_environment(&self) -> BTreeMap<String, String> {
        self.environment()
            .into_iter()
            .filter(|(k, _)| k.starts_with("APP__") || k == "APP_CONFIG_FILE")
            .collect()
    }

    /// `build.args.<name>`, interpolated.
    pub fn build_arg(&self, name: &str) -> Option<String> {
        self.value["build"]["args"]
            .get(name)
            .map(|v| interpolate(&scalar_text(v)).expect("build arg interpolates"))
    }

    /// `build.context` (relative to compose.yaml) and `build.dockerfile`
    /// (relative to the context; compose's default `Dockerfile`).
    pub fn build(&self) -> Option<(String, String)> {
        let build = self.value.get("build")?;
        if let Some(context) = build.as_str() {
            return Some((context.to_owned(), "Dockerfile".to_owned()));
        }
        let context = build["context"].as_str().unwrap_or(".").to_owned();
        let dockerfile = build["dockerfile"]
            .as_str()
            .unwrap_or("Dockerfile")
            .to_owned();
        Some((context, dockerfile))
    }

    /// `(host, container)` of each published port (`"8084:8084"` form).
    pub fn published_ports(&self) -> Vec<(u16, u16)> {
        self.value["ports"]
            .as_sequence()
            .map(|ports| {
                ports
                    .iter()
                    .map(|p| {
                        let text = interpolate(&scalar_text(p)).expect("port interpolates");
                        let text = text.rsplit_once('/').map_or(text.as_str(), |(p, _)| p);
                        let parts: Vec<&str> = text.split(':').collect();
                        let parse = |s: &str| {
                            s.parse::<u16>()
                                .unwrap_or_else(|_| panic!("service {}: port {text}", self.name))
                        };
                        match parts.as_slice() {
                            [both] => (parse(both), parse(both)),
                            [.., host, container] => (parse(host), parse(container)),
                            [] => unreachable!(),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The healthcheck's command as a list of words (`CMD` / `CMD-SHELL`
    /// prefix dropped; a shell string is split on whitespace).
    pub fn healthcheck_command(&self) -> Option<Vec<String>> {
        let test = self.value.get("healthcheck")?.get("test")?;
        let words: Vec<String> = match test {
            Value::String(s) => s.split_whitespace().map(String::from).collect(),
            Value::Sequence(items) => {
                let items: Vec<String> = items.iter().map(scalar_text).collect();
                match items.first().map(String::as_str) {
                    Some("CMD") => items[1..].to_vec(),
                    Some("CMD-SHELL") => items[1..]
                        .join(" ")
                        .split_whitespace()
                        .map(String::from)
                        .collect(),
                    _ => items,
                }
            }
            _ => return None,
        };
        Some(words)
    }

    /// The `http://host:port/path` the healthcheck requests, as
    /// `(port, path)`.
    pub fn healthcheck_http(&self) -> Option<(u16, String)> {
        let url = self
            .healthcheck_command()?
            .into_iter()
            .find(|w| w.starts_with("http://"))?;
        let rest = url.trim_start_matches("http://");
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let port = authority.rsplit_once(':')?.1.parse().ok()?;
        Some((port, format!("/{path}")))
    }

    /// `restart:` as written (`None` when absent).
    pub fn restart(&self) -> Option<String> {
        self.value.get("restart").map(scalar_text)
    }

    /// `depends_on` as `service -> condition` (the short list form means
    /// `service_started`).
    pub fn depends_on(&self) -> BTreeMap<String, String> {
        match &self.value["depends_on"] {
            Value::Sequence(items) => items
                .iter()
                .map(|s| (scalar_text(s), "service_started".to_owned()))
                .collect(),
            Value::Mapping(map) => map
                .iter()
                .map(|(k, v)| {
                    let condition = v["condition"].as_str().unwrap_or("service_started");
                    (scalar_text(k), condition.to_owned())
                })
                .collect(),
            _ => BTreeMap::new(),
        }
    }

    /// Short-form volume entries as `(source, target)`.
    pub fn volumes(&self) -> Vec<(String, String)> {
        self.value["volumes"]
            .as_sequence()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|v| {
                        let text = scalar_text(v);
                        let mut parts = text.splitn(3, ':');
                        Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The `command:` list (empty when absent).
    pub fn command(&self) -> Vec<String> {
        match &self.value["command"] {
            Value::Sequence(items) => items.iter().map(scalar_text).collect(),
            Value::String(s) => s.split_whitespace().map(String::from).collect(),
            _ => Vec::new(),
        }
    }
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        other => panic!("expected a scalar, found {other:?}"),
    }
}

/// Compose variable interpolation, resolved to the defaults:
/// `${VAR:-default}` and `${VAR-default}` give the default, `$$` gives `$`.
/// A variable without a default (`${VAR}`, `$VAR`, `${VAR:?err}`) is an
/// error: the file would depend on the caller's shell.
pub fn interpolate(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = closing_brace(body).ok_or_else(|| format!("unclosed ${{ in {text:?}"))?;
            let expr = &body[..end];
            let (name, default) = match expr.find([':', '-', '?', '+']) {
                Some(i) => (&expr[..i], &expr[i..]),
                None => (expr, ""),
            };
            let default = if let Some(d) = default.strip_prefix(":-") {
                d
            } else if let Some(d) = default.strip_prefix('-') {
                d
            } else {
                return Err(format!(
                    "${{{expr}}} has no default (`${{{name}:-...}}`), so the value depends on the shell"
                ));
            };
            out.push_str(&interpolate(default)?);
            rest = &body[end + 1..];
        } else {
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name.is_empty() {
                out.push('$');
                rest = after;
            } else {
                return Err(format!(
                    "${name} has no default, so the value depends on the shell"
                ));
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Index of the `}` closing a `${`, allowing nested `${...}` in defaults.
fn closing_brace(body: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in body.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// The compose tests of a saga participant's crate (payment, delivery),
/// which differ only by the crate: the `$service` container's environment
/// loads with the real `Settings::load` (a misspelled key would fail) and
/// passes the checks every service container shares
/// ([`Compose::assert_service_container`]), with the service's own topic
/// list; its healthcheck path answers 200 on the real app built from those
/// settings (on port 0, a fresh database, and a topic of its own that nobody
/// writes); and docs/configuration.md documents every key of `Settings`
/// with its default.
#[macro_export]
macro_rules! participant_compose_tests {
    ($krate:ident, $service:literal) => {
        #[tokio::test]
        async fn the_compose_environment_configures_the_service() {
            use commerce_common::config::{DatabaseConfig, HttpConfig, KafkaConfig, Secret};
            use $krate::{config::Settings, startup::Application};

            let compose = $crate::compose::Compose::load();
            let settings = compose.service($service).load_config(Settings::load);
            let health_path = compose.assert_service_container($service, &settings);
            assert!(
                settings.consumer.topics.is_empty(),
                "the container consumes the service's own topic list"
            );

            let db = $crate::fresh_database(concat!($service, "_compose")).await;
            let mut local = settings;
            local.http = HttpConfig::with_port(0);
            local.database = DatabaseConfig {
                max_connections: 2,
                ..DatabaseConfig::with_url(&db.url)
            };
            local.kafka = KafkaConfig {
                brokers: $crate::kafka_brokers(),
            };
            local.consumer.topics = vec![format!(
                concat!($service, "-compose-{}"),
                uuid::Uuid::new_v4().simple()
            )];
            local.auth.public_key_pem = Some(Secret::new($crate::jwt_keys().public_pem.clone()));
            let app =
                $crate::RunningApp::spawn(Application::build(local).await.expect("the app builds"));
            $crate::compose::assert_health_answers(app.port(), &health_path).await;
        }

        #[test]
        fn every_setting_is_documented() {
            let defaults = serde_json::to_value($krate::config::Settings::default()).unwrap();
            $crate::config_doc::assert_config_documented(
                concat!($service, "-service"),
                &defaults,
                &["consumer.instance_id"],
            );
        }
    };
}

/// Runs `load` (a crate's own config loader) with exactly `environment` as
/// the process environment, inside a [`figment::Jail`]: everything else is
/// removed for the duration and restored afterwards. The binary's other
/// tests, which may run meanwhile (the jail holds a global lock only against
/// other jails), read the environment the binary started with, kept before
/// the first jail.
pub fn with_exact_env<T>(environment: &BTreeMap<String, String>, load: impl FnOnce() -> T) -> T {
    crate::env::keep_starting_env();
    let mut result = None;
    // The closure's error type is figment's (large) `Error`; it never fails.
    #[allow(clippy::result_large_err)]
    figment::Jail::expect_with(|jail| {
        jail.clear_env();
        for (key, value) in environment {
            jail.set_env(key, value);
        }
        result = Some(load());
        Ok(())
    });
    result.expect("the jail ran the loader")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary's other tests run on while one loads a config in a jail:
    /// a process they start then gets the environment the binary started
    /// with, not the jail's (without its `PATH`, a service would not find
    /// `TEST_DATABASE_URL` either).
    #[test]
    fn a_process_started_during_a_jail_gets_the_starting_environment() {
        let cluster = crate::admin_url();
        let (entered, inside) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let environment = BTreeMap::from([("ONLY_IN_THE_JAIL".to_owned(), "1".to_owned())]);
        let jail = std::thread::spawn(move || {
            with_exact_env(&environment, || {
                entered.send(()).unwrap();
                released.recv().unwrap();
            })
        });
        inside.recv().unwrap();
        assert_eq!(
            crate::admin_url(),
            cluster,
            "the cluster's URL, read during the jail"
        );
        let mut child =
            crate::ChildProcess::spawn("env", "/usr/bin/env", Vec::<(&str, &str)>::new());
        child.wait();
        release.send(()).unwrap();
        jail.join().unwrap();
        assert!(child.log_contains("PATH="), "{:?}", child.logs());
        assert!(
            !child.log_contains("ONLY_IN_THE_JAIL"),
            "{:?}",
            child.logs()
        );
    }

    #[test]
    fn interpolation_uses_defaults_and_rejects_shell_dependence() {
        assert_eq!(interpolate("a${X:-b}c").unwrap(), "abc");
        assert_eq!(interpolate("${X-}").unwrap(), "");
        assert_eq!(interpolate("$$topic").unwrap(), "$topic");
        assert_eq!(interpolate("${A:-${B:-x}}y").unwrap(), "xy");
        assert_eq!(interpolate("no vars").unwrap(), "no vars");
        assert!(interpolate("${X}").is_err());
        assert!(interpolate("$X").is_err());
        assert!(interpolate("${X:?required}").is_err());
    }

    #[test]
    fn merge_keys_and_anchors_resolve_like_compose() {
        let doc = Compose::parse(
            "x: &base\n  restart: always\n  environment: &env\n    A: 1\n    B: two\n\
             services:\n  s:\n    <<: *base\n    environment:\n      <<: *env\n      B: three\n",
        )
        .unwrap();
        let compose = Compose {
            path: PathBuf::from("/tmp/compose.yaml"),
            document: doc,
        };
        let s = compose.service("s");
        assert_eq!(s.restart().as_deref(), Some("always"));
        let env = s.environment();
        assert_eq!(env["A"], "1");
        assert_eq!(env["B"], "three");
    }
}
