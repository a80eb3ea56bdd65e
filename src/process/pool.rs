//! The public [`ProcessPool`] handle: where a task enters the pool.
//!
//! `spawn` (and every method built on it) serialises the call into a [`Job`]
//! and puts it on the queue (or, for `apply_blocking`, first tries the
//! [direct lane](super::direct)); the rest of the path (supervisor, worker,
//! result) is in the modules below it, see the [module overview](super).

use std::cell::Cell;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use futures::Stream;

#[cfg(unix)]
use super::async_lane;
use super::ctx::PoolCtx;
use super::direct;
use super::job::{self, Frame, Job};
use crate::func_ref::FnRef;
use crate::map::{Map, MapIter, ProcessChunks};
use crate::queue::PushError;
use crate::stats::PoolStats;
use crate::task::CancelHook;
#[cfg(doc)]
use crate::ProcessPoolBuilder;
use crate::{wire, CodecStage, Task, TaskError, TrySpawnError};

/// A pool of worker processes running `fn(A) -> R` calls.
///
/// Each worker is this same program, re-executed; a link-time constructor takes
/// it over before `main` runs, so there is no setup call anywhere, in
/// binaries, tests, examples or benches. Arguments and results cross the
/// process boundary as MessagePack (serde), over pipes of their own (the
/// workers' stdout and stderr stay the parent's, so `println!` in a task shows
/// up as usual).
///
/// Tasks are [`Task`]s: real futures that kill the worker running them when
/// dropped. A crash, `abort()` or `exit()` in a task fails only that task with
/// [`TaskError::WorkerDied`]; the worker is replaced and the pool keeps
/// serving.
///
/// `ProcessPool` is a cheap `Clone + Send + Sync` handle. When the last handle
/// is dropped the pool closes: tasks already spawned still run and resolve, and
/// the workers exit once idle. [`terminate`](Self::terminate) stops everything
/// at once; [`shutdown`](Self::shutdown) waits for the work to finish. Workers
/// never outlive the parent process, even if it is killed with SIGKILL.
///
/// # Functions, not closures
///
/// A task is a plain `fn(A) -> R`: a function item or a closure that captures
/// nothing. What it needs travels in the argument; several arguments travel as
/// a tuple (`pool.spawn(|(a, b)| a + b, (1, 2))`, the `starmap` pattern). A
/// capturing closure does not compile. The function must be part of the main
/// executable, and the workers must run the same build as the parent (checked
/// at start-up).
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use procpool::ProcessPool;
///
/// fn fib(n: u32) -> u64 { if n < 2 { n as u64 } else { fib(n - 1) + fib(n - 2) } }
///
/// let pool = ProcessPool::new(2)?;
/// assert_eq!(pool.apply(fib, 20).await?, 6765);
///
/// // Several at once, each in its own worker.
/// let (a, b) = tokio::join!(pool.spawn(fib, 21), pool.spawn(fib, 22));
/// assert_eq!((a?, b?), (10946, 17711));
/// pool.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ProcessPool {
    handle: Arc<Handle>,
}

struct Handle {
    ctx: Arc<PoolCtx>,
    hook: Arc<dyn CancelHook>,
    stop: async_channel::Sender<()>,
    done: async_channel::Receiver<()>,
    workers: usize,
    max_frame: u64,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Last handle gone: no new work can arrive; the supervisors finish what
        // is queued and let their workers exit.
        self.ctx.queue.close();
    }
}

impl std::fmt::Debug for ProcessPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessPool")
            .field("workers", &self.handle.workers)
            .field("queued", &self.handle.ctx.queue.len())
            .field("closed", &self.handle.ctx.queue.is_closed())
            .finish()
    }
}

impl ProcessPool {
    /// Number of worker processes (for an elastic pool, the most it runs at
    /// once).
    ///
    /// ```
    /// let pool = procpool::ProcessPool::new(2)?;
    /// assert_eq!(pool.workers(), 2);
    ///
    /// // Elastic: up to 4 workers, none started until there is work.
    /// let elastic = procpool::ProcessPool::builder().workers(4).min_workers(0).build()?;
    /// assert_eq!(elastic.workers(), 4);
    /// assert!(elastic.worker_pids().is_empty());
    /// # Ok::<(), procpool::Error>(())
    /// ```
    pub fn workers(&self) -> usize {
        self.handle.workers
    }

