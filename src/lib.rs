//! Run CPU-heavy functions in a bounded [`ThreadPool`] or a pool of worker
//! processes ([`ProcessPool`]) and get real futures back.
//!
//! Async services must never run CPU-heavy code on the runtime's threads.
//! procpool takes such a function, runs it in a pool, and hands back a
//! [`Task`]: a `std::future::Future` you can `.await`, race in `select!`, bound
//! with `tokio::time::timeout` or stream with `FuturesUnordered`. When the task
//! is dropped, the work stops: a queued task is removed, and a running process
//! task has its worker killed and replaced.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use procpool::{ProcessPool, TaskError};
//!
//! fn fib(n: u32) -> u64 { if n < 2 { n as u64 } else { fib(n - 1) + fib(n - 2) } }
//! fn hang(_: ()) { loop { std::thread::sleep(Duration::from_secs(1)); } }
//!
//! let pool = ProcessPool::new(2)?;                 // no setup call anywhere
//! assert_eq!(pool.apply(fib, 25).await?, 75025);
//!
//! // A hung task is cut off by a timeout: its worker is killed and replaced.
//! let late = tokio::time::timeout(Duration::from_millis(200), pool.spawn(hang, ())).await;
//! assert!(late.is_err());
//! assert_eq!(pool.apply(fib, 10).await?, 55);      // the pool keeps serving
//! # Ok(()) }
//! ```
//!
//! # Coming from Python
//!
//! | Python (`multiprocessing.Pool` / `concurrent.futures`)        | procpool                                                     |
//! |---------------------------------------------------------------|--------------------------------------------------------------|
//! | `Pool(processes=n)` / `ProcessPoolExecutor(max_workers=n)`    | [`ProcessPool::new(n)`](ProcessPool::new), [`ProcessPool::builder`] |
//! | `multiprocessing.pool.ThreadPool(n)` / `ThreadPoolExecutor(n)`| [`ThreadPool::new(n)`](ThreadPool::new)                      |
//! | `pool.apply(f, (x,))`                                         | `pool.apply(f, x).await` or [`pool.apply_blocking(f, x)`](ProcessPool::apply_blocking) |
//! | `pool.apply_async(f, (x,))` / `executor.submit(f, x)`         | [`pool.spawn(f, x)`](ProcessPool::spawn) → [`Task`]          |
//! | `AsyncResult.get(timeout)` / `Future.result(timeout)`         | `tokio::time::timeout(d, task).await` — and the work stops   |
//! | `Future.cancel()`                                             | [`task.cancel_if_queued()`](Task::cancel_if_queued); [`task.abort()`](Task::abort) or dropping it also stops a running task |
//! | `pool.map(f, xs)` / `executor.map(f, xs)`                     | [`pool.map(f, xs)`](ProcessPool::map)`.try_collect().await`  |
//! | `pool.imap(f, xs)`                                            | [`pool.map(f, xs)`](ProcessPool::map) (a `Stream`), [`pool.map_blocking(f, xs)`](ProcessPool::map_blocking) (an `Iterator`) |
//! | `pool.imap_unordered(f, xs)`, `as_completed(futures)`         | [`pool.map_unordered(f, xs)`](ProcessPool::map_unordered), or a `FuturesUnordered` of tasks |
//! | `pool.starmap(f, [(a, b), …])`, `submit(f, a, b)`             | a tuple argument: `pool.map(\|(a, b)\| f(a, b), pairs)`       |
//! | `chunksize=`                                                  | automatic (measured), or [`.chunk_size(n)`](Map::chunk_size) |
//! | `map_async`, `starmap_async`                                  | the `Map` stream is already asynchronous                     |
//! | `wait(futures)`                                               | `futures::future::join_all(tasks)`                           |
//! | `initializer=f, initargs=(x,)`                                | [`builder().initializer(f, x)`](ProcessPoolBuilder::initializer) |
//! | `maxtasksperchild=n` / `max_tasks_per_child=n`                | [`builder().max_tasks_per_worker(n)`](ProcessPoolBuilder::max_tasks_per_worker) |
//! | `pool.close(); pool.join()` / `executor.shutdown(wait=True)`  | [`pool.shutdown().await`](ProcessPool::shutdown)             |
//! | `pool.terminate()` / `shutdown(cancel_futures=True)`          | [`pool.terminate()`](ProcessPool::terminate)                 |
//! | `with Pool() as p:`                                           | drop the last handle: spawned work finishes, workers exit    |
//! | callback / `add_done_callback`                                | `.await` the task, or `tokio::spawn` a block that awaits it  |
//! | `BrokenProcessPool`, a hang when a worker dies                | only the affected task fails: [`TaskError::WorkerDied`]      |
//! | an exception in the task                                      | [`TaskError::Panicked`] with message and location            |
//!
//! Beyond Python's pools: [`memory_limit_per_worker`](ProcessPoolBuilder::memory_limit_per_worker),
//! [`max_memory_per_worker`](ProcessPoolBuilder::max_memory_per_worker),
//! elastic [`min_workers`](ProcessPoolBuilder::min_workers) /
//! [`idle_timeout`](ProcessPoolBuilder::idle_timeout),
//! [`max_queue`](ProcessPoolBuilder::max_queue) backpressure
//! ([`spawn_async`](ProcessPool::spawn_async), [`try_spawn`](ProcessPool::try_spawn)),
//! [`worker_niceness`](ProcessPoolBuilder::worker_niceness) and
//! [`stats`](ProcessPool::stats).
//!
//! # Cancellation at a glance
//!
//! | dropped or aborted while… | `ProcessPool`                           | `ThreadPool`                      |
//! |---------------------------|-----------------------------------------|-----------------------------------|
//! | queued                    | never runs                              | never runs                        |
//! | running                   | worker SIGKILLed, reaped and replaced   | finishes; result discarded        |
//!
//! # How a function crosses into a worker process
//!
//! A worker is this same executable, re-executed. A link-time constructor
//! (from the `ctor` crate) sees an environment variable and turns the process
//! into a worker before `main` starts, so `main` never runs twice and nothing
//! needs setting up, in tests and examples too. Functions are named by their
//! offset within the executable, which is why tasks must be plain
//! `fn(A) -> R` (function items or non-capturing closures) and why the workers
//! verify they are the same build as the parent.
//!
//! # How a call reaches a worker
//!
//! Each `ProcessPool` has one supervisor thread that owns the workers' pipes:
//! it takes queued jobs, writes them (several at once when many are ready),
//! reads results and completes the [`Task`]s, and notices a worker dying at
//! once, busy or idle. A plain thread calling
//! [`apply_blocking`](ProcessPool::apply_blocking) while a worker is idle
//! skips the supervisor: it borrows the worker and exchanges the job and the
//! result itself, so the round trip costs two thread switches instead of
//! four; the supervisor takes the worker back for queued work, and settles
//! the call if the worker dies. On Linux, large arguments and results (from
//! 256 KiB) skip the pipes: each is put in memory the worker shares with the
//! parent and decoded where it lies.
//!
//! # Streaming maps
//!
//! [`ProcessPool::map`] and friends pull their input lazily, keep a bounded
//! amount of work in flight, and send items in chunks (one message each way per
//! chunk) whose size adapts to measured run times: small at first and near the
//! end of the input, large for cheap items. A failing item fails alone. See
//! [`Map`].
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use futures::TryStreamExt;
//! fn square(x: u64) -> u64 { x * x }
//! let pool = procpool::ProcessPool::new(2)?;
//! let total: u64 = pool.map(square, 0..10_000).try_fold(0, |a, x| async move { Ok(a + x) }).await?;
//! assert_eq!(total, (0..10_000u64).map(square).sum());
//! # Ok(()) }
//! ```
//!
//! # In production: signals, deploys, drops and misbehaving tasks
//!
//! What happens in the situations a long-lived service or a CLI meets
//! (each case is tested in `tests/hazards.rs`):
//!
//! | situation | what procpool does |
//! |-----------|--------------------|
//! | **Ctrl-C** in a terminal (SIGINT to the whole foreground process group) | Worker processes ignore SIGINT: the parent decides. A program that catches it (`tokio::signal::ctrl_c`) and calls [`shutdown().await`](ProcessPool::shutdown) gets its running tasks' results; a program that does not handle it dies of it, and its workers die with it (lifeline and `PR_SET_PDEATHSIG`). Other terminal signals (SIGQUIT, SIGTSTP) reach workers as they reach any child. |
//! | **Deploy**: the executable is replaced (`mv` over it), deleted, or was started through a symlink or a relative path before a `chdir` | Workers started later (after a crash, by elastic growth, by recycling) still run the original build: on Linux a worker re-executes the running image through `/proc/self/exe`, and the build identity is read from that image, never from the path. The pool keeps serving. |
//! | **Dropping the last handle inside async code** (any runtime flavour, `#[tokio::test]` included) | The drop only closes a channel and signals: it never blocks, never panics. Queued tasks still run; the supervisor thread, the workers and their descriptors go away in the background. A dropped running [`Task`] of a `ProcessPool` kills its worker the same way. |
//! | **Blocking calls on a runtime thread** ([`apply_blocking`](ProcessPool::apply_blocking), [`map_blocking`](ProcessPool::map_blocking) inside an async task) | They work, on current-thread runtimes too, and so does `futures::executor::block_on(task)` there: a task waits on its runtime's reactor only while nothing blocks that runtime's thread (inside `block_on` it finishes on a helper thread instead), so nothing can deadlock. But they block that runtime thread for the whole call; in async code use [`apply`](ProcessPool::apply)`.await` and [`map`](ProcessPool::map). |
//! | **Calls while a thread exits** (a `thread_local!` value whose `Drop` spawns, waits with [`apply_blocking`](ProcessPool::apply_blocking) or [`map_blocking`](ProcessPool::map_blocking), or holds a running task) | They work: the blocking calls wait with a waker of their own, not one kept in a thread-local that may already be gone (`futures::executor::block_on` panics there, which aborts the process), and a running task dropped there still has its worker killed and replaced. |
//! | a task calls `std::process::exit(0)` | [`TaskError::WorkerDied`] with `code: Some(0)`, never a success; the worker is replaced. |
//! | a task stops itself (`SIGSTOP`) | A timeout or drop still kills it (SIGKILL ends stopped processes too). |
//! | a task leaves a thread running | Nothing fails; the thread dies with its worker process when the pool shuts down or recycles it. |
//! | a task closes descriptors 0–1023 | Only that task fails ([`TaskError::WorkerDied`] or [`TaskError::Protocol`]); the worker is replaced. |
//! | a task prints megabytes to stdout | Printed output goes to the parent's stdout as usual; frames travel on separate pipes, so nothing is corrupted. (If nobody reads the program's stdout, the task blocks in its write, as any program would.) |
//! | a task panics with a non-string payload or a huge message | [`TaskError::Panicked`] with a placeholder text, or the message cut to 64 KiB. |
//! | many pools created and dropped | Each leaves nothing behind: threads, descriptors and child processes return to their counts before it (checked over 200 pools). |
//!
//! # Platforms
//!
//! Linux has the native backend (pidfds, `PR_SET_PDEATHSIG`, `pipe2`,
//! `/proc/self/exe`). macOS, FreeBSD and other Unix systems use the portable
//! Unix backend, with the same guarantees by other means: a `waitid(WNOWAIT)`
//! thread per worker watches for its exit, the lifeline alone ends orphans, and
//! a descriptor kept from start lets workers run the original build after a
//! deploy. Building with `RUSTFLAGS="--cfg procpool_portable"` forces that
//! backend on Linux, which is how it is tested.
//!
//! Windows has a real `ProcessPool` too, tested under Wine: workers started
//! with `CreateProcess`, killed with `TerminateProcess`, kept from outliving
//! their parent by a Job Object; a crash shows as its NTSTATUS exit code, and
//! a task's stdout goes to stderr. The README's "Platforms" section lists what
//! is tested where and what differs.

