//! Knowing when a worker process exits, as a descriptor that becomes readable
//! then: the supervisor awaits it, and a direct-lane borrower polls it beside
//! the reply pipe. A worker's death is thus seen at once, even while a process
//! its task forked holds the worker's pipes open (so end of file never comes).
//!
//! - Linux (native backend): a pidfd.
//! - Portable backend (other Unix systems, or `--cfg procpool_portable`): a
//!   pipe whose write end a small thread holds while it waits in
//!   `waitid(WEXITED | WNOWAIT)`; it closes the pipe when the process has
//!   exited. `WNOWAIT` leaves the child unreaped, so its pid cannot be reused
//!   before the supervisor reaps it (and so the supervisor's kill can never
//!   reach another process).
//!
//! Both are opened while the worker is our unreaped child, so the pid cannot
//! name another process.

use std::os::fd::OwnedFd;

/// A descriptor that becomes readable once process `pid` (our child) exits;
/// `None` if none could be made (the supervisor then relies on end of file on
/// the worker's pipes, and reaps with a blocking wait).
#[cfg(all(target_os = "linux", not(procpool_portable)))]
pub(crate) fn exit_watch(pid: u32) -> Option<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
}

/// See the Linux version; this one is a pipe closed by a waiting thread.
#[cfg(not(all(target_os = "linux", not(procpool_portable))))]
pub(crate) fn exit_watch(pid: u32) -> Option<OwnedFd> {
    use rustix::process::{waitid, WaitId, WaitIdOptions};
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)?;
    let (read, write) = super::launcher::cloexec_pipe().ok()?;
    std::thread::Builder::new()
        .name("procpool-exit-watch".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            // Returns when the child has exited (or, ECHILD, when it was
            // reaped already); either way the watch fires.
            while let Err(rustix::io::Errno::INTR) = waitid(
                WaitId::Pid(pid),
                WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
            ) {}
            drop(write);
        })
        .ok()?;
    Some(read)
}
