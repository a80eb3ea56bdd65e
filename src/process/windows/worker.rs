//! Windows: the parent's side of one worker process: starting it (launch,
//! HELLO, initializer), reading its result frames and settling the job they
//! answer, and reaping it. The loop that feeds it is in [`super::serve`]
//! (Windows' own); how its service ends is the shared [`super::ending`].
//!
//! The start-up exchange is the Unix one over other streams (the worker's
//! standard input and output). A worker here holds at most one job at a time,
//! so every result must answer exactly the job in flight.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{ChildStdin, ChildStdout};

use super::ctx::PoolCtx;
use super::init::InitJob;
use super::job::Job;
use super::launcher::{ExitInfo, LaunchSpec, WorkerProcess};
use crate::wire::{self, FromWorker};
use crate::Error;

/// A job sent to the worker and not yet answered.
pub(crate) struct InFlight {
    pub(crate) seq: u64,
    pub(crate) job: Job,
    /// (Cancel frames are never sent on Windows: one job in flight is killed
    /// or not at all. Kept for the shared `ending` code.)
    #[allow(dead_code)]
    pub(crate) cancel_sent: bool,
}

/// One live worker process and its pipes.
pub(crate) struct Worker {
    /// Taken by [`Worker::reap`]; every path out of `start` or `serve` reaps.
    pub(crate) process: Option<Box<dyn WorkerProcess>>,
    pub(crate) pid: u32,
    pub(crate) tx: ChildStdin,
    pub(crate) rx: ChildStdout,
    /// The process handle itself tells of the exit here (see
    /// [`exit_of`]); the field keeps the shared `ending` code's shape.
    pub(crate) exited: (),
    pub(crate) inbuf: Vec<u8>,
    /// Releases `inbuf`'s memory once large results stop coming.
    pub(crate) keeper: crate::buffer::Keeper,
    /// Sequence number of the next job sent.
    pub(crate) next_seq: u64,
    /// Always `None`: remote workers are Unix only for now (the shared
    /// `ending` code asks).
    pub(crate) host: Option<std::sync::Arc<str>>,
}

