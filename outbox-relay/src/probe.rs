//! The lag probe: one task and one connection per source, apart from the
//! replication session, reading the slot from `pg_replication_slots` every
//! `replication.lag_probe_interval` whatever the session is doing. A
//! broker outage or a session that cannot start is exactly when WAL piles
//! up towards `max_slot_wal_keep_size`; the lag, `wal_status` and
//! `safe_wal_size` must keep moving then (metrics, status API, dashboard).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::metrics::SourceMetrics;

pub struct LagProbe {
    pub source: String,
    pub url: String,
    pub slot: String,
    pub interval: Duration,
    pub connect_timeout: Duration,
    pub metrics: Arc<SourceMetrics>,
}

impl LagProbe {
    /// Reads the slot every interval until `shutdown`, connecting again
    /// after a failure (reported in the status API and logged once).
    pub async fn run(self, shutdown: CancellationToken) {
        let mut catalog: Option<Catalog> = None;
        loop {
            if let Err(error) = self.read(&mut catalog).await {
                catalog = None;
                self.metrics.slot_probe_failed(error);
            }
            tokio::select! {
                () = tokio::time::sleep(self.interval) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    async fn read(&self, catalog: &mut Option<Catalog>) -> Result<(), String> {
        if catalog.is_none() {
            let name = format!("outbox-relay/{}/probe", self.source);
            *catalog = Some(
                Catalog::connect(&self.url, &name, self.connect_timeout)
                    .await
                    .map_err(|e| e.to_string())?,
            );
        }
        let Some(connected) = catalog.as_ref() else {
            return Ok(());
        };
        let reading = connected
            .slot_reading(&self.slot)
            .await
            .map_err(|e| e.to_string())?;
        self.metrics.slot_read(reading);
        Ok(())
    }
}
