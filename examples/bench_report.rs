//! Prints one markdown table comparing procpool with its peers, all measured
//! in this run on this machine, and a second one ("Map workloads") comparing
//! procpool's `map` with rayon, serial Rust and Python's `Pool.map`; after
//! each, whether the speed issue's and the map issue's targets were met.
//!
//! ```text
//! cargo run --release --example bench_report            # about four minutes
//! cargo run --release --example bench_report -- --quick # smoke test, well under a minute
//! cargo run --release --example bench_report -- --remote-only # only the ssh section
//! ```
//!
//! Peers are measured interleaved (every repetition runs each peer once, in
//! rotating order) and each figure is the median over the repetitions: on
//! small VMs a wake-up that has to reach an idle vCPU costs a random 10 to
//! 300 µs, so only ratios taken in the same run mean much. The round trip is
//! measured twice, free-running and with everything pinned to one CPU (which
//! leaves the CPU cost alone and is far steadier); `apply().await` against
//! `apply_blocking` on two CPUs is measured a third time, paired (both calls
//! alternated on each fresh pool, so both meet the same placement). Python's
//! pools are measured by `scripts/python_peers.py`, run as a child process
//! after the Rust peers with the same map sizes (skipped, with a note, when
//! `python3` is missing); most of its time goes to fib(38) down to fib(1) in
//! pure Python. The header says how much CPU other processes took during the
//! run; above 10% the figures are suspect.
//!
//! procspawn re-executes this binary and needs `procspawn::init()` first thing
//! in `main`; procpool needs no setup call.

use std::collections::HashMap;
use std::hint::black_box;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::TryStreamExt;
use rayon::prelude::*;
use serde_bytes::ByteBuf;

#[path = "../benches/support/peers.rs"]
mod peers;
use peers::*;
#[path = "../benches/support/remote.rs"]
mod remote;

/// Path of the Python peers script.
const PYTHON_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/python_peers.py");
/// Sizes and repetition counts of one run.
struct Config {
    quick: bool,
    /// Time each peer's batch should take in the round-trip measurement.
    batch_target: Duration,
    /// Repetitions of the fast workloads (round trip, many small tasks).
    reps: usize,
    /// Repetitions of the slow ones (bulk transfer, pool start).
    slow_reps: usize,
    /// Payload of the bulk transfer.
    big_bytes: usize,
    /// Repetitions of the Rust map workloads: on small VMs two equally good
    /// schedules often differ by 10 to 20% in one repetition.
    map_reps: usize,
    /// Items of the trivial (x*x) map.
    map_items: u64,
    /// Largest n of the fib workload (fib(n) down to fib(1)).
    fib_top: u32,
    /// How many numbers the factorisation workload factorises (Python too).
    factor_count: u64,
    /// The bigger factorisation input, Rust only (Python would take minutes).
    factor_count_big: u64,
}

impl Config {
    fn new(quick: bool) -> Config {
        if quick {
            Config {
                quick,
                batch_target: Duration::from_millis(5),
                reps: 5,
                slow_reps: 3,
                big_bytes: 16 << 20,
                map_reps: 5,
                map_items: 100_000,
                fib_top: 30,
                factor_count: 2_000,
                factor_count_big: 20_000,
            }
        } else {
            Config {
                quick,
                batch_target: Duration::from_millis(20),
                reps: 21,
                slow_reps: 9,
                big_bytes: 64 << 20,
                map_reps: 21,
                map_items: 1_000_000,
                fib_top: 38,
                factor_count: 20_000,
                factor_count_big: 200_000,
            }
        }
    }
}

/// A contender: runs `n` operations and returns how long they took (it may
/// leave per-operation setup, such as cloning an argument, out of the time).
type Run<'a> = Box<dyn FnMut(u64) -> Duration + 'a>;

/// Times `n` calls of `op`.
fn time_n(n: u64, mut op: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        op();
    }
    start.elapsed()
}

