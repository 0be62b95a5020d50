use super::*;
use fleetflow_types::time::{DAY_MS, MINUTE_MS};

const T0: Millis = 1_736_121_600_000; // 2025-01-06T00:00:00Z

fn inc(vid: &str, ts: Millis, lat: f64, speed: Option<f64>) -> IncomingFix {
    let fix = Fix {
        vehicle_id: vid.into(),
        tenant: "t".into(),
        ts,
        lat,
        lon: 13.0,
        speed_kmh: speed,
        heading_deg: None,
        fuel_level_pct: None,
        fuel_used_l: None,
        odometer_km: None,
        ignition: Some(true),
    };
    IncomingFix {
        payload: format!("payload@{ts}").into_bytes().into(),
        fix,
        input: 0,
        position: ts as u64,
        received_at: 0,
        replayed: false,
    }
}

fn config(silence: Option<Silence>) -> TimelineConfig {
    TimelineConfig {
        lateness: 30_000,
        offline_after: 10 * MINUTE_MS,
        tiers: vec![MINUTE_MS, DAY_MS],
        raw: true,
        finals: true,
        silence,
        vote_for: None,
        replay: false,
    }
}

fn timelines_with(cfg: TimelineConfig) -> (Timelines, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new(vec![]));
    (
        Timelines::new(
            cfg,
            Arc::new(VehicleRegistry::default()),
            Arc::new(vec!["in".into()]),
            metrics.clone(),
        ),
        metrics,
    )
}

fn timelines() -> (Timelines, Arc<Metrics>) {
    timelines_with(config(None))
}

fn latest(out: &Outputs, vid: &str) -> Option<VehicleState> {
    out.state
        .iter()
        .rev()
        .find(|((v, _), r)| v == vid && *r > 0)
        .map(|((_, s), _)| VehicleState::clone(s))
}

fn raw_ts(out: &Outputs, vid: &str) -> Vec<Millis> {
    out.raw
        .iter()
        .filter(|f| f.vehicle_id == vid)
        .map(|f| f.ts)
        .collect()
}

#[test]
fn a_fix_below_its_own_vehicles_watermark_is_late_and_changes_nothing() {
    let (mut t, m) = timelines();
    let mut out = Outputs::default();
    t.offer(inc("a", T0 + 60_000, 52.0, Some(10.0)), &mut out);
    // 29 s behind its newest fix: within the lateness.
    t.offer(inc("a", T0 + 31_000, 52.0, Some(10.0)), &mut out);
    assert!(out.dead.is_empty());
    // 31 s behind: late.
    t.offer(inc("a", T0 + 29_000, 52.0, Some(10.0)), &mut out);
    assert_eq!(out.dead.len(), 1);
    assert_eq!(out.dead[0].reason, Reason::Late);
    assert_eq!(out.dead[0].payload, format!("payload@{}", T0 + 29_000));
    assert_eq!(out.dead[0].source, format!("in:{}", T0 + 29_000));
    assert!(
        out.dead[0].detail.contains("watermark"),
        "{}",
        out.dead[0].detail
    );
    assert_eq!(m.dead_letters_of(Reason::Late), 1);
    // Another vehicle far behind is not late: its clock is its own.
    t.offer(inc("b", T0 - DAY_MS, 52.0, Some(10.0)), &mut out);
    assert_eq!(m.dead_letters_of(Reason::Late), 1);
    t.finish(&mut out);
    assert_eq!(raw_ts(&out, "a"), vec![T0 + 31_000, T0 + 60_000]);
    assert_eq!(raw_ts(&out, "b"), vec![T0 - DAY_MS]);
}

#[test]
fn a_clock_an_hour_ahead_costs_no_other_vehicle_a_fix() {
    let (mut t, m) = timelines();
    let mut out = Outputs::default();
    for i in 0..100 {
        let ts = T0 + i * 5_000;
        t.offer(inc("ahead", ts + 3_600_000, 52.0, Some(10.0)), &mut out);
        t.offer(inc("a", ts, 52.0, Some(10.0)), &mut out);
        t.offer(inc("b", ts, 52.1, Some(10.0)), &mut out);
    }
    t.set_clock(T0 + 500_000, &mut out);
    t.finish(&mut out);
    assert_eq!(m.dead_letters_of(Reason::Late), 0);
    assert_eq!(out.raw.len(), 300);
}

