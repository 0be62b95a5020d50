//! The timely sink operator: every worker's final rows, geofence events and dead letters
//! into per-partition Parquet writers ([`crate::writer`]), cut at checkpoint boundaries.
//!
//! ```text
//!   raw fixes ───┐
//!   tier rows ───┤   "LakeSink" (per worker)      per (dataset, partition):
//!   dead letters ┤ ─────────────────────────────► rows, 8,192 at a time ─┐
//!   geofence ev. ┤                                                      │ the worker's encoder
//!   progress ────┘                                                      ▼ thread (crate::tail)
//!                                        Arrow batches ─► ArrowWriter ─► staged file (streamed)
//!                                                        │ roll: partition closed by the job clock,
//!                                                        │       target size, max age, end of input
//!                                                        ▼
//!                                                Uploader: put / multipart upload per file
//! ```
//!
//! Every row reaching this operator is final (closed windows, final fixes), so each is
//! written exactly once in a run.

use crate::catalogue::{Catalogue, DatasetKind, Partitioning};
use crate::lake::{UploadMark, Uploader};
use crate::schema::LakeRecord;
use crate::writer::{
    io_error, DatasetWriter, MergeLane, ParquetResult, PartitionChunks, Pending, RollPolicy,
    SinkSnapshot, Staged, SNAPSHOT_OP,
};
use fleetflow_runtime::checkpoint::Hub;
use fleetflow_types::fix::Fix;
use fleetflow_types::records::{DeadLetter, DeadLetterOut, GeofenceEvent, Progress, TierRow};
use fleetflow_types::time::Millis;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::Stream;

/// What the lake sink writes.
#[derive(Clone, Debug)]
pub struct SinkConfig {
    /// The datasets (their window tiers in the order of `TierRow::tier`).
    pub datasets: Catalogue,
    /// File naming prefix, unique per run (`part-{run}`).
    pub prefix: String,
    /// File rolling.
    pub roll: RollPolicy,
    /// Where dead letters also go (a Kafka dead-letter topic); flushed before every
    /// checkpoint.
    pub dead_letter_out: Option<std::sync::Arc<dyn DeadLetterOut>>,
}

enum Item {
    Raw(Vec<Fix>),
    Rows(Vec<TierRow>),
    Dead(Vec<DeadLetter>),
    Events(Vec<GeofenceEvent>),
    Progress(Vec<Progress>),
}

/// How often a sink with snapshots waiting for uploads looks again.
const UPLOAD_POLL: Duration = Duration::from_millis(2);

/// Keeps input that arrived at `time` until the sink processes that time.
fn stash_at(stash: &mut BTreeMap<u64, Vec<Item>>, time: Option<u64>, item: Item) {
    stash.entry(time.unwrap_or(0)).or_default().push(item);
}

/// A writer of dataset `name` for this worker.
fn dataset_writer<R: LakeRecord>(
    name: &str,
    p: Partitioning,
    prefix: &str,
    worker: usize,
    uploader: &Uploader,
) -> DatasetWriter<R> {
    DatasetWriter::new(name, p, prefix.to_owned(), worker, uploader.clone())
}

struct Writers {
    /// Absent when the job does not keep `raw` (then no raw fixes arrive).
    raw: Option<DatasetWriter<Fix>>,
    tiers: Vec<DatasetWriter<TierRow>>,
    dead: DatasetWriter<DeadLetter>,
    events: DatasetWriter<GeofenceEvent>,
    policy: RollPolicy,
    /// The job clock: partitions that end at or before it are closed.
    clock: Option<Millis>,
    /// What its vehicles' rows are complete before.
    complete: Option<Millis>,
    end: bool,
    /// Files rolled and not known to be published: (first boundary listing it, file).
    pending: Vec<(u64, Pending)>,
    rolled: Vec<Pending>,
    dead_letter_out: Option<Arc<dyn DeadLetterOut>>,
    /// Snapshots taken and not yet offered, oldest first: each waits until the files it
    /// lists are uploaded.
    offers: VecDeque<Offer>,
    /// Where this worker's merges take turns.
    lane: MergeLane,
}

/// A cut's snapshot, offered to the hub once every file submitted before `after` is in the
/// lake.
struct Offer {
    after: UploadMark,
    range: (u64, u64),
    blob: Vec<u8>,
}

