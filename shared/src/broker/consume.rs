//! Consuming with manual acks, resuming on a new channel after the connection drops.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, SelectAll, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Acker, Channel};

use super::acks::AckBatcher;
use super::{durable_queue, short, Broker, BrokerError, ATTEMPT_HEADER};
use crate::ids::TaskKind;
use crate::messages::decode;

/// A queue to consume, declared again each time the consumer (re)starts so that a consumer
/// started before the queue existed, or after it was deleted, still works.
#[derive(Debug, Clone)]
pub(super) struct QueueSpec {
    pub name: String,
    pub arguments: FieldTable,
    /// Exchange and routing key to bind the queue to, if any.
    pub binding: Option<(String, String)>,
}

/// One delivery, with the queue it came from.
#[derive(Debug)]
pub struct Incoming {
    pub delivery: Delivery,
    pub queue: String,
    /// When this process received the delivery.
    pub received_at: Instant,
    handle: DeliveryHandle,
    /// Keeps the delivery's channel open until the delivery is dropped, even after its consumer
    /// moved to a new channel.
    _channel: Channel,
}

impl Incoming {
    pub fn payload(&self) -> &[u8] {
        &self.delivery.data
    }

    /// Returns whether RabbitMQ delivered this message before without an acknowledgement.
    pub fn redelivered(&self) -> bool {
        self.delivery.redelivered
    }

    pub fn headers(&self) -> Option<&FieldTable> {
        self.delivery.properties.headers().as_ref()
    }

    /// Returns the attempt number from the `x-kka-attempt` header, or 1 when the header is
    /// missing or not a positive integer.
    pub fn attempt(&self) -> u32 {
        let value = self.headers().and_then(|headers| headers.inner().get(ATTEMPT_HEADER));
        let number = match value {
            Some(AMQPValue::LongLongInt(n)) => i128::from(*n),
            Some(AMQPValue::LongInt(n)) => i128::from(*n),
            Some(AMQPValue::LongUInt(n)) => i128::from(*n),
            Some(AMQPValue::ShortInt(n)) => i128::from(*n),
            Some(AMQPValue::ShortUInt(n)) => i128::from(*n),
            Some(AMQPValue::ShortShortInt(n)) => i128::from(*n),
            Some(AMQPValue::ShortShortUInt(n)) => i128::from(*n),
            _ => 1,
        };
        u32::try_from(number).ok().filter(|n| *n >= 1).unwrap_or(1)
    }

    /// Returns a handle that settles this delivery, for code that does not own it.
    pub fn handle(&self) -> DeliveryHandle {
        self.handle.clone()
    }

    /// Acknowledges the delivery. The acknowledgement may wait a few milliseconds to share a
    /// frame with others (see [`super::acks`]). Returns `Ok(false)` when the delivery was
    /// already settled.
    pub async fn ack(&self) -> Result<bool, BrokerError> {
        self.handle.ack().await
    }

    /// Returns the delivery to its queue at once. Returns `Ok(false)` like [`Incoming::ack`].
    pub async fn requeue(&self) -> Result<bool, BrokerError> {
        self.handle.requeue().await
    }
}

/// Settles one delivery: acknowledges it or returns it to its queue. Clones settle the same
/// delivery, and only the first settlement counts.
#[derive(Debug, Clone)]
pub struct DeliveryHandle {
    tag: u64,
    acker: Acker,
    acks: Arc<AckBatcher>,
    queue: String,
}

impl DeliveryHandle {
    /// Acknowledges the delivery, batched with others on its channel.
    pub async fn ack(&self) -> Result<bool, BrokerError> {
        self.acks.ack(self.tag, self.acker.clone()).await.map_err(BrokerError::amqp("basic.ack", self.queue.clone()))
    }

    /// Returns the delivery to its queue at once.
    pub async fn requeue(&self) -> Result<bool, BrokerError> {
        self.acks.requeue(self.tag, &self.acker).await.map_err(BrokerError::amqp("basic.nack", self.queue.clone()))
    }
}

/// Sync as well as Send, so that a `&Consumer` can be held across an await in a spawned task.
type DeliveryStream = std::pin::Pin<Box<dyn futures::Stream<Item = StreamItem> + Send + Sync>>;

