//! Tenants and tokens: a token of one tenant never sees another's vehicles, geofences or
//! events, on any route or stream; 401, 403 and 429 where they belong.

mod common;

use common::{request, serve, serve_with, vehicle, Sse};
use fleetflow_query_api::stream::StreamConfig;
use fleetflow_types::geofence::Geofence;
use fleetflow_types::records::{GeofenceCause, GeofenceEvent, GeofenceEventKind, OccupancyChange};
use std::sync::Arc;
use std::time::Duration;

const TOKENS: &[(&str, &str)] = &[("t-acme", "acme"), ("t-globex", "globex"), ("t-admin", "*")];

fn fence(id: &str, tenant: Option<&str>) -> Arc<Geofence> {
    let mut props = serde_json::json!({"radius_m": 50_000.0});
    if let Some(t) = tenant {
        props["tenant"] = t.into();
    }
    let f = serde_json::json!({"type": "Feature", "properties": props,
        "geometry": {"type": "Point", "coordinates": [13.4, 52.5]}});
    Arc::new(Geofence::from_feature(&f, Some(id), None, id).unwrap())
}

fn event(fence: &str, v: &str, tenant: &str, ts: i64) -> GeofenceEvent {
    GeofenceEvent {
        geofence_id: fence.into(),
        vehicle_id: v.into(),
        tenant: tenant.into(),
        kind: GeofenceEventKind::Enter,
        ts,
        cause: GeofenceCause::Fix,
    }
}