/// Seconds per operation of each peer: the median over `reps` interleaved
/// repetitions. Each peer's batch is first doubled until it takes at least
/// `target` (which also warms the peer up).
fn measure(peers: &mut [Run<'_>], target: Duration, reps: usize) -> Vec<f64> {
    let batches: Vec<u64> = (peers.iter_mut())
        .map(|run| {
            let mut n = 1;
            while run(n) < target && n < 1 << 20 {
                n *= 2;
            }
            n
        })
        .collect();
    let mut samples = vec![Vec::with_capacity(reps); peers.len()];
    for rep in 0..reps {
        for k in 0..peers.len() {
            let i = (rep + k) % peers.len();
            let elapsed = peers[i](batches[i]);
            samples[i].push(elapsed.as_secs_f64() / batches[i] as f64);
        }
    }
    samples.into_iter().map(median).collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// One line of the comparison table.
struct Row {
    workload: String,
    ours: (String, f64),
    peer: (String, f64),
    show: Show,
}

/// How a row's figures (seconds) are shown.
#[derive(Clone, Copy)]
enum Show {
    Time,
    /// Time and throughput of a round trip carrying this many payload bytes.
    Throughput(usize),
}

impl Show {
    fn cell(self, secs: f64) -> String {
        match self {
            Show::Time => fmt_time(secs),
            Show::Throughput(bytes) => {
                format!("{} ({:.2} GB/s)", fmt_time(secs), bytes as f64 / secs / 1e9)
            }
        }
    }
}

/// Formats seconds with a fitting unit and three significant digits.
fn fmt_time(secs: f64) -> String {
    let (value, unit) = if secs < 1e-6 {
        (secs * 1e9, "ns")
    } else if secs < 1e-3 {
        (secs * 1e6, "µs")
    } else if secs < 1.0 {
        (secs * 1e3, "ms")
    } else {
        (secs, "s")
    };
    let digits = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    format!("{value:.digits$} {unit}")
}

/// Figures measured for the apply round trip (seconds per call).
struct RoundTrip {
    raw_pipe: f64,
    /// The raw ping-pong awaited on a current-thread tokio runtime.
    raw_pipe_async: f64,
    /// `apply_blocking` from a plain thread (the direct lane).
    process: f64,
    /// `apply(..).await` on a current-thread runtime (the async direct lane).
    process_async: f64,
    thread: f64,
    spawn_blocking: f64,
    rayon: f64,
    procspawn: f64,
}

/// Untimed calls on a fresh peer before its batch is timed.
const WARM_CALLS: u64 = 20;

/// A peer built anew for every batch: `make`, `WARM_CALLS` calls of `op` and
/// `finish` are untimed; only the batch of `op` calls is. On small VMs a round
/// trip costs 10 or 100 µs depending on where the scheduler put the pool's
/// threads, and that placement sticks for the pool's life, so fresh pools let
/// the repetitions sample it rather than all inherit one draw.
fn fresh<'a, P: 'a>(
    make: impl Fn() -> P + 'a,
    op: impl Fn(&mut P) + 'a,
    finish: impl Fn(P) + 'a,
) -> Run<'a> {
    Box::new(move |n| {
        let mut peer = make();
        for _ in 0..WARM_CALLS {
            op(&mut peer);
        }
        let elapsed = time_n(n, || op(&mut peer));
        finish(peer);
        elapsed
    })
}

/// The apply round trip of every peer; `pinned`: all of them on one CPU
/// (`None` if pinning is unavailable).
fn round_trip(cfg: &Config, pinned: bool) -> Option<RoundTrip> {
    let _pin = if pinned {
        eprintln!("measuring: apply round trip, pinned to one CPU");
        Some(PinnedToOneCpu::new()?)
    } else {
        eprintln!("measuring: apply round trip");
        None
    };
    let mut peers: Vec<Run<'_>> = vec![
        fresh(Cat::spawn, |cat| cat.ping(&[7; 16], &mut [0; 16]), drop),
        fresh(
            AsyncCat::spawn,
            |cat| cat.ping(&[7; 16], &mut [0; 16]),
            drop,
        ),
        fresh(
            || procpool::ProcessPool::new(1).expect("process pool"),
            |pool| {
                black_box(pool.apply_blocking(square, black_box(3)).expect("task"));
            },
            |pool| pool.terminate(),
        ),
        fresh(
            || {
                let pool = procpool::ProcessPool::new(1).expect("process pool");
                // As services run it (`#[tokio::main]`): with its reactor,
                // which the async direct lane waits on.
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                (pool, rt)
            },
            |(pool, rt)| {
                black_box(rt.block_on(pool.apply(square, black_box(3))).expect("task"));
            },
            |(pool, _)| pool.terminate(),
        ),
        fresh(
            || procpool::ThreadPool::new(1).expect("thread pool"),
            |pool| {
                black_box(pool.apply_blocking(square, black_box(3)).expect("task"));
            },
            drop,
        ),
        fresh(
            || tokio_runtime(1),
            |rt| {
                let task = async { tokio::task::spawn_blocking(|| square(black_box(3))).await };
                black_box(rt.block_on(task).expect("task"));
            },
            drop,
        ),
        fresh(
            || (rayon_pool(1), mpsc::channel()),
            |(pool, (tx, rx))| {
                let tx = tx.clone();
                pool.spawn(move || tx.send(square(black_box(3))).expect("send"));
                black_box(rx.recv().expect("recv"));
            },
            drop,
        ),
        fresh(
            || procspawn::Pool::new(1).expect("procspawn pool"),
            |pool| {
                let handle = pool.spawn(black_box(3u64), square);
                black_box(handle.join().expect("task"));
            },
            |pool| pool.kill(),
        ),
    ];
    let t = measure(&mut peers, cfg.batch_target, cfg.reps);
    Some(RoundTrip {
        raw_pipe: t[0],
        raw_pipe_async: t[1],
        process: t[2],
        process_async: t[3],
        thread: t[4],
        spawn_blocking: t[5],
        rayon: t[6],
        procspawn: t[7],
    })
}

/// The two-CPU round trip of `apply().await` against `apply_blocking`
/// measured paired: on each fresh pool the two calls alternate batch by
/// batch, so both meet the same placement of caller and worker, which
/// otherwise moves either figure far more than the calls differ.
struct Paired {
    pools: usize,
    /// Each pool's median async batch over its median blocking batch.
    ratios: Vec<f64>,
}

/// Batches of each call per pool in [`paired_round_trip`].
const PAIRED_BATCHES: usize = 5;

fn paired_round_trip(cfg: &Config) -> Paired {
    eprintln!("measuring: apply round trip, both calls alternated on each pool");
    let (pools, calls) = if cfg.quick { (3, 100) } else { (15, 400) };
    let ratios = (0..pools)
        .map(|_| {
            let pool = procpool::ProcessPool::new(1).expect("process pool");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            let blocking = || {
                black_box(pool.apply_blocking(square, black_box(3)).expect("task"));
            };
            let awaited = || {
                black_box(rt.block_on(pool.apply(square, black_box(3))).expect("task"));
            };
            time_n(WARM_CALLS, || {
                blocking();
                awaited();
            });
            let (mut b, mut a) = (Vec::new(), Vec::new());
            for _ in 0..PAIRED_BATCHES {
                b.push(time_n(calls, blocking).as_secs_f64());
                a.push(time_n(calls, awaited).as_secs_f64());
            }
            pool.terminate();
            median(a) / median(b)
        })
        .collect();
    Paired { pools, ratios }
}

/// Figures measured for 10,000 small tasks (seconds per task).
struct ManySmall {
    process: f64,
    thread: f64,
    /// tokio's blocking pool capped at 2 threads, like the pools.
    spawn_blocking: f64,
    /// tokio's blocking pool as `#[tokio::main]` configures it (up to 512
    /// threads), which is what most services run.
    spawn_blocking_default: f64,
    rayon: f64,
}

fn many_small(cfg: &Config) -> ManySmall {
    eprintln!("measuring: {SMALL_TASKS} small tasks");
    let process = procpool::ProcessPool::new(2).expect("process pool");
    let thread = procpool::ThreadPool::new(2).expect("thread pool");
    let rt = tokio_runtime(2);
    let default_rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let rayon = rayon_pool(2);

    let mut peers: Vec<Run<'_>> = vec![
        Box::new(|n| time_n(n, || many_small_on(&process))),
        Box::new(|n| time_n(n, || many_small_on(&thread))),
        Box::new(|n| time_n(n, || many_small_spawn_blocking(&rt))),
        Box::new(|n| time_n(n, || many_small_spawn_blocking(&default_rt))),
        Box::new(|n| {
            time_n(n, || {
                let (tx, rx) = mpsc::channel();
                for i in 0..SMALL_TASKS {
                    let tx = tx.clone();
                    rayon.spawn(move || tx.send(square(i)).expect("send"));
                }
                for _ in 0..SMALL_TASKS {
                    black_box(rx.recv().expect("recv"));
                }
            })
        }),
    ];
    let t = measure(&mut peers, cfg.batch_target, cfg.reps);
    drop(peers);
    process.terminate();
    thread.terminate();
    let per_task = |secs: f64| secs / SMALL_TASKS as f64;
    ManySmall {
        process: per_task(t[0]),
        thread: per_task(t[1]),
        spawn_blocking: per_task(t[2]),
        spawn_blocking_default: per_task(t[3]),
        rayon: per_task(t[4]),
    }
}

