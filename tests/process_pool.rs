//! Behaviour of `ProcessPool` (issue: the core). No setup call anywhere: the
//! worker processes are this test binary, taken over before `main`.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use futures::stream::{FuturesUnordered, StreamExt};
use procpool::{Error, ProcessPool, TaskError};

fn pid(_: ()) -> u32 {
    std::process::id()
}

fn square(x: u64) -> u64 {
    x * x
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn hang(_: ()) {
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Writes our pid to `path`, then hangs.
fn announce_and_hang(path: PathBuf) {
    std::fs::write(&path, std::process::id().to_string()).unwrap();
    hang(())
}

fn write_marker(path: PathBuf) -> bool {
    std::fs::write(path, b"ran").is_ok()
}

fn panics(_: ()) -> u32 {
    panic!("deliberate panic in a task")
}

fn aborts(_: ()) -> u32 {
    std::process::abort()
}

fn segfaults(_: ()) -> u32 {
    // SAFETY: not safe at all: this deliberately crashes the worker process.
    unsafe { std::ptr::null_mut::<u32>().write_volatile(7) };
    0
}

/// Prints (on Windows the worker's stdout is the parent's stderr), then
/// answers: the printed bytes must not reach the protocol stream.
fn prints_then_answers(n: u32) -> u32 {
    for i in 0..n {
        println!("procpool test: line {i} printed by a task");
    }
    n * 2
}

fn exits_3(_: ()) -> u32 {
    std::process::exit(3)
}

fn nested_pool(_: ()) -> String {
    match ProcessPool::new(1) {
        Ok(_) => "created a pool inside a worker".into(),
        Err(e) => e.to_string(),
    }
}

fn echo_bytes(b: serde_bytes::ByteBuf) -> serde_bytes::ByteBuf {
    b
}

fn make_bytes(n: usize) -> serde_bytes::ByteBuf {
    serde_bytes::ByteBuf::from(vec![7u8; n])
}

fn read_pid_file(path: &std::path::Path) -> u32 {
    assert!(
        wait_until(Duration::from_secs(20), || std::fs::read_to_string(path)
            .is_ok_and(|s| s.parse::<u32>().is_ok())),
        "task never started"
    );
    std::fs::read_to_string(path).unwrap().parse().unwrap()
}

async fn serves_200(pool: &ProcessPool) {
    let tasks: Vec<_> = (0..200u64).map(|i| pool.spawn(square, i)).collect();
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), (i * i) as u64);
    }
}

// 1. A timeout drops the task; the worker is killed, reaped and replaced.
#[tokio::test]
async fn timeout_kills_the_hung_worker_and_a_replacement_serves() {
    let pool = ProcessPool::new(1).unwrap();
    let dir = temp_dir("timeout");
    let file = dir.join("pid");
    let hung = tokio::time::timeout(
        Duration::from_secs(3),
        pool.spawn(announce_and_hang, file.clone()),
    )
    .await;
    assert!(hung.is_err(), "the hung task cannot finish");
    let hung_pid = read_pid_file(&file);
    assert!(
        wait_until(Duration::from_secs(10), || is_reaped(hung_pid)),
        "hung worker {hung_pid} was not killed and reaped"
    );
    let next = pool.apply(pid, ()).await.unwrap();
    assert_ne!(next, hung_pid);
}

// 2. Dropping a queued task means it never runs.
#[tokio::test]
async fn a_dropped_queued_task_never_runs() {
    let pool = ProcessPool::new(1).unwrap();
    let dir = temp_dir("queued");
    let job1 = pool.spawn(sleep_ms, 500);
    let job2 = pool.spawn(write_marker, dir.join("job2"));
    let job3 = pool.spawn(write_marker, dir.join("job3"));
    drop(job2);
    assert_eq!(job1.await.unwrap(), 500);
    assert!(job3.await.unwrap());
    assert!(dir.join("job3").exists());
    assert!(!dir.join("job2").exists(), "a dropped queued task ran");
}

