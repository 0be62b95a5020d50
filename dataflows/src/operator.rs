//! The timely operator that runs [`Timelines`] on every worker.
//!
//! ```text
//!   fixes ──Exchange(hash vehicle_id)──┐
//!                                      ├─► "VehicleTimeline" ─┬─► raw fixes       (final)
//!   input reports ──Broadcast──────────┤                      ├─► tier rows       (final)
//!   fence change marks ────────────────┤                      ├─► finals          (to geofencing: fixes, change marks)
//!   clock reports of every worker ─────┘                      ├─► dead letters    (late, implausible_jump)
//!        ▲                                                    ├─► vehicle state   (differential updates)
//!        │                                                    ├─► progress        (job clock per epoch)
//!        └────────── feedback(+1) ◄── Broadcast ◄─────────────┴─► clock reports   (this worker's vehicles)
//! ```
//!
//! Timely times are processing epochs. Fixes are judged against their own vehicle's clock
//! as they arrive (see [`crate::timeline`]). The job clock comes from every worker's clock
//! reports, broadcast and fed back (see [`crate::clock`]); a worker applies them as they
//! arrive, so no epoch waits for the loop, and workers may briefly disagree on the clock.
//! Nothing that must agree depends on that: a geofence change carries the job clock it
//! takes effect at (stamped where the dataflow takes it in), and the end of a bounded
//! input has an exact clock of its own.
//!
//! When the inputs' frontier empties, the job has either reached the end of every input
//! (every input reported `Finished`: every fix becomes final, every window completes, and
//! the workers exchange every vehicle's clock once more for the exact final job clock) or
//! was interrupted (open windows are left unwritten rather than written incomplete).

use crate::clock::{ClockReport, JobClock};
use crate::geofence::fences::ChangeMark;
use crate::geofence::Finalized;
use crate::inputs::InputTracker;
use crate::sliced::{SnapshotWriter, SNAPSHOT_SLICE};
use crate::timeline::{Outputs, TimelineConfig, Timelines, VehicleSnapshot};
use differential_dataflow::{AsCollection, Hashable, VecCollection};
use fleetflow_runtime::checkpoint::Hub;
use fleetflow_runtime::metrics::Metrics;
use fleetflow_types::fix::Fix;
pub use fleetflow_types::records::Progress;
use fleetflow_types::records::{
    DeadLetter, IncomingFix, InputReport, InputState, TierRow, VehicleState,
};
use fleetflow_types::registry::VehicleRegistry;
use fleetflow_types::time::Millis;
use fleetflow_types::CompactString;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::{Capability, ConnectLoop, Feedback};
use timely::dataflow::Stream;
use timely::progress::Antichain;

/// Everything the per-vehicle operator needs.
#[derive(Clone)]
pub struct CoreConfig {
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
    pub publish: crate::pace::PublishPace,
    /// How often a worker reports its vehicles' clocks (processing time).
    pub clock_every: Duration,
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
    /// The inputs' reports as this worker applied them (the same on every worker).
    pub tracker: InputTracker,
    /// The job clock.
    pub clock: Option<Millis>,
    /// Geofence changes `(seq, at)` some of the worker's vehicles had not taken.
    pub changes: Vec<(u64, Millis)>,
    /// The newest geofence change registered.
    pub latest_change: u64,
    /// The worker's vehicles, by id.
    pub vehicles: Vec<VehicleSnapshot>,
    /// Replayable inputs: `(input, position)`, the least position of a fix of the worker's
    /// vehicles that was not final (a restore reads the input again from there).
    pub replay_from: Vec<(u32, u64)>,
}

