//! Worker lifecycle: initializer, recycling, elastic size, bounded queue, stats.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{is_reaped, temp_dir, wait_until};
use procpool::{Error, ProcessPool, TaskError, ThreadPool, TrySpawnError};

static INIT_VALUE: AtomicU64 = AtomicU64::new(0);

fn append(path: &PathBuf, line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    // One write per line: `writeln!` may split it into several, which two
    // workers appending at once could interleave.
    f.write_all(format!("{line}\n").as_bytes()).unwrap();
}

/// Records which process ran it and sets a static the tasks read.
fn init_and_log((log, value): (PathBuf, u64)) {
    append(&log, &std::process::id().to_string());
    INIT_VALUE.store(value, Ordering::SeqCst);
}

fn read_init_value(_: ()) -> (u32, u64) {
    (std::process::id(), INIT_VALUE.load(Ordering::SeqCst))
}

fn init_panics(_: ()) {
    panic!("no model file")
}

fn init_fails(path: String) -> Result<(), String> {
    Err(format!("cannot open {path}"))
}

/// Fails (and logs the attempt) once `marker` exists.
fn init_fails_after_marker((log, marker): (PathBuf, PathBuf)) -> Result<(), String> {
    append(&log, "attempt");
    if marker.exists() {
        Err("the marker says no".into())
    } else {
        Ok(())
    }
}

fn pid(_: ()) -> u32 {
    std::process::id()
}

fn logged_pid((log, i): (PathBuf, u32)) -> u32 {
    append(&log, &i.to_string());
    std::process::id()
}

fn crash(_: ()) -> u32 {
    std::process::abort()
}

fn leak_mib(mib: usize) -> u32 {
    let block = vec![1u8; mib << 20];
    std::hint::black_box(&block);
    std::mem::forget(block);
    std::process::id()
}

