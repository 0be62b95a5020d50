//! The lake's file sizing, compaction of closed partitions and retention, in the files and
//! in the Delta tables' logs.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Files per partition directory of a dataset (its Delta log aside).
fn partitions(lake: &Path, dataset: &str) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let root = lake.join(dataset);
    for f in files_under(&root)
        .into_iter()
        .filter(|f| !f.starts_with(root.join("_delta_log")))
    {
        let dir = f.parent().unwrap().strip_prefix(&root).unwrap();
        out.entry(dir.display().to_string())
            .or_default()
            .push(std::fs::metadata(&f).unwrap().len());
    }
    out
}

/// The newest commit record.
fn last_commit(lake: &Path) -> serde_json::Value {
    let log = files_under(&lake.join("_fleetflow/log"));
    serde_json::from_slice(&std::fs::read(log.last().unwrap()).unwrap()).unwrap()
}

/// End (epoch ms) of an hour partition `date=YYYY-MM-DD/hour=HH`.
fn hour_end(dir: &str) -> i64 {
    let (d, h) = dir.split_once("/hour=").unwrap();
    let day = fleetflow_types::time::parse_date(d.strip_prefix("date=").unwrap()).unwrap();
    day + (h.parse::<i64>().unwrap() + 1) * 3_600_000
}

fn same_rows(a: &Path, b: &Path, dataset: &str) {
    let read = |l: &Path| format!("(select * from delta_scan('{}/{dataset}'))", l.display());
    let (ra, rb) = (read(a), read(b));
    let r = duckdb(&format!(
        "select (select count(*) from {ra}), (select count(*) from ({ra} except all {rb})), \
         (select count(*) from ({rb} except all {ra}))"
    ));
    assert!(r[0][0].as_i64().unwrap() > 0, "{dataset}: no rows");
    assert_eq!(
        (r[0][1].as_i64(), r[0][2].as_i64()),
        (Some(0), Some(0)),
        "{dataset}"
    );
}

fn generator_spec(lake: &str, rate: u32, lake_extra: &str) -> String {
    format!(
        r#"name = "lowrate"
workers = 2
[source]
kind = "generator"
vehicles = 20
interval = "2s"
duration = "70m"
rate = {rate}
start = "2025-01-06T06:00:00Z"
[lake]
url = "{lake}"
tiers = ["raw", "1m", "1h"]
checkpoint_interval = "100ms"
{lake_extra}
[api]
listen = "127.0.0.1:0"
"#
    )
}

