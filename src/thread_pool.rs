//! [`ThreadPool`]: run functions on a bounded set of threads in this process.

use std::sync::atomic::{fence, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Instant;

use futures::Stream;

use crate::map::{Map, MapIter, ThreadChunks};
use crate::queue::{PushError, Queue};
use crate::stats::{Counters, PoolStats};
use crate::{panic_info, Error, Task, TaskError, TrySpawnError};

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
    /// Set by `terminate`: threads fail what they dequeue instead of running it.
    terminated: Arc<std::sync::atomic::AtomicBool>,
    queue: Arc<Queue<Job>>,
    /// Where idle threads sleep; told about every queued job and the close.
    idle: Arc<Idle>,
    done: async_channel::Receiver<()>,
    threads: usize,
    counters: Arc<Counters>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Queued work still runs; the threads exit when the queue is empty.
        self.close();
    }
}

impl Handle {
    /// Closes the queue and wakes every idle thread to see it.
    fn close(&self) {
        self.queue.close();
        self.idle.wake_all();
    }
}

/// Where idle threads sleep until a job is queued or the queue closes.
///
/// They do not wait in the queue's own listener (as an async-channel's
/// `recv_blocking` did, whose wake-up came while the event's lock was held,
/// so when caller and worker shared a CPU the woken worker spun on that lock
/// and slept again, two extra context switches per task). Here a sender
/// checks one atomic and, only when a thread sleeps, hands it a wake-up and
/// notifies it after releasing the lock.
struct Idle {
    /// Sleeping threads not yet handed a wake-up. Changed only under `lock`;
    /// read without it as the senders' quick "is anyone asleep?".
    sleepers: AtomicUsize,
    /// Wake-ups handed out and not yet taken by a sleeping thread.
    lock: Mutex<usize>,
    wake: Condvar,
}

impl Idle {
    fn new() -> Idle {
        Idle {
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(0),
            wake: Condvar::new(),
        }
    }

    /// The next job, sleeping while the queue is empty; `None` once the queue
    /// is closed and empty.
    fn next_job(&self, queue: &Queue<Job>) -> Option<Job> {
        // `Some(next)` unless the queue is open and empty.
        let look = || match queue.try_pop() {
            None if !queue.is_done() => None,
            next => Some(next),
        };
        loop {
            if let Some(next) = look() {
                return next;
            }
            let wakeups = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
            self.sleepers.fetch_add(1, Ordering::SeqCst);
            // Pairs with the fence in `wake_one`: either that sender sees this
            // sleeper, or this look sees its job.
            fence(Ordering::SeqCst);
            if let Some(next) = look() {
                self.sleepers.fetch_sub(1, Ordering::SeqCst);
                return next;
            }
            // The waker took this thread off `sleepers` when it handed out
            // the wake-up.
            let mut wakeups = self
                .wake
                .wait_while(wakeups, |w| *w == 0)
                .unwrap_or_else(PoisonError::into_inner);
            *wakeups -= 1;
        }
    }

