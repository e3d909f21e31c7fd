//! RabbitMQ topology, publishing with confirms and consuming with manual acks.
//!
//! Every name starts with `broker.queue_prefix` P:
//!
//! | name | kind | contents |
//! |---|---|---|
//! | `P.generate`, `P.score`, `P.train`, `P.noop` | durable queue | tasks of one kind, dead-lettered to `P.dlx` |
//! | `P.dlx` | durable fanout exchange | dead letters |
//! | `P.dead` | durable queue bound to `P.dlx` | messages that failed to decode or failed for good, with an `x-kka-reason` header |
//! | `P.events` | durable topic exchange | completion events, routing key = experiment id |
//! | `P.events.E` | durable queue bound to `P.events` with key E | the events of experiment E |
//!
//! Tasks go through the default exchange straight to their queue. Every message is persistent
//! and every publish waits for the broker's confirm, so a publish that returned `Ok` survives a
//! broker restart.
//!
//! A [`Broker`] owns one connection and one publishing channel. When the connection drops it
//! reconnects with exponential backoff (`broker.reconnect_initial_ms`, doubling up to
//! `broker.reconnect_max_ms`, forever until [`Broker::close`]), declares the topology again and
//! re-sends the publishes that had no confirm yet. A publish may therefore reach the queue twice;
//! task writes are idempotent, so a duplicate only costs time. Consumers ([`Consumer`]) open
//! their own channel and resume on the new connection. RabbitMQ redelivers the deliveries that
//! were unacknowledged when the old connection died.

mod acks;
mod consume;
mod events;
mod publish;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio_util::sync::CancellationToken;

pub use consume::{Consumer, DeliveryHandle, Incoming};
pub use events::{EventConsumer, ReceivedEvent};
pub use publish::{DeadLetter, Outgoing};

use crate::config::BrokerSettings;
use crate::ids::{ExperimentId, TaskKind};

/// Header holding the reason a message was dead-lettered, as text.
pub const REASON_HEADER: &str = "x-kka-reason";

/// Header holding the attempt number of a re-published task; a task without it is on attempt 1.
pub const ATTEMPT_HEADER: &str = "x-kka-attempt";

/// Header holding the queue a dead-lettered message was consumed from.
pub const SOURCE_QUEUE_HEADER: &str = "x-kka-source-queue";

/// Time allowed for the TCP connection and the AMQP handshake, in milliseconds, unless the URL
/// sets `connection_timeout`.
const CONNECT_TIMEOUT_MS: u64 = 10_000;

/// A RabbitMQ failure, with the operation and the name it was applied to.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("invalid broker.url {url}: {reason}; use amqp://user:password@host:5672/vhost")]
    InvalidUrl { url: String, reason: String },
    #[error("failed to connect to RabbitMQ at {url}: {source}; start RabbitMQ or fix broker.url (KKA__BROKER__URL)")]
    Connect { url: String, source: lapin::Error },
    #[error("RabbitMQ {operation} on {name} failed: {source}")]
    Amqp { operation: &'static str, name: String, source: lapin::Error },
    #[error("RabbitMQ refused to declare {name}: {source}; if it exists with other arguments, delete it or use another broker.queue_prefix")]
    Declare { name: String, source: lapin::Error },
    #[error("RabbitMQ rejected (nacked) the message published to {name}; check the broker log for disk or memory alarms")]
    Nacked { name: String },
    #[error("RabbitMQ returned the message published to {name} as unroutable ({reply}); the queue is missing, so restart the publisher to declare it again")]
    Unroutable { name: String, reply: String },
    #[error("the RabbitMQ connection was closed by this process")]
    Closed,
}

impl BrokerError {
    fn amqp(operation: &'static str, name: impl Into<String>) -> impl FnOnce(lapin::Error) -> BrokerError {
        let name = name.into();
        move |source| BrokerError::Amqp { operation, name, source }
    }