impl Writers {
    fn apply(&mut self, item: Item) -> ParquetResult {
        let (policy, out) = (&self.policy, &mut self.rolled);
        match item {
            Item::Raw(data) => {
                if let Some(raw) = &mut self.raw {
                    for f in data {
                        raw.push(f.ts, f, policy, out)?;
                    }
                }
            }
            Item::Rows(data) => {
                for r in data {
                    self.tiers[r.tier as usize].push(r.window_start, r, policy, out)?;
                }
            }
            Item::Dead(data) => {
                for d in data {
                    if let Some(o) = &self.dead_letter_out {
                        o.send(&d);
                    }
                    self.dead.push(d.event_ts, d, policy, out)?;
                }
            }
            Item::Events(data) => {
                for e in data {
                    self.events.push(e.ts, e, policy, out)?;
                }
            }
            Item::Progress(data) => {
                for p in data {
                    // The end of a bounded input sets the exact clock (it may be lower).
                    self.clock = match (self.clock, p.clock) {
                        (Some(c), Some(n)) if !p.end => Some(c.max(n)),
                        (c, None) => c,
                        (_, n) => n,
                    };
                    self.complete = Some(p.complete);
                    self.end |= p.end;
                }
            }
        }
        Ok(())
    }

    fn all(&mut self) -> Vec<&mut dyn Cut> {
        let mut v: Vec<&mut dyn Cut> = vec![&mut self.dead, &mut self.events];
        if let Some(raw) = &mut self.raw {
            v.push(raw);
        }
        for t in self.tiers.iter_mut() {
            v.push(t);
        }
        v
    }

    /// A checkpoint cut for boundaries `lo..=hi`: stage every tail, roll what is due (a
    /// merge goes on in the background), and take the snapshot, offered by
    /// [`Writers::offer_uploaded`] once every file it lists is uploaded: the worker does
    /// not wait for the lake (on the last cut, `force`, it does).
    fn cut(
        &mut self,
        (lo, hi): (u64, u64),
        force: bool,
        uploader: &Uploader,
        hub: &Hub,
        worker: usize,
    ) -> ParquetResult {
        // Everything below the boundary reaches the dead-letter topic before the
        // checkpoint can commit (at least once).
        if let Some(o) = &self.dead_letter_out {
            o.flush().map_err(io_error)?;
        }
        // How long each part of the cut holds the worker (logged under `fleetflow::slow`).
        let started = std::time::Instant::now();
        let mut tails: Vec<(String, u128)> = Vec::new();
        for w in self.all() {
            let t = std::time::Instant::now();
            w.cut_tails()?;
            tails.push((w.name_dyn().to_string(), t.elapsed().as_millis()));
        }
        let tails_ms = started.elapsed().as_millis();
        let (clock, policy) = (self.clock, self.policy.clone());
        let mut rolled = std::mem::take(&mut self.rolled);
        let lane = self.lane.clone();
        for w in self.all() {
            w.cut_roll(clock, &policy, force, &lane, &mut rolled)?;
        }
        let roll_ms = started.elapsed().as_millis() - tails_ms;
        let committed = hub.committed();
        self.pending.retain(|(first, _)| *first > committed);
        self.pending.extend(rolled.into_iter().map(|p| (lo, p)));
        let mut snap = SinkSnapshot {
            clock,
            complete: self.complete,
            end: self.end,
            pending: self.pending.iter().map(|(_, p)| p.clone()).collect(),
            ..Default::default()
        };
        for w in self.all() {
            let (chunks, oldest) = w.snapshot_dyn();
            snap.chunks.extend(chunks);
            snap.merging.extend(w.merging_dyn());
            if let Some(o) = oldest {
                snap.open_from.push((w.name_dyn().to_string(), o));
            }
        }
        self.offers.push_back(Offer {
            after: uploader.mark(),
            range: (lo, hi),
            blob: postcard::to_stdvec(&snap).map_err(io_error)?,
        });
        tracing::debug!(
            target: "fleetflow::slow",
            worker,
            ms = started.elapsed().as_millis() as u64,
            tails_ms = tails_ms as u64,
            roll_ms = roll_ms as u64,
            tails = ?tails,
            "lake sink checkpoint cut"
        );
        self.offer_uploaded(uploader, hub, worker, force)
            .map(|_| ())
    }

