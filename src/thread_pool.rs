//! [`ThreadPool`]: run functions on a bounded set of threads in this process.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;

use futures::Stream;

use crate::map::{Map, MapIter, ThreadChunks};
use crate::task::Shared;
use crate::{panic_info, Error, Task, TaskError};

/// A queued call: run it (`true`) or fail it because the pool was terminated
/// (`false`).
type Job = Box<dyn FnOnce(bool) + Send>;

/// A fixed set of threads running functions and closures from a queue.
///
/// It has the same methods and the same [`Task`] type as
/// [`ProcessPool`](crate::ProcessPool), so code can switch between the two (or
/// be generic over [`Pool`](crate::Pool)). Unlike a process pool it needs no
/// serde bounds and also takes capturing closures ([`spawn_fn`](Self::spawn_fn)).
///
/// What it cannot do is stop a task that is already running: a thread cannot be
/// killed safely, so dropping a running task only discards its result. Queued
/// tasks that are dropped never run. Use a `ProcessPool` when running work must
/// really stop, or when a crash must not take the program down.
///
/// Compared with tokio's `spawn_blocking`: the number of threads is fixed, and
/// dropped queued work is skipped.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// fn fib(n: u32) -> u64 { if n < 2 { n as u64 } else { fib(n - 1) + fib(n - 2) } }
///
/// let pool = procpool::ThreadPool::new(2)?;
/// assert_eq!(pool.apply(fib, 20).await?, 6765);
///
/// let data = vec![1u64, 2, 3];
/// assert_eq!(pool.spawn_fn(move || data.iter().sum::<u64>()).await?, 6);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ThreadPool {
    handle: Arc<Handle>,
}

struct Handle {
    jobs: async_channel::Sender<Job>,
    queue: async_channel::Receiver<Job>,
    done: async_channel::Receiver<()>,
    threads: usize,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Queued work still runs; the threads exit when the queue is empty.
        self.jobs.close();
    }
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool")
            .field("threads", &self.handle.threads)
            .field("queued", &self.handle.jobs.len())
            .field("closed", &self.handle.jobs.is_closed())
            .finish()
    }
}

impl ThreadPool {
    /// A pool of `threads` threads (`0` = one per available core).
    ///
    /// ```
    /// let pool = procpool::ThreadPool::new(0)?;
    /// assert!(pool.workers() >= 1);
    /// # Ok::<(), procpool::Error>(())
    /// ```
    pub fn new(threads: usize) -> Result<ThreadPool, Error> {
        ThreadPool::builder().workers(threads).build()
    }

    /// A builder with every option at its default.
    pub fn builder() -> ThreadPoolBuilder {
        ThreadPoolBuilder::default()
    }

    /// Number of threads.
    pub fn workers(&self) -> usize {
        self.handle.threads
    }

    /// Runs `f(args)` on a pool thread; same signature as
    /// [`ProcessPool::spawn`](crate::ProcessPool::spawn) without the serde
    /// bounds.
    pub fn spawn<A, R>(&self, f: fn(A) -> R, args: A) -> Task<R>
    where
        A: Send + 'static,
        R: Send + 'static,
    {
        self.spawn_fn(move || f(args))
    }

    /// Same as [`spawn`](Self::spawn).
    pub fn apply<A, R>(&self, f: fn(A) -> R, args: A) -> Task<R>
    where
        A: Send + 'static,
        R: Send + 'static,
    {
        self.spawn(f, args)
    }

