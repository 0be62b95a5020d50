//! The phases of [`super::run_job`]: open what the job reads and writes, start the
//! services beside the dataflow, start the workers.

use super::services;
use super::setup::{self, load_geofences, open_error, open_source, show_progress};
use super::worker;
use super::{spec_error, JobError, RunOptions};
use crate::restore::Restored;
use anyhow::{anyhow, Context};
use fleetflow_connectors::registry::JobSource;
use fleetflow_dataflows::cluster::Layout;
use fleetflow_dataflows::geofence::{ChangeReceiver, FenceIndex};
use fleetflow_query_api::changes::ChangeLog;
use fleetflow_query_api::geofences::GeofenceView;
use fleetflow_query_api::lake_routes::LakeAccess;
use fleetflow_query_api::stream::StreamConfig;
use fleetflow_query_api::view::VehicleView;
use fleetflow_query_api::ApiState;
use fleetflow_runtime::checkpoint::Hub;
use fleetflow_runtime::metrics::Metrics;
use fleetflow_sinks::catalogue::Catalogue;
use fleetflow_sinks::commit::{Commit, Coordinator, Recovered};
use fleetflow_sinks::delta::DeltaTables;
use fleetflow_sinks::lake::{Lake, LakeError, Uploader};
use fleetflow_sinks::read::Snapshots;
use fleetflow_sinks::sink::SinkConfig;
use fleetflow_sinks::writer::RollPolicy;
use fleetflow_types::config::JobSpec;
use fleetflow_types::geofence::Geofence;
use fleetflow_types::records::DeadLetterOut;
use fleetflow_types::registry::VehicleRegistry;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// What a job opened before anything runs: where its workers are, its input, the lake and
/// what it recovered from it, the metrics and the API's views.
pub(super) struct Prepared {
    pub layout: Layout,
    /// This process's index in the cluster (0 alone).
    pub process: usize,
    /// Process 0 leads: it recovers the lake, commits checkpoints and takes geofence changes.
    pub leader: bool,
    pub source: Arc<dyn JobSource>,
    registry: VehicleRegistry,
    dead_letter_out: Option<Arc<dyn DeadLetterOut>>,
    pub input_names: Arc<Vec<String>>,
    initial_geofences: Vec<Arc<Geofence>>,
    dwell_after: i64,
    pub lake: Lake,
    pub runtime: tokio::runtime::Runtime,
    /// The API's socket, bound before the lake is touched (taken when the API starts).
    api_listener: std::sync::Mutex<Option<tokio::net::TcpListener>>,
    recovered: Option<Recovered>,
    restored: Option<Restored>,
    latest_change: u64,
    pub catalogue: Catalogue,
    /// The datasets' Delta tables (the lake's table committer).
    pub tables: Arc<DeltaTables>,
    pub datasets: Vec<String>,
    pub metrics: Arc<Metrics>,
    changes: Arc<ChangeLog>,
    pub vehicles: Arc<VehicleView>,
    pub geofences: Arc<GeofenceView>,
    change_rx: ChangeReceiver,
    pub shutdown: Arc<AtomicBool>,
    pub uploader: Uploader,
}

impl Prepared {
    /// Whether the job runs over several processes.
    pub fn clustered(&self) -> bool {
        self.layout.processes > 1
    }
}

