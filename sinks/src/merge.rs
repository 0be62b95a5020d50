//! Merging Parquet files of one schema into one file, without decoding what need not be.
//!
//! A source row group of [`RAW_ROWS`] rows or more is copied into the merged file as it is
//! encoded (its column chunks spliced byte for byte, their offsets rewritten), so merging
//! the large chunks of a busy partition costs a copy, not a decode and an encode. Smaller
//! row groups (the chunks of a quiet partition, the small files compaction gathers) are
//! decoded and encoded again into row groups of up to [`MAX_ROW_GROUP`] rows, so that a
//! merged file never consists of many tiny row groups. Rows keep their order: sources in
//! the order given, row groups in file order.
//!
//! Both ways stream: a copied row group is fetched one column chunk at a time, a decoded
//! one (small) whole, and the result is uploaded as it is written, so memory stays at a
//! column chunk or a small row group plus the parts in flight, however large the files.

use crate::lake::{StreamingFile, Uploader};
use crate::ranged::RangedFile;
use crate::writer::{io_error, props, ParquetResult, BATCH_ROWS};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ParquetRecordBatchReaderBuilder};
use parquet::arrow::arrow_writer::{compute_leaves, ArrowRowGroupWriterFactory};
use parquet::arrow::ArrowWriter;
use parquet::column::writer::ColumnCloseResult;
use parquet::file::metadata::RowGroupMetaData;
use parquet::file::reader::{ChunkReader, Length};
use parquet::file::writer::SerializedFileWriter;

/// Source row groups with at least this many rows are copied without decoding.
pub(crate) const RAW_ROWS: i64 = 32 * 1024;

/// Rows per row group the writers aim at (and the merge encodes small row groups into).
pub(crate) const MAX_ROW_GROUP: usize = 128 * 1024;

/// A byte range of a source file (a column chunk, or a whole row group to decode),
/// addressed by file offsets.
struct SourceBytes {
    bytes: Bytes,
    /// The file offset of `bytes[0]`.
    start: u64,
}

impl Length for SourceBytes {
    fn len(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }
}

impl ChunkReader for SourceBytes {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> ParquetResult<Self::T> {
        let length = self.len().saturating_sub(start) as usize;
        Ok(bytes::Buf::reader(self.get_bytes(start, length)?))
    }

    fn get_bytes(&self, start: u64, length: usize) -> ParquetResult<Bytes> {
        let from = start
            .checked_sub(self.start)
            .map(|s| s as usize)
            .filter(|&s| s + length <= self.bytes.len())
            .ok_or_else(|| {
                io_error(format!(
                    "bytes {start}..+{length} are outside the fetched row group"
                ))
            })?;
        Ok(self.bytes.slice(from..from + length))
    }
}

/// The byte range of a row group's column chunks in its file.
fn row_group_range(rg: &RowGroupMetaData) -> std::ops::Range<u64> {
    let ranges = rg.columns().iter().map(|col| {
        let (start, len) = col.byte_range();
        (start, start + len)
    });
    let start = ranges.clone().map(|r| r.0).min().unwrap_or(0);
    let end = ranges.map(|r| r.1).max().unwrap_or(0);
    start..end
}

/// The merged file being written.
struct Merged {
    file: SerializedFileWriter<StreamingFile>,
    factory: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    row_groups: usize,
    /// Decoded rows of small source row groups, waiting to fill a row group.
    buffered: Vec<RecordBatch>,
    buffered_rows: usize,
}

