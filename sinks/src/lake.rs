//! The lake: an object store (a local directory or S3) and the uploader that writes
//! Parquet files to it.
//!
//! A small file is written with a single `put`; a large one streams out as a multipart upload
//! while it is being encoded ([`StreamingFile`]), so memory per open file stays at about one
//! part whatever the file's size. Either way the file becomes visible atomically (the local
//! store stages it and renames it into place, S3 completes the upload), so a reader never
//! sees a partial file.

use crate::beside::Beside;
use bytes::Bytes;
use fleetflow_runtime::metrics::Metrics;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::str::FromStr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// A lake that cannot be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    /// The URL is not one fleetflow can write to.
    #[error("unsupported lake url {0:?}: use file://DIR or s3://BUCKET/PREFIX")]
    Unsupported(String),
    /// A `[lake.s3]` option is unknown.
    #[error("unknown S3 option {0:?} (use e.g. endpoint, region, access_key_id, secret_access_key, allow_http)")]
    S3Option(String),
    /// The lake's checkpoint log cannot be read.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The object.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The store rejected an operation.
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// Local I/O failed (creating the lake directory).
    #[error("{path}: {error}")]
    Io {
        /// The path involved.
        path: String,
        /// The error.
        error: std::io::Error,
    },
    /// Files could not be written after retries.
    #[error("{count} lake writes failed, first: {first}")]
    WritesFailed {
        /// How many.
        count: usize,
        /// The first failure.
        first: String,
    },
}

/// An opened lake.
#[derive(Clone, Debug)]
pub struct Lake {
    /// The store, rooted at the lake's prefix.
    pub store: Arc<dyn ObjectStore>,
    /// The URL it was opened from.
    pub url: String,
    /// For `file://` lakes, the directory.
    pub local_dir: Option<std::path::PathBuf>,
    /// For `s3://` lakes, the bucket (for requests the generic store has no call for, such
    /// as listing unfinished multipart uploads).
    pub s3: Option<S3Bucket>,
}

/// The bucket of an `s3://` lake.
#[derive(Clone, Debug)]
pub struct S3Bucket {
    /// The bucket's store.
    pub store: Arc<AmazonS3>,
    /// The lake's prefix in the bucket.
    pub prefix: Path,
    /// The bucket's URL, path-style (`ENDPOINT/BUCKET`), or the endpoint itself when it
    /// names the bucket (virtual-hosted requests).
    pub url: String,
    /// The region requests are signed for.
    pub region: String,
}

impl Lake {
    /// The size of the parts a large file is uploaded in: [`LOCAL_PART_BYTES`] for a
    /// `file://` lake, [`PART_BYTES`] for an object store.
    pub fn part_bytes(&self) -> usize {
        if self.local_dir.is_some() {
            LOCAL_PART_BYTES
        } else {
            PART_BYTES
        }
    }

    /// Opens `file://DIR` (created if missing; relative to the working directory) or
    /// `s3://BUCKET/PREFIX`, configured by the standard `AWS_*` environment variables
    /// (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_ALLOW_HTTP`, ...) with `options` (the spec's `[lake.s3]`) taking precedence.
    pub fn open(url: &str, options: &BTreeMap<String, String>) -> Result<Lake, LakeError> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(LakeError::Unsupported(url.to_string()));
            }
            let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
            if std::env::var_os("AWS_REGION").is_none()
                && std::env::var_os("AWS_DEFAULT_REGION").is_none()
                && !options.contains_key("region")
            {
                b = b.with_region("us-east-1");
            }
            for (k, v) in options {
                let key = match k.as_str() {
                    "allow_http" => {
                        b = b.with_allow_http(v == "true");
                        continue;
                    }
                    k => AmazonS3ConfigKey::from_str(k)
                        .map_err(|_| LakeError::S3Option(k.to_string()))?,
                };
                b = b.with_config(key, v);
            }
            let config = |k| b.get_config_value(&k);
            let region = config(AmazonS3ConfigKey::Region).unwrap_or_else(|| "us-east-1".into());
            let virtual_hosted =
                config(AmazonS3ConfigKey::VirtualHostedStyleRequest).is_some_and(|v| v == "true");
            let bucket_url = match config(AmazonS3ConfigKey::Endpoint) {
                Some(e) if virtual_hosted => e.trim_end_matches('/').to_string(),
                Some(e) => format!("{}/{bucket}", e.trim_end_matches('/')),
                None => format!("https://s3.{region}.amazonaws.com/{bucket}"),
            };
            let s3 = Arc::new(b.build()?);
            let prefix = Path::from(prefix.trim_matches('/'));
            let store: Arc<dyn ObjectStore> =
                Arc::new(PrefixStore::new(s3.clone(), prefix.clone()));
            return Ok(Lake {
                store,
                url: url.to_string(),
                local_dir: None,
                s3: Some(S3Bucket {
                    store: s3,
                    prefix,
                    url: bucket_url,
                    region,
                }),
            });
        }
        if let Some(dir) = url.strip_prefix("file://") {
            let dir = std::path::PathBuf::from(if dir.is_empty() { "." } else { dir });
            std::fs::create_dir_all(&dir).map_err(|error| LakeError::Io {
                path: dir.display().to_string(),
                error,
            })?;
            let abs = dir.canonicalize().map_err(|error| LakeError::Io {
                path: dir.display().to_string(),
                error,
            })?;
            let store = LocalFileSystem::new_with_prefix(&abs)?;
            return Ok(Lake {
                store: Arc::new(store),
                url: url.to_string(),
                local_dir: Some(abs),
                s3: None,
            });
        }
        Err(LakeError::Unsupported(url.to_string()))
    }
}