/// Seconds for one bulk round trip: (raw pipe, ProcessPool, two fresh
/// copies). The last is the part of the floor `cat` does not pay: a task's
/// argument and result are values its caller owns, so they are decoded into
/// fresh memory in the worker and in the parent, page faults and all.
/// `pinned`: everything on one CPU (`None` if pinning is unavailable).
fn bulk(cfg: &Config, pinned: bool) -> Option<(f64, f64, f64)> {
    let _pin = if pinned {
        Some(PinnedToOneCpu::new()?)
    } else {
        None
    };
    let one_cpu = if pinned { ", pinned to one CPU" } else { "" };
    eprintln!("measuring: {} MiB round trip{one_cpu}", cfg.big_bytes >> 20);
    let data: Vec<u8> = (0..cfg.big_bytes).map(|i| i as u8).collect();
    let mut cat = Cat::spawn();
    let mut out = vec![0u8; cfg.big_bytes];
    let process = procpool::ProcessPool::new(1).expect("process pool");
    let payload = ByteBuf::from(data.clone());

    let mut peers: Vec<Run<'_>> = vec![
        Box::new(|n| time_n(n, || cat.copy(&data, &mut out))),
        Box::new(|n| {
            // The argument is moved into the task: copy it outside the timing.
            let mut total = Duration::ZERO;
            for _ in 0..n {
                let arg = payload.clone();
                let start = Instant::now();
                let back = process.apply_blocking(echo, arg).expect("task");
                total += start.elapsed();
                assert_eq!(back.len(), payload.len());
            }
            total
        }),
        Box::new(|n| {
            time_n(n, || {
                let there = black_box(data.to_vec());
                black_box(there.to_vec());
            })
        }),
    ];
    let t = measure(&mut peers, Duration::ZERO, cfg.slow_reps);
    drop(peers);
    assert_eq!(out, data, "cat must echo the bytes unchanged");
    process.terminate();
    Some((t[0], t[1], t[2]))
}

/// Seconds to start a 2-worker pool and finish its first task: (ProcessPool,
/// procspawn).
fn pool_start(cfg: &Config) -> (f64, f64) {
    eprintln!("measuring: pool start");
    let mut peers: Vec<Run<'_>> = vec![
        Box::new(|n| {
            time_n(n, || {
                let pool = procpool::ProcessPool::new(2).expect("process pool");
                black_box(pool.apply_blocking(square, 3).expect("task"));
                pool.terminate();
            })
        }),
        Box::new(|n| {
            time_n(n, || {
                let pool = procspawn::Pool::new(2).expect("procspawn pool");
                black_box(pool.spawn(3u64, square).join().expect("task"));
                pool.kill();
            })
        }),
    ];
    let t = measure(&mut peers, Duration::ZERO, cfg.slow_reps);
    (t[0], t[1])
}

/// First number of the factorisation workload (as in the Python script).
const FACTOR_START: u64 = 10_000_000;

/// A peer whose every operation is `op`; only `op` is timed, and its output is
/// handed to `check` (and dropped) afterwards.
fn checked<'a, T>(op: impl Fn() -> T + 'a, check: impl Fn(T) + 'a) -> Run<'a> {
    Box::new(move |n| {
        let mut total = Duration::ZERO;
        for _ in 0..n {
            let start = Instant::now();
            let out = op();
            total += start.elapsed();
            check(out);
        }
        total
    })
}

/// Collects a map's results, failing on the first task error.
fn collect<A, R>(map: procpool::Map<A, R>) -> Vec<R> {
    futures::executor::block_on(map.try_collect()).expect("map task")
}

/// Figures measured for the x*x map (seconds per map).
struct SquaresMap {
    items: u64,
    process: f64,
    thread: f64,
    rayon: f64,
}

/// Figures measured for the skewed fib map (seconds per map).
struct FibMap {
    top: u32,
    serial: f64,
    process: f64,
    /// ProcessPool map with a fixed chunk size: (size, seconds).
    chunked: Vec<(usize, f64)>,
    rayon: f64,
    /// rayon's `par_iter().with_max_len(1)`: every item a job of its own.
    rayon_max_len_1: f64,
}

impl FibMap {
    /// The fastest hand-picked chunk size: (size, seconds).
    fn best_chunk(&self) -> (usize, f64) {
        (self.chunked.iter().copied())
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .expect("chunk sizes measured")
    }
}

/// Figures measured for one factorisation map (seconds per map).
struct FactorMap {
    count: u64,
    serial: f64,
    /// Two plain threads, each factorising one half: what this machine's two
    /// cores give when nothing is shared or sent anywhere.
    halves: f64,
    process: f64,
    thread: f64,
    /// Prime factors found in all, to cross-check with Python.
    factors: usize,
}

/// Everything measured for the map workloads.
struct Maps {
    /// Repetitions each Rust figure is the median of.
    reps: usize,
    squares: SquaresMap,
    fib: FibMap,
    factor: Vec<FactorMap>,
}

/// The map workloads on 2-worker pools, built once and reused (Python's
/// `Pool.map` runs on a warm pool too).
fn maps(cfg: &Config) -> Maps {
    let process = procpool::ProcessPool::new(2).expect("process pool");
    let thread = procpool::ThreadPool::new(2).expect("thread pool");
    let rayon = rayon_pool(2);
    let squares = squares_map(cfg, &process, &thread, &rayon);
    let fib = fib_map(cfg, &process, &rayon);
    let factor = [cfg.factor_count, cfg.factor_count_big]
        .into_iter()
        .map(|count| factor_map(cfg, count, &process, &thread))
        .collect();
    process.terminate();
    thread.terminate();
    Maps {
        reps: cfg.map_reps,
        squares,
        fib,
        factor,
    }
}

fn squares_map(
    cfg: &Config,
    process: &procpool::ProcessPool,
    thread: &procpool::ThreadPool,
    rayon: &rayon::ThreadPool,
) -> SquaresMap {
    let n = cfg.map_items;
    eprintln!("measuring: map of x*x over {n} items");
    let check = |v: Vec<u64>| {
        assert_eq!(v.len() as u64, n, "every item mapped");
        assert!((0..n).zip(&v).all(|(i, &x)| x == square(i)), "x*x");
    };
    let mut peers: Vec<Run<'_>> = vec![
        checked(|| collect(process.map(square, 0..n)), check),
        checked(|| collect(thread.map(square, 0..n)), check),
        checked(
            || rayon.install(|| (0..n).into_par_iter().map(square).collect()),
            check,
        ),
    ];
    let t = measure(&mut peers, Duration::ZERO, cfg.map_reps);
    SquaresMap {
        items: n,
        process: t[0],
        thread: t[1],
        rayon: t[2],
    }
}

