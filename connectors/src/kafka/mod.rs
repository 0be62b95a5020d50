//! Kafka: the source (a topic's partitions spread over the workers), the dead-letter topic,
//! consumer-group offset commits, and producing generated events.
//!
//! ```text
//!   topic partitions 0..P ──► partition p is input p, read by worker p % workers
//!   per worker: one consumer, manually assigned (no group rebalancing: the checkpoint owns
//!   the offsets), one queue per partition polled without blocking
//!   checkpoint commit ──► offsets also committed to the consumer group (for lag tools)
//! ```
//!
//! The lake's checkpoint is the source of truth for offsets: on restart every partition
//! resumes at the offset its last checkpoint recorded. Without a checkpoint, `start`
//! decides (`earliest`, `latest` or the group's `committed` offsets). A broker that goes
//! away is retried by librdkafka with backoff; the source keeps polling (finding nothing),
//! logs the error once per interval and continues when the broker is back.

pub use rdkafka;

mod produce;
pub use produce::{produce_events, DeadLetterTopic, OffsetCommitter};

use crate::source::{Emit, Polled, Source, SourceError};
use fleetflow_runtime::metrics::Metrics;
use fleetflow_types::config::{KafkaSourceSpec, KafkaStart};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long start-up waits for the brokers' metadata.
const METADATA_TIMEOUT: Duration = Duration::from_secs(15);
/// Messages librdkafka may prefetch for one worker, in KiB, over all its partitions (at
/// least 1 MiB per partition).
const PREFETCH_KB_PER_WORKER: usize = 64 * 1024;
/// Broker errors are logged at most this often (they repeat while a broker is away).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// A Kafka failure at start-up or in the dead-letter producer.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSourceError {
    /// The topic does not exist.
    #[error("topic {topic:?} does not exist on {brokers}")]
    NoTopic {
        /// The topic.
        topic: String,
        /// The bootstrap servers.
        brokers: String,
    },
    /// Messages could not be delivered.
    #[error("delivering to topic {topic:?}: {error}")]
    Delivery {
        /// The topic.
        topic: String,
        /// The first delivery error.
        error: String,
    },
    /// The brokers did not answer or refused.
    #[error("kafka {brokers}: {error}")]
    Broker {
        /// The bootstrap servers.
        brokers: String,
        /// What failed.
        error: KafkaError,
    },
}

/// The name of a partition as an input: `kafka:TOPIC/PARTITION`.
pub fn input_name(topic: &str, partition: i32) -> String {
    format!("kafka:{topic}/{partition}")
}

/// The client settings shared by consumers and producers: the bootstrap servers and the
/// spec's `options` (any librdkafka property, e.g. `security.protocol`).
pub fn client_config(spec: &KafkaSourceSpec) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &spec.brokers);
    for (k, v) in &spec.options {
        c.set(k, v);
    }
    c
}

/// The consumer group: the spec's, else `fleetflow-{job}`.
pub fn group_id(spec: &KafkaSourceSpec, job: &str) -> String {
    spec.group_id
        .clone()
        .unwrap_or_else(|| format!("fleetflow-{job}"))
}

/// What start-up learns about the topic.
#[derive(Clone, Debug)]
pub struct TopicInfo {
    /// Number of partitions (inputs `0..partitions`).
    pub partitions: i32,
    /// With `bounded`: each partition's `(low, high)` offsets at start-up (the source
    /// stops at `high`).
    pub bounds: Option<Vec<(i64, i64)>>,
}

/// The number of partitions of `topic`; a topic that does not exist is
/// [`KafkaSourceError::NoTopic`].
fn partitions_of<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    brokers: &str,
) -> Result<i32, KafkaSourceError> {
    let md = client
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(|error| KafkaSourceError::Broker {
            brokers: brokers.to_string(),
            error,
        })?;
    match md.topics().iter().find(|t| t.name() == topic) {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
            Ok(t.partitions().len() as i32)
        }
        _ => Err(KafkaSourceError::NoTopic {
            topic: topic.to_string(),
            brokers: brokers.to_string(),
        }),
    }
}