struct Inflight {
    /// The sequence numbers of the files in flight.
    files: std::collections::BTreeSet<u64>,
    /// The sequence number of the next file submitted.
    next: u64,
    errors: Vec<String>,
}

/// The files an [`Uploader`] had been given at some moment (see [`Uploader::mark`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct UploadMark(u64);

/// Commits files to the lake in the background on a tokio runtime, with retries, and
/// applies back-pressure when too many are in flight.
#[derive(Clone)]
pub struct Uploader {
    lake: Lake,
    runtime: tokio::runtime::Handle,
    metrics: Arc<Metrics>,
    state: Arc<(Mutex<Inflight>, Condvar)>,
    max_inflight: usize,
    /// The worker's encoder thread (see [`Uploader::beside`]).
    beside: Beside,
}

impl Uploader {
    /// An uploader to the same lake with its own count of files in flight, so that
    /// [`Uploader::finish`] waits for this one's files only (one per worker).
    pub fn fork(&self) -> Uploader {
        Uploader::new(
            self.lake.clone(),
            self.runtime.clone(),
            self.metrics.clone(),
        )
    }

    /// The lake.
    pub fn lake(&self) -> &Lake {
        &self.lake
    }

    /// The I/O runtime.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// An uploader to `lake` running on `runtime`.
    pub fn new(lake: Lake, runtime: tokio::runtime::Handle, metrics: Arc<Metrics>) -> Self {
        Uploader {
            lake,
            runtime,
            metrics,
            state: Arc::new((
                Mutex::new(Inflight {
                    files: Default::default(),
                    next: 0,
                    errors: Vec::new(),
                }),
                Condvar::new(),
            )),
            max_inflight: 16,
            beside: Beside::start(),
        }
    }

    /// Writes `bytes` at `path` in the background, as file `seq` ([`Uploader::reserve`]).
    fn submit(&self, seq: u64, path: String, bytes: Vec<u8>) {
        let store = self.lake.store.clone();
        let metrics = self.metrics.clone();
        let state = self.state.clone();
        let payload = PutPayload::from(Bytes::from(bytes));
        self.runtime.spawn(async move {
            let len = payload.content_length() as u64;
            let location = Path::from(path.as_str());
            let mut attempt = 0;
            let result = loop {
                match store.put(&location, payload.clone()).await {
                    Ok(_) => break Ok(()),
                    Err(e) if attempt < 5 => {
                        attempt += 1;
                        metrics.write_retries.fetch_add(1, Relaxed);
                        tracing::warn!(%path, attempt, error = %e, "lake write failed; retrying");
                        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                    }
                    Err(e) => break Err(format!("{path}: {e}")),
                }
            };
            if result.is_ok() {
                metrics.bytes_written.fetch_add(len, Relaxed);
            }
            Self::release(&state, seq, result);
        });
    }