impl Merged {
    fn new(uploader: &Uploader, dest: String, schema: SchemaRef) -> ParquetResult<Merged> {
        let dictionary: Vec<&str> = schema
            .fields()
            .iter()
            .filter(|f| f.data_type() == &DataType::Utf8)
            .map(|f| f.name().as_str())
            .collect();
        let file = StreamingFile::new(uploader.clone(), dest);
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props(&dictionary)))?;
        let (file, factory) = writer.into_serialized_writer()?;
        Ok(Merged {
            file,
            factory,
            schema,
            row_groups: 0,
            buffered: Vec::new(),
            buffered_rows: 0,
        })
    }

    /// Whether row groups of a file with `meta` can be spliced into this one: the same
    /// Parquet columns.
    fn can_copy(&self, meta: &ArrowReaderMetadata) -> bool {
        let ours = self.file.schema_descr();
        let theirs = meta.metadata().file_metadata().schema_descr();
        ours.num_columns() == theirs.num_columns()
            && (0..ours.num_columns()).all(|i| ours.column(i) == theirs.column(i))
    }

    /// Splices row group `rg` of a source, fetching one column chunk at a time (so that a
    /// merge holds a column chunk of its source, not a whole row group).
    fn copy(
        &mut self,
        rg: &RowGroupMetaData,
        mut fetch: impl FnMut(std::ops::Range<u64>) -> ParquetResult<SourceBytes>,
    ) -> ParquetResult {
        self.flush()?;
        let mut writer = self.file.next_row_group()?;
        for col in rg.columns() {
            let (start, len) = col.byte_range();
            let chunk = fetch(start..start + len)?;
            writer.append_column(
                &chunk,
                ColumnCloseResult {
                    bytes_written: col.compressed_size() as u64,
                    rows_written: rg.num_rows() as u64,
                    metadata: col.clone(),
                    bloom_filter: None,
                    column_index: None,
                    offset_index: None,
                },
            )?;
        }
        writer.close()?;
        self.row_groups += 1;
        Ok(())
    }

    /// Decodes row group `index` of the source into the buffer.
    fn decode(
        &mut self,
        chunk: SourceBytes,
        meta: &ArrowReaderMetadata,
        index: usize,
    ) -> ParquetResult {
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(chunk, meta.clone())
            .with_row_groups(vec![index])
            .with_batch_size(BATCH_ROWS)
            .build()?;
        for batch in reader {
            let mut batch = batch?;
            while batch.num_rows() > 0 {
                let take = (MAX_ROW_GROUP - self.buffered_rows).min(batch.num_rows());
                self.buffered.push(batch.slice(0, take));
                self.buffered_rows += take;
                batch = batch.slice(take, batch.num_rows() - take);
                if self.buffered_rows == MAX_ROW_GROUP {
                    self.flush()?;
                }
            }
        }
        Ok(())
    }

    /// Encodes the buffered rows as one row group.
    fn flush(&mut self) -> ParquetResult {
        if self.buffered.is_empty() {
            return Ok(());
        }
        let mut columns = self.factory.create_column_writers(self.row_groups)?;
        for batch in self.buffered.drain(..) {
            let mut next = columns.iter_mut();
            for (field, array) in self.schema.fields().iter().zip(batch.columns()) {
                for leaf in compute_leaves(field, array)? {
                    next.next()
                        .ok_or_else(|| io_error("more leaves than columns"))?
                        .write(&leaf)?;
                }
            }
        }
        self.buffered_rows = 0;
        let mut writer = self.file.next_row_group()?;
        for column in columns {
            column.close()?.append_to_row_group(&mut writer)?;
        }
        writer.close()?;
        self.row_groups += 1;
        Ok(())
    }
}

