//! The command line: exit codes and one-line errors naming the field.

use std::process::Command;

fn fleetflow(args: &[&str], cwd: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fleetflow"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = r#"name = "t"
workers = 1

[source]
kind = "file"
path = "in.ndjson"

[time]
allowed_lateness = "30s"

[lake]
url = "file://./lake"
tiers = ["raw", "1m", "1h", "1d"]

[api]
listen = "127.0.0.1:0"
"#;

#[test]
fn validate_accepts_a_good_spec_and_the_examples() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.ndjson"), "").unwrap();
    std::fs::write(dir.path().join("job.toml"), GOOD).unwrap();
    let (code, out, err) = fleetflow(&["validate", "job.toml"], dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok"));
    let root = env!("CARGO_MANIFEST_DIR");
    for ex in [
        "examples/quickstart.toml",
        "examples/porto.toml",
        "examples/kafka.toml",
    ] {
        let (code, _, err) = fleetflow(&["validate", ex], std::path::Path::new(root));
        assert_eq!(code, 0, "{ex}: {err}");
    }
}

#[test]
fn bad_specs_exit_2_with_one_line_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.ndjson"), "").unwrap();
    let cases: &[(&str, &str, &str)] = &[
        (
            "allowed_lateness = \"30s\"",
            "allowed_lateness = \"half a minute\"",
            "line 9: time.allowed_lateness",
        ),
        ("workers = 1", "workers = 0", "line 2: workers"),
        ("workers = 1", "workers = \"two\"", "workers"),
        (
            "path = \"in.ndjson\"",
            "path = \"missing.ndjson\"",
            "line 6: source.path",
        ),
        ("kind = \"file\"", "kind = \"ftp\"", "source"),
        (
            "listen = \"127.0.0.1:0\"",
            "listen = \"127.0.0.1:0\"\n[dead_letter]\ntopic = \"dlq\"",
            "dead_letter.topic",
        ),
        ("\"1d\"]", "\"7m\"]", "line 13: lake.tiers"),
        (
            "listen = \"127.0.0.1:0\"",
            "listen = \"everywhere\"",
            "line 16: api.listen",
        ),
        (
            "url = \"file://./lake\"",
            "url = \"ftp://x\"",
            "line 12: lake.url",
        ),
        (
            "listen = \"127.0.0.1:0\"",
            "listen = \"127.0.0.1:0\"\nmap_tiles = \"tiles.example/{z}/{x}.png\"",
            "line 17: api.map_tiles",
        ),
        (
            "[time]",
            "[time]\nlateness = \"1s\"",
            "unknown field `lateness`",
        ),
        ("name = \"t\"", "name = ", "line 1"),
    ];
    for (from, to, needle) in cases {
        let spec = GOOD.replace(from, to);
        assert_ne!(spec, GOOD, "{from}");
        std::fs::write(dir.path().join("bad.toml"), &spec).unwrap();
        for cmd in ["validate", "run"] {
            let (code, _, err) = fleetflow(&[cmd, "bad.toml"], dir.path());
            assert_eq!(code, 2, "{cmd} {to}: {err}");
            assert_eq!(
                err.trim_end().lines().count(),
                1,
                "{cmd} {to}: one line, got {err:?}"
            );
            assert!(
                err.contains(needle),
                "{cmd} {to}: {err:?} should name {needle:?}"
            );
            assert!(!err.contains("panicked"), "{err}");
        }
    }
}

