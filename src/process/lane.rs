//! The direct lane: a plain thread in
//! [`apply_blocking`](crate::ProcessPool::apply_blocking) borrows an idle
//! worker and talks to its pipes itself.
//!
//! Through the queue, one call crosses threads four times (caller →
//! supervisor → worker → supervisor → caller), and each crossing is a
//! wake-up: on small machines, most of a small task's cost. A caller that
//! borrows an idle worker writes the `JOB_DIRECT` frame itself and blocks
//! reading the worker's reply pipe: two crossings, like a bare pipe
//! ping-pong.
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
//! `terminate` kills a lent worker, which ends the borrower's wait. The pidfd
//! matters when a task forked without exec: the child holds the reply pipe
//! open, so its end of file would never come.

use std::cell::RefCell;
use std::ops::Range;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use rustix::event::{poll, PollFd, PollFlags};
use tokio::sync::Notify;

use super::ctx::PoolCtx;
use super::job::Job;
use crate::stats::Counters;
use crate::wire::{self, FromWorker, Status};

const CLOSED: u32 = 0;
const OPEN: u32 = 1;
const LENT: u32 = 2;
/// With `LENT`: the supervisor waits for the worker; give it back closed.
const WANTED: u32 = 4;
/// With `LENT`: the supervisor stopped watching the queue; tell it when the
/// borrow ends.
const WATCHED: u32 = 8;

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

    /// Waits until the lane is given back; the lane is closed afterwards.
    pub(crate) async fn given_back(&self) {
        while !self.reclaim() {
            self.back.notified().await;
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

    fn try_borrow(&self) -> bool {
        self.state
            .compare_exchange(OPEN, LENT, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Ends a borrow: reopens the lane when `reopen` and the supervisor does
    /// not want the worker back (telling it if it watches), or closes it and
    /// wakes the supervisor.
    fn give_back(&self, reopen: bool) {
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

/// Picks the lane a borrower tries first, so concurrent callers spread out.
static NEXT_LANE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// A borrower's read buffer, kept between calls.
    static REPLY: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `job` on an idle worker, from this thread, if a worker is free and no
/// task is waiting in the queue (a borrower must not overtake those). Only
/// small frames go this way: a large one streams through the pipe for long,
/// and its bytes are better shared than copied (the queue's path). When it
/// returns `Ok`, the job's task is settled, or its job was handed back to the
/// supervisor, which settles it; `Err` gives the job back untouched.
pub(crate) fn run(ctx: &PoolCtx, mut job: Job) -> Result<(), Job> {
    let lanes = &ctx.lanes;
    if lanes.is_empty() || !ctx.queue.is_empty() || !job.frame.is_small() {
        return Err(job);
    }
    let first = NEXT_LANE.fetch_add(1, Ordering::Relaxed);
    let Some(idx) = (0..lanes.len())
        .map(|i| (first + i) % lanes.len())
        .find(|&i| lanes[i].try_borrow())
    else {
        return Err(job);
    };
    let mut borrow = Borrow::new(ctx, idx);
    let lane = borrow.lane;
    if !job.slot.try_start(idx) {
        // Cancelled already: there is nothing to run (dropping the job is all).
        borrow.end(true);
        return Ok(());
    }
    let seq = lane.seq.load(Ordering::Relaxed);
    let pid = lane.pid.load(Ordering::Relaxed);
    wire::set_job_seq(job.frame.bytes_mut(), seq, true);
    Counters::bump(&ctx.counters.running);
    // SAFETY: the supervisor keeps these descriptors open while the lane is
    // open or lent, and it is lent to this thread until `borrow` ends.
    let fds = unsafe {
        let pid_fd = lane.pid_fd.load(Ordering::Relaxed);
        WorkerFds {
            job: BorrowedFd::borrow_raw(lane.job_fd.load(Ordering::Relaxed)),
            reply: BorrowedFd::borrow_raw(lane.reply_fd.load(Ordering::Relaxed)),
            exited: (pid_fd >= 0).then(|| BorrowedFd::borrow_raw(pid_fd)),
        }
    };
    let max = ctx.config.max_frame;
    REPLY.with(|cell| {
        let mut guard = cell.try_borrow_mut();
        let mut fresh = Vec::new();
        // Re-entrance is impossible (nothing here calls back into a pool),
        // but a fresh buffer keeps that an efficiency question only.
        let buf = guard.as_deref_mut().unwrap_or(&mut fresh);
        let reply = exchange(&fds, job.frame.bytes(), buf, max)
            .and_then(|body| check(&buf[body.clone()], seq).map(|r| (body, r)));
        match reply {
            Ok((body, (status, nanos, payload))) => {
                lane.seq.store(seq + 1, Ordering::Relaxed);
                lane.done.fetch_add(1, Ordering::Relaxed);
                ctx.counters.running.fetch_sub(1, Ordering::Relaxed);
                ctx.finished(&job, status, nanos);
                // Tasks waiting in the queue: the supervisor serves them next.
                let more = lane.budget.fetch_sub(1, Ordering::Relaxed) > 1 && ctx.queue.is_empty();
                borrow.end(more);
                // The worker is back before the result type's own code runs.
                let payload = body.start + payload.start..body.start + payload.end;
                job.slot.deliver(status, &buf[payload], pid);
            }
            Err(failure) => {
                *lane.handback.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(Handback { seq, job, failure });
                borrow.end(false);
            }
        }
        // A large result's buffer is not kept for the next small one.
        if buf.capacity() > 1 << 20 {
            *buf = Vec::new();
        }
    });
    Ok(())
}

/// A lent lane, from the borrower's side. While the worker is lent it does not
/// count as idle (so an elastic pool grows for queued work meanwhile), and if
/// the borrower unwinds the lane is given back closed rather than lost.
struct Borrow<'a> {
    ctx: &'a PoolCtx,
    lane: &'a Lane,
    ended: bool,
}

impl<'a> Borrow<'a> {
    fn new(ctx: &'a PoolCtx, idx: usize) -> Self {
        ctx.idle.fetch_sub(1, Ordering::AcqRel);
        Borrow {
            ctx,
            lane: &ctx.lanes[idx],
            ended: false,
        }
    }

    /// Gives the worker back (see [`Lane::give_back`]).
    fn end(&mut self, reopen: bool) {
        self.ended = true;
        self.ctx.idle.fetch_add(1, Ordering::AcqRel);
        self.lane.give_back(reopen);
    }
}

impl Drop for Borrow<'_> {
    fn drop(&mut self) {
        if !self.ended {
            // Only a bug in this module can get here; the worker may hold a
            // half-finished exchange, which the supervisor sees as a protocol
            // error on the next use.
            self.end(false);
        }
    }
}

/// The borrowed worker's descriptors.
struct WorkerFds<'a> {
    job: BorrowedFd<'a>,
    reply: BorrowedFd<'a>,
    /// Readable once the worker process has exited (a pidfd, where the
    /// platform has them).
    exited: Option<BorrowedFd<'a>>,
}

/// Writes the job frame and reads back one whole frame; returns the body's
/// range in `buf`.
fn exchange(
    fds: &WorkerFds<'_>,
    frame: &[u8],
    buf: &mut Vec<u8>,
    max: u64,
) -> Result<Range<usize>, Failure> {
    write_all(fds.job, frame).map_err(|_| Failure::Died)?;
    buf.clear();
    loop {
        match wire::split_frame(buf, max) {
            Ok(Some((body, used))) if used == buf.len() => return Ok(body),
            Ok(Some(_)) => return Err(protocol("bytes after the result of a direct job")),
            Ok(None) => wire::check_from_worker_tag(buf).map_err(|e| protocol(e.to_string()))?,
            Err(e) => return Err(protocol(e.to_string())),
        }
        let want = wire::missing_bytes(buf)
            .filter(|&n| n as u64 <= max)
            .unwrap_or(0)
            .max(4096);
        buf.reserve(want);
        // The task may run for long; part of a frame may not.
        let limit = (!buf.is_empty()).then_some(STALLED_FRAME);
        if !wait_for_reply(fds, limit)? {
            return Err(protocol(format!(
                "an incomplete frame ({} bytes) made no progress for {STALLED_FRAME:?}",
                buf.len()
            )));
        }
        match rustix::io::read(fds.reply, rustix::buffer::spare_capacity(buf)) {
            Ok(0) => return Err(Failure::Died),
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(_) => return Err(Failure::Died),
        }
    }
}

/// How long part of a reply may sit unfinished: a healthy worker writes a
/// frame in one go (the supervisor applies the same bound to its stream).
const STALLED_FRAME: std::time::Duration = super::ctx::STALLED_FRAME;

/// Waits until the reply pipe has bytes (or end of file): `Ok(true)`; or
/// `Ok(false)` after `limit`. The worker's exit ends the wait with
/// `Failure::Died` even when the pipe stays open, because a process the task
/// forked without exec holds its write end.
fn wait_for_reply(
    fds: &WorkerFds<'_>,
    limit: Option<std::time::Duration>,
) -> Result<bool, Failure> {
    let deadline = limit.map(|l| std::time::Instant::now() + l);
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
        let timeout = left.map(|l| rustix::event::Timespec::try_from(l).unwrap_or_default());
        let mut polled = [
            PollFd::new(&fds.reply, PollFlags::IN),
            PollFd::new(fds.exited.as_ref().unwrap_or(&fds.reply), PollFlags::IN),
        ];
        match poll(&mut polled, timeout.as_ref()) {
            Ok(_) if !polled[0].revents().is_empty() => return Ok(true),
            Ok(_) if fds.exited.is_some() && !polled[1].revents().is_empty() => {
                return Err(Failure::Died)
            }
            Ok(0) if left.is_some_and(|l| l.is_zero()) => return Ok(false),
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(_) => return Err(Failure::Died),
        }
    }
}

/// Writes all of `bytes` to the (non-blocking) job pipe.
fn write_all(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> rustix::io::Result<()> {
    while !bytes.is_empty() {
        match rustix::io::write(fd, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(rustix::io::Errno::AGAIN) => {
                let mut fds = [PollFd::new(&fd, PollFlags::OUT)];
                match poll(&mut fds, None) {
                    Ok(_) | Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return Err(e),
                }
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Checks that `body` is the result of job `seq`; returns its status, run
/// time and the payload's range within `body`.
fn check(body: &[u8], seq: u64) -> Result<(Status, u64, Range<usize>), Failure> {
    match FromWorker::decode(body) {
        Ok(FromWorker::Result {
            seq: got,
            next: 0,
            nanos,
            status,
            payload,
            ..
        }) if got == seq => {
            let start = body.len() - payload.len();
            Ok((status, nanos, start..body.len()))
        }
        Ok(FromWorker::Result { seq: got, .. }) => Err(protocol(format!(
            "result for job {got}, which it was not running"
        ))),
        Ok(_) => Err(protocol("unexpected message after the handshake")),
        Err(e) => Err(protocol(e.to_string())),
    }
}

fn protocol(message: impl Into<String>) -> Failure {
    Failure::Protocol(message.into())
}
