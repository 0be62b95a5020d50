//! Router tests without a socket.

use super::*;
use axum::body::Body;
use axum::http::Request;
use fleetflow_types::fix::Fix;
use fleetflow_types::records::{Reason, Status};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// An empty batch of changes (a clock advance only).
fn no_changes() -> Vec<((fleetflow_types::CompactString, VehicleState), isize)> {
    Vec::new()
}

fn state(id: &str, tenant: &str, lat: f64, status: Status) -> VehicleState {
    VehicleState {
        fix: Fix {
            vehicle_id: id.into(),
            tenant: tenant.into(),
            ts: 1_000,
            lat,
            lon: 13.0,
            speed_kmh: Some(10.0),
            heading_deg: None,
            fuel_level_pct: None,
            fuel_used_l: None,
            odometer_km: None,
            ignition: Some(true),
        },
        status,
        today_distance_km: 1.5,
        today_fuel_used_l: 0.2,
        today_idle_s: 30.0,
    }
}

/// An open API (no tokens) over these views.
pub(crate) fn api_state(
    vehicles: Arc<VehicleView>,
    geofences: Arc<crate::geofences::GeofenceView>,
    metrics: Arc<Metrics>,
) -> ApiState {
    ApiState::new(
        vehicles,
        geofences,
        metrics,
        Arc::new(ChangeLog::new(1000, 1)),
        Arc::new(auth::Auth::new(Default::default(), None)),
        StreamConfig::default(),
    )
}

fn app() -> (Router, Arc<VehicleView>, Arc<Metrics>) {
    let view = Arc::new(VehicleView::new(2));
    let metrics = Arc::new(Metrics::new(vec!["raw".into(), "1m".into()]));
    (
        router(api_state(
            view.clone(),
            Arc::new(crate::geofences::GeofenceView::new(2, &[], None)),
            metrics.clone(),
        )),
        view,
        metrics,
    )
}

async fn call(app: &Router, uri: &str) -> (StatusCode, serde_json::Value, String) {
    let resp = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        text,
    )
}

fn fill(view: &Arc<VehicleView>) {
    let ups = (0..5)
        .map(|i| {
            (
                (
                    format!("V{i}").into(),
                    state(
                        &format!("V{i}"),
                        if i % 2 == 0 { "a" } else { "b" },
                        52.0 + i as f64 * 0.01,
                        Status::Moving,
                    ),
                ),
                1,
            )
        })
        .collect();
    view.writers()[0].apply(ups, Some(5_000));
}

#[tokio::test]
async fn vehicle_by_id_with_as_of_once_every_worker_published() {
    let (app, view, _) = app();
    fill(&view);
    let (st, body, _) = call(&app, "/v1/vehicles/V1").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(body["vehicle_id"], "V1");
    assert_eq!(body["status"], "moving");
    assert!(
        body["as_of"].is_null(),
        "worker 1 has not published a watermark"
    );
    view.writers()[1].apply(no_changes(), Some(4_000));
    let (_, body, _) = call(&app, "/v1/vehicles/V1").await;
    assert_eq!(
        body["as_of"], 4_000,
        "as_of is the slowest worker's watermark"
    );
    let (st, body, _) = call(&app, "/v1/vehicles/nope").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
}

#[tokio::test]
async fn retraction_then_insertion_replaces_state() {
    let (app, view, _) = app();
    fill(&view);
    let old = view.get("V1").unwrap();
    let mut new = old.clone();
    new.status = Status::Parked;
    view.writers()[0].apply(
        vec![(("V1".into(), old), -1), (("V1".into(), new), 1)],
        None,
    );
    let (_, body, _) = call(&app, "/v1/vehicles/V1").await;
    assert_eq!(body["status"], "parked");
}

