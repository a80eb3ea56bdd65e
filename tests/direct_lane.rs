//! The direct lane: `apply_blocking` borrows an idle worker and talks to it
//! from the calling thread. These tests cover the hand-offs between a
//! borrower and the worker's supervisor: queued work arriving while the worker
//! is lent, terminate and shutdown during a borrow, recycling limits and idle
//! timeouts that must still hold when the supervisor sees none of the calls.
//!
//! Unix only: Windows has no direct lane (`apply_blocking` goes through the
//! queue there), and these checks fork and signal.
#![cfg(unix)]

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{is_reaped, temp_dir, wait_until};
use procpool::{CodecStage, ProcessPool, TaskError};
use serde::{Deserialize, Deserializer, Serialize};

fn pid(_: ()) -> u32 {
    std::process::id()
}

fn square(x: u64) -> u64 {
    x * x
}

/// Creates `path`, then sleeps `ms` (or forever for `u64::MAX`).
fn mark_then_sleep((path, ms): (PathBuf, u64)) -> u64 {
    std::fs::write(&path, b"started").unwrap();
    if ms == u64::MAX {
        loop {
            std::thread::park();
        }
    }
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Forks a child that keeps every inherited descriptor open (no exec, so
/// close-on-exec does not help) and reports its pid, then aborts.
fn forks_then_aborts(pid_file: PathBuf) -> u64 {
    // SAFETY: the child only calls async-signal-safe functions (sleep, _exit).
    let child = unsafe { libc::fork() };
    if child == 0 {
        unsafe {
            libc::sleep(60);
            libc::_exit(0)
        }
    }
    std::fs::write(&pid_file, child.to_string()).unwrap();
    std::process::abort()
}

/// A result whose `Deserialize` panics (in the parent).
#[derive(Debug, Serialize)]
struct PanicsWhenDecoded(u8);
impl<'de> Deserialize<'de> for PanicsWhenDecoded {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        panic!("deliberate panic in Deserialize")
    }
}
fn panicky_result(_: ()) -> PanicsWhenDecoded {
    PanicsWhenDecoded(1)
}

/// Creates `path`, waits `ms`, then aborts the worker.
fn mark_then_abort((path, ms): (PathBuf, u64)) -> u64 {
    std::fs::write(&path, b"started").unwrap();
    std::thread::sleep(Duration::from_millis(ms));
    std::process::abort()
}

/// A current-thread runtime with timers, for awaiting tasks under a timeout.
fn timer_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// Starts a blocking call of `mark_then_sleep` on a plain thread and returns
/// once the worker has started it.
fn borrow_in_background(
    pool: &ProcessPool,
    dir: &std::path::Path,
    ms: u64,
) -> std::thread::JoinHandle<Result<u64, TaskError>> {
    borrow_with(pool, dir, mark_then_sleep, ms)
}

fn borrow_with(
    pool: &ProcessPool,
    dir: &std::path::Path,
    f: fn((PathBuf, u64)) -> u64,
    ms: u64,
) -> std::thread::JoinHandle<Result<u64, TaskError>> {
    let marker = dir.join("started");
    let _ = std::fs::remove_file(&marker);
    let caller = {
        let pool = pool.clone();
        let marker = marker.clone();
        std::thread::spawn(move || pool.apply_blocking(f, (marker, ms)))
    };
    assert!(
        wait_until(Duration::from_secs(10), || marker.exists()),
        "the blocking call never started"
    );
    caller
}

#[test]
fn blocking_calls_are_answered_and_counted() {
    let pool = ProcessPool::new(1).unwrap();
    let worker = pool.worker_pids()[0];
    for i in 0..200u64 {
        assert_eq!(pool.apply_blocking(square, i), Ok(i * i));
    }
    assert_eq!(
        pool.apply_blocking(pid, ()),
        Ok(worker),
        "no worker was replaced"
    );
    let stats = pool.stats();
    assert_eq!(stats.completed, 201);
    assert_eq!(stats.failed, 0);
    assert_eq!(stats.running, 0);
    assert_eq!(stats.run_time.count, 201);
}

#[test]
fn a_task_queued_while_the_worker_is_lent_runs_when_it_comes_back() {
    let dir = temp_dir("lane-queued");
    let pool = ProcessPool::new(1).unwrap();
    let caller = borrow_in_background(&pool, &dir, 300);
    // Both of these find the only worker lent: they take the queue.
    let queued = pool.spawn(square, 7);
    let other_thread = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.apply_blocking(square, 8))
    };
    assert_eq!(caller.join().unwrap(), Ok(300));
    assert_eq!(futures::executor::block_on(queued), Ok(49));
    assert_eq!(other_thread.join().unwrap(), Ok(64));
    assert_eq!(pool.stats().completed, 3);
}

