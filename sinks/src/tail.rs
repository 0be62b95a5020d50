//! A partition's file in progress, its [`Tail`]: the worker hands its rows over a batch at
//! a time and the file over when it closes; the encoding (rows into Arrow, into Parquet
//! pages, the last row group and footer) and the upload run beside the worker, on its
//! encoder thread ([`Uploader::beside`]), in the order they were handed over. The worker
//! only moves rows; the size it sees is an estimate from what was encoded so far.
use crate::lake::{StreamingFile, Uploader};
use crate::schema::LakeRecord;
use crate::writer::{props, ParquetResult, Staged};
use parquet::arrow::ArrowWriter;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

/// What the encoder thread did so far with one file.
#[derive(Default)]
struct Encoded {
    /// The writer, once the first rows were encoded; taken by the close.
    writer: Mutex<Option<ArrowWriter<StreamingFile>>>,
    /// Rows encoded.
    rows: AtomicU64,
    /// Bytes encoded (written and buffered in the row group in progress).
    bytes: AtomicU64,
    /// Whether encoding failed (the failure is the uploader's; the file is not committed).
    failed: AtomicBool,
}

/// A partition's next file, being written beside the worker.
pub(crate) struct Tail {
    path: String,
    /// Rows handed over.
    rows: u64,
    encoded: Arc<Encoded>,
}

impl Tail {
    /// A file that will be staged at `path`.
    pub(crate) fn new(path: String) -> Self {
        Tail {
            path,
            rows: 0,
            encoded: Arc::default(),
        }
    }

    /// Hands `rows` over to be encoded into the file.
    pub(crate) fn write<R: LakeRecord>(&mut self, rows: Vec<R>, uploader: &Uploader) {
        if rows.is_empty() {
            return;
        }
        self.rows += rows.len() as u64;
        let (encoded, path, up) = (self.encoded.clone(), self.path.clone(), uploader.clone());
        uploader.beside(move || {
            let mut slot = encoded
                .writer
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if encoded.failed.load(Relaxed) {
                return;
            }
            let result = (|| -> ParquetResult {
                if slot.is_none() {
                    let file = StreamingFile::new(up.clone(), path.clone());
                    *slot = Some(ArrowWriter::try_new(
                        file,
                        R::schema(),
                        Some(props(R::DICTIONARY)),
                    )?);
                }
                let writer = slot.as_mut().expect("opened");
                writer.write(&R::to_batch(&rows)?)?;
                let size = writer.in_progress_size() + writer.bytes_written();
                encoded.bytes.store(size as u64, Relaxed);
                encoded.rows.fetch_add(rows.len() as u64, Relaxed);
                Ok(())
            })();
            if let Err(e) = result {
                encoded.failed.store(true, Relaxed);
                *slot = None;
                up.fail(format!("{path}: {e}"));
            }
        });
    }

    /// The file's size, estimated: what is encoded so far, and as much per row for the
    /// rows still queued (or `R::APPROX_BYTES` a row before the first are encoded).
    pub(crate) fn size<R: LakeRecord>(&self) -> u64 {
        let (rows, bytes) = (
            self.encoded.rows.load(Relaxed),
            self.encoded.bytes.load(Relaxed),
        );
        match rows {
            0 => self.rows * R::APPROX_BYTES as u64,
            n => bytes + bytes.div_ceil(n) * self.rows.saturating_sub(n),
        }
    }

    /// Hands the file over to be closed (its last row group and footer, then its upload:
    /// [`Uploader::close_beside`]) and answers it as a staged file, its size estimated.
    pub(crate) fn close<R: LakeRecord>(self, uploader: &Uploader) -> Staged {
        let staged = Staged {
            path: self.path.clone(),
            rows: self.rows,
            bytes: self.size::<R>(),
        };
        let (encoded, path) = (self.encoded, self.path);
        uploader.close_beside(move || {
            let taken = encoded
                .writer
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            let Some(mut writer) = taken.filter(|_| !encoded.failed.load(Relaxed)) else {
                return Err(format!("{path}: not written (its encoding failed)"));
            };
            writer.inner_mut().closing();
            writer.into_inner().map_err(|e| format!("{path}: {e}"))
        });
        staged
    }
}