    /// Completes a multipart upload in the background: its last part, then the upload
    /// (aborted if a part failed).
    fn submit_multipart(&self, seq: u64, path: String, upload: WriteMultipart, bytes: u64) {
        let metrics = self.metrics.clone();
        let state = self.state.clone();
        self.runtime.spawn(async move {
            let result = upload
                .finish()
                .await
                .map(|_| ())
                .map_err(|e| format!("{path}: {e}"));
            if result.is_ok() {
                metrics.bytes_written.fetch_add(bytes, Relaxed);
            }
            Self::release(&state, seq, result);
        });
    }

    /// Runs `job` (encoding rows into one of the worker's files) on this uploader's encoder
    /// thread, behind every job handed over before it; waits while its queue is full. A
    /// failing job records its failure with [`Uploader::fail`].
    pub(crate) fn beside(&self, job: impl FnOnce() + Send + 'static) {
        self.beside.run(job);
    }

    /// Runs `close` (the rest of a file's encoding, returning the file) on the encoder
    /// thread, then commits the file. The file is in flight from this call on: a mark taken
    /// after it waits for the file, and [`Uploader::finish`] does too.
    pub(crate) fn close_beside<F>(&self, close: F)
    where
        F: FnOnce() -> Result<StreamingFile, String> + Send + 'static,
    {
        let seq = self.reserve();
        let state = self.state.clone();
        self.beside
            .run(move || match catch_unwind(AssertUnwindSafe(close)) {
                Ok(Ok(file)) => file.commit(seq),
                Ok(Err(e)) => Self::release(&state, seq, Err(e)),
                Err(_) => Self::release(&state, seq, Err("closing a file panicked".into())),
            });
    }

    /// Records a failure that happened before a file reached the store (e.g. encoding);
    /// [`Uploader::finish`] reports it.
    pub fn fail(&self, error: String) {
        tracing::error!(%error, "lake write failed");
        self.state
            .0
            .lock()
            .expect("uploader lock")
            .errors
            .push(error);
    }

    /// Waits for room and numbers the next file.
    fn reserve(&self) -> u64 {
        let (lock, cv) = &*self.state;
        let mut s = lock.lock().expect("uploader lock");
        while s.files.len() >= self.max_inflight {
            s = cv.wait(s).expect("uploader lock");
        }
        let seq = s.next;
        s.next += 1;
        s.files.insert(seq);
        seq
    }

    fn release(state: &(Mutex<Inflight>, Condvar), seq: u64, result: Result<(), String>) {
        let (lock, cv) = state;
        let mut s = lock.lock().expect("uploader lock");
        s.files.remove(&seq);
        if let Err(e) = result {
            tracing::error!(error = %e, "lake write failed");
            s.errors.push(e);
        }
        cv.notify_all();
    }

    /// Waits until every queued file is committed; reports failures.
    pub fn finish(&self) -> Result<(), LakeError> {
        self.wait_for(self.mark())
    }

    /// A mark of the files submitted so far, for [`Uploader::done`] and
    /// [`Uploader::wait_for`].
    pub fn mark(&self) -> UploadMark {
        UploadMark(self.state.0.lock().expect("uploader lock").next)
    }

    /// Whether every file submitted before `mark` is committed, without waiting; reports
    /// failures.
    pub fn done(&self, mark: UploadMark) -> Result<bool, LakeError> {
        let s = self.state.0.lock().expect("uploader lock");
        Self::failures(&s)?;
        Ok(s.files.first().is_none_or(|first| *first >= mark.0))
    }

    /// Waits until every file submitted before `mark` is committed; reports failures.
    pub fn wait_for(&self, mark: UploadMark) -> Result<(), LakeError> {
        let (lock, cv) = &*self.state;
        let mut s = lock.lock().expect("uploader lock");
        while s.files.first().is_some_and(|first| *first < mark.0) {
            s = cv.wait(s).expect("uploader lock");
        }
        Self::failures(&s)
    }

    fn failures(s: &Inflight) -> Result<(), LakeError> {
        match s.errors.first() {
            None => Ok(()),
            Some(first) => Err(LakeError::WritesFailed {
                count: s.errors.len(),
                first: first.clone(),
            }),
        }
    }
}

/// Bytes shipped per multipart part to an object store (S3 needs at least 5 MiB for all
/// but the last).
pub const PART_BYTES: usize = 6 * 1024 * 1024;