#[test]
fn a_task_queued_while_the_lent_worker_crashes_still_runs() {
    for queue in [None, Some(1)] {
        let dir = temp_dir("lane-crash");
        let mut builder = ProcessPool::builder().workers(1);
        if let Some(n) = queue {
            builder = builder.max_queue(n);
        }
        let pool = builder.build().unwrap();
        let crashed = pool.worker_pids()[0];
        let caller = borrow_with(&pool, &dir, mark_then_abort, 200);
        let queued = pool.spawn(square, 7);
        match caller.join().unwrap() {
            Err(TaskError::WorkerDied { pid, signal, .. }) => {
                assert_eq!(pid, crashed);
                assert_eq!(signal, Some(libc::SIGABRT));
            }
            other => panic!("expected the borrower's worker to die: {other:?}"),
        }
        assert_eq!(
            futures::executor::block_on(queued),
            Ok(49),
            "the queued task was lost with the crashed worker (queue {queue:?})"
        );
        assert_eq!(pool.stats().restarts.crashed, 1);
    }
}

#[test]
fn terminate_ends_a_blocking_call_on_a_lent_worker() {
    let dir = temp_dir("lane-terminate");
    let pool = ProcessPool::new(1).unwrap();
    let worker = pool.worker_pids()[0];
    let caller = borrow_in_background(&pool, &dir, u64::MAX);
    let started = Instant::now();
    pool.terminate();
    assert_eq!(caller.join().unwrap(), Err(TaskError::PoolClosed));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(wait_until(Duration::from_secs(10), || is_reaped(worker)));
    assert_eq!(pool.apply_blocking(square, 2), Err(TaskError::PoolClosed));
}

#[test]
fn shutdown_waits_for_a_lent_worker_to_finish() {
    let dir = temp_dir("lane-shutdown");
    let pool = ProcessPool::new(1).unwrap();
    let worker = pool.worker_pids()[0];
    let caller = borrow_in_background(&pool, &dir, 300);
    futures::executor::block_on(pool.shutdown());
    assert_eq!(caller.join().unwrap(), Ok(300));
    assert!(wait_until(Duration::from_secs(10), || is_reaped(worker)));
    assert_eq!(pool.apply_blocking(square, 2), Err(TaskError::PoolClosed));
}

#[test]
fn max_tasks_per_worker_holds_for_blocking_calls() {
    let pool = ProcessPool::builder()
        .workers(1)
        .max_tasks_per_worker(3)
        .build()
        .unwrap();
    let pids: Vec<u32> = (0..12)
        .map(|_| pool.apply_blocking(pid, ()).unwrap())
        .collect();
    for three in pids.chunks(3) {
        assert!(
            three.iter().all(|&p| p == three[0]),
            "a worker ran fewer than 3 tasks: {pids:?}"
        );
    }
    let distinct: HashSet<_> = pids.iter().collect();
    assert_eq!(
        distinct.len(),
        4,
        "a worker ran more than 3 tasks: {pids:?}"
    );
    assert!(pool.stats().restarts.max_tasks >= 3);
}

