//! Chaos soak and load: many concurrent callers, a random mix of normal tasks,
//! panics, timeouts, dropped handles, dropped map streams, blocking callers
//! and large arguments and results (0.25 to 2.25 MiB, through the shared
//! memory regions on Linux), while a killer thread SIGKILLs random workers.
//!
//! Checks: every handle resolves; every success carries the right value; no
//! task removed from the queue ever runs; a global deadline proves nothing
//! hangs; afterwards no zombie, the configured number of workers, and the
//! descriptor count at its baseline.
//!
//! CI runs 20,000 tasks. The long run:
//! `PROCPOOL_CHAOS_TASKS=1000000 cargo test --release --test chaos`.

#[path = "common/mod.rs"]
mod common;

use std::collections::HashSet;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::wait_until;
use futures::StreamExt;
use procpool::{ProcessPool, TaskError, ThreadPool};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

const LOG_ENV: &str = "PROCPOOL_CHAOS_LOG";
/// Map items get ids from here on, so they never collide with task ids.
const MAP_IDS: u64 = 1 << 40;

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
enum Work {
    Value,
    Panic,
    SleepMs(u64),
}

/// Records that task `id` ran (in whichever process runs it), then does `work`.
fn chaos_task((id, work): (u64, Work)) -> u64 {
    log_ran(id);
    match work {
        Work::Value => id * 3,
        Work::Panic => panic!("chaos panic {id}"),
        Work::SleepMs(ms) => {
            std::thread::sleep(Duration::from_millis(ms));
            id * 3
        }
    }
}

/// A large argument and result (in shared memory on Linux), reversed.
fn chaos_large((id, bytes): (u64, ByteBuf)) -> ByteBuf {
    log_ran(id);
    let mut v = bytes.into_vec();
    v.reverse();
    ByteBuf::from(v)
}

/// The bytes task `id` sends with [`chaos_large`].
fn large_payload(id: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64 ^ id).wrapping_mul(7) as u8)
        .collect()
}

/// Appends `id` to the log of tasks that ran, if one is kept.
fn log_ran(id: u64) {
    static LOG: OnceLock<Mutex<std::fs::File>> = OnceLock::new();
    if let Ok(path) = std::env::var(LOG_ENV) {
        let log = LOG.get_or_init(|| {
            Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .unwrap(),
            )
        });
        // One write per line: appends from several processes never interleave.
        let _ = log.lock().unwrap().write_all(format!("{id}\n").as_bytes());
    }
}

fn square(x: u64) -> u64 {
    x * x
}

/// xorshift: reproducible randomness without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    worker_died: AtomicU64,
    panicked: AtomicU64,
    timeouts: AtomicU64,
    dropped_queued: AtomicU64,
    dropped_running: AtomicU64,
    streams_dropped: AtomicU64,
    blocking_calls: AtomicU64,
    kills: AtomicU64,
    violations: Mutex<Vec<String>>,
    removed: Mutex<HashSet<u64>>,
}

impl Tally {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    fn violation(&self, what: String) {
        self.violations.lock().unwrap().push(what);
    }
    /// A task of `work` for `id` resolved with `r`.
    fn check(&self, id: u64, work: Work, r: Result<u64, TaskError>) {
        match (work, r) {
            (Work::Panic, Err(TaskError::Panicked { .. })) => Tally::bump(&self.panicked),
            (Work::Panic, Ok(v)) => self.violation(format!("task {id} should panic, gave {v}")),
            (_, Ok(v)) if v == id * 3 => Tally::bump(&self.ok),
            (_, Ok(v)) => self.violation(format!("task {id}: wrong value {v}")),
            (_, Err(TaskError::WorkerDied { .. })) => Tally::bump(&self.worker_died),
            (_, Err(e)) => self.violation(format!("task {id}: unexpected {e:?}")),
        }
    }
}

#[cfg(windows)]
fn open_fds() -> usize {
    common::handle_count()
}

/// Child processes and their state letter (Windows: 'R', it has no zombies).
#[cfg(windows)]
fn child_processes() -> Vec<(u32, char)> {
    common::child_pids().into_iter().map(|p| (p, 'R')).collect()
}

