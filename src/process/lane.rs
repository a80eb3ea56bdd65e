//! The direct lane's state machine: who owns an idle worker's pipes, its
//! supervisor (see [`super::lend`]) or a thread in
//! [`apply_blocking`](crate::ProcessPool::apply_blocking) that borrowed it
//! (see [`super::direct`], which also says why the lane exists).
//!
//! # Who may touch the worker
//!
//! Each worker slot has a lane whose state says who owns the worker's job
//! pipe and reply pipe:
//!
//! ```text
//!          supervisor opens (worker idle, nothing left to write)
//!   CLOSED ─────────────────────────────────────────────────► OPEN
//!    ▲  ▲                                                     │  ▲
//!    │  └──── supervisor reclaims (a queued job, stop, ...) ──┘  │ borrower is done,
//!    │                                                     borrow │ nobody wants it back
//!    │                                                        ▼  │
//!    └──── borrower gives back (asked to, failure, budget) ─ LENT (+ WANTED)
//! ```
//!
//! While the lane is OPEN or LENT the supervisor writes nothing to the worker
//! and keeps its descriptors open; it only watches for an idle worker's death
//! (its result pipe and pidfd), the queue and the pool's stop signal. To get
//! the worker back it closes an OPEN lane, or marks a LENT one WANTED and
//! waits; the borrower then gives it back CLOSED and wakes it. A job the
//! supervisor takes from the queue while the worker is lent goes back to the
//! queue for a free worker, and the supervisor marks the borrow WATCHED to be
//! told when it ends. A borrower that finishes while nobody wants the worker
//! and no task is queued reopens the lane without waking anyone, so the
//! common case costs the supervisor nothing.
//!
//! # Failures
//!
//! If the worker dies (its pidfd turns readable, the reply pipe ends, or the
//! job pipe refuses the frame) or breaks the protocol, the borrower hands its
//! job back with the lane and then waits for its task like any other caller:
//! the supervisor reaps the worker and fails the task with its exit status or
//! the protocol error, exactly as if the job had come through the queue.
//! An async borrower (see [`super::async_lane`]) is a task that may not be
//! polled for a while; whenever the supervisor needs the worker back it has
//! the call finished elsewhere (see [`Takeover`]), so nothing waits on a task
//! nobody polls. A cancelled async call is handed back with
//! [`Failure::Cancelled`], and the supervisor kills the worker.
//!
//! `terminate` kills a lent worker, which ends the borrower's wait. The pidfd
//! matters when a task forked without exec: the child holds the reply pipe
//! open, so its end of file would never come.

use std::any::Any;
#[cfg(unix)]
use std::os::fd::RawFd;
/// (No direct lane on Windows; the type only keeps this module compiling.)
#[cfg(not(unix))]
type RawFd = i32;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::job::Job;

const CLOSED: u32 = 0;
const OPEN: u32 = 1;
const LENT: u32 = 2;
/// With `LENT`: the supervisor waits for the worker; give it back closed.
const WANTED: u32 = 4;
/// With `LENT`: the supervisor stopped watching the queue; tell it when the
/// borrow ends.
const WATCHED: u32 = 8;

/// How often a supervisor waiting for an async borrower asks it again to
/// finish elsewhere.
pub(crate) const TAKEOVER_AGAIN: Duration = Duration::from_millis(10);

/// One worker slot's lane.
pub(crate) struct Lane {
    state: AtomicU32,
    /// Woken when the lane is given back `CLOSED`.
    back: Notify,
    // Set by the supervisor before it opens the lane; read by a borrower.
    job_fd: AtomicI32,
    reply_fd: AtomicI32,
    /// The worker's pidfd (readable once it exits), or -1.
    pid_fd: AtomicI32,
    pid: AtomicU32,
    /// Sequence number of the next job; a borrower advances it.
    seq: AtomicU64,
    /// Jobs the worker may still run before it is recycled.
    budget: AtomicU64,
    /// Jobs run through the lane since the supervisor last looked.
    done: AtomicU64,
    /// A job whose worker failed, handed back for the supervisor to settle.
    handback: Mutex<Option<Handback>>,
    /// The async borrowers' side of the lane (one lock for both, as a call
    /// ends: it clears one and fills the other).
    calls: Mutex<AsyncCalls>,
    /// Whether the supervisor watches for async calls nobody polls (see
    /// [`super::unpolled`]), and how a borrower asks it to.
    watching_unpolled: AtomicBool,
    watch_unpolled: Notify,
}

