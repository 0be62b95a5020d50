//! The main operators driven in isolation (`timely::execute_directly`), their outputs
//! captured and compared with the sequential logic they wrap, however the input is
//! interleaved and batched over epochs.

use crate::geofence::fences::{arrange_fences, ChangeMark};
use crate::geofence::{
    render_geofences, FenceIndex, Finalized, FixPoint, GeoOutputs, Geofencing, ViewSink,
};
use crate::operator::{render_timeline, route, CoreConfig, Progress};
use crate::timeline::{Outputs, TimelineConfig, Timelines};
use fleetflow_runtime::metrics::Metrics;
use fleetflow_types::fix::Fix;
use fleetflow_types::records::{
    GeofenceChange, GeofenceEvent, IncomingFix, InputReport, InputState, Reason,
};
use fleetflow_types::registry::VehicleRegistry;
use fleetflow_types::time::{Millis, DAY_MS, MINUTE_MS};
use fleetflow_types::CompactString;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use timely::dataflow::operators::capture::{Capture, Event};
use timely::dataflow::operators::probe::Handle as Probe;
use timely::dataflow::operators::{Input, Probe as _};

/// Everything a captured stream carried, in the order it arrived.
fn drain<D>(rx: std::sync::mpsc::Receiver<Event<u64, Vec<D>>>) -> Vec<D> {
    rx.try_iter()
        .flat_map(|e| match e {
            Event::Messages(_, d) => d,
            Event::Progress(_) => Vec::new(),
        })
        .collect()
}

const T0: Millis = 1_736_121_600_000; // 2025-01-06T00:00:00Z

fn config() -> TimelineConfig {
    TimelineConfig {
        lateness: 30_000,
        offline_after: 10 * MINUTE_MS,
        tiers: vec![MINUTE_MS, 60 * MINUTE_MS, DAY_MS],
        raw: true,
        finals: true,
        silence: None,
        vote_for: None,
        replay: false,
    }
}

/// A deterministic shuffle (xorshift), so a failure can be replayed.
fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut s = seed | 1;
    for i in (1..v.len()).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        v.swap(i, (s % (i as u64 + 1)) as usize);
    }
}

/// 12 vehicles driving north from one point, one fix every 5 s for 20 minutes; each
/// vehicle's fixes arrive up to 20 s out of order; vehicle 3 sends one fix far behind
/// its own clock (late) and vehicle 5 one teleport (an implausible jump). The arrival
/// order interleaves the vehicles by `seed`, keeping each vehicle's own order.
fn input(seed: u64) -> Vec<IncomingFix> {
    let mut per_vehicle: Vec<Vec<IncomingFix>> = Vec::new();
    for v in 0..12u32 {
        let id = format!("V{v:02}");
        let mut fixes = Vec::new();
        let mut lat = 41.15 + v as f64 * 0.001;
        for i in 0..240i64 {
            let ts = T0 + i * 5_000;
            // Driving (about 16 km/h north) and standing, in phases of 200 s.
            let moving = (i / 40 + v as i64) % 3 != 0;
            if moving {
                lat += 0.0002;
            }
            fixes.push(fix(
                &id,
                ts,
                lat,
                if moving { 40.0 } else { 0.0 },
                i as f64 * 0.01,
            ));
        }
        // Out of order within the lateness: swap neighbours 4 fixes (20 s) apart.
        for i in (0..fixes.len() - 4).step_by(9) {
            fixes.swap(i, i + 4);
        }
        if v == 3 {
            let late = fix(&id, T0 + 60_000, 41.153, 0.0, 0.5);
            fixes.insert(200, late);
        }
        if v == 5 {
            // 800 km north in 7 s, after its last fix.
            fixes.push(fix(&id, T0 + 1_202_000, 48.85, 0.0, 6.0));
        }
        per_vehicle.push(fixes);
    }
    // Interleave: a shuffled sequence of vehicle picks, each taking that vehicle's next fix.
    let mut picks: Vec<usize> = per_vehicle
        .iter()
        .enumerate()
        .flat_map(|(v, f)| std::iter::repeat_n(v, f.len()))
        .collect();
    shuffle(&mut picks, seed);
    let mut next = vec![0usize; per_vehicle.len()];
    picks
        .into_iter()
        .map(|v| {
            next[v] += 1;
            per_vehicle[v][next[v] - 1].clone()
        })
        .collect()
}

fn fix(id: &str, ts: Millis, lat: f64, speed: f64, fuel: f64) -> IncomingFix {
    IncomingFix {
        fix: Fix {
            vehicle_id: id.into(),
            tenant: "acme".into(),
            ts,
            lat,
            lon: -8.61,
            speed_kmh: Some(speed),
            heading_deg: None,
            fuel_level_pct: None,
            fuel_used_l: Some(fuel),
            odometer_km: None,
            ignition: Some(true),
        },
        payload: format!("{id}@{ts}").into_bytes().into(),
        input: 0,
        position: ts as u64,
        received_at: 0,
        replayed: false,
    }
}