    /// Runs a closure (which may capture) on a pool thread.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = procpool::ThreadPool::new(1)?;
    /// let name = String::from("world");
    /// let greeting = futures::executor::block_on(pool.spawn_fn(move || format!("hello {name}")))?;
    /// assert_eq!(greeting, "hello world");
    /// # Ok(()) }
    /// ```
    pub fn spawn_fn<F, R>(&self, f: F) -> Task<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let shared = Arc::new(Shared::<R>::new(None));
        let slot = shared.clone();
        let job: Job = Box::new(move |run| {
            if !run {
                slot.complete(Err(TaskError::PoolClosed));
                return;
            }
            if !slot.try_start(0) {
                return; // dropped while queued: never runs
            }
            let outcome = match panic::catch_unwind(AssertUnwindSafe(f)) {
                Ok(value) => Ok(value),
                Err(payload) => {
                    let message = panic_info::message(&*payload);
                    let location = panic_info::take_location();
                    let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(payload)));
                    Err(TaskError::Panicked {
                        message,
                        location,
                        pid: None,
                    })
                }
            };
            slot.complete(outcome);
        });
        if let Err(e) = self.handle.jobs.try_send(job) {
            (e.into_inner())(false);
        }
        Task::new(shared)
    }

    /// Runs `f(args)` and blocks this thread until it finishes (for plain
    /// threads; `.await` the task in async code).
    pub fn apply_blocking<A, R>(&self, f: fn(A) -> R, args: A) -> Result<R, TaskError>
    where
        A: Send + 'static,
        R: Send + 'static,
    {
        futures::executor::block_on(self.spawn(f, args))
    }

    /// Maps `f` over `inputs` on the pool's threads, results in input order;
    /// the same engine as [`ProcessPool::map`](crate::ProcessPool::map) (see
    /// [`Map`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use futures::TryStreamExt;
    /// fn square(x: u64) -> u64 { x * x }
    /// let pool = procpool::ThreadPool::new(2)?;
    /// let v: Vec<u64> = pool.map(square, 0..4).try_collect().await?;
    /// assert_eq!(v, [0, 1, 4, 9]);
    /// # Ok(()) }
    /// ```
    pub fn map<A, R, I>(&self, f: fn(A) -> R, inputs: I) -> Map<A, R>
    where
        A: Send + 'static,
        R: Send + 'static,
        I: IntoIterator<Item = A>,
        I::IntoIter: Send + 'static,
    {
        self.map_stream(f, futures::stream::iter(inputs))
    }

    /// Like [`map`](Self::map), results as they complete.
    pub fn map_unordered<A, R, I>(&self, f: fn(A) -> R, inputs: I) -> Map<A, R>
    where
        A: Send + 'static,
        R: Send + 'static,
        I: IntoIterator<Item = A>,
        I::IntoIter: Send + 'static,
    {
        self.map(f, inputs).unordered()
    }

    /// Like [`map`](Self::map), with the inputs coming from a `Stream`.
    pub fn map_stream<A, R, S>(&self, f: fn(A) -> R, inputs: S) -> Map<A, R>
    where
        A: Send + 'static,
        R: Send + 'static,
        S: Stream<Item = A> + Send + 'static,
    {
        Map::new(
            Arc::new(ThreadChunks {
                pool: self.clone(),
                f,
            }),
            inputs,
        )
    }

    /// [`map`](Self::map) as a blocking iterator, for plain threads.
    pub fn map_blocking<A, R, I>(&self, f: fn(A) -> R, inputs: I) -> MapIter<A, R>
    where
        A: Send + 'static,
        R: Send + 'static,
        I: IntoIterator<Item = A>,
        I::IntoIter: Send + 'static,
    {
        self.map(f, inputs).blocking()
    }

    /// Stops accepting tasks and waits until every queued and running task has
    /// finished and the threads have exited.
    pub async fn shutdown(&self) {
        self.handle.jobs.close();
        let _ = self.handle.done.recv().await;
    }

    /// Stops accepting tasks and fails every queued task with
    /// [`TaskError::PoolClosed`] at once. Tasks already running cannot be
    /// stopped: they finish in the background (their handles still get the
    /// result).
    pub fn terminate(&self) {
        self.handle.jobs.close();
        while let Ok(job) = self.handle.queue.try_recv() {
            job(false);
        }
    }
}

/// Options for a [`ThreadPool`].
///
/// ```
/// let pool = procpool::ThreadPool::builder().workers(2).thread_name("cpu").build()?;
/// # Ok::<(), procpool::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ThreadPoolBuilder {
    threads: usize,
    name: String,
    stack_size: Option<usize>,
}

impl Default for ThreadPoolBuilder {
    fn default() -> Self {
        ThreadPoolBuilder {
            threads: 0,
            name: "procpool-thread".into(),
            stack_size: None,
        }
    }
}

impl ThreadPoolBuilder {
    /// Number of threads; `0` (the default) means one per available core.
    pub fn workers(mut self, n: usize) -> Self {
        self.threads = n;
        self
    }

    /// Prefix of the threads' names (default `procpool-thread`).
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Stack size of each thread, in bytes (default: Rust's default).
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.stack_size = Some(bytes);
        self
    }

    /// Starts the threads.
    pub fn build(self) -> Result<ThreadPool, Error> {
        let threads = if self.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.threads
        };
        let (jobs_tx, jobs_rx) = async_channel::unbounded::<Job>();
        let (done_tx, done_rx) = async_channel::bounded::<()>(1);
        for i in 0..threads {
            let jobs = jobs_rx.clone();
            let done = done_tx.clone();
            let mut builder = std::thread::Builder::new().name(format!("{}-{i}", self.name));
            if let Some(size) = self.stack_size {
                builder = builder.stack_size(size);
            }
            let started = builder.spawn(move || {
                let _done = done;
                panic_info::install(false);
                while let Ok(job) = jobs.recv_blocking() {
                    job(true);
                }
            });
            if let Err(e) = started {
                jobs_tx.close();
                return Err(Error::Thread(e));
            }
        }
        Ok(ThreadPool {
            handle: Arc::new(Handle {
                jobs: jobs_tx,
                queue: jobs_rx,
                done: done_rx,
                threads,
            }),
        })
    }
}
