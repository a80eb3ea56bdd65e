//! The fault matrix: one scenario per kind of failure. Each checks that the
//! affected task gets the right typed error, that a task running beside it is
//! unharmed, that the pool keeps serving (200 more tasks), and that afterwards
//! no zombie or extra worker is left and the file-descriptor count is back to
//! its baseline.
//!
//! `harness = false` so the scenarios run one after another in one process,
//! which makes child-process and descriptor counts exact.
//!
//! On Windows (run under Wine in CI) "descriptors" are the process's handle
//! count and children are found through a process snapshot; the scenarios
//! that need `fork` or `setrlimit` are Unix only, and the memory limit is
//! checked to be refused there (see each `cfg`).

#[path = "common/mod.rs"]
mod common;

use std::process::Command;
use std::time::Duration;

use common::{children, open_fds, wait_until};
use procpool::{CodecStage, Error, ProcessPool, ProcessPoolBuilder, TaskError, ThreadPool};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

fn square(x: u64) -> u64 {
    x * x
}
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}
fn panics(_: ()) -> u64 {
    panic!("deliberate")
}
fn aborts(_: ()) -> u64 {
    std::process::abort()
}
fn segfaults(_: ()) -> u64 {
    // SAFETY: not safe at all: this deliberately crashes the worker.
    unsafe { std::ptr::null_mut::<u64>().write_volatile(1) };
    0
}
fn exits_3(_: ()) -> u64 {
    std::process::exit(3)
}
fn spins(_: ()) -> u64 {
    let mut x = 0u64;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}
#[cfg(unix)]
fn allocates_forever(_: ()) -> u64 {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![1u8; 16 << 20]);
        std::hint::black_box(&hoard);
    }
}
fn announce_and_sleep(path: std::path::PathBuf) -> u32 {
    std::fs::write(path, std::process::id().to_string()).unwrap();
    std::thread::sleep(Duration::from_secs(60));
    std::process::id()
}
fn pid(_: ()) -> u32 {
    std::process::id()
}
fn big_result(n: usize) -> serde_bytes::ByteBuf {
    serde_bytes::ByteBuf::from(vec![0u8; n])
}
fn writes_garbage(_: ()) -> u64 {
    procpool::__test_hooks::corrupt_protocol_stream();
    1
}
fn sends_a_stale_result(_: ()) -> u64 {
    procpool::__test_hooks::send_result_for_unknown_job();
    std::thread::sleep(Duration::from_millis(100));
    1
}
#[cfg(unix)]
/// Forks a child that keeps every descriptor the worker has (no exec, so
/// close-on-exec does not help), reports its pid, then crashes.
fn forks_then_aborts(pid_file: std::path::PathBuf) -> u64 {
    // SAFETY: the child only calls async-signal-safe functions (sleep, _exit).
    let child = unsafe { libc::fork() };
    if child == 0 {
        unsafe {
            libc::sleep(60);
            libc::_exit(0)
        }
    }
    std::fs::write(pid_file, child.to_string()).unwrap();
    std::process::abort()
}

/// Starts a long-lived grandchild (which inherits whatever the worker does not
/// protect), reports its pid, then crashes.
fn spawns_then_aborts(pid_file: std::path::PathBuf) -> u64 {
    let child = Command::new(std::env::current_exe().unwrap())
        .arg("--role=sleep")
        .spawn()
        .unwrap();
    std::fs::write(pid_file, child.id().to_string()).unwrap();
    std::process::abort()
}
fn init_panics(_: ()) {
    panic!("initializer exploded")
}

/// A result type whose `Serialize` fails in the worker.
#[derive(Debug, Deserialize)]
struct Unserializable;
impl Serialize for Unserializable {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("refuses to serialize"))
    }
}
fn returns_unserializable(_: ()) -> Unserializable {
    Unserializable
}

/// An argument whose `Deserialize` fails in the worker.
#[derive(Debug, Serialize)]
struct Undeserializable(u8);
impl<'de> Deserialize<'de> for Undeserializable {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("refuses to deserialize"))
    }
}
fn takes_undeserializable(_: Undeserializable) -> u64 {
    0
}

// --- process inspection -------------------------------------------------

#[cfg(windows)]
fn fd_targets() -> Vec<String> {
    vec!["(handles are not listed on Windows)".into()]
}