/// What the timeline operator (or the logic) produced, in a canonical order.
#[derive(Debug, PartialEq)]
struct Results {
    raw: Vec<String>,
    rows: Vec<String>,
    dead: Vec<(String, Reason, String)>,
    state: BTreeMap<CompactString, String>,
    /// Per vehicle, the final fixes in the order geofencing gets them.
    finals: BTreeMap<CompactString, Vec<Millis>>,
}

fn canonical(
    raw: Vec<Fix>,
    rows: Vec<fleetflow_types::records::TierRow>,
    dead: Vec<fleetflow_types::records::DeadLetter>,
    state: Vec<(
        (
            CompactString,
            std::sync::Arc<fleetflow_types::records::VehicleState>,
        ),
        isize,
    )>,
    finals: &[Finalized],
) -> Results {
    let mut raw: Vec<String> = raw.iter().map(|f| format!("{f:?}")).collect();
    raw.sort();
    let mut rows: Vec<String> = rows.iter().map(|r| format!("{r:?}")).collect();
    rows.sort();
    let mut dead: Vec<_> = dead
        .into_iter()
        .map(|d| (d.payload.clone(), d.reason, d.detail.clone()))
        .collect();
    dead.sort();
    // Consolidate the state collection: every vehicle ends with exactly one state.
    let mut acc: BTreeMap<(CompactString, String), isize> = BTreeMap::new();
    for ((id, s), r) in state {
        *acc.entry((id, format!("{s:?}"))).or_default() += r;
    }
    let mut state = BTreeMap::new();
    for ((id, s), r) in acc {
        match r {
            0 => {}
            1 => assert!(state.insert(id, s).is_none(), "two states for one vehicle"),
            r => panic!("{id}: state with multiplicity {r}"),
        }
    }
    let mut per: BTreeMap<CompactString, Vec<Millis>> = BTreeMap::new();
    for f in finals {
        if let Finalized::Fix(p) = f {
            per.entry(p.vehicle_id.clone()).or_default().push(p.ts);
        }
    }
    Results {
        raw,
        rows,
        dead,
        state,
        finals: per,
    }
}

/// The sequential logic over the same arrival order, ended at the operator's end clock.
fn sequential(fixes: &[IncomingFix], end_clock: Millis) -> (Results, Vec<Finalized>) {
    let metrics = Arc::new(Metrics::new(vec![]));
    let mut t = Timelines::new(
        config(),
        Arc::new(VehicleRegistry::default()),
        Arc::new(vec!["in".into()]),
        metrics,
    );
    let mut out = Outputs::default();
    for f in fixes {
        t.offer(f.clone(), &mut out);
    }
    t.finish(&mut out);
    t.end_clock(end_clock, &mut out);
    t.publish(&mut out);
    let finals = out.finals.clone();
    let r = canonical(out.raw, out.rows, out.dead, out.state, &finals);
    (r, finals)
}

