//! The async direct lane: [`spawn`](crate::ProcessPool::spawn) (and
//! [`apply`](crate::ProcessPool::apply)) called inside a tokio runtime borrows
//! an idle worker the way `apply_blocking` does (see [`super::direct`]),
//! writes the job itself, and its [`Task`](crate::Task) reads the reply when
//! the caller's reactor says it is there: two thread crossings, like a bare
//! pipe ping-pong, instead of four through the supervisor.
//!
//! The outcome is the queue's. Dropping or aborting the task hands the lane
//! back with [`Failure::Cancelled`], and the supervisor kills and replaces
//! the worker; a crash or a protocol error is handed back too and settled by
//! the supervisor; `terminate` kills the worker, which ends the wait.
//!
//! The wait needs the caller's runtime to keep running its reactor. Where it
//! cannot be relied on (the task is detached, or polled away from the
//! current-thread runtime it was spawned on, or inside a blocking
//! `futures::executor::block_on` that keeps the runtime's thread from its
//! reactor, or that runtime shut down), the rest of the call moves to a
//! helper thread that finishes it with blocking reads. A task that is not
//! polled again at all once its reply is in (waited for in `block_on`
//! through a combinator that polls only what was woken) is finished there
//! too, by its supervisor's watch (see [`super::unpolled`]). A runtime built
//! without its I/O driver, or a spawn from inside `block_on`, never takes
//! this lane.

use std::any::Any;
use std::cell::Cell;
use std::future::Future;
use std::ops::Range;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::runtime::{Handle, RuntimeFlavor};

use super::ctx::{PoolCtx, STALLED_FRAME};
use super::direct::{self, Borrow, EarlyRead, WorkerFds};
use super::job::Job;
use super::lane::{Failure, Handback, Lane, Loan, Takeover};
use crate::panic_info::catch_quietly;
use crate::stats::Counters;
use crate::task::Driver;
use crate::wire;