enum StreamItem {
    /// A delivery from queue `usize`, boxed because a delivery is large and the item moves
    /// through the merged stream.
    Delivery(usize, Box<lapin::Result<Delivery>>),
    /// The consumer of queue `usize` stopped: cancelled by us or by the server.
    Ended(usize),
}

/// The consumers of one channel, merged into one stream.
struct Active {
    channel: Channel,
    tags: Vec<ShortString>,
    stream: SelectAll<DeliveryStream>,
    acks: Arc<AckBatcher>,
}

/// Deliveries from one or more queues over one channel, with a prefetch limit per queue. After the
/// connection or channel fails it opens a new channel and consumes again, retrying with the
/// broker's reconnect backoff.
pub struct Consumer {
    broker: Broker,
    queues: Vec<QueueSpec>,
    prefetch: u16,
    active: Option<Active>,
    cancelled: bool,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.queues.iter().map(|queue| queue.name.as_str()).collect();
        f.debug_struct("Consumer").field("queues", &names).field("cancelled", &self.cancelled).finish_non_exhaustive()
    }
}

impl Broker {
    /// Decode a delivery. One that fails to decode (too large, unknown version, malformed) is
    /// a poison message: it is copied to the dead-letter queue with the reason in its
    /// `x-kka-reason` header, acknowledged, logged once, and `None` is returned.
    pub async fn decode_or_dead_letter<T: serde::de::DeserializeOwned>(&self, incoming: &Incoming) -> Option<T> {
        let error = match decode::<T>(incoming.payload(), self.settings().max_payload_bytes) {
            Ok(message) => return Some(message),
            Err(error) => error.to_string(),
        };
        tracing::warn!(queue = %incoming.queue, reason = %error, "invalid message; moving it to the dead-letter queue");
        match self.dead_letter(incoming.payload(), &error, &incoming.queue).await {
            Ok(()) => {
                if let Err(error) = incoming.ack().await {
                    tracing::warn!(%error, "failed to acknowledge a dead-lettered message; it will be delivered again");
                }
            }
            Err(error) => {
                // Requeueing would bring it straight back, so it stays unacknowledged until the
                // consumer's channel closes.
                tracing::error!(%error, "failed to dead-letter an invalid message; leaving it unacknowledged");
            }
        }
        None
    }

    /// Starts consuming the queues of the given task kinds, with at most `broker.prefetch`
    /// unacknowledged deliveries from each queue.
    pub async fn consume_tasks(&self, kinds: &[TaskKind]) -> Result<Consumer, BrokerError> {
        let queues = kinds
            .iter()
            .map(|kind| QueueSpec {
                name: self.topology().task_queue(*kind),
                arguments: self.topology().task_queue_arguments(),
                binding: None,
            })
            .collect();
        Consumer::start(self.clone(), queues, self.settings().prefetch).await
    }
}

impl Consumer {
    pub(super) async fn start(broker: Broker, queues: Vec<QueueSpec>, prefetch: u16) -> Result<Consumer, BrokerError> {
        let mut consumer = Consumer { broker, queues, prefetch, active: None, cancelled: false };
        consumer.active = Some(consumer.open().await?);
        Ok(consumer)
    }

    pub fn queue_names(&self) -> Vec<String> {
        self.queues.iter().map(|queue| queue.name.clone()).collect()
    }

