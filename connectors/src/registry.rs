//! The source registry: every kind of source a job spec can name, opened once per job.
//!
//! [`open`] turns `[source]` into a [`JobSource`]: what the job's inputs are called (the
//! checkpoints and metrics key on the names), whether they end, what each worker reads, and
//! what the source needs around the dataflow (the vehicles it brings, a dead-letter topic,
//! committing its positions after a checkpoint). The job runtime knows sources only through
//! this trait, so adding one (MQTT, say) is its spec section, its [`Source`] and one arm of
//! [`open`].

use crate::file::{list_files, FileSource};
use crate::generator::{registry_rows, Generator};
use crate::kafka::{self, KafkaSource, KafkaSourceError};
use crate::source::Source;
use fleetflow_runtime::metrics::Metrics;
use fleetflow_types::config::{GeneratorSpec, KafkaSourceSpec, SourceSpec};
use fleetflow_types::records::DeadLetterOut;
use fleetflow_types::registry::VehicleInfo;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Why a source could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A field of the spec is wrong (`field`: `source.path`, `source.topic`,
    /// `dead_letter.topic`).
    #[error("{message}")]
    Spec {
        /// `section.key` of the field.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The source failed otherwise (a broker, the file system).
    #[error("{0}")]
    Failed(String),
}

impl OpenError {
    fn kafka(field: &'static str, e: KafkaSourceError) -> Self {
        match e {
            KafkaSourceError::NoTopic { .. } => OpenError::Spec {
                field,
                message: e.to_string(),
            },
            e => OpenError::Failed(e.to_string()),
        }
    }
}

/// Commits a source's positions `(input, position)` after each checkpoint.
pub type PositionCommitter = Box<dyn FnMut(&[(u32, u64)]) + Send>;

/// A job's source, opened: what every worker's instance reads.
pub trait JobSource: Send + Sync {
    /// Every input's name, in input-id order.
    fn input_names(&self) -> &[String];
    /// Whether the input ends (its end then makes everything final; on a live input,
    /// silence does).
    fn bounded(&self) -> bool;
    /// Whether every input can be read again from any position it handed over since the
    /// last checkpoint (a Kafka partition, within its retention): checkpoints then record
    /// where the fixes not yet final begin, not the fixes, and a restore reads them again.
    fn replayable(&self) -> bool {
        false
    }
    /// Prepares the instances of workers `local` (global indexes) of `peers`, before the
    /// workers start, so that what can fail fails once, here (Kafka's consumers).
    fn prepare(
        &self,
        _local: std::ops::Range<usize>,
        _peers: usize,
        _metrics: &Arc<Metrics>,
    ) -> Result<(), OpenError> {
        Ok(())
    }
    /// The instance worker `index` of `peers` reads (each worker asks once, after
    /// [`JobSource::prepare`]).
    fn instance(&self, index: usize, peers: usize) -> Box<dyn Source>;
    /// Bytes there are to read, when known (progress).
    fn total_bytes(&self) -> u64 {
        0
    }
    /// Vehicles the source brings along (the generator's fleet).
    fn vehicles(&self) -> Vec<VehicleInfo> {
        Vec::new()
    }
    /// Where dead letters also go, given `[dead_letter].topic`.
    fn dead_letter_out(
        &self,
        _topic: Option<&str>,
    ) -> Result<Option<Arc<dyn DeadLetterOut>>, OpenError> {
        Ok(None)
    }
    /// What commits the inputs' positions after each checkpoint of job `job`, if the
    /// source keeps them outside the lake (a Kafka consumer group).
    fn committer(&self, _job: &str) -> Result<Option<PositionCommitter>, OpenError> {
        Ok(None)
    }
}

/// Opens `[source]` for job `job` on `peers` workers.
pub fn open(spec: &SourceSpec, job: &str, peers: usize) -> Result<Arc<dyn JobSource>, OpenError> {
    Ok(match spec {
        SourceSpec::File(f) => {
            let files = list_files(std::path::Path::new(&f.path))
                .map_err(|e| OpenError::Failed(format!("listing {}: {e}", f.path)))?;
            if files.is_empty() {
                return Err(OpenError::Spec {
                    field: "source.path",
                    message: format!("no .ndjson/.jsonl/.json files under {:?}", f.path),
                });
            }
            Arc::new(Files {
                names: FileSource::input_names(&files),
                files,
            })
        }
        SourceSpec::Generator(g) => Arc::new(Generated {
            names: Generator::input_names(peers as u32),
            spec: g.clone(),
        }),
        SourceSpec::Kafka(k) => {
            let info = kafka::describe_topic(k).map_err(|e| OpenError::kafka("source.topic", e))?;
            Arc::new(Topic {
                names: (0..info.partitions)
                    .map(|p| kafka::input_name(&k.topic, p))
                    .collect(),
                spec: k.clone(),
                job: job.to_owned(),
                info,
                consumers: Mutex::new((0, Vec::new())),
            })
        }
    })
}

/// NDJSON files, dealt to the workers.
struct Files {
    files: Vec<PathBuf>,
    names: Vec<String>,
}

impl JobSource for Files {
    fn input_names(&self) -> &[String] {
        &self.names
    }
    fn bounded(&self) -> bool {
        true
    }
    fn instance(&self, index: usize, peers: usize) -> Box<dyn Source> {
        Box::new(FileSource::new(&self.files, index, peers))
    }
    fn total_bytes(&self) -> u64 {
        self.files
            .iter()
            .filter_map(|f| std::fs::metadata(f).ok())
            .map(|m| m.len())
            .sum()
    }
}

/// The simulated fleet, one partition per worker.
struct Generated {
    spec: GeneratorSpec,
    names: Vec<String>,
}

impl JobSource for Generated {
    fn input_names(&self) -> &[String] {
        &self.names
    }
    fn bounded(&self) -> bool {
        self.spec.duration.is_some()
    }
    fn instance(&self, index: usize, peers: usize) -> Box<dyn Source> {
        Box::new(Generator::new(&self.spec, index as u32, peers as u32))
    }
    fn vehicles(&self) -> Vec<VehicleInfo> {
        registry_rows(&self.spec)
    }
}

/// A Kafka topic, its partitions dealt to the workers.
struct Topic {
    spec: KafkaSourceSpec,
    job: String,
    info: kafka::TopicInfo,
    names: Vec<String>,
    /// The first local worker's global index, and one consumer per local worker.
    consumers: Mutex<(usize, Vec<Option<KafkaSource>>)>,
}

impl JobSource for Topic {
    fn input_names(&self) -> &[String] {
        &self.names
    }
    fn bounded(&self) -> bool {
        self.spec.bounded
    }
    fn replayable(&self) -> bool {
        true
    }
    fn prepare(
        &self,
        local: std::ops::Range<usize>,
        peers: usize,
        metrics: &Arc<Metrics>,
    ) -> Result<(), OpenError> {
        let first = local.start;
        let consumers = local
            .map(|w| {
                KafkaSource::new(&self.spec, &self.job, &self.info, w, peers, metrics.clone())
                    .map(Some)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| OpenError::kafka("source.topic", e))?;
        *self.consumers.lock().expect("consumers lock") = (first, consumers);
        Ok(())
    }
    fn instance(&self, index: usize, _peers: usize) -> Box<dyn Source> {
        let mut consumers = self.consumers.lock().expect("consumers lock");
        let first = consumers.0;
        Box::new(
            consumers.1[index - first]
                .take()
                .expect("one Kafka consumer per worker, prepared"),
        )
    }
    fn dead_letter_out(
        &self,
        topic: Option<&str>,
    ) -> Result<Option<Arc<dyn DeadLetterOut>>, OpenError> {
        let Some(topic) = topic else { return Ok(None) };
        let out = kafka::DeadLetterTopic::new(&self.spec, topic)
            .map_err(|e| OpenError::kafka("dead_letter.topic", e))?;
        Ok(Some(Arc::new(out)))
    }
    fn committer(&self, job: &str) -> Result<Option<PositionCommitter>, OpenError> {
        let committer = kafka::OffsetCommitter::new(&self.spec, job)
            .map_err(|e| OpenError::Failed(e.to_string()))?;
        Ok(Some(Box::new(move |positions: &[(u32, u64)]| {
            let offsets: Vec<(i32, i64)> = positions
                .iter()
                .map(|(input, position)| (*input as i32, *position as i64))
                .collect();
            committer.commit(&offsets);
        })))
    }
}
