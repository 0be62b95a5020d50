//! The contract every source implements, and the timely operator that runs one.
//!
//! ```text
//!   Source (file / generator / kafka)        one instance per worker
//!        │ poll(input, budget) -> raw lines
//!        ▼
//!   "Source: NAME"  timely operator, time = epoch (processing-time ms)
//!        ├── fixes        IncomingFix        decoded + validated, exchanged by vehicle later
//!        ├── reports      InputReport        per-input greatest ts / state, broadcast later
//!        └── dead letters DeadLetter         malformed / invalid lines, with payload
//! ```
//!
//! Event time is data, not the timely time: every record is stamped with the processing
//! epoch at which it was read. Every vehicle is its own clock (the dataflow judges each fix
//! against its vehicle's own fixes), so the inputs are read in turn, none waiting for
//! another: an input whose events are far ahead or behind in event time costs the others
//! nothing. Each input reports its state (pending, active, idle, finished) and the greatest
//! `ts` it has seen, for the end of input and the metrics.
//!
//! Setting the shared shutdown flag ([`IntakeContext::shutdown`]) stops the source without
//! reporting its inputs finished: the dataflow then knows the job was interrupted
//! rather than at the end of its input.

use crate::intake;
use fleetflow_runtime::checkpoint::Hub;
use fleetflow_runtime::metrics::Metrics;
use fleetflow_types::records::{source_name, DeadLetter, IncomingFix, InputReport, InputState};
use fleetflow_types::registry::VehicleRegistry;
use fleetflow_types::time::{now_ms, Millis};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::{Scope, Stream};

/// What one poll of an input produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polled {
    /// This many records were handed over.
    Data(usize),
    /// Nothing available right now (rate limit, no new messages).
    Empty,
    /// The input has ended; it will produce nothing more.
    Finished,
}

/// An operational failure of a source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// An I/O error reading an input; retrying may help.
    #[error("reading {input}: {error}")]
    Io {
        /// The input's name.
        input: String,
        /// The error.
        error: std::io::Error,
    },
}

/// What a source hands each payload to: `(payload, position, Kafka key)`. It answers
/// whether to go on: an aligned source ([`Source::aligned`]) ends the poll after a
/// payload answered `false`; others may ignore the answer.
pub type Emit<'a> = dyn FnMut(&[u8], u64, Option<&[u8]>) -> bool + 'a;

/// A source of raw event payloads, split into inputs that each have their own event-time
/// progress (files, generator partitions, Kafka partitions).
///
/// Contract: `inputs()` is fixed for the life of the source and names every input this
/// instance will ever read (globally unique ids, the same on every worker); `poll` hands
/// over up to `budget` payloads of one input in that input's order, each with a position
/// (line, sequence number or offset) that identifies it within the input and, for Kafka,
/// the message key (which must equal the event's `vehicle_id`).
pub trait Source {
    /// Global ids of the inputs this instance reads.
    fn inputs(&self) -> Vec<u32>;
    /// Reads up to `budget` payloads of local input `local` (an index into `inputs()`).
    fn poll(
        &mut self,
        local: usize,
        budget: usize,
        sink: &mut Emit<'_>,
    ) -> Result<Polled, SourceError>;
    /// Whether the inputs are read in step in event time (files): the input furthest
    /// behind first, and none more than a quarter of the allowed lateness ahead of the slowest
    /// other input of the job, so that a vehicle whose fixes are spread over several
    /// time-ordered files (a directory of daily exports) receives them in order. Live
    /// inputs are not aligned: a partition far behind (a backlog) must not stop the others.
    fn aligned(&self) -> bool {
        false
    }
    /// Whether inputs that stay silent become idle after `idle_timeout` (true for
    /// external inputs such as Kafka; false for files and the generator, which are never
    /// waiting for data). Idleness is reported in the metrics; it changes no result.
    fn can_idle(&self) -> bool {
        false
    }
    /// Whether local input `local` has read everything there is for now (a Kafka
    /// partition at its high watermark). Only a caught-up input can become idle: one with a
    /// backlog it has not fetched yet is slow, not idle.
    fn caught_up(&self, _local: usize) -> bool {
        true
    }
    /// Where local input `local` resumes after everything handed over so far: an opaque
    /// `(offset, count)` pair (bytes and lines of a file, events of a generator, the next
    /// offset of a Kafka partition). Recorded in checkpoints.
    fn position(&self, local: usize) -> (u64, u64);
    /// Moves local input `local` to a position [`Source::position`] returned, before the
    /// first poll.
    fn seek(&mut self, local: usize, position: (u64, u64)) -> Result<(), SourceError>;
}

