//! The broker layer against the real RabbitMQ: publishing with confirms, consuming with manual
//! acks, redelivery, dead letters, event queues and reconnection.

use std::collections::BTreeSet;
use std::time::Duration;

use kka_shared::broker::{Broker, BrokerError, Consumer, EventConsumer, Incoming, Outgoing};
use kka_shared::config::{BrokerSettings, DatasetProtocol, SecretUrl};
use kka_shared::ids::{ExperimentId, RoundIndex, TaskId, TaskKind, WorkerId};
use kka_shared::messages::{
    encode, CompletionEvent, NoopTask, TaskBody, TaskMessage, TaskOutcome, TaskSummary,
};
use kka_shared::testing::{service_address, url_via, TcpProxy, TestPrefix};
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;

const WAIT: Duration = Duration::from_secs(15);

fn noop_task(experiment: &ExperimentId, shard: u32) -> TaskMessage {
    let id = TaskId::new(experiment.clone(), RoundIndex(0), TaskKind::Noop, shard);
    TaskMessage::new(id, "fingerprint".into(), DatasetProtocol::default(), TaskBody::Noop(NoopTask { sent_at_micros: 1 }))
}

fn noop_event(task: &TaskMessage) -> CompletionEvent {
    CompletionEvent::new(
        task.task_id.clone(),
        WorkerId::new("w-test").unwrap(),
        0.001,
        TaskOutcome::Succeeded { summary: TaskSummary::Noop { sent_at_micros: 1 } },
    )
}

async fn next_within(consumer: &mut Consumer, what: &str) -> Incoming {
    match tokio::time::timeout(WAIT, consumer.next()).await {
        Ok(Some(incoming)) => incoming,
        Ok(None) => panic!("consumer ended while waiting for {what}"),
        Err(_) => panic!("no delivery of {what} within {WAIT:?}"),
    }
}

async fn next_event_within(consumer: &mut EventConsumer, what: &str) -> kka_shared::broker::ReceivedEvent {
    match tokio::time::timeout(WAIT, consumer.next()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("event consumer ended while waiting for {what}"),
        Err(_) => panic!("no event {what} within {WAIT:?}"),
    }
}

async fn queue_depth(broker: &Broker, queue: &str) -> u32 {
    let channel = broker.channel().await.unwrap();
    let options = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
    let depth = channel.queue_declare(queue.into(), options, FieldTable::default()).await.unwrap().message_count();
    channel.close(200, "done".into()).await.unwrap();
    depth
}

async fn connect(settings: &BrokerSettings, name: &str) -> Broker {
    Broker::connect(settings, name).await.unwrap_or_else(|error| panic!("connect {name}: {error}"))
}

#[tokio::test]
async fn task_round_trip_publish_consume_ack() {
    let env = TestPrefix::new("roundtrip", "");
    let experiment = env.experiment("exp");
    let broker = connect(&env.config.broker, "roundtrip").await;
    let mut consumer = broker.consume_tasks(&[TaskKind::Noop]).await.unwrap();
    let task = noop_task(&experiment, 1);

    broker.publish_task(&task).await.unwrap();
    let incoming = next_within(&mut consumer, "the task").await;

    assert!(!incoming.redelivered());
    assert_eq!(incoming.attempt(), 1);
    assert_eq!(incoming.queue, broker.topology().task_queue(TaskKind::Noop));
    assert_eq!(*incoming.delivery.properties.delivery_mode(), Some(2), "task must be persistent");
    let decoded: TaskMessage = broker.decode_or_dead_letter(&incoming).await.unwrap();
    assert_eq!(decoded, task);
    assert!(incoming.ack().await.unwrap());
    consumer.close().await;
    assert_eq!(queue_depth(&broker, &broker.topology().task_queue(TaskKind::Noop)).await, 0);
    broker.close().await;
}