#[cfg(unix)]
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[cfg(unix)]
fn child_processes() -> Vec<(u32, char)> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|&p| common::parent_of(p) == Some(me))
        .filter_map(|p| common::proc_state(p).map(|s| (p, s)))
        .collect()
}

async fn caller(pool: ProcessPool, tally: Arc<Tally>, seed: u64, ids: std::ops::Range<u64>) {
    let mut rng = Rng(seed | 1);
    for id in ids {
        match rng.below(100) {
            0..=59 => tally.check(
                id,
                Work::Value,
                pool.spawn(chaos_task, (id, Work::Value)).await,
            ),
            60..=66 => tally.check(
                id,
                Work::Panic,
                pool.spawn(chaos_task, (id, Work::Panic)).await,
            ),
            67..=68 => {
                let work = Work::SleepMs(200);
                let task = pool.spawn(chaos_task, (id, work));
                match tokio::time::timeout(Duration::from_millis(5), task).await {
                    Err(_) => Tally::bump(&tally.timeouts),
                    Ok(r) => tally.check(id, work, r),
                }
            }
            69..=80 => {
                let task = pool.spawn(chaos_task, (id, Work::SleepMs(1)));
                if task.cancel_if_queued() {
                    tally.removed.lock().unwrap().insert(id);
                    Tally::bump(&tally.dropped_queued);
                    if task.await != Err(TaskError::Cancelled) {
                        tally
                            .violation(format!("task {id}: removed but did not resolve Cancelled"));
                    }
                } else {
                    drop(task);
                    Tally::bump(&tally.dropped_running);
                }
            }
            81..=83 => {
                let task = pool.spawn(chaos_task, (id, Work::SleepMs(20)));
                tokio::time::sleep(Duration::from_millis(rng.below(4))).await;
                drop(task); // queued or running: either way it must stop
                Tally::bump(&tally.dropped_running);
            }
            84..=89 => {
                let first = MAP_IDS + id * 1000; // apart from plain task ids
                let inputs: Vec<_> = (first..first + 40).map(|i| (i, Work::Value)).collect();
                let take = rng.below(40) as usize;
                let mut stream = pool.map(chaos_task, inputs).chunk_size(4);
                for i in 0..take as u64 {
                    match stream.next().await {
                        Some(r) => tally.check(first + i, Work::Value, r),
                        None => tally.violation(format!("map {id} ended early")),
                    }
                }
                drop(stream);
                Tally::bump(&tally.streams_dropped);
            }
            90..=91 => {
                let len = 256 * 1024 + rng.below(2 << 20) as usize;
                let sent = large_payload(id, len);
                let task = pool.spawn(chaos_large, (id, ByteBuf::from(sent.clone())));
                match task.await {
                    Ok(back) if back.iter().rev().eq(sent.iter()) => Tally::bump(&tally.ok),
                    Ok(_) => tally.violation(format!("task {id}: large value came back wrong")),
                    Err(TaskError::WorkerDied { .. }) => Tally::bump(&tally.worker_died),
                    Err(e) => tally.violation(format!("task {id}: unexpected {e:?}")),
                }
            }
            _ => {
                let pool = pool.clone();
                let r = tokio::task::spawn_blocking(move || {
                    pool.apply_blocking(chaos_task, (id, Work::Value))
                })
                .await
                .unwrap();
                tally.check(id, Work::Value, r);
                Tally::bump(&tally.blocking_calls);
            }
        }
    }
}

