//! Live streams over real sockets: snapshot, changes, resume, reset, lag, limits, fan-out.

mod common;

use common::{seq, serve, vehicle, Sse};
use fleetflow_query_api::stream::StreamConfig;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn publish(s: &common::Served, id: &str, tenant: &str, ts: i64) {
    s.vehicles.writers()[0].apply(vec![((id.into(), vehicle(id, tenant, ts)), 1)], Some(ts));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_snapshot_then_changes_and_resume_after_last_event_id() {
    let s = serve(50, StreamConfig::default(), &[], None).await;
    for (i, v) in ["v1", "v2", "v3"].iter().enumerate() {
        publish(&s, v, "acme", 1_000 + i as i64);
    }
    let mut a = Sse::connect(&s.addr, "/v1/stream?topics=vehicles", &[]).await;
    assert_eq!(a.status, 200);
    assert!(a.head.contains("text/event-stream"), "{}", a.head);
    let snap = a.next().await.unwrap();
    assert_eq!(snap.event, "snapshot");
    assert_eq!(snap.id.as_deref(), Some("42-3"));
    assert_eq!(snap.data["as_of"], 1_002);
    let ids: Vec<&str> = snap.data["vehicles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["vehicle_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["v1", "v2", "v3"]);

    for t in 0..10 {
        publish(&s, "v2", "acme", 2_000 + t);
    }
    for want in 4..=8 {
        let e = a.next().await.unwrap();
        assert_eq!(e.event, "vehicle");
        assert_eq!(e.id.as_deref(), Some(format!("42-{want}").as_str()));
        assert_eq!(e.data["id"], e.id.clone().unwrap().as_str());
        assert_eq!(e.data["vehicle"]["ts"], 2_000 + want as i64 - 4);
        assert_eq!(e.data["as_of"], 2_000 + want as i64 - 4);
    }
    drop(a);
    for t in 10..15 {
        publish(&s, "v3", "acme", 2_000 + t);
    }
    // Resume: exactly the changes after 8 (9..=18), no snapshot.
    let mut b = Sse::connect(
        &s.addr,
        "/v1/stream?topics=vehicles",
        &[("Last-Event-ID", "42-8")],
    )
    .await;
    for want in 9..=18u64 {
        let e = b.next().await.unwrap();
        assert_eq!(e.event, "vehicle", "{e:?}");
        assert_eq!(seq(e.id.as_deref().unwrap()), want);
        let (v, ts) = if want <= 13 {
            ("v2", 2_000 + want as i64 - 4)
        } else {
            ("v3", 2_000 + want as i64 - 4)
        };
        assert_eq!(e.data["vehicle"]["vehicle_id"], v);
        assert_eq!(e.data["vehicle"]["ts"], ts);
    }
    // Nothing more is pending: the next event is the next change.
    publish(&s, "v1", "acme", 3_000);
    let e = b.next().await.unwrap();
    assert_eq!(seq(e.id.as_deref().unwrap()), 19);
    drop(b);

    // The replay buffer keeps 50: after 60 more changes, 8 is too old.
    for t in 0..60 {
        publish(&s, "v1", "acme", 4_000 + t);
    }
    for (resume, why) in [
        ("42-8", "no longer in the replay buffer"),
        ("7-8", "earlier run"),
        ("42-1000", "newer than any change"),
        ("bogus", "not an id"),
    ] {
        let mut c = Sse::connect(
            &s.addr,
            &format!("/v1/stream?topics=vehicles&last_event_id={resume}"),
            &[],
        )
        .await;
        let reset = c.next().await.unwrap();
        assert_eq!(reset.event, "reset", "{resume}");
        assert!(
            reset.data["message"].as_str().unwrap().contains(why),
            "{reset:?}"
        );
        let snap = c.next().await.unwrap();
        assert_eq!(snap.event, "snapshot");
        assert_eq!(snap.id.as_deref(), Some("42-79"));
        assert_eq!(snap.data["vehicles"].as_array().unwrap().len(), 3);
    }
    // Filters: one vehicle; unknown parameters and topics are 400s.
    let mut only = Sse::connect(&s.addr, "/v1/stream?vehicle=v3", &[]).await;
    let snap = only.next().await.unwrap();
    assert_eq!(snap.data["vehicles"].as_array().unwrap().len(), 1);
    publish(&s, "v1", "acme", 5_000);
    publish(&s, "v3", "acme", 5_001);
    let e = only.next().await.unwrap();
    assert_eq!(e.data["vehicle"]["vehicle_id"], "v3");
    assert_eq!(seq(e.id.as_deref().unwrap()), 81);
    for bad in [
        "/v1/stream?topics=weather",
        "/v1/stream?topics=",
        "/v1/stream?color=red",
    ] {
        let r = Sse::connect(&s.addr, bad, &[]).await;
        assert_eq!(r.status, 400, "{bad}");
        let body = r.body().await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "bad_request", "{body}");
    }
}