/// Opens the job's input, geofences and lake, recovers the lake's last checkpoint and makes
/// the metrics and the API's views.
pub(super) fn prepare(spec: &JobSpec, text: &str, opts: &RunOptions) -> Result<Prepared, JobError> {
    spec.check_paths(text)?;
    let workers = opts.workers.unwrap_or(spec.workers).max(1);
    let layout = Layout {
        processes: opts.cluster.as_ref().map_or(1, |c| c.processes()),
        workers,
    };
    let process = opts.cluster.as_ref().map_or(0, |c| c.index);
    let leader = process == 0;
    let peers = layout.peers();
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
    // Before recovery changes the lake: a second run started by mistake on the address of
    // a running one stops here, not after cleaning the running job's staged files.
    let api_listener = std::sync::Mutex::new(services::bind_api(&runtime, spec, opts)?);
    // Exactly once: resume from the lake's newest checkpoint (see `recover_lake`).
    let catalogue = Catalogue::for_lake(&spec.lake);
    let tables = Arc::new(
        DeltaTables::new(&lake, catalogue.clone(), &spec.name)
            .map_err(|e| spec_error(text, "lake", "url", e.to_string()))?
            .with_vacuum_grace(spec.lake.vacuum_grace.0),
    );
    let recovered = services::recover_lake(
        (&lake, &*tables),
        runtime.handle(),
        leader,
        spec,
        text,
        &input_names,
    )?;
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
    let datasets = catalogue.names();
    let metrics = Arc::new(Metrics::new(datasets.clone()).with_inputs(&input_names));
    if let Some(w) = recovered.as_ref().and_then(|r| r.commit.clock) {
        // The lake already holds the last run's results through its last commit.
        metrics.lake_clock.fetch_max(w, Relaxed);
    }
    let (changes, vehicles, geofences, change_rx) =
        services::api_views(spec, opts, peers, leader, &initial_geofences, latest_change);
    let uploader = Uploader::new(lake.clone(), runtime.handle().clone(), metrics.clone());
    Ok(Prepared {
        layout,
        process,
        leader,
        source,
        registry,
        dead_letter_out,
        input_names: Arc::new(input_names),
        initial_geofences,
        dwell_after,
        lake,
        runtime,
        api_listener,
        recovered,
        restored,
        latest_change,
        catalogue,
        tables,
        datasets,
        metrics,
        changes,
        vehicles,
        geofences,
        change_rx,
        shutdown: opts.shutdown.clone().unwrap_or_default(),
        uploader,
    })
}

/// The services beside the dataflow: the API, the progress bar and the checkpoint hub with
/// its coordinator.
pub(super) struct Services {
    pub api_stop: Arc<tokio::sync::Notify>,
    pub api_task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// Set when the job is done (stops the progress bar).
    pub done: Arc<AtomicBool>,
    pub progress_thread: Option<JoinHandle<()>>,
    /// `--serve` after a bounded input keeps the dataflow alive on its geofence input until
    /// this is set, so that changes and their events go on (one process; a cluster serves
    /// its views as the input left them).
    pub serve_until: Option<Arc<AtomicBool>>,
    pub hub: Arc<Hub>,
    ops_per_worker: usize,
    pub coordinator_stop: Arc<AtomicBool>,
    pub coordinator_thread: Option<JoinHandle<Result<Option<Commit>, LakeError>>>,
}

/// Starts the API, the progress bar and (on the leader) the checkpoint coordinator.
pub(super) fn start_services(
    spec: &JobSpec,
    text: &str,
    opts: &RunOptions,
    job: &Prepared,
) -> Result<Services, JobError> {
    services::stop_on_signals(&job.runtime, job.shutdown.clone());
    let api_stop = Arc::new(tokio::sync::Notify::new());
    let state = ApiState::new(
        job.vehicles.clone(),
        job.geofences.clone(),
        job.metrics.clone(),
        job.changes.clone(),
        fleetflow_query_api::auth::from_spec(&spec.api.tokens, spec.api.rate_limit),
        StreamConfig {
            max_streams: spec.api.max_streams,
            queue: spec.api.stream_queue,
            ..StreamConfig::default()
        },
    )
    .with_lake(LakeAccess::new(
        Snapshots::new(&job.lake, job.catalogue.clone()).context("reading the lake's tables")?,
        &job.catalogue,
    ))
    .with_map_tiles(spec.api.map_tiles.as_deref());
    let listener = job.api_listener.lock().expect("not poisoned").take();
    let api_task = services::start_api(&job.runtime, listener, state, api_stop.clone());
    let done = Arc::new(AtomicBool::new(false));
    let progress_thread = opts
        .progress
        .then(|| show_progress(&*job.source, job.metrics.clone(), done.clone()));
    let serve_until =
        (opts.serve && job.source.bounded() && !job.clustered() && api_task.is_some())
            .then(|| job.shutdown.clone());
    // Kafka consumers are created here, one per worker, so that a bad client
    // configuration is one error before the workers start; each worker takes its own.
    let (peers, first) = (job.layout.peers(), job.layout.global(job.process, 0));
    job.source
        .prepare(first..first + job.layout.workers, peers, &job.metrics)
        .map_err(|e| open_error(text, e))?;
    let boundary = job.recovered.as_ref().map_or(0, |r| r.commit.boundary);
    let (hub, ops_per_worker) = services::checkpoint_hub(spec, peers, job.leader, boundary);
    let coordinator_stop = Arc::new(AtomicBool::new(false));
    // Only the leader commits; a follower's pieces reach it through the dataflow.
    let coordinator_thread = if job.leader {
        let on_commit = job
            .source
            .committer(&spec.name)
            .map_err(|e| open_error(text, e))?;
        Some(services::start_coordinator(
            Coordinator {
                lake: job.lake.clone(),
                hub: hub.clone(),
                uploader: job.uploader.fork(),
                metrics: job.metrics.clone(),
                datasets: job.catalogue.clone(),
                tables: job.tables.clone(),
                job: (spec.name.clone(), job.input_names.to_vec()),
                target_bytes: spec.lake.target_file_bytes(),
                previous: job.recovered.as_ref().map(|r| r.commit.clone()),
                on_commit: on_commit.map(|c| {
                    let recovered = job.recovered.as_ref().map(|r| &r.pieces[..]);
                    services::commit_positions(c, recovered)
                }),
            },
            coordinator_stop.clone(),
        )?)
    } else {
        None
    };
    Ok(Services {
        api_stop,
        api_task,
        done,
        progress_thread,
        serve_until,
        hub,
        ops_per_worker,
        coordinator_stop,
        coordinator_thread,
    })
}

