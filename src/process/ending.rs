//! How one worker's service ends, once its [serve loop](super::serve)
//! stopped: a healthy worker is let exit (queue drained, or retired), a
//! terminated pool's worker is killed, and a lost one (died, cancelled,
//! protocol error) is reaped, counted, and blamed on the job it was running;
//! jobs it never started go to the slot's next worker.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::ctx::PoolCtx;
use super::job::Job;
use super::launcher::ExitInfo;
#[cfg(unix)]
use super::worker::exit_of;
use super::worker::{describe, reap, InFlight, Worker};
use crate::stats::Counters;
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
pub(crate) enum Stop {
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
pub(crate) enum Retire {
    MaxTasks,
    MaxMemory,
    Idle,
}

impl Worker {
    /// Ends the service for `stop`; `inflight` are the jobs sent and not
    /// answered (no longer counted as running).
    pub(crate) async fn end(
        mut self,
        ctx: &PoolCtx,
        idx: usize,
        stop: Stop,
        inflight: VecDeque<InFlight>,
        carried: &mut VecDeque<Job>,
    ) -> Ended {
        let pid = self.pid;
        match stop {
            Stop::Drained | Stop::Retire(_) => {
                self.exit(ctx).await;
                match stop {
                    Stop::Retire(why) => retired(ctx, idx, pid, why),
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
                self.lost(ctx, idx, stop, inflight, carried).await
            }
        }
    }

    /// Lets a healthy worker exit, then reaps it.
    async fn exit(mut self, ctx: &PoolCtx) {
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
    }

    /// Reaps a worker that died or had to be killed, fails the job it was
    /// running, and carries the ones it never started to the next worker.
    async fn lost(
        mut self,
        ctx: &PoolCtx,
        idx: usize,
        stop: Stop,
        mut inflight: VecDeque<InFlight>,
        carried: &mut VecDeque<Job>,
    ) -> Ended {
        let pid = self.pid;
        if matches!(stop, Stop::Died) {
            // Results the worker wrote before dying are still in the
            // pipe: deliver them before blaming the job it was on.
            let mut rest = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_millis(200), self.rx.read_to_end(&mut rest))
                    .await;
            self.inbuf.extend_from_slice(&rest);
            let _ = self.take_results(ctx, &mut inflight);
            #[cfg(unix)]
            if self.host.is_some() {
                // A remote worker's launcher closes its stdout just before
                // it exits with the far status: killing it first would lose
                // that status.
                let _ = tokio::time::timeout(Duration::from_secs(2), exit_of(&self.exited)).await;
            }
        }
        let exit = self.reap().await;
        count_loss(ctx, idx, pid, &stop, exit);
        let mut entries = inflight.into_iter();
        if let Some(front) = entries.next() {
            if !front.job.slot.is_cancelled() {
                Counters::bump(&ctx.counters.failed);
            }
            front.job.slot.fail(match stop {
                Stop::Protocol(message) => TaskError::Protocol { pid, message },
                _ => match &self.host {
                    #[cfg(unix)]
                    Some(host) => {
                        crate::remote::launch::death_error(host, pid, self.launcher_pid, exit)
                    }
                    _ => TaskError::WorkerDied {
                        pid,
                        code: exit.and_then(|e| e.code),
                        signal: exit.and_then(|e| e.signal),
                    },
                },
            });
        }
        // The rest were sent but never started: the next worker runs them.
        carried.extend(entries.map(|e| e.job).filter(|j| !j.slot.is_cancelled()));
        Ended::Lost
    }
}

/// Counts and logs a healthy worker's retirement.
fn retired(ctx: &PoolCtx, idx: usize, pid: u32, why: Retire) -> Ended {
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

/// Counts and logs the loss of a worker.
fn count_loss(ctx: &PoolCtx, idx: usize, pid: u32, stop: &Stop, exit: Option<ExitInfo>) {
    let c = &ctx.counters;
    match stop {
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
}