    /// Called after a job was queued: wakes one sleeping thread, if any.
    fn wake_one(&self) {
        fence(Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut wakeups = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        if self.sleepers.load(Ordering::SeqCst) == 0 {
            return; // another sender woke it
        }
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        *wakeups += 1;
        drop(wakeups);
        // After unlocking, so the woken thread need not wait for the lock. A
        // sleeper counted itself under the lock and keeps it until it waits,
        // so it is waiting by now and cannot miss this.
        self.wake.notify_one();
    }

    /// Called after the queue was closed: wakes every sleeping thread.
    fn wake_all(&self) {
        let mut wakeups = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        *wakeups += self.sleepers.swap(0, Ordering::SeqCst);
        drop(wakeups);
        self.wake.notify_all();
    }
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool")
            .field("threads", &self.handle.threads)
            .field("queued", &self.handle.queue.len())
            .field("closed", &self.handle.queue.is_closed())
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
    ///
    /// ```
    /// let pool = procpool::ThreadPool::builder().workers(2).max_queue(100).build()?;
    /// assert_eq!(pool.workers(), 2);
    /// # Ok::<(), procpool::Error>(())
    /// ```
    pub fn builder() -> ThreadPoolBuilder {
        ThreadPoolBuilder::default()
    }

    /// Number of threads.
    ///
    /// ```
    /// let pool = procpool::ThreadPool::new(3)?;
    /// assert_eq!(pool.workers(), 3);
    /// # Ok::<(), procpool::Error>(())
    /// ```
    pub fn workers(&self) -> usize {
        self.handle.threads
    }

    /// Runs `f(args)` on a pool thread; same signature as
    /// [`ProcessPool::spawn`](crate::ProcessPool::spawn) without the serde
    /// bounds.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    ///
    /// // Arguments need not be serialisable: here, shared text.
    /// fn count_words((text, word): (Arc<str>, &'static str)) -> usize {
    ///     text.split_whitespace().filter(|w| *w == word).count()
    /// }
    ///
    /// let pool = procpool::ThreadPool::new(2)?;
    /// let text: Arc<str> = Arc::from("a rose is a rose is a rose");
    /// let roses = pool.spawn(count_words, (text.clone(), "rose"));
    /// let is = pool.spawn(count_words, (text, "is"));
    /// assert_eq!((roses.await?, is.await?), (3, 2));
    /// # Ok(()) }
    /// ```
    pub fn spawn<A, R>(&self, f: fn(A) -> R, args: A) -> Task<R>
    where
        A: Send + 'static,
        R: Send + 'static,
    {
        self.spawn_fn(move || f(args))
    }

    /// Runs `f(args)` and waits for the result (waiting asynchronously for
    /// queue room on a bounded pool); dropping the future cancels the task.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use procpool::TaskError;
    ///
    /// fn parse(s: String) -> u32 { s.parse().expect("not a number") }
    ///
    /// let pool = procpool::ThreadPool::new(1)?;
    /// assert_eq!(pool.apply(parse, "42".into()).await?, 42);
    ///
    /// // A panic fails the task alone; the thread keeps serving.
    /// match pool.apply(parse, "forty-two".into()).await {
    ///     Err(TaskError::Panicked { message, pid: None, .. }) => assert!(message.contains("not a number")),
    ///     other => panic!("unexpected: {other:?}"),
    /// }
    /// assert_eq!(pool.apply(parse, "7".into()).await?, 7);
    /// # Ok(()) }
    /// ```
    pub async fn apply<A, R>(&self, f: fn(A) -> R, args: A) -> Result<R, TaskError>
    where
        A: Send + 'static,
        R: Send + 'static,
    {
        self.spawn_fn_async(move || f(args)).await.await
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
        let (job, task) = self.prepare(f);
        match self.handle.queue.try_push(job) {
            Ok(()) => self.handle.idle.wake_one(),
            // Backpressure for plain threads: wait for room.
            Err(PushError::Full(job)) => match self.handle.queue.push_blocking(job) {
                Ok(()) => self.handle.idle.wake_one(),
                Err(job) => job(false),
            },
            Err(PushError::Closed(job)) => job(false),
        }
        task
    }

    /// Like [`spawn_fn`](Self::spawn_fn), waiting asynchronously for room when
    /// the queue is full ([`ThreadPoolBuilder::max_queue`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = procpool::ThreadPool::builder().workers(1).max_queue(2).build()?;
    /// let mut tasks = Vec::new();
    /// for name in ["ann", "bob", "cy", "di"] {
    ///     let greeting = format!("hi {name}"); // captured by the closure
    ///     tasks.push(pool.spawn_fn_async(move || greeting.len()).await);
    /// }
    /// assert_eq!(futures::future::try_join_all(tasks).await?, [6, 6, 5, 5]);
    /// # Ok(()) }
    /// ```
    pub async fn spawn_fn_async<F, R>(&self, f: F) -> Task<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let (job, task) = self.prepare(f);
        match self.handle.queue.push(job).await {
            Ok(()) => self.handle.idle.wake_one(),
            Err(job) => job(false),
        }
        task
    }

    /// Like [`spawn`](Self::spawn), waiting asynchronously for room when the
    /// queue is full.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// fn square(x: u64) -> u64 { x * x }
    ///
    /// let pool = procpool::ThreadPool::builder().workers(1).max_queue(2).build()?;
    /// let mut tasks = Vec::new();
    /// for i in 0..10 {
    ///     tasks.push(pool.spawn_async(square, i).await); // waits while 2 are queued
    /// }
    /// let squares = futures::future::try_join_all(tasks).await?;
    /// assert_eq!(squares, (0..10).map(|i| i * i).collect::<Vec<u64>>());
    /// # Ok(()) }
    /// ```
    pub async fn spawn_async<A, R>(&self, f: fn(A) -> R, args: A) -> Task<R>
    where
        A: Send + 'static,
        R: Send + 'static,
    {
        self.spawn_fn_async(move || f(args)).await
    }

