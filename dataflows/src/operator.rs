//! The timely operator that runs [`Timelines`] on every worker.
//!
//! ```text
//!   fixes ──Exchange(hash vehicle_id)──┐
//!                                      ├─► "VehicleTimeline" ─┬─► raw fixes       (final)
//!   input reports ──Broadcast──────────┤                      ├─► tier rows       (final)
//!   geofence changes (broadcast) ──────┘                      ├─► finals          (to geofencing)
//!                                                             ├─► dead letters    (late, implausible_jump)
//!                                                             ├─► vehicle state   (differential updates)
//!                                                             └─► progress        (watermark per epoch)
//! ```
//!
//! Timely times are processing epochs. When both input frontiers pass an epoch, the
//! operator takes that epoch's fixes (checking lateness against the watermark before the
//! epoch) and then its input reports (which move the watermark). Because reports are
//! broadcast and applied in epoch order, every worker derives the same watermark.
//! Geofence changes of an epoch are applied at that epoch's watermark: fixes below it are
//! made final first, then the changes follow them on the `finals` output, so every worker
//! puts a change at the same place among its vehicles' fixes.
//!
//! When the frontier empties, the job has either reached the end of every input (every
//! input reported `Finished`: all fixes become final, every window completes) or was
//! interrupted (open windows are left unwritten rather than written incomplete).

use crate::geofence::Finalized;
use crate::timeline::{Outputs, TimelineConfig, Timelines, VehicleSnapshot};
use crate::watermark::{Watermark, WatermarkTracker};
use differential_dataflow::{AsCollection, Hashable, VecCollection};
use fleetflow_types::checkpoint::Hub;
use fleetflow_types::fix::Fix;
use fleetflow_types::metrics::Metrics;
pub use fleetflow_types::records::Progress;
use fleetflow_types::records::{
    DeadLetter, GeofenceChange, IncomingFix, InputReport, TierRow, VehicleState,
};
use fleetflow_types::registry::VehicleRegistry;
use fleetflow_types::time::Millis;
use fleetflow_types::CompactString;
use std::collections::BTreeMap;
use std::sync::Arc;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

/// Everything the per-vehicle operator needs.
#[derive(Clone)]
pub struct CoreConfig {
    /// Allowed lateness, ms.
    pub lateness: Millis,
    /// The per-vehicle logic's settings.
    pub timeline: TimelineConfig,
    /// Vehicle registry (tank capacities).
    pub registry: Arc<VehicleRegistry>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Global input id -> name.
    pub input_names: Arc<Vec<String>>,
    /// How often vehicle state and progress are published (processing time). State changes
    /// within an interval are coalesced into one update per vehicle.
    pub publish_every: std::time::Duration,
    /// Checkpoints: the hub to offer snapshots to.
    pub checkpoints: Option<Arc<Hub>>,
    /// This worker's share of the restored state.
    pub restore: Option<TimelineSnapshot>,
}

/// Checkpoint participant name of the per-vehicle operator.
pub const SNAPSHOT_OP: &str = "timeline";

/// The per-vehicle operator's state at a checkpoint boundary.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct TimelineSnapshot {
    /// The inputs' progress as this worker applied it (the same on every worker).
    pub tracker: WatermarkTracker,
    /// The watermark fixes were checked against.
    pub watermark: Option<Millis>,
    /// The worker's vehicles, by id.
    pub vehicles: Vec<VehicleSnapshot>,
}

impl TimelineSnapshot {
    /// Splits the snapshots of every worker (of the run that took them) into `parts`
    /// shares, each vehicle going to `owner(id)`, each share sorted by id. The tracker and
    /// watermark, the same on every worker, go to every share.
    pub fn split(
        all: Vec<TimelineSnapshot>,
        parts: usize,
        owner: impl Fn(&CompactString) -> usize,
    ) -> Vec<TimelineSnapshot> {
        let mut out = vec![TimelineSnapshot::default(); parts];
        let newest = all
            .iter()
            .max_by_key(|s| s.watermark)
            .map(|s| (s.tracker.clone(), s.watermark));
        for s in all {
            for v in s.vehicles {
                out[owner(&v.id) % parts].vehicles.push(v);
            }
        }
        for share in &mut out {
            if let Some((tracker, watermark)) = &newest {
                (share.tracker, share.watermark) = (tracker.clone(), *watermark);
            }
            share.vehicles.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        }
        out
    }
}

