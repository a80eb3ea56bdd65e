//! Turning a caught panic into a message and a location.
//!
//! `catch_unwind` yields only the payload; the location is known only to the
//! panic hook. A hook installed once records the location of panics on procpool
//! threads (pool threads and worker processes) in a thread-local, then defers to
//! the previous hook so the program's own panic reporting is unchanged.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::sync::Once;

thread_local! {
    static ON_POOL_THREAD: Cell<bool> = const { Cell::new(false) };
    static LAST_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
    /// Set while [`catch_quietly`] runs: its panics are expected, not news.
    static QUIET_HERE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, whose panic is an expected answer rather than a bug (tokio
/// panics when asked for a reactor or timer its runtime was built without,
/// and has no other way to tell): `None` if it panicked, which is not
/// reported.
#[cfg_attr(windows, allow(dead_code))] // (used by the Unix async lane)
pub(crate) fn catch_quietly<T>(f: impl FnOnce() -> T) -> Option<T> {
    install_hook();
    QUIET_HERE.with(|q| q.set(true));
    let out = catch(f).ok();
    QUIET_HERE.with(|q| q.set(false));
    out
}

/// A caught panic: its message and, when known, its location.
#[derive(Debug)]
pub(crate) struct Caught {
    pub(crate) message: String,
    pub(crate) location: Option<String>,
}

/// Runs `f`, turning a panic into a [`Caught`]. The payload is dropped here
/// (guarded too: dropping a payload can itself panic).
pub(crate) fn catch<T>(f: impl FnOnce() -> T) -> Result<T, Caught> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|payload| {
        let caught = Caught {
            message: message(&*payload),
            location: take_location(),
        };
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(payload)));
        caught
    })
}

/// The longest panic message kept: a task that panics with megabytes of text
/// must not turn every error report (and log line) into megabytes.
pub(crate) const MAX_MESSAGE: usize = 64 * 1024;

/// The panic's message, for `&str` and `String` payloads, cut to
/// [`MAX_MESSAGE`] bytes.
pub(crate) fn message(payload: &(dyn Any + Send)) -> String {
    let text = if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.as_str()
    } else {
        "Box<dyn Any> (a panic payload that is not a string)"
    };
    bounded(text)
}

fn bounded(text: &str) -> String {
    if text.len() <= MAX_MESSAGE {
        return text.to_string();
    }
    let mut end = MAX_MESSAGE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes cut)", &text[..end], text.len() - end)
}

/// The location of the last panic caught on this thread, if recorded.
pub(crate) fn take_location() -> Option<String> {
    LAST_LOCATION.with(|l| l.borrow_mut().take())
}

/// Marks the current thread as a procpool thread and installs the hook.
/// `quiet` suppresses the default report (worker processes: the error reaches
/// the caller, so printing it in the worker too would only be noise).
pub(crate) fn install(quiet: bool) {
    ON_POOL_THREAD.with(|t| t.set(true));
    static FIRST: Once = Once::new();
    FIRST.call_once(|| QUIET_POOL.store(quiet, std::sync::atomic::Ordering::Relaxed));
    install_hook();
}

/// Whether a pool thread's panics go unreported (set once per process, by
/// the first [`install`]).
static QUIET_POOL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn install_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET_HERE.with(|q| q.get()) {
                return;
            }
            if ON_POOL_THREAD.with(|t| t.get()) {
                let quiet = QUIET_POOL.load(std::sync::atomic::Ordering::Relaxed);
                let loc = info.location().map(|l| l.to_string());
                LAST_LOCATION.with(|l| *l.borrow_mut() = loc);
                if quiet {
                    return;
                }
            }
            previous(info);
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_MESSAGE); // two bytes each
        let cut = bounded(&long);
        assert!(cut.len() < MAX_MESSAGE + 40);
        assert!(cut.ends_with(&format!("… ({} bytes cut)", long.len() - MAX_MESSAGE)));
        assert_eq!(bounded("short"), "short");
    }
}
