//! The one service skeleton, written once for the gateway and the order,
//! payment and delivery services: settings loaded and checked, migrations,
//! the pool, the metrics registry, the saga consumer, the service's own
//! background tasks, the HTTP server with `/health`, `/ready`, `/metrics`
//! and the 404 for unknown routes, SIGINT/SIGTERM and a graceful stop; and
//! `main` with its `replay-dead-letters` command.
//!
//! A service implements [`Service`] (its routes, its app data, its consumer
//! group and handler, its background tasks) and [`ServiceSettings`] (where
//! the skeleton finds the settings every service has), and its binary is
//! `service::main::<TheService>()`.

mod command;
mod operational;
mod running;
mod server;

use std::{future::Future, marker::PhantomData, sync::Arc};

use actix_web::{
    App, Error,
    body::{BoxBody, MessageBody},
    dev::{ServiceFactory, ServiceRequest, ServiceResponse},
    web,
};
use anyhow::Context as _;
use prometheus_client::registry::Registry;
use serde::{Serialize, de::DeserializeOwned};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use command::Command;
pub use operational::{Readiness, unknown_route};
pub use running::RunningService;

use crate::{
    auth::PublicKeyConfig,
    config::{DatabaseConfig, HttpConfig, KafkaConfig},
    consumer::{self, ConsumerConfig, EventHandler},
    db::{self, DbPool},
    dead_letters,
};
use operational::Operational;
use server::bind;

/// Where a service serves `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsAt {
    /// On its HTTP port, next to its API (the services, reached only from
    /// inside the deployment).
    Public,
    /// On a listener of its own, one worker (the gateway: its public port is
    /// the internet's).
    Own { host: String, port: u16 },
    /// Not at all.
    Nowhere,
}

/// The sections every service's settings have, as the skeleton reads them.
#[derive(Debug, Clone)]
pub struct CommonSettings<'a> {
    pub http: &'a HttpConfig,
    pub database: &'a DatabaseConfig,
    /// The public key that verifies bearer tokens; the skeleton registers a
    /// `web::Data<JwtVerifier>` from it.
    pub auth: Option<&'a PublicKeyConfig>,
    /// The brokers and the consumer runtime's tuning, when the service's
    /// consumer runs.
    pub consumer: Option<(&'a KafkaConfig, &'a ConsumerConfig)>,
    pub metrics: MetricsAt,
}

impl<'a> CommonSettings<'a> {
    /// No token verifier, no consumer, `/metrics` on the HTTP port.
    pub fn new(http: &'a HttpConfig, database: &'a DatabaseConfig) -> Self {
        Self {
            http,
            database,
            auth: None,
            consumer: None,
            metrics: MetricsAt::Public,
        }
    }

    pub fn auth(self, auth: &'a PublicKeyConfig) -> Self {
        Self {
            auth: Some(auth),
            ..self
        }
    }

    pub fn consumer(self, kafka: &'a KafkaConfig, consumer: &'a ConsumerConfig) -> Self {
        Self {
            consumer: Some((kafka, consumer)),
            ..self
        }
    }

    pub fn metrics(self, metrics: MetricsAt) -> Self {
        Self { metrics, ..self }
    }
}

/// A service's settings. The common sections are found through
/// [`ServiceSettings::common`], not shared by `#[serde(flatten)]`, which does
/// not combine with the `deny_unknown_fields` every settings struct uses (the
/// saga services declare them once with [`service_settings!`](crate::service_settings)).
pub trait ServiceSettings:
    Serialize + DeserializeOwned + Default + Clone + Send + Sync + 'static
{
    /// Keys renamed when durations got units, still read under their old
    /// names for a release (see [`crate::config::load_renamed`]).
    const RENAMED_KEYS: &'static [&'static str] = &[];

    fn common(&self) -> CommonSettings<'_>;

    /// Checks serde cannot make; the message names the offending key.
    fn validate(&self) -> anyhow::Result<()> {
        Ok(())
    }

    /// Defaults, then the `APP_CONFIG_FILE` TOML file, then `APP__SECTION__KEY`
    /// environment variables (see [`crate::config::load`]), validated.
    fn load() -> anyhow::Result<Self> {
        let settings: Self = crate::config::load_renamed(Self::RENAMED_KEYS)
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        settings.validate()?;
        Ok(settings)
    }
}