    /// Process ids of the live worker processes on this machine, for
    /// monitoring (remote workers' pids, which name processes elsewhere, are
    /// in [`workers_info`](Self::workers_info)). A worker that is being
    /// replaced is missing for a moment.
    ///
    /// ```
    /// let pool = procpool::ProcessPool::new(2)?;
    /// assert_eq!(pool.worker_pids().len(), 2);
    /// # Ok::<(), procpool::Error>(())
    /// ```
    pub fn worker_pids(&self) -> Vec<u32> {
        let hosts = &self.handle.ctx.config.slot_hosts;
        (self.handle.ctx.pids.iter().zip(hosts))
            .filter(|(_, host)| host.is_none()) // far pids are not ours
            .map(|(p, _)| p.load(Ordering::Relaxed))
            .filter(|&p| p != 0)
            .collect()
    }

    /// Where each live worker runs: its host ([`None`] on this machine) and
    /// its pid there. Local workers come first, then each
    /// [`Remote`](crate::Remote)'s, in the order they were added.
    ///
    /// ```
    /// let pool = procpool::ProcessPool::new(2)?;
    /// let info = pool.workers_info();
    /// assert_eq!(info.len(), 2);
    /// assert!(info.iter().all(|w| w.host.is_none()));
    /// # Ok::<(), procpool::Error>(())
    /// ```
    pub fn workers_info(&self) -> Vec<crate::WorkerInfo> {
        let ctx = &self.handle.ctx;
        (ctx.pids.iter().zip(&ctx.config.slot_hosts))
            .map(|(p, host)| (p.load(Ordering::Relaxed), host))
            .filter(|&(pid, _)| pid != 0)
            .map(|(pid, host)| crate::WorkerInfo {
                host: host.as_deref().map(str::to_string),
                pid,
            })
            .collect()
    }

