//! The launcher of remote slots: starts the ssh client (or the command
//! launcher) as a local child with the worker's job and result pipes as its
//! stdin and stdout, and tells what its exit status means.
//!
//! The chain that makes kill-on-drop and parent death reach the far side:
//! the local client dies (killed by the pool, or by `PDEATHSIG` when this
//! process dies) → its connection closes → the far worker's stdin hangs up →
//! the worker's watch thread ends it at once.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use super::{ship, ssh, How, Remote};
use crate::process::launcher::{
    cloexec_pipe, ChildProcess, ExitInfo, LaunchSpec, Launched, Launcher,
};
use crate::worker::stdio::serve_spec;
use crate::{Error, TaskError};

/// Starts the workers of one [`Remote`].
#[derive(Debug)]
pub(crate) struct RemoteLauncher {
    how: How,
    /// The executable's far path: a shell word for ssh, a plain path for a
    /// command launcher.
    path: String,
    hash: u64,
}

impl RemoteLauncher {
    /// Gets the far side ready (for ssh: ships the executable there).
    pub(crate) fn prepare(remote: &Remote, hash: u64) -> Result<RemoteLauncher, Error> {
        let host = remote.host().to_string();
        let failed = |message: String| Error::Remote {
            host: host.clone(),
            message,
        };
        let path = match &remote.how {
            How::Ssh {
                destination,
                options,
            } => {
                // The running image, unless a test ships another file.
                let file = match &remote.ship_file {
                    Some(path) => std::fs::File::open(path),
                    None => crate::image::open(),
                }
                .map_err(|e| failed(format!("cannot read the executable to ship: {e}")))?;
                let file_hash = crate::exe_hash::hash_file(&file)
                    .map_err(|e| failed(format!("cannot read the executable to ship: {e}")))?;
                let name = std::env::current_exe()
                    .ok()
                    .and_then(|p| p.file_name()?.to_str().map(str::to_string))
                    .unwrap_or_default();
                ship::ship(&ship::Shipment {
                    host: &host,
                    destination,
                    options,
                    file: &file,
                    name: &name,
                    hash,
                    file_hash,
                })?
            }
            How::Command { argv } => {
                if argv.is_empty() {
                    return Err(failed("the launcher command is empty".into()));
                }
                let path = match &remote.executable {
                    Some(p) => p.clone(),
                    None => std::env::current_exe()?,
                };
                path.to_str()
                    .ok_or_else(|| failed(format!("path {} is not UTF-8", path.display())))?
                    .to_string()
            }
        };
        Ok(RemoteLauncher {
            how: remote.how.clone(),
            path,
            hash,
        })
    }

    fn command(&self, spec: &LaunchSpec) -> Command {
        let env = serve_spec(self.hash, spec.identity, spec.max_frame);
        match &self.how {
            How::Ssh {
                destination,
                options,
            } => {
                let script = ssh::worker_script(&self.path, &env, spec.nice, spec.memory_limit);
                ssh::command(destination, options, &script)
            }
            How::Command { argv } => {
                let mut cmd = Command::new(&argv[0]);
                cmd.args(&argv[1..])
                    .arg("env")
                    .arg(format!("{}={env}", crate::worker::ENV_VAR))
                    .arg(&self.path);
                cmd
            }
        }
    }
}

impl Launcher for RemoteLauncher {
    fn launch(&self, spec: &LaunchSpec) -> io::Result<Launched> {
        let (job_r, job_w) = cloexec_pipe()?;
        let (res_r, res_w) = cloexec_pipe()?;
        let mut cmd = self.command(spec);
        // Stdio is dup'ed onto 0 and 1 in the child, which clears
        // close-on-exec there only. Stderr is shared: far prints show up on
        // ours.
        cmd.stdin(Stdio::from(job_r)).stdout(Stdio::from(res_w));
        // Its own process group: a Ctrl-C at the terminal is for this
        // process to handle, not a way to cut its connections.
        cmd.process_group(0);
        crate::process::launcher::die_with_parent(&mut cmd);
        let child = cmd.spawn()?;
        Ok(Launched {
            to_worker: job_w,
            from_worker: res_r,
            replies: None, // no direct lane over a launcher
            ring: None,    // nor shared memory
            regions: None,
            process: Box::new(ChildProcess::new(child, None)),
        })
    }
}

