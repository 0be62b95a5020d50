//! The query API's geofence side: the catalogue (what the job was told), the channel that
//! carries runtime changes into the dataflow, and the view the dataflow publishes into
//! (occupancy, recent events, which changes each worker applied).

use crate::changes::{ChangeBody, ChangeLog};
use fleetflow_types::geofence::Geofence;
use fleetflow_types::records::{GeofenceChange, GeofenceEvent, OccupancyChange};
use fleetflow_types::time::Millis;
use fleetflow_types::CompactString;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// How many recent events `GET /v1/geofence-events` can return (the lake has all of them).
pub const RECENT_EVENTS: usize = 100_000;

/// Why a change could not be handed to the dataflow.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The job no longer runs (its input ended or it was interrupted).
    #[error("the job is not running: geofences can change only while it runs")]
    NotRunning,
    /// No geofence with that id.
    #[error("no geofence {0:?}")]
    Unknown(String),
    /// This process of a cluster does not take changes (see [`GeofenceView::follow`]).
    #[error("{0}")]
    Follower(String),
}

/// Why [`GeofenceView::wait_applied`] returned without the change in effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotApplied {
    /// Not applied within the timeout; it still will be.
    Pending,
    /// The dataflow stopped before applying it.
    Stopped,
}

/// A change handed to the dataflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submitted {
    /// Its sequence number.
    pub seq: u64,
    /// Whether the id existed before.
    pub existed: bool,
}

/// Geofence catalogue and view, shared by the API handlers and the dataflow.
pub struct GeofenceView {
    catalog: Mutex<Catalog>,
    /// One shard per worker: a worker writes only its own (its vehicles), readers merge.
    shards: Vec<RwLock<Shard>>,
    changed: tokio::sync::Notify,
    closed: AtomicBool,
    changes: Option<Arc<ChangeLog>>,
}

struct Catalog {
    fences: BTreeMap<CompactString, Arc<Geofence>>,
    sender: Option<std::sync::mpsc::Sender<GeofenceChange>>,
    next_seq: u64,
    /// Set on a process of a cluster that does not take changes: why not.
    follower: Option<String>,
}

type Fast<K, V> = HashMap<K, V, ahash::RandomState>;

/// What one producing worker writes its shard of a [`GeofenceView`] through (see
/// [`GeofenceView::writers`]).
#[derive(Clone)]
pub struct GeofenceWriter {
    view: Arc<GeofenceView>,
    shard: usize,
}

impl GeofenceWriter {
    /// Applies this producer's changes in the order they happened: occupancy updates (+1
    /// enters, -1 leaves), events and applied changes, and the job clock they reflect.
    pub fn apply(
        &self,
        occupants: Vec<OccupancyChange>,
        events: &[GeofenceEvent],
        applied: Vec<(u64, Option<Millis>)>,
        clock: Option<Millis>,
    ) {
        self.view
            .apply(self.shard, occupants, events, applied, clock);
    }

    /// Records the job clock this producer's geofence results reflect.
    pub fn advance(&self, clock: Option<Millis>) {
        self.view.advance(self.shard, clock);
    }
}

#[derive(Default)]
struct Shard {
    /// Geofence id -> its occupants (vehicle id -> `entered_at`). An entry is kept when it
    /// empties, so vehicles passing through cost no allocation (most geofences hold one
    /// vehicle at a time, if any): there is one per geofence this shard has seen occupied.
    fences: Fast<CompactString, Fast<CompactString, Millis>>,
    events: VecDeque<GeofenceEvent>,
    /// The last change applied.
    applied: u64,
    /// Change -> the job clock it took effect at (recent ones).
    effective: BTreeMap<u64, Option<Millis>>,
    as_of: Option<Millis>,
}

impl GeofenceView {
    /// A view fed by `workers` workers, starting with `initial` geofences in force and
    /// `sender` carrying changes to the dataflow.
    pub fn new(
        workers: usize,
        initial: &[Arc<Geofence>],
        sender: Option<std::sync::mpsc::Sender<GeofenceChange>>,
    ) -> Self {
        GeofenceView {
            catalog: Mutex::new(Catalog {
                fences: initial.iter().map(|g| (g.id.clone(), g.clone())).collect(),
                sender,
                next_seq: 1,
                follower: None,
            }),
            shards: (0..workers.max(1))
                .map(|_| RwLock::new(Shard::default()))
                .collect(),
            changed: tokio::sync::Notify::new(),
            closed: AtomicBool::new(false),
            changes: None,
        }
    }

