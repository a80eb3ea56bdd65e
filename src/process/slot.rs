//! One slot of the pool: the loop that starts a worker, lets it
//! [`serve`](super::serve) until it ends, and starts the next one, with a
//! crash-loop breaker for workers that cannot start.
//!
//! All slots of a pool are tasks on one small current-thread tokio runtime
//! that lives on the pool's own long-lived thread (see [`super::start`]), so
//! a pool needs no runtime from its user.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::ctx::PoolCtx;
use super::ending::Ended;
use super::job::Job;
use super::worker::Worker;
use crate::stats::Counters;
use crate::{Error, TaskError};

/// Runs slot `idx` until the pool is closed and drained, or terminated.
/// `ready` receives the outcome of the first worker start (at once for a slot
/// that starts lazily).
pub(crate) async fn supervise(
    ctx: Arc<PoolCtx>,
    idx: usize,
    ready: std::sync::mpsc::Sender<Result<(), Error>>,
    _done: async_channel::Sender<()>,
) {
    let eager = idx < ctx.config.min_workers;
    let mut ready = Some(ready);
    if !eager {
        let _ = ready.take().map(|r| r.send(Ok(())));
    }
    let mut carried: VecDeque<Job> = VecDeque::new();
    let mut failures: u32 = 0;
    loop {
        if ctx.stop.is_closed() || (carried.is_empty() && ctx.queue.is_done()) {
            break;
        }
        let wanted = eager
            || !carried.is_empty()
            || (!ctx.queue.is_empty() && ctx.idle.load(Ordering::Acquire) == 0);
        if !wanted {
            if wait_for_demand(&ctx).await {
                break;
            }
            continue;
        }
        match Worker::start(&ctx, idx).await {
            Ok(worker) => {
                failures = 0;
                match run_worker(&ctx, idx, worker, &mut ready, &mut carried).await {
                    Ended::Closed | Ended::Stopped => break,
                    Ended::Lost | Ended::Recycled | Ended::Idle => continue,
                }
            }
            Err(e) => {
                Counters::bump(&ctx.counters.start_failed);
                tracing::warn!(slot = idx, error = %e, "worker failed to start");
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(e));
                    break;
                }
                failures += 1;
                break_crash_loop(&ctx, &e, failures, &mut carried).await;
            }
        }
    }
    close(&ctx, carried);
}

/// A lazy slot with nothing to do waits for demand (rechecking now and then,
/// so it also notices the pool closing). `true` when the pool is terminated.
async fn wait_for_demand(ctx: &PoolCtx) -> bool {
    tokio::select! {
        _ = ctx.demand.notified() => false,
        _ = ctx.stop.recv() => true,
        _ = tokio::time::sleep(Duration::from_millis(100)) => false,
    }
}

/// Lets a started worker serve until it ends, keeping the slot's pid and the
/// pool's live count up to date.
async fn run_worker(
    ctx: &PoolCtx,
    idx: usize,
    worker: Worker,
    ready: &mut Option<std::sync::mpsc::Sender<Result<(), Error>>>,
    carried: &mut VecDeque<Job>,
) -> Ended {
    let pid = worker.pid;
    ctx.pids[idx].store(pid, Ordering::Relaxed);
    ctx.live.fetch_add(1, Ordering::AcqRel);
    tracing::debug!(pid, slot = idx, "worker started");
    if let Some(r) = ready.take() {
        let _ = r.send(Ok(()));
    }
    let ended = worker.serve(ctx, idx, carried).await;
    ctx.pids[idx].store(0, Ordering::Relaxed);
    if !matches!(ended, Ended::Idle) {
        // (An idle worker already gave up its place in `live`.)
        ctx.live.fetch_sub(1, Ordering::AcqRel);
    }
    ended
}

/// Crash-loop breaker: while workers cannot start (the `failures`-th time in
/// a row, for `error`), fail the tasks this slot holds or receives (saying
/// why) and pause, longer each time, instead of respawning in a tight loop.
async fn break_crash_loop(
    ctx: &PoolCtx,
    error: &Error,
    failures: u32,
    carried: &mut VecDeque<Job>,
) {
    let why = error.to_string();
    for job in carried.drain(..) {
        job.slot.fail(TaskError::WorkerStart(why.clone()));
    }
    let pause = Duration::from_millis(100 << failures.min(9)).min(Duration::from_secs(30));
    let deadline = tokio::time::sleep(pause);
    tokio::pin!(deadline);
    loop {
        // Take jobs only while no other worker is alive to run them.
        let orphaned = ctx.live.load(Ordering::Acquire) == 0;
        tokio::select! {
            _ = &mut deadline => break,
            _ = ctx.stop.recv() => break,
            _ = tokio::time::sleep(Duration::from_millis(50)), if !orphaned => {}
            job = ctx.queue.pop(), if orphaned => match job {
                Some(job) => {
                    Counters::bump(&ctx.counters.failed);
                    job.slot.fail(TaskError::WorkerStart(why.clone()));
                }
                None => break,
            },
        }
    }
}

/// The slot ends: fail what it still holds and, once the queue can no longer
/// be served, whatever is left in it.
fn close(ctx: &PoolCtx, carried: VecDeque<Job>) {
    for job in carried {
        job.slot.fail(TaskError::PoolClosed);
    }
    // Whatever path ended this slot, leave no queued task unresolved once the
    // queue can no longer be served.
    if ctx.stop.is_closed() || ctx.queue.is_closed() {
        while let Some(job) = ctx.queue.try_pop() {
            job.slot.fail(TaskError::PoolClosed);
        }
    }
}
