//! What the order, payment and delivery services build the same way around
//! their own routes and saga: the operational endpoints (`/health`, `/ready`,
//! `/metrics`), the JSON/query/path extractor configs, the OpenAPI document's
//! header, and a running service that stops on SIGINT/SIGTERM or a
//! cancellation token, letting its consumer release its leases.

use std::{net::TcpListener, sync::Arc};

use actix_web::{HttpResponse, dev::Server, web};
use anyhow::Context;
use paperclip::v2::models::{DefaultApiRaw, Info};
use prometheus_client::{encoding::text::encode, registry::Registry};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    db::{self, DbPool},
    http,
};

/// The finished metrics registry (the service's own metrics and the consumer
/// runtime's), shared with the `/metrics` handler.
#[derive(Clone)]
pub struct MetricsRegistry(pub Arc<Registry>);

impl MetricsRegistry {
    pub fn render(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.0).expect("writing to a String cannot fail");
        text
    }
}

/// The newest migration version, which `/ready` expects to be applied.
#[derive(Clone)]
struct ExpectedMigration(String);

/// Which service answers the probes.
#[derive(Clone, Copy)]
struct ServiceName(&'static str);

/// The app data and routes every service mounts before its own API.
#[derive(Clone)]
pub struct Operational {
    service: ServiceName,
    pool: web::Data<DbPool>,
    expected_migration: web::Data<ExpectedMigration>,
    registry: web::Data<MetricsRegistry>,
    json_limit: usize,
}

impl Operational {
    /// `expected_migration` is what [`db::migrate`] returned; `json_limit`
    /// bounds request bodies.
    pub fn new(
        service: &'static str,
        pool: DbPool,
        expected_migration: String,
        registry: Registry,
        json_limit: usize,
    ) -> Self {
        Self {
            service: ServiceName(service),
            pool: web::Data::new(pool),
            expected_migration: web::Data::new(ExpectedMigration(expected_migration)),
            registry: web::Data::new(MetricsRegistry(Arc::new(registry))),
            json_limit,
        }
    }

    /// Registers the pool (`web::Data<DbPool>`), the metrics registry, the
    /// extractor configs, `/health` and `/ready`. `/metrics` is left to the
    /// service: [`metrics`] unless it refreshes gauges first.
    pub fn configure(&self, cfg: &mut web::ServiceConfig) {
        cfg.app_data(web::Data::new(self.service))
            .app_data(self.pool.clone())
            .app_data(self.expected_migration.clone())
            .app_data(self.registry.clone())
            .app_data(http::json_config(self.json_limit))
            .app_data(http::query_config())
            .app_data(http::path_config())
            .route("/health", web::get().to(health))
            .route("/ready", web::get().to(ready));
    }
}

async fn health(service: web::Data<ServiceName>) -> HttpResponse {
    http::alive(service.0)
}

async fn ready(
    service: web::Data<ServiceName>,
    pool: web::Data<DbPool>,
    expected: web::Data<ExpectedMigration>,
) -> HttpResponse {
    http::readiness(service.0, db::ready(&pool, &expected.0).await)
}

/// `GET /metrics`: the registry in the OpenMetrics text format.
pub async fn metrics(registry: web::Data<MetricsRegistry>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(registry.render())
}

/// Default service for unknown routes: 404 in the common error shape.
pub async fn unknown_route() -> Result<HttpResponse, http::ApiError> {
    Err(http::not_found().await)
}

/// The header of a service's OpenAPI document (the gateway merges them).
pub fn api_spec(title: &str, description: &str) -> DefaultApiRaw {
    DefaultApiRaw {
        info: Info {
            title: title.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: Some(description.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Binds the HTTP listener (port 0 allowed); returns it with the bound port.
pub fn bind(address: &str) -> anyhow::Result<(TcpListener, u16)> {
    let listener = TcpListener::bind(address).with_context(|| format!("binding {address}"))?;
    let port = listener.local_addr()?.port();
    Ok((listener, port))
}

/// A started service: its HTTP server (built with `disable_signals()`, the
/// signals are handled here), its consumer if any, and the token that stops
/// both.
pub struct RunningService {
    port: u16,
    server: Server,
    consumer: Option<JoinHandle<()>>,
    shutdown: CancellationToken,
}

impl RunningService {
    pub fn new(
        port: u16,
        server: Server,
        consumer: Option<JoinHandle<()>>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            port,
            server,
            consumer,
            shutdown,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Cancelling it stops the service as SIGINT/SIGTERM would.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until SIGINT/SIGTERM or the shutdown token, then stops the
    /// HTTP server gracefully and lets the consumer release its leases.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let mut server = tokio::spawn(self.server);
        let stop_reason = tokio::select! {
            result = &mut server => {
                self.shutdown.cancel();
                result??;
                "the HTTP server stopped"
            }
            () = self.shutdown.cancelled() => "shutdown requested",
            signal = shutdown_signal() => signal,
        };
        tracing::info!(reason = stop_reason, "stopping");
        self.shutdown.cancel();
        handle.stop(true).await;
        if let Some(consumer) = self.consumer {
            consumer.await.ok();
        }
        Ok(())
    }
}

/// Resolves on SIGINT or SIGTERM, naming the signal.
pub async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// What a service binary was asked to do on its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// No arguments: run the service.
    Serve,
    /// `replay-dead-letters [ID]...` (see [`crate::dead_letters`]).
    ReplayDeadLetters(Vec<String>),
}

impl Command {
    /// Parses the arguments after the program name.
    pub fn parse(args: impl IntoIterator<Item = String>) -> anyhow::Result<Self> {
        let mut args = args.into_iter();
        match args.next().as_deref() {
            None => Ok(Command::Serve),
            Some("replay-dead-letters") => Ok(Command::ReplayDeadLetters(args.collect())),
            Some(other) => anyhow::bail!(
                "unknown command {other:?}; usage: no arguments to run the service, or \
                 `replay-dead-letters [ID]...` (all dead letters when no ID is given)"
            ),
        }
    }

    /// This process's command line.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::parse(std::env::args().skip(1))
    }
}

#[cfg(test)]
mod command_tests {
    use super::Command;

    fn parse(args: &[&str]) -> anyhow::Result<Command> {
        Command::parse(args.iter().map(|a| a.to_string()))
    }

    #[test]
    fn no_arguments_serve_and_replay_takes_ids() {
        assert_eq!(parse(&[]).unwrap(), Command::Serve);
        assert_eq!(
            parse(&["replay-dead-letters"]).unwrap(),
            Command::ReplayDeadLetters(vec![])
        );
        assert_eq!(
            parse(&["replay-dead-letters", "4", "2"]).unwrap(),
            Command::ReplayDeadLetters(vec!["4".into(), "2".into()])
        );
        let unknown = parse(&["--port", "80"]).unwrap_err().to_string();
        assert!(unknown.contains("usage"), "{unknown}");
    }
}
