//! Exactly-once commits: the checkpoint log under `{lake}/_fleetflow/`.
//!
//! ```text
//!   operators ──pieces──► Hub ──complete checkpoint at boundary B──► Coordinator (one thread)
//!                                                                    1. put _fleetflow/state/{B}.bin      (every piece)
//!                                                                    2. put _fleetflow/log/{seq}.json     ◄── the commit point
//!                                                                    3. publish: rename staged files into the datasets
//!                                                                    4. delete: compacted and expired files, unreferenced staging
//!                                                                    5. compact closed partitions (published with the next commit)
//! ```
//!
//! A commit record ([`Commit`]) names the state object, the staged chunks that state still
//! references, the files to publish and the files to delete. Publishing and deleting are
//! idempotent, so recovery simply applies the newest record again, deletes every staged
//! object (and unfinished multipart upload) that record does not reference, and restarts
//! the dataflow from its state. A file becomes visible only after the record that
//! publishes it is durable, and it is published under a name no other commit uses, so a
//! crash at any instant leaves each row in the datasets exactly once.

use crate::catalogue::{Catalogue, Dataset};
use crate::lake::{Lake, LakeError, Uploader};
pub use crate::staging::clean_staging;
use crate::table::TableCommitter;
use crate::writer::{merge_files, Pending, SinkSnapshot, SNAPSHOT_OP, STAGING};
use bytes::Bytes;
use fleetflow_runtime::checkpoint::{failpoint, Blob, Hub, Participant, Ready};
use fleetflow_runtime::metrics::Metrics;
use fleetflow_types::time::{now_ms, Millis};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

/// Commit records, one object per commit, named by sequence number.
pub const LOG: &str = "_fleetflow/log";
/// State objects, one per checkpoint.
pub const STATE: &str = "_fleetflow/state";
/// The checkpoint format this build writes and reads. 2: the timelines' snapshots end with
/// replay positions, and on replayable inputs hold no pending fixes.
pub const FORMAT_VERSION: u32 = 2;
/// Commit records kept (older ones are deleted; the newest is all recovery needs).
const KEEP_LOG: u64 = 100;

/// One commit of the checkpoint log (`_fleetflow/log/{seq:020}.json`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Commit {
    /// Format version.
    pub version: u32,
    /// Sequence number (the object's name).
    pub seq: u64,
    /// The checkpoint boundary (processing-time epoch, ms) the state was taken at.
    pub boundary: u64,
    /// The job clock at that boundary: the `as_of` of its results.
    #[serde(alias = "watermark")]
    pub clock: Option<Millis>,
    /// Wall-clock time of the commit, ms.
    pub committed_at: Millis,
    /// The job's name.
    pub job: String,
    /// The job's inputs (files, generator partitions, Kafka partitions), in id order.
    pub inputs: Vec<String>,
    /// The state object.
    pub state: String,
    /// Staged chunks the state references, and the files merges in progress are writing
    /// (kept until a later commit drops them).
    pub staged: Vec<String>,
    /// Files this commit publishes.
    pub publish: Vec<Pending>,
    /// Files this commit deletes (replaced by compaction, or expired).
    pub delete: Vec<String>,
    /// Per dataset: every row of a partition that ends at or before this time is in a
    /// published file.
    pub complete: BTreeMap<String, Millis>,
    /// Per dataset: keys of partitions that received files since they were last compacted.
    pub uncompacted: BTreeMap<String, BTreeSet<i64>>,
    /// Per dataset with a retention: partitions ending at or before this time are deleted.
    pub retention: BTreeMap<String, Millis>,
    /// Whether the job stopped after this commit (end of input or interrupt).
    pub last: bool,
    /// Whether the commit holds everything the (bounded) input produced: every sink had
    /// seen its end.
    #[serde(default)]
    pub input_ended: bool,
}

/// What recovery found.
#[derive(Debug)]
pub struct Recovered {
    /// The newest commit.
    pub commit: Commit,
    /// The state's pieces: (operator, worker) and blob.
    pub pieces: Vec<((String, usize), Vec<u8>)>,
}

