//! The event loop of one live worker: [`Worker::serve`] sends it jobs from
//! the queue (pipelined while the backlog is deep), reads its results, passes
//! on cancellations, and lends it to the direct lane while it is idle (see
//! [`super::lend`]). Every event (a job to send, a result to read, a
//! cancellation, termination, the worker dying, an idle timeout) is one
//! branch of a single `select!`; how the service ends is [`super::ending`].

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering;

use tokio::io::AsyncWriteExt;

use super::async_lane;
use super::ctx::{PoolCtx, STALLED_FRAME};
use super::ending::{Ended, Retire, Stop};
use super::job::Job;
use super::lane::Failure;
use super::lend::Lent;
use super::outbox::Outbox;
use super::worker::{exit_of, rss_bytes, sleep_or_never, InFlight, Worker};
use crate::queue::Queue;
use crate::region::Region;
use crate::stats::Counters;
use crate::wire;

/// What the serve loop keeps about one worker's service.
struct Service<'a> {
    ctx: &'a PoolCtx,
    idx: usize,
    /// Sent and not yet answered, oldest first.
    inflight: VecDeque<InFlight>,
    out: Outbox,
    queue_open: bool,
    /// Jobs sent to this worker (recycling counts them).
    sent: u64,
    retiring: Option<Retire>,
    /// Whether this worker is counted in `ctx.idle`.
    was_idle: bool,
    next_seq: u64,
    /// A job taken from the queue while the worker was lent out.
    pending: Option<Job>,
    /// Whether the worker may be lent to the direct lane when idle.
    lendable: bool,
    /// Set right after the result pipe woke the lend: the loop must read it
    /// before lending again.
    skip_lend: bool,
    /// Where the queue's jobs answer: the result ring, if the worker has one.
    route: wire::Route,
    /// The most jobs the worker may hold unanswered (its ring's slots).
    max_held: usize,
    /// Where large job frames go (see [`crate::region`]), if the worker has
    /// regions.
    job_region: Option<Region>,
    /// The last job sent through the job region: it is busy while that job
    /// is in flight.
    region_seq: Option<u64>,
}

impl Worker {
    /// Feeds the worker until it dies, is killed, is retired, or the pool
    /// closes. Jobs that were sent but never started are left in `carried` for
    /// the next worker.
    pub(crate) async fn serve(
        mut self,
        ctx: &PoolCtx,
        idx: usize,
        carried: &mut VecDeque<Job>,
    ) -> Ended {
        let mut service = Service::new(ctx, idx, &mut self);
        for job in carried.drain(..) {
            if !job.slot.is_cancelled() {
                service.send(job);
            }
        }
        let stop = loop {
            if let Some(stop) = service.turn(&mut self).await {
                break stop;
            }
        };
        let inflight = service.wind_down(carried);
        self.end(ctx, idx, stop, inflight, carried).await
    }
}

impl<'a> Service<'a> {
    fn new(ctx: &'a PoolCtx, idx: usize, worker: &mut Worker) -> Self {
        Service {
            ctx,
            idx,
            inflight: VecDeque::new(),
            out: Outbox::default(),
            queue_open: true,
            sent: 0,
            retiring: None,
            was_idle: false,
            next_seq: worker.next_seq,
            pending: None,
            lendable: worker.replies.is_some() && ctx.config.max_memory.is_none(),
            skip_lend: false,
            route: match worker.ring {
                Some(_) => wire::Route::Ring,
                None => wire::Route::Pipe,
            },
            max_held: worker
                .ring
                .as_ref()
                .map_or(usize::MAX, |r| r.slots() as usize),
            job_region: worker.job_region.take(),
            region_seq: None,
        }
    }

    /// Sends `job` (queued behind what is already being written).
    fn send(&mut self, mut job: Job) {
        let seq = self.next_seq;
        self.next_seq += 1;
        if !self.send_in_region(&job, seq) {
            wire::set_job_seq(job.frame.bytes_mut(), seq, self.route);
            self.out.push_frame(&job.frame);
        }
        Counters::bump(&self.ctx.counters.running);
        let sent_idle = self.inflight.is_empty().then(std::time::Instant::now);
        self.inflight.push_back(InFlight {
            seq,
            job,
            cancel_sent: false,
            sent_idle,
        });
        self.sent += 1;
    }

