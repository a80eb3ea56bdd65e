//! Behaviour of `ThreadPool`: the same handle semantics as the process pool,
//! minus killing running work.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{temp_dir, wait_until};
use futures::stream::{FuturesUnordered, StreamExt};
use procpool::{Pool, TaskError, ThreadPool};

fn square(x: u64) -> u64 {
    x * x
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn write_marker(path: std::path::PathBuf) -> bool {
    std::fs::write(path, b"ran").is_ok()
}

fn mark_then_sleep((path, ms): (std::path::PathBuf, u64)) -> u64 {
    std::fs::write(path, b"started").unwrap();
    sleep_ms(ms)
}

fn panics(_: ()) -> u32 {
    panic!("deliberate panic on a pool thread")
}

#[tokio::test]
async fn a_dropped_queued_task_never_runs() {
    let pool = ThreadPool::new(1).unwrap();
    let dir = temp_dir("tp-queued");
    let job1 = pool.spawn(sleep_ms, 500);
    let job2 = pool.spawn(write_marker, dir.join("job2"));
    let job3 = pool.spawn(write_marker, dir.join("job3"));
    drop(job2);
    assert_eq!(job1.await.unwrap(), 500);
    assert!(job3.await.unwrap());
    assert!(!dir.join("job2").exists(), "a dropped queued task ran");
}

#[tokio::test]
async fn futures_unordered_yields_in_completion_order() {
    let pool = ThreadPool::new(3).unwrap();
    let mut pending: FuturesUnordered<_> = [1600u64, 800, 0]
        .into_iter()
        .map(|ms| pool.spawn(sleep_ms, ms))
        .collect();
    let mut order = Vec::new();
    while let Some(r) = pending.next().await {
        order.push(r.unwrap());
    }
    assert_eq!(order, [0, 800, 1600]);
}

#[tokio::test]
async fn a_panic_is_reported_with_message_and_location() {
    let pool = ThreadPool::new(2).unwrap();
    match pool.apply(panics, ()).await {
        Err(TaskError::Panicked {
            message,
            location,
            pid,
        }) => {
            assert_eq!(message, "deliberate panic on a pool thread");
            assert!(location.unwrap().contains("thread_pool.rs"));
            assert_eq!(pid, None);
        }
        other => panic!("expected Panicked, got {other:?}"),
    }
    for i in 0..200u64 {
        assert_eq!(pool.apply(square, i).await.unwrap(), i * i);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_blocking_from_plain_threads_while_awaiting() {
    let pool = ThreadPool::new(2).unwrap();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                (0..25u64)
                    .map(|i| pool.apply_blocking(square, t * 100 + i).unwrap())
                    .sum::<u64>()
            })
        })
        .collect();
    for i in 0..50u64 {
        assert_eq!(pool.spawn(square, i).await.unwrap(), i * i);
    }
    for (t, h) in threads.into_iter().enumerate() {
        let expected: u64 = (0..25u64).map(|i| (t as u64 * 100 + i).pow(2)).sum();
        assert_eq!(h.join().unwrap(), expected);
    }
}

#[tokio::test]
async fn capturing_closures_run_with_spawn_fn() {
    let pool = ThreadPool::new(2).unwrap();
    let counter = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let c = counter.clone();
            pool.spawn_fn(move || c.fetch_add(1, Ordering::SeqCst))
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(counter.load(Ordering::SeqCst), 10);
}

#[tokio::test]
async fn terminate_fails_queued_tasks_at_once() {
    let pool = ThreadPool::new(1).unwrap();
    let dir = temp_dir("tp-terminate");
    let running = pool.spawn(mark_then_sleep, (dir.join("started"), 300));
    assert!(wait_until(Duration::from_secs(10), || dir
        .join("started")
        .exists()));
    let queued: Vec<_> = (0..5).map(|_| pool.spawn(sleep_ms, 10_000)).collect();
    pool.terminate();
    for t in queued {
        assert_eq!(t.await, Err(TaskError::PoolClosed));
    }
    // A running thread cannot be stopped; its result still arrives.
    assert_eq!(running.await, Ok(300));
    assert_eq!(pool.spawn(square, 2).await, Err(TaskError::PoolClosed));
}

