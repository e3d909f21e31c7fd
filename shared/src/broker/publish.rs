//! Publishing persistent messages and waiting for the broker's confirms.

use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};

use super::{short, Broker, BrokerError, Topology, ATTEMPT_HEADER, REASON_HEADER, SOURCE_QUEUE_HEADER};
use crate::ids::TaskKind;
use crate::messages::{encode, CompletionEvent, TaskMessage};

/// AMQP delivery mode 2: the broker writes the message to disk.
const PERSISTENT: u8 = 2;

/// Maximum length of the reason text in a dead letter's header, in bytes. Longer texts are cut.
const MAX_REASON_LEN: usize = 4096;

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Exchange name; empty for the default exchange, which routes to the queue named by
    /// `routing_key`.
    pub exchange: String,
    pub routing_key: String,
    pub payload: Vec<u8>,
    pub headers: FieldTable,
    /// Whether a message that no queue receives is an error. Events are published without it
    /// because a coordinator may not be listening, and Redis keeps the results anyway.
    pub mandatory: bool,
}

impl Outgoing {
    /// A task for the queue of its kind.
    pub fn task(topology: &Topology, task: &TaskMessage) -> Outgoing {
        Outgoing::task_payload(topology, task.kind(), encode(task))
    }

    /// An already encoded task, such as a delivery being re-published.
    pub fn task_payload(topology: &Topology, kind: TaskKind, payload: Vec<u8>) -> Outgoing {
        Outgoing {
            exchange: String::new(),
            routing_key: topology.task_queue(kind),
            payload,
            headers: FieldTable::default(),
            mandatory: true,
        }
    }

    /// A completion event for the coordinator of its experiment.
    pub fn event(topology: &Topology, event: &CompletionEvent) -> Outgoing {
        Outgoing {
            exchange: topology.events_exchange(),
            routing_key: event.task_id.experiment.to_string(),
            payload: encode(event),
            headers: FieldTable::default(),
            mandatory: false,
        }
    }

    /// A copy of a message for the dead-letter queue, with the reason and its source queue.
    pub fn dead_letter(topology: &Topology, payload: Vec<u8>, reason: &str, source_queue: &str) -> Outgoing {
        let mut headers = FieldTable::default();
        headers.insert(REASON_HEADER.into(), AMQPValue::LongString(truncate(reason, MAX_REASON_LEN).into()));
        headers.insert(SOURCE_QUEUE_HEADER.into(), AMQPValue::LongString(source_queue.into()));
        Outgoing { exchange: topology.dead_letter_exchange(), routing_key: String::new(), payload, headers, mandatory: true }
    }

    /// Set the attempt number header.
    pub fn with_attempt(mut self, attempt: u32) -> Outgoing {
        self.headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(i64::from(attempt)));
        self
    }

    /// The exchange, or the queue for the default exchange, for error messages.
    fn target(&self) -> &str {
        if self.exchange.is_empty() {
            &self.routing_key
        } else {
            &self.exchange
        }
    }

    fn properties(&self) -> BasicProperties {
        let properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_content_type("application/json".into());
        if self.headers.inner().is_empty() {
            properties
        } else {
            properties.with_headers(self.headers.clone())
        }
    }
}

/// Cut `text` to at most `max` bytes on a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A message taken from the dead-letter queue.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub payload: Vec<u8>,
    /// The `x-kka-reason` header, if the message has one.
    pub reason: Option<String>,
    /// The queue the message was consumed from, if known.
    pub source_queue: Option<String>,
    pub headers: FieldTable,
}

impl Broker {
    /// Publish one message and wait for its confirm.
    pub async fn publish(&self, message: &Outgoing) -> Result<(), BrokerError> {
        self.publish_all(std::slice::from_ref(message)).await
    }

