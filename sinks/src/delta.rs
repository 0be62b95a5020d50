//! Every dataset a Delta Lake table: the checkpoint log decides what a commit publishes and
//! removes, and [`DeltaTables`] records it in each table's transaction log
//! (`{dataset}/_delta_log/`) with the `deltalake` crate, so a reader sees one committed
//! snapshot: every committed row once, never part of a commit.
//!
//! - A commit's files of one dataset become one Delta commit: an `add` per published file
//!   (size, partition values, and statistics from the file's footer: row count and the
//!   minimum and maximum of `vehicle_id` and of the time column, so readers skip files), a
//!   `remove` per compacted or expired file, and a `txn` action with `appId` = the job name
//!   and `version` = the checkpoint number. `commitInfo` records the checkpoint and the job
//!   clock the commit is complete through (`fleetflow.job_clock`, epoch ms).
//! - Exactly once: before committing, the table's `txn` version for the job is read; a
//!   checkpoint the table already has is not committed again. Recovery applies the newest
//!   checkpoint again, which completes the tables a crash left behind and repeats none.
//! - A commit is one conditional put of the next log entry (`PutMode::Create`: an atomic
//!   create on a directory, `If-None-Match` on S3), so no lock service is needed.
//! - Every [`CHECKPOINT_INTERVAL`] commits a table gets a Delta checkpoint.
//! - Files a commit removes stay in the store for the vacuum grace period (`[lake]
//!   vacuum_grace`), so a query that planned on an older version still finds them; then
//!   a `VACUUM` (the `deltalake` crate's, lite mode: the table's expired `remove`
//!   tombstones) deletes them: at the process's first commit (what earlier runs removed),
//!   then once a removal this process committed has outlived the grace period, before and
//!   after committing (tombstones outlive the grace period in the log's checkpoints by
//!   as much again, so none is dropped before its file is vacuumed). A file
//!   published and removed by one commit never reaches a table and is deleted at once.
//!   [`DeltaTables::vacuum_all`] (`fleetflow vacuum`) vacuums a stopped job's lake.
//! - Compaction and retention choose among a table's active files ([`TableCommitter::files`]),
//!   never the store's listing, which also holds removed files until they are vacuumed.

use crate::catalogue::{Catalogue, Dataset, DatasetKind, Partitioning};
use crate::commit::{delete_if_exists, Commit};
use crate::lake::Lake;
use crate::table::{publish, TableCommitter};
use arrow::datatypes::DataType as ArrowType;
use deltalake_core::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake_core::kernel::{
    Action, Add, DataType, PrimitiveType, Remove, StructField, Transaction,
};
use deltalake_core::logstore::{default_logstore, LogStoreRef, StorageConfig};
use deltalake_core::operations::create::CreateBuilder;
use deltalake_core::protocol::{DeltaOperation, SaveMode};
use deltalake_core::{DeltaTable, TableProperty};
use fleetflow_runtime::metrics::Metrics;
use fleetflow_types::time::Millis;
use futures::future::BoxFuture;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use parquet::file::statistics::Statistics;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;
use url::Url;

/// Commits between two Delta checkpoints of a table (a checkpoint is a Parquet file of the
/// snapshot in `_delta_log/`, so a reader replays at most this many JSON entries).
pub const CHECKPOINT_INTERVAL: u64 = 10;

/// The lake's datasets as Delta tables (see the module docs).
pub struct DeltaTables {
    /// The store the tables' URLs are paths of (the file system's root, or the bucket).
    root: Arc<dyn ObjectStore>,
    /// The lake's own store (paths relative to the lake).
    lake: Arc<dyn ObjectStore>,
    /// The lake's URL, ending in `/`.
    url: Url,
    datasets: Catalogue,
    /// `appId` of the `txn` actions: the job's name.
    app_id: String,
    tables: tokio::sync::Mutex<HashMap<String, DeltaTable>>,
    /// How long a removed file stays in the store.
    grace: std::time::Duration,
    /// Per table, when this process committed removals not yet vacuumed (oldest first);
    /// a table missing here was not vacuumed by this process yet.
    removed: std::sync::Mutex<HashMap<String, VecDeque<Instant>>>,
}