impl TimelineSnapshot {
    /// Splits the snapshots of every worker (of the run that took them) into `parts`
    /// shares, each vehicle going to `owner(id)`, each share sorted by id. The tracker and
    /// clock (the same on every worker, up to the epoch each was taken at) and the
    /// geofence changes go to every share.
    pub fn split(
        all: Vec<TimelineSnapshot>,
        parts: usize,
        owner: impl Fn(&CompactString) -> usize,
    ) -> Vec<TimelineSnapshot> {
        let mut out = vec![TimelineSnapshot::default(); parts];
        let newest = all
            .iter()
            .max_by_key(|s| s.clock)
            .map(|s| (s.tracker.clone(), s.clock));
        let mut changes: BTreeMap<u64, Millis> = BTreeMap::new();
        let latest_change = all.iter().map(|s| s.latest_change).max().unwrap_or(0);
        for s in all {
            changes.extend(s.changes);
            for v in s.vehicles {
                out[owner(&v.id) % parts].vehicles.push(v);
            }
        }
        for share in &mut out {
            if let Some((tracker, clock)) = &newest {
                (share.tracker, share.clock) = (tracker.clone(), *clock);
            }
            share.changes = changes.iter().map(|(s, a)| (*s, *a)).collect();
            share.latest_change = latest_change;
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
    pub state: VecCollection<'scope, u64, (CompactString, Arc<VehicleState>), isize>,
    /// The job clock each worker reached, per epoch.
    pub progress: Stream<'scope, u64, Vec<Progress>>,
    /// Final fixes with geofence changes interleaved, for geofencing.
    pub finals: Stream<'scope, u64, Vec<Finalized>>,
}

type Out<D> = OutputBuilder<u64, CapacityContainerBuilder<Vec<D>>>;

/// How often a worker counts the vehicles far ahead of and behind the job clock.
const OUTLIERS_EVERY: Duration = Duration::from_secs(1);

/// Begins the timelines' snapshot for `range`, headed by the input tracker and the job
/// clock (a [`TimelineSnapshot`]'s first fields), after finishing the one being written.
fn begin_snapshot(
    w: &mut SnapshotWriter,
    timelines: &mut Timelines,
    tracker: &InputTracker,
    clock: Option<Millis>,
    range: (u64, u64),
) {
    if !w.enabled() {
        return;
    }
    let head = postcard::to_stdvec(&(tracker, clock)).expect("tracker encodes");
    w.begin(timelines, range, |t| t.begin_snapshot(head));
}

/// The key fixes are exchanged by: all of a vehicle's fixes go to worker `route % peers`.
pub fn route(f: &IncomingFix) -> u64 {
    vehicle_key(&f.fix.vehicle_id)
}

/// The key of vehicle `id` ([`route`]'s, for what is keyed by vehicle id alone).
pub fn vehicle_key(id: &CompactString) -> u64 {
    id.hashed()
}

/// Renders the per-vehicle operator over decoded fixes, input reports and geofence
/// changes, with the loop that carries the workers' clock reports.
///
/// The fixes come in batches whose fixes all go to one worker (by [`route`]): the
/// exchange moves batches whole, routed by their first fix, not fix by fix.
pub fn render_timeline<'scope>(
    fixes: Stream<'scope, u64, Vec<Vec<IncomingFix>>>,
    reports: Stream<'scope, u64, Vec<InputReport>>,
    changes: Stream<'scope, u64, Vec<ChangeMark>>,
    cfg: CoreConfig,
) -> CoreStreams<'scope> {
    let scope = fixes.scope();
    let worker = scope.index();
    let peers = scope.peers();
    let reports = crate::cluster::broadcast_in_order(reports);
    let (clock_loop, clock_reports) = scope.feedback::<Vec<ClockReport>>(1);
    let mut builder = OperatorBuilder::new("VehicleTimeline".to_owned(), scope);
    let activator = scope.activator_for(builder.operator_info().address);
    let mut fix_in = builder.new_input(
        fixes,
        Exchange::new(|b: &Vec<IncomingFix>| b.first().map_or(0, route)),
    );
    let mut report_in = builder.new_input(reports, Pipeline);
    let mut change_in = builder.new_input(changes, Pipeline);
    let (raw_out, raw) = builder.new_output::<Vec<Fix>>();
    let (row_out, rows) = builder.new_output::<Vec<TierRow>>();
    let (dead_out, dead_letters) = builder.new_output::<Vec<DeadLetter>>();
    let (state_out, state) =
        builder.new_output::<Vec<((CompactString, Arc<VehicleState>), u64, isize)>>();
    let (progress_out, progress) = builder.new_output::<Vec<Progress>>();
    let (finals_out, finals) = builder.new_output::<Vec<Finalized>>();
    let (clock_out, clock) = builder.new_output::<Vec<ClockReport>>();
    // The reports come back on an input connected to no output: the operator emits from
    // the capabilities it holds, which the inputs above bound.
    let mut clock_in = builder.new_input_connection(
        clock_reports,
        Pipeline,
        std::iter::empty::<(usize, Antichain<u64>)>(),
    );
    let mut raw_out: Out<Fix> = OutputBuilder::from(raw_out);
    let mut row_out: Out<TierRow> = OutputBuilder::from(row_out);
    let mut dead_out: Out<DeadLetter> = OutputBuilder::from(dead_out);
    let mut state_out: Out<((CompactString, Arc<VehicleState>), u64, isize)> =
        OutputBuilder::from(state_out);
    let mut progress_out: Out<Progress> = OutputBuilder::from(progress_out);
    let mut finals_out: Out<Finalized> = OutputBuilder::from(finals_out);
    let mut clock_out: Out<ClockReport> = OutputBuilder::from(clock_out);

