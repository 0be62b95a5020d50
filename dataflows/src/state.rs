//! Vehicle state: the timeline's exact retract/insert pairs, arranged by vehicle, and
//! published batch by batch to a view outside the dataflow (the query API).
//!
//! ```text
//!   vehicle state ±(id, (shard, state)) ──┐
//!                                         ├─► "Arrange: VehicleState" ══► batches ──► "Publish: VehicleState" ──► sink
//!   progress (job clock per worker) +1 ───┘   (differential's arrange, in place)
//! ```
//!
//! The collection is already partitioned by vehicle (the timeline runs each vehicle on one
//! worker; in a cluster, [`crate::cluster::mirror`] brings every worker's changes to its
//! siblings), so it is arranged in place ([`Pipeline`], no exchange), keyed by the hash of
//! the vehicle id, the value ordered by fix time first ([`HeldState`]). The arrange
//! operator does the waiting: it emits a batch once the frontier has passed every update in
//! it, sorted by vehicle and consolidated. Publishing a batch hands the sink each vehicle's
//! net change over the batch (its retracted state, then its inserted one), grouped by the
//! shard (producing worker) the change belongs to; states that came and went within the
//! batch cancel out and are never published.
//!
//! The workers' progress (the job clock their results reflect) is arranged with the states,
//! as insertions of [`Held::Progress`] at the epoch it was reached: a batch holds a
//! worker's progress exactly when it holds the states of that epoch, so the progress a
//! batch hands over never runs ahead of its states, and nothing is stashed here to make
//! it so: the arrangement's frontier does the waiting.
//!
//! The arrangement's trace is not kept: no dataflow operator reads vehicle state (geofence
//! membership follows the final fixes, not the state), and the API's view lives outside the
//! worker threads, so it takes the batches: it keeps them as sorted runs per worker, merged
//! like a spine, and reads them without a lock. The states in them are the timeline's shared
//! allocations: publishing copies no state. What an update costs here is paid per pair, so
//! the timeline coalesces them per vehicle at its publication pace ([`crate::pace`]).

use differential_dataflow::hashable::Hashable;
use differential_dataflow::operators::arrange::arrangement::arrange_core;
use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::trace::cursor::{Cursor, Navigable};
use differential_dataflow::trace::implementations::{ValBatcher, ValSpine};
use differential_dataflow::VecCollection;
use fleetflow_types::records::{Progress, VehicleState};
use fleetflow_types::time::Millis;
use fleetflow_types::CompactString;
use std::collections::BTreeMap;
use std::sync::Arc;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Concat;
use timely::dataflow::Stream;

/// A vehicle's state as the arrangement holds it, under the hash of the vehicle's id.
///
/// The order puts the fix's time first: the states of one vehicle in a batch differ there,
/// so sorting them rarely compares ids or whole states (comparing the string ids as keys
/// took a sixth of the job's CPU).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HeldState {
    ts: Millis,
    id: CompactString,
    shard: u32,
    state: Arc<VehicleState>,
}

/// What the arrangement of vehicle state holds under a key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Held {
    /// A vehicle's state (under the hash of its id).
    State(HeldState),
    /// The progress a worker reached at the epoch (under the worker's index): the batch
    /// holding it holds the states of that epoch.
    Progress(Progress),
}

/// The arrangement of vehicle state: hash of the vehicle id -> its state, and worker ->
/// its progress, at processing epochs.
pub type StateSpine = ValSpine<u64, Held, u64, isize>;

/// Vehicle state arranged by vehicle.
pub type StateArrangement<'scope> = Arranged<'scope, TraceAgent<StateSpine>>;

/// One shard's net changes in a published batch: `(id, state)` and its difference,
/// retractions first.
pub type ShardChanges = Vec<((CompactString, Arc<VehicleState>), isize)>;

impl HeldState {
    /// Vehicle `id`'s `state`, from shard (producing worker) `shard`, under its key.
    pub fn keyed(id: CompactString, shard: u32, state: Arc<VehicleState>) -> (u64, HeldState) {
        let held = HeldState {
            ts: state.fix.ts,
            id,
            shard,
            state,
        };
        (held.id.hashed(), held)
    }
}

/// Arranges vehicle state, keyed with [`HeldState::keyed`], and the workers' `progress`
/// (as insertions at the epoch each was reached) where they are (no exchange): see the
/// module docs.
pub fn arrange_state<'scope>(
    state: VecCollection<'scope, u64, (u64, HeldState), isize>,
    progress: Stream<'scope, u64, Vec<Progress>>,
) -> StateArrangement<'scope> {
    let progress = progress.unary(Pipeline, "Progress as updates", |_, _| {
        move |input, output| {
            input.for_each(|cap, data| {
                let Some(t) = cap.least().copied() else {
                    return;
                };
                output.session(&cap).give_iterator(
                    data.drain(..)
                        .map(move |p| ((p.worker as u64, Held::Progress(p)), t, 1isize)),
                );
            });
        }
    });
    let updates = state
        .map(|(key, held)| (key, Held::State(held)))
        .inner
        .concat(progress);
    arrange_core::<_, _, ValBatcher<u64, Held, u64, isize>, StateSpine>(
        updates,
        Pipeline,
        "Arrange: VehicleState",
        ValBatcher::new,
    )
}

