//! [`ProcessPoolBuilder`]: a pool's options, and `build`, which turns them
//! into the shared [`PoolCtx`] and starts the supervisors (see
//! [`super::start`]) before handing out the [`ProcessPool`].

use std::fmt::Display;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::ctx::{PoolCtx, SlotConfig};
use super::init::InitJob;
use super::job::Job;
use super::pool::ProcessPool;
use super::start;
use crate::func_ref;
use crate::queue::Queue;
use crate::stats::Counters;
use crate::{worker, Error};
#[cfg(doc)]
use crate::{TaskError, TrySpawnError};

/// Default largest frame: 1 GiB (well inside the protocol's `u32` length).
const DEFAULT_MAX_FRAME: u64 = 1 << 30;

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
    remotes: Vec<crate::Remote>,
}

impl Default for ProcessPoolBuilder {
    fn default() -> Self {
        ProcessPoolBuilder {
            workers: 0,
            min_workers: None,
            max_frame: DEFAULT_MAX_FRAME,
            pipeline_depth: 256,
            start_timeout: Duration::from_secs(60),
            identity: None,
            max_tasks: None,
            max_memory: None,
            memory_limit: None,
            nice: 0,
            idle_timeout: None,
            max_queue: None,
            init: None,
            remotes: Vec::new(),
        }
    }
}

impl ProcessPoolBuilder {
    /// Number of worker processes on this machine (the maximum, for an
    /// elastic pool); `0` (the default) means one per available core, or none
    /// when the pool has [`remote`](Self::remote) workers.
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
    ///
    /// Linux (it reads `/proc`) and Windows (the working set) only: elsewhere
    /// [`build`](Self::build) fails with an [`Error::Io`] of kind
    /// `Unsupported` rather than ignore it.
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
    /// (While a worker is lent to a direct-lane call, its supervisor may take
    /// one queued task aside, to pass it to a free worker or run it next; that
    /// task then no longer counts as queued, and it may run after tasks queued
    /// later.)
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
    /// those sent ahead to hide the round trip (default 256). Within this cap
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

    /// Adds workers on another machine, started by ssh or any stdio launcher
    /// (see [`Remote`](crate::Remote)); may be called several times. Their
    /// slots come after the local ones, so in an elastic pool
    /// ([`min_workers`](Self::min_workers)) the local workers start first.
    /// [`build`](Self::build) prepares each remote before any worker starts
    /// (for ssh: copies and verifies the executable there), and fails with
    /// [`Error::Remote`] naming the host when that is impossible.
    ///
    /// ```no_run
    /// use procpool::{ProcessPool, Remote};
    ///
    /// let pool = ProcessPool::builder()
    ///     .workers(1)
    ///     .remote(Remote::ssh("user@gpu-box").workers(4))
    ///     .build()?;
    /// assert_eq!(pool.workers(), 5);
    /// # Ok::<(), procpool::Error>(())
    /// ```
    pub fn remote(mut self, remote: crate::Remote) -> Self {
        self.remotes.push(remote);
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
        let config = self.slot_config()?;
        let local = config.slot_hosts.iter().filter(|h| h.is_none()).count();
        let launcher = crate::remote::launcher(local, &self.remotes)?;
        let (stop_tx, stop_rx) = async_channel::bounded(1);
        let queue = Queue::new(self.max_queue);
        let ctx = Arc::new(pool_ctx(config, launcher, queue, stop_rx, stop_tx.clone()));
        let done_rx = start::supervisors(&ctx, &stop_tx)?;
        Ok(ProcessPool::from_parts(
            ctx,
            stop_tx,
            done_rx,
            self.max_frame,
        ))
    }

    /// The settings every slot works with, with defaults resolved.
    fn slot_config(&self) -> Result<SlotConfig, Error> {
        let local = if self.workers == 0 && self.remotes.is_empty() {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.workers
        };
        let slot_hosts = crate::remote::slot_hosts(local, &self.remotes);
        let workers = slot_hosts.len();
        if workers == 0 {
            return Err(Error::Io(std::io::Error::other(
                "the pool has no workers: no local ones and no remote ones",
            )));
        }
        let init = match &self.init {
            Some(Ok(init)) => Some(init.clone()),
            Some(Err(message)) => {
                return Err(Error::Initializer {
                    pid: 0,
                    message: message.clone(),
                })
            }
            None => None,
        };
        if self.max_memory.is_some() && !self.remotes.is_empty() {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "max_memory_per_worker cannot watch remote workers' memory; use \
                 memory_limit_per_worker, which remote workers apply themselves",
            )));
        }
        // Resident memory is read from /proc on Linux and as the working set
        // on Windows; other systems have no such reading here.
        if self.max_memory.is_some() && !cfg!(any(target_os = "linux", windows)) {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "max_memory_per_worker reads a worker's resident memory from /proc, which this \
                 system does not have; use memory_limit_per_worker instead",
            )));
        }
        Ok(SlotConfig {
            workers,
            min_workers: self.min_workers.unwrap_or(workers).min(workers),
            max_frame: self.max_frame,
            pipeline_depth: self.pipeline_depth,
            start_timeout: self.start_timeout,
            identity: self.identity()?,
            max_tasks: self.max_tasks,
            max_memory: self.max_memory,
            memory_limit: self.memory_limit,
            nice: self.nice,
            idle_timeout: self.idle_timeout,
            init,
            slot_hosts,
        })
    }
}

impl ProcessPoolBuilder {
    /// The build identity workers must match: this program's, read from its
    /// running image, unless a test set another.
    fn identity(&self) -> Result<u64, Error> {
        match self.identity {
            Some(identity) => Ok(identity),
            None => func_ref::build_identity().map_err(|e| {
                Error::Io(std::io::Error::new(
                    e.kind(),
                    format!("cannot read the running executable to identify its build: {e}"),
                ))
            }),
        }
    }
}

/// What all slots of a new pool share, before any of them runs.
fn pool_ctx(
    config: SlotConfig,
    launcher: Box<dyn super::launcher::Launcher>,
    queue: Queue<Job>,
    stop: async_channel::Receiver<()>,
    stop_sender: async_channel::Sender<()>,
) -> PoolCtx {
    let workers = config.workers;
    PoolCtx {
        config,
        launcher,
        queue,
        stop,
        _stop_sender: stop_sender,
        cancels: (0..workers).map(|_| tokio::sync::Notify::new()).collect(),
        pids: (0..workers).map(|_| AtomicU32::new(0)).collect(),
        live: AtomicUsize::new(0),
        idle: AtomicUsize::new(0),
        demand: tokio::sync::Notify::new(),
        counters: Counters::default(),
        typical_run_nanos: AtomicU64::new(0),
        lanes: (0..workers).map(|_| Default::default()).collect(),
    }
}
