//! Order change notifications for long-polling (`GET /api/orders/{id}` with
//! `Prefer: wait=N`). A trigger on `orders` announces every committed update,
//! with the status it left, on the `order_changed` channel, whichever instance
//! made it; one listener task per process holds a dedicated PostgreSQL
//! connection on `LISTEN` and passes each change to the requests subscribed
//! to that order, in commit order. While the listener is down
//! (it reconnects with backoff) subscribers are told to re-read their order
//! every [`FALLBACK_POLL`], so nothing hangs on a lost notification.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::{StreamExt, stream};
use prometheus_client::{metrics::gauge::Gauge, registry::Registry};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};
use tokio_postgres::{AsyncMessage, Client, Config, NoTls};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::domain::OrderStatus;

/// The channel the `orders_notify_changed` trigger notifies, with the order
/// id and the status the change left it in as payload (`<id> <STATUS>`).
pub const CHANNEL: &str = "order_changed";
/// The listener connection's `application_name` (visible in `pg_stat_activity`).
pub const APPLICATION_NAME: &str = "order-service-listener";
/// How often a subscriber re-reads its order while the listener is down.
pub const FALLBACK_POLL: Duration = Duration::from_millis(250);
/// A half-open TCP connection would leave subscribers without notifications
/// and without the fallback: the listener checks its connection this often.
const HEARTBEAT: Duration = Duration::from_secs(10);
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Each subscriber's sender gets every change of its order (the status it
/// left, when the notification said) until the subscription is dropped.
type Waiters = HashMap<Uuid, Vec<(u64, mpsc::UnboundedSender<Option<OrderStatus>>)>>;

/// The in-process registry of subscribers by order id, fed by the listener.
#[derive(Clone)]
pub struct OrderChanges {
    inner: Arc<Inner>,
}

struct Inner {
    waiters: Mutex<Waiters>,
    next_key: AtomicU64,
    /// Whether the listener is on `LISTEN` (notifications are delivered).
    listening: watch::Sender<bool>,
    shutdown: CancellationToken,
    listener_up: Gauge,
    subscribers: Gauge,
}