    /// Offers the snapshots whose files are uploaded, in order (waiting for them when
    /// `wait`). Whether some are still waiting.
    fn offer_uploaded(
        &mut self,
        uploader: &Uploader,
        hub: &Hub,
        worker: usize,
        wait: bool,
    ) -> ParquetResult<bool> {
        while let Some(o) = self.offers.front() {
            if wait {
                uploader.wait_for(o.after).map_err(io_error)?;
            } else if !uploader.done(o.after).map_err(io_error)? {
                return Ok(true);
            }
            let o = self.offers.pop_front().expect("present");
            fleetflow_runtime::checkpoint::failpoint("sink-cut");
            hub.offer(SNAPSHOT_OP, worker, o.range.0, o.range.1, o.blob);
        }
        Ok(false)
    }
}

/// The writer calls a cut needs, over every dataset's record type.
trait Cut {
    fn cut_tails(&mut self) -> ParquetResult;
    fn cut_roll(
        &mut self,
        clock: Option<Millis>,
        policy: &RollPolicy,
        force: bool,
        lane: &MergeLane,
        out: &mut Vec<Pending>,
    ) -> ParquetResult;
    fn snapshot_dyn(&self) -> (Vec<PartitionChunks>, Option<Millis>);
    fn merging_dyn(&self) -> Vec<String>;
    fn name_dyn(&self) -> &str;
    fn restore_dyn(&mut self, key: i64, chunks: Vec<Staged>);
}

impl<R: LakeRecord> Cut for DatasetWriter<R> {
    fn cut_tails(&mut self) -> ParquetResult {
        DatasetWriter::cut_tails(self)
    }
    fn cut_roll(
        &mut self,
        clock: Option<Millis>,
        policy: &RollPolicy,
        force: bool,
        lane: &MergeLane,
        out: &mut Vec<Pending>,
    ) -> ParquetResult {
        DatasetWriter::cut_roll(self, clock, policy, force, lane, out)
    }
    fn snapshot_dyn(&self) -> (Vec<PartitionChunks>, Option<Millis>) {
        self.snapshot()
    }
    fn merging_dyn(&self) -> Vec<String> {
        self.merging()
    }
    fn name_dyn(&self) -> &str {
        self.name()
    }
    fn restore_dyn(&mut self, key: i64, chunks: Vec<Staged>) {
        self.restore(key, chunks)
    }
}

