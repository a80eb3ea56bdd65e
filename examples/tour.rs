//! A short guided run of what procpool does: `cargo run --release --example tour`.
//!
//! 1. a hung task cut off by a timeout (its worker is killed, the pool goes on),
//! 2. results streamed as they complete,
//! 3. a crash that fails one task and nothing else,
//! 4. plain threads calling into the pool (apply-from-thread),
//! 5. the same calls on a thread pool.

use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use procpool::{ProcessPool, TaskError, ThreadPool};

/// Deliberately slow recursive Fibonacci: pure CPU work.
fn fib(n: u32) -> u64 {
    if n < 2 {
        n as u64
    } else {
        fib(n - 1) + fib(n - 2)
    }
}

/// A task that never finishes, like a worker stuck on a bad input.
fn hang(_: ()) -> u64 {
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A task that crashes its process.
fn crash(_: ()) -> u64 {
    std::process::abort()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let pool = ProcessPool::new(2)?;
    println!(
        "Started a pool of {} worker processes {:?} in {:?} (this program is pid {}).",
        pool.workers(),
        pool.worker_pids(),
        started.elapsed(),
        std::process::id()
    );

    println!("\n1. A hung task under a 1 s timeout");
    let t = Instant::now();
    match tokio::time::timeout(Duration::from_secs(1), pool.spawn(hang, ())).await {
        Err(_) => println!(
            "   timed out after {:?}: its worker was killed",
            t.elapsed()
        ),
        Ok(r) => println!("   unexpected: {r:?}"),
    }
    println!(
        "   the pool still serves: fib(30) = {}",
        pool.apply(fib, 30).await?
    );
    println!("   workers now: {:?}", pool.worker_pids());

    println!("\n2. Results as they complete (fib(n) for n = 40, 30, 37, 20)");
    let t = Instant::now();
    let mut running: FuturesUnordered<_> = [40u32, 30, 37, 20]
        .into_iter()
        .map(|n| {
            let task = pool.spawn(fib, n);
            async move { (n, task.await) }
        })
        .collect();
    while let Some((n, r)) = running.next().await {
        println!("   fib({n}) = {} after {:?}", r?, t.elapsed());
    }

    println!("\n3. A crash fails one task only");
    let bystander = pool.spawn(fib, 32);
    match pool.apply(crash, ()).await {
        Err(e @ TaskError::WorkerDied { .. }) => println!("   crash task: {e}"),
        other => println!("   unexpected: {other:?}"),
    }
    println!("   the task next to it: fib(32) = {}", bystander.await?);

    println!("\n4. Plain threads calling the pool (apply_blocking)");
    let threads: Vec<_> = (0..4u32)
        .map(|i| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                // Imagine I/O here (a download, a file read), then one CPU-heavy step.
                let n = 25 + i;
                (n, pool.apply_blocking(fib, n))
            })
        })
        .collect();
    for h in threads {
        let (n, r) = h.join().expect("thread panicked");
        println!("   thread computed fib({n}) = {}", r?);
    }

    println!("\n5. The same calls on a ThreadPool");
    let threads = ThreadPool::new(2)?;
    println!("   fib(30) = {}", threads.apply(fib, 30).await?);

    pool.shutdown().await;
    println!(
        "\nShut down cleanly after {:?}; no worker process is left.",
        started.elapsed()
    );
    Ok(())
}
