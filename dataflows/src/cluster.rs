//! One job over several processes: where workers are, and how every process gets every
//! worker's results for its query API.
//!
//! Timely numbers the workers of a cluster `0..processes × workers`, process `p` running
//! `p × workers .. (p + 1) × workers`. Per-vehicle state lives on exactly one worker of the
//! cluster (fixes are exchanged by vehicle), so what the API shows of a vehicle is produced
//! on one worker of one process. [`mirror`] copies a per-worker stream to every process:
//!
//! ```text
//!   worker w (any process) ──(w, record)──► worker p × workers + w mod workers, for every p
//! ```
//!
//! A process's view keeps one shard per worker of the cluster; shard `w` is fed by exactly
//! one local worker over one channel, so it sees `w`'s results in the order `w` made them,
//! and the job clock `w` reached with them (the view's `as_of` is the least over all
//! shards, one value for the whole cluster). A worker's own copy stays in its process and
//! never touches the network.

use timely::dataflow::channels::pact::Exchange as ExchangePact;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Operator;
use timely::dataflow::Stream;

/// Where the workers of a job are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Processes in the cluster.
    pub processes: usize,
    /// Timely workers in each process.
    pub workers: usize,
}

impl Layout {
    /// One process of `workers` workers.
    pub fn single(workers: usize) -> Layout {
        Layout {
            processes: 1,
            workers: workers.max(1),
        }
    }

    /// Workers in the cluster.
    pub fn peers(&self) -> usize {
        self.processes * self.workers
    }

    /// Worker `w`'s index within its process.
    pub fn local(&self, w: usize) -> usize {
        w % self.workers
    }

    /// The global index of local worker `local` of `process`.
    pub fn global(&self, process: usize, local: usize) -> usize {
        process * self.workers + local
    }

    /// The worker of `process` that receives the mirror of worker `source`'s results.
    pub fn mirror_target(&self, process: usize, source: usize) -> usize {
        self.global(process, self.local(source))
    }

    /// The workers with `w`'s local index, one per process: those that receive `w`'s
    /// mirrored results, and those whose mirrored results `w` receives.
    pub fn siblings(&self, w: usize) -> impl Iterator<Item = usize> {
        let local = self.local(w);
        let layout = *self;
        (0..self.processes).map(move |p| layout.global(p, local))
    }
}

/// Copies every record of `stream` to one worker of every process (see the module docs),
/// tagged with the index of the worker that produced it; records keep their times, and
/// every receiving worker gets a producer's records in the order it made them.
pub fn mirror<'scope, D>(
    stream: Stream<'scope, u64, Vec<D>>,
    layout: Layout,
) -> Stream<'scope, u64, Vec<(u32, D)>>
where
    D: timely::ExchangeData + Clone,
{
    let me = stream.scope().index();
    send_in_order(stream, "Mirror", move |d, out| {
        fan_out(
            (0..layout.processes).map(|p| layout.mirror_target(p, me) as u64),
            (me as u32, d),
            out,
        )
    })
}

/// Sends every record of `stream` to every worker; every worker gets a sender's records in
/// the order they were sent (which timely's own `broadcast` does not keep, see
/// `send_in_order`).
pub fn broadcast_in_order<'scope, D>(
    stream: Stream<'scope, u64, Vec<D>>,
) -> Stream<'scope, u64, Vec<D>>
where
    D: timely::ExchangeData + Clone,
{
    let peers = stream.scope().peers() as u64;
    send_in_order(stream, "BroadcastInOrder", move |d, out| {
        fan_out(0..peers, d, out)
    })
}

/// One copy of `d` for each of `targets`, the last one moved rather than cloned.
fn fan_out<E: Clone>(targets: impl Iterator<Item = u64>, d: E, out: &mut Vec<(u64, E)>) {
    let mut targets = targets.peekable();
    while let Some(t) = targets.next() {
        if targets.peek().is_none() {
            out.push((t, d));
            return;
        }
        out.push((t, d.clone()));
    }
}