#[tokio::test]
async fn unacked_delivery_is_redelivered_to_next_consumer() {
    let env = TestPrefix::new("redeliver", "");
    let experiment = env.experiment("exp");
    let first = connect(&env.config.broker, "redeliver-first").await;
    let mut first_consumer = first.consume_tasks(&[TaskKind::Noop]).await.unwrap();
    let task = noop_task(&experiment, 2);
    first.publish_task(&task).await.unwrap();

    let incoming = next_within(&mut first_consumer, "the first delivery").await;
    assert!(!incoming.redelivered());
    // The consumer dies without acknowledging: its connection closes with the delivery open.
    first.close().await;
    drop(incoming);

    let second = connect(&env.config.broker, "redeliver-second").await;
    let mut second_consumer = second.consume_tasks(&[TaskKind::Noop]).await.unwrap();
    let again = next_within(&mut second_consumer, "the redelivery").await;
    assert!(again.redelivered(), "RabbitMQ must flag the second delivery as redelivered");
    assert_eq!(again.payload(), encode(&task).as_slice());
    assert!(again.ack().await.unwrap());
    second.close().await;
}

#[tokio::test]
async fn poison_messages_reach_dead_letter_queue() {
    let env = TestPrefix::new("poison", "[broker]\nmax_payload_bytes = 1024\n");
    let experiment = env.experiment("exp");
    let broker = connect(&env.config.broker, "poison").await;
    let mut consumer = broker.consume_tasks(&[TaskKind::Noop]).await.unwrap();
    let topology = broker.topology().clone();

    let mut unknown_version = serde_json::to_value(noop_task(&experiment, 3)).unwrap();
    unknown_version["version"] = 99.into();
    let payloads = vec![
        b"\xff\x00 not json".to_vec(),
        serde_json::to_vec(&unknown_version).unwrap(),
        vec![b'x'; 2000],
    ];
    for payload in &payloads {
        broker.publish(&Outgoing::task_payload(&topology, TaskKind::Noop, payload.clone())).await.unwrap();
    }
    // A valid task after the poison shows the consumer keeps going.
    let valid = noop_task(&experiment, 4);
    broker.publish_task(&valid).await.unwrap();

    for index in 0..payloads.len() {
        let incoming = next_within(&mut consumer, &format!("poison message {index}")).await;
        assert!(broker.decode_or_dead_letter::<TaskMessage>(&incoming).await.is_none());
    }
    let incoming = next_within(&mut consumer, "the valid task").await;
    assert_eq!(broker.decode_or_dead_letter::<TaskMessage>(&incoming).await, Some(valid));
    assert!(incoming.ack().await.unwrap());

    let mut reasons = Vec::new();
    let mut dead_payloads = Vec::new();
    for _ in 0..payloads.len() {
        let letter = broker.take_dead_letter().await.unwrap().expect("a dead letter per poison message");
        assert_eq!(letter.source_queue.as_deref(), Some(topology.task_queue(TaskKind::Noop).as_str()));
        reasons.push(letter.reason.expect("x-kka-reason header"));
        dead_payloads.push(letter.payload);
    }
    assert_eq!(dead_payloads, payloads, "dead letters keep the original bytes, in order");
    assert!(reasons[0].contains("not JSON"), "{}", reasons[0]);
    assert!(reasons[1].contains("version 99"), "{}", reasons[1]);
    assert!(reasons[2].contains("above the limit of 1024 bytes"), "{}", reasons[2]);
    assert!(broker.take_dead_letter().await.unwrap().is_none());
    assert_eq!(queue_depth(&broker, &topology.task_queue(TaskKind::Noop)).await, 0, "poison messages are acknowledged");
    broker.close().await;
}

#[tokio::test]
async fn batch_publish_confirms_every_message() {
    let env = TestPrefix::new("batch", "[broker]\nprefetch = 100\n");
    let experiment = env.experiment("exp");
    let broker = connect(&env.config.broker, "batch").await;
    let tasks: Vec<TaskMessage> = (0..500).map(|shard| noop_task(&experiment, shard)).collect();

    broker.publish_tasks(&tasks).await.unwrap();
    assert_eq!(queue_depth(&broker, &broker.topology().task_queue(TaskKind::Noop)).await, 500);

    let mut consumer = broker.consume_tasks(&[TaskKind::Noop]).await.unwrap();
    let mut shards = BTreeSet::new();
    for _ in 0..tasks.len() {
        let incoming = next_within(&mut consumer, "a batch task").await;
        let task: TaskMessage = broker.decode_or_dead_letter(&incoming).await.unwrap();
        shards.insert(task.task_id.shard);
        assert!(incoming.ack().await.unwrap());
    }
    assert_eq!(shards, (0..500).collect::<BTreeSet<u32>>());
    broker.close().await;
}

