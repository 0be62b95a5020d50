//! Setting a job up: its inputs (files, the generator, Kafka), the vehicle registry, the
//! dead-letter topic, the geofences of the spec, and the progress bar.

use super::{spec_error, JobError};
use anyhow::{anyhow, Context};
use fleetflow_connectors::file::{list_files, FileSource};
use fleetflow_connectors::generator::{registry_rows, Generator};
use fleetflow_connectors::kafka;
use fleetflow_types::config::{JobSpec, SourceSpec};
use fleetflow_types::metrics::Metrics;
use fleetflow_types::records::DeadLetterOut;
use fleetflow_types::registry::VehicleRegistry;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// Loads `[geofences].path`: rejected features are logged and skipped, an unreadable or
/// non-GeoJSON file is a spec error.
pub(super) fn load_geofences(
    spec: &JobSpec,
    text: &str,
) -> Result<Vec<Arc<fleetflow_types::geofence::Geofence>>, JobError> {
    let Some(g) = spec.geofences.as_ref() else {
        return Ok(Vec::new());
    };
    let Some(path) = g.path.as_ref() else {
        return Ok(Vec::new());
    };
    let body = std::fs::read_to_string(path)
        .map_err(|e| spec_error(text, "geofences", "path", format!("reading {path}: {e}")))?;
    let loaded = fleetflow_types::geofence::load(&body, g.id_property.as_deref())
        .map_err(|m| spec_error(text, "geofences", "path", format!("{path}: {m}")))?;
    for e in &loaded.rejected {
        tracing::warn!("{path}: {e}; skipped");
    }
    tracing::info!(
        loaded = loaded.geofences.len(),
        rejected = loaded.rejected.len(),
        "geofences from {path}"
    );
    Ok(loaded.geofences.into_iter().map(Arc::new).collect())
}

/// Where a job's events come from.
pub(super) enum Inputs {
    /// NDJSON files.
    Files(Vec<PathBuf>),
    /// The built-in generator.
    Generator(fleetflow_types::config::GeneratorSpec),
    /// A Kafka topic.
    Kafka(fleetflow_types::config::KafkaSourceSpec, kafka::TopicInfo),
}

impl Inputs {
    /// Whether the input ends (then its end makes everything final; on a live input,
    /// silence does).
    pub(super) fn bounded(&self) -> bool {
        match self {
            Inputs::Files(_) => true,
            Inputs::Generator(g) => g.duration.is_some(),
            Inputs::Kafka(k, _) => k.bounded,
        }
    }
}

/// What a job reads: the vehicle registry (the spec's file, plus the generator's own
/// fleet), its inputs and their names, and the dead-letter topic (on the source's
/// brokers), for `peers` workers.
#[allow(clippy::type_complexity)]
pub(super) fn resolve_inputs(
    spec: &JobSpec,
    text: &str,
    peers: usize,
) -> Result<
    (
        VehicleRegistry,
        Inputs,
        Vec<String>,
        Option<Arc<dyn DeadLetterOut>>,
    ),
    JobError,
> {
    // Vehicle registry: the spec's file, plus the generator's own fleet.
    let mut registry = match spec.vehicles.as_ref().and_then(|v| v.registry.as_ref()) {
        Some(path) => {
            let body = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
            VehicleRegistry::parse(&body)
                .map_err(|e| spec_error(text, "vehicles", "registry", e.to_string()))?
        }
        None => VehicleRegistry::default(),
    };
    let (inputs, input_names) = match &spec.source {
        SourceSpec::File(f) => {
            let files = list_files(std::path::Path::new(&f.path))
                .with_context(|| format!("listing {}", f.path))?;
            if files.is_empty() {
                return Err(spec_error(
                    text,
                    "source",
                    "path",
                    format!("no .ndjson/.jsonl/.json files under {:?}", f.path),
                ));
            }
            let names = FileSource::input_names(&files);
            (Inputs::Files(files), names)
        }
        SourceSpec::Generator(g) => {
            for row in registry_rows(g) {
                if registry.get(&row.vehicle_id).is_none() {
                    registry.insert(row);
                }
            }
            (
                Inputs::Generator(g.clone()),
                Generator::input_names(peers as u32),
            )
        }
        SourceSpec::Kafka(k) => {
            let info = kafka::describe_topic(k).map_err(|e| match e {
                kafka::KafkaSourceError::NoTopic { .. } => {
                    spec_error(text, "source", "topic", e.to_string())
                }
                e => JobError::Runtime(anyhow!(e)),
            })?;
            let names = (0..info.partitions)
                .map(|p| kafka::input_name(&k.topic, p))
                .collect();
            (Inputs::Kafka(k.clone(), info), names)
        }
    };
    // The dead-letter topic, on the source's brokers.
    let dead_letter_out: Option<Arc<dyn fleetflow_types::records::DeadLetterOut>> =
        match (&spec.source, &spec.dead_letter.topic) {
            (SourceSpec::Kafka(k), Some(topic)) => Some(Arc::new(
                kafka::DeadLetterTopic::new(k, topic).map_err(|e| match e {
                    kafka::KafkaSourceError::NoTopic { .. } => {
                        spec_error(text, "dead_letter", "topic", e.to_string())
                    }
                    e => JobError::Runtime(anyhow!(e)),
                })?,
            )),
            _ => None,
        };
    Ok((registry, inputs, input_names, dead_letter_out))
}

/// Shows a progress bar (bytes of the input files, else a spinner) until `done`.
pub(super) fn show_progress(
    inputs: &Inputs,
    metrics: Arc<Metrics>,
    done: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let total_bytes: u64 = match &inputs {
        Inputs::Files(files) => files
            .iter()
            .filter_map(|f| std::fs::metadata(f).ok())
            .map(|m| m.len())
            .sum(),
        Inputs::Generator(_) | Inputs::Kafka(..) => 0,
    };
    std::thread::spawn(move || {
        let bar = if total_bytes > 0 {
            let b = indicatif::ProgressBar::new(total_bytes);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {msg} eta {eta}",
                )
                .expect("template"),
            );
            b
        } else {
            indicatif::ProgressBar::new_spinner()
        };
        while !done.load(Relaxed) {
            let r = Relaxed;
            bar.set_position(metrics.bytes_in.load(r));
            bar.set_message(format!(
                "{} events, {} accepted",
                metrics.events_in.load(r),
                metrics.accepted.load(r)
            ));
            if total_bytes == 0 {
                bar.tick();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bar.finish_and_clear();
    })
}
