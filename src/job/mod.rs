//! Running one job: wiring sources, the core dataflow, the lake sink and the API.

use anyhow::{anyhow, Context};
use fleetflow_dataflows::cluster::Layout;
use fleetflow_dataflows::geofence::FenceIndex;
use fleetflow_query_api::geofences::GeofenceView;
use fleetflow_query_api::lake_routes::LakeAccess;
use fleetflow_query_api::stream::StreamConfig;
use fleetflow_query_api::view::VehicleView;
use fleetflow_query_api::ApiState;
use fleetflow_runtime::checkpoint::Hub;
use fleetflow_runtime::metrics::Metrics;
use fleetflow_sinks::catalogue::Catalogue;
use fleetflow_sinks::commit::{Commit, Coordinator};
use fleetflow_sinks::lake::{Lake, LakeError, Uploader};
use fleetflow_sinks::sink::SinkConfig;
use fleetflow_sinks::writer::RollPolicy;
use fleetflow_types::config::{JobSpec, SpecError};
use fleetflow_types::fix::Fix;
use fleetflow_types::records::{DeadLetter, GeofenceEvent, TierRow};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod services;
mod setup;
mod summary;
mod worker;
use setup::{load_geofences, open_error, open_source, show_progress};
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
    spec.check_paths(text)?;
    let workers = opts.workers.unwrap_or(spec.workers).max(1);
    let layout = Layout {
        processes: opts.cluster.as_ref().map_or(1, |c| c.processes()),
        workers,
    };
    let process = opts.cluster.as_ref().map_or(0, |c| c.index);
    // Process 0 leads: it recovers the lake, commits checkpoints and takes geofence changes.
    let leader = process == 0;
    let clustered = layout.processes > 1;
    let peers = layout.peers();
    let first = layout.global(process, 0);

    let setup::Opened {
        source,
        registry,
        dead_letter_out,
    } = open_source(spec, text, peers)?;
    let input_names = source.input_names().to_vec();
    let initial_geofences = load_geofences(spec, text)?;
    let dwell_after = spec
        .geofences
        .as_ref()
        .map_or(600_000, |g| g.dwell_after.millis());
    let lake = Lake::open(&spec.lake.url, &spec.lake.s3)
        .map_err(|e| spec_error(text, "lake", "url", e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("fleetflow-io")
        .build()
        .context("starting the I/O runtime")?;
    // Exactly once: resume from the lake's newest checkpoint (see `recover_lake`).
    let recovered =
        services::recover_lake(&lake, runtime.handle(), leader, spec, text, &input_names)?;
    // The checkpoint's state, decoded once and split over this run's workers.
    let restored = recovered
        .as_ref()
        .map(|r| crate::restore::split(&r.pieces, peers))
        .transpose()?;
    // Runtime geofence changes continue their numbering after the checkpoint's.
    let latest_change = restored.as_ref().map_or(0, |r| r.latest_change);
    let initial_geofences = match restored.as_ref().and_then(|r| r.fences.clone()) {
        Some(fences) => fences,
        None => initial_geofences,
    };
    let catalogue = Catalogue::for_lake(&spec.lake);
    let datasets = catalogue.names();
    let metrics = Arc::new(Metrics::new(datasets.clone()).with_inputs(&input_names));
    if let Some(w) = recovered.as_ref().and_then(|r| r.commit.clock) {
        // The lake already holds the last run's results through its last commit.
        metrics.lake_clock.fetch_max(w, Relaxed);
    }
    let registry = Arc::new(registry);
    let input_names = Arc::new(input_names);
    let (changes, vehicles, geofences, change_rx) = services::api_views(
        spec,
        &opts,
        peers,
        leader,
        &initial_geofences,
        latest_change,
    );
    let shutdown = opts.shutdown.clone().unwrap_or_default();

    let uploader = Uploader::new(lake.clone(), runtime.handle().clone(), metrics.clone());

    services::stop_on_signals(&runtime, shutdown.clone());

    // The API.
    let api_stop = Arc::new(tokio::sync::Notify::new());
    let api_task = services::start_api(
        &runtime,
        spec,
        &opts,
        ApiState::new(
            vehicles.clone(),
            geofences.clone(),
            metrics.clone(),
            changes.clone(),
            fleetflow_query_api::auth::from_spec(&spec.api.tokens, spec.api.rate_limit),
            StreamConfig {
                max_streams: spec.api.max_streams,
                queue: spec.api.stream_queue,
                ..StreamConfig::default()
            },
        )
        .with_lake(LakeAccess::new(lake.clone(), &catalogue)),
        api_stop.clone(),
    )?;

    let done = Arc::new(AtomicBool::new(false));
    let progress_thread = opts
        .progress
        .then(|| show_progress(&*source, metrics.clone(), done.clone()));

    // The dataflow, on every worker.
    // Bounded inputs end, and their end makes everything final; on live ones, silence does.
    let bounded = source.bounded();
    // `--serve` after a bounded input keeps the dataflow alive on its geofence input, so
    // that changes and their events go on (one process; a cluster serves its views as the
    // input left them).
    let serve_until =
        (opts.serve && bounded && !clustered && api_task.is_some()).then(|| shutdown.clone());
    let lateness = spec.time.allowed_lateness.millis();
    let timeline_cfg = setup::timeline_config(spec, &catalogue, bounded);
    let target_bytes = spec.lake.target_file_bytes();
    let sink_cfg = SinkConfig {
        datasets: catalogue.clone(),
        prefix: format!("part-{}", fleetflow_types::time::now_ms()),
        roll: RollPolicy {
            target_bytes,
            max_age: spec.lake.max_file_age.0,
        },
        dead_letter_out,
    };
    // Kafka consumers are created here, one per worker, so that a bad client
    // configuration is one error before the workers start; each worker takes its own.
    source
        .prepare(first..first + workers, peers, &metrics)
        .map_err(|e| open_error(text, e))?;
    // Built once, shared by the workers until a runtime change (copy on write).
    let fence_index = Arc::new(FenceIndex::new(initial_geofences.iter().cloned()));
    let resumed = recovered.as_ref().map_or(0, |r| r.commit.seq);
    let boundary = recovered.as_ref().map_or(0, |r| r.commit.boundary);
    let (hub, ops_per_worker) = services::checkpoint_hub(spec, peers, leader, boundary);
    let coordinator_stop = Arc::new(AtomicBool::new(false));
    // Only the leader commits; a follower's pieces reach it through the dataflow.
    let coordinator_thread = if leader {
        let on_commit = source
            .committer(&spec.name)
            .map_err(|e| open_error(text, e))?;
        Some(services::start_coordinator(
            Coordinator {
                lake: lake.clone(),
                hub: hub.clone(),
                uploader: uploader.fork(),
                metrics: metrics.clone(),
                datasets: catalogue.clone(),
                tables: Arc::new(fleetflow_sinks::table::HiveDirectories),
                job: (spec.name.clone(), input_names.to_vec()),
                target_bytes,
                previous: recovered.as_ref().map(|r| r.commit.clone()),
                on_commit: on_commit.map(services::commit_positions),
            },
            coordinator_stop.clone(),
        )?)
    } else {
        None
    };
    // This process's workers' shares of the restored state.
    let (inputs_restored, worker_restores) = crate::restore::local_shares(restored, first, workers);
    let config =
        crate::cluster::timely_config(opts.cluster.as_ref().filter(|_| clustered), workers);
    if clustered {
        crate::cluster::stop_when_a_process_is_lost(process);
        tracing::info!(
            process,
            processes = layout.processes,
            workers,
            "connecting to the cluster"
        );
    }
    let plan = worker::WorkerPlan {
        first,
        leader,
        clustered,
        layout,
        metrics: metrics.clone(),
        registry,
        shutdown: shutdown.clone(),
        input_names: input_names.clone(),
        source: source.clone(),
        restores: Mutex::new(worker_restores),
        inputs_restored: Arc::new(inputs_restored),
        hub: hub.clone(),
        idle_timeout: spec.time.idle_timeout.0,
        batch: opts.batch.unwrap_or(4096).max(1),
        lateness,
        timeline: timeline_cfg,
        vehicles: vehicles.clone(),
        geofences: geofences.clone(),
        fence_index,
        latest_change,
        dwell_after,
        change_rx,
        uploader: uploader.clone(),
        sink: sink_cfg,
        capture: opts.capture.clone(),
        ops_per_worker,
        resumed,
        serve_until: serve_until.clone(),
    };
    let guards = timely::execute(config, move |worker| worker::build(worker, &plan))
        .map_err(|e| anyhow!("starting workers: {e}"))?;
    // In a cluster, `execute` returns once every process is connected.
    let startup = started.elapsed();
    let results = match &serve_until {
        None => guards.join(),
        Some(_) => serve_until_interrupted(guards, &metrics, &datasets, &hub, &shutdown, started),
    };
    geofences.close();
    done.store(true, Relaxed);
    if let Some(t) = progress_thread {
        let _ = t.join();
    }
    let committed = settle(
        results,
        &coordinator_stop,
        coordinator_thread,
        &uploader,
        &hub,
    )?;

    let summary = Summary::collect(
        &metrics,
        &datasets,
        started,
        startup,
        committed.map(|c| (c.seq, c.clock)),
    );
    if opts.serve && serve_until.is_none() && api_task.is_some() && !shutdown.load(Relaxed) {
        eprintln!("{summary}input done; serving the API until interrupted");
        while !shutdown.load(Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // notify_one keeps a permit, so the server stops even if it was not waiting yet.
    api_stop.notify_one();
    if let Some(task) = api_task {
        let _ =
            runtime.block_on(async { tokio::time::timeout(Duration::from_secs(5), task).await });
    }
    runtime.shutdown_timeout(Duration::from_secs(5));
    Ok(RunResult {
        summary,
        vehicles,
        geofences,
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
