//! The supervisor's watch for async calls whose task nobody polls.
//!
//! An async borrower (see [`super::async_lane`]) reads its reply when its
//! task is polled after the caller's reactor saw the reply pipe turn
//! readable. A task polled once on a runtime and then waited for where that
//! runtime's reactor cannot run (inside a blocking executor on the runtime's
//! own thread, through a combinator that only polls what was woken) is never
//! polled again: its reply would sit in the pipe for ever. So while async
//! calls use a lane, its supervisor looks at the reply pipe every
//! [`TICK`]; a reply that waits unread through a whole tick has its call
//! finished on a helper thread ([`Takeover`](super::lane::Takeover)), which
//! wakes the task. Calls that are polled read their reply long before.
//!
//! Borrowers ask for the watch ([`Lane::want_unpolled_watch`]); it stops
//! after [`QUIET_TICKS`] ticks without an async call, so an idle pool does
//! not wake up for it.

use std::os::fd::BorrowedFd;
use std::time::Duration;

use tokio::time::Instant;

use super::lane::Lane;

/// How often the supervisor looks at a lane with async calls.
const TICK: Duration = Duration::from_millis(50);
/// Ticks without an async call after which the watch stops (a second).
const QUIET_TICKS: u32 = 20;

/// One supervisor's watch over its lane.
pub(crate) struct UnpolledWatch {
    /// Whether the supervisor ticks, and when next.
    pub(crate) ticking: bool,
    next: Option<Instant>,
    /// The call whose reply was waiting at the last tick.
    waiting: Option<usize>,
    quiet: u32,
}

impl UnpolledWatch {
    /// The watch as a new lend of `lane` finds it.
    pub(crate) fn new(lane: &Lane) -> Self {
        UnpolledWatch {
            ticking: lane.watching_unpolled(),
            next: None,
            waiting: None,
            quiet: 0,
        }
    }

    /// A borrower asked for the watch.
    pub(crate) fn start(&mut self) {
        self.ticking = true;
    }

    /// Waits for the next tick (a deadline kept across the supervisor's
    /// other events, which would otherwise keep restarting it).
    pub(crate) async fn next_tick(&mut self) {
        let next = *self.next.get_or_insert_with(|| Instant::now() + TICK);
        tokio::time::sleep_until(next).await;
    }

    /// One tick: finishes elsewhere a call whose reply waited unread since
    /// the last one; stops ticking after a quiet while.
    pub(crate) fn tick(&mut self, lane: &Lane, reply: BorrowedFd<'_>) {
        self.next = None;
        let Some(call) = lane.takeover_id() else {
            self.waiting = None;
            self.quiet += 1;
            if self.quiet >= QUIET_TICKS {
                self.quiet = 0;
                self.ticking = !lane.stop_unpolled_watch();
            }
            return;
        };
        self.quiet = 0;
        if !crate::pipe_io::readable_now(reply).unwrap_or(false) {
            self.waiting = None;
        } else if self.waiting == Some(call) {
            self.waiting = None;
            lane.take_over(false);
        } else {
            self.waiting = Some(call);
        }
    }
}