/// Runs the timeline operator over `fixes`, `per_epoch` fixes an epoch, with `workers`
/// timely workers in this process; returns its results, its final fixes and the end clock.
fn run_timeline(
    fixes: Vec<IncomingFix>,
    per_epoch: usize,
    workers: usize,
    pace: crate::pace::PublishPace,
) -> (Results, Vec<Finalized>, Millis) {
    let fixes = Arc::new(fixes);
    let got = timely::execute(timely::Config::process(workers), move |worker| {
        let cfg = CoreConfig {
            timeline: config(),
            registry: Arc::new(VehicleRegistry::default()),
            metrics: Arc::new(Metrics::new(vec![])),
            input_names: Arc::new(vec!["in".into()]),
            publish: pace,
            clock_every: Duration::from_millis(1),
            checkpoints: None,
            restore: None,
        };
        let probe = Probe::new();
        let (mut fix_in, mut report_in, mut change_in, captured) = worker.dataflow(|scope| {
            let (fix_in, fixes) = scope.new_input::<Vec<Vec<IncomingFix>>>();
            let (report_in, reports) = scope.new_input::<Vec<InputReport>>();
            let (change_in, changes) = scope.new_input::<Vec<ChangeMark>>();
            let core = render_timeline(fixes, reports, changes, cfg);
            let raw = core.raw.probe_with(&probe);
            (
                fix_in,
                report_in,
                change_in,
                (
                    raw.capture(),
                    core.rows.capture(),
                    core.dead_letters.capture(),
                    core.state.inner.capture(),
                    core.finals.capture(),
                    core.progress.capture(),
                ),
            )
        });
        // Worker 0 reads the one input, in epochs of `per_epoch` fixes.
        if worker.index() == 0 {
            for (epoch, chunk) in fixes.chunks(per_epoch).enumerate() {
                // In batches of one worker each, as a source hands them over.
                let mut batches: Vec<Vec<IncomingFix>> = vec![Vec::new(); worker.peers()];
                for f in chunk {
                    batches[(route(f) % worker.peers() as u64) as usize].push(f.clone());
                }
                for b in batches.into_iter().filter(|b| !b.is_empty()) {
                    fix_in.send(b);
                }
                let next = epoch as u64 + 1;
                fix_in.advance_to(next);
                report_in.advance_to(next);
                change_in.advance_to(next);
                worker.step_while(|| probe.less_than(fix_in.time()));
            }
            report_in.send(InputReport {
                input: 0,
                progress: None,
                state: InputState::Finished,
            });
        }
        drop((fix_in, report_in, change_in));
        while worker.step_or_park(None) {}
        let (raw, rows, dead, state, finals, progress) = captured;
        let state: Vec<_> = drain(state).into_iter().map(|(d, _t, r)| (d, r)).collect();
        let progress: Vec<Progress> = drain(progress);
        (
            drain(raw),
            drain(rows),
            drain(dead),
            state,
            drain(finals),
            progress,
        )
    })
    .expect("timely runs")
    .join();
    let (mut raw, mut rows, mut dead, mut state, mut finals, mut progress) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for w in got {
        let (a, b, c, d, e, f) = w.expect("worker ran");
        raw.extend(a);
        rows.extend(b);
        dead.extend(c);
        state.extend(d);
        finals.extend(e);
        progress.extend(f);
    }
    let ends: Vec<Millis> = progress
        .iter()
        .filter(|p| p.end)
        .map(|p| p.clock.expect("the inputs have valid fixes"))
        .collect();
    assert_eq!(ends.len(), workers, "every worker reports the end once");
    assert!(ends.windows(2).all(|w| w[0] == w[1]), "one end clock");
    let r = canonical(raw, rows, dead, state, &finals);
    (r, finals, ends[0])
}

#[test]
fn the_timeline_operator_equals_its_logic_however_interleaved_and_batched() {
    // A short fixed pace, and one that counts every worker as catching up (any rate) so
    // that it publishes at the longer interval.
    let fixed = crate::pace::PublishPace::fixed(Duration::from_millis(1));
    let busy = crate::pace::PublishPace {
        every: Duration::from_millis(1),
        busy_every: Duration::from_millis(4),
        busy_rate: 0.0,
        busy_after: Duration::ZERO,
    };
    for (seed, per_epoch, workers, pace) in [
        (1, 1, 1, fixed),
        (2, 37, 2, fixed),
        (3, 4096, 1, fixed),
        (4, 5, 2, fixed),
        (5, 7, 2, busy),
        (6, 512, 1, busy),
    ] {
        let fixes = input(seed);
        let (got, _, end) = run_timeline(fixes.clone(), per_epoch, workers, pace);
        let (want, _) = sequential(&fixes, end);
        assert_eq!(
            got.dead.iter().map(|(_, r, _)| *r).collect::<Vec<_>>(),
            vec![Reason::Late, Reason::ImplausibleJump],
            "seed {seed}: {:?}",
            got.dead
        );
        assert_eq!(got.raw.len(), 12 * 240, "seed {seed}");
        assert_eq!(got.state.len(), 12);
        assert!(got.rows.len() > 12 * 20, "1m, 1h and 1d rows");
        assert_eq!(
            got, want,
            "seed {seed}, {per_epoch} a batch, {workers} workers"
        );
    }
}

use crate::geofence::test_circle as circle;

/// Runs the geofence operator over `finals`, `per_epoch` items an epoch.
fn run_geofences(
    finals: Vec<Finalized>,
    index: Arc<FenceIndex>,
    per_epoch: usize,
) -> Vec<GeofenceEvent> {
    run_geofences_with(finals, Vec::new(), index, per_epoch)
}