#[test]
fn nothing_queued_runs_after_terminate() {
    let pool = ThreadPool::new(2).unwrap();
    let dir = temp_dir("tp-term-queue");
    let running: Vec<_> = (0..2)
        .map(|i| pool.spawn(mark_then_sleep, (dir.join(format!("r{i}")), 200)))
        .collect();
    assert!(wait_until(Duration::from_secs(10), || dir
        .join("r0")
        .exists()
        && dir.join("r1").exists()));
    let queued: Vec<_> = (0..50)
        .map(|i| pool.spawn(write_marker, dir.join(format!("q{i}"))))
        .collect();
    pool.terminate();
    for t in queued {
        assert_eq!(futures::executor::block_on(t), Err(TaskError::PoolClosed));
    }
    for t in running {
        assert_eq!(futures::executor::block_on(t), Ok(200));
    }
    assert!(
        (0..50).all(|i| !dir.join(format!("q{i}")).exists()),
        "a queued task ran after terminate"
    );
}

#[tokio::test]
async fn shutdown_waits_for_queued_work() {
    let pool = ThreadPool::new(2).unwrap();
    let dir = temp_dir("tp-shutdown");
    let tasks: Vec<_> = (0..6)
        .map(|i| pool.spawn(write_marker, dir.join(format!("m{i}"))))
        .collect();
    pool.shutdown().await;
    assert!((0..6).all(|i| dir.join(format!("m{i}")).exists()));
    for t in tasks {
        assert_eq!(t.await, Ok(true));
    }
}

#[test]
fn abort_discards_the_result_of_a_running_task() {
    let pool = ThreadPool::new(1).unwrap();
    let task = pool.spawn(sleep_ms, 200);
    std::thread::sleep(Duration::from_millis(50));
    task.abort();
    assert_eq!(futures::executor::block_on(task), Err(TaskError::Cancelled));
    // The thread finishes its task and serves the next one.
    assert_eq!(pool.apply_blocking(square, 4), Ok(16));
}

#[test]
fn a_detached_task_still_runs() {
    let pool = ThreadPool::new(1).unwrap();
    let dir = temp_dir("tp-detach");
    pool.spawn(write_marker, dir.join("d")).detach();
    assert!(wait_until(Duration::from_secs(10), || dir
        .join("d")
        .exists()));
}

#[test]
fn generic_code_runs_on_either_pool() {
    fn total(pool: &impl Pool) -> u64 {
        let tasks: Vec<_> = (1..=10u64).map(|i| pool.spawn(square, i)).collect();
        tasks
            .into_iter()
            .map(|t| futures::executor::block_on(t).unwrap())
            .sum()
    }
    assert_eq!(total(&ThreadPool::new(2).unwrap()), 385);
    assert_eq!(total(&procpool::ProcessPool::new(2).unwrap()), 385);
}

/// Idle pool threads sleep until a job is queued: many short bursts from
/// several threads, with gaps that let every pool thread fall asleep, must
/// all be answered (a lost wake-up would leave a task waiting forever).
#[test]
fn idle_threads_wake_for_every_queued_task() {
    for threads in [1, 2, 3] {
        let pool = ThreadPool::new(threads).unwrap();
        let callers: Vec<_> = (0..4u64)
            .map(|c| {
                let pool = pool.clone();
                std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_time()
                        .build()
                        .unwrap();
                    for i in 0..300u64 {
                        let x = c * 1000 + i;
                        let task = pool.spawn(square, x);
                        let answer = runtime.block_on(async {
                            tokio::time::timeout(Duration::from_secs(10), task).await
                        });
                        assert_eq!(answer.ok(), Some(Ok(x * x)), "task {x} was never run");
                        if i % 50 == 0 {
                            std::thread::sleep(Duration::from_millis(2));
                        }
                    }
                })
            })
            .collect();
        for caller in callers {
            caller.join().unwrap();
        }
        // Closing wakes the sleeping threads so that they exit.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(10), pool.shutdown()).await
            })
            .expect("shutdown left a pool thread asleep");
    }
}
