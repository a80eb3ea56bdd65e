//! Waiting on one descriptor, and writing all of a buffer to a pipe that may
//! be non-blocking: what the parent's direct lane and the worker share.

use std::os::fd::AsFd;

use rustix::event::{poll, PollFd, PollFlags, Timespec};

/// Waits until `fd` is ready for `flags`, for at most `timeout` (`None`: no
/// limit). `Ok(false)` after the timeout, or when a signal cut the wait short.
pub(crate) fn ready(
    fd: impl AsFd,
    flags: PollFlags,
    timeout: Option<&Timespec>,
) -> rustix::io::Result<bool> {
    let mut fds = [PollFd::new(&fd, flags)];
    match poll(&mut fds, timeout) {
        Ok(n) => Ok(n > 0),
        Err(rustix::io::Errno::INTR) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether `fd` has bytes to read (or its writer closed) right now.
pub(crate) fn readable_now(fd: impl AsFd) -> rustix::io::Result<bool> {
    ready(fd, PollFlags::IN, Some(&Timespec::default()))
}

/// Writes all of `bytes` to `fd`, waiting for room whenever it is
/// non-blocking and full.
pub(crate) fn write_all(fd: impl AsFd, mut bytes: &[u8]) -> rustix::io::Result<()> {
    while !bytes.is_empty() {
        match rustix::io::write(&fd, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(rustix::io::Errno::AGAIN) => {
                ready(&fd, PollFlags::OUT, None)?;
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