thread_local! {
    /// The last runtime seen without an I/O driver (its id), so that its
    /// calls go to the queue without asking tokio again.
    static NO_IO: Cell<Option<tokio::runtime::Id>> = const { Cell::new(None) };
    /// A reply buffer left by a finished call, for the next call started on
    /// this thread (a fresh one per call costs an allocation of a page).
    static SPARE_REPLY: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Replies larger than this leave their buffer to be freed, not kept.
const KEEP_REPLY_BUFFER: usize = 64 * 1024;

/// The runtime whose reactor `job` would wait on, if it may take the lane:
/// a small job, spawned inside a runtime with I/O, not inside a blocking
/// executor, and with nothing queued ahead of it.
fn lane_runtime(ctx: &PoolCtx, job: &Job) -> Option<Handle> {
    // The checks that read only this thread's state come first: outside a
    // runtime a spawn must not touch the queue's cache lines, which the
    // supervisor writes with every job it takes.
    if ctx.lanes.is_empty() || !job.frame.is_small() || inside_blocking_executor() {
        return None;
    }
    let origin = Handle::try_current().ok()?;
    if NO_IO.get() == Some(origin.id()) || !ctx.queue.is_empty() {
        return None;
    }
    Some(origin)
}

/// Starts `job` on an idle worker from the caller's runtime, if there is one,
/// a worker is free and no task is waiting in the queue. `Ok(Some)`: the
/// driver that finishes the call (poll it with the task); `Ok(None)`: the job
/// was handed to the supervisor, which settles it; `Err` gives the job back
/// untouched.
pub(crate) fn start(ctx: &Arc<PoolCtx>, mut job: Job) -> Result<Option<Arc<dyn Driver>>, Job> {
    let Some(origin) = lane_runtime(ctx, &job) else {
        return Err(job);
    };
    let Some(idx) = direct::borrow_any(&ctx.lanes) else {
        return Err(job);
    };
    let mut borrow = Borrow::new(ctx.clone(), idx);
    let loan = borrow.lane().loan();
    let Some(watch) = Watch::for_loan(borrow.lane(), origin.id(), &loan) else {
        NO_IO.set(Some(origin.id()));
        borrow.end(true);
        return Err(job);
    };
    if !job.slot.try_start(idx) {
        borrow.end(true);
        return Err(job); // cancelled: the queue skips it
    }
    wire::set_job_seq(job.frame.bytes_mut(), loan.seq, wire::Route::Reply);
    Counters::bump(&ctx.counters.running);
    let exchange = Exchange {
        borrow,
        job,
        seq: loan.seq,
        pid: loan.pid,
        reply_fd: loan.reply_fd,
        pid_fd: loan.pid_fd,
        // (Gone when called from a thread-local's destructor.)
        buf: SPARE_REPLY.try_with(Cell::take).unwrap_or_default(),
        polled: false,
    };
    // SAFETY: the supervisor keeps the job pipe open while the lane is lent,
    // and it is lent to `exchange` until that ends.
    let job_fd = unsafe { BorrowedFd::borrow_raw(loan.job_fd) };
    if crate::pipe_io::write_all(job_fd, exchange.job.frame.bytes()).is_err() {
        drop(watch);
        exchange.conclude(Err(Failure::Died), None);
        return Ok(None);
    }
    let call = Arc::new(Call {
        inner: Mutex::new(Inner {
            exchange: Some(exchange),
            watch: Some(watch),
            stall: None,
        }),
        origin,
    });
    ctx.lanes[idx].set_takeover(call.clone());
    ctx.lanes[idx].want_unpolled_watch();
    Ok(Some(call))
}

/// The worker's reply pipe and pidfd, registered with the caller's reactor.
/// The descriptors are our own duplicates, so a registration can outlive the
/// call: it is kept in the lane for the next call from the same runtime,
/// which saves four `epoll_ctl` calls per call, and deregistering it can never
/// touch a file the numbers name later. The supervisor drops a kept one when
/// its worker's service ends (see [`forget`]).
struct Watch {
    runtime: tokio::runtime::Id,
    reply: AsyncFd<OwnedFd>,
    exited: Option<AsyncFd<OwnedFd>>,
    /// Whether this worker's replies are in at a call's first poll.
    early_read: EarlyRead,
}

/// Drops the registration kept in `lane` (its worker is going away).
pub(crate) fn forget(lane: &Lane) {
    drop(lane.unpark());
}

impl Watch {
    /// The lane's kept registration if it is for this runtime, else a new
    /// one. `None` when the current runtime has no I/O driver (tokio panics
    /// then, which is the only way it tells) or registration fails.
    fn for_loan(lane: &Lane, runtime: tokio::runtime::Id, loan: &Loan) -> Option<Box<Watch>> {
        let kept = lane.unpark().and_then(|kept| kept.downcast::<Watch>().ok());
        if let Some(kept) = kept.filter(|w| w.runtime == runtime) {
            return Some(kept);
        }
        // SAFETY: the supervisor keeps these descriptors open while the lane
        // is lent, and the caller holds the lane.
        let borrowed = |fd| unsafe { BorrowedFd::borrow_raw(fd) };
        let own = |fd| rustix::io::fcntl_dupfd_cloexec(borrowed(fd), 0).ok();
        // SAFETY: an `OwnedFd` is a valid open descriptor that keeps naming
        // the same file until the `AsyncFd` that owns it drops.
        let watch = |fd| unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.ok();
        let reply = catch_quietly(|| watch(own(loan.reply_fd)?)).flatten()?;
        let exited = match loan.pid_fd {
            -1 => None,
            fd => Some(watch(own(fd)?)?),
        };
        Some(Box::new(Watch {
            runtime,
            reply,
            exited,
            early_read: EarlyRead::new(),
        }))
    }
}

/// A call on the lane, from the write of its job to its result.
struct Exchange {
    borrow: Borrow<Arc<PoolCtx>>,
    job: Job,
    seq: u64,
    pid: u32,
    reply_fd: RawFd,
    pid_fd: RawFd,
    buf: Vec<u8>,
    /// Whether the call's task was polled yet (see [`Inner::early_read`]).
    polled: bool,
}

impl Exchange {
    /// Reads what the reply pipe has (see [`direct::read_reply`]).
    fn read(&mut self) -> Result<Option<Range<usize>>, Failure> {
        // SAFETY: the supervisor keeps the reply pipe open while the lane is
        // lent, and it is lent to `self` until it concludes.
        let fd = unsafe { BorrowedFd::borrow_raw(self.reply_fd) };
        direct::read_reply(fd, &mut self.buf, self.borrow.ctx.config.max_frame)
    }

    /// Ends the call with the reply frame's body in `buf`, or a failure;
    /// gives the lane back, keeping `watch` there for the next call.
    fn conclude(self, reply: Result<Range<usize>, Failure>, watch: Option<Box<Watch>>) {
        self.borrow
            .lane()
            .end_call(watch.map(|w| w as Box<dyn Any + Send>));
        let Exchange {
            borrow,
            job,
            seq,
            pid,
            mut buf,
            ..
        } = self;
        let checked = reply.and_then(|body| {
            let (status, nanos, payload) = direct::check(&buf[body.clone()], seq)?;
            Ok((
                status,
                nanos,
                body.start + payload.start..body.start + payload.end,
            ))
        });
        match checked {
            Ok((status, nanos, payload)) => {
                direct::settle(borrow, job, (seq, pid), (status, nanos), &buf[payload]);
            }
            Err(failure) => direct::give_up(borrow, Handback { seq, job, failure }),
        }
        if buf.capacity() <= KEEP_REPLY_BUFFER {
            buf.clear();
            let _ = SPARE_REPLY.try_with(|spare| spare.set(buf));
        }
    }

    /// Finishes the call on a helper thread with blocking reads.
    fn finish_elsewhere(self) {
        let cell = Arc::new(Mutex::new(Some(self)));
        let theirs = cell.clone();
        let spawned = std::thread::Builder::new()
            .name("procpool-direct".into())
            .spawn(move || {
                if let Some(exchange) = theirs.lock().ok().and_then(|mut e| e.take()) {
                    exchange.finish_blocking();
                }
            });
        if let Err(e) = spawned {
            if let Some(exchange) = cell.lock().ok().and_then(|mut e| e.take()) {
                let why = format!("no thread to finish a direct call on: {e}");
                exchange.conclude(Err(Failure::Protocol(why)), None);
            }
        }
    }

    /// Waits for the reply with blocking reads, looking at the task's
    /// cancellation now and then.
    fn finish_blocking(mut self) {
        const LOOK_EVERY: Duration = Duration::from_millis(20);
        let mut progress = (self.buf.len(), Instant::now());
        let outcome = loop {
            if self.job.slot.is_cancelled() {
                break Err(Failure::Cancelled);
            }
            // SAFETY: as in `reply` (the lane stays lent until `conclude`).
            let fds = unsafe {
                WorkerFds {
                    job: BorrowedFd::borrow_raw(self.reply_fd), // unused here
                    reply: BorrowedFd::borrow_raw(self.reply_fd),
                    exited: (self.pid_fd >= 0).then(|| BorrowedFd::borrow_raw(self.pid_fd)),
                }
            };
            match self.read() {
                Ok(Some(body)) => break Ok(body),
                Err(failure) => break Err(failure),
                Ok(None) => {}
            }
            if self.buf.len() != progress.0 {
                progress = (self.buf.len(), Instant::now());
            } else if !self.buf.is_empty() && progress.1.elapsed() > STALLED_FRAME {
                break Err(direct::stalled(self.buf.len()));
            }
            if let Err(failure) = direct::wait_for_reply(&fds, Some(LOOK_EVERY)) {
                break Err(failure);
            }
        };
        self.conclude(outcome, None);
    }
}

/// A call in progress, shared by its task (it is the task's [`Driver`]: it
/// reads the reply on the caller's reactor) and the lane (whose supervisor
/// may [take it over](Takeover)).
struct Call {
    inner: Mutex<Inner>,
    origin: Handle,
}

struct Inner {
    /// `None` once the call ended (or moved to a helper thread).
    exchange: Option<Exchange>,
    /// Kept in the lane for the next call once this one is answered (boxed
    /// as the lane keeps it, so keeping it allocates nothing).
    watch: Option<Box<Watch>>,
    /// While part of a frame is in: when it counts as stalled, and how much
    /// was in when the timer started.
    stall: Option<(Pin<Box<tokio::time::Sleep>>, usize)>,
}

/// What waiting on the reactor gave.
enum Step {
    Reply(Result<Range<usize>, Failure>),
    /// The reactor cannot carry the wait: finish it on a helper thread.
    Move,
}

impl Driver for Call {
    fn poll_drive(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.lock();
        let Some(exchange) = &inner.exchange else {
            return Poll::Ready(()); // ended, or taken over
        };
        let step = if exchange.job.slot.is_cancelled() {
            Step::Reply(Err(Failure::Cancelled))
        } else if let Some(step) = inner.early_read() {
            step // (no reactor needed, wherever this runs)
        } else if !self.carried_here() {
            Step::Move
        } else {
            match inner.poll_reply(cx, &self.origin) {
                Poll::Ready(step) => step,
                Poll::Pending => return Poll::Pending,
            }
        };
        inner.end(step);
        Poll::Ready(())
    }

    fn release(&self) {
        // A dropped task was cancelled just before (`Task`'s own drop); a
        // detached one still wants its result.
        self.take_over(false);
    }
}

impl Takeover for Call {
    fn take_over(&self, cancelled_only: bool) {
        let mut inner = self.lock();
        let Some(exchange) = &inner.exchange else {
            return;
        };
        if exchange.job.slot.is_cancelled() {
            inner.end(Step::Reply(Err(Failure::Cancelled)));
        } else if !cancelled_only {
            inner.end(Step::Move);
        }
    }
}

impl Call {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the reactor the descriptors are registered with runs while
    /// this task waits: a multi-thread runtime's always does, a
    /// current-thread runtime's only while the task is polled inside it.
    fn carried_here(&self) -> bool {
        if inside_blocking_executor() {
            return false;
        }
        match self.origin.runtime_flavor() {
            RuntimeFlavor::CurrentThread => {
                Handle::try_current().is_ok_and(|h| h.id() == self.origin.id())
            }
            _ => true,
        }
    }
}

/// Whether this thread is blocked in a `futures` executor (`block_on`, which
/// `apply_blocking` and `map_blocking` use too): it may sit inside a tokio
/// runtime, which then cannot run its reactor until that call returns, so
/// the reactor must not be what the call waits for.
fn inside_blocking_executor() -> bool {
    futures::executor::enter().is_err()
}

impl Inner {
    /// At a call's first poll, reads the reply pipe before asking the
    /// reactor, while that keeps finding the reply in (see [`EarlyRead`]):
    /// that saves a turn of the reactor (an `epoll_wait`). `None`: wait for
    /// the reactor.
    fn early_read(&mut self) -> Option<Step> {
        let (Some(exchange), Some(watch)) = (self.exchange.as_mut(), self.watch.as_mut()) else {
            return None;
        };
        if std::mem::replace(&mut exchange.polled, true) {
            return None;
        }
        watch
            .early_read
            .try_read(|| exchange.read())
            .map(Step::Reply)
    }

    /// Reads what the reply pipe has; `Pending` (with the waker registered)
    /// until the whole frame is in, or the worker exited.
    fn poll_reply(&mut self, cx: &mut Context<'_>, origin: &Handle) -> Poll<Step> {
        let (Some(exchange), Some(watch)) = (self.exchange.as_mut(), self.watch.as_mut()) else {
            return Poll::Ready(Step::Move);
        };
        if let Some(exited) = &watch.exited {
            match exited.poll_read_ready(cx) {
                // What it wrote before it died still counts.
                Poll::Ready(Ok(_)) => {
                    let read = exchange.read();
                    return Poll::Ready(Step::Reply(read.and_then(|b| b.ok_or(Failure::Died))));
                }
                Poll::Ready(Err(_)) => return Poll::Ready(Step::Move),
                Poll::Pending => {}
            }
        }
        loop {
            let mut ready = match watch.reply.poll_read_ready(cx) {
                Poll::Ready(Ok(ready)) => ready,
                Poll::Ready(Err(_)) => return Poll::Ready(Step::Move),
                Poll::Pending => break,
            };
            match exchange.read() {
                Ok(Some(body)) => {
                    // The pipe carries nothing but this reply: it is empty
                    // now, and the next call starts from "not ready".
                    ready.clear_ready();
                    return Poll::Ready(Step::Reply(Ok(body)));
                }
                Err(failure) => return Poll::Ready(Step::Reply(Err(failure))),
                Ok(None) => ready.clear_ready(),
            }
        }
        let len = exchange.buf.len();
        self.poll_stall(cx, origin, len)
    }

    /// Part of a frame may not sit unfinished for long (as on the other
    /// paths); without a timer in the runtime there is no limit.
    fn poll_stall(&mut self, cx: &mut Context<'_>, origin: &Handle, len: usize) -> Poll<Step> {
        if len == 0 {
            self.stall = None;
            return Poll::Pending;
        }
        if self.stall.as_ref().is_none_or(|(_, at)| *at != len) {
            let timer = catch_quietly(|| {
                let _in_runtime = origin.enter();
                Box::pin(tokio::time::sleep(STALLED_FRAME))
            });
            self.stall = timer.map(|t| (t, len));
        }
        let Some((timer, _)) = self.stall.as_mut() else {
            return Poll::Pending;
        };
        // (Polling a timer of a runtime that shut down panics.)
        match catch_quietly(|| timer.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Step::Reply(Err(direct::stalled(len)))),
            Some(Poll::Pending) => Poll::Pending,
            None => Poll::Ready(Step::Move),
        }
    }

    /// Ends the call (or moves it to a helper thread).
    fn end(&mut self, step: Step) {
        let watch = self.watch.take();
        self.stall = None;
        let Some(exchange) = self.exchange.take() else {
            return;
        };
        match step {
            // An answered worker serves on: its registration is kept for the
            // next call.
            Step::Reply(reply) => {
                let keep = watch.filter(|_| reply.is_ok());
                exchange.conclude(reply, keep);
            }
            Step::Move => exchange.finish_elsewhere(),
        }
    }
}