    /// Runs `f(args)` in a worker process and returns its [`Task`] at once.
    ///
    /// The argument is serialised here, before `spawn` returns; failures to do
    /// so (or an argument over the frame limit) resolve the task to an error
    /// instead of panicking. After the pool was closed, the task resolves to
    /// [`TaskError::PoolClosed`].
    ///
    /// On a pool with a [`max_queue`](ProcessPoolBuilder::max_queue), `spawn`
    /// blocks the calling thread while the queue is full; in async code use
    /// [`spawn_async`](Self::spawn_async) (or [`apply`](Self::apply)) there.
    ///
    /// Inside a tokio runtime with its I/O driver (`#[tokio::main]`), when a
    /// worker is idle and no task waits in the queue, the job is written to
    /// that worker at once and the task reads its reply when the runtime's
    /// reactor says it is there, without the pool's supervisor thread in
    /// between (half the thread switches). The outcome is the same either
    /// way: dropping the task kills its worker, a crash is
    /// [`TaskError::WorkerDied`], limits hold, `terminate` ends it with
    /// [`TaskError::PoolClosed`]. A task detached, or awaited away from the
    /// current-thread runtime it was spawned on, finishes on a helper thread.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// fn ackermann((m, n): (u64, u64)) -> u64 {
    ///     match (m, n) {
    ///         (0, n) => n + 1,
    ///         (m, 0) => ackermann((m - 1, 1)),
    ///         (m, n) => ackermann((m - 1, ackermann((m, n - 1)))),
    ///     }
    /// }
    /// let pool = procpool::ProcessPool::new(1)?;
    /// assert_eq!(pool.spawn(ackermann, (2, 3)).await?, 9);
    /// # Ok(()) }
    /// ```
    pub fn spawn<A, R>(&self, f: fn(A) -> R, args: A) -> Task<R>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.spawn_serialized(f, &args)
    }

    /// [`spawn`](Self::spawn) with the argument given as anything that
    /// serialises exactly like an `A` (the map engine passes borrowed slices
    /// where `A` is a `Vec`).
    pub(crate) fn spawn_serialized<A, R, T>(&self, f: fn(A) -> R, args: &T) -> Task<R>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        T: Serialize + ?Sized,
    {
        let (job, mut task) = match self.prepare(f, args) {
            Ok(prepared) => prepared,
            Err(failed) => return failed,
        };
        if let Some(job) = self.try_async_lane(job, &mut task) {
            self.enqueue(job);
        }
        task
    }

    /// Windows has no direct lane: every job is queued.
    #[cfg(not(unix))]
    fn try_async_lane<R>(&self, job: Job, _task: &mut Task<R>) -> Option<Job> {
        Some(job)
    }

    /// Inside a tokio runtime, tries the async direct lane (`async_lane`)
    /// for `job`; gives it back if it must be queued.
    #[cfg(unix)]
    fn try_async_lane<R>(&self, job: Job, task: &mut Task<R>) -> Option<Job> {
        if self.handle.ctx.queue.is_closed() {
            return Some(job); // (the queue fails it)
        }
        match async_lane::start(&self.handle.ctx, job) {
            Ok(Some(driver)) => {
                task.drive_with(driver);
                None
            }
            Ok(None) => None,
            Err(job) => Some(job),
        }
    }

    /// Queues a prepared job (waiting for room on a bounded queue).
    fn enqueue(&self, job: Job) {
        let queue = &self.handle.ctx.queue;
        match queue.try_push(job.entering_queue()) {
            Ok(()) => self.queued(),
            Err(PushError::Full(job)) => {
                // Backpressure for plain threads: wait for room.
                match queue.push_blocking(job) {
                    Ok(()) => self.queued(),
                    Err(job) => job.slot.fail(TaskError::PoolClosed),
                }
            }
            Err(PushError::Closed(job)) => job.slot.fail(TaskError::PoolClosed),
        }
    }

    /// Serialises a call and makes its task; an early failure comes back as a
    /// task that has already failed.
    fn prepare<A, R, T>(&self, f: fn(A) -> R, args: &T) -> Result<(Job, Task<R>), Task<R>>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        T: Serialize + ?Sized,
    {
        let fn_ref = FnRef::new(f).map_err(|why| Task::failed(TaskError::Unsupported(why)))?;
        // Encoded in this thread's buffer, which the next call reuses unless
        // the frame (large) takes it along.
        // (Gone when called from a thread-local's destructor.)
        let mut buf = ENCODING.try_with(Cell::take).unwrap_or_default();
        buf.clear();
        let encoded = encode_job(&mut buf, fn_ref, args, self.handle.max_frame)
            .map(|()| Frame::take_from(&mut buf));
        if buf.capacity() <= KEEP_ENCODING_BUFFER {
            let _ = ENCODING.try_with(|cell| cell.set(buf));
        }
        let frame = encoded.map_err(Task::failed)?;
        let (task, shared) = Task::<R>::with_shared(Some(self.handle.hook.clone()));
        let job = Job {
            frame,
            slot: shared,
            queued_at: job::NOT_QUEUED,
        };
        Ok((job, task))
    }

    /// A task entered the queue: an elastic pool with no idle worker starts one.
    fn queued(&self) {
        let ctx = &self.handle.ctx;
        if ctx.elastic() && ctx.idle.load(Ordering::Acquire) == 0 {
            ctx.demand.notify_one();
        }
    }

    /// Like [`spawn`](Self::spawn), but when the pool's queue is full
    /// ([`ProcessPoolBuilder::max_queue`]) it waits asynchronously for room
    /// instead of blocking the thread. Use this in async code on a bounded
    /// pool.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// fn square(x: u64) -> u64 { x * x }
    /// let pool = procpool::ProcessPool::builder().workers(1).max_queue(2).build()?;
    /// let mut tasks = Vec::new();
    /// for i in 0..10 {
    ///     tasks.push(pool.spawn_async(square, i).await); // waits while 2 are queued
    /// }
    /// for (i, t) in tasks.into_iter().enumerate() {
    ///     assert_eq!(t.await?, (i * i) as u64);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn spawn_async<A, R>(&self, f: fn(A) -> R, args: A) -> Task<R>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let (job, mut task) = match self.prepare(f, &args) {
            Ok(prepared) => prepared,
            Err(failed) => return failed,
        };
        let Some(job) = self.try_async_lane(job, &mut task) else {
            return task;
        };
        match self.handle.ctx.queue.push(job.entering_queue()).await {
            Ok(()) => self.queued(),
            Err(job) => job.slot.fail(TaskError::PoolClosed),
        }
        task
    }

    /// Like [`spawn`](Self::spawn), but never waits: when the queue is full
    /// ([`ProcessPoolBuilder::max_queue`]) or the pool is closed it returns an
    /// error and nothing is queued.
    ///
    /// ```
    /// fn sleep_ms(ms: u64) { std::thread::sleep(std::time::Duration::from_millis(ms)) }
    /// let pool = procpool::ProcessPool::builder().workers(1).max_queue(1).build()?;
    /// let running = pool.spawn(sleep_ms, 300);
    /// std::thread::sleep(std::time::Duration::from_millis(100)); // let it start
    /// let queued = pool.try_spawn(sleep_ms, 1).expect("one queue place");
    /// assert_eq!(pool.try_spawn(sleep_ms, 1).unwrap_err(), procpool::TrySpawnError::Full);
    /// # drop((running, queued));
    /// # Ok::<(), procpool::Error>(())
    /// ```
    pub fn try_spawn<A, R>(&self, f: fn(A) -> R, args: A) -> Result<Task<R>, TrySpawnError>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        if self.handle.ctx.queue.is_closed() {
            return Err(TrySpawnError::Closed);
        }
        let (job, task) = match self.prepare(f, &args) {
            Ok(prepared) => prepared,
            Err(failed) => return Ok(failed),
        };
        match self.handle.ctx.queue.try_push(job.entering_queue()) {
            Ok(()) => {
                self.queued();
                Ok(task)
            }
            Err(e) => {
                let full = matches!(e, PushError::Full(_));
                // Nothing was queued: the task must not count as cancelled.
                task.detach();
                Err(if full {
                    TrySpawnError::Full
                } else {
                    TrySpawnError::Closed
                })
            }
        }
    }

    /// The slowest worker's average job round trip (send to result, less
    /// the run time), in nanoseconds; 0 before any was measured.
    pub(crate) fn round_trip_nanos(&self) -> u64 {
        self.handle.ctx.counters.round_trip_nanos()
    }

    /// What the pool has done so far: queue length, running, completed and
    /// failed tasks, worker restarts by cause, live workers, run and wait
    /// times.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// fn half(x: u32) -> u32 { assert!(x % 2 == 0, "{x} is odd"); x / 2 }
    ///
    /// let pool = procpool::ProcessPool::new(1)?;
    /// assert_eq!(pool.apply(half, 4).await?, 2);
    /// assert!(pool.apply(half, 3).await.is_err()); // a panic: the worker survives
    ///
    /// let stats = pool.stats();
    /// assert_eq!((stats.completed, stats.failed), (1, 1));
    /// assert_eq!(stats.workers, 1);
    /// assert_eq!(stats.restarts.crashed, 0);
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> PoolStats {
        let ctx = &self.handle.ctx;
        ctx.counters
            .snapshot(ctx.queue.len(), ctx.live.load(Ordering::Acquire))
    }

    /// Runs `f(args)` in a worker and waits for the result: `spawn` then
    /// `.await`, except that on a bounded pool it waits asynchronously for
    /// queue room (like [`spawn_async`](Self::spawn_async)). Dropping the
    /// future cancels the task, as dropping a [`Task`] does.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    ///
    /// fn fib(n: u32) -> u64 { if n < 2 { n as u64 } else { fib(n - 1) + fib(n - 2) } }
    /// fn hang(_: ()) { loop { std::thread::sleep(Duration::from_secs(1)); } }
    ///
    /// let pool = procpool::ProcessPool::new(1)?;
    /// assert_eq!(pool.apply(fib, 20).await?, 6765);
    ///
    /// // A timeout drops the future: the hung worker is killed and replaced.
    /// assert!(tokio::time::timeout(Duration::from_millis(100), pool.apply(hang, ())).await.is_err());
    /// assert_eq!(pool.apply(fib, 10).await?, 55);
    /// # Ok(()) }
    /// ```
    pub async fn apply<A, R>(&self, f: fn(A) -> R, args: A) -> Result<R, TaskError>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.spawn_async(f, args).await.await
    }

    /// Runs `f(args)` in a worker and blocks this thread until it finishes.
    ///
    /// For plain threads (no async runtime needed). On an async runtime's
    /// thread it still works, and cannot deadlock, even on a current-thread
    /// runtime (the pool never needs the caller's runtime), but it blocks that
    /// thread, and every task it would run, for the whole call: `.await`
    /// [`apply`](Self::apply) there instead.
    ///
    /// When a worker is idle and no task waits in the queue, the calling
    /// thread borrows that worker and exchanges the job and its result with
    /// it directly, without the pool's supervisor thread in between: a round
    /// trip then costs about as much as a bare pipe ping-pong between two
    /// processes. Otherwise the call is queued like [`spawn`](Self::spawn).
    /// Either way the outcome is the same: a crash fails only this call with
    /// [`TaskError::WorkerDied`] (and the worker is replaced), limits such as
    /// [`max_tasks_per_worker`](ProcessPoolBuilder::max_tasks_per_worker)
    /// hold, and [`terminate`](Self::terminate) ends the call with
    /// [`TaskError::PoolClosed`]. (Arguments over 16 KiB always take the
    /// queue, as do all calls on a pool with
    /// [`max_memory_per_worker`](ProcessPoolBuilder::max_memory_per_worker),
    /// whose check needs the supervisor after every task.)
    ///
    /// ```
    /// fn square(x: u64) -> u64 { x * x }
    /// let pool = procpool::ProcessPool::new(1)?;
    /// let handles: Vec<_> = (0..3u64)
    ///     .map(|i| { let pool = pool.clone(); std::thread::spawn(move || pool.apply_blocking(square, i)) })
    ///     .collect();
    /// let squares: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect();
    /// assert_eq!(squares, [0, 1, 4]);
    /// # Ok::<(), procpool::Error>(())
    /// ```
    pub fn apply_blocking<A, R>(&self, f: fn(A) -> R, args: A) -> Result<R, TaskError>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let task = match self.prepare(f, &args) {
            // An idle worker is borrowed and spoken to from this thread (the
            // direct lane): half the thread switches of the queue's path.
            Ok((job, task)) if self.handle.ctx.queue.is_closed() => {
                job.slot.fail(TaskError::PoolClosed);
                task
            }
            Ok((job, task)) => {
                if let Err(job) = direct::run(&self.handle.ctx, job) {
                    self.enqueue(job);
                }
                task
            }
            Err(failed) => failed,
        };
        crate::block_on::block_on(task)
    }

    /// Maps `f` over `inputs` in the workers; results come in input order
    /// (Python's `imap`, and `map` once collected). See [`Map`] for laziness,
    /// chunking, failures and cancellation.
    ///
    /// Several arguments per call (Python's `starmap`) travel as a tuple:
    /// `pool.map(|(m, n)| ackermann(m, n), pairs)`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use futures::TryStreamExt;
    /// fn add((a, b): (u32, u32)) -> u32 { a + b }
    /// let pool = procpool::ProcessPool::new(2)?;
    /// let sums: Vec<u32> = pool.map(add, vec![(1, 2), (3, 4)]).try_collect().await?;
    /// assert_eq!(sums, [3, 7]);
    /// # Ok(()) }
    /// ```
    pub fn map<A, R, I>(&self, f: fn(A) -> R, inputs: I) -> Map<A, R>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
        I::IntoIter: Send + 'static,
    {
        self.map_stream(f, futures::stream::iter(inputs))
    }

    /// Like [`map`](Self::map), but results come as they complete (Python's
    /// `imap_unordered` and `as_completed`).
    ///
    /// To know which input a result belongs to, pass the index along:
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use futures::TryStreamExt;
    ///
    /// fn score((i, word): (usize, String)) -> (usize, usize) { (i, word.len()) }
    ///
    /// let pool = procpool::ProcessPool::new(2)?;
    /// let words = ["tokio", "serde", "rayon", "futures"].map(String::from);
    /// let mut scores: Vec<(usize, usize)> =
    ///     pool.map_unordered(score, words.into_iter().enumerate()).try_collect().await?;
    /// scores.sort(); // completion order → input order
    /// assert_eq!(scores, [(0, 5), (1, 5), (2, 5), (3, 7)]);
    /// # Ok(()) }
    /// ```
    pub fn map_unordered<A, R, I>(&self, f: fn(A) -> R, inputs: I) -> Map<A, R>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
        I::IntoIter: Send + 'static,
    {
        self.map(f, inputs).unordered()
    }

    /// Like [`map`](Self::map), with the inputs coming from a `Stream` (pulled
    /// only as chunks can be started).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use futures::{SinkExt, TryStreamExt};
    ///
    /// fn shout(line: String) -> String { line.to_uppercase() }
    ///
    /// let pool = procpool::ProcessPool::new(2)?;
    /// let (mut tx, rx) = futures::channel::mpsc::channel::<String>(8);
    /// tokio::spawn(async move {
    ///     for line in ["hello", "world"] {
    ///         tx.send(line.to_string()).await.unwrap();
    ///     }
    /// }); // `tx` is dropped here, which ends the stream
    /// let out: Vec<String> = pool.map_stream(shout, rx).try_collect().await?;
    /// assert_eq!(out, ["HELLO", "WORLD"]);
    /// # Ok(()) }
    /// ```
    pub fn map_stream<A, R, S>(&self, f: fn(A) -> R, inputs: S) -> Map<A, R>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        S: Stream<Item = A> + Send + 'static,
    {
        Map::new(
            Arc::new(ProcessChunks {
                pool: self.clone(),
                f,
            }),
            inputs,
        )
    }

    /// [`map`](Self::map) as a blocking iterator, for plain threads.
    ///
    /// ```
    /// fn square(x: u64) -> u64 { x * x }
    /// let pool = procpool::ProcessPool::new(2)?;
    /// let total: u64 = pool.map_blocking(square, 1..=3).map(Result::unwrap).sum();
    /// assert_eq!(total, 14);
    /// # Ok::<(), procpool::Error>(())
    /// ```
    pub fn map_blocking<A, R, I>(&self, f: fn(A) -> R, inputs: I) -> MapIter<A, R>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
        I::IntoIter: Send + 'static,
    {
        self.map(f, inputs).blocking()
    }

    /// Stops accepting tasks, waits until every queued and running task has
    /// finished, then lets the workers exit and reaps them.
    ///
    /// Tasks spawned afterwards (through any clone of the handle) resolve to
    /// [`TaskError::PoolClosed`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), procpool::Error> {
    /// fn id(x: u8) -> u8 { x }
    /// let pool = procpool::ProcessPool::new(1)?;
    /// let task = pool.spawn(id, 7);
    /// pool.shutdown().await;
    /// assert_eq!(task.await, Ok(7));
    /// assert_eq!(pool.spawn(id, 8).await, Err(procpool::TaskError::PoolClosed));
    /// # Ok(()) }
    /// ```
    pub async fn shutdown(&self) {
        self.handle.ctx.queue.close();
        let _ = self.handle.done.recv().await;
    }

    /// Kills every worker now. Queued and running tasks resolve to
    /// [`TaskError::PoolClosed`]. Returns once all workers are reaped (a few
    /// milliseconds), so it may be called from async code too.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), procpool::Error> {
    /// fn forever(_: ()) { loop { std::thread::park(); } }
    /// let pool = procpool::ProcessPool::new(1)?;
    /// let task = pool.spawn(forever, ());
    /// pool.terminate();
    /// assert_eq!(task.await, Err(procpool::TaskError::PoolClosed));
    /// # Ok(()) }
    /// ```
    pub fn terminate(&self) {
        self.handle.stop.close();
        self.handle.ctx.queue.close();
        while let Some(job) = self.handle.ctx.queue.try_pop() {
            job.slot.fail(TaskError::PoolClosed);
        }
        let _ = self.handle.done.recv_blocking();
    }
}

