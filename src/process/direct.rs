//! The borrower's side of the direct lane: a plain thread in
//! [`apply_blocking`](crate::ProcessPool::apply_blocking) borrows an idle
//! worker's [`Lane`] and talks to its pipes itself.
//!
//! Through the queue, one call crosses threads four times (caller →
//! supervisor → worker → supervisor → caller), and each crossing is a
//! wake-up: on small machines, most of a small task's cost. A caller that
//! borrows an idle worker writes the `JOB_DIRECT` frame itself and blocks
//! reading the worker's reply pipe: two crossings, like a bare pipe
//! ping-pong. Who may touch the worker when, and what happens on a failure,
//! is the lane's state machine (see [`super::lane`]); the supervisor's side
//! is [`super::lend`].

use std::cell::Cell;
use std::ops::{Deref, Range};
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustix::event::{poll, PollFd, PollFlags};

use super::ctx::{PoolCtx, STALLED_FRAME};
use super::job::Job;
use super::lane::{Failure, Handback, Lane};
use crate::stats::Counters;
use crate::wire::{self, FromWorker, Status};

/// Picks the lane a borrower tries first, so concurrent callers spread out.
static NEXT_LANE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// A borrower's read buffer, kept between calls.
    static REPLY: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
    /// Whether this thread's calls find their reply in at once.
    static EARLY_READ: Cell<EarlyRead> = const { Cell::new(EarlyRead::new()) };
}

/// Whether to read a reply right after writing the job, before waiting for
/// it. When the worker shares the caller's CPU (pinned, or a busy machine)
/// the write hands the CPU to the worker, which answers before the caller
/// runs again: the reply is in, and reading it at once saves a wait (a
/// `poll`, or a turn of the caller's reactor). Where the worker runs on
/// another CPU the reply is never in yet, so a read that finds nothing makes
/// the next calls wait first: 1, 3, 7, then 15 of them as misses repeat,
/// so a worker elsewhere costs a wasted read every 16th call, and the odd
/// miss of a worker on the same CPU (it did not get the CPU at once) costs
/// one call's early read, not sixteen.
#[derive(Debug, Clone, Copy)]
pub(super) struct EarlyRead {
    /// Calls left that wait first.
    skip: u8,
    /// Early reads in a row that found nothing (up to [`Self::MAX_MISSES`]).
    misses: u8,
}

impl EarlyRead {
    const MAX_MISSES: u8 = 4;

    pub(super) const fn new() -> Self {
        EarlyRead { skip: 0, misses: 0 }
    }

    /// Reads early with `read` if this call is due to: `Some` with what it
    /// settled (the whole reply, or a failure); `None` when the caller must
    /// wait (no read this call, or one that found no whole reply, which
    /// starts or lengthens the backoff).
    pub(super) fn try_read<T, E>(
        &mut self,
        read: impl FnOnce() -> Result<Option<T>, E>,
    ) -> Option<Result<T, E>> {
        if self.skip > 0 {
            self.skip -= 1;
            return None;
        }
        let settled = read().transpose();
        if settled.is_none() {
            self.misses = (self.misses + 1).min(Self::MAX_MISSES);
            self.skip = (1 << self.misses) - 1;
        } else {
            self.misses = 0;
        }
        settled
    }
}

/// Runs `job` on an idle worker, from this thread, if a worker is free and no
/// task is waiting in the queue (a borrower must not overtake those). Only
/// small frames go this way: a large one streams through the pipe for long,
/// and its bytes are better shared than copied (the queue's path). When it
/// returns `Ok`, the job's task is settled, or its job was handed back to the
/// supervisor, which settles it; `Err` gives the job back untouched.
pub(crate) fn run(ctx: &PoolCtx, mut job: Job) -> Result<(), Job> {
    if ctx.lanes.is_empty() || !ctx.queue.is_empty() || !job.frame.is_small() {
        return Err(job);
    }
    let Some(idx) = borrow_any(&ctx.lanes) else {
        return Err(job);
    };
    let mut borrow = Borrow::new(ctx, idx);
    if !job.slot.try_start(idx) {
        // Cancelled already: there is nothing to run (dropping the job is all).
        borrow.end(true);
        return Ok(());
    }
    let loan = borrow.lane().loan();
    wire::set_job_seq(job.frame.bytes_mut(), loan.seq, wire::Route::Reply);
    Counters::bump(&ctx.counters.running);
    // SAFETY: the supervisor keeps these descriptors open while the lane is
    // open or lent, and it is lent to this thread until `borrow` ends.
    let fds = unsafe {
        WorkerFds {
            job: BorrowedFd::borrow_raw(loan.job_fd),
            reply: BorrowedFd::borrow_raw(loan.reply_fd),
            exited: (loan.pid_fd >= 0).then(|| BorrowedFd::borrow_raw(loan.pid_fd)),
        }
    };
    // (A thread's buffers may be gone already when it calls from a
    // thread-local's destructor: a fresh one does then.)
    let mut buf = REPLY.try_with(Cell::take).unwrap_or_default();
    run_on(borrow, &fds, job, (loan.seq, loan.pid), &mut buf);
    // A large result's buffer is not kept for the next small one.
    if buf.capacity() <= 1 << 20 {
        let _ = REPLY.try_with(|cell| cell.set(buf));
    }
    Ok(())
}

