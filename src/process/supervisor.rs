//! One supervisor per worker slot: starts the worker, feeds it jobs, reads its
//! results, and replaces it when it dies, must be killed, or is recycled.
//!
//! All supervisors of a pool are tasks on one small current-thread tokio
//! runtime that lives on the pool's own long-lived thread, so a pool needs no
//! runtime from its user, and every event of a slot (a job to send, a result
//! to read, a cancellation, termination, the worker dying while idle, an idle
//! timeout) is one branch of a single `select!`.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::unix::pipe;
use tokio::sync::Notify;

use super::init::InitJob;
use super::job::Job;
use super::lane::{Failure, Lane};
use super::launcher::{ExitInfo, LaunchSpec, Launcher, WorkerProcess};
use super::outbox::Outbox;
use crate::stats::Counters;
use crate::task::CancelHook;
use crate::wire::{self, FromWorker, Status};
use crate::{Error, TaskError};

/// Settings a supervisor needs.
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
}

/// What all supervisors of a pool share.
pub(crate) struct PoolCtx {
    pub(crate) config: SlotConfig,
    pub(crate) launcher: Box<dyn Launcher>,
    pub(crate) queue: async_channel::Receiver<Job>,
    /// The queue's sending side, for a job a lent-out worker's supervisor
    /// passes on to another worker. (Closing the pool closes the channel
    /// explicitly, so holding a sender here does not keep it open.)
    pub(crate) requeue: async_channel::Sender<Job>,
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
/// judged out of step.
pub(crate) const STALLED_FRAME: Duration = Duration::from_secs(10);

/// Work a worker may be sent ahead of the job it runs, in expected run time:
/// enough to hide a round trip, too little to strand tasks behind a long one.
const AHEAD_NANOS: u64 = 200_000;

impl PoolCtx {
    /// True when slots start workers only on demand and may retire them.
    pub(crate) fn elastic(&self) -> bool {
        self.config.min_workers < self.config.workers
    }

    /// How many jobs a worker may hold at once, from the typical run time.
    fn depth(&self) -> usize {
        let max = self.config.pipeline_depth.max(1);
        match self.typical_run_nanos.load(Ordering::Relaxed) {
            0 => 1, // nothing measured yet: be careful
            t => ((AHEAD_NANOS / t) as usize).clamp(1, max),
        }
    }