/// Publishes `PUBLISHED` states of 37 vehicles (`v0`..`v36`) in the background, pausing now
/// and then so that streams join and read while it runs.
fn publish_changes(s: &common::Served) -> tokio::task::JoinHandle<()> {
    let vehicles = s.vehicles.clone();
    tokio::task::spawn_blocking(move || {
        for t in 0..PUBLISHED as i64 {
            let id = format!("v{}", t % 37);
            vehicles.writers()[0].apply(
                vec![((id.as_str().into(), vehicle(&id, "acme", t)), 1)],
                Some(t),
            );
            if t % 50 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    })
}

/// How many changes [`publish_changes`] makes.
const PUBLISHED: u64 = 3_000;

/// Every vehicle of the view, as the API writes it, by id.
fn view_as_json(s: &common::Served) -> BTreeMap<String, serde_json::Value> {
    let (all, _) = s.vehicles.scan(|_| true);
    all.iter()
        .map(|v| {
            let json = serde_json::to_value(v).unwrap();
            (v.fix.vehicle_id.to_string(), json)
        })
        .collect()
}

/// The id and the vehicles (by id) of a stream's first message, its snapshot.
fn vehicles_of_snapshot(snap: &common::Event) -> (u64, BTreeMap<String, serde_json::Value>) {
    assert_eq!(snap.event, "snapshot");
    let map = snap.data["vehicles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["vehicle_id"].as_str().unwrap().to_string(), v.clone()))
        .collect();
    (seq(snap.id.as_deref().unwrap()), map)
}

/// A snapshot followed by the changes after it equals the view, for clients that join at
/// any moment while changes are being applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_plus_changes_equals_the_view_for_clients_joining_mid_stream() {
    let s = serve(100_000, StreamConfig::default(), &[], None).await;
    let publisher = publish_changes(&s);
    let mut clients = Vec::new();
    for i in 0..6u64 {
        tokio::time::sleep(Duration::from_millis(7 * i)).await;
        let mut c = Sse::connect(&s.addr, "/v1/stream?topics=vehicles", &[]).await;
        clients.push(tokio::spawn(async move {
            let snap = c.next().await.unwrap();
            let (mut last, mut map) = vehicles_of_snapshot(&snap);
            while last < PUBLISHED {
                let e = c.next().await.unwrap();
                let n = seq(e.id.as_deref().unwrap());
                assert_eq!(n, last + 1, "a gap or a repeat");
                last = n;
                let v = &e.data["vehicle"];
                map.insert(v["vehicle_id"].as_str().unwrap().to_string(), v.clone());
            }
            map
        }));
    }
    publisher.await.unwrap();
    let want = view_as_json(&s);
    for c in clients {
        let got = tokio::time::timeout(Duration::from_secs(30), c)
            .await
            .expect("the client got every change")
            .unwrap();
        assert_eq!(got, want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflated_stream_ends_at_the_view_with_fewer_messages_and_resumes_exactly() {
    let s = serve(100_000, StreamConfig::default(), &[], None).await;
    let publisher = publish_changes(&s);
    let path = "/v1/stream?topics=vehicles&conflate_ms=20";
    let mut clients = Vec::new();
    for resume_after in [None, Some(5usize)] {
        let addr = s.addr.clone();
        let mut c = Sse::connect(&addr, path, &[]).await;
        clients.push(tokio::spawn(async move {
            let snap = c.next().await.unwrap();
            let (mut last, mut map) = vehicles_of_snapshot(&snap);
            let mut messages = 0;
            while last < PUBLISHED {
                if resume_after == Some(messages) {
                    // Gone, then back with the last id it processed.
                    let id = format!(
                        "{}-{last}",
                        snap.id.as_deref().unwrap().split('-').next().unwrap()
                    );
                    c = Sse::connect(&addr, path, &[("Last-Event-ID", &id)]).await;
                }
                let e = c.next().await.unwrap();
                let n = seq(e.id.as_deref().unwrap());
                assert!(n > last, "a repeat: {n} after {last}");
                last = n;
                messages += 1;
                let v = &e.data["vehicle"];
                map.insert(v["vehicle_id"].as_str().unwrap().to_string(), v.clone());
            }
            (map, messages)
        }));
    }
    publisher.await.unwrap();
    let want = view_as_json(&s);
    for c in clients {
        let (got, messages) = tokio::time::timeout(Duration::from_secs(30), c)
            .await
            .expect("the client reached the last change")
            .unwrap();
        assert_eq!(got, want);
        assert!(messages < 1_500, "{messages} messages for 3,000 changes");
    }
    // Out of range: a 400 naming the parameter.
    let bad = Sse::connect(&s.addr, "/v1/stream?conflate_ms=0", &[]).await;
    assert_eq!(bad.status, 400);
    assert!(bad.body().await.contains("conflate_ms"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_answers_503_and_frees_with_the_stream() {
    let cfg = StreamConfig {
        max_streams: 2,
        ..StreamConfig::default()
    };
    let s = serve(100, cfg, &[], None).await;
    let a = Sse::connect(&s.addr, "/v1/stream", &[]).await;
    let _b = Sse::connect(&s.addr, "/v1/stream", &[]).await;
    assert_eq!(s.state.open_streams(), 2);
    let c = Sse::connect(&s.addr, "/v1/stream", &[]).await;
    assert_eq!(c.status, 503);
    let body = c.body().await;
    assert!(body.contains("the limit is 2"), "{body}");
    drop(a);
    // The stream ends once the server notices the closed socket (at the next write: the
    // forwarder notices the dropped queue at the next change or keep-alive).
    publish(&s, "v1", "acme", 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = Sse::connect(&s.addr, "/v1/stream", &[]).await;
        if d.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed stream's slot came back"
        );
        publish(&s, "v1", "acme", 2);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 1,000 clients each get every change of 200 changes/s for 10 s (200,000 deliveries/s)
/// while one client that never reads is told it lagged and cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_to_1000_clients_while_a_stalled_one_is_cut_off() {
    const CLIENTS: usize = 1000;
    const CHANGES: u64 = 2000;
    let _ = rlimit::increase_nofile_limit(8192);
    let cfg = StreamConfig {
        max_streams: CLIENTS + 10,
        queue: 512,
        cutoff_grace: Duration::from_secs(1),
        ..StreamConfig::default()
    };
    let s = serve(10_000, cfg, &[], None).await;
    // The stalled client: a small receive window, and it never reads.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stalled = sock.connect(s.addr.parse().unwrap()).await.unwrap();
    let stalled = Sse::on(stalled, "/v1/stream?topics=vehicles", &[]).await;
    assert_eq!(stalled.status, 200);

    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let mut c = Sse::connect(&s.addr, "/v1/stream?topics=vehicles", &[]).await;
        assert_eq!(c.status, 200);
        clients.push(tokio::spawn(async move {
            let snap = c.next().await.unwrap();
            assert_eq!(snap.event, "snapshot");
            let mut last = seq(snap.id.as_deref().unwrap());
            let mut got = 0;
            while got < CHANGES {
                let Some(e) = c.next().await else {
                    return Err(format!("closed after {got}"));
                };
                if e.event != "vehicle" {
                    return Err(format!("{e:?} after {got}"));
                }
                let n = seq(e.id.as_deref().unwrap());
                if n != last + 1 {
                    return Err(format!("{n} after {last}"));
                }
                last = n;
                got += 1;
            }
            // Still connected: the stream count below tells the stalled one apart.
            Ok((got, c))
        }));
    }
    assert_eq!(s.state.open_streams(), CLIENTS + 1);
    let started = Instant::now();
    let vehicles = s.vehicles.clone();
    // 2 changes every 10 ms (a larger state makes the stalled socket fill sooner).
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for t in 0..(CHANGES / 2) as i64 {
        tick.tick().await;
        let batch = (0..2)
            .map(|k| {
                let id = format!("vehicle-{k}");
                ((id.as_str().into(), vehicle(&id, "acme", t)), 1)
            })
            .collect();
        vehicles.writers()[0].apply(batch, Some(t));
    }
    let published = started.elapsed();
    let mut delivered = 0;
    let mut connected = Vec::new();
    for c in clients {
        let (got, c) = tokio::time::timeout(Duration::from_secs(60), c)
            .await
            .expect("every client got every change in time")
            .unwrap()
            .expect("no client lost a change");
        delivered += got;
        connected.push(c);
    }
    let elapsed = started.elapsed();
    assert_eq!(delivered, CHANGES * CLIENTS as u64);
    eprintln!(
        "fan-out: {delivered} deliveries, changes published over {published:?}, all received after {elapsed:?}"
    );
    // The stalled client was cut off: its slot is free, and its socket ends (after what
    // the kernel had buffered) without the whole stream.
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.state.open_streams() != CLIENTS {
        assert!(Instant::now() < deadline, "the stalled stream still runs");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut stalled = stalled;
    let mut seen = 0;
    let drained = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(e) = stalled.next().await {
            if e.event == "vehicle" {
                seen += 1;
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the stalled connection was closed");
    assert!(
        seen < CHANGES,
        "the stalled client cannot have received everything ({seen})"
    );
    drop(connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_subscribes_resumes_and_answers_bad_messages() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let s = serve(100, StreamConfig::default(), &[], None).await;
    publish(&s, "v1", "acme", 1_000);
    publish(&s, "v2", "globex", 1_001);
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/ws", s.addr))
        .await
        .unwrap();
    let next = async |ws: &mut tokio_tungstenite::WebSocketStream<_>| -> serde_json::Value {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .expect("a message in time")
            {
                Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
                Some(Ok(_)) => continue,
                other => panic!("{other:?}"),
            }
        }
    };
    // Nothing arrives before a subscription; a bad one is answered, the socket stays.
    ws.send(Message::text(r#"{"subscribe": {"topics": ["weather"]}}"#))
        .await
        .unwrap();
    let e = next(&mut ws).await;
    assert_eq!(e["type"], "error");
    assert!(e["message"].as_str().unwrap().contains("weather"), "{e}");
    ws.send(Message::text("not json")).await.unwrap();
    assert_eq!(next(&mut ws).await["type"], "error");

    ws.send(Message::text(
        r#"{"subscribe": {"topics": ["vehicles"], "tenant": "acme"}}"#,
    ))
    .await
    .unwrap();
    let snap = next(&mut ws).await;
    assert_eq!(snap["type"], "snapshot");
    assert_eq!(snap["id"], "42-2");
    assert_eq!(snap["vehicles"].as_array().unwrap().len(), 1);
    publish(&s, "v2", "globex", 2_000);
    publish(&s, "v1", "acme", 2_001);
    let e = next(&mut ws).await;
    assert_eq!(e["type"], "vehicle");
    assert_eq!(e["id"], "42-4", "the other tenant's change is filtered out");
    assert_eq!(e["vehicle"]["ts"], 2_001);

    // Resume in a new subscription on the same socket: the live one delivers 5 and 6;
    // resuming after 5 delivers 6 again.
    publish(&s, "v1", "acme", 2_002);
    publish(&s, "v1", "acme", 2_003);
    assert_eq!(next(&mut ws).await["id"], "42-5");
    assert_eq!(next(&mut ws).await["id"], "42-6");
    ws.send(Message::text(
        r#"{"subscribe": {"topics": ["vehicles"], "tenant": "acme"}, "resume": "42-5"}"#,
    ))
    .await
    .unwrap();
    let e = next(&mut ws).await;
    assert_eq!(e["id"], "42-6");
    assert_eq!(e["vehicle"]["ts"], 2_003);
    ws.close(None).await.unwrap();

    // Query parameters subscribe at once; bad ones are a 400 before the upgrade.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/v1/ws?topics=vehicles&vehicle=v2",
        s.addr
    ))
    .await
    .unwrap();
    let snap = next(&mut ws).await;
    assert_eq!(snap["vehicles"][0]["vehicle_id"], "v2");
    let err = tokio_tungstenite::connect_async(format!("ws://{}/v1/ws?topics=x", s.addr))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
}
