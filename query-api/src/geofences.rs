//! The query API's geofence side: the catalogue (what the job was told), the channel that
//! carries runtime changes into the dataflow, and the view the dataflow publishes into
//! (occupancy, recent events, which changes each worker applied).
//!
//! Occupancy is read the way vehicle state is ([`crate::view`]): each batch of a producing
//! worker's occupancy changes becomes one sorted run of `(geofence, vehicle) -> entered_at`
//! (or a tombstone), the producer's runs are merged geometrically
//! ([`crate::view::batches`]), and the producer swaps its next immutable snapshot in. A
//! request loads the snapshots without a lock; a worker never waits for a reader.

use crate::changes::{ChangeBody, ChangeLog};
use crate::view::batches::{live_from, Batches, Entry};
use arc_swap::ArcSwap;
use fleetflow_types::geofence::Geofence;
use fleetflow_types::records::{GeofenceChange, GeofenceEvent, OccupancyChange};
use fleetflow_types::time::Millis;
use fleetflow_types::CompactString;
use std::collections::{BTreeMap, VecDeque};
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
    /// By worker: its occupancy runs, loaded by readers without a lock.
    occupancy: Vec<ArcSwap<Occupancy>>,
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

/// One worker's occupancy: `(geofence, vehicle) -> entered_at`.
type Occupancy = Batches<(CompactString, CompactString), Millis>;

/// One key's entry in a run of occupancy changes.
type Visit = Entry<(CompactString, CompactString), Millis>;

/// A batch of occupancy changes (in the order they happened) as one run: per geofence and
/// vehicle, the visit in progress after them (`None`: none). An enter starts a visit; a
/// leave ends one only if it is the visit in progress (the same `entered_at`). Keys whose
/// visit is what it was before the batch are left out where that is known without a
/// lookup.
fn occupancy_run(current: &Occupancy, mut changes: Vec<OccupancyChange>) -> Vec<Visit> {
    // Stable: each key's changes stay in the order they happened.
    changes.sort_by(|a, b| (&a.geofence, &a.vehicle).cmp(&(&b.geofence, &b.vehicle)));
    let mut run = Vec::with_capacity(changes.len());
    let mut changes = changes.into_iter().peekable();
    while let Some(first) = changes.next() {
        let key = (first.geofence, first.vehicle);
        // Only a leave needs the visit before it; after an enter, the batch decides.
        let before = (first.diff <= 0)
            .then(|| current.get_by(|k| k.cmp(&key)).copied())
            .flatten();
        let step = |now: Option<Millis>, diff: i8, entered_at: Millis| {
            if diff > 0 {
                Some(entered_at)
            } else if now == Some(entered_at) {
                None
            } else {
                now
            }
        };
        let mut now = step(before, first.diff, first.entered_at);
        while let Some(next) = changes.next_if(|c| c.geofence == key.0 && c.vehicle == key.1) {
            now = step(now, next.diff, next.entered_at);
        }
        if first.diff > 0 || now != before {
            run.push((key, now));
        }
    }
    run
}

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
            occupancy: (0..workers.max(1)).map(|_| ArcSwap::default()).collect(),
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
        let (Some(shard), Some(occupancy)) = (self.shards.get(worker), self.occupancy.get(worker))
        else {
            return;
        };
        let notify = !applied.is_empty();
        // The next snapshot of this worker's occupancy, built off any lock (only this worker
        // swaps it, so the one loaded here stays the latest).
        let had_occupants = !occupants.is_empty();
        let next = had_occupants.then(|| {
            let current = occupancy.load_full();
            let run = occupancy_run(&current, occupants);
            let mut next = Occupancy::clone(&current);
            next.push(run);
            Arc::new(next)
        });
        // The log's lock first (see `changes`): streams see the view and the log agree.
        let log = self
            .changes
            .as_ref()
            .filter(|_| !events.is_empty() || had_occupants)
            .map(|c| c.write());
        {
            let mut shard = shard.write().expect("view lock");
            if let Some(w) = clock {
                shard.as_of = Some(w);
            }
            let shard = &mut *shard;
            if let Some(next) = next {
                occupancy.store(next);
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
        let snaps: Vec<Arc<Occupancy>> = self.occupancy.iter().map(|o| o.load_full()).collect();
        live_from(snaps.iter().map(|o| &**o), |(g, _)| g.as_str() < id)
            .take_while(|((g, _), _)| g == id)
            .map(|((_, v), t)| (v.clone(), *t))
            .collect()
    }

    /// Every occupant of every geofence passing `keep(geofence, vehicle)`, as
    /// `(geofence, vehicle, entered_at)` in that order.
    pub fn all_occupants(
        &self,
        keep: impl Fn(&str, &str) -> bool,
    ) -> Vec<(CompactString, CompactString, Millis)> {
        let snaps: Vec<Arc<Occupancy>> = self.occupancy.iter().map(|o| o.load_full()).collect();
        live_from(snaps.iter().map(|o| &**o), |_| false)
            .filter(|((g, v), _)| keep(g, v))
            .map(|((g, v), t)| (g.clone(), v.clone(), *t))
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// A change: geofence number, vehicle number, `entered_at`, enter (or leave).
    type Step = (u8, u8, u8, bool);

    fn change((g, v, t, enter): Step) -> OccupancyChange {
        OccupancyChange {
            geofence: format!("G{g}").into(),
            vehicle: format!("V{v}").into(),
            entered_at: Millis::from(t),
            diff: if enter { 1 } else { -1 },
        }
    }

    proptest! {
        /// Batches of occupancy changes from two workers, published one batch at a time,
        /// read exactly like one map the changes were applied to in order (an enter starts a
        /// visit, a leave ends it only if it is the visit in progress), whoever reads:
        /// occupants of one geofence, or every occupant.
        #[test]
        fn occupancy_runs_read_as_the_changes_applied_in_order(
            batches in prop::collection::vec(
                (0usize..2, prop::collection::vec((0u8..4, 0u8..6, 0u8..3, any::<bool>()), 0..20)),
                0..30,
            ),
        ) {
            let view = Arc::new(GeofenceView::new(2, &[], None));
            let writers = view.writers();
            let mut reference: BTreeMap<(CompactString, CompactString), Millis> = BTreeMap::new();
            for (worker, steps) in &batches {
                // Each worker owns its vehicles (odd ones are worker 1's), as in a job.
                let steps: Vec<Step> = steps.iter().copied().filter(|s| (s.1 % 2) as usize == *worker).collect();
                for s in &steps {
                    let c = change(*s);
                    let key = (c.geofence, c.vehicle);
                    if c.diff > 0 {
                        reference.insert(key, c.entered_at);
                    } else if reference.get(&key) == Some(&c.entered_at) {
                        reference.remove(&key);
                    }
                }
                writers[*worker].apply(steps.into_iter().map(change).collect(), &[], Vec::new(), None);
                let all = view.all_occupants(|_, _| true);
                let want: Vec<_> = reference.iter().map(|((g, v), t)| (g.clone(), v.clone(), *t)).collect();
                prop_assert_eq!(&all, &want);
                let fences: BTreeSet<&CompactString> = reference.keys().map(|(g, _)| g).collect();
                for g in (0..4).map(|g| format!("G{g}")) {
                    let want: Vec<_> = reference
                        .iter()
                        .filter(|((rg, _), _)| *rg == g)
                        .map(|((_, v), t)| (v.clone(), *t))
                        .collect();
                    prop_assert_eq!(view.occupants(&g), want);
                    prop_assert_eq!(fences.contains(&CompactString::from(g.as_str())), !view.occupants(&g).is_empty());
                }
            }
        }
    }
}