/// The streams of the core dataflow.
pub struct CoreStreams<'scope> {
    /// Accepted fixes, final.
    pub raw: Stream<'scope, u64, Vec<Fix>>,
    /// Completed tier rows.
    pub rows: Stream<'scope, u64, Vec<TierRow>>,
    /// Late fixes and implausible jumps.
    pub dead_letters: Stream<'scope, u64, Vec<DeadLetter>>,
    /// Vehicle state, keyed by vehicle id.
    pub state: VecCollection<'scope, u64, (CompactString, VehicleState), isize>,
    /// The watermark each worker reached, per epoch.
    pub progress: Stream<'scope, u64, Vec<Progress>>,
    /// Final fixes with geofence changes interleaved, for geofencing.
    pub finals: Stream<'scope, u64, Vec<Finalized>>,
}

type Out<D> = OutputBuilder<u64, CapacityContainerBuilder<Vec<D>>>;

/// How long one invocation of the operator spends writing a snapshot, at most (about):
/// the rest waits for the next invocation, so a checkpoint of many vehicles does not hold
/// up the fixes behind it. A fix waits for several invocations on its way (its epoch's
/// frontier, the exchange, the output's progress), each of which may carry a slice: with
/// 5 ms slices the read -> visible p99 at 20,000 events/s was 27-39 ms, with 1 ms 9-19 ms
/// (checkpoints of 230 MB every 10 s; 7-9 ms without checkpoints).
const SNAPSHOT_SLICE: std::time::Duration = std::time::Duration::from_millis(1);

/// The least time from the end of one slice to the start of the next: a snapshot takes at
/// most a fifth of its worker while fixes flow. Written flat out, the 230 MB of 100,000
/// vehicles took both workers of a 2-core machine for about 300 ms, starving the broker
/// and the API next to them (per-second p99 at 20,000 events/s: 90-270 ms in the seconds of
/// a checkpoint, 60-66 ms in the others); paced, it takes about 1.5 s of the 10 s between
/// checkpoints.
const SNAPSHOT_PAUSE: std::time::Duration = std::time::Duration::from_millis(4);

/// Writes the operator's snapshots a slice at a time and offers each to the hub once
/// complete.
struct SnapshotWriter {
    hub: Option<Arc<Hub>>,
    worker: usize,
    /// The range of the snapshot being written.
    writing: Option<(u64, u64)>,
    /// When the next slice may be written ([`SNAPSHOT_PAUSE`] after the last one ended).
    next_slice: std::time::Instant,
}

impl SnapshotWriter {
    /// Begins the snapshot for `range` of the state as it is now, after finishing the one
    /// being written.
    fn begin(
        &mut self,
        timelines: &mut Timelines,
        tracker: &WatermarkTracker,
        watermark: Option<Millis>,
        range: (u64, u64),
    ) {
        if self.hub.is_none() {
            return;
        }
        self.step(timelines, None, std::time::Instant::now());
        // Encoded as the head of a `TimelineSnapshot`; the vehicles follow.
        let head = postcard::to_stdvec(&(tracker, watermark)).expect("tracker encodes");
        timelines.begin_snapshot(head);
        self.writing = Some(range);
    }

    /// Writes for about `budget` (`None`: to the end, at once), a slice only once
    /// [`SNAPSHOT_PAUSE`] has passed since the last one (`now`: the time it is); offers
    /// the snapshot once written. How long until the next slice is due (`None`: nothing is
    /// left to write).
    fn step(
        &mut self,
        timelines: &mut Timelines,
        budget: Option<std::time::Duration>,
        now: std::time::Instant,
    ) -> Option<std::time::Duration> {
        let (Some(hub), Some(_)) = (&self.hub, &self.writing) else {
            return None;
        };
        if budget.is_some() && self.next_slice > now {
            return Some(self.next_slice - now);
        }
        let Some(blob) = timelines.continue_snapshot(budget) else {
            self.next_slice = std::time::Instant::now() + SNAPSHOT_PAUSE;
            return Some(SNAPSHOT_PAUSE);
        };
        let (lo, hi) = self.writing.take().expect("checked");
        hub.offer(SNAPSHOT_OP, self.worker, lo, hi, blob);
        None
    }
}

