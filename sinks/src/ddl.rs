//! `fleetflow ddl`: statements that expose a job's lake to DuckDB (views) or to Athena
//! (Glue `CREATE EXTERNAL TABLE` with partition projection, so no `MSCK REPAIR` is needed).
//!
//! The columns come from the same Arrow schemas the writers use, so the statements follow
//! the lake as it changes.

use crate::catalogue::{Dataset, Partitioning};
use arrow::datatypes::DataType;

/// Which engine the statements are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// Glue/Athena external tables.
    Athena,
    /// DuckDB views over `read_parquet`.
    DuckDb,
}

fn hive_type(t: &DataType) -> &'static str {
    match t {
        DataType::Float64 => "double",
        DataType::Float32 => "float",
        DataType::Int64 | DataType::UInt64 => "bigint",
        DataType::Int32 | DataType::UInt32 => "int",
        DataType::Boolean => "boolean",
        DataType::Timestamp(_, _) => "timestamp",
        _ => "string",
    }
}

/// Athena table name: `{job}_{dataset}`, lower case, tiers such as `1m` as `tier_1m`.
pub fn athena_table(job: &str, dataset: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect()
    };
    let d = if dataset.starts_with(|c: char| c.is_ascii_digit()) {
        format!("tier_{dataset}")
    } else {
        dataset.to_owned()
    };
    format!("{}_{}", clean(job), clean(&d))
}

fn projection(p: Partitioning) -> (&'static str, String, &'static str) {
    let date = "  'projection.date.type' = 'date',\n  'projection.date.format' = 'yyyy-MM-dd',\n  'projection.date.range' = '2000-01-01,NOW',\n  'projection.date.interval' = '1',\n  'projection.date.interval.unit' = 'DAYS',\n";
    match p {
        Partitioning::Hour => (
            "`date` string, `hour` string",
            format!("{date}  'projection.hour.type' = 'integer',\n  'projection.hour.range' = '0,23',\n  'projection.hour.digits' = '2',\n"),
            "date=${date}/hour=${hour}",
        ),
        Partitioning::Day => ("`date` string", date.to_owned(), "date=${date}"),
        Partitioning::Month => (
            "`month` string",
            "  'projection.month.type' = 'date',\n  'projection.month.format' = 'yyyy-MM',\n  'projection.month.range' = '2000-01,NOW',\n  'projection.month.interval' = '1',\n  'projection.month.interval.unit' = 'MONTHS',\n".to_owned(),
            "month=${month}",
        ),
    }
}

/// One statement for dataset `d` of job `job`'s lake at `location` (a local directory or
/// an `s3://bucket/prefix` URL, without a trailing slash).
pub fn statement(dialect: Dialect, job: &str, location: &str, d: &Dataset) -> String {
    match dialect {
        Dialect::DuckDb => format!(
            "CREATE OR REPLACE VIEW \"{name}\" AS SELECT * FROM read_parquet('{location}/{name}/**/*.parquet', hive_partitioning = true);\n",
            name = d.name
        ),
        Dialect::Athena => {
            let cols: Vec<String> = d
                .schema
                .fields()
                .iter()
                .map(|f| format!("  `{}` {}", f.name(), hive_type(f.data_type())))
                .collect();
            let (parts, props, template) = projection(d.partitioning);
            format!(
                "CREATE EXTERNAL TABLE IF NOT EXISTS `{table}` (\n{cols}\n)\nPARTITIONED BY ({parts})\nSTORED AS PARQUET\nLOCATION '{location}/{name}/'\nTBLPROPERTIES (\n  'projection.enabled' = 'true',\n{props}  'storage.location.template' = '{location}/{name}/{template}'\n);\n",
                table = athena_table(job, &d.name),
                cols = cols.join(",\n"),
                name = d.name,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::Catalogue;
    use fleetflow_types::config::WindowTier;

    #[test]
    fn athena_tables_project_their_partitions() {
        let tiers = [
            WindowTier {
                name: "1m".into(),
                size_ms: 60_000,
            },
            WindowTier {
                name: "1d".into(),
                size_ms: 86_400_000,
            },
        ];
        let ds: Vec<Dataset> = Catalogue::new(true, &tiers).iter().cloned().collect();
        assert_eq!(
            ds.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
            ["raw", "1m", "1d", "geofence_events", "dead_letter"]
        );
        let sql: String = ds
            .iter()
            .map(|d| statement(Dialect::Athena, "berlin-fleet", "s3://lake/berlin", d))
            .collect();
        assert_eq!(sql.matches("CREATE EXTERNAL TABLE").count(), 5);
        assert!(sql.contains("`berlin_fleet_tier_1m`"));
        assert!(sql.contains("PARTITIONED BY (`date` string, `hour` string)"));
        assert!(sql.contains(
            "'storage.location.template' = 's3://lake/berlin/1m/date=${date}/hour=${hour}'"
        ));
        assert!(sql.contains("'storage.location.template' = 's3://lake/berlin/1d/month=${month}'"));
        assert!(sql.contains("`ts` timestamp") && sql.contains("`distance_km` double"));
        assert!(!sql.contains("MSCK"));
    }
}
