//! What fleetflow writes to Kafka: the consumer group's offsets after each checkpoint
//! ([`OffsetCommitter`]), the dead-letter topic ([`DeadLetterTopic`]) and generated events
//! ([`produce_events`], for `fleetflow produce` and the benches).
use super::{client_config, group_id, partitions_of, KafkaSourceError};
use fleetflow_types::config::KafkaSourceSpec;
use fleetflow_types::records::{DeadLetter, DeadLetterOut};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::ClientContext;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Commits checkpointed offsets to the consumer group, so that standard lag tools show
/// the job's progress (the checkpoint, not the group, is what a restart resumes from).
pub struct OffsetCommitter {
    consumer: BaseConsumer,
    topic: String,
}

impl OffsetCommitter {
    /// A committer for the spec's group.
    pub fn new(spec: &KafkaSourceSpec, job: &str) -> Result<Self, KafkaSourceError> {
        let consumer = client_config(spec)
            .set("group.id", group_id(spec, job))
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|error| KafkaSourceError::Broker {
                brokers: spec.brokers.clone(),
                error,
            })?;
        Ok(OffsetCommitter {
            consumer,
            topic: spec.topic.clone(),
        })
    }

    /// Commits `(partition, next offset)` pairs and waits for the broker's answer (on the
    /// committing thread, after the lake's commit; a failure is logged), so that a job that
    /// ends right after a checkpoint leaves the group at its positions.
    pub fn commit(&self, offsets: &[(i32, i64)]) {
        let mut tpl = TopicPartitionList::new();
        for (p, o) in offsets {
            if tpl
                .add_partition_offset(&self.topic, *p, Offset::Offset(*o))
                .is_err()
            {
                return;
            }
        }
        if tpl.count() == 0 {
            return;
        }
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Sync) {
            tracing::warn!(error = %e, "committing offsets to the consumer group");
        }
    }
}

/// Records delivery failures of the dead-letter producer.
#[derive(Default)]
struct DeliveryContext {
    failed: Mutex<Option<String>>,
}

impl ClientContext for DeliveryContext {}

impl DeliveryContext {
    fn record(&self, error: &KafkaError) {
        self.failed
            .lock()
            .expect("delivery lock")
            .get_or_insert_with(|| error.to_string());
    }

    /// The first delivery failure since the last call.
    fn take(&self) -> Option<String> {
        self.failed.lock().expect("delivery lock").take()
    }
}

/// Sends a record, waiting for deliveries while the local queue is full rather than
/// dropping it.
fn send_waiting<K: rdkafka::message::ToBytes + ?Sized, P: rdkafka::message::ToBytes + ?Sized>(
    producer: &ThreadedProducer<DeliveryContext>,
    mut record: BaseRecord<'_, K, P>,
) -> Result<(), KafkaError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((e, r)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                record = r;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.record(e);
        }
    }
}

/// The dead-letter topic: every rejected record, with its original key and payload and the
/// headers `fleetflow-reason`, `fleetflow-detail`, `fleetflow-source` (`kafka:T/P:OFFSET`),
/// `fleetflow-topic`, `fleetflow-partition` and `fleetflow-offset`.
pub struct DeadLetterTopic {
    producer: ThreadedProducer<DeliveryContext>,
    topic: String,
    /// The source topic (input `p` is its partition `p`).
    source_topic: String,
}

impl DeadLetterTopic {
    /// A producer to `topic` on the source's brokers; the topic must exist.
    pub fn new(spec: &KafkaSourceSpec, topic: &str) -> Result<Self, KafkaSourceError> {
        let mut config = client_config(spec);
        for (k, v) in [
            ("enable.idempotence", "true"),
            ("linger.ms", "5"),
            ("message.timeout.ms", "300000"),
        ] {
            if !spec.options.contains_key(k) {
                config.set(k, v);
            }
        }
        let producer: ThreadedProducer<DeliveryContext> = config
            .create_with_context(DeliveryContext::default())
            .map_err(|error| KafkaSourceError::Broker {
                brokers: spec.brokers.clone(),
                error,
            })?;
        partitions_of(producer.client(), topic, &spec.brokers)?;
        Ok(DeadLetterTopic {
            producer,
            topic: topic.to_string(),
            source_topic: spec.topic.clone(),
        })
    }
}