#[tokio::test]
async fn batched_acks_settle_each_delivery_once() {
    let env = TestPrefix::new("acks", "[broker]\nprefetch = 200\n");
    let experiment = env.experiment("exp");
    let broker = connect(&env.config.broker, "acks").await;
    let tasks: Vec<TaskMessage> = (0..100).map(|shard| noop_task(&experiment, shard)).collect();
    broker.publish_tasks(&tasks).await.unwrap();

    let mut consumer = broker.consume_tasks(&[TaskKind::Noop]).await.unwrap();
    let mut deliveries = Vec::new();
    for _ in 0..tasks.len() {
        deliveries.push(next_within(&mut consumer, "a task").await);
    }
    // Settle in reverse order, returning every tenth task to the queue, so that acks wait for
    // older tags and requeued tags sit between acknowledged ones.
    let mut requeued = BTreeSet::new();
    for incoming in deliveries.iter().rev() {
        let task: TaskMessage = serde_json::from_slice(incoming.payload()).unwrap();
        if task.task_id.shard % 10 == 0 {
            assert!(incoming.requeue().await.unwrap());
            requeued.insert(task.task_id.shard);
        } else {
            assert!(incoming.ack().await.unwrap());
        }
        assert!(!incoming.ack().await.unwrap(), "a second settlement must be ignored");
    }
    consumer.close().await;
    drop(deliveries);

    let mut consumer = broker.consume_tasks(&[TaskKind::Noop]).await.unwrap();
    let mut redelivered = BTreeSet::new();
    for _ in 0..requeued.len() {
        let incoming = next_within(&mut consumer, "a requeued task").await;
        assert!(incoming.redelivered());
        let task: TaskMessage = serde_json::from_slice(incoming.payload()).unwrap();
        redelivered.insert(task.task_id.shard);
        assert!(incoming.ack().await.unwrap());
    }
    assert_eq!(redelivered, requeued);
    let extra = tokio::time::timeout(Duration::from_millis(300), consumer.next()).await;
    assert!(extra.is_err(), "acknowledged tasks must not come back");
    consumer.close().await;
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_acks_keep_channel_open() {
    let env = TestPrefix::new("acks-concurrent", "[broker]\nprefetch = 500\n");
    let experiment = env.experiment("exp");
    let broker = connect(&env.config.broker, "acks-concurrent").await;
    let tasks: Vec<TaskMessage> = (0..500).map(|shard| noop_task(&experiment, shard)).collect();
    broker.publish_tasks(&tasks).await.unwrap();

    let mut consumer = broker.consume_tasks(&[TaskKind::Noop]).await.unwrap();
    // Take every delivery before settling any, so that no requeued task comes back in between.
    let mut deliveries = Vec::new();
    for _ in 0..tasks.len() {
        deliveries.push(next_within(&mut consumer, "a task").await);
    }
    let mut settling = tokio::task::JoinSet::new();
    for incoming in deliveries {
        // Settle from many tasks at once, in a scrambled order, requeueing every tenth.
        settling.spawn(async move {
            let task: TaskMessage = serde_json::from_slice(incoming.payload()).unwrap();
            let shard = task.task_id.shard;
            tokio::time::sleep(Duration::from_micros(u64::from((shard * 7919) % 3000))).await;
            if shard % 10 == 0 {
                assert!(incoming.requeue().await.unwrap());
            } else {
                assert!(incoming.ack().await.unwrap());
            }
            (shard, incoming)
        });
    }
    let mut settled = Vec::new();
    while let Some(joined) = settling.join_next().await {
        settled.push(joined.unwrap());
    }
    consumer.close().await;
    drop(settled);

    let mut consumer = broker.consume_tasks(&[TaskKind::Noop]).await.unwrap();
    let mut redelivered = BTreeSet::new();
    while let Ok(Some(incoming)) = tokio::time::timeout(Duration::from_millis(500), consumer.next()).await {
        let task: TaskMessage = serde_json::from_slice(incoming.payload()).unwrap();
        assert!(redelivered.insert(task.task_id.shard), "shard {} delivered twice", task.task_id.shard);
        assert!(incoming.ack().await.unwrap());
    }
    let expected: BTreeSet<u32> = (0..500).filter(|shard| shard % 10 == 0).collect();
    assert_eq!(redelivered, expected, "only the requeued tasks come back");
    consumer.close().await;
    broker.close().await;
}

#[tokio::test]
async fn publish_to_missing_queue_is_unroutable() {
    let env = TestPrefix::new("unroutable", "");
    let experiment = env.experiment("exp");
    let broker = connect(&env.config.broker, "unroutable").await;
    let queue = broker.topology().task_queue(TaskKind::Noop);
    let channel = broker.channel().await.unwrap();
    channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await.unwrap();

    let error = broker.publish_task(&noop_task(&experiment, 5)).await.unwrap_err();
    assert!(matches!(error, BrokerError::Unroutable { .. }), "{error}");
    assert!(error.to_string().contains(&queue), "{error}");
    // The publishing channel survives a returned message.
    broker.publish_event(&noop_event(&noop_task(&experiment, 5))).await.unwrap();
    broker.close().await;
}

#[tokio::test]
async fn event_queues_separate_experiments() {
    let env = TestPrefix::new("events", "");
    let first = env.experiment("exp-a");
    let second = env.experiment("exp-b");
    let broker = connect(&env.config.broker, "events").await;
    broker.declare_event_queue(&first).await.unwrap();
    broker.declare_event_queue(&second).await.unwrap();

    // Published before anyone consumes: the durable queue keeps it.
    let event_a = noop_event(&noop_task(&first, 1));
    let event_b = noop_event(&noop_task(&second, 1));
    broker.publish_event(&event_a).await.unwrap();
    broker.publish_event(&event_b).await.unwrap();
    let garbage = Outgoing {
        exchange: broker.topology().events_exchange(),
        routing_key: second.to_string(),
        payload: b"{\"version\":1}".to_vec(),
        headers: FieldTable::default(),
        mandatory: true,
    };
    broker.publish(&garbage).await.unwrap();
    let event_b2 = noop_event(&noop_task(&second, 2));
    broker.publish_event(&event_b2).await.unwrap();

    let mut events_a = broker.consume_events(&first).await.unwrap();
    let received = next_event_within(&mut events_a, "of experiment a").await;
    assert_eq!(received.event, event_a);
    assert!(received.ack().await.unwrap());
    let nothing_else = tokio::time::timeout(Duration::from_millis(300), events_a.next()).await;
    assert!(nothing_else.is_err(), "experiment a must not see experiment b's events");
    events_a.close().await;

    let mut events_b = broker.consume_events(&second).await.unwrap();
    assert_eq!(next_event_within(&mut events_b, "b1").await.event, event_b);
    // The malformed event between the two is dead-lettered and skipped.
    let received = next_event_within(&mut events_b, "b2").await;
    assert_eq!(received.event, event_b2);
    assert!(received.ack().await.unwrap());
    let letter = broker.take_dead_letter().await.unwrap().expect("the malformed event is dead-lettered");
    assert!(letter.reason.unwrap().contains("does not match"));
    events_b.close().await;

    assert_eq!(broker.delete_event_queue(&first).await.unwrap(), 0);
    broker.close().await;
}

/// Settings that reach RabbitMQ through `proxy`, with short reconnect delays.
fn via_proxy(settings: &BrokerSettings, proxy: &TcpProxy) -> BrokerSettings {
    let mut settings = settings.clone();
    settings.url = SecretUrl::new(url_via(settings.url.expose(), proxy.address()).unwrap());
    settings.reconnect_initial_ms = 50;
    settings.reconnect_max_ms = 400;
    settings
}

/// Waits for the delivery of `expected`, acknowledging on the way any redelivery of a task that
/// was acknowledged before, because an ack sent just before the connection dropped may be lost.
async fn next_skipping_redeliveries(consumer: &mut Consumer, expected: &TaskMessage, earlier: &[TaskMessage]) -> Incoming {
    let what = format!("task {}", expected.task_id);
    loop {
        let incoming = next_within(consumer, &what).await;
        if incoming.payload() == encode(expected).as_slice() {
            return incoming;
        }
        let repeated = earlier.iter().any(|task| incoming.payload() == encode(task).as_slice());
        assert!(repeated, "unexpected delivery while waiting for {what}");
        assert!(incoming.redelivered(), "a repeated task must be flagged as redelivered");
        assert!(incoming.ack().await.unwrap());
    }
}

#[tokio::test]
async fn consumer_and_publisher_recover_after_connection_drop() {
    let env = TestPrefix::new("recover", "");
    let experiment = env.experiment("exp");
    let target = service_address(env.config.broker.url.expose(), 5672).unwrap();
    let proxy = TcpProxy::start(target).await.unwrap();
    let flaky = connect(&via_proxy(&env.config.broker, &proxy), "recover-flaky").await;
    let direct = connect(&env.config.broker, "recover-direct").await;
    let mut consumer = flaky.consume_tasks(&[TaskKind::Noop]).await.unwrap();
    let tasks: Vec<TaskMessage> = (1..=3).map(|shard| noop_task(&experiment, shard)).collect();

    direct.publish_task(&tasks[0]).await.unwrap();
    assert!(next_within(&mut consumer, "the task before the drop").await.ack().await.unwrap());

    // The broker goes away for a while: connections are cut and reconnects refused.
    proxy.set_refusing(true);
    proxy.sever_all();
    direct.publish_task(&tasks[1]).await.unwrap();
    let come_back = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        proxy.set_refusing(false);
    };
    // The consumer retries with backoff while refused, then resumes once the proxy accepts.
    let (incoming, ()) =
        tokio::join!(next_skipping_redeliveries(&mut consumer, &tasks[1], &tasks[..1]), come_back);
    assert!(incoming.ack().await.unwrap());
    assert!(proxy.accepted() >= 2, "the consumer must have reconnected through the proxy");

    // The publisher side reconnects too: a publish on a cut connection is sent again.
    proxy.sever_all();
    tokio::time::timeout(WAIT, flaky.publish_task(&tasks[2])).await.expect("publish timed out").unwrap();
    let incoming = next_skipping_redeliveries(&mut consumer, &tasks[2], &tasks[..2]).await;
    assert!(incoming.ack().await.unwrap());

    flaky.close().await;
    direct.close().await;
}

#[tokio::test]
async fn closed_broker_stops_consumer_and_publisher() {
    let env = TestPrefix::new("closed", "");
    let experiment = env.experiment("exp");
    let broker = connect(&env.config.broker, "closed").await;
    let mut consumer = broker.consume_tasks(&[TaskKind::Noop]).await.unwrap();
    broker.close().await;

    let next = tokio::time::timeout(WAIT, consumer.next()).await.expect("next() must return after close");
    assert!(next.is_none());
    let error = broker.publish_task(&noop_task(&experiment, 1)).await.unwrap_err();
    assert!(matches!(error, BrokerError::Closed), "{error}");
}

#[tokio::test]
async fn unreachable_broker_fails_fast_with_fix() {
    let env = TestPrefix::new("unreachable", "");
    // Port 1 on loopback refuses connections.
    let mut settings = env.config.broker.clone();
    settings.url = SecretUrl::new("amqp://guest:secretpw@127.0.0.1:1/%2f");
    let error = Broker::connect(&settings, "unreachable").await.unwrap_err().to_string();
    assert!(error.contains("broker.url"), "{error}");
    assert!(!error.contains("secretpw"), "{error}");
}
