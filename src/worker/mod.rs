//! The worker side: the same executable, re-executed, taken over by a
//! link-time constructor before `main` can run.
//!
//! The parent starts a worker with [`ENV_VAR`] set to a [`Spec`]: the descriptor
//! numbers of its pipes, the parent's build identity and the frame limit.
//! The constructor removes the variable (so the task's own child processes do
//! not become workers), serves jobs until the parent closes the job pipe, and
//! exits. `main` never runs in a worker.

#[cfg_attr(windows, path = "windows_runner.rs")]
mod runner;
#[cfg(unix)]
pub(crate) mod stdio;

#[cfg(unix)]
use std::os::fd::RawFd;
/// On Windows the worker's channels are its standard input and output, and
/// these numbers are unused (-1).
#[cfg(windows)]
type RawFd = i32;
use std::sync::atomic::{AtomicBool, Ordering};

/// Environment variable that turns a process into a worker.
pub(crate) const ENV_VAR: &str = "PROCPOOL_WORKER";

static IS_WORKER: AtomicBool = AtomicBool::new(false);

/// Inside a worker, the descriptor the running job's result goes to (the
/// result pipe, or the reply pipe during a direct job); -1 elsewhere. Only the
/// protocol-fault test hooks use it.
#[cfg(unix)]
pub(crate) static OUTPUT_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// Test hook: from inside a task, writes bytes that are not a valid frame to
/// the parent, as a corrupted or malicious worker would. Does nothing outside
/// a worker.
#[doc(hidden)]
pub fn corrupt_protocol_stream() {
    write_to_parent(&[0xff, 0xff, 0xff, 0x7f, 0xde, 0xad]);
}

/// Test hook: from inside a task, sends a well-formed result for a job the
/// parent never sent.
#[doc(hidden)]
pub fn send_result_for_unknown_job() {
    let mut frame = Vec::new();
    crate::wire::begin_result(&mut frame, 0, crate::wire::Status::Ok);
    frame.push(0xc0); // MessagePack nil
    crate::wire::finish_result(&mut frame, 0, 0, 0);
    write_to_parent(&frame);
}

/// Test hook: from inside a task, writes `bytes` to the parent's protocol
/// channel (the fuzz tests send arbitrary bytes this way).
#[doc(hidden)]
pub fn write_bytes_to_parent(bytes: &[u8]) {
    write_to_parent(bytes);
}

#[cfg(windows)]
fn write_to_parent(bytes: &[u8]) {
    runner::write_to_parent(bytes);
}

#[cfg(unix)]
fn write_to_parent(bytes: &[u8]) {
    let fd = OUTPUT_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: the descriptor stays open for the worker's whole life; the
        // borrow ends with this call.
        let out = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let _ = rustix::io::write(out, bytes);
    }
}

/// Ends this worker process at once when `wait` returns, which a thread of
/// its own waits for: the parent is gone, whatever a task is doing meanwhile.
/// A worker that cannot start that thread could outlive its parent, so it
/// refuses to run instead.
#[cfg(unix)]
fn exit_when(wait: impl FnOnce() + Send + 'static) {
    let watcher = move || {
        wait();
        // SAFETY: `_exit` ends the process without running any code that
        // could observe half-finished state.
        unsafe { libc::_exit(0) }
    };
    if std::thread::Builder::new()
        .name("procpool-lifeline".into())
        .spawn(watcher)
        .is_err()
    {
        // SAFETY: as above.
        unsafe { libc::_exit(5) }
    }
}

/// The worker's first frame, into `out`: HELLO when this worker runs the
/// parent's build (`expected`), else REFUSED saying why. `false` if refused.
fn greet(out: &mut Vec<u8>, expected: u64) -> bool {
    let identity = crate::func_ref::build_identity();
    if identity.as_ref().ok() == Some(&expected) {
        crate::wire::encode_hello(out, std::process::id(), expected);
        return true;
    }
    let reason = match identity {
        Ok(identity) => format!(
            "worker build identity {identity:016x} differs from the parent's {expected:016x}: \
             the worker runs a different build of the program, so functions cannot be named \
             across the two"
        ),
        Err(e) => format!("worker cannot read its own executable to check its build: {e}"),
    };
    crate::wire::encode_refused(out, &reason);
    false
}