/// Sends the records `fan` makes of each record of `stream` (`(worker, record)` pairs) to
/// those workers, keeping on every channel the order the records were made in.
///
/// Timely promises no order among the records of one time, and its `map`, `exchange` and
/// `broadcast` regroup an input's containers by time with an unstable sort, so two
/// containers of one epoch may be passed on in either order. What goes through here (input
/// reports, geofence changes, view batches) is applied in the order it was made: both steps
/// read their input in arrival order instead, over channels that keep it.
fn send_in_order<'scope, D, E, F>(
    stream: Stream<'scope, u64, Vec<D>>,
    name: &str,
    mut fan: F,
) -> Stream<'scope, u64, Vec<E>>
where
    D: timely::ExchangeData,
    E: timely::ExchangeData,
    F: FnMut(D, &mut Vec<(u64, E)>) + 'static,
{
    let mut fanned: Vec<(u64, E)> = Vec::new();
    let routed = stream.unary(Pipeline, &format!("{name}: route"), move |_, _| {
        move |input, output| {
            input.for_each(|cap, data| {
                for d in data.drain(..) {
                    fan(d, &mut fanned);
                }
                output.session(&cap).give_container(&mut fanned);
            });
        }
    });
    routed.unary(
        ExchangePact::new(|(target, _): &(u64, E)| *target),
        &format!("{name}: deliver"),
        |_, _| {
            move |input, output| {
                input.for_each(|cap, data| {
                    output
                        .session(&cap)
                        .give_iterator(data.drain(..).map(|(_, e)| e));
                });
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use timely::container::CapacityContainerBuilder;

    #[test]
    fn the_layout_numbers_workers_like_timely() {
        let l = Layout {
            processes: 3,
            workers: 2,
        };
        assert_eq!(l.peers(), 6);
        assert_eq!(l.local(4), 0);
        assert_eq!(l.global(1, 1), 3);
        assert_eq!(l.mirror_target(0, 5), 1);
        assert_eq!(l.mirror_target(2, 5), 5);
        assert_eq!(l.siblings(3).collect::<Vec<_>>(), vec![1, 3, 5]);
    }

    #[test]
    fn every_worker_gets_its_shards_from_every_worker_in_order() {
        // Four workers in one process stand in for two processes of two: the routing is
        // the same function of the global index.
        let layout = Layout {
            processes: 2,
            workers: 2,
        };
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = got.clone();
        timely::execute(timely::Config::process(4), move |worker| {
            let me = worker.index();
            let sink = sink.clone();
            worker.dataflow::<u64, _, _>(|scope| {
                use timely::dataflow::operators::{Inspect, ToStream};
                let data: Vec<u64> = (0..50).map(|i| me as u64 * 1000 + i).collect();
                let s = data.to_stream(scope);
                mirror(s, layout).inspect(move |(source, d)| {
                    sink.lock().unwrap().push((me, *source as usize, *d))
                });
            });
        })
        .unwrap();
        let got = got.lock().unwrap().clone();
        assert_eq!(got.len(), 4 * 50 * 2, "every record once per process");
        for (receiver, source, d) in &got {
            assert_eq!(*d / 1000, *source as u64);
            assert!(layout.siblings(*source).any(|w| w == *receiver));
        }
        for receiver in 0..4 {
            for source in 0..4 {
                let seq: Vec<u64> = got
                    .iter()
                    .filter(|(r, s, _)| *r == receiver && *s == source)
                    .map(|(_, _, d)| *d)
                    .collect();
                if layout.local(receiver) == layout.local(source) {
                    let want: Vec<u64> = (0..50).map(|i| source as u64 * 1000 + i).collect();
                    assert_eq!(seq, want, "{source} -> {receiver}: all, in order");
                } else {
                    assert!(seq.is_empty());
                }
            }
        }
    }

    /// Containers of two epochs, interleaved (a source's reports, one per activation, as
    /// the epoch moves on): each worker gets every epoch's records in the order they were
    /// sent. (Whether timely's own operators reorder them depends on how many containers
    /// of mixed epochs meet in one activation, which a test cannot force; the input
    /// tracker's test covers a reordered end.)
    #[test]
    fn a_broadcast_keeps_each_senders_order_within_an_epoch() {
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = got.clone();
        timely::execute(timely::Config::process(2), move |worker| {
            use timely::dataflow::operators::Concat;
            let me = worker.index();
            let sink = sink.clone();
            let mut early = timely::dataflow::InputHandle::<
                u64,
                CapacityContainerBuilder<Vec<(u64, u64)>>,
            >::new();
            let mut late = timely::dataflow::InputHandle::<
                u64,
                CapacityContainerBuilder<Vec<(u64, u64)>>,
            >::new();
            worker.dataflow::<u64, _, _>(|scope| {
                let s = early.to_stream(scope).concat(late.to_stream(scope));
                broadcast_in_order(s).sink(Pipeline, "Collect", move |(input, _)| {
                    input.for_each(|cap, data| {
                        let t = *cap.least().expect("a time");
                        let mut got = sink.lock().unwrap();
                        got.extend(data.drain(..).map(|d| (me, t, d)));
                    });
                });
            });
            late.advance_to(1);
            if me == 0 {
                // One container per record, handed over before the receivers run: they meet
                // them all in one activation.
                for i in 0..500u64 {
                    early.send((0, i));
                    early.flush();
                    late.send((1, i));
                    late.flush();
                }
            }
            early.advance_to(2);
            late.advance_to(2);
        })
        .unwrap();
        let got = got.lock().unwrap().clone();
        for receiver in 0..2 {
            for epoch in 0..2 {
                let seq: Vec<u64> = got
                    .iter()
                    .filter(|(r, t, (e, _))| *r == receiver && *t == epoch && *e == epoch)
                    .map(|(_, _, (_, d))| *d)
                    .collect();
                assert_eq!(
                    seq,
                    (0..500).collect::<Vec<_>>(),
                    "worker {receiver}, epoch {epoch}"
                );
            }
        }
    }
}