    /// Waits for the next delivery. Returns `None` once the consumer is cancelled or the broker
    /// closed. Connection failures are logged and retried here, never returned.
    pub async fn next(&mut self) -> Option<Incoming> {
        let initial_delay = Duration::from_millis(self.broker.settings().reconnect_initial_ms);
        let max_delay = Duration::from_millis(self.broker.settings().reconnect_max_ms);
        let mut delay = initial_delay;
        loop {
            if self.cancelled || self.broker.is_closed() {
                return None;
            }
            let Some(active) = self.active.as_mut() else {
                match self.open().await {
                    Ok(active) => {
                        tracing::info!(queues = ?self.queue_names(), "consuming again");
                        self.active = Some(active);
                        delay = initial_delay;
                    }
                    Err(BrokerError::Closed) => return None,
                    Err(error) => {
                        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                        tracing::warn!(%error, delay_ms, queues = ?self.queue_names(), "failed to start consuming; retrying");
                        if !self.broker.sleep_unless_closed(delay).await {
                            return None;
                        }
                        delay = (delay * 2).min(max_delay);
                    }
                }
                continue;
            };

            match active.stream.next().await {
                Some(StreamItem::Delivery(index, result)) => match *result {
                    Ok(delivery) => {
                        let queue = self.queues[index].name.clone();
                        let handle = DeliveryHandle {
                            tag: delivery.delivery_tag,
                            acker: delivery.acker.clone(),
                            acks: Arc::clone(&active.acks),
                            queue: queue.clone(),
                        };
                        return Some(Incoming {
                            delivery,
                            queue,
                            received_at: Instant::now(),
                            handle,
                            _channel: active.channel.clone(),
                        });
                    }
                    Err(error) => {
                        if !self.cancelled {
                            tracing::warn!(%error, queue = %self.queues[index].name, "consumer failed; resuming on a new channel");
                        }
                        self.active = None;
                    }
                },
                Some(StreamItem::Ended(index)) => {
                    if self.cancelled {
                        return None;
                    }
                    tracing::warn!(queue = %self.queues[index].name, "RabbitMQ cancelled the consumer, maybe because the queue was deleted; consuming again");
                    self.active = None;
                }
                None => {
                    // Only reached with no queues at all, since every stream ends with `Ended`.
                    return None;
                }
            }
        }
    }

    /// Stop receiving new deliveries. The channel stays open, so deliveries already received
    /// can still be acknowledged; [`Consumer::close`] closes it.
    pub async fn cancel(&mut self) {
        self.cancelled = true;
        // Cloned so that no reference to the stream, which is not Sync, lives across an await.
        let Some((channel, tags)) = self.active.as_ref().map(|active| (active.channel.clone(), active.tags.clone())) else {
            return;
        };
        for tag in &tags {
            if let Err(error) = channel.basic_cancel(tag.clone(), BasicCancelOptions::default()).await {
                tracing::debug!(%error, %tag, "cancelling a consumer failed; closing its channel will stop it");
            }
        }
    }

    /// Cancel, send the acknowledgements still waiting in a batch, and close the channel.
    /// Deliveries not acknowledged by then go back to their queues.
    pub async fn close(&mut self) {
        self.cancel().await;
        if let Some(active) = self.active.take() {
            if let Err(error) = active.acks.flush().await {
                tracing::debug!(%error, "sending the last acks failed; RabbitMQ delivers those messages again");
            }
            super::publish::close_quietly(&active.channel).await;
        }
    }

    async fn open(&self) -> Result<Active, BrokerError> {
        let channel = self.broker.channel().await?;
        for queue in &self.queues {
            declare(&channel, queue).await?;
        }
        // A limit per consumer, because RabbitMQ's per-channel (global) limit costs it more CPU
        // per delivery; measured about 5% of throughput with scripts/bench-broker.sh.
        channel
            .basic_qos(self.prefetch, BasicQosOptions { global: false })
            .await
            .map_err(BrokerError::amqp("basic.qos", "the consuming channel"))?;

        let mut tags = Vec::with_capacity(self.queues.len());
        let mut streams: Vec<DeliveryStream> = Vec::with_capacity(self.queues.len());
        for (index, queue) in self.queues.iter().enumerate() {
            let consumer = channel
                .basic_consume(short(&queue.name), "".into(), BasicConsumeOptions::default(), FieldTable::default())
                .await
                .map_err(BrokerError::amqp("basic.consume", queue.name.clone()))?;
            tags.push(consumer.tag());
            let deliveries = consumer.map(move |result| StreamItem::Delivery(index, Box::new(result)));
            streams.push(Box::pin(deliveries.chain(stream::once(async move { StreamItem::Ended(index) }))));
        }
        Ok(Active { channel, tags, stream: stream::select_all(streams), acks: Arc::new(AckBatcher::default()) })
    }
}

pub(super) async fn declare(channel: &Channel, queue: &QueueSpec) -> Result<(), BrokerError> {
    let declare_error = |source| BrokerError::Declare { name: queue.name.clone(), source };
    channel.queue_declare(short(&queue.name), durable_queue(), queue.arguments.clone()).await.map_err(declare_error)?;
    if let Some((exchange, routing_key)) = &queue.binding {
        channel
            .queue_bind(short(&queue.name), short(exchange), short(routing_key), QueueBindOptions::default(), FieldTable::default())
            .await
            .map_err(|source| BrokerError::Declare { name: queue.name.clone(), source })?;
    }
    Ok(())
}
