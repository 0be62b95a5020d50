//! Partitioned Parquet writers and the timely sink operator that feeds them.
//!
//! ```text
//!   raw fixes ───┐
//!   tier rows ───┤   "LakeSink" (per worker)      per (dataset, partition):
//!   dead letters ┤ ─────────────────────────────► rows ─► Arrow batches ─► ArrowWriter (in memory)
//!   geofence ev. ┤
//!   progress ────┘                                       │ roll: partition closed by the job clock,
//!                                                        │       target size, max age, end of input
//!                                                        ▼
//!                                                Uploader: one atomic put per file
//! ```
//!
//! Every row reaching this operator is final (closed windows, final fixes), so each is
//! written exactly once in a run. Files are named `part-{run}-w{worker}-{seq}.parquet`.

use crate::lake::{StreamingFile, Uploader};
use crate::schema::LakeRecord;
use fleetflow_types::checkpoint::Hub;
use fleetflow_types::config::WindowTier;
use fleetflow_types::fix::Fix;
use fleetflow_types::records::{DeadLetter, DeadLetterOut, GeofenceEvent, Progress, TierRow};
use fleetflow_types::time::{utc_parts, window_start, Millis, DAY_MS, HOUR_MS};
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::Stream;

/// Rows encoded into Arrow at a time.
const BATCH_ROWS: usize = 8192;

/// How a dataset is partitioned by event time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Partitioning {
    /// `date=YYYY-MM-DD/hour=HH`
    Hour,
    /// `date=YYYY-MM-DD`
    Day,
    /// `month=YYYY-MM`
    Month,
}

impl Partitioning {
    /// The partitioning `interface.md` gives a window tier of `size_ms`.
    pub fn for_window(size_ms: Millis) -> Self {
        if size_ms < HOUR_MS {
            Partitioning::Hour
        } else if size_ms < DAY_MS {
            Partitioning::Day
        } else {
            Partitioning::Month
        }
    }

    /// The partition key (its start, for hours and days; `year*100+month` for months).
    pub fn key(self, ts: Millis) -> i64 {
        match self {
            Partitioning::Hour => window_start(ts, HOUR_MS),
            Partitioning::Day => window_start(ts, DAY_MS),
            Partitioning::Month => {
                let (y, m, _, _) = utc_parts(ts);
                y as i64 * 100 + m as i64
            }
        }
    }

    /// The partition directory of a key.
    pub fn dir(self, key: i64) -> String {
        match self {
            Partitioning::Hour => {
                let (y, m, d, h) = utc_parts(key);
                format!("date={y:04}-{m:02}-{d:02}/hour={h:02}")
            }
            Partitioning::Day => {
                let (y, m, d, _) = utc_parts(key);
                format!("date={y:04}-{m:02}-{d:02}")
            }
            Partitioning::Month => format!("month={:04}-{:02}", key / 100, key % 100),
        }
    }

    /// Event time at which the partition of `key` is complete (its end).
    pub fn closes_at(self, key: i64) -> Option<Millis> {
        Some(self.start(key) + self.len(key))
    }

    /// Event time at which the partition of `key` starts.
    pub fn start(self, key: i64) -> Millis {
        match self {
            Partitioning::Hour | Partitioning::Day => key,
            Partitioning::Month => month_start((key / 100) as i32, (key % 100) as u32),
        }
    }

    fn len(self, key: i64) -> Millis {
        match self {
            Partitioning::Hour => HOUR_MS,
            Partitioning::Day => DAY_MS,
            Partitioning::Month => {
                let (y, m) = ((key / 100) as i32, (key % 100) as u32);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                month_start(ny, nm) - month_start(y, m)
            }
        }
    }

