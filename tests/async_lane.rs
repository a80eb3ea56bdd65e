//! The async direct lane: `spawn` / `apply().await` inside a tokio runtime
//! borrow an idle worker and wait for its reply on the caller's reactor.
//! These tests hold it to the queue's semantics: kill-on-drop and abort,
//! crashes, terminate and shutdown, recycling limits, tasks polled elsewhere
//! or detached, and runtimes of every flavour (or without a reactor).
//!
//! Unix only: Windows has no direct lane (async calls go through the queue
//! there, which `tests/process_pool.rs` covers), and these checks signal.
#![cfg(unix)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{is_reaped, temp_dir, wait_until};
use procpool::{ProcessPool, TaskError};

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

/// Creates `path`, then aborts the worker.
fn mark_then_abort(path: PathBuf) -> u64 {
    std::fs::write(&path, b"started").unwrap();
    std::process::abort()
}

/// Forks a child that keeps every inherited descriptor open (no exec), then
/// aborts; the child's pid goes to `pid_file`.
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

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn multi_thread(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap()
}

fn wait_for(marker: &Path) {
    assert!(
        wait_until(Duration::from_secs(10), || marker.exists()),
        "the task never started"
    );
}

#[test]
fn async_calls_are_answered_and_counted() {
    let pool = ProcessPool::new(1).unwrap();
    let worker = pool.worker_pids()[0];
    current_thread().block_on(async {
        for i in 0..200u64 {
            assert_eq!(pool.apply(square, i).await, Ok(i * i));
            assert_eq!(pool.spawn(square, i + 1).await, Ok((i + 1) * (i + 1)));
        }
        assert_eq!(pool.apply(pid, ()).await, Ok(worker), "no worker replaced");
    });
    let stats = pool.stats();
    assert_eq!((stats.completed, stats.failed, stats.running), (401, 0, 0));
    assert_eq!(stats.run_time.count, 401);
}

#[test]
fn dropping_a_task_mid_call_kills_its_worker_and_the_next_task_is_served() {
    let dir = temp_dir("async-drop");
    let marker = dir.join("started");
    let pool = ProcessPool::new(1).unwrap();
    let victim = pool.worker_pids()[0];
    let rt = current_thread();
    rt.block_on(async {
        let task = pool.spawn(mark_then_sleep, (marker.clone(), u64::MAX));
        let waited = tokio::time::timeout(Duration::from_millis(300), task).await;
        assert!(waited.is_err(), "the endless task returned");
    });
    assert!(
        marker.exists(),
        "the task had started before it was dropped"
    );
    assert!(
        wait_until(Duration::from_secs(2), || is_reaped(victim)),
        "the worker running the dropped task was not killed within 2 s"
    );
    rt.block_on(async {
        assert_eq!(pool.apply(square, 5).await, Ok(25));
        assert_ne!(pool.apply(pid, ()).await, Ok(victim));
    });
    assert_eq!(pool.stats().restarts.cancelled, 1);
}

#[test]
fn abort_kills_the_worker_even_when_the_task_is_not_polled() {
    let dir = temp_dir("async-abort");
    let marker = dir.join("started");
    let pool = ProcessPool::new(1).unwrap();
    let victim = pool.worker_pids()[0];
    let rt = current_thread();
    let task = {
        let _in_runtime = rt.enter();
        pool.spawn(mark_then_sleep, (marker.clone(), u64::MAX))
    };
    wait_for(&marker);
    task.abort();
    assert!(
        wait_until(Duration::from_secs(2), || is_reaped(victim)),
        "the aborted task's worker was not killed within 2 s"
    );
    assert_eq!(rt.block_on(task), Err(TaskError::Cancelled));
    assert_eq!(rt.block_on(pool.apply(square, 6)), Ok(36));
}

#[test]
fn a_crash_fails_the_task_with_the_workers_pid_and_signal() {
    let dir = temp_dir("async-crash");
    let pool = ProcessPool::new(1).unwrap();
    let crashed = pool.worker_pids()[0];
    current_thread().block_on(async {
        match pool.apply(mark_then_abort, dir.join("started")).await {
            Err(TaskError::WorkerDied { pid, signal, .. }) => {
                assert_eq!(pid, crashed);
                assert_eq!(signal, Some(libc::SIGABRT));
            }
            other => panic!("expected the worker's death: {other:?}"),
        }
        assert_eq!(pool.apply(square, 7).await, Ok(49));
    });
    assert_eq!(pool.stats().restarts.crashed, 1);
}

#[test]
fn a_crash_is_seen_while_a_forked_child_holds_the_reply_pipe() {
    let dir = temp_dir("async-fork");
    let pid_file = dir.join("child");
    let pool = ProcessPool::new(1).unwrap();
    let crashed = pool.worker_pids()[0];
    let started = Instant::now();
    let outcome = current_thread().block_on(pool.apply(forks_then_aborts, pid_file.clone()));
    let took = started.elapsed();
    if let Some(child) = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.parse::<i32>().ok())
    {
        // SAFETY: plain syscall on a pid this test's worker created.
        unsafe { libc::kill(child, libc::SIGKILL) };
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
        "the crash went unnoticed ({took:?})"
    );
}

