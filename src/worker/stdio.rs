//! The worker's stdio mode, for workers started on another machine by a
//! launcher (ssh, srun, …) that gives it nothing but stdin, stdout and stderr.
//!
//! * Jobs arrive on fd 0; results leave on a private copy of fd 1, after
//!   which fd 1 itself is pointed at fd 2: whatever a task prints goes to the
//!   launcher's stderr (on the parent's terminal, through ssh) and can never
//!   corrupt the frame stream. Fd 0 is pointed at `/dev/null` likewise, so a
//!   task reading stdin cannot eat jobs.
//! * There is no reply stream (the direct lane is off for remote workers).
//! * The lifeline is stdin itself: a thread polls it for hang-up only, which
//!   happens when the channel closes (the ssh client was killed, the
//!   connection dropped), and ends the worker at once, even mid-task. This
//!   works for a pipe (`POLLHUP`) and a socket (`POLLRDHUP`/`POLLHUP`) alike.
//! * Instead of the local build identity (which includes the file's inode),
//!   the parent sends a content hash of its executable; the worker hashes its
//!   own file and refuses work if they differ.
//!
//! The `verify` mode only checks that hash and prints one line: the parent
//! runs it right after shipping the executable, so a host that cannot run it
//! (another architecture or libc) is found before any worker starts.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::event::{poll, PollFd, PollFlags};

use super::{runner, Spec};
use crate::{exe_hash, wire};

/// Prefix of a stdio-mode worker spec:
/// `s1:<exe hash, hex>:<build identity, hex>:<max frame>`.
pub(crate) const SERVE: &str = "s1:";
/// Prefix of a verify spec: `verify:<exe hash, hex>`.
pub(crate) const VERIFY: &str = "verify:";
/// What a successful verify prints, followed by the hash.
pub(crate) const VERIFIED: &str = "procpool-verified";

/// The spec string for a stdio worker.
pub(crate) fn serve_spec(exe_hash: u64, identity: u64, max_frame: u64) -> String {
    format!("{SERVE}{exe_hash:016x}:{identity:016x}:{max_frame}")
}

/// The spec string for a verify run.
pub(crate) fn verify_spec(exe_hash: u64) -> String {
    format!("{VERIFY}{exe_hash:016x}")
}

/// Runs a stdio-mode spec if `value` is one; `None` otherwise.
pub(super) fn run(value: &str) -> Option<i32> {
    if let Some(rest) = value.strip_prefix(SERVE) {
        let mut parts = rest.split(':');
        let hash = u64::from_str_radix(parts.next()?, 16).ok()?;
        let identity = u64::from_str_radix(parts.next()?, 16).ok()?;
        let max = parts.next()?.parse().ok()?;
        return parts.next().is_none().then(|| serve(hash, identity, max));
    }
    let hash = u64::from_str_radix(value.strip_prefix(VERIFY)?, 16).ok()?;
    Some(verify(hash))
}

/// Checks this executable against the parent's hash: `Err` says why not.
fn check(expected: u64) -> Result<(), String> {
    match exe_hash::own_hash() {
        Ok(h) if h == expected => Ok(()),
        Ok(h) => Err(format!(
            "executable content hash {h:016x} differs from the parent's {expected:016x}: \
             the far side runs a different build of the program"
        )),
        Err(e) => Err(format!("cannot read its own executable: {e}")),
    }
}

fn verify(expected: u64) -> i32 {
    match check(expected) {
        Ok(()) => {
            println!("{VERIFIED} {expected:016x}");
            0
        }
        Err(why) => {
            eprintln!("procpool: {why}");
            2
        }
    }
}

fn serve(expected: u64, identity: u64, max_frame: u64) -> i32 {
    let (input, output, watch) = match take_stdio() {
        Ok(fds) => fds,
        Err(e) => {
            eprintln!("procpool worker: cannot set up its stdio: {e}");
            return 4;
        }
    };
    if let Err(reason) = check(expected) {
        let mut out = Vec::new();
        wire::encode_refused(&mut out, &reason);
        let _ = std::fs::File::from(output).write_all(&out);
        return 2;
    }
    watch_hangup(watch);
    let spec = Spec {
        input: into_raw(input),
        output: into_raw(output),
        reply: -1,
        lifeline: -1, // watched above
        ring: -1,     // results cross the network
        job_region: -1,
        result_region: -1,
        identity, // checked by the runner as for a local worker
        max_frame,
    };
    runner::serve(spec)
}

fn into_raw(fd: OwnedFd) -> i32 {
    std::os::fd::IntoRawFd::into_raw_fd(fd)
}

/// Private copies of stdin (jobs, and one to watch) and stdout (frames);
/// then fd 1 becomes a copy of fd 2 and fd 0 reads `/dev/null`.
fn take_stdio() -> std::io::Result<(OwnedFd, OwnedFd, OwnedFd)> {
    use rustix::io::fcntl_dupfd_cloexec;
    let stdin = rustix::stdio::stdin();
    let input = fcntl_dupfd_cloexec(stdin, 3)?;
    let watch = fcntl_dupfd_cloexec(stdin, 3)?;
    let output = fcntl_dupfd_cloexec(rustix::stdio::stdout(), 3)?;
    rustix::stdio::dup2_stdout(rustix::stdio::stderr())?;
    let null = std::fs::File::open("/dev/null")?;
    rustix::stdio::dup2_stdin(null.as_fd())?;
    Ok((input, output, watch))
}

/// Ends the process when `fd`'s other end hangs up.
fn watch_hangup(fd: OwnedFd) {
    super::exit_when(move || wait_for_hangup(fd.as_fd()));
}

/// Returns once `fd` reports hang-up (or an error). No readable interest is
/// requested, so bytes waiting to be read do not wake it.
fn wait_for_hangup(fd: BorrowedFd<'_>) {
    // A socket half-closed by the peer reports only RDHUP, where it exists.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let (want, gone) = (
        PollFlags::RDHUP,
        PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR | PollFlags::NVAL,
    );
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let (want, gone) = (
        PollFlags::empty(),
        PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL,
    );
    loop {
        let mut fds = [PollFd::new(&fd, want)];
        match poll(&mut fds, None) {
            Ok(_) if fds[0].revents().intersects(gone) => return,
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Hang-up is seen for both kinds of stdin a launcher may give, and bytes
    /// waiting to be read do not count as one.
    fn hangup_is_seen(reader: OwnedFd, mut writer: impl Write + Send + 'static) {
        writer.write_all(b"a job").unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            wait_for_hangup(reader.as_fd());
            tx.send(()).unwrap();
        });
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        drop(writer);
        rx.recv_timeout(Duration::from_secs(5))
            .expect("hang-up seen");
    }

    #[test]
    fn a_closed_pipe_is_a_hangup() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        hangup_is_seen(r, std::fs::File::from(w));
    }

    #[test]
    fn a_closed_socket_is_a_hangup() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        hangup_is_seen(OwnedFd::from(a), b);
    }

    #[test]
    fn specs_parse_back() {
        assert!(serve_spec(0xab, 0xcd, 10).starts_with(SERVE));
        assert_eq!(verify_spec(0xab), "verify:00000000000000ab");
        assert_eq!(run("s1:zz:1:1"), None);
        assert_eq!(run("s1:1:2:3:4"), None);
        assert_eq!(run("verify:"), None);
        assert_eq!(run("v2:1:2:3:4:5:6"), None);
    }
}