#[test]
fn a_worker_in_use_through_the_lane_is_not_retired_as_idle() {
    let pool = ProcessPool::builder()
        .workers(1)
        .min_workers(0)
        .idle_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    // The first call starts the worker through the queue; the rest borrow it.
    let first = pool.apply_blocking(pid, ()).unwrap();
    let until = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < until {
        assert_eq!(
            pool.apply_blocking(pid, ()),
            Ok(first),
            "retired while in use"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        wait_until(Duration::from_secs(10), || pool.worker_pids().is_empty()),
        "the idle worker did not retire"
    );
    assert!(wait_until(Duration::from_secs(5), || is_reaped(first)));
    assert_eq!(pool.stats().restarts.idle, 1);
    assert_ne!(pool.apply_blocking(pid, ()).unwrap(), first);
}

#[test]
fn many_threads_share_few_workers() {
    let pool = ProcessPool::new(2).unwrap();
    let runtime = timer_runtime();
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                (0..200u64)
                    .map(|i| pool.apply_blocking(square, t * 1000 + i).unwrap())
                    .sum::<u64>()
            })
        })
        .collect();
    // Async callers at the same time take the queue between borrows.
    let from_async: u64 = runtime.block_on(async {
        let mut sum = 0;
        for i in 0..200u64 {
            sum += pool.apply(square, i).await.unwrap();
        }
        sum
    });
    assert_eq!(from_async, (0..200u64).map(|i| i * i).sum::<u64>());
    for (t, thread) in threads.into_iter().enumerate() {
        let t = t as u64;
        let expected: u64 = (0..200u64).map(|i| (t * 1000 + i).pow(2)).sum();
        assert_eq!(thread.join().unwrap(), expected);
    }
    let stats = pool.stats();
    assert_eq!(stats.completed, 8 * 200 + 200);
    assert_eq!(stats.running, 0);
    assert_eq!(stats.restarts.crashed + stats.restarts.protocol, 0);
}

#[test]
fn a_task_queued_during_the_last_allowed_borrow_runs_on_the_next_worker() {
    // The borrow uses up the worker's last task while a job waits for it and
    // the pool shuts down: the job must run on a fresh worker, and shutdown
    // must finish.
    for round in 0..4 {
        let dir = temp_dir("lane-budget");
        let pool = ProcessPool::builder()
            .workers(1)
            .max_tasks_per_worker(1)
            .build()
            .unwrap();
        let caller = borrow_in_background(&pool, &dir, 100);
        let queued = pool.spawn(square, 6);
        let runtime = timer_runtime();
        let finished = runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(20), pool.shutdown()).await
        });
        assert!(finished.is_ok(), "shutdown hung (round {round})");
        assert_eq!(caller.join().unwrap(), Ok(100));
        assert_eq!(futures::executor::block_on(queued), Ok(36));
    }
}

#[test]
fn a_panicking_result_decoder_fails_the_task_and_the_pool_serves_on() {
    let pool = ProcessPool::new(1).unwrap();
    let runtime = timer_runtime();
    for _ in 0..2 {
        // Through the lane (decoded on this thread) and through the queue
        // (decoded on the supervisor's thread).
        let direct = pool.apply_blocking(panicky_result, ());
        let queued = runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(20), pool.spawn(panicky_result, ())).await
        });
        for outcome in [direct, queued.expect("the queued task hung")] {
            match outcome {
                Err(TaskError::Serialization {
                    stage: CodecStage::DecodeResult,
                    message,
                }) => assert!(message.contains("deliberate panic"), "{message}"),
                other => panic!("expected a decode error: {other:?}"),
            }
        }
        assert_eq!(pool.apply_blocking(square, 5), Ok(25));
    }
    let terminated = std::thread::spawn({
        let pool = pool.clone();
        move || pool.terminate()
    });
    assert!(
        wait_until(Duration::from_secs(10), || terminated.is_finished()),
        "terminate hung"
    );
}

#[test]
fn an_elastic_pool_grows_while_its_worker_is_lent() {
    let dir = temp_dir("lane-elastic");
    let pool = ProcessPool::builder()
        .workers(2)
        .min_workers(1)
        .build()
        .unwrap();
    let caller = borrow_in_background(&pool, &dir, 3000);
    let runtime = timer_runtime();
    let queued = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(20), pool.spawn(square, 9)).await
    });
    assert_eq!(queued.expect("the queued task hung"), Ok(81));
    assert!(
        !caller.is_finished(),
        "the queued task waited for the borrow to end instead of a second worker"
    );
    assert_eq!(caller.join().unwrap(), Ok(3000));
}

