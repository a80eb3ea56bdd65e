//! Starting a local worker process again when the system refuses it for a
//! moment.
//!
//! Process creation can fail for reasons that pass: `fork` meets a process
//! or memory limit that a finishing process frees (`EAGAIN`, `ENOMEM`), and
//! Windows (Wine in particular, while many processes start and die at once)
//! now and then answers `CreateProcess` with `ERROR_INTERNAL_ERROR`. Failing
//! the tasks a worker was to run on the first refusal would turn such a
//! moment into task errors, so a launch is tried a few times, briefly apart,
//! before the slot reports the failure (and its crash-loop breaker takes
//! over). Other failures (no such program, no permission, a bad
//! executable) are reported at once, and so is every failure once the pool
//! is being terminated.

use std::future::Future;
use std::io;
use std::time::Duration;

/// Pauses before the second, third and fourth attempt: at most about a
/// third of a second in all before a persistent failure is reported.
const PAUSES: [Duration; 3] = [
    Duration::from_millis(10),
    Duration::from_millis(50),
    Duration::from_millis(250),
];

/// Calls `launch` until it succeeds, fails for good, has failed
/// `PAUSES.len() + 1` times, or `stop` resolves (the pool is terminated,
/// which must not wait for a pause); the last error is returned.
pub(crate) async fn retrying<T>(
    mut launch: impl FnMut() -> io::Result<T>,
    stop: impl Future<Output = ()>,
) -> io::Result<T> {
    tokio::pin!(stop);
    let mut pauses = PAUSES.iter();
    loop {
        let refused = match launch() {
            Ok(launched) => return Ok(launched),
            Err(e) => e,
        };
        let Some(pause) = pauses.next().filter(|_| may_pass(&refused)) else {
            return Err(refused);
        };
        tracing::debug!(error = %refused, ?pause, "worker launch refused; trying again");
        tokio::select! {
            _ = tokio::time::sleep(*pause) => {}
            _ = &mut stop => return Err(refused),
        }
    }
}

/// Whether a launch that failed this way may succeed when tried again: the
/// system was short of something a finishing process gives back, or was
/// busy. Anything else (no such program, no permission, a bad executable,
/// a Job Object that cannot be made) would fail again the same way.
fn may_pass(e: &io::Error) -> bool {
    /// Windows' ERROR_INTERNAL_ERROR, which Wine's `CreateProcess` returns
    /// now and then while many processes start and end.
    const WINDOWS_INTERNAL_ERROR: i32 = 1359;
    /// Windows' ERROR_NO_SYSTEM_RESOURCES.
    const WINDOWS_NO_SYSTEM_RESOURCES: i32 = 1450;
    let windows_transient = cfg!(windows)
        && matches!(
            e.raw_os_error(),
            Some(WINDOWS_INTERNAL_ERROR | WINDOWS_NO_SYSTEM_RESOURCES)
        );
    windows_transient
        || matches!(
            e.kind(),
            io::ErrorKind::WouldBlock
                | io::ErrorKind::OutOfMemory
                | io::ErrorKind::ResourceBusy
                | io::ErrorKind::ExecutableFileBusy
                | io::ErrorKind::Interrupted
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    fn never() -> impl Future<Output = ()> {
        std::future::pending()
    }

    #[test]
    fn a_passing_refusal_is_tried_again() {
        let mut calls = 0;
        let got = runtime().block_on(retrying(
            || {
                calls += 1;
                match calls {
                    1 => Err(io::Error::from(io::ErrorKind::WouldBlock)),
                    2 => Err(io::Error::from(io::ErrorKind::OutOfMemory)),
                    _ => Ok(calls),
                }
            },
            never(),
        ));
        assert_eq!(got.unwrap(), 3);
    }

    #[test]
    fn a_lasting_refusal_is_reported_after_the_last_attempt() {
        let mut calls = 0;
        let got: io::Result<()> = runtime().block_on(retrying(
            || {
                calls += 1;
                Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("refusal {calls}"),
                ))
            },
            never(),
        ));
        assert_eq!(calls, PAUSES.len() + 1);
        assert_eq!(got.unwrap_err().to_string(), format!("refusal {calls}"));
    }

    #[test]
    fn a_failure_that_cannot_pass_is_reported_at_once() {
        for kind in [io::ErrorKind::NotFound, io::ErrorKind::PermissionDenied] {
            let mut calls = 0;
            let got: io::Result<()> = runtime().block_on(retrying(
                || {
                    calls += 1;
                    Err(io::Error::from(kind))
                },
                never(),
            ));
            assert_eq!(calls, 1);
            assert_eq!(got.unwrap_err().kind(), kind);
        }
        // ENOEXEC: a file that is no program stays one.
        let mut calls = 0;
        let got: io::Result<()> = runtime().block_on(retrying(
            || {
                calls += 1;
                Err(io::Error::other("exec format error"))
            },
            never(),
        ));
        assert_eq!((calls, got.is_err()), (1, true));
    }

    #[test]
    fn terminating_ends_the_pauses_at_once() {
        let mut calls = 0;
        let started = std::time::Instant::now();
        let got: io::Result<()> = runtime().block_on(retrying(
            || {
                calls += 1;
                Err(io::Error::from(io::ErrorKind::WouldBlock))
            },
            std::future::ready(()),
        ));
        assert_eq!(calls, 1);
        assert_eq!(got.unwrap_err().kind(), io::ErrorKind::WouldBlock);
        assert!(started.elapsed() < PAUSES[0] * 5, "{:?}", started.elapsed());
    }
}
