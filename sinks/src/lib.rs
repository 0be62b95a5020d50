//! The lake: Hive-partitioned Parquet datasets on an object store.
//!
//! - [`commit`]: the exactly-once checkpoint log, recovery, compaction and retention.
//! - [`ddl`]: DuckDB views and Athena tables over a job's lake.
//! - [`schema`]: Arrow schemas of `raw`, the window tiers and `dead_letter`.
//! - [`lake`]: opening the object store and committing files to it.
//! - [`read`]: a vehicle's rows back from a dataset (the API's history).
//! - [`writer`]: per-partition Parquet writers and the timely sink operator.
#![deny(missing_docs)]

pub mod commit;
pub mod ddl;
pub mod lake;
pub mod read;
pub mod schema;
mod staging;
pub mod writer;