    /// Numbers the changes after `seq` (a job resumed from a checkpoint whose fences are
    /// the version of change `seq`).
    pub fn continuing_after(self, seq: u64) -> Self {
        {
            let mut c = self.catalog.lock().expect("catalog lock");
            c.next_seq = c.next_seq.max(seq + 1);
        }
        self
    }

    /// Also appends every geofence event to `log` (for the live streams).
    pub fn with_changes(mut self, log: Arc<ChangeLog>) -> Self {
        self.changes = Some(log);
        self
    }

    /// Makes this the view of a process that does not take changes (`reason` answers a
    /// request for one); its catalogue follows the changes the dataflow applies instead
    /// (see [`GeofenceView::follow_change`]).
    pub fn follow(self, reason: String) -> Self {
        self.catalog.lock().expect("catalog lock").follower = Some(reason);
        self
    }

    /// On a follower, records a change another process took, as the dataflow delivers it
    /// (in the order of its sequence numbers).
    pub fn follow_change(&self, change: &GeofenceChange) {
        let mut c = self.catalog.lock().expect("catalog lock");
        if c.follower.is_none() {
            return;
        }
        c.next_seq = c.next_seq.max(change.seq + 1);
        match &change.geofence {
            Some(g) => c.fences.insert(change.id.clone(), g.clone()),
            None => c.fences.remove(&change.id),
        };
    }

