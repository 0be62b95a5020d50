//! Table committers: how a commit's files become part of the datasets readers see.
//!
//! The checkpoint log ([`crate::commit`]) decides what each commit publishes (staged files,
//! compactions' merged files) and deletes (compacted, expired and dropped files); a
//! [`TableCommitter`] makes that visible in the lake's table format. Applying a commit is
//! idempotent: recovery applies the newest commit again after a crash at any point of it.
//!
//! [`HiveDirectories`] renames staged files into Hive-partitioned directories, which
//! `read_parquet` globs, Athena external tables and Spark read. A table format with a log
//! of its own (Delta Lake) is another implementation of the same trait.

use crate::commit::{delete_if_exists, Commit};
use fleetflow_runtime::checkpoint::failpoint;
use fleetflow_runtime::metrics::Metrics;
use futures::future::BoxFuture;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use std::sync::atomic::Ordering::Relaxed;

/// Makes a commit's files part of its datasets.
pub trait TableCommitter: Send + Sync {
    /// Publishes `commit.publish` and removes `commit.delete` on `store`, counting what it
    /// published in `metrics`; applying a commit again changes nothing.
    fn apply<'a>(
        &'a self,
        store: &'a dyn ObjectStore,
        commit: &'a Commit,
        metrics: Option<&'a Metrics>,
    ) -> BoxFuture<'a, object_store::Result<()>>;

    /// The files of `dataset` under `prefix` (a path relative to the lake, starting with
    /// the dataset's name) that its readers see now, with their sizes in bytes: what
    /// compaction merges and retention expires. A file a commit removed can stay in the
    /// store for a while (a table format's vacuum grace period); it is not listed.
    fn files<'a>(
        &'a self,
        store: &'a dyn ObjectStore,
        dataset: &'a str,
        prefix: &'a str,
    ) -> BoxFuture<'a, object_store::Result<Vec<(String, u64)>>>;
}

/// Datasets as Hive-partitioned directories of Parquet files: a file is published by
/// renaming it from the staging area to its partition directory.
#[derive(Clone, Copy, Debug, Default)]
pub struct HiveDirectories;

impl TableCommitter for HiveDirectories {
    fn apply<'a>(
        &'a self,
        store: &'a dyn ObjectStore,
        commit: &'a Commit,
        metrics: Option<&'a Metrics>,
    ) -> BoxFuture<'a, object_store::Result<()>> {
        Box::pin(async move {
            publish(store, commit, metrics).await?;
            for d in &commit.delete {
                delete_if_exists(store, d).await?;
            }
            Ok(())
        })
    }

    fn files<'a>(
        &'a self,
        store: &'a dyn ObjectStore,
        _dataset: &'a str,
        prefix: &'a str,
    ) -> BoxFuture<'a, object_store::Result<Vec<(String, u64)>>> {
        Box::pin(async move {
            Ok(crate::commit::list(store, prefix)
                .await?
                .into_iter()
                .filter(|m| m.location.extension() == Some("parquet"))
                .map(|m| (m.location.to_string(), m.size))
                .collect())
        })
    }
}

/// Renames `commit.publish`'s staged files to their places in their datasets, counting
/// them in `metrics`; a file published already is skipped.
pub(crate) async fn publish(
    store: &dyn ObjectStore,
    commit: &Commit,
    metrics: Option<&Metrics>,
) -> object_store::Result<()> {
    for p in &commit.publish {
        match store
            .rename(&Path::from(p.from.as_str()), &Path::from(p.to.as_str()))
            .await
        {
            Ok(()) => {
                if let Some(m) = metrics {
                    m.files_written.fetch_add(1, Relaxed);
                    m.add_rows(&p.dataset, p.rows);
                }
            }
            // Published already (the commit is applied again).
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        failpoint("publish");
    }
    Ok(())
}