    /// Returns whether the error came from a lost connection or channel, so that the operation
    /// may succeed on a new one.
    pub fn is_connection_loss(&self) -> bool {
        match self {
            BrokerError::Amqp { source, .. } | BrokerError::Connect { source, .. } => is_connection_loss(source),
            _ => false,
        }
    }
}

/// Returns whether a lapin error means the connection or the channel is gone, as opposed to the
/// broker rejecting one operation.
fn is_connection_loss(error: &lapin::Error) -> bool {
    use lapin::protocol::AMQPErrorKind;
    use lapin::ErrorKind;
    match error.kind() {
        ErrorKind::IOError(_)
        | ErrorKind::MissingHeartbeatError
        | ErrorKind::InvalidConnectionState(_)
        | ErrorKind::InvalidChannelState(..)
        | ErrorKind::InvalidChannel(_)
        | ErrorKind::RuntimeShutdownError(_)
        | ErrorKind::ParsingError(_)
        | ErrorKind::SerialisationError(_) => true,
        ErrorKind::ProtocolError(amqp) => matches!(amqp.kind(), AMQPErrorKind::Hard(_)),
        _ => false,
    }
}

/// Queue and exchange names under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
}

impl Topology {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into() }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `P.<kind>`: the queue of one task kind.
    pub fn task_queue(&self, kind: TaskKind) -> String {
        format!("{}.{kind}", self.prefix)
    }

    /// `P.dlx`: the dead-letter exchange.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.prefix)
    }

    /// `P.dead`: the queue that collects dead letters.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// `P.events`: the topic exchange of completion events.
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// `P.events.<experiment>`: the queue of one experiment's completion events.
    pub fn event_queue(&self, experiment: &ExperimentId) -> String {
        format!("{}.events.{experiment}", self.prefix)
    }

    /// Arguments of a task queue: dead letters go to `P.dlx`.
    fn task_queue_arguments(&self) -> FieldTable {
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.dead_letter_exchange().into()),
        );
        arguments
    }
}

/// One connection and its publishing channel, in confirm mode.
struct Session {
    /// Increases by one each time the session is replaced, so that concurrent callers that saw
    /// the same failure recover only once.
    generation: u64,
    connection: Arc<Connection>,
    publisher: Channel,
}

impl Session {
    fn is_usable(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }
}

