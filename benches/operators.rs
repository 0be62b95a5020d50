//! The per-vehicle operators without timely: `cargo bench --bench operators`.
//!
//! `timeline/offer_publish` is the whole per-vehicle path (dedup, lateness against each
//! vehicle's own clock, implausible jumps, segments, three window tiers, vehicle state)
//! for 100k fixes of 1,000 vehicles, moving the job clock and publishing every 5,000 fixes. `geofencing/{0,1000,100000}` is geofence
//! membership and events for the same fixes with that many random geofences (50-500 m
//! across over the generator's area). `fence_changes/{copy,layers}` makes 301 versions of
//! a fence set of 100,000 geofences, one runtime change each, by copying the index (the
//! reference) and by layers.

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fleetflow_connectors::generator::Generator;
use fleetflow_connectors::intake::decode;
use fleetflow_connectors::source::{Polled, Source};
use fleetflow_dataflows::segments::segment;
use fleetflow_dataflows::timeline::{Outputs, TimelineConfig, Timelines};
use fleetflow_runtime::metrics::Metrics;
use fleetflow_types::config::GeneratorSpec;
use fleetflow_types::records::IncomingFix;
use fleetflow_types::registry::VehicleRegistry;
use fleetflow_types::time::HumanDuration;
use std::hint::black_box;
use std::sync::Arc;

fn fixes(n: usize) -> Vec<IncomingFix> {
    let spec = GeneratorSpec {
        vehicles: 1000,
        duration: Some(HumanDuration::from_millis(36_000_000)),
        ..GeneratorSpec::default()
    };
    let mut g = Generator::new(&spec, 0, 1);
    let mut out = Vec::with_capacity(n);
    let now = fleetflow_types::time::now_ms();
    while out.len() < n {
        if let Polled::Finished = g
            .poll(0, 4096, &mut |l, pos, _| {
                let fix = decode(l, now, None).unwrap();
                out.push(IncomingFix {
                    fix,
                    payload: bytes::Bytes::copy_from_slice(l),
                    input: 0,
                    position: pos,
                    received_at: now,
                    replayed: false,
                });
                true
            })
            .unwrap()
        {
            break;
        }
    }
    out.truncate(n);
    out
}

fn bench(c: &mut Criterion) {
    let input = fixes(100_000);
    let mut group = c.benchmark_group("timeline");
    group.throughput(Throughput::Elements(input.len() as u64));
    group.sample_size(20);
    group.bench_function("offer_publish", |b| {
        b.iter_batched(
            || input.clone(),
            |input| {
                let cfg = TimelineConfig {
                    lateness: 30_000,
                    offline_after: 600_000,
                    tiers: vec![60_000, 3_600_000, 86_400_000],
                    raw: true,
                    finals: true,
                    silence: None,
                    vote_for: None,
                    replay: false,
                };
                let mut t = Timelines::new(
                    cfg,
                    Arc::new(VehicleRegistry::default()),
                    Arc::new(vec!["bench".into()]),
                    Arc::new(Metrics::new(vec![])),
                );
                let mut out = Outputs::default();
                let mut max_ts = i64::MIN;
                for (i, inc) in input.into_iter().enumerate() {
                    max_ts = max_ts.max(inc.fix.ts);
                    t.offer(inc, &mut out);
                    if i % 5_000 == 4_999 {
                        t.set_clock(max_ts, &mut out);
                        t.publish(&mut out);
                        out.finals.clear();
                        out.raw.clear();
                        out.rows.clear();
                        out.state.clear();
                    }
                }
                t.finish(&mut out);
                black_box(out.rows.len())
            },
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
    let pairs: Vec<_> = input
        .windows(2)
        .take(10_000)
        .map(|w| (w[0].fix.clone(), w[1].fix.clone()))
        .collect();
    let mut group = c.benchmark_group("segments");
    group.throughput(Throughput::Elements(pairs.len() as u64));
    group.bench_function("segment", |b| {
        b.iter(|| {
            for (a, x) in &pairs {
                black_box(segment(black_box(a), black_box(x), Some(60.0)));
            }
        })
    });
    group.finish();
}

fn bench_geofencing(c: &mut Criterion) {
    use fleetflow_dataflows::geofence::{FenceIndex, FixPoint, GeoOutputs, Geofencing};
    let points: Vec<FixPoint> = fixes(100_000)
        .iter()
        .scan(std::collections::HashMap::new(), |slots, f| {
            let n = slots.len() as u32;
            let slot = *slots.entry(f.fix.vehicle_id.clone()).or_insert(n);
            Some(FixPoint::of(&f.fix, slot, 0))
        })
        .collect();
    let mut group = c.benchmark_group("geofencing");
    group.sample_size(10);
    group.throughput(Throughput::Elements(points.len() as u64));
    for n in [0usize, 1000, 100_000] {
        let loaded = fleetflow_types::geofence::load(&common::fences(n), None).unwrap();
        let index = Arc::new(FenceIndex::new(loaded.geofences.into_iter().map(Arc::new)));
        group.bench_function(n.to_string(), |b| {
            b.iter_batched(
                || (points.clone(), Geofencing::new(index.clone(), 0, 600_000)),
                |(points, mut g)| {
                    let mut out = GeoOutputs::default();
                    for p in points {
                        g.on_fix(p, &mut out);
                        if out.events.len() > 4096 {
                            out.events.clear();
                            out.view.clear();
                        }
                    }
                    (out, g)
                },
                criterion::BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

/// 301 runtime changes (each replacing one of 100,000 geofences) made into versions of
/// the fence set: `copy` clones the whole index per change, as versions were made before
/// the layers (the reference); `layers` is what geofencing does.
fn bench_fence_changes(c: &mut Criterion) {
    use fleetflow_dataflows::geofence::index::covering;
    use fleetflow_dataflows::geofence::layers::FenceLayers;
    use fleetflow_dataflows::geofence::FenceIndex;
    let loaded = fleetflow_types::geofence::load(&common::fences(100_000), None).unwrap();
    let fences: Vec<_> = loaded.geofences.into_iter().map(Arc::new).collect();
    // More changes than a top layer holds, so that the layers fold once.
    let changed: Vec<_> = fences.iter().step_by(333).cloned().collect();
    let index = Arc::new(FenceIndex::new(fences));
    let mut group = c.benchmark_group("fence_changes");
    group.sample_size(10);
    group.throughput(Throughput::Elements(changed.len() as u64));
    group.bench_function("copy", |b| {
        b.iter(|| {
            let mut version = index.clone();
            for g in &changed {
                let mut next = (*version).clone();
                next.remove(&g.id);
                next.insert(g.clone());
                version = Arc::new(next);
            }
            black_box(version.len())
        })
    });
    group.bench_function("layers", |b| {
        b.iter(|| {
            let mut version = FenceLayers::new(index.clone());
            for g in &changed {
                version = version.changed(&g.id, true, Some(g.clone()), &covering(g));
            }
            black_box(version.len())
        })
    });
    group.finish();
}

criterion_group!(benches, bench, bench_geofencing, bench_fence_changes);
criterion_main!(benches);