#[cfg(unix)]
fn fd_targets() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .map(|e| {
            format!(
                "{}->{:?}",
                e.file_name().to_string_lossy(),
                std::fs::read_link(e.path()).ok()
            )
        })
        .collect();
    v.sort();
    v
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    // No signal driver: it keeps process-global descriptors open, which
    // would blur the descriptor counts this file checks.
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .unwrap()
        .block_on(f)
}

// --- the harness ----------------------------------------------------------

struct Check {
    fds: usize,
}

impl Check {
    fn start() -> Check {
        let (live, zombies) = children();
        assert!(
            live.is_empty() && zombies.is_empty(),
            "leftovers before: {live:?} {zombies:?}"
        );
        Check { fds: open_fds() }
    }

    /// The pool still serves, has its workers, and leaves nothing behind.
    fn finish(self, pool: ProcessPool, workers: usize) {
        for i in 0..200u64 {
            assert_eq!(
                pool.apply_blocking(square, i),
                Ok(i * i),
                "the pool stopped serving"
            );
        }
        assert!(
            wait_until(Duration::from_secs(10), || pool.worker_pids().len()
                == workers),
            "expected {workers} workers, have {:?}",
            pool.worker_pids()
        );
        assert_eq!(children().0.len(), workers, "extra worker processes");
        block_on(pool.shutdown());
        drop(pool);
        self.nothing_left();
    }

    fn nothing_left(self) {
        assert!(
            wait_until(Duration::from_secs(10), || children() == (vec![], vec![])),
            "children left behind: {:?}",
            children()
        );
        assert!(
            wait_until(Duration::from_secs(10), || open_fds() == self.fds),
            "descriptors leaked: {} before, {} after: {:?}",
            self.fds,
            open_fds(),
            fd_targets()
        );
    }
}

/// Runs `fault` on a fresh 2-worker pool while another task runs beside it.
fn process_fault(
    builder: ProcessPoolBuilder,
    fault: impl FnOnce(&ProcessPool) -> TaskError,
) -> TaskError {
    let check = Check::start();
    let pool = builder.workers(2).build().unwrap();
    let bystander = pool.spawn(sleep_ms, 300);
    let error = fault(&pool);
    assert_eq!(
        block_on(bystander),
        Ok(300),
        "a task beside the fault was hurt"
    );
    check.finish(pool, 2);
    error
}

fn simple(f: fn(()) -> u64) -> TaskError {
    process_fault(ProcessPool::builder(), |p| {
        p.apply_blocking(f, ()).unwrap_err()
    })
}

fn died_with(e: TaskError, code: Option<i32>, signal: Option<i32>) {
    match e {
        TaskError::WorkerDied {
            code: c, signal: s, ..
        } => assert_eq!((c, s), (code, signal)),
        other => panic!("expected WorkerDied, got {other:?}"),
    }
}

fn panic_fails_its_task() {
    assert!(
        matches!(simple(panics), TaskError::Panicked { message, .. } if message == "deliberate")
    );
}
fn abort_fails_its_task() {
    died_with(simple(aborts), common::ABORTED.0, common::ABORTED.1);
}
fn segfault_fails_its_task() {
    died_with(
        simple(segfaults),
        common::SEGFAULTED.0,
        common::SEGFAULTED.1,
    );
}
fn exit_fails_its_task() {
    died_with(simple(exits_3), Some(3), None);
}

fn sigkill_while_idle_is_noticed_and_replaced() {
    let e = process_fault(ProcessPool::builder(), |pool| {
        let victim = pool.apply_blocking(pid, ()).unwrap();
        std::thread::sleep(Duration::from_millis(350)); // both workers idle
        common::kill(victim);
        assert!(wait_until(Duration::from_secs(10), || !pool
            .worker_pids()
            .contains(&victim)
            && pool.worker_pids().len() == 2));
        TaskError::Cancelled // no task was affected
    });
    assert_eq!(e, TaskError::Cancelled);
}

fn sigkill_while_busy_fails_the_running_task() {
    let e = process_fault(ProcessPool::builder(), |pool| {
        let file = common::temp_dir("busy").join("pid");
        let task = pool.spawn(announce_and_sleep, file.clone());
        assert!(wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(&file).is_ok_and(|s| s.parse::<u32>().is_ok())
        }));
        let busy: u32 = std::fs::read_to_string(&file).unwrap().parse().unwrap();
        common::kill(busy);
        block_on(task).unwrap_err()
    });
    died_with(e, common::KILLED.0, common::KILLED.1);
}