    let mut cfg = cfg;
    builder.build(move |caps| {
        let mut caps = Some(caps);
        let mut timelines = Timelines::new(
            cfg.timeline.clone(),
            cfg.registry.clone(),
            cfg.input_names.clone(),
            cfg.metrics.clone(),
        );
        let mut tracker = InputTracker::default();
        let mut job_clock = JobClock::new(peers, None);
        let mut cuts = cfg.checkpoints.as_ref().map(|h| h.cuts());
        if let Some(r) = cfg.restore.take() {
            tracker = r.tracker;
            job_clock = JobClock::new(peers, r.clock);
            if let Some(c) = r.clock {
                cfg.metrics.advance_clock(c);
            }
            timelines.restore(r.vehicles, r.changes, r.latest_change, r.clock);
        }
        let mut snapshots = SnapshotWriter::new(cfg.checkpoints.clone(), SNAPSHOT_OP, worker);
        let mut published: Option<Millis> = None;
        let mut fix_stash: BTreeMap<u64, Vec<Vec<IncomingFix>>> = BTreeMap::new();
        let mut report_stash: BTreeMap<u64, Vec<InputReport>> = BTreeMap::new();
        let mut change_stash: BTreeMap<u64, Vec<ChangeMark>> = BTreeMap::new();
        let mut out = Outputs::default();
        let mut pacer = crate::pace::Pacer::new(cfg.publish, Instant::now());
        let mut last_stats = Instant::now();
        let mut last_sample: Option<Instant> = None;
        let mut last_outliers = Instant::now();
        // What the worker's rows are complete before, counted at most once a second.
        let mut complete = (Millis::MIN, None::<Instant>);
        let mut last_sent: Option<crate::clock::ClockSample> = None;
        let mut outliers = (0, 0);
        let mut last_emit = 0u64;
        // Whether the end of input was reached and this worker's clocks sent.
        let mut ending = false;
        // Whether the end of input left on the progress output.
        let mut end_published = false;
        // Whether an interrupted input's open state was logged (once).
        let mut told_interrupted = false;
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
            timelines.tick();
            fix_in.for_each(|cap, data| {
                if let Some(t) = cap.least() {
                    pacer.took(data.iter().map(Vec::len).sum());
                    fix_stash.entry(*t).or_default().append(data);
                }
            });
            report_in.for_each(|cap, data| {
                // Where other processes' inputs are, for the sources that read in step:
                // as soon as it arrives (flow control, no result depends on it).
                for r in data.iter() {
                    cfg.metrics
                        .remote_input(r.input, r.progress, r.state == InputState::Finished);
                }
                if let Some(t) = cap.least() {
                    report_stash.entry(*t).or_default().append(data);
                }
            });
            change_in.for_each(|cap, data| {
                if let Some(t) = cap.least() {
                    change_stash.entry(*t).or_default().append(data);
                }
            });
            // The workers' clock reports, applied as they come.
            clock_in.for_each(|_, data| {
                for r in data.drain(..) {
                    job_clock.apply(r);
                }
            });
            let Some(held) = caps.as_mut() else { return };
            // Epochs below every input's frontier are complete (once the inputs ended,
            // whatever is stashed is).
            let inputs_frontier: Option<u64> = frontiers[..3]
                .iter()
                .filter_map(|f| f.frontier().first().copied())
                .min();
            let ready = |t: &u64| inputs_frontier.is_none_or(|f| *t < f);
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
                    begin_snapshot(
                        &mut snapshots,
                        &mut timelines,
                        &tracker,
                        job_clock.now(),
                        range,
                    );
                }
                for batch in fix_stash.remove(&epoch).unwrap_or_default() {
                    timelines.offer_batch(batch, &mut out);
                }
                for r in report_stash.remove(&epoch).unwrap_or_default() {
                    tracker.apply(&r);
                }
                let mut changes = change_stash.remove(&epoch).unwrap_or_default();
                // In the order they were made (they arrive so; the sort costs nothing then).
                changes.sort_by_key(|c| c.seq);
                for change in changes {
                    timelines.register_change(change.seq, change.at, &mut out);
                }
                last_epoch = Some(epoch);
            }
            if let Some(c) = job_clock.now().filter(|_| !ending) {
                timelines.set_clock(c, &mut out);
                cfg.metrics.advance_clock(c);
            }
            // The fixes and reports ended and every one of them was processed (the geofence
            // changes may go on: `--serve` keeps taking them after a bounded input; until
            // their frontier passes the last epochs, those wait in the stashes).
            let finished = frontiers[..2].iter().all(|f| f.frontier().is_empty())
                && fix_stash.is_empty()
                && report_stash.is_empty();
            let at_end = finished && tracker.ended();
            if at_end && !ending {
                // End of input: everything becomes final; then every worker's clocks, once.
                ending = true;
                timelines.finish(&mut out);
                clock_out
                    .activate()
                    .session(&held[6])
                    .give(ClockReport::End {
                        worker: worker as u32,
                        clocks: timelines.clocks(),
                    });
            }
            let end_clock = if ending { job_clock.end() } else { None };
            if let Some(Some(c)) = end_clock {
                timelines.end_clock(c, &mut out);
                cfg.metrics
                    .clock
                    .store(c, std::sync::atomic::Ordering::Relaxed);
            }
            let done = finished && (!at_end || end_clock.is_some());
            if finished && !at_end && !told_interrupted {
                told_interrupted = true;
                let (pending, windows) = timelines.open_state();
                if pending + windows > 0 {
                    tracing::info!(
                        worker,
                        pending,
                        windows,
                        "interrupted: fixes not yet final and open windows are not written"
                    );
                }
            }
            if tracing::enabled!(tracing::Level::DEBUG)
                && last_stats.elapsed() >= Duration::from_secs(1)
            {
                last_stats = Instant::now();
                let (pending, windows) = timelines.open_state();
                let (offline, silence, changes) = timelines.queue_lengths();
                let stashed: usize = fix_stash.values().flatten().map(Vec::len).sum();
                tracing::debug!(
                    worker,
                    vehicles = timelines.vehicles(),
                    pending,
                    windows,
                    offline,
                    silence,
                    changes,
                    stashed,
                    clock = ?job_clock.now(),
                    "timeline state"
                );
            }
            // The workers' clocks, for the job clock (not once the input ended).
            if !finished && last_sample.is_none_or(|t| t.elapsed() >= cfg.clock_every) {
                last_sample = Some(Instant::now());
                if last_outliers.elapsed() >= OUTLIERS_EVERY {
                    last_outliers = Instant::now();
                    outliers = timelines.outliers();
                    let (ahead, behind) = job_clock.outliers();
                    cfg.metrics
                        .set_clock_outliers(ahead, behind, job_clock.voters());
                }
                let mut sample = timelines.clock_sample(worker as u32);
                (sample.ahead, sample.behind) = outliers;
                if last_sent.as_ref() != Some(&sample) {
                    last_sent = Some(sample.clone());
                    clock_out
                        .activate()
                        .session(&held[6])
                        .give(ClockReport::Sample(sample));
                }
            }
            if !finished {
                activator.activate_after(cfg.clock_every);
            }
            // Publish state and progress together, at most once per interval (always at the
            // end), so that `as_of` never runs ahead of the published state.
            let wait = pacer.wait(Instant::now());
            let publish_now = done || wait.is_zero();
            if publish_now {
                timelines.publish(&mut out);
                pacer.published(Instant::now());
            } else if !finished {
                activator.activate_after(wait);
            }
            let clock = timelines.clock();
            // Outputs leave at the latest epoch processed, never before what left already
            // (once the inputs ended, epochs past the held capabilities are processed).
            let emit_at = last_epoch
                .unwrap_or(*held[0].time())
                .max(*held[0].time())
                .max(last_emit);
            last_emit = emit_at;
            // The end is published once (the operator may run on while changes come).
            let at_end_now = done && at_end && !end_published;
            let advanced = publish_now && (clock != published || at_end_now);
            if let Some(c) = clock.filter(|_| advanced) {
                // Every fix final so far precedes this mark on the finals output.
                out.finals.push(Finalized::Clock(c));
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
                    if at_end_now {
                        complete.0 = Millis::MAX;
                    } else if complete.1.is_none_or(|t| t.elapsed() >= OUTLIERS_EVERY) {
                        complete = (timelines.unfinished_from(), Some(Instant::now()));
                    }
                    // Without a clock only the end is worth reporting (an input with no
                    // valid fix still ends).
                    if clock.is_some() || at_end_now {
                        progress_out.activate().session(&caps_at[4]).give(Progress {
                            worker,
                            clock,
                            complete: complete.0,
                            end: at_end_now,
                        });
                    }
                    published = clock;
                    end_published |= at_end_now;
                }
            }
            if let Some(range) = cuts.as_mut().and_then(|c| c.frontier(inputs_frontier)) {
                begin_snapshot(
                    &mut snapshots,
                    &mut timelines,
                    &tracker,
                    job_clock.now(),
                    range,
                );
            }
            // The snapshot is written a slice at a time, paced (all of it once the input
            // ended).
            let budget = inputs_frontier.map(|_| SNAPSHOT_SLICE);
            if let Some(wait) = snapshots.step(&mut timelines, budget, Instant::now()) {
                activator.activate_after(wait);
            }
            match inputs_frontier {
                None if done => caps = None,
                None => {}
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
    crate::cluster::broadcast_in_order(clock).connect_loop(clock_loop);
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
    use crate::sliced::SNAPSHOT_PAUSE;
    use crate::timeline::TimelineConfig;
    use fleetflow_runtime::checkpoint::Hub;
    use std::time::{Duration, Instant};

    #[test]
    fn a_snapshot_is_written_in_paced_slices_and_offered_once_complete() {
        let metrics = Arc::new(Metrics::new(vec![]));
        let cfg = TimelineConfig {
            lateness: 30_000,
            offline_after: 600_000,
            tiers: vec![60_000],
            raw: false,
            finals: false,
            silence: None,
            vote_for: None,
            replay: false,
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
                replayed: false,
            };
            t.offer(inc, &mut out);
        }
        let hub = Arc::new(Hub::new(10, vec![(SNAPSHOT_OP.into(), 0)], 0));
        let mut w = SnapshotWriter::new(Some(hub.clone()), SNAPSHOT_OP, 0);
        begin_snapshot(&mut w, &mut t, &InputTracker::default(), None, (10, 10));
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
            crate::sliced::decode(&ready.pieces[0].1.contiguous()).expect("decodes");
        assert_eq!(snap.vehicles.len(), n as usize);
        assert_eq!(w.step(&mut t, Some(SNAPSHOT_SLICE), Instant::now()), None);
    }
}