/// What async borrowers leave in the lane.
#[derive(Default)]
struct AsyncCalls {
    /// While an async borrower holds the lane: how the supervisor makes it
    /// finish without being polled (see [`Takeover`]).
    takeover: Option<Arc<dyn Takeover>>,
    /// What an async borrower keeps for the next one (its registration with
    /// a reactor).
    parked: Option<Box<dyn Any + Send>>,
}

/// An async borrower's call is finished by whoever polls its task; when the
/// supervisor needs the worker back (terminate, shutdown, queued work, an
/// aborted task) it cannot wait for that, and has the call finished
/// elsewhere.
pub(crate) trait Takeover: Send + Sync {
    /// Finishes the call on a helper thread (or, if its task was cancelled,
    /// gives the worker back to be killed); only if cancelled when
    /// `cancelled_only`.
    fn take_over(&self, cancelled_only: bool);
}

/// The lent worker, as the borrower sees it (see [`Lane::loan`]).
pub(crate) struct Loan {
    pub(crate) job_fd: RawFd,
    pub(crate) reply_fd: RawFd,
    /// The worker's pidfd, or -1.
    pub(crate) pid_fd: RawFd,
    pub(crate) pid: u32,
    /// Sequence number for the borrower's job.
    pub(crate) seq: u64,
}

/// A direct job that did not get an answer.
pub(crate) struct Handback {
    pub(crate) seq: u64,
    pub(crate) job: Job,
    pub(crate) failure: Failure,
}

/// Why a direct job got no answer.
pub(crate) enum Failure {
    /// The worker's pipes closed: it died (or was killed).
    Died,
    /// The worker sent something other than the job's result.
    Protocol(String),
    /// The job's task was cancelled while the worker ran it (an async
    /// borrower's): the worker must be killed.
    Cancelled,
}

/// What the supervisor finds when it has its worker back.
pub(crate) struct Settled {
    /// Sequence number of the next job.
    pub(crate) next_seq: u64,
    /// Jobs the worker ran through the lane.
    pub(crate) done: u64,
    pub(crate) handback: Option<Handback>,
}

impl Default for Lane {
    fn default() -> Self {
        Lane {
            state: AtomicU32::new(CLOSED),
            back: Notify::new(),
            job_fd: AtomicI32::new(-1),
            reply_fd: AtomicI32::new(-1),
            pid_fd: AtomicI32::new(-1),
            pid: AtomicU32::new(0),
            seq: AtomicU64::new(0),
            budget: AtomicU64::new(0),
            done: AtomicU64::new(0),
            handback: Mutex::new(None),
            calls: Mutex::default(),
            watching_unpolled: AtomicBool::new(false),
            watch_unpolled: Notify::new(),
        }
    }
}

impl Lane {
    // --- the supervisor's side ----------------------------------------------

    /// Lends an idle worker out. The descriptors (`pid_fd` may be -1) must
    /// stay open until the lane is closed again ([`reclaim`](Self::reclaim)
    /// or [`given_back`](Self::given_back)).
    pub(crate) fn open(&self, fds: [RawFd; 3], pid: u32, seq: u64, budget: u64) {
        let [job_fd, reply_fd, pid_fd] = fds;
        self.job_fd.store(job_fd, Ordering::Relaxed);
        self.reply_fd.store(reply_fd, Ordering::Relaxed);
        self.pid_fd.store(pid_fd, Ordering::Relaxed);
        self.pid.store(pid, Ordering::Relaxed);
        self.seq.store(seq, Ordering::Relaxed);
        self.budget.store(budget, Ordering::Relaxed);
        // Publishes the fields above to whoever borrows next.
        self.state.store(OPEN, Ordering::Release);
    }