impl Worker {
    /// Launches a worker, completes its handshake and runs the initializer.
    pub(crate) async fn start(ctx: &PoolCtx, _idx: usize) -> Result<Worker, Error> {
        let spec = LaunchSpec {
            identity: ctx.config.identity,
            max_frame: ctx.config.max_frame,
            memory_limit: ctx.config.memory_limit,
            nice: ctx.config.nice,
        };
        let launched = super::relaunch::retrying(|| ctx.launcher.launch(&spec), ctx.terminated())
            .await
            .map_err(Error::Spawn)?;
        let pid = launched.process.pid();
        let mut worker = Worker {
            process: Some(launched.process),
            pid,
            tx: launched.to_worker,
            rx: launched.from_worker,
            exited: (),
            inbuf: Vec::with_capacity(64 * 1024),
            keeper: Default::default(),
            next_seq: 1,
            host: None,
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
        let max = ctx.config.max_frame;
        self.hello(max).await?;
        match &ctx.config.init {
            Some(init) => self.initialize(init, max).await,
            None => Ok(()),
        }
    }

    /// Reads the worker's HELLO (or its refusal).
    async fn hello(&mut self, max: u64) -> Result<(), Error> {
        let pid = self.pid;
        let body = self.read_frame(max).await;
        match body.as_ref().map(|b| b.as_deref().map(FromWorker::decode)) {
            Ok(Some(Ok(FromWorker::Hello { .. }))) => Ok(()),
            Ok(Some(Ok(FromWorker::Refused { reason }))) => Err(Error::BuildMismatch {
                pid,
                message: reason,
            }),
            Ok(Some(Ok(_))) => Err(handshake(pid, "unexpected first message")),
            Ok(Some(Err(e))) => Err(handshake(pid, &e.to_string())),
            Ok(None) => {
                let exit = self.reap().await;
                Err(handshake(
                    pid,
                    &format!("exited during start ({})", describe(exit)),
                ))
            }
            Err(e) => Err(handshake(pid, &e.to_string())),
        }
    }

    /// Runs the pool's initializer in the worker.
    async fn initialize(&mut self, init: &InitJob, max: u64) -> Result<(), Error> {
        let pid = self.pid;
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut out = Vec::new();
        let (func, trampoline) = (init.fn_ref.func, init.fn_ref.trampoline);
        wire::encode_job(&mut out, seq, func, trampoline, &init.args);
        let failed = |message: String| Error::Initializer { pid, message };
        let sent = async {
            self.tx.write_all(&out).await?;
            self.tx.flush().await
        };
        if let Err(e) = sent.await {
            return Err(failed(format!("could not send the initializer: {e}")));
        }
        let body = match self.read_frame(max).await {
            Ok(Some(body)) => body,
            Ok(None) => {
                let exit = self.reap().await;
                let why = format!("the worker died in the initializer ({})", describe(exit));
                return Err(failed(why));
            }
            Err(e) => return Err(failed(e.to_string())),
        };
        super::init::outcome(&body, pid)
    }

    /// Reads one whole frame (start-up only). `None` at end of file.
    async fn read_frame(&mut self, max: u64) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(frame) = wire::take_frame(&mut self.inbuf, max)
                .map_err(|e| io::Error::other(e.to_string()))?
            {
                return Ok(Some(frame));
            }
            self.inbuf.reserve(4096);
            if self.rx.read_buf(&mut self.inbuf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Kills and reaps the worker process (once).
    pub(crate) async fn reap(&mut self) -> Option<ExitInfo> {
        reap(&mut self.process, &self.exited).await
    }

    /// Handles every complete frame in `inbuf`.
    pub(crate) fn take_results(
        &mut self,
        ctx: &PoolCtx,
        inflight: &mut VecDeque<InFlight>,
    ) -> Result<(), String> {
        let (pos, outcome) =
            wire::for_each_from_worker(&self.inbuf, ctx.config.max_frame, |message| {
                self.settle(ctx, inflight, message)
            });
        self.inbuf.drain(..pos);
        self.keeper.after_use(&mut self.inbuf, pos);
        outcome
    }

    /// Settles the job a result message answers: the one in flight.
    fn settle(
        &self,
        ctx: &PoolCtx,
        inflight: &mut VecDeque<InFlight>,
        message: FromWorker<'_>,
    ) -> Result<(), String> {
        let FromWorker::Result {
            seq,
            next,
            nanos,
            status,
            payload,
            ..
        } = message
        else {
            return Err("unexpected message after the handshake".into());
        };
        if inflight.front().map(|e| e.seq) != Some(seq) {
            return Err(format!("result for job {seq}, which it was not running"));
        }
        if next != 0 {
            return Err(format!(
                "worker names job {next} as next, which it was not sent"
            ));
        }
        if let Some(entry) = inflight.pop_front() {
            ctx.counters.running.fetch_sub(1, Ordering::Relaxed);
            ctx.finished(&entry.job, (status, nanos), super::job::now_nanos);
            entry.job.slot.deliver(status, payload, self.pid);
        }
        Ok(())
    }
}

/// Resolves once the worker process has exited (never once it was reaped).
pub(crate) async fn exit_of(process: &mut Option<Box<dyn WorkerProcess>>) {
    match process {
        // An error waiting is not an exit: let the pipes tell.
        Some(p) => {
            if p.exit().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// Sleeps for `d`, or forever when there is no timer.
pub(crate) async fn sleep_or_never(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Resident memory (the working set) of process `pid`.
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    use windows_sys::Win32::Foundation::CloseHandle;
    use windows_sys::Win32::System::ProcessStatus::{
        K32GetProcessMemoryInfo, PROCESS_MEMORY_COUNTERS,
    };
    use windows_sys::Win32::System::Threading::{OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION};
    // SAFETY: a plain query; the handle is checked and closed below.
    let handle = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
    if handle.is_null() {
        return None;
    }
    // SAFETY: a zeroed counters structure is valid; its size is passed in.
    let mut counters: PROCESS_MEMORY_COUNTERS = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of_val(&counters) as u32;
    // SAFETY: `handle` is open and `counters` is writable for `size` bytes.
    let ok = unsafe { K32GetProcessMemoryInfo(handle, &mut counters, size) } != 0;
    // SAFETY: opened above, closed once.
    unsafe { CloseHandle(handle) };
    ok.then_some(counters.WorkingSetSize as u64)
}

/// Kills and reaps a worker's process, once (`process` is taken).
pub(crate) async fn reap(
    process: &mut Option<Box<dyn WorkerProcess>>,
    _exited: &(),
) -> Option<ExitInfo> {
    let mut process = process.take()?;
    process.kill();
    process.exit().await.ok()
}

fn handshake(pid: u32, message: &str) -> Error {
    Error::Handshake {
        pid,
        message: message.to_string(),
    }
}

pub(crate) fn describe(exit: Option<ExitInfo>) -> String {
    match exit {
        Some(ExitInfo { code: Some(c), .. }) => format!("exit code {c}"),
        _ => "unknown status".into(),
    }
}