fn endless_loop_is_cut_by_a_timeout() {
    let e = process_fault(ProcessPool::builder(), |pool| {
        let r = block_on(async {
            tokio::time::timeout(Duration::from_millis(500), pool.spawn(spins, ())).await
        });
        assert!(r.is_err());
        TaskError::Cancelled
    });
    assert_eq!(e, TaskError::Cancelled);
}

// The limit is an rlimit on Unix; Windows refuses the setting (below).
#[cfg(unix)]
fn unbounded_allocation_hits_the_memory_limit() {
    let e = process_fault(
        ProcessPool::builder().memory_limit_per_worker(256 << 20),
        |pool| pool.apply_blocking(allocates_forever, ()).unwrap_err(),
    );
    assert!(matches!(e, TaskError::WorkerDied { .. }), "{e:?}");
}

/// Windows has no per-worker memory limit yet: asking for one is an error
/// from `build`, not a limit silently missing.
#[cfg(windows)]
fn a_memory_limit_is_refused() {
    let check = Check::start();
    let r = ProcessPool::builder()
        .workers(2)
        .memory_limit_per_worker(256 << 20)
        .build();
    match r {
        Err(Error::Spawn(e)) => assert_eq!(e.kind(), std::io::ErrorKind::Unsupported),
        other => panic!("expected a Spawn error, got {other:?}"),
    }
    check.nothing_left();
}

fn failing_result_serialization() {
    let e = process_fault(ProcessPool::builder(), |pool| {
        pool.apply_blocking(returns_unserializable, ()).unwrap_err()
    });
    assert!(
        matches!(
            e,
            TaskError::Serialization {
                stage: CodecStage::EncodeResult,
                ..
            }
        ),
        "{e:?}"
    );
}

fn failing_argument_deserialization() {
    let e = process_fault(ProcessPool::builder(), |pool| {
        pool.apply_blocking(takes_undeserializable, Undeserializable(1))
            .unwrap_err()
    });
    assert!(
        matches!(
            e,
            TaskError::Serialization {
                stage: CodecStage::DecodeArgument,
                ..
            }
        ),
        "{e:?}"
    );
}

fn result_over_the_frame_limit() {
    let e = process_fault(ProcessPool::builder().max_frame_size(1 << 20), |pool| {
        pool.apply_blocking(big_result, 4 << 20).unwrap_err()
    });
    assert!(
        matches!(e, TaskError::TooLarge { what: "result", .. }),
        "{e:?}"
    );
}

fn garbage_on_the_protocol_channel() {
    let e = process_fault(ProcessPool::builder(), |pool| {
        pool.apply_blocking(writes_garbage, ()).unwrap_err()
    });
    assert!(matches!(e, TaskError::Protocol { .. }), "{e:?}");
}

// Without the direct lane (a memory limit keeps the supervisor in charge),
// local results come through the result ring while the task's garbage is on
// the pipe: it must still fail that task, and only that one.
#[cfg(not(any(target_os = "macos", target_os = "freebsd")))]
fn garbage_from_a_pipelined_task_fails_that_task() {
    let e = process_fault(
        ProcessPool::builder().max_memory_per_worker(1 << 40),
        |pool| {
            let before: Vec<_> = (0..20).map(|i| pool.spawn(square, i)).collect();
            let garbage = pool.spawn(writes_garbage, ());
            let after: Vec<_> = (20..40).map(|i| pool.spawn(square, i)).collect();
            for (i, task) in before.into_iter().chain(after).enumerate() {
                let i = i as u64;
                assert_eq!(block_on(task), Ok(i * i), "task {i}");
            }
            block_on(garbage).unwrap_err()
        },
    );
    assert!(matches!(e, TaskError::Protocol { .. }), "{e:?}");
    // And as a worker's first job through the ring.
    let e = process_fault(
        ProcessPool::builder().max_memory_per_worker(1 << 40),
        |pool| pool.apply_blocking(writes_garbage, ()).unwrap_err(),
    );
    assert!(matches!(e, TaskError::Protocol { .. }), "{e:?}");
}

fn a_result_for_an_unknown_job_is_a_protocol_error() {
    let e = process_fault(ProcessPool::builder(), |pool| {
        pool.apply_blocking(sends_a_stale_result, ()).unwrap_err()
    });
    assert!(matches!(e, TaskError::Protocol { .. }), "{e:?}");
}

