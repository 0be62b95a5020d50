//! The `fleetflow` binary end to end: real files in, a Parquet lake out read back with
//! DuckDB, the API over a real socket, SIGINT.

mod common;

use common::reference::expected;
use common::*;
use fleetflow_types::records::Reason;
use fleetflow_types::registry::VehicleRegistry;
use std::time::{Duration, Instant};

#[test]
fn porto_lake_read_with_duckdb_equals_the_reference() {
    let lines = porto_lines("train.1k.csv");
    let tiers = [60_000i64, 3_600_000, 86_400_000];
    let exp = expected(&lines, &tiers, &VehicleRegistry::default(), 600_000);
    let dir = tempfile::tempdir().unwrap();
    write_lines(
        &dir.path().join("porto.ndjson"),
        &shuffle_within(&lines, 20_000, 9),
    );
    std::fs::write(
        dir.path().join("job.toml"),
        "name = \"porto\"\nworkers = 2\n[source]\nkind = \"file\"\npath = \"porto.ndjson\"\n[lake]\nurl = \"file://./lake\"\n[api]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let (_, stderr) = fleetflow_ok(dir.path(), &["run", "job.toml"]);
    assert!(
        stderr.contains(&format!("accepted    {}", exp.accepted.len())),
        "summary: {stderr}"
    );
    let lake = dir.path().join("lake");

    // raw: exactly the accepted fixes.
    let raw = duckdb(&format!(
        "select vehicle_id, epoch_ms(ts), lat, lon from {} order by 1, 2",
        lake_glob(&lake, "raw")
    ));
    assert_eq!(raw.len(), exp.accepted.len());
    for (row, fix) in raw.iter().zip(&exp.accepted) {
        assert_eq!(row[0].as_str(), Some(fix.vehicle_id.as_str()));
        assert_eq!(row[1].as_i64(), Some(fix.ts));
        assert_eq!(
            (row[2].as_f64(), row[3].as_f64()),
            (Some(fix.lat), Some(fix.lon))
        );
    }
    // Tiers: every row and value.
    for (t, name) in ["1m", "1h", "1d"].iter().enumerate() {
        let got = duckdb(&format!(
            "select vehicle_id, tenant, epoch_ms(window_start), epoch_ms(window_end), fixes, epoch_ms(first_ts), epoch_ms(last_ts), lat, lon, distance_km, fuel_used_l, moving_s, idle_s, km_per_l, avg_speed_kmh from {} order by 1, 3",
            lake_glob(&lake, name)
        ));
        let want: Vec<_> = exp.rows.iter().filter(|r| r.tier == t as u8).collect();
        assert_eq!(got.len(), want.len(), "{name} rows");
        for (g, w) in got.iter().zip(want) {
            let key = format!("{name} {} {}", w.vehicle_id, w.window_start);
            assert_eq!(g[0].as_str(), Some(w.vehicle_id.as_str()), "{key}");
            assert_eq!(g[1].as_str(), Some(w.tenant.as_str()), "{key}");
            let ints: Vec<i64> = [2, 3, 4, 5, 6]
                .iter()
                .map(|i| g[*i].as_i64().unwrap())
                .collect();
            assert_eq!(
                ints,
                vec![
                    w.window_start,
                    w.window_end,
                    w.fixes as i64,
                    w.first_ts,
                    w.last_ts
                ],
                "{key}"
            );
            assert_eq!(
                (g[7].as_f64(), g[8].as_f64()),
                (Some(w.lat), Some(w.lon)),
                "{key}"
            );
            for (i, v) in [
                (9, w.distance_km),
                (10, w.fuel_used_l),
                (11, w.moving_s),
                (12, w.idle_s),
            ] {
                assert_close(g[i].as_f64().unwrap(), v, &key);
            }
            assert!(
                g[13].is_null() && g[14].is_null(),
                "{key}: no fuel and no speeds in the Porto data"
            );
        }
    }
    // Dead letters: the implausible jumps, with their payloads.
    let dead = duckdb(&format!(
        "select reason, count(*) from {} group by 1",
        lake_glob(&lake, "dead_letter")
    ));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0][0].as_str(), Some(Reason::ImplausibleJump.as_str()));
    assert_eq!(dead[0][1].as_u64(), Some(exp.implausible.len() as u64));
    // Hive partition columns.
    let parts = duckdb(&format!(
        "select distinct cast(date as varchar), hour from {} order by 2",
        lake_glob(&lake, "1m")
    ));
    assert!(
        parts.iter().all(|p| p[0].as_str() == Some("2013-07-01")),
        "{parts:?}"
    );
    // No partial or staging files are visible, and a finished run leaves nothing staged.
    let private = lake.join("_fleetflow");
    let staged: Vec<_> = files_under(&private)
        .into_iter()
        .filter(|p| p.starts_with(private.join("staging")))
        .collect();
    assert!(staged.is_empty(), "{staged:?}");
    let logs = files_under(&private.join("log"));
    let last: serde_json::Value =
        serde_json::from_slice(&std::fs::read(logs.iter().max().unwrap()).unwrap()).unwrap();
    assert_eq!(last["last"], true, "{last}");
    assert_eq!(last["clock"].as_i64(), Some(exp.end_clock), "{last}");
    // The end of input made every fix final: complete through the job clock.
    for (dataset, complete) in last["complete"].as_object().unwrap() {
        assert_eq!(complete.as_i64(), Some(exp.end_clock), "{dataset}: {last}");
    }
    for entry in files_under(&lake)
        .into_iter()
        .filter(|p| !p.starts_with(&private))
    {
        let log = entry
            .parent()
            .is_some_and(|d| d.file_name().is_some_and(|n| n == "_delta_log"));
        assert!(
            entry.extension().is_some_and(|e| e == "parquet") || log,
            "unexpected file {}",
            entry.display()
        );
    }
    // Both Delta readers see every table, with the rows of the files the log lists.
    let tables = delta::assert_delta_readers_agree(None, &lake.display().to_string(), "porto");
    assert_eq!(tables.len(), 6, "{tables:?}");
    // `fleetflow ddl --dialect duckdb`: its views (over `delta_scan`) run in DuckDB and
    // return the lake's rows; a table with no rows yet (no geofences here) is an empty view.
    let (ddl, _) = fleetflow_ok(dir.path(), &["ddl", "job.toml", "--dialect", "duckdb"]);
    for (view, n) in &tables {
        let via_view = duckdb_after(&ddl, &format!("select count(*) from \"{view}\""));
        assert_eq!(via_view[0][0].as_i64(), Some(*n), "{view}");
        assert_eq!(*n > 0, view != "geofence_events", "{view}");
    }
    let hours = duckdb_after(&ddl, "select count(distinct hour) from \"1m\"");
    assert!(
        hours[0][0].as_i64().unwrap() > 1,
        "partition columns are visible"
    );
    // Athena: one projected external table per dataset, no MSCK REPAIR needed.
    let (athena, _) = fleetflow_ok(dir.path(), &["ddl", "job.toml", "--dialect", "athena"]);
    assert_eq!(
        athena.matches("CREATE EXTERNAL TABLE").count(),
        6,
        "{athena}"
    );
    assert!(athena.contains("`porto_tier_1h`") && athena.contains("'table_type' = 'DELTA'"));
}

