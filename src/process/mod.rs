//! [`ProcessPool`]: run functions in worker processes.

mod init;
mod job;
mod lane;
pub(crate) mod launcher;
mod outbox;
mod supervisor;

use std::fmt::Display;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::func_ref::{self, FnRef};
use crate::task::{CancelHook, Shared};
use futures::Stream;

use crate::map::{Map, MapIter, ProcessChunks};
use crate::stats::{Counters, PoolStats};
use crate::{wire, worker, CodecStage, Error, Task, TaskError, TrySpawnError};

use init::InitJob;
use job::{Frame, Job};
use launcher::LocalLauncher;
use supervisor::{PoolCtx, SlotConfig};

/// Default largest frame: 1 GiB (well inside the protocol's `u32` length).
const DEFAULT_MAX_FRAME: u64 = 1 << 30;

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
    jobs: async_channel::Sender<Job>,
    stop: async_channel::Sender<()>,
    done: async_channel::Receiver<()>,
    workers: usize,
    max_frame: u64,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Last handle gone: no new work can arrive; the supervisors finish what
        // is queued and let their workers exit.
        self.jobs.close();
    }
}

impl std::fmt::Debug for ProcessPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessPool")
            .field("workers", &self.handle.workers)
            .field("queued", &self.handle.jobs.len())
            .field("closed", &self.handle.jobs.is_closed())
            .finish()
    }
}

impl ProcessPool {
    /// A pool of `workers` processes (`0` = one per available core), started
    /// now. See [`builder`](Self::builder) for the options.
    ///
    /// ```
    /// let pool = procpool::ProcessPool::new(2)?;
    /// assert_eq!(pool.workers(), 2);
    /// # Ok::<(), procpool::Error>(())
    /// ```
    pub fn new(workers: usize) -> Result<ProcessPool, Error> {
        ProcessPool::builder().workers(workers).build()
    }

    /// A builder with every option at its default.
    ///
    /// ```
    /// let pool = procpool::ProcessPool::builder().workers(1).max_queue(100).build()?;
    /// assert_eq!(pool.workers(), 1);
    /// # Ok::<(), procpool::Error>(())
    /// ```
    pub fn builder() -> ProcessPoolBuilder {
        ProcessPoolBuilder::default()
    }

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

    /// Process ids of the live worker processes, for monitoring. A worker that
    /// is being replaced is missing for a moment.
    ///
    /// ```
    /// let pool = procpool::ProcessPool::new(2)?;
    /// assert_eq!(pool.worker_pids().len(), 2);
    /// # Ok::<(), procpool::Error>(())
    /// ```
    pub fn worker_pids(&self) -> Vec<u32> {
        (self.handle.ctx.pids.iter())
            .map(|p| p.load(Ordering::Relaxed))
            .filter(|&p| p != 0)
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
        let (job, task) = match self.prepare(f, args) {
            Ok(prepared) => prepared,
            Err(failed) => return failed,
        };
        self.enqueue(job);
        task
    }