// 2b. The same when the dropped job was already sent ahead to the worker
// (pipelining): it is skipped without killing the worker.
#[tokio::test]
async fn a_dropped_task_sent_ahead_is_skipped_without_a_kill() {
    let pool = ProcessPool::builder()
        .workers(1)
        .pipeline_depth(8)
        .build()
        .unwrap();
    let dir = temp_dir("ahead");
    // Quick tasks teach the pool that sending ahead is worthwhile.
    for i in 0..50 {
        pool.apply(square, i).await.unwrap();
    }
    let before = pool.worker_pids();
    let first = pool.spawn(sleep_ms, 300);
    let mut rest: Vec<_> = (0..6)
        .map(|i| pool.spawn(write_marker, dir.join(format!("m{i}"))))
        .collect();
    let dropped = rest.remove(3);
    drop(dropped);
    assert_eq!(first.await.unwrap(), 300);
    for t in rest {
        assert!(t.await.unwrap());
    }
    assert!(!dir.join("m3").exists(), "a dropped task ran");
    assert_eq!(
        pool.worker_pids(),
        before,
        "skipping should not cost a worker"
    );
}

// 3. select! returns the fast task and kills the endless one.
#[tokio::test]
async fn select_returns_the_fast_task_and_kills_the_other() {
    let pool = ProcessPool::new(2).unwrap();
    let dir = temp_dir("select");
    let file = dir.join("pid");
    let slow = pool.spawn(announce_and_hang, file.clone());
    let slow_pid = read_pid_file(&file);
    let fast = pool.spawn(square, 9);
    let winner = tokio::select! {
        r = fast => r.unwrap(),
        _ = slow => unreachable!("the endless task cannot finish"),
    };
    assert_eq!(winner, 81);
    assert!(
        wait_until(Duration::from_secs(10), || is_reaped(slow_pid)),
        "the losing task's worker was not killed"
    );
    serves_200(&pool).await;
}

// 4. FuturesUnordered yields tasks in completion order.
#[tokio::test]
async fn futures_unordered_yields_in_completion_order() {
    let pool = ProcessPool::new(3).unwrap();
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

// 5. Faults fail only their own task; the pool keeps serving.
#[tokio::test]
async fn a_panic_is_reported_and_the_worker_survives() {
    let pool = ProcessPool::new(2).unwrap();
    let before = pool.apply(pid, ()).await.unwrap();
    match pool.apply(panics, ()).await {
        Err(TaskError::Panicked {
            message,
            location,
            pid,
        }) => {
            assert_eq!(message, "deliberate panic in a task");
            assert!(location.unwrap().contains("process_pool.rs"));
            assert!(pid.is_some());
        }
        other => panic!("expected Panicked, got {other:?}"),
    }
    assert!(
        pool.worker_pids().contains(&before),
        "a panic must not cost the worker"
    );
    serves_200(&pool).await;
}

async fn crash_fails_one_task(crash: fn(()) -> u32, code: Option<i32>, signal: Option<i32>) {
    let pool = ProcessPool::new(2).unwrap();
    let bystander = pool.spawn(sleep_ms, 400);
    let crashed = pool.spawn(crash, ());
    match crashed.await {
        Err(TaskError::WorkerDied {
            pid,
            code: c,
            signal: s,
        }) => {
            assert_eq!((c, s), (code, signal));
            assert!(wait_until(Duration::from_secs(10), || is_reaped(pid)));
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    assert_eq!(
        bystander.await.unwrap(),
        400,
        "a task on another worker was hurt"
    );
    serves_200(&pool).await;
    assert!(wait_until(Duration::from_secs(10), || pool
        .worker_pids()
        .len()
        == 2));
}

/// Appends `line` to `log` in one write (an `O_APPEND` write is atomic).
fn log_line(log: &std::path::Path, line: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    f.write_all(format!("{line}\n").as_bytes()).unwrap();
}

fn logs_then_squares((log, x): (PathBuf, u64)) -> u64 {
    log_line(&log, &x.to_string());
    x * x
}

fn logs_then_aborts(log: PathBuf) -> u64 {
    log_line(&log, "crash");
    std::process::abort()
}

// A worker that dies in the middle of a pipelined batch: the results of the
// jobs it finished all arrive (none is run again), only the job it was running
// fails, and the jobs it had not started run once on its replacement.
#[tokio::test]
async fn a_crash_mid_batch_loses_no_result_and_blames_only_its_job() {
    let pool = ProcessPool::builder()
        .workers(1)
        .pipeline_depth(32)
        .build()
        .unwrap();
    // Quick tasks teach the pool that sending ahead is worthwhile.
    for i in 0..50 {
        pool.apply(square, i).await.unwrap();
    }
    let log = temp_dir("mid-batch").join("log");
    let before: Vec<_> = (0..30)
        .map(|i| pool.spawn(logs_then_squares, (log.clone(), i)))
        .collect();
    let crash = pool.spawn(logs_then_aborts, log.clone());
    let after: Vec<_> = (30..60)
        .map(|i| pool.spawn(logs_then_squares, (log.clone(), i)))
        .collect();
    for (i, task) in before.into_iter().chain(after).enumerate() {
        let i = i as u64;
        assert_eq!(task.await.unwrap(), i * i, "task {i}");
    }
    match crash.await {
        Err(TaskError::WorkerDied { code, signal, .. }) => {
            assert_eq!((code, signal), ABORTED)
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    let mut expected: Vec<String> = (0..60).map(|i: u64| i.to_string()).collect();
    expected.push("crash".into());
    expected.sort_unstable();
    assert_eq!(lines, expected, "every job ran exactly once");
}

#[tokio::test]
async fn an_abort_fails_only_its_task() {
    crash_fails_one_task(aborts, ABORTED.0, ABORTED.1).await;
}

#[tokio::test]
async fn a_segfault_fails_only_its_task() {
    crash_fails_one_task(segfaults, SEGFAULTED.0, SEGFAULTED.1).await;
}

#[tokio::test]
async fn an_exit_fails_only_its_task() {
    crash_fails_one_task(exits_3, Some(3), None).await;
}

// 6. apply_blocking from plain threads while the runtime awaits other tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_blocking_from_plain_threads_while_awaiting() {
    let pool = ProcessPool::new(2).unwrap();
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
    let awaited: Vec<_> = (0..50u64).map(|i| pool.spawn(square, i)).collect();
    for (i, t) in awaited.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), (i * i) as u64);
    }
    for (t, h) in threads.into_iter().enumerate() {
        let expected: u64 = (0..25u64).map(|i| (t as u64 * 100 + i).pow(2)).sum();
        assert_eq!(h.join().unwrap(), expected);
    }
}

#[test]
fn works_without_any_runtime() {
    let pool = ProcessPool::new(1).unwrap();
    assert_eq!(pool.apply_blocking(square, 12), Ok(144));
}

#[test]
fn works_on_a_current_thread_runtime() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pool = ProcessPool::new(2).unwrap();
    let r = rt.block_on(async {
        futures::future::join_all((0..20).map(|i| pool.spawn(square, i))).await
    });
    assert_eq!(
        r.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
        (0..20).map(|i| i * i).collect::<Vec<_>>()
    );
}