/// Starts the dataflow on every worker of this process; in a cluster, returns once every
/// process is connected.
pub(super) fn start_workers(
    spec: &JobSpec,
    opts: &RunOptions,
    job: &mut Prepared,
    services: &Services,
) -> Result<timely::communication::WorkerGuards<()>, JobError> {
    let (layout, clustered) = (job.layout, job.clustered());
    let first = layout.global(job.process, 0);
    let catalogue = &job.catalogue;
    // Bounded inputs end, and their end makes everything final; on live ones, silence does.
    let timeline = setup::timeline_config(
        spec,
        catalogue,
        job.source.bounded(),
        job.source.replayable(),
    );
    let sink = SinkConfig {
        datasets: catalogue.clone(),
        prefix: format!("part-{}", fleetflow_types::time::now_ms()),
        roll: RollPolicy {
            target_bytes: spec.lake.target_file_bytes(),
            max_age: spec.lake.max_file_age.0,
        },
        dead_letter_out: job.dead_letter_out.take(),
    };
    // Built once, shared by the workers until a runtime change (copy on write).
    let fence_index = Arc::new(FenceIndex::new(job.initial_geofences.iter().cloned()));
    // This process's workers' shares of the restored state.
    let (inputs_restored, worker_restores) =
        crate::restore::local_shares(job.restored.take(), first, layout.workers);
    let config =
        crate::cluster::timely_config(opts.cluster.as_ref().filter(|_| clustered), layout.workers);
    if clustered {
        crate::cluster::stop_when_a_process_is_lost(job.process);
        tracing::info!(
            process = job.process,
            processes = layout.processes,
            workers = layout.workers,
            "connecting to the cluster"
        );
    }
    let plan = worker::WorkerPlan {
        first,
        leader: job.leader,
        clustered,
        layout,
        metrics: job.metrics.clone(),
        registry: Arc::new(std::mem::take(&mut job.registry)),
        shutdown: job.shutdown.clone(),
        input_names: job.input_names.clone(),
        source: job.source.clone(),
        restores: Mutex::new(worker_restores),
        inputs_restored: Arc::new(inputs_restored),
        hub: services.hub.clone(),
        idle_timeout: spec.time.idle_timeout.0,
        batch: opts.batch.unwrap_or(4096).max(1),
        lateness: spec.time.allowed_lateness.millis(),
        timeline,
        vehicles: job.vehicles.clone(),
        geofences: job.geofences.clone(),
        fence_index,
        latest_change: job.latest_change,
        dwell_after: job.dwell_after,
        change_rx: job.change_rx.clone(),
        uploader: job.uploader.clone(),
        sink,
        capture: opts.capture.clone(),
        ops_per_worker: services.ops_per_worker,
        resumed: job.recovered.as_ref().map_or(0, |r| r.commit.seq),
        serve_until: services.serve_until.clone(),
    };
    timely::execute(config, move |worker| worker::build(worker, &plan))
        .map_err(|e| anyhow!("starting workers: {e}").into())
}