    /// Publish many messages, then wait for all their confirms together. When the connection
    /// drops, the messages without a confirm are published again on the new connection, so some
    /// may arrive twice.
    pub async fn publish_all(&self, messages: &[Outgoing]) -> Result<(), BrokerError> {
        let mut pending = messages;
        let mut failed_generation = None;
        while !pending.is_empty() {
            let session = self.usable_session(failed_generation).await?;
            let (confirmed, result) = publish_on(&session.publisher, pending).await;
            match result {
                Ok(()) => return Ok(()),
                Err(error) if error.is_connection_loss() => {
                    tracing::warn!(%error, unconfirmed = pending.len() - confirmed, "publishing interrupted; publishing the unconfirmed messages again");
                    pending = &pending[confirmed..];
                    failed_generation = Some(session.generation);
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    pub async fn publish_task(&self, task: &TaskMessage) -> Result<(), BrokerError> {
        self.publish(&Outgoing::task(self.topology(), task)).await
    }

    /// Publish tasks with one wait for all their confirms.
    pub async fn publish_tasks(&self, tasks: &[TaskMessage]) -> Result<(), BrokerError> {
        let messages: Vec<Outgoing> = tasks.iter().map(|task| Outgoing::task(self.topology(), task)).collect();
        self.publish_all(&messages).await
    }

    /// Publish a completion event to `P.events`. It is dropped by the broker if no coordinator
    /// declared the experiment's event queue.
    pub async fn publish_event(&self, event: &CompletionEvent) -> Result<(), BrokerError> {
        self.publish(&Outgoing::event(self.topology(), event)).await
    }

    /// Put a copy of a message on the dead-letter queue with the reason it failed.
    pub async fn dead_letter(&self, payload: &[u8], reason: &str, source_queue: &str) -> Result<(), BrokerError> {
        self.publish(&Outgoing::dead_letter(self.topology(), payload.to_vec(), reason, source_queue)).await
    }

    /// Take the oldest message off the dead-letter queue, acknowledging it, or `None` when the
    /// queue is empty. For inspection tools and tests.
    pub async fn take_dead_letter(&self) -> Result<Option<DeadLetter>, BrokerError> {
        let queue = self.topology().dead_letter_queue();
        let channel = self.channel().await?;
        let message = channel
            .basic_get(short(&queue), BasicGetOptions::default())
            .await
            .map_err(BrokerError::amqp("basic.get", queue.clone()))?;
        let Some(message) = message else {
            close_quietly(&channel).await;
            return Ok(None);
        };
        message.delivery.ack(BasicAckOptions::default()).await.map_err(BrokerError::amqp("basic.ack", queue.clone()))?;
        close_quietly(&channel).await;

        let headers = message.delivery.properties.headers().clone().unwrap_or_default();
        Ok(Some(DeadLetter {
            payload: message.delivery.data.clone(),
            reason: header_text(&headers, REASON_HEADER),
            source_queue: header_text(&headers, SOURCE_QUEUE_HEADER),
            headers,
        }))
    }
}

/// A text header's value.
pub(super) fn header_text(headers: &FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(text) => Some(text.to_string()),
        AMQPValue::ShortString(text) => Some(text.to_string()),
        _ => None,
    }
}

pub(super) async fn close_quietly(channel: &Channel) {
    if channel.status().connected() {
        if let Err(error) = channel.close(200, "done".into()).await {
            tracing::debug!(%error, channel = channel.id(), "closing a RabbitMQ channel failed");
        }
    }
}

/// Publish on one channel and wait for the confirms in order. Returns how many leading messages
/// were confirmed, and the first error.
async fn publish_on(channel: &Channel, messages: &[Outgoing]) -> (usize, Result<(), BrokerError>) {
    let mut confirms: Vec<PublisherConfirm> = Vec::with_capacity(messages.len());
    let mut publish_error = None;
    for message in messages {
        let options = BasicPublishOptions { mandatory: message.mandatory, immediate: false };
        let sent = channel
            .basic_publish(short(&message.exchange), short(&message.routing_key), options, &message.payload, message.properties())
            .await;
        match sent {
            Ok(confirm) => confirms.push(confirm),
            Err(source) => {
                publish_error = Some(BrokerError::Amqp { operation: "basic.publish", name: message.target().to_owned(), source });
                break;
            }
        }
    }

    let published = confirms.len();
    for (index, confirm) in confirms.into_iter().enumerate() {
        if let Err(error) = check_confirm(&messages[index], confirm.await) {
            return (index, Err(error));
        }
    }
    // Every message before the failed publish has its confirm; callers re-send from there.
    match publish_error {
        Some(error) => (published, Err(error)),
        None => (published, Ok(())),
    }
}

fn check_confirm(message: &Outgoing, confirmation: lapin::Result<Confirmation>) -> Result<(), BrokerError> {
    let name = message.target().to_owned();
    match confirmation.map_err(|source| BrokerError::Amqp { operation: "publisher confirm", name: name.clone(), source })? {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(returned)) => {
            Err(BrokerError::Unroutable { name, reply: format!("{} {}", returned.reply_code, returned.reply_text) })
        }
        Confirmation::Nack(_) => Err(BrokerError::Nacked { name }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(truncate("abcdef", 3), "abc");
        assert_eq!(truncate("aé", 2), "a");
    }

    #[test]
    fn dead_letter_carries_reason_and_source() {
        let topology = Topology::new("p");
        let message = Outgoing::dead_letter(&topology, b"x".to_vec(), "bad json", "p.noop");
        assert_eq!(message.exchange, "p.dlx");
        assert_eq!(header_text(&message.headers, REASON_HEADER).as_deref(), Some("bad json"));
        assert_eq!(header_text(&message.headers, SOURCE_QUEUE_HEADER).as_deref(), Some("p.noop"));
    }

    #[test]
    fn properties_are_persistent() {
        let topology = Topology::new("p");
        let message = Outgoing::task_payload(&topology, TaskKind::Noop, b"{}".to_vec()).with_attempt(3);
        let properties = message.properties();
        assert_eq!(*properties.delivery_mode(), Some(PERSISTENT));
        assert_eq!(message.routing_key, "p.noop");
        assert!(message.mandatory);
        assert!(properties.headers().as_ref().unwrap().contains_key(ATTEMPT_HEADER));
    }
}