/// Bytes per part written to a local lake, which takes parts of any size: a file being
/// encoded holds a part and the parts in flight in memory, so small parts keep a worker's
/// open files at a few MiB instead of about 18 MiB each.
pub const LOCAL_PART_BYTES: usize = 1024 * 1024;

/// Parts of one file in flight at most, before writing waits.
const PARTS_IN_FLIGHT: usize = 2;

/// A file being encoded: a `Write` sink that keeps a small file in memory (one `put` when
/// it is committed) and streams a large one as a multipart upload (`object_store`'s
/// [`WriteMultipart`]: a part in memory, at most `PARTS_IN_FLIGHT` uploading, except
/// while it is being closed: see [`StreamingFile::closing`]). [`StreamingFile::finish`]
/// commits it.
pub struct StreamingFile {
    uploader: Uploader,
    path: String,
    buf: Vec<u8>,
    /// [`Lake::part_bytes`] of its lake.
    part: usize,
    written: u64,
    upload: Option<WriteMultipart>,
    closing: bool,
}

impl StreamingFile {
    /// A file that will be committed at `path` (relative to the lake root).
    pub fn new(uploader: Uploader, path: String) -> Self {
        let part = uploader.lake.part_bytes();
        StreamingFile {
            uploader,
            path,
            buf: Vec::new(),
            part,
            written: 0,
            upload: None,
            closing: false,
        }
    }

