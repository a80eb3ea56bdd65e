//! Workers on other machines: [`Remote`] names a launcher (OpenSSH, or any
//! "run this command with stdio" tool such as Slurm's `srun`) that starts some
//! of a [`ProcessPool`](crate::ProcessPool)'s workers elsewhere. They speak
//! the same protocol over the launcher's stdin and stdout (see the worker's
//! stdio mode), so tasks, errors and kill-on-drop work as for local workers.
//!
//! * [`ssh`] builds the argv of the ssh client and the far command line
//!   (every piece quoted here; options go as separate arguments, never
//!   through a local shell).
//! * [`ship`] copies the executable once per host and pool to a
//!   content-addressed path and verifies that it runs there.
//! * [`launch`] is the [`Launcher`](crate::process::launcher::Launcher) for
//!   remote slots, and what their exit statuses mean.

#[cfg(unix)]
pub(crate) mod launch;
#[cfg(unix)]
pub(crate) mod ship;
#[cfg(unix)]
pub(crate) mod ssh;

use std::ffi::OsString;
use std::path::PathBuf;

/// Where some of a pool's workers run: another machine reached through
/// OpenSSH, or any launcher that runs a command with its stdio connected to
/// the pool. Added to a pool with
/// [`ProcessPoolBuilder::remote`](crate::ProcessPoolBuilder::remote).
///
/// Nothing is installed on the far side but this program's own executable:
///
/// * **ssh**: the executable is copied, once per host and pool build, to
///   `~/.cache/procpool/<name>-<content hash>` (atomically, so pools building
///   at once are safe), then run there to check it works — a host that
///   cannot run it (another architecture or C library) fails the build with
///   [`Error::Remote`](crate::Error::Remote) naming the host. Later pools
///   reuse the copy. The ssh client runs with `-T`, `BatchMode=yes` (it never
///   prompts), a connect timeout and keep-alives; [`arg`](Remote::arg) adds
///   options of your own (given first, so they take precedence).
/// * **command** (e.g. `srun`): the launcher's argv is followed by
///   `env PROCPOOL_WORKER=… <executable>`; nothing is copied, so the
///   executable must be at the same path on the far side (a shared file
///   system, as on most clusters), or at the path given with
///   [`executable`](Remote::executable).
///
/// Either way the worker checks that its executable has the same content
/// hash as the parent's before it takes any work. What a task prints to
/// stdout or stderr on the far side arrives on this process's stderr (through
/// the launcher); it never mixes with the protocol. Remote workers have no
/// direct lane ([`apply_blocking`](crate::ProcessPool::apply_blocking) queues
/// to them), and a pool with remotes refuses
/// [`max_memory_per_worker`](crate::ProcessPoolBuilder::max_memory_per_worker)
/// (it cannot watch their memory; use
/// [`memory_limit_per_worker`](crate::ProcessPoolBuilder::memory_limit_per_worker),
/// which the far side applies with `ulimit -d`).
///
/// ```no_run
/// use procpool::{ProcessPool, Remote};
///
/// fn square(x: u64) -> u64 { x * x }
///
/// let pool = ProcessPool::builder()
///     .workers(2)                                                  // on this machine
///     .remote(Remote::ssh("user@host").arg("-p").arg("2222").workers(4))
///     .remote(Remote::command(["srun", "-u", "-N1", "-n1", "--"]).workers(8))
///     .build()?;
/// assert_eq!(pool.apply_blocking(square, 12), Ok(144));
/// for info in pool.workers_info() {
///     println!("{} pid {}", info.host.as_deref().unwrap_or("local"), info.pid);
/// }
/// # Ok::<(), procpool::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Remote {
    pub(crate) how: How,
    pub(crate) workers: usize,
    pub(crate) name: Option<String>,
    pub(crate) executable: Option<PathBuf>,
    pub(crate) ship_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub(crate) enum How {
    Ssh {
        destination: String,
        options: Vec<OsString>,
    },
    Command {
        argv: Vec<OsString>,
    },
}

impl Remote {
    /// Workers on `destination` (`host`, `user@host`, or a `Host` alias of
    /// your ssh config), started by the `ssh` client found on `PATH`. The
    /// destination is passed to ssh as one argument, after `--`, so it can
    /// never be taken as an option or reach a shell.
    ///
    /// ```
    /// let remote = procpool::Remote::ssh("build@node7").arg("-p").arg("2222").workers(4);
    /// assert_eq!(remote.host(), "build@node7");
    /// ```
    pub fn ssh(destination: impl Into<String>) -> Remote {
        Remote::new(How::Ssh {
            destination: destination.into(),
            options: Vec::new(),
        })
    }