#[test]
fn fixes_become_final_as_the_vehicles_own_clock_passes_them() {
    let (mut t, _) = timelines();
    let mut out = Outputs::default();
    t.offer(inc("a", T0 + 5_000, 52.0, Some(0.0)), &mut out);
    t.offer(inc("a", T0 + 20_000, 52.0, Some(0.0)), &mut out);
    assert!(out.raw.is_empty(), "within the lateness of its newest fix");
    t.offer(inc("a", T0 + 36_000, 52.0, Some(0.0)), &mut out);
    assert_eq!(
        raw_ts(&out, "a"),
        vec![T0 + 5_000],
        "watermark 6_000 passed 5_000"
    );
    // The first minute closes once the vehicle's watermark reaches its end.
    t.offer(inc("a", T0 + 89_000, 52.0, Some(0.0)), &mut out);
    assert!(out.rows.is_empty(), "watermark 59 s: the minute is open");
    t.offer(inc("a", T0 + 91_000, 52.001, Some(20.0)), &mut out);
    assert_eq!(out.rows.len(), 1, "watermark 61 s: the minute closed");
    assert_eq!((out.rows[0].window_start, out.rows[0].fixes), (T0, 3));
    // The job clock neither finalizes nor closes anything on a bounded input.
    t.set_clock(T0 + DAY_MS * 3, &mut out);
    assert_eq!(out.rows.len(), 1);
    t.finish(&mut out);
    assert_eq!(out.rows.iter().filter(|r| r.tier == 1).count(), 1);
}

#[test]
fn duplicates_are_dropped_and_the_least_copy_wins_in_any_order() {
    for order in [[0, 1], [1, 0]] {
        let (mut t, m) = timelines();
        let mut out = Outputs::default();
        let copies = [
            inc("a", T0, 52.0, Some(10.0)),
            inc("a", T0, 52.0, Some(11.0)),
        ];
        for i in order {
            t.offer(copies[i].clone(), &mut out);
        }
        t.finish(&mut out);
        assert_eq!(m.duplicates.load(Relaxed), 1);
        assert_eq!(out.raw.len(), 1);
        assert_eq!(out.raw[0].speed_kmh, Some(10.0), "order {order:?}");
        assert!(out.dead.is_empty());
    }
}

#[test]
fn an_implausible_jump_is_rejected_and_the_next_fix_compared_with_the_last_good_one() {
    let (mut t, m) = timelines();
    let mut out = Outputs::default();
    t.offer(inc("a", T0, 52.0, Some(10.0)), &mut out);
    t.offer(inc("a", T0 + 10_000, 52.1, Some(10.0)), &mut out); // 11 km in 10 s
    t.offer(inc("a", T0 + 20_000, 52.0005, Some(10.0)), &mut out);
    t.publish(&mut out);
    assert_eq!(
        latest(&out, "a").unwrap().fix.ts,
        T0 + 20_000,
        "eager state skips the jump"
    );
    t.finish(&mut out);
    assert_eq!(raw_ts(&out, "a"), vec![T0, T0 + 20_000]);
    assert_eq!(m.dead_letters_of(Reason::ImplausibleJump), 1);
    assert_eq!(out.dead[0].payload, format!("payload@{}", T0 + 10_000));
    assert!(
        out.dead[0].detail.contains("km in 10.000 s"),
        "{}",
        out.dead[0].detail
    );
    let minute = out
        .rows
        .iter()
        .find(|r| r.tier == 0 && r.window_start == T0)
        .unwrap();
    assert_eq!(minute.fixes, 2);
    assert!(
        (minute.distance_km - 0.0556).abs() < 0.001,
        "{}",
        minute.distance_km
    );
}

#[test]
fn state_is_eager_and_revised_when_an_earlier_fix_arrives() {
    let (mut t, _) = timelines();
    let mut out = Outputs::default();
    t.offer(inc("a", T0, 52.0, Some(10.0)), &mut out);
    t.offer(inc("a", T0 + 20_000, 52.018, Some(10.0)), &mut out); // 2 km in 20 s: a jump
    t.publish(&mut out);
    assert_eq!(latest(&out, "a").unwrap().fix.ts, T0);
    // Fixes in between (each hop under 1 km) make the later one plausible.
    t.offer(inc("a", T0 + 14_000, 52.0132, Some(10.0)), &mut out);
    t.offer(inc("a", T0 + 7_000, 52.0066, Some(10.0)), &mut out);
    t.publish(&mut out);
    assert_eq!(latest(&out, "a").unwrap().fix.ts, T0 + 20_000);
    let net: isize = out.state.iter().map(|(_, r)| r).sum();
    assert_eq!(net, 1, "one live state per vehicle");
    t.finish(&mut out);
    assert_eq!(out.raw.len(), 4);
    assert!(out.dead.is_empty());
}