pub(crate) fn store_err(path: &str, e: impl std::fmt::Display) -> LakeError {
    LakeError::Checkpoint {
        path: path.to_string(),
        message: e.to_string(),
    }
}

fn log_path(seq: u64) -> String {
    format!("{LOG}/{seq:020}.json")
}

pub(crate) async fn list(
    store: &dyn ObjectStore,
    prefix: &str,
) -> object_store::Result<Vec<object_store::ObjectMeta>> {
    store.list(Some(&Path::from(prefix))).try_collect().await
}

pub(crate) async fn delete_if_exists(
    store: &dyn ObjectStore,
    path: &str,
) -> object_store::Result<()> {
    match store.delete(&Path::from(path)).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Reads the newest commit, applies it again to the tables and returns the state to resume
/// from (`None` for a lake without checkpoints). Removing uncommitted leftovers is
/// [`clean_staging`].
pub fn recover(
    lake: &Lake,
    rt: &tokio::runtime::Handle,
    tables: &dyn TableCommitter,
) -> Result<Option<Recovered>, LakeError> {
    newest(lake, rt, Some(tables))
}

/// Like [`recover`] without applying the commit again: for the processes of a cluster
/// other than the first, which recovers the lake for all of them.
pub fn read_checkpoint(
    lake: &Lake,
    rt: &tokio::runtime::Handle,
) -> Result<Option<Recovered>, LakeError> {
    newest(lake, rt, None)
}

fn newest(
    lake: &Lake,
    rt: &tokio::runtime::Handle,
    apply_again: Option<&dyn TableCommitter>,
) -> Result<Option<Recovered>, LakeError> {
    let store = lake.store.clone();
    rt.block_on(async move {
        let logs = list(&*store, LOG).await.map_err(|e| store_err(LOG, e))?;
        let Some(newest) = logs
            .iter()
            .filter(|m| m.location.extension() == Some("json"))
            .max_by(|a, b| a.location.as_ref().cmp(b.location.as_ref()))
        else {
            return Ok(None);
        };
        let path = newest.location.to_string();
        let body = store
            .get(&newest.location)
            .await
            .map_err(|e| store_err(&path, e))?
            .bytes()
            .await
            .map_err(|e| store_err(&path, e))?;
        let commit: Commit = serde_json::from_slice(&body).map_err(|e| store_err(&path, e))?;
        if commit.version != FORMAT_VERSION {
            return Err(store_err(
                &path,
                format!(
                    "a checkpoint of format {} (this build reads format {FORMAT_VERSION}): finish it with the fleetflow that wrote it, or start this job on a new lake",
                    commit.version
                ),
            ));
        }
        if let Some(tables) = apply_again {
            tables
                .apply(&*store, &commit, None)
                .await
                .map_err(|e| store_err(&path, e))?;
        }
        let state = store
            .get(&Path::from(commit.state.as_str()))
            .await
            .map_err(|e| store_err(&commit.state, e))?
            .bytes()
            .await
            .map_err(|e| store_err(&commit.state, e))?;
        let pieces: Vec<((String, usize), Vec<u8>)> =
            postcard::from_bytes(&state).map_err(|e| store_err(&commit.state, e))?;
        Ok(Some(Recovered { commit, pieces }))
    })
}

/// Writes commits as checkpoints complete (see the module docs).
pub struct Coordinator {
    /// The lake.
    pub lake: Lake,
    /// Where checkpoints come from.
    pub hub: Arc<Hub>,
    /// For merges during compaction.
    pub uploader: Uploader,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The datasets.
    pub datasets: Catalogue,
    /// How a commit's files become part of the datasets.
    pub tables: Arc<dyn TableCommitter>,
    /// The job's name and inputs (recorded in every commit).
    pub job: (String, Vec<String>),
    /// Files smaller than half of this are compacted in closed partitions.
    pub target_bytes: u64,
    /// The commit the job resumed from.
    pub previous: Option<Commit>,
    /// Called after each commit is durable, with its record and the checkpoint's pieces
    /// (e.g. to commit the source offsets to a Kafka consumer group).
    pub on_commit: Option<OnCommit>,
}

/// The state file of a checkpoint: its pieces encoded as `postcard` encodes
/// `Vec<(Participant, Vec<u8>)>` of each piece's bytes, from the pieces' chunks as they are
/// (shared, not copied: a state can be hundreds of MB).
fn state_payload(pieces: &[(Participant, Blob)]) -> PutPayload {
    fn encoded(head: &impl Serialize) -> Bytes {
        Bytes::from(postcard::to_stdvec(head).expect("a head encodes"))
    }
    let mut chunks: Vec<Bytes> = Vec::with_capacity(pieces.len() * 3 + 1);
    chunks.push(encoded(&(pieces.len() as u64)));
    for ((op, worker), blob) in pieces {
        chunks.push(encoded(&(op.as_str(), *worker as u64, blob.len() as u64)));
        chunks.extend(blob.chunks().iter().cloned());
    }
    chunks.into_iter().collect()
}

/// See [`Coordinator::on_commit`].
pub type OnCommit =
    Box<dyn FnMut(&Commit, &[(fleetflow_runtime::checkpoint::Participant, Blob)]) + Send>;

impl Coordinator {
    fn rt(&self) -> &tokio::runtime::Handle {
        self.uploader.runtime()
    }

    /// Commits checkpoints until the final one (or until nothing is ready and `stop` is set
    /// or the hub records a failure: a sink that failed offers no more pieces, so no later
    /// checkpoint can be complete); returns the last commit.
    pub fn run(
        mut self,
        stop: Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<Option<Commit>, LakeError> {
        let mut carry = (Vec::new(), Vec::new());
        let mut published = BTreeSet::new();
        loop {
            let ready = self.hub.wait_ready(Duration::from_millis(100));
            let Some(ready) = ready else {
                if stop.load(Relaxed) || self.hub.failure().is_some() {
                    return Ok(self.previous);
                }
                continue;
            };
            let last = ready.last;
            let commit = match self.commit(ready, std::mem::take(&mut carry), &mut published) {
                Ok(c) => c,
                Err(e) => {
                    self.hub.fail(e.to_string());
                    return Err(e);
                }
            };
            carry = self.compact(&commit)?;
            if last {
                if !carry.0.is_empty() {
                    // The compaction of the last round needs a commit of its own.
                    let mut c = commit.clone();
                    c.seq += 1;
                    c.committed_at = now_ms();
                    (c.publish, c.delete) = std::mem::take(&mut carry);
                    self.write(&c)?;
                    self.rt()
                        .block_on(
                            self.tables
                                .apply(&*self.lake.store, &c, Some(&self.metrics)),
                        )
                        .map_err(|e| store_err(&log_path(c.seq), e))?;
                    self.previous = Some(c);
                }
                return Ok(self.previous);
            }
        }
    }

    fn write(&self, c: &Commit) -> Result<(), LakeError> {
        let path = log_path(c.seq);
        let body = serde_json::to_vec_pretty(c).map_err(|e| store_err(&path, e))?;
        let store = self.lake.store.clone();
        failpoint("commit-before");
        self.rt()
            .block_on(async move {
                store
                    .put(&Path::from(path.as_str()), PutPayload::from(body))
                    .await
            })
            .map_err(|e| store_err(&log_path(c.seq), e))?;
        failpoint("commit-after");
        Ok(())
    }

    fn dataset(&self, name: &str) -> Option<&Dataset> {
        self.datasets.get(name)
    }

    fn key_of(&self, dataset: &str, file: &str) -> Option<i64> {
        let d = self.dataset(dataset)?;
        let dir = file.strip_prefix(dataset)?.trim_start_matches('/');
        let dir = &dir[..dir.rfind('/')?];
        d.partitioning.parse_dir(dir)
    }

    /// Commits a complete checkpoint, with what the compaction after the previous commit
    /// carries (`cpublish`, `cdelete`). `published` holds the files of the sinks' lists that
    /// earlier commits published (see below); it is kept between calls.
    fn commit(
        &mut self,
        ready: Ready,
        (cpublish, cdelete): (Vec<Pending>, Vec<String>),
        published: &mut BTreeSet<String>,
    ) -> Result<Commit, LakeError> {
        let state_path = format!("{STATE}/{:020}.bin", ready.boundary);
        let mut staged = BTreeSet::new();
        let mut publish = BTreeSet::new();
        let mut clock: Option<Millis> = None;
        let mut open_from: BTreeMap<String, Millis> = BTreeMap::new();
        // Rows still to come from vehicles not final yet (`None`: a sink not told yet).
        let mut unfinished: Option<Millis> = Some(Millis::MAX);
        // Whether every sink saw the end of the input.
        let (mut sinks, mut ended) = (0, true);
        for ((op, _), blob) in &ready.pieces {
            if op != SNAPSHOT_OP {
                continue;
            }
            let s: SinkSnapshot =
                postcard::from_bytes(&blob.contiguous()).map_err(|e| store_err(&state_path, e))?;
            clock = match (clock, s.clock) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            for (_, _, chunks) in s.chunks {
                staged.extend(chunks.into_iter().map(|c| c.path));
            }
            // Not state, but a later state names them: the sweep must not take them.
            staged.extend(s.merging);
            publish.extend(s.pending);
            unfinished = unfinished.zip(s.complete).map(|(a, b)| a.min(b));
            sinks += 1;
            ended &= s.end;
            for (d, t) in s.open_from {
                let e = open_from.entry(d).or_insert(t);
                *e = (*e).min(t);
            }
        }
        // A sink lists a rolled file in every snapshot until it learns that a checkpoint
        // listing it was taken, which on a process of a cluster can be several checkpoints
        // later. Such a file was published by an earlier commit, and the compaction since
        // may have merged it into another file and removed it from its table: publishing
        // it again would add its rows a second time. A name stays here until the sinks stop
        // listing it (they never list it again after that).
        let listed: BTreeSet<&str> = publish.iter().map(|p: &Pending| p.to.as_str()).collect();
        published.retain(|to| listed.contains(to.as_str()));
        publish.retain(|p| !published.contains(&p.to));
        published.extend(publish.iter().map(|p| p.to.clone()));
        let previous = self.previous.take().unwrap_or_default();
        let mut c = Commit {
            version: FORMAT_VERSION,
            seq: previous.seq + 1,
            boundary: ready.boundary,
            clock: clock.or(previous.clock),
            committed_at: now_ms(),
            job: self.job.0.clone(),
            inputs: self.job.1.clone(),
            state: state_path.clone(),
            staged: staged.into_iter().collect(),
            publish: Vec::new(),
            delete: cdelete,
            complete: BTreeMap::new(),
            uncompacted: previous.uncompacted.clone(),
            retention: previous.retention.clone(),
            last: ready.last,
            input_ended: sinks > 0 && ended,
        };
        // Retention: cut-offs move with the job clock; files rolled into an expired
        // partition are dropped instead of published.
        if let Some(w) = c.clock {
            for d in self.datasets.iter() {
                if let Some(r) = d.retention {
                    c.retention.insert(d.name.clone(), w.saturating_sub(r));
                }
                // Complete before the oldest open partition, the rows the vehicles will
                // still produce, and the job clock.
                let complete = open_from
                    .get(&d.name)
                    .copied()
                    .unwrap_or(w)
                    .min(w)
                    .min(unfinished.unwrap_or(Millis::MIN));
                c.complete.insert(d.name.clone(), complete);
            }
        }
        for p in publish.into_iter().chain(cpublish) {
            let key = self.key_of(&p.dataset, &p.to);
            let expired = match (key, self.dataset(&p.dataset), c.retention.get(&p.dataset)) {
                (Some(k), Some(d), Some(cut)) => {
                    d.partitioning.closes_at(k).is_some_and(|e| e <= *cut)
                }
                _ => false,
            };
            if expired {
                c.delete.push(p.from.clone());
            } else {
                if let Some(k) = key {
                    c.uncompacted
                        .entry(p.dataset.clone())
                        .or_default()
                        .insert(k);
                }
                c.publish.push(p);
            }
        }
        // Retention: the files of partitions the cut-offs expire are deleted by this commit
        // (so a table format records their removal).
        c.delete.extend(self.expired(&c)?);
        c.delete.sort();
        c.delete.dedup();
        // 1. The state, written from the pieces as they are (they can be hundreds of MB).
        let payload = state_payload(&ready.pieces);
        self.metrics.checkpoint_bytes.store(
            payload.content_length() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let store = self.lake.store.clone();
        let sp = state_path.clone();
        self.rt()
            .block_on(async move { store.put(&Path::from(sp.as_str()), payload).await })
            .map_err(|e| store_err(&state_path, e))?;
        // 2. The commit point.
        self.write(&c)?;
        self.hub.set_committed(c.boundary);
        if let Some(hook) = &mut self.on_commit {
            hook(&c, &ready.pieces);
        }
        // 3-4. Publish and delete; then the previous state, old records and staged files
        // that no state will reference again.
        let store = self.lake.store.clone();
        let mut garbage: Vec<String> = Vec::new();
        if !previous.state.is_empty() && previous.state != c.state {
            garbage.push(previous.state.clone());
        }
        if c.seq > KEEP_LOG {
            garbage.push(log_path(c.seq - KEEP_LOG));
        }
        let metrics = self.metrics.clone();
        let (cc, tables) = (c.clone(), self.tables.clone());
        self.rt()
            .block_on(async move {
                let started = std::time::Instant::now();
                tables.apply(&*store, &cc, Some(&metrics)).await?;
                metrics
                    .commit_latency
                    .record(started.elapsed().as_millis() as u64, 1);
                for g in garbage {
                    delete_if_exists(&*store, &g).await?;
                }
                Ok::<_, object_store::Error>(())
            })
            .map_err(|e| store_err(&log_path(c.seq), e))?;
        for (d, t) in &c.complete {
            self.metrics.set_lake_complete(d, *t);
        }
        if let Some(w) = c.clock {
            self.metrics.lake_clock.fetch_max(w, Relaxed);
        }
        if c.input_ended {
            self.metrics.lake_input_ended.store(true, Relaxed);
        }
        self.sweep(&c)?;
        self.previous = Some(c.clone());
        Ok(c)
    }

    /// Deletes staged files no state will reference again: those the commit's state does
    /// not name and that were written before its boundary. (Every tail open before the
    /// boundary was closed by the cut at it, and a chunk a state stopped naming never comes
    /// back; files written later may belong to a checkpoint still being taken.)
    fn sweep(&self, c: &Commit) -> Result<(), LakeError> {
        let keep: BTreeSet<&str> = c.staged.iter().map(String::as_str).collect();
        // After the last commit no checkpoint is in progress: everything unnamed goes.
        let before = if c.last {
            i64::MAX
        } else {
            (c.boundary as i64).saturating_sub(1_000)
        };
        self.delete_listed(STAGING, |m| {
            !keep.contains(m.location.as_ref()) && m.last_modified.timestamp_millis() < before
        })?;
        Ok(())
    }

    /// Lists the objects under `prefix` and deletes those `doomed` picks; returns how many.
    fn delete_listed(
        &self,
        prefix: &str,
        doomed: impl Fn(&object_store::ObjectMeta) -> bool,
    ) -> Result<usize, LakeError> {
        let store = self.lake.store.clone();
        let files = self
            .rt()
            .block_on(list(&*store, prefix))
            .map_err(|e| store_err(prefix, e))?;
        let doomed: Vec<Path> = files
            .into_iter()
            .filter(|m| doomed(m))
            .map(|m| m.location)
            .collect();
        let n = doomed.len();
        self.rt()
            .block_on(async move {
                for p in doomed {
                    delete_if_exists(&*store, p.as_ref()).await?;
                }
                Ok::<_, object_store::Error>(())
            })
            .map_err(|e| store_err(prefix, e))?;
        Ok(n)
    }

    /// The published files of the partitions that a commit's retention cut-offs expire.
    fn expired(&self, c: &Commit) -> Result<Vec<String>, LakeError> {
        let mut out = Vec::new();
        for (name, cut) in &c.retention {
            let Some(d) = self.dataset(name) else {
                continue;
            };
            let store = self.lake.store.clone();
            let files = self
                .rt()
                .block_on(self.tables.files(&*store, name, name))
                .map_err(|e| store_err(name, e))?;
            let before = out.len();
            out.extend(files.into_iter().map(|(path, _)| path).filter(|path| {
                self.key_of(name, path)
                    .and_then(|k| d.partitioning.closes_at(k))
                    .is_some_and(|e| e <= *cut)
            }));
            if out.len() > before {
                tracing::info!(dataset = %name, files = out.len() - before, "retention: removing expired partitions");
            }
        }
        Ok(out)
    }

    /// Merges the small files of partitions the job clock closed into one staged file
    /// each; returns what the next commit publishes and deletes.
    fn compact(&mut self, c: &Commit) -> Result<(Vec<Pending>, Vec<String>), LakeError> {
        let (mut publish, mut delete) = (Vec::new(), Vec::new());
        let Some(w) = c.clock else {
            return Ok((publish, delete));
        };
        let mut done: Vec<(String, i64)> = Vec::new();
        for (name, keys) in &c.uncompacted {
            let Some(d) = self.dataset(name).cloned() else {
                continue;
            };
            for &key in keys {
                if d.partitioning.closes_at(key).is_none_or(|e| e > w) {
                    continue;
                }
                done.push((name.clone(), key));
                let dir = format!("{name}/{}", d.partitioning.dir(key));
                let store = self.lake.store.clone();
                // The table's files, not the store's: a file compacted away earlier can
                // still be in the store (the vacuum grace period).
                let files = self
                    .rt()
                    .block_on(self.tables.files(&*store, name, &dir))
                    .map_err(|e| store_err(&dir, e))?;
                // Small files, merged in groups that stay within the target size.
                let mut small: Vec<(String, u64)> = files
                    .into_iter()
                    .filter(|(_, size)| *size < self.target_bytes / 2)
                    .collect();
                small.sort();
                let mut groups: Vec<Vec<String>> = Vec::new();
                let mut size = u64::MAX;
                for (path, bytes) in small {
                    if size.saturating_add(bytes) > self.target_bytes {
                        groups.push(Vec::new());
                        size = 0;
                    }
                    size += bytes;
                    groups.last_mut().expect("pushed").push(path);
                }
                for (g, group) in groups.into_iter().enumerate().filter(|(_, g)| g.len() > 1) {
                    let staged = format!("{STAGING}/{dir}/compacted-{:06}-{g}.parquet", c.seq);
                    let rows = merge_files(&self.uploader, &group, staged.clone())
                        .map_err(|e| store_err(&dir, e))?;
                    self.uploader.finish()?;
                    failpoint("compact");
                    tracing::debug!(partition = %dir, files = group.len(), rows, "compacted");
                    publish.push(Pending {
                        to: staged
                            .strip_prefix(STAGING)
                            .expect("staged")
                            .trim_start_matches('/')
                            .to_string(),
                        from: staged,
                        dataset: name.clone(),
                        rows: 0, // counted when the small files were published
                    });
                    delete.extend(group);
                }
            }
        }
        if let Some(prev) = self.previous.as_mut() {
            for (name, key) in done {
                if let Some(keys) = prev.uncompacted.get_mut(&name) {
                    keys.remove(&key);
                }
            }
            prev.uncompacted.retain(|_, k| !k.is_empty());
        }
        Ok((publish, delete))
    }
}

#[cfg(test)]
#[path = "commit_tests.rs"]
mod tests;
