//! How a worker process is started, and which two byte streams it talks over
//! (plus, optionally, a third: the reply stream of the direct lane).
//!
//! Kept behind one small trait so that workers could later be started
//! elsewhere (over ssh, by a cluster scheduler) speaking the same protocol.
//! [`LocalLauncher`] re-executes the current program on this machine.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};

use crate::worker::{self, Spec};

/// What a launcher needs to start one worker.
#[derive(Debug, Clone)]
pub(crate) struct LaunchSpec {
    /// Build identity the worker must match.
    pub(crate) identity: u64,
    /// Largest frame either side may send.
    pub(crate) max_frame: u64,
    /// Hard cap on the worker's data segment (heap), if any.
    pub(crate) memory_limit: Option<u64>,
    /// How much lower than the parent's the worker's priority is (0 = same).
    pub(crate) nice: i32,
    /// The pool slot the worker is for (remote slots have their own launcher).
    pub(crate) slot: usize,
    /// Slots of the worker's result ring (the most queue jobs it may hold).
    pub(crate) ring_slots: usize,
}

/// A started worker: the parent's ends of its streams, and the process.
pub(crate) struct Launched {
    /// Jobs go here.
    pub(crate) to_worker: OwnedFd,
    /// Results come from here.
    pub(crate) from_worker: OwnedFd,
    /// Results of direct jobs come from here, in blocking mode; `None` turns
    /// the direct lane off for this worker (see `process::lane`).
    pub(crate) replies: Option<OwnedFd>,
    /// The parent's side of the worker's result ring; `None`: results of
    /// queued jobs come through `from_worker` too.
    pub(crate) ring: Option<crate::ring::Ring>,
    /// The parent's side of the worker's regions for large frames (jobs,
    /// results); `None`: every frame crosses the pipes.
    pub(crate) regions: Option<Regions>,
    /// The process itself.
    pub(crate) process: Box<dyn WorkerProcess>,
}

/// A worker's two regions for large frames (see [`crate::region`]).
pub(crate) struct Regions {
    /// The parent writes large job frames here.
    pub(crate) jobs: crate::region::Region,
    /// The worker writes large result frames here.
    pub(crate) results: crate::region::Region,
}

impl Regions {
    /// Both regions, where the platform has them.
    fn create(max_frame: u64) -> Option<Regions> {
        use crate::region::Region;
        // The parent writes jobs in place; it reads results through the
        // file (see `crate::region`), so it maps only the job region.
        Some(Regions {
            jobs: Region::create(max_frame, true).ok()?,
            results: Region::create(max_frame, false).ok()?,
        })
    }
}

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExitInfo {
    pub(crate) code: Option<i32>,
    pub(crate) signal: Option<i32>,
}

/// Control over one started worker process.
pub(crate) trait WorkerProcess: Send {
    /// The worker's process id.
    fn pid(&self) -> u32;
    /// Sends SIGKILL; harmless if the process already exited.
    fn kill(&mut self);
    /// Waits for the process to end and reaps it.
    fn wait(&mut self) -> io::Result<ExitInfo>;
    /// Reaps the process if it has ended, without waiting.
    fn try_wait(&mut self) -> io::Result<Option<ExitInfo>>;
}

/// Starts worker processes.
pub(crate) trait Launcher: Send + Sync {
    /// Starts one worker. Called from the pool's long-lived supervisor thread.
    fn launch(&self, spec: &LaunchSpec) -> io::Result<Launched>;
}

/// Re-executes the current program as a worker on this machine.
#[derive(Debug, Default)]
pub(crate) struct LocalLauncher;

/// Bigger pipes mean fewer wake-ups when large arguments or results stream
/// through (the default is 64 KiB; 1 MiB is the unprivileged maximum).
#[cfg(all(target_os = "linux", not(procpool_portable)))]
fn enlarge(fd: &OwnedFd) {
    let _ = rustix::pipe::fcntl_setpipe_size(fd, 1 << 20);
}

