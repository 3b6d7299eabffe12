//! A service's real app in the test's own process (not a child process):
//! [`RunningApp`] runs a built `Application` on a task of its own until
//! dropped, and [`ConsumingApp`] is a saga participant's app consuming a
//! topic of the test's own, fed with events produced straight to Kafka.

use commerce_common::{
    events::{Envelope, Event},
    service::{Application, Service},
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    TestDatabase, ensure_topics, envelope, kafka_brokers, mint_token, partition_of,
    produce_envelope,
};

/// A built app running on a task of its own; dropping it stops the app.
pub struct RunningApp {
    port: u16,
    shutdown: CancellationToken,
}

impl RunningApp {
    pub fn spawn<S: Service>(app: Application<S>) -> Self {
        let port = app.port();
        let shutdown = app.shutdown_token();
        tokio::spawn(app.run_until_stopped());
        Self { port, shutdown }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for RunningApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A fresh topic `<prefix>-<uuid>` with `partitions` partitions.
pub async fn fresh_topic(prefix: &str, partitions: i32) -> String {
    let topic = format!("{prefix}-{}", Uuid::new_v4().simple());
    ensure_topics(&kafka_brokers(), &[&topic], partitions).await;
    topic
}

/// A saga participant's app on its own database, consuming `topic` (unique
/// per test, so tests sharing the broker never see each other's events).
pub struct ConsumingApp {
    pub address: String,
    pub database: TestDatabase,
    pub topic: String,
    pub partitions: i32,
    pub client: reqwest::Client,
    _app: RunningApp,
}

impl ConsumingApp {
    pub fn new(app: RunningApp, database: TestDatabase, topic: String, partitions: i32) -> Self {
        Self {
            address: app.address(),
            database,
            topic,
            partitions,
            client: reqwest::Client::new(),
            _app: app,
        }
    }

    /// Produces `envelope` to this app's topic, keyed like the relay does.
    pub async fn send(&self, envelope: &Envelope) {
        let partition = partition_of(&envelope.aggregate_id, self.partitions);
        produce_envelope(
            &kafka_brokers(),
            &self.topic,
            partition,
            &envelope.aggregate_id,
            envelope,
        )
        .await;
    }

    pub async fn publish(&self, event: &Event) -> Envelope {
        let envelope = envelope(event);
        self.send(&envelope).await;
        envelope
    }

    pub async fn query_i64(&self, sql: &str) -> i64 {
        crate::query_i64(&self.database, sql).await
    }

    pub fn get(&self, path: &str, user: Option<Uuid>) -> reqwest::RequestBuilder {
        self.authorized(self.client.get(format!("{}{path}", self.address)), user)
    }

    pub fn post(&self, path: &str, user: Option<Uuid>) -> reqwest::RequestBuilder {
        self.authorized(self.client.post(format!("{}{path}", self.address)), user)
    }

    /// `request` with `user`'s bearer token, or none.
    fn authorized(
        &self,
        request: reqwest::RequestBuilder,
        user: Option<Uuid>,
    ) -> reqwest::RequestBuilder {
        match user {
            Some(user) => request.bearer_auth(mint_token(user)),
            None => request,
        }
    }
}
