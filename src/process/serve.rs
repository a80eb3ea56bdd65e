//! The event loop of one live worker: [`Worker::serve`] sends it jobs from
//! the queue (pipelined while the backlog is deep), reads its results, passes
//! on cancellations, lends it to the direct lane while it is idle (see
//! [`super::lend`]), and decides how its service ends. Every event (a job to
//! send, a result to read, a cancellation, termination, the worker dying, an
//! idle timeout) is one branch of a single `select!`.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::ctx::{PoolCtx, STALLED_FRAME};
use super::job::Job;
use super::lane::Failure;
use super::lend::Lent;
use super::outbox::Outbox;
use super::worker::{describe, exit_of, reap, rss_bytes, sleep_or_never, InFlight, Worker};
use crate::stats::Counters;
use crate::wire;
use crate::TaskError;

/// How a worker's service ended.
pub(crate) enum Ended {
    /// The queue closed and drained; the worker exited cleanly.
    Closed,
    /// The pool was terminated.
    Stopped,
    /// The worker died or was killed; start another.
    Lost,
    /// Recycled (task count or memory); start another.
    Recycled,
    /// Retired after its idle timeout (and already removed from `live`).
    Idle,
}

/// Why the serve loop stopped.
enum Stop {
    Drained,
    Terminated,
    Retire(Retire),
    /// Killed because the task it was running was cancelled.
    Cancelled,
    Died,
    Protocol(String),
}

/// Why a healthy worker is let go.
#[derive(Debug, Clone, Copy)]
enum Retire {
    MaxTasks,
    MaxMemory,
    Idle,
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
        let cfg = &ctx.config;
        let max = cfg.max_frame;
        let mut inflight: VecDeque<InFlight> = VecDeque::new();
        let mut out = Outbox::default();
        let mut queue_open = true;
        let mut sent: u64 = 0;
        let mut retiring: Option<Retire> = None;
        let mut was_idle = false;
        let mut next_seq = self.next_seq;
        // A job taken from the queue while the worker was lent out.
        let mut pending: Option<Job> = None;
        // Lend the worker out whenever it is idle, except right after the
        // result pipe woke the lend: the loop below must read it first.
        let lendable = self.replies.is_some() && cfg.max_memory.is_none();
        let mut skip_lend = false;

        let send = |mut job: Job,
                    out: &mut Outbox,
                    inflight: &mut VecDeque<InFlight>,
                    next_seq: &mut u64| {
            let seq = *next_seq;
            *next_seq += 1;
            wire::set_job_seq(job.frame.bytes_mut(), seq, false);
            out.push_frame(&job.frame);
            Counters::bump(&ctx.counters.running);
            inflight.push_back(InFlight {
                seq,
                job,
                cancel_sent: false,
            });
        };
        for job in carried.drain(..) {
            if !job.slot.is_cancelled() {
                send(job, &mut out, &mut inflight, &mut next_seq);
                sent += 1;
            }
        }

