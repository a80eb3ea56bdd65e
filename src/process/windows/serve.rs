//! Windows: the event loop of one live worker. Simpler than the Unix one: one
//! job in flight at a time (no pipelining, so no cancel frames: a cancelled
//! job is always the running one, and its worker is killed), and no lending
//! to the direct lane. Each event (a job to take, its frame written, a result
//! read, a cancellation, termination, the worker's exit, an idle timeout) is
//! one branch of a single `select!`; how the service ends is the shared
//! [`super::ending`].

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering;

use futures::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::ctx::{PoolCtx, STALLED_FRAME};
use super::ending::{Ended, Retire, Stop};
use super::job::Job;
use super::worker::{exit_of, rss_bytes, sleep_or_never, InFlight, Worker};
use crate::stats::Counters;
use crate::wire;

/// What the serve loop keeps about one worker's service.
struct Service<'a> {
    ctx: &'a PoolCtx,
    idx: usize,
    /// The job sent and not yet answered (at most one).
    inflight: VecDeque<InFlight>,
    /// The frame being written, and how much of it is written.
    out: Vec<u8>,
    written: usize,
    queue_open: bool,
    /// Jobs sent to this worker (recycling counts them).
    sent: u64,
    retiring: Option<Retire>,
    /// Whether this worker is counted in `ctx.idle`.
    was_idle: bool,
    next_seq: u64,
}

impl Worker {
    /// Feeds the worker until it dies, is killed, is retired, or the pool
    /// closes. A job carried over from a lost worker is sent first.
    pub(crate) async fn serve(
        mut self,
        ctx: &PoolCtx,
        idx: usize,
        carried: &mut VecDeque<Job>,
    ) -> Ended {
        let mut service = Service {
            ctx,
            idx,
            inflight: VecDeque::new(),
            out: Vec::new(),
            written: 0,
            queue_open: true,
            sent: 0,
            retiring: None,
            was_idle: false,
            next_seq: self.next_seq,
        };
        let stop = loop {
            if service.inflight.is_empty() {
                // (At most one job is ever carried: one is ever in flight.)
                while let Some(job) = carried.pop_front() {
                    if !job.slot.is_cancelled() {
                        service.send(job);
                        break;
                    }
                }
            }
            if let Some(stop) = service.turn(&mut self).await {
                break stop;
            }
        };
        let inflight = service.wind_down();
        self.end(ctx, idx, stop, inflight, carried).await
    }
}