/// True inside a worker process. A process pool must not be built here.
pub(crate) fn is_worker() -> bool {
    IS_WORKER.load(Ordering::Relaxed)
}

/// What a worker needs to know, passed in [`ENV_VAR`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Spec {
    /// Jobs arrive here (read end).
    pub(crate) input: RawFd,
    /// Results go here (write end).
    pub(crate) output: RawFd,
    /// Results of direct jobs go here (write end); -1 when there is none.
    pub(crate) reply: RawFd,
    /// Read end of the lifeline: end of file means the parent is gone.
    pub(crate) lifeline: RawFd,
    /// The result ring's shared memory; -1 when there is none.
    pub(crate) ring: RawFd,
    /// The regions for large job and result frames (see
    /// [`crate::region`]); -1 when there are none.
    pub(crate) job_region: RawFd,
    pub(crate) result_region: RawFd,
    /// The parent's build identity.
    pub(crate) identity: u64,
    /// Largest frame either side may send.
    pub(crate) max_frame: u64,
}

impl Spec {
    pub(crate) fn to_env(&self) -> String {
        format!(
            "v4:{}:{}:{}:{}:{}:{}:{}:{:x}:{}",
            self.input,
            self.output,
            self.reply,
            self.lifeline,
            self.ring,
            self.job_region,
            self.result_region,
            self.identity,
            self.max_frame
        )
    }

    pub(crate) fn parse(s: &str) -> Option<Spec> {
        let mut parts = s.split(':');
        if parts.next()? != "v4" {
            return None;
        }
        let spec = Spec {
            input: parts.next()?.parse().ok()?,
            output: parts.next()?.parse().ok()?,
            reply: parts.next()?.parse().ok()?,
            lifeline: parts.next()?.parse().ok()?,
            ring: parts.next()?.parse().ok()?,
            job_region: parts.next()?.parse().ok()?,
            result_region: parts.next()?.parse().ok()?,
            identity: u64::from_str_radix(parts.next()?, 16).ok()?,
            max_frame: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(spec)
    }
}

// The constructor must survive linking when procpool is a dependency: it lives
// in this module together with `ensure_linked`, which `ProcessPool::build`
// calls, so any program that can build a pool also links the worker entry.
#[ctor::ctor(unsafe)]
fn worker_entry() {
    crate::image::remember_at_start();
    let Some(value) = std::env::var_os(ENV_VAR) else {
        return;
    };
    IS_WORKER.store(true, Ordering::Relaxed);
    // SAFETY: constructors run before `main`, while the process has a single
    // thread, so nothing can read the environment concurrently.
    unsafe { std::env::remove_var(ENV_VAR) };
    // A worker started through a remote launcher has only stdio (see `stdio`).
    #[cfg(unix)]
    let stdio = value.to_str().and_then(stdio::run);
    #[cfg(not(unix))]
    let stdio: Option<i32> = None;
    let code = match (stdio, value.to_str().and_then(Spec::parse)) {
        (Some(code), _) => code,
        (None, Some(spec)) => runner::serve(spec),
        (None, None) => {
            eprintln!("procpool: malformed {ENV_VAR} value {value:?}; not a worker");
            3
        }
    };
    std::process::exit(code);
}

/// Keeps the worker entry linked into every program that builds a pool.
pub(crate) fn ensure_linked() {
    std::hint::black_box(worker_entry as fn());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips_and_rejects_garbage() {
        let spec = Spec {
            input: 5,
            output: 7,
            reply: 8,
            lifeline: 9,
            ring: 10,
            job_region: 11,
            result_region: -1,
            identity: 0xdead_beef,
            max_frame: 1 << 30,
        };
        assert_eq!(Spec::parse(&spec.to_env()), Some(spec));
        for bad in [
            "",
            "v1:1:2:3:4:5",
            "v2:1:2:3:4:5",
            "v3:1:2:-1:3:4:zz:5",
            "v3:1:2:-1:3:4:5:6:7",
            "v4:1:2:-1:3:4:5:6:7",
            "v4:1:2:-1:3:4:5:6:zz:7",
            "v2:1:2:-1:3:4:5",
            "v2:1:2",
        ] {
            assert_eq!(Spec::parse(bad), None, "{bad}");
        }
    }
}