/// Declares a saga service's `Settings`: the sections every saga service has
/// (`http`, `database`, `kafka`, `auth`, `consumer`), then the service's own,
/// each `#[serde(default)]`; its `Default` (the HTTP port and the database of
/// a local run) and `Settings::load`. The service still implements
/// [`ServiceSettings`] (its consumer, its checks).
///
/// ```text
/// commerce_common::service_settings! {
///     /// The payment service's settings.
///     pub struct Settings on port 8082, database "commerce_payment" {
///         pub wallet: WalletConfig,
///     }
/// }
/// ```
#[macro_export]
macro_rules! service_settings {
    (
        $(#[$attr:meta])*
        pub struct $name:ident on port $port:literal, database $database:literal {
            $( $(#[$field_attr:meta])* pub $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$attr])*
        #[derive(Debug, Clone, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            pub http: $crate::config::HttpConfig,
            pub database: $crate::config::DatabaseConfig,
            pub kafka: $crate::config::KafkaConfig,
            pub auth: $crate::auth::PublicKeyConfig,
            /// Tuning of the consumer runtime; brokers, group and the
            /// default topics come from the service.
            #[serde(default)]
            pub consumer: $crate::consumer::ConsumerConfig,
            $(
                $(#[$field_attr])*
                #[serde(default)]
                pub $field: $ty,
            )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self {
                    http: $crate::config::HttpConfig::with_port($port),
                    database: $crate::config::DatabaseConfig::with_url(concat!(
                        "postgres://postgres@127.0.0.1:55432/",
                        $database
                    )),
                    kafka: Default::default(),
                    auth: Default::default(),
                    consumer: Default::default(),
                    $( $field: Default::default(), )*
                }
            }
        }

        impl $name {
            /// See [`ServiceSettings::load`]($crate::service::ServiceSettings::load).
            pub fn load() -> ::anyhow::Result<Self> {
                <Self as $crate::service::ServiceSettings>::load()
            }
        }
    };
}

/// What an actix `App` is made of, middleware included: a factory of the
/// service answering its requests with bodies of type `Body`.
pub trait AppFactory:
    ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<Self::Body>,
        Error = Error,
        InitError = (),
    > + 'static
{
    type Body: MessageBody + 'static;
}

impl<T, B> AppFactory for T
where
    T: ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<B>,
            Error = Error,
            InitError = (),
        > + 'static,
    B: MessageBody + 'static,
{
    type Body = B;
}

/// What a service builds its own parts from.
pub struct Context<'a> {
    pub pool: &'a DbPool,
    /// The service's metrics go here, next to the consumer runtime's.
    pub registry: &'a mut Registry,
    /// Cancelled when the service stops; its background tasks end then.
    pub shutdown: &'a CancellationToken,
}

/// A service's consumer: its group (offsets, leases and the inbox are kept
/// under it), the topics it reads unless `consumer.topics` names others, and
/// its handler (also what `replay-dead-letters` runs dead letters through).
pub struct Consumer {
    pub group: &'static str,
    pub topics: &'static [&'static str],
    pub handler: Arc<dyn EventHandler>,
}

/// One service: what it has of its own. Everything else is the skeleton's.
pub trait Service: Sized + Send + Sync + 'static {
    type Settings: ServiceSettings;

    /// The name in probes, logs and the OpenAPI title.
    const NAME: &'static str;
    /// Its database's migrations, applied at start-up; `/ready` waits for
    /// the newest.
    const MIGRATIONS: db::Migrations;
    /// Largest accepted JSON body.
    const JSON_LIMIT: usize = 16 * 1024;
    /// Its OpenAPI document's title: its name unless it says otherwise.
    const API_TITLE: &'static str = Self::NAME;
    /// Its OpenAPI document's description.
    const API_DESCRIPTION: Option<&'static str> = None;

    /// Its own parts (metrics, app data): no I/O, and nothing started, since
    /// `replay-dead-letters` builds them too.
    fn new(
        settings: &Self::Settings,
        context: Context<'_>,
    ) -> impl Future<Output = anyhow::Result<Self>> + Send;

    /// Its consumer, if it consumes events (it runs when
    /// [`CommonSettings::consumer`] is set).
    fn consumer(&self) -> Option<Consumer> {
        None
    }

    /// Its background tasks, ending when `shutdown` is cancelled; awaited
    /// after the consumer on the way out.
    fn spawn_tasks(
        &self,
        _settings: &Self::Settings,
        _shutdown: &CancellationToken,
    ) -> anyhow::Result<Vec<JoinHandle<()>>> {
        Ok(Vec::new())
    }

    /// App data and routes outside the OpenAPI document (called once per
    /// HTTP worker).
    fn configure(&self, _cfg: &mut web::ServiceConfig) {}

    /// Its documented API (called once per HTTP worker).
    fn api(&self, cfg: &mut paperclip::actix::web::ServiceConfig<'_>);

    /// Where the document is served: `/openapi.json` unless it says otherwise.
    fn document<T: AppFactory>(&self, app: paperclip::actix::App<T>) -> paperclip::actix::App<T> {
        app.with_json_spec_at("/openapi.json")
    }

    /// Middleware around the whole app.
    fn wrap(app: App<impl AppFactory<Body = BoxBody>>) -> App<impl AppFactory> {
        app
    }

    /// Brings gauges up to date before `/metrics` renders.
    fn refresh_metrics(&self) -> impl Future<Output = ()> {
        async {}
    }
}

/// A built service, bound (port 0 allowed) and ready to run.
pub struct Application<S> {
    running: RunningService,
    service: PhantomData<fn() -> S>,
}

impl<S: Service> Application<S> {
    pub async fn build(settings: S::Settings) -> anyhow::Result<Self> {
        settings.validate()?;
        let common = settings.common();
        let verifier = common
            .auth
            .map(PublicKeyConfig::verifier)
            .transpose()?
            .map(web::Data::new);
        let expected = db::migrate(common.database, S::MIGRATIONS)
            .await
            .with_context(|| format!("migrating the {} database", S::NAME))?;
        let pool = db::pool(common.database)?;
        let (listener, port) = bind(common.http.address())?;
        let metrics_listener = match &common.metrics {
            MetricsAt::Own { host, port } => Some(bind((host.as_str(), *port))?),
            MetricsAt::Public | MetricsAt::Nowhere => None,
        };

        let shutdown = CancellationToken::new();
        // Whatever fails from here on stops what was started.
        let stop_on_error = shutdown.clone().drop_guard();
        let mut registry = Registry::default();
        let context = Context {
            pool: &pool,
            registry: &mut registry,
            shutdown: &shutdown,
        };
        let service = S::new(&settings, context).await?;
        let mut tasks = Vec::new();
        if let (Some((kafka, tuning)), Some(consumer)) = (common.consumer, service.consumer()) {
            let identity = consumer::Identity::new(
                kafka.broker_list(),
                consumer.group,
                consumer.topics.iter().copied(),
            );
            tasks.push(consumer::spawn(
                pool.clone(),
                identity,
                tuning.clone(),
                consumer.handler,
                &mut registry,
                shutdown.clone(),
            ));
        }
        tasks.extend(service.spawn_tasks(&settings, &shutdown)?);

        let operational = Operational::new(
            S::NAME,
            pool,
            common.database.clone(),
            expected,
            registry,
            S::JSON_LIMIT,
        );
        let registry = operational.registry.clone();
        let service = web::Data::new(service);
        let public = server::Public {
            listener,
            workers: common.http.worker_threads(),
            verifier,
            metrics: common.metrics == MetricsAt::Public,
        };
        let server = server::public(service.clone(), operational, public)?;
        let metrics = match metrics_listener {
            None => None,
            Some((listener, port)) => Some((port, server::metrics(service, registry, listener)?)),
        };
        stop_on_error.disarm();
        Ok(Self {
            running: RunningService {
                port,
                server,
                metrics,
                tasks,
                shutdown,
            },
            service: PhantomData,
        })
    }

    pub fn port(&self) -> u16 {
        self.running.port()
    }

    /// See [`RunningService::metrics_port`].
    pub fn metrics_port(&self) -> Option<u16> {
        self.running.metrics_port()
    }

    /// Cancelling it stops the service as SIGINT/SIGTERM would.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.running.shutdown_token()
    }

    /// See [`RunningService::run_until_stopped`].
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.running.run_until_stopped().await
    }
}