    /// The key of a partition directory (`date=…/hour=…`, `date=…`, `month=…`).
    pub fn parse_dir(self, dir: &str) -> Option<i64> {
        let date = |s: &str| {
            chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .map(|d| {
                    d.and_hms_opt(0, 0, 0)
                        .expect("midnight")
                        .and_utc()
                        .timestamp_millis()
                })
        };
        match self {
            Partitioning::Hour => {
                let (d, h) = dir.split_once("/hour=")?;
                let h: i64 = h.parse().ok().filter(|h| (0..24).contains(h))?;
                Some(date(d.strip_prefix("date=")?)? + h * HOUR_MS)
            }
            Partitioning::Day => date(dir.strip_prefix("date=")?),
            Partitioning::Month => {
                let (y, m) = dir.strip_prefix("month=")?.split_once('-')?;
                let (y, m): (i64, i64) = (y.parse().ok()?, m.parse().ok()?);
                (1..=12).contains(&m).then_some(y * 100 + m)
            }
        }
    }
}

fn month_start(y: i32, m: u32) -> Millis {
    chrono::NaiveDate::from_ymd_opt(y, m, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map_or(0, |d| d.and_utc().timestamp_millis())
}

/// Where staged files live: outside every dataset's glob, so readers never see them.
pub const STAGING: &str = "_fleetflow/staging";

/// Checkpoint participant name of the lake sink.
pub const SNAPSHOT_OP: &str = "lake";

/// File rolling settings.
#[derive(Clone, Debug)]
pub struct RollPolicy {
    /// Roll at this encoded size.
    pub target_bytes: u64,
    /// Roll at this age (processing time).
    pub max_age: Duration,
}

/// A complete Parquet file under [`STAGING`], not visible to readers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Staged {
    /// Path in the lake.
    pub path: String,
    /// Rows in it.
    pub rows: u64,
    /// Its size.
    pub bytes: u64,
}

/// A partition's staged chunks: dataset, partition key, chunks.
pub type PartitionChunks = (String, i64, Vec<Staged>);

/// A staged file to be published at `to` once a checkpoint that lists it commits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Pending {
    /// The staged file.
    pub from: String,
    /// Its place in the dataset.
    pub to: String,
    /// The dataset.
    pub dataset: String,
    /// Rows in it.
    pub rows: u64,
}

/// The lake sink's state at a checkpoint boundary: every row it received below the
/// boundary is in a staged file, either waiting for its partition to roll (`chunks`) or
/// waiting to be published (`pending`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SinkSnapshot {
    /// The job clock the sink had seen.
    #[serde(alias = "watermark")]
    pub clock: Option<Millis>,
    /// Per dataset and partition key, the staged parts of its next file.
    pub chunks: Vec<PartitionChunks>,
    /// Files to publish.
    pub pending: Vec<Pending>,
    /// Per dataset, the start of the oldest partition that still has rows in `chunks`
    /// (every row of an earlier partition is published or pending).
    pub open_from: Vec<(String, Millis)>,
    /// Every row the worker's vehicles will still produce is at or after this (see
    /// [`Progress::complete`]).
    #[serde(default)]
    pub complete: Option<Millis>,
}

struct Tail {
    writer: ArrowWriter<StreamingFile>,
    path: String,
    rows: u64,
}

struct PartBuf<R> {
    rows: Vec<R>,
    tail: Option<Tail>,
    chunks: Vec<Staged>,
    opened: Instant,
}

impl<R> PartBuf<R> {
    fn new() -> Self {
        PartBuf {
            rows: Vec::with_capacity(1024),
            tail: None,
            chunks: Vec::new(),
            opened: Instant::now(),
        }
    }
}

/// At most this many staged chunks per partition; more are merged into one.
const MAX_CHUNKS: usize = 8;

/// Buffers and encodes one dataset's rows per partition. A partition's next file grows as
/// a tail (streamed to [`STAGING`] as it is encoded) and, at each checkpoint, the tail is
/// closed into a staged chunk; when the partition rolls, its chunks become one file that
/// is published with the next checkpoint.
pub struct DatasetWriter<R: LakeRecord> {
    name: String,
    partitioning: Partitioning,
    prefix: String,
    parts: BTreeMap<i64, PartBuf<R>>,
    seq: u64,
    worker: usize,
    uploader: Uploader,
}

