//! Stopping work you no longer want, three ways, on a `ProcessPool`:
//!
//! 1. a hung task cut off by `tokio::time::timeout` (its worker process is
//!    killed and replaced: the pids change),
//! 2. `tokio::select!` racing two strategies for the same answer (the loser's
//!    worker is killed the moment the winner returns),
//! 3. tasks dropped while still queued never run at all (checked with marker
//!    files in a temporary directory).
//!
//! `cargo run --release --example timeouts_and_select`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use procpool::ProcessPool;

/// A task stuck forever, like a worker wedged on a bad input.
fn hang(_: ()) -> u64 {
    println!(
        "   [worker {}] hang: started, will never return",
        std::process::id()
    );
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A factor found by one of the strategies, and which process found it.
#[derive(serde::Serialize, serde::Deserialize, Debug)]
struct Found {
    factor: u64,
    method: String,
    pid: u32,
}

/// Strategy 1: trial division. Certain, but it needs about sqrt(p)/2 divisions
/// for a smallest prime factor p: seconds for the number below.
fn trial_division(n: u64) -> Found {
    println!("   [worker {}] trial division: started", std::process::id());
    let mut d = 3;
    let factor = loop {
        if n % 2 == 0 {
            break 2;
        }
        if d > n / d {
            break n; // prime
        }
        if n % d == 0 {
            break d;
        }
        d += 2;
    };
    Found {
        factor,
        method: "trial division".into(),
        pid: std::process::id(),
    }
}

/// Strategy 2: Pollard's rho. Needs about sqrt(p) steps: milliseconds here.
fn pollard_rho(n: u64) -> Found {
    println!("   [worker {}] Pollard's rho: started", std::process::id());
    let mulmod = |a: u64, b: u64| (a as u128 * b as u128 % n as u128) as u64;
    let gcd = |mut a: u64, mut b: u64| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let mut factor = n;
    // Different constants give different pseudo-random walks; one that lands
    // on n itself just failed, so try the next.
    for c in 1..100 {
        let step = |x: u64| (mulmod(x, x) + c) % n;
        let (mut x, mut y, mut d) = (2, 2, 1);
        while d == 1 {
            x = step(x);
            y = step(step(y));
            d = gcd(x.abs_diff(y), n);
        }
        if d != n {
            factor = d.min(n / d);
            break;
        }
    }
    Found {
        factor,
        method: "Pollard's rho".into(),
        pid: std::process::id(),
    }
}

/// A task that keeps a worker busy for a while.
fn busy(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Leaves a marker file behind, so we can count which of these tasks ran.
fn mark((dir, i): (PathBuf, u32)) -> u32 {
    std::fs::write(dir.join(format!("ran-{i}")), b"").expect("write marker");
    i
}

/// Waits (briefly) until every worker slot has a live process again.
async fn settled_pids(pool: &ProcessPool, before: &[u32]) -> Vec<u32> {
    for _ in 0..150 {
        let now = pool.worker_pids();
        if now.len() == pool.workers() && now != before {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pool.worker_pids()
}

fn diff(before: &[u32], after: &[u32]) -> (Vec<u32>, Vec<u32>) {
    let gone = before
        .iter()
        .copied()
        .filter(|p| !after.contains(p))
        .collect();
    let new = after
        .iter()
        .copied()
        .filter(|p| !before.contains(p))
        .collect();
    (gone, new)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = ProcessPool::new(2)?;

    println!("1. A hung task under a 500 ms timeout");
    let before = pool.worker_pids();
    println!("   worker pids: {before:?}");
    let t = Instant::now();
    match tokio::time::timeout(Duration::from_millis(500), pool.spawn(hang, ())).await {
        // Timing out drops the task, and dropping a running task kills its worker.
        Err(_) => println!("   timed out after {:.0} ms", ms(t.elapsed())),
        Ok(r) => println!("   unexpected: {r:?}"),
    }
    let after = settled_pids(&pool, &before).await;
    let (gone, new) = diff(&before, &after);
    println!("   worker pids: {after:?} (killed {gone:?}, replaced by {new:?})");
    println!(
        "   the pool keeps serving: busy(10) = {}",
        pool.apply(busy, 10).await?
    );

    println!("\n2. select!: two strategies race to factor the same number");
    let n: u64 = 1_000_000_007 * 998_244_353;
    let before = pool.worker_pids();
    println!("   n = {n}, worker pids: {before:?}");
    let t = Instant::now();
    // A bound on the whole race too, in case both strategies were slow.
    let race = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::select! {
            r = pool.spawn(trial_division, n) => r,
            r = pool.spawn(pollard_rho, n) => r,
        }
    })
    .await;
    match race {
        Ok(Ok(found)) => println!(
            "   {} won after {:.0} ms in worker {}: {n} = {} x {}",
            found.method,
            ms(t.elapsed()),
            found.pid,
            found.factor,
            n / found.factor
        ),
        Ok(Err(e)) => println!("   the winner failed: {e}"),
        Err(_) => println!("   neither strategy finished within 30 s"),
    }
    // Leaving select! dropped the losing task, which killed its worker.
    let after = settled_pids(&pool, &before).await;
    let (gone, new) = diff(&before, &after);
    println!(
        "   worker pids: {after:?} (the loser's worker {gone:?} was killed, replaced by {new:?})"
    );

    println!("\n3. Tasks dropped while queued never run");
    let dir = std::env::temp_dir().join(format!("procpool-cancel-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // Occupy both workers so the next tasks have to wait in the queue.
    let blockers = [pool.spawn(busy, 500), pool.spawn(busy, 500)];
    let mut queued: Vec<_> = (0..10u32)
        .map(|i| pool.spawn(mark, (dir.clone(), i)))
        .collect();
    // Keep tasks 0 and 9; dropping the other eight cancels them.
    let last = queued.pop().expect("ten tasks");
    let first = queued.remove(0);
    drop(queued);
    println!("   spawned 10 marker tasks behind 2 busy ones, dropped 8 of them while queued");
    for b in blockers {
        b.await?;
    }
    println!(
        "   kept tasks returned {} and {}",
        first.await?,
        last.await?
    );
    // Give any (wrongly) surviving task time to write its marker before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ran: Vec<String> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    ran.sort();
    println!(
        "   marker files in {}: {ran:?} ({} of the 8 dropped tasks ran)",
        dir.display(),
        ran.len().saturating_sub(2)
    );
    std::fs::remove_dir_all(&dir)?;

    pool.shutdown().await;
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