    /// The dataflow stopped taking changes.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.catalog.lock().expect("catalog lock").sender = None;
        self.changed.notify_waiters();
    }

    /// Adds or replaces (`Some`) or removes (`None`) geofence `id`.
    pub fn submit(&self, id: &str, geofence: Option<Geofence>) -> Result<Submitted, ChangeError> {
        let mut c = self.catalog.lock().expect("catalog lock");
        if let Some(reason) = &c.follower {
            return Err(ChangeError::Follower(reason.clone()));
        }
        let existed = c.fences.contains_key(id);
        if geofence.is_none() && !existed {
            return Err(ChangeError::Unknown(id.to_owned()));
        }
        let seq = c.next_seq;
        let geofence = geofence.map(Arc::new);
        let change = GeofenceChange {
            seq,
            id: id.into(),
            geofence: geofence.clone(),
            at: None,
        };
        match &c.sender {
            Some(tx) if tx.send(change).is_ok() => {}
            _ => return Err(ChangeError::NotRunning),
        }
        c.next_seq += 1;
        match geofence {
            Some(g) => c.fences.insert(id.into(), g),
            None => c.fences.remove(id),
        };
        Ok(Submitted { seq, existed })
    }

    /// Waits until every worker registered change `seq` and returns the job clock it took
    /// effect at (`None` when it took effect before the job clock began).
    pub async fn wait_applied(
        &self,
        seq: u64,
        timeout: std::time::Duration,
    ) -> Result<Option<Millis>, NotApplied> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut at = None;
            let mut done = true;
            for shard in &self.shards {
                let shard = shard.read().expect("view lock");
                done &= shard.applied >= seq;
                at = at.or(shard.effective.get(&seq).copied());
            }
            if done {
                return Ok(at.flatten());
            }
            if self.closed.load(Ordering::Relaxed) {
                return Err(NotApplied::Stopped);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(NotApplied::Pending);
            }
        }
    }

    /// Number of geofences in the catalogue.
    pub fn len(&self) -> usize {
        self.catalog.lock().expect("catalog lock").fences.len()
    }

    /// Whether the catalogue is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One geofence of the catalogue.
    pub fn get(&self, id: &str) -> Option<Arc<Geofence>> {
        self.catalog
            .lock()
            .expect("catalog lock")
            .fences
            .get(id)
            .cloned()
    }

    /// Up to `limit` geofences after `after` in id order that pass `keep`, and whether more
    /// follow.
    pub fn page(
        &self,
        after: Option<&str>,
        limit: usize,
        keep: impl Fn(&Geofence) -> bool,
    ) -> (Vec<Arc<Geofence>>, bool) {
        let c = self.catalog.lock().expect("catalog lock");
        crate::view::page_after(&c.fences, after, limit, |g| keep(g))
    }

    /// One writer per producing worker (the `workers` the view was made for), in worker
    /// order: each writes only its own shard, so a producer never names itself by number.
    pub fn writers(self: &Arc<Self>) -> Vec<GeofenceWriter> {
        (0..self.shards.len())
            .map(|shard| GeofenceWriter {
                view: Arc::clone(self),
                shard,
            })
            .collect()
    }

    /// See [`GeofenceWriter::apply`].
    fn apply(
        &self,
        worker: usize,
        occupants: Vec<OccupancyChange>,
        events: &[GeofenceEvent],
        applied: Vec<(u64, Option<Millis>)>,
        clock: Option<Millis>,
    ) {
        let Some(shard) = self.shards.get(worker) else {
            return;
        };
        let notify = !applied.is_empty();
        // The log's lock first (see `changes`): streams see the view and the log agree.
        let log = self
            .changes
            .as_ref()
            .filter(|_| !events.is_empty() || !occupants.is_empty())
            .map(|c| c.write());
        {
            let mut shard = shard.write().expect("view lock");
            if let Some(w) = clock {
                shard.as_of = Some(w);
            }
            let shard = &mut *shard;
            for o in occupants {
                if o.diff > 0 {
                    shard
                        .fences
                        .entry(o.geofence)
                        .or_default()
                        .insert(o.vehicle, o.entered_at);
                } else if let Some(fence) = shard.fences.get_mut(&o.geofence) {
                    // A visit ends only if it is the one recorded (its `entered_at`).
                    if let Entry::Occupied(visit) = fence.entry(o.vehicle) {
                        if *visit.get() == o.entered_at {
                            visit.remove();
                        }
                    }
                }
            }
            // Only the newest events are kept: copy no more than fit.
            let events = &events[events.len().saturating_sub(RECENT_EVENTS)..];
            let excess = (shard.events.len() + events.len()).saturating_sub(RECENT_EVENTS);
            shard.events.drain(..excess);
            shard.events.extend(events.iter().cloned());
            for (seq, at) in applied {
                shard.applied = shard.applied.max(seq);
                shard.effective.insert(seq, at);
                while shard.effective.len() > 4096 {
                    shard.effective.pop_first();
                }
            }
        }
        if let (Some(mut log), Some(c)) = (log, &self.changes) {
            // Still under the log's lock: no snapshot sees the shard without these.
            let as_of = self.as_of();
            for e in events {
                log.push(ChangeBody::GeofenceEvent(e.clone()), as_of);
            }
            c.publish(log);
        }
        if notify {
            self.changed.notify_waiters();
        }
    }

    /// See [`GeofenceWriter::advance`].
    fn advance(&self, worker: usize, clock: Option<Millis>) {
        if let (Some(w), Some(shard)) = (clock, self.shards.get(worker)) {
            let mut shard = shard.write().expect("view lock");
            shard.as_of = Some(w);
        }
    }

    /// The job clock every worker's geofence results reflect (the least over workers).
    pub fn as_of(&self) -> Option<Millis> {
        self.shards
            .iter()
            .map(|s| s.read().expect("view lock").as_of)
            .collect::<Option<Vec<_>>>()
            .and_then(|v| v.into_iter().min())
    }

    /// The vehicles inside geofence `id` with their `entered_at`, by vehicle id.
    pub fn occupants(&self, id: &str) -> Vec<(CompactString, Millis)> {
        let mut out: Vec<(CompactString, Millis)> = Vec::new();
        for shard in &self.shards {
            let shard = shard.read().expect("view lock");
            if let Some(occ) = shard.fences.get(id) {
                out.extend(occ.iter().map(|(v, t)| (v.clone(), *t)));
            }
        }
        out.sort();
        out
    }

    /// Every occupant of every geofence passing `keep(geofence, vehicle)`, as
    /// `(geofence, vehicle, entered_at)` in that order.
    pub fn all_occupants(
        &self,
        keep: impl Fn(&str, &str) -> bool,
    ) -> Vec<(CompactString, CompactString, Millis)> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let shard = shard.read().expect("view lock");
            for (g, occ) in &shard.fences {
                out.extend(
                    occ.iter()
                        .filter(|(v, _)| keep(g, v))
                        .map(|(v, t)| (g.clone(), v.clone(), *t)),
                );
            }
        }
        out.sort();
        out
    }

    /// Recent events passing `keep`, newest first, at most `limit`.
    pub fn recent_events(
        &self,
        limit: usize,
        keep: impl Fn(&GeofenceEvent) -> bool,
    ) -> Vec<GeofenceEvent> {
        let mut out: Vec<GeofenceEvent> = Vec::new();
        for shard in &self.shards {
            let shard = shard.read().expect("view lock");
            out.extend(shard.events.iter().filter(|e| keep(e)).cloned());
        }
        // Newest first; ties in a fixed order.
        out.sort_by(|a, b| b.ts.cmp(&a.ts).then_with(|| b.cmp(a)));
        out.truncate(limit);
        out
    }
}
