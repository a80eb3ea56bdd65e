//! Large arguments and results. On Linux a local worker's large frames lie in
//! shared memory (one region each way) instead of streaming through its
//! pipes; everywhere else, and whenever a region is busy, they take the pipe.
//! Either way every byte must arrive, a crash must blame only its own task,
//! nothing a task does to the shared memory may hurt the parent, and the
//! memory must go back once large frames stop.
//!
//! `harness = false`: the scenarios count this process's descriptors and
//! shared memory files, so they run one after another in one process.

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use common::wait_until;
use futures::executor::block_on;
use procpool::{ProcessPool, TaskError};
use serde_bytes::ByteBuf;

/// Bytes that differ at every position and from one seed to the next.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}

/// The bytes reversed, and their sum: both sides of the trip checked.
fn reverse_and_sum(bytes: ByteBuf) -> (u64, ByteBuf) {
    let sum = bytes.iter().map(|&b| u64::from(b)).sum();
    let mut v = bytes.into_vec();
    v.reverse();
    (sum, ByteBuf::from(v))
}

/// A large result from a small argument.
fn make(len_and_seed: (usize, u8)) -> ByteBuf {
    ByteBuf::from(pattern(len_and_seed.0, len_and_seed.1))
}

/// Aborts the worker when the first byte is 0xff, else echoes.
fn abort_on_ff(bytes: ByteBuf) -> ByteBuf {
    if bytes.first() == Some(&0xff) {
        std::process::abort();
    }
    bytes
}

#[cfg(all(target_os = "linux", not(procpool_portable)))]
fn small(x: u64) -> u64 {
    x + 1
}

fn check(len: usize, seed: u8, (sum, back): (u64, ByteBuf)) {
    let sent = pattern(len, seed);
    assert_eq!(
        sum,
        sent.iter().map(|&b| u64::from(b)).sum::<u64>(),
        "{len}"
    );
    assert_eq!(back.len(), len);
    assert!(
        back.iter().rev().eq(sent.iter()),
        "{len} bytes came back wrong"
    );
}

const SIZES: [usize; 7] = [0, 1000, 200 << 10, 256 << 10, 300 << 10, 3 << 20, 9 << 20];

fn large_arguments_and_results_cross_intact_in_every_mix() {
    let pool = ProcessPool::new(2).unwrap();
    // Many at once: queued deep, so jobs are sent ahead (a second large frame
    // finds the region busy and takes the pipe) and small ones mix in.
    let tasks: Vec<_> = (0..42)
        .map(|i| {
            let (len, seed) = (SIZES[i % SIZES.len()], i as u8);
            let task = pool.spawn(reverse_and_sum, ByteBuf::from(pattern(len, seed)));
            (len, seed, task)
        })
        .collect();
    for (len, seed, task) in tasks {
        check(len, seed, block_on(task).unwrap());
    }
    // One at a time, from a plain thread and awaited on a runtime.
    for (i, len) in SIZES.into_iter().enumerate() {
        let arg = ByteBuf::from(pattern(len, i as u8));
        check(
            len,
            i as u8,
            pool.apply_blocking(reverse_and_sum, arg).unwrap(),
        );
        let big = pool.apply_blocking(make, (len, i as u8)).unwrap();
        assert_eq!(big.into_vec(), pattern(len, i as u8));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for len in [5 << 20, 10, 1 << 20] {
            let arg = ByteBuf::from(pattern(len, 9));
            check(len, 9, pool.apply(reverse_and_sum, arg).await.unwrap());
            let big = pool.apply(make, (len, 3)).await.unwrap();
            assert_eq!(big.into_vec(), pattern(len, 3));
        }
    });
    drop(rt);
    block_on(pool.shutdown());
}

/// Small and large jobs alternating on one worker with a deep backlog: a
/// large job's notice often arrives behind a small job's frame in the same
/// read, and the worker must keep the two apart.
fn small_and_large_jobs_alternating_on_one_worker() {
    let pool = ProcessPool::new(1).unwrap();
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let len = if i % 2 == 0 { 1000 } else { 300 << 10 };
            let task = pool.spawn(reverse_and_sum, ByteBuf::from(pattern(len, i as u8)));
            (len, i as u8, task)
        })
        .collect();
    for (len, seed, task) in tasks {
        check(len, seed, block_on(task).unwrap());
    }
    assert_eq!(pool.stats().restarts.crashed, 0, "no worker died");
    block_on(pool.shutdown());
}