fn a_crash_is_seen_even_while_a_grandchild_lives() {
    let file = common::temp_dir("grandchild").join("pid");
    let started = std::time::Instant::now();
    let e = process_fault(ProcessPool::builder(), |pool| {
        pool.apply_blocking(spawns_then_aborts, file.clone())
            .unwrap_err()
    });
    died_with(e, common::ABORTED.0, common::ABORTED.1);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the crash went unnoticed while the grandchild held the worker's pipes"
    );
    if let Some(pid) = std::fs::read_to_string(&file)
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
    {
        common::kill(pid);
    }
}

// Windows has no fork (a child shares no handles it was not given).
#[cfg(unix)]
fn a_crash_is_seen_while_a_forked_child_holds_every_pipe() {
    let file = common::temp_dir("forked").join("pid");
    let started = std::time::Instant::now();
    // Through the queue: the supervisor, not a borrowing caller, must notice.
    let e = process_fault(ProcessPool::builder(), |pool| {
        let task = pool.spawn(forks_then_aborts, file.clone());
        block_on(async { tokio::time::timeout(Duration::from_secs(40), task).await })
            .expect("the crash went unnoticed")
            .unwrap_err()
    });
    if let Some(pid) = std::fs::read_to_string(&file)
        .ok()
        .and_then(|s| s.parse::<i32>().ok())
    {
        // SAFETY: plain syscall on the pid the worker forked.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    died_with(e, None, Some(libc::SIGABRT));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the crash was noticed only when the forked child exited"
    );
}

fn a_panicking_initializer_fails_build_cleanly() {
    let check = Check::start();
    let r = ProcessPool::builder()
        .workers(2)
        .initializer(init_panics, ())
        .build();
    assert!(matches!(r, Err(Error::Initializer { .. })), "{r:?}");
    check.nothing_left();
}

// Needs a descriptor limit (setrlimit), which Windows does not have.
#[cfg(unix)]
fn a_pool_that_cannot_start_workers_is_an_error() {
    // Lowering the descriptor limit affects the whole process: do it in a
    // child that runs this binary in a role.
    let out = Command::new(std::env::current_exe().unwrap())
        .arg("--role=nofile")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines.iter().any(|l| l.contains("build failed:")),
        "no limit was tight enough to fail:\n{stdout}"
    );
    assert!(
        lines.iter().any(|l| l.ends_with("task ran")),
        "with room to spare the pool must work:\n{stdout}"
    );
    for line in &lines {
        assert!(
            line.contains("build failed:") || line.ends_with("task ran") || line.starts_with("fds"),
            "{line}\n{stdout}"
        );
    }
}

#[cfg(unix)]
/// Sweeps the descriptor limit from "nothing to spare" upwards: whatever step
/// setting up a pool runs out at (the runtime, a pipe, a worker), the result is
/// an `Error` from `build`, never a panic or a hang, and nothing leaks.
fn role_nofile() {
    let original = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let set_limit = |current: Option<u64>| {
        let limit = rustix::process::Rlimit {
            current,
            maximum: original.maximum,
        };
        rustix::process::setrlimit(rustix::process::Resource::Nofile, limit).unwrap();
    };
    // The limit caps descriptor *numbers*, and the numbers in use may have
    // holes: find the limit that leaves exactly `spare` free numbers below it.
    let limit_leaving = |spare: u64| {
        let mut free = 0;
        (0..)
            .find(|&n| {
                // SAFETY: F_GETFD only asks whether `n` is an open
                // descriptor; it neither uses nor changes it.
                let closed = unsafe { libc::fcntl(n, libc::F_GETFD) } == -1;
                free += u64::from(closed);
                closed && free > spare
            })
            .unwrap() as u64
    };
    let before = open_fds();
    for spare in 0..=40 {
        set_limit(Some(limit_leaving(spare)));
        let outcome = match ProcessPool::new(2) {
            Ok(pool) => {
                let outcome = match pool.apply_blocking(square, 7) {
                    Ok(49) => "task ran".to_string(),
                    other => format!("task failed: {other:?}"),
                };
                pool.terminate();
                outcome
            }
            Err(e) => format!("build failed: {e}"),
        };
        set_limit(original.current);
        println!("spare {spare}: {outcome}");
        if outcome == "task ran" {
            break;
        }
    }
    // tokio's process-wide signal pipe (two descriptors) may have been made
    // once along the way and stays; anything beyond that is a leak.
    println!("fds before {before}, after {}", open_fds());
    assert!(open_fds() <= before + 2, "descriptors leaked");
}

