//! Broker calls, each with a deadline (rskafka's own retries would
//! otherwise go on as long as the broker is unreachable): connecting,
//! listing the group's partitions, a partition's client and its log range.

use std::{collections::BTreeSet, time::Duration};

use rskafka::{
    BackoffConfig,
    client::{
        Client, ClientBuilder,
        partition::{OffsetAt, PartitionClient, UnknownTopicHandling},
    },
};

use super::{
    config::{ConsumerConfig, Identity},
    coordinator::PartitionKey,
};

/// The partitions of the group's topics, connecting `client` first if needed.
pub(super) async fn discover(
    client: &mut Option<Client>,
    identity: &Identity,
    config: &ConsumerConfig,
) -> anyhow::Result<BTreeSet<PartitionKey>> {
    if client.is_none() {
        *client = Some(build_client(identity, config).await?);
    }
    let topics = tokio::time::timeout(
        config.broker_timeout,
        client.as_ref().expect("built above").list_topics(),
    )
    .await
    .map_err(|_| anyhow::anyhow!("list_topics timed out"))??;
    let mut found = BTreeSet::new();
    for topic in topics {
        if identity.topics.contains(&topic.name) {
            for partition in topic.partitions {
                found.insert((topic.name.clone(), partition));
            }
        }
    }
    Ok(found)
}

async fn build_client(identity: &Identity, config: &ConsumerConfig) -> anyhow::Result<Client> {
    let builder = ClientBuilder::new(identity.brokers.clone())
        .client_id(format!("{}-{}", identity.group, config.instance_id))
        .backoff_config(BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            base: 2.0,
            deadline: Some(config.broker_timeout),
        });
    Ok(tokio::time::timeout(config.broker_timeout, builder.build())
        .await
        .map_err(|_| anyhow::anyhow!("connecting to the broker timed out"))??)
}

/// A client of one partition, on a connection of its own (rebuilt after a
/// failed or timed-out call, with fresh metadata).
pub(super) async fn partition_client(
    identity: &Identity,
    config: &ConsumerConfig,
    topic: &str,
    partition: i32,
) -> anyhow::Result<PartitionClient> {
    let client = build_client(identity, config).await?;
    Ok(tokio::time::timeout(
        config.broker_timeout,
        client.partition_client(topic.to_owned(), partition, UnknownTopicHandling::Error),
    )
    .await
    .map_err(|_| anyhow::anyhow!("partition client timed out"))??)
}

/// The partition's log start and end (ListOffsets earliest and latest):
/// the offsets a fetch may start at.
pub(super) async fn log_range(
    client: &PartitionClient,
    deadline: Duration,
) -> anyhow::Result<(i64, i64)> {
    let offset = |at| async move {
        tokio::time::timeout(deadline, client.get_offset(at))
            .await
            .map_err(|_| anyhow::anyhow!("ListOffsets ({at:?}) timed out"))?
            .map_err(anyhow::Error::from)
    };
    tokio::try_join!(offset(OffsetAt::Earliest), offset(OffsetAt::Latest))
}

/// The broker no longer has (or never had) the offset a fetch asked for.
pub(super) fn is_out_of_range(error: &rskafka::client::error::Error) -> bool {
    matches!(
        error,
        rskafka::client::error::Error::ServerError {
            protocol_error: rskafka::client::error::ProtocolError::OffsetOutOfRange,
            ..
        }
    )
}
