//! The parent's side of one worker process: starting it (launch, HELLO,
//! initializer) and reaping it. Its results are read in [`super::results`];
//! the loop that feeds it is in [`super::serve`].

use std::io;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::unix::pipe;

use super::ctx::PoolCtx;
use super::exit_watch::exit_watch;
use super::init::InitJob;
use super::job::Job;
use super::launcher::{ExitInfo, LaunchSpec, Launched, WorkerProcess};
use crate::region::Region;
use crate::ring::Ring;
use crate::wire::{self, FromWorker};
use crate::Error;

/// A job sent to the worker and not yet answered.
pub(crate) struct InFlight {
    pub(crate) seq: u64,
    pub(crate) job: Job,
    pub(crate) cancel_sent: bool,
    /// When it was sent to an idle worker: its result then measures the
    /// round trip (a job queued behind others would include their run time).
    pub(crate) sent_idle: Option<std::time::Instant>,
}

/// One live worker process and its pipes.
pub(crate) struct Worker {
    /// Taken by [`Worker::reap`]; every path out of `start` or `serve` reaps.
    pub(crate) process: Option<Box<dyn WorkerProcess>>,
    /// The worker's pid on its machine (for a remote worker, from its HELLO).
    pub(crate) pid: u32,
    /// The local child's pid: the worker, or a remote worker's launcher.
    pub(crate) launcher_pid: u32,
    /// Where a remote worker runs; `None` on this machine.
    pub(crate) host: Option<std::sync::Arc<str>>,
    /// The pool slot it serves.
    pub(crate) slot: usize,
    pub(crate) tx: pipe::Sender,
    pub(crate) rx: pipe::Receiver,
    /// The reply pipe of direct jobs (non-blocking; read by lane borrowers).
    pub(crate) replies: Option<std::os::fd::OwnedFd>,
    /// Readable once the worker exits (a pidfd): its death is seen even while
    /// a process its task forked holds the worker's pipes open. Watched here
    /// and by lane borrowers.
    pub(crate) exited: Option<AsyncFd<std::os::fd::OwnedFd>>,
    /// Where the results of the queue's jobs are published, if the worker
    /// has a ring (see [`crate::ring`]); else they come through `rx`.
    pub(crate) ring: Option<Ring>,
    /// Where large job frames go, if the worker has regions (see
    /// [`crate::region`]); the serve loop takes it while it feeds the
    /// worker.
    pub(crate) job_region: Option<Region>,
    /// Where large results of the queue's jobs come from, if the worker has
    /// regions.
    pub(crate) result_region: Option<Region>,
    /// Results read out of the result region (see [`super::results`]).
    pub(crate) region_copy: RegionCopy,
    /// When the results being taken are settled (see [`super::results`]).
    pub(crate) settled_at: std::cell::OnceCell<u64>,
    pub(crate) inbuf: Vec<u8>,
    /// Bytes of the result pipe taken out of `inbuf` so far.
    pub(crate) pipe_taken: u64,
    /// Releases `inbuf`'s memory once large results stop coming.
    pub(crate) keeper: crate::buffer::Keeper,
    /// Sequence number of the next job sent.
    pub(crate) next_seq: u64,
}

/// Launches the process for slot `idx`. A local start that the system
/// refuses for a moment is tried a few times (see [`super::relaunch`]); a
/// remote one is not (its failures take the time of a connection, and name
/// their host).
async fn launch(ctx: &PoolCtx, idx: usize, remote: bool) -> Result<Launched, Error> {
    let spec = LaunchSpec {
        slot: idx,
        identity: ctx.config.identity,
        max_frame: ctx.config.max_frame,
        memory_limit: ctx.config.memory_limit,
        nice: ctx.config.nice,
        // Never fewer than the jobs a worker may hold (see `serve`).
        ring_slots: ctx.config.pipeline_depth + 2,
    };
    let launched = if remote {
        ctx.launcher.launch(&spec)
    } else {
        super::relaunch::retrying(|| ctx.launcher.launch(&spec), ctx.terminated()).await
    };
    launched.map_err(Error::Spawn)
}

/// The parent's copy of a result read out of the result region, and what
/// releases it once large results stop coming.
pub(crate) type RegionCopy = (Vec<u8>, crate::buffer::Keeper);