/// Why a Delta table could not be opened or committed to.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    /// The lake's URL cannot be a table location.
    #[error("lake url {0:?} cannot locate Delta tables")]
    Url(String),
    /// The `deltalake` crate failed.
    #[error("Delta table {table}: {error}")]
    Table {
        /// The dataset.
        table: String,
        /// What failed.
        error: deltalake_core::DeltaTableError,
    },
}

impl DeltaTables {
    /// The tables of `datasets` in `lake`, committed to as job `app_id`.
    pub fn new(lake: &Lake, datasets: Catalogue, app_id: &str) -> Result<DeltaTables, DeltaError> {
        let (root, url): (Arc<dyn ObjectStore>, Url) = match (&lake.local_dir, &lake.s3) {
            (Some(dir), _) => (
                Arc::new(object_store::local::LocalFileSystem::new()),
                Url::from_directory_path(dir).map_err(|_| DeltaError::Url(lake.url.clone()))?,
            ),
            (None, Some(bucket)) => {
                let mut u = lake.url.trim_end_matches('/').to_string();
                u.push('/');
                (
                    bucket.store.clone(),
                    Url::parse(&u).map_err(|_| DeltaError::Url(lake.url.clone()))?,
                )
            }
            (None, None) => return Err(DeltaError::Url(lake.url.clone())),
        };
        Ok(DeltaTables {
            root,
            lake: lake.store.clone(),
            url,
            datasets,
            app_id: app_id.to_string(),
            tables: Default::default(),
            grace: std::time::Duration::from_secs(3600),
            removed: Default::default(),
        })
    }

    /// Keeps removed files for `grace` before vacuuming them (default one hour).
    pub fn with_vacuum_grace(mut self, grace: std::time::Duration) -> DeltaTables {
        self.grace = grace;
        self
    }

    pub(crate) fn log_store(&self, d: &Dataset) -> Result<LogStoreRef, DeltaError> {
        let url = self
            .url
            .join(&format!("{}/", d.name))
            .map_err(|_| DeltaError::Url(self.url.to_string()))?;
        let prefix =
            Path::from_url_path(url.path()).map_err(|_| DeltaError::Url(url.to_string()))?;
        let prefixed: Arc<dyn ObjectStore> = Arc::new(PrefixStore::new(self.root.clone(), prefix));
        Ok(default_logstore(
            prefixed,
            self.root.clone(),
            &url,
            &StorageConfig::default(),
        ))
    }

    /// Opens dataset `d`'s table, creating it (schema, partition columns) when it has no log.
    async fn open(&self, d: &Dataset) -> Result<DeltaTable, DeltaError> {
        let err = |error| DeltaError::Table {
            table: d.name.clone(),
            error,
        };
        let log_store = self.log_store(d)?;
        let mut table = DeltaTable::new(log_store.clone());
        // Asked first: loading a location without a log logs an error of its own.
        if log_store.is_delta_table_location().await.map_err(err)? {
            table.load().await.map_err(err)?;
            return Ok(table);
        }
        let mut columns: Vec<StructField> = d
            .schema
            .fields()
            .iter()
            .map(|f| StructField::new(f.name(), delta_type(f.data_type()), f.is_nullable()))
            .collect();
        for p in partition_columns(d.partitioning) {
            columns.push(StructField::new(*p, DataType::STRING, true));
        }
        CreateBuilder::new()
            .with_log_store(log_store)
            .with_table_name(d.name.clone())
            .with_columns(columns)
            .with_partition_columns(partition_columns(d.partitioning).iter().copied())
            .with_configuration_property(
                TableProperty::CheckpointInterval,
                Some(CHECKPOINT_INTERVAL.to_string()),
            )
            // A checkpoint drops the `remove` tombstones older than this, and a vacuum
            // finds files only by their tombstones: they outlive the grace period by as
            // much again (a minute at least). Other engines' VACUUM keeps files as long.
            .with_configuration_property(
                TableProperty::DeletedFileRetentionDuration,
                Some(format!(
                    "interval {} seconds",
                    self.grace.as_secs() + self.grace.as_secs().max(60)
                )),
            )
            .with_save_mode(SaveMode::Ignore)
            .await
            .map_err(err)
    }

