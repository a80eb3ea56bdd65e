//! The streaming map engine (`map`, `map_unordered`, `map_stream`,
//! `map_blocking`) on both pools.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{is_reaped, temp_dir, wait_until};
use futures::{StreamExt, TryStreamExt};
use procpool::{ProcessPool, TaskError, ThreadPool};

fn square(x: u64) -> u64 {
    x * x
}

fn ackermann((m, n): (u64, u64)) -> u64 {
    match (m, n) {
        (0, n) => n + 1,
        (m, 0) => ackermann((m - 1, 1)),
        (m, n) => ackermann((m - 1, ackermann((m, n - 1)))),
    }
}

fn panic_on_13(x: u64) -> u64 {
    assert!(x % 13 != 0 || x == 0, "unlucky {x}");
    x
}

fn crash_on_37(x: u64) -> u64 {
    if x == 37 {
        std::process::abort();
    }
    x
}

/// Calls made in this process so far, and its pid: shows which items
/// travelled together in one chunk.
fn where_and_when(_: u64) -> (u32, usize) {
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    (std::process::id(), CALLS.fetch_add(1, Ordering::SeqCst))
}

fn slow_marker((dir, i): (std::path::PathBuf, u32)) -> u32 {
    std::fs::write(
        dir.join(format!("started-{i}")),
        std::process::id().to_string(),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    i
}

/// Item 0 returns at once; every other item announces its worker, then hangs.
fn first_quick_rest_hang((dir, i): (std::path::PathBuf, u32)) -> u32 {
    if i > 0 {
        std::fs::write(
            dir.join(format!("started-{i}")),
            std::process::id().to_string(),
        )
        .unwrap();
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    i
}

fn pid(_: ()) -> u32 {
    std::process::id()
}

#[tokio::test]
async fn results_equal_the_serial_computation_in_input_order() {
    let expected: Vec<u64> = (0..5000).map(square).collect();
    let pool = ProcessPool::new(2).unwrap();
    let got: Vec<u64> = pool.map(square, 0..5000).try_collect().await.unwrap();
    assert_eq!(got, expected);
    let threads = ThreadPool::new(2).unwrap();
    let got: Vec<u64> = threads.map(square, 0..5000).try_collect().await.unwrap();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn unordered_yields_every_result_once() {
    async fn sorted(stream: procpool::Map<u64, u64>) -> Vec<u64> {
        let mut got: Vec<u64> = stream.try_collect().await.unwrap();
        got.sort_unstable();
        got
    }
    let expected: Vec<u64> = (0..3000).map(square).collect();
    let pool = ProcessPool::new(2).unwrap();
    assert_eq!(sorted(pool.map_unordered(square, 0..3000)).await, expected);
    let threads = ThreadPool::new(2).unwrap();
    assert_eq!(
        sorted(threads.map_unordered(square, 0..3000)).await,
        expected
    );
}

#[tokio::test]
async fn starmap_is_a_tuple_argument() {
    let pool = ProcessPool::new(2).unwrap();
    let pairs = vec![(0, 0), (1, 2), (2, 3), (3, 3)];
    let got: Vec<u64> = pool
        .map(ackermann, pairs.clone())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(got, pairs.into_iter().map(ackermann).collect::<Vec<_>>());
}

async fn endless_input_is_pulled_lazily(
    map: impl Fn(Box<dyn Iterator<Item = u64> + Send>) -> procpool::Map<u64, u64>,
) {
    let pulled = Arc::new(AtomicUsize::new(0));
    let counter = pulled.clone();
    let input = (0u64..).inspect(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let first: Vec<u64> = map(Box::new(input))
        .chunk_size(10)
        .in_flight(4)
        .take(1000)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(first, (0..1000).map(square).collect::<Vec<_>>());
    // Pulled ahead at most: 4 chunks in flight plus the finished chunks an
    // ordered map may hold (8 × in_flight), 10 items each.
    let pulled = pulled.load(Ordering::SeqCst);
    assert!(
        pulled <= 1000 + 40 * 10,
        "pulled {pulled} items for 1000 results"
    );
}

#[tokio::test]
async fn endless_input_is_pulled_lazily_on_a_process_pool() {
    let pool = ProcessPool::new(2).unwrap();
    endless_input_is_pulled_lazily(|input| pool.map(square, input)).await;
}

#[tokio::test]
async fn endless_input_is_pulled_lazily_on_a_thread_pool() {
    let pool = ThreadPool::new(2).unwrap();
    endless_input_is_pulled_lazily(|input| pool.map(square, input)).await;
}

#[tokio::test]
async fn endless_input_with_default_settings_finishes() {
    let pool = ProcessPool::new(2).unwrap();
    let n = pool.map(square, 0u64..).take(100_000).count().await;
    assert_eq!(n, 100_000);
}

#[tokio::test]
async fn a_panicking_item_fails_alone() {
    let process = ProcessPool::new(2).unwrap();
    let threads = ThreadPool::new(2).unwrap();
    for results in [
        process
            .map(panic_on_13, 0..100)
            .chunk_size(16)
            .collect::<Vec<_>>()
            .await,
        threads
            .map(panic_on_13, 0..100)
            .chunk_size(16)
            .collect::<Vec<_>>()
            .await,
        process.map(panic_on_13, 0..100).collect::<Vec<_>>().await,
    ] {
        assert_eq!(results.len(), 100);
        for (i, r) in results.into_iter().enumerate() {
            let i = i as u64;
            if i % 13 == 0 && i != 0 {
                match r {
                    Err(TaskError::Panicked { message, .. }) => {
                        assert_eq!(message, format!("unlucky {i}"))
                    }
                    other => panic!("item {i}: expected a panic, got {other:?}"),
                }
            } else {
                assert_eq!(r, Ok(i));
            }
        }
    }
}

#[tokio::test]
async fn a_crashing_item_fails_alone_and_the_stream_goes_on() {
    let pool = ProcessPool::new(2).unwrap();
    for chunk in [1, 16, 100] {
        let results: Vec<_> = pool
            .map(crash_on_37, 0..100)
            .chunk_size(chunk)
            .collect()
            .await;
        assert_eq!(results.len(), 100);
        for (i, r) in results.into_iter().enumerate() {
            if i == 37 {
                assert!(
                    matches!(r, Err(TaskError::WorkerDied { .. })),
                    "chunk {chunk}: item 37 gave {r:?}"
                );
            } else {
                assert_eq!(r, Ok(i as u64), "chunk {chunk}: item {i}");
            }
        }
    }
    assert_eq!(pool.apply(square, 3).await, Ok(9));
}

#[tokio::test]
async fn dropping_the_stream_stops_its_work() {
    let pool = ProcessPool::new(2).unwrap();
    let dir = temp_dir("map-drop");
    let inputs: Vec<_> = (0..40).map(|i| (dir.clone(), i)).collect();
    let mut stream = pool.map(slow_marker, inputs).chunk_size(1).in_flight(4);
    assert_eq!(stream.next().await, Some(Ok(0)));
    let running: Vec<u32> = (0..40)
        .filter_map(|i| std::fs::read_to_string(dir.join(format!("started-{i}"))).ok())
        .filter_map(|s| s.parse().ok())
        .collect();
    assert!(!running.is_empty());
    drop(stream);
    // (Killing running chunks' workers has its own test below.) The pool is
    // whole again…
    assert!(
        wait_until(Duration::from_secs(10), || pool.worker_pids().len() == 2),
        "workers were not replaced"
    );
    // …the pool serves new work right away…
    let fresh = pool.apply(pid, ()).await.unwrap();
    assert!(fresh > 0);
    // …and nothing beyond what was in flight ever starts.
    std::thread::sleep(Duration::from_millis(1500));
    let started = (0..40)
        .filter(|i| dir.join(format!("started-{i}")).exists())
        .count();
    assert!(
        started <= 1 + 4 + 2,
        "{started} items started after the stream was dropped"
    );
}

#[tokio::test]
async fn running_chunks_of_a_dropped_stream_have_their_workers_killed() {
    let pool = ProcessPool::new(2).unwrap();
    let dir = temp_dir("map-kill");
    let inputs: Vec<_> = (0..10).map(|i| (dir.clone(), i)).collect();
    let mut stream = pool
        .map(first_quick_rest_hang, inputs)
        .chunk_size(1)
        .in_flight(2);
    assert_eq!(stream.next().await, Some(Ok(0)));
    // Item 1 hangs in a worker now.
    let file = dir.join("started-1");
    assert!(wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(&file).is_ok_and(|s| s.parse::<u32>().is_ok())
    }));
    let busy: u32 = std::fs::read_to_string(&file).unwrap().parse().unwrap();
    drop(stream);
    assert!(
        wait_until(Duration::from_secs(10), || is_reaped(busy)),
        "worker {busy} kept running a dropped map chunk"
    );
    assert_eq!(pool.apply(square, 4).await, Ok(16));
}

#[tokio::test]
async fn an_explicit_chunk_travels_as_one_unit() {
    let pool = ProcessPool::new(2).unwrap();
    let got: Vec<(u32, usize)> = pool
        .map(where_and_when, 0..256)
        .chunk_size(64)
        .try_collect()
        .await
        .unwrap();
    for chunk in got.chunks(64) {
        assert!(
            chunk.iter().all(|(p, _)| *p == chunk[0].0),
            "a chunk was split across workers"
        );
        assert!(
            chunk.windows(2).all(|w| w[1].1 == w[0].1 + 1),
            "a chunk's items did not run back to back"
        );
    }
}

#[tokio::test]
async fn automatic_chunks_grow_for_cheap_items() {
    let pool = ProcessPool::new(2).unwrap();
    let got: Vec<(u32, usize)> = pool
        .map(where_and_when, 0..200_000)
        .try_collect()
        .await
        .unwrap();
    // Runs of consecutive calls in one worker are chunks (or pipelined chunks).
    let mut runs = vec![];
    let mut len = 1;
    for w in got.windows(2) {
        if w[1].0 == w[0].0 && w[1].1 == w[0].1 + 1 {
            len += 1;
        } else {
            runs.push(len);
            len = 1;
        }
    }
    runs.push(len);
    // The first chunks leave before any is measured, so they hold one item
    // each, and each measurement lets the next grow at most eightfold. A
    // worker may still run the whole ramp back to back (one slow to take its
    // first job, as under Wine, leaves it to the other: 1+1+1+1+8+64+512
    // items), which reads as one run here, but never as long as a chunk
    // sized without a measurement (16,384 items here).
    assert!(
        runs[0] < 1000,
        "the first chunks are one-item probes: {:?}",
        &runs[..runs.len().min(10)]
    );
    assert!(
        runs.iter().any(|&r| r >= 1000),
        "chunks never grew: {:?}",
        &runs[..runs.len().min(40)]
    );
    assert!(
        runs.len() < 2000,
        "{} chunks for 200k cheap items",
        runs.len()
    );
}

#[tokio::test]
async fn a_stream_can_be_the_input() {
    let pool = ProcessPool::new(2).unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<u64>(4);
    let feeder = tokio::spawn(async move {
        for i in 0..50 {
            tx.send(i).await.unwrap();
            if i % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let input =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    let got: Vec<u64> = pool.map_stream(square, input).try_collect().await.unwrap();
    feeder.await.unwrap();
    assert_eq!(got, (0..50).map(square).collect::<Vec<_>>());
}

#[test]
fn map_blocking_is_an_iterator_for_plain_threads() {
    let pool = ProcessPool::new(2).unwrap();
    let got: Vec<u64> = pool
        .map_blocking(square, 0..1000)
        .map(Result::unwrap)
        .collect();
    assert_eq!(got, (0..1000).map(square).collect::<Vec<_>>());
    let threads = ThreadPool::new(2).unwrap();
    let mut counts: HashMap<bool, usize> = HashMap::new();
    for r in threads.map_blocking(panic_on_13, 0..100) {
        *counts.entry(r.is_ok()).or_default() += 1;
    }
    assert_eq!(counts[&false], 7);
}
