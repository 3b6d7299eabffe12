//! A service's real app in the test's own process (not a child process):
//! [`RunningApp`] runs a built `Application` on a task of its own until
//! dropped, and [`ConsumingApp`] is a saga participant's app consuming a
//! topic of the test's own, fed with events produced straight to Kafka.

use std::time::Duration;

use commerce_common::{
    events::{Envelope, Event, OrderCancellationRequested},
    service::{Application, Service},
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    SendExt, TestDatabase, assert_error_code, ensure_topics, envelope, kafka_brokers, mint_token,
    partition_of, produce_envelope, wait_until,
};

/// How long a participant's consumer may take to own its partitions or to
/// handle what was produced.
const CONSUMER_WAIT: Duration = Duration::from_secs(30);

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

    /// Publishes the customer's request to cancel `order_id`, for `reason`.
    pub async fn request_cancellation(
        &self,
        order_id: Uuid,
        customer_id: Uuid,
        reason: &str,
    ) -> Envelope {
        self.publish(&Event::OrderCancellationRequested(
            OrderCancellationRequested {
                order_id,
                customer_id,
                reason: reason.into(),
            },
        ))
        .await
    }

    /// Waits until the consumer has handled `records` records in all (the
    /// sum of its stored offsets).
    pub async fn drained(&self, records: i64) {
        crate::wait_for_value(
            &self.database,
            "SELECT coalesce(sum(next_offset), 0)::bigint FROM consumer_offsets",
            records,
            CONSUMER_WAIT,
        )
        .await;
    }

    /// The one row `sql` selects with `params` from this app's database.
    pub async fn query_one(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> tokio_postgres::Row {
        self.database
            .client()
            .await
            .query_one(sql, params)
            .await
            .unwrap()
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

    /// Asserts that a GET of `path` is 401 `UNAUTHORIZED` without a token
    /// and 401 with one that is not a token.
    pub async fn assert_needs_token(&self, path: &str) {
        assert_error_code(self.get(path, None).sent().await, 401, "UNAUTHORIZED").await;
        let response = self.get(path, None).bearer_auth("not.a.token").sent().await;
        assert_eq!(response.status(), 401, "{path} with a bad token");
    }

    /// Asserts that the operational endpoints answer 200, that
    /// `/openapi.json` documents every one of `api_paths`, and that the
    /// consumer reports its lag in `/metrics` once it owns the partitions.
    pub async fn assert_operational_endpoints(&self, api_paths: &[&str]) {
        for path in ["/health", "/ready", "/metrics", "/openapi.json"] {
            let response = self.get(path, None).sent().await;
            assert_eq!(response.status(), 200, "{path}");
        }
        let spec = self.get("/openapi.json", None).json_body().await;
        for path in api_paths {
            assert!(
                spec["paths"][path].is_object(),
                "{path} missing from the spec: {spec}"
            );
        }
        wait_until(CONSUMER_WAIT, "consumer_lag in /metrics", || async {
            let metrics = self
                .get("/metrics", None)
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            metrics.contains("consumer_lag{").then_some(())
        })
        .await;
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