/// One input's part of a source's snapshot.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InputSnapshot {
    /// Global input id.
    pub input: u32,
    /// [`Source::position`].
    pub position: (u64, u64),
    /// Where the input was in event time (see [`InputReport::progress`]).
    #[serde(alias = "max_ts")]
    pub progress: Option<Millis>,
    /// Its state.
    pub state: InputState,
    /// On restore, for a replayable input: the least position of a fix that was not final
    /// at the checkpoint (from the timelines' snapshots, not this one's). The input is read
    /// again from there, and what it hands over before `position` is replayed
    /// ([`IncomingFix::replayed`]).
    #[serde(skip)]
    pub replay_from: Option<u64>,
}

/// Checkpoint participant name of the source operator.
pub const SNAPSHOT_OP: &str = "source";

/// Settings the source operator needs beyond the source itself.
#[derive(Clone)]
pub struct IntakeContext {
    /// Shared counters.
    pub metrics: Arc<Metrics>,
    /// Tenants from the vehicle registry.
    pub registry: Arc<VehicleRegistry>,
    /// Silence after which an input is idle (processing time).
    pub idle_timeout: Duration,
    /// Set to stop the source (interrupt, not end of input).
    pub shutdown: Arc<AtomicBool>,
    /// Global input id -> name, for dead-letter `source` columns.
    pub input_names: Arc<Vec<String>>,
    /// Records read per poll before yielding (re-batching changes no result).
    pub budget: usize,
    /// Flow control: a probe on the downstream operator and the greatest lag (in epochs,
    /// i.e. ms) it may have behind this source before the source stops reading. Timely has
    /// no back-pressure of its own; without this a source faster than the dataflow would
    /// queue an unbounded backlog.
    pub backpressure: Option<(timely::dataflow::ProbeHandle<u64>, u64)>,
    /// The key the fixes are exchanged by downstream: a fix goes to worker
    /// `route(fix) % peers`. The source hands its fixes over in one batch per worker, so
    /// that the exchange moves batches, not fixes one by one.
    pub route: fn(&IncomingFix) -> u64,
    /// Checkpoints: the hub to offer snapshots to and the inputs' restored state (every
    /// input of the job; each worker takes its own).
    pub checkpoints: Option<(Arc<Hub>, Arc<Vec<InputSnapshot>>)>,
    /// For an aligned source ([`Source::aligned`]): how far (ms of event time) an input
    /// may read ahead of the slowest input of the job (`metrics.slowest_input`).
    pub align_slack: Millis,
}

/// Event times remembered per input for its progress.
const RECENT: usize = 16;

/// How soon a source held back by its downstream (see [`IntakeContext::backpressure`])
/// looks again.
const BACKPRESSURE_RECHECK: Duration = Duration::from_micros(200);

struct LocalInput {
    id: u32,
    /// Where it is in event time: the median `ts` of its last [`RECENT`] fixes (one fix
    /// of a tracker with a wrong clock does not move it).
    progress: Option<Millis>,
    recent: std::collections::VecDeque<Millis>,
    state: InputState,
    /// When it last had data or was last behind (see [`Source::caught_up`]).
    last_data: std::time::Instant,
    /// When it last reported `Empty`, to avoid busy polling.
    empty_since: Option<std::time::Instant>,
    dirty: bool,
    /// Replaying after a restore: what it hands over before this position was read before
    /// the checkpoint (see [`InputSnapshot::replay_from`]).
    replay_until: Option<u64>,
}