#[test]
fn the_job_clock_sets_offline_and_today() {
    let (mut t, _) = timelines();
    let mut out = Outputs::default();
    t.offer(inc("a", T0 + 5_000, 52.0, Some(0.0)), &mut out);
    t.offer(inc("a", T0 + 65_000, 52.001, Some(20.0)), &mut out);
    t.offer(inc("a", T0 + 125_000, 52.002, Some(20.0)), &mut out);
    t.set_clock(T0 + 125_000, &mut out);
    t.publish(&mut out);
    let s = latest(&out, "a").unwrap();
    assert_eq!(s.status, Status::Moving);
    assert!(s.today_distance_km > 0.1, "final segments count today");
    t.set_clock(T0 + 125_000 + 10 * MINUTE_MS + 1, &mut out);
    t.publish(&mut out);
    assert_eq!(latest(&out, "a").unwrap().status, Status::Offline);
    // Next day: today's sums reset.
    t.set_clock(T0 + DAY_MS, &mut out);
    t.publish(&mut out);
    assert_eq!(latest(&out, "a").unwrap().today_distance_km, 0.0);
}

const SILENCE: Silence = Silence {
    quiet_after: 30_000,
    close_after: 3_600_000,
};

#[test]
fn on_unbounded_inputs_a_silent_vehicles_fixes_become_final_and_its_windows_close() {
    let (mut t, m) = timelines_with(config(Some(SILENCE)));
    let mut out = Outputs::default();
    t.set_clock(T0, &mut out);
    t.offer(inc("a", T0 + 1_000, 52.0, Some(0.0)), &mut out);
    t.offer(inc("a", T0 + 2_000, 52.0, Some(0.0)), &mut out);
    t.set_clock(T0 + 30_000, &mut out);
    assert!(out.raw.is_empty(), "heard 30 s ago: not silent yet");
    t.set_clock(T0 + 30_001, &mut out);
    assert_eq!(
        raw_ts(&out, "a"),
        vec![T0 + 1_000, T0 + 2_000],
        "silent: all final"
    );
    assert!(out.rows.is_empty(), "its windows stay open");
    // A store-and-forward upload of what it recorded meanwhile is not late.
    t.set_clock(T0 + 40 * MINUTE_MS, &mut out);
    for k in 1..=10 {
        t.offer(inc("a", T0 + 2_000 + k * 60_000, 52.0, Some(0.0)), &mut out);
    }
    assert_eq!(m.dead_letters_of(Reason::Late), 0);
    // Silent for an hour: its windows close with the job clock.
    t.set_clock(T0 + 40 * MINUTE_MS + 3_600_001, &mut out);
    assert_eq!(raw_ts(&out, "a").len(), 12);
    assert_eq!(out.rows.iter().filter(|r| r.tier == 0).count(), 11);
    // ... and a fix from before that is late.
    t.offer(inc("a", T0 + 20 * MINUTE_MS, 52.0, Some(0.0)), &mut out);
    assert_eq!(m.dead_letters_of(Reason::Late), 1);
}

#[test]
fn a_vehicle_that_keeps_reporting_is_never_silent_however_far_behind() {
    let (mut t, m) = timelines_with(config(Some(SILENCE)));
    let mut out = Outputs::default();
    for i in 0..1_000 {
        let now = T0 + i * 5_000;
        t.set_clock(now, &mut out);
        // A day behind the fleet, still reporting every 5 s.
        t.offer(inc("lagging", now - DAY_MS, 52.0, Some(0.0)), &mut out);
    }
    t.finish(&mut out);
    assert_eq!(m.dead_letters_of(Reason::Late), 0);
    assert_eq!(out.raw.len(), 1_000);
}