/// [`run_geofences`], with runtime `changes` on the change input in the first epoch (the
/// marks in `finals` name them).
fn run_geofences_with(
    finals: Vec<Finalized>,
    changes: Vec<GeofenceChange>,
    index: Arc<FenceIndex>,
    per_epoch: usize,
) -> Vec<GeofenceEvent> {
    timely::execute_directly(move |worker| {
        let (probe, fence_probe) = (Probe::new(), Probe::new());
        let (mut input, events) = worker.dataflow(|scope| {
            let (input, stream) = scope.new_input::<Vec<Finalized>>();
            // The changes at epochs 1, 2, ... (one an epoch, as the geofence input makes
            // them), through the fence set's arrangement.
            let (mut change_input, change_stream) = scope.new_input::<Vec<GeofenceChange>>();
            for c in changes {
                change_input.advance_to(change_input.time() + 1);
                change_input.send(c);
            }
            let fences = arrange_fences(change_stream, &index);
            fences.stream.clone().probe_with(&fence_probe);
            let (events, _) = render_geofences(
                stream,
                fences.stream,
                (index, 0),
                10 * MINUTE_MS,
                None,
                ViewSink::Local(|u: &mut Vec<_>, _: &[GeofenceEvent]| u.clear()),
            );
            (input, events.probe_with(&probe).capture())
        });
        // The timeline marks a change only once the fence set's batch holding it is out.
        worker.step_while(|| !fence_probe.done());
        for (epoch, chunk) in finals.chunks(per_epoch).enumerate() {
            for f in chunk {
                input.send(f.clone());
            }
            input.advance_to(epoch as u64 + 1);
            worker.step_while(|| probe.less_than(input.time()));
        }
        drop(input);
        while worker.step_or_park(None) {}
        drain(events)
    })
}

/// A runtime change reaches the operator on the change input; the timeline's mark names
/// it, and fixes on the new version are checked against it.
#[test]
fn the_geofence_operator_takes_a_change_from_its_input_at_its_mark() {
    let index = Arc::new(FenceIndex::new([circle("start", 41.1555, -8.61, 2000.0)]));
    let added = GeofenceChange {
        seq: 1,
        id: "added".into(),
        geofence: Some(circle("added", 41.17, -8.61, 300.0)),
        at: Some(1_000),
    };
    let fix = |ts, version| {
        Finalized::Fix(FixPoint {
            slot: 0,
            vehicle_id: "v".into(),
            tenant: "acme".into(),
            ts,
            lat: 41.17,
            lon: -8.61,
            version,
        })
    };
    // Before the change in its own time (inside "start" only), then the mark, its taking
    // (inside "added" too: it enters at the change's time), and a fix after it.
    let finals = vec![
        fix(500, 0),
        Finalized::Change {
            seq: 1,
            at: Some(1_000),
        },
        Finalized::Apply { slot: 0, seq: 1 },
        fix(2_000, 1),
    ];
    let kinds = |events: &[GeofenceEvent]| {
        events
            .iter()
            .map(|e| (e.geofence_id.to_string(), e.kind.as_str(), e.ts))
            .collect::<Vec<_>>()
    };
    for per_epoch in [1, 2, 4] {
        let events = run_geofences_with(
            finals.clone(),
            vec![added.clone()],
            index.clone(),
            per_epoch,
        );
        assert_eq!(
            kinds(&events),
            [
                ("start".to_string(), "enter", 500),
                ("added".to_string(), "enter", 1_000)
            ],
            "{per_epoch} a batch"
        );
    }
}

#[test]
fn the_geofence_operator_equals_its_logic_however_batched() {
    let fixes = input(9);
    let pace = crate::pace::PublishPace::fixed(Duration::from_millis(1));
    let (_, finals, _) = run_timeline(fixes, 64, 1, pace);
    // Two circles on the vehicles' way north: one they start in and leave after more
    // than the dwell time, one they pass through.
    let fences = vec![
        circle("start", 41.1555, -8.61, 2000.0),
        circle("mid", 41.17, -8.61, 300.0),
    ];
    let index = Arc::new(FenceIndex::new(fences));
    let mut geo = Geofencing::new(index.clone(), 0, 10 * MINUTE_MS);
    let mut out = GeoOutputs::default();
    for f in finals.iter().cloned() {
        match f {
            Finalized::Fix(p) => geo.on_fix(p, &mut out),
            Finalized::Change { .. } => unreachable!("no runtime changes here"),
            Finalized::Apply { slot, seq } => geo.apply(slot, seq, &mut out),
            Finalized::Taken(seq) => geo.taken(seq),
            Finalized::Clock(_) => {}
        }
    }
    let key = |e: &GeofenceEvent| {
        (
            e.vehicle_id.clone(),
            e.ts,
            e.geofence_id.to_string(),
            e.kind.as_str(),
        )
    };
    let mut want: Vec<_> = out.events.iter().map(key).collect();
    want.sort();
    let kinds: std::collections::BTreeSet<_> = want.iter().map(|k| k.3).collect();
    assert!(
        kinds.contains("enter") && kinds.contains("exit") && kinds.contains("dwell"),
        "{kinds:?}"
    );
    for per_epoch in [1, 13, 100_000] {
        let mut got: Vec<_> = run_geofences(finals.clone(), index.clone(), per_epoch)
            .iter()
            .map(key)
            .collect();
        got.sort();
        assert_eq!(got, want, "{per_epoch} a batch");
    }
}
