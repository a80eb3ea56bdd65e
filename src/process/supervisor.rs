//! One supervisor per worker slot: starts the worker, feeds it jobs, reads its
//! results, and replaces it when it dies or must be killed.
//!
//! All supervisors of a pool are tasks on one small current-thread tokio
//! runtime that lives on the pool's own long-lived thread, so a pool needs no
//! runtime from its user, and every event of a slot (a job to send, a result
//! to read, a cancellation, termination, the worker dying while idle) is one
//! branch of a single `select!`.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::Notify;

use super::job::Job;
use super::launcher::{ExitInfo, LaunchSpec, Launcher, WorkerProcess};
use crate::task::CancelHook;
use crate::wire::{self, FromWorker};
use crate::{Error, TaskError};

/// Settings a supervisor needs.
#[derive(Debug, Clone)]
pub(crate) struct SlotConfig {
    pub(crate) workers: usize,
    pub(crate) max_frame: u64,
    pub(crate) pipeline_depth: usize,
    pub(crate) handshake_timeout: Duration,
    pub(crate) identity: u64,
}

/// What all supervisors of a pool share.
pub(crate) struct PoolCtx {
    pub(crate) config: SlotConfig,
    pub(crate) launcher: Box<dyn Launcher>,
    pub(crate) queue: async_channel::Receiver<Job>,
    /// Closed by `terminate`: every supervisor kills its worker at once.
    pub(crate) stop: async_channel::Receiver<()>,
    /// Per slot: a task it is running was cancelled.
    pub(crate) cancels: Vec<Notify>,
    /// Per slot: pid of the live worker, 0 when none.
    pub(crate) pids: Vec<AtomicU32>,
}

impl CancelHook for PoolCtx {
    fn running_task_cancelled(&self, worker: usize) {
        self.cancels[worker].notify_one();
    }
}

