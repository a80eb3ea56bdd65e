//! [`Task`]: the one handle both pools return.
//!
//! A task's life is a single atomic state word, so that "cancel" and "finish"
//! can race without locks and exactly one of them wins:
//!
//! ```text
//!   QUEUED ──try_start(w)──► RUNNING(w) ──complete──► COMPLETING ──► DONE
//!     │                          │                        ▲
//!     ├───────complete (fails before it ran, say) ────────┘
//!     └────────cancel────────────┴──────────────────► CANCELLED
//! ```
//!
//! `complete` claims the task (COMPLETING) before it writes the outcome and
//! publishes it (DONE) after, so the outcome needs no lock: one writer, then
//! one reader, the task's owner (each `Shared` has exactly one [`Task`]: only
//! [`Task::with_shared`] makes either).
//!
//! `RUNNING(w)` carries the index of the worker slot that owns the task, so a
//! cancellation of a running task is routed to exactly that worker's supervisor,
//! which then kills the worker process (the parent never guesses which process
//! runs what).

use std::cell::UnsafeCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::task::AtomicWaker;

use crate::TaskError;

const QUEUED: usize = 0;
const RUNNING: usize = 1;
const DONE: usize = 2;
const CANCELLED: usize = 3;
/// The outcome is being written; DONE follows.
const COMPLETING: usize = 4;
const STATE_BITS: u32 = 3;
const STATE_MASK: usize = (1 << STATE_BITS) - 1;

/// Told when a task that a worker is running gets cancelled, so the worker can
/// be stopped.
pub(crate) trait CancelHook: Send + Sync {
    /// The task that worker slot `worker` is running was cancelled.
    fn running_task_cancelled(&self, worker: usize);
}

/// Whatever a task must do while it is polled to get its result: a call on
/// the process pool's async direct lane reads its worker's reply on the
/// caller's reactor. The task lets go of it once it returned `Ready` (the
/// outcome is then in the task's shared state); a task that goes away before
/// that [releases](Driver::release) it, after cancelling itself unless it
/// was detached.
pub(crate) trait Driver: Send + Sync {
    /// Makes progress; `Ready` once the outcome is delivered (or handed to
    /// someone else who delivers it).
    fn poll_drive(&self, cx: &mut Context<'_>) -> Poll<()>;

    /// The task is gone before the driver returned `Ready`: whatever is left
    /// must finish without it being polled.
    fn release(&self);
}

/// State shared between a [`Task`] and whoever runs it.
pub(crate) struct Shared<R> {
    state: AtomicUsize,
    waker: AtomicWaker,
    hook: Option<Arc<dyn CancelHook>>,
    /// Written once, by the `complete` that moved the state to COMPLETING,
    /// before it publishes DONE; after that read only by the task's owner.
    result: UnsafeCell<Option<Result<R, TaskError>>>,
}

// SAFETY: the outcome is the only field without its own synchronisation, and
// the state word orders every access to it: one thread writes it between
// claiming COMPLETING and publishing DONE (Release), and only the task's
// owner, through `&mut Task`, reads it once it saw DONE (Acquire). There is
// one owner: `Task::with_shared` makes each `Shared` with its one `Task`. The
// outcome moves between threads, hence `R: Send`.
unsafe impl<R: Send> Sync for Shared<R> {}
// SAFETY: as above; nothing in `Shared` is tied to a thread.
unsafe impl<R: Send> Send for Shared<R> {}

impl<R> Shared<R> {
    fn new(hook: Option<Arc<dyn CancelHook>>) -> Self {
        Shared {
            state: AtomicUsize::new(QUEUED),
            waker: AtomicWaker::new(),
            hook,
            result: UnsafeCell::new(None),
        }
    }