/// A cheap-to-clone handle on one RabbitMQ connection. Clones share the connection.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    settings: BrokerSettings,
    topology: Topology,
    /// Name shown by `rabbitmqctl list_connections client_properties`.
    connection_name: String,
    session: Mutex<Arc<Session>>,
    /// Held while a session is being replaced, so that only one caller reconnects.
    recovery: tokio::sync::Mutex<()>,
    closed: CancellationToken,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("url", &self.inner.settings.url)
            .field("prefix", &self.inner.topology.prefix)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Connect, open a publishing channel in confirm mode and declare the task queues, the
    /// dead-letter queue and the events exchange. Fails at once, without retrying, when the
    /// broker cannot be reached: a wrong URL should stop a starting process.
    pub async fn connect(settings: &BrokerSettings, connection_name: &str) -> Result<Broker, BrokerError> {
        let topology = Topology::new(&settings.queue_prefix);
        let session = open_session(settings, &topology, connection_name, 0).await?;
        tracing::info!(url = %settings.url, prefix = %topology.prefix, "connected to RabbitMQ");
        Ok(Broker {
            inner: Arc::new(Inner {
                settings: settings.clone(),
                topology,
                connection_name: connection_name.to_owned(),
                session: Mutex::new(Arc::new(session)),
                recovery: tokio::sync::Mutex::new(()),
                closed: CancellationToken::new(),
            }),
        })
    }

    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    pub fn settings(&self) -> &BrokerSettings {
        &self.inner.settings
    }

    /// Open a new channel on the current connection, for operations this module has no method
    /// for. The channel does not survive a reconnect.
    pub async fn channel(&self) -> Result<Channel, BrokerError> {
        let session = self.usable_session(None).await?;
        session.connection.create_channel().await.map_err(BrokerError::amqp("channel.open", "a new channel"))
    }

    /// Close the connection. In-flight operations fail, reconnecting stops, and unacknowledged
    /// deliveries go back to their queues.
    pub async fn close(&self) {
        self.inner.closed.cancel();
        let session = self.current_session();
        if session.connection.status().connected() {
            if let Err(error) = session.connection.close(200, "closing".into()).await {
                tracing::debug!(%error, "closing the RabbitMQ connection failed");
            }
        }
        tracing::info!(prefix = %self.inner.topology.prefix, "RabbitMQ connection closed");
    }

    pub fn is_closed(&self) -> bool {
        self.inner.closed.is_cancelled()
    }

    /// Sleep for `delay`; returns `false` early if the broker is closed meanwhile.
    pub(crate) async fn sleep_unless_closed(&self, delay: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = self.inner.closed.cancelled() => false,
        }
    }

    fn current_session(&self) -> Arc<Session> {
        // The lock only guards an Arc swap, so a poisoned lock still holds a valid session.
        let guard = self.inner.session.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(&guard)
    }

    fn replace_session(&self, session: Session) -> Arc<Session> {
        let session = Arc::new(session);
        let mut guard = self.inner.session.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *guard = Arc::clone(&session);
        session
    }

    /// Returns a usable session, reconnecting if needed. `failed` is the generation of a session
    /// whose publishing channel just failed, which is replaced even if it still looks usable.
    async fn usable_session(&self, failed: Option<u64>) -> Result<Arc<Session>, BrokerError> {
        let acceptable = |session: &Session| session.is_usable() && failed != Some(session.generation);
        let session = self.current_session();
        if acceptable(&session) {
            return Ok(session);
        }

        let _recovery = self.inner.recovery.lock().await;
        let session = self.current_session();
        if acceptable(&session) {
            return Ok(session);
        }
        if self.is_closed() {
            return Err(BrokerError::Closed);
        }
        if session.connection.status().connected() {
            if let Ok(publisher) = open_publisher(&session.connection).await {
                let generation = session.generation + 1;
                tracing::info!(generation, "reopened the RabbitMQ publishing channel");
                return Ok(self.replace_session(Session { generation, connection: Arc::clone(&session.connection), publisher }));
            }
        }
        self.reconnect(session.generation + 1).await
    }

    /// Reconnect until it works or the broker is closed, logging each failed attempt once.
    async fn reconnect(&self, generation: u64) -> Result<Arc<Session>, BrokerError> {
        let settings = &self.inner.settings;
        let mut delay = Duration::from_millis(settings.reconnect_initial_ms);
        let max_delay = Duration::from_millis(settings.reconnect_max_ms);
        for attempt in 1u64.. {
            match open_session(settings, &self.inner.topology, &self.inner.connection_name, generation).await {
                Ok(session) => {
                    tracing::info!(attempt, url = %settings.url, "reconnected to RabbitMQ");
                    return Ok(self.replace_session(session));
                }
                Err(error) => {
                    let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                    tracing::warn!(attempt, delay_ms, %error, "reconnecting to RabbitMQ failed; retrying");
                }
            }
            if !self.sleep_unless_closed(delay).await {
                return Err(BrokerError::Closed);
            }
            delay = (delay * 2).min(max_delay);
        }
        unreachable!("the reconnect loop only ends by returning")
    }
}

/// Parse the URL and apply the heartbeat and connection timeout.
fn amqp_uri(settings: &BrokerSettings) -> Result<AMQPUri, BrokerError> {
    let mut uri: AMQPUri = settings
        .url
        .expose()
        .parse()
        .map_err(|reason: String| BrokerError::InvalidUrl { url: settings.url.redacted(), reason })?;
    uri.query.heartbeat = Some(settings.heartbeat_secs);
    uri.query.connection_timeout.get_or_insert(CONNECT_TIMEOUT_MS);
    Ok(uri)
}