#[test]
fn a_low_rate_run_leaves_few_files_per_closed_partition() {
    let dir = tempfile::tempdir().unwrap();
    // 42,000 events over about 3 s: every partition stays open for many file ages.
    std::fs::write(
        dir.path().join("slow.toml"),
        generator_spec("file://slow", 14_000, r#"max_file_age = "150ms""#),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("fast.toml"),
        generator_spec("file://fast", 10_000_000, ""),
    )
    .unwrap();
    let (_, log) = fleetflow_ok(dir.path(), &["run", "slow.toml"]);
    fleetflow_ok(dir.path(), &["run", "fast.toml"]);
    let slow = dir.path().join("slow");
    let published: u64 = log
        .lines()
        .find_map(|l| l.strip_prefix("files       "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let clock = last_commit(&slow)["clock"].as_i64().unwrap();
    let mut closed = 0;
    let mut remaining = 0;
    for dataset in ["raw", "1m"] {
        for (dir, sizes) in partitions(&slow, dataset) {
            remaining += sizes.len() as u64;
            if hour_end(&dir) <= clock {
                closed += 1;
                assert!(
                    sizes.len() <= 2,
                    "{dataset}/{dir}: {} files after compaction",
                    sizes.len()
                );
            }
        }
    }
    assert!(closed >= 2, "the run closes partitions");
    assert!(
        published > remaining + 10,
        "many small files were written ({published}) and compacted ({remaining} remain)"
    );
    // Compaction changes files, not rows.
    for dataset in ["raw", "1m", "1h"] {
        same_rows(&slow, &dir.path().join("fast"), dataset);
    }
}

#[test]
fn files_roll_at_the_target_size() {
    let dir = tempfile::tempdir().unwrap();
    let lines = generated_lines(400, 120, 5, 0.0, 0.0, 3);
    write_lines(&dir.path().join("in.ndjson"), &lines);
    std::fs::write(
        dir.path().join("job.toml"),
        r#"name = "sized"
workers = 1
[source]
kind = "file"
path = "in.ndjson"
[lake]
url = "file://lake"
tiers = ["raw"]
target_file_size = "512KB"
checkpoint_interval = "10s"
[api]
listen = "127.0.0.1:0"
"#,
    )
    .unwrap();
    let (_, log) = fleetflow_ok(dir.path(), &["run", "job.toml"]);
    let accepted: u64 = log
        .lines()
        .find_map(|l| l.strip_prefix("accepted    "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let parts = partitions(&dir.path().join("lake"), "raw");
    let sizes: Vec<u64> = parts.values().flatten().copied().collect();
    let target = 512 * 1024;
    assert!(
        sizes.iter().filter(|s| **s >= target / 2).count() >= 4,
        "{sizes:?}"
    );
    assert!(sizes.iter().all(|s| *s < 2 * target), "{sizes:?}");
    // Every hour has its rows, nothing twice.
    let n = duckdb(&format!(
        "select count(*) from {}",
        lake_glob(&dir.path().join("lake"), "raw")
    ));
    assert_eq!(n[0][0].as_u64(), Some(accepted));
    assert!(accepted > lines.len() as u64 * 99 / 100);
}

#[test]
fn retention_deletes_exactly_the_expired_partitions() {
    let dir = tempfile::tempdir().unwrap();
    // Five hours of data from 2025-01-31T23:40Z.
    let lines = generated_lines(50, 300, 5, 0.0, 0.0, 5);
    write_lines(&dir.path().join("in.ndjson"), &lines);
    let spec = |lake: &str, retention: &str| {
        format!(
            r#"name = "retention"
workers = 2
[source]
kind = "file"
path = "in.ndjson"
[lake]
url = "file://{lake}"
tiers = ["raw", "1m", "1h"]
checkpoint_interval = "50ms"
{retention}
[api]
listen = "127.0.0.1:0"
"#
        )
    };
    std::fs::write(dir.path().join("all.toml"), spec("all", "")).unwrap();
    std::fs::write(
        dir.path().join("kept.toml"),
        spec("kept", r#"retention = { raw = "2h", "1m" = "90m" }"#),
    )
    .unwrap();
    fleetflow_ok(dir.path(), &["run", "all.toml"]);
    fleetflow_ok(dir.path(), &["run", "kept.toml"]);
    let (all, kept) = (dir.path().join("all"), dir.path().join("kept"));
    let commit = last_commit(&kept);
    let clock = commit["clock"].as_i64().unwrap();
    for (dataset, keep_ms) in [("raw", 2 * 3_600_000), ("1m", 90 * 60_000)] {
        let cutoff = clock - keep_ms;
        assert_eq!(
            commit["retention"][dataset].as_i64(),
            Some(cutoff),
            "{commit}"
        );
        let everything: BTreeSet<String> = partitions(&all, dataset).into_keys().collect();
        let expected: BTreeSet<String> = everything
            .iter()
            .filter(|d| hour_end(d) > cutoff)
            .cloned()
            .collect();
        let got: BTreeSet<String> = partitions(&kept, dataset).into_keys().collect();
        assert!(expected.len() < everything.len(), "something expires");
        assert_eq!(got, expected, "{dataset}: cutoff {cutoff}");
        // The table's newest version lists exactly the kept partitions (retention removed
        // the others through the log).
        let listed = duckdb(&format!(
            "select distinct 'date=' || date || '/hour=' || hour from {} order by 1",
            lake_glob(&kept, dataset)
        ));
        let listed: BTreeSet<String> = listed
            .iter()
            .map(|r| r[0].as_str().unwrap().to_string())
            .collect();
        assert_eq!(listed, expected, "{dataset}: the Delta table");
        // The partitions kept hold all their rows.
        let first = expected.iter().next().unwrap().clone();
        let day = first
            .split('/')
            .next()
            .unwrap()
            .trim_start_matches("date=")
            .to_string();
        let hour: i64 = first.split("hour=").nth(1).unwrap().parse().unwrap();
        let filter = format!(
            "where cast(date as varchar) || lpad(cast(hour as varchar), 2, '0') >= '{day}{hour:02}'"
        );
        let q = |l: &Path| {
            format!(
                "(select * exclude (date, hour) from {} {filter})",
                lake_glob(l, dataset)
            )
        };
        let r = duckdb(&format!(
            "select (select count(*) from {a}), (select count(*) from ({a} except all {b})), (select count(*) from ({b} except all {a}))",
            a = q(&all),
            b = q(&kept)
        ));
        assert_eq!(r[0][1].as_i64(), Some(0), "{dataset}: {r:?}");
        assert_eq!(r[0][2].as_i64(), Some(0), "{dataset}: {r:?}");
    }
    delta::assert_delta_readers_agree(None, &kept.display().to_string(), "retention");
    // Tiers without a retention keep everything.
    assert_eq!(
        partitions(&all, "1h").into_keys().collect::<Vec<_>>(),
        partitions(&kept, "1h").into_keys().collect::<Vec<_>>()
    );
}