/// Merges staged or published Parquet files with the same schema into a new file at
/// `dest` (see the module docs). Returns the rows written. The caller waits for the
/// upload with [`Uploader::finish`].
pub fn merge_files(uploader: &Uploader, sources: &[String], dest: String) -> ParquetResult<u64> {
    let store = uploader.lake().store.clone();
    let runtime = uploader.runtime();
    let mut merged: Option<Merged> = None;
    let mut rows = 0u64;
    for src in sources {
        let path = object_store::path::Path::from(src.as_str());
        let meta = runtime.block_on(async {
            let mut file = RangedFile::open(store.clone(), path.clone()).await?;
            ArrowReaderMetadata::load_async(&mut file, Default::default()).await
        })?;
        let out = match &mut merged {
            Some(out) => out,
            None => merged.insert(Merged::new(uploader, dest.clone(), meta.schema().clone())?),
        };
        let copy = out.can_copy(&meta);
        let fetch = |range: std::ops::Range<u64>| {
            let start = range.start;
            let bytes = runtime
                .block_on(store.get_range(&path, range))
                .map_err(io_error)?;
            Ok(SourceBytes { bytes, start })
        };
        for (index, rg) in meta.metadata().row_groups().iter().enumerate() {
            rows += rg.num_rows() as u64;
            if copy && rg.num_rows() >= RAW_ROWS {
                out.copy(rg, fetch)?;
            } else {
                out.decode(fetch(row_group_range(rg))?, &meta, index)?;
            }
        }
    }
    if let Some(mut out) = merged {
        out.flush()?;
        out.file.into_inner()?.finish();
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lake::test_uploader;
    use arrow::array::{Array, Int64Array, StringArray, TimestampMillisecondArray};
    use arrow::datatypes::{Field, Schema, TimeUnit};
    use std::sync::Arc;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("x", DataType::Int64, false),
            Field::new("name", DataType::Utf8, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
        ]))
    }

    fn batch(range: std::ops::Range<i64>) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from_iter_values(range.clone())),
                Arc::new(StringArray::from_iter_values(
                    range.clone().map(|x| format!("v{}", x % 7)),
                )),
                Arc::new(
                    TimestampMillisecondArray::from_iter_values(range.map(|x| x * 1000))
                        .with_timezone("UTC"),
                ),
            ],
        )
        .unwrap()
    }

    /// The rows of each row group of the file `builder` reads.
    fn row_group_sizes(builder: &ParquetRecordBatchReaderBuilder<std::fs::File>) -> Vec<i64> {
        let groups = builder.metadata().row_groups();
        groups.iter().map(|rg| rg.num_rows()).collect()
    }

    /// Writes a source whose row groups have the given sizes, numbered on from `start`.
    fn source(dir: &std::path::Path, name: &str, start: i64, groups: &[i64]) -> String {
        let file = std::fs::File::create(dir.join(name)).unwrap();
        let mut w = ArrowWriter::try_new(file, schema(), Some(props(&["name"]))).unwrap();
        let mut at = start;
        for &n in groups {
            w.write(&batch(at..at + n)).unwrap();
            w.flush().unwrap(); // one row group per entry
            at += n;
        }
        assert_eq!(w.close().unwrap().num_row_groups(), groups.len());
        name.to_string()
    }

    #[test]
    fn large_row_groups_are_copied_small_ones_coalesced_and_every_row_kept_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (uploader, _, _rt) = test_uploader(dir.path());
        let big = RAW_ROWS;
        // Small, small, big, small | big | small, small.
        let a = source(dir.path(), "a.parquet", 0, &[1000, 2000, big, 500]);
        let b = source(dir.path(), "b.parquet", 3500 + big, &[big + 1]);
        let c = source(dir.path(), "c.parquet", 3501 + 2 * big, &[700, 800]);
        let total = 5000 + 2 * big + 1;
        let rows = merge_files(&uploader, &[a, b, c], "merged.parquet".into()).unwrap();
        uploader.finish().unwrap();
        assert_eq!(rows, total as u64);

        let file = std::fs::File::open(dir.path().join("merged.parquet")).unwrap();
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).expect("a valid Parquet file");
        assert_eq!(builder.schema(), &schema(), "the Arrow schema survives");
        let sizes = row_group_sizes(&builder);
        // The small row groups before a large one are encoded into one, the large ones
        // are copied as they are, and the small ones at the end become one.
        assert_eq!(sizes, vec![3000, big, 500, big + 1, 1500]);
        // A copied chunk keeps its statistics, at its new place.
        let copied = &builder.metadata().row_groups()[1];
        let stats = copied.column(0).statistics().expect("statistics");
        assert_eq!(stats.min_bytes_opt(), Some(&3000i64.to_le_bytes()[..]));
        let mut got = Vec::new();
        for batch in builder.build().unwrap() {
            let batch = batch.unwrap();
            let x = batch
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap();
            let name = batch
                .column(1)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap();
            let ts = batch
                .column(2)
                .as_any()
                .downcast_ref::<TimestampMillisecondArray>()
                .unwrap();
            for i in 0..batch.num_rows() {
                assert_eq!(name.value(i), format!("v{}", x.value(i) % 7));
                assert_eq!(ts.value(i), x.value(i) * 1000);
            }
            got.extend(x.values().iter().copied());
        }
        assert_eq!(got, (0..total).collect::<Vec<i64>>());
    }

    #[test]
    fn many_small_row_groups_become_row_groups_of_the_target_size() {
        let dir = tempfile::tempdir().unwrap();
        let (uploader, _, _rt) = test_uploader(dir.path());
        let groups = vec![10_000i64; 30];
        let a = source(dir.path(), "a.parquet", 0, &groups);
        let rows = merge_files(&uploader, &[a], "merged.parquet".into()).unwrap();
        uploader.finish().unwrap();
        assert_eq!(rows, 300_000);
        let file = std::fs::File::open(dir.path().join("merged.parquet")).unwrap();
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        let sizes = row_group_sizes(&builder);
        let full = MAX_ROW_GROUP as i64;
        assert_eq!(sizes, vec![full, full, 300_000 - 2 * full]);
    }
}