fn soak_process_pool(tasks: u64) {
    let log = common::temp_dir("chaos").join("ran.log");
    // SAFETY-free in edition 2021, and no other thread exists yet that reads
    // the environment: workers inherit this, so tasks log where they ran.
    std::env::set_var(LOG_ENV, &log);
    let fds = open_fds();
    let pool = ProcessPool::builder().workers(2).build().unwrap();
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let killer = {
        let (pool, tally, stop) = (pool.clone(), tally.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(40 + rng.below(80)));
                let pids = pool.worker_pids();
                if pids.is_empty() {
                    continue;
                }
                let victim = pids[rng.below(pids.len() as u64) as usize];
                if common::kill(victim) {
                    Tally::bump(&tally.kills);
                }
            }
        })
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let callers = 16u64;
    let per = tasks / callers;
    let started = Instant::now();
    let deadline = Duration::from_secs(900);
    let finished = rt.block_on(async {
        let all = (0..callers).map(|c| {
            tokio::spawn(caller(
                pool.clone(),
                tally.clone(),
                0x1234_5678 + c,
                c * per..(c + 1) * per,
            ))
        });
        tokio::time::timeout(deadline, futures::future::join_all(all)).await
    });
    stop.store(true, Ordering::Relaxed);
    killer.join().unwrap();
    assert!(
        finished.is_ok(),
        "HANG: the soak did not finish within {deadline:?}"
    );
    for r in finished.unwrap() {
        r.expect("a caller panicked");
    }

    // Nothing removed from the queue ever ran.
    let ran: HashSet<u64> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    let removed = tally.removed.lock().unwrap().clone();
    let ran_anyway: Vec<_> = removed.intersection(&ran).collect();
    assert!(
        ran_anyway.is_empty(),
        "tasks removed from the queue ran: {ran_anyway:?}"
    );

    assert!(
        wait_until(Duration::from_secs(20), || pool.worker_pids().len() == 2),
        "workers not back to 2: {:?}",
        pool.worker_pids()
    );
    assert_eq!(pool.apply_blocking(square, 12), Ok(144));
    rt.block_on(pool.shutdown());
    drop(pool);
    drop(rt);
    assert!(
        wait_until(Duration::from_secs(20), || child_processes().is_empty()),
        "leftover children: {:?}",
        child_processes()
    );
    assert!(
        wait_until(Duration::from_secs(20), || open_fds() <= fds),
        "descriptor leak: {fds} before, {} after",
        open_fds()
    );
    let violations = tally.violations.lock().unwrap();
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    println!(
        "  process pool chaos: {} tasks by {callers} callers in {:.1?}; faults injected: {} SIGKILLs, \
         {} panics, {} timeouts, {} handles dropped while queued, {} while running, {} map streams \
         dropped; {} ok, {} failed by a kill, {} blocking calls; lost 0, hangs 0, leaks 0",
        per * callers,
        started.elapsed(),
        get(&tally.kills),
        get(&tally.panicked),
        get(&tally.timeouts),
        get(&tally.dropped_queued),
        get(&tally.dropped_running),
        get(&tally.streams_dropped),
        get(&tally.ok),
        get(&tally.worker_died),
        get(&tally.blocking_calls),
    );
    assert!(
        violations.is_empty(),
        "{} violations, first: {:?}",
        violations.len(),
        &violations[..violations.len().min(5)]
    );
    assert_eq!(ran_anyway.len(), 0);
}

fn soak_thread_pool(tasks: u64) {
    let pool = ThreadPool::new(2).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tally = Arc::new(Tally::default());
    let finished = rt.block_on(async {
        let jobs = (0..16u64).map(|c| {
            let (pool, tally) = (pool.clone(), tally.clone());
            tokio::spawn(async move {
                let mut rng = Rng(0xabcdef + c);
                for id in c * (tasks / 16)..(c + 1) * (tasks / 16) {
                    match rng.below(10) {
                        0 => tally.check(
                            id,
                            Work::Panic,
                            pool.spawn(chaos_task, (id, Work::Panic)).await,
                        ),
                        1 => {
                            let t = pool.spawn(chaos_task, (id, Work::Value));
                            if t.cancel_if_queued() {
                                Tally::bump(&tally.dropped_queued);
                            }
                        }
                        _ => tally.check(
                            id,
                            Work::Value,
                            pool.spawn(chaos_task, (id, Work::Value)).await,
                        ),
                    }
                }
            })
        });
        tokio::time::timeout(Duration::from_secs(300), futures::future::join_all(jobs)).await
    });
    assert!(finished.is_ok(), "HANG in the thread-pool soak");
    let violations = tally.violations.lock().unwrap();
    assert!(
        violations.is_empty(),
        "{:?}",
        &violations[..violations.len().min(5)]
    );
    println!(
        "  thread pool chaos: {} tasks, {} panics, {} removed while queued; lost 0, hangs 0",
        tasks / 16 * 16,
        tally.panicked.load(Ordering::Relaxed),
        tally.dropped_queued.load(Ordering::Relaxed)
    );
}