/// Runs slot `idx` until the pool is closed and drained, or terminated.
/// `ready` receives the outcome of the first worker start.
pub(crate) async fn supervise(
    ctx: Arc<PoolCtx>,
    idx: usize,
    ready: std::sync::mpsc::Sender<Result<(), Error>>,
    _done: async_channel::Sender<()>,
) {
    let mut carried: VecDeque<Job> = VecDeque::new();
    let mut ready = Some(ready);
    let mut failures: u32 = 0;
    loop {
        if ctx.stop.is_closed()
            || (carried.is_empty() && ctx.queue.is_closed() && ctx.queue.is_empty())
        {
            break;
        }
        match Worker::start(&ctx).await {
            Ok(worker) => {
                failures = 0;
                ctx.pids[idx].store(worker.pid, Ordering::Relaxed);
                if let Some(r) = ready.take() {
                    let _ = r.send(Ok(()));
                }
                let ended = worker.serve(&ctx, idx, &mut carried).await;
                ctx.pids[idx].store(0, Ordering::Relaxed);
                match ended {
                    Ended::Closed | Ended::Stopped => break,
                    Ended::Lost => continue,
                }
            }
            Err(e) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(e));
                    break;
                }
                // Do not leave callers waiting while workers cannot start: fail
                // the jobs this slot holds or receives, and retry with backoff.
                failures += 1;
                let why = e.to_string();
                for job in carried.drain(..) {
                    job.slot.fail(TaskError::WorkerStart(why.clone()));
                }
                let backoff = Duration::from_millis(50 << failures.min(7));
                let deadline = tokio::time::sleep(backoff);
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        _ = &mut deadline => break,
                        _ = ctx.stop.recv() => break,
                        job = ctx.queue.recv() => match job {
                            Ok(job) => job.slot.fail(TaskError::WorkerStart(why.clone())),
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
}

/// How a worker's service ended.
enum Ended {
    /// The queue closed and drained; the worker exited cleanly.
    Closed,
    /// The pool was terminated.
    Stopped,
    /// The worker died or was killed; start another.
    Lost,
}

/// Why the serve loop stopped.
enum Stop {
    Drained,
    Terminated,
    /// Killed because the task it was running was cancelled.
    Cancelled,
    Died,
    Protocol(String),
}

/// A job sent to the worker and not yet answered.
struct InFlight {
    seq: u64,
    job: Job,
    cancel_sent: bool,
}

struct Worker {
    process: Box<dyn WorkerProcess>,
    pid: u32,
    tx: pipe::Sender,
    rx: pipe::Receiver,
    inbuf: Vec<u8>,
}

impl Worker {
    /// Launches a worker and completes its handshake.
    async fn start(ctx: &PoolCtx) -> Result<Worker, Error> {
        let spec = LaunchSpec {
            identity: ctx.config.identity,
            max_frame: ctx.config.max_frame,
        };
        let launched = ctx.launcher.launch(&spec).map_err(Error::Spawn)?;
        let mut process = launched.process;
        let pid = process.pid();
        let pipes = pipe::Sender::from_owned_fd(launched.to_worker)
            .and_then(|tx| pipe::Receiver::from_owned_fd(launched.from_worker).map(|rx| (tx, rx)));
        let (tx, rx) = match pipes {
            Ok(p) => p,
            Err(e) => {
                reap(process.as_mut());
                return Err(Error::Io(e));
            }
        };
        let mut worker = Worker {
            process,
            pid,
            tx,
            rx,
            inbuf: Vec::with_capacity(64 * 1024),
        };
        let first = tokio::time::timeout(
            ctx.config.handshake_timeout,
            worker.read_frame(ctx.config.max_frame),
        )
        .await;
        let failure = match first {
            Ok(Ok(Some(body))) => match FromWorker::decode(&body) {
                Ok(FromWorker::Hello { .. }) => return Ok(worker),
                Ok(FromWorker::Refused { reason }) => Error::BuildMismatch {
                    pid,
                    message: reason,
                },
                Ok(_) => handshake(pid, "unexpected first message"),
                Err(e) => handshake(pid, &e.to_string()),
            },
            Ok(Ok(None)) => {
                let exit = reap(worker.process.as_mut());
                return Err(handshake(
                    pid,
                    &format!("exited during start ({})", describe(exit)),
                ));
            }
            Ok(Err(e)) => handshake(pid, &e.to_string()),
            Err(_) => handshake(pid, "timed out"),
        };
        reap(worker.process.as_mut());
        Err(failure)
    }

    /// Reads one whole frame (handshake only). `None` at end of file.
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

    /// Feeds the worker until it dies, is killed, or the pool closes. Jobs that
    /// were sent but never started are left in `carried` for the next worker.
    async fn serve(mut self, ctx: &PoolCtx, idx: usize, carried: &mut VecDeque<Job>) -> Ended {
        let max = ctx.config.max_frame;
        let depth = ctx.config.pipeline_depth.max(1);
        let mut inflight: VecDeque<InFlight> = VecDeque::new();
        let mut out: Vec<u8> = Vec::new();
        let mut out_pos = 0usize;
        let mut next_seq = 1u64;
        let mut queue_open = true;

        let mut send = |job: Job, out: &mut Vec<u8>, inflight: &mut VecDeque<InFlight>| {
            let seq = next_seq;
            next_seq += 1;
            let f = job.fn_ref;
            wire::encode_job(out, seq, f.func, f.trampoline, &job.args);
            inflight.push_back(InFlight {
                seq,
                job,
                cancel_sent: false,
            });
        };
        for job in carried.drain(..) {
            if !job.slot.is_cancelled() {
                send(job, &mut out, &mut inflight);
            }
        }

        let stop = loop {
            let writing = out_pos < out.len();
            if !queue_open && inflight.is_empty() && !writing {
                break Stop::Drained;
            }
            // Send ahead only while the backlog is deep (at least two waiting
            // tasks per worker), so pipelining never leaves another worker idle
            // or strands a burst of tasks behind a long one.
            let deep = |inflight: &VecDeque<InFlight>| {
                inflight.len() < depth && ctx.queue.len() >= 2 * ctx.config.workers
            };
            let take = queue_open && (inflight.is_empty() || deep(&inflight));
            let want = wire::missing_bytes(&self.inbuf)
                .filter(|&n| n as u64 <= max)
                .unwrap_or(0)
                .max(64 * 1024);
            self.inbuf.reserve(want);

            tokio::select! {
                biased;
                _ = ctx.stop.recv() => break Stop::Terminated,
                _ = ctx.cancels[idx].notified() => {
                    if let Some(front) = inflight.front() {
                        if front.job.slot.is_cancelled() {
                            break Stop::Cancelled;
                        }
                    }
                    for entry in inflight.iter_mut().skip(1) {
                        if !entry.cancel_sent && entry.job.slot.is_cancelled() {
                            wire::encode_cancel(&mut out, entry.seq);
                            entry.cancel_sent = true;
                        }
                    }
                }
                read = self.rx.read_buf(&mut self.inbuf) => match read {
                    Ok(0) | Err(_) => break Stop::Died,
                    Ok(_) => {
                        if let Err(e) = self.take_results(&mut inflight, max) {
                            break Stop::Protocol(e);
                        }
                        if inflight.front().is_some_and(|f| f.job.slot.is_cancelled()) {
                            break Stop::Cancelled;
                        }
                    }
                },
                written = self.tx.write(&out[out_pos..]), if writing => match written {
                    Ok(n) => {
                        out_pos += n;
                        if out_pos == out.len() {
                            out.clear();
                            out_pos = 0;
                            if out.capacity() > 4 << 20 {
                                out = Vec::new();
                            }
                        }
                    }
                    Err(_) => break Stop::Died,
                },
                job = ctx.queue.recv(), if take => match job {
                    Ok(job) => {
                        if job.slot.try_start(idx) {
                            send(job, &mut out, &mut inflight);
                        }
                        while deep(&inflight) {
                            let Ok(job) = ctx.queue.try_recv() else { break };
                            if job.slot.try_start(idx) {
                                send(job, &mut out, &mut inflight);
                            }
                        }
                    }
                    Err(_) => queue_open = false,
                },
            }
        };

        match stop {
            Stop::Drained => {
                // Closing the job pipe tells the worker to exit; give it a moment
                // to do so cleanly before making sure.
                drop(self.tx);
                let mut sink = [0u8; 1024];
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    while matches!(self.rx.read(&mut sink).await, Ok(n) if n > 0) {}
                })
                .await;
                reap(self.process.as_mut());
                Ended::Closed
            }
            Stop::Terminated => {
                reap(self.process.as_mut());
                for entry in inflight {
                    entry.job.slot.fail(TaskError::PoolClosed);
                }
                Ended::Stopped
            }
            Stop::Cancelled | Stop::Died | Stop::Protocol(_) => {
                let exit = reap(self.process.as_mut());
                let mut entries = inflight.into_iter();
                if let Some(front) = entries.next() {
                    front.job.slot.fail(match stop {
                        Stop::Protocol(message) => TaskError::Protocol {
                            pid: self.pid,
                            message,
                        },
                        _ => TaskError::WorkerDied {
                            pid: self.pid,
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

    /// Handles every complete frame in `inbuf`.
    fn take_results(&mut self, inflight: &mut VecDeque<InFlight>, max: u64) -> Result<(), String> {
        let mut pos = 0;
        let outcome = loop {
            let (body, used) = match wire::split_frame(&self.inbuf[pos..], max) {
                Ok(Some(frame)) => frame,
                Ok(None) => break Ok(()),
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
                status,
                payload,
            } = message
            else {
                break Err("unexpected message after the handshake".into());
            };
            // Jobs before `seq` can only have been skipped, which the worker
            // does only for cancelled ones.
            if let Err(e) = pop_skipped(inflight, |s| s < seq) {
                break Err(e);
            }
            match inflight.pop_front() {
                Some(entry) if entry.seq == seq => {
                    entry.job.slot.deliver(status, payload, self.pid)
                }
                _ => break Err(format!("result for job {seq}, which it was not running")),
            }
            // Now learn which job the worker runs next.
            let skipped = if next != 0 {
                pop_skipped(inflight, |s| s < next).and_then(|()| match inflight.front() {
                    Some(f) if f.seq == next => Ok(()),
                    _ => Err(format!(
                        "worker names job {next} as next, which it was not sent"
                    )),
                })
            } else {
                // Idle: every job it has seen is done or skipped; the first one
                // it has not seen starts as soon as it is read.
                pop_skipped(inflight, |s| s <= seen)
            };
            if let Err(e) = skipped {
                break Err(e);
            }
        };
        self.inbuf.drain(..pos);
        outcome
    }
}

/// Pops leading entries matching `before`; they must all be cancelled.
fn pop_skipped(
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
    }
    Ok(())
}

/// Kills (harmless if it already exited) and reaps a worker.
fn reap(process: &mut dyn WorkerProcess) -> Option<ExitInfo> {
    process.kill();
    process.wait().ok()
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
