//! A job on its way to a worker process, and how its raw result reaches the
//! typed [`Task`](crate::Task).

use std::sync::Arc;
use std::time::Instant;

use serde::de::DeserializeOwned;

use crate::task::Shared;
use crate::wire::Status;
use crate::{CodecStage, TaskError};

/// One call, serialised on the caller's side straight into its `JOB` frame
/// (the supervisor only fills in the sequence number). The frame is kept
/// until the result arrives, so the job can be resent if its worker dies
/// first.
pub(crate) struct Job {
    pub(crate) frame: Frame,
    pub(crate) slot: Arc<dyn JobSlot>,
    /// When it was queued (for wait-time statistics), as [`now_nanos`];
    /// [`NOT_QUEUED`] for a job that went straight to a worker.
    pub(crate) queued_at: u64,
}

/// The `queued_at` of a job that never waited in the queue (a direct lane's):
/// it counts no wait, and costs no clock read.
pub(crate) const NOT_QUEUED: u64 = u64::MAX;

impl Job {
    /// The job, stamped as entering the queue now (its wait starts).
    pub(crate) fn entering_queue(mut self) -> Job {
        self.queued_at = now_nanos();
        self
    }
}

/// Nanoseconds since the first call: a timestamp half the size of an
/// `Instant`, which counts when a million tasks wait in a queue.
pub(crate) fn now_nanos() -> u64 {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// A job's frame. Small frames are copied into the write buffer, so they need
/// no sharing; the smallest live in the job itself, so most small calls
/// allocate nothing for their frame (and the supervisor frees nothing when
/// they end). Large ones are shared with the writer, so their bytes are
/// never copied in the parent.
pub(crate) enum Frame {
    Inline { len: u8, bytes: [u8; Frame::INLINE] },
    Small(Box<[u8]>),
    Large(Arc<Vec<u8>>),
}

impl Frame {
    /// Frames up to this many bytes are kept inline: the 29-byte job header
    /// and an argument of up to 17 bytes (a number or two, a short string).
    /// With the tag this makes a `Frame` 48 bytes, a `Job` 72: a queued task
    /// with a small argument costs less than with a separate allocation, one
    /// with a larger argument 32 bytes more than the 16 its frame's pointer
    /// took before (`examples/queued_memory.rs`).
    pub(crate) const INLINE: usize = 46;

    /// Frames larger than this are shared rather than copied.
    pub(crate) const SHARE_ABOVE: usize = 16 * 1024;

    #[cfg(test)]
    pub(crate) fn new(mut bytes: Vec<u8>) -> Frame {
        Frame::take_from(&mut bytes)
    }

    /// The frame encoded in `buf`: a small one is copied out (`buf` stays, to
    /// encode the next frame in), a large one is taken (`buf` is left empty).
    pub(crate) fn take_from(buf: &mut Vec<u8>) -> Frame {
        let len = buf.len();
        if len <= Frame::INLINE {
            let mut bytes = [0; Frame::INLINE];
            bytes[..len].copy_from_slice(buf);
            Frame::Inline {
                len: len as u8,
                bytes,
            }
        } else if len <= Frame::SHARE_ABOVE {
            // Exact size: queued tasks may be many.
            Frame::Small(Box::from(&buf[..]))
        } else {
            Frame::Large(Arc::new(std::mem::take(buf)))
        }
    }

    /// The frame's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Frame::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Frame::Small(v) => v,
            Frame::Large(v) => v,
        }
    }

    /// True for a frame copied into write buffers (at most
    /// [`SHARE_ABOVE`](Self::SHARE_ABOVE) bytes).
    pub(crate) fn is_small(&self) -> bool {
        !matches!(self, Frame::Large(_))
    }

    /// The frame's bytes, writable (to set the sequence number). A large
    /// frame is unique here: the previous writer's reference, if the job is
    /// being resent, went with the previous worker; if not, it is copied.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Frame::Inline { len, bytes } => &mut bytes[..usize::from(*len)],
            Frame::Small(v) => v,
            Frame::Large(v) => Arc::make_mut(v).as_mut_slice(),
        }
    }
}

/// The type-erased side of a task that a supervisor completes.
pub(crate) trait JobSlot: Send + Sync {
    /// See [`Shared::try_start`].
    fn try_start(&self, worker: usize) -> bool;
    /// See [`Shared::is_cancelled`].
    fn is_cancelled(&self) -> bool;
    /// Decodes a worker's `RESULT` payload and completes the task.
    fn deliver(&self, status: Status, payload: &[u8], pid: u32);
    /// Completes the task with an error.
    fn fail(&self, error: TaskError);
    /// See [`Shared::is_settled`].
    fn is_settled(&self) -> bool;
}