/// Hand-picked chunk sizes the adaptive default is held against.
const FIB_CHUNKS: [usize; 3] = [1, 2, 4];

fn fib_map(cfg: &Config, process: &procpool::ProcessPool, rayon: &rayon::ThreadPool) -> FibMap {
    let top = cfg.fib_top;
    eprintln!("measuring: map of fib(n), n = {top} down to 1");
    let inputs: Vec<u32> = (1..=top).rev().collect();
    // sum(fib(1..=n)) == fib(n + 2) - 1: checks every map returned it all.
    let (mut a, mut b) = (0u64, 1u64);
    for _ in 0..top + 2 {
        (a, b) = (b, a + b);
    }
    let check = move |v: Vec<u64>| assert_eq!(v.iter().sum::<u64>(), a - 1, "fib sums");
    let inputs = &inputs;
    let mut peers: Vec<Run<'_>> = vec![
        checked(
            || inputs.iter().map(|&n| fib(black_box(n))).collect(),
            check,
        ),
        checked(|| collect(process.map(fib, inputs.clone())), check),
        checked(
            || rayon.install(|| inputs.par_iter().map(|&n| fib(n)).collect()),
            check,
        ),
        checked(
            || {
                rayon.install(|| {
                    (inputs.par_iter().with_max_len(1))
                        .map(|&n| fib(n))
                        .collect()
                })
            },
            check,
        ),
    ];
    for size in FIB_CHUNKS {
        peers.push(checked(
            move || collect(process.map(fib, inputs.clone()).chunk_size(size)),
            check,
        ));
    }
    let t = measure(&mut peers, Duration::ZERO, cfg.map_reps);
    FibMap {
        top,
        serial: t[0],
        process: t[1],
        rayon: t[2],
        rayon_max_len_1: t[3],
        chunked: FIB_CHUNKS.into_iter().zip(t[4..].iter().copied()).collect(),
    }
}

fn factor_map(
    cfg: &Config,
    count: u64,
    process: &procpool::ProcessPool,
    thread: &procpool::ThreadPool,
) -> FactorMap {
    eprintln!("measuring: map of factorise over {count} numbers");
    let numbers = FACTOR_START..FACTOR_START + count;
    // Every peer must find the same factors: (how many, their sum).
    let found = std::cell::Cell::new(None);
    let check = |v: Vec<Vec<u64>>| {
        assert_eq!(v.len() as u64, count, "every number factorised");
        let digest = (
            v.iter().map(Vec::len).sum::<usize>(),
            v.iter().flatten().sum::<u64>(),
        );
        assert_eq!(found.get().unwrap_or(digest), digest, "factors agree");
        found.set(Some(digest));
    };
    let mut peers: Vec<Run<'_>> = vec![
        checked(
            || numbers.clone().map(|n| factorize(black_box(n))).collect(),
            check,
        ),
        checked(|| collect(process.map(factorize, numbers.clone())), check),
        checked(|| collect(thread.map(factorize, numbers.clone())), check),
        checked(
            || {
                let half = FACTOR_START + count / 2;
                let part = |r: std::ops::Range<u64>| -> Vec<Vec<u64>> {
                    r.map(|n| factorize(black_box(n))).collect()
                };
                std::thread::scope(|scope| {
                    let first = scope.spawn(|| part(FACTOR_START..half));
                    let mut second = part(half..FACTOR_START + count);
                    let mut all = first.join().expect("thread");
                    all.append(&mut second);
                    all
                })
            },
            check,
        ),
    ];
    let t = measure(&mut peers, Duration::ZERO, cfg.map_reps);
    drop(peers);
    FactorMap {
        count,
        serial: t[0],
        process: t[1],
        thread: t[2],
        halves: t[3],
        factors: found.get().map_or(0, |(factors, _)| factors),
    }
}

/// The Python script's output: a flat JSON object. Values are kept as their
/// text (strings unquoted); numbers are parsed on demand.
struct Python(HashMap<String, String>);

impl Python {
    /// Runs the script; `Err` explains why there are no Python figures.
    fn run(cfg: &Config) -> Result<Python, String> {
        eprintln!("measuring: Python peers ({PYTHON_SCRIPT})");
        let mut cmd = Command::new("python3");
        cmd.arg(PYTHON_SCRIPT).stderr(Stdio::inherit());
        if cfg.quick {
            cmd.arg("--quick");
        }
        // The map workloads' sizes, so that both sides do the same work.
        cmd.arg(format!("--map-items={}", cfg.map_items))
            .arg(format!("--fib-top={}", cfg.fib_top))
            .arg(format!("--factor-count={}", cfg.factor_count));
        let out = match cmd.output() {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err("python3 not found: Python peers skipped".into())
            }
            Err(e) => return Err(format!("could not run python3: {e}")),
        };
        if !out.status.success() {
            return Err(format!("python_peers.py failed ({})", out.status));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        parse_flat_json(text.trim())
            .map(Python)
            .ok_or_else(|| "python_peers.py printed no readable JSON".into())
    }

    fn num(&self, key: &str) -> Option<f64> {
        self.0.get(key)?.parse().ok()
    }

    fn text(&self, key: &str) -> &str {
        self.0.get(key).map_or("?", String::as_str)
    }
}

/// Parses `{"key": scalar, ...}` (no nesting), enough for the Python script.
fn parse_flat_json(s: &str) -> Option<HashMap<String, String>> {
    fn string(it: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<String> {
        let mut out = String::new();
        loop {
            match it.next()? {
                '"' => return Some(out),
                '\\' => match it.next()? {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'u' => {
                        let hex: String = it.by_ref().take(4).collect();
                        out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                    }
                    c => out.push(c),
                },
                c => out.push(c),
            }
        }
    }
    let mut map = HashMap::new();
    let mut it = s.strip_prefix('{')?.chars().peekable();
    loop {
        while it.next_if(|c| c.is_whitespace() || *c == ',').is_some() {}
        match it.next()? {
            '}' => return Some(map),
            '"' => {}
            _ => return None,
        }
        let key = string(&mut it)?;
        while it.next_if(|c| c.is_whitespace() || *c == ':').is_some() {}
        let value = if it.next_if_eq(&'"').is_some() {
            string(&mut it)?
        } else {
            let mut raw = String::new();
            while let Some(c) = it.next_if(|c| *c != ',' && *c != '}') {
                raw.push(c);
            }
            raw.trim().to_string()
        };
        map.insert(key, value);
    }
}

/// Today's date and time in UTC, from the system clock.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m) = (rem / 3_600, rem % 3_600 / 60);
    format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02} UTC")
}