    /// Opens every dataset's table (creating those that do not exist, so that readers find
    /// every table from the first commit on, also one that has no rows yet).
    async fn open_all(&self) -> Result<(), DeltaError> {
        let mut tables = self.tables.lock().await;
        for d in self.datasets.iter() {
            if !tables.contains_key(&d.name) {
                let t = self.open(d).await?;
                tables.insert(d.name.clone(), t);
            }
        }
        Ok(())
    }

    /// Commits `commit`'s files of dataset `d` (`adds`: paths relative to the lake, with
    /// rows; `removes`: paths relative to the lake) unless the table has that checkpoint.
    /// Returns the removed files that never were in the table (published and removed by
    /// this commit), which no vacuum would delete.
    async fn commit_table(
        &self,
        table: &mut DeltaTable,
        d: &Dataset,
        commit: &Commit,
        adds: &[(String, u64)],
        removes: &[String],
    ) -> Result<Vec<String>, DeltaError> {
        let err = |error| DeltaError::Table {
            table: d.name.clone(),
            error,
        };
        let log_store = table.log_store();
        let state = table.snapshot().map_err(err)?;
        let done = state
            .transaction_version(log_store.as_ref(), &self.app_id)
            .await
            .map_err(err)?;
        let active: HashSet<String> = state
            .log_data()
            .into_iter()
            .map(|f| f.object_store_path().to_string())
            .collect();
        let added: HashSet<&str> = adds.iter().map(|(p, _)| relative(d, p)).collect();
        let never_added: Vec<String> = removes
            .iter()
            .filter(|p| added.contains(relative(d, p)) && !active.contains(relative(d, p)))
            .cloned()
            .collect();
        if done.is_some_and(|v| v >= commit.seq as i64) {
            return Ok(never_added);
        }
        // The record's lists are what to publish and delete, not changes of the table: a
        // record applied again (recovery) lists files the table may have already, and one
        // file can be both published and deleted (merged away, or expired) by the same
        // commit. The table gets what changes its files.
        let deleted: HashSet<&str> = removes.iter().map(|p| relative(d, p)).collect();
        let adds = adds.iter().filter(|(p, _)| {
            let rel = relative(d, p);
            !active.contains(rel) && !deleted.contains(rel)
        });
        let removes: Vec<&String> = removes
            .iter()
            .filter(|p| active.contains(relative(d, p)))
            .collect();
        let now = fleetflow_types::time::now_ms();
        let mut actions = Vec::new();
        for (path, rows) in adds {
            let (size, stats) = self
                .file_stats(d, path, *rows)
                .await
                .map_err(|e| err(deltalake_core::DeltaTableError::ObjectStore { source: e }))?;
            actions.push(Action::Add(Add {
                path: relative(d, path).to_string(),
                partition_values: partition_values(path),
                size,
                modification_time: now,
                data_change: true,
                stats: Some(stats),
                ..Default::default()
            }));
        }
        let removed_any = !removes.is_empty();
        for path in removes {
            actions.push(Action::Remove(Remove {
                path: relative(d, path).to_string(),
                data_change: true,
                deletion_timestamp: Some(now),
                extended_file_metadata: Some(false),
                partition_values: Some(partition_values(path)),
                ..Default::default()
            }));
        }
        actions.push(Action::Txn(Transaction {
            app_id: self.app_id.clone(),
            version: commit.seq as i64,
            last_updated: Some(now),
        }));
        let mut info: HashMap<String, Value> = HashMap::new();
        info.insert("fleetflow.checkpoint".into(), json!(commit.seq));
        if let Some(c) = commit.clock {
            info.insert("fleetflow.job_clock".into(), json!(c));
        }
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: Some(
                partition_columns(d.partitioning)
                    .iter()
                    .map(|c| c.to_string())
                    .collect(),
            ),
            predicate: None,
        };
        // A Delta checkpoint every `CHECKPOINT_INTERVAL` commits (the table's
        // `delta.checkpointInterval`), so readers replay a short log.
        CommitBuilder::from(CommitProperties::default().with_create_checkpoint(true))
            .with_actions(actions)
            .with_app_metadata(info)
            .build(Some(state), log_store, operation)
            .await
            .map_err(err)?;
        if removed_any {
            let mut removed = self.removed.lock().expect("not poisoned");
            if let Some(pending) = removed.get_mut(&d.name) {
                pending.push_back(Instant::now());
            }
        }
        table.update_incremental(None).await.map_err(err)?;
        Ok(never_added)
    }

    /// Dataset `d`'s table in `tables`, brought up to its newest version from its log (a
    /// reader's view: tables are never created here); `None` while it has no log.
    async fn refreshed<'t>(
        &self,
        tables: &'t mut HashMap<String, DeltaTable>,
        d: &Dataset,
    ) -> Result<Option<&'t mut DeltaTable>, DeltaError> {
        let err = |error| DeltaError::Table {
            table: d.name.clone(),
            error,
        };
        Ok(Some(match tables.entry(d.name.clone()) {
            std::collections::hash_map::Entry::Occupied(t) => {
                let t = t.into_mut();
                t.update_incremental(None).await.map_err(err)?;
                t
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                let log_store = self.log_store(d)?;
                if !log_store.is_delta_table_location().await.map_err(err)? {
                    return Ok(None);
                }
                let mut t = DeltaTable::new(log_store);
                t.load().await.map_err(err)?;
                slot.insert(t)
            }
        }))
    }

    /// The files of dataset `name` under `prefix` in its table's newest version, read from
    /// the table's log now; none while the table has no log.
    pub(crate) async fn newest_files(
        &self,
        name: &str,
        prefix: &str,
    ) -> Result<Vec<(String, u64)>, DeltaError> {
        let Some(d) = self.datasets.get(name) else {
            return Ok(Vec::new());
        };
        let mut tables = self.tables.lock().await;
        let Some(table) = self.refreshed(&mut tables, d).await? else {
            return Ok(Vec::new());
        };
        let state = table.snapshot().map_err(|error| DeltaError::Table {
            table: name.to_string(),
            error,
        })?;
        Ok(active_files(state, name, prefix))
    }

    /// Vacuums the tables that are due (see the module docs): deletes the files whose
    /// `remove` is older than the grace period. A table is due at this process's first
    /// commit (files a previous run removed) and when a removal this process committed has
    /// outlived the grace period. A failure is logged, not returned: the files stay
    /// removed from the tables and a later vacuum deletes them.
    async fn vacuum(&self) {
        let mut tables = self.tables.lock().await;
        for (name, table) in tables.iter_mut() {
            let due = {
                let removed = self.removed.lock().expect("not poisoned");
                removed
                    .get(name)
                    .is_none_or(|r| r.front().is_some_and(|t| t.elapsed() >= self.grace))
            };
            if !due {
                continue;
            }
            let started = Instant::now();
            match self.vacuum_table(table).await {
                Ok(deleted) => {
                    if deleted > 0 {
                        fleetflow_runtime::checkpoint::failpoint("vacuum");
                        tracing::info!(table = %name, files = deleted, ms = started.elapsed().as_millis() as u64, "vacuumed removed files");
                    }
                    // Removals older than the grace period at the start are vacuumed.
                    let mut removed = self.removed.lock().expect("not poisoned");
                    let pending = removed.entry(name.clone()).or_default();
                    while pending
                        .front()
                        .is_some_and(|t| started.duration_since(*t) >= self.grace)
                    {
                        pending.pop_front();
                    }
                }
                Err(e) => tracing::warn!(table = %name, error = %e, "vacuum failed; retried later"),
            }
        }
    }

    /// Vacuums one table now: deletes the files whose `remove` is older than the grace
    /// period; returns how many.
    async fn vacuum_table(
        &self,
        table: &mut DeltaTable,
    ) -> Result<usize, deltalake_core::DeltaTableError> {
        // No grace: files removed up to now, this commit's included, go at once.
        let retention = match self.grace.is_zero() {
            true => chrono::Duration::milliseconds(-1),
            false => chrono::Duration::from_std(self.grace).unwrap_or(chrono::Duration::MAX),
        };
        let (t, m) = table
            .clone()
            .vacuum()
            .with_retention_period(retention)
            .with_enforce_retention_duration(false)
            .await?;
        *table = t;
        Ok(m.files_deleted.len())
    }

    /// Vacuums every existing table of the lake now (`fleetflow vacuum`); returns the
    /// files deleted per table. Safe next to a running job: only files removed longer
    /// than the grace period ago are deleted.
    pub async fn vacuum_all(&self) -> Result<Vec<(String, usize)>, DeltaError> {
        let mut out = Vec::new();
        let mut tables = self.tables.lock().await;
        for d in self.datasets.iter() {
            // A table without a log yet has nothing to vacuum.
            let Some(table) = self.refreshed(&mut tables, d).await? else {
                continue;
            };
            let deleted = self
                .vacuum_table(table)
                .await
                .map_err(|error| DeltaError::Table {
                    table: d.name.clone(),
                    error,
                })?;
            out.push((d.name.clone(), deleted));
        }
        Ok(out)
    }

    /// A file's size and its Delta statistics (row count; minimum and maximum of
    /// `vehicle_id` and of the time column, from the footer's row-group statistics).
    async fn file_stats(
        &self,
        d: &Dataset,
        path: &str,
        rows: u64,
    ) -> object_store::Result<(i64, String)> {
        let (size, footer) = footer(&*self.lake, &Path::from(path)).await?;
        let mut min = Map::new();
        let mut max = Map::new();
        // The footer's row count is the file's; the record's is what the writer counted.
        let mut rows = rows;
        if let Some(footer) = footer {
            rows = footer.file_metadata().num_rows() as u64;
            let schema = footer.file_metadata().schema_descr();
            for name in ["vehicle_id", time_column(d)] {
                let Some(col) =
                    (0..schema.num_columns()).find(|&i| schema.column(i).name() == name)
                else {
                    continue;
                };
                let mut range: Option<(Value, Value)> = None;
                for rg in footer.row_groups() {
                    let Some((lo, hi)) = rg.column(col).statistics().and_then(bounds) else {
                        range = None;
                        break;
                    };
                    range = Some(match range {
                        None => (lo, hi),
                        Some((a, b)) => (least(a, lo, true), least(b, hi, false)),
                    });
                }
                if let Some((lo, hi)) = range {
                    let timestamp = name != "vehicle_id";
                    min.insert(name.into(), stat_value(lo, timestamp));
                    max.insert(name.into(), stat_value(hi, timestamp));
                }
            }
        }
        let stats = json!({"numRecords": rows, "minValues": min, "maxValues": max});
        Ok((size as i64, stats.to_string()))
    }
}