/// Launches each slot with its own launcher: local slots first, then each
/// remote's.
pub(crate) struct Dispatch {
    local: Box<dyn Launcher>,
    /// Per slot: its remote launcher, `None` for a local slot.
    slots: Vec<Option<std::sync::Arc<RemoteLauncher>>>,
}

impl Dispatch {
    pub(crate) fn new(
        local: Box<dyn Launcher>,
        slots: Vec<Option<std::sync::Arc<RemoteLauncher>>>,
    ) -> Dispatch {
        Dispatch { local, slots }
    }
}

impl Launcher for Dispatch {
    fn launch(&self, spec: &LaunchSpec) -> io::Result<Launched> {
        match self.slots.get(spec.slot).and_then(Option::as_ref) {
            Some(remote) => remote.launch(spec),
            None => self.local.launch(spec),
        }
    }
}

/// The error for a task whose remote worker went away. `far_pid` is the
/// worker's pid on its host (from its HELLO), `launcher_pid` the local
/// client's; `exit` is the local client's status.
///
/// ssh exits with the far command's code, which the far shell sets to
/// 128 + signal for a worker killed by a signal; it exits with 255 itself
/// when the connection fails. A command launcher that `exec`s the worker
/// (as the test stand-in for srun does) *is* the worker: then a signal is the
/// worker's.
pub(crate) fn death_error(
    host: &str,
    far_pid: u32,
    launcher_pid: u32,
    exit: Option<ExitInfo>,
) -> TaskError {
    let disconnected = || TaskError::Disconnected {
        host: host.to_string(),
    };
    let died = |code, signal| TaskError::RemoteWorkerDied {
        host: host.to_string(),
        pid: far_pid,
        code,
        signal,
    };
    match exit {
        Some(ExitInfo {
            signal: Some(sig), ..
        }) if far_pid == launcher_pid => died(None, Some(sig)),
        Some(ExitInfo {
            signal: Some(_), ..
        })
        | Some(ExitInfo {
            code: Some(255), ..
        }) => disconnected(),
        Some(ExitInfo { code: Some(c), .. }) if (129..=192).contains(&c) => {
            died(None, Some(c - 128))
        }
        Some(ExitInfo { code: Some(c), .. }) => died(Some(c), None),
        _ => disconnected(),
    }
}

/// Names the host in a start failure of a remote worker.
pub(crate) fn start_error(host: &str, e: Error) -> Error {
    match e {
        Error::Remote { .. } => e,
        Error::BuildMismatch { pid, message } => Error::BuildMismatch {
            pid,
            message: format!("on host {host}: {message}"),
        },
        Error::Initializer { pid, message } => Error::Initializer {
            pid,
            message: format!("on host {host}: {message}"),
        },
        other => Error::Remote {
            host: host.to_string(),
            message: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: Option<i32>, signal: Option<i32>) -> Option<ExitInfo> {
        Some(ExitInfo { code, signal })
    }

    #[test]
    fn exit_statuses_map_to_typed_errors() {
        let d = |e| death_error("h", 7, 9, e);
        let disc = TaskError::Disconnected { host: "h".into() };
        assert_eq!(d(exit(Some(255), None)), disc);
        assert_eq!(d(exit(None, Some(9))), disc);
        assert_eq!(d(None), disc);
        assert!(matches!(
            d(exit(Some(134), None)),
            TaskError::RemoteWorkerDied {
                pid: 7,
                code: None,
                signal: Some(6),
                ..
            }
        ));
        assert!(matches!(
            d(exit(Some(3), None)),
            TaskError::RemoteWorkerDied {
                code: Some(3),
                signal: None,
                ..
            }
        ));
        assert!(matches!(
            death_error("h", 9, 9, exit(None, Some(11))),
            TaskError::RemoteWorkerDied {
                signal: Some(11),
                ..
            }
        ));
    }
}