        let stop = loop {
            let writing = !out.is_empty();
            let idle = inflight.is_empty();
            if idle != was_idle {
                if idle {
                    ctx.idle.fetch_add(1, Ordering::AcqRel);
                } else {
                    ctx.idle.fetch_sub(1, Ordering::AcqRel);
                }
                was_idle = idle;
            }
            if retiring.is_none() && cfg.max_tasks.is_some_and(|m| sent >= m) {
                retiring = Some(Retire::MaxTasks);
            }
            if idle && !writing {
                if !queue_open && pending.is_none() {
                    break Stop::Drained;
                }
                // (A pending job goes to the slot's next worker.)
                if let Some(why) = retiring {
                    break Stop::Retire(why);
                }
            }
            if idle && !writing && pending.is_none() && lendable && !std::mem::take(&mut skip_lend)
            {
                let budget = cfg.max_tasks.map_or(u64::MAX, |m| m - sent);
                let (lent, settled) = self.lend(ctx, idx, next_seq, budget).await;
                next_seq = settled.next_seq;
                sent += settled.done;
                // Before anything can end this worker's service: the job
                // must reach a worker whatever happens to this one.
                let lent = match lent {
                    Lent::Job(job) => {
                        pending = Some(job);
                        Lent::GivenBack
                    }
                    other => other,
                };
                if let Some(back) = settled.handback {
                    // Settled below like any job in flight (the borrower
                    // counted it as running).
                    inflight.push_back(InFlight {
                        seq: back.seq,
                        job: back.job,
                        cancel_sent: false,
                    });
                    if !matches!(lent, Lent::Stop) {
                        break match back.failure {
                            Failure::Died => Stop::Died,
                            Failure::Protocol(message) => Stop::Protocol(message),
                        };
                    }
                }
                match lent {
                    Lent::Stop => break Stop::Terminated,
                    Lent::Exited => break Stop::Died,
                    Lent::QueueClosed => queue_open = false,
                    // Readiness can be stale (tokio keeps it until a
                    // read would block): look before giving up the lane.
                    Lent::Readable => match self.try_read() {
                        Ok(0) => break Stop::Died,
                        Ok(_) => {
                            if let Err(e) = self.take_results(ctx, &mut inflight) {
                                break Stop::Protocol(e);
                            }
                            skip_lend = true; // part of a frame: the loop waits for the rest
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => break Stop::Died,
                    },
                    Lent::IdleTimeout => {
                        if ctx.leave_live_above_min() {
                            retiring = Some(Retire::Idle);
                        }
                    }
                    Lent::GivenBack | Lent::Job(_) => {}
                }
                continue;
            }
            // Send ahead only while the backlog is deep (at least two waiting
            // tasks per worker), so pipelining never leaves another worker idle
            // or strands a burst of tasks behind a long one.
            let depth = ctx.depth();
            let room = |inflight: &VecDeque<InFlight>, sent: u64| {
                cfg.max_tasks.is_none_or(|m| sent < m)
                    && (inflight.is_empty()
                        || (inflight.len() < depth && ctx.queue.len() >= 2 * cfg.workers))
            };
            let take =
                (queue_open || pending.is_some()) && retiring.is_none() && room(&inflight, sent);
            let idle_timer = cfg.idle_timeout.filter(|_| idle && ctx.elastic());
            // Part of a frame with nothing more arriving: a healthy worker
            // writes a frame in one go, so its stream is out of step.
            let stall_timer = (!self.inbuf.is_empty()).then_some(STALLED_FRAME);
            let want = wire::missing_bytes(&self.inbuf)
                .filter(|&n| n as u64 <= max)
                .unwrap_or(0)
                .max(64 * 1024);
            self.inbuf.reserve(want);

            tokio::select! {
                biased;
                _ = ctx.stop.recv() => break Stop::Terminated,
                _ = ctx.cancels[idx].notified() => {
                    if inflight.front().is_some_and(|f| f.job.slot.is_cancelled()) {
                        // The worker may have just finished that job and moved
                        // on: take any result already here before killing, so
                        // the kill lands on the cancelled job.
                        if let Err(e) = self.take_available(ctx, &mut inflight) {
                            break Stop::Protocol(e);
                        }
                        if inflight.front().is_some_and(|f| f.job.slot.is_cancelled()) {
                            break Stop::Cancelled;
                        }
                    }
                    for entry in inflight.iter_mut().skip(1) {
                        if !entry.cancel_sent && entry.job.slot.is_cancelled() {
                            wire::encode_cancel(out.small_buffer(), entry.seq);
                            entry.cancel_sent = true;
                        }
                    }
                }
                read = self.rx.read_buf(&mut self.inbuf) => match read {
                    Ok(0) | Err(_) => break Stop::Died,
                    Ok(_) => {
                        if let Err(e) = self.take_results(ctx, &mut inflight) {
                            break Stop::Protocol(e);
                        }
                        if inflight.front().is_some_and(|f| f.job.slot.is_cancelled()) {
                            break Stop::Cancelled;
                        }
                        if retiring.is_none() {
                            if let Some(limit) = cfg.max_memory {
                                if rss_bytes(self.pid).is_some_and(|rss| rss > limit) {
                                    retiring = Some(Retire::MaxMemory);
                                }
                            }
                        }
                    }
                },
                written = self.tx.write(out.front()), if writing => match written {
                    Ok(n) => out.advance(n),
                    Err(_) => break Stop::Died,
                },
                job = next_job(&mut pending, &ctx.queue), if take => match job {
                    Ok(job) => {
                        let mut next = Some(job);
                        while let Some(job) = next.take() {
                            if job.slot.try_start(idx) {
                                send(job, &mut out, &mut inflight, &mut next_seq);
                                sent += 1;
                            } else {
                                Counters::bump(&ctx.counters.cancelled);
                            }
                            if !inflight.is_empty() && room(&inflight, sent) {
                                next = ctx.queue.try_recv().ok();
                            }
                        }
                    }
                    Err(_) => queue_open = false,
                },
                _ = sleep_or_never(stall_timer) => {
                    break Stop::Protocol(format!(
                        "an incomplete frame ({} bytes) made no progress for {STALLED_FRAME:?}",
                        self.inbuf.len()
                    ));
                }
                // After the result pipe: what the worker wrote before dying
                // is read first (and the Died path below reads the rest).
                _ = exit_of(&self.exited) => break Stop::Died,
                _ = sleep_or_never(idle_timer) => {
                    if ctx.leave_live_above_min() {
                        retiring = Some(Retire::Idle);
                    }
                }
            }
        };
        if was_idle {
            ctx.idle.fetch_sub(1, Ordering::AcqRel);
        }
        // Taken while the worker was lent, then the worker went away before
        // it could be sent: the slot's next worker runs it.
        if let Some(job) = pending.take() {
            if job.slot.try_start(idx) {
                carried.push_back(job);
            } else {
                Counters::bump(&ctx.counters.cancelled);
            }
        }
        ctx.counters
            .running
            .fetch_sub(inflight.len() as u64, Ordering::Relaxed);

        let pid = self.pid;
        match stop {
            Stop::Drained | Stop::Retire(_) => {
                // Closing the job pipe tells the worker to exit; give it a moment
                // to do so cleanly before making sure (at once on terminate).
                drop(self.tx);
                let mut sink = [0u8; 1024];
                let rx = &mut self.rx;
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    tokio::select! {
                        _ = async { while matches!(rx.read(&mut sink).await, Ok(n) if n > 0) {} } => {}
                        _ = ctx.stop.recv() => {}
                    }
                })
                .await;
                reap(&mut self.process, &self.exited).await;
                match stop {
                    Stop::Retire(why) => {
                        let c = &ctx.counters;
                        Counters::bump(match why {
                            Retire::MaxTasks => &c.max_tasks,
                            Retire::MaxMemory => &c.max_memory,
                            Retire::Idle => &c.idle,
                        });
                        tracing::debug!(pid, slot = idx, reason = ?why, "worker retired");
                        if matches!(why, Retire::Idle) {
                            Ended::Idle
                        } else {
                            Ended::Recycled
                        }
                    }
                    _ => {
                        tracing::debug!(pid, slot = idx, "worker exited: pool closed");
                        Ended::Closed
                    }
                }
            }
            Stop::Terminated => {
                self.reap().await;
                tracing::debug!(pid, slot = idx, "worker killed: pool terminated");
                for entry in inflight {
                    entry.job.slot.fail(TaskError::PoolClosed);
                }
                Ended::Stopped
            }
            Stop::Cancelled | Stop::Died | Stop::Protocol(_) => {
                if matches!(stop, Stop::Died) {
                    // Results the worker wrote before dying are still in the
                    // pipe: deliver them before blaming the job it was on.
                    let mut rest = Vec::new();
                    let _ = tokio::time::timeout(
                        Duration::from_millis(200),
                        self.rx.read_to_end(&mut rest),
                    )
                    .await;
                    self.inbuf.extend_from_slice(&rest);
                    let _ = self.take_results(ctx, &mut inflight);
                }
                let exit = self.reap().await;
                let c = &ctx.counters;
                match &stop {
                    Stop::Cancelled => {
                        Counters::bump(&c.killed_for_cancel);
                        Counters::bump(&c.cancelled);
                        tracing::debug!(pid, slot = idx, "worker killed: its task was cancelled");
                    }
                    Stop::Protocol(e) => {
                        Counters::bump(&c.protocol);
                        tracing::warn!(pid, slot = idx, error = %e, "worker killed: protocol violation");
                    }
                    _ => {
                        Counters::bump(&c.crashed);
                        tracing::warn!(pid, slot = idx, exit = %describe(exit), "worker died");
                    }
                }
                let mut entries = inflight.into_iter();
                if let Some(front) = entries.next() {
                    if !front.job.slot.is_cancelled() {
                        Counters::bump(&c.failed);
                    }
                    front.job.slot.fail(match stop {
                        Stop::Protocol(message) => TaskError::Protocol { pid, message },
                        _ => TaskError::WorkerDied {
                            pid,
                            code: exit.and_then(|e| e.code),
                            signal: exit.and_then(|e| e.signal),
                        },
                    });
                }
                // The rest were sent but never started: the next worker runs them.
                carried.extend(entries.map(|e| e.job).filter(|j| !j.slot.is_cancelled()));
                Ended::Lost
            }
        }
    }
}

/// The job held back while the worker was lent, else the next queued one.
async fn next_job(
    pending: &mut Option<Job>,
    queue: &async_channel::Receiver<Job>,
) -> Result<Job, async_channel::RecvError> {
    match pending.take() {
        Some(job) => Ok(job),
        None => queue.recv().await,
    }
}