    /// Like [`spawn`](Self::spawn), but returns an error instead of waiting
    /// when the queue is full or the pool is closed.
    ///
    /// ```
    /// fn nap(ms: u64) { std::thread::sleep(std::time::Duration::from_millis(ms)) }
    /// let pool = procpool::ThreadPool::builder().workers(1).max_queue(1).build()?;
    /// let running = pool.spawn(nap, 300);
    /// std::thread::sleep(std::time::Duration::from_millis(100)); // let it start
    /// let queued = pool.try_spawn(nap, 1).expect("one queue place");
    /// assert_eq!(pool.try_spawn(nap, 1).unwrap_err(), procpool::TrySpawnError::Full);
    /// # drop((running, queued));
    /// # Ok::<(), procpool::Error>(())
    /// ```
    pub fn try_spawn<A, R>(&self, f: fn(A) -> R, args: A) -> Result<Task<R>, TrySpawnError>
    where
        A: Send + 'static,
        R: Send + 'static,
    {
        let (job, task) = self.prepare(move || f(args));
        match self.handle.queue.try_push(job) {
            Ok(()) => {
                self.handle.idle.wake_one();
                Ok(task)
            }
            Err(e) => {
                task.detach();
                Err(if matches!(e, PushError::Full(_)) {
                    TrySpawnError::Full
                } else {
                    TrySpawnError::Closed
                })
            }
        }
    }

    /// What the pool has done so far (queue length, running, completed,
    /// failed, run and wait times; no restarts: threads are never replaced).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// fn nap(ms: u64) { std::thread::sleep(std::time::Duration::from_millis(ms)) }
    ///
    /// let pool = procpool::ThreadPool::new(1)?;
    /// pool.apply(nap, 5).await?;
    /// pool.apply(nap, 5).await?;
    ///
    /// let stats = pool.stats();
    /// assert_eq!((stats.completed, stats.failed, stats.workers), (2, 0, 1));
    /// assert!(stats.run_time.mean >= std::time::Duration::from_millis(5));
    /// assert_eq!(stats.restarts, procpool::Restarts::default());
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> PoolStats {
        self.handle
            .counters
            .snapshot(self.handle.queue.len(), self.handle.threads)
    }