impl Inner {
    fn waiters(&self) -> MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Why the listener connection is gone.
#[derive(Debug, thiserror::Error)]
enum ListenerDown {
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    #[error("the server closed the connection")]
    Closed,
    #[error("no answer to the heartbeat within {HEARTBEAT_TIMEOUT:?}")]
    HeartbeatTimeout,
}

impl OrderChanges {
    /// Subscribers are released (see [`Wake::ShuttingDown`]) and the listener
    /// stops when `shutdown` is cancelled.
    pub fn new(registry: &mut Registry, shutdown: CancellationToken) -> Self {
        let inner = Inner {
            waiters: Mutex::default(),
            next_key: AtomicU64::new(0),
            listening: watch::Sender::new(false),
            shutdown,
            listener_up: Gauge::default(),
            subscribers: Gauge::default(),
        };
        registry.register(
            "order_change_listener_up",
            "1 while the LISTEN order_changed connection is up, else 0 (long-polls re-read every 250 ms)",
            inner.listener_up.clone(),
        );
        registry.register(
            "order_long_polls_waiting",
            "GET /api/orders/{id} requests waiting for a change (Prefer: wait)",
            inner.subscribers.clone(),
        );
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Starts the listener on a dedicated connection to `database_url`.
    pub fn spawn_listener(&self, database_url: &str) -> anyhow::Result<JoinHandle<()>> {
        let mut config: Config = database_url
            .parse()
            .map_err(|e| anyhow::anyhow!("invalid database.url for the order listener: {e}"))?;
        config.application_name(APPLICATION_NAME);
        let changes = self.clone();
        Ok(tokio::spawn(async move { changes.listen(config).await }))
    }

    /// Subscribes to the changes of `order_id` from now on. Subscribe before
    /// reading the order: a change committed after the read then cannot be missed.
    /// The request counts as waiting (`order_long_polls_waiting`) from its
    /// first [`Subscription::wait`] on, once it holds the order it answers
    /// with if the service stops.
    pub fn subscribe(&self, order_id: Uuid) -> Subscription {
        let (sender, notified) = mpsc::unbounded_channel();
        let key = self.inner.next_key.fetch_add(1, Ordering::Relaxed);
        self.inner
            .waiters()
            .entry(order_id)
            .or_default()
            .push((key, sender));
        Subscription {
            inner: self.inner.clone(),
            order_id,
            key,
            notified,
            counted: false,
            listening: self.inner.listening.subscribe(),
        }
    }

    /// Orders with at least one subscriber.
    pub fn watched_orders(&self) -> usize {
        self.inner.waiters().len()
    }

    /// Tells every subscriber of `order_id` that it changed (to `status`,
    /// when known). Subscribers stay subscribed: none misses a change that
    /// comes right after another.
    fn notify(&self, order_id: Uuid, status: Option<OrderStatus>) {
        if let Some(senders) = self.inner.waiters().get(&order_id) {
            for (_, sender) in senders {
                // The receiver lives as long as the subscription that
                // unregisters it on drop.
                sender.send(status).ok();
            }
        }
    }

    fn set_listening(&self, up: bool) {
        self.inner.listener_up.set(i64::from(up));
        self.inner.listening.send_replace(up);
    }

    fn is_listening(&self) -> bool {
        *self.inner.listening.borrow()
    }

    /// Listens until shutdown, reconnecting with exponential backoff; logs
    /// each change between up and down once.
    async fn listen(self, config: Config) {
        let shutdown = self.inner.shutdown.clone();
        let mut backoff = BACKOFF_MIN;
        let mut down_logged = false;
        loop {
            let error = tokio::select! {
                () = shutdown.cancelled() => break,
                error = self.listen_once(&config) => error,
            };
            if self.is_listening() {
                self.set_listening(false);
                backoff = BACKOFF_MIN;
                down_logged = false;
            }
            if down_logged {
                tracing::debug!(%error, "order change listener still down");
            } else {
                tracing::warn!(
                    %error,
                    "order change listener down; long-polls re-read every {FALLBACK_POLL:?} until it reconnects"
                );
                down_logged = true;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        self.set_listening(false);
    }

    /// One connection's life: connect, `LISTEN`, dispatch notifications.
    /// Returns only when the connection fails.
    async fn listen_once(&self, config: &Config) -> ListenerDown {
        let (client, mut connection) = match config.connect(NoTls).await {
            Ok(connected) => connected,
            Err(error) => return error.into(),
        };
        let changes = self.clone();
        // The connection is driven by polling it for messages; the client's
        // queries (LISTEN, the heartbeat) only progress while this runs.
        let driver = async move {
            let mut messages = stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(notification)) => {
                        match parse_payload(notification.payload()) {
                            Some((order_id, status)) => changes.notify(order_id, status),
                            None => tracing::warn!(
                                payload = notification.payload(),
                                "ignoring an {CHANNEL} notification without an order id"
                            ),
                        }
                    }
                    Ok(AsyncMessage::Notice(notice)) => {
                        tracing::debug!(%notice, "notice on the order change listener");
                    }
                    Ok(_) => {}
                    Err(error) => return ListenerDown::from(error),
                }
            }
            ListenerDown::Closed
        };
        tokio::pin!(driver);
        let listen = format!("LISTEN {CHANNEL}");
        tokio::select! {
            error = &mut driver => return error,
            listened = client.batch_execute(&listen) => {
                if let Err(error) = listened {
                    return error.into();
                }
            }
        }
        self.set_listening(true);
        tracing::info!(channel = CHANNEL, "order change listener up");
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.tick().await;
        loop {
            tokio::select! {
                error = &mut driver => return error,
                _ = heartbeat.tick() => {
                    tokio::select! {
                        error = &mut driver => return error,
                        alive = check(&client) => if let Err(error) = alive {
                            return error;
                        },
                    }
                }
            }
        }
    }
}

/// `<order id>` or `<order id> <status>` (an unknown status is no hint).
fn parse_payload(payload: &str) -> Option<(Uuid, Option<OrderStatus>)> {
    let (id, status) = match payload.split_once(' ') {
        Some((id, status)) => (id, status.parse().ok()),
        None => (payload, None),
    };
    Some((id.parse().ok()?, status))
}

async fn check(client: &Client) -> Result<(), ListenerDown> {
    match tokio::time::timeout(HEARTBEAT_TIMEOUT, client.simple_query("")).await {
        Ok(answer) => answer.map(drop).map_err(ListenerDown::from),
        Err(_) => Err(ListenerDown::HeartbeatTimeout),
    }
}

/// Why [`Subscription::wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The order changed, to the status given when the notification said.
    /// Changes come in commit order, each once; the next `wait` reports the
    /// next one.
    Notified(Option<OrderStatus>),
    /// Notifications may have been missed (the listener is down, or went up
    /// or down): re-read the order and compare.
    Recheck,
    /// The deadline passed.
    TimedOut,
    /// The service is stopping: answer now.
    ShuttingDown,
}

