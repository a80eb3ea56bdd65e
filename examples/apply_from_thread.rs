//! Plain OS threads that mix I/O with one CPU-heavy step, handing that step to
//! a `ProcessPool` with `apply_blocking`, next to the same job written with
//! tokio tasks that `.await` `pool.apply`.
//!
//! `cargo run --release --example apply_from_thread`
//!
//! Each job "downloads" (a sleep standing in for I/O), computes (naive
//! Fibonacci in a worker process), then "uploads" (another sleep). The
//! timelines show the I/O of some jobs overlapping the computation of others,
//! with at most one computation per worker process at a time:
//! `.` I/O, `-` waiting for a free worker, `#` computing.
//!
//! `apply_blocking` needs no async runtime; it must not be called on an async
//! runtime's thread (it would block it), which is what `.await` is for.

use std::time::{Duration, Instant};

use procpool::{ProcessPool, TaskError};

const JOBS: u64 = 6;
const FIB_N: u32 = 38;
/// Milliseconds per character in the timelines.
const SCALE_MS: f64 = 25.0;

/// Deliberately slow recursive Fibonacci: pure CPU work.
fn fib(n: u32) -> u64 {
    if n < 2 {
        n as u64
    } else {
        fib(n - 1) + fib(n - 2)
    }
}

/// The CPU-heavy step, run in a worker process. It also reports how long the
/// computation itself took, so the caller can tell it apart from time spent
/// waiting for a free worker.
fn crunch(n: u32) -> (u64, Duration) {
    let started = Instant::now();
    let value = fib(n);
    (value, started.elapsed())
}

/// Simulated I/O before the CPU step: staggered so jobs arrive at different
/// times, as they would from a real network.
fn download_time(job: u64) -> Duration {
    Duration::from_millis(50 + 40 * job)
}

const UPLOAD_TIME: Duration = Duration::from_millis(100);

/// When each phase of one job happened, relative to the start of the run.
struct Timeline {
    job: u64,
    download_end: Duration,
    call_start: Duration,
    compute: Duration,
    call_end: Duration,
    end: Duration,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = ProcessPool::new(2)?;
    // One untimed call so worker start-up is not part of the first timeline.
    pool.apply_blocking(fib, 20)?;

    println!(
        "{JOBS} jobs, each: download (sleep 50-250 ms), fib({FIB_N}) in a worker, upload (sleep {} ms); {} worker processes\n",
        UPLOAD_TIME.as_millis(),
        pool.workers()
    );

    println!("1. Plain threads calling pool.apply_blocking");
    let t0 = Instant::now();
    let handles: Vec<_> = (0..JOBS)
        .map(|job| {
            // A clone is a cheap handle to the same pool.
            let pool = pool.clone();
            std::thread::spawn(move || -> Result<Timeline, TaskError> {
                std::thread::sleep(download_time(job));
                let download_end = t0.elapsed();
                let (_value, compute) = pool.apply_blocking(crunch, FIB_N)?;
                let call_end = t0.elapsed();
                std::thread::sleep(UPLOAD_TIME);
                Ok(Timeline {
                    job,
                    download_end,
                    call_start: download_end,
                    compute,
                    call_end,
                    end: t0.elapsed(),
                })
            })
        })
        .collect();
    let mut timelines = Vec::new();
    for h in handles {
        timelines.push(h.join().expect("job thread panicked")?);
    }
    report(&timelines, t0.elapsed());

    println!("\n2. The same jobs as tokio tasks awaiting pool.apply");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let timelines = runtime.block_on(async {
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..JOBS)
            .map(|job| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(download_time(job)).await;
                    let download_end = t0.elapsed();
                    // Awaiting leaves this runtime thread free for other tasks.
                    let (_value, compute) = pool.apply(crunch, FIB_N).await?;
                    let call_end = t0.elapsed();
                    tokio::time::sleep(UPLOAD_TIME).await;
                    Ok::<_, TaskError>(Timeline {
                        job,
                        download_end,
                        call_start: download_end,
                        compute,
                        call_end,
                        end: t0.elapsed(),
                    })
                })
            })
            .collect();
        let mut timelines = Vec::new();
        for task in tasks {
            timelines.push(task.await.expect("job task panicked")?);
        }
        Ok::<_, TaskError>((timelines, t0.elapsed()))
    })?;
    report(&timelines.0, timelines.1);
    Ok(())
}

/// Draws one row per job and compares the wall time with running the jobs
/// one after another.
fn report(timelines: &[Timeline], wall: Duration) {
    let col = |d: Duration| (d.as_secs_f64() * 1e3 / SCALE_MS).round() as usize;
    for t in timelines {
        // The computation is the tail of the call; what precedes it is queueing
        // (plus a little messaging).
        let compute_start = t.call_end.saturating_sub(t.compute).max(t.call_start);
        let mut row = String::new();
        for (until, ch) in [
            (t.download_end, '.'),
            (compute_start, '-'),
            (t.call_end, '#'),
            (t.end, '.'),
        ] {
            while row.chars().count() < col(until) {
                row.push(ch);
            }
        }
        println!(
            "   job {}  |{row:<w$}|  waited {:>4.0} ms, computed {:>4.0} ms",
            t.job,
            ms(compute_start.saturating_sub(t.call_start)),
            ms(t.compute),
            w = col(wall)
        );
    }
    let serial: Duration = timelines
        .iter()
        .map(|t| download_time(t.job) + t.compute + UPLOAD_TIME)
        .sum();
    let busy: Duration = timelines.iter().map(|t| t.compute).sum();
    println!(
        "   wall time {:.0} ms; one job after another it would take {:.0} ms; \
         {:.0} ms of computing spread over the workers; one column = {SCALE_MS} ms",
        ms(wall),
        ms(serial),
        ms(busy)
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
