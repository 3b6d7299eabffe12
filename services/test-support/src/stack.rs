//! A whole stack of the real binaries (the analog of IOx's `MiniCluster`):
//! any subset of the gateway and the order, payment and delivery services
//! as child processes, each on a fresh database, on a broker of the stack's
//! own with the contract's topics, and the outbox relay streaming every
//! started service's outbox. The `APP__…` wiring between them is written
//! here once; a test adds only what it is about ([`StackBuilder::env`]).
//!
//! ```ignore
//! let stack = Stack::builder("saga")
//!     .services(&[Service::Order, Service::Payment, Service::Delivery])
//!     .env(Service::Payment, "APP__WALLET__INITIAL_CREDIT_CENTS", "100000")
//!     .relay()
//!     .start()
//!     .await;
//! stack.url(Service::Order, "/api/orders");
//! ```

use std::time::Duration;

use crate::{
    ChildProcess, Relay, StackBroker, TestDatabase, bin_path, free_port, fresh_database, jwt_keys,
    kafka_brokers,
};

/// How long a binary may take to answer `/ready` (migrations included), and
/// the relay to stream every source.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A service of the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Gateway,
    Order,
    Payment,
    Delivery,
}

impl Service {
    /// Every service, upstreams first (the gateway is started knowing their ports).
    pub const ALL: [Service; 4] = [
        Service::Order,
        Service::Payment,
        Service::Delivery,
        Service::Gateway,
    ];

    /// The short name: the relay's source (`APP__SOURCES__<NAME>__*`) and
    /// the gateway's upstream (`APP__UPSTREAMS__<NAME>`).
    pub fn name(self) -> &'static str {
        match self {
            Service::Gateway => "gateway",
            Service::Order => "order",
            Service::Payment => "payment",
            Service::Delivery => "delivery",
        }
    }

    /// The workspace binary.
    pub fn binary(self) -> &'static str {
        match self {
            Service::Gateway => "gateway",
            Service::Order => "order-service",
            Service::Payment => "payment-service",
            Service::Delivery => "delivery-service",
        }
    }
}

/// Which broker the stack's services use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Broker {
    /// [`StackBroker`]: a node of the stack's own (every consumer of a
    /// fresh stack reads its topics from offset 0).
    Own,
    /// The shared test broker, for stacks that consume nothing.
    Shared,
}

/// What to start; [`start`](Self::start) starts it.
#[must_use]
pub struct StackBuilder {
    prefix: String,
    services: Vec<Service>,
    relay: bool,
    broker: Broker,
    env: Vec<(Service, String, String)>,
}

impl StackBuilder {
    /// Starts `service` too.
    pub fn service(mut self, service: Service) -> Self {
        if !self.services.contains(&service) {
            self.services.push(service);
        }
        self
    }

    /// Starts each of `services` too.
    pub fn services(self, services: &[Service]) -> Self {
        services.iter().fold(self, |b, s| b.service(*s))
    }

    /// The gateway, the three services and the relay: all of it.
    pub fn everything(self) -> Self {
        self.services(&Service::ALL).relay()
    }

    /// Starts the outbox relay on every started service's database.
    pub fn relay(mut self) -> Self {
        self.relay = true;
        self
    }

    /// The shared test broker (`TEST_KAFKA_BROKERS`) instead of a node of
    /// the stack's own: only for stacks whose services consume nothing
    /// (e.g. the order service with `APP__SAGA__ENABLED=false`), since a
    /// consumer would replay every other test's events.
    pub fn shared_broker(mut self) -> Self {
        self.broker = Broker::Shared;
        self
    }

    /// One more (or an overriding) environment variable of `service`.
    pub fn env(mut self, service: Service, key: &str, value: impl ToString) -> Self {
        self.env.push((service, key.to_owned(), value.to_string()));
        self
    }