/// One request's interest in one order; unregistered on drop, and the
/// order's entry goes with its last subscriber.
pub struct Subscription {
    inner: Arc<Inner>,
    order_id: Uuid,
    key: u64,
    notified: mpsc::UnboundedReceiver<Option<OrderStatus>>,
    /// Counted in the `order_long_polls_waiting` gauge (from the first wait).
    counted: bool,
    listening: watch::Receiver<bool>,
}

impl Subscription {
    /// Waits for the next reason to look at the order again.
    pub async fn wait(&mut self, deadline: Instant) -> Wake {
        if !self.counted {
            self.counted = true;
            self.inner.subscribers.inc();
        }
        // `changed` also fires for a change since the subscription was made
        // that no earlier `wait` reported.
        let listening = *self.listening.borrow();
        tokio::select! {
            biased;
            () = self.inner.shutdown.cancelled() => Wake::ShuttingDown,
            // The sender is registered until this subscription drops.
            Some(status) = self.notified.recv() => Wake::Notified(status),
            Ok(()) = self.listening.changed() => Wake::Recheck,
            () = tokio::time::sleep_until(deadline) => Wake::TimedOut,
            () = tokio::time::sleep(FALLBACK_POLL), if !listening => Wake::Recheck,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.counted {
            self.inner.subscribers.dec();
        }
        let mut waiters = self.inner.waiters();
        if let Some(subscribers) = waiters.get_mut(&self.order_id) {
            subscribers.retain(|(key, _)| *key != self.key);
            if subscribers.is_empty() {
                waiters.remove(&self.order_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes() -> OrderChanges {
        OrderChanges::new(&mut Registry::default(), CancellationToken::new())
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn a_notification_wakes_every_subscriber_of_that_order_only() {
        let changes = changes();
        changes.set_listening(true);
        let order = Uuid::new_v4();
        let mut first = changes.subscribe(order);
        let mut second = changes.subscribe(order);
        let mut other = changes.subscribe(Uuid::new_v4());
        changes.notify(order, Some(OrderStatus::Paid));
        assert_eq!(
            first.wait(soon()).await,
            Wake::Notified(Some(OrderStatus::Paid))
        );
        assert_eq!(
            second.wait(soon()).await,
            Wake::Notified(Some(OrderStatus::Paid))
        );
        let quick = Instant::now() + Duration::from_millis(20);
        assert_eq!(other.wait(quick).await, Wake::TimedOut);
    }

    #[tokio::test]
    async fn entries_go_with_their_last_subscriber() {
        let changes = changes();
        let order = Uuid::new_v4();
        let first = changes.subscribe(order);
        let second = changes.subscribe(order);
        let notified = changes.subscribe(Uuid::new_v4());
        assert_eq!(changes.watched_orders(), 2);
        drop(first);
        assert_eq!(changes.watched_orders(), 2);
        drop(second);
        assert_eq!(changes.watched_orders(), 1);
        // Notified, still subscribed (to the next change).
        changes.notify(notified.order_id, None);
        assert_eq!(changes.watched_orders(), 1);
        drop(notified);
        assert_eq!(changes.watched_orders(), 0);
        assert_eq!(changes.inner.subscribers.get(), 0);
    }

    #[tokio::test]
    async fn a_subscriber_sees_every_change_in_order_even_back_to_back() {
        let changes = changes();
        changes.set_listening(true);
        let order = Uuid::new_v4();
        let mut subscription = changes.subscribe(order);
        // Two changes dispatched before the subscriber looks: both count.
        changes.notify(order, Some(OrderStatus::Paid));
        changes.notify(order, Some(OrderStatus::DeliveryScheduled));
        changes.notify(order, None);
        assert_eq!(
            subscription.wait(soon()).await,
            Wake::Notified(Some(OrderStatus::Paid))
        );
        assert_eq!(
            subscription.wait(soon()).await,
            Wake::Notified(Some(OrderStatus::DeliveryScheduled))
        );
        assert_eq!(subscription.wait(soon()).await, Wake::Notified(None));
        let quick = Instant::now() + Duration::from_millis(20);
        assert_eq!(subscription.wait(quick).await, Wake::TimedOut);
    }

    #[test]
    fn payloads_carry_the_order_id_and_maybe_its_status() {
        let id = Uuid::new_v4();
        assert_eq!(
            parse_payload(&format!("{id} PAID")),
            Some((id, Some(OrderStatus::Paid)))
        );
        // The trigger before the status was added, or a status this build
        // does not know: a change without a hint.
        assert_eq!(parse_payload(&id.to_string()), Some((id, None)));
        assert_eq!(
            parse_payload(&format!("{id} LOST_IN_SPACE")),
            Some((id, None))
        );
        assert_eq!(parse_payload("not-an-id PAID"), None);
        assert_eq!(parse_payload(""), None);
    }

    #[tokio::test]
    async fn a_subscriber_counts_as_waiting_from_its_first_wait() {
        let changes = changes();
        changes.set_listening(true);
        let mut subscription = changes.subscribe(Uuid::new_v4());
        // Still reading its order: not waiting yet.
        assert_eq!(changes.inner.subscribers.get(), 0);
        let quick = Instant::now() + Duration::from_millis(1);
        assert_eq!(subscription.wait(quick).await, Wake::TimedOut);
        assert_eq!(changes.inner.subscribers.get(), 1);
        assert_eq!(subscription.wait(quick).await, Wake::TimedOut);
        assert_eq!(changes.inner.subscribers.get(), 1);
        drop(subscription);
        assert_eq!(changes.inner.subscribers.get(), 0);
    }

    #[tokio::test]
    async fn without_the_listener_subscribers_recheck_every_poll_interval() {
        let changes = changes();
        let mut subscription = changes.subscribe(Uuid::new_v4());
        let started = Instant::now();
        assert_eq!(subscription.wait(soon()).await, Wake::Recheck);
        let elapsed = started.elapsed();
        assert!(
            elapsed >= FALLBACK_POLL && elapsed < 2 * FALLBACK_POLL,
            "{elapsed:?}"
        );
    }

    #[tokio::test]
    async fn listener_state_changes_and_shutdown_wake_subscribers() {
        let shutdown = CancellationToken::new();
        let changes = OrderChanges::new(&mut Registry::default(), shutdown.clone());
        changes.set_listening(true);
        let mut subscription = changes.subscribe(Uuid::new_v4());
        let deadline = Instant::now() + Duration::from_secs(20);
        let waiting = tokio::spawn(async move {
            let wake = subscription.wait(deadline).await;
            (wake, subscription)
        });
        changes.set_listening(false);
        let (wake, mut subscription) = waiting.await.unwrap();
        assert_eq!(wake, Wake::Recheck);
        // Coming back up is a recheck too: notifications were lost meanwhile.
        changes.set_listening(true);
        assert_eq!(subscription.wait(deadline).await, Wake::Recheck);
        shutdown.cancel();
        assert_eq!(subscription.wait(deadline).await, Wake::ShuttingDown);
    }
}
