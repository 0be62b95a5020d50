//! Setting a job up: its source, the vehicle registry, the dead-letter topic, the
//! geofences of the spec, and the progress bar.

use super::{spec_error, JobError};
use anyhow::{anyhow, Context};
use fleetflow_connectors::registry::{self, JobSource, OpenError};
use fleetflow_dataflows::timeline::{Silence, TimelineConfig};
use fleetflow_runtime::metrics::Metrics;
use fleetflow_sinks::catalogue::Catalogue;
use fleetflow_types::config::JobSpec;
use fleetflow_types::records::DeadLetterOut;
use fleetflow_types::registry::VehicleRegistry;
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

/// What a job reads: its source (see [`fleetflow_connectors::registry`]), the vehicle
/// registry (the spec's file, plus the vehicles the source brings) and the dead-letter
/// topic.
pub(super) struct Opened {
    /// The source.
    pub source: Arc<dyn JobSource>,
    /// The vehicle registry.
    pub registry: VehicleRegistry,
    /// Where dead letters also go.
    pub dead_letter_out: Option<Arc<dyn DeadLetterOut>>,
}

/// Opens what a job reads, for `peers` workers.
pub(super) fn open_source(spec: &JobSpec, text: &str, peers: usize) -> Result<Opened, JobError> {
    let mut registry = match spec.vehicles.as_ref().and_then(|v| v.registry.as_ref()) {
        Some(path) => {
            let body = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
            VehicleRegistry::parse(&body)
                .map_err(|e| spec_error(text, "vehicles", "registry", e.to_string()))?
        }
        None => VehicleRegistry::default(),
    };
    let source =
        registry::open(&spec.source, &spec.name, peers).map_err(|e| open_error(text, e))?;
    for row in source.vehicles() {
        if registry.get(&row.vehicle_id).is_none() {
            registry.insert(row);
        }
    }
    let dead_letter_out = source
        .dead_letter_out(spec.dead_letter.topic.as_deref())
        .map_err(|e| open_error(text, e))?;
    Ok(Opened {
        source,
        registry,
        dead_letter_out,
    })
}

/// A source that could not be opened: a spec error naming the field, or a runtime error.
pub(super) fn open_error(text: &str, e: OpenError) -> JobError {
    match e {
        OpenError::Spec { field, message } => {
            let (section, key) = field.split_once('.').unwrap_or((field, ""));
            spec_error(text, section, key, message)
        }
        OpenError::Failed(m) => JobError::Runtime(anyhow!(m)),
    }
}

/// Shows a progress bar (bytes of the input files, else a spinner) until `done` (the
/// caller unparks the thread after setting it).
pub(super) fn show_progress(
    source: &dyn JobSource,
    metrics: Arc<Metrics>,
    done: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let total_bytes = source.total_bytes();
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
            // Woken at once when the job is done (see `run_job`), so that a short job does
            // not wait up to a tick for its progress bar.
            std::thread::park_timeout(Duration::from_millis(100));
        }
        bar.finish_and_clear();
    })
}

/// The per-vehicle timeline's settings (its window tiers and raw output from the
/// catalogue). Bounded inputs end, and their end makes everything
/// final; on live ones, silence does.
pub(super) fn timeline_config(
    spec: &JobSpec,
    catalogue: &Catalogue,
    bounded: bool,
    replay: bool,
) -> TimelineConfig {
    let lateness = spec.time.allowed_lateness.millis();
    TimelineConfig {
        lateness,
        silence: (!bounded).then_some(Silence {
            quiet_after: lateness,
            close_after: spec.time.close_silent_after.millis(),
        }),
        vote_for: (!bounded).then_some(spec.time.idle_timeout.millis() as u64),
        replay,
        offline_after: spec.time.offline_after.millis(),
        tiers: catalogue.tiers().iter().map(|t| t.size_ms).collect(),
        raw: catalogue.has_raw(),
        finals: true,
    }
}