fn props(dictionary: &[&str]) -> WriterProperties {
    // Dictionaries pay off for the repetitive string columns only; float columns are nearly
    // all distinct and would just be hashed and then fall back to plain encoding.
    let mut b = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(128 * 1024))
        .set_dictionary_enabled(false);
    for col in dictionary {
        b = b.set_column_dictionary_enabled(ColumnPath::from(*col), true);
    }
    b.build()
}

type ParquetResult<T = ()> = Result<T, parquet::errors::ParquetError>;

fn io_error(e: impl std::fmt::Display) -> parquet::errors::ParquetError {
    parquet::errors::ParquetError::External(e.to_string().into())
}

/// Merges staged or published Parquet files with the same schema into a new file at
/// `dest` (streamed; every source is read whole, so sources should be small). Returns
/// the rows written. The caller waits for the upload with [`Uploader::finish`].
pub fn merge_files(
    uploader: &Uploader,
    sources: &[String],
    dest: String,
    dataset: &str,
) -> ParquetResult<u64> {
    let store = uploader.lake().store.clone();
    let mut writer: Option<ArrowWriter<StreamingFile>> = None;
    let mut rows = 0u64;
    for src in sources {
        let path = object_store::path::Path::from(src.as_str());
        let store = store.clone();
        let bytes = uploader
            .runtime()
            .block_on(async move { store.get(&path).await?.bytes().await })
            .map_err(io_error)?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
        for batch in reader {
            let batch = batch?;
            rows += batch.num_rows() as u64;
            if writer.is_none() {
                let schema = batch.schema();
                let dictionary: Vec<&str> = schema
                    .fields()
                    .iter()
                    .filter(|f| f.data_type() == &arrow::datatypes::DataType::Utf8)
                    .map(|f| f.name().as_str())
                    .collect();
                let file = StreamingFile::new(uploader.clone(), dest.clone());
                writer = Some(ArrowWriter::try_new(
                    file,
                    batch.schema(),
                    Some(props(&dictionary)),
                )?);
            }
            writer.as_mut().expect("opened").write(&batch)?;
        }
    }
    if let Some(w) = writer {
        w.into_inner()?.finish(dataset.to_string(), rows)?;
    }
    Ok(rows)
}

impl<R: LakeRecord> DatasetWriter<R> {
    /// A writer of dataset `name` (its directory) with the given partitioning, for
    /// `worker`; file names start with `prefix`.
    pub fn new(
        name: &str,
        partitioning: Partitioning,
        prefix: String,
        worker: usize,
        uploader: Uploader,
    ) -> Self {
        DatasetWriter {
            name: name.to_string(),
            partitioning,
            prefix,
            parts: BTreeMap::new(),
            seq: 0,
            worker,
            uploader,
        }
    }

    /// The dataset's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A new staged file name in partition `key`.
    fn staged_path(&mut self, key: i64) -> String {
        self.seq += 1;
        format!(
            "{STAGING}/{}/{}/{}-w{:03}-{:06}.parquet",
            self.name,
            self.partitioning.dir(key),
            self.prefix,
            self.worker,
            self.seq
        )
    }

    fn published_path(staged: &str) -> String {
        staged
            .strip_prefix(STAGING)
            .map_or(staged, |p| p.trim_start_matches('/'))
            .to_string()
    }

    fn pending(&self, staged: &Staged) -> Pending {
        Pending {
            from: staged.path.clone(),
            to: Self::published_path(&staged.path),
            dataset: self.name.clone(),
            rows: staged.rows,
        }
    }