#[test]
fn bad_arguments_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.ndjson"), "").unwrap();
    std::fs::write(dir.path().join("job.toml"), GOOD).unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["run"], "JOB"),
        (&["run", "nope.toml"], "nope.toml"),
        (&["run", "job.toml", "--workers", "0"], "--workers"),
        (&["run", "job.toml", "--workers", "many"], "--workers"),
        (&["run", "job.toml", "--listen", "nowhere"], "--listen"),
        (&["run", "job.toml", "--frobnicate"], "--frobnicate"),
        (
            &["generate", "--duration", "10m", "--out", "x.ndjson"],
            "--vehicles",
        ),
        (
            &[
                "generate",
                "--vehicles",
                "3",
                "--duration",
                "soon",
                "--out",
                "x.ndjson",
            ],
            "--duration",
        ),
        (
            &["generate", "--vehicles", "3", "--duration", "1m"],
            "--out",
        ),
        (
            &[
                "generate",
                "--vehicles",
                "0",
                "--duration",
                "1m",
                "--out",
                "x.ndjson",
            ],
            "--vehicles",
        ),
        (
            &[
                "generate",
                "--vehicles",
                "3",
                "--duration",
                "1m",
                "--out",
                "x.ndjson",
                "--duplicates",
                "2",
            ],
            "--duplicates",
        ),
        (&["frobnicate"], "frobnicate"),
    ];
    for (args, needle) in cases {
        let (code, _, err) = fleetflow(args, dir.path());
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: {err:?} should name {needle:?}"
        );
    }
}

#[test]
fn generate_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let args = |out: &'static str| {
        [
            "generate",
            "--vehicles",
            "5",
            "--duration",
            "2m",
            "--seed",
            "3",
            "--disorder",
            "5s",
            "--out",
            out,
        ]
    };
    assert_eq!(fleetflow(&args("a.ndjson"), dir.path()).0, 0);
    assert_eq!(fleetflow(&args("b.ndjson"), dir.path()).0, 0);
    let a = std::fs::read_to_string(dir.path().join("a.ndjson")).unwrap();
    assert_eq!(
        a,
        std::fs::read_to_string(dir.path().join("b.ndjson")).unwrap()
    );
    assert_eq!(a.lines().count(), 5 * 24);
}

#[test]
fn generate_makes_the_trouble_real_fleets_make() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str], out: &str| {
        let mut args = vec![
            "generate",
            "--vehicles",
            "4",
            "--duration",
            "10m",
            "--out",
            out,
        ];
        args.extend_from_slice(extra);
        let (code, _, err) = fleetflow(&args, dir.path());
        assert_eq!(code, 0, "{err}");
        std::fs::read_to_string(dir.path().join(out))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let plain = run(&[], "plain.ndjson");
    let key = |v: &serde_json::Value| {
        (
            v["vehicle_id"].as_str().unwrap().to_string(),
            v["ts"].as_i64().unwrap(),
        )
    };
    // A tracker a day behind: V00000's fixes, a day earlier.
    let behind = run(&["--clock-skew", "-1d"], "behind.ndjson");
    for (a, b) in plain.iter().zip(&behind) {
        let off = if a["vehicle_id"] == "V00000" {
            86_400_000
        } else {
            0
        };
        assert_eq!(b["ts"].as_i64().unwrap(), a["ts"].as_i64().unwrap() - off);
    }
    // An export ordered vehicle by vehicle: the same fixes, sorted by vehicle and time.
    let by_vehicle = run(&["--order", "vehicle"], "by-vehicle.ndjson");
    let mut sorted: Vec<_> = plain.iter().map(key).collect();
    sorted.sort();
    assert_eq!(by_vehicle.iter().map(key).collect::<Vec<_>>(), sorted);
    // Store and forward: V00003 loses coverage from minute 2 for 5 minutes.
    let outage = run(&["--outage", "5m", "--outage-start", "2m"], "outage.ndjson");
    let first_buffered = outage
        .iter()
        .position(|v| {
            v["vehicle_id"] == "V00003"
                && v["ts"].as_i64().unwrap() >= plain[0]["ts"].as_i64().unwrap() + 120_000
        })
        .unwrap();
    let before: Vec<i64> = outage[..first_buffered]
        .iter()
        .map(|v| v["ts"].as_i64().unwrap() - plain[0]["ts"].as_i64().unwrap())
        .collect();
    assert!(
        before.iter().any(|t| *t >= 415_000),
        "the buffer comes after the outage"
    );
    let (code, _, err) = fleetflow(
        &[
            "generate",
            "--vehicles",
            "4",
            "--duration",
            "10m",
            "--out",
            "x",
            "--order",
            "sideways",
        ],
        dir.path(),
    );
    assert_eq!(code, 2, "{err}");
}

