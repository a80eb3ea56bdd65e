//! The map engine against its peers, in one run: default (adaptive) chunking
//! next to hand-picked chunk sizes and rayon's `par_iter`.
//!
//! `cargo bench --bench map`. Python's `Pool.map` on the same workloads:
//! `python3 scripts/python_peers.py`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures::executor::block_on;
use futures::TryStreamExt;
use procpool::{ProcessPool, ThreadPool};
use rayon::prelude::*;

#[path = "support/peers.rs"]
mod peers;
use peers::*;

const WORKERS: usize = 2;

fn trivial_items(c: &mut Criterion) {
    let procs = ProcessPool::new(WORKERS).unwrap();
    let threads = ThreadPool::new(WORKERS).unwrap();
    let rayon = rayon::ThreadPoolBuilder::new()
        .num_threads(WORKERS)
        .build()
        .unwrap();
    let n = 1_000_000u64;
    let mut g = c.benchmark_group("map_1m_trivial");
    g.sample_size(10).throughput(Throughput::Elements(n));
    g.bench_function("process_pool_default", |b| {
        b.iter(|| {
            let v: Vec<u64> = block_on(procs.map(square, 0..n).try_collect()).unwrap();
            black_box(v)
        })
    });
    g.bench_function("thread_pool_default", |b| {
        b.iter(|| {
            let v: Vec<u64> = block_on(threads.map(square, 0..n).try_collect()).unwrap();
            black_box(v)
        })
    });
    g.bench_function("rayon_par_iter", |b| {
        b.iter(|| {
            black_box(rayon.install(|| (0..n).into_par_iter().map(square).collect::<Vec<_>>()))
        })
    });
    g.finish();
}

fn skewed_fib(c: &mut Criterion) {
    let procs = ProcessPool::new(WORKERS).unwrap();
    let rayon = rayon::ThreadPoolBuilder::new()
        .num_threads(WORKERS)
        .build()
        .unwrap();
    let inputs: Vec<u32> = (1..=38).rev().collect();
    let mut g = c.benchmark_group("map_skewed_fib_38_to_1");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.bench_function("process_pool_default", |b| {
        b.iter(|| {
            let v: Vec<u64> = block_on(procs.map(fib, inputs.clone()).try_collect()).unwrap();
            black_box(v)
        })
    });
    for size in [1, 2, 4] {
        g.bench_with_input(
            BenchmarkId::new("process_pool_chunk", size),
            &size,
            |b, &size| {
                b.iter(|| {
                    let v: Vec<u64> = block_on(
                        procs
                            .map(fib, inputs.clone())
                            .chunk_size(size)
                            .try_collect(),
                    )
                    .unwrap();
                    black_box(v)
                })
            },
        );
    }
    g.bench_function("rayon_par_iter", |b| {
        b.iter(|| {
            black_box(rayon.install(|| inputs.par_iter().map(|&n| fib(n)).collect::<Vec<_>>()))
        })
    });
    g.finish();
}

fn uniform_factorization(c: &mut Criterion) {
    let procs = ProcessPool::new(WORKERS).unwrap();
    let threads = ThreadPool::new(WORKERS).unwrap();
    let mut g = c.benchmark_group("map_uniform_factorization");
    g.sample_size(10);
    for count in [20_000u64, 200_000] {
        let inputs: Vec<u64> = (10_000_000..10_000_000 + count).collect();
        g.throughput(Throughput::Elements(count));
        g.bench_with_input(BenchmarkId::new("serial", count), &inputs, |b, inputs| {
            b.iter(|| black_box(inputs.iter().map(|&n| factorize(n)).collect::<Vec<_>>()))
        });
        g.bench_with_input(
            BenchmarkId::new("process_pool_default", count),
            &inputs,
            |b, inputs| {
                b.iter(|| {
                    let v: Vec<Vec<u64>> =
                        block_on(procs.map(factorize, inputs.clone()).try_collect()).unwrap();
                    black_box(v)
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("thread_pool_default", count),
            &inputs,
            |b, inputs| {
                b.iter(|| {
                    let v: Vec<Vec<u64>> =
                        block_on(threads.map(factorize, inputs.clone()).try_collect()).unwrap();
                    black_box(v)
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, trivial_items, skewed_fib, uniform_factorization);
criterion_main!(benches);
