//! Memory a pool costs: the RSS of an idle worker process, and the parent's
//! bookkeeping per queued task, measured with 1,000,000 tasks queued behind
//! two busy workers. `cargo run --release --example queued_memory`

use std::time::Duration;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("Linux /proc");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS");
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("a number")
}

/// Keeps a worker busy so that everything else stays queued.
fn park(_: ()) {
    std::thread::sleep(Duration::from_secs(3600));
}

fn id(x: u64) -> u64 {
    x
}

fn main() -> Result<(), procpool::Error> {
    const QUEUED: u64 = 1_000_000;
    let pool = procpool::ProcessPool::new(2)?;
    std::thread::sleep(Duration::from_millis(300));
    for pid in pool.worker_pids() {
        println!("idle worker {pid}: VmRSS {} KiB", rss_kib(pid));
    }
    let busy: Vec<_> = (0..2).map(|_| pool.spawn(park, ())).collect();
    std::thread::sleep(Duration::from_millis(200));
    let before = rss_kib(std::process::id());
    let queued: Vec<_> = (0..QUEUED).map(|i| pool.spawn(id, i)).collect();
    let grown = rss_kib(std::process::id()) - before;
    println!(
        "{QUEUED} queued tasks: parent RSS +{grown} KiB = {} bytes per task, all included \
         (the caller's own Vec of Task handles: 16 bytes; the encoded argument: up to 9 bytes)",
        grown * 1024 / QUEUED
    );
    drop((queued, busy));
    pool.terminate();
    Ok(())
}