    /// Wraps a closure into a queue entry and its task.
    fn prepare<F, R>(&self, f: F) -> (Job, Task<R>)
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let (task, slot) = Task::<R>::with_shared(None);
        let counters = self.handle.counters.clone();
        let queued_at = Instant::now();
        let job: Job = Box::new(move |run| {
            if !run {
                slot.complete(Err(TaskError::PoolClosed));
                return;
            }
            if !slot.try_start(0) {
                Counters::bump(&counters.cancelled);
                return; // dropped while queued: never runs
            }
            counters.running.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            let outcome = panic_info::catch(f).map_err(|p| TaskError::Panicked {
                message: p.message,
                location: p.location,
                pid: None,
            });
            counters.running.fetch_sub(1, Ordering::Relaxed);
            // Count first, so a caller woken by the result sees it counted.
            if slot.is_cancelled() {
                Counters::bump(&counters.cancelled); // aborted while it ran
            } else {
                counters.finished(outcome.is_ok(), started - queued_at, started.elapsed());
            }
            slot.complete(outcome);
        });
        (job, task)
    }

    /// Runs `f(args)` and blocks this thread until it finishes (for plain
    /// threads; `.await` the task in async code).
    ///
    /// ```
    /// fn checksum(data: Vec<u8>) -> u32 { data.iter().map(|&b| u32::from(b)).sum() }
    ///
    /// let pool = procpool::ThreadPool::new(1)?;
    /// assert_eq!(pool.apply_blocking(checksum, vec![1, 2, 3]), Ok(6));
    /// # Ok::<(), procpool::Error>(())
    /// ```
    pub fn apply_blocking<A, R>(&self, f: fn(A) -> R, args: A) -> Result<R, TaskError>
    where
        A: Send + 'static,
        R: Send + 'static,
    {
        crate::block_on::block_on(self.spawn(f, args))
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
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use futures::TryStreamExt;
    ///
    /// fn nap(ms: u64) -> u64 { std::thread::sleep(std::time::Duration::from_millis(ms)); ms }
    ///
    /// let pool = procpool::ThreadPool::new(2)?;
    /// let done: Vec<u64> = pool.map_unordered(nap, [300, 1]).chunk_size(1).try_collect().await?;
    /// assert_eq!(done, [1, 300]); // the quick one first
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use futures::{stream, StreamExt, TryStreamExt};
    ///
    /// fn len(s: String) -> usize { s.len() }
    ///
    /// let pool = procpool::ThreadPool::new(2)?;
    /// let lines = stream::iter(["a", "bb", "ccc"]).map(String::from);
    /// let lens: Vec<usize> = pool.map_stream(len, lines).try_collect().await?;
    /// assert_eq!(lens, [1, 2, 3]);
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```
    /// fn square(x: u64) -> u64 { x * x }
    ///
    /// let pool = procpool::ThreadPool::new(2)?;
    /// let squares: Result<Vec<u64>, _> = pool.map_blocking(square, 1..=4).collect();
    /// assert_eq!(squares?, [1, 4, 9, 16]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), procpool::Error> {
    /// fn nap(ms: u64) -> u64 { std::thread::sleep(std::time::Duration::from_millis(ms)); ms }
    ///
    /// let pool = procpool::ThreadPool::new(1)?;
    /// let task = pool.spawn(nap, 20);
    /// pool.shutdown().await;
    /// assert!(task.is_finished());
    /// assert_eq!(task.await, Ok(20));
    /// assert_eq!(pool.spawn(nap, 1).await, Err(procpool::TaskError::PoolClosed));
    /// # Ok(()) }
    /// ```
    pub async fn shutdown(&self) {
        self.handle.close();
        let _ = self.handle.done.recv().await;
    }

    /// Stops accepting tasks and fails every queued task with
    /// [`TaskError::PoolClosed`] at once. Tasks already running cannot be
    /// stopped: they finish in the background (their handles still get the
    /// result).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::mpsc;
    /// use futures::executor::block_on;
    ///
    /// fn work((started, ms): (mpsc::Sender<()>, u64)) -> u64 {
    ///     started.send(()).unwrap();
    ///     std::thread::sleep(std::time::Duration::from_millis(ms));
    ///     ms
    /// }
    ///
    /// let pool = procpool::ThreadPool::new(1)?;
    /// let (started, is_running) = mpsc::channel();
    /// let running = pool.spawn(work, (started.clone(), 50));
    /// is_running.recv()?; // the only thread is busy now
    /// let queued = pool.spawn(work, (started, 50));
    ///
    /// pool.terminate();
    /// assert_eq!(block_on(queued), Err(procpool::TaskError::PoolClosed)); // never ran
    /// assert_eq!(block_on(running), Ok(50)); // a running thread cannot be stopped
    /// # Ok(()) }
    /// ```
    pub fn terminate(&self) {
        self.handle.terminated.store(true, Ordering::Release);
        self.handle.close();
        while let Some(job) = self.handle.queue.try_pop() {
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
///
/// Of the [`ProcessPoolBuilder`](crate::ProcessPoolBuilder) options, `workers`
/// and `max_queue` apply here too. The others do not: threads share the
/// process, so there is nothing to initialise per worker, recycle or shrink,
/// and no frame to bound.
#[derive(Debug, Clone)]
pub struct ThreadPoolBuilder {
    threads: usize,
    name: String,
    stack_size: Option<usize>,
    max_queue: Option<usize>,
}

impl Default for ThreadPoolBuilder {
    fn default() -> Self {
        ThreadPoolBuilder {
            threads: 0,
            name: "procpool-thread".into(),
            stack_size: None,
            max_queue: None,
        }
    }
}

impl ThreadPoolBuilder {
    /// Number of threads; `0` (the default) means one per available core.
    ///
    /// ```
    /// let pool = procpool::ThreadPool::builder().workers(2).build()?;
    /// assert_eq!(pool.workers(), 2);
    ///
    /// let per_core = procpool::ThreadPool::builder().workers(0).build()?;
    /// assert_eq!(per_core.workers(), std::thread::available_parallelism()?.get());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn workers(mut self, n: usize) -> Self {
        self.threads = n;
        self
    }

    /// Prefix of the threads' names (default `procpool-thread`), followed by
    /// `-` and the thread's index.
    ///
    /// ```
    /// fn my_name(_: ()) -> String { std::thread::current().name().unwrap_or("?").to_string() }
    ///
    /// let pool = procpool::ThreadPool::builder().workers(1).thread_name("cpu").build()?;
    /// assert_eq!(pool.apply_blocking(my_name, ()).unwrap(), "cpu-0");
    /// # Ok::<(), procpool::Error>(())
    /// ```
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Stack size of each thread, in bytes (default: Rust's default).
    ///
    /// ```
    /// fn depth(n: u64) -> u64 { if n == 0 { 0 } else { 1 + depth(n - 1) } }
    ///
    /// // Deep recursion needs more than the default 2 MiB.
    /// let pool = procpool::ThreadPool::builder().workers(1).stack_size(64 << 20).build()?;
    /// assert_eq!(pool.apply_blocking(depth, 100_000), Ok(100_000));
    /// # Ok::<(), procpool::Error>(())
    /// ```
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.stack_size = Some(bytes);
        self
    }

    /// Bounds the number of queued tasks: when full, `spawn` blocks the
    /// calling thread, `spawn_async` and `apply` wait asynchronously, and
    /// `try_spawn` returns [`TrySpawnError::Full`]. Default: unbounded.
    ///
    /// ```
    /// use std::sync::mpsc;
    ///
    /// fn wait_for(go: mpsc::Receiver<u32>) -> u32 { go.recv().unwrap() }
    ///
    /// let pool = procpool::ThreadPool::builder().workers(1).max_queue(1).build()?;
    /// let (go, rx) = mpsc::channel();
    /// let busy = pool.spawn(wait_for, rx); // blocks the only thread until `go`
    /// while pool.stats().running == 0 { std::thread::yield_now(); }
    ///
    /// let (_, rx) = mpsc::channel();
    /// let queued = pool.try_spawn(wait_for, rx)?; // takes the one queue place
    /// let (_, rx) = mpsc::channel();
    /// assert_eq!(pool.try_spawn(wait_for, rx).unwrap_err(), procpool::TrySpawnError::Full);
    ///
    /// drop(queued); // cancelled: it never runs
    /// go.send(1)?;
    /// assert_eq!(futures::executor::block_on(busy), Ok(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn max_queue(mut self, tasks: usize) -> Self {
        self.max_queue = Some(tasks.max(1));
        self
    }

    /// Starts the threads.
    ///
    /// ```
    /// fn square(x: u64) -> u64 { x * x }
    ///
    /// let pool = procpool::ThreadPool::builder().workers(2).build()?;
    /// assert_eq!(pool.apply_blocking(square, 12), Ok(144));
    /// # Ok::<(), procpool::Error>(())
    /// ```
    pub fn build(self) -> Result<ThreadPool, Error> {
        let threads = if self.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.threads
        };
        let queue = Arc::new(Queue::new(self.max_queue));
        let (done_tx, done_rx) = async_channel::bounded::<()>(1);
        let terminated = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let idle = Arc::new(Idle::new());
        for i in 0..threads {
            let jobs = queue.clone();
            let sleep = idle.clone();
            let stop = terminated.clone();
            let done = done_tx.clone();
            let mut builder = std::thread::Builder::new().name(format!("{}-{i}", self.name));
            if let Some(size) = self.stack_size {
                builder = builder.stack_size(size);
            }
            let started = builder.spawn(move || {
                let _done = done;
                panic_info::install(false);
                while let Some(job) = sleep.next_job(&jobs) {
                    job(!stop.load(Ordering::Acquire));
                }
            });
            if let Err(e) = started {
                queue.close();
                idle.wake_all();
                return Err(Error::Thread(e));
            }
        }
        Ok(ThreadPool {
            handle: Arc::new(Handle {
                terminated,
                queue,
                idle,
                done: done_rx,
                threads,
                counters: Arc::new(Counters::default()),
            }),
        })
    }
}
