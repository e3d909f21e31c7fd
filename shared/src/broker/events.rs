//! Per-experiment queues of completion events.
//!
//! Each coordinator declares a durable queue `P.events.<experiment>` bound to the topic exchange
//! `P.events` with the experiment id as routing key. Several coordinators can share one broker
//! and each receives only its own events. Events published while a coordinator restarts wait in
//! its queue. Events are wake-ups: Redis stays the source of truth for results and failures.

use lapin::options::QueueDeleteOptions;
use lapin::types::FieldTable;

use super::consume::{Consumer, Incoming, QueueSpec};
use super::{short, Broker, BrokerError};
use crate::ids::ExperimentId;
use crate::messages::CompletionEvent;

/// A decoded completion event and the delivery that carried it.
#[derive(Debug)]
pub struct ReceivedEvent {
    pub event: CompletionEvent,
    pub incoming: Incoming,
}

impl ReceivedEvent {
    /// Acknowledge the event once it has been acted on. Returns `Ok(false)` when its channel
    /// is gone, in which case RabbitMQ delivers it again.
    pub async fn ack(&self) -> Result<bool, BrokerError> {
        self.incoming.ack().await
    }
}

/// The completion events of one experiment.
#[derive(Debug)]
pub struct EventConsumer {
    broker: Broker,
    consumer: Consumer,
}

impl Broker {
    fn event_queue_spec(&self, experiment: &ExperimentId) -> QueueSpec {
        QueueSpec {
            name: self.topology().event_queue(experiment),
            arguments: FieldTable::default(),
            binding: Some((self.topology().events_exchange(), experiment.to_string())),
        }
    }

    /// Declare the durable event queue of an experiment and bind it to `P.events`; returns
    /// its name. Declaring it again is harmless.
    pub async fn declare_event_queue(&self, experiment: &ExperimentId) -> Result<String, BrokerError> {
        let spec = self.event_queue_spec(experiment);
        let channel = self.channel().await?;
        let result = super::consume::declare(&channel, &spec).await;
        super::publish::close_quietly(&channel).await;
        result.map(|()| spec.name)
    }

    /// Delete the event queue of an experiment with any events still in it; returns how many
    /// events were dropped.
    pub async fn delete_event_queue(&self, experiment: &ExperimentId) -> Result<u32, BrokerError> {
        let queue = self.topology().event_queue(experiment);
        let channel = self.channel().await?;
        let result = channel.queue_delete(short(&queue), QueueDeleteOptions::default()).await;
        super::publish::close_quietly(&channel).await;
        result.map_err(BrokerError::amqp("queue.delete", queue))
    }

    /// Declare the experiment's event queue and start consuming it.
    pub async fn consume_events(&self, experiment: &ExperimentId) -> Result<EventConsumer, BrokerError> {
        let spec = self.event_queue_spec(experiment);
        let consumer = Consumer::start(self.clone(), vec![spec], self.settings().prefetch.max(EVENT_PREFETCH)).await?;
        Ok(EventConsumer { broker: self.clone(), consumer })
    }
}

/// Lowest prefetch of an event consumer: events are small and handled quickly, so a larger
/// window keeps the coordinator from waiting on the round trip of each acknowledgement.
const EVENT_PREFETCH: u16 = 256;

impl EventConsumer {
    /// Waits for the next event. A delivery that is not a valid event is moved to the
    /// dead-letter queue with the reason, logged once and skipped. Returns `None` once cancelled
    /// or closed.
    pub async fn next(&mut self) -> Option<ReceivedEvent> {
        loop {
            let incoming = self.consumer.next().await?;
            if let Some(event) = self.broker.decode_or_dead_letter::<CompletionEvent>(&incoming).await {
                return Some(ReceivedEvent { event, incoming });
            }
        }
    }

    /// Stop receiving events; those received can still be acknowledged.
    pub async fn cancel(&mut self) {
        self.consumer.cancel().await;
    }

    /// Cancel and close the channel. Unacknowledged events stay in the queue.
    pub async fn close(&mut self) {
        self.consumer.close().await;
    }
}