/// A service binary's `main`: its command line, then [`run`].
pub async fn main<S: Service>() -> anyhow::Result<()> {
    run::<S>(Command::from_env()?).await
}

/// Runs `command` with logging set up ([`crate::telemetry`]) and the
/// settings loaded from defaults, file and environment.
pub async fn run<S: Service>(command: Command) -> anyhow::Result<()> {
    crate::telemetry::init(S::NAME);
    let settings = S::Settings::load()?;
    match command {
        Command::Serve => {
            let application = Application::<S>::build(settings).await?;
            tracing::info!(port = application.port(), "{} listening", S::NAME);
            application.run_until_stopped().await
        }
        Command::ReplayDeadLetters(ids) => replay_dead_letters::<S>(settings, &ids).await,
    }
}

/// The `replay-dead-letters [ID]...` command: the consumer group's dead
/// letters run through the service's handler again (see
/// [`crate::dead_letters`]).
pub async fn replay_dead_letters<S: Service>(
    settings: S::Settings,
    ids: &[String],
) -> anyhow::Result<()> {
    let pool = db::pool(settings.common().database)?;
    let context = Context {
        pool: &pool,
        registry: &mut Registry::default(),
        shutdown: &CancellationToken::new(),
    };
    let service = S::new(&settings, context).await?;
    let consumer = service
        .consumer()
        .with_context(|| format!("{} consumes no events", S::NAME))?;
    dead_letters::replay_command(&pool, consumer.group, &*consumer.handler, ids).await
}