    /// Starts the broker, the services (waiting for each one's `/ready`,
    /// so their migrations, and with them the relay's publications, exist)
    /// and then the relay (waiting until every source streams).
    pub async fn start(self) -> Stack {
        let broker = match self.broker {
            Broker::Own => Some(StackBroker::start().await),
            Broker::Shared => None,
        };
        let brokers = broker
            .as_ref()
            .map_or_else(kafka_brokers, |b| b.brokers.clone());
        // Upstreams first: the gateway is told their ports.
        let mut services = self.services.clone();
        services.sort_by_key(|s| Service::ALL.iter().position(|a| a == s));
        let ports: Vec<(Service, u16)> = services.iter().map(|s| (*s, free_port())).collect();

        let mut running = Vec::new();
        for &(service, port) in &ports {
            let db = fresh_database(&format!("{}_{}", self.prefix, service.name())).await;
            let mut env = service_env(service, port, &db, &brokers, &ports);
            env.extend(
                self.env
                    .iter()
                    .filter(|(s, _, _)| *s == service)
                    .map(|(_, k, v)| (k.clone(), v.clone())),
            );
            let process = ChildProcess::spawn(service.binary(), bin_path(service.binary()), env);
            running.push(Running {
                service,
                port,
                db,
                process,
            });
        }
        for service in &mut running {
            let url = format!("http://127.0.0.1:{}/ready", service.port);
            service.process.wait_for_http_ok(&url, START_TIMEOUT).await;
        }

        let relay = if self.relay {
            let sources: Vec<(&str, &TestDatabase)> =
                running.iter().map(|r| (r.service.name(), &r.db)).collect();
            Some(Relay::start(&brokers, &sources, START_TIMEOUT).await)
        } else {
            None
        };
        Stack {
            _relay: relay,
            services: running,
            brokers,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("http client"),
            _broker: broker,
        }
    }
}

/// The one definition of how a service binary is wired into a stack.
fn service_env(
    service: Service,
    port: u16,
    db: &TestDatabase,
    brokers: &str,
    ports: &[(Service, u16)],
) -> Vec<(String, String)> {
    let keys = jwt_keys();
    let mut env: Vec<(String, String)> = [
        ("RUST_LOG", "info,rskafka=error".to_owned()),
        ("LOG_FORMAT", "pretty".to_owned()),
        ("APP__HTTP__HOST", "127.0.0.1".to_owned()),
        ("APP__HTTP__PORT", port.to_string()),
        ("APP__DATABASE__URL", db.url.clone()),
        ("APP__DATABASE__MAX_CONNECTIONS", "4".to_owned()),
        (
            "APP__AUTH__PUBLIC_KEY_FILE",
            keys.public_key_file.display().to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if service == Service::Gateway {
        env.push((
            "APP__AUTH__PRIVATE_KEY_FILE".into(),
            keys.private_key_file.display().to_string(),
        ));
        // Debug builds hash slowly; the cost changes nothing a test sees.
        env.push(("APP__AUTH__BCRYPT_COST".into(), "4".into()));
        for (upstream, port) in ports.iter().filter(|(s, _)| *s != Service::Gateway) {
            env.push((
                format!("APP__UPSTREAMS__{}", upstream.name().to_uppercase()),
                format!("http://127.0.0.1:{port}"),
            ));
        }
    } else {
        env.push(("APP__KAFKA__BROKERS".into(), brokers.to_owned()));
        // Events applied within milliseconds; a lease left by a stopped
        // consumer taken over within a second and a half.
        env.push(("APP__CONSUMER__FETCH_MAX_WAIT".into(), "20ms".into()));
        env.push(("APP__CONSUMER__LEASE_TTL".into(), "1500ms".into()));
    }
    env
}

struct Running {
    service: Service,
    port: u16,
    db: TestDatabase,
    process: ChildProcess,
}

/// A started stack; dropping it stops everything. Field order is drop
/// order: the relay first (then its slots), the services, the broker last.
pub struct Stack {
    _relay: Option<Relay>,
    services: Vec<Running>,
    brokers: String,
    http: reqwest::Client,
    _broker: Option<StackBroker>,
}

impl Stack {
    /// Nothing yet; `prefix` names the stack's databases (`<prefix>_<service>_…`).
    pub fn builder(prefix: &str) -> StackBuilder {
        StackBuilder {
            prefix: prefix.to_owned(),
            services: Vec::new(),
            relay: false,
            broker: Broker::Own,
            env: Vec::new(),
        }
    }

    /// `host:port` of the stack's broker.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// A client with a 10 s timeout.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn running(&self, service: Service) -> &Running {
        self.services
            .iter()
            .find(|r| r.service == service)
            .unwrap_or_else(|| panic!("{} is not part of this stack", service.binary()))
    }

    /// `http://127.0.0.1:<port>` of `service`.
    pub fn address(&self, service: Service) -> String {
        format!("http://127.0.0.1:{}", self.running(service).port)
    }

    /// `path` on `service`.
    pub fn url(&self, service: Service, path: &str) -> String {
        format!("{}{path}", self.address(service))
    }

    /// The database of `service`.
    pub fn db(&self, service: Service) -> &TestDatabase {
        &self.running(service).db
    }
}
