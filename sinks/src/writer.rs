//! Partitioned Parquet writers: one [`DatasetWriter`] per dataset and worker keeps a file
//! in progress per open partition (encoded beside the worker: the `tail` module), stages
//! chunks at checkpoint cuts and rolls
//! files when a partition closes (by the job clock), reaches the target size or age, or the
//! input ends. Files are named `part-{run}-w{worker}-{seq}.parquet`. The operator that
//! feeds them is [`crate::sink`].
use crate::catalogue::Partitioning;
use crate::lake::Uploader;
pub use crate::merge::merge_files;
use crate::merge::MAX_ROW_GROUP;
use crate::schema::LakeRecord;
use crate::tail::Tail;
use fleetflow_types::time::Millis;
use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Where one worker's merges take turns: a merge starts (its thread waits) at the cut its
/// partition becomes due, and the merges run one at a time, in about the order they
/// started, beside the worker. None waits for a later cut behind another dataset's merge,
/// and however many are due, one core's worth of merging competes with the workers.
#[derive(Clone, Debug, Default)]
pub struct MergeLane(Arc<Mutex<()>>);

impl MergeLane {
    /// Waits for this lane's turn, held until the guard drops.
    pub(crate) fn turn(&self) -> MutexGuard<'_, ()> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Rows encoded into Arrow at a time.
pub(crate) const BATCH_ROWS: usize = 8192;

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
    /// [`Progress::complete`](fleetflow_types::records::Progress::complete)).
    #[serde(default)]
    pub complete: Option<Millis>,
    /// Whether the sink had seen the end of a bounded input (every row it will get from
    /// the input is in this snapshot or before it).
    #[serde(default)]
    pub end: bool,
    /// Staged files that merges in progress are writing: not part of the state, but a
    /// later snapshot will name them, so the sweep after this checkpoint keeps them.
    #[serde(default)]
    pub merging: Vec<String>,
}

struct PartBuf<R> {
    rows: Vec<R>,
    tail: Option<Tail>,
    chunks: Vec<Staged>,
    opened: Instant,
    merging: Option<Merge>,
}

impl<R> PartBuf<R> {
    fn new() -> Self {
        PartBuf {
            rows: Vec::with_capacity(1024),
            tail: None,
            chunks: Vec::new(),
            opened: Instant::now(),
            merging: None,
        }
    }

    fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.tail.is_none() && self.chunks.is_empty()
    }
}

/// A merge of a partition's first `sources` chunks into one file, on a thread of its own
/// so that the worker goes on with the rows behind it. Until it is finished (at a later
/// cut), the chunks stay the partition's state and are what its snapshots list.
struct Merge {
    sources: usize,
    path: String,
    bytes: u64,
    /// Whether the merged file is published (the partition was due) or stays its chunk.
    due: bool,
    thread: std::thread::JoinHandle<ParquetResult<u64>>,
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

pub(crate) fn props(dictionary: &[&str]) -> WriterProperties {
    // Dictionaries pay off for the repetitive string columns only; float columns are nearly
    // all distinct and would just be hashed and then fall back to plain encoding.
    // Statistics per column chunk (in the footer: readers and the Delta log's file
    // statistics use them), no page indexes: a merge splices row groups as they were
    // encoded, without their page indexes, and a file must have them for every row group
    // or for none.
    let mut b = WriterProperties::builder()
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_offset_index_disabled(true)
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(MAX_ROW_GROUP))
        .set_dictionary_enabled(false);
    for col in dictionary {
        b = b.set_column_dictionary_enabled(ColumnPath::from(*col), true);
    }
    b.build()
}

pub(crate) type ParquetResult<T = ()> = Result<T, parquet::errors::ParquetError>;