#[test]
fn quickstart_serves_the_api_and_fills_the_lake_until_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let quickstart = examples.join("quickstart.toml");
    // The spec's relative paths are relative to the working directory, as for a newcomer
    // in the repository.
    std::fs::create_dir_all(dir.path().join("examples/geofences")).unwrap();
    std::fs::copy(
        examples.join("geofences/berlin.geojson"),
        dir.path().join("examples/geofences/berlin.geojson"),
    )
    .unwrap();
    let (child, addr, collected) = spawn_with_api(
        dir.path(),
        &[
            "run",
            quickstart.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
    );
    // Wait until the job is ready and vehicles are visible.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _) = http_get(&addr, "/readyz");
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "not ready in time");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, body) = http_get(&addr, "/v1/vehicles?limit=3");
    assert_eq!(status, 200, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 3);
    assert!(page["as_of"].as_i64().unwrap() > 1_736_000_000_000);
    assert!(page["next_cursor"].is_string());
    let id = page["items"][0]["vehicle_id"].as_str().unwrap().to_string();
    let (status, body) = http_get(&addr, &format!("/v1/vehicles/{id}"));
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["vehicle_id"], id.as_str());
    assert!(["moving", "idle", "parked", "offline"].contains(&v["status"].as_str().unwrap()));
    let (status, body) = http_get(&addr, "/v1/vehicles?limit=-1");
    assert_eq!(status, 400, "{body}");
    let (status, body) = http_get(&addr, "/v1/geofences");
    assert_eq!(status, 200, "{body}");
    let fences: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(fences["items"].as_array().unwrap().len(), 4, "{body}");
    std::thread::sleep(Duration::from_secs(2));
    let (_, metrics) = http_get(&addr, "/metrics");
    let accepted: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("fleetflow_events_accepted_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(accepted > 1000, "{metrics}");

    let log = interrupt(child, collected);
    assert!(log.contains("events "), "closing summary: {log}");
    let lake = dir.path().join("lake");
    let rows = duckdb(&format!(
        "select count(*), sum(fixes) from {}",
        lake_glob(&lake, "1m")
    ));
    assert!(rows[0][0].as_i64().unwrap() > 100, "{rows:?}");
    let events = duckdb(&format!(
        "select count(*), count(distinct geofence_id) from {}",
        lake_glob(&lake, "geofence_events")
    ));
    assert!(events[0][0].as_i64().unwrap() > 0, "{events:?}");
    let raw = duckdb(&format!("select count(*) from {}", lake_glob(&lake, "raw")));
    assert!(
        raw[0][0].as_i64().unwrap() >= rows[0][1].as_i64().unwrap(),
        "raw holds every fix of the closed windows"
    );
}