async fn fleet() -> common::Served {
    let fences = [
        fence("acme-depot", Some("acme")),
        fence("globex-depot", Some("globex")),
        fence("city", None),
    ];
    let s = serve_with(1000, StreamConfig::default(), TOKENS, Some(1000), &fences).await;
    let day = fleetflow_types::time::parse_date("2025-03-01").unwrap();
    for (v, t) in [
        ("acme-1", "acme"),
        ("acme-2", "acme"),
        ("globex-1", "globex"),
        ("globex-2", "globex"),
    ] {
        s.vehicles.writers()[0].apply(
            vec![((v.into(), vehicle(v, t, day + 3_600_000)), 1)],
            Some(day + 3_600_000),
        );
    }
    let occ = |fence: &str, v: &str| OccupancyChange {
        geofence: fence.into(),
        vehicle: v.into(),
        entered_at: day,
        diff: 1,
    };
    s.geofences.writers()[0].apply(
        vec![
            occ("city", "acme-1"),
            occ("city", "globex-1"),
            occ("globex-depot", "globex-2"),
        ],
        &[
            event("city", "acme-1", "acme", day),
            event("city", "globex-1", "globex", day),
            event("globex-depot", "globex-2", "globex", day),
        ],
        vec![],
        Some(day + 3_600_000),
    );
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_token_never_sees_another_tenant() {
    let s = fleet().await;
    let routes = [
        "/v1/vehicles",
        "/v1/vehicles?tenant=acme",
        "/v1/vehicles?bbox=-180,-90,180,90",
        "/v1/vehicles/nearby?lat=52.5&lon=13.4&radius_m=20000000",
        "/v1/vehicles/acme-1",
        "/v1/geofences",
        "/v1/geofences/city",
        "/v1/geofences/acme-depot",
        "/v1/geofences/city/occupants",
        "/v1/geofence-events",
        "/v1/geofence-events?geofence=city",
        "/v1/fuel-efficiency",
        "/v1/fuel-efficiency?date=2025-03-01",
    ];
    for path in routes {
        let (status, _, body) = request(&s.addr, "GET", path, Some("t-acme"), "").await;
        assert_eq!(status, 200, "{path}: {body}");
        let global = path == "/v1/geofences/city";
        assert!(global || body.contains("acme"), "{path}: {body}");
        assert!(!body.contains("globex"), "{path} leaks: {body}");
        // The control: a token for every tenant sees both.
        let (status, _, body) = request(&s.addr, "GET", path, Some("t-admin"), "").await;
        assert_eq!(status, 200, "{path}: {body}");
        if !path.contains("acme") && !global {
            assert!(body.contains("globex"), "{path} for *: {body}");
        }
    }
    // Another tenant's resources do not exist for this token; asking for another tenant
    // is forbidden; changing a geofence that is not the tenant's is forbidden.
    for (method, path, body, want) in [
        ("GET", "/v1/vehicles/globex-1", "", 404),
        (
            "GET",
            "/v1/vehicles/globex-1/history?from=0&to=1000",
            "",
            404,
        ),
        ("GET", "/v1/geofences/globex-depot", "", 404),
        ("GET", "/v1/geofences/globex-depot/occupants", "", 404),
        ("DELETE", "/v1/geofences/globex-depot", "", 404),
        ("DELETE", "/v1/geofences/city", "", 403),
        ("GET", "/v1/vehicles?tenant=globex", "", 403),
        (
            "GET",
            "/v1/vehicles/nearby?lat=1&lon=2&tenant=globex",
            "",
            403,
        ),
        ("GET", "/v1/geofences?tenant=globex", "", 403),
        ("GET", "/v1/fuel-efficiency?tenant=globex", "", 403),
        ("GET", "/v1/stream?tenant=globex", "", 403),
        (
            "PUT",
            "/v1/geofences/new",
            r#"{"type":"Feature","properties":{"radius_m":10,"tenant":"globex"},"geometry":{"type":"Point","coordinates":[1,2]}}"#,
            403,
        ),
        (
            "PUT",
            "/v1/geofences/globex-depot",
            r#"{"type":"Feature","properties":{"radius_m":10},"geometry":{"type":"Point","coordinates":[1,2]}}"#,
            403,
        ),
    ] {
        let (status, _, text) = request(&s.addr, method, path, Some("t-acme"), body).await;
        assert_eq!(status, want, "{method} {path}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(v["error"]["message"].is_string(), "{text}");
    }
    // Without a token, or with an unknown one: 401 naming the scheme. Health, metrics and
    // the OpenAPI description stay open.
    let (status, head, _) = request(&s.addr, "GET", "/v1/vehicles", None, "").await;
    assert_eq!(status, 401);
    assert!(
        head.to_lowercase().contains("www-authenticate: bearer"),
        "{head}"
    );
    let (status, _, _) = request(&s.addr, "GET", "/v1/vehicles", Some("nope"), "").await;
    assert_eq!(status, 401);
    let (status, _, _) = request(&s.addr, "GET", "/healthz", None, "").await;
    assert_eq!(status, 200);

    // The stream: snapshot and changes of the token's tenant only.
    let mut st = Sse::connect(&s.addr, "/v1/stream?access_token=t-acme", &[]).await;
    assert_eq!(st.status, 200);
    let snap = st.next().await.unwrap();
    let text = snap.data.to_string();
    assert!(
        text.contains("acme-1") && !text.contains("globex"),
        "{text}"
    );
    let unauthorized = Sse::connect(&s.addr, "/v1/stream", &[]).await;
    assert_eq!(unauthorized.status, 401);
    let day = fleetflow_types::time::parse_date("2025-03-01").unwrap();
    for (v, t) in [("globex-1", "globex"), ("acme-2", "acme")] {
        s.vehicles.writers()[0].apply(
            vec![((v.into(), vehicle(v, t, day + 7_200_000)), 1)],
            Some(day + 7_200_000),
        );
    }
    s.geofences.writers()[0].apply(
        vec![],
        &[
            event("city", "globex-2", "globex", day + 7_200_000),
            event("city", "acme-2", "acme", day + 7_200_001),
        ],
        vec![],
        Some(day + 7_200_000),
    );
    let first = st.next().await.unwrap();
    assert_eq!(first.data["vehicle"]["vehicle_id"], "acme-2", "{first:?}");
    let second = st.next().await.unwrap();
    assert_eq!(second.data["event"]["vehicle_id"], "acme-2", "{second:?}");
    // Nothing of globex was queued in between: the ids skip its changes.
    let (a, b) = (
        common::seq(first.id.as_deref().unwrap()),
        common::seq(second.id.as_deref().unwrap()),
    );
    assert_eq!((b - a), 2, "globex's event sits between them, unseen");
    // WebSocket: the same, with the token in the Authorization header.
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}/v1/ws?topics=vehicles", s.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Authorization", "Bearer t-acme".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let text = msg.into_text().unwrap();
    assert!(
        text.contains("acme-2") && !text.contains("globex"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_over_its_rate_limit_gets_429_with_retry_after() {
    let s = serve(10, StreamConfig::default(), TOKENS, Some(3)).await;
    let mut limited = None;
    for _ in 0..10 {
        let (status, head, body) =
            request(&s.addr, "GET", "/v1/vehicles", Some("t-acme"), "").await;
        if status == 429 {
            limited = Some((head, body));
            break;
        }
        assert_eq!(status, 200, "{body}");
    }
    let (head, body) = limited.expect("the fourth request within a second is limited");
    let retry: u64 = head
        .lines()
        .find_map(|l| {
            l.to_lowercase()
                .strip_prefix("retry-after: ")
                .map(str::to_string)
        })
        .expect("Retry-After")
        .trim()
        .parse()
        .unwrap();
    assert!((1..=1).contains(&retry), "{head}");
    assert!(body.contains("rate_limited"), "{body}");
    // Another token has its own budget.
    let (status, _, _) = request(&s.addr, "GET", "/v1/vehicles", Some("t-globex"), "").await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _, _) = request(&s.addr, "GET", "/v1/vehicles", Some("t-acme"), "").await;
    assert_eq!(status, 200, "the budget refills");
}
