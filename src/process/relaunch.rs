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
//! over). Failures that cannot pass (no such program, no permission, an
//! unsupported setting) are reported at once.

use std::io;
use std::time::Duration;

/// Pauses before the second, third and fourth attempt: at most about a
/// third of a second in all before a persistent failure is reported.
const PAUSES: [Duration; 3] = [
    Duration::from_millis(10),
    Duration::from_millis(50),
    Duration::from_millis(250),
];

/// Calls `launch` until it succeeds, fails for good, or has failed
/// `PAUSES.len() + 1` times; the last error is returned.
pub(crate) async fn retrying<T>(mut launch: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let mut pauses = PAUSES.iter();
    loop {
        match launch() {
            Ok(launched) => return Ok(launched),
            Err(e) if !may_pass(&e) => return Err(e),
            Err(e) => match pauses.next() {
                Some(pause) => {
                    tracing::debug!(error = %e, ?pause, "worker launch refused; trying again");
                    tokio::time::sleep(*pause).await;
                }
                None => return Err(e),
            },
        }
    }
}

/// Whether a launch that failed this way may succeed when tried again.
fn may_pass(e: &io::Error) -> bool {
    !matches!(
        e.kind(),
        io::ErrorKind::NotFound
            | io::ErrorKind::PermissionDenied
            | io::ErrorKind::Unsupported
            | io::ErrorKind::InvalidInput
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

    #[test]
    fn a_passing_refusal_is_tried_again() {
        let mut calls = 0;
        let got = runtime().block_on(retrying(|| {
            calls += 1;
            match calls {
                1 | 2 => Err(io::Error::from(io::ErrorKind::WouldBlock)),
                _ => Ok(calls),
            }
        }));
        assert_eq!(got.unwrap(), 3);
    }

    #[test]
    fn a_lasting_refusal_is_reported_after_the_last_attempt() {
        let mut calls = 0;
        let got: io::Result<()> = runtime().block_on(retrying(|| {
            calls += 1;
            Err(io::Error::other(format!("refusal {calls}")))
        }));
        assert_eq!(calls, PAUSES.len() + 1);
        assert_eq!(got.unwrap_err().to_string(), format!("refusal {calls}"));
    }

    #[test]
    fn a_failure_that_cannot_pass_is_reported_at_once() {
        let mut calls = 0;
        let got: io::Result<()> = runtime().block_on(retrying(|| {
            calls += 1;
            Err(io::Error::from(io::ErrorKind::NotFound))
        }));
        assert_eq!(calls, 1);
        assert_eq!(got.unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