#[test]
fn terminate_ends_an_async_call_with_pool_closed() {
    let dir = temp_dir("async-terminate");
    let marker = dir.join("started");
    let pool = ProcessPool::new(1).unwrap();
    let worker = pool.worker_pids()[0];
    let outcome = current_thread().block_on(async {
        let task = pool.spawn(mark_then_sleep, (marker.clone(), u64::MAX));
        let killer = {
            let (pool, marker) = (pool.clone(), marker.clone());
            std::thread::spawn(move || {
                wait_for(&marker);
                pool.terminate();
            })
        };
        let outcome = tokio::time::timeout(Duration::from_secs(20), task).await;
        killer.join().unwrap();
        outcome
    });
    assert_eq!(
        outcome.expect("terminate ended the call"),
        Err(TaskError::PoolClosed)
    );
    assert!(is_reaped(worker), "the worker outlived terminate");
}

#[test]
fn terminate_and_shutdown_do_not_wait_for_tasks_nobody_polls() {
    let pool = ProcessPool::new(2).unwrap();
    let rt = current_thread();
    let tasks: Vec<_> = rt.block_on(async { (0..6u64).map(|i| pool.spawn(square, i)).collect() });
    rt.block_on(pool.shutdown());
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(rt.block_on(task), Ok((i * i) as u64));
    }

    let pool = ProcessPool::new(2).unwrap();
    let dir = temp_dir("async-unpolled");
    let tasks: Vec<_> = rt.block_on(async {
        (0..4)
            .map(|i| pool.spawn(mark_then_sleep, (dir.join(format!("m{i}")), u64::MAX)))
            .collect()
    });
    let started = Instant::now();
    pool.terminate();
    assert!(started.elapsed() < Duration::from_secs(10));
    for task in tasks {
        assert_eq!(rt.block_on(task), Err(TaskError::PoolClosed));
    }
}

#[test]
fn max_tasks_per_worker_holds_for_async_calls() {
    let pool = ProcessPool::builder()
        .workers(1)
        .max_tasks_per_worker(3)
        .build()
        .unwrap();
    let pids: Vec<u32> = current_thread().block_on(async {
        let mut pids = Vec::new();
        for _ in 0..9 {
            pids.push(pool.apply(pid, ()).await.unwrap());
        }
        pids
    });
    let mut runs: HashMap<u32, usize> = HashMap::new();
    for p in &pids {
        *runs.entry(*p).or_default() += 1;
    }
    assert_eq!(runs.len(), 3, "three workers for nine tasks: {pids:?}");
    assert!(
        runs.values().all(|&n| n == 3),
        "each ran exactly 3: {pids:?}"
    );
    assert!(pids.chunks(3).all(|c| c[0] == c[1] && c[1] == c[2]));
}

#[test]
fn many_async_and_blocking_callers_share_two_workers() {
    let pool = ProcessPool::new(2).unwrap();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                for i in 0..100 {
                    let x = t * 1000 + i;
                    assert_eq!(pool.apply_blocking(square, x), Ok(x * x));
                }
            })
        })
        .collect();
    multi_thread(2).block_on(async {
        let callers: Vec<_> = (0..8u64)
            .map(|c| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    for i in 0..100 {
                        let x = 100_000 + c * 1000 + i;
                        assert_eq!(pool.apply(square, x).await, Ok(x * x));
                    }
                })
            })
            .collect();
        let burst: Vec<_> = (0..500u64).map(|i| pool.spawn(square, i)).collect();
        for (i, r) in futures::future::join_all(burst)
            .await
            .into_iter()
            .enumerate()
        {
            assert_eq!(r, Ok((i * i) as u64));
        }
        for c in callers {
            c.await.unwrap();
        }
    });
    for t in threads {
        t.join().unwrap();
    }
    let stats = pool.stats();
    assert_eq!((stats.completed, stats.failed, stats.running), (1700, 0, 0));
}

#[test]
fn a_task_awaited_off_its_current_thread_runtime_still_completes() {
    let pool = ProcessPool::new(1).unwrap();
    let rt = current_thread();
    let task = {
        let _in_runtime = rt.enter();
        pool.spawn(square, 11)
    };
    // The runtime no longer runs: another thread, another executor.
    let elsewhere = std::thread::spawn(move || futures::executor::block_on(task));
    assert_eq!(elsewhere.join().unwrap(), Ok(121));
    // And after its runtime is gone.
    let task = {
        let _in_runtime = rt.enter();
        pool.spawn(square, 12)
    };
    drop(rt);
    assert_eq!(futures::executor::block_on(task), Ok(144));
    // Polled on another runtime.
    let other = current_thread();
    let task = {
        let _in_runtime = other.enter();
        pool.spawn(square, 13)
    };
    assert_eq!(multi_thread(1).block_on(task), Ok(169));
}

#[test]
fn a_detached_async_task_still_runs() {
    let dir = temp_dir("async-detach");
    let marker = dir.join("started");
    let pool = ProcessPool::new(1).unwrap();
    current_thread().block_on(async {
        pool.spawn(mark_then_sleep, (marker.clone(), 50)).detach();
    });
    wait_for(&marker);
    assert!(wait_until(Duration::from_secs(10), || pool
        .stats()
        .completed
        == 1));
}

#[test]
fn a_runtime_without_a_reactor_takes_the_queue() {
    let pool = ProcessPool::new(1).unwrap();
    let bare = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    bare.block_on(async {
        for i in 0..20u64 {
            assert_eq!(pool.apply(square, i).await, Ok(i * i));
        }
    });
}
