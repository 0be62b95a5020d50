//! `fleetflow ddl`: statements that expose a job's lake, a Delta table per dataset, to
//! DuckDB (views over `delta_scan`, the `delta` extension) or to Athena (external tables
//! with `'table_type' = 'DELTA'`: Athena reads the schema, the partitions and the files of
//! the newest snapshot from the table's log, so no columns, projections or `MSCK REPAIR`).

use crate::catalogue::Dataset;

/// Which engine the statements are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// Glue/Athena external Delta tables.
    Athena,
    /// DuckDB views over `delta_scan`.
    DuckDb,
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

/// One statement for dataset `d` of job `job`'s lake at `location` (a local directory or
/// an `s3://bucket/prefix` URL, without a trailing slash).
pub fn statement(dialect: Dialect, job: &str, location: &str, d: &Dataset) -> String {
    match dialect {
        Dialect::DuckDb => format!(
            "CREATE OR REPLACE VIEW \"{name}\" AS SELECT * FROM delta_scan('{location}/{name}');\n",
            name = d.name
        ),
        Dialect::Athena => format!(
            "CREATE EXTERNAL TABLE IF NOT EXISTS `{table}`\nLOCATION '{location}/{name}/'\nTBLPROPERTIES ('table_type' = 'DELTA');\n",
            table = athena_table(job, &d.name),
            name = d.name,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::Catalogue;
    use fleetflow_types::config::WindowTier;

    #[test]
    fn athena_and_duckdb_read_the_tables_through_their_logs() {
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
        assert_eq!(sql.matches("'table_type' = 'DELTA'").count(), 5);
        assert!(sql.contains("`berlin_fleet_tier_1m`\nLOCATION 's3://lake/berlin/1m/'"));
        assert!(!sql.contains("MSCK") && !sql.contains("projection"));
        let duck = statement(Dialect::DuckDb, "berlin-fleet", "/data/lake", &ds[1]);
        assert_eq!(
            duck,
            "CREATE OR REPLACE VIEW \"1m\" AS SELECT * FROM delta_scan('/data/lake/1m');\n"
        );
    }
}