pub(crate) fn io_error(e: impl std::fmt::Display) -> parquet::errors::ParquetError {
    parquet::errors::ParquetError::External(e.to_string().into())
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
    /// target size rolls it into `out`. Rows are handed to the encoder thread a batch at a
    /// time (the `tail` module).
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
            self.hand_over(key);
            let part = &self.parts[&key];
            let size = part.tail.as_ref().map_or(0, |t| t.size::<R>());
            if size >= policy.target_bytes {
                if let Some(staged) = self.close_tail(key)? {
                    out.push(self.pending(&staged));
                }
            }
        }
        Ok(())
    }

    /// Hands partition `key`'s buffered rows over to be encoded into its tail.
    fn hand_over(&mut self, key: i64) {
        if self.parts[&key].rows.is_empty() {
            return;
        }
        if self.parts[&key].tail.is_none() {
            let path = self.staged_path(key);
            self.parts.get_mut(&key).expect("present").tail = Some(Tail::new(path));
        }
        let part = self.parts.get_mut(&key).expect("present");
        let rows = std::mem::replace(&mut part.rows, Vec::with_capacity(BATCH_ROWS));
        let tail = part.tail.as_mut().expect("opened");
        tail.write(rows, &self.uploader);
    }

    /// Closes partition `key`'s tail into a staged file. The worker only hands it over
    /// ([`Tail::close`]); a snapshot listing the file is offered once it is closed and
    /// uploaded, like every other file submitted before the snapshot.
    fn close_tail(&mut self, key: i64) -> ParquetResult<Option<Staged>> {
        self.hand_over(key);
        let part = self.parts.get_mut(&key).expect("present");
        Ok(part.tail.take().map(|tail| tail.close::<R>(&self.uploader)))
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

    /// Second half: partitions that are due (closed by the job clock, at the target size
    /// or age, or every one when `force`) roll their chunks into one file for `out`;
    /// partitions with many chunks merge them. A roll of one chunk is immediate; a merge
    /// runs on its own thread once every file submitted so far (its sources among them,
    /// the output of a merge taken just now too) is uploaded, and
    /// its file is taken at a later cut (at this one when `force`). Merges take turns on
    /// the worker's `lane`, one at a time; until a merge is taken, its sources stay the
    /// partition's chunks.
    pub fn cut_roll(
        &mut self,
        clock: Option<Millis>,
        policy: &RollPolicy,
        force: bool,
        lane: &MergeLane,
        out: &mut Vec<Pending>,
    ) -> ParquetResult {
        let partitioning = self.partitioning;
        let keys: Vec<i64> = self.parts.keys().copied().collect();
        for key in keys {
            let merged = self.parts[&key]
                .merging
                .as_ref()
                .is_some_and(|m| force || m.thread.is_finished());
            if merged && self.finish_merge(key, out)? {
                continue;
            }
            let part = &self.parts[&key];
            if part.merging.is_some() {
                continue;
            }
            if part.chunks.is_empty() {
                if part.is_empty() {
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
            if part.chunks.len() == 1 {
                // Due (one chunk is never too many): it is the file.
                let part = self.parts.remove(&key).expect("present");
                out.push(self.pending(&part.chunks[0]));
                continue;
            }
            let sources: Vec<String> = part.chunks.iter().map(|c| c.path.clone()).collect();
            let count = sources.len();
            let path = self.staged_path(key);
            let (uploader, dest) = (self.uploader.clone(), path.clone());
            let lane = lane.clone();
            let staged = uploader.mark();
            let thread = std::thread::Builder::new()
                .name("fleetflow-merge".into())
                .spawn(move || {
                    if let Err(e) =
                        fleetflow_runtime::background_priority(fleetflow_runtime::MERGE_NICE)
                    {
                        tracing::debug!(error = %e, "a merge runs at full priority");
                    }
                    uploader.wait_for(staged).map_err(io_error)?;
                    let _turn = lane.turn();
                    merge_files(&uploader, &sources, dest)
                })
                .map_err(io_error)?;
            self.parts.get_mut(&key).expect("present").merging = Some(Merge {
                sources: count,
                path,
                bytes,
                due,
                thread,
            });
            if force {
                self.finish_merge(key, out)?;
            }
        }
        Ok(())
    }

    /// Waits for partition `key`'s merge and puts its file in place of its sources:
    /// published into `out` if the partition was due, else its first chunk. Whether the
    /// partition is gone (nothing else was written to it meanwhile).
    fn finish_merge(&mut self, key: i64, out: &mut Vec<Pending>) -> ParquetResult<bool> {
        let part = self.parts.get_mut(&key).expect("present");
        let m = part.merging.take().expect("a merge");
        let rows = m
            .thread
            .join()
            .map_err(|_| io_error("a merge thread panicked"))??;
        let merged = Staged {
            path: m.path,
            rows,
            bytes: m.bytes,
        };
        if !m.due {
            part.chunks.splice(..m.sources, [merged]);
            return Ok(false);
        }
        part.chunks.drain(..m.sources);
        // The partition's next file begins with what came after the merge began.
        part.opened = Instant::now();
        let gone = part.is_empty();
        if gone {
            self.parts.remove(&key);
        }
        out.push(self.pending(&merged));
        Ok(gone)
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

    /// The files this dataset's merges in progress are writing.
    pub fn merging(&self) -> Vec<String> {
        let merges = self.parts.values().filter_map(|p| p.merging.as_ref());
        merges.map(|m| m.path.clone()).collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lake::test_uploader;
    use fleetflow_types::fix::Fix;

    const T: Millis = 1_736_125_200_000; // 2025-01-06T01:00:00Z

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

    /// A writer of the raw dataset by hour, and a policy that rolls files at
    /// `target_bytes` (or after an hour).
    fn raw_writer(
        uploader: &Uploader,
        prefix: &str,
        worker: usize,
        target_bytes: u64,
    ) -> (DatasetWriter<Fix>, RollPolicy) {
        let w = DatasetWriter::new(
            "raw",
            Partitioning::Hour,
            prefix.into(),
            worker,
            uploader.clone(),
        );
        let policy = RollPolicy {
            target_bytes,
            max_age: Duration::from_secs(3600),
        };
        (w, policy)
    }

    #[test]
    fn merges_start_when_due_take_turns_on_the_lane_and_name_the_file_they_write() {
        let dir = tempfile::tempdir().unwrap();
        let (uploader, _, _rt) = test_uploader(dir.path());
        let (mut w, policy) = raw_writer(&uploader, "p", 0, 1 << 30);
        let mut out = Vec::new();
        // Two partitions with more chunks than a partition keeps: both must merge.
        for cut in 0..=MAX_CHUNKS as i64 {
            for hour in [0, 1] {
                let ts = T + hour * fleetflow_types::time::HOUR_MS + cut;
                w.push(ts, fix(cut), &policy, &mut out).unwrap();
            }
            w.cut_tails().unwrap();
        }
        // Another merge of the worker holds the lane.
        let lane = MergeLane::default();
        let busy = lane.turn();
        w.cut_roll(Some(T), &policy, false, &lane, &mut out)
            .unwrap();
        let started = w.merging();
        assert_eq!(started.len(), 2, "both start at once: {started:?}");
        // Waiting for their turn, so a later cut takes neither; their sources stay the
        // partitions' chunks.
        std::thread::sleep(Duration::from_millis(300));
        w.cut_roll(Some(T), &policy, false, &lane, &mut out)
            .unwrap();
        assert_eq!(w.merging(), started, "a merge ran without its turn");
        let chunks: usize = w.snapshot().0.iter().map(|(_, _, c)| c.len()).sum();
        assert_eq!(chunks, 2 * (MAX_CHUNKS + 1));
        // Their turn: taken once finished, each merged file replaces its sources.
        drop(busy);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !w.merging().is_empty() {
            assert!(Instant::now() < deadline, "the merges finish");
            std::thread::sleep(Duration::from_millis(10));
            w.cut_roll(Some(T), &policy, false, &lane, &mut out)
                .unwrap();
        }
        let (snap, _) = w.snapshot();
        let mut merged: Vec<String> = snap.iter().map(|(_, _, c)| c[0].path.clone()).collect();
        merged.sort();
        let mut expected = started.clone();
        expected.sort();
        assert_eq!(merged, expected, "the merged files replace their sources");
        assert!(snap
            .iter()
            .all(|(_, _, c)| c.len() == 1 && c[0].rows == MAX_CHUNKS as u64 + 1));
        assert!(out.is_empty(), "neither partition is due");
        // The last cut (`force`) rolls them, waiting for any merge.
        w.cut_roll(Some(T), &policy, true, &lane, &mut out).unwrap();
        uploader.finish().unwrap();
        assert!(w.merging().is_empty());
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|p| p.rows == MAX_CHUNKS as u64 + 1));
    }

    #[test]
    fn rows_round_trip_through_parquet_files_in_the_lake() {
        let dir = tempfile::tempdir().unwrap();
        let (uploader, metrics, _rt) = test_uploader(dir.path());
        let (mut w, policy) = raw_writer(&uploader, "part-test", 0, 1 << 30);
        let mut out = Vec::new();
        for i in 0..20_000i64 {
            w.push(T + i * 100, fix(i), &policy, &mut out).unwrap();
            if i == 10_000 {
                // A checkpoint cut in the middle: the tail becomes a staged chunk.
                w.cut_tails().unwrap();
                w.cut_roll(Some(T), &policy, false, &MergeLane::default(), &mut out)
                    .unwrap();
            }
        }
        assert!(out.is_empty(), "nothing closed yet: no file");
        assert_eq!(w.snapshot().0[0].2.len(), 1, "one staged chunk");
        // The job clock passes the hour: the chunks and the tail roll into one file, merged
        // in the background; until a later cut takes the merged file, the chunks are the
        // partition's state.
        let closed = Some(T + fleetflow_types::time::HOUR_MS);
        w.cut_tails().unwrap();
        w.cut_roll(closed, &policy, false, &MergeLane::default(), &mut out)
            .unwrap();
        assert!(
            out.is_empty(),
            "the merge is not taken at the cut that starts it"
        );
        assert_eq!(w.snapshot().0[0].2.len(), 2, "both chunks, until merged");
        let deadline = Instant::now() + Duration::from_secs(30);
        while out.is_empty() {
            assert!(Instant::now() < deadline, "the merge finishes");
            std::thread::sleep(Duration::from_millis(10));
            w.cut_tails().unwrap();
            w.cut_roll(closed, &policy, false, &MergeLane::default(), &mut out)
                .unwrap();
        }
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
        let (mut w, policy) = raw_writer(&uploader, "p", 1, 64 * 1024);
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

    /// Rows of the raw dataset whose encoding records the thread it ran on, and fails
    /// when the vehicle is `fail`.
    #[derive(Clone)]
    struct Probe(Fix);

    static ENCODED_ON: Mutex<Vec<std::thread::ThreadId>> = Mutex::new(Vec::new());

    impl LakeRecord for Probe {
        const APPROX_BYTES: usize = Fix::APPROX_BYTES;
        const DICTIONARY: &'static [&'static str] = Fix::DICTIONARY;
        fn schema() -> arrow::datatypes::SchemaRef {
            Fix::schema()
        }
        fn to_batch(rows: &[Self]) -> Result<arrow::array::RecordBatch, arrow::error::ArrowError> {
            ENCODED_ON.lock().unwrap().push(std::thread::current().id());
            if rows.iter().any(|r| &*r.0.vehicle_id == "fail") {
                return Err(arrow::error::ArrowError::ComputeError("a bad row".into()));
            }
            Fix::to_batch(&rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>())
        }
    }

    #[test]
    fn rows_are_encoded_and_files_closed_beside_the_worker_and_a_later_mark_waits_for_them() {
        let dir = tempfile::tempdir().unwrap();
        let (uploader, _, _rt) = test_uploader(dir.path());
        let mut w: DatasetWriter<Probe> =
            DatasetWriter::new("raw", Partitioning::Hour, "p".into(), 0, uploader.clone());
        let policy = RollPolicy {
            target_bytes: 1 << 30,
            max_age: Duration::from_secs(3600),
        };
        let mut out = Vec::new();
        // Two batches handed over as they fill, the rest at the cut.
        let n = 2 * BATCH_ROWS as i64 + 100;
        for i in 0..n {
            w.push(T + i, Probe(fix(i)), &policy, &mut out).unwrap();
        }
        w.cut_tails().unwrap();
        let mark = uploader.mark();
        uploader.wait_for(mark).unwrap();
        let on = ENCODED_ON.lock().unwrap().clone();
        assert_eq!(on.len(), 3, "each row is encoded once, a batch at a time");
        let here = std::thread::current().id();
        assert!(on.iter().all(|t| *t != here), "not on the worker");
        let chunks = w.snapshot().0;
        let staged = &chunks[0].2[0];
        assert_eq!(staged.rows, n as u64);
        let file = std::fs::File::open(dir.path().join(&staged.path)).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(
            rows, n as usize,
            "the file is complete once the mark is passed"
        );

        // A close that fails is the uploader's failure, naming the file.
        let mut bad = fix(0);
        bad.vehicle_id = "fail".into();
        w.push(T, Probe(bad), &policy, &mut out).unwrap();
        w.cut_tails().unwrap();
        let err = uploader.wait_for(uploader.mark()).unwrap_err().to_string();
        assert!(
            err.contains("a bad row") && err.contains("_fleetflow/staging/raw/"),
            "{err}"
        );
    }
}