#[test]
fn a_crash_is_seen_while_a_forked_child_holds_the_reply_pipe() {
    let dir = temp_dir("lane-fork");
    let pid_file = dir.join("child");
    let pool = ProcessPool::new(1).unwrap();
    let crashed = pool.worker_pids()[0];
    let started = Instant::now();
    let outcome = pool.apply_blocking(forks_then_aborts, pid_file.clone());
    let took = started.elapsed();
    if let Some(pid) = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.parse::<i32>().ok())
    {
        // SAFETY: plain syscall on a pid this test's worker created.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    match outcome {
        Err(TaskError::WorkerDied { pid, signal, .. }) => {
            assert_eq!(pid, crashed);
            assert_eq!(signal, Some(libc::SIGABRT));
        }
        other => panic!("expected the worker's death: {other:?}"),
    }
    assert!(
        took < Duration::from_secs(30),
        "the crash went unnoticed while the forked child held the pipes ({took:?})"
    );
    assert_eq!(pool.apply_blocking(square, 4), Ok(16));
}

/// Aborts the worker at once.
#[cfg(target_os = "linux")]
fn abort_now(_: ()) -> u64 {
    std::process::abort()
}

/// Panics at once.
#[cfg(target_os = "linux")]
fn panic_now(_: ()) -> u64 {
    panic!("deliberate")
}

/// While alive, keeps the calling thread (and the threads and processes it
/// starts meanwhile) on the first CPU it may use.
#[cfg(target_os = "linux")]
struct OnOneCpu(libc::cpu_set_t);

#[cfg(target_os = "linux")]
impl OnOneCpu {
    fn new() -> OnOneCpu {
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: `cpu_set_t` is plain data, valid all zeroes; both calls
        // get a set of the size they are told, for the calling thread (0).
        unsafe {
            let mut allowed: libc::cpu_set_t = std::mem::zeroed();
            assert_eq!(libc::sched_getaffinity(0, size, &mut allowed), 0);
            let first = (0..libc::CPU_SETSIZE as usize)
                .find(|&cpu| libc::CPU_ISSET(cpu, &allowed))
                .expect("a CPU to run on");
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(first, &mut one);
            assert_eq!(libc::sched_setaffinity(0, size, &one), 0);
            OnOneCpu(allowed)
        }
    }
}

#[cfg(target_os = "linux")]
impl Drop for OnOneCpu {
    fn drop(&mut self) {
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: as in `new`.
        unsafe { libc::sched_setaffinity(0, size, &self.0) };
    }
}

/// On one CPU the write of a job hands the CPU to the worker, which answers
/// before the caller runs again: both lanes then read the reply without
/// waiting for it first. Results, crashes and panics must come out as they
/// do when the caller waits.
#[cfg(target_os = "linux")]
#[test]
fn calls_sharing_the_workers_cpu_see_results_and_failures_alike() {
    let pinned = OnOneCpu::new();
    // The pool's supervisor thread and worker start on this CPU too.
    let pool = ProcessPool::new(1).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for round in 0..3u64 {
        for i in 0..200 {
            assert_eq!(
                pool.apply_blocking(square, i + round),
                Ok((i + round).pow(2))
            );
            let awaited = rt.block_on(pool.apply(square, i));
            assert_eq!(awaited, Ok(i * i));
        }
        let mut crashed = vec![];
        match pool.apply_blocking(abort_now, ()) {
            Err(TaskError::WorkerDied { pid, signal, .. }) => {
                assert_eq!(signal, Some(libc::SIGABRT));
                crashed.push(pid);
            }
            other => panic!("expected the worker's death: {other:?}"),
        }
        match rt.block_on(pool.apply(abort_now, ())) {
            Err(TaskError::WorkerDied { pid, signal, .. }) => {
                assert_eq!(signal, Some(libc::SIGABRT));
                crashed.push(pid);
            }
            other => panic!("expected the worker's death: {other:?}"),
        }
        // Each crash is blamed on the worker that ran it: two in a row, two
        // different processes, neither of them this one.
        assert_ne!(crashed[0], crashed[1]);
        assert!(!crashed.contains(&std::process::id()));
        assert!(matches!(
            pool.apply_blocking(panic_now, ()),
            Err(TaskError::Panicked { .. })
        ));
        assert!(matches!(
            rt.block_on(pool.apply(panic_now, ())),
            Err(TaskError::Panicked { .. })
        ));
    }
    assert_eq!(pool.stats().restarts.crashed, 6);
    assert_eq!(pool.stats().completed, 3 * 400);
    pool.terminate();
    drop(pinned);
}