    /// Puts a large job's frame in the worker's job region and queues the
    /// notice; `false` when the frame must take the pipe: no region, a frame
    /// too small to gain from one, or a region still holding a job that has
    /// not left the worker.
    fn send_in_region(&mut self, job: &Job, seq: u64) -> bool {
        let Some(region) = &mut self.job_region else {
            return false;
        };
        let gone = |s: u64| self.inflight.front().is_none_or(|f| f.seq > s);
        if !self.region_seq.is_none_or(gone) {
            return false;
        }
        let frame = job.frame.bytes();
        if frame.len() < crate::region::USE_FROM {
            region.note_unused();
            return false;
        }
        match region.put(frame) {
            Ok(copy) => wire::set_job_seq(copy, seq, self.route),
            Err(_) => return false,
        }
        wire::encode_job_in_region(self.out.small_buffer(), frame.len() as u64);
        self.region_seq = Some(seq);
        true
    }

    /// One turn of the loop: lend the idle worker out, or wait for one event.
    /// `Some` when the service is over.
    async fn turn(&mut self, worker: &mut Worker) -> Option<Stop> {
        let writing = !self.out.is_empty();
        let idle = self.inflight.is_empty();
        self.count_idle(idle);
        let ctx = self.ctx;
        let cfg = &ctx.config;
        if self.retiring.is_none() && cfg.max_tasks.is_some_and(|m| self.sent >= m) {
            self.retiring = Some(Retire::MaxTasks);
        }
        if idle && !writing {
            if !self.queue_open && self.pending.is_none() {
                return Some(Stop::Drained);
            }
            // (A pending job goes to the slot's next worker.)
            if let Some(why) = self.retiring {
                return Some(Stop::Retire(why));
            }
        }
        if idle
            && !writing
            && self.pending.is_none()
            && self.lendable
            && !std::mem::take(&mut self.skip_lend)
        {
            return self.lend_out(worker).await;
        }
        self.wait_for_event(worker, idle, writing).await
    }

    /// Keeps `ctx.idle` counting this worker exactly while it is idle.
    fn count_idle(&mut self, idle: bool) {
        if idle != self.was_idle {
            if idle {
                self.ctx.idle.fetch_add(1, Ordering::AcqRel);
            } else {
                self.ctx.idle.fetch_sub(1, Ordering::AcqRel);
            }
            self.was_idle = idle;
        }
    }

    /// Lends the idle worker to the direct lane until the supervisor needs it
    /// back, then takes over what happened meanwhile.
    async fn lend_out(&mut self, worker: &mut Worker) -> Option<Stop> {
        let budget = (self.ctx.config.max_tasks).map_or(u64::MAX, |m| m - self.sent);
        let (lent, settled) = worker.lend(self.ctx, self.idx, self.next_seq, budget).await;
        self.next_seq = settled.next_seq;
        self.sent += settled.done;
        // The job region is free (the worker was idle): direct jobs count
        // as jobs without a large frame.
        if let Some(region) = &mut self.job_region {
            (0..settled.done).for_each(|_| region.note_unused());
        }
        // Before anything can end this worker's service: the job
        // must reach a worker whatever happens to this one.
        let lent = match lent {
            Lent::Job(job) => {
                self.pending = Some(job);
                Lent::GivenBack
            }
            other => other,
        };
        if let Some(back) = settled.handback {
            let back_cancelled = back.job.slot.is_cancelled();
            // Settled below like any job in flight (the borrower
            // counted it as running).
            self.inflight.push_back(InFlight {
                seq: back.seq,
                job: back.job,
                cancel_sent: false,
                sent_idle: None,
            });
            if !matches!(lent, Lent::Stop) {
                return Some(match back.failure {
                    // (Its task was aborted: the supervisor killed it.)
                    Failure::Died if back_cancelled => Stop::Cancelled,
                    Failure::Died => Stop::Died,
                    Failure::Cancelled => Stop::Cancelled,
                    Failure::Protocol(message) => Stop::Protocol(message),
                });
            }
        }
        self.after_lend(worker, lent)
    }

