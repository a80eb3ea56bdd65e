//! procpool against its peers, side by side in one criterion run.
//!
//! Groups:
//! - `round_trip`: one trivial call on a warm pool, against the floor (a raw
//!   pipe ping-pong with a `cat` child) and the usual in-process and
//!   out-of-process peers.
//! - `round_trip_one_cpu`: the same with the benchmark and every pool pinned to
//!   one CPU (Linux), free of cross-CPU wake-up latency.
//! - `many_small`: 10,000 trivial tasks spawned, then all awaited (2 workers).
//! - `bytes_64mib`: a 64 MiB `ByteBuf` sent to a worker and back, against the
//!   same bytes copied through a `cat` child.
//! - `pool_start`: a 2-worker `ProcessPool` built and its first task done.
//!
//! Run with `cargo bench --bench round_trip` (a few minutes) or
//! `cargo bench --bench round_trip -- --test` (each benchmark once). This
//! machine's wake-up latency is noisy, so compare peers within one run, not
//! across runs.
//!
//! procspawn re-executes this binary and needs `procspawn::init()` first thing
//! in `main`, which is why `main` is written out instead of `criterion_main!`.
//! procpool itself needs no such call.

use std::hint::black_box;
use std::sync::mpsc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, SamplingMode, Throughput};

#[path = "support/peers.rs"]
mod peers;
use peers::*;
use serde_bytes::ByteBuf;

/// Size of the payload in the `bytes_64mib` group.
const BIG: usize = 64 << 20;

/// The `round_trip` group; with `pinned`, the `round_trip_one_cpu` group: the
/// same peers with everything pinned to one CPU, which shows their CPU cost
/// free of this machine's wake-up noise.
fn round_trip(c: &mut Criterion, pinned: bool) {
    let (_pin, name) = if pinned {
        match PinnedToOneCpu::new() {
            Some(pin) => (Some(pin), "round_trip_one_cpu"),
            None => return,
        }
    } else {
        (None, "round_trip")
    };
    let mut g = c.benchmark_group(name);
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));

    let mut cat = Cat::spawn();
    let msg = [7u8; 16];
    let mut buf = [0u8; 16];
    g.bench_function("raw_pipe_cat", |b| b.iter(|| cat.ping(&msg, &mut buf)));
    drop(cat);

    let pool = procpool::ProcessPool::new(1).expect("process pool");
    g.bench_function("procpool_process", |b| {
        b.iter(|| pool.apply_blocking(square, black_box(3)).expect("task"))
    });
    pool.terminate();

    let pool = procpool::ThreadPool::new(1).expect("thread pool");
    g.bench_function("procpool_thread", |b| {
        b.iter(|| pool.apply_blocking(square, black_box(3)).expect("task"))
    });
    pool.terminate();

    let rt = tokio_runtime(1);
    g.bench_function("tokio_spawn_blocking", |b| {
        b.iter(|| {
            rt.block_on(async { tokio::task::spawn_blocking(|| square(black_box(3))).await })
                .expect("task")
        })
    });
    drop(rt);

    let rayon = rayon_pool(1);
    let (tx, rx) = mpsc::channel();
    g.bench_function("rayon_spawn_channel", |b| {
        b.iter(|| {
            let tx = tx.clone();
            rayon.spawn(move || tx.send(square(black_box(3))).expect("send"));
            rx.recv().expect("recv")
        })
    });
    drop(rayon);

    let pool = procspawn::Pool::new(1).expect("procspawn pool");
    g.bench_function("procspawn_pool", |b| {
        b.iter(|| pool.spawn(black_box(3u64), square).join().expect("task"))
    });
    pool.kill();
    g.finish();
}

fn many_small(c: &mut Criterion) {
    let mut g = c.benchmark_group("many_small");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(SMALL_TASKS));

    let pool = procpool::ProcessPool::new(2).expect("process pool");
    g.bench_function("procpool_process", |b| b.iter(|| many_small_on(&pool)));
    pool.terminate();

    let pool = procpool::ThreadPool::new(2).expect("thread pool");
    g.bench_function("procpool_thread", |b| b.iter(|| many_small_on(&pool)));
    pool.terminate();

    let rt = tokio_runtime(2);
    g.bench_function("tokio_spawn_blocking", |b| {
        b.iter(|| many_small_spawn_blocking(&rt))
    });
    drop(rt);

    let rayon = rayon_pool(2);
    g.bench_function("rayon_spawn_channel", |b| {
        b.iter(|| {
            let (tx, rx) = mpsc::channel();
            for i in 0..SMALL_TASKS {
                let tx = tx.clone();
                rayon.spawn(move || tx.send(square(i)).expect("send"));
            }
            drop(tx);
            for _ in 0..SMALL_TASKS {
                black_box(rx.recv().expect("recv"));
            }
        })
    });
    g.finish();
}

fn bytes_64mib(c: &mut Criterion) {
    let mut g = c.benchmark_group("bytes_64mib");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Bytes(BIG as u64));

    let data: Vec<u8> = (0..BIG).map(|i| i as u8).collect();

    let mut cat = Cat::spawn();
    let mut out = vec![0u8; BIG];
    g.bench_function("raw_pipe_cat", |b| b.iter(|| cat.copy(&data, &mut out)));
    assert_eq!(out, data, "cat must echo the bytes unchanged");
    drop((cat, out));

    let pool = procpool::ProcessPool::new(1).expect("process pool");
    let payload = ByteBuf::from(data);
    // The argument is moved into the task, so each iteration gets a fresh copy,
    // made outside the timed part.
    g.bench_function("procpool_process", |b| {
        b.iter_batched(
            || payload.clone(),
            |arg| pool.apply_blocking(echo, arg).expect("task"),
            BatchSize::PerIteration,
        )
    });
    pool.terminate();
    g.finish();
}

fn pool_start(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool_start");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.bench_function("procpool_process_2_workers", |b| {
        b.iter(|| {
            let pool = procpool::ProcessPool::new(2).expect("process pool");
            black_box(pool.apply_blocking(square, 3).expect("task"));
            pool.terminate();
        })
    });
    g.finish();
}

fn main() {
    // Must come first: procspawn's children re-enter `main` and are taken over
    // here.
    procspawn::init();
    let mut c = Criterion::default().configure_from_args();
    round_trip(&mut c, false);
    round_trip(&mut c, true);
    many_small(&mut c);
    bytes_64mib(&mut c);
    pool_start(&mut c);
    c.final_summary();
}