#[test]
fn a_geofence_change_takes_effect_at_its_time_in_each_vehicles_own_time() {
    let (mut t, _) = timelines();
    let mut out = Outputs::default();
    t.set_clock(T0 + 100_000, &mut out);
    for k in 0..10 {
        t.offer(inc("a", T0 + 80_000 + k * 5_000, 52.0, Some(0.0)), &mut out);
    }
    // Ahead of the fleet: its watermark is past the change already.
    t.offer(inc("ahead", T0 + 3_600_000, 52.0, Some(0.0)), &mut out);
    let before = out.finals.len();
    t.register_change(1, Some(T0 + 100_000), &mut out);
    assert_eq!(
        out.finals[before..],
        [
            Finalized::Change {
                seq: 1,
                at: Some(T0 + 100_000)
            },
            Finalized::Apply { slot: 1, seq: 1 }
        ],
        "the vehicle ahead takes it at once"
    );
    t.finish(&mut out);
    let order: Vec<String> = out
        .finals
        .iter()
        .filter_map(|f| match f {
            Finalized::Fix(p) if p.vehicle_id == "a" => {
                Some(format!("{}@{}", p.ts - T0, p.version))
            }
            Finalized::Apply { slot: 0, seq } => Some(format!("apply {seq}")),
            _ => None,
        })
        .collect();
    assert_eq!(
        order,
        [
            "80000@0", "85000@0", "90000@0", "95000@0", "apply 1", "100000@1", "105000@1",
            "110000@1", "115000@1", "120000@1", "125000@1"
        ]
    );
    assert_eq!(t.queue_lengths().2, 0, "every vehicle took it");
}

/// A whole timeline snapshot as these tests write it: the head they pass (a number and a
/// time), the worker's geofence changes, its vehicles and the replay positions.
#[derive(serde::Deserialize)]
struct Whole {
    head: (u32, Option<Millis>),
    changes: (Vec<(u64, Millis)>, u64),
    vehicles: Vec<VehicleSnapshot>,
    replay_from: Vec<(u32, u64)>,
}

