//! [`ProcessPool`]: run functions in worker processes.

mod job;
pub(crate) mod launcher;
mod supervisor;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::func_ref::{self, FnRef};
use crate::task::{CancelHook, Shared};
use futures::Stream;

use crate::map::{Map, MapIter, ProcessChunks};
use crate::{wire, worker, CodecStage, Error, Task, TaskError};

use job::Job;
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
    pub fn builder() -> ProcessPoolBuilder {
        ProcessPoolBuilder::default()
    }

    /// Number of worker processes.
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
        let fn_ref = match FnRef::new(f) {
            Ok(r) => r,
            Err(why) => return Task::failed(TaskError::Unsupported(why)),
        };
        let args = match rmp_serde::to_vec(args) {
            Ok(bytes) => bytes,
            Err(e) => {
                return Task::failed(TaskError::Serialization {
                    stage: CodecStage::EncodeArgument,
                    message: e.to_string(),
                })
            }
        };
        let size = (args.len() + wire::JOB_HEADER) as u64;
        if size > self.handle.max_frame {
            return Task::failed(TaskError::TooLarge {
                what: "argument",
                size,
                max: self.handle.max_frame,
            });
        }
        let shared = Arc::new(Shared::<R>::new(Some(self.handle.hook.clone())));
        let job = Job {
            fn_ref,
            args,
            slot: shared.clone(),
        };
        if let Err(e) = self.handle.jobs.try_send(job) {
            e.into_inner().slot.fail(TaskError::PoolClosed);
        }
        Task::new(shared)
    }

    /// Same as [`spawn`](Self::spawn); reads well as `pool.apply(f, x).await`.
    pub fn apply<A, R>(&self, f: fn(A) -> R, args: A) -> Task<R>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.spawn(f, args)
    }

    /// Runs `f(args)` in a worker and blocks this thread until it finishes.
    ///
    /// For plain threads (no async runtime needed). Do not call it on an async
    /// runtime's thread: it would block that thread; `.await` the task there.
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
        futures::executor::block_on(self.spawn(f, args))
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

/// Options for a [`ProcessPool`].
///
/// ```
/// let pool = procpool::ProcessPool::builder()
///     .workers(2)
///     .max_frame_size(64 << 20)
///     .build()?;
/// # Ok::<(), procpool::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ProcessPoolBuilder {
    workers: usize,
    max_frame: u64,
    pipeline_depth: usize,
    handshake_timeout: Duration,
    identity: Option<u64>,
}

impl Default for ProcessPoolBuilder {
    fn default() -> Self {
        ProcessPoolBuilder {
            workers: 0,
            max_frame: DEFAULT_MAX_FRAME,
            pipeline_depth: 8,
            handshake_timeout: Duration::from_secs(30),
            identity: None,
        }
    }
}

impl ProcessPoolBuilder {
    /// Number of worker processes; `0` (the default) means one per available
    /// core.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Largest message, in bytes, either side may send (default 1 GiB, at most
    /// 4 GiB − 1). A larger argument fails its task at `spawn`; a larger result
    /// fails its task with [`TaskError::TooLarge`]; the worker survives both.
    pub fn max_frame_size(mut self, bytes: u64) -> Self {
        self.max_frame = bytes.min(u64::from(u32::MAX));
        self
    }

    /// How many queued tasks a worker may be sent ahead of the one it runs
    /// (default 8). Only used when more tasks wait than there are workers, so
    /// no worker idles while another holds a backlog. `1` disables it.
    pub fn pipeline_depth(mut self, n: usize) -> Self {
        self.pipeline_depth = n.max(1);
        self
    }

    /// How long a new worker may take to report ready (default 30 s).
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Test hook: pretend the parent is a different build, so workers refuse.
    #[doc(hidden)]
    pub fn build_identity_for_testing(mut self, identity: u64) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Starts the workers and returns the pool once every one of them has
    /// completed its handshake.
    ///
    /// # Errors
    ///
    /// [`Error::InsideWorker`] inside a worker process (never a fork bomb),
    /// [`Error::Spawn`] or [`Error::Handshake`] when a worker cannot start,
    /// [`Error::BuildMismatch`] when the worker is a different build.
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
        let (jobs_tx, jobs_rx) = async_channel::unbounded();
        let (stop_tx, stop_rx) = async_channel::bounded(1);
        let (done_tx, done_rx) = async_channel::bounded(1);
        let ctx = Arc::new(PoolCtx {
            config: SlotConfig {
                workers,
                max_frame: self.max_frame,
                pipeline_depth: self.pipeline_depth,
                handshake_timeout: self.handshake_timeout,
                identity: self.identity.unwrap_or_else(func_ref::build_identity),
            },
            launcher: Box::new(LocalLauncher),
            queue: jobs_rx,
            stop: stop_rx,
            cancels: (0..workers).map(|_| tokio::sync::Notify::new()).collect(),
            pids: (0..workers).map(|_| AtomicU32::new(0)).collect(),
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread_ctx = ctx.clone();
        let thread = std::thread::Builder::new()
            .name("procpool-supervisor".into())
            .spawn(move || {
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