/// Borrows the first open lane, starting from a different one each call.
pub(super) fn borrow_any(lanes: &[Lane]) -> Option<usize> {
    let first = NEXT_LANE.fetch_add(1, Ordering::Relaxed);
    (0..lanes.len())
        .map(|i| (first + i) % lanes.len())
        .find(|&i| lanes[i].try_borrow())
}

/// Sends job `seq` (already started) to the borrowed worker `pid` and settles
/// it with the reply, or hands it back to the supervisor on a failure; the
/// lane is given back either way.
fn run_on(
    borrow: Borrow<&PoolCtx>,
    fds: &WorkerFds<'_>,
    job: Job,
    (seq, pid): (u64, u32),
    buf: &mut Vec<u8>,
) {
    let max = borrow.ctx.config.max_frame;
    let reply = exchange(fds, job.frame.bytes(), buf, max)
        .and_then(|body| check(&buf[body.clone()], seq).map(|r| (body, r)));
    match reply {
        Ok((body, (status, nanos, payload))) => {
            let payload = body.start + payload.start..body.start + payload.end;
            settle(borrow, job, (seq, pid), (status, nanos), &buf[payload]);
        }
        Err(failure) => give_up(borrow, Handback { seq, job, failure }),
    }
}

/// Job `seq` was answered by worker `pid`: counts it, gives the worker back
/// and delivers the result.
pub(super) fn settle<C: Deref<Target = PoolCtx>>(
    mut borrow: Borrow<C>,
    job: Job,
    (seq, pid): (u64, u32),
    (status, nanos): (Status, u64),
    payload: &[u8],
) {
    let ctx = &*borrow.ctx;
    let lane = &ctx.lanes[borrow.idx];
    lane.answered(seq);
    ctx.counters.running.fetch_sub(1, Ordering::Relaxed);
    ctx.finished(&job, (status, nanos), super::job::now_nanos);
    // Tasks waiting in the queue: the supervisor serves them next.
    let more = lane.spend() && ctx.queue.is_empty();
    borrow.end(more);
    // The worker is back before the result type's own code runs.
    job.slot.deliver(status, payload, pid);
}

/// A direct job got no answer: the supervisor settles it (see
/// [`super::lane`]).
pub(super) fn give_up<C: Deref<Target = PoolCtx>>(mut borrow: Borrow<C>, back: Handback) {
    borrow.lane().hand_back(back);
    borrow.end(false);
}

/// A lent lane, from the borrower's side (`C` is how the borrower holds the
/// pool: by reference on a thread, by `Arc` in an async task). While the
/// worker is lent it does not count as idle (so an elastic pool grows for
/// queued work meanwhile), and if the borrower unwinds the lane is given back
/// closed rather than lost.
pub(super) struct Borrow<C: Deref<Target = PoolCtx>> {
    pub(super) ctx: C,
    pub(super) idx: usize,
    ended: bool,
}

impl<C: Deref<Target = PoolCtx>> Borrow<C> {
    /// Takes over lane `idx`, which the caller just borrowed.
    pub(super) fn new(ctx: C, idx: usize) -> Self {
        ctx.idle.fetch_sub(1, Ordering::AcqRel);
        Borrow {
            ctx,
            idx,
            ended: false,
        }
    }

    pub(super) fn lane(&self) -> &Lane {
        &self.ctx.lanes[self.idx]
    }

    /// Gives the worker back (see [`Lane::give_back`]).
    pub(super) fn end(&mut self, reopen: bool) {
        self.ended = true;
        self.ctx.idle.fetch_add(1, Ordering::AcqRel);
        self.lane().give_back(reopen);
    }
}

