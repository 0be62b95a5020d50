//! The services around a job's dataflow: recovering the lake, signals, the API server and
//! committing the source's positions after each checkpoint.

use super::{spec_error, JobError, RunOptions};
use anyhow::Context;
use fleetflow_connectors::registry::PositionCommitter;
use fleetflow_connectors::source;
use fleetflow_dataflows::geofence::ChangeReceiver;
use fleetflow_query_api::changes::ChangeLog;
use fleetflow_query_api::geofences::GeofenceView;
use fleetflow_query_api::view::VehicleView;
use fleetflow_query_api::ApiState;
use fleetflow_runtime::checkpoint::{Blob, Hub, Participant};
use fleetflow_sinks::commit::{
    clean_staging, read_checkpoint, recover, Commit, Coordinator, OnCommit, Recovered,
};
use fleetflow_sinks::lake::Lake;
use fleetflow_sinks::lake::LakeError;
use fleetflow_sinks::table::TableCommitter;
use fleetflow_types::config::JobSpec;
use fleetflow_types::geofence::Geofence;
use fleetflow_types::records::GeofenceChange;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Exactly once: resumes from the lake's newest checkpoint, after finishing its commit and
/// removing what later, uncommitted work left behind. In a cluster the leader does this for
/// every process, before the cluster connects (so that no process's new files are taken
/// for leftovers); the others only read the state. A lake of a job with other inputs is a
/// spec error.
pub(super) fn recover_lake(
    (lake, tables): (&Lake, &dyn TableCommitter),
    runtime: &tokio::runtime::Handle,
    leader: bool,
    spec: &JobSpec,
    text: &str,
    input_names: &[String],
) -> Result<Option<Recovered>, JobError> {
    let recovered = if leader {
        recover(lake, runtime, tables)
    } else {
        read_checkpoint(lake, runtime)
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
        clean_staging(lake, runtime, &keep).context("cleaning the lake's staging area")?
    } else {
        0
    };
    if cleaned > 0 {
        tracing::info!(cleaned, "removed uncommitted staged files and uploads");
    }
    Ok(recovered)
}

/// SIGINT / SIGTERM set `shutdown`, which stops the sources.
pub(super) fn stop_on_signals(runtime: &tokio::runtime::Runtime, shutdown: Arc<AtomicBool>) {
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

/// Binds `[api].listen` (or the options' address), if any.
pub(super) fn bind_api(
    runtime: &tokio::runtime::Runtime,
    spec: &JobSpec,
    opts: &RunOptions,
) -> Result<Option<tokio::net::TcpListener>, JobError> {
    let listen = match &opts.listen {
        Some(l) => l.clone(),
        None => Some(spec.api.listen.clone()),
    };
    let Some(addr) = listen else {
        return Ok(None);
    };
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(&addr))
        .with_context(|| format!("api.listen: cannot bind {addr}"))?;
    Ok(Some(listener))
}

/// Serves the API on `listener` (bound by [`bind_api`]) until `stop` is notified.
pub(super) fn start_api(
    runtime: &tokio::runtime::Runtime,
    listener: Option<tokio::net::TcpListener>,
    state: ApiState,
    stop: Arc<tokio::sync::Notify>,
) -> Option<tokio::task::JoinHandle<std::io::Result<()>>> {
    let listener = listener?;
    match listener.local_addr() {
        Ok(local) => tracing::info!("query API listening on http://{local}"),
        Err(e) => tracing::warn!(error = %e, "query API listening on an unknown address"),
    }
    Some(
        runtime.spawn(fleetflow_query_api::serve(listener, state, async move {
            stop.notified().await
        })),
    )
}

/// Hands the sources' positions in a checkpoint's `pieces` to `committer` (a Kafka
/// consumer group's offsets).
fn commit_sources(committer: &mut PositionCommitter, pieces: &[(Participant, Vec<u8>)]) {
    match crate::restore::input_snapshots(pieces) {
        Ok(inputs) => committer(
            &inputs
                .iter()
                .filter(|i| i.position.0 != u64::MAX)
                .map(|i| (i.input, i.position.0))
                .collect::<Vec<_>>(),
        ),
        Err(e) => tracing::warn!(error = %e, "positions not committed"),
    }
}