    /// Adds a row whose partitioning time is `ts`; a partition whose file reaches the
    /// target size rolls it into `out`.
    pub fn push(
        &mut self,
        ts: Millis,
        row: R,
        policy: &RollPolicy,
        out: &mut Vec<Pending>,
    ) -> ParquetResult {
        let key = self.partitioning.key(ts);
        let part = self.parts.entry(key).or_insert_with(PartBuf::new);
        part.rows.push(row);
        if part.rows.len() >= BATCH_ROWS {
            self.encode(key)?;
            let part = &self.parts[&key];
            let size = part.tail.as_ref().map_or(0, |t| {
                t.writer.in_progress_size() + t.writer.bytes_written()
            });
            if size as u64 >= policy.target_bytes {
                if let Some(staged) = self.close_tail(key)? {
                    out.push(self.pending(&staged));
                }
            }
        }
        Ok(())
    }

    fn encode(&mut self, key: i64) -> ParquetResult {
        if self.parts[&key].rows.is_empty() {
            return Ok(());
        }
        if self.parts[&key].tail.is_none() {
            let path = self.staged_path(key);
            let file = StreamingFile::new(self.uploader.clone(), path.clone());
            let writer = ArrowWriter::try_new(file, R::schema(), Some(props(R::DICTIONARY)))?;
            self.parts.get_mut(&key).expect("present").tail = Some(Tail {
                writer,
                path,
                rows: 0,
            });
        }
        let part = self.parts.get_mut(&key).expect("present");
        let batch = R::to_batch(&part.rows)?;
        let tail = part.tail.as_mut().expect("opened");
        tail.rows += part.rows.len() as u64;
        part.rows.clear();
        tail.writer.write(&batch)
    }

    /// Closes partition `key`'s tail into a staged file (uploaded in the background).
    fn close_tail(&mut self, key: i64) -> ParquetResult<Option<Staged>> {
        self.encode(key)?;
        let part = self.parts.get_mut(&key).expect("present");
        let Some(tail) = part.tail.take() else {
            return Ok(None);
        };
        let file = tail.writer.into_inner()?;
        let bytes = file.len();
        file.finish(self.name.clone(), tail.rows)?;
        Ok(Some(Staged {
            path: tail.path,
            rows: tail.rows,
            bytes,
        }))
    }

    /// First half of a checkpoint cut: every partition's tail becomes a staged chunk.
    pub fn cut_tails(&mut self) -> ParquetResult {
        let keys: Vec<i64> = self.parts.keys().copied().collect();
        for key in keys {
            if let Some(staged) = self.close_tail(key)? {
                self.parts
                    .get_mut(&key)
                    .expect("present")
                    .chunks
                    .push(staged);
            }
        }
        Ok(())
    }

    /// Second half, once the chunks are uploaded: partitions that are due (closed by the
    /// job clock, at the target size or age, or every one when `force`) roll their chunks
    /// into one file for `out`; partitions with many chunks merge them.
    pub fn cut_roll(
        &mut self,
        clock: Option<Millis>,
        policy: &RollPolicy,
        force: bool,
        out: &mut Vec<Pending>,
    ) -> ParquetResult {
        let partitioning = self.partitioning;
        let keys: Vec<i64> = self.parts.keys().copied().collect();
        for key in keys {
            let part = &self.parts[&key];
            if part.chunks.is_empty() {
                if part.rows.is_empty() && part.tail.is_none() {
                    self.parts.remove(&key);
                }
                continue;
            }
            let closed =
                matches!((clock, partitioning.closes_at(key)), (Some(w), Some(c)) if w >= c);
            let bytes: u64 = part.chunks.iter().map(|c| c.bytes).sum();
            let due = force
                || closed
                || bytes >= policy.target_bytes
                || part.opened.elapsed() >= policy.max_age;
            if !due && part.chunks.len() <= MAX_CHUNKS {
                continue;
            }
            let chunks = std::mem::take(&mut self.parts.get_mut(&key).expect("present").chunks);
            let merged = if chunks.len() == 1 {
                chunks.into_iter().next().expect("one")
            } else {
                let sources: Vec<String> = chunks.iter().map(|c| c.path.clone()).collect();
                let path = self.staged_path(key);
                let rows = merge_files(&self.uploader, &sources, path.clone(), &self.name)?;
                Staged { path, rows, bytes }
            };
            if due {
                out.push(self.pending(&merged));
                self.parts.remove(&key);
            } else {
                self.parts
                    .get_mut(&key)
                    .expect("present")
                    .chunks
                    .push(merged);
            }
        }
        Ok(())
    }

