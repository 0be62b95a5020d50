//! Publication of a collection's changes to a view outside the dataflow (the query API).
//!
//! ```text
//!   vehicle state updates ──┐
//!                           ├─► "Publish: VehicleState" ──► sink(updates in time order, as_of, epoch)
//!   progress ───────────────┘
//! ```
//!
//! The sink runs on the worker thread; it must only apply updates to a shared structure
//! (e.g. a lock-protected map) and never block on I/O. Updates are handed over only for
//! epochs the frontier has passed, in time order with retractions first, together with the
//! job clock each producing worker had reached, so that a reader sees a consistent `as_of`.
//! (On one process a worker publishes its own results; in a cluster it publishes the
//! results [`crate::cluster::mirror`] brings it from one worker of every process.)
//!
//! The state collection is not arranged here: the view is its only consumer and the
//! timeline emits exact retract/insert pairs, so an arrangement would only add work.
//! (Geofencing does not join with it either: it follows final fixes per vehicle on the
//! vehicle's own worker.)

use crate::operator::Progress;
use differential_dataflow::VecCollection;
use std::collections::BTreeMap;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::Stream;

/// Hands a collection's changes and progress to `sink`, in time order, once complete,
/// with the latest epoch (processing-time ms the inputs were read at) they cover. The
/// progress handed over is the latest of each worker it came from.
/// Within an epoch, updates keep the order they were produced in (the vehicle state
/// collection is exact retract/insert pairs, each retraction followed by the insertion that
/// replaces it); they are moved, never sorted or copied.
pub fn publish<'scope, D, F>(
    name: &str,
    updates: VecCollection<'scope, u64, D, isize>,
    progress: Stream<'scope, u64, Vec<Progress>>,
    mut sink: F,
) where
    D: timely::ExchangeData + Ord,
    F: FnMut(Vec<(D, isize)>, Vec<Progress>, Option<u64>) + 'static,
{
    let scope = progress.scope();
    let mut builder = OperatorBuilder::new(format!("Publish: {name}"), scope);
    let mut upd_in = builder.new_input(updates.inner, Pipeline);
    let mut prog_in = builder.new_input(progress, Pipeline);
    builder.build(move |_caps| {
        let mut updates: BTreeMap<u64, Vec<(D, isize)>> = BTreeMap::new();
        // By epoch, then by worker: that worker's greatest job clock in the epoch.
        let mut progress: BTreeMap<u64, BTreeMap<usize, Progress>> = BTreeMap::new();
        move |frontiers| {
            upd_in.for_each(|_cap, data| {
                for (d, t, r) in data.drain(..) {
                    updates.entry(t).or_default().push((d, r));
                }
            });
            prog_in.for_each(|cap, data| {
                if let Some(t) = cap.least() {
                    let epoch = progress.entry(*t).or_default();
                    for p in data.drain(..) {
                        let e = epoch.entry(p.worker).or_insert(p);
                        if p.end || (!e.end && p.clock >= e.clock) {
                            *e = p;
                        }
                    }
                }
            });
            let frontier: Option<u64> = frontiers
                .iter()
                .filter_map(|f| f.frontier().first().copied())
                .min();
            let ready = |t: &u64| frontier.is_none_or(|f| *t < f);
            let mut batch = Vec::new();
            let mut epoch = None;
            while let Some((t, _)) = updates.first_key_value() {
                if !ready(t) {
                    break;
                }
                let (t, ups) = updates.pop_first().expect("checked");
                epoch = Some(t);
                if batch.is_empty() {
                    batch = ups;
                } else {
                    batch.extend(ups);
                }
            }
            let mut latest: BTreeMap<usize, Progress> = BTreeMap::new();
            while let Some((t, _)) = progress.first_key_value() {
                if !ready(t) {
                    break;
                }
                if let Some((_, epoch)) = progress.pop_first() {
                    latest.extend(epoch);
                }
            }
            if !batch.is_empty() || !latest.is_empty() {
                sink(batch, latest.into_values().collect(), epoch);
            }
        }
    });
}