impl ProcessPool {
    /// The handle of a pool whose supervisors run (see [`super::start`]):
    /// `ctx.queue` feeds them, closing `stop` terminates them, and `done` closes
    /// once they have all finished.
    pub(super) fn from_parts(
        ctx: Arc<PoolCtx>,
        stop: async_channel::Sender<()>,
        done: async_channel::Receiver<()>,
        max_frame: u64,
    ) -> ProcessPool {
        let hook: Arc<dyn CancelHook> = ctx.clone();
        let workers = ctx.config.workers;
        ProcessPool {
            handle: Arc::new(Handle {
                ctx,
                hook,
                stop,
                done,
                workers,
                max_frame,
            }),
        }
    }
}

thread_local! {
    /// Where a caller's thread encodes job frames (see `prepare`).
    static ENCODING: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// A thread keeps an encoding buffer up to this size between calls.
const KEEP_ENCODING_BUFFER: usize = 64 * 1024;

/// Encodes the `JOB` frame of a call to `fn_ref` with `args` into `frame`
/// (empty): its sequence number is set when it is sent.
fn encode_job<T: Serialize + ?Sized>(
    frame: &mut Vec<u8>,
    fn_ref: FnRef,
    args: &T,
    max_frame: u64,
) -> Result<(), TaskError> {
    wire::begin_job(frame, fn_ref.func, fn_ref.trampoline);
    rmp_serde::encode::write(&mut crate::buffer::Growing(frame), args).map_err(|e| {
        TaskError::Serialization {
            stage: CodecStage::EncodeArgument,
            message: e.to_string(),
        }
    })?;
    let size = (frame.len() - wire::LEN_PREFIX) as u64;
    if size > max_frame {
        return Err(TaskError::TooLarge {
            what: "argument",
            size,
            max: max_frame,
        });
    }
    wire::end_frame(frame, 0);
    Ok(())
}