impl Service<'_> {
    /// Sends `job` (the worker is idle).
    fn send(&mut self, mut job: Job) {
        let seq = self.next_seq;
        self.next_seq += 1;
        wire::set_job_seq(job.frame.bytes_mut(), seq, wire::Route::Pipe);
        self.out.clear();
        self.out.extend_from_slice(job.frame.bytes());
        self.written = 0;
        Counters::bump(&self.ctx.counters.running);
        self.inflight.push_back(InFlight {
            seq,
            job,
            cancel_sent: false,
        });
        self.sent += 1;
    }

    /// Keeps the pool's count of idle workers, marks a worker that has run
    /// its `max_tasks` for retirement, and returns why serving ends if the
    /// worker is `idle` and the queue is closed or the worker retiring.
    fn done_when_idle(&mut self, idle: bool) -> Option<Stop> {
        self.count_idle(idle);
        let max_tasks = self.ctx.config.max_tasks;
        if self.retiring.is_none() && max_tasks.is_some_and(|m| self.sent >= m) {
            self.retiring = Some(Retire::MaxTasks);
        }
        if !idle {
            None
        } else if !self.queue_open {
            Some(Stop::Drained)
        } else {
            self.retiring.map(Stop::Retire)
        }
    }

    /// One turn of the loop: wait for one event and handle it. `Some` when
    /// the service is over.
    async fn turn(&mut self, worker: &mut Worker) -> Option<Stop> {
        let idle = self.inflight.is_empty();
        if let Some(stop) = self.done_when_idle(idle) {
            return Some(stop);
        }
        let ctx = self.ctx;
        let cfg = &ctx.config;
        let writing = self.written < self.out.len();
        let take = idle && self.queue_open && self.retiring.is_none();
        let idle_timer = cfg.idle_timeout.filter(|_| idle && ctx.elastic());
        // Part of a frame with nothing more arriving: a healthy worker
        // writes a frame in one go, so its stream is out of step.
        let stall_timer = (!worker.inbuf.is_empty()).then_some(STALLED_FRAME);
        let want = wire::missing_bytes(&worker.inbuf)
            .filter(|&n| n as u64 <= cfg.max_frame)
            .unwrap_or(0)
            .max(64 * 1024);
        worker.inbuf.reserve(want);

        tokio::select! {
            biased;
            _ = ctx.stop.recv() => Some(Stop::Terminated),
            _ = ctx.cancels[self.idx].notified() => self.on_cancel(worker),
            read = worker.rx.read_buf(&mut worker.inbuf) => self.on_read(worker, read),
            // tokio's pipe writer on Windows copies the bytes and writes them
            // from its blocking pool: a returned count is on its way (no
            // flush needed, and nothing is lost if another branch wins).
            written = worker.tx.write(&self.out[self.written..]), if writing => {
                match written {
                    Ok(n) => {
                        self.written += n;
                        None
                    }
                    Err(_) => Some(Stop::Died),
                }
            }
            job = ctx.queue.pop(), if take => {
                self.on_job(job);
                None
            }
            _ = sleep_or_never(stall_timer) => Some(Stop::Protocol(format!(
                "an incomplete frame ({} bytes) made no progress for {STALLED_FRAME:?}",
                worker.inbuf.len()
            ))),
            // After the result pipe: what the worker wrote before dying is
            // read first (and the Died path reads the rest).
            _ = exit_of(&mut worker.process) => Some(Stop::Died),
            _ = sleep_or_never(idle_timer) => {
                if ctx.leave_live_above_min() {
                    self.retiring = Some(Retire::Idle);
                }
                None
            }
        }
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

    /// A task of this slot was cancelled: if it is the one in flight (and its
    /// result is not already here), the worker is killed.
    fn on_cancel(&mut self, worker: &mut Worker) -> Option<Stop> {
        let cancelled = |inflight: &VecDeque<InFlight>| {
            inflight.front().is_some_and(|f| f.job.slot.is_cancelled())
        };
        if !cancelled(&self.inflight) {
            return None;
        }
        // The worker may have just finished: take a result already read.
        if let Some(read) = worker.rx.read_buf(&mut worker.inbuf).now_or_never() {
            if let Some(stop) = self.on_read(worker, read) {
                return Some(stop);
            }
        }
        cancelled(&self.inflight).then_some(Stop::Cancelled)
    }

    /// The result pipe gave `read` bytes: settle the result, and recycle a
    /// worker grown too large.
    fn on_read(&mut self, worker: &mut Worker, read: io::Result<usize>) -> Option<Stop> {
        match read {
            Ok(0) | Err(_) => return Some(Stop::Died),
            Ok(_) => {}
        }
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
        if self.retiring.is_none() {
            if let Some(limit) = self.ctx.config.max_memory {
                if rss_bytes(worker.pid).is_some_and(|rss| rss > limit) {
                    self.retiring = Some(Retire::MaxMemory);
                }
            }
        }
        None
    }

    /// A job came (or the queue closed): send it.
    fn on_job(&mut self, job: Option<Job>) {
        let Some(job) = job else {
            self.queue_open = false;
            return;
        };
        if job.slot.try_start(self.idx) {
            self.send(job);
        } else {
            Counters::bump(&self.ctx.counters.cancelled);
        }
    }

    /// The loop is over: leave the idle count and hand over what is still in
    /// flight.
    fn wind_down(self) -> VecDeque<InFlight> {
        let ctx = self.ctx;
        if self.was_idle {
            ctx.idle.fetch_sub(1, Ordering::AcqRel);
        }
        (ctx.counters.running).fetch_sub(self.inflight.len() as u64, Ordering::Relaxed);
        self.inflight
    }
}