impl DeadLetterOut for DeadLetterTopic {
    fn send(&self, d: &DeadLetter) {
        let (partition, offset) = (d.input.to_string(), d.position.to_string());
        let headers = [
            ("fleetflow-reason", d.reason.as_str()),
            ("fleetflow-detail", d.detail.as_str()),
            ("fleetflow-source", d.source.as_str()),
            ("fleetflow-topic", self.source_topic.as_str()),
            ("fleetflow-partition", partition.as_str()),
            ("fleetflow-offset", offset.as_str()),
        ]
        .into_iter()
        .fold(OwnedHeaders::new_with_capacity(6), |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(value),
            })
        });
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.topic)
            .payload(d.original_payload())
            .headers(headers);
        if let Some(k) = &d.key {
            record = record.key(&k[..]);
        }
        if let Err(e) = send_waiting(&self.producer, record) {
            self.producer.context().record(&e);
        }
    }

    fn flush(&self) -> Result<(), String> {
        self.producer
            .flush(Timeout::After(Duration::from_secs(300)))
            .map_err(|e| format!("dead-letter topic {}: {e}", self.topic))?;
        match self.producer.context().take() {
            Some(e) => Err(format!("dead-letter topic {}: {e}", self.topic)),
            None => Ok(()),
        }
    }
}

/// How far ahead of its rate [`produce_events`] may be before it sleeps.
const PACE: Duration = Duration::from_millis(1);

/// How long a producer that has sent `sent` messages `elapsed` after it started should sleep
/// to keep to `rate` messages/s: nothing until it is more than [`PACE`] ahead (a sleep per
/// message costs more than the message: a quarter of a core at 20,000/s), then until it is
/// on time.
fn pause(elapsed: Duration, sent: u64, rate: u64) -> Option<Duration> {
    let due = Duration::from_secs_f64(sent as f64 / rate.max(1) as f64);
    (due > elapsed + PACE).then(|| due - elapsed)
}

/// Produces NDJSON events to a topic, keyed by vehicle id, at `rate` events/s (or as fast
/// as possible); returns the events sent. `events` yields payloads; `progress` is told the
/// running count.
pub fn produce_events(
    brokers: &str,
    topic: &str,
    rate: Option<u64>,
    events: impl Iterator<Item = (Option<String>, Vec<u8>)>,
    mut progress: impl FnMut(u64),
) -> Result<u64, KafkaSourceError> {
    let broker = |error| KafkaSourceError::Broker {
        brokers: brokers.to_string(),
        error,
    };
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("compression.type", "lz4");
    let producer: ThreadedProducer<DeliveryContext> = config
        .create_with_context(DeliveryContext::default())
        .map_err(broker)?;
    // Fail fast on a topic that does not exist (no auto-creation surprises).
    partitions_of(producer.client(), topic, brokers)?;
    let started = Instant::now();
    let mut sent = 0u64;
    for (key, payload) in events {
        if let Some(pause) = rate.and_then(|r| pause(started.elapsed(), sent, r)) {
            std::thread::sleep(pause);
        }
        let mut record: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic).payload(&payload[..]);
        if let Some(k) = &key {
            record = record.key(k.as_str());
        }
        send_waiting(&producer, record).map_err(broker)?;
        sent += 1;
        if sent.is_multiple_of(10_000) {
            progress(sent);
        }
    }
    producer
        .flush(Timeout::After(Duration::from_secs(120)))
        .map_err(broker)?;
    if let Some(error) = producer.context().take() {
        return Err(KafkaSourceError::Delivery {
            topic: topic.to_string(),
            error,
        });
    }
    progress(sent);
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_producer_sleeps_only_when_a_millisecond_ahead_of_its_rate() {
        let ms = Duration::from_millis;
        // 20,000/s: message 20 is due at 1 ms, message 40 at 2 ms.
        assert_eq!(pause(ms(0), 0, 20_000), None);
        assert_eq!(pause(ms(0), 20, 20_000), None, "exactly 1 ms ahead");
        assert_eq!(pause(ms(0), 40, 20_000), Some(ms(2)));
        assert_eq!(pause(ms(1), 40, 20_000), None);
        assert_eq!(pause(ms(5), 200, 20_000), Some(ms(5)));
        // Behind its rate: no sleep, it catches up.
        assert_eq!(pause(ms(100), 200, 20_000), None);
        // Once it has slept, it is on time: sent / rate = elapsed.
        let p = pause(ms(3), 1_000, 100_000).unwrap();
        assert_eq!(ms(3) + p, ms(10));
    }
}