    /// Closes the lane if nobody holds it (`true`); otherwise asks the
    /// borrower to give the worker back when done (`false`).
    pub(crate) fn reclaim(&self) -> bool {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            let want = match state {
                CLOSED => return true,
                OPEN => CLOSED,
                lent => lent | WANTED,
            };
            if state == want {
                return false;
            }
            match self
                .state
                .compare_exchange(state, want, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return want == CLOSED,
                Err(actual) => state = actual,
            }
        }
    }

    /// Closes the lane if nobody holds it (`true`); `false` while lent.
    pub(crate) fn try_close(&self) -> bool {
        match self
            .state
            .compare_exchange(OPEN, CLOSED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) | Err(CLOSED) => true,
            Err(_) => false,
        }
    }

    /// Asks to be told when the current borrow ends. `false` when it already
    /// has (nothing to wait for).
    pub(crate) fn watch(&self) -> bool {
        let mut state = self.state.load(Ordering::Acquire);
        while state & LENT != 0 {
            match self.state.compare_exchange(
                state,
                state | WATCHED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => state = actual,
            }
        }
        false
    }

    /// True while a borrower holds the worker.
    pub(crate) fn is_lent(&self) -> bool {
        self.state.load(Ordering::Acquire) & LENT != 0
    }

    /// True once a borrower gave the lane back closed (or it was never open).
    pub(crate) fn is_closed(&self) -> bool {
        self.state.load(Ordering::Acquire) == CLOSED
    }

    /// Jobs run through the lane so far (to tell whether it is in use).
    pub(crate) fn uses(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Waits until the lane is given back; the lane is closed afterwards. An
    /// async borrower is made to finish (and asked again now and then, as it
    /// may be starting just now).
    pub(crate) async fn given_back(&self) {
        while !self.reclaim() {
            self.take_over(false);
            let _ = tokio::time::timeout(TAKEOVER_AGAIN, self.back.notified()).await;
        }
    }

    /// Which async call holds the lane (the address of its [`Takeover`]),
    /// if one does.
    pub(crate) fn takeover_id(&self) -> Option<usize> {
        let calls = self.calls();
        calls
            .takeover
            .as_ref()
            .map(|t| Arc::as_ptr(t).cast::<()>() as usize)
    }

    /// Whether the supervisor watches for async calls nobody polls.
    pub(crate) fn watching_unpolled(&self) -> bool {
        self.watching_unpolled.load(Ordering::SeqCst)
    }

    /// Waits until a borrower asks for that watch.
    pub(crate) async fn unpolled_watch_wanted(&self) {
        self.watch_unpolled.notified().await;
    }

    /// The supervisor stops that watch: `false` if a borrower holds the lane
    /// (then the watch goes on). Pairs with [`Lane::want_unpolled_watch`]:
    /// either the borrower sees the watch stopped and asks again, or this
    /// sees the borrow.
    pub(crate) fn stop_unpolled_watch(&self) -> bool {
        self.watching_unpolled.store(false, Ordering::SeqCst);
        if self.state.load(Ordering::SeqCst) & LENT != 0 {
            self.watching_unpolled.store(true, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Has an async borrower's call finished elsewhere (see [`Takeover`]).
    pub(crate) fn take_over(&self, cancelled_only: bool) {
        let takeover = self.calls().takeover.clone();
        if let Some(takeover) = takeover {
            takeover.take_over(cancelled_only);
        }
    }

    /// Waits for a borrower to give the lane back closed on its own (job
    /// failed, budget spent, tasks waiting in the queue) or to end a watched
    /// borrow. Spurious returns are possible: check the state.
    pub(crate) async fn borrower_done(&self) {
        self.back.notified().await;
    }

    /// What happened while the worker was lent. Call with the lane closed.
    pub(crate) fn settle(&self) -> Settled {
        debug_assert!(self.is_closed());
        Settled {
            next_seq: self.seq.load(Ordering::Relaxed),
            done: self.done.swap(0, Ordering::Relaxed),
            handback: self
                .handback
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        }
    }

    // --- the borrower's side --------------------------------------------------

    /// Takes an open lane (`true`); `false` if it is closed or lent.
    pub(crate) fn try_borrow(&self) -> bool {
        // (Sequentially consistent: `want_unpolled_watch` relies on it to pair
        // with `stop_unpolled_watch`. On x86 it costs what `Acquire` does.)
        self.state
            .compare_exchange(OPEN, LENT, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
    }

    /// What the borrower needs of the lent worker. Only while borrowed.
    pub(crate) fn loan(&self) -> Loan {
        Loan {
            job_fd: self.job_fd.load(Ordering::Relaxed),
            reply_fd: self.reply_fd.load(Ordering::Relaxed),
            pid_fd: self.pid_fd.load(Ordering::Relaxed),
            pid: self.pid.load(Ordering::Relaxed),
            seq: self.seq.load(Ordering::Relaxed),
        }
    }

    // (`answered` and `spend` load and store, with no read-modify-write:
    // while the lane is lent only its borrower writes these counters, and
    // the supervisor writes them only with the lane closed.)

    /// Job `seq` was answered: the next one is `seq + 1`.
    pub(crate) fn answered(&self, seq: u64) {
        self.seq.store(seq + 1, Ordering::Relaxed);
        let done = self.done.load(Ordering::Relaxed);
        self.done.store(done + 1, Ordering::Relaxed);
    }

    /// Spends one job of the worker's budget: `true` while some is left.
    pub(crate) fn spend(&self) -> bool {
        let left = self.budget.load(Ordering::Relaxed);
        self.budget.store(left.saturating_sub(1), Ordering::Relaxed);
        left > 1
    }

    /// Takes what a previous borrower kept (see [`end_call`](Self::end_call)),
    /// or the supervisor drops it.
    pub(crate) fn unpark(&self) -> Option<Box<dyn Any + Send>> {
        self.calls().parked.take()
    }

    /// Set by an async borrower once its call runs. Only while borrowed.
    pub(crate) fn set_takeover(&self, takeover: Arc<dyn Takeover>) {
        self.calls().takeover = Some(takeover);
    }

    /// An async borrower's call ends: there is nothing left to take over, and
    /// `keep` (if any) is kept for the lane's next borrower. Only while
    /// borrowed.
    pub(crate) fn end_call(&self, keep: Option<Box<dyn Any + Send>>) {
        let mut calls = self.calls();
        calls.takeover = None;
        if keep.is_some() {
            calls.parked = keep;
        }
    }

    fn calls(&self) -> std::sync::MutexGuard<'_, AsyncCalls> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An async borrower's task may stop being polled (awaited inside a
    /// blocking executor, say) while its reply waits: asks the supervisor to
    /// watch for that, waking it only if it is not watching already.
    ///
    /// No fence is needed: the borrow (`try_borrow`) and the load below are
    /// sequentially consistent, as are the supervisor's store and load in
    /// `stop_unpolled_watch`, so of the two loads at least one sees the other
    /// side's write.
    pub(crate) fn want_unpolled_watch(&self) {
        // (A load first: the common case, a watch on already, writes nothing.)
        if !self.watching_unpolled.load(Ordering::SeqCst)
            && !self.watching_unpolled.swap(true, Ordering::SeqCst)
        {
            self.watch_unpolled.notify_one();
        }
    }

    /// Leaves a job whose worker failed for the supervisor to settle.
    pub(crate) fn hand_back(&self, back: Handback) {
        *self.handback.lock().unwrap_or_else(|e| e.into_inner()) = Some(back);
    }

    /// Ends a borrow: reopens the lane when `reopen` and the supervisor does
    /// not want the worker back (telling it if it watches), or closes it and
    /// wakes the supervisor.
    pub(crate) fn give_back(&self, reopen: bool) {
        let mut state = self.state.load(Ordering::Relaxed);
        let tell = loop {
            let (next, tell) = if reopen && state & WANTED == 0 {
                (OPEN, state & WATCHED != 0)
            } else {
                (CLOSED, true)
            };
            match self
                .state
                .compare_exchange(state, next, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => break tell,
                Err(actual) => state = actual,
            }
        };
        if tell {
            self.back.notify_one();
        }
    }
}
