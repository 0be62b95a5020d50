//! The services around a job's dataflow: recovering the lake, signals, the API server and
//! committing the source's positions after each checkpoint.

use super::{spec_error, JobError, RunOptions};
use anyhow::Context;
use fleetflow_connectors::registry::PositionCommitter;
use fleetflow_connectors::source;
use fleetflow_query_api::ApiState;
use fleetflow_sinks::commit::{clean_staging, read_checkpoint, recover, OnCommit, Recovered};
use fleetflow_sinks::lake::Lake;
use fleetflow_sinks::table::HiveDirectories;
use fleetflow_types::checkpoint::{Blob, Participant};
use fleetflow_types::config::JobSpec;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

/// Exactly once: resumes from the lake's newest checkpoint, after finishing its commit and
/// removing what later, uncommitted work left behind. In a cluster the leader does this for
/// every process, before the cluster connects (so that no process's new files are taken
/// for leftovers); the others only read the state. A lake of a job with other inputs is a
/// spec error.
pub(super) fn recover_lake(
    lake: &Lake,
    runtime: &tokio::runtime::Handle,
    leader: bool,
    spec: &JobSpec,
    text: &str,
    input_names: &[String],
) -> Result<Option<Recovered>, JobError> {
    let recovered = if leader {
        recover(lake, runtime, &HiveDirectories)
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

/// Binds `[api].listen` (or the options' address) and serves `state` until `stop`.
pub(super) fn start_api(
    runtime: &tokio::runtime::Runtime,
    spec: &JobSpec,
    opts: &RunOptions,
    state: ApiState,
    stop: Arc<tokio::sync::Notify>,
) -> Result<Option<tokio::task::JoinHandle<std::io::Result<()>>>, JobError> {
    let listen = match &opts.listen {
        Some(l) => l.clone(),
        None => Some(spec.api.listen.clone()),
    };
    Ok(match listen {
        Some(addr) => {
            let listener = runtime
                .block_on(tokio::net::TcpListener::bind(&addr))
                .with_context(|| format!("api.listen: cannot bind {addr}"))?;
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
        None => None,
    })
}

/// After each checkpoint, hands the sources' positions to `committer` (a Kafka consumer
/// group's offsets).
pub(super) fn commit_positions(mut committer: PositionCommitter) -> OnCommit {
    Box::new(
        move |_: &fleetflow_sinks::commit::Commit, pieces: &[(Participant, Blob)]| {
            // The sources' pieces (small, one chunk each).
            let sources: Vec<(Participant, Vec<u8>)> = pieces
                .iter()
                .filter(|((op, _), _)| op == source::SNAPSHOT_OP)
                .map(|(p, b)| (p.clone(), b.contiguous().into_owned()))
                .collect();
            match crate::restore::input_snapshots(&sources) {
                Ok(inputs) => committer(
                    &inputs
                        .iter()
                        .filter(|i| i.position.0 != u64::MAX)
                        .map(|i| (i.input, i.position.0))
                        .collect::<Vec<_>>(),
                ),
                Err(e) => tracing::warn!(error = %e, "positions not committed"),
            }
        },
    )
}