// 8. A pool inside a worker is a clear error, not a fork bomb.
#[tokio::test]
async fn a_pool_inside_a_worker_is_an_error() {
    let pool = ProcessPool::new(1).unwrap();
    let msg = pool.apply(nested_pool, ()).await.unwrap();
    assert_eq!(msg, Error::InsideWorker.to_string());
}

// 9. After shutdown / terminate / drop no worker remains and none is a zombie.
#[tokio::test]
async fn shutdown_finishes_work_then_reaps_every_worker() {
    let pool = ProcessPool::new(2).unwrap();
    let pids = pool.worker_pids();
    let tasks: Vec<_> = (0..4).map(|_| pool.spawn(sleep_ms, 100)).collect();
    pool.shutdown().await;
    for t in tasks {
        assert_eq!(t.await, Ok(100), "shutdown must finish queued work");
    }
    for pid in pids {
        assert!(is_reaped(pid), "worker {pid} left behind after shutdown");
    }
    assert_eq!(pool.spawn(square, 1).await, Err(TaskError::PoolClosed));
}

#[tokio::test]
async fn terminate_kills_now_and_fails_pending_tasks() {
    let pool = ProcessPool::new(2).unwrap();
    let pids = pool.worker_pids();
    let tasks: Vec<_> = (0..6).map(|_| pool.spawn(hang, ())).collect();
    let started = Instant::now();
    pool.terminate();
    for t in tasks {
        assert_eq!(t.await, Err(TaskError::PoolClosed));
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    for pid in pids {
        assert!(is_reaped(pid), "worker {pid} left behind after terminate");
    }
}

#[test]
fn dropping_the_last_handle_lets_workers_exit() {
    let pool = ProcessPool::new(2).unwrap();
    let pids = pool.worker_pids();
    let clone = pool.clone();
    drop(pool);
    assert_eq!(
        clone.apply_blocking(square, 3),
        Ok(9),
        "a clone keeps the pool open"
    );
    drop(clone);
    assert!(
        wait_until(Duration::from_secs(10), || pids
            .iter()
            .all(|&p| is_reaped(p))),
        "workers remain after the last handle was dropped"
    );
}

#[test]
fn dropping_the_last_handle_finishes_spawned_tasks() {
    let pool = ProcessPool::new(1).unwrap();
    let dir = temp_dir("drop-finishes");
    let held: Vec<_> = (0..3).map(|_| pool.spawn(sleep_ms, 100)).collect();
    pool.spawn(write_marker, dir.join("detached")).detach();
    drop(pool);
    for t in held {
        assert_eq!(futures::executor::block_on(t), Ok(100));
    }
    assert!(wait_until(Duration::from_secs(10), || dir
        .join("detached")
        .exists()));
}

// 10. Large payloads round-trip; oversized frames are errors.
#[tokio::test]
async fn a_64_mib_argument_and_result_round_trip() {
    let pool = ProcessPool::new(1).unwrap();
    let data: Vec<u8> = (0..64 << 20).map(|i: u32| (i % 251) as u8).collect();
    let back = pool
        .apply(echo_bytes, serde_bytes::ByteBuf::from(data.clone()))
        .await
        .unwrap();
    assert!(back.as_slice() == data.as_slice());
}

#[tokio::test]
async fn frames_over_the_maximum_are_errors_not_aborts() {
    let pool = ProcessPool::builder()
        .workers(1)
        .max_frame_size(1 << 20)
        .build()
        .unwrap();
    let worker = pool.worker_pids();
    let big = serde_bytes::ByteBuf::from(vec![1u8; 2 << 20]);
    assert!(matches!(
        pool.apply(echo_bytes, big).await,
        Err(TaskError::TooLarge {
            what: "argument",
            ..
        })
    ));
    assert!(matches!(
        pool.apply(make_bytes, 2 << 20).await,
        Err(TaskError::TooLarge { what: "result", .. })
    ));
    assert_eq!(
        pool.worker_pids(),
        worker,
        "the worker survives an oversized result"
    );
    assert_eq!(pool.apply(make_bytes, 1000).await.unwrap().len(), 1000);
}

// 11. A worker of a different build refuses work.
#[test]
fn a_worker_of_another_build_refuses_work() {
    let err = ProcessPool::builder()
        .workers(1)
        .build_identity_for_testing(0xdead_beef)
        .build()
        .unwrap_err();
    match err {
        Error::BuildMismatch { message, .. } => {
            assert!(message.contains("differs from the parent"), "{message}");
        }
        other => panic!("expected BuildMismatch, got {other:?}"),
    }
}

#[test]
fn abort_resolves_to_cancelled_and_kills_a_running_task() {
    let pool = ProcessPool::new(1).unwrap();
    let dir = temp_dir("abort");
    let file = dir.join("pid");
    let task = pool.spawn(announce_and_hang, file.clone());
    let running = read_pid_file(&file);
    task.abort();
    assert!(task.is_finished());
    assert_eq!(futures::executor::block_on(task), Err(TaskError::Cancelled));
    assert!(wait_until(Duration::from_secs(10), || is_reaped(running)));
    assert_eq!(pool.apply_blocking(square, 5), Ok(25));
}

#[test]
fn a_detached_task_still_runs() {
    let pool = ProcessPool::new(1).unwrap();
    let dir = temp_dir("detach");
    pool.spawn(write_marker, dir.join("detached")).detach();
    assert!(wait_until(Duration::from_secs(20), || dir
        .join("detached")
        .exists()));
}

#[tokio::test]
async fn a_task_printing_to_stdout_does_not_corrupt_results() {
    let pool = ProcessPool::new(1).unwrap();
    for n in [1, 5] {
        assert_eq!(pool.apply(prints_then_answers, n).await, Ok(n * 2));
    }
    let restarts = pool.stats().restarts;
    assert_eq!((restarts.crashed, restarts.protocol), (0, 0));
}