/// CPU model name from /proc/cpuinfo.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn print_table(rows: &[Row]) {
    println!("| Workload | procpool | Peer | procpool / peer |");
    println!("|---|---|---|---:|");
    for r in rows {
        println!(
            "| {} | {} {} | {} {} | {:.2}× |",
            r.workload,
            r.ours.0,
            r.show.cell(r.ours.1),
            r.peer.0,
            r.show.cell(r.peer.1),
            r.ours.1 / r.peer.1,
        );
    }
}

/// Everything the Rust side measured.
struct Measured {
    round_trip: RoundTrip,
    /// The round trip with everything on one CPU, if pinning worked.
    pinned: Option<RoundTrip>,
    small: ManySmall,
    /// Bulk round trip: (raw pipe, ProcessPool, two fresh copies) seconds,
    /// and the payload size.
    bulk: (f64, f64, f64, usize),
    /// The same with everything on one CPU, if pinning worked.
    bulk_pinned: Option<(f64, f64, f64)>,
    /// Pool start: (ProcessPool, procspawn) seconds.
    start: (f64, f64),
    paired: Paired,
}

/// Collects the rows of the comparison table.
struct Rows<'a> {
    rows: Vec<Row>,
    py: Option<&'a Python>,
}

impl Rows<'_> {
    /// A row comparing `ours` with `peer` (name, seconds).
    fn add(&mut self, workload: &str, ours: (&str, f64), peer: (&str, f64)) {
        self.rows.push(Row {
            workload: workload.to_string(),
            ours: (ours.0.to_string(), ours.1),
            peer: (peer.0.to_string(), peer.1),
            show: Show::Time,
        });
    }

    /// One row per Python figure (`(label, key)`, in `unit` seconds) found.
    fn add_python(&mut self, workload: &str, ours: (&str, f64), unit: f64, peers: &[(&str, &str)]) {
        for (label, key) in peers {
            if let Some(v) = self.py.and_then(|p| p.num(key)) {
                self.add(workload, ours, (label, v * unit));
            }
        }
    }

    /// The rows of one round-trip measurement; `prefix` selects the matching
    /// Python figures.
    fn add_round_trip(&mut self, w: &str, rt: &RoundTrip, prefix: &str) {
        let (pp, tp) = (("ProcessPool", rt.process), ("ThreadPool", rt.thread));
        self.add(w, pp, ("raw pipe (`cat`)", rt.raw_pipe));
        let pp_async = ("ProcessPool, async `apply`", rt.process_async);
        self.add(w, pp_async, ("raw pipe (`cat`)", rt.raw_pipe));
        let raw_async = ("raw pipe (`cat`) awaited on tokio", rt.raw_pipe_async);
        self.add(w, pp_async, raw_async);
        self.add(w, pp, ("procspawn Pool", rt.procspawn));
        self.add(w, pp, tp);
        self.add(w, tp, ("tokio spawn_blocking", rt.spawn_blocking));
        self.add(w, tp, ("rayon spawn + channel", rt.rayon));
        let keys = [
            format!("{prefix}pool_apply_us"),
            format!("{prefix}pool_apply_async_us"),
            format!("{prefix}executor_submit_us"),
        ];
        self.add_python(
            w,
            pp,
            1e-6,
            &[
                ("Python Pool.apply", &keys[0]),
                ("Python apply_async().get()", &keys[1]),
                ("Python Executor submit().result()", &keys[2]),
            ],
        );
    }
}

/// The rows of the comparison table.
fn comparison_rows(m: &Measured, py: Option<&Python>) -> Vec<Row> {
    let mut rows = Rows {
        rows: Vec::new(),
        py,
    };
    rows.add_round_trip("apply round trip", &m.round_trip, "");
    if let Some(rt) = &m.pinned {
        rows.add_round_trip("apply round trip, one CPU", rt, "pinned_");
    }

    let w = &format!("{SMALL_TASKS} small tasks, per task");
    let s = &m.small;
    let (pp, tp) = (("ProcessPool", s.process), ("ThreadPool", s.thread));
    let (sb, sb_default) = (
        (
            "tokio spawn_blocking (2 blocking threads)",
            s.spawn_blocking,
        ),
        (
            "tokio spawn_blocking (default runtime, ≤512 blocking threads)",
            s.spawn_blocking_default,
        ),
    );
    rows.add(w, pp, sb);
    rows.add(w, pp, sb_default);
    rows.add(w, pp, tp);
    rows.add(w, tp, sb);
    rows.add(w, tp, sb_default);
    rows.add(w, tp, ("rayon spawn + channel", s.rayon));
    rows.add_python(
        w,
        pp,
        1e-6,
        &[
            ("Python apply_async ×N, get", "pool_apply_async_10k_us"),
            (
                "Python Executor submit ×N, result",
                "executor_submit_10k_us",
            ),
            ("Python Executor.map", "executor_map_10k_us"),
        ],
    );

    let (pipe, process, _, bytes) = m.bulk;
    rows.rows.push(Row {
        workload: format!("{} MiB `ByteBuf` round trip", bytes >> 20),
        ours: ("ProcessPool".into(), process),
        peer: ("raw pipe (`cat`)".into(), pipe),
        show: Show::Throughput(bytes),
    });
    if let Some((pipe, process, _)) = m.bulk_pinned {
        rows.rows.push(Row {
            workload: format!("{} MiB `ByteBuf` round trip, one CPU", bytes >> 20),
            ours: ("ProcessPool".into(), process),
            peer: ("raw pipe (`cat`)".into(), pipe),
            show: Show::Throughput(bytes),
        });
    }

    let w = "pool start (2 workers + first task)";
    let pp = ("ProcessPool", m.start.0);
    rows.add(w, pp, ("procspawn Pool", m.start.1));
    rows.add_python(
        w,
        pp,
        1e-3,
        &[
            ("Python Pool (fork)", "pool_start_ms"),
            ("Python Pool (spawn)", "pool_start_spawn_ms"),
            ("Python ProcessPoolExecutor (fork)", "executor_start_ms"),
        ],
    );
    rows.rows
}

/// CPU time counters, to tell how much of the machine other processes (or
/// the hypervisor) took while this report ran.
#[derive(Clone, Copy)]
struct CpuClock {
    at: Instant,
    /// Busy and stolen seconds of all CPUs, from /proc/stat.
    busy: f64,
    steal: f64,
    /// CPU seconds of this process and its reaped descendants.
    ours: f64,
}