    /// Workers started by running `argv` followed by the worker's own
    /// command line (`env PROCPOOL_WORKER=… <executable>`), with the pool
    /// connected to its stdin and stdout: `srun -N1 -n1 --`, a container
    /// runner, or a wrapper script of your own. Must not be empty.
    ///
    /// ```
    /// let remote = procpool::Remote::command(["srun", "-u", "-N1", "-n1", "--"]).workers(8);
    /// assert_eq!(remote.host(), "srun");
    /// ```
    pub fn command<I, S>(argv: I) -> Remote
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Remote::new(How::Command {
            argv: argv.into_iter().map(Into::into).collect(),
        })
    }

    fn new(how: How) -> Remote {
        Remote {
            how,
            workers: 1,
            name: None,
            executable: None,
            ship_file: None,
        }
    }

    /// One more argument: for ssh, an option placed before the destination
    /// (`-p 2222`, `-F config`, `-o ControlMaster=auto`…); for a command
    /// launcher, appended to its argv.
    ///
    /// ```
    /// let remote = procpool::Remote::ssh("host").arg("-o").arg("Compression=no");
    /// # let _ = remote;
    /// ```
    pub fn arg(mut self, arg: impl Into<OsString>) -> Remote {
        match &mut self.how {
            How::Ssh { options, .. } => options.push(arg.into()),
            How::Command { argv } => argv.push(arg.into()),
        }
        self
    }

    /// How many workers this launcher starts (default 1).
    ///
    /// ```
    /// let remote = procpool::Remote::ssh("host").workers(4);
    /// # let _ = remote;
    /// ```
    pub fn workers(mut self, n: usize) -> Remote {
        self.workers = n;
        self
    }

    /// The host name shown in errors and [`WorkerInfo`] (default: the ssh
    /// destination, or the launcher's program name).
    ///
    /// ```
    /// let remote = procpool::Remote::command(["srun", "--"]).name("cluster");
    /// assert_eq!(remote.host(), "cluster");
    /// ```
    pub fn name(mut self, host: impl Into<String>) -> Remote {
        self.name = Some(host.into());
        self
    }

    /// For a command launcher: the path of this program's executable on the
    /// far side (default: its path here). Ignored for ssh, which ships it.
    ///
    /// ```
    /// let remote = procpool::Remote::command(["srun", "--"]).executable("/shared/bin/app");
    /// # let _ = remote;
    /// ```
    pub fn executable(mut self, path: impl Into<PathBuf>) -> Remote {
        self.executable = Some(path.into());
        self
    }

    /// Test hook: ship this file instead of the running executable (to test
    /// a host that cannot run it, or runs another build).
    #[doc(hidden)]
    pub fn ship_file_for_testing(mut self, path: impl Into<PathBuf>) -> Remote {
        self.ship_file = Some(path.into());
        self
    }

    /// The name this remote goes by in errors and [`WorkerInfo`].
    ///
    /// ```
    /// assert_eq!(procpool::Remote::ssh("me@example").host(), "me@example");
    /// ```
    pub fn host(&self) -> &str {
        if let Some(name) = &self.name {
            return name;
        }
        match &self.how {
            How::Ssh { destination, .. } => destination,
            How::Command { argv } => argv
                .first()
                .and_then(|p| std::path::Path::new(p).file_name())
                .and_then(|p| p.to_str())
                .unwrap_or("command"),
        }
    }
}

/// Where one live worker of a [`ProcessPool`](crate::ProcessPool) runs, from
/// [`workers_info`](crate::ProcessPool::workers_info).
///
/// ```
/// let pool = procpool::ProcessPool::new(1)?;
/// let info = pool.workers_info();
/// assert_eq!(info.len(), 1);
/// assert_eq!(info[0].host, None); // on this machine
/// assert_eq!(pool.worker_pids(), vec![info[0].pid]);
/// # Ok::<(), procpool::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerInfo {
    /// `None` for a worker on this machine, else the [`Remote::host`] it
    /// runs on.
    pub host: Option<String>,
    /// The worker's process id on its own machine.
    pub pid: u32,
}

/// The host of each slot: `local` local slots (`None`), then each remote's.
pub(crate) fn slot_hosts(local: usize, remotes: &[Remote]) -> Vec<Option<std::sync::Arc<str>>> {
    let mut hosts = vec![None; local];
    for remote in remotes {
        let host: std::sync::Arc<str> = remote.host().into();
        hosts.extend(std::iter::repeat_n(Some(host), remote.workers));
    }
    hosts
}

/// The pool's launcher for the slots [`slot_hosts`] describes: each remote is
/// prepared first (see [`launch::RemoteLauncher::prepare`]; for ssh, the
/// executable is shipped).
pub(crate) fn launcher(
    local: usize,
    remotes: &[Remote],
) -> Result<Box<dyn crate::process::launcher::Launcher>, crate::Error> {
    use crate::process::launcher::LocalLauncher;
    if remotes.iter().all(|r| r.workers == 0) {
        return Ok(Box::new(LocalLauncher));
    }
    #[cfg(windows)]
    {
        let _ = local;
        let remote = remotes
            .iter()
            .find(|r| r.workers > 0)
            .expect("checked above");
        Err(crate::Error::Remote {
            host: remote.host().to_string(),
            message: "remote workers are not supported on Windows yet".into(),
        })
    }
    #[cfg(unix)]
    {
        remote_launcher(local, remotes)
    }
}

#[cfg(unix)]
fn remote_launcher(
    local: usize,
    remotes: &[Remote],
) -> Result<Box<dyn crate::process::launcher::Launcher>, crate::Error> {
    use crate::process::launcher::LocalLauncher;
    let hash = crate::exe_hash::own_hash()?;
    let mut launchers = vec![None; local];
    for remote in remotes.iter().filter(|r| r.workers > 0) {
        let launcher = std::sync::Arc::new(launch::RemoteLauncher::prepare(remote, hash)?);
        launchers.extend(std::iter::repeat_n(Some(launcher), remote.workers));
    }
    Ok(Box::new(launch::Dispatch::new(
        Box::new(LocalLauncher),
        launchers,
    )))
}
