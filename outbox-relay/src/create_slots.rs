//! `outbox-relay create-slots [--recreate <source>]...`: makes every
//! configured source's replication slot exist before any service can write
//! an outbox row (compose and `cargo xtask up` run it as a one-shot step
//! before the services). Idempotent: an existing slot is kept as it is.
//!
//! Per source it checks the publication (creating it when the relay's role
//! may; a database whose outbox table does not exist yet is fine, the
//! service's first migration creates both), then the slot and its marker
//! ([`crate::slots`]). A slot that is missing although the source had one,
//! or lost, fails the step until the operator names the source in
//! `--recreate`: that re-creates the slot at the current WAL position,
//! knowing the events its predecessor had not confirmed were not published.

use crate::catalog::Catalog;
use crate::config::{RelayConfig, SourceConfig};
use crate::error::SourceError;
use crate::replication::{ConnectParams, ReplicationConnection};
use crate::slots::{self, Outcome};

/// Usage of the relay binary's commands.
pub const USAGE: &str =
    "usage: outbox-relay                       stream every configured source to Kafka
       outbox-relay create-slots [--recreate <source>]...
                                    create each source's replication slot (and check its
                                    publication) before anything writes; idempotent.
                                    --recreate: replace the missing or lost slot of <source>
                                    (events it had not confirmed stay unpublished)
configured by APP__... / APP_CONFIG_FILE (docs/configuration.md)";

/// Prepares every source's slot; prints one line per source. Returns
/// whether all succeeded. Sources named in `recreate` that are not
/// configured are an error before anything is touched.
pub async fn run(config: &RelayConfig, recreate: &[String]) -> anyhow::Result<bool> {
    if let Some(unknown) = recreate
        .iter()
        .find(|name| !config.sources.contains_key(*name))
    {
        anyhow::bail!(
            "--recreate {unknown}: no such source (configured: {})",
            config
                .sources
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    anyhow::ensure!(!config.sources.is_empty(), "no sources configured");
    let mut all_ok = true;
    for (name, source) in &config.sources {
        let slot = source.slot_name(name);
        let recreate = recreate.contains(name);
        match prepare(config, name, source, &slot, recreate).await {
            Ok(report) => println!("{name}: slot {slot} {report}"),
            Err(error) => {
                all_ok = false;
                eprintln!("{name}: slot {slot}: ERROR: {error}");
            }
        }
    }
    Ok(all_ok)
}

async fn prepare(
    config: &RelayConfig,
    name: &str,
    source: &SourceConfig,
    slot: &str,
    recreate: bool,
) -> Result<String, SourceError> {
    let replication = &config.replication;
    let timeout = replication.connect_timeout;
    let url = source.url.expose();
    let (schema, table) = source.qualified_table();
    let catalog =
        Catalog::connect(url, &format!("outbox-relay/{name}/create-slots"), timeout).await?;
    let outbox_exists = catalog.relation_exists(schema, table).await?;
    if outbox_exists {
        catalog
            .ensure_publication(&source.publication, schema, table)
            .await?;
    }
    let params = ConnectParams::from_url(url, &format!("outbox-relay/{name}/create-slots"))?;
    let mut connection = ReplicationConnection::connect(&params, timeout).await?;
    let prepared = slots::prepare(
        &catalog,
        &mut connection,
        name,
        slot,
        outbox_exists,
        slots::Mode::CreateSlots { recreate },
        replication.create_slot_timeout,
    )
    .await?;
    drop(connection);
    let publication = if outbox_exists {
        format!("publication {} checked", source.publication)
    } else {
        format!(
            "table {schema}.{table} not created yet (the service's migrations create it and \
             publication {})",
            source.publication
        )
    };
    let done = match prepared.outcome {
        Outcome::Existed => format!("exists (confirmed {})", prepared.confirmed),
        Outcome::Created => format!("created at {}", prepared.confirmed),
        Outcome::Recreated { was } => format!(
            "was {was}; RE-CREATED at {}: events committed before it and not confirmed by the \
             old slot were not published (the order saga's re-drive heals them, docs/saga.md)",
            prepared.confirmed
        ),
    };
    if recreate && prepared.outcome == Outcome::Existed {
        return Ok(format!(
            "{done}, usable: nothing to re-create; {publication}"
        ));
    }
    Ok(format!("{done}; {publication}"))
}