impl CpuClock {
    #[cfg(target_os = "linux")]
    fn now() -> Option<CpuClock> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let ticks: Vec<f64> = (stat.lines().next()?.split_whitespace().skip(1))
            .map(|v| v.parse().unwrap_or(0.0))
            .collect();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let field = |i: usize| ticks.get(i).copied().unwrap_or(0.0) / hz;
        // user, nice, system, (idle, iowait,) irq, softirq; guest time is in user.
        let busy = field(0) + field(1) + field(2) + field(5) + field(6);
        let mut ours = 0.0;
        for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
            // SAFETY: getrusage fills the zeroed plain-data struct it is given.
            let usage = unsafe {
                let mut usage: libc::rusage = std::mem::zeroed();
                libc::getrusage(who, &mut usage);
                usage
            };
            for t in [usage.ru_utime, usage.ru_stime] {
                ours += t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
            }
        }
        Some(CpuClock {
            at: Instant::now(),
            busy,
            steal: field(7),
            ours,
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn now() -> Option<CpuClock> {
        None
    }

    /// Shares of the machine's CPU capacity since `self` taken by other
    /// processes and by the hypervisor (steal).
    fn others_since(&self, nproc: usize) -> Option<(f64, f64)> {
        let now = CpuClock::now()?;
        let capacity = now.at.duration_since(self.at).as_secs_f64() * nproc as f64;
        let others = (now.busy - self.busy) - (now.ours - self.ours);
        Some((
            (others / capacity).max(0.0),
            (now.steal - self.steal) / capacity,
        ))
    }
}

/// Header lines: the machine, and how much of it other work took since
/// `began`.
fn print_header(cfg: &Config, python: &Result<Python, String>, began: Option<CpuClock>) {
    println!("# procpool vs peers\n");
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("- date: {}", utc_now());
    println!("- cpu: {} ({nproc} logical cores)", cpu_model());
    println!("- kernel: Linux {}", kernel.trim());
    if let Some((others, steal)) = began.and_then(|c| c.others_since(nproc)) {
        println!(
            "- CPU taken by other processes during the run: {:.0}%, stolen by the hypervisor: {:.0}%",
            others * 100.0,
            steal * 100.0
        );
        if others + steal > 0.1 {
            println!("- **warning**: the machine was busy with other work; figures are inflated");
        }
    }
    match python {
        Ok(p) => println!(
            "- python: {} {} (start method `{}`, {} workers)",
            p.text("implementation"),
            p.text("python"),
            p.text("start_method"),
            p.text("workers"),
        ),
        Err(why) => println!("- python: {why}"),
    }
    if cfg!(debug_assertions) {
        println!("- **debug build**: run with `--release` for meaningful figures");
    }
    if cfg.quick {
        println!("- `--quick`: smaller workloads and fewer repetitions; figures are rough");
    }
    println!();
}

/// `n` with thousands separators: 1,000,000.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A target of the map issue: its wording, and whether `value` meets it.
struct Target {
    what: String,
    value: String,
    met: bool,
}

/// The second table: procpool's maps against rayon, Rust serial code and
/// Python's `Pool.map`, and the map issue's targets.
fn print_maps(m: &Maps, py: Option<&Python>) {
    println!("\n## Map workloads\n");
    println!("| Workload | procpool | Peer | procpool / peer (or speedup) |");
    println!("|---|---|---|---:|");
    let row = |workload: &str, ours: String, peer: String, last: String| {
        println!("| {workload} | {ours} | {peer} | {last} |");
    };
    let ratio = |workload: &str, ours: (&str, f64), peer: (&str, f64)| {
        row(
            workload,
            format!("{} {}", ours.0, fmt_time(ours.1)),
            format!("{} {}", peer.0, fmt_time(peer.1)),
            format!("{:.2}×", ours.1 / peer.1),
        );
    };
    let py_num = |key: &str| py.and_then(|p| p.num(key));
    let mut targets = Vec::new();

    let sq = &m.squares;
    let w = &format!("x*x over {} items", grouped(sq.items));
    let pp = ("ProcessPool map", sq.process);
    if let Some(secs) = py_num("pool_map_1m_s") {
        let chunk = py_num("pool_map_1m_chunksize").map_or(0, |c| c as u64);
        let label = format!("Python Pool.map, default chunksize ({})", grouped(chunk));
        ratio(w, pp, (&label, secs));
        targets.push(Target {
            what: "x*x: ProcessPool map at least 4× faster than Python's Pool.map \
                   (procpool / peer ≤ 0.25×)"
                .into(),
            value: format!("{:.1}× faster", secs / sq.process),
            met: sq.process * 4.0 <= secs,
        });
    }
    ratio(w, pp, ("ThreadPool map", sq.thread));
    ratio(w, pp, ("rayon par_iter", sq.rayon));
    ratio(
        w,
        ("ThreadPool map", sq.thread),
        ("rayon par_iter", sq.rayon),
    );

    let fb = &m.fib;
    let w = &format!("fib(n), n = {} down to 1 (skewed)", fb.top);
    let pp = ("ProcessPool map", fb.process);
    let (best, best_secs) = fb.best_chunk();
    let best_label = format!("ProcessPool map, chunk_size({best}) (best of 1, 2, 4)");
    ratio(w, pp, (&best_label, best_secs));
    ratio(w, pp, ("rayon par_iter (2-thread pool)", fb.rayon));
    ratio(
        w,
        pp,
        ("rayon par_iter().with_max_len(1)", fb.rayon_max_len_1),
    );
    let fib_chunk = py_num("fib_pool_map_chunksize").map_or(0, |c| c as u64);
    let default_label = format!("Python Pool.map, default chunksize ({fib_chunk})");
    for (label, key) in [
        (default_label.as_str(), "fib_pool_map_s"),
        ("Python Pool.map, chunksize=1", "fib_pool_map_chunksize1_s"),
    ] {
        if let Some(secs) = py_num(key) {
            ratio(w, pp, (label, secs));
        }
    }
    targets.push(Target {
        what: "fib: default chunking within 5% of the best hand-picked chunk size \
               (≤ 1.05×)"
            .into(),
        value: format!("{:.2}× of chunk_size({best})", fb.process / best_secs),
        met: fb.process <= 1.05 * best_secs,
    });
    targets.push(Target {
        what: "fib: within 5% of rayon's par_iter (≤ 1.05×)".into(),
        value: format!("{:.2}×", fb.process / fb.rayon),
        met: fb.process <= 1.05 * fb.rayon,
    });

    for f in &m.factor {
        let w = &format!(
            "factorise {} numbers from {} (uniform)",
            grouped(f.count),
            grouped(FACTOR_START)
        );
        let speedup = |secs: f64, serial: f64, who: &str| {
            row(
                w,
                format!("{who} map {}", fmt_time(secs)),
                format!("Rust serial {}", fmt_time(serial)),
                format!("speedup {:.2}×", serial / secs),
            );
        };
        speedup(f.process, f.serial, "ProcessPool");
        speedup(f.thread, f.serial, "ThreadPool");
        row(
            w,
            format!("two plain threads, one half each {}", fmt_time(f.halves)),
            format!("Rust serial {}", fmt_time(f.serial)),
            format!(
                "speedup {:.2}× (this machine's ceiling)",
                f.serial / f.halves
            ),
        );
        let python = py.filter(|p| p.num("factor_count") == Some(f.count as f64));
        if let Some((pool, alone)) =
            python.and_then(|p| Some((p.num("factor_pool_map_s")?, p.num("factor_serial_s")?)))
        {
            row(
                w,
                format!("ProcessPool map, speedup {:.2}×", f.serial / f.process),
                format!(
                    "Python Pool.map {}, serial loop {}: speedup {:.2}×",
                    fmt_time(pool),
                    fmt_time(alone),
                    alone / pool
                ),
                format!(
                    "speedup {:.2}× vs {:.2}×",
                    f.serial / f.process,
                    alone / pool
                ),
            );
        }
        targets.push(Target {
            what: format!(
                "factorise {}: ProcessPool map speedup over serial ≥ 1.9× \
                 (0.95 × 2 workers)",
                grouped(f.count)
            ),
            value: format!(
                "{:.2}× (two plain threads: {:.2}×)",
                f.serial / f.process,
                f.serial / f.halves
            ),
            met: f.serial / f.process >= 1.9,
        });
    }

    println!(
        "\nAll pools have 2 workers (threads), are warm, and are reused across \
         repetitions. Every Rust figure is the median of {} interleaved repetitions, \
         every Python one of {} (x*x: {}), and includes collecting the results into a \
         `Vec` (a `list` in Python). procpool / peer < 1 means procpool is faster; a \
         speedup is the serial time over the parallel one, each side against its own \
         serial loop.",
        m.reps,
        py.map_or_else(|| "–".into(), |p| p.text("map_reps").to_string()),
        py.map_or_else(|| "–".into(), |p| p.text("squares_reps").to_string()),
    );
    let chunks: Vec<String> = (fb.chunked.iter())
        .map(|&(size, secs)| format!("chunk_size({size}) {}", fmt_time(secs)))
        .collect();
    println!(
        "\nfib: the ProcessPool map with hand-picked chunk sizes took {}; Rust serial \
         took {}, so no schedule on 2 workers beats about {}. rayon's plain `par_iter` \
         stops splitting after a few halvings, so one thread gets the first several \
         (largest) items as one piece; `with_max_len(1)` makes every item a job of its \
         own, the hand-tuned rayon. The target is against the plain `par_iter`.",
        chunks.join(", "),
        fmt_time(fb.serial),
        fmt_time(fb.serial / 2.0),
    );
    if let Some(py) = py {
        let big = m.factor.iter().map(|f| f.count).max().unwrap_or(0);
        if let (Some(count), Some(alone)) = (py.num("factor_count"), py.num("factor_serial_s")) {
            println!(
                "\nPython factorises {} numbers only: at its serial loop's pace, {} \
                 would take {} per repetition for the serial loop alone.",
                grouped(count as u64),
                grouped(big),
                fmt_time(alone / count * big as f64),
            );
        }
        let same = |key: &str, ours: u64| py.num(key) == Some(ours as f64);
        if !(same("map_items", m.squares.items) && same("fib_top", m.fib.top.into())) {
            println!("\n**warning**: Python ran other map sizes than the Rust side.");
        }
        if let Some(f) = m.factor.iter().find(|f| same("factor_count", f.count)) {
            if !same("factor_total_factors", f.factors as u64) {
                println!("\n**warning**: the Rust and Python factorisations disagree.");
            }
        }
    } else {
        println!("\nNo Python figures: see the header.");
    }
    print_targets("the map issue", &targets);
}

fn print_targets(issue: &str, targets: &[Target]) {
    println!("\nTargets of {issue}, in this run:\n");
    for t in targets {
        let verdict = if t.met { "met" } else { "**missed**" };
        println!("- {}: {} — {verdict}", t.what, t.value);
    }
}

/// The speed issue's targets, from the comparison table's figures.
fn print_speed_targets(m: &Measured) {
    let mut targets = Vec::new();
    let mut at_most = |what: &str, ours: f64, peer: f64, limit: f64| {
        let ratio = ours / peer;
        targets.push(Target {
            what: format!("{what} (≤ {limit}×)"),
            value: format!("{} against {}, {ratio:.2}×", fmt_time(ours), fmt_time(peer)),
            met: ratio <= limit,
        });
    };
    let runs =
        std::iter::once(("", &m.round_trip)).chain(m.pinned.as_ref().map(|rt| (", one CPU", rt)));
    for (tag, rt) in runs {
        at_most(
            &format!("ProcessPool apply round trip{tag} vs the raw pipe ping-pong"),
            rt.process,
            rt.raw_pipe,
            1.5,
        );
        at_most(
            &format!("ThreadPool apply round trip{tag} vs tokio spawn_blocking"),
            rt.thread,
            rt.spawn_blocking,
            1.0,
        );
    }
    let s = &m.small;
    at_most(
        "ProcessPool, 10,000 small tasks, per task vs spawn_blocking (2 blocking threads)",
        s.process,
        s.spawn_blocking,
        1.0,
    );
    at_most(
        "ProcessPool, 10,000 small tasks, per task vs spawn_blocking (default runtime)",
        s.process,
        s.spawn_blocking_default,
        1.0,
    );
    at_most(
        "ThreadPool, 10,000 small tasks, per task vs spawn_blocking (2 blocking threads)",
        s.thread,
        s.spawn_blocking,
        0.5,
    );
    let (pipe, process, _, bytes) = m.bulk;
    targets.push(Target {
        what: format!(
            "{} MiB ByteBuf round trip: at least half the raw pipe's throughput (≥ 0.5×)",
            bytes >> 20
        ),
        value: format!("{:.2}×", pipe / process),
        met: pipe / process >= 0.5,
    });
    targets.push(Target {
        what: "build a 2-worker pool and finish its first task (≤ 20 ms)".into(),
        value: fmt_time(m.start.0),
        met: m.start.0 <= 0.020,
    });
    print_targets("the speed issue", &targets);
    println!(
        "\n(The queued-task memory target is measured by \
         `cargo run --release --example queued_memory`.)"
    );
}

/// What the paired measurement found (see [`Paired`]).
fn paired_figures(p: &Paired) -> String {
    let mut sorted = p.ratios.clone();
    sorted.sort_by(f64::total_cmp);
    match (sorted.first(), sorted.last()) {
        (Some(low), Some(high)) => format!(
            "; paired, both calls alternated on each of {} fresh pools: median {:.2}× \
             ({low:.2}× to {high:.2}×)",
            p.pools,
            median(sorted.clone())
        ),
        _ => String::new(),
    }
}

/// The second speed issue's targets (the async path, many tasks, large
/// payloads, tiny uniform map items), from the same run's figures.
fn print_speed2_targets(m: &Measured, maps: &Maps) {
    let mut targets = Vec::new();
    let mut push = |what: String, ours: f64, peer: f64, met: bool, more: &str| {
        let value = format!(
            "{} against {}, {:.2}×{more}",
            fmt_time(ours),
            fmt_time(peer),
            ours / peer
        );
        targets.push(Target { what, value, met });
    };
    match &m.pinned {
        Some(rt) => push(
            "apply().await round trip, one CPU, vs the raw pipe ping-pong (≤ 1.5×)".into(),
            rt.process_async,
            rt.raw_pipe,
            rt.process_async <= 1.5 * rt.raw_pipe,
            "",
        ),
        None => println!(
            "
(No pinned run: the one-CPU async target was not measured.)"
        ),
    }
    let rt = &m.round_trip;
    push(
        "apply().await round trip, 2 CPUs, vs apply_blocking (≤ 1.0×)".into(),
        rt.process_async,
        rt.process,
        rt.process_async <= rt.process,
        &paired_figures(&m.paired),
    );
    let s = &m.small;
    push(
        "ProcessPool, 10,000 small tasks in flight, per task vs spawn_blocking \
         (2 blocking threads) (≤ 1.0×)"
            .into(),
        s.process,
        s.spawn_blocking,
        s.process <= s.spawn_blocking,
        "",
    );
    let (pipe, process, fresh, bytes) = m.bulk;
    let mib = bytes >> 20;
    let bulk_figures = |(pipe, process, fresh): (f64, f64, f64)| {
        format!(
            "{} against {}, {:.2}×; the two fresh {mib} MiB values a task hands \
             over take {} alone, the pipe plus them {} ({:.2}× of its throughput)",
            fmt_time(process),
            fmt_time(pipe),
            pipe / process,
            fmt_time(fresh),
            fmt_time(pipe + fresh),
            (pipe + fresh) / process
        )
    };
    let pinned = m
        .bulk_pinned
        .map_or(String::new(), |b| format!("; one CPU: {}", bulk_figures(b)));
    targets.push(Target {
        what: format!("{mib} MiB ByteBuf round trip, throughput vs the raw pipe (≥ 0.8×)"),
        value: format!("{}{pinned}", bulk_figures((pipe, process, fresh))),
        met: pipe / process >= 0.8,
    });
    if let Some(f) = maps.factor.iter().max_by_key(|f| f.count) {
        targets.push(Target {
            what: format!(
                "map of {} factorisations on 2 workers, throughput vs two plain threads (≥ 0.9×)",
                grouped(f.count)
            ),
            value: format!(
                "{} against {}, {:.2}×",
                fmt_time(f.process),
                fmt_time(f.halves),
                f.halves / f.process
            ),
            met: f.halves / f.process >= 0.9,
        });
    }
    print_targets("the second speed issue", &targets);
    let tokio_cost = |rt: &RoundTrip| {
        format!(
            "{} awaited against {} blocking, {:.2}×",
            fmt_time(rt.raw_pipe_async),
            fmt_time(rt.raw_pipe),
            rt.raw_pipe_async / rt.raw_pipe
        )
    };
    println!(
        "(What awaiting on tokio's reactor adds to the raw pipe itself: {} on 2 CPUs{}.)",
        tokio_cost(&m.round_trip),
        m.pinned
            .as_ref()
            .map(|rt| format!(", {} on one CPU", tokio_cost(rt)))
            .unwrap_or_default()
    );
}

/// What the table's figures are, and a gauge of the Python run's conditions.
fn print_notes(m: &Measured, py: Option<&Python>) {
    println!(
        "\nMedians of interleaved repetitions; procpool / peer < 1 means procpool is faster. \
         \"One CPU\" rows pin this process, its pools and Python's to a single CPU: no \
         wake-up has to cross CPUs, so they show a round trip's CPU cost and vary far less \
         between runs. The Rust round-trip pools have 1 worker (thread) and are built afresh \
         for every repetition; the {SMALL_TASKS}-task pools have 2 workers, as do all of \
         Python's pools."
    );
    if let Some(py) = py {
        let py_us = |key: &str| {
            py.num(key)
                .map_or_else(|| "n/a".into(), |v| fmt_time(v * 1e-6))
        };
        let pinned = (m.pinned.as_ref()).map_or_else(|| "n/a".into(), |rt| fmt_time(rt.raw_pipe));
        println!(
            "\nPython's figures come from a separate run of `scripts/python_peers.py` right \
             after. Its raw pipe round trip took {} ({} on one CPU), against {} ({}) here: \
             the closer these agree, the more the Python ratios can be trusted.",
            py_us("raw_pipe_us"),
            py_us("pinned_raw_pipe_us"),
            fmt_time(m.round_trip.raw_pipe),
            pinned,
        );
    }
}

fn main() {
    // Must come first: procspawn's children re-enter `main` and are taken over
    // here.
    procspawn::init();
    let cfg = Config::new(std::env::args().skip(1).any(|a| a == "--quick"));
    if std::env::args().skip(1).any(|a| a == "--remote-only") {
        remote::print_remote_section(cfg.quick);
        return;
    }
    let began = Instant::now();
    let cpu_clock = CpuClock::now();

    let free = round_trip(&cfg, false).expect("unpinned round trip");
    let pinned = round_trip(&cfg, true);
    let small = many_small(&cfg);
    let (pipe, process, fresh) = bulk(&cfg, false).expect("unpinned bulk round trip");
    let bulk_pinned = bulk(&cfg, true);
    let start = pool_start(&cfg);
    let paired = paired_round_trip(&cfg);
    let measured = Measured {
        round_trip: free,
        pinned,
        small,
        bulk: (pipe, process, fresh, cfg.big_bytes),
        bulk_pinned,
        start,
        paired,
    };
    let maps = maps(&cfg);
    let python = Python::run(&cfg);
    let py = python.as_ref().ok();

    print_header(&cfg, &python, cpu_clock);
    print_table(&comparison_rows(&measured, py));
    print_notes(&measured, py);
    print_speed_targets(&measured);
    print_maps(&maps, py);
    print_speed2_targets(&measured, &maps);
    remote::print_remote_section(cfg.quick);
    eprintln!("done in {:.1} s", began.elapsed().as_secs_f64());
}
