//! Intake decoding throughput: `cargo bench --bench decode`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fleetflow_connectors::generator::Generator;
use fleetflow_connectors::intake::{decode, encode};
use fleetflow_connectors::source::{Polled, Source};
use fleetflow_types::config::GeneratorSpec;
use fleetflow_types::time::HumanDuration;
use std::hint::black_box;

fn lines(n: usize) -> Vec<Vec<u8>> {
    let spec = GeneratorSpec {
        vehicles: 1000,
        duration: Some(HumanDuration::from_millis(3_600_000)),
        ..GeneratorSpec::default()
    };
    let mut g = Generator::new(&spec, 0, 1);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        if let Polled::Finished = g
            .poll(0, 4096, &mut |l, _, _| {
                out.push(l.to_vec());
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
    let lines = lines(10_000);
    let now = fleetflow_types::time::now_ms();
    let mut group = c.benchmark_group("intake");
    group.throughput(Throughput::Elements(lines.len() as u64));
    group.bench_function("decode", |b| {
        b.iter(|| {
            for l in &lines {
                black_box(decode(black_box(l), now, None).unwrap());
            }
        })
    });
    let fixes: Vec<_> = lines
        .iter()
        .map(|l| decode(l, now, None).unwrap())
        .collect();
    group.bench_function("encode", |b| {
        let mut buf = Vec::with_capacity(256);
        b.iter(|| {
            for f in &fixes {
                buf.clear();
                encode(black_box(f), &mut buf);
            }
        })
    });
    let junk: Vec<Vec<u8>> = (0..1000)
        .map(|i| format!("{{\"vehicle_id\":\"V{i}\",\"ts\":17,\"lat\":1,\"lon\":2}}").into_bytes())
        .collect();
    group.throughput(Throughput::Elements(junk.len() as u64));
    group.bench_function("reject_invalid", |b| {
        b.iter(|| {
            for l in &junk {
                black_box(decode(black_box(l), now, None).unwrap_err());
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