/// After each checkpoint, hands the sources' positions to `committer`; first those of the
/// checkpoint the job resumed from, `recovered` (a run killed between its lake commit and
/// the group's, or one that resumes at the end of its input and commits nothing new, still
/// leaves the group at the lake's positions).
pub(super) fn commit_positions(
    mut committer: PositionCommitter,
    recovered: Option<&[(Participant, Vec<u8>)]>,
) -> OnCommit {
    if let Some(pieces) = recovered {
        commit_sources(&mut committer, pieces);
    }
    Box::new(
        move |_: &fleetflow_sinks::commit::Commit, pieces: &[(Participant, Blob)]| {
            // The sources' pieces (small, one chunk each).
            let sources: Vec<(Participant, Vec<u8>)> = pieces
                .iter()
                .filter(|((op, _), _)| op == source::SNAPSHOT_OP)
                .map(|(p, b)| (p.clone(), b.contiguous().into_owned()))
                .collect();
            commit_sources(&mut committer, &sources);
        },
    )
}

/// The API's views and the change log they feed: one shard per worker of the cluster (in
/// a cluster every process mirrors them all). Runtime geofence changes: the API sends,
/// worker 0 receives (so in a cluster only process 0 takes them; the others follow what
/// the dataflow applies).
pub(super) fn api_views(
    spec: &JobSpec,
    opts: &RunOptions,
    peers: usize,
    leader: bool,
    geofences: &[Arc<Geofence>],
    latest_change: u64,
) -> (
    Arc<ChangeLog>,
    Arc<VehicleView>,
    Arc<GeofenceView>,
    ChangeReceiver,
) {
    let changes = Arc::new(ChangeLog::new(
        spec.api.replay_buffer,
        fleetflow_types::time::now_ms().max(0) as u64,
    ));
    let vehicles = Arc::new(VehicleView::new(peers).with_changes(changes.clone()));
    let (change_tx, change_rx) = std::sync::mpsc::channel::<GeofenceChange>();
    let mut geo_view = GeofenceView::new(peers, geofences, leader.then_some(change_tx))
        .continuing_after(latest_change)
        .with_changes(changes.clone());
    if let Some(c) = opts.cluster.as_ref().filter(|_| !leader) {
        geo_view = geo_view.follow(format!(
            "geofence changes are taken by process 0 of the cluster ({}); this is process {}",
            c.hosts[0], c.index
        ));
    }
    (
        changes,
        vehicles,
        Arc::new(geo_view),
        Arc::new(Mutex::new(change_rx)),
    )
}

/// The checkpoint hub: every stateful operator of every worker takes part (the leader
/// collects the pieces; a follower relays them). Returns it and the participants per worker.
pub(super) fn checkpoint_hub(
    spec: &JobSpec,
    peers: usize,
    leader: bool,
    boundary: u64,
) -> (Arc<Hub>, usize) {
    let ops = [
        fleetflow_connectors::source::SNAPSHOT_OP,
        fleetflow_dataflows::operator::SNAPSHOT_OP,
        fleetflow_dataflows::geofence::SNAPSHOT_OP,
        fleetflow_sinks::writer::SNAPSHOT_OP,
    ];
    let participants: Vec<(String, usize)> = (0..peers)
        .flat_map(|w| ops.map(|op| (op.to_string(), w)))
        .collect();
    let interval = spec.lake.checkpoint_interval.millis() as u64;
    let hub = if leader {
        Hub::new(interval, participants, boundary)
    } else {
        Hub::relay(interval, boundary)
    };
    (Arc::new(hub), ops.len())
}

/// Runs the checkpoint coordinator on a thread of its own until the final commit (or
/// `stop`); the thread returns the last commit.
pub(super) fn start_coordinator(
    coordinator: Coordinator,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<Result<Option<Commit>, LakeError>>, JobError> {
    Ok(std::thread::Builder::new()
        .name("fleetflow-commit".into())
        .spawn(move || {
            if let Err(e) = fleetflow_runtime::background_priority(fleetflow_runtime::COMMIT_NICE) {
                tracing::debug!(error = %e, "the coordinator runs at full priority");
            }
            coordinator.run(stop)
        })
        .context("starting the checkpoint coordinator")?)
}