/// Renders the per-vehicle operator over decoded fixes and input reports.
pub fn render_timeline<'scope>(
    fixes: Stream<'scope, u64, Vec<IncomingFix>>,
    reports: Stream<'scope, u64, Vec<InputReport>>,
    changes: Stream<'scope, u64, Vec<GeofenceChange>>,
    cfg: CoreConfig,
) -> CoreStreams<'scope> {
    let scope = fixes.scope();
    let worker = scope.index();
    let reports = reports.broadcast();
    let mut builder = OperatorBuilder::new("VehicleTimeline".to_owned(), scope);
    let activator = scope.activator_for(builder.operator_info().address);
    let mut fix_in = builder.new_input(
        fixes,
        Exchange::new(|f: &IncomingFix| f.fix.vehicle_id.hashed()),
    );
    let mut report_in = builder.new_input(reports, Pipeline);
    let mut change_in = builder.new_input(changes, Pipeline);
    let (raw_out, raw) = builder.new_output::<Vec<Fix>>();
    let (row_out, rows) = builder.new_output::<Vec<TierRow>>();
    let (dead_out, dead_letters) = builder.new_output::<Vec<DeadLetter>>();
    let (state_out, state) =
        builder.new_output::<Vec<((CompactString, VehicleState), u64, isize)>>();
    let (progress_out, progress) = builder.new_output::<Vec<Progress>>();
    let (finals_out, finals) = builder.new_output::<Vec<Finalized>>();
    let mut raw_out: Out<Fix> = OutputBuilder::from(raw_out);
    let mut row_out: Out<TierRow> = OutputBuilder::from(row_out);
    let mut dead_out: Out<DeadLetter> = OutputBuilder::from(dead_out);
    let mut state_out: Out<((CompactString, VehicleState), u64, isize)> =
        OutputBuilder::from(state_out);
    let mut progress_out: Out<Progress> = OutputBuilder::from(progress_out);
    let mut finals_out: Out<Finalized> = OutputBuilder::from(finals_out);

    let mut cfg = cfg;
    builder.build(move |caps| {
        let mut caps = Some(caps);
        let mut timelines = Timelines::new(
            cfg.timeline.clone(),
            cfg.registry.clone(),
            cfg.input_names.clone(),
            cfg.metrics.clone(),
        );
        let mut tracker = WatermarkTracker::new(cfg.lateness);
        let mut watermark: Option<Millis> = None;
        let mut cuts = cfg.checkpoints.as_ref().map(|h| h.cuts());
        if let Some(r) = cfg.restore.take() {
            (tracker, watermark) = (r.tracker, r.watermark);
            if let Some(w) = watermark {
                cfg.metrics
                    .derived_watermark
                    .fetch_max(w, std::sync::atomic::Ordering::Relaxed);
            }
            timelines.restore(r.vehicles);
        }
        let mut snapshots = SnapshotWriter {
            hub: cfg.checkpoints.clone(),
            worker,
            writing: None,
            next_slice: std::time::Instant::now(),
        };
        let mut published: Option<Millis> = None;
        let mut fix_stash: BTreeMap<u64, Vec<Vec<IncomingFix>>> = BTreeMap::new();
        let mut report_stash: BTreeMap<u64, Vec<InputReport>> = BTreeMap::new();
        let mut change_stash: BTreeMap<u64, Vec<GeofenceChange>> = BTreeMap::new();
        let mut out = Outputs::default();
        let mut last_publish = std::time::Instant::now();
        let mut last_stats = std::time::Instant::now();
        // Sends what `out` holds (but progress) at `at`.
        let mut flush = move |out: &mut Outputs, caps_at: &[Capability<u64>], at: u64| {
            if !out.raw.is_empty() {
                raw_out
                    .activate()
                    .session(&caps_at[0])
                    .give_container(&mut out.raw);
                out.raw.reserve(4096);
            }
            if !out.finals.is_empty() {
                finals_out
                    .activate()
                    .session(&caps_at[5])
                    .give_container(&mut out.finals);
                out.finals.reserve(4096);
            }
            if !out.rows.is_empty() {
                row_out
                    .activate()
                    .session(&caps_at[1])
                    .give_container(&mut out.rows);
            }
            if !out.dead.is_empty() {
                dead_out
                    .activate()
                    .session(&caps_at[2])
                    .give_container(&mut out.dead);
            }
            if !out.state.is_empty() {
                let mut o = state_out.activate();
                let mut s = o.session(&caps_at[3]);
                for (d, r) in out.state.drain(..) {
                    s.give((d, at, r));
                }
            }
        };
        move |frontiers| {
            fix_in.for_each(|cap, data| {
                if let Some(t) = cap.least() {
                    fix_stash.entry(*t).or_default().push(std::mem::take(data));
                }
            });
            report_in.for_each(|cap, data| {
                if let Some(t) = cap.least() {
                    report_stash.entry(*t).or_default().append(data);
                }
            });
            change_in.for_each(|cap, data| {
                if let Some(t) = cap.least() {
                    change_stash.entry(*t).or_default().append(data);
                }
            });
            let Some(held) = caps.as_mut() else { return };
            // Epochs below both frontiers are complete.
            let frontier: Option<u64> = frontiers
                .iter()
                .filter_map(|f| f.frontier().first().copied())
                .min();
            let ready = |t: &u64| frontier.is_none_or(|f| *t < f);
            let mut last_epoch = None;
            loop {
                let next = [
                    fix_stash.keys().next(),
                    report_stash.keys().next(),
                    change_stash.keys().next(),
                ]
                .into_iter()
                .flatten()
                .min()
                .copied();
                let Some(epoch) = next.filter(ready) else {
                    break;
                };
                if let Some(range) = cuts.as_mut().and_then(|c| c.before(epoch)) {
                    // A checkpoint boundary lies before this epoch: what the epochs below
                    // it produced leaves at their time, then the state is taken.
                    if let Some(at) = last_epoch {
                        let caps_at: Vec<_> = held.iter().map(|c| c.delayed(&at)).collect();
                        flush(&mut out, &caps_at, at);
                    }
                    snapshots.begin(&mut timelines, &tracker, watermark, range);
                }
                for batch in fix_stash.remove(&epoch).unwrap_or_default() {
                    for inc in batch {
                        timelines.offer(inc, watermark, &mut out);
                    }
                }
                for r in report_stash.remove(&epoch).unwrap_or_default() {
                    tracker.apply(&r);
                }
                if let Watermark::At(w) = tracker.watermark() {
                    watermark = Some(watermark.map_or(w, |old| old.max(w)));
                    cfg.metrics
                        .derived_watermark
                        .fetch_max(w, std::sync::atomic::Ordering::Relaxed);
                }
                if let Some(changes) = change_stash.remove(&epoch) {
                    // A change takes effect at this epoch's watermark: what is final before it
                    // saw the old geofences, every later fix sees the new ones.
                    if let Some(w) = watermark {
                        timelines.advance(w, &mut out);
                    }
                    out.finals
                        .extend(changes.into_iter().map(|c| Finalized::Change(c, watermark)));
                }
                last_epoch = Some(epoch);
            }
            let finished = frontier.is_none();
            let at_end = finished && tracker.watermark() == Watermark::End;
            let state_watermark = if at_end {
                // End of input: the watermark moves to the end of the data.
                tracker.max_ts().map(|m| m.saturating_add(1)).or(watermark)
            } else {
                watermark
            };
            if at_end {
                timelines.finish(&mut out);
            } else if let Some(w) = watermark {
                timelines.advance(w, &mut out);
            }
            if finished && !at_end {
                let (pending, windows) = timelines.open_state();
                if pending + windows > 0 {
                    tracing::info!(
                        worker,
                        pending,
                        windows,
                        "interrupted: fixes above the watermark and open windows are not written"
                    );
                }
            }
            if tracing::enabled!(tracing::Level::DEBUG)
                && last_stats.elapsed() >= std::time::Duration::from_secs(1)
            {
                last_stats = std::time::Instant::now();
                let (pending, windows) = timelines.open_state();
                let (due, closing, offline) = timelines.queue_lengths();
                let stashed: usize = fix_stash.values().flatten().map(Vec::len).sum();
                tracing::debug!(
                    worker,
                    vehicles = timelines.vehicles(),
                    pending,
                    windows,
                    due,
                    closing,
                    offline,
                    stashed,
                    "timeline state"
                );
            }
            // Publish state and progress together, at most once per interval (always at the
            // end), so that `as_of` never runs ahead of the published state.
            let publish_now = finished || last_publish.elapsed() >= cfg.publish_every;
            if publish_now {
                timelines.publish(state_watermark, &mut out);
                last_publish = std::time::Instant::now();
            } else {
                activator.activate_after(cfg.publish_every.saturating_sub(last_publish.elapsed()));
            }
            let emit_at = last_epoch.unwrap_or(*held[0].time()).max(*held[0].time());
            let advanced = publish_now && (state_watermark != published || at_end);
            if let Some(w) = state_watermark.filter(|_| advanced) {
                // Everything final below `w` precedes this mark on the finals output.
                out.finals.push(Finalized::Watermark(w));
            }
            if !out.raw.is_empty()
                || !out.finals.is_empty()
                || !out.rows.is_empty()
                || !out.dead.is_empty()
                || !out.state.is_empty()
                || advanced
            {
                let caps_at: Vec<_> = held.iter().map(|c| c.delayed(&emit_at)).collect();
                flush(&mut out, &caps_at, emit_at);
                if advanced {
                    if let Some(w) = state_watermark {
                        cfg.metrics.advance_watermark(w);
                        progress_out.activate().session(&caps_at[4]).give(Progress {
                            worker,
                            watermark: w,
                            end: at_end,
                        });
                    }
                    published = state_watermark;
                }
            }
            if let Some(range) = cuts.as_mut().and_then(|c| c.frontier(frontier)) {
                snapshots.begin(&mut timelines, &tracker, watermark, range);
            }
            // The snapshot is written a slice at a time, paced (all of it once the input
            // ended).
            let budget = frontier.map(|_| SNAPSHOT_SLICE);
            if let Some(wait) = snapshots.step(&mut timelines, budget, std::time::Instant::now()) {
                activator.activate_after(wait);
            }
            match frontier {
                None => caps = None,
                Some(f) => {
                    for c in held.iter_mut() {
                        if *c.time() < f {
                            c.downgrade(&f);
                        }
                    }
                }
            }
        }
    });
    CoreStreams {
        raw,
        rows,
        dead_letters,
        state: state.as_collection(),
        progress,
        finals,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::TimelineConfig;
    use fleetflow_types::checkpoint::Hub;
    use std::time::{Duration, Instant};

    #[test]
    fn a_snapshot_is_written_in_paced_slices_and_offered_once_complete() {
        let metrics = Arc::new(Metrics::new(vec![]));
        let cfg = TimelineConfig {
            offline_after: 600_000,
            tiers: vec![60_000],
            raw: false,
            finals: false,
        };
        let names = Arc::new(vec!["in".to_string()]);
        let mut t = Timelines::new(cfg, Arc::default(), names, metrics);
        let mut out = Outputs::default();
        let n = 50_000;
        for i in 0..n {
            let fix = Fix::at(&format!("v{i}"), "t", 1_700_000_000_000 + i, 52.0, 13.0);
            let inc = IncomingFix {
                fix,
                payload: bytes::Bytes::from_static(b"{}"),
                input: 0,
                position: i as u64,
                received_at: 0,
            };
            t.offer(inc, None, &mut out);
        }
        let hub = Arc::new(Hub::new(10, vec![(SNAPSHOT_OP.into(), 0)], 0));
        let mut w = SnapshotWriter {
            hub: Some(hub.clone()),
            worker: 0,
            writing: None,
            next_slice: Instant::now(),
        };
        w.begin(&mut t, &WatermarkTracker::default(), None, (10, 10));
        let before = Instant::now();
        assert_eq!(
            w.step(&mut t, Some(SNAPSHOT_SLICE), before),
            Some(SNAPSHOT_PAUSE),
            "{n} vehicles take more than one slice"
        );
        let written = t.snapshot_cursor().expect("being written");
        assert!(written > 0 && written < n as u32, "{written}");
        assert!(w.next_slice >= before + SNAPSHOT_PAUSE);
        // Before the pause is over: nothing is written, and the wait is what is left.
        let early = w.next_slice - Duration::from_millis(1);
        assert_eq!(
            w.step(&mut t, Some(SNAPSHOT_SLICE), early),
            Some(Duration::from_millis(1))
        );
        assert_eq!(t.snapshot_cursor(), Some(written));
        assert!(
            hub.take_ready().is_none(),
            "not offered before it is complete"
        );
        // Once it is over, the next slice.
        let due = w.next_slice;
        assert!(w.step(&mut t, Some(SNAPSHOT_SLICE), due).is_some());
        assert!(t.snapshot_cursor().expect("not done yet") > written);
        // The rest at once (the input ended), paced or not; then it is offered.
        assert_eq!(w.step(&mut t, None, due), None);
        let ready = hub.take_ready().expect("offered");
        assert_eq!(ready.boundary, 10);
        let snap: TimelineSnapshot =
            postcard::from_bytes(&ready.pieces[0].1.contiguous()).expect("decodes");
        assert_eq!(snap.vehicles.len(), n as usize);
        assert_eq!(w.step(&mut t, Some(SNAPSHOT_SLICE), Instant::now()), None);
    }
}