impl LocalInput {
    /// Whether it may have something to read now.
    fn readable(&self, now: std::time::Instant) -> bool {
        (self.state != InputState::Finished || self.replay_until.is_some())
            && self
                .empty_since
                .is_none_or(|t| now.duration_since(t) >= Duration::from_millis(5))
    }

    /// Remembers the `ts` of a fix read.
    fn saw(&mut self, ts: Millis) {
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(ts);
    }

    /// The median of the recent `ts`.
    fn median(&self) -> Option<Millis> {
        let mut v: Vec<Millis> = self.recent.iter().copied().collect();
        if v.is_empty() {
            return None;
        }
        let k = v.len() / 2;
        Some(*v.select_nth_unstable(k).1)
    }
}

/// The next input to read after `last`, in turn: the first after it that may have
/// something to read.
fn next_input(inputs: &[LocalInput], last: usize, now: std::time::Instant) -> Option<usize> {
    let n = inputs.len();
    (1..=n)
        .map(|k| (last + k) % n)
        .find(|&i| inputs[i].readable(now))
}

/// For an aligned source: the input furthest behind in event time (one never read first)
/// among those that are not past their `horizon`.
fn furthest_behind(
    inputs: &[LocalInput],
    horizon: impl Fn(u32) -> Millis,
    now: std::time::Instant,
) -> Option<usize> {
    inputs
        .iter()
        .enumerate()
        .filter(|(_, i)| i.readable(now) && i.progress.is_none_or(|p| p <= horizon(i.id)))
        .min_by_key(|(_, i)| (i.progress.unwrap_or(Millis::MIN), i.id))
        .map(|(n, _)| n)
}

/// The fixes of an activation, one batch per worker they go to (see
/// [`IntakeContext::route`]), their payloads copied into an arena until a poll ends.
struct Batches {
    route: fn(&IncomingFix) -> u64,
    /// Per worker: its fixes, and where the payloads of its last ones (not attached yet)
    /// are in the arena.
    fixes: Vec<Vec<IncomingFix>>,
    spans: Vec<Vec<(usize, usize)>>,
    /// Each batch's capacity when it starts.
    capacity: usize,
}

impl Batches {
    fn new(route: fn(&IncomingFix) -> u64, peers: usize, budget: usize) -> Self {
        // A fair share and some slack: the routing key is a hash.
        let capacity = budget / peers + budget / (4 * peers) + 16;
        Batches {
            route,
            fixes: (0..peers).map(|_| Vec::with_capacity(capacity)).collect(),
            spans: vec![Vec::new(); peers],
            capacity,
        }
    }

    /// Hands `inc` over to its worker's batch with its `payload` copied into the poll's
    /// `arena` (the fixes share one buffer once the poll ends: [`Batches::attach`]).
    fn stage(&mut self, arena: &mut Vec<u8>, payload: &[u8], inc: IncomingFix) {
        let w = ((self.route)(&inc) % self.fixes.len() as u64) as usize;
        self.spans[w].push((arena.len(), arena.len() + payload.len()));
        arena.extend_from_slice(payload);
        self.fixes[w].push(inc);
    }

    /// Attaches their payloads, slices of `chunk` (the arena), to the fixes staged since
    /// the last call.
    fn attach(&mut self, chunk: &bytes::Bytes) {
        for (fixes, spans) in self.fixes.iter_mut().zip(&mut self.spans) {
            let first = fixes.len() - spans.len();
            for (inc, (a, b)) in fixes[first..].iter_mut().zip(spans.drain(..)) {
                inc.payload = chunk.slice(a..b);
            }
        }
    }

    /// The batches that have fixes, taken.
    fn take(&mut self) -> Vec<Vec<IncomingFix>> {
        let capacity = self.capacity;
        self.fixes
            .iter_mut()
            .filter(|f| !f.is_empty())
            .map(|f| std::mem::replace(f, Vec::with_capacity(capacity)))
            .collect()
    }
}

