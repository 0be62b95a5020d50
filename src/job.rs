//! Running one job: wiring sources, the core dataflow, the lake sink and the API.

use anyhow::{anyhow, Context};
use differential_dataflow::AsCollection;
use fleetflow_connectors::file::{list_files, FileSource};
use fleetflow_connectors::generator::{registry_rows, Generator};
use fleetflow_connectors::kafka::{self, KafkaSource};
use fleetflow_connectors::source::{self, render_source, IntakeContext, Source};
use fleetflow_dataflows::cluster::{drop_replaced, mirror, Layout};
use fleetflow_dataflows::geofence as geofence_op;
use fleetflow_dataflows::geofence::{
    render_geofence_input, render_geofences, FenceIndex, ViewBatch, ViewSink, ViewUpdate,
};
use fleetflow_dataflows::operator::{render_timeline, CoreConfig};
use fleetflow_dataflows::publish::publish;
use fleetflow_dataflows::timeline::{Silence, TimelineConfig};
use fleetflow_query_api::changes::ChangeLog;
use fleetflow_query_api::geofences::GeofenceView;
use fleetflow_query_api::lake_routes::LakeAccess;
use fleetflow_query_api::stream::StreamConfig;
use fleetflow_query_api::view::VehicleView;
use fleetflow_query_api::ApiState;
use fleetflow_sinks::commit::{clean_staging, read_checkpoint, recover, Coordinator, DatasetInfo};
use fleetflow_sinks::lake::{Lake, Uploader};
use fleetflow_sinks::writer::{render_lake_sink, Partitioning, RollPolicy, SinkConfig};
use fleetflow_types::checkpoint::{Blob, Hub, Participant};
use fleetflow_types::config::{JobSpec, SourceSpec, SpecError};
use fleetflow_types::fix::Fix;
use fleetflow_types::metrics::Metrics;
use fleetflow_types::records::{
    DeadLetter, GeofenceChange, GeofenceEvent, Reason, TierRow, VehicleState, VehicleStateWire,
};
use fleetflow_types::registry::VehicleRegistry;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Concat, Inspect, Probe};

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

/// What a run did.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Events read.
    pub events: u64,
    /// Fixes accepted.
    pub accepted: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Dead letters per reason.
    pub dead_letters: Vec<(Reason, u64)>,
    /// Optional fields dropped (of the wrong type or out of range), per field.
    pub dropped_fields: Vec<(String, u64)>,
    /// Rows written per dataset.
    pub rows: Vec<(String, u64)>,
    /// Files written.
    pub files: u64,
    /// Bytes uploaded to the lake: published files, staged chunks, merged and compacted
    /// files (so at least the lake's size).
    pub uploaded: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Of which start-up: reading the spec, registry and geofences, binding the API,
    /// building the geofence index, connecting the cluster, until the workers start.
    pub startup: Duration,
    /// Peak resident memory, bytes (Linux).
    pub peak_rss: Option<u64>,
    /// The final job clock.
    pub clock: Option<i64>,
    /// Median time from reading an event to its state being visible in the API, ms.
    pub latency_p50_ms: Option<u64>,
    /// 99th percentile of the same.
    pub latency_p99_ms: Option<u64>,
    /// Kafka message timestamp -> read, p50 and p99 (ms), when the source is Kafka.
    pub delivery_ms: Option<(u64, u64)>,
    /// The last committed checkpoint: its sequence number and job clock.
    pub checkpoint: Option<(u64, Option<i64>)>,
}