    /// An idle worker leaves the live count, but only while more than the
    /// minimum live: `true` if it may retire.
    fn leave_live_above_min(&self) -> bool {
        let min = self.config.min_workers;
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n > min).then(|| n - 1)
            })
            .is_ok()
    }

    /// Counts a job that finished after running `nanos` in its worker.
    pub(crate) fn finished(&self, job: &Job, status: Status, nanos: u64) {
        // Count first, so a caller woken by the result sees it in the
        // statistics.
        self.observe_run(nanos);
        let run = Duration::from_nanos(nanos);
        let waited = super::job::now_nanos().saturating_sub(job.queued_at);
        let wait = Duration::from_nanos(waited).saturating_sub(run);
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
        if ctx.stop.is_closed()
            || (carried.is_empty() && ctx.queue.is_closed() && ctx.queue.is_empty())
        {
            break;
        }
        let wanted = eager
            || !carried.is_empty()
            || (!ctx.queue.is_empty() && ctx.idle.load(Ordering::Acquire) == 0);
        if !wanted {
            // A lazy slot with nothing to do waits for demand (rechecking now
            // and then, so it also notices the pool closing).
            tokio::select! {
                _ = ctx.demand.notified() => {}
                _ = ctx.stop.recv() => break,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            continue;
        }
        match Worker::start(&ctx).await {
            Ok(worker) => {
                failures = 0;
                let pid = worker.pid;
                ctx.pids[idx].store(pid, Ordering::Relaxed);
                ctx.live.fetch_add(1, Ordering::AcqRel);
                tracing::debug!(pid, slot = idx, "worker started");
                if let Some(r) = ready.take() {
                    let _ = r.send(Ok(()));
                }
                let ended = worker.serve(&ctx, idx, &mut carried).await;
                ctx.pids[idx].store(0, Ordering::Relaxed);
                if !matches!(ended, Ended::Idle) {
                    // (An idle worker already gave up its place in `live`.)
                    ctx.live.fetch_sub(1, Ordering::AcqRel);
                }
                match ended {
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
                // Crash-loop breaker: while workers cannot start, fail the
                // tasks this slot holds or receives (saying why) and retry with
                // a growing pause instead of respawning in a tight loop.
                failures += 1;
                let why = e.to_string();
                for job in carried.drain(..) {
                    job.slot.fail(TaskError::WorkerStart(why.clone()));
                }
                let pause =
                    Duration::from_millis(100 << failures.min(9)).min(Duration::from_secs(30));
                let deadline = tokio::time::sleep(pause);
                tokio::pin!(deadline);
                loop {
                    // Take jobs only while no other worker is alive to run them.
                    let orphaned = ctx.live.load(Ordering::Acquire) == 0;
                    tokio::select! {
                        _ = &mut deadline => break,
                        _ = ctx.stop.recv() => break,
                        _ = tokio::time::sleep(Duration::from_millis(50)), if !orphaned => {}
                        job = ctx.queue.recv(), if orphaned => match job {
                            Ok(job) => {
                                Counters::bump(&ctx.counters.failed);
                                job.slot.fail(TaskError::WorkerStart(why.clone()));
                            }
                            Err(_) => break,
                        },
                    }
                }
            }
        }
    }
    for job in carried {
        job.slot.fail(TaskError::PoolClosed);
    }
    // Whatever path ended this slot, leave no queued task unresolved once the
    // queue can no longer be served.
    if ctx.stop.is_closed() || ctx.queue.is_closed() {
        while let Ok(job) = ctx.queue.try_recv() {
            job.slot.fail(TaskError::PoolClosed);
        }
    }
}

/// How a worker's service ended.
enum Ended {
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

/// Why a worker stopped being lent out.
enum Lent {
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

/// A job sent to the worker and not yet answered.
struct InFlight {
    seq: u64,
    job: Job,
    cancel_sent: bool,
}

struct Worker {
    /// Taken by [`Worker::reap`]; every path out of `start` or `serve` reaps.
    process: Option<Box<dyn WorkerProcess>>,
    pid: u32,
    tx: pipe::Sender,
    rx: pipe::Receiver,
    /// The reply pipe of direct jobs (blocking; read by lane borrowers).
    replies: Option<std::os::fd::OwnedFd>,
    /// Readable once the worker exits (a pidfd): its death is seen even while
    /// a process its task forked holds the worker's pipes open. Watched here
    /// and by lane borrowers.
    exited: Option<AsyncFd<std::os::fd::OwnedFd>>,
    inbuf: Vec<u8>,
    /// Releases `inbuf`'s memory once large results stop coming.
    keeper: crate::buffer::Keeper,
    /// Sequence number of the next job sent.
    next_seq: u64,
}

impl Worker {
    /// Launches a worker, completes its handshake and runs the initializer.
    async fn start(ctx: &PoolCtx) -> Result<Worker, Error> {
        let spec = LaunchSpec {
            identity: ctx.config.identity,
            max_frame: ctx.config.max_frame,
            memory_limit: ctx.config.memory_limit,
            nice: ctx.config.nice,
        };
        let launched = ctx.launcher.launch(&spec).map_err(Error::Spawn)?;
        let process = launched.process;
        let replies = launched.replies;
        let pid = process.pid();
        let pipes = pipe::Sender::from_owned_fd(launched.to_worker)
            .and_then(|tx| pipe::Receiver::from_owned_fd(launched.from_worker).map(|rx| (tx, rx)));
        let (tx, rx) = match pipes {
            Ok(p) => p,
            Err(e) => {
                reap_process(process).await;
                return Err(Error::Spawn(e));
            }
        };
        let mut worker = Worker {
            process: Some(process),
            pid,
            tx,
            rx,
            exited: exit_watch(pid).and_then(|fd| {
                // SAFETY: an `OwnedFd` is a valid open descriptor that keeps
                // naming the same file until the `AsyncFd` that owns it drops.
                unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.ok()
            }),
            replies,
            inbuf: Vec::with_capacity(64 * 1024),
            keeper: Default::default(),
            next_seq: 1,
        };
        let timeout = ctx.config.start_timeout;
        let started = tokio::select! {
            r = tokio::time::timeout(timeout, worker.greet(ctx)) => r,
            // `terminate` must not wait for a slow start.
            _ = ctx.stop.recv() => Ok(Err(handshake(pid, "the pool was terminated during start"))),
        };
        match started {
            Ok(Ok(())) => Ok(worker),
            Ok(Err(e)) => {
                worker.reap().await;
                Err(e)
            }
            Err(_) => {
                worker.reap().await;
                Err(handshake(pid, "timed out starting"))
            }
        }
    }

    /// Reads the worker's HELLO, then runs the initializer, if any.
    async fn greet(&mut self, ctx: &PoolCtx) -> Result<(), Error> {
        let pid = self.pid;
        let max = ctx.config.max_frame;
        let body = self.read_frame(max).await;
        match body.as_ref().map(|b| b.as_deref().map(FromWorker::decode)) {
            Ok(Some(Ok(FromWorker::Hello { .. }))) => {}
            Ok(Some(Ok(FromWorker::Refused { reason }))) => {
                return Err(Error::BuildMismatch {
                    pid,
                    message: reason,
                })
            }
            Ok(Some(Ok(_))) => return Err(handshake(pid, "unexpected first message")),
            Ok(Some(Err(e))) => return Err(handshake(pid, &e.to_string())),
            Ok(None) => {
                let exit = self.reap().await;
                return Err(handshake(
                    pid,
                    &format!("exited during start ({})", describe(exit)),
                ));
            }
            Err(e) => return Err(handshake(pid, &e.to_string())),
        }
        let Some(init) = &ctx.config.init else {
            return Ok(());
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut out = Vec::new();
        wire::encode_job(
            &mut out,
            seq,
            init.fn_ref.func,
            init.fn_ref.trampoline,
            &init.args,
        );
        let failed = |message: String| Error::Initializer { pid, message };
        if let Err(e) = self.tx.write_all(&out).await {
            return Err(failed(format!("could not send the initializer: {e}")));
        }
        let body = match self.read_frame(max).await {
            Ok(Some(body)) => body,
            Ok(None) => {
                let exit = self.reap().await;
                return Err(failed(format!(
                    "the worker died in the initializer ({})",
                    describe(exit)
                )));
            }
            Err(e) => return Err(failed(e.to_string())),
        };
        match FromWorker::decode(&body) {
            Ok(FromWorker::Result {
                status, payload, ..
            }) => match super::job::decode::<Result<(), String>>(status, payload, pid) {
                Ok(Ok(())) => Ok(()),
                Ok(Err(message)) => Err(failed(message)),
                Err(e) => Err(failed(e.to_string())),
            },
            Ok(_) => Err(handshake(
                pid,
                "unexpected message instead of the initializer's result",
            )),
            Err(e) => Err(handshake(pid, &e.to_string())),
        }
    }

    /// Reads one whole frame (start-up only). `None` at end of file.
    async fn read_frame(&mut self, max: u64) -> io::Result<Option<Vec<u8>>> {
        loop {
            match wire::split_frame(&self.inbuf, max) {
                Err(e) => return Err(io::Error::other(e.to_string())),
                Ok(Some((body, used))) => {
                    let frame = self.inbuf[body].to_vec();
                    self.inbuf.drain(..used);
                    return Ok(Some(frame));
                }
                Ok(None) => {}
            }
            self.inbuf.reserve(4096);
            if self.rx.read_buf(&mut self.inbuf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Feeds the worker until it dies, is killed, is retired, or the pool
    /// closes. Jobs that were sent but never started are left in `carried` for
    /// the next worker.
    async fn serve(mut self, ctx: &PoolCtx, idx: usize, carried: &mut VecDeque<Job>) -> Ended {
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

    /// Lends this idle worker to `apply_blocking` callers (see
    /// [`lane`](super::lane)) until something needs the supervisor: a queued
    /// job, the queue closing, the pool stopping, the result pipe stirring (an
    /// idle worker's death), the idle timeout, or a borrower giving the
    /// worker back. The lane is closed again, with no borrower, on return.
    async fn lend(
        &mut self,
        ctx: &PoolCtx,
        idx: usize,
        next_seq: u64,
        budget: u64,
    ) -> (Lent, super::lane::Settled) {
        use std::os::fd::AsRawFd;
        let lane = &ctx.lanes[idx];
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
        let idle_timer = ctx.config.idle_timeout.filter(|_| ctx.elastic());
        let mut listen = true;
        let lent = loop {
            let uses = lane.uses();
            tokio::select! {
                biased;
                _ = ctx.stop.recv() => break Lent::Stop,
                _ = lane.borrower_done() => {
                    if lane.is_closed() {
                        break Lent::GivenBack;
                    }
                    listen = true; // a watched borrow ended
                }
                _ = self.rx.readable() => break Lent::Readable,
                _ = exit_of(&self.exited) => break Lent::Exited,
                job = ctx.queue.recv(), if listen => match job {
                    Err(_) => break Lent::QueueClosed,
                    Ok(job) if lane.try_close() => break Lent::Job(job),
                    // Lent out, maybe for long: let a free worker have the
                    // job instead of holding it here, and stop taking jobs
                    // until the borrow ends (the borrower hands the worker
                    // back if any are still waiting then).
                    Ok(job) => match ctx.requeue.try_send(job) {
                        Ok(()) => {
                            listen = !lane.watch();
                            // A lent worker is not idle: an elastic pool may
                            // start one for this job.
                            if ctx.elastic() && ctx.idle.load(Ordering::Acquire) == 0 {
                                ctx.demand.notify_one();
                            }
                        }
                        Err(e) => break Lent::Job(e.into_inner()),
                    },
                },
                _ = sleep_or_never(idle_timer) => {
                    // Idle means unused for the whole timeout, lent or not.
                    if lane.uses() == uses && !lane.is_lent() {
                        break Lent::IdleTimeout;
                    }
                }
            }
        };
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

    /// Kills and reaps the worker process (once).
    async fn reap(&mut self) -> Option<ExitInfo> {
        reap(&mut self.process, &self.exited).await
    }

    /// Reads what the result pipe holds, without waiting.
    fn try_read(&mut self) -> io::Result<usize> {
        self.inbuf.reserve(64 * 1024);
        self.rx.try_read_buf(&mut self.inbuf)
    }

    /// Reads whatever the worker has already written, without waiting, and
    /// handles the complete frames.
    fn take_available(
        &mut self,
        ctx: &PoolCtx,
        inflight: &mut VecDeque<InFlight>,
    ) -> Result<(), String> {
        loop {
            self.inbuf.reserve(64 * 1024);
            match self.rx.try_read_buf(&mut self.inbuf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(_) => break, // would block, or an error the next read sees
            }
        }
        self.take_results(ctx, inflight)
    }

    /// Handles every complete frame in `inbuf`.
    fn take_results(
        &mut self,
        ctx: &PoolCtx,
        inflight: &mut VecDeque<InFlight>,
    ) -> Result<(), String> {
        let max = ctx.config.max_frame;
        let counters = &ctx.counters;
        let mut pos = 0;
        let outcome = loop {
            let (body, used) = match wire::split_frame(&self.inbuf[pos..], max) {
                Ok(Some(frame)) => frame,
                Ok(None) => match wire::check_from_worker_tag(&self.inbuf[pos..]) {
                    Ok(()) => break Ok(()),
                    Err(e) => break Err(e.to_string()),
                },
                Err(e) => break Err(e.to_string()),
            };
            let body = &self.inbuf[pos + body.start..pos + body.end];
            pos += used;
            let message = match FromWorker::decode(body) {
                Ok(m) => m,
                Err(e) => break Err(e.to_string()),
            };
            let FromWorker::Result {
                seq,
                next,
                seen,
                nanos,
                status,
                payload,
            } = message
            else {
                break Err("unexpected message after the handshake".into());
            };
            // Jobs before `seq` can only have been skipped, which the worker
            // does only for cancelled ones.
            if let Err(e) = pop_skipped(ctx, inflight, |s| s < seq) {
                break Err(e);
            }
            if inflight.front().map(|e| e.seq) != Some(seq) {
                break Err(format!("result for job {seq}, which it was not running"));
            }
            match inflight.pop_front() {
                Some(entry) => {
                    counters.running.fetch_sub(1, Ordering::Relaxed);
                    ctx.finished(&entry.job, status, nanos);
                    entry.job.slot.deliver(status, payload, self.pid);
                }
                None => unreachable!("checked above"),
            }
            // Now learn which job the worker runs next.
            let skipped = if next != 0 {
                pop_skipped(ctx, inflight, |s| s < next).and_then(|()| match inflight.front() {
                    Some(f) if f.seq == next => Ok(()),
                    _ => Err(format!(
                        "worker names job {next} as next, which it was not sent"
                    )),
                })
            } else {
                // Idle: every job it has seen is done or skipped; the first one
                // it has not seen starts as soon as it is read.
                pop_skipped(ctx, inflight, |s| s <= seen)
            };
            if let Err(e) = skipped {
                break Err(e);
            }
        };
        self.inbuf.drain(..pos);
        self.keeper.after_use(&mut self.inbuf, pos);
        outcome
    }
}

/// Pops leading entries matching `before`; they must all be cancelled.
fn pop_skipped(
    ctx: &PoolCtx,
    inflight: &mut VecDeque<InFlight>,
    before: impl Fn(u64) -> bool,
) -> Result<(), String> {
    while let Some(front) = inflight.front() {
        if !before(front.seq) {
            break;
        }
        if !front.job.slot.is_cancelled() {
            return Err(format!(
                "worker skipped job {}, which was not cancelled",
                front.seq
            ));
        }
        inflight.pop_front();
        ctx.counters.running.fetch_sub(1, Ordering::Relaxed);
        Counters::bump(&ctx.counters.cancelled);
    }
    Ok(())
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

/// Resolves once the watched process has exited; never without a watch.
async fn exit_of(exited: &Option<AsyncFd<std::os::fd::OwnedFd>>) {
    match exited {
        // An error reading readiness is not an exit: keep waiting for the
        // pipes to tell.
        Some(fd) => match fd.readable().await {
            Ok(_) => {}
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Sleeps for `d`, or forever when there is no timer.
async fn sleep_or_never(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// A descriptor that becomes readable when process `pid` exits (a pidfd),
/// where the platform has one. Opened while the worker is our unreaped child,
/// so the pid cannot name another process.
#[cfg(target_os = "linux")]
fn exit_watch(pid: u32) -> Option<std::os::fd::OwnedFd> {
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
}

#[cfg(not(target_os = "linux"))]
fn exit_watch(_pid: u32) -> Option<std::os::fd::OwnedFd> {
    None
}

/// Resident memory of process `pid`, where the platform tells.
fn rss_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}

/// Kills and reaps a worker's process, once (`process` is taken). With a
/// pidfd the exit is awaited on the supervisor's runtime; without one, a
/// blocking wait runs on tokio's blocking pool.
async fn reap(
    process: &mut Option<Box<dyn WorkerProcess>>,
    exited: &Option<AsyncFd<std::os::fd::OwnedFd>>,
) -> Option<ExitInfo> {
    let mut process = process.take()?;
    let Some(exited) = exited else {
        return reap_process(process).await;
    };
    process.kill();
    while let Ok(mut ready) = exited.readable().await {
        match process.try_wait() {
            Ok(Some(exit)) => return Some(exit),
            Ok(None) => ready.clear_ready(), // not yet: wait again
            Err(_) => break,
        }
    }
    // The pidfd failed us: wait the ordinary way.
    reap_process(process).await
}

/// Kills (harmless if it already exited) and reaps a worker. The wait runs
/// on tokio's blocking pool: a large process can take a while to tear down,
/// and all slots share the supervisor thread. (Used where no pidfd lets the
/// exit be awaited instead; see [`reap`].)
async fn reap_process(mut process: Box<dyn WorkerProcess>) -> Option<ExitInfo> {
    process.kill();
    tokio::task::spawn_blocking(move || process.wait().ok())
        .await
        .ok()
        .flatten()
}

fn handshake(pid: u32, message: &str) -> Error {
    Error::Handshake {
        pid,
        message: message.to_string(),
    }
}

fn describe(exit: Option<ExitInfo>) -> String {
    match exit {
        Some(ExitInfo {
            signal: Some(s), ..
        }) => format!("killed by signal {s}"),
        Some(ExitInfo { code: Some(c), .. }) => format!("exit code {c}"),
        _ => "unknown status".into(),
    }
}