impl TableCommitter for DeltaTables {
    fn apply<'a>(
        &'a self,
        store: &'a dyn ObjectStore,
        commit: &'a Commit,
        metrics: Option<&'a Metrics>,
    ) -> BoxFuture<'a, object_store::Result<()>> {
        Box::pin(async move {
            self.open_all().await.map_err(store_error)?;
            // Before committing too: a commit can write a Delta checkpoint, which drops
            // tombstones past the table's retention (after a long stop, for instance).
            self.vacuum().await;
            publish(store, commit, metrics).await?;
            let mut adds: BTreeMap<&str, Vec<(String, u64)>> = BTreeMap::new();
            for p in &commit.publish {
                adds.entry(p.dataset.as_str())
                    .or_default()
                    .push((p.to.clone(), p.rows));
            }
            let mut removes: BTreeMap<&str, Vec<String>> = BTreeMap::new();
            for path in &commit.delete {
                let name = path.split('/').next().unwrap_or_default();
                if let Some(d) = self.datasets.get(name) {
                    removes
                        .entry(d.name.as_str())
                        .or_default()
                        .push(path.clone());
                }
            }
            // The tables are independent (each commit is idempotent by its `txn`
            // version, and recovery completes whichever a crash left out), so they are
            // committed at the same time: a commit waits for the slowest table, not for
            // the sum of them (on S3, several round trips each). One table's failure fails
            // the checkpoint, and the job, whose restart reads every table's log again (the
            // others' commits may be cut short by it).
            let mut tables = self.tables.lock().await;
            let commits = tables.iter_mut().filter_map(|(name, table)| {
                let d = self.datasets.get(name)?;
                let (a, r) = (adds.get(name.as_str()), removes.get(name.as_str()));
                if a.is_none() && r.is_none() {
                    return None;
                }
                Some(async move {
                    let gone = self
                        .commit_table(
                            table,
                            d,
                            commit,
                            a.map(Vec::as_slice).unwrap_or_default(),
                            r.map(Vec::as_slice).unwrap_or_default(),
                        )
                        .await
                        .map_err(store_error)?;
                    fleetflow_runtime::checkpoint::failpoint("delta_commit");
                    Ok::<_, object_store::Error>(gone)
                })
            });
            let never_added: Vec<String> = futures::future::try_join_all(commits)
                .await?
                .into_iter()
                .flatten()
                .collect();
            drop(tables);
            for path in never_added {
                delete_if_exists(store, &path).await?;
            }
            self.vacuum().await;
            Ok(())
        })
    }

    fn files<'a>(
        &'a self,
        _store: &'a dyn ObjectStore,
        dataset: &'a str,
        prefix: &'a str,
    ) -> BoxFuture<'a, object_store::Result<Vec<(String, u64)>>> {
        Box::pin(async move {
            self.open_all().await.map_err(store_error)?;
            let tables = self.tables.lock().await;
            let Some(table) = tables.get(dataset) else {
                return Ok(Vec::new());
            };
            let state = table.snapshot().map_err(|error| {
                store_error(DeltaError::Table {
                    table: dataset.to_string(),
                    error,
                })
            })?;
            Ok(active_files(state, dataset, prefix))
        })
    }
}

