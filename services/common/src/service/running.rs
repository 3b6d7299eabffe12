//! A started service: its HTTP server (and the separate `/metrics` one, if
//! any), its background tasks (the consumer first), and the token that stops
//! them. It stops on SIGINT/SIGTERM or the token: the servers finish their
//! requests, then the consumer releases its leases.

use actix_web::dev::Server;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct RunningService {
    pub(super) port: u16,
    pub(super) server: Server,
    /// The `/metrics` listener's port and server, when it has its own.
    pub(super) metrics: Option<(u16, Server)>,
    /// Awaited in this order once the servers stopped.
    pub(super) tasks: Vec<JoinHandle<()>>,
    pub(super) shutdown: CancellationToken,
}

impl RunningService {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port `/metrics` is served on when it has its own listener.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics.as_ref().map(|(port, _)| *port)
    }

    /// Cancelling it stops the service as SIGINT/SIGTERM would.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until SIGINT/SIGTERM or the shutdown token, then stops the
    /// HTTP servers gracefully and waits for the background tasks (the
    /// consumer releases its leases).
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let mut server = tokio::spawn(self.server);
        let metrics = self.metrics.map(|(_, metrics)| {
            let handle = metrics.handle();
            (handle, tokio::spawn(metrics))
        });
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
        if let Some((handle, metrics)) = metrics {
            handle.stop(true).await;
            metrics.await.ok();
        }
        for task in self.tasks {
            task.await.ok();
        }
        Ok(())
    }
}

/// Resolves on SIGINT or SIGTERM, naming the signal.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}