/// Reads the topic's partitions (and, for a bounded source, their end offsets). A topic
/// that does not exist, or brokers that do not answer within 15 s, are errors.
pub fn describe_topic(spec: &KafkaSourceSpec) -> Result<TopicInfo, KafkaSourceError> {
    let broker = |error| KafkaSourceError::Broker {
        brokers: spec.brokers.clone(),
        error,
    };
    let mut config = client_config(spec);
    config.set("group.id", "fleetflow-metadata");
    // The end offsets of a bounded read are the last stable offsets (ListOffsets under
    // the source's isolation level): a transaction still open at start-up is not waited for.
    if !spec.options.contains_key("isolation.level") {
        config.set("isolation.level", "read_committed");
    }
    let consumer: BaseConsumer = config.create().map_err(broker)?;
    let partitions = partitions_of(consumer.client(), &spec.topic, &spec.brokers)?;
    let bounds = if spec.bounded {
        let bounds: Result<Vec<(i64, i64)>, KafkaError> = (0..partitions)
            .map(|p| consumer.fetch_watermarks(&spec.topic, p, METADATA_TIMEOUT))
            .collect();
        Some(bounds.map_err(broker)?)
    } else {
        None
    };
    Ok(TopicInfo { partitions, bounds })
}

/// Whether `error` only says a fetch reached the end of a partition: news the partitions'
/// queues act on (`enable.partition.eof`), not a failure. librdkafka also raises it as a
/// global error when it has no partition queue to put it on.
fn is_partition_end(error: &KafkaError) -> bool {
    matches!(error, KafkaError::PartitionEOF(_))
        || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF)
}

/// Logs an error at most once per [`LOG_EVERY`], counting the ones it held back.
#[derive(Default)]
struct Throttled {
    last: Mutex<Option<(Instant, u64)>>,
}

impl Throttled {
    fn warn(&self, what: &str, error: &dyn std::fmt::Display) {
        let mut last = self.last.lock().expect("log lock");
        match &mut *last {
            Some((at, held)) if at.elapsed() < LOG_EVERY => *held += 1,
            _ => {
                let held = last.map_or(0, |(_, h)| h);
                tracing::warn!(%error, suppressed = held, "{what} (retrying; logged at most every {}s)", LOG_EVERY.as_secs());
                *last = Some((Instant::now(), 0));
            }
        }
    }
}

/// The consumer's context: librdkafka's statistics feed the lag metrics (the partition's
/// high watermark minus the next offset handed to the job), errors are logged throttled.
struct SourceContext {
    /// Where the lag goes (partition `p` is input `p`).
    metrics: Arc<Metrics>,
    topic: String,
    errors: Throttled,
}