    /// The staged chunks per partition, and the oldest partition holding any.
    pub fn snapshot(&self) -> (Vec<PartitionChunks>, Option<Millis>) {
        let chunks: Vec<_> = self
            .parts
            .iter()
            .filter(|(_, p)| !p.chunks.is_empty())
            .map(|(k, p)| (self.name.clone(), *k, p.chunks.clone()))
            .collect();
        let oldest = chunks.first().map(|(_, k, _)| self.partitioning.start(*k));
        (chunks, oldest)
    }

    /// Adopts staged chunks of partition `key` from a restored checkpoint.
    pub fn restore(&mut self, key: i64, chunks: Vec<Staged>) {
        self.parts
            .entry(key)
            .or_insert_with(PartBuf::new)
            .chunks
            .extend(chunks);
    }
}

/// What the lake sink writes.
#[derive(Clone, Debug)]
pub struct SinkConfig {
    /// Write the raw tier.
    pub raw: bool,
    /// The window tiers, in the order of `TierRow::tier`.
    pub tiers: Vec<WindowTier>,
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

/// Keeps input that arrived at `time` until the sink processes that time.
fn stash_at(stash: &mut BTreeMap<u64, Vec<Item>>, time: Option<u64>, item: Item) {
    stash.entry(time.unwrap_or(0)).or_default().push(item);
}

struct Writers {
    raw: DatasetWriter<Fix>,
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
}

impl Writers {
    fn apply(&mut self, item: Item) -> ParquetResult {
        let (policy, out) = (&self.policy, &mut self.rolled);
        match item {
            Item::Raw(data) => {
                for f in data {
                    self.raw.push(f.ts, f, policy, out)?;
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
                    self.clock = Some(match self.clock {
                        Some(c) if !p.end => c.max(p.clock),
                        _ => p.clock,
                    });
                    self.complete = Some(p.complete);
                    self.end |= p.end;
                }
            }
        }
        Ok(())
    }

    fn all(&mut self) -> Vec<&mut dyn Cut> {
        let mut v: Vec<&mut dyn Cut> = vec![&mut self.raw, &mut self.dead, &mut self.events];
        for t in self.tiers.iter_mut() {
            v.push(t);
        }
        v
    }