/// History and past days' fuel efficiency are read back from the lake the job wrote, and
/// equal the sequential reference.
#[test]
fn history_and_fuel_efficiency_are_served_from_the_lake() {
    let lines = generated_lines(5, 60, 0, 0.0, 0.0, 3);
    let tiers = [60_000i64, 3_600_000, 86_400_000];
    let exp = expected(&lines, &tiers, &VehicleRegistry::default(), 600_000);
    let dir = tempfile::tempdir().unwrap();
    write_lines(&dir.path().join("fleet.ndjson"), &lines);
    std::fs::write(
        dir.path().join("job.toml"),
        // Small files and frequent commits: closed partitions are compacted, and the files
        // compaction replaced stay in the store for the vacuum grace period (an hour).
        "name = \"fleet\"\nworkers = 2\n[source]\nkind = \"file\"\npath = \"fleet.ndjson\"\n[lake]\nurl = \"file://./lake\"\ncheckpoint_interval = \"50ms\"\nmax_file_age = \"50ms\"\n[api]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let (child, addr, rest) = spawn_with_api(dir.path(), &["run", "job.toml", "--serve"]);
    let get = |path: &str| {
        let (status, body) = http_get(&addr, path);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        (status, v, body)
    };
    // Past days: the 1d tier, complete once the lake's last commit is through the day.
    let day = fleetflow_types::time::parse_date("2025-01-31").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let fuel = loop {
        let (status, v, body) = get("/v1/fuel-efficiency?date=2025-01-31");
        assert_eq!(status, 200, "{body}");
        if v["complete"] == true {
            break v;
        }
        assert!(Instant::now() < deadline, "the day never completed: {body}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(fuel["source"], "1d");
    let want: Vec<_> = exp
        .rows
        .iter()
        .filter(|r| r.tier == 2 && r.window_start == day)
        .collect();
    let items = fuel["items"].as_array().unwrap();
    assert_eq!(items.len(), want.len(), "{fuel}");
    assert!(!want.is_empty());
    for (g, w) in items.iter().zip(&want) {
        assert_eq!(g["vehicle_id"], w.vehicle_id.as_str());
        assert_close(
            g["distance_km"].as_f64().unwrap(),
            w.distance_km,
            "distance",
        );
        assert_close(g["fuel_used_l"].as_f64().unwrap(), w.fuel_used_l, "fuel");
        assert_close(g["idle_s"].as_f64().unwrap(), w.idle_s, "idle");
        match w.km_per_l() {
            Some(k) => assert_close(g["km_per_l"].as_f64().unwrap(), k, "km/l"),
            None => assert!(g["km_per_l"].is_null()),
        }
    }
    // Pagination.
    let (_, page, _) = get("/v1/fuel-efficiency?date=2025-01-31&limit=2");
    assert_eq!(page["items"].as_array().unwrap().len(), 2.min(want.len()));

    // History, once a commit holds the whole input (the job goes on serving): an hour fits
    // the raw tier, which auto picks.
    wait_for_input_ended(&dir.path().join("lake"), Duration::from_secs(60));
    // The store holds files the `raw` table no longer reads: history that listed the store
    // instead of reading the table's snapshot would answer some rows twice.
    // (Compaction commits after the input's last commit: wait for it.)
    let lake = dir.path().join("lake");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // The table first: a commit in between only adds to the store.
        let table = delta::table_files(&lake, "raw");
        let stored = delta::stored_files(&lake, "raw");
        assert!(table.is_subset(&stored), "{stored:?} {table:?}");
        if stored.len() > table.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "compaction never replaced raw files: {table:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let vid = want[0].vehicle_id.as_str();
    let midnight = day + 86_400_000;
    let (from, to) = (midnight - 20 * 60_000, midnight + 40 * 60_000);
    let (status, h, body) = get(&format!("/v1/vehicles/{vid}/history?from={from}&to={to}"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(h["tier"], "raw");
    let ts: Vec<i64> = h["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["ts"].as_i64().unwrap())
        .collect();
    let want_ts: Vec<i64> = exp
        .accepted
        .iter()
        .filter(|f| f.vehicle_id == vid && f.ts >= from && f.ts < to)
        .map(|f| f.ts)
        .collect();
    assert_eq!(ts, want_ts);
    assert!(!ts.is_empty());
    // The 1m tier over the same hour, row by row.
    let (status, h, body) = get(&format!(
        "/v1/vehicles/{vid}/history?from=2025-01-31T23:40:00Z&to=2025-02-01T00:40:00Z&tier=1m"
    ));
    assert_eq!(status, 200, "{body}");
    let got: Vec<(i64, f64)> = h["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["window_start"].as_i64().unwrap(),
                r["distance_km"].as_f64().unwrap(),
            )
        })
        .collect();
    let want_1m: Vec<(i64, f64)> = exp
        .rows
        .iter()
        .filter(|r| {
            r.tier == 0 && r.vehicle_id == vid && r.window_start >= from && r.window_start < to
        })
        .map(|r| (r.window_start, r.distance_km))
        .collect();
    assert_eq!(got.len(), want_1m.len());
    for (g, w) in got.iter().zip(&want_1m) {
        assert_eq!(g.0, w.0);
        assert_close(g.1, w.1, "1m distance");
    }
    // A month is too long for raw (400 naming the limit); auto picks 1h.
    let month = 30 * 86_400_000i64;
    let (status, e, _) = get(&format!(
        "/v1/vehicles/{vid}/history?from={from}&to={}&tier=raw",
        from + month
    ));
    assert_eq!(status, 400);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("10000"),
        "{e}"
    );
    let (_, h, _) = get(&format!(
        "/v1/vehicles/{vid}/history?from={from}&to={}",
        from + month
    ));
    assert_eq!(h["tier"], "1h");
    assert!(h["as_of"].as_i64().is_some());
    for bad in [
        format!(
            "/v1/vehicles/{vid}/history?from={from}&to={}",
            from + 100 * 365 * 86_400_000i64
        ),
        format!("/v1/vehicles/{vid}/history?from={from}&to={from}"),
        format!("/v1/vehicles/{vid}/history?from={from}&to={to}&tier=5m"),
        format!("/v1/vehicles/{vid}/history?from=yesterday&to={to}"),
        format!("/v1/vehicles/{vid}/history?to={to}"),
        "/v1/fuel-efficiency?date=2025-13-01".to_string(),
        "/v1/fuel-efficiency?date=2025-1-1".to_string(),
    ] {
        let (status, e, body) = get(&bad);
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(e["error"]["code"], "bad_request");
    }
    let (status, _, _) = get(&format!("/v1/vehicles/nobody/history?from={from}&to={to}"));
    assert_eq!(status, 404);
    interrupt(child, rest);
}