#[tokio::test]
async fn list_pages_with_cursor_and_filters() {
    let (app, view, _) = app();
    fill(&view);
    view.writers()[1].apply(no_changes(), Some(5_000));
    let (st, body, _) = call(&app, "/v1/vehicles?limit=2").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(body["items"].as_array().unwrap().len(), 2);
    assert_eq!(body["as_of"], 5_000);
    let mut seen = vec![];
    let mut uri = "/v1/vehicles?limit=2".to_string();
    loop {
        let (_, body, _) = call(&app, &uri).await;
        seen.extend(
            body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["vehicle_id"].as_str().unwrap().to_string()),
        );
        match body["next_cursor"].as_str() {
            Some(c) => uri = format!("/v1/vehicles?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, vec!["V0", "V1", "V2", "V3", "V4"]);
    let (_, body, _) = call(&app, "/v1/vehicles?tenant=b").await;
    assert_eq!(body["items"].as_array().unwrap().len(), 2);
    let (_, body, _) = call(&app, "/v1/vehicles?bbox=12,52.015,14,53").await;
    assert_eq!(body["items"].as_array().unwrap().len(), 3);
    let (_, body, _) = call(&app, "/v1/vehicles?status=parked").await;
    assert_eq!(body["items"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn bad_requests_are_4xx_with_json_errors() {
    let (app, view, _) = app();
    fill(&view);
    for uri in [
        "/v1/vehicles?limit=0",
        "/v1/vehicles?limit=abc",
        "/v1/vehicles?limit=5000",
        "/v1/vehicles?bbox=1,2,3",
        "/v1/vehicles?bbox=14,52,12,53",
        "/v1/vehicles?bbox=a,b,c,d",
        "/v1/vehicles?status=flying",
        "/v1/vehicles?cursor=***",
        "/v1/vehicles?colour=red",
    ] {
        let (st, body, text) = call(&app, uri).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{uri}: {text}");
        assert_eq!(body["error"]["code"], "bad_request", "{uri}");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }
    let (st, body, _) = call(&app, "/v2/nothing").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let (app, view, metrics) = app();
    let (st, _, _) = call(&app, "/healthz").await;
    assert_eq!(st, StatusCode::OK);
    let (st, _, _) = call(&app, "/readyz").await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    view.writers()[0].apply(no_changes(), Some(7));
    view.writers()[1].apply(no_changes(), Some(9));
    let (st, body, _) = call(&app, "/readyz").await;
    assert_eq!((st, body["as_of"].as_i64()), (StatusCode::OK, Some(7)));
    metrics
        .events_in
        .fetch_add(3, std::sync::atomic::Ordering::Relaxed);
    metrics.dead_letter(Reason::Late);
    metrics.advance_clock(1234);
    metrics.set_clock_outliers(2, 1, 100);
    metrics.dropped(0b11);
    metrics.add_rows("1m", 10);
    let (_, _, text) = call(&app, "/metrics").await;
    assert!(text.contains("fleetflow_events_in_total 3"), "{text}");
    assert!(text.contains("fleetflow_dead_letters_total{reason=\"late\"} 1"));
    assert!(text.contains("fleetflow_dead_letters_total{reason=\"implausible_jump\"} 0"));
    assert!(text.contains("fleetflow_job_clock_ms 1234"));
    assert!(text.contains("fleetflow_clock_ahead_vehicles 2"), "{text}");
    assert!(text.contains("fleetflow_clock_behind_vehicles 1"));
    assert!(text.contains("fleetflow_clock_voters 100"));
    assert!(text.contains("fleetflow_dropped_fields_total{field=\"speed_kmh\"} 1"));
    assert!(text.contains("fleetflow_dropped_fields_total{field=\"heading_deg\"} 1"));
    assert!(text.contains("fleetflow_dropped_fields_total{field=\"tenant\"} 0"));
    assert!(text.contains("fleetflow_lake_rows_total{dataset=\"1m\"} 10"));
}

/// Every metric the engine collects is exposed: the closed list below is what `/metrics`
/// has, name for name, once the job has a clock and a commit.
#[tokio::test]
async fn every_metric_collected_is_exposed() {
    let view = Arc::new(VehicleView::new(1));
    let metrics =
        Arc::new(Metrics::new(vec!["raw".into()]).with_inputs(&["kafka:locations/0".to_string()]));
    let app = router(api_state(
        view,
        Arc::new(crate::geofences::GeofenceView::new(1, &[], None)),
        metrics.clone(),
    ));
    metrics.advance_clock(1_000);
    metrics
        .lake_clock
        .store(900, std::sync::atomic::Ordering::Relaxed);
    metrics.set_lake_complete("raw", 800);
    metrics.input_read(0, 5, 500, Some(950));
    metrics.inputs[0]
        .progress
        .store(940, std::sync::atomic::Ordering::Relaxed);
    metrics.inputs[0]
        .lag
        .store(3, std::sync::atomic::Ordering::Relaxed);
    metrics.visibility_latency.record(12, 4);
    metrics.delivery_latency.record(2, 4);
    let (status, _, text) = call(&app, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let mut names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    names.sort();
    let mut want = vec![
        "fleetflow_api_streams",
        "fleetflow_bytes_in_total",
        "fleetflow_clock_ahead_vehicles",
        "fleetflow_clock_behind_vehicles",
        "fleetflow_clock_voters",
        "fleetflow_dead_letters_total",
        "fleetflow_delivery_latency_seconds",
        "fleetflow_dropped_fields_total",
        "fleetflow_duplicates_total",
        "fleetflow_events_accepted_total",
        "fleetflow_events_in_total",
        "fleetflow_geofences",
        "fleetflow_commit_seconds",
        "fleetflow_checkpoint_bytes",
        "fleetflow_input_bytes_total",
        "fleetflow_input_event_time_ms",
        "fleetflow_input_finished",
        "fleetflow_input_messages_total",
        "fleetflow_input_progress_ms",
        "fleetflow_job_clock_delay_ms",
        "fleetflow_job_clock_ms",
        "fleetflow_kafka_consumer_lag",
        "fleetflow_lake_bytes_total",
        "fleetflow_lake_clock_ms",
        "fleetflow_lake_complete_ms",
        "fleetflow_lake_files_total",
        "fleetflow_lake_rows_total",
        "fleetflow_lake_write_retries_total",
        "fleetflow_vehicles",
        "fleetflow_visibility_latency_seconds",
    ];
    want.sort();
    assert_eq!(names, want, "{text}");
    for line in [
        "fleetflow_input_messages_total{input=\"kafka:locations/0\"} 5",
        "fleetflow_input_event_time_ms{input=\"kafka:locations/0\"} 950",
        "fleetflow_input_progress_ms{input=\"kafka:locations/0\"} 940",
        "fleetflow_kafka_consumer_lag{input=\"kafka:locations/0\"} 3",
        "fleetflow_lake_clock_ms 900",
        "fleetflow_lake_complete_ms{dataset=\"raw\"} 800",
        "fleetflow_visibility_latency_seconds_count 4",
        "fleetflow_delivery_latency_seconds_bucket{le=\"0.002\"} 4",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
}

mod geofence_routes {
    use super::*;
    use crate::geofences::GeofenceView;
    use fleetflow_types::records::{
        GeofenceCause, GeofenceEvent, GeofenceEventKind, OccupancyChange,
    };

    async fn send(
        app: &Router,
        method: &str,
        uri: &str,
        body: &str,
    ) -> (StatusCode, serde_json::Value) {
        let resp = app
            .clone()
            .oneshot(
                Request::builder()
                    .method(method)
                    .uri(uri)
                    .body(Body::from(body.to_owned()))
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    fn app_with(geofences: Arc<GeofenceView>) -> Router {
        router(api_state(
            Arc::new(VehicleView::new(2)),
            geofences,
            Arc::new(Metrics::new(vec![])),
        ))
    }

    const CIRCLE: &str = r#"{"type":"Feature","properties":{"radius_m":100},"geometry":{"type":"Point","coordinates":[13.4,52.5]}}"#;

    #[tokio::test]
    async fn changes_are_acknowledged_with_the_watermark_they_took_effect_at() {
        let (tx, rx) = std::sync::mpsc::channel::<fleetflow_types::records::GeofenceChange>();
        let view = Arc::new(GeofenceView::new(2, &[], Some(tx)));
        // Stands in for the dataflow: both workers apply every change at watermark 7000.
        let applier = view.clone();
        std::thread::spawn(move || {
            for c in rx {
                for w in 0..2 {
                    applier.writers()[w].apply(vec![], &[], vec![(c.seq, Some(7_000))], None);
                }
            }
        });
        let app = app_with(view.clone());
        let (s, v) = send(&app, "PUT", "/v1/geofences/depot", CIRCLE).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        assert_eq!(v["effective_at"], 7_000);
        let (s, _) = send(&app, "PUT", "/v1/geofences/depot", CIRCLE).await;
        assert_eq!(s, StatusCode::OK, "replacing");
        let (s, v, _) = call(&app, "/v1/geofences").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["items"].as_array().unwrap().len(), 1);
        let (s, v, _) = call(&app, "/v1/geofences/depot").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["kind"], "circle");
        assert_eq!(v["feature"]["properties"]["radius_m"], 100.0);
        let (s, _) = send(&app, "DELETE", "/v1/geofences/depot", "").await;
        assert_eq!(s, StatusCode::OK);
        let (s, v) = send(&app, "DELETE", "/v1/geofences/depot", "").await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
        assert_eq!(view.len(), 0);
    }

    #[tokio::test]
    async fn bad_changes_are_4xx_and_a_stopped_job_is_a_conflict() {
        let view = Arc::new(GeofenceView::new(1, &[], None));
        let app = app_with(view);
        for (body, want) in [
            ("{", "not JSON"),
            (
                r#"{"type":"Feature","id":"other","properties":{"radius_m":5},"geometry":{"type":"Point","coordinates":[1,2]}}"#,
                "differs",
            ),
            (
                r#"{"type":"Feature","properties":{"radius_m":0},"geometry":{"type":"Point","coordinates":[1,2]}}"#,
                "radius_m",
            ),
            (
                r#"{"type":"Feature","properties":{},"geometry":{"type":"Polygon","coordinates":[[[0,0],[1,1],[1,0],[0,1],[0,0]]]}}"#,
                "self-intersection",
            ),
        ] {
            let (s, v) = send(&app, "PUT", "/v1/geofences/x", body).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
            let msg = v["error"]["message"].as_str().unwrap();
            assert!(msg.contains(want), "{msg}");
        }
        let (s, v) = send(&app, "PUT", "/v1/geofences/x", CIRCLE).await;
        assert_eq!(s, StatusCode::CONFLICT, "{v}");
        assert_eq!(v["error"]["code"], "conflict");
    }

    #[tokio::test]
    async fn occupants_and_recent_events_read_the_view() {
        let g = fleetflow_types::geofence::Geofence::from_feature(
            &serde_json::from_str(CIRCLE).unwrap(),
            Some("depot"),
            None,
            "depot",
        )
        .unwrap();
        let view = Arc::new(GeofenceView::new(2, &[Arc::new(g)], None));
        let ev = |v: &str, kind, ts| GeofenceEvent {
            geofence_id: "depot".into(),
            vehicle_id: v.into(),
            tenant: "acme".into(),
            kind,
            ts,
            cause: GeofenceCause::Fix,
        };
        let occ = |v: &str, entered_at, diff| OccupancyChange {
            geofence: "depot".into(),
            vehicle: v.into(),
            entered_at,
            diff,
        };
        view.writers()[0].apply(
            vec![
                occ("V1", 1_000, 1),
                occ("V2", 2_000, 1),
                occ("V2", 2_000, -1),
            ],
            &[
                ev("V1", GeofenceEventKind::Enter, 1_000),
                ev("V2", GeofenceEventKind::Enter, 2_000),
                ev("V2", GeofenceEventKind::Exit, 3_000),
            ],
            vec![],
            None,
        );
        view.writers()[1].apply(
            // Worker 1 numbers its geofences and vehicles independently.
            vec![occ("V3", 2_500, 1)],
            &[ev("V3", GeofenceEventKind::Enter, 2_500)],
            vec![],
            None,
        );
        view.writers()[0].advance(Some(4_000));
        view.writers()[1].advance(Some(3_500));
        let app = app_with(view);
        let (s, v, _) = call(&app, "/v1/geofences/depot/occupants").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["as_of"], 3_500);
        assert_eq!(
            v["items"],
            serde_json::json!([{"vehicle_id": "V1", "entered_at": 1000}, {"vehicle_id": "V3", "entered_at": 2500}])
        );
        let (s, _, _) = call(&app, "/v1/geofences/nope/occupants").await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (_, v, _) = call(&app, "/v1/geofence-events?limit=2").await;
        let ts: Vec<i64> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["ts"].as_i64().unwrap())
            .collect();
        assert_eq!(ts, [3_000, 2_500], "newest first, limited");
        let (_, v, _) = call(
            &app,
            "/v1/geofence-events?vehicle=V2&kind=enter&since=1970-01-01T00:00:01.500Z",
        )
        .await;
        assert_eq!(v["items"].as_array().unwrap().len(), 1, "{v}");
        assert_eq!(v["items"][0]["cause"], "fix");
        for bad in ["?since=soon", "?kind=leave", "?limit=0", "?color=red"] {
            let (s, v, _) = call(&app, &format!("/v1/geofence-events{bad}")).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        }
        let (s, v, _) = call(&app, "/v1/geofences?limit=1").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["items"][0]["id"], "depot");
        assert!(v["next_cursor"].is_null());
    }
}

mod nearby {
    use super::*;
    use proptest::prelude::*;

    fn at(id: &str, tenant: &str, lat: f64, lon: f64) -> VehicleState {
        let mut s = state(id, tenant, lat, Status::Moving);
        s.fix.lon = lon;
        s
    }

    /// What `nearby` must answer, by scanning every vehicle.
    fn scan(
        vehicles: &std::collections::BTreeMap<String, VehicleState>,
        lat: f64,
        lon: f64,
        radius_m: f64,
        limit: usize,
    ) -> Vec<(String, f64)> {
        let mut all: Vec<(String, f64)> = vehicles
            .values()
            .map(|v| {
                let d = fleetflow_types::fix::haversine_km(lat, lon, v.fix.lat, v.fix.lon) * 1000.0;
                (v.fix.vehicle_id.to_string(), d)
            })
            .filter(|(_, d)| *d <= radius_m)
            .collect();
        all.sort_by(|a, b| a.1.total_cmp(&b.1));
        all.truncate(limit);
        all
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// After inserts, moves and removals in random batches, the index answers what a
        /// scan of the current positions answers, nearest first.
        #[test]
        fn the_index_answers_as_a_scan_does(
            ops in prop::collection::vec((0u8..40, -0.5f64..0.5, -0.5f64..0.5, prop::bool::weighted(0.15)), 1..300),
            query in (-0.6f64..0.6, -0.6f64..0.6, 100.0f64..80_000.0, 1usize..30),
        ) {
            let view = Arc::new(VehicleView::new(1));
            let mut truth = std::collections::BTreeMap::new();
            let mut first = true;
            for batch in ops.chunks(7) {
                // The batch's net effect, as the dataflow publishes it: per vehicle, the
                // state before retracted and the state after inserted.
                let before = truth.clone();
                for (v, dlat, dlon, remove) in batch {
                    let id = format!("V{v}");
                    if *remove {
                        truth.remove(&id);
                    } else {
                        truth.insert(id.clone(), at(&id, "a", 52.5 + dlat, 13.4 + dlon));
                    }
                }
                let touched: std::collections::BTreeSet<String> =
                    batch.iter().map(|(v, ..)| format!("V{v}")).collect();
                let mut ups: Vec<((fleetflow_types::CompactString, VehicleState), isize)> = Vec::new();
                for id in touched {
                    if let Some(old) = before.get(&id) {
                        ups.push(((id.as_str().into(), old.clone()), -1));
                    }
                    if let Some(new) = truth.get(&id) {
                        ups.push(((id.as_str().into(), new.clone()), 1));
                    }
                }
                view.writers()[0].apply(ups, Some(1));
                if first {
                    view.nearby(52.5, 13.4, 1.0, 1, |_| true);
                    first = false;
                }
            }
            let (qlat, qlon, radius, limit) = query;
            let (qlat, qlon) = (52.5 + qlat, 13.4 + qlon);
            // The index built after the first batch is out of date and old enough now: the
            // query rebuilds it.
            std::thread::sleep(crate::view::INDEX_MAX_AGE);
            let got: Vec<(String, f64)> = view
                .nearby(qlat, qlon, radius, limit, |_| true)
                .0
                .into_iter()
                .map(|(v, d)| (v.fix.vehicle_id.to_string(), d))
                .collect();
            let want = scan(&truth, qlat, qlon, radius, limit);
            prop_assert_eq!(got.len(), want.len());
            for ((gid, gd), (wid, wd)) in got.iter().zip(&want) {
                prop_assert!((gd - wd).abs() < 1e-6, "{} {} vs {} {}", gid, gd, wid, wd);
            }
            prop_assert_eq!(view.len(), truth.len());
        }
    }

    #[tokio::test]
    async fn nearest_first_with_distances_and_bad_parameters_are_400() {
        let (app, view, _) = app();
        view.writers()[0].apply(
            vec![
                (("far".into(), at("far", "a", 52.60, 13.40)), 1),
                (("near".into(), at("near", "b", 52.501, 13.40)), 1),
                (("mid".into(), at("mid", "a", 52.52, 13.40)), 1),
            ],
            Some(7_000),
        );
        view.writers()[1].apply(no_changes(), Some(9_000));
        let (st, body, text) =
            call(&app, "/v1/vehicles/nearby?lat=52.5&lon=13.4&radius_m=5000").await;
        assert_eq!(st, StatusCode::OK, "{text}");
        assert_eq!(body["as_of"], 7_000);
        let items = body["items"].as_array().unwrap();
        let ids: Vec<&str> = items
            .iter()
            .map(|i| i["vehicle_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["near", "mid"], "nearest first, `far` is 11 km away");
        let d = items[0]["distance_m"].as_f64().unwrap();
        assert!((d - 111.2).abs() < 0.5, "{d}");
        let (_, body, _) = call(
            &app,
            "/v1/vehicles/nearby?lat=52.5&lon=13.4&radius_m=50000&limit=1&tenant=a",
        )
        .await;
        assert_eq!(body["items"][0]["vehicle_id"], "mid");
        assert_eq!(body["items"].as_array().unwrap().len(), 1);
        for uri in [
            "/v1/vehicles/nearby?lon=13.4",
            "/v1/vehicles/nearby?lat=52.5",
            "/v1/vehicles/nearby?lat=95&lon=13.4",
            "/v1/vehicles/nearby?lat=52.5&lon=13.4&radius_m=-1",
            "/v1/vehicles/nearby?lat=52.5&lon=13.4&radius_m=abc",
            "/v1/vehicles/nearby?lat=NaN&lon=13.4",
            "/v1/vehicles/nearby?lat=52.5&lon=13.4&limit=0",
            "/v1/vehicles/nearby?lat=52.5&lon=13.4&colour=red",
        ] {
            let (st, body, text) = call(&app, uri).await;
            assert_eq!(st, StatusCode::BAD_REQUEST, "{uri}: {text}");
            assert_eq!(body["error"]["code"], "bad_request", "{uri}");
        }
    }
}

#[tokio::test]
async fn fuel_efficiency_today_is_the_running_values_of_todays_vehicles() {
    let (app, view, _) = app();
    let day = fleetflow_types::time::parse_date("2025-03-01").unwrap();
    let mut a = state("a", "acme", 52.0, Status::Moving);
    a.fix.ts = day + 3_600_000;
    (a.today_distance_km, a.today_fuel_used_l, a.today_idle_s) = (12.0, 1.5, 90.0);
    let mut b = state("b", "acme", 52.0, Status::Parked);
    b.fix.ts = day + 60_000;
    (b.today_distance_km, b.today_fuel_used_l, b.today_idle_s) = (0.0, 0.0, 0.0);
    // Last seen yesterday: not part of today.
    let mut c = state("c", "acme", 52.0, Status::Offline);
    c.fix.ts = day - 60_000;
    view.writers()[0].apply(
        vec![
            (("a".into(), a), 1),
            (("b".into(), b), 1),
            (("c".into(), c), 1),
        ],
        Some(day + 3_600_000),
    );
    view.writers()[1].apply(no_changes(), Some(day + 3_600_000));
    let (s, v, body) = call(&app, "/v1/fuel-efficiency").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(v["date"], "2025-03-01");
    assert_eq!(v["source"], "running");
    assert_eq!(v["complete"], false);
    assert_eq!(v["as_of"], day + 3_600_000);
    assert_eq!(
        v["items"],
        serde_json::json!([
            {"vehicle_id": "a", "tenant": "acme", "distance_km": 12.0, "fuel_used_l": 1.5,
             "km_per_l": 8.0, "l_per_100km": 12.5, "idle_s": 90.0},
            {"vehicle_id": "b", "tenant": "acme", "distance_km": 0.0, "fuel_used_l": 0.0,
             "km_per_l": null, "l_per_100km": null, "idle_s": 0.0},
        ])
    );
    let (s, _, body) = call(&app, "/v1/fuel-efficiency?date=2025-03-02").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body.contains("after the results' current day 2025-03-01"),
        "{body}"
    );
    // Past days need the lake, which this API has not got.
    let (s, _, _) = call(&app, "/v1/fuel-efficiency?date=2025-02-28").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = call(&app, "/v1/fuel-efficiency?cursor=%%%").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn openapi_describes_every_route_of_the_interface() {
    let (app, _, _) = app();
    let (s, doc, _) = call(&app, "/openapi.json").await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut got: Vec<String> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(p, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| format!("{} {p}", m.to_uppercase()))
        })
        .collect();
    got.sort();
    let mut want = vec![
        "GET /v1/vehicles",
        "GET /v1/vehicles/{id}",
        "GET /v1/vehicles/nearby",
        "GET /v1/vehicles/{id}/history",
        "GET /v1/geofences",
        "GET /v1/geofences/{id}",
        "PUT /v1/geofences/{id}",
        "DELETE /v1/geofences/{id}",
        "GET /v1/geofences/{id}/occupants",
        "GET /v1/geofence-events",
        "GET /v1/fuel-efficiency",
        "GET /v1/stream",
        "GET /v1/ws",
        "GET /metrics",
        "GET /healthz",
        "GET /readyz",
        "GET /openapi.json",
    ];
    want.sort();
    assert_eq!(got, want);
    // Every answer type is a component, and every reference resolves.
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for name in [
        "VehicleState",
        "VehicleListAnswer",
        "NearbyAnswer",
        "HistoryAnswer",
        "FuelAnswer",
        "GeofenceListAnswer",
        "ErrorBody",
    ] {
        assert!(schemas.contains_key(name), "{name}");
    }
    let text = doc.to_string();
    for r in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = r.split('"').next().unwrap();
        assert!(schemas.contains_key(name), "dangling $ref {name}");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test]
async fn history_and_stream_parameters_are_checked_without_a_socket() {
    let (app, view, _) = app();
    view.writers()[0].apply(
        vec![(("a".into(), state("a", "acme", 52.0, Status::Moving)), 1)],
        Some(1),
    );
    for (uri, want) in [
        ("/v1/vehicles/a/history?to=5", "missing field `from`"),
        ("/v1/vehicles/a/history?from=5", "missing field `to`"),
        ("/v1/vehicles/a/history?from=9&to=5", "must be before"),
        (
            "/v1/vehicles/a/history?from=x&to=5",
            "epoch milliseconds or an RFC 3339",
        ),
        (
            "/v1/vehicles/a/history?from=1&to=5&color=red",
            "unknown field",
        ),
        ("/v1/stream?topics=weather", "unknown topic"),
        ("/v1/stream?vehicle=a&bogus=1", "unknown field"),
        ("/v1/ws?topics=", "unknown topic"),
        ("/v1/ws", "not a WebSocket upgrade request"),
    ] {
        let (s, v, body) = call(&app, uri).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(want),
            "{uri}: {body}"
        );
    }
    // Valid parameters, but this API has no lake.
    let (s, v, _) = call(&app, "/v1/vehicles/a/history?from=1&to=5").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(v["error"]["message"].as_str().unwrap().contains("no lake"));
}