    /// A checkpoint cut for boundaries `lo..=hi`: stage every tail, roll what is due,
    /// wait until every staged file is uploaded, and offer the snapshot.
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
        for w in self.all() {
            w.cut_tails()?;
        }
        uploader.finish().map_err(io_error)?;
        let (clock, policy) = (self.clock, self.policy.clone());
        let mut rolled = std::mem::take(&mut self.rolled);
        for w in self.all() {
            w.cut_roll(clock, &policy, force, &mut rolled)?;
        }
        uploader.finish().map_err(io_error)?;
        let committed = hub.committed();
        self.pending.retain(|(first, _)| *first > committed);
        self.pending.extend(rolled.into_iter().map(|p| (lo, p)));
        let mut snap = SinkSnapshot {
            clock,
            complete: self.complete,
            pending: self.pending.iter().map(|(_, p)| p.clone()).collect(),
            ..Default::default()
        };
        for w in self.all() {
            let (chunks, oldest) = w.snapshot_dyn();
            snap.chunks.extend(chunks);
            if let Some(o) = oldest {
                snap.open_from.push((w.name_dyn().to_string(), o));
            }
        }
        let blob = postcard::to_stdvec(&snap).map_err(io_error)?;
        fleetflow_types::checkpoint::failpoint("sink-cut");
        hub.offer(SNAPSHOT_OP, worker, lo, hi, blob);
        Ok(())
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
        out: &mut Vec<Pending>,
    ) -> ParquetResult;
    fn snapshot_dyn(&self) -> (Vec<PartitionChunks>, Option<Millis>);
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
        out: &mut Vec<Pending>,
    ) -> ParquetResult {
        DatasetWriter::cut_roll(self, clock, policy, force, out)
    }
    fn snapshot_dyn(&self) -> (Vec<PartitionChunks>, Option<Millis>) {
        self.snapshot()
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
    let mut raw_in = builder.new_input(raw, Pipeline);
    let mut rows_in = builder.new_input(rows, Pipeline);
    let mut dead_in = builder.new_input(dead, Pipeline);
    let mut events_in = builder.new_input(geofence_events, Pipeline);
    let mut progress_in = builder.new_input(progress, Pipeline);
    builder.build(move |_caps| {
        let (prefix, up) = (&cfg.prefix, &uploader);
        let mut w = Writers {
            raw: DatasetWriter::new(
                "raw",
                Partitioning::Hour,
                prefix.clone(),
                worker,
                up.clone(),
            ),
            tiers: cfg
                .tiers
                .iter()
                .map(|t| {
                    let p = Partitioning::for_window(t.size_ms);
                    DatasetWriter::new(&t.name, p, prefix.clone(), worker, up.clone())
                })
                .collect(),
            dead: DatasetWriter::new(
                "dead_letter",
                Partitioning::Day,
                prefix.clone(),
                worker,
                up.clone(),
            ),
            events: DatasetWriter::new(
                "geofence_events",
                Partitioning::Day,
                prefix.clone(),
                worker,
                up.clone(),
            ),
            policy: cfg.roll.clone(),
            clock: None,
            complete: None,
            end: false,
            pending: Vec::new(),
            rolled: Vec::new(),
            dead_letter_out: cfg.dead_letter_out.clone(),
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
                    // what is final is published; what is not stays in the state.
                    let force = frontier.is_none();
                    result = w.cut(range, force, &uploader, &hub, worker);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lake::test_uploader;

    const T: Millis = 1_736_125_200_000; // 2025-01-06T01:00:00Z

    #[test]
    fn partition_directories_follow_the_layout() {
        assert_eq!(
            Partitioning::Hour.dir(Partitioning::Hour.key(T + 59 * 60_000)),
            "date=2025-01-06/hour=01"
        );
        assert_eq!(
            Partitioning::Day.dir(Partitioning::Day.key(T)),
            "date=2025-01-06"
        );
        assert_eq!(
            Partitioning::Month.dir(Partitioning::Month.key(T)),
            "month=2025-01"
        );
        assert_eq!(Partitioning::for_window(60_000), Partitioning::Hour);
        assert_eq!(Partitioning::for_window(3_600_000), Partitioning::Day);
        assert_eq!(Partitioning::for_window(86_400_000), Partitioning::Month);
        assert_eq!(
            Partitioning::Hour.closes_at(Partitioning::Hour.key(T + 1)),
            Some(T + HOUR_MS)
        );
    }

    fn fix(i: i64) -> Fix {
        Fix {
            vehicle_id: format!("V{}", i % 7).into(),
            tenant: "t".into(),
            ts: T + i * 100,
            lat: 1.0 + i as f64 * 1e-6,
            lon: 2.0,
            speed_kmh: (i % 2 == 0).then_some(5.0),
            heading_deg: None,
            fuel_level_pct: None,
            fuel_used_l: Some(i as f64),
            odometer_km: None,
            ignition: Some(i % 3 == 0),
        }
    }

    #[test]
    fn rows_round_trip_through_parquet_files_in_the_lake() {
        let dir = tempfile::tempdir().unwrap();
        let (uploader, metrics, _rt) = test_uploader(dir.path());
        let mut w: DatasetWriter<Fix> = DatasetWriter::new(
            "raw",
            Partitioning::Hour,
            "part-test".into(),
            0,
            uploader.clone(),
        );
        let policy = RollPolicy {
            target_bytes: 1 << 30,
            max_age: Duration::from_secs(3600),
        };
        let mut out = Vec::new();
        for i in 0..20_000i64 {
            w.push(T + i * 100, fix(i), &policy, &mut out).unwrap();
            if i == 10_000 {
                // A checkpoint cut in the middle: the tail becomes a staged chunk.
                w.cut_tails().unwrap();
                uploader.finish().unwrap();
                w.cut_roll(Some(T), &policy, false, &mut out).unwrap();
            }
        }
        assert!(out.is_empty(), "nothing closed yet: no file");
        assert_eq!(w.snapshot().0[0].2.len(), 1, "one staged chunk");
        // The job clock passes the hour: the chunks and the tail roll into one file.
        w.cut_tails().unwrap();
        uploader.finish().unwrap();
        w.cut_roll(Some(T + HOUR_MS), &policy, false, &mut out)
            .unwrap();
        uploader.finish().unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].rows, 20_000);
        assert_eq!(
            out[0].to,
            "raw/date=2025-01-06/hour=01/part-test-w000-000003.parquet"
        );
        assert!(out[0]
            .from
            .starts_with("_fleetflow/staging/raw/date=2025-01-06/hour=01/"));
        assert!(w.snapshot().0.is_empty(), "nothing left open");
        let file = dir.path().join(&out[0].from);
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(&file).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        let batches: Vec<_> = reader.collect::<Result<_, _>>().unwrap();
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 20_000);
        assert_eq!(
            batches[0]
                .schema()
                .field_with_name("ts")
                .unwrap()
                .data_type(),
            &arrow::datatypes::DataType::Timestamp(
                arrow::datatypes::TimeUnit::Millisecond,
                Some("UTC".into())
            )
        );
        let _ = metrics;
        let names: Vec<_> = std::fs::read_dir(file.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 3, "two chunks and the merged file: {names:?}");
    }

    #[test]
    fn a_partition_at_the_target_size_rolls_without_waiting_for_a_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (uploader, _, _rt) = test_uploader(dir.path());
        let mut w: DatasetWriter<Fix> =
            DatasetWriter::new("raw", Partitioning::Hour, "p".into(), 1, uploader.clone());
        let policy = RollPolicy {
            target_bytes: 64 * 1024,
            max_age: Duration::from_secs(3600),
        };
        let mut out = Vec::new();
        for i in 0..100_000i64 {
            w.push(T + i, fix(i), &policy, &mut out).unwrap();
        }
        uploader.finish().unwrap();
        assert!(out.len() >= 2, "{} files", out.len());
        for p in &out {
            let size = std::fs::metadata(dir.path().join(&p.from)).unwrap().len();
            assert!(size < 4 * 64 * 1024, "{size} bytes");
        }
    }

    #[test]
    fn month_partitions_close_at_the_end_of_the_month_and_dirs_parse_back() {
        let feb = Partitioning::Month.key(1_738_368_000_000); // 2025-02-01
        assert_eq!(Partitioning::Month.closes_at(feb), Some(1_740_787_200_000)); // 2025-03-01
        for p in [Partitioning::Hour, Partitioning::Day, Partitioning::Month] {
            let k = p.key(T + 7 * HOUR_MS);
            assert_eq!(p.parse_dir(&p.dir(k)), Some(k), "{p:?}");
        }
        assert_eq!(
            Partitioning::Hour.parse_dir("date=2025-01-06/hour=25"),
            None
        );
    }
}
