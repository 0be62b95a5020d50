//! The live map at `/` in a real browser: Debian's `chromium`, headless, driven by
//! `playwright-core` (`tests/map/drive.mjs`; `scripts/setup` installs both). The page
//! follows a generator job: the vehicles it draws are the ones the API lists, a geofence
//! added with `PUT` appears with its occupants, new events are listed, and after the job
//! restarts the page shows that it is reconnecting and resumes. With `[api].tokens` it
//! asks for a token and shows only that tenant; with `api.map_tiles` it draws the tiles of
//! that server (one on loopback, started by the driver). The screenshot is kept as an artifact
//! (`target/tmp/map.png`, or `$FLEETFLOW_TEST_ARTIFACTS`).

mod common;

use common::{free_port, spawn_with_api, wait_ready, KillOnDrop};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A generator job near the example geofences, its API on `port`, a local lake.
fn job(dir: &Path, port: u16, extra: &str) -> PathBuf {
    let fences = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/geofences/berlin.geojson"
    );
    let spec = dir.join("job.toml");
    std::fs::write(
        &spec,
        format!(
            r#"name = "map"
workers = 2
[source]
kind = "generator"
vehicles = 300
interval = "5s"
rate = 3000
seed = 11
[time]
allowed_lateness = "10s"
[geofences]
path = "{fences}"
dwell_after = "2m"
[lake]
url = "file://{}"
max_file_age = "2s"
checkpoint_interval = "2s"
[api]
listen = "127.0.0.1:{port}"
{extra}
"#,
            dir.join("lake").display()
        ),
    )
    .unwrap();
    spec
}

/// `node drive.mjs ARGS`, its stdin and stdout piped.
fn driver(args: &[&str]) -> std::process::Child {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/map");
    assert!(
        Path::new(dir).join("node_modules/playwright-core").exists(),
        "playwright-core is not installed in tests/map (scripts/setup installs it)"
    );
    Command::new("node")
        .arg("drive.mjs")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node")
}

fn artifact(name: &str) -> PathBuf {
    let dir = std::env::var_os("FLEETFLOW_TEST_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn the_map_follows_a_generator_job_and_resumes_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let spec = job(dir.path(), port, "");
    let spec = spec.to_str().unwrap();
    let (child, addr, _rest) = spawn_with_api(dir.path(), &["run", spec]);
    wait_ready(&addr);
    let shot = artifact("map.png");
    let _ = std::fs::remove_file(&shot);
    let mut node = driver(&["follow", &format!("http://{addr}"), shot.to_str().unwrap()]);
    let mut said = BufReader::new(node.stdout.take().unwrap()).lines();
    let line = said.next().map(Result::unwrap);
    assert_eq!(
        line.as_deref(),
        Some("RESTART"),
        "the page failed before the restart (its log is above)"
    );
    // SIGKILL: the job stops without a goodbye, as a crash would; it restarts from its
    // last checkpoint on the same port.
    drop(child);
    let (_child, again, _rest) = spawn_with_api(dir.path(), &["run", spec]);
    assert_eq!(again, addr);
    wait_ready(&again);
    writeln!(node.stdin.as_mut().unwrap(), "go").unwrap();
    let status = node.wait().unwrap();
    assert!(status.success(), "the browser checks failed (log above)");
    assert!(
        std::fs::metadata(&shot)
            .map(|m| m.len() > 10_000)
            .unwrap_or(false),
        "no screenshot at {}",
        shot.display()
    );
    eprintln!("screenshot: {}", shot.display());
}

#[test]
fn with_tokens_the_map_asks_for_one_and_shows_only_its_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let spec = job(
        dir.path(),
        port,
        r#"tokens = { "token-acme" = "acme", "token-admin" = "*" }"#,
    );
    let (child, addr, _rest) = spawn_with_api(dir.path(), &["run", spec.to_str().unwrap()]);
    let _child: KillOnDrop = child;
    wait_ready(&addr);
    let mut node = driver(&["token", &format!("http://{addr}"), "token-acme", "acme"]);
    let status = node.wait().unwrap();
    assert!(status.success(), "the browser checks failed (log above)");
}

#[test]
fn base_map_tiles_come_from_the_configured_server() {
    let dir = tempfile::tempdir().unwrap();
    let (port, tiles) = (free_port(), free_port());
    let spec = job(
        dir.path(),
        port,
        &format!(r#"map_tiles = "http://127.0.0.1:{tiles}/{{z}}/{{x}}/{{y}}.png""#),
    );
    let (child, addr, _rest) = spawn_with_api(dir.path(), &["run", spec.to_str().unwrap()]);
    let _child: KillOnDrop = child;
    wait_ready(&addr);
    let mut node = driver(&["tiles", &format!("http://{addr}"), &tiles.to_string()]);
    let status = node.wait().unwrap();
    assert!(status.success(), "the browser checks failed (log above)");
}
