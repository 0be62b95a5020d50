//! Running one job: wiring sources, the core dataflow, the lake sink and the API.

use anyhow::{anyhow, Context};
use fleetflow_query_api::geofences::GeofenceView;
use fleetflow_query_api::view::VehicleView;
use fleetflow_runtime::checkpoint::Hub;
use fleetflow_runtime::metrics::Metrics;
use fleetflow_sinks::commit::Commit;
use fleetflow_sinks::lake::{LakeError, Uploader};
use fleetflow_types::config::{JobSpec, SpecError};
use fleetflow_types::fix::Fix;
use fleetflow_types::records::{DeadLetter, GeofenceEvent, TierRow};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod phases;
mod services;
mod setup;
mod summary;
mod worker;
pub use summary::{peak_rss, Summary};

/// Everything a finished run captured, for tests (off in production runs).
#[derive(Default, Debug)]
pub struct Captured {
    /// Accepted fixes (raw tier rows).
    pub raw: Vec<Fix>,
    /// Tier rows.
    pub rows: Vec<TierRow>,
    /// Dead letters of every reason.
    pub dead: Vec<DeadLetter>,
    /// Geofence events.
    pub geofence_events: Vec<GeofenceEvent>,
}

/// A shared capture buffer.
pub type Capture = Arc<Mutex<Captured>>;

/// How to run a job beyond its spec.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Overrides `workers`.
    pub workers: Option<usize>,
    /// Overrides `[api].listen`; `Some(None)` runs without the API.
    pub listen: Option<Option<String>>,
    /// Keep serving the API after a finite input is done, until interrupted.
    pub serve: bool,
    /// Show a progress bar.
    pub progress: bool,
    /// Records read per source poll (default 4096); tests vary it to re-batch input.
    pub batch: Option<usize>,
    /// Capture outputs in memory (tests).
    pub capture: Option<Capture>,
    /// Set to interrupt the job (SIGINT/SIGTERM do the same).
    pub shutdown: Option<Arc<AtomicBool>>,
    /// Run as one process of a cluster.
    pub cluster: Option<crate::cluster::ClusterSpec>,
}

/// The result of [`run_job`].
pub struct RunResult {
    /// Counters and timing.
    pub summary: Summary,
    /// The final vehicle-state view.
    pub vehicles: Arc<VehicleView>,
    /// The final geofence view.
    pub geofences: Arc<GeofenceView>,
}

/// Why a job could not run: a bad spec (exit 2) or a runtime failure (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The spec or the arguments are wrong.
    #[error("{0}")]
    Spec(#[from] SpecError),
    /// Something failed while running.
    #[error("{0:#}")]
    Runtime(#[from] anyhow::Error),
}

fn spec_error(text: &str, section: &str, key: &str, message: String) -> JobError {
    JobError::Spec(SpecError {
        field: format!("{section}.{key}"),
        line: fleetflow_types::config::locate(text, section, key),
        message,
    })
}

/// Runs a job (see the crate docs). `text` is the spec's source, for error lines.
pub fn run_job(spec: &JobSpec, text: &str, opts: RunOptions) -> Result<RunResult, JobError> {
    let started = Instant::now();
    let mut job = phases::prepare(spec, text, &opts)?;
    let services = phases::start_services(spec, text, &opts, &job)?;
    let guards = phases::start_workers(spec, &opts, &mut job, &services)?;
    // In a cluster, the workers start once every process is connected.
    let startup = started.elapsed();
    let (metrics, datasets, hub) = (&job.metrics, &job.datasets, &services.hub);
    let results = match &services.serve_until {
        None => guards.join(),
        Some(_) => serve_until_interrupted(guards, metrics, datasets, hub, &job.shutdown, started),
    };
    job.geofences.close();
    services.done.store(true, Relaxed);
    if let Some(t) = services.progress_thread {
        t.thread().unpark();
        let _ = t.join();
    }
    let stop = &services.coordinator_stop;
    let committed = settle(
        results,
        stop,
        services.coordinator_thread,
        &job.uploader,
        hub,
    )?;
    let last = committed.map(|c| (c.seq, c.clock));
    let summary = Summary::collect(metrics, datasets, started, startup, last);
    let serving = services.api_task.is_some() && services.serve_until.is_none();
    if opts.serve && serving && !job.shutdown.load(Relaxed) {
        eprintln!("{summary}input done; serving the API until interrupted");
        while !job.shutdown.load(Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // notify_one keeps a permit, so the server stops even if it was not waiting yet.
    services.api_stop.notify_one();
    if let Some(task) = services.api_task {
        let wait = async { tokio::time::timeout(Duration::from_secs(5), task).await };
        let _ = job.runtime.block_on(wait);
    }
    // Its tasks are done (the API stopped above, every upload finished): nothing to wait for.
    job.runtime.shutdown_background();
    Ok(RunResult {
        summary,
        vehicles: job.vehicles,
        geofences: job.geofences,
    })
}

/// Waits for the workers of a job that serves its API after a bounded input: once a commit
/// holds everything the input produced, prints the summary and that it is serving; a failed
/// lake write stops the job. Returns the workers' results once interrupted.
fn serve_until_interrupted(
    guards: timely::communication::WorkerGuards<()>,
    metrics: &Metrics,
    datasets: &[String],
    hub: &Hub,
    shutdown: &AtomicBool,
    started: Instant,
) -> Vec<Result<(), String>> {
    let startup = started.elapsed();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(guards.join());
    });
    let mut announced = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(results) => return results,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return vec![Err("the workers' thread ended without a result".into())]
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if !announced && metrics.lake_input_ended.load(Relaxed) && !shutdown.load(Relaxed) {
            announced = true;
            let summary = Summary::collect(metrics, datasets, started, startup, None);
            eprintln!("{summary}input done; serving the API until interrupted");
        }
        if hub.failure().is_some() {
            shutdown.store(true, Relaxed);
        }
    }
}

/// After the workers: the coordinator commits their final pieces and stops (or stops at
/// once if a worker failed); then every upload is finished. Returns the last commit (a
/// follower's checkpoints are committed by process 0: none).
fn settle(
    results: Vec<Result<(), String>>,
    coordinator_stop: &AtomicBool,
    coordinator: Option<std::thread::JoinHandle<Result<Option<Commit>, LakeError>>>,
    uploader: &Uploader,
    hub: &Hub,
) -> Result<Option<Commit>, JobError> {
    let failed_worker = results.into_iter().find_map(|r| r.err());
    if failed_worker.is_some() {
        coordinator_stop.store(true, Relaxed);
    }
    let committed = match coordinator {
        Some(t) => t
            .join()
            .map_err(|_| anyhow!("the checkpoint coordinator panicked"))?,
        None => Ok(None),
    };
    if let Some(e) = failed_worker {
        return Err(anyhow!("a worker failed: {e}").into());
    }
    uploader.finish().context("writing the lake")?;
    if let Some(e) = hub.failure() {
        return Err(anyhow!("writing the lake: {e}").into());
    }
    Ok(committed.context("committing the lake's checkpoint")?)
}