/// A directory with `job.toml` (the good spec) over one fix in `in.ndjson`.
fn one_fix_job() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("in.ndjson"),
        "{\"vehicle_id\":\"V1\",\"ts\":1736143200000,\"lat\":52.5,\"lon\":13.4}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("job.toml"), GOOD).unwrap();
    dir
}

#[test]
fn a_lake_that_cannot_be_written_exits_1_with_one_line() {
    let dir = one_fix_job();
    // A plain file where the `raw` dataset's directory must go: every raw write fails.
    std::fs::create_dir_all(dir.path().join("lake")).unwrap();
    std::fs::write(dir.path().join("lake/raw"), "in the way").unwrap();
    let (code, _, err) = fleetflow(&["run", "job.toml"], dir.path());
    assert_eq!(code, 1, "{err}");
    let last = err.trim_end().lines().last().unwrap();
    assert!(
        last.starts_with("error: writing the lake") && last.contains("raw/"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_staging_area_that_cannot_be_written_exits_1_instead_of_waiting_for_a_checkpoint() {
    let dir = one_fix_job();
    // A plain file where the staging area must go: the sink's own writes fail, so its
    // pieces of the last checkpoint never come; the job must still end.
    std::fs::create_dir_all(dir.path().join("lake/_fleetflow")).unwrap();
    std::fs::write(dir.path().join("lake/_fleetflow/staging"), "in the way").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fleetflow"))
        .args(["run", "job.toml"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            child.kill().unwrap();
            panic!("the job still runs 60 s after its lake writes failed");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    let last = err.trim_end().lines().last().unwrap();
    assert!(
        last.starts_with("error: writing the lake") && last.contains("_fleetflow/staging"),
        "{err}"
    );
}

#[test]
fn a_second_run_on_a_taken_api_address_stops_before_touching_the_lake() {
    let dir = one_fix_job();
    let (code, _, err) = fleetflow(&["run", "job.toml"], dir.path());
    assert_eq!(code, 0, "{err}");
    // As if a job were running on this lake and address: a file it staged, its socket.
    let staged = dir
        .path()
        .join("lake/_fleetflow/staging/raw/date=2025-01-06/hour=06");
    std::fs::create_dir_all(&staged).unwrap();
    std::fs::write(staged.join("running.parquet"), "staged by the running job").unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    std::fs::write(
        dir.path().join("second.toml"),
        GOOD.replace("127.0.0.1:0", &addr),
    )
    .unwrap();
    let (code, _, err) = fleetflow(&["run", "second.toml"], dir.path());
    assert_ne!(code, 0, "{err}");
    assert!(
        err.trim_end()
            .lines()
            .last()
            .unwrap()
            .contains(&format!("api.listen: cannot bind {addr}")),
        "{err}"
    );
    assert!(
        !err.contains("resuming from the lake's checkpoint"),
        "{err}"
    );
    assert!(
        staged.join("running.parquet").exists(),
        "the lake was cleaned: {err}"
    );
}

/// CI runs exactly the test command the README gives a newcomer.
#[test]
fn ci_runs_the_readmes_test_command() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    // The first command line after the comment "# 2." in the README's commands.
    let after = readme
        .split("\n# 2.")
        .nth(1)
        .expect("README.md has a '# 2.' command");
    let readme_cmd = after
        .lines()
        .skip(1)
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .expect("a command after '# 2.'");
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    let ci_cmd = ci
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap();
    assert_eq!(readme_cmd, "scripts/test");
    assert_eq!(ci_cmd, readme_cmd, ".ci/run ends in the README's command");
}