#[cfg(unix)]
fn niceness(_: ()) -> i32 {
    rustix::process::getpriority_process(None).unwrap()
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn mark_then_sleep((path, ms): (PathBuf, u64)) -> u64 {
    std::fs::write(path, b"started").unwrap();
    sleep_ms(ms)
}

fn panics(_: ()) -> u64 {
    panic!("boom")
}

#[tokio::test]
async fn the_initializer_runs_once_per_worker_before_its_tasks() {
    let dir = temp_dir("init");
    let log = dir.join("init.log");
    let pool = ProcessPool::builder()
        .workers(2)
        .initializer(init_and_log, (log.clone(), 42))
        .build()
        .unwrap();
    let mut seen = HashSet::new();
    for _ in 0..20 {
        let (worker, value) = pool.apply(read_init_value, ()).await.unwrap();
        assert_eq!(value, 42, "a task ran before its worker's initializer");
        seen.insert(worker);
    }
    let runs: Vec<u32> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(runs.len(), 2, "one initializer run per worker: {runs:?}");
    assert!(seen.iter().all(|p| runs.contains(p)));
    // A replacement worker is initialised too.
    assert!(pool.apply(crash, ()).await.is_err());
    let (_, value) = pool.apply(read_init_value, ()).await.unwrap();
    assert_eq!(value, 42);
    assert!(wait_until(
        Duration::from_secs(10),
        || std::fs::read_to_string(&log).unwrap().lines().count() == 3
    ));
}

#[test]
fn a_failing_initializer_fails_build_with_its_message() {
    match ProcessPool::builder()
        .workers(1)
        .initializer(init_panics, ())
        .build()
    {
        Err(Error::Initializer { message, .. }) => {
            assert!(message.contains("no model file"), "{message}")
        }
        other => panic!("expected Initializer error, got {other:?}"),
    }
    match ProcessPool::builder()
        .workers(1)
        .try_initializer(init_fails, "m.bin".to_string())
        .build()
    {
        Err(Error::Initializer { message, .. }) => assert_eq!(message, "cannot open m.bin"),
        other => panic!("expected Initializer error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_crash_looping_worker_fails_tasks_instead_of_respawning_forever() {
    let dir = temp_dir("crashloop");
    let (log, marker) = (dir.join("attempts.log"), dir.join("marker"));
    let pool = ProcessPool::builder()
        .workers(1)
        .try_initializer(init_fails_after_marker, (log.clone(), marker.clone()))
        .build()
        .unwrap();
    assert!(pool.apply(pid, ()).await.is_ok());
    std::fs::write(&marker, b"").unwrap();
    assert!(matches!(
        pool.apply(crash, ()).await,
        Err(TaskError::WorkerDied { .. })
    ));
    let mut start_errors = 0;
    for _ in 0..5 {
        match pool.apply(pid, ()).await {
            Err(TaskError::WorkerStart(why)) => {
                assert!(why.contains("the marker says no"), "{why}");
                start_errors += 1;
            }
            other => panic!("expected WorkerStart, got {other:?}"),
        }
    }
    assert_eq!(start_errors, 5);
    let before = std::fs::read_to_string(&log).unwrap().lines().count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = std::fs::read_to_string(&log).unwrap().lines().count();
    assert!(
        after - before <= 5,
        "{} start attempts in 2 s",
        after - before
    );
    assert!(pool.stats().restarts.start_failed >= 1);
}

#[tokio::test]
async fn max_tasks_per_worker_recycles_without_losing_or_repeating_tasks() {
    let dir = temp_dir("recycle");
    let log = dir.join("runs.log");
    let pool = ProcessPool::builder()
        .workers(1)
        .max_tasks_per_worker(2)
        .build()
        .unwrap();
    // All at once, so tasks are also sent ahead to the worker.
    let tasks: Vec<_> = (0..10)
        .map(|i| pool.spawn(logged_pid, (log.clone(), i)))
        .collect();
    let mut pids = Vec::new();
    for t in tasks {
        pids.push(t.await.unwrap());
    }
    // Each worker ran exactly 2 tasks. (Not necessarily two neighbours: a
    // task queued while the worker was lent to the async lane is requeued
    // behind the ones queued after it.)
    let mut per_worker = std::collections::HashMap::new();
    for &pid in &pids {
        *per_worker.entry(pid).or_insert(0) += 1;
    }
    assert!(
        per_worker.values().all(|&n| n == 2),
        "a worker ran other than 2 tasks: {pids:?}"
    );
    let distinct: HashSet<_> = pids.iter().collect();
    assert_eq!(
        distinct.len(),
        5,
        "the pid must change every 2 tasks: {pids:?}"
    );
    let mut runs: Vec<u32> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    runs.sort_unstable();
    assert_eq!(
        runs,
        (0..10).collect::<Vec<_>>(),
        "a task was lost or ran twice"
    );
    assert!(pool.stats().restarts.max_tasks >= 4);
}

#[tokio::test]
async fn max_memory_recycles_after_the_task_and_keeps_its_result() {
    let pool = ProcessPool::builder()
        .workers(1)
        .max_memory_per_worker(60 << 20)
        .build()
        .unwrap();
    let before = pool.apply(pid, ()).await.unwrap();
    let leaked_in = pool.apply(leak_mib, 100).await.unwrap();
    assert_eq!(leaked_in, before, "the leaking task's result is delivered");
    let after = pool.apply(pid, ()).await.unwrap();
    assert_ne!(after, before, "the bloated worker was not recycled");
    assert!(wait_until(Duration::from_secs(10), || is_reaped(before)));
    assert_eq!(pool.stats().restarts.max_memory, 1);
}

#[tokio::test]
async fn an_elastic_pool_shrinks_to_nothing_when_idle_and_grows_on_demand() {
    let pool = ProcessPool::builder()
        .workers(2)
        .min_workers(0)
        .idle_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    assert!(pool.worker_pids().is_empty(), "workers start lazily");
    let first = pool.apply(pid, ()).await.unwrap();
    assert!(pool.worker_pids().contains(&first));
    // Two long tasks at once need both workers.
    let (a, b) = tokio::join!(pool.apply(sleep_ms, 300), pool.apply(sleep_ms, 300));
    assert_eq!((a, b), (Ok(300), Ok(300)));
    let pids = pool.worker_pids();
    assert!(
        wait_until(Duration::from_secs(10), || pool.worker_pids().is_empty()),
        "idle workers did not exit"
    );
    for p in pids {
        assert!(wait_until(Duration::from_secs(5), || is_reaped(p)));
    }
    assert_eq!(pool.stats().workers, 0);
    let again = pool.apply(pid, ()).await.unwrap();
    assert_ne!(again, first);
    assert!(pool.stats().restarts.idle >= 1);
}

#[tokio::test]
async fn a_full_queue_applies_backpressure_and_loses_nothing() {
    let dir = temp_dir("queue");
    let pool = ProcessPool::builder()
        .workers(1)
        .max_queue(2)
        .build()
        .unwrap();
    let running = pool.spawn(mark_then_sleep, (dir.join("started"), 600));
    assert!(wait_until(Duration::from_secs(10), || dir
        .join("started")
        .exists()));
    let q1 = pool.try_spawn(sleep_ms, 1).unwrap();
    let q2 = pool.try_spawn(sleep_ms, 2).unwrap();
    // The running task may hold its worker through the async lane; its
    // supervisor then takes at most one queued job aside (to hand it to a
    // free worker, or to run it next), which frees one place once. Fill
    // that too, then the queue stays full.
    let mut extra = Vec::new();
    for round in 0..2 {
        loop {
            match pool.try_spawn(sleep_ms, 3) {
                Ok(task) => extra.push(task),
                Err(e) => {
                    assert_eq!(e, TrySpawnError::Full);
                    break;
                }
            }
            assert!(
                extra.len() <= 1,
                "more than one place appeared in a full queue"
            );
        }
        if round == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // spawn_async waits for room rather than failing.
    let waiting = pool.spawn_async(sleep_ms, 4);
    tokio::pin!(waiting);
    assert!(
        tokio::time::timeout(Duration::from_millis(150), &mut waiting)
            .await
            .is_err(),
        "spawn_async returned while the queue was full"
    );
    let q4 = waiting.await;
    assert_eq!(running.await, Ok(600));
    assert_eq!((q1.await, q2.await, q4.await), (Ok(1), Ok(2), Ok(4)));
    for task in extra {
        assert_eq!(task.await, Ok(3));
    }
    pool.shutdown().await;
    assert_eq!(
        pool.try_spawn(sleep_ms, 5).unwrap_err(),
        TrySpawnError::Closed
    );
}

#[tokio::test]
async fn stats_count_what_happened() {
    let pool = ProcessPool::new(2).unwrap();
    for _ in 0..10 {
        pool.apply(sleep_ms, 1).await.unwrap();
    }
    assert!(pool.apply(panics, ()).await.is_err());
    assert!(pool.apply(crash, ()).await.is_err());
    let s = pool.stats();
    assert_eq!(s.completed, 10);
    assert_eq!(s.failed, 2);
    assert_eq!(s.restarts.crashed, 1);
    assert_eq!(s.run_time.count, 11); // the crash reported no run time
    assert!(s.run_time.p50 >= Duration::from_millis(1));
    assert_eq!(s.queued, 0);
    assert!(wait_until(Duration::from_secs(10), || pool.stats().workers == 2));
}

#[tokio::test]
async fn a_thread_pool_has_a_bounded_queue_and_stats() {
    let dir = temp_dir("tp-queue");
    let pool = ThreadPool::builder()
        .workers(1)
        .max_queue(1)
        .build()
        .unwrap();
    let running = pool.spawn(mark_then_sleep, (dir.join("started"), 300));
    assert!(wait_until(Duration::from_secs(10), || dir
        .join("started")
        .exists()));
    let queued = pool.try_spawn(sleep_ms, 1).unwrap();
    assert_eq!(
        pool.try_spawn(sleep_ms, 2).unwrap_err(),
        TrySpawnError::Full
    );
    let later = pool.spawn_async(sleep_ms, 3).await;
    assert_eq!(
        (running.await, queued.await, later.await),
        (Ok(300), Ok(1), Ok(3))
    );
    assert!(pool.apply(panics, ()).await.is_err());
    let s = pool.stats();
    assert_eq!((s.completed, s.failed, s.workers), (3, 1, 1));
    assert_eq!(s.wait_time.count, 4);
}

/// Tasks queued behind a running one, through every way into the queue
/// (`spawn`, `apply`, `try_spawn`, `apply_blocking`), count their wait; calls
/// that find an idle worker count none on Unix (they take the direct lane),
/// and little on Windows (they go through the queue).
#[tokio::test]
async fn queued_tasks_count_their_wait() {
    // (The supervisor opens an idle worker's direct lane a moment after the
    // pool is built and after each queued task, so a call may now and then
    // still find it closed: the median of many calls is what must be zero.)
    let idle = ProcessPool::builder().workers(1).build().unwrap();
    for i in 0..21 {
        assert_eq!(idle.apply(sleep_ms, 0).await, Ok(0), "call {i}");
    }
    let idle_wait = idle.stats().wait_time;
    assert_eq!(idle_wait.count, 21);
    if cfg!(unix) {
        assert_eq!(idle_wait.p50, Duration::ZERO, "{idle_wait:?}");
    } else {
        assert!(idle_wait.p50 < Duration::from_millis(100), "{idle_wait:?}");
    }

    let dir = temp_dir("wait-time");
    let pool = ProcessPool::builder().workers(1).build().unwrap();
    let running = pool.spawn(mark_then_sleep, (dir.join("started"), 400));
    assert!(wait_until(Duration::from_secs(10), || dir
        .join("started")
        .exists()));
    let spawned = pool.spawn(sleep_ms, 1);
    let tried = pool.try_spawn(sleep_ms, 2).unwrap();
    let blocking = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.apply_blocking(sleep_ms, 3))
    };
    let applied = pool.apply(sleep_ms, 4).await;
    assert_eq!(
        (running.await, spawned.await, tried.await, applied),
        (Ok(400), Ok(1), Ok(2), Ok(4))
    );
    assert_eq!(blocking.join().unwrap(), Ok(3));
    let wait = pool.stats().wait_time;
    assert_eq!(wait.count, 5);
    // Four of five waited for most of the 400 ms task: the median is one of
    // them.
    assert!(wait.p50 >= Duration::from_millis(100), "{wait:?}");
}

// Niceness is Unix's; Windows maps it to priority classes instead.
#[cfg(unix)]
#[tokio::test]
async fn workers_can_run_at_a_lower_priority() {
    let base = niceness(());
    let pool = ProcessPool::builder()
        .workers(1)
        .worker_niceness(10)
        .build()
        .unwrap();
    assert_eq!(pool.apply(niceness, ()).await, Ok((base + 10).min(19)));
    let plain = ProcessPool::new(1).unwrap();
    assert_eq!(plain.apply(niceness, ()).await, Ok(base));
}

/// Drops the last handles of both pools, with a task running on each, inside
/// a `#[tokio::test]`: no panic (tokio refuses to drop a runtime or block in
/// async context), no wait, and the workers are reaped afterwards.
async fn drop_both_pools_inside_the_runtime() {
    let pool = ProcessPool::new(2).unwrap();
    let threads = ThreadPool::new(2).unwrap();
    assert_eq!(pool.apply(sleep_ms, 1).await, Ok(1));
    assert_eq!(threads.apply(sleep_ms, 1).await, Ok(1));
    let running = pool.spawn(sleep_ms, 60_000);
    let _background = threads.spawn(sleep_ms, 300);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let workers = pool.worker_pids();
    let started = std::time::Instant::now();
    drop((pool, threads, running));
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "dropping the pools held the runtime for {:?}",
        started.elapsed()
    );
    assert!(
        wait_until(Duration::from_secs(10), || workers
            .iter()
            .all(|&p| is_reaped(p))),
        "workers {workers:?} left behind"
    );
}

#[tokio::test]
async fn dropping_pools_inside_a_current_thread_tokio_test() {
    drop_both_pools_inside_the_runtime().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_pools_inside_a_multi_thread_tokio_test() {
    drop_both_pools_inside_the_runtime().await;
}