    /// Claims a queued task for worker slot `worker`. Fails if it was cancelled
    /// (or already claimed), in which case it must not run.
    pub(crate) fn try_start(&self, worker: usize) -> bool {
        self.state
            .compare_exchange(
                QUEUED,
                RUNNING | (worker << STATE_BITS),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// True once the task's handle has been dropped or aborted.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.state.load(Ordering::Acquire) == CANCELLED
    }

    /// True once the task has an outcome (or is getting one) or was
    /// cancelled: nobody waits on it.
    pub(crate) fn is_settled(&self) -> bool {
        is_final(self.state.load(Ordering::Acquire))
    }

    /// Delivers the task's outcome. Returns `false` (and drops the value) when
    /// the task was cancelled first or already finished.
    pub(crate) fn complete(&self, outcome: Result<R, TaskError>) -> bool {
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            if is_final(current) {
                return false;
            }
            match self.state.compare_exchange_weak(
                current,
                COMPLETING,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        // SAFETY: moving the state to COMPLETING made this the outcome's one
        // writer, and nobody reads it before DONE is published below.
        // (Nothing here may panic or return early: the task would stay
        // COMPLETING for ever. The assignment only drops a `None`.)
        unsafe { *self.result.get() = Some(outcome) };
        self.state.store(DONE, Ordering::Release);
        self.waker.wake();
        true
    }

    /// Cancels the task unless it already finished. A queued task will be
    /// skipped; a running one is reported to the hook of the pool that runs it.
    pub(crate) fn cancel(&self) {
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            // (A completing task counts as finished: its outcome is on its way.)
            if is_final(current) {
                return;
            }
            match self.state.compare_exchange_weak(
                current,
                CANCELLED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        if current & STATE_MASK == RUNNING {
            if let Some(hook) = &self.hook {
                hook.running_task_cancelled(current >> STATE_BITS);
            }
        }
        self.waker.wake();
    }

    /// Cancels the task only if it is still queued.
    pub(crate) fn cancel_if_queued(&self) -> bool {
        let cancelled = self
            .state
            .compare_exchange(QUEUED, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if cancelled {
            self.waker.wake();
        }
        cancelled
    }

    fn poll_result(&self, cx: &mut Context<'_>) -> Poll<Result<R, TaskError>> {
        if let Some(out) = self.try_take() {
            return Poll::Ready(out);
        }
        self.waker.register(cx.waker());
        match self.try_take() {
            Some(out) => Poll::Ready(out),
            None => Poll::Pending,
        }
    }

    /// The outcome, once there is one. Only the task's owner calls this
    /// (see `Task::poll`), so it is the outcome's one reader.
    fn try_take(&self) -> Option<Result<R, TaskError>> {
        match self.state.load(Ordering::Acquire) {
            // SAFETY: DONE, seen with Acquire, means the writer is finished
            // with the outcome; the owner is its only reader.
            DONE => Some(
                unsafe { (*self.result.get()).take() }
                    .expect("procpool::Task polled after it returned its result"),
            ),
            CANCELLED => Some(Err(TaskError::Cancelled)),
            _ => None,
        }
    }
}

/// True once `complete` claimed the task (COMPLETING, DONE) or it was
/// cancelled: no other `complete` or `cancel` changes it any more.
fn is_final(state: usize) -> bool {
    matches!(state & STATE_MASK, DONE | COMPLETING) || state == CANCELLED
}

/// A handle to a task running in a [`ProcessPool`](crate::ProcessPool) or a
/// [`ThreadPool`](crate::ThreadPool): a future of the task's result.
///
/// `Task<R>` is `Future<Output = Result<R, TaskError>> + Unpin + Send`, so it
/// can be awaited, raced in `select!`, bounded with `tokio::time::timeout`,
/// collected with `join_all` or streamed with `FuturesUnordered`. The work
/// starts when the task is spawned, not when it is first polled.
///
/// # Dropping a task cancels it
///
/// | the task is…           | `ProcessPool`                                         | `ThreadPool`                              |
/// |------------------------|-------------------------------------------------------|-------------------------------------------|
/// | queued                 | removed: it never runs                                 | removed: it never runs                     |
/// | running                | its worker process is killed (SIGKILL) and replaced   | runs to the end; the result is discarded  |
/// | finished               | the result is dropped                                 | the result is dropped                     |
///
/// A running thread cannot be stopped safely; use a `ProcessPool` when running
/// work must really stop. To let a task finish while nobody waits for it, call
/// [`detach`](Task::detach) instead of dropping it.
///
/// # Outcomes
///
/// * `Ok(value)` — the function returned.
/// * `Err(TaskError::Panicked { .. })` — it panicked; the worker survives.
/// * `Err(TaskError::WorkerDied { .. })` — its process crashed, aborted or
///   exited; a replacement worker is already starting and other tasks are not
///   affected.
/// * `Err(TaskError::Cancelled)` — [`abort`](Task::abort) was called.
/// * `Err(TaskError::PoolClosed)` — the pool was terminated, or shut down before
///   the task was queued.
/// * the other [`TaskError`] variants for (de)serialisation and size limits.
///
/// Polling a task again after it returned `Ready` panics, like most futures.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// fn square(x: u64) -> u64 { x * x }
///
/// let pool = procpool::ProcessPool::new(2)?;
/// let task: procpool::Task<u64> = pool.spawn(square, 12);
/// assert_eq!(task.await?, 144);
///
/// // Bound it with a timeout: on expiry the task is dropped, which kills its worker.
/// let r = tokio::time::timeout(std::time::Duration::from_secs(5), pool.spawn(square, 3)).await;
/// assert_eq!(r?.unwrap(), 9);
/// # Ok(()) }
/// ```
#[must_use = "dropping a Task cancels it; call .detach() to let it run unobserved"]
pub struct Task<R> {
    shared: Arc<Shared<R>>,
    detached: bool,
    driver: Option<Arc<dyn Driver>>,
}

impl<R> Task<R> {
    /// A new task, and the state through which it gets its outcome (for the
    /// job that runs it). The only way to make either: a task is its state's
    /// one reader (see `Shared`).
    pub(crate) fn with_shared(hook: Option<Arc<dyn CancelHook>>) -> (Self, Arc<Shared<R>>) {
        let shared = Arc::new(Shared::new(hook));
        let task = Task {
            shared: shared.clone(),
            detached: false,
            driver: None,
        };
        (task, shared)
    }

    /// Has `driver` polled with the task until it is done.
    #[cfg_attr(windows, allow(dead_code))] // (the Unix async lane's)
    pub(crate) fn drive_with(&mut self, driver: Arc<dyn Driver>) {
        debug_assert!(self.driver.is_none(), "a task has one driver");
        self.driver = Some(driver);
    }

    /// A task that has already failed (for example, the pool was closed).
    pub(crate) fn failed(error: TaskError) -> Self {
        let (task, shared) = Task::with_shared(None);
        shared.complete(Err(error));
        task
    }

    /// Lets the task run to completion without anyone waiting for it; its result
    /// is discarded. Without this, dropping the task cancels it.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// fn log_it(line: String) { eprintln!("{line}"); }
    /// let pool = procpool::ThreadPool::new(1)?;
    /// pool.spawn(log_it, "hello".to_string()).detach();
    /// # Ok(()) }
    /// ```
    pub fn detach(mut self) {
        self.detached = true;
    }

    /// Cancels the task now, like dropping it, but keeps the handle: awaiting it
    /// afterwards yields `Err(TaskError::Cancelled)` unless it had already
    /// finished, in which case the result is still returned.
    ///
    /// On a `ProcessPool` a running task's worker is killed and replaced; on a
    /// `ThreadPool` a running task finishes in the background and its result is
    /// discarded.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), procpool::Error> {
    /// fn forever(_: ()) { loop { std::thread::sleep(std::time::Duration::from_secs(1)); } }
    /// let pool = procpool::ProcessPool::new(1)?;
    /// let task = pool.spawn(forever, ());
    /// task.abort();
    /// assert_eq!(task.await, Err(procpool::TaskError::Cancelled));
    /// # Ok(()) }
    /// ```
    pub fn abort(&self) {
        self.shared.cancel();
    }

    /// Cancels the task only if it has not started yet (Python's
    /// `Future.cancel()`): returns `true` if it was removed from the queue, in
    /// which case it never runs and awaiting it yields
    /// `Err(TaskError::Cancelled)`; `false` if it already started or finished,
    /// in which case nothing changes.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// fn nap(ms: u64) { std::thread::sleep(std::time::Duration::from_millis(ms)) }
    /// let pool = procpool::ThreadPool::new(1)?;
    /// let first = pool.spawn(nap, 200);
    /// let second = pool.spawn(nap, 200);
    /// std::thread::sleep(std::time::Duration::from_millis(50));
    /// assert!(!first.cancel_if_queued()); // already running
    /// assert!(second.cancel_if_queued()); // still queued: removed
    /// # Ok(()) }
    /// ```
    pub fn cancel_if_queued(&self) -> bool {
        self.shared.cancel_if_queued()
    }

    /// True once the task has a result (or was cancelled): awaiting it will not
    /// wait.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::mpsc;
    ///
    /// fn wait_for(go: mpsc::Receiver<u32>) -> u32 { go.recv().unwrap() }
    ///
    /// let pool = procpool::ThreadPool::new(1)?;
    /// let (go, rx) = mpsc::channel();
    /// let task = pool.spawn(wait_for, rx);
    /// assert!(!task.is_finished());
    ///
    /// go.send(7)?;
    /// while !task.is_finished() {
    ///     std::thread::yield_now();
    /// }
    /// assert_eq!(futures::executor::block_on(task)?, 7); // ready: does not block
    /// # Ok(()) }
    /// ```
    pub fn is_finished(&self) -> bool {
        matches!(self.shared.state.load(Ordering::Acquire), DONE | CANCELLED)
    }
}

impl<R> Future for Task<R> {
    type Output = Result<R, TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(driver) = &self.driver {
            if driver.poll_drive(cx).is_ready() {
                self.driver = None;
            }
        }
        self.shared.poll_result(cx)
    }
}

impl<R> Drop for Task<R> {
    fn drop(&mut self) {
        if !self.detached {
            self.shared.cancel();
        }
        // After the cancellation, which the driver then sees.
        if let Some(driver) = self.driver.take() {
            driver.release();
        }
    }
}

impl<R> std::fmt::Debug for Task<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.shared.state.load(Ordering::Acquire) & STATE_MASK {
            QUEUED => "queued",
            RUNNING => "running",
            COMPLETING => "finishing",
            DONE => "finished",
            _ => "cancelled",
        };
        f.debug_struct("Task").field("state", &state).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `complete` racing `abort` and a waiting owner: exactly one wins, the
    /// owner sees what won, and a delivered outcome is never lost.
    #[test]
    fn complete_and_cancel_race_to_one_outcome() {
        for i in 0..2_000u64 {
            let (task, shared) = Task::<u64>::with_shared(None);
            let completer = std::thread::spawn(move || shared.complete(Ok(i)));
            if i % 2 == 0 {
                task.abort();
            }
            let outcome = futures::executor::block_on(task);
            let delivered = completer.join().unwrap();
            match outcome {
                Ok(value) => assert!(delivered && value == i, "round {i}"),
                Err(TaskError::Cancelled) => assert!(!delivered && i % 2 == 0, "round {i}"),
                Err(other) => panic!("round {i}: {other:?}"),
            }
        }
    }

    /// A second outcome is refused and dropped; the first stays.
    #[test]
    fn only_the_first_outcome_counts() {
        let (task, shared) = Task::<String>::with_shared(None);
        assert!(shared.complete(Ok("first".into())));
        assert!(!shared.complete(Ok("second".into())));
        assert!(!shared.complete(Err(TaskError::PoolClosed)));
        task.abort(); // finished already: changes nothing
        assert!(shared.is_settled() && !shared.is_cancelled());
        assert_eq!(futures::executor::block_on(task).unwrap(), "first");
    }
}