impl ClientContext for SourceContext {
    fn stats(&self, stats: Statistics) {
        let Some(t) = stats.topics.get(&self.topic) else {
            return;
        };
        for (p, s) in &t.partitions {
            // Before the first message the position is the partition's start.
            let position = if s.app_offset >= 0 {
                s.app_offset
            } else {
                s.lo_offset
            };
            if *p >= 0 && s.hi_offset >= 0 && position >= 0 {
                if let Some(m) = self.metrics.inputs.get(*p as usize) {
                    m.lag.store((s.hi_offset - position).max(0), Relaxed);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if is_partition_end(&error) {
            return;
        }
        self.errors
            .warn("kafka consumer", &format!("{error}: {reason}"));
    }
}

impl ConsumerContext for SourceContext {}

struct LocalPartition {
    partition: i32,
    /// The next offset to hand over (`None`: not known yet, before the first message of a
    /// partition started at `earliest`/`latest`/`committed`).
    next: Option<i64>,
    /// Bounded source: the offset to stop at.
    end: Option<i64>,
    queue: Option<rdkafka::consumer::base_consumer::PartitionQueue<SourceContext>>,
    /// Messages librdkafka fetched into the consumer's main queue before this partition's
    /// queue was split off: they precede everything in `queue`.
    early: std::collections::VecDeque<EarlyMessage>,
    /// librdkafka reported the end of the partition and no message came since: the
    /// partition is silent, not merely slow to fetch.
    at_end: bool,
}

/// An owned copy of a message that arrived on the main queue.
struct EarlyMessage {
    offset: i64,
    payload: Vec<u8>,
    key: Option<Vec<u8>>,
}

/// The Kafka source of one worker: the partitions `p` with `p % peers == worker`.
pub struct KafkaSource {
    consumer: Arc<BaseConsumer<SourceContext>>,
    topic: String,
    start: KafkaStart,
    locals: Vec<LocalPartition>,
    assigned: bool,
}

impl KafkaSource {
    /// The source of worker `worker` of `peers`, for a topic [`describe_topic`] described.
    pub fn new(
        spec: &KafkaSourceSpec,
        job: &str,
        info: &TopicInfo,
        worker: usize,
        peers: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Self, KafkaSourceError> {
        let context = SourceContext {
            metrics,
            topic: spec.topic.clone(),
            errors: Throttled::default(),
        };
        let locals: Vec<LocalPartition> = (0..info.partitions)
            .filter(|p| *p as usize % peers.max(1) == worker)
            .map(|p| {
                let bounds = info.bounds.as_ref().map(|b| b[p as usize]);
                LocalPartition {
                    partition: p,
                    // A bounded partition with nothing to read (empty, or started at
                    // `latest`) is already at its end.
                    next: bounds
                        .filter(|(low, high)| high <= low || spec.start == KafkaStart::Latest)
                        .map(|(_, high)| high),
                    end: bounds.map(|(_, high)| high),
                    queue: None,
                    early: Default::default(),
                    at_end: false,
                }
            })
            .collect();
        // With one queue per partition librdkafka's prefetch limit applies per partition:
        // the worker's budget is shared among its partitions.
        let prefetch_kb = (PREFETCH_KB_PER_WORKER / locals.len().max(1))
            .max(1024)
            .to_string();
        let mut config = client_config(spec);
        for (k, v) in [
            ("group.id", group_id(spec, job).as_str()),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            // End-of-partition events tell a caught-up partition from a slow one.
            ("enable.partition.eof", "true"),
            // Records of aborted or still open transactions are never read (librdkafka's
            // default, stated here because exactly-once depends on it).
            ("isolation.level", "read_committed"),
            ("auto.offset.reset", "earliest"),
            ("statistics.interval.ms", "1000"),
            ("fetch.wait.max.ms", "20"),
            ("queued.max.messages.kbytes", prefetch_kb.as_str()),
            // A partition whose prefetch queue went over its limit is fetched again 5 ms
            // after it drains below it, not librdkafka's default 1 s. A broker may answer
            // one fetch with far more than the limit (tansu ignores the per-partition
            // limit and fills the whole response); with the default, the workers then sat
            // idle with an empty queue for up to a second each time, while a backlog waited
            // on the broker (docs/benchmarks.md, Kafka).
            ("fetch.queue.backoff.ms", "5"),
        ] {
            if !spec.options.contains_key(k) {
                config.set(k, v);
            }
        }
        let consumer: BaseConsumer<SourceContext> =
            config
                .create_with_context(context)
                .map_err(|error| KafkaSourceError::Broker {
                    brokers: spec.brokers.clone(),
                    error,
                })?;
        Ok(KafkaSource {
            consumer: Arc::new(consumer),
            topic: spec.topic.clone(),
            start: spec.start,
            locals,
            assigned: false,
        })
    }

    /// Assigns this worker's partitions at their resume offsets (or the start policy) and
    /// gives each its own queue.
    fn assign(&mut self) -> Result<(), SourceError> {
        let mut tpl = TopicPartitionList::new();
        for l in &self.locals {
            let offset = match (l.next, self.start) {
                (Some(n), _) => Offset::Offset(n),
                (None, KafkaStart::Earliest) => Offset::Beginning,
                (None, KafkaStart::Latest) => Offset::End,
                (None, KafkaStart::Committed) => Offset::Stored,
            };
            tpl.add_partition_offset(&self.topic, l.partition, offset)
                .map_err(|e| self.error(e))?;
        }
        self.consumer.assign(&tpl).map_err(|e| self.error(e))?;
        for l in &mut self.locals {
            l.queue = self
                .consumer
                .split_partition_queue(&self.topic, l.partition);
        }
        self.assigned = true;
        Ok(())
    }

    fn error(&self, e: KafkaError) -> SourceError {
        SourceError::Io {
            input: format!("kafka:{}", self.topic),
            error: std::io::Error::other(e),
        }
    }
}

impl Source for KafkaSource {
    fn inputs(&self) -> Vec<u32> {
        self.locals.iter().map(|l| l.partition as u32).collect()
    }

    fn can_idle(&self) -> bool {
        true
    }

    fn caught_up(&self, local: usize) -> bool {
        let l = &self.locals[local];
        l.at_end && l.early.is_empty()
    }

    fn position(&self, local: usize) -> (u64, u64) {
        let l = &self.locals[local];
        // Before the first message of a partition started by policy the position is not
        // known; `u64::MAX` means "start by policy again". The count is not needed.
        (l.next.map_or(u64::MAX, |n| n as u64), 0)
    }

    fn seek(&mut self, local: usize, (offset, _): (u64, u64)) -> Result<(), SourceError> {
        self.locals[local].next = (offset != u64::MAX).then_some(offset as i64);
        self.assigned = false;
        Ok(())
    }

    fn poll(
        &mut self,
        local: usize,
        budget: usize,
        sink: &mut Emit<'_>,
    ) -> Result<Polled, SourceError> {
        if !self.assigned {
            self.assign()?;
        }
        // Serve the consumer's own queue: statistics, errors (a broker that went away),
        // and messages fetched before the partition queues were split off.
        while let Some(r) = self.consumer.poll(Duration::ZERO) {
            match r {
                Ok(m) => {
                    if let Some(l) = self
                        .locals
                        .iter_mut()
                        .find(|l| l.partition == m.partition())
                    {
                        l.at_end = false;
                        l.early.push_back(EarlyMessage {
                            offset: m.offset(),
                            payload: m.payload().unwrap_or_default().to_vec(),
                            key: m.key().map(<[u8]>::to_vec),
                        });
                    }
                }
                Err(KafkaError::PartitionEOF(p)) => {
                    if let Some(l) = self.locals.iter_mut().find(|l| l.partition == p) {
                        l.at_end = true;
                        past_markers(&self.consumer, &self.topic, l);
                    }
                }
                Err(e) => {
                    self.consumer.context().errors.warn("kafka consumer", &e);
                    break;
                }
            }
        }
        let now = fleetflow_types::time::now_ms();
        let delivery = &self.consumer.context().metrics.delivery_latency;
        let l = &mut self.locals[local];
        if l.end.is_some_and(|end| l.next.is_some_and(|n| n >= end)) {
            return Ok(Polled::Finished);
        }
        let (mut n, mut ended) = (0, false);
        while n < budget && !ended {
            let Some(m) = l.early.pop_front() else { break };
            ended = !emit(l, m.offset, &m.payload, m.key.as_deref(), sink, &mut n);
        }
        // The queue is taken out while `emit` borrows the partition.
        if let Some(queue) = l.queue.take() {
            while n < budget && !ended && l.early.is_empty() {
                match queue.poll(Duration::ZERO) {
                    None => break,
                    Some(Ok(m)) => {
                        l.at_end = false;
                        if let Some(t) = m.timestamp().to_millis() {
                            delivery.record(now.saturating_sub(t).max(0) as u64, 1);
                        }
                        let payload = m.payload().unwrap_or_default();
                        ended = !emit(l, m.offset(), payload, m.key(), sink, &mut n);
                    }
                    Some(Err(KafkaError::PartitionEOF(_))) => {
                        l.at_end = true;
                        past_markers(&self.consumer, &self.topic, l);
                        break;
                    }
                    Some(Err(e)) => {
                        self.consumer.context().errors.warn("kafka partition", &e);
                        break;
                    }
                }
            }
            l.queue = Some(queue);
        }
        Ok(match (n, ended) {
            (0, true) => Polled::Finished,
            (0, false) => Polled::Empty,
            _ => Polled::Data(n),
        })
    }
}

/// At the end of a partition: moves its next offset to the consumer's position, which lies
/// past what a `read_committed` consumer never hands over (transaction markers, aborted
/// records), so that a bounded partition whose last records are markers reaches its end,
/// and the offsets checkpointed and committed to the group are past them.
fn past_markers<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    l: &mut LocalPartition,
) {
    let Ok(positions) = consumer.position() else {
        return;
    };
    if let Some(Offset::Offset(at)) = positions
        .find_partition(topic, l.partition)
        .map(|p| p.offset())
    {
        if l.next.is_none_or(|next| at > next) {
            l.next = Some(at);
        }
    }
}

/// Hands one message of partition `l` over (counting it in `n`); false once the partition
/// reached its end.
fn emit(
    l: &mut LocalPartition,
    offset: i64,
    payload: &[u8],
    key: Option<&[u8]>,
    sink: &mut Emit<'_>,
    n: &mut usize,
) -> bool {
    if l.end.is_some_and(|end| offset >= end) {
        return false;
    }
    // Never twice (a re-fetch after a broker error may repeat messages).
    if l.next.is_none_or(|next| offset >= next) {
        sink(payload, offset as u64, key);
        l.next = Some(offset + 1);
        *n += 1;
    }
    l.end.is_none_or(|end| offset + 1 < end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_a_partition_is_not_logged_as_an_error() {
        assert!(is_partition_end(&KafkaError::PartitionEOF(3)));
        assert!(is_partition_end(&KafkaError::Global(
            RDKafkaErrorCode::PartitionEOF
        )));
        assert!(!is_partition_end(&KafkaError::Global(
            RDKafkaErrorCode::BrokerTransportFailure
        )));
    }
}