/// A Delta error as the object-store error the table-committer seam returns.
pub(crate) fn store_error(e: DeltaError) -> object_store::Error {
    object_store::Error::Generic {
        store: "delta",
        source: Box::new(e),
    }
}

/// The active files of table `dataset` (at `state`) under `prefix` (relative to the
/// lake), as paths relative to the lake with their sizes.
pub(crate) fn active_files(
    state: &deltalake_core::table::state::DeltaTableState,
    dataset: &str,
    prefix: &str,
) -> Vec<(String, u64)> {
    let dir = format!("{}/", prefix.trim_end_matches('/'));
    state
        .log_data()
        .into_iter()
        .map(|f| {
            (
                format!("{dataset}/{}", f.object_store_path()),
                f.size().max(0) as u64,
            )
        })
        .filter(|(p, _)| p.starts_with(&dir))
        .collect()
}

/// A Parquet file's size and footer (`None` if it cannot be read as one). Most footers of
/// the lake's files fit in the last 64 KiB: one request gives both.
async fn footer(
    store: &dyn ObjectStore,
    location: &Path,
) -> object_store::Result<(u64, Option<ParquetMetaData>)> {
    let tail = store
        .get_opts(
            location,
            GetOptions {
                range: Some(GetRange::Suffix(64 * 1024)),
                ..Default::default()
            },
        )
        .await?;
    let size = tail.meta.size;
    let mut buf = tail.bytes().await?;
    if buf.len() < 8 || &buf[buf.len() - 4..] != b"PAR1" {
        return Ok((size, None));
    }
    let n = buf.len();
    let len = u32::from_le_bytes(buf[n - 8..n - 4].try_into().expect("4 bytes")) as u64;
    if len + 8 > size {
        return Ok((size, None));
    }
    if len + 8 > n as u64 {
        buf = store.get_range(location, size - 8 - len..size).await?;
    }
    let n = buf.len();
    let meta = ParquetMetaDataReader::decode_metadata(&buf[n - 8 - len as usize..n - 8]).ok();
    Ok((size, meta))
}