/// 1,000 concurrent callers on each pool; every one gets its answers.
fn a_thousand_concurrent_callers() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let procs = ProcessPool::new(2).unwrap();
    let threads = ThreadPool::new(2).unwrap();
    let done = rt.block_on(async {
        let p = (0..1000u64).map(|i| {
            let (procs, threads) = (procs.clone(), threads.clone());
            tokio::spawn(async move {
                for j in 0..3 {
                    assert_eq!(procs.apply(square, i + j).await, Ok((i + j) * (i + j)));
                    assert_eq!(threads.apply(square, i + j).await, Ok((i + j) * (i + j)));
                }
            })
        });
        tokio::time::timeout(Duration::from_secs(300), futures::future::join_all(p)).await
    });
    for r in done.expect("HANG: callers waited forever") {
        r.unwrap();
    }
    println!("  1,000 concurrent callers × 3 calls on each pool: all answered");
}

/// A `max_queue` pool under 10× overload: memory stays bounded and no caller
/// waits forever.
fn a_bounded_pool_under_overload() {
    fn rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pool = ProcessPool::builder()
        .workers(2)
        .max_queue(100)
        .build()
        .unwrap();
    let before = rss_kib();
    let full = Arc::new(AtomicU64::new(0));
    let done = rt.block_on(async {
        let callers = (0..1000u64).map(|i| {
            let (pool, full) = (pool.clone(), full.clone());
            tokio::spawn(async move {
                // Each caller first tries without waiting, then waits its turn.
                if pool.try_spawn(chaos_task, (i, Work::Value)).is_err() {
                    full.fetch_add(1, Ordering::Relaxed);
                }
                let payload = vec![0u8; 64 * 1024]; // held while waiting: shows in RSS
                let r = pool.apply(chaos_task, (i, Work::SleepMs(1))).await;
                drop(payload);
                assert_eq!(r, Ok(i * 3));
            })
        });
        tokio::time::timeout(Duration::from_secs(300), futures::future::join_all(callers)).await
    });
    for r in done.expect("HANG: a caller waited forever under overload") {
        r.unwrap();
    }
    let grown = rss_kib().saturating_sub(before);
    assert!(
        full.load(Ordering::Relaxed) > 0,
        "the queue never filled: not an overload"
    );
    assert!(
        grown < 512 * 1024,
        "memory grew by {grown} KiB under overload"
    );
    println!(
        "  max_queue(100) under 10x overload (1,000 callers): all served, {} try_spawn refusals, RSS +{} KiB",
        full.load(Ordering::Relaxed),
        grown
    );
}

fn main() {
    let tasks: u64 = std::env::var("PROCPOOL_CHAOS_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    // The deliberate panics would flood the log (thread-pool panics are
    // reported by the default hook, as in any thread); keep everything else.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let deliberate = info
            .payload()
            .downcast_ref::<String>()
            .is_some_and(|m| m.starts_with("chaos panic"));
        if !deliberate {
            default_hook(info);
        }
    }));
    // Create process-wide one-time state before taking baselines.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(ProcessPool::new(1).unwrap().shutdown());
    drop(rt);
    common::run_sequentially(&[
        ("process_pool_chaos_soak", &|| soak_process_pool(tasks)),
        ("thread_pool_chaos_soak", &|| soak_thread_pool(tasks / 4)),
        (
            "a_thousand_concurrent_callers",
            &a_thousand_concurrent_callers,
        ),
        (
            "a_bounded_pool_under_overload",
            &a_bounded_pool_under_overload,
        ),
    ]);
}