#![warn(missing_docs)]

mod block_on;
mod buffer;
mod error;
#[cfg(unix)]
mod exe_hash;
mod func_ref;
mod image;
mod map;
mod panic_info;
#[cfg(unix)]
mod pipe_io;
mod pool;
mod process;
mod queue;
#[cfg(unix)]
mod region;
mod remote;
#[cfg(unix)]
mod ring;
mod stats;
mod task;
mod thread_pool;
// (Cancel frames are sent only by the Unix backend.)
#[cfg_attr(windows, allow(dead_code))]
mod wire;
mod worker;

pub use error::{CodecStage, Error, TaskError, TrySpawnError};
pub use map::{Map, MapIter};
pub use pool::Pool;
pub use process::{ProcessPool, ProcessPoolBuilder};
pub use remote::{Remote, WorkerInfo};
pub use stats::{PoolStats, Restarts, Summary};
pub use task::Task;
pub use thread_pool::{ThreadPool, ThreadPoolBuilder};

/// README.md's Rust examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// Hooks for procpool's own fault-injection tests; not part of the API.
#[doc(hidden)]
pub mod __test_hooks {
    pub use crate::wire::{decode_all, FrameError};
    pub use crate::worker::{
        corrupt_protocol_stream, send_result_for_unknown_job, write_bytes_to_parent,
    };
}