    /// The file is being closed: its last writes (the encoder's last row group and footer)
    /// no longer wait for parts in flight. A lake sink closes its files at a checkpoint,
    /// one at a time per worker, where waiting for the store held up the next close and
    /// so the checkpoint; the cost is at most one row group more in memory, for as long as
    /// its upload takes.
    pub fn closing(&mut self) {
        self.closing = true;
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.written
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Commits the file: one `put` when it stayed small, else the last part and the
    /// completion of the multipart upload.
    /// Blocks while too many files are in flight.
    pub fn finish(self) {
        let seq = self.uploader.reserve();
        self.commit(seq);
    }

    /// [`StreamingFile::finish`] of a file numbered `seq` in its uploader already.
    fn commit(self, seq: u64) {
        match self.upload {
            None => self.uploader.submit(seq, self.path, self.buf),
            Some(upload) => self
                .uploader
                .submit_multipart(seq, self.path, upload, self.written),
        }
    }
}

impl std::io::Write for StreamingFile {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.written += data.len() as u64;
        let handle = self.uploader.runtime.clone();
        let mut rest = data;
        if self.upload.is_none() {
            // Held in memory up to one part (grown to the part size and no further:
            // doubling would overshoot it).
            let (now, later) = rest.split_at(rest.len().min(self.part - self.buf.len()));
            if self.buf.capacity() - self.buf.len() < now.len() {
                let want = (self.buf.capacity() * 2)
                    .min(self.part)
                    .max(self.buf.len() + now.len());
                self.buf.reserve_exact(want - self.buf.len());
            }
            self.buf.extend_from_slice(now);
            rest = later;
            if self.buf.len() == self.part {
                // Too large for one put: a multipart upload from here on.
                let store = self.uploader.lake.store.clone();
                let location = Path::from(self.path.as_str());
                let started = handle
                    .block_on(async move { store.put_multipart(&location).await })
                    .map_err(std::io::Error::other)?;
                let mut upload = WriteMultipart::new_with_chunk_size(started, self.part);
                let _runtime = handle.enter();
                upload.put(Bytes::from(std::mem::take(&mut self.buf)));
                self.upload = Some(upload);
            }
        }
        if let Some(upload) = self.upload.as_mut() {
            // A part at a time, so that a large write (a merge splices whole column
            // chunks) starts no more uploads than `PARTS_IN_FLIGHT`.
            for piece in rest.chunks(self.part) {
                if !self.closing {
                    handle
                        .block_on(upload.wait_for_capacity(PARTS_IN_FLIGHT))
                        .map_err(std::io::Error::other)?;
                }
                // Parts are uploaded by tasks of the I/O runtime.
                let _runtime = handle.enter();
                upload.write(piece);
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A local lake in `dir` with an uploader on its own runtime, for tests.
#[cfg(test)]
pub(crate) fn test_uploader(
    dir: &std::path::Path,
) -> (Uploader, Arc<Metrics>, tokio::runtime::Runtime) {
    let lake =
        Lake::open(&format!("file://{}", dir.display()), &BTreeMap::new()).expect("local lake");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let metrics = Arc::new(Metrics::new(vec!["raw".into()]));
    (
        Uploader::new(lake, rt.handle().clone(), metrics.clone()),
        metrics,
        rt,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn recorded_failures_fail_finish() {
        let dir = tempfile::tempdir().unwrap();
        let (uploader, _, _rt) = test_uploader(dir.path());
        assert!(uploader.finish().is_ok());
        uploader.fail("worker 0: encoding Parquet: boom".into());
        let e = uploader.finish().unwrap_err().to_string();
        assert!(
            e.contains("1 lake writes failed") && e.contains("boom"),
            "{e}"
        );
    }

    #[test]
    fn large_files_stream_as_multipart_and_appear_only_when_complete() {
        let dir = tempfile::tempdir().unwrap();
        let (uploader, metrics, _rt) = test_uploader(dir.path());
        let mut file = StreamingFile::new(
            uploader.clone(),
            "raw/date=2025-01-06/hour=01/big.parquet".into(),
        );
        let chunk: Vec<u8> = (0..1_000_003u32).map(|i| (i % 251) as u8).collect();
        let mut expected = Vec::new();
        for _ in 0..20 {
            file.write_all(&chunk).unwrap();
            expected.extend_from_slice(&chunk);
        }
        assert!(file.upload.is_some(), "more than one part: multipart");
        assert!(
            file.buf.len() < LOCAL_PART_BYTES,
            "at most one part is held in memory"
        );
        let target = dir.path().join("raw/date=2025-01-06/hour=01/big.parquet");
        assert!(!target.exists(), "not visible before it is complete");
        file.finish();
        uploader.finish().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), expected);
        assert_eq!(metrics.bytes_written.load(Relaxed), expected.len() as u64);
        let names: Vec<_> = std::fs::read_dir(target.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no staging leftovers: {names:?}");
    }

    #[test]
    fn a_closing_file_does_not_wait_for_its_parts_in_flight() {
        use object_store::throttle::{ThrottleConfig, ThrottledStore};
        // Every part takes 2 s to upload.
        let store = ThrottledStore::new(
            object_store::memory::InMemory::new(),
            ThrottleConfig {
                wait_put_per_call: std::time::Duration::from_secs(2),
                ..Default::default()
            },
        );
        let store: Arc<dyn ObjectStore> = Arc::new(store);
        let lake = Lake {
            store: store.clone(),
            url: "memory://".into(),
            local_dir: None,
            s3: None,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let metrics = Arc::new(Metrics::new(vec!["raw".into()]));
        let uploader = Uploader::new(lake, rt.handle().clone(), metrics);
        let part = vec![7u8; PART_BYTES];
        let parts = PARTS_IN_FLIGHT + 2;
        let write = |file: &mut StreamingFile| {
            let t = std::time::Instant::now();
            for _ in 0..parts {
                file.write_all(&part).unwrap();
            }
            t.elapsed()
        };
        let mut streaming = StreamingFile::new(uploader.clone(), "streaming.parquet".into());
        let waited = write(&mut streaming);
        assert!(
            waited >= std::time::Duration::from_millis(1500),
            "while streaming, a write waits for a part in flight: {waited:?}"
        );
        // One write of all those parts at once (a merge splices a whole column chunk)
        // waits as well: it is shipped a part at a time.
        let mut single = StreamingFile::new(uploader.clone(), "single.parquet".into());
        let all = vec![7u8; parts * PART_BYTES];
        let t = std::time::Instant::now();
        single.write_all(&all).unwrap();
        let waited_once = t.elapsed();
        assert!(
            waited_once >= std::time::Duration::from_millis(1500),
            "a large write waits for parts in flight too: {waited_once:?}"
        );
        let mut closing = StreamingFile::new(uploader.clone(), "closing.parquet".into());
        closing.closing();
        let took = write(&mut closing);
        assert!(
            took < std::time::Duration::from_millis(1000),
            "closing, it does not: {took:?}"
        );
        for (file, name) in [
            (streaming, "streaming.parquet"),
            (single, "single.parquet"),
            (closing, "closing.parquet"),
        ] {
            file.finish();
            uploader.finish().unwrap();
            let size = rt.block_on(store.head(&Path::from(name))).unwrap().size;
            assert_eq!(size, (parts * PART_BYTES) as u64, "{name} complete");
        }
    }
}