impl Summary {
    /// Events per second of wall time.
    pub fn events_per_s(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "events      {} in {:.2}s ({:.0} events/s)",
            self.events,
            self.elapsed.as_secs_f64(),
            self.events_per_s()
        )?;
        writeln!(
            f,
            "startup     {:.2}s (then {:.0} events/s)",
            self.startup.as_secs_f64(),
            self.events as f64 / (self.elapsed - self.startup).as_secs_f64().max(1e-9)
        )?;
        writeln!(f, "accepted    {}", self.accepted)?;
        writeln!(f, "duplicates  {}", self.duplicates)?;
        let dl: Vec<String> = self
            .dead_letters
            .iter()
            .map(|(r, n)| format!("{}={n}", r.as_str()))
            .collect();
        writeln!(f, "dead        {}", dl.join(" "))?;
        let dropped: Vec<String> = self
            .dropped_fields
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(field, n)| format!("{field}={n}"))
            .collect();
        if !dropped.is_empty() {
            writeln!(
                f,
                "dropped     {} (fields of the wrong type or out of range; the fixes were kept)",
                dropped.join(" ")
            )?;
        }
        let rows: Vec<String> = self.rows.iter().map(|(d, n)| format!("{d}={n}")).collect();
        writeln!(f, "rows        {}", rows.join(" "))?;
        writeln!(f, "files       {}", self.files)?;
        writeln!(f, "uploaded    {} bytes", self.uploaded)?;
        if let Some(w) = self.clock {
            writeln!(
                f,
                "job clock   {} ({})",
                w,
                fleetflow_types::time::rfc3339(w)
            )?;
        }
        if let Some((p50, p99)) = self.delivery_ms {
            writeln!(
                f,
                "delivery    p50 {p50} ms, p99 {p99} ms (Kafka message timestamp -> read)"
            )?;
        }
        if let (Some(p50), Some(p99)) = (self.latency_p50_ms, self.latency_p99_ms) {
            writeln!(
                f,
                "latency     p50 {p50} ms, p99 {p99} ms (read -> visible in the API)"
            )?;
        }
        if let Some((seq, w)) = self.checkpoint {
            writeln!(
                f,
                "checkpoint  {seq} (job clock {})",
                w.map_or("none".into(), fleetflow_types::time::rfc3339)
            )?;
        }
        if let Some(rss) = self.peak_rss {
            writeln!(f, "peak rss    {:.1} MiB", rss as f64 / (1024.0 * 1024.0))?;
        }
        Ok(())
    }
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

