//! The lake: Hive-partitioned Parquet datasets on an object store.
//!
//! - [`catalogue`]: the datasets of a job's lake, declared once.
//! - [`commit`]: the exactly-once checkpoint log, recovery, compaction and retention.
//! - [`ddl`]: DuckDB views and Athena tables over a job's lake.
//! - [`delta`]: the datasets as Delta Lake tables (the table committer of the lake).
//! - [`schema`]: Arrow schemas of `raw`, the window tiers and `dead_letter`.
//! - [`lake`]: opening the object store and committing files to it.
//! - [`read`]: a vehicle's rows back from a dataset (the API's history).
//! - [`sink`]: the timely sink operator, cut at checkpoint boundaries.
//! - [`table`]: how a commit's files become part of the datasets (Hive directories).
//! - [`writer`]: per-partition Parquet writers; merging their files copies large row groups
//!   as they are encoded.
#![deny(missing_docs)]

mod beside;
pub mod catalogue;
pub mod commit;
pub mod ddl;
pub mod delta;
pub mod lake;
mod merge;
mod ranged;
pub mod read;
pub mod schema;
pub mod sink;
mod staging;
pub mod table;
mod tail;
pub mod writer;