/// Hands the arranged state's batches to `sink`, in time order: per batch, every vehicle's
/// net change (retractions before insertions), the latest progress of each worker in the
/// batch (see `latest_progress`), and the latest epoch (processing-time ms the inputs
/// were read at) with state updates in the batch. A batch holds a worker's progress with
/// the states of its epoch, so a reader's `as_of` never runs ahead of the states.
pub fn publish_state<'scope, F>(state: StateArrangement<'scope>, mut sink: F)
where
    F: FnMut(BTreeMap<u32, ShardChanges>, Vec<Progress>, Option<u64>) + 'static,
{
    let scope = state.stream.scope();
    let mut builder = OperatorBuilder::new("Publish: VehicleState".to_string(), scope);
    let mut batches_in = builder.new_input(state.stream, Pipeline);
    // No dataflow operator reads the trace (see the module docs).
    drop(state.trace);
    builder.build(move |_caps| {
        let mut net: Vec<(HeldState, isize)> = Vec::new();
        move |_frontiers| {
            let mut changes: BTreeMap<u32, ShardChanges> = BTreeMap::new();
            let mut latest: BTreeMap<usize, (u64, Progress)> = BTreeMap::new();
            let mut epoch = None;
            batches_in.for_each(|_cap, spans| {
                for span in spans.iter() {
                    let Some(batch) = span.inner.as_ref() else {
                        continue;
                    };
                    let mut cursor = batch.cursor();
                    while cursor.key_valid(batch) {
                        net.clear();
                        while let Some(value) = cursor.get_val(batch) {
                            match value {
                                Held::State(held) => {
                                    let mut diff = 0isize;
                                    cursor.map_times(batch, |t, r| {
                                        diff += *r;
                                        epoch = epoch.max(Some(*t));
                                    });
                                    if diff != 0 {
                                        net.push((held.clone(), diff));
                                    }
                                }
                                Held::Progress(p) => cursor.map_times(batch, |t, r| {
                                    if *r > 0 {
                                        latest_progress(&mut latest, *t, *p);
                                    }
                                }),
                            }
                            cursor.step_val(batch);
                        }
                        // Retractions first: the insertion that follows replaces them.
                        net.sort_by_key(|(_, r)| *r > 0);
                        for (held, r) in net.drain(..) {
                            let shard = changes.entry(held.shard).or_default();
                            shard.push(((held.id, held.state), r));
                        }
                        cursor.step_key(batch);
                    }
                }
            });
            if !changes.is_empty() || !latest.is_empty() {
                let latest = latest.into_values().map(|(_, p)| p).collect();
                sink(changes, latest, epoch);
            }
        }
    });
}