/// Peak resident set size of this process, from `/proc/self/status`.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Loads `[geofences].path`: rejected features are logged and skipped, an unreadable or
/// non-GeoJSON file is a spec error.
fn load_geofences(
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

enum Inputs {
    Files(Vec<PathBuf>),
    Generator(fleetflow_types::config::GeneratorSpec),
    Kafka(fleetflow_types::config::KafkaSourceSpec, kafka::TopicInfo),
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
    // Exactly once: resume from the lake's newest checkpoint, after finishing its commit
    // and removing what later, uncommitted work left behind.
    // In a cluster the leader does this for every process, before the cluster connects (so
    // that no process's new files are taken for leftovers); the others only read the state.
    let recovered = if leader {
        recover(&lake, runtime.handle())
    } else {
        read_checkpoint(&lake, runtime.handle())
    }
    .context("recovering the lake's checkpoint")?;
    if let Some(r) = &recovered {
        if r.commit.inputs != input_names {
            return Err(spec_error(
                text,
                "lake",
                "url",
                format!(
                    "{} holds the checkpoints of a job with other inputs ({} from {:?}); point the job at a new lake",
                    spec.lake.url,
                    r.commit.inputs.len(),
                    r.commit.inputs.first().map(String::as_str).unwrap_or("")
                ),
            ));
        }
        tracing::info!(
            checkpoint = r.commit.seq,
            clock = ?r.commit.clock.map(fleetflow_types::time::rfc3339),
            "resuming from the lake's checkpoint"
        );
    }
    let keep: std::collections::BTreeSet<String> = recovered
        .as_ref()
        .map(|r| r.commit.staged.iter().cloned().collect())
        .unwrap_or_default();
    let cleaned = if leader {
        clean_staging(&lake, runtime.handle(), &keep).context("cleaning the lake's staging area")?
    } else {
        0
    };
    if cleaned > 0 {
        tracing::info!(cleaned, "removed uncommitted staged files and uploads");
    }
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
    let tiers = spec.lake.window_tiers();
    let mut datasets: Vec<String> = Vec::new();
    if spec.lake.has_raw() {
        datasets.push("raw".into());
    }
    datasets.extend(tiers.iter().map(|t| t.name.clone()));
    datasets.push("dead_letter".into());
    datasets.push("geofence_events".into());
    let metrics = Arc::new(Metrics::new(datasets.clone()).with_inputs(&input_names));
    if let Some(w) = recovered.as_ref().and_then(|r| r.commit.clock) {
        // The lake already holds the last run's results through its last commit.
        metrics.lake_clock.fetch_max(w, Relaxed);
    }
    let registry = Arc::new(registry);
    let input_names = Arc::new(input_names);
    let changes = Arc::new(ChangeLog::new(
        spec.api.replay_buffer,
        fleetflow_types::time::now_ms().max(0) as u64,
    ));
    // One shard per worker of the cluster: in a cluster every process mirrors them all.
    let vehicles = Arc::new(VehicleView::new(peers).with_changes(changes.clone()));
    // Runtime geofence changes: the API sends, worker 0 receives (so in a cluster, only
    // process 0 takes them; the others follow what the dataflow applies).
    let (change_tx, change_rx) = std::sync::mpsc::channel::<GeofenceChange>();
    let change_rx = Arc::new(Mutex::new(change_rx));
    let mut geo_view = GeofenceView::new(peers, &initial_geofences, leader.then_some(change_tx))
        .continuing_after(latest_change)
        .with_changes(changes.clone());
    if let Some(c) = opts.cluster.as_ref().filter(|_| !leader) {
        geo_view = geo_view.follow(format!(
            "geofence changes are taken by process 0 of the cluster ({}); this is process {}",
            c.hosts[0], c.index
        ));
    }
    let geofences = Arc::new(geo_view);
    let shutdown = opts.shutdown.clone().unwrap_or_default();

    let uploader = Uploader::new(lake.clone(), runtime.handle().clone(), metrics.clone());

    // Signals: SIGINT / SIGTERM interrupt the job.
    {
        let shutdown = shutdown.clone();
        runtime.spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            let term = async move {
                match term.as_mut() {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term => {} }
            tracing::info!("interrupted: stopping sources");
            shutdown.store(true, Relaxed);
        });
    }

    // The API.
    let api_stop = Arc::new(tokio::sync::Notify::new());
    let listen = match &opts.listen {
        Some(l) => l.clone(),
        None => Some(spec.api.listen.clone()),
    };
    let api_task = match listen {
        Some(addr) => {
            let listener = runtime
                .block_on(tokio::net::TcpListener::bind(&addr))
                .with_context(|| format!("api.listen: cannot bind {addr}"))?;
            match listener.local_addr() {
                Ok(local) => tracing::info!("query API listening on http://{local}"),
                Err(e) => tracing::warn!(error = %e, "query API listening on an unknown address"),
            }
            let state = ApiState::new(
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
            .with_lake(LakeAccess::new(
                lake.clone(),
                spec.lake.has_raw(),
                spec.lake
                    .window_tiers()
                    .into_iter()
                    .map(|t| (t.name, t.size_ms)),
            ));
            let stop = api_stop.clone();
            Some(
                runtime.spawn(fleetflow_query_api::serve(listener, state, async move {
                    stop.notified().await
                })),
            )
        }
        None => None,
    };

    // Progress.
    let total_bytes: u64 = match &inputs {
        Inputs::Files(files) => files
            .iter()
            .filter_map(|f| std::fs::metadata(f).ok())
            .map(|m| m.len())
            .sum(),
        Inputs::Generator(_) | Inputs::Kafka(..) => 0,
    };
    let done = Arc::new(AtomicBool::new(false));
    let progress_thread = opts.progress.then(|| {
        let metrics = metrics.clone();
        let done = done.clone();
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
    });

    // The dataflow, on every worker.
    // Bounded inputs end, and their end makes everything final; on live ones, silence does.
    let bounded = match &inputs {
        Inputs::Files(_) => true,
        Inputs::Generator(g) => g.duration.is_some(),
        Inputs::Kafka(k, _) => k.bounded,
    };
    let lateness = spec.time.allowed_lateness.millis();
    let timeline_cfg = TimelineConfig {
        lateness,
        silence: (!bounded).then_some(Silence {
            quiet_after: lateness,
            close_after: spec.time.close_silent_after.millis(),
        }),
        vote_for: (!bounded).then_some(spec.time.idle_timeout.millis() as u64),
        offline_after: spec.time.offline_after.millis(),
        tiers: tiers.iter().map(|t| t.size_ms).collect(),
        raw: spec.lake.has_raw(),
        finals: true,
    };
    let target_bytes = spec.lake.target_file_bytes();
    let sink_cfg = SinkConfig {
        raw: spec.lake.has_raw(),
        tiers: tiers.clone(),
        prefix: format!("part-{}", fleetflow_types::time::now_ms()),
        roll: RollPolicy {
            target_bytes,
            max_age: spec.lake.max_file_age.0,
        },
        dead_letter_out,
    };
    let idle_timeout = spec.time.idle_timeout.0;
    let batch = opts.batch.unwrap_or(4096).max(1);
    let capture = opts.capture.clone();
    // Kafka consumers are created here, one per worker, so that a bad client
    // configuration is one error before the workers start; each worker takes its own.
    let kafka_sources: Mutex<Vec<Option<KafkaSource>>> = Mutex::new(match &inputs {
        Inputs::Kafka(k, info) => (first..first + workers)
            .map(|w| KafkaSource::new(k, &spec.name, info, w, peers, metrics.clone()).map(Some))
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow!(e))?,
        _ => Vec::new(),
    });
    let inputs = Arc::new(inputs);
    let ctx_base = (
        metrics.clone(),
        registry.clone(),
        shutdown.clone(),
        input_names.clone(),
    );
    let view = vehicles.clone();
    let geo_view = geofences.clone();
    // Built once, shared by the workers until a runtime change (copy on write).
    let fence_index = Arc::new(FenceIndex::new(initial_geofences.iter().cloned()));
    // Checkpoints: every stateful operator of every worker takes part.
    let participants: Vec<(String, usize)> = (0..peers)
        .flat_map(|w| {
            [
                fleetflow_connectors::source::SNAPSHOT_OP,
                fleetflow_dataflows::operator::SNAPSHOT_OP,
                geofence_op::SNAPSHOT_OP,
                fleetflow_sinks::writer::SNAPSHOT_OP,
            ]
            .map(|op| (op.to_string(), w))
        })
        .collect();
    let ops_per_worker = participants.len() / peers;
    let resumed = recovered.as_ref().map_or(0, |r| r.commit.seq);
    let boundary = recovered.as_ref().map_or(0, |r| r.commit.boundary);
    let interval = spec.lake.checkpoint_interval.millis() as u64;
    let hub = Arc::new(if leader {
        Hub::new(interval, participants, boundary)
    } else {
        Hub::relay(interval, boundary)
    });
    let coordinator_stop = Arc::new(AtomicBool::new(false));
    // Only the leader commits; a follower's pieces reach it through the dataflow.
    let coordinator_thread = if leader {
        let coordinator = Coordinator {
            lake: lake.clone(),
            hub: hub.clone(),
            uploader: uploader.fork(),
            metrics: metrics.clone(),
            datasets: datasets
                .iter()
                .map(|name| DatasetInfo {
                    name: name.clone(),
                    partitioning: match name.as_str() {
                        "raw" => Partitioning::Hour,
                        "dead_letter" | "geofence_events" => Partitioning::Day,
                        t => Partitioning::for_window(
                            tiers
                                .iter()
                                .find(|x| x.name == t)
                                .map_or(60_000, |x| x.size_ms),
                        ),
                    },
                    retention: spec.lake.retention.get(name).map(|r| r.millis()),
                })
                .collect(),
            job: (spec.name.clone(), input_names.to_vec()),
            target_bytes,
            previous: recovered.as_ref().map(|r| r.commit.clone()),
            on_commit: match &*inputs {
                Inputs::Kafka(k, _) => {
                    let committer =
                        kafka::OffsetCommitter::new(k, &spec.name).map_err(|e| anyhow!(e))?;
                    Some(Box::new(
                        move |_: &fleetflow_sinks::commit::Commit,
                              pieces: &[(Participant, Blob)]| {
                            // The sources' pieces (small, one chunk each).
                            let sources: Vec<(Participant, Vec<u8>)> = pieces
                                .iter()
                                .filter(|((op, _), _)| op == source::SNAPSHOT_OP)
                                .map(|(p, b)| (p.clone(), b.contiguous().into_owned()))
                                .collect();
                            match crate::restore::input_snapshots(&sources) {
                                Ok(inputs) => committer.commit(
                                    &inputs
                                        .iter()
                                        .filter(|i| i.position.0 != u64::MAX)
                                        .map(|i| (i.input as i32, i.position.0 as i64))
                                        .collect::<Vec<_>>(),
                                ),
                                Err(e) => {
                                    tracing::warn!(error = %e, "offsets not committed to the group")
                                }
                            }
                        },
                    ) as fleetflow_sinks::commit::OnCommit)
                }
                _ => None,
            },
        };
        let stop = coordinator_stop.clone();
        Some(
            std::thread::Builder::new()
                .name("fleetflow-commit".into())
                .spawn(move || coordinator.run(stop))
                .context("starting the checkpoint coordinator")?,
        )
    } else {
        None
    };
    // This process's workers' shares of the restored state.
    let (inputs_restored, worker_restores) = match restored {
        Some(r) => (
            r.inputs,
            r.workers
                .into_iter()
                .skip(first)
                .take(workers)
                .map(Some)
                .collect(),
        ),
        None => (Vec::new(), (0..workers).map(|_| None).collect()),
    };
    let inputs_restored = Arc::new(inputs_restored);
    let worker_restores: Mutex<Vec<Option<crate::restore::WorkerRestore>>> =
        Mutex::new(worker_restores);
    let uploader_w = uploader.clone();
    let hub_w = hub.clone();
    let config = match &opts.cluster {
        Some(c) if clustered => timely::Config {
            communication: timely::CommunicationConfig::Cluster {
                threads: workers,
                process: c.index,
                addresses: c.hosts.clone(),
                report: false,
                zerocopy: false,
            },
            worker: timely::WorkerConfig::default(),
        },
        _ => timely::Config::process(workers),
    };
    if clustered {
        crate::cluster::stop_when_a_process_is_lost(process);
        tracing::info!(
            process,
            processes = layout.processes,
            workers,
            "connecting to the cluster"
        );
    }
    let guards = timely::execute(config, move |worker| {
        crate::slow::log_slow_operators(worker);
        let index = worker.index();
        let peers = worker.peers();
        let local = index - first;
        let (metrics, registry, shutdown, input_names) = ctx_base.clone();
        let metrics_w = metrics.clone();
        let probe = timely::dataflow::ProbeHandle::new();
        let source: Box<dyn Source> = match &*inputs {
            Inputs::Files(files) => Box::new(FileSource::new(files, index, peers)),
            Inputs::Generator(g) => Box::new(Generator::new(g, index as u32, peers as u32)),
            Inputs::Kafka(..) => Box::new(
                kafka_sources.lock().expect("sources lock")[local]
                    .take()
                    .expect("one kafka source per worker"),
            ),
        };
        // This worker's share of the restored state.
        let share = worker_restores.lock().expect("restore lock")[local]
            .take()
            .unwrap_or_default();
        let hub = hub_w.clone();
        let ctx = IntakeContext {
            metrics: metrics.clone(),
            registry: registry.clone(),
            idle_timeout,
            shutdown,
            input_names: input_names.clone(),
            budget: batch,
            backpressure: Some((probe.clone(), 20)),
            checkpoints: Some((hub.clone(), inputs_restored.clone())),
            align_slack: lateness / 4,
        };
        let core_cfg = CoreConfig {
            timeline: timeline_cfg.clone(),
            registry,
            metrics,
            input_names,
            publish_every: Duration::from_millis(10),
            clock_every: Duration::from_millis(10),
            checkpoints: Some(hub.clone()),
            restore: share.timeline,
        };
        let view = view.clone();
        let geo_view = geo_view.clone();
        let fence_index = fence_index.clone();
        let change_rx = change_rx.clone();
        let uploader = uploader_w.clone();
        let sink_cfg = sink_cfg.clone();
        let capture = capture.clone();
        if clustered {
            crate::cluster::render_checkpoint_transport(
                worker,
                hub.clone(),
                ops_per_worker,
                resumed,
            );
        }
        worker.dataflow::<u64, _, _>(move |scope| {
            let source = render_source(scope, "locations", source, ctx);
            let clock_now = metrics_w.clone();
            let mut changes =
                render_geofence_input(source.reports.clone(), Some(change_rx), move || {
                    clock_now.clock()
                });
            if clustered {
                // A follower's catalogue follows the changes process 0 took. (Every worker
                // builds the same operators: timely matches them across workers by position.)
                let catalog = (!leader && local == 0).then(|| geo_view.clone());
                changes = changes.inspect(move |c| {
                    if let Some(catalog) = &catalog {
                        catalog.follow_change(c)
                    }
                });
            }
            let core = render_timeline(source.fixes, source.reports, changes, core_cfg);
            let geo_sink = geo_view.clone();
            let apply_geo = move |worker: usize,
                                  updates: &mut Vec<(ViewUpdate, isize)>,
                                  events: &[GeofenceEvent]| {
                let (mut occ, mut applied) = (Vec::new(), Vec::new());
                let mut as_of = None;
                for (u, _) in updates.drain(..) {
                    match u {
                        ViewUpdate::Occupant(o) => occ.push(o),
                        ViewUpdate::Applied { seq, at } => applied.push((seq, at)),
                        ViewUpdate::AsOf(w) => as_of = Some(w),
                    }
                }
                geo_sink.apply(worker, occ, events, applied, as_of);
            };
            let (events, batches) = if clustered {
                render_geofences(
                    core.finals,
                    (fence_index, latest_change),
                    dwell_after,
                    Some((hub.clone(), share.geo)),
                    ViewSink::<fn(&mut Vec<(ViewUpdate, isize)>, &[GeofenceEvent])>::Stream,
                )
            } else {
                let apply_geo = apply_geo.clone();
                render_geofences(
                    core.finals,
                    (fence_index, latest_change),
                    dwell_after,
                    Some((hub.clone(), share.geo)),
                    ViewSink::Local(
                        move |updates: &mut Vec<(ViewUpdate, isize)>, events: &[GeofenceEvent]| {
                            apply_geo(index, updates, events)
                        },
                    ),
                )
            };
            if clustered {
                // Every worker's geofence results, to one worker of every process.
                let apply_geo = apply_geo;
                mirror(batches, layout).inspect(move |(w, batch): &(u32, ViewBatch)| {
                    let mut updates = batch.updates.clone();
                    apply_geo(*w as usize, &mut updates, &batch.events);
                });
            }
            let dead = source.dead_letters.concat(core.dead_letters);
            let (mut raw, mut rows, mut dead, mut events) = (core.raw, core.rows, dead, events);
            if let Some(cap) = capture {
                let (c1, c2, c3, c4) = (cap.clone(), cap.clone(), cap.clone(), cap);
                raw = raw.inspect(move |f| c1.lock().expect("capture").raw.push(f.clone()));
                rows = rows.inspect(move |r| c2.lock().expect("capture").rows.push(r.clone()));
                dead = dead.inspect(move |d| c3.lock().expect("capture").dead.push(d.clone()));
                events = events
                    .inspect(move |e| c4.lock().expect("capture").geofence_events.push(e.clone()));
            }
            // The API view applies the timeline's exact retract/insert pairs; the arranged
            // form (`publish::arrange_state`) is for dataflow consumers that join with it.
            let progress = core.progress.probe_with(&probe);
            let latency_metrics = metrics_w.clone();
            let record_latency = move |fresh: usize, epoch: Option<u64>| {
                // Epoch 0 is the sources' first read, before their clocks started: no
                // processing time to measure from.
                if let Some(e) = epoch.filter(|e| fresh > 0 && *e > 0) {
                    let lag = (fleetflow_types::time::now_ms() as u64).saturating_sub(e);
                    latency_metrics.visibility_latency.record(lag, fresh as u64);
                }
            };
            if clustered {
                // Every worker's state changes and progress, to one worker of every process;
                // this worker applies the shards of the workers with its local index.
                let wire = drop_replaced(core.state.inner)
                    .map(|((id, s), t, r)| ((id, VehicleStateWire::from(s)), t, r));
                let state = mirror(wire, layout)
                    .map(|(w, ((id, s), t, r))| ((w, (id, VehicleState::from(s))), t, r))
                    .as_collection();
                let mirrored_progress = mirror(progress.clone(), layout).map(|(_, p)| p);
                let (view, geo_view) = (view.clone(), geo_view.clone());
                publish(
                    "VehicleState",
                    state,
                    mirrored_progress,
                    move |updates, ps, epoch| {
                        record_latency(updates.iter().filter(|(_, r)| *r > 0).count(), epoch);
                        let mut by_worker: std::collections::BTreeMap<u32, Vec<_>> =
                            std::collections::BTreeMap::new();
                        for ((w, d), r) in updates {
                            by_worker.entry(w).or_default().push((d, r));
                        }
                        for w in layout.siblings(index) {
                            let ups = by_worker.remove(&(w as u32)).unwrap_or_default();
                            let clock = ps.iter().find(|p| p.worker == w).map(|p| p.clock);
                            if !ups.is_empty() || clock.is_some() {
                                view.apply(w, ups, clock);
                                geo_view.advance(w, clock);
                            }
                        }
                    },
                );
            } else {
                publish(
                    "VehicleState",
                    core.state,
                    progress.clone(),
                    move |updates, ps, epoch| {
                        record_latency(updates.iter().filter(|(_, r)| *r > 0).count(), epoch);
                        let clock = ps.iter().map(|p| p.clock).max();
                        view.apply(index, updates, clock);
                        geo_view.advance(index, clock);
                    },
                );
            }
            render_lake_sink(
                raw,
                rows,
                dead,
                events,
                progress,
                sink_cfg,
                uploader.fork(),
                hub,
                share.sink,
            );
        });
    })
    .map_err(|e| anyhow!("starting workers: {e}"))?;
    // In a cluster, `execute` returns once every process is connected.
    let startup = started.elapsed();
    let results = guards.join();
    geofences.close();
    done.store(true, Relaxed);
    if let Some(t) = progress_thread {
        let _ = t.join();
    }
    let failed_worker = results.into_iter().find_map(|r| r.err());
    // The workers offered their final pieces; the coordinator commits them and stops (or
    // stops at once if a worker failed).
    if failed_worker.is_some() {
        coordinator_stop.store(true, Relaxed);
    }
    let committed = match coordinator_thread {
        Some(t) => t
            .join()
            .map_err(|_| anyhow!("the checkpoint coordinator panicked"))?,
        // A follower's checkpoints are committed by process 0.
        None => Ok(None),
    };
    if let Some(e) = failed_worker {
        return Err(anyhow!("a worker failed: {e}").into());
    }
    uploader.finish().context("writing the lake")?;
    if let Some(e) = hub.failure() {
        return Err(anyhow!("writing the lake: {e}").into());
    }
    let committed = committed.context("committing the lake's checkpoint")?;

    let r = Relaxed;
    let summary = Summary {
        events: metrics.events_in.load(r),
        accepted: metrics.accepted.load(r),
        duplicates: metrics.duplicates.load(r),
        dead_letters: Reason::ALL
            .iter()
            .map(|reason| (*reason, metrics.dead_letters_of(*reason)))
            .collect(),
        dropped_fields: fleetflow_types::metrics::OPTIONAL_FIELDS
            .iter()
            .map(|f| (f.to_string(), metrics.dropped_of(f)))
            .collect(),
        rows: datasets
            .iter()
            .map(|d| (d.clone(), metrics.rows_of(d)))
            .collect(),
        files: metrics.files_written.load(r),
        uploaded: metrics.bytes_written.load(r),
        elapsed: started.elapsed(),
        startup,
        peak_rss: peak_rss(),
        clock: metrics.clock(),
        latency_p50_ms: metrics.visibility_latency.quantile(0.5),
        latency_p99_ms: metrics.visibility_latency.quantile(0.99),
        delivery_ms: metrics
            .delivery_latency
            .quantile(0.5)
            .zip(metrics.delivery_latency.quantile(0.99)),
        checkpoint: committed.map(|c| (c.seq, c.clock)),
    };
    if opts.serve && api_task.is_some() && !shutdown.load(Relaxed) {
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