fn a_crash_during_a_large_job_fails_only_that_job() {
    let pool = ProcessPool::new(1).unwrap();
    let mut fatal = pattern(2 << 20, 1);
    fatal[0] = 0xff;
    let before = pool.spawn(abort_on_ff, ByteBuf::from(pattern(2 << 20, 2)));
    let crash = pool.spawn(abort_on_ff, ByteBuf::from(fatal));
    let after = pool.spawn(abort_on_ff, ByteBuf::from(pattern(3 << 20, 3)));
    assert_eq!(block_on(before).unwrap().into_vec(), pattern(2 << 20, 2));
    match block_on(crash) {
        Err(TaskError::WorkerDied { signal, .. }) => {
            #[cfg(unix)]
            assert_eq!(signal, Some(6), "SIGABRT");
            #[cfg(not(unix))]
            let _ = signal;
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    assert_eq!(block_on(after).unwrap().into_vec(), pattern(3 << 20, 3));
    // The replacement worker has regions of its own.
    let arg = ByteBuf::from(pattern(4 << 20, 4));
    check(
        4 << 20,
        4,
        block_on(pool.spawn(reverse_and_sum, arg)).unwrap(),
    );
    block_on(pool.shutdown());
}

/// This process's open shared memory files made by procpool, and the bytes
/// of memory each holds: `(name, bytes)`.
#[cfg(target_os = "linux")]
fn procpool_memfds() -> Vec<(String, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut found = vec![];
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        if target.starts_with("/memfd:procpool") {
            if let Ok(meta) = std::fs::metadata(entry.path()) {
                found.push((target, meta.blocks() * 512));
            }
        }
    }
    found
}

/// In a worker: tries to shrink every procpool shared memory file it can
/// reach (as a stray task might); returns (tried, refused) and a large value.
#[cfg(target_os = "linux")]
fn shrink_shared_memory(len: usize) -> (usize, usize, ByteBuf) {
    let mut tried = 0;
    let mut refused = 0;
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if !target.to_string_lossy().starts_with("/memfd:procpool") {
            continue;
        }
        tried += 1;
        let opened = std::fs::OpenOptions::new().write(true).open(entry.path());
        if opened.and_then(|f| f.set_len(0)).is_err() {
            refused += 1;
        }
    }
    (tried, refused, ByteBuf::from(pattern(len, 5)))
}

#[cfg(target_os = "linux")]
fn a_task_cannot_shrink_the_shared_memory_under_the_parent() {
    let pool = ProcessPool::new(1).unwrap();
    // Both regions hold a frame first, so that there is something to shrink.
    let arg = ByteBuf::from(pattern(5 << 20, 4));
    check(
        5 << 20,
        4,
        block_on(pool.spawn(reverse_and_sum, arg)).unwrap(),
    );
    let (tried, refused, big) = block_on(pool.spawn(shrink_shared_memory, 6 << 20)).unwrap();
    if cfg!(procpool_portable) {
        // No memfds there: the ring is a POSIX object, and there are no
        // regions.
        assert_eq!(tried, 0);
    } else {
        assert_eq!(tried, 3, "the result ring and two regions");
        assert_eq!(refused, tried, "every shrink refused (sealed)");
    }
    assert_eq!(big.into_vec(), pattern(6 << 20, 5));
    // The parent reads on unharmed, through the same regions.
    let arg = ByteBuf::from(pattern(7 << 20, 6));
    check(
        7 << 20,
        6,
        block_on(pool.spawn(reverse_and_sum, arg)).unwrap(),
    );
    assert_eq!(pool.stats().restarts.crashed, 0, "no worker died");
    block_on(pool.shutdown());
}

#[cfg(all(target_os = "linux", not(procpool_portable)))]
fn region_memory_goes_back_once_large_frames_stop() {
    let held = || -> u64 {
        (procpool_memfds().iter())
            .filter(|(name, _)| name.contains("frames"))
            .map(|(_, bytes)| bytes)
            .sum()
    };
    let pool = ProcessPool::new(1).unwrap();
    let arg = ByteBuf::from(pattern(8 << 20, 7));
    check(
        8 << 20,
        7,
        block_on(pool.spawn(reverse_and_sum, arg)).unwrap(),
    );
    assert!(held() >= 16 << 20, "both regions hold a frame: {}", held());
    // Small jobs through the queue and the direct lane: the regions stay
    // unused, and both writers give their pages back.
    for i in 0..6 {
        assert_eq!(block_on(pool.spawn(small, i)).unwrap(), i + 1);
        assert_eq!(pool.apply_blocking(small, i).unwrap(), i + 1);
    }
    assert!(
        wait_until(Duration::from_secs(10), || held() == 0),
        "still held: {}",
        held()
    );
    // And a large frame after that still crosses.
    let arg = ByteBuf::from(pattern(1 << 20, 8));
    check(
        1 << 20,
        8,
        block_on(pool.spawn(reverse_and_sum, arg)).unwrap(),
    );
    block_on(pool.shutdown());
}

fn main() {
    // Process-wide state created once (tokio's signal pipe) is not a leak.
    block_on(ProcessPool::new(1).unwrap().shutdown());
    let baseline = common::open_fds();
    let tests: &[(&str, &dyn Fn())] = &[
        (
            "large_arguments_and_results_cross_intact_in_every_mix",
            &large_arguments_and_results_cross_intact_in_every_mix,
        ),
        (
            "small_and_large_jobs_alternating_on_one_worker",
            &small_and_large_jobs_alternating_on_one_worker,
        ),
        (
            "a_crash_during_a_large_job_fails_only_that_job",
            &a_crash_during_a_large_job_fails_only_that_job,
        ),
        #[cfg(target_os = "linux")]
        (
            "a_task_cannot_shrink_the_shared_memory_under_the_parent",
            &a_task_cannot_shrink_the_shared_memory_under_the_parent,
        ),
        #[cfg(all(target_os = "linux", not(procpool_portable)))]
        (
            "region_memory_goes_back_once_large_frames_stop",
            &region_memory_goes_back_once_large_frames_stop,
        ),
        ("no_descriptor_or_process_is_left", &|| {
            let settled = wait_until(Duration::from_secs(10), || {
                common::open_fds() == baseline && common::children() == (vec![], vec![])
            });
            assert!(
                settled,
                "descriptors {} (baseline {baseline}), children {:?}",
                common::open_fds(),
                common::children()
            );
            #[cfg(target_os = "linux")]
            assert_eq!(procpool_memfds(), vec![], "shared memory left open");
        }),
    ];
    common::run_sequentially(tests);
}