/// A snapshot written a slice at a time while fixes keep arriving, windows close and new
/// vehicles appear holds exactly the state of when it began, and its encoding continues
/// the caller's head.
#[test]
fn an_interleaved_snapshot_holds_the_state_when_it_began() {
    use crate::sliced::SNAPSHOT_CHUNK;
    use proptest::prelude::*;
    let encoded = |mut v: Vec<VehicleSnapshot>| {
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v.iter()
            .map(|v| postcard::to_stdvec(v).unwrap())
            .collect::<Vec<_>>()
    };
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(24));
    runner
        .run(&(any::<u64>(), 0usize..400), |(seed, before)| {
            let mut next = crate::sliced::below(seed);
            let (mut t, _) = timelines_with(config(Some(SILENCE)));
            let mut out = Outputs::default();
            let mut clock = T0;
            let mut step =
                |t: &mut Timelines, out: &mut Outputs, next: &mut dyn FnMut(u64) -> u64| {
                    clock += next(3_000) as Millis;
                    let v = format!("v{}", next(300));
                    let ts = clock - next(20_000) as Millis;
                    t.offer(inc(&v, ts, 52.0 + next(100) as f64 * 1e-4, Some(30.0)), out);
                    if next(10) == 0 {
                        t.set_clock(clock - 30_000, out);
                    }
                };
            for _ in 0..before {
                step(&mut t, &mut out, &mut next);
            }
            let reference = encoded(t.state_now());
            t.begin_snapshot(postcard::to_stdvec(&(7u32, Some(T0))).unwrap());
            let blob = loop {
                if let Some(v) = t.continue_snapshot(Some(std::time::Duration::ZERO)) {
                    break v;
                }
                for _ in 0..next(40) {
                    step(&mut t, &mut out, &mut next);
                }
            };
            prop_assert!(!t.snapshotting(), "written once, then done");
            prop_assert!(
                blob.chunks().len() > 1 || blob.len() < SNAPSHOT_CHUNK,
                "written in chunks"
            );
            let whole: Whole = crate::sliced::decode(&blob.contiguous()).unwrap();
            prop_assert_eq!(whole.head, (7, Some(T0)));
            prop_assert_eq!(whole.changes, (vec![], 0));
            prop_assert_eq!(encoded(whole.vehicles), reference);
            prop_assert_eq!(whole.replay_from, vec![], "inputs that cannot replay");
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_batch_offered_at_once_gives_what_its_fixes_offered_one_by_one_give() {
    use proptest::prelude::*;
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(32));
    runner
        .run(&(any::<u64>(), 1usize..600), |(seed, n)| {
            let mut next = crate::sliced::below(seed);
            // Out of order, duplicated, jumping and replayed fixes of vehicles that appear
            // for the first time inside a batch, cut into batches of random sizes.
            let mut batches: Vec<Vec<IncomingFix>> = vec![vec![]];
            for i in 0..n {
                let ts = T0 + i as Millis * 700 - next(40_000) as Millis;
                let lat = 52.0 + next(50) as f64 * if next(20) == 0 { 1.0 } else { 1e-4 };
                let mut f = inc(&format!("v{}", next(40)), ts, lat, Some(next(60) as f64));
                f.replayed = next(30) == 0;
                batches.last_mut().expect("one").push(f);
                if next(50) == 0 {
                    batches.push(vec![]);
                }
            }
            let run = |at_once: bool| {
                let (mut t, m) = timelines();
                let mut out = Outputs::default();
                for (k, batch) in batches.iter().enumerate() {
                    if at_once {
                        t.offer_batch(batch.clone(), &mut out);
                    } else {
                        batch.iter().for_each(|f| t.offer(f.clone(), &mut out));
                    }
                    t.set_clock(T0 + k as Millis * 1_000, &mut out);
                    t.publish(&mut out);
                }
                t.finish(&mut out);
                let counts = (m.accepted.load(Relaxed), m.duplicates.load(Relaxed));
                (format!("{out:?}"), counts, t.vehicles())
            };
            let (one_by_one, at_once) = (run(false), run(true));
            prop_assert!(one_by_one.0.contains("Fix(") && one_by_one.1 .0 > 0);
            prop_assert_eq!(at_once, one_by_one);
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_restored_vehicle_keeps_its_own_clock() {
    let (mut t, m) = timelines();
    let mut out = Outputs::default();
    t.offer(inc("a", T0 + 100_000, 52.0, Some(0.0)), &mut out);
    let snap = t.state_now();
    let (mut r, m2) = timelines();
    r.restore(snap, vec![], 0, Some(T0));
    r.offer(inc("a", T0 + 60_000, 52.0, Some(0.0)), &mut out);
    assert_eq!(
        m2.dead_letters_of(Reason::Late),
        1,
        "below its restored watermark"
    );
    assert_eq!(m.dead_letters_of(Reason::Late), 0);
}

/// A vehicle and its pending fixes as `(ts, input, position)`.
type VehiclePending = (String, Vec<(Millis, u32, u64)>);

/// Every vehicle's pending fixes, by vehicle.
fn pending_of(t: &Timelines) -> Vec<VehiclePending> {
    let mut v: Vec<VehiclePending> = t
        .state_now()
        .into_iter()
        .map(|v| {
            let p = v
                .pending
                .iter()
                .map(|p| (p.fix.ts, p.input, p.position))
                .collect();
            (v.id.to_string(), p)
        })
        .collect();
    v.sort();
    v
}

/// On replayable inputs a snapshot holds no pending fix, only where each input's pending
/// fixes begin; restoring it and reading every input again from there (the fixes before
/// the checkpoint's position marked replayed, the inputs interleaved differently) then
/// continuing gives exactly the outputs and state of the run that never stopped: late
/// fixes, duplicates (of different content), job clock moves and disorder included.
#[test]
fn a_snapshot_of_replayable_inputs_is_restored_by_reading_them_again() {
    // Without silence rules: their timers follow processing time, which this harness
    // does not model (the end-to-end crash tests cover live restores).
    let cfg = TimelineConfig {
        replay: true,
        ..config(None)
    };
    for seed in [1u64, 7, 42, 1234, 99_999] {
        let mut rng = seed;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        // Three inputs; each event: (input, position, fix) or a job clock move.
        let mut positions = [0u64; 3];
        let mut clock = T0;
        let mut events: Vec<Result<IncomingFix, Millis>> = Vec::new();
        for _ in 0..3_000 {
            clock += next(400) as Millis;
            let input = next(3) as u32;
            let v = format!("v{}", next(40));
            // Mostly recent, some far behind (late), some repeats of a ts (duplicates).
            let ts = match next(20) {
                0 => clock - 60_000 - next(60_000) as Millis,
                1 | 2 => clock - (clock % 1_000) - 2_000,
                _ => clock - next(20_000) as Millis,
            };
            let mut i = inc(
                &v,
                ts,
                52.0 + next(100) as f64 * 1e-4,
                Some(next(60) as f64),
            );
            i.input = input;
            i.position = positions[input as usize];
            positions[input as usize] += 1;
            events.push(Ok(i));
            if next(25) == 0 {
                events.push(Err(clock - 20_000));
            }
        }
        let apply = |t: &mut Timelines, e: &Result<IncomingFix, Millis>, out: &mut Outputs| match e
        {
            Ok(i) => t.offer(i.clone(), out),
            Err(c) => t.set_clock(*c, out),
        };
        let (mut whole_run, _) = timelines_with(cfg.clone());
        let mut a = Outputs::default();
        let cut = 1_000 + next(1_500) as usize;
        for e in &events[..cut] {
            apply(&mut whole_run, e, &mut a);
        }
        let (raw_at, rows_at, dead_at) = (a.raw.len(), a.rows.len(), a.dead.len());
        let pending_at = pending_of(&whole_run);
        let clock_at = whole_run.clock();
        whole_run.begin_snapshot(postcard::to_stdvec(&(0u32, clock_at)).unwrap());
        let blob = whole_run.continue_snapshot(None).unwrap();
        for e in &events[cut..] {
            apply(&mut whole_run, e, &mut a);
        }
        whole_run.finish(&mut a);

        let snap: Whole = crate::sliced::decode(&blob.contiguous()).unwrap();
        assert!(snap.vehicles.iter().all(|v| v.pending.is_empty()));
        assert!(!snap.replay_from.is_empty(), "some fixes were pending");
        let (mut restored, m) = timelines_with(cfg.clone());
        restored.restore(snap.vehicles, snap.changes.0, snap.changes.1, clock_at);
        let mut b = Outputs::default();
        // Read again: every input from its replay position up to the cut, the inputs
        // dealt in another order than they first arrived in.
        let from = |input: u32| snap.replay_from.iter().find(|r| r.0 == input).map(|r| r.1);
        let mut replayed: Vec<IncomingFix> = events[..cut]
            .iter()
            .filter_map(|e| e.as_ref().ok())
            .filter(|i| from(i.input).is_some_and(|f| i.position >= f))
            .cloned()
            .map(|mut i| {
                i.replayed = true;
                i
            })
            .collect();
        replayed.sort_by_key(|i| (std::cmp::Reverse(i.input), i.position));
        for i in replayed {
            restored.offer(i, &mut b);
        }
        assert!(
            b.raw.is_empty() && b.rows.is_empty() && b.dead.is_empty(),
            "a replay emits nothing"
        );
        assert_eq!(m.dead_letters_of(Reason::Late), 0, "nor counts");
        let pending_after = pending_of(&restored);
        assert_eq!(pending_after, pending_at, "seed {seed}: the pending fixes");
        for e in &events[cut..] {
            apply(&mut restored, e, &mut b);
        }
        restored.finish(&mut b);
        // The same outputs, in whatever order the vehicles were visited.
        let sorted_debug = |mut v: Vec<String>| {
            v.sort();
            v
        };
        let raw = |r: &[Fix]| sorted_debug(r.iter().map(|f| format!("{f:?}")).collect());
        let only = |x: &[String], y: &[String]| -> Vec<String> {
            x.iter().filter(|e| !y.contains(e)).cloned().collect()
        };
        let (rb, ra) = (raw(&b.raw), raw(&a.raw[raw_at..]));
        assert!(
            rb == ra,
            "seed {seed}: raw after the restore only {:?}, without the restore only {:?}",
            only(&rb, &ra),
            only(&ra, &rb)
        );
        let rows = |r: &[TierRow]| sorted_debug(r.iter().map(|x| format!("{x:?}")).collect());
        assert_eq!(rows(&b.rows), rows(&a.rows[rows_at..]), "seed {seed}: rows");
        let dead = |d: &[DeadLetter]| {
            sorted_debug(
                d.iter()
                    .map(|d| format!("{:?} {} {}", d.reason, d.payload, d.position))
                    .collect(),
            )
        };
        assert_eq!(
            dead(&b.dead),
            dead(&a.dead[dead_at..]),
            "seed {seed}: dead letters"
        );
    }
}
