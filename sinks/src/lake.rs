//! The lake: an object store (local directory now, S3 with the lake issue) and the
//! uploader that commits finished Parquet files to it.
//!
//! Every file is written with a single `put`: the local store stages it and renames it into
//! place, S3 makes it visible atomically, so a reader never sees a partial file.

use bytes::Bytes;
use fleetflow_types::metrics::Metrics;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// A lake that cannot be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    /// The URL is not one fleetflow can write to.
    #[error("unsupported lake url {0:?}: use file://DIR")]
    Unsupported(String),
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
}

impl Lake {
    /// Opens `file://DIR` (created if missing; relative to the working directory).
    pub fn open(url: &str) -> Result<Lake, LakeError> {
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
            });
        }
        Err(LakeError::Unsupported(url.to_string()))
    }
}

struct Inflight {
    files: usize,
    errors: Vec<String>,
}

/// Commits files to the lake in the background on a tokio runtime, with retries, and
/// applies back-pressure when too many are in flight.
#[derive(Clone)]
pub struct Uploader {
    lake: Lake,
    runtime: tokio::runtime::Handle,
    metrics: Arc<Metrics>,
    state: Arc<(Mutex<Inflight>, Condvar)>,
    max_inflight: usize,
}

impl Uploader {
    /// An uploader to `lake` running on `runtime`.
    pub fn new(lake: Lake, runtime: tokio::runtime::Handle, metrics: Arc<Metrics>) -> Self {
        Uploader {
            lake,
            runtime,
            metrics,
            state: Arc::new((
                Mutex::new(Inflight {
                    files: 0,
                    errors: Vec::new(),
                }),
                Condvar::new(),
            )),
            max_inflight: 16,
        }
    }

    /// Queues `bytes` to be written at `path`; `dataset` and `rows` feed the metrics once
    /// committed. Blocks while too many files are in flight.
    pub fn submit(&self, path: String, bytes: Vec<u8>, dataset: String, rows: u64) {
        {
            let (lock, cv) = &*self.state;
            let mut s = lock.lock().expect("uploader lock");
            while s.files >= self.max_inflight {
                s = cv.wait(s).expect("uploader lock");
            }
            s.files += 1;
        }
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
                metrics.files_written.fetch_add(1, Relaxed);
                metrics.bytes_written.fetch_add(len, Relaxed);
                metrics.add_rows(&dataset, rows);
            }
            let (lock, cv) = &*state;
            let mut s = lock.lock().expect("uploader lock");
            s.files -= 1;
            if let Err(e) = result {
                tracing::error!(error = %e, "lake write failed");
                s.errors.push(e);
            }
            cv.notify_all();
        });
    }

    /// Waits until every queued file is committed; reports failures.
    pub fn finish(&self) -> Result<(), LakeError> {
        let (lock, cv) = &*self.state;
        let mut s = lock.lock().expect("uploader lock");
        while s.files > 0 {
            s = cv.wait(s).expect("uploader lock");
        }
        match s.errors.first() {
            None => Ok(()),
            Some(first) => Err(LakeError::WritesFailed {
                count: s.errors.len(),
                first: first.clone(),
            }),
        }
    }
}