fn thread_pool_faults() {
    let pool = ThreadPool::new(2).unwrap();
    assert!(matches!(
        pool.apply_blocking(panics, ()),
        Err(TaskError::Panicked { .. })
    ));
    let blocker = pool.spawn(sleep_ms, 200);
    let blocker2 = pool.spawn(sleep_ms, 200);
    let queued = pool.spawn(sleep_ms, 1);
    assert!(queued.cancel_if_queued());
    assert_eq!(block_on(queued), Err(TaskError::Cancelled));
    assert_eq!((block_on(blocker), block_on(blocker2)), (Ok(200), Ok(200)));
    let bounded = ThreadPool::builder()
        .workers(1)
        .max_queue(1)
        .build()
        .unwrap();
    let _running = bounded.spawn(sleep_ms, 300);
    std::thread::sleep(Duration::from_millis(100));
    let _queued = bounded.try_spawn(sleep_ms, 1).unwrap();
    assert_eq!(
        bounded.try_spawn(sleep_ms, 1).unwrap_err(),
        procpool::TrySpawnError::Full
    );
    for i in 0..200 {
        assert_eq!(pool.apply_blocking(square, i), Ok(i * i));
    }
}

fn main() {
    #[cfg(unix)]
    if std::env::args().any(|a| a == "--role=nofile") {
        role_nofile();
        return;
    }
    if std::env::args().any(|a| a == "--role=sleep") {
        std::thread::sleep(Duration::from_secs(30));
        return;
    }
    // Process-wide state that is created once and kept (tokio's signal
    // self-pipe, with the dev-dependency's features) must not count as a leak:
    // create it before the first baseline.
    block_on(ProcessPool::new(1).unwrap().shutdown());
    let tests: &[(&str, &dyn Fn())] = &[
        ("panic_fails_its_task", &panic_fails_its_task),
        ("abort_fails_its_task", &abort_fails_its_task),
        ("segfault_fails_its_task", &segfault_fails_its_task),
        ("exit_fails_its_task", &exit_fails_its_task),
        (
            "sigkill_while_idle_is_noticed_and_replaced",
            &sigkill_while_idle_is_noticed_and_replaced,
        ),
        (
            "sigkill_while_busy_fails_the_running_task",
            &sigkill_while_busy_fails_the_running_task,
        ),
        (
            "endless_loop_is_cut_by_a_timeout",
            &endless_loop_is_cut_by_a_timeout,
        ),
        #[cfg(unix)]
        (
            "unbounded_allocation_hits_the_memory_limit",
            &unbounded_allocation_hits_the_memory_limit,
        ),
        #[cfg(windows)]
        ("a_memory_limit_is_refused", &a_memory_limit_is_refused),
        (
            "failing_result_serialization",
            &failing_result_serialization,
        ),
        (
            "failing_argument_deserialization",
            &failing_argument_deserialization,
        ),
        ("result_over_the_frame_limit", &result_over_the_frame_limit),
        (
            "garbage_on_the_protocol_channel",
            &garbage_on_the_protocol_channel,
        ),
        // Only Linux can tell the worker what its pipe holds (README,
        // "The portable Unix backend").
        #[cfg(not(any(target_os = "macos", target_os = "freebsd")))]
        (
            "garbage_from_a_pipelined_task_fails_that_task",
            &garbage_from_a_pipelined_task_fails_that_task,
        ),
        (
            "a_result_for_an_unknown_job_is_a_protocol_error",
            &a_result_for_an_unknown_job_is_a_protocol_error,
        ),
        (
            "a_crash_is_seen_even_while_a_grandchild_lives",
            &a_crash_is_seen_even_while_a_grandchild_lives,
        ),
        #[cfg(unix)]
        (
            "a_crash_is_seen_while_a_forked_child_holds_every_pipe",
            &a_crash_is_seen_while_a_forked_child_holds_every_pipe,
        ),
        (
            "a_panicking_initializer_fails_build_cleanly",
            &a_panicking_initializer_fails_build_cleanly,
        ),
        #[cfg(unix)]
        (
            "a_pool_that_cannot_start_workers_is_an_error",
            &a_pool_that_cannot_start_workers_is_an_error,
        ),
        ("thread_pool_faults", &thread_pool_faults),
    ];
    common::run_sequentially(tests);
}