async fn open_session(
    settings: &BrokerSettings,
    topology: &Topology,
    connection_name: &str,
    generation: u64,
) -> Result<Session, BrokerError> {
    let uri = amqp_uri(settings)?;
    let connect_error = |source| BrokerError::Connect { url: settings.url.redacted(), source };
    let properties = ConnectionProperties::default().with_connection_name(connection_name.into());
    let connection = Connection::connect_uri(uri, properties).await.map_err(connect_error)?;

    let publisher = open_publisher(&connection).await?;
    declare_topology(&publisher, topology).await?;
    Ok(Session { generation, connection: Arc::new(connection), publisher })
}

async fn open_publisher(connection: &Connection) -> Result<Channel, BrokerError> {
    let channel = connection.create_channel().await.map_err(BrokerError::amqp("channel.open", "the publishing channel"))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(BrokerError::amqp("confirm.select", "the publishing channel"))?;
    Ok(channel)
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() }
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() }
}

/// Declare everything except the per-experiment event queues. Declaring is idempotent.
async fn declare_topology(channel: &Channel, topology: &Topology) -> Result<(), BrokerError> {
    let declare_error = |name: &str| {
        let name = name.to_owned();
        move |source| BrokerError::Declare { name, source }
    };

    let dlx = topology.dead_letter_exchange();
    channel
        .exchange_declare(dlx.as_str().into(), ExchangeKind::Fanout, durable_exchange(), FieldTable::default())
        .await
        .map_err(declare_error(&dlx))?;
    let dead = topology.dead_letter_queue();
    channel.queue_declare(dead.as_str().into(), durable_queue(), FieldTable::default()).await.map_err(declare_error(&dead))?;
    channel
        .queue_bind(dead.as_str().into(), dlx.as_str().into(), "".into(), QueueBindOptions::default(), FieldTable::default())
        .await
        .map_err(declare_error(&dead))?;

    for kind in TaskKind::ALL {
        let queue = topology.task_queue(kind);
        channel
            .queue_declare(queue.as_str().into(), durable_queue(), topology.task_queue_arguments())
            .await
            .map_err(declare_error(&queue))?;
    }

    let events = topology.events_exchange();
    channel
        .exchange_declare(events.as_str().into(), ExchangeKind::Topic, durable_exchange(), FieldTable::default())
        .await
        .map_err(declare_error(&events))?;
    Ok(())
}

/// Converts a queue or exchange name to AMQP's short string. Config validation keeps prefixes
/// and ids short enough that every name built from them fits in 255 bytes.
fn short(name: &str) -> ShortString {
    ShortString::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn topology_names_follow_prefix() {
        let topology = Topology::new("t1");
        let experiment = ExperimentId::new("exp.a").unwrap();
        assert_eq!(topology.task_queue(TaskKind::Train), "t1.train");
        assert_eq!(topology.dead_letter_exchange(), "t1.dlx");
        assert_eq!(topology.dead_letter_queue(), "t1.dead");
        assert_eq!(topology.events_exchange(), "t1.events");
        assert_eq!(topology.event_queue(&experiment), "t1.events.exp.a");
    }

    #[test]
    fn uri_gets_heartbeat_and_timeout() {
        let config = Config::from_toml("[broker]\nheartbeat_secs = 7\n").unwrap();
        let uri = amqp_uri(&config.broker).unwrap();
        assert_eq!(uri.query.heartbeat, Some(7));
        assert_eq!(uri.query.connection_timeout, Some(CONNECT_TIMEOUT_MS));
    }

    #[test]
    fn unparsable_url_error_hides_password() {
        let mut settings = Config::from_toml("").unwrap().broker.clone();
        settings.url = crate::config::SecretUrl::new("amqp://user:hunter2@host:notaport/");
        let error = amqp_uri(&settings).unwrap_err().to_string();
        assert!(!error.contains("hunter2"), "{error}");
        assert!(error.contains("broker.url"), "{error}");
    }

    #[test]
    fn connection_loss_is_told_apart_from_refusal() {
        let io = lapin::Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(is_connection_loss(&io));
        let nacked = BrokerError::Nacked { name: "q".into() };
        assert!(!nacked.is_connection_loss());
    }
}