impl<C: Deref<Target = PoolCtx>> Drop for Borrow<C> {
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
pub(super) struct WorkerFds<'a> {
    pub(super) job: BorrowedFd<'a>,
    pub(super) reply: BorrowedFd<'a>,
    /// Readable once the worker process has exited (a pidfd, where the
    /// platform has them).
    pub(super) exited: Option<BorrowedFd<'a>>,
}

/// Writes the job frame and reads back one whole frame; returns the body's
/// range in `buf`.
fn exchange(
    fds: &WorkerFds<'_>,
    frame: &[u8],
    buf: &mut Vec<u8>,
    max: u64,
) -> Result<Range<usize>, Failure> {
    crate::pipe_io::write_all(fds.job, frame).map_err(|_| Failure::Died)?;
    buf.clear();
    let mut early = EARLY_READ.get();
    let settled = early.try_read(|| read_reply(fds.reply, buf, max));
    EARLY_READ.set(early);
    if let Some(reply) = settled {
        return reply;
    }
    loop {
        // The task may run for long; part of a frame may not.
        let limit = (!buf.is_empty()).then_some(STALLED_FRAME);
        if !wait_for_reply(fds, limit)? {
            return Err(stalled(buf.len()));
        }
        if let Some(body) = read_reply(fds.reply, buf, max)? {
            return Ok(body);
        }
    }
}

/// Reads what the (non-blocking) reply pipe has into `buf`: `Some` with the
/// body's range once `buf` holds one whole frame, `None` when the pipe has
/// nothing more for now.
pub(super) fn read_reply(
    fd: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    max: u64,
) -> Result<Option<Range<usize>>, Failure> {
    loop {
        match wire::split_frame(buf, max) {
            Ok(Some((body, used))) if used == buf.len() => return Ok(Some(body)),
            Ok(Some(_)) => return Err(protocol("bytes after the result of a direct job")),
            Ok(None) => wire::check_from_worker_tag(buf).map_err(|e| protocol(e.to_string()))?,
            Err(e) => return Err(protocol(e.to_string())),
        }
        let want = wire::missing_bytes(buf)
            .filter(|&n| n as u64 <= max)
            .unwrap_or(0)
            .max(4096);
        crate::buffer::reserve(buf, want);
        match rustix::io::read(fd, rustix::buffer::spare_capacity(buf)) {
            Ok(0) => return Err(Failure::Died),
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => return Ok(None),
            Err(_) => return Err(Failure::Died),
        }
    }
}

/// The failure of a reply frame that stopped arriving after `len` bytes.
pub(super) fn stalled(len: usize) -> Failure {
    protocol(format!(
        "an incomplete frame ({len} bytes) made no progress for {STALLED_FRAME:?}"
    ))
}

/// Waits until the reply pipe has bytes (or end of file): `Ok(true)`; or
/// `Ok(false)` after `limit`. The worker's exit ends the wait with
/// `Failure::Died` even when the pipe stays open, because a process the task
/// forked without exec holds its write end.
pub(super) fn wait_for_reply(
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

/// Checks that `body` is the result of job `seq`; returns its status, run
/// time and the payload's range within `body`.
pub(super) fn check(body: &[u8], seq: u64) -> Result<(Status, u64, Range<usize>), Failure> {
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

#[cfg(test)]
mod tests {
    use super::EarlyRead;

    /// Which of `calls` calls read early, when every early read finds what
    /// `found` says for it (by the call's number).
    fn reads(calls: usize, found: impl Fn(usize) -> bool) -> Vec<usize> {
        let mut early = EarlyRead::new();
        let mut read = Vec::new();
        for call in 0..calls {
            let _ = early.try_read(|| {
                read.push(call);
                Ok::<_, ()>(found(call).then_some(()))
            });
        }
        read
    }

    #[test]
    fn repeated_misses_back_off_up_to_sixteen_calls() {
        assert_eq!(
            reads(60, |_| false),
            [0, 2, 6, 14, 30, 46],
            "skips 1, 3, 7, then 15 calls"
        );
    }

    #[test]
    fn a_lone_miss_skips_one_call_and_a_hit_resets_the_backoff() {
        // Call 3 misses; 4 waits; 5 reads and finds the reply again.
        let read = reads(10, |call| call != 3);
        assert_eq!(read, [0, 1, 2, 3, 5, 6, 7, 8, 9]);
        // Two misses in a row, then hits: the second costs three calls.
        let read = reads(10, |call| call != 0 && call != 2);
        assert_eq!(read, [0, 2, 6, 7, 8, 9]);
    }
}