#[cfg(not(all(target_os = "linux", not(procpool_portable))))]
fn enlarge(_fd: &OwnedFd) {}

/// A pipe whose ends are both close-on-exec.
#[cfg(all(target_os = "linux", not(procpool_portable)))]
pub(crate) fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    use rustix::pipe::{pipe_with, PipeFlags};
    Ok(pipe_with(PipeFlags::CLOEXEC)?)
}

/// A pipe whose ends are both close-on-exec. Without `pipe2` the flag is set
/// just after the pipe is made: a process that another thread of this program
/// forks and execs in that instant can inherit the ends (procpool's own
/// workers cannot, as all of them are started from the one supervisor thread
/// that makes their pipes).
#[cfg(not(all(target_os = "linux", not(procpool_portable))))]
pub(crate) fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = rustix::pipe::pipe()?;
    for fd in [&read, &write] {
        rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC)?;
    }
    Ok((read, write))
}

impl Launcher for LocalLauncher {
    fn launch(&self, spec: &LaunchSpec) -> io::Result<Launched> {
        // All ends are close-on-exec; only the child's own seven are made
        // inheritable, in the child, so no worker holds another's pipes (which
        // would keep a dead parent's lifeline open).
        let (job_r, job_w) = cloexec_pipe()?;
        let (res_r, res_w) = cloexec_pipe()?;
        let (reply_r, reply_w) = cloexec_pipe()?;
        let (life_r, life_w) = cloexec_pipe()?;
        enlarge(&job_w);
        enlarge(&res_w);
        enlarge(&reply_w);
        let ring = crate::ring::Ring::create(spec.ring_slots)?;
        let regions = Regions::create(spec.max_frame);
        let (job_region, result_region) = regions.as_ref().map_or((-1, -1), |r| {
            (r.jobs.fd().as_raw_fd(), r.results.fd().as_raw_fd())
        });

        let child_fds = [
            job_r.as_raw_fd(),
            res_w.as_raw_fd(),
            reply_w.as_raw_fd(),
            life_r.as_raw_fd(),
            ring.fd().as_raw_fd(),
            job_region,
            result_region,
        ];
        let env = worker_spec(child_fds, spec).to_env();
        let settings = ChildSettings {
            inherited: child_fds,
            nice: spec.nice,
            memory_limit: spec.memory_limit,
        };
        let mut cmd = Command::new(crate::image::program()?);
        cmd.env(worker::ENV_VAR, env).stdin(Stdio::null());
        let set_up = move || {
            // SAFETY: `pre_exec` runs this between fork and exec, and the
            // descriptors it names stay open until `spawn` returns.
            unsafe { settings.set_up() }
        };
        // SAFETY: `set_up` allocates nothing and makes only async-signal-safe
        // system calls (fcntl, signal, getpriority, setpriority, setrlimit).
        unsafe { cmd.pre_exec(set_up) };
        // Even if the worker never reads its lifeline.
        die_with_parent(&mut cmd);
        let child = cmd.spawn()?;
        drop((job_r, res_w, reply_w, life_r));
        Ok(Launched {
            to_worker: job_w,
            from_worker: res_r,
            replies: Some(reply_r),
            ring: Some(ring),
            regions,
            process: Box::new(ChildProcess::new(child, Some(life_w))),
        })
    }
}

/// The worker's [`Spec`], naming the descriptors it inherits in the order
/// `LocalLauncher::launch` lists them.
fn worker_spec(fds: [i32; 7], spec: &LaunchSpec) -> Spec {
    let [input, output, reply, lifeline, ring, job_region, result_region] = fds;
    Spec {
        input,
        output,
        reply,
        lifeline,
        ring,
        job_region,
        result_region,
        identity: spec.identity,
        max_frame: spec.max_frame,
    }
}

/// What the forked child sets up for itself before it execs the worker.
#[derive(Clone, Copy)]
struct ChildSettings {
    /// Descriptors the worker inherits (-1: none).
    inherited: [i32; 7],
    nice: i32,
    memory_limit: Option<u64>,
}