/// Renders the lake sink for one worker's share of the results.
///
/// Inputs are stashed by time and applied in time order, so that a checkpoint cut falls
/// exactly at a boundary: rows below it are in the snapshot, rows at or above it wait.
/// `restore` holds the chunks this worker adopts from a restored checkpoint.
#[allow(clippy::too_many_arguments)]
pub fn render_lake_sink<'scope>(
    raw: Stream<'scope, u64, Vec<Fix>>,
    rows: Stream<'scope, u64, Vec<TierRow>>,
    dead: Stream<'scope, u64, Vec<DeadLetter>>,
    geofence_events: Stream<'scope, u64, Vec<GeofenceEvent>>,
    progress: Stream<'scope, u64, Vec<Progress>>,
    cfg: SinkConfig,
    uploader: Uploader,
    hub: Arc<Hub>,
    restore: Option<SinkSnapshot>,
) {
    let scope = raw.scope();
    let worker = scope.index();
    let mut builder = OperatorBuilder::new("LakeSink".to_owned(), scope);
    let activator = scope.activator_for(builder.operator_info().address);
    let mut raw_in = builder.new_input(raw, Pipeline);
    let mut rows_in = builder.new_input(rows, Pipeline);
    let mut dead_in = builder.new_input(dead, Pipeline);
    let mut events_in = builder.new_input(geofence_events, Pipeline);
    let mut progress_in = builder.new_input(progress, Pipeline);
    builder.build(move |_caps| {
        let (mut raw, mut tiers, mut dead, mut events) = (None, Vec::new(), None, None);
        for d in cfg.datasets.iter() {
            let (name, p) = (d.name.as_str(), d.partitioning);
            match d.kind {
                DatasetKind::Raw => {
                    raw = Some(dataset_writer(name, p, &cfg.prefix, worker, &uploader))
                }
                DatasetKind::Tier(_) => {
                    tiers.push(dataset_writer(name, p, &cfg.prefix, worker, &uploader))
                }
                DatasetKind::DeadLetter => {
                    dead = Some(dataset_writer(name, p, &cfg.prefix, worker, &uploader))
                }
                DatasetKind::GeofenceEvents => {
                    events = Some(dataset_writer(name, p, &cfg.prefix, worker, &uploader))
                }
            }
        }
        let mut w = Writers {
            raw,
            tiers,
            dead: dead.expect("the catalogue lists dead_letter"),
            events: events.expect("the catalogue lists geofence_events"),
            policy: cfg.roll.clone(),
            clock: None,
            complete: None,
            end: false,
            pending: Vec::new(),
            rolled: Vec::new(),
            dead_letter_out: cfg.dead_letter_out.clone(),
            offers: VecDeque::new(),
            lane: MergeLane::default(),
        };
        if let Some(r) = restore {
            w.clock = r.clock;
            for (dataset, key, chunks) in r.chunks {
                if let Some(d) = w.all().into_iter().find(|d| d.name_dyn() == dataset) {
                    d.restore_dyn(key, chunks);
                }
            }
        }
        let mut cuts = hub.cuts();
        let mut stash: BTreeMap<u64, Vec<Item>> = BTreeMap::new();
        let mut failed = false;
        move |frontiers| {
            raw_in.for_each(|cap, data| {
                stash_at(
                    &mut stash,
                    cap.least().copied(),
                    Item::Raw(std::mem::take(data)),
                )
            });
            rows_in.for_each(|cap, data| {
                stash_at(
                    &mut stash,
                    cap.least().copied(),
                    Item::Rows(std::mem::take(data)),
                )
            });
            dead_in.for_each(|cap, data| {
                stash_at(
                    &mut stash,
                    cap.least().copied(),
                    Item::Dead(std::mem::take(data)),
                )
            });
            events_in.for_each(|cap, data| {
                stash_at(
                    &mut stash,
                    cap.least().copied(),
                    Item::Events(std::mem::take(data)),
                )
            });
            progress_in.for_each(|cap, data| {
                stash_at(
                    &mut stash,
                    cap.least().copied(),
                    Item::Progress(std::mem::take(data)),
                )
            });
            if failed {
                stash.clear();
                return;
            }
            let frontier: Option<u64> = frontiers
                .iter()
                .filter_map(|f| f.frontier().first().copied())
                .min();
            // The first failure is recorded with the uploader (the job then ends with a
            // one-line error and exit 1); nothing after it is written or checkpointed.
            let mut result: ParquetResult = Ok(());
            while let Some(entry) = stash.first_entry() {
                let t = *entry.key();
                if frontier.is_some_and(|f| t >= f) {
                    break;
                }
                if let Some(range) = cuts.before(t) {
                    result = w.cut(range, false, &uploader, &hub, worker);
                    if result.is_err() {
                        break;
                    }
                }
                for item in entry.remove() {
                    if result.is_ok() {
                        result = w.apply(item);
                    }
                }
                if result.is_err() {
                    break;
                }
            }
            if result.is_ok() {
                if let Some(range) = cuts.frontier(frontier) {
                    // The last cut (end of input or interrupt) flushes every partition:
                    // what is final is published; what is not stays in the state. So does
                    // every cut after the end of a bounded input (every row is final then;
                    // a job serving its API after the input goes on with geofence events).
                    let force = frontier.is_none() || w.end;
                    result = w.cut(range, force, &uploader, &hub, worker);
                }
            }
            // Snapshots waiting for their files: offered as the uploads finish.
            if result.is_ok() {
                match w.offer_uploaded(&uploader, &hub, worker, false) {
                    Ok(true) => activator.activate_after(UPLOAD_POLL),
                    Ok(false) => {}
                    Err(e) => result = Err(e),
                }
            }
            if let Err(e) = result {
                failed = true;
                let message = format!("worker {worker}: writing Parquet: {e}");
                uploader.fail(message.clone());
                hub.fail(message);
            }
        }
    });
}