impl<R: DeserializeOwned + Send> JobSlot for Shared<R> {
    fn try_start(&self, worker: usize) -> bool {
        Shared::try_start(self, worker)
    }

    fn is_cancelled(&self) -> bool {
        Shared::is_cancelled(self)
    }

    fn deliver(&self, status: Status, payload: &[u8], pid: u32) {
        if self.is_cancelled() {
            return; // nobody wants it: skip decoding
        }
        // The result type's `Deserialize` is the user's code, running on the
        // supervisor's thread or a borrowing caller's: a panic in it fails
        // this task instead of unwinding through the pool.
        let outcome =
            crate::panic_info::catch(|| decode(status, payload, pid)).unwrap_or_else(|caught| {
                Err(TaskError::Serialization {
                    stage: CodecStage::DecodeResult,
                    message: format!("the result's Deserialize panicked: {}", caught.message),
                })
            });
        if let Err(e) = &outcome {
            tracing::debug!(pid, error = %e, "task failed");
        }
        self.complete(outcome);
    }

    fn fail(&self, error: TaskError) {
        self.complete(Err(error));
    }

    fn is_settled(&self) -> bool {
        Shared::is_settled(self)
    }
}

/// A job is dropped with its task unsettled only when whatever held it is gone
/// without an answer: the queue itself (the last pool handle went away), or a
/// supervisor that unwound from a bug. The task then fails instead of waiting
/// forever.
impl Drop for Job {
    fn drop(&mut self) {
        if !self.slot.is_settled() {
            self.slot.fail(TaskError::PoolClosed);
        }
    }
}

/// Turns a `RESULT` payload into the task's outcome.
pub(crate) fn decode<R: DeserializeOwned>(
    status: Status,
    payload: &[u8],
    pid: u32,
) -> Result<R, TaskError> {
    let text = || String::from_utf8_lossy(payload).into_owned();
    match status {
        Status::Ok => rmp_serde::from_slice(payload).map_err(|e| TaskError::Serialization {
            stage: CodecStage::DecodeResult,
            message: e.to_string(),
        }),
        Status::Panicked => {
            let (message, location) = rmp_serde::from_slice::<(String, Option<String>)>(payload)
                .unwrap_or_else(|_| ("(undecodable panic message)".into(), None));
            Err(TaskError::Panicked {
                message,
                location,
                pid: Some(pid),
            })
        }
        Status::DecodeArgument => Err(TaskError::Serialization {
            stage: CodecStage::DecodeArgument,
            message: text(),
        }),
        Status::EncodeResult => Err(TaskError::Serialization {
            stage: CodecStage::EncodeResult,
            message: text(),
        }),
        Status::ResultTooLarge => {
            let word = |i: usize| {
                payload
                    .get(i * 8..i * 8 + 8)
                    .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            };
            Err(TaskError::TooLarge {
                what: "result",
                size: word(0),
                max: word(1),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_as_small_as_its_docs_say() {
        assert_eq!(std::mem::size_of::<Frame>(), 48);
        assert_eq!(std::mem::size_of::<Job>(), 72);
    }

    #[test]
    fn frames_are_inline_copied_or_shared_by_size() {
        for (len, inline, small) in [
            (0, true, true),
            (Frame::INLINE, true, true),
            (Frame::INLINE + 1, false, true),
            (Frame::SHARE_ABOVE, false, true),
            (Frame::SHARE_ABOVE + 1, false, false),
        ] {
            let mut buf: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let expected = buf.clone();
            let mut frame = Frame::take_from(&mut buf);
            assert_eq!(frame.bytes(), &expected[..], "{len} bytes");
            assert_eq!(matches!(frame, Frame::Inline { .. }), inline, "{len}");
            assert_eq!(frame.is_small(), small, "{len}");
            // A copied frame leaves the buffer for the next encoding; a
            // shared one takes it along.
            assert_eq!(buf.len(), if small { len } else { 0 }, "{len}");
            if len > 0 {
                frame.bytes_mut()[0] = 0xAA;
                assert_eq!(frame.bytes()[0], 0xAA);
                assert_eq!(frame.bytes().len(), len);
            }
        }
    }
}
