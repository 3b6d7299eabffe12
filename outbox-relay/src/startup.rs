//! Builds the relay from its configuration and runs it until SIGINT/SIGTERM:
//! one task per source and one for its lag probe, the HTTP server, then an orderly stop (sources drain
//! in-flight acknowledgements and send a final status update).

use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::RelayConfig;
use crate::http;
use crate::metrics::Metrics;
use crate::probe::LagProbe;
use crate::source::Source;

/// Beyond the drain's grace period: the final status update, closing the
/// connection and saving the slot's position.
const STOP_PATIENCE: Duration = Duration::from_secs(8);

pub struct Application {
    config: RelayConfig,
    metrics: Arc<Metrics>,
    server: Server,
    port: u16,
}

impl Application {
    /// Binds the HTTP port (0 picks a free one); sources start in `run_until_stopped`.
    pub fn build(config: RelayConfig) -> std::io::Result<Self> {
        let metrics = Arc::new(Metrics::new());
        for name in config.sources.keys() {
            metrics.source(name);
        }
        let (server, port) = http::serve(&config.http_address(), Arc::clone(&metrics))?;
        Ok(Self {
            config,
            metrics,
            server,
            port,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let shutdown = CancellationToken::new();
        let mut sources = JoinSet::new();
        for (name, config) in &self.config.sources {
            let source = Source::new(
                name,
                config.clone(),
                self.config.kafka.clone(),
                self.config.replication.clone(),
                Arc::clone(&self.metrics),
            );
            sources.spawn(source.supervise(shutdown.clone()));
            let probe = LagProbe {
                source: name.clone(),
                url: config.url.expose().to_owned(),
                slot: config.slot_name(name),
                interval: self.config.replication.lag_probe_interval,
                connect_timeout: self.config.replication.connect_timeout,
                metrics: self.metrics.source(name),
            };
            sources.spawn(probe.run(shutdown.clone()));
        }
        tracing::info!(
            port = self.port,
            sources = self.config.sources.len(),
            "relay running"
        );

        // rskafka's requests stall on Nagle without it (see the module).
        let nodelay = tokio::spawn(commerce_base::nodelay::keep_set(shutdown.clone()));
        let handle = self.server.handle();
        let server = tokio::spawn(self.server);
        wait_for_signal().await;
        tracing::info!("shutting down");
        shutdown.cancel();
        // Sources drain within `shutdown_grace` and cancel what they
        // wait for; a source stuck anyway (a bug) must not keep the process
        // alive until the orchestrator's SIGKILL.
        let patience = self.config.replication.shutdown_grace + STOP_PATIENCE;
        let stopped = tokio::time::timeout(patience, async {
            while sources.join_next().await.is_some() {}
        })
        .await;
        if stopped.is_err() {
            tracing::error!(
                ?patience,
                "sources did not stop in time; aborting them (the slot keeps its confirmed position)"
            );
            sources.abort_all();
            while sources.join_next().await.is_some() {}
        }
        let _ = nodelay.await;
        handle.stop(true).await;
        server.await.map_err(std::io::Error::other)?
    }
}

async fn wait_for_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