impl Worker {
    /// Launches a worker, completes its handshake and runs the initializer.
    pub(crate) async fn start(ctx: &PoolCtx, idx: usize) -> Result<Worker, Error> {
        let host = ctx.config.slot_hosts[idx].clone();
        let started = Worker::start_on(ctx, idx, host.clone()).await;
        // A remote worker's start failure names its host.
        started.map_err(|e| match &host {
            Some(h) => crate::remote::launch::start_error(h, e),
            None => e,
        })
    }

    async fn start_on(
        ctx: &PoolCtx,
        idx: usize,
        host: Option<std::sync::Arc<str>>,
    ) -> Result<Worker, Error> {
        let launched = launch(ctx, idx, host.is_some()).await?;
        let mut worker = Worker::adopt(launched, idx, host).await?;
        let pid = worker.pid;
        let started = tokio::select! {
            r = tokio::time::timeout(ctx.config.start_timeout, worker.greet(ctx)) => r,
            // `terminate` must not wait for a slow start.
            _ = ctx.stop.recv() => Ok(Err(handshake(pid, "the pool was terminated during start"))),
        };
        let failed = match started {
            Ok(Ok(())) => return Ok(worker),
            Ok(Err(e)) => e,
            Err(_) => handshake(pid, "timed out starting"),
        };
        worker.reap().await;
        Err(failed)
    }

    /// The parent's side of a just launched worker, before its handshake.
    async fn adopt(
        launched: Launched,
        idx: usize,
        host: Option<std::sync::Arc<str>>,
    ) -> Result<Worker, Error> {
        let process = launched.process;
        let (job_region, result_region) = launched.regions.map(|r| (r.jobs, r.results)).unzip();
        // Non-blocking: async borrowers read it when their reactor says so,
        // blocking ones poll() before each read.
        let replies = launched
            .replies
            .filter(|fd| rustix::io::ioctl_fionbio(fd, true).is_ok());
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
        Ok(Worker {
            process: Some(process),
            pid,
            launcher_pid: pid,
            host,
            slot: idx,
            tx,
            rx,
            exited: exit_watch(pid).and_then(|fd| {
                // SAFETY: an `OwnedFd` is a valid open descriptor that keeps
                // naming the same file until the `AsyncFd` that owns it drops.
                unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.ok()
            }),
            replies,
            ring: launched.ring,
            job_region,
            result_region,
            region_copy: Default::default(),
            settled_at: Default::default(),
            inbuf: Vec::with_capacity(64 * 1024),
            pipe_taken: 0,
            keeper: Default::default(),
            next_seq: 1,
        })
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
            Ok(Some(Ok(FromWorker::Hello { pid: far, .. }))) => {
                if self.host.is_some() {
                    self.pid = far; // errors and stats name the far process
                }
            }
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
        Ok(())
    }

    /// Runs the pool's initializer in the worker.
    async fn initialize(&mut self, init: &InitJob, max: u64) -> Result<(), Error> {
        let pid = self.pid;
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
        super::init::outcome(&body, pid)
    }

    /// Reads one whole frame (start-up only). `None` at end of file.
    async fn read_frame(&mut self, max: u64) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(frame) = wire::take_frame(&mut self.inbuf, max)
                .map_err(|e| io::Error::other(e.to_string()))?
            {
                self.pipe_taken += (wire::LEN_PREFIX + frame.len()) as u64;
                // (No job runs yet: the count is ready for the first.)
                self.pipe_read_done();
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

    /// Reads what the result pipe holds, without waiting.
    pub(crate) fn try_read(&mut self) -> io::Result<usize> {
        crate::buffer::reserve(&mut self.inbuf, 64 * 1024);
        self.pipe_reading();
        let read = self.rx.try_read_buf(&mut self.inbuf);
        self.pipe_read_done();
        read
    }
}

/// Resolves once the watched process has exited; never without a watch.
pub(crate) async fn exit_of(exited: &Option<AsyncFd<std::os::fd::OwnedFd>>) {
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
pub(crate) async fn sleep_or_never(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Resident memory of process `pid`, where the platform tells.
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}

/// Kills and reaps a worker's process, once (`process` is taken). With a
/// pidfd the exit is awaited on the supervisor's runtime; without one, a
/// blocking wait runs on tokio's blocking pool.
pub(crate) async fn reap(
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

pub(crate) fn describe(exit: Option<ExitInfo>) -> String {
    match exit {
        Some(ExitInfo {
            signal: Some(s), ..
        }) => format!("killed by signal {s}"),
        Some(ExitInfo { code: Some(c), .. }) => format!("exit code {c}"),
        _ => "unknown status".into(),
    }
}