    /// Acts on why the lend ended.
    fn after_lend(&mut self, worker: &mut Worker, lent: Lent) -> Option<Stop> {
        match lent {
            Lent::Stop => return Some(Stop::Terminated),
            Lent::Exited => return Some(Stop::Died),
            Lent::QueueClosed => self.queue_open = false,
            // Readiness can be stale (tokio keeps it until a
            // read would block): look before giving up the lane.
            Lent::Readable => match worker.try_read() {
                Ok(0) => return Some(Stop::Died),
                Ok(_) => {
                    if let Err(e) = worker.take_results(self.ctx, &mut self.inflight) {
                        return Some(Stop::Protocol(e));
                    }
                    self.skip_lend = true; // part of a frame: the loop waits for the rest
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Some(Stop::Died),
            },
            Lent::IdleTimeout => self.idle_timed_out(),
            Lent::GivenBack | Lent::Job(_) => {}
        }
        None
    }

    /// Room to send another job now. Send ahead only while the backlog is
    /// deep (at least two waiting tasks per worker), so pipelining never
    /// leaves another worker idle or strands a burst of tasks behind a long
    /// one.
    fn room(&self, depth: usize) -> bool {
        let cfg = &self.ctx.config;
        cfg.max_tasks.is_none_or(|m| self.sent < m)
            && (self.inflight.is_empty()
                || (self.inflight.len() < depth.min(self.max_held)
                    && self.ctx.queue.len() >= 2 * cfg.workers))
    }

    /// Waits for the next event of a busy (or not lendable) worker and
    /// handles it.
    async fn wait_for_event(
        &mut self,
        worker: &mut Worker,
        idle: bool,
        writing: bool,
    ) -> Option<Stop> {
        let cfg = &self.ctx.config;
        let want = wire::missing_bytes(&worker.inbuf)
            .filter(|&n| n as u64 <= cfg.max_frame)
            .unwrap_or(0)
            .max(64 * 1024);
        crate::buffer::reserve(&mut worker.inbuf, want);
        // Results the worker published while this loop was busy come first;
        // otherwise it rings the doorbell for the next one (see `crate::ring`).
        if let Some(ring) = &worker.ring {
            if !ring.arm() {
                let before = ring.pending();
                let stop = self.after_results(worker);
                let stuck = worker.ring.as_ref().map(|r| r.pending()) == Some(before);
                if stop.is_some() || !stuck {
                    return stop;
                }
                // The next entry's frame is still in the pipe: read it (the
                // ring is not armed, and needs not be: the pipe has bytes).
            }
        }
        let event = self.next_event(worker, idle, writing).await;
        if let Some(ring) = &worker.ring {
            ring.disarm();
        }
        event
    }

    /// Waits for one event and handles it (the `select!` of
    /// [`wait_for_event`](Self::wait_for_event)).
    async fn next_event(&mut self, worker: &mut Worker, idle: bool, writing: bool) -> Option<Stop> {
        let ctx = self.ctx;
        let cfg = &ctx.config;
        let depth = ctx.depth();
        let take = (self.queue_open || self.pending.is_some())
            && self.retiring.is_none()
            && self.room(depth);
        let idle_timer = cfg.idle_timeout.filter(|_| idle && ctx.elastic());
        // Part of a frame with nothing more arriving: a healthy worker
        // writes a frame in one go, so its stream is out of step.
        let stall_timer = (!worker.inbuf.is_empty()).then_some(STALLED_FRAME);
        tokio::select! {
            biased;
            _ = ctx.stop.recv() => Some(Stop::Terminated),
            _ = ctx.cancels[self.idx].notified() => self.on_cancel(worker),
            // Readiness, then a read of its own: the read is marked in the
            // ring for the worker (see `Ring::pipe_has_foreign_bytes`).
            ready = worker.rx.readable() => match ready {
                Ok(()) => self.on_readable(worker),
                Err(_) => Some(Stop::Died),
            },
            written = worker.tx.write(self.out.front()), if writing => match written {
                Ok(n) => {
                    self.out.advance(n);
                    None
                }
                Err(_) => Some(Stop::Died),
            },
            job = next_job(&mut self.pending, &ctx.queue), if take => {
                self.on_job(job, depth);
                None
            }
            _ = sleep_or_never(stall_timer) => Some(Stop::Protocol(format!(
                "an incomplete frame ({} bytes) made no progress for {STALLED_FRAME:?}",
                worker.inbuf.len()
            ))),
            // After the result pipe: what the worker wrote before dying
            // is read first (and the Died path reads the rest).
            _ = exit_of(&worker.exited) => Some(Stop::Died),
            _ = sleep_or_never(idle_timer) => {
                self.idle_timed_out();
                None
            }
        }
    }

    /// A task of this slot was cancelled: kill the worker if it runs it, or
    /// tell the worker to skip it if it is only queued there.
    fn on_cancel(&mut self, worker: &mut Worker) -> Option<Stop> {
        let front_cancelled = |inflight: &VecDeque<InFlight>| {
            inflight.front().is_some_and(|f| f.job.slot.is_cancelled())
        };
        if front_cancelled(&self.inflight) {
            // The worker may have just finished that job and moved
            // on: take any result already here before killing, so
            // the kill lands on the cancelled job.
            if let Err(e) = worker.take_results(self.ctx, &mut self.inflight) {
                return Some(Stop::Protocol(e));
            }
            if front_cancelled(&self.inflight) {
                return Some(Stop::Cancelled);
            }
        }
        for entry in self.inflight.iter_mut().skip(1) {
            if !entry.cancel_sent && entry.job.slot.is_cancelled() {
                wire::encode_cancel(self.out.small_buffer(), entry.seq);
                entry.cancel_sent = true;
            }
        }
        None
    }

    /// The result pipe is readable: read it, settle the complete results.
    fn on_readable(&mut self, worker: &mut Worker) -> Option<Stop> {
        match worker.try_read() {
            Ok(0) => Some(Stop::Died),
            Ok(_) => self.after_results(worker),
            // (Readiness was stale: tokio now knows.)
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(_) => Some(Stop::Died),
        }
    }

    /// Settles the complete results (pipe and ring), and recycles a worker
    /// grown too large.
    fn after_results(&mut self, worker: &mut Worker) -> Option<Stop> {
        if let Err(e) = worker.take_results(self.ctx, &mut self.inflight) {
            return Some(Stop::Protocol(e));
        }
        if self
            .inflight
            .front()
            .is_some_and(|f| f.job.slot.is_cancelled())
        {
            return Some(Stop::Cancelled);
        }
        // (A remote worker's pid names no process here.)
        if self.retiring.is_none() && worker.host.is_none() {
            if let Some(limit) = self.ctx.config.max_memory {
                if rss_bytes(worker.pid).is_some_and(|rss| rss > limit) {
                    self.retiring = Some(Retire::MaxMemory);
                }
            }
        }
        None
    }

    /// A job came (or the queue closed): send it, and more while there is
    /// room.
    fn on_job(&mut self, job: Option<Job>, depth: usize) {
        let Some(job) = job else {
            self.queue_open = false;
            return;
        };
        let mut next = Some(job);
        while let Some(job) = next.take() {
            if job.slot.try_start(self.idx) {
                self.send(job);
            } else {
                Counters::bump(&self.ctx.counters.cancelled);
            }
            if !self.inflight.is_empty() && self.room(depth) {
                next = self.ctx.queue.try_pop();
            }
        }
    }

    /// The worker was idle for the idle timeout: retire it, unless the pool
    /// is down to its minimum.
    fn idle_timed_out(&mut self) {
        if self.ctx.leave_live_above_min() {
            self.retiring = Some(Retire::Idle);
        }
    }

    /// The loop is over: leave the idle count, pass a pending job to the
    /// slot's next worker, and hand over what is still in flight.
    fn wind_down(mut self, carried: &mut VecDeque<Job>) -> VecDeque<InFlight> {
        let ctx = self.ctx;
        // The lane is closed: no borrower can be using what it kept.
        async_lane::forget(&ctx.lanes[self.idx]);
        if self.was_idle {
            ctx.idle.fetch_sub(1, Ordering::AcqRel);
        }
        // Taken while the worker was lent, then the worker went away before
        // it could be sent: the slot's next worker runs it.
        if let Some(job) = self.pending.take() {
            if job.slot.try_start(self.idx) {
                carried.push_back(job);
            } else {
                Counters::bump(&ctx.counters.cancelled);
            }
        }
        (ctx.counters.running).fetch_sub(self.inflight.len() as u64, Ordering::Relaxed);
        self.inflight
    }
}

/// The job held back while the worker was lent, else the next queued one.
async fn next_job(pending: &mut Option<Job>, queue: &Queue<Job>) -> Option<Job> {
    match pending.take() {
        Some(job) => Some(job),
        None => queue.pop().await,
    }
}
