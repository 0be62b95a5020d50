//! A checkpoint's state, decoded once on the main thread and split into the shares of the
//! workers that resume from it (which may be more or fewer than the run that took it).
//!
//! A piece that cannot be decoded is an error: resuming without it would lose or repeat
//! rows.

use anyhow::{Context, Result};
use fleetflow_connectors::source::{self, InputSnapshot};
use fleetflow_dataflows::geofence::{self as geofence_op, GeoRestore, GeoSnapshot};
use fleetflow_dataflows::operator::{self, TimelineSnapshot};
use fleetflow_dataflows::sliced;
use fleetflow_runtime::checkpoint::Participant;
use fleetflow_sinks::writer::{self, SinkSnapshot};
use fleetflow_types::geofence::Geofence;
use fleetflow_types::CompactString;
use std::collections::HashMap;
use std::sync::Arc;

/// The pieces of a checkpoint, by participant.
pub type Pieces = [(Participant, Vec<u8>)];

/// One worker's share.
#[derive(Default)]
pub struct WorkerRestore {
    /// Its vehicles' timelines.
    pub timeline: Option<TimelineSnapshot>,
    /// Its vehicles' geofence state, by timeline slot, and the versions of the fence set
    /// they may be on.
    pub geo: Option<GeoRestore>,
    /// The staged chunks it continues.
    pub sink: Option<SinkSnapshot>,
}

/// A decoded checkpoint.
pub struct Restored {
    /// Every input's position (each source takes its own).
    pub inputs: Vec<InputSnapshot>,
    /// The geofences in force at the checkpoint.
    pub fences: Option<Vec<Arc<Geofence>>>,
    /// The geofence change they are the version of (the catalogue continues after it).
    pub latest_change: u64,
    /// The workers' shares, by worker index.
    pub workers: Vec<WorkerRestore>,
}

/// Each worker's state of `op`. Every participant's snapshot is `postcard`; those written
/// a slice at a time (the timelines', geofencing's) are compressed as well, which
/// [`sliced::decode`] undoes.
fn decode<'a, T: serde::de::DeserializeOwned>(
    pieces: &'a Pieces,
    op: &'a str,
) -> impl Iterator<Item = Result<(usize, T)>> + 'a {
    pieces
        .iter()
        .filter(move |((o, _), _)| o == op)
        .map(move |((_, w), blob)| {
            sliced::decode(blob)
                .map(|t| (*w, t))
                .with_context(|| format!("reading the checkpoint's {op} state of worker {w}"))
        })
}

/// The inputs' positions in a checkpoint.
pub fn input_snapshots(pieces: &Pieces) -> Result<Vec<InputSnapshot>> {
    let mut out = Vec::new();
    for p in decode::<Vec<InputSnapshot>>(pieces, source::SNAPSHOT_OP) {
        out.extend(p?.1);
    }
    Ok(out)
}

/// The worker of `workers` that owns a vehicle: the key its fixes are exchanged by.
fn owner(id: &CompactString, workers: usize) -> usize {
    (fleetflow_dataflows::operator::vehicle_key(id) % workers as u64) as usize
}

/// This process's shares of a restored checkpoint: the inputs' positions, and the state of
/// each of its `workers` workers (global indexes from `first`); nothing for a fresh start.
pub fn local_shares(
    restored: Option<Restored>,
    first: usize,
    workers: usize,
) -> (Vec<InputSnapshot>, Vec<Option<WorkerRestore>>) {
    match restored {
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
    }
}

/// Decodes `pieces` and splits them over `workers`.
pub fn split(pieces: &Pieces, workers: usize) -> Result<Restored> {
    let mut inputs = input_snapshots(pieces)?;
    let timelines = decode::<TimelineSnapshot>(pieces, operator::SNAPSHOT_OP)
        .map(|r| r.map(|(_, t)| t))
        .collect::<Result<Vec<_>>>()?;
    // A replayable input is read again from the least position of a fix some worker had
    // not made final (the fixes themselves are not in the checkpoint).
    let mut replay_from: HashMap<u32, u64> = HashMap::new();
    for (input, position) in timelines.iter().flat_map(|t| t.replay_from.iter()) {
        let least = replay_from.entry(*input).or_insert(*position);
        *least = (*least).min(*position);
    }
    for i in &mut inputs {
        i.replay_from = replay_from.get(&i.input).copied();
    }
    let mut workers_out: Vec<WorkerRestore> =
        TimelineSnapshot::split(timelines, workers, |id| owner(id, workers))
            .into_iter()
            .map(|t| WorkerRestore {
                timeline: Some(t),
                sink: Some(SinkSnapshot::default()),
                ..Default::default()
            })
            .collect();
    // Geofence state follows its vehicle, at the vehicle's slot in the new timeline.
    let slots: HashMap<CompactString, u32> = workers_out
        .iter()
        .flat_map(|w| w.timeline.iter())
        .flat_map(|t| t.vehicles.iter().enumerate())
        .map(|(i, v)| (v.id.clone(), i as u32))
        .collect();
    let mut fences = None;
    let mut latest_change = 0;
    let mut geo: Vec<GeoRestore> = (0..workers).map(|_| GeoRestore::default()).collect();
    let mut log = std::collections::BTreeMap::new();
    for g in decode::<GeoSnapshot>(pieces, geofence_op::SNAPSHOT_OP) {
        let (w, g) = g?;
        if w == 0 {
            fences = Some(
                g.geofences()
                    .context("reading the checkpoint's geofences")?,
            );
            latest_change = g.latest;
        }
        // Every worker had every change; each logged those some of its vehicles needed.
        log.extend(g.log.into_iter().map(|l| (l.0, l)));
        for v in g.vehicles {
            if let Some(slot) = slots.get(&v.id) {
                geo[owner(&v.id, workers)].vehicles.push((*slot, v));
            }
        }
    }
    for (share, mut g) in workers_out.iter_mut().zip(geo) {
        g.latest = latest_change;
        g.log = log.clone();
        share.geo = Some(g);
    }
    // Staged chunks continue on the worker with the same index (modulo the new count);
    // every sink resumes from the greatest job clock.
    for s in decode::<SinkSnapshot>(pieces, writer::SNAPSHOT_OP) {
        let (w, s) = s?;
        for share in workers_out.iter_mut().filter_map(|x| x.sink.as_mut()) {
            share.clock = share.clock.max(s.clock);
        }
        if let Some(share) = workers_out[w % workers].sink.as_mut() {
            share.chunks.extend(s.chunks);
        }
    }
    Ok(Restored {
        inputs,
        fences,
        latest_change,
        workers: workers_out,
    })
}