impl ChildSettings {
    /// Runs in the forked child, before exec: it allocates nothing and makes
    /// only async-signal-safe calls, as `pre_exec` requires.
    ///
    /// # Safety
    ///
    /// Every descriptor in `inherited` (other than -1) is open.
    unsafe fn set_up(self) -> io::Result<()> {
        for fd in self.inherited.into_iter().filter(|&fd| fd >= 0) {
            // SAFETY: open, as this function's contract requires.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
        }
        // A terminal's Ctrl-C goes to the whole foreground process group,
        // workers included. The parent decides what an interrupt means (finish
        // with `shutdown`, or die and take the workers along through the
        // lifeline), so workers ignore it. An ignored disposition survives
        // exec.
        // SAFETY: signal() is async-signal-safe; SIG_IGN installs no handler
        // code.
        if unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) } == libc::SIG_ERR {
            return Err(io::Error::last_os_error());
        }
        if self.nice != 0 {
            // Relative to the parent's, so it only ever lowers priority.
            let current = rustix::process::getpriority_process(None)?;
            rustix::process::setpriority_process(None, (current + self.nice).min(19))?;
        }
        if let Some(bytes) = self.memory_limit {
            // Allocation beyond this fails in the worker, which then aborts:
            // the worker dies, not the machine.
            let limit = rustix::process::Rlimit {
                current: Some(bytes),
                maximum: Some(bytes),
            };
            rustix::process::setrlimit(rustix::process::Resource::Data, limit)?;
        }
        Ok(())
    }
}

/// Makes `cmd`'s child die with this process (Linux: `PDEATHSIG`, checked
/// against a parent that died first). The child must be started from a
/// long-lived thread (the pool's supervisor, or the thread that builds the
/// pool and waits for the child), as `PDEATHSIG` fires when the forking
/// *thread* ends. Without it (the portable backend) a local worker still
/// dies with its parent through its lifeline, and a remote one by one more
/// hop: this process's death closes the ssh client's stdin, the client
/// passes the end of file on, and the far worker's stdin hangs up.
pub(crate) fn die_with_parent(cmd: &mut Command) {
    #[cfg(all(target_os = "linux", not(procpool_portable)))]
    {
        let parent = rustix::process::getpid();
        // SAFETY: the closure runs in the forked child before exec and only
        // makes async-signal-safe system calls (prctl, getppid).
        unsafe {
            cmd.pre_exec(move || {
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::KILL,
                ))?;
                // The parent may have died before the line above.
                if rustix::process::getppid() != Some(parent) {
                    // (An errno, not a message: `spawn` passes only the error
                    // code back to the parent, and this must not allocate.)
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
    }
    #[cfg(not(all(target_os = "linux", not(procpool_portable))))]
    let _ = cmd;
}

/// A worker process that is our direct child (started locally, or the local
/// client of a remote one), with anything that must live exactly as long.
pub(crate) struct ChildProcess {
    child: Child,
    /// Held until the process is dropped: for a local worker, the parent's end
    /// of the lifeline (never written, closed when this process dies or the
    /// worker is reaped).
    _keep: Option<OwnedFd>,
}

impl ChildProcess {
    pub(crate) fn new(child: Child, keep: Option<OwnedFd>) -> ChildProcess {
        ChildProcess { child, _keep: keep }
    }
}

impl WorkerProcess for ChildProcess {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn kill(&mut self) {
        // `Child::kill` does nothing harmful once the child has been reaped,
        // so the pid can never hit an unrelated process.
        let _ = self.child.kill();
    }

    fn wait(&mut self) -> io::Result<ExitInfo> {
        self.child.wait().map(exit_info)
    }

    fn try_wait(&mut self) -> io::Result<Option<ExitInfo>> {
        Ok(self.child.try_wait()?.map(exit_info))
    }
}

fn exit_info(status: std::process::ExitStatus) -> ExitInfo {
    ExitInfo {
        code: status.code(),
        signal: status.signal(),
    }
}