/// The partition columns of a partitioning, in path order.
pub fn partition_columns(p: Partitioning) -> &'static [&'static str] {
    match p {
        Partitioning::Hour => &["date", "hour"],
        Partitioning::Day => &["date"],
        Partitioning::Month => &["month"],
    }
}

/// The column a dataset's rows are placed by in time.
pub fn time_column(d: &Dataset) -> &'static str {
    match d.kind {
        DatasetKind::Tier(_) => "window_start",
        DatasetKind::DeadLetter => "received_at",
        DatasetKind::Raw | DatasetKind::GeofenceEvents => "ts",
    }
}

/// A path relative to the lake, relative to its dataset's table instead.
fn relative<'p>(d: &Dataset, path: &'p str) -> &'p str {
    path.strip_prefix(&d.name)
        .and_then(|p| p.strip_prefix('/'))
        .unwrap_or(path)
}

/// The `key=value` directories of a path.
fn partition_values(path: &str) -> HashMap<String, Option<String>> {
    path.split('/')
        .filter_map(|seg| seg.split_once('='))
        .map(|(k, v)| (k.to_string(), Some(v.to_string())))
        .collect()
}

fn delta_type(t: &ArrowType) -> DataType {
    match t {
        ArrowType::Utf8 | ArrowType::LargeUtf8 => DataType::STRING,
        ArrowType::Float64 => DataType::DOUBLE,
        ArrowType::Float32 => DataType::FLOAT,
        ArrowType::Int64 => DataType::LONG,
        ArrowType::Int32 => DataType::INTEGER,
        ArrowType::Boolean => DataType::BOOLEAN,
        ArrowType::Timestamp(_, Some(_)) => DataType::TIMESTAMP,
        ArrowType::Timestamp(_, None) => DataType::Primitive(PrimitiveType::TimestampNtz),
        other => unreachable!("the lake's schemas have no {other} column"),
    }
}

/// The bounds a row group's statistics give, as JSON (timestamps as epoch ms).
fn bounds(s: &Statistics) -> Option<(Value, Value)> {
    match s {
        Statistics::ByteArray(v) => {
            let (lo, hi) = (v.min_opt()?, v.max_opt()?);
            Some((
                json!(std::str::from_utf8(lo.data()).ok()?),
                json!(std::str::from_utf8(hi.data()).ok()?),
            ))
        }
        Statistics::Int64(v) => Some((json!(v.min_opt()?), json!(v.max_opt()?))),
        _ => None,
    }
}

/// The lesser (`min`) or greater of two bounds of one kind.
fn least(a: Value, b: Value, min: bool) -> Value {
    let less = match (&a, &b) {
        (Value::String(x), Value::String(y)) => x < y,
        (x, y) => x.as_i64() < y.as_i64(),
    };
    if less == min {
        a
    } else {
        b
    }
}

/// A bound as Delta statistics write it: timestamps as ISO-8601 UTC with milliseconds.
fn stat_value(v: Value, timestamp: bool) -> Value {
    match (timestamp, v.as_i64()) {
        (true, Some(ms)) => json!(iso_millis(ms)),
        _ => v,
    }
}

fn iso_millis(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}