/// Keeps, per worker, its progress of the latest epoch `t`; within one epoch the end, or
/// else the furthest clock.
fn latest_progress(latest: &mut BTreeMap<usize, (u64, Progress)>, t: u64, p: Progress) {
    let e = latest.entry(p.worker).or_insert((t, p));
    let newer = t > e.0 || (t == e.0 && (p.end || (!e.1.end && p.clock >= e.1.clock)));
    if newer {
        *e = (t, p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use differential_dataflow::AsCollection;
    use fleetflow_types::fix::Fix;
    use fleetflow_types::records::Status;
    use std::cell::RefCell;
    use std::rc::Rc;
    use timely::dataflow::operators::Input;

    fn state(id: &str, ts: Millis) -> Arc<VehicleState> {
        Arc::new(VehicleState::new(
            Fix::at(id, "t", ts, 41.1, -8.6),
            Status::Moving,
        ))
    }

    type Published = Vec<(BTreeMap<u32, ShardChanges>, Vec<Progress>, Option<u64>)>;

    /// Feeds `epochs` of exact retract/insert pairs (and one progress record per epoch),
    /// stepping the worker after every epoch when `step` holds, and returns what the sink
    /// was handed.
    fn run(epochs: Vec<Vec<((u64, HeldState), isize)>>, step: bool) -> Published {
        timely::execute_directly(move |worker| {
            let got: Rc<RefCell<Published>> = Rc::default();
            let sink = got.clone();
            let (mut states, mut progress) = worker.dataflow::<u64, _, _>(|scope| {
                let (states, stream) = scope.new_input::<Vec<((u64, HeldState), u64, isize)>>();
                let (progress, prog) = scope.new_input::<Vec<Progress>>();
                publish_state(
                    arrange_state(stream.as_collection(), prog),
                    move |changes, ps, epoch| sink.borrow_mut().push((changes, ps, epoch)),
                );
                (states, progress)
            });
            for (e, updates) in epochs.into_iter().enumerate() {
                let t = e as u64;
                for (d, r) in updates {
                    states.send((d, t, r));
                }
                progress.send(Progress {
                    worker: 0,
                    clock: Some(t as Millis * 1_000),
                    complete: 0,
                    end: false,
                });
                states.advance_to(t + 1);
                progress.advance_to(t + 1);
                if step {
                    for _ in 0..10 {
                        worker.step();
                    }
                }
            }
            drop((states, progress));
            while worker.step_or_park(None) {}
            got.take()
        })
    }

    fn pair(
        id: &str,
        old: Option<&Arc<VehicleState>>,
        new: &Arc<VehicleState>,
    ) -> Vec<((u64, HeldState), isize)> {
        let mut v: Vec<_> = old
            .map(|o| (HeldState::keyed(id.into(), 0, o.clone()), -1))
            .into_iter()
            .collect();
        v.push((HeldState::keyed(id.into(), 0, new.clone()), 1));
        v
    }

    #[test]
    fn a_workers_latest_progress_is_that_of_its_latest_epoch_and_within_one_the_end_or_furthest_clock(
    ) {
        let p = |worker, clock: Millis, end| Progress {
            worker,
            clock: Some(clock),
            complete: 0,
            end,
        };
        let mut latest = BTreeMap::new();
        latest_progress(&mut latest, 5, p(0, 3_000, false));
        latest_progress(&mut latest, 5, p(0, 2_000, false));
        latest_progress(&mut latest, 4, p(0, 9_000, false));
        latest_progress(&mut latest, 5, p(1, 1_000, true));
        latest_progress(&mut latest, 5, p(1, 7_000, false));
        assert_eq!(
            latest[&0],
            (5, p(0, 3_000, false)),
            "furthest clock of the latest epoch"
        );
        assert_eq!(
            latest[&1],
            (5, p(1, 1_000, true)),
            "the end wins within an epoch"
        );
        latest_progress(&mut latest, 6, p(0, 3_500, false));
        assert_eq!(latest[&0], (6, p(0, 3_500, false)));
    }

    #[test]
    fn a_batch_hands_over_each_vehicles_net_change_retraction_first_and_progress_after_its_state() {
        let (a1, a2, a3) = (state("a", 1), state("a", 2), state("a", 3));
        let b1 = state("b", 1);
        let epochs = vec![
            [pair("a", None, &a1), pair("b", None, &b1)].concat(),
            pair("a", Some(&a1), &a2),
            pair("a", Some(&a2), &a3),
        ];
        // All epochs at once: one batch, in which a1 and a2 came and went.
        let got = run(epochs.clone(), false);
        // (Vehicles come in the order of their ids' hashes.)
        let mut changes: Vec<_> = got
            .iter()
            .flat_map(|(c, _, _)| c.values().flatten())
            .collect();
        changes.sort_by(|x, y| x.0 .0.cmp(&y.0 .0));
        assert_eq!(
            changes,
            vec![
                &(("a".into(), a3.clone()), 1),
                &(("b".into(), b1.clone()), 1)
            ]
        );
        let clocks = got
            .iter()
            .flat_map(|(_, ps, _)| ps.iter().filter_map(|p| p.clock));
        assert_eq!(clocks.max(), Some(2_000));
        assert_eq!(got.iter().filter_map(|(_, _, e)| *e).max(), Some(2));
        // Epoch by epoch: every change, the retraction before the insertion that replaces
        // it, and each epoch's progress with (never before) its state.
        let got = run(epochs, true);
        assert_eq!(got.iter().filter(|(c, _, _)| !c.is_empty()).count(), 3);
        let mut view: BTreeMap<CompactString, Arc<VehicleState>> = BTreeMap::new();
        let mut seen_clock = None;
        for (changes, ps, _) in &got {
            for ((id, s), r) in changes.values().flatten() {
                if *r < 0 {
                    assert_eq!(view.remove(id).as_ref(), Some(s), "retracts what it holds");
                } else {
                    assert!(
                        view.insert(id.clone(), s.clone()).is_none(),
                        "retraction first"
                    );
                }
            }
            if let Some(c) = ps.iter().filter_map(|p| p.clock).max() {
                // The state of the progress's epoch is in the view.
                let epoch = (c / 1_000) as usize;
                let want = [&a1, &a2, &a3][epoch];
                assert_eq!(view.get("a"), Some(want));
                seen_clock = Some(c);
            }
        }
        assert_eq!(seen_clock, Some(2_000));
        assert_eq!(view.get("a"), Some(&a3));
        assert_eq!(view.get("b"), Some(&b1));
    }
}