/// The three streams a source produces.
pub struct SourceStreams<'scope> {
    /// Decoded fixes, in batches whose fixes all go to one worker (by
    /// [`IntakeContext::route`]).
    pub fixes: Stream<'scope, u64, Vec<Vec<IncomingFix>>>,
    /// Per-input progress reports.
    pub reports: Stream<'scope, u64, Vec<InputReport>>,
    /// Lines that could not be decoded.
    pub dead_letters: Stream<'scope, u64, Vec<DeadLetter>>,
}

/// Renders `source` as a timely operator (see the module docs).
pub fn render_source<'scope>(
    scope: Scope<'scope, u64>,
    name: &str,
    mut source: Box<dyn Source>,
    ctx: IntakeContext,
) -> SourceStreams<'scope> {
    let mut builder = OperatorBuilder::new(format!("Source: {name}"), scope);
    let info = builder.operator_info();
    let activator = scope.activator_for(info.address.clone());
    let peers = scope.peers();
    let (fix_out, fixes) = builder.new_output::<Vec<Vec<IncomingFix>>>();
    let (report_out, reports) = builder.new_output::<Vec<InputReport>>();
    let (dead_out, dead_letters) = builder.new_output::<Vec<DeadLetter>>();
    let mut fix_out = OutputBuilder::<
        _,
        timely::container::CapacityContainerBuilder<Vec<Vec<IncomingFix>>>,
    >::from(fix_out);
    let mut report_out = OutputBuilder::<
        _,
        timely::container::CapacityContainerBuilder<Vec<InputReport>>,
    >::from(report_out);
    let mut dead_out = OutputBuilder::<
        _,
        timely::container::CapacityContainerBuilder<Vec<DeadLetter>>,
    >::from(dead_out);

    let can_idle = source.can_idle();
    let aligned = source.aligned();
    let start = std::time::Instant::now();
    let mut inputs: Vec<LocalInput> = source
        .inputs()
        .into_iter()
        .map(|id| LocalInput {
            id,
            progress: None,
            recent: Default::default(),
            state: InputState::Pending,
            last_data: start,
            empty_since: None,
            dirty: true,
            replay_until: None,
        })
        .collect();
    let worker = scope.index();
    let ctx_checkpoints = ctx.checkpoints.clone();
    let mut cuts = ctx.checkpoints.as_ref().map(|(hub, _)| hub.cuts());
    if let Some((_, restored)) = &ctx.checkpoints {
        for (local, input) in inputs.iter_mut().enumerate() {
            let Some(r) = restored.iter().find(|r| r.input == input.id) else {
                continue;
            };
            input.progress = r.progress;
            if let Some(p) = r.progress {
                input.saw(p);
            }
            input.state = r.state;
            // Fixes not final at the checkpoint are read again from where they begin.
            let position = match r.replay_from {
                Some(from) if from < r.position.0 && r.position.0 != u64::MAX => {
                    input.replay_until = Some(r.position.0);
                    (from, 0)
                }
                _ => r.position,
            };
            if r.state != InputState::Finished || input.replay_until.is_some() {
                if let Err(e) = source.seek(local, position) {
                    tracing::error!(input = %ctx.input_names.get(input.id as usize).map(String::as_str).unwrap_or("?"), error = %e, "cannot resume input; treating it as ended");
                    input.state = InputState::Finished;
                }
            }
        }
    }
    // This process reads these inputs: their progress is known here first hand.
    for input in &inputs {
        if let Some(m) = ctx.metrics.inputs.get(input.id as usize) {
            m.local.store(true, Relaxed);
            m.progress
                .store(input.progress.unwrap_or(Millis::MIN), Relaxed);
            m.finished
                .store(input.state == InputState::Finished, Relaxed);
        }
    }
    // Offers the inputs' positions for the boundaries `range` (see `checkpoint`).
    let snapshot = move |source: &dyn Source, inputs: &[LocalInput], range: Option<(u64, u64)>| {
        let (Some((hub, _)), Some((lo, hi))) = (&ctx_checkpoints, range) else {
            return;
        };
        let snap: Vec<InputSnapshot> = inputs
            .iter()
            .enumerate()
            .map(|(local, i)| InputSnapshot {
                input: i.id,
                position: source.position(local),
                progress: i.progress,
                state: i.state,
                replay_from: None,
            })
            .collect();
        let blob = postcard::to_stdvec(&snap).expect("positions serialize");
        hub.offer(SNAPSHOT_OP, worker, lo, hi, blob);
    };

    builder.build(move |caps| {
        let mut caps = Some(caps);
        let budget = ctx.budget.max(1);
        let mut batches = Batches::new(ctx.route, peers, budget);
        let mut dead_buf: Vec<DeadLetter> = Vec::new();
        let mut arena: Vec<u8> = Vec::with_capacity(budget.min(4096) * 192);
        let mut last_read = usize::MAX;
        move |_frontiers| {
            let Some(held) = caps.as_mut() else { return };
            if ctx.shutdown.load(Relaxed) {
                // Interrupted: stop without claiming the inputs ended. Not in the middle of
                // a replay: the fixes not replayed yet are in no state but the checkpoint
                // resumed from, which then stays the newest.
                caps = None;
                if inputs.iter().all(|i| i.replay_until.is_none()) {
                    snapshot(&*source, &inputs, cuts.as_mut().and_then(|c| c.frontier(None)));
                }
                return;
            }
            let now = now_ms();
            let now_instant = std::time::Instant::now();
            if let Some((probe, max_lag)) = &ctx.backpressure {
                let epoch = *held[0].time();
                if epoch > *max_lag && probe.less_than(&(epoch - max_lag)) {
                    // Downstream is behind: let it run rather than queue more, and look
                    // again shortly. Not at once: with nothing else to do here the worker
                    // would spin through its scheduler (a quarter million times in a
                    // one-second job) on cores the other workers and the encoder need.
                    activator.activate_after(BACKPRESSURE_RECHECK);
                    return;
                }
            }
            // Aligned inputs (files): the one furthest behind in event time first, none past
            // the slowest other input of the job plus the slack. Others: in turn.
            let (slowest, first, second) = if aligned {
                ctx.metrics.slowest_inputs()
            } else {
                (None, Millis::MAX, Millis::MAX)
            };
            let horizon_of = |id: u32| {
                let other = if slowest == Some(id) { second } else { first };
                other.saturating_add(ctx.align_slack)
            };
            let pick = if aligned {
                furthest_behind(&inputs, horizon_of, now_instant)
            } else {
                next_input(&inputs, last_read.min(inputs.len().saturating_sub(1)), now_instant)
                    .filter(|_| !inputs.is_empty())
            };
            let horizon = pick.filter(|_| aligned).map(|p| horizon_of(inputs[p].id));
            if let Some(p) = pick {
                last_read = p;
            }
            if let Some(local) = pick {
                let input = &mut inputs[local];
                let names = &ctx.input_names;
                let metrics = &ctx.metrics;
                let registry = &ctx.registry;
                let id = input.id;
                let mut max_ts: Option<Millis> = None;
                let (mut events, mut bytes) = (0u64, 0u64);
                arena.clear();
                let replay_until = input.replay_until;
                let polled = source.poll(local, budget, &mut |payload, position, key| {
                    if replay_until.is_some_and(|until| position < until) {
                        // Read before the checkpoint: only a fix not final then matters,
                        // and the timeline tells; what was rejected then was counted then.
                        if let Ok(fix) = intake::decode(payload, now, Some(registry)) {
                            if key.is_none_or(|k| k == fix.vehicle_id.as_bytes()) {
                                let inc = IncomingFix::new(fix, id, position, now, true);
                                batches.stage(&mut arena, payload, inc);
                            }
                        }
                        return true;
                    }
                    let mut go_on = true;
                    events += 1;
                    bytes += payload.len() as u64 + 1;
                    let decoded = intake::decode_counted(payload, now, Some(registry)).and_then(|(fix, dropped)| match key {
                        Some(k) if k != fix.vehicle_id.as_bytes() => Err(intake::Rejection::invalid(format!(
                            "message key {:?} differs from vehicle_id {:?}",
                            String::from_utf8_lossy(k),
                            fix.vehicle_id
                        ))),
                        _ => {
                            if dropped != 0 {
                                metrics.dropped(dropped);
                            }
                            Ok(fix)
                        }
                    });
                    match decoded {
                        Ok(fix) => {
                            max_ts = Some(max_ts.map_or(fix.ts, |m| m.max(fix.ts)));
                            input.saw(fix.ts);
                            // An aligned input stops at the first fix past the horizon.
                            go_on = horizon.is_none_or(|h| fix.ts <= h);
                            let inc = IncomingFix::new(fix, id, position, now, false);
                            batches.stage(&mut arena, payload, inc);
                        }
                        Err(rej) => {
                            metrics.dead_letter(rej.reason);
                            let text = String::from_utf8_lossy(payload);
                            // Only a payload that is not UTF-8 keeps its bytes as well.
                            let raw = matches!(text, std::borrow::Cow::Owned(_)).then(|| bytes::Bytes::copy_from_slice(payload));
                            dead_buf.push(DeadLetter {
                                reason: rej.reason,
                                detail: rej.detail,
                                payload: text.into_owned(),
                                source: source_name(names, id, position),
                                received_at: now,
                                event_ts: now,
                                input: id,
                                position,
                                key: key.map(bytes::Bytes::copy_from_slice),
                                raw,
                            });
                        }
                    }
                    go_on
                });
                // An exact-size copy: the fixes' payloads keep the chunk alive (until they are
                // final), and a small poll must not pin a large arena.
                let chunk = bytes::Bytes::copy_from_slice(&arena);
                batches.attach(&chunk);
                metrics.events_in.fetch_add(events, Relaxed);
                metrics.bytes_in.fetch_add(bytes, Relaxed);
                metrics.input_read(id, events, bytes, max_ts);
                let progress = input.median();
                input.dirty |= input.progress != progress;
                input.progress = progress;
                if let Some(m) = metrics.inputs.get(id as usize) {
                    m.progress.store(progress.unwrap_or(Millis::MIN), Relaxed);
                }
                let ended = !matches!(polled, Ok(Polled::Data(_) | Polled::Empty));
                match polled {
                    // A replay changes no state of the input: it was read before.
                    Ok(Polled::Data(_)) if replay_until.is_some() => {}
                    Ok(Polled::Empty) if replay_until.is_some() => {
                        input.empty_since = Some(now_instant)
                    }
                    Ok(Polled::Data(_)) => {
                        input.empty_since = None;
                        input.last_data = now_instant;
                        if progress.is_some() && input.state != InputState::Active {
                            input.state = InputState::Active;
                            input.dirty = true;
                        }
                    }
                    Ok(Polled::Empty) => input.empty_since = Some(now_instant),
                    Ok(Polled::Finished) => {
                        input.state = InputState::Finished;
                        input.dirty = true;
                    }
                    Err(e) => {
                        // A broken input ends; the error is logged and the job goes on.
                        tracing::error!(input = %names.get(id as usize).map(String::as_str).unwrap_or("?"), error = %e, "input failed; treating it as ended");
                        input.state = InputState::Finished;
                        input.dirty = true;
                    }
                }
                if let Some(m) = metrics.inputs.get(id as usize) {
                    m.finished.store(input.state == InputState::Finished, Relaxed);
                }
                if replay_until.is_some_and(|until| ended || source.position(local).0 >= until) {
                    input.replay_until = None;
                }
            }
            if can_idle {
                for (local, input) in inputs.iter_mut().enumerate() {
                    // An input caught up and silent for `idle_timeout` (since its last data,
                    // or since the start for one that never had any, e.g. an empty Kafka
                    // partition) is idle until it has data again (for the metrics).
                    // Silence is counted from when it caught up.
                    if !source.caught_up(local) {
                        input.last_data = now_instant;
                    } else if matches!(input.state, InputState::Active | InputState::Pending) && now_instant.duration_since(input.last_data) >= ctx.idle_timeout {
                        input.state = InputState::Idle;
                        input.dirty = true;
                    }
                }
            }
            {
                let mut out = fix_out.activate();
                let mut taken = batches.take();
                if !taken.is_empty() {
                    out.session(&held[0]).give_container(&mut taken);
                }
            }
            {
                let mut out = dead_out.activate();
                if !dead_buf.is_empty() {
                    out.session(&held[2]).give_container(&mut dead_buf);
                }
            }
            {
                let mut out = report_out.activate();
                let mut session = out.session(&held[1]);
                for input in inputs.iter_mut().filter(|i| i.dirty) {
                    input.dirty = false;
                    session.give(InputReport { input: input.id, progress: input.progress, state: input.state });
                }
            }
            if inputs.iter().all(|i| i.state == InputState::Finished && i.replay_until.is_none()) {
                caps = None;
                snapshot(&*source, &inputs, cuts.as_mut().and_then(|c| c.frontier(None)));
                return;
            }
            // Advance the epoch to processing time; not while replaying: what is replayed
            // is all at the first epoch, before anything read after the restore.
            let replaying = inputs.iter().any(|i| i.replay_until.is_some());
            let epoch = (now as u64).max(*held[0].time());
            if epoch > *held[0].time() && !replaying {
                for cap in held.iter_mut() {
                    cap.downgrade(&epoch);
                }
                // Everything handed over so far is below the new epoch.
                snapshot(&*source, &inputs, cuts.as_mut().and_then(|c| c.frontier(Some(epoch))));
            }
            let all_waiting = pick.is_none() || inputs.iter().all(|i| i.state == InputState::Finished || i.empty_since.is_some());
            if all_waiting {
                activator.activate_after(Duration::from_millis(2));
            } else {
                activator.activate();
            }
        }
    });
    SourceStreams {
        fixes,
        reports,
        dead_letters,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetflow_types::fix::Fix;

    #[test]
    fn batches_hold_one_workers_fixes_each_with_their_payloads() {
        let route = |inc: &IncomingFix| inc.fix.vehicle_id.len() as u64;
        let mut b = Batches::new(route, 3, 8);
        let mut arena = Vec::new();
        // Two polls: the second one's payloads are in a chunk of their own.
        for poll in [["a", "bb", "cccc"], ["dddddd", "e", "ff"]] {
            arena.clear();
            for id in poll {
                let inc = IncomingFix::new(Fix::at(id, "t", 0, 0.0, 0.0), 0, 0, 0, false);
                b.stage(&mut arena, format!("{{{id}}}").as_bytes(), inc);
            }
            b.attach(&bytes::Bytes::copy_from_slice(&arena));
        }
        let batches = b.take();
        let got: Vec<Vec<(String, String)>> = batches
            .iter()
            .map(|batch| {
                let pairs = batch.iter().map(|f| {
                    let payload = String::from_utf8(f.payload.to_vec()).unwrap();
                    (f.fix.vehicle_id.to_string(), payload)
                });
                pairs.collect()
            })
            .collect();
        let pair = |id: &str| (id.to_string(), format!("{{{id}}}"));
        // Worker 0 has ids of length 3k, worker 1 of 3k + 1, worker 2 of 3k + 2.
        assert_eq!(
            got,
            vec![
                vec![pair("dddddd")],
                vec![pair("a"), pair("cccc"), pair("e")],
                vec![pair("bb"), pair("ff")],
            ]
        );
        assert!(b.take().is_empty(), "taken");
    }
}