    /// Queues a prepared job (waiting for room on a bounded queue).
    fn enqueue(&self, job: Job) {
        match self.handle.jobs.try_send(job) {
            Ok(()) => self.queued(),
            Err(async_channel::TrySendError::Full(job)) => {
                // Backpressure for plain threads: wait for room.
                match self.handle.jobs.send_blocking(job) {
                    Ok(()) => self.queued(),
                    Err(e) => e.into_inner().slot.fail(TaskError::PoolClosed),
                }
            }
            Err(async_channel::TrySendError::Closed(job)) => job.slot.fail(TaskError::PoolClosed),
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
        // Room for the header and a small argument in one allocation.
        let mut frame = Vec::with_capacity(48);
        wire::begin_job(&mut frame, fn_ref.func, fn_ref.trampoline);
        rmp_serde::encode::write(&mut frame, args).map_err(|e| {
            Task::failed(TaskError::Serialization {
                stage: CodecStage::EncodeArgument,
                message: e.to_string(),
            })
        })?;
        let size = (frame.len() - wire::LEN_PREFIX) as u64;
        if size > self.handle.max_frame {
            return Err(Task::failed(TaskError::TooLarge {
                what: "argument",
                size,
                max: self.handle.max_frame,
            }));
        }
        wire::end_frame(&mut frame, 0);
        let shared = Arc::new(Shared::<R>::new(Some(self.handle.hook.clone())));
        let job = Job {
            frame: Frame::new(frame),
            slot: shared.clone(),
            queued_at: job::now_nanos(),
        };
        Ok((job, Task::new(shared)))
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
        let (job, task) = match self.prepare(f, &args) {
            Ok(prepared) => prepared,
            Err(failed) => return failed,
        };
        match self.handle.jobs.send(job).await {
            Ok(()) => self.queued(),
            Err(e) => e.into_inner().slot.fail(TaskError::PoolClosed),
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
        if self.handle.jobs.is_closed() {
            return Err(TrySpawnError::Closed);
        }
        let (job, task) = match self.prepare(f, &args) {
            Ok(prepared) => prepared,
            Err(failed) => return Ok(failed),
        };
        match self.handle.jobs.try_send(job) {
            Ok(()) => {
                self.queued();
                Ok(task)
            }
            Err(e) => {
                let full = e.is_full();
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
            .snapshot(self.handle.jobs.len(), ctx.live.load(Ordering::Acquire))
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
    /// For plain threads (no async runtime needed). Do not call it on an async
    /// runtime's thread: it would block that thread; `.await` the task there.
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
            Ok((job, task)) if self.handle.jobs.is_closed() => {
                job.slot.fail(TaskError::PoolClosed);
                task
            }
            Ok((job, task)) => {
                if let Err(job) = lane::run(&self.handle.ctx, job) {
                    self.enqueue(job);
                }
                task
            }
            Err(failed) => failed,
        };
        futures::executor::block_on(task)
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
        self.handle.jobs.close();
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
        self.handle.jobs.close();
        while let Ok(job) = self.handle.ctx.queue.try_recv() {
            job.slot.fail(TaskError::PoolClosed);
        }
        let _ = self.handle.done.recv_blocking();
    }
}

/// Options for a [`ProcessPool`]: everything a long-running service needs.
///
/// ```
/// use std::time::Duration;
///
/// fn load_model(path: String) { /* read `path` into a static, once per worker */ }
///
/// let pool = procpool::ProcessPool::builder()
///     .workers(4)                                     // at most 4 processes
///     .min_workers(1)                                 // elastic: keep at least 1
///     .idle_timeout(Duration::from_secs(30))          // shrink to min_workers when idle
///     .initializer(load_model, "m.bin".to_string())   // run once in each new worker
///     .max_tasks_per_worker(1000)                     // recycle after 1000 tasks
///     .max_memory_per_worker(512 << 20)               // recycle above 512 MiB RSS
///     .max_queue(10_000)                              // backpressure beyond this
///     .build()?;
/// # Ok::<(), procpool::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ProcessPoolBuilder {
    workers: usize,
    min_workers: Option<usize>,
    max_frame: u64,
    pipeline_depth: usize,
    start_timeout: Duration,
    identity: Option<u64>,
    max_tasks: Option<u64>,
    max_memory: Option<u64>,
    memory_limit: Option<u64>,
    nice: i32,
    idle_timeout: Option<Duration>,
    max_queue: Option<usize>,
    init: Option<Result<InitJob, String>>,
}

impl Default for ProcessPoolBuilder {
    fn default() -> Self {
        ProcessPoolBuilder {
            workers: 0,
            min_workers: None,
            max_frame: DEFAULT_MAX_FRAME,
            pipeline_depth: 64,
            start_timeout: Duration::from_secs(60),
            identity: None,
            max_tasks: None,
            max_memory: None,
            memory_limit: None,
            nice: 0,
            idle_timeout: None,
            max_queue: None,
            init: None,
        }
    }
}

impl ProcessPoolBuilder {
    /// Number of worker processes (the maximum, for an elastic pool); `0` (the
    /// default) means one per available core.
    ///
    /// ```
    /// let pool = procpool::ProcessPool::builder().workers(2).build()?;
    /// assert_eq!(pool.worker_pids().len(), 2);
    ///
    /// // `0`: one per core (elastic here, so that none start yet).
    /// let per_core = procpool::ProcessPool::builder().workers(0).min_workers(0).build()?;
    /// assert_eq!(per_core.workers(), std::thread::available_parallelism()?.get());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Makes the pool elastic: only this many workers start with the pool and
    /// stay when idle; more start on demand, up to [`workers`](Self::workers),
    /// and stop again after [`idle_timeout`](Self::idle_timeout). With `0`, an
    /// idle pool has no worker process at all. Default: all workers, always.
    ///
    /// ```
    /// let pool = procpool::ProcessPool::builder()
    ///     .workers(8)
    ///     .min_workers(0)
    ///     .idle_timeout(std::time::Duration::from_secs(60))
    ///     .build()?;
    /// assert!(pool.worker_pids().is_empty()); // nothing started yet
    /// # Ok::<(), procpool::Error>(())
    /// ```
    pub fn min_workers(mut self, n: usize) -> Self {
        self.min_workers = Some(n);
        self
    }

    /// How long a worker beyond [`min_workers`](Self::min_workers) may sit
    /// idle before it exits. Without it, started workers stay.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    ///
    /// fn pid(_: ()) -> u32 { std::process::id() }
    ///
    /// let pool = procpool::ProcessPool::builder()
    ///     .workers(1)
    ///     .min_workers(0)
    ///     .idle_timeout(Duration::from_millis(50))
    ///     .build()?;
    /// let worker = pool.apply(pid, ()).await?; // starts a worker on demand
    /// assert_ne!(worker, std::process::id());
    ///
    /// // After 50 ms with nothing to do, it exits.
    /// tokio::time::timeout(Duration::from_secs(10), async {
    ///     while !pool.worker_pids().is_empty() {
    ///         tokio::time::sleep(Duration::from_millis(10)).await;
    ///     }
    /// })
    /// .await?;
    /// assert_eq!(pool.stats().restarts.idle, 1);
    /// # Ok(()) }
    /// ```
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// Runs `f(args)` once in every new worker process before its first task
    /// (Python's `initializer` and `initargs`): load a model, open a file,
    /// fill a `static`. Tasks then see what it set up.
    ///
    /// If it panics when the pool starts, [`build`](Self::build) fails with
    /// [`Error::Initializer`]. If it fails later (in a replacement worker),
    /// the tasks that worker was to run fail with [`TaskError::WorkerStart`]
    /// and the pool retries with growing pauses instead of respawning in a
    /// loop.
    ///
    /// ```
    /// use std::sync::OnceLock;
    /// static GREETING: OnceLock<String> = OnceLock::new();
    ///
    /// fn init(greeting: String) { GREETING.set(greeting).unwrap(); }
    /// fn greet(name: String) -> String { format!("{} {name}", GREETING.get().unwrap()) }
    ///
    /// let pool = procpool::ProcessPool::builder()
    ///     .workers(1)
    ///     .initializer(init, "hello".to_string())
    ///     .build()?;
    /// assert_eq!(pool.apply_blocking(greet, "world".into()).unwrap(), "hello world");
    /// # Ok::<(), procpool::Error>(())
    /// ```
    pub fn initializer<A>(mut self, f: fn(A), args: A) -> Self
    where
        A: Serialize + DeserializeOwned + Send + 'static,
    {
        self.init = Some(InitJob::new(f, args));
        self
    }

    /// Like [`initializer`](Self::initializer) for a function that can fail:
    /// an `Err` counts as a failed start, with its message.
    ///
    /// ```
    /// fn open(path: String) -> Result<(), std::io::Error> {
    ///     std::fs::metadata(&path).map(drop)
    /// }
    /// let err = procpool::ProcessPool::builder()
    ///     .workers(1)
    ///     .try_initializer(open, "/no/such/file".to_string())
    ///     .build()
    ///     .unwrap_err();
    /// assert!(matches!(err, procpool::Error::Initializer { .. }));
    /// ```
    pub fn try_initializer<A, E>(mut self, f: fn(A) -> Result<(), E>, args: A) -> Self
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        E: Display + 'static,
    {
        self.init = Some(InitJob::new_fallible(f, args));
        self
    }

    /// Replaces a worker after it has run this many tasks (Python's
    /// `maxtasksperchild`), to contain slow leaks. The worker finishes what it
    /// was sent, exits cleanly, and a fresh one takes its place; no task is
    /// lost or run twice.
    ///
    /// ```
    /// fn pid(_: ()) -> u32 { std::process::id() }
    ///
    /// let pool = procpool::ProcessPool::builder().workers(1).max_tasks_per_worker(2).build()?;
    /// let pids: Vec<u32> = (0..3).map(|_| pool.apply_blocking(pid, ()).unwrap()).collect();
    /// assert_eq!(pids[0], pids[1]); // the same worker ran two tasks…
    /// assert_ne!(pids[1], pids[2]); // …then a fresh one took over
    /// assert_eq!(pool.stats().restarts.max_tasks, 1);
    /// # Ok::<(), procpool::Error>(())
    /// ```
    pub fn max_tasks_per_worker(mut self, n: u64) -> Self {
        self.max_tasks = Some(n.max(1));
        self
    }

    /// Replaces a worker whose resident memory exceeds `bytes` after a task
    /// (checked on Linux, through `/proc`). The task's result is still
    /// delivered; the worker is then recycled like with
    /// [`max_tasks_per_worker`](Self::max_tasks_per_worker).
    ///
    /// ```
    /// /// Leaks `mib` MiB (a stand-in for a slow leak) and says which worker ran.
    /// fn leak(mib: usize) -> u32 {
    ///     std::mem::forget(vec![1u8; mib << 20]);
    ///     std::process::id()
    /// }
    ///
    /// let pool = procpool::ProcessPool::builder()
    ///     .workers(1)
    ///     .max_memory_per_worker(64 << 20)
    ///     .build()?;
    /// let first = pool.apply_blocking(leak, 96).unwrap(); // its result still arrives
    /// let second = pool.apply_blocking(leak, 0).unwrap();
    /// assert_ne!(first, second); // the bloated worker was replaced
    /// assert_eq!(pool.stats().restarts.max_memory, 1);
    /// # Ok::<(), procpool::Error>(())
    /// ```
    pub fn max_memory_per_worker(mut self, bytes: u64) -> Self {
        self.max_memory = Some(bytes);
        self
    }

    /// A hard cap on each worker's heap (`RLIMIT_DATA`): an allocation beyond
    /// it fails inside the worker, which aborts, so the task fails with
    /// [`TaskError::WorkerDied`] (SIGABRT) and the worker is replaced, while
    /// the machine stays healthy. Unlike
    /// [`max_memory_per_worker`](Self::max_memory_per_worker) it also stops a
    /// task that never finishes allocating. Leave room above the worker's
    /// normal needs (tens of MiB).
    ///
    /// ```
    /// fn hog(_: ()) -> usize { let v = vec![1u8; 1 << 30]; v.len() }
    /// let pool = procpool::ProcessPool::builder()
    ///     .workers(1)
    ///     .memory_limit_per_worker(256 << 20)
    ///     .build()?;
    /// assert!(matches!(pool.apply_blocking(hog, ()), Err(procpool::TaskError::WorkerDied { .. })));
    /// # Ok::<(), procpool::Error>(())
    /// ```
    pub fn memory_limit_per_worker(mut self, bytes: u64) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// Runs the workers at a lower scheduling priority: their niceness is the
    /// parent's plus `nice` (capped at 19; default 0 = the parent's). With the CPU saturated by tasks, the
    /// parent's own threads — an async server's runtime, say — then still get
    /// the CPU at once, which keeps its latency low.
    ///
    /// ```
    /// let pool = procpool::ProcessPool::builder().workers(2).worker_niceness(10).build()?;
    /// # Ok::<(), procpool::Error>(())
    /// ```
    pub fn worker_niceness(mut self, nice: i32) -> Self {
        self.nice = nice.clamp(0, 19);
        self
    }

    /// Bounds the number of queued tasks. When the queue is full,
    /// [`spawn`](ProcessPool::spawn) blocks the calling thread,
    /// [`spawn_async`](ProcessPool::spawn_async) and
    /// [`apply`](ProcessPool::apply) wait asynchronously, and
    /// [`try_spawn`](ProcessPool::try_spawn) returns
    /// [`TrySpawnError::Full`]; nothing is dropped. Default: unbounded.
    ///
    /// A [`map`](ProcessPool::map) stream submits its chunks like `spawn`: when
    /// the queue is full it waits, on the thread that polls it, until a worker
    /// takes a queued task. Keep `max_queue` above the map's
    /// [`in_flight`](crate::Map::in_flight) chunks (default two per worker) if
    /// that matters.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// fn square(x: u64) -> u64 { x * x }
    ///
    /// let pool = procpool::ProcessPool::builder().workers(1).max_queue(2).build()?;
    /// let mut tasks = Vec::new();
    /// for i in 0..8 {
    ///     tasks.push(pool.spawn_async(square, i).await); // waits while the queue is full
    ///     assert!(pool.stats().queued <= 2);
    /// }
    /// let squares = futures::future::try_join_all(tasks).await?;
    /// assert_eq!(squares, [0, 1, 4, 9, 16, 25, 36, 49]);
    /// # Ok(()) }
    /// ```
    pub fn max_queue(mut self, tasks: usize) -> Self {
        self.max_queue = Some(tasks.max(1));
        self
    }

    /// Largest message, in bytes, either side may send (default 1 GiB, at most
    /// 4 GiB − 1). A larger argument fails its task at `spawn`; a larger result
    /// fails its task with [`TaskError::TooLarge`]; the worker survives both.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use procpool::TaskError;
    ///
    /// fn sum(bytes: Vec<u8>) -> u64 { bytes.iter().map(|&b| u64::from(b)).sum() }
    /// fn zeros(n: usize) -> Vec<u8> { vec![0; n] }
    ///
    /// let pool = procpool::ProcessPool::builder().workers(1).max_frame_size(1024).build()?;
    /// assert_eq!(pool.apply(sum, vec![1; 100]).await?, 100);
    ///
    /// let big_argument = pool.apply(sum, vec![1; 4096]).await;
    /// assert!(matches!(big_argument, Err(TaskError::TooLarge { what: "argument", .. })));
    /// let big_result = pool.apply(zeros, 4096).await;
    /// assert!(matches!(big_result, Err(TaskError::TooLarge { what: "result", .. })));
    ///
    /// assert_eq!(pool.apply(zeros, 10).await?.len(), 10); // the worker is still there
    /// # Ok(()) }
    /// ```
    pub fn max_frame_size(mut self, bytes: u64) -> Self {
        self.max_frame = bytes.min(u64::from(u32::MAX));
        self
    }

    /// At most how many tasks a worker may hold at once: the one it runs plus
    /// those sent ahead to hide the round trip (default 64). Within this cap
    /// the pool sends ahead only about 200 µs of expected work, judged from
    /// measured run times, and only while at least two tasks per worker wait,
    /// so no worker idles while another holds a backlog and no task waits
    /// long behind a slow one. `1` disables sending ahead.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// fn inc(x: u32) -> u32 { x + 1 }
    ///
    /// let pool = procpool::ProcessPool::builder().workers(1).pipeline_depth(1).build()?;
    /// let tasks: Vec<_> = (0..20).map(|i| pool.spawn(inc, i)).collect();
    /// assert!(pool.stats().running <= 1); // nothing is sent ahead
    /// let out = futures::future::try_join_all(tasks).await?;
    /// assert_eq!(out, (1..=20).collect::<Vec<u32>>());
    /// # Ok(()) }
    /// ```
    pub fn pipeline_depth(mut self, n: usize) -> Self {
        self.pipeline_depth = n.max(1);
        self
    }

    /// How long a new worker may take to report ready and run the
    /// initializer (default 60 s).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn slow_init(ms: u64) { std::thread::sleep(Duration::from_millis(ms)) }
    ///
    /// let err = procpool::ProcessPool::builder()
    ///     .workers(1)
    ///     .initializer(slow_init, 60_000)
    ///     .start_timeout(Duration::from_millis(200))
    ///     .build()
    ///     .unwrap_err(); // the slow worker is killed, not waited for
    /// assert!(matches!(err, procpool::Error::Handshake { .. }));
    /// ```
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Test hook: pretend the parent is a different build, so workers refuse.
    #[doc(hidden)]
    pub fn build_identity_for_testing(mut self, identity: u64) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Starts the pool: the first [`min_workers`](Self::min_workers) (by
    /// default all) workers are started and initialised before this returns.
    ///
    /// # Errors
    ///
    /// [`Error::InsideWorker`] inside a worker process (never a fork bomb),
    /// [`Error::Spawn`] or [`Error::Handshake`] when a worker cannot start,
    /// [`Error::BuildMismatch`] when the worker is a different build,
    /// [`Error::Initializer`] when the initializer fails.
    ///
    /// ```
    /// fn square(x: u64) -> u64 { x * x }
    ///
    /// let pool = procpool::ProcessPool::builder().workers(2).build()?;
    /// assert_eq!(pool.worker_pids().len(), 2); // running and ready
    /// assert_eq!(pool.apply_blocking(square, 9), Ok(81));
    /// # Ok::<(), procpool::Error>(())
    /// ```
    pub fn build(self) -> Result<ProcessPool, Error> {
        worker::ensure_linked();
        if worker::is_worker() {
            return Err(Error::InsideWorker);
        }
        let workers = if self.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.workers
        };
        let init = match self.init {
            Some(Ok(init)) => Some(init),
            Some(Err(message)) => return Err(Error::Initializer { pid: 0, message }),
            None => None,
        };
        let identity = match self.identity {
            Some(identity) => identity,
            None => func_ref::build_identity().map_err(|e| {
                Error::Io(std::io::Error::new(
                    e.kind(),
                    format!("cannot read the running executable to identify its build: {e}"),
                ))
            })?,
        };
        let (jobs_tx, jobs_rx) = match self.max_queue {
            Some(n) => async_channel::bounded(n),
            None => async_channel::unbounded(),
        };
        let (stop_tx, stop_rx) = async_channel::bounded(1);
        let (done_tx, done_rx) = async_channel::bounded(1);
        let ctx = Arc::new(PoolCtx {
            config: SlotConfig {
                workers,
                min_workers: self.min_workers.unwrap_or(workers).min(workers),
                max_frame: self.max_frame,
                pipeline_depth: self.pipeline_depth,
                start_timeout: self.start_timeout,
                identity,
                max_tasks: self.max_tasks,
                max_memory: self.max_memory,
                memory_limit: self.memory_limit,
                nice: self.nice,
                idle_timeout: self.idle_timeout,
                init,
            },
            launcher: Box::new(LocalLauncher),
            queue: jobs_rx,
            requeue: jobs_tx.clone(),
            stop: stop_rx,
            _stop_sender: stop_tx.clone(),
            cancels: (0..workers).map(|_| tokio::sync::Notify::new()).collect(),
            pids: (0..workers).map(|_| AtomicU32::new(0)).collect(),
            live: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
            demand: tokio::sync::Notify::new(),
            counters: Counters::default(),
            typical_run_nanos: AtomicU64::new(0),
            lanes: (0..workers).map(|_| Default::default()).collect(),
        });
        let runtime = supervisor_runtime()?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread_ctx = ctx.clone();
        let thread = std::thread::Builder::new()
            .name("procpool-supervisor".into())
            .spawn(move || {
                // `done` closes only after the runtime is dropped, so when
                // `shutdown` or `terminate` returns, the pool's own descriptors
                // (epoll, timers, the reaping threads) are gone too.
                let done = done_tx.clone();
                runtime.block_on(async move {
                    let slots: Vec<_> = (0..workers)
                        .map(|idx| {
                            tokio::spawn(supervisor::supervise(
                                thread_ctx.clone(),
                                idx,
                                ready_tx.clone(),
                                done_tx.clone(),
                            ))
                        })
                        .collect();
                    drop((ready_tx, done_tx, thread_ctx));
                    for slot in slots {
                        let _ = slot.await;
                    }
                });
                drop(runtime);
                drop(done);
            })
            .map_err(Error::Thread)?;

        let mut failure = None;
        for _ in 0..workers {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    failure = Some(e);
                    break;
                }
                Err(_) => break,
            }
        }
        if let Some(e) = failure {
            stop_tx.close();
            jobs_tx.close();
            let _ = thread.join();
            return Err(e);
        }
        let hook: Arc<dyn CancelHook> = ctx.clone();
        Ok(ProcessPool {
            handle: Arc::new(Handle {
                ctx,
                hook,
                jobs: jobs_tx,
                stop: stop_tx,
                done: done_rx,
                workers,
                max_frame: self.max_frame,
            }),
        })
    }
}

/// The small runtime the supervisor thread drives: I/O and timers only.
///
/// When the application enables tokio's `signal` feature, building any I/O
/// driver also creates tokio's process-wide signal pipe the first time, and
/// tokio panics (rather than returning an error) if that fails — which it does
/// when the process is out of file descriptors. That panic is caught here and
/// becomes the `Error` the caller of `build` expects.
fn supervisor_runtime() -> Result<tokio::runtime::Runtime, Error> {
    let built = crate::panic_info::catch(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
    });
    let failed = |why: String| {
        Error::Io(std::io::Error::other(format!(
            "the pool's I/O runtime could not start: {why}"
        )))
    };
    match built {
        Ok(Ok(runtime)) => Ok(runtime),
        Ok(Err(e)) => Err(failed(e.to_string())),
        Err(caught) => Err(failed(caught.message)),
    }
}
