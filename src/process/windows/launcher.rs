//! Windows: how a worker process is started (the same executable, through
//! `CreateProcess` by way of tokio's `Command`), and the two byte streams it
//! talks over: its standard input (jobs) and standard output (results).
//!
//! Every worker is put in one Job Object per parent process, created with
//! `JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE`: when the parent dies for any reason
//! the system closes its last handle to the job and ends every worker, busy
//! or not. (An idle worker also exits on its own when its standard input
//! reaches end of file.)

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::process::Stdio;

use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::worker::{self, Spec};

/// What a launcher needs to start one worker.
#[derive(Debug, Clone)]
pub(crate) struct LaunchSpec {
    /// Build identity the worker must match.
    pub(crate) identity: u64,
    /// Largest frame either side may send.
    pub(crate) max_frame: u64,
    /// Hard cap on the worker's memory: not supported on Windows yet (the
    /// launch fails with `Unsupported` rather than ignore it).
    pub(crate) memory_limit: Option<u64>,
    /// How much lower than the parent's the worker's priority is (0 = same).
    pub(crate) nice: i32,
}

/// A started worker: the parent's ends of its streams, and the process.
pub(crate) struct Launched {
    /// Jobs go here (the worker's standard input).
    pub(crate) to_worker: ChildStdin,
    /// Results come from here (the worker's standard output).
    pub(crate) from_worker: ChildStdout,
    /// The process itself.
    pub(crate) process: Box<dyn WorkerProcess>,
}

/// How a worker process ended. On Windows there are no signals: a crash
/// shows as its exception's NTSTATUS exit code (0xC0000005 for an access
/// violation, as an `i32`), a kill as exit code 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExitInfo {
    pub(crate) code: Option<i32>,
    pub(crate) signal: Option<i32>,
}

/// Control over one started worker process.
pub(crate) trait WorkerProcess: Send {
    /// The worker's process id.
    fn pid(&self) -> u32;
    /// Ends the process at once (`TerminateProcess`); harmless once it
    /// exited.
    fn kill(&mut self);
    /// Resolves when the process has ended (cancel safe; again and again
    /// after that).
    fn exit(&mut self) -> Pin<Box<dyn Future<Output = io::Result<ExitInfo>> + Send + '_>>;
}

/// Starts worker processes.
pub(crate) trait Launcher: Send + Sync {
    /// Starts one worker. Called on the pool's supervisor runtime.
    fn launch(&self, spec: &LaunchSpec) -> io::Result<Launched>;
}

/// Re-executes the current program as a worker on this machine.
#[derive(Debug, Default)]
pub(crate) struct LocalLauncher;

impl Launcher for LocalLauncher {
    fn launch(&self, spec: &LaunchSpec) -> io::Result<Launched> {
        if spec.memory_limit.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "memory_limit_per_worker is not supported on Windows yet",
            ));
        }
        let env = Spec {
            input: -1,
            output: -1,
            reply: -1,
            lifeline: -1,
            ring: -1,
            job_region: -1,
            result_region: -1,
            identity: spec.identity,
            max_frame: spec.max_frame,
        }
        .to_env();
        let mut cmd = Command::new(crate::image::program()?);
        cmd.env(worker::ENV_VAR, env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .creation_flags(priority_class(spec.nice));
        let mut child = cmd.spawn()?;
        if let Err(e) = job::adopt(&child) {
            // Without the job the worker could outlive a parent that dies
            // while the worker is busy: refuse it.
            let _ = child.start_kill();
            return Err(io::Error::new(
                e.kind(),
                format!("could not put the worker in the pool's Job Object: {e}"),
            ));
        }
        let (Some(to_worker), Some(from_worker)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.start_kill();
            return Err(io::Error::other(
                "the worker's standard streams are missing",
            ));
        };
        let pid = child.id().unwrap_or(0);
        Ok(Launched {
            to_worker,
            from_worker,
            process: Box::new(LocalProcess { child, pid }),
        })
    }
}

/// The creation flag for a worker `nice` steps below the parent: Windows has
/// priority classes, not niceness, so any lowering means below normal, and a
/// lot (10 or more) means idle.
fn priority_class(nice: i32) -> u32 {
    use windows_sys::Win32::System::Threading::{BELOW_NORMAL_PRIORITY_CLASS, IDLE_PRIORITY_CLASS};
    match nice {
        n if n >= 10 => IDLE_PRIORITY_CLASS,
        n if n > 0 => BELOW_NORMAL_PRIORITY_CLASS,
        _ => 0,
    }
}

struct LocalProcess {
    child: Child,
    pid: u32,
}

impl WorkerProcess for LocalProcess {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn kill(&mut self) {
        // TerminateProcess; fails harmlessly once the process has exited
        // (tokio keeps the handle open, so the pid is never reused under it).
        let _ = self.child.start_kill();
    }

    fn exit(&mut self) -> Pin<Box<dyn Future<Output = io::Result<ExitInfo>> + Send + '_>> {
        Box::pin(async move {
            let status = self.child.wait().await?;
            Ok(ExitInfo {
                code: status.code(),
                signal: None,
            })
        })
    }
}

/// The Job Object all of this process's workers belong to.
mod job {
    use std::io;
    use std::sync::OnceLock;

    use windows_sys::Win32::Foundation::HANDLE;
    use windows_sys::Win32::System::JobObjects::{
        AssignProcessToJobObject, CreateJobObjectW, JobObjectExtendedLimitInformation,
        SetInformationJobObject, JOBOBJECT_EXTENDED_LIMIT_INFORMATION,
        JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
    };

    /// A job handle, never closed: the system closes it when this process
    /// ends, which is what kills the workers.
    struct Job(HANDLE);
    // SAFETY: a job handle is a kernel object reference, usable from any
    // thread; it is never closed while this process runs.
    unsafe impl Send for Job {}
    // SAFETY: as above; the calls made with it are thread safe.
    unsafe impl Sync for Job {}

    static JOB: OnceLock<Result<Job, i32>> = OnceLock::new();

    /// Puts `child` in the job (created on first use).
    pub(super) fn adopt(child: &tokio::process::Child) -> io::Result<()> {
        let job = match JOB.get_or_init(create) {
            Ok(job) => job,
            Err(code) => return Err(io::Error::from_raw_os_error(*code)),
        };
        let process = child
            .raw_handle()
            .ok_or_else(|| io::Error::other("the worker exited at once"))?;
        // SAFETY: both handles are open: the job's forever, the process's
        // while `child` lives.
        if unsafe { AssignProcessToJobObject(job.0, process as HANDLE) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn create() -> Result<Job, i32> {
        let code = || io::Error::last_os_error().raw_os_error().unwrap_or(-1);
        // SAFETY: null attributes and name: an unnamed, non-inheritable job.
        let handle = unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) };
        if handle.is_null() {
            return Err(code());
        }
        // SAFETY: a zeroed limit structure is valid (no limits set).
        let mut info: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = unsafe { std::mem::zeroed() };
        info.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
        // SAFETY: `info` is the structure this information class expects, and
        // its size is passed with it.
        let set = unsafe {
            SetInformationJobObject(
                handle,
                JobObjectExtendedLimitInformation,
                &info as *const _ as *const std::ffi::c_void,
                std::mem::size_of_val(&info) as u32,
            )
        };
        if set == 0 {
            return Err(code());
        }
        Ok(Job(handle))
    }
}
