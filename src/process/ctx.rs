//! What all slots of a pool share: the settings ([`SlotConfig`]) and the
//! [`PoolCtx`] (queue, stop signal, counters, per-slot pids, cancel signals
//! and direct lanes). Built by the builder, read by every slot's supervisor
//! and by `apply_blocking` callers on the direct lane.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::init::InitJob;
use super::job::Job;
use super::lane::Lane;
use super::launcher::Launcher;
use crate::queue::Queue;
use crate::stats::Counters;
use crate::task::CancelHook;
use crate::wire::Status;

/// Settings a slot needs.
#[derive(Debug, Clone)]
pub(crate) struct SlotConfig {
    pub(crate) workers: usize,
    pub(crate) min_workers: usize,
    pub(crate) max_frame: u64,
    pub(crate) pipeline_depth: usize,
    pub(crate) start_timeout: Duration,
    pub(crate) identity: u64,
    pub(crate) max_tasks: Option<u64>,
    pub(crate) max_memory: Option<u64>,
    pub(crate) memory_limit: Option<u64>,
    pub(crate) nice: i32,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) init: Option<InitJob>,
    /// Per slot: the host of a remote slot (see `crate::remote`), `None` for
    /// a local one.
    pub(crate) slot_hosts: Vec<Option<Arc<str>>>,
}

/// What all supervisors of a pool share.
pub(crate) struct PoolCtx {
    pub(crate) config: SlotConfig,
    pub(crate) launcher: Box<dyn Launcher>,
    /// Tasks waiting for a worker: callers push, every slot pops.
    pub(crate) queue: Queue<Job>,
    /// Closed by `terminate`: every supervisor kills its worker at once.
    pub(crate) stop: async_channel::Receiver<()>,
    /// Keeps `stop` open until it is closed on purpose (a channel also closes
    /// when its last sender goes, which must not happen when handles drop).
    pub(crate) _stop_sender: async_channel::Sender<()>,
    /// Per slot: a task it is running was cancelled.
    pub(crate) cancels: Vec<Notify>,
    /// Per slot: pid of the live worker, 0 when none.
    pub(crate) pids: Vec<AtomicU32>,
    /// Live worker processes.
    pub(crate) live: AtomicUsize,
    /// Live workers with nothing to do.
    pub(crate) idle: AtomicUsize,
    /// A task was queued while no worker was idle: a lazy slot should start one.
    pub(crate) demand: Notify,
    pub(crate) counters: Counters,
    /// Moving average of task run time, in nanoseconds (0 = none yet).
    pub(crate) typical_run_nanos: AtomicU64,
    /// Per slot: the direct lane through which `apply_blocking` borrows an
    /// idle worker.
    pub(crate) lanes: Vec<Lane>,
}

impl CancelHook for PoolCtx {
    fn running_task_cancelled(&self, worker: usize) {
        self.cancels[worker].notify_one();
    }
}

/// How long part of a frame may sit unfinished before the worker's stream is
/// judged out of step (on the supervisor's stream and on the direct lane).
pub(crate) const STALLED_FRAME: Duration = Duration::from_secs(10);

/// Work a worker may be sent ahead of the job it runs, in expected run time:
/// enough to hide a round trip, too little to strand tasks behind a long one.
const AHEAD_NANOS: u64 = 200_000;

impl PoolCtx {
    /// Resolves once the pool is terminated (`stop` closed).
    pub(crate) async fn terminated(&self) {
        let _ = self.stop.recv().await;
    }

    /// True when slots start workers only on demand and may retire them.
    pub(crate) fn elastic(&self) -> bool {
        self.config.min_workers < self.config.workers
    }

    /// How many jobs a worker may hold at once, from the typical run time.
    pub(crate) fn depth(&self) -> usize {
        let max = self.config.pipeline_depth.max(1);
        match self.typical_run_nanos.load(Ordering::Relaxed) {
            0 => 1, // nothing measured yet: be careful
            t => ((AHEAD_NANOS / t) as usize).clamp(1, max),
        }
    }

    /// An idle worker leaves the live count, but only while more than the
    /// minimum live: `true` if it may retire.
    pub(crate) fn leave_live_above_min(&self) -> bool {
        let min = self.config.min_workers;
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n > min).then(|| n - 1)
            })
            .is_ok()
    }

    /// Counts a job that finished after running `nanos` in its worker;
    /// `now` tells the time (as [`now_nanos`](super::job::now_nanos)) if
    /// the job's wait needs it.
    pub(crate) fn finished(
        &self,
        job: &Job,
        (status, nanos): (Status, u64),
        now: impl FnOnce() -> u64,
    ) {
        // Count first, so a caller woken by the result sees it in the
        // statistics.
        self.observe_run(nanos);
        let run = Duration::from_nanos(nanos);
        let wait = match job.queued_at {
            super::job::NOT_QUEUED => Duration::ZERO,
            queued_at => {
                let waited = now().saturating_sub(queued_at);
                Duration::from_nanos(waited).saturating_sub(run)
            }
        };
        if job.slot.is_cancelled() {
            Counters::bump(&self.counters.cancelled);
        } else {
            self.counters.finished(status == Status::Ok, wait, run);
        }
    }

    /// Folds one measured run time into the moving average.
    fn observe_run(&self, nanos: u64) {
        let old = self.typical_run_nanos.load(Ordering::Relaxed);
        let new = if old == 0 {
            nanos
        } else {
            (old * 7 + nanos) / 8
        };
        self.typical_run_nanos.store(new.max(1), Ordering::Relaxed);
    }
}
