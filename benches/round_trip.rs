//! Round trip of one `apply` on a warm pool.
use criterion::{criterion_group, criterion_main, Criterion};

fn id(x: u64) -> u64 {
    x
}

fn apply_round_trip(c: &mut Criterion) {
    let pool = procpool::ProcessPool::new(1).unwrap();
    c.bench_function("process_pool_apply", |b| {
        b.iter(|| pool.apply_blocking(id, 1).unwrap())
    });
}

criterion_group!(benches, apply_round_trip);
criterion_main!(benches);
