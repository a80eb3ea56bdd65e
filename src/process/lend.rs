//! The supervisor's side of the direct lane: while its worker is idle, a
//! slot lends it to `apply_blocking` callers and async `spawn`s (see
//! [`super::lane`]) and watches for whatever needs it back.

use std::sync::atomic::Ordering;

use super::ctx::PoolCtx;
use super::job::Job;
use super::lane::{Lane, Settled, TAKEOVER_AGAIN};
use super::unpolled::UnpolledWatch;
use super::worker::{exit_of, sleep_or_never, Worker};
use crate::queue::PushError;

/// Why a worker stopped being lent out.
pub(crate) enum Lent {
    /// The pool is terminating.
    Stop,
    /// A borrower gave the worker back for the supervisor to look at.
    GivenBack,
    /// The result pipe has something (or closed).
    Readable,
    /// A job came from the queue.
    Job(Job),
    /// The queue closed.
    QueueClosed,
    /// The worker was idle for the pool's idle timeout.
    IdleTimeout,
    /// The worker process exited.
    Exited,
}

impl Worker {
    /// Lends this idle worker to `apply_blocking` callers (see
    /// [`lane`](super::lane)) until something needs the supervisor: a queued
    /// job, the queue closing, the pool stopping, the result pipe stirring (an
    /// idle worker's death), the idle timeout, or a borrower giving the
    /// worker back. The lane is closed again, with no borrower, on return.
    pub(crate) async fn lend(
        &mut self,
        ctx: &PoolCtx,
        idx: usize,
        next_seq: u64,
        budget: u64,
    ) -> (Lent, Settled) {
        let lane = &ctx.lanes[idx];
        self.open_lane(lane, next_seq, budget);
        let lent = self.watch_lent(ctx, idx, lane).await;
        self.take_back(ctx, lane, lent).await
    }

    /// Opens `lane` on this worker's descriptors.
    fn open_lane(&self, lane: &Lane, next_seq: u64, budget: u64) {
        use std::os::fd::AsRawFd;
        let replies = self.replies.as_ref().expect("lending needs a reply pipe");
        let exited = self
            .exited
            .as_ref()
            .map_or(-1, |fd| fd.get_ref().as_raw_fd());
        lane.open(
            [self.tx.as_raw_fd(), replies.as_raw_fd(), exited],
            self.pid,
            next_seq,
            budget,
        );
    }

    /// Waits, while the worker is lent, for whatever needs it back.
    async fn watch_lent(&mut self, ctx: &PoolCtx, idx: usize, lane: &Lane) -> Lent {
        let idle_timer = ctx.config.idle_timeout.filter(|_| ctx.elastic());
        let mut listen = true;
        let mut unpolled = UnpolledWatch::new(lane);
        loop {
            let uses = lane.uses();
            tokio::select! {
                biased;
                _ = ctx.stop.recv() => return Lent::Stop,
                _ = lane.borrower_done() => {
                    if lane.is_closed() {
                        return Lent::GivenBack;
                    }
                    listen = true; // a watched borrow ended
                }
                _ = self.rx.readable() => return Lent::Readable,
                _ = exit_of(&self.exited) => return Lent::Exited,
                // An async borrower's task was aborted: its worker must die.
                _ = ctx.cancels[idx].notified() => lane.take_over(true),
                job = ctx.queue.pop(), if listen => match job {
                    None => return Lent::QueueClosed,
                    Some(job) if lane.try_close() => return Lent::Job(job),
                    Some(job) => match requeue(ctx, lane, job) {
                        Ok(watching) => {
                            listen = !watching;
                            lane.take_over(false);
                        }
                        Err(job) => return Lent::Job(job),
                    },
                },
                // Queued work waits for this borrow to end: an async one is
                // made to end without its task being polled.
                _ = tokio::time::sleep(TAKEOVER_AGAIN), if !listen => lane.take_over(false),
                // A reply no task reads (see `super::unpolled`).
                _ = lane.unpolled_watch_wanted(), if !unpolled.ticking => unpolled.start(),
                _ = unpolled.next_tick(), if unpolled.ticking => {
                    use std::os::fd::AsFd;
                    let replies = self.replies.as_ref().expect("lending needs a reply pipe");
                    unpolled.tick(lane, replies.as_fd());
                }
                _ = sleep_or_never(idle_timer) => {
                    // Idle means unused for the whole timeout, lent or not.
                    if lane.uses() == uses && !lane.is_lent() {
                        return Lent::IdleTimeout;
                    }
                }
            }
        }
    }

    /// Gets the worker back from the lane (killing it if the pool terminates
    /// while a borrower holds it) and settles what happened meanwhile.
    async fn take_back(&mut self, ctx: &PoolCtx, lane: &Lane, lent: Lent) -> (Lent, Settled) {
        if matches!(lent, Lent::Stop) && !lane.reclaim() {
            // Terminating: end the borrower's wait by ending the worker.
            if let Some(process) = self.process.as_mut() {
                process.kill();
            }
        }
        tokio::select! {
            biased;
            _ = lane.given_back() => {}
            // A borrower's task may run long: terminating must not wait.
            _ = ctx.stop.recv(), if !matches!(lent, Lent::Stop) => {
                if let Some(process) = self.process.as_mut() {
                    process.kill();
                }
                lane.given_back().await;
                return (Lent::Stop, lane.settle());
            }
        }
        (lent, lane.settle())
    }
}

/// A job came from the queue while the worker is lent out, maybe for long:
/// let a free worker have it instead of holding it here, and stop taking jobs
/// until the borrow ends (the borrower hands the worker back if any are still
/// waiting then). `Ok(true)` when the borrow is now watched; `Err` gives the
/// job back when the queue has no room for it.
fn requeue(ctx: &PoolCtx, lane: &Lane, job: Job) -> Result<bool, Job> {
    ctx.queue.try_push(job).map_err(PushError::into_inner)?;
    let watching = lane.watch();
    // A lent worker is not idle: an elastic pool may start one for this job.
    if ctx.elastic() && ctx.idle.load(Ordering::Acquire) == 0 {
        ctx.demand.notify_one();
    }
    Ok(watching)
}
