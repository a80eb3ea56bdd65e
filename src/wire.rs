//! The wire protocol between the parent and a worker process.
//!
//! Every message is a frame: a little-endian `u32` body length, then the body.
//! The first body byte is a tag; integers are little-endian. Frames larger than
//! the pool's `max_frame_size` are refused before any memory is reserved for
//! them, so a corrupt length cannot exhaust memory.
//!
//! Parent → worker:
//!
//! | tag | body                                                   |
//! |-----|--------------------------------------------------------|
//! | JOB | `seq u64`, `fn u64`, `trampoline u64`, argument bytes  |
//! | JOB_DIRECT | as `JOB`; the `RESULT` goes to the reply stream  |
//! | JOB_RING | as `JOB`; the `RESULT` goes to the result ring     |
//! | CANCEL | `seq u64` — skip this job if it has not started     |
//! | JOB_IN_REGION | `len u64` — the next job's frame is the first `len` bytes of the job region |
//!
//! `JOB_DIRECT` is the direct lane's job (see `process::lane`): a caller that
//! borrowed an idle worker writes it itself and reads the answer from the
//! worker's third stream, the reply stream, so the supervisor stays out of the
//! round trip. Its `RESULT` names no next job (the worker held no other).
//!
//! Worker → parent:
//!
//! | tag | body                                                                      |
//! |-----|---------------------------------------------------------------------------|
//! | HELLO | `pid u32`, `build identity u64`                                         |
//! | REFUSED | UTF-8 reason; the worker exits                                        |
//! | RESULT | `seq u64`, `next u64`, `seen u64`, `nanos u64`, `status u8`, payload   |
//!
//! | ON_PIPE | `seq u64` (a ring entry): job `seq`'s `RESULT` is the next one on the pipe |
//! | RESULT_IN_REGION | `seq u64`, `len u64` (a ring entry): job `seq`'s `RESULT` frame is the first `len` bytes of the result region |
//! | DOORBELL | (on the pipe) the ring has entries and the parent was about to sleep |
//!
//! A local worker's large frames lie in shared memory instead of the pipe
//! (see [`crate::region`]): the notice stands where the frame would, so the
//! rules below hold for them unchanged.
//!
//! `nanos` is how long the job ran in the worker (for the pool's statistics).
//!
//! `JOB_RING` is the queue's job on a worker with a result ring (see
//! [`crate::ring`]): its `RESULT` frame is published in a ring slot when it
//! fits, else written to the pipe and announced by an `ON_PIPE` entry. The
//! ring then orders every result of the queue's jobs, so the rules below hold
//! for it exactly as for the pipe.
//!
//! A worker runs its jobs in the order it received them. Each `RESULT` also says
//! which job it starts next (`next`, 0 = none: it goes idle) and the highest job
//! sequence number it has read (`seen`). Together these let the parent know at
//! every moment which single job a worker may be running, even when several jobs
//! were sent ahead: cancelling that job kills the worker, cancelling any other
//! sends `CANCEL` and the worker skips it. No sent-but-unstarted job is lost:
//! after a kill or crash the next worker gets them.
//!
//! Before killing for a cancelled job the parent first takes any result that
//! has already arrived, so the kill lands on the cancelled job. One window
//! remains: if the worker finishes that job in the microseconds between this
//! check and the signal, the kill hits the job it started next, which is then
//! run again on the replacement worker (it never reaches a wrong result).

use std::ops::Range;

/// Parent → worker: run a job.
pub(crate) const TAG_JOB: u8 = 1;
/// Parent → worker: skip a job that has not started.
pub(crate) const TAG_CANCEL: u8 = 2;
/// Parent → worker: run a job and answer on the reply stream.
pub(crate) const TAG_JOB_DIRECT: u8 = 3;
/// Parent → worker: run a job and answer in the result ring.
pub(crate) const TAG_JOB_RING: u8 = 4;
/// Parent → worker: the next job's frame is in the job region.
pub(crate) const TAG_JOB_IN_REGION: u8 = 5;
/// Worker → parent: ready, with pid and build identity.
pub(crate) const TAG_HELLO: u8 = 10;
/// Worker → parent: refuses to work (build mismatch), then exits.
pub(crate) const TAG_REFUSED: u8 = 11;
/// Worker → parent: one job's outcome.
pub(crate) const TAG_RESULT: u8 = 12;
/// Worker → parent, a ring entry: the job's result is the next on the pipe.
pub(crate) const TAG_ON_PIPE: u8 = 13;
/// Worker → parent, on the pipe: look at the ring.
pub(crate) const TAG_DOORBELL: u8 = 14;
/// Worker → parent, a ring entry: the job's result is in the result region.
pub(crate) const TAG_RESULT_IN_REGION: u8 = 15;

/// Where a job's `RESULT` goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// The result pipe (`JOB`).
    Pipe,
    /// The reply stream of the direct lane (`JOB_DIRECT`).
    Reply,
    /// The result ring (`JOB_RING`).
    Ring,
}

/// Outcome kinds carried by a `RESULT` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Status {
    /// Payload: the MessagePack-encoded return value.
    Ok = 0,
    /// Payload: MessagePack `(message, Option<location>)`.
    Panicked = 1,
    /// Payload: UTF-8 error from decoding the argument.
    DecodeArgument = 2,
    /// Payload: UTF-8 error from encoding the result.
    EncodeResult = 3,
    /// Payload: `u64` size of the oversized result.
    ResultTooLarge = 4,
}

impl Status {
    fn from_u8(b: u8) -> Option<Status> {
        Some(match b {
            0 => Status::Ok,
            1 => Status::Panicked,
            2 => Status::DecodeArgument,
            3 => Status::EncodeResult,
            4 => Status::ResultTooLarge,
            _ => return None,
        })
    }
}

/// Bytes of frame header (the length prefix).
pub(crate) const LEN_PREFIX: usize = 4;
/// Bytes a `RESULT` body holds before its payload.
pub(crate) const RESULT_HEADER: usize = 1 + 8 + 8 + 8 + 8 + 1;

/// A frame that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The declared length is over the limit.
    TooLarge {
        /// Declared body length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The body does not parse as any message.
    Malformed(&'static str),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the maximum of {max} bytes")
            }
            FrameError::Malformed(what) => write!(f, "malformed frame: {what}"),
        }
    }
}

/// Starts a frame in `out`; finish it with [`end_frame`].
pub(crate) fn begin_frame(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; LEN_PREFIX]);
    start
}

/// Writes the length of the frame begun at `start`. Returns the body length.
pub(crate) fn end_frame(out: &mut [u8], start: usize) -> usize {
    let body = out.len() - start - LEN_PREFIX;
    // Callers check sizes against the frame limit (≤ u32::MAX) beforehand.
    out[start..start + LEN_PREFIX].copy_from_slice(&(body as u32).to_le_bytes());
    body
}

/// Finds the first complete frame in `buf`.
///
/// Returns the body's range and the bytes consumed, `Ok(None)` when more bytes
/// are needed, or an error when the declared length is over `max`.
pub(crate) fn split_frame(
    buf: &[u8],
    max: u64,
) -> Result<Option<(Range<usize>, usize)>, FrameError> {
    let Some(prefix) = buf.get(..LEN_PREFIX) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(prefix.try_into().expect("4 bytes")) as u64;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let end = LEN_PREFIX + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((LEN_PREFIX..end, end)))
}

/// Takes the first whole frame's body out of `buf` (the bytes read so far),
/// or `Ok(None)` while it is incomplete.
pub(crate) fn take_frame(buf: &mut Vec<u8>, max: u64) -> Result<Option<Vec<u8>>, FrameError> {
    Ok(split_frame(buf, max)?.map(|(body, used)| {
        let frame = buf[body].to_vec();
        buf.drain(..used);
        frame
    }))
}

/// Checks the tag of a (possibly partial) worker → parent frame at the start
/// of `buf` as soon as it is visible, so a stream knocked out of alignment
/// (stray bytes from a misbehaving worker) is refused at once instead of
/// waiting for a body that will never come.
pub(crate) fn check_from_worker_tag(buf: &[u8]) -> Result<(), FrameError> {
    match buf.get(LEN_PREFIX) {
        None | Some(&(TAG_HELLO | TAG_REFUSED | TAG_RESULT | TAG_DOORBELL)) => Ok(()),
        Some(_) => Err(FrameError::Malformed("unknown message tag")),
    }
}

/// How many bytes the partial frame at the start of `buf` still needs, when its
/// length prefix is known (used to reserve buffer space once).
pub(crate) fn missing_bytes(buf: &[u8]) -> Option<usize> {
    let prefix = buf.get(..LEN_PREFIX)?;
    let len = u32::from_le_bytes(prefix.try_into().expect("4 bytes")) as usize;
    (LEN_PREFIX + len).checked_sub(buf.len())
}

/// Little-endian cursor over a frame body.
pub(crate) struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(body: &'a [u8]) -> Self {
        Cursor { rest: body }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, FrameError> {
        let (&b, rest) = self
            .rest
            .split_first()
            .ok_or(FrameError::Malformed("truncated"))?;
        self.rest = rest;
        Ok(b)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, FrameError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, FrameError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        if self.rest.len() < N {
            return Err(FrameError::Malformed("truncated"));
        }
        let (head, rest) = self.rest.split_at(N);
        self.rest = rest;
        Ok(head.try_into().expect("length checked"))
    }

    pub(crate) fn rest(self) -> &'a [u8] {
        self.rest
    }
}

/// A decoded parent → worker message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ToWorker<'a> {
    Job {
        seq: u64,
        func: u64,
        trampoline: u64,
        args: &'a [u8],
        /// Where the result goes.
        route: Route,
    },
    Cancel {
        seq: u64,
    },
    /// The next job's frame: the job region's first `len` bytes.
    InRegion {
        len: u64,
    },
}

impl<'a> ToWorker<'a> {
    pub(crate) fn decode(body: &'a [u8]) -> Result<Self, FrameError> {
        let mut c = Cursor::new(body);
        match c.u8()? {
            tag @ (TAG_JOB | TAG_JOB_DIRECT | TAG_JOB_RING) => Ok(ToWorker::Job {
                seq: c.u64()?,
                func: c.u64()?,
                trampoline: c.u64()?,
                args: c.rest(),
                route: match tag {
                    TAG_JOB_DIRECT => Route::Reply,
                    TAG_JOB_RING => Route::Ring,
                    _ => Route::Pipe,
                },
            }),
            TAG_CANCEL => Ok(ToWorker::Cancel { seq: c.u64()? }),
            TAG_JOB_IN_REGION => Ok(ToWorker::InRegion { len: c.u64()? }),
            _ => Err(FrameError::Malformed("unknown message tag")),
        }
    }
}

/// Appends a `JOB` frame.
pub(crate) fn encode_job(out: &mut Vec<u8>, seq: u64, func: u64, trampoline: u64, args: &[u8]) {
    let start = begin_frame(out);
    out.push(TAG_JOB);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&func.to_le_bytes());
    out.extend_from_slice(&trampoline.to_le_bytes());
    out.extend_from_slice(args);
    end_frame(out, start);
}

/// Starts a `JOB` frame in an empty `out`, with sequence number 0 (set later
/// with [`set_job_seq`]); append the argument bytes, then call [`end_frame`]
/// with start 0.
pub(crate) fn begin_job(out: &mut Vec<u8>, func: u64, trampoline: u64) {
    debug_assert!(out.is_empty());
    begin_frame(out);
    out.push(TAG_JOB);
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&func.to_le_bytes());
    out.extend_from_slice(&trampoline.to_le_bytes());
}

/// Sets the sequence number of a frame built with [`begin_job`], and where
/// its result goes.
pub(crate) fn set_job_seq(frame: &mut [u8], seq: u64, route: Route) {
    frame[LEN_PREFIX] = match route {
        Route::Pipe => TAG_JOB,
        Route::Reply => TAG_JOB_DIRECT,
        Route::Ring => TAG_JOB_RING,
    };
    frame[LEN_PREFIX + 1..LEN_PREFIX + 9].copy_from_slice(&seq.to_le_bytes());
}

/// Appends a `JOB_IN_REGION` frame: the job region holds a job frame of
/// `len` bytes.
pub(crate) fn encode_job_in_region(out: &mut Vec<u8>, len: u64) {
    let start = begin_frame(out);
    out.push(TAG_JOB_IN_REGION);
    out.extend_from_slice(&len.to_le_bytes());
    end_frame(out, start);
}

/// Appends a `CANCEL` frame.
pub(crate) fn encode_cancel(out: &mut Vec<u8>, seq: u64) {
    let start = begin_frame(out);
    out.push(TAG_CANCEL);
    out.extend_from_slice(&seq.to_le_bytes());
    end_frame(out, start);
}

/// A decoded worker → parent message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FromWorker<'a> {
    Hello {
        pid: u32,
        identity: u64,
    },
    Refused {
        reason: String,
    },
    Result {
        seq: u64,
        next: u64,
        seen: u64,
        nanos: u64,
        status: Status,
        payload: &'a [u8],
    },
    OnPipe {
        seq: u64,
    },
    /// Job `seq`'s result frame: the result region's first `len` bytes.
    InRegion {
        seq: u64,
        len: u64,
    },
    Doorbell,
}

impl<'a> FromWorker<'a> {
    pub(crate) fn decode(body: &'a [u8]) -> Result<Self, FrameError> {
        let mut c = Cursor::new(body);
        match c.u8()? {
            TAG_HELLO => Ok(FromWorker::Hello {
                pid: c.u32()?,
                identity: c.u64()?,
            }),
            TAG_REFUSED => Ok(FromWorker::Refused {
                reason: String::from_utf8_lossy(c.rest()).into_owned(),
            }),
            TAG_RESULT => {
                let seq = c.u64()?;
                let next = c.u64()?;
                let seen = c.u64()?;
                let nanos = c.u64()?;
                let status =
                    Status::from_u8(c.u8()?).ok_or(FrameError::Malformed("unknown status"))?;
                Ok(FromWorker::Result {
                    seq,
                    next,
                    seen,
                    nanos,
                    status,
                    payload: c.rest(),
                })
            }
            TAG_ON_PIPE => Ok(FromWorker::OnPipe { seq: c.u64()? }),
            TAG_RESULT_IN_REGION => Ok(FromWorker::InRegion {
                seq: c.u64()?,
                len: c.u64()?,
            }),
            TAG_DOORBELL => Ok(FromWorker::Doorbell),
            _ => Err(FrameError::Malformed("unknown message tag")),
        }
    }
}

/// Hands each whole message from a worker at the start of `buf` to
/// `handle`, in order, until one fails or only part of a frame is left.
/// Returns the bytes used and the outcome.
pub(crate) fn for_each_from_worker<'a>(
    buf: &'a [u8],
    max: u64,
    mut handle: impl FnMut(FromWorker<'a>) -> Result<(), String>,
) -> (usize, Result<(), String>) {
    let mut pos = 0;
    let outcome = loop {
        let (body, used) = match split_frame(&buf[pos..], max) {
            Ok(Some(frame)) => frame,
            Ok(None) => break check_from_worker_tag(&buf[pos..]).map_err(|e| e.to_string()),
            Err(e) => break Err(e.to_string()),
        };
        let body = &buf[pos + body.start..pos + body.end];
        pos += used;
        if let Err(e) = FromWorker::decode(body)
            .map_err(|e| e.to_string())
            .and_then(&mut handle)
        {
            break Err(e);
        }
    };
    (pos, outcome)
}

/// Appends an `ON_PIPE` frame (a ring entry).
pub(crate) fn encode_on_pipe(out: &mut Vec<u8>, seq: u64) {
    let start = begin_frame(out);
    out.push(TAG_ON_PIPE);
    out.extend_from_slice(&seq.to_le_bytes());
    end_frame(out, start);
}

/// Appends a `RESULT_IN_REGION` frame (a ring entry).
pub(crate) fn encode_result_in_region(out: &mut Vec<u8>, seq: u64, len: u64) {
    let start = begin_frame(out);
    out.push(TAG_RESULT_IN_REGION);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    end_frame(out, start);
}

/// A `DOORBELL` frame.
pub(crate) const DOORBELL: [u8; LEN_PREFIX + 1] = [1, 0, 0, 0, TAG_DOORBELL];

/// Appends a `HELLO` frame.
pub(crate) fn encode_hello(out: &mut Vec<u8>, pid: u32, identity: u64) {
    let start = begin_frame(out);
    out.push(TAG_HELLO);
    out.extend_from_slice(&pid.to_le_bytes());
    out.extend_from_slice(&identity.to_le_bytes());
    end_frame(out, start);
}

/// Appends a `REFUSED` frame.
pub(crate) fn encode_refused(out: &mut Vec<u8>, reason: &str) {
    let start = begin_frame(out);
    out.push(TAG_REFUSED);
    out.extend_from_slice(reason.as_bytes());
    end_frame(out, start);
}

/// Writes a `RESULT` header into `out` (which must be empty) with room for the
/// payload to be appended; finish with [`finish_result`].
pub(crate) fn begin_result(out: &mut Vec<u8>, seq: u64, status: Status) {
    debug_assert!(out.is_empty());
    out.extend_from_slice(&[0; LEN_PREFIX]);
    out.push(TAG_RESULT);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&[0; 24]); // next, seen, nanos: filled in by finish_result
    out.push(status as u8);
}

/// Rewrites the status of a result begun with [`begin_result`], dropping any
/// payload written so far.
pub(crate) fn reset_result(out: &mut Vec<u8>, status: Status) {
    out.truncate(LEN_PREFIX + RESULT_HEADER);
    out[LEN_PREFIX + RESULT_HEADER - 1] = status as u8;
}

/// Fills in `next`, `seen`, `nanos` and the length of a result begun with
/// [`begin_result`].
pub(crate) fn finish_result(out: &mut [u8], next: u64, seen: u64, nanos: u64) {
    let base = LEN_PREFIX + 1 + 8;
    out[base..base + 8].copy_from_slice(&next.to_le_bytes());
    out[base + 8..base + 16].copy_from_slice(&seen.to_le_bytes());
    out[base + 16..base + 24].copy_from_slice(&nanos.to_le_bytes());
    end_frame(out, 0);
}

/// Runs both sides' decoders over arbitrary bytes, as the fuzz target and the
/// property tests do: every frame is split with limit `max` and decoded as a
/// parent → worker and as a worker → parent message. Returns how many frames
/// decoded; never panics and never allocates.
pub fn decode_all(mut bytes: &[u8], max: u64) -> Result<usize, FrameError> {
    let mut decoded = 0;
    while let Some((body, used)) = split_frame(bytes, max)? {
        let body = &bytes[body];
        decoded += usize::from(ToWorker::decode(body).is_ok());
        decoded += usize::from(FromWorker::decode(body).is_ok());
        bytes = &bytes[used..];
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), max in 0u64..1024) {
            let _ = decode_all(&bytes, max);
        }

        #[test]
        fn declared_lengths_over_the_limit_are_refused(len in 1025u32.., tail in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut bytes = len.to_le_bytes().to_vec();
            bytes.extend(tail);
            prop_assert_eq!(split_frame(&bytes, 1024), Err(FrameError::TooLarge { len: len as u64, max: 1024 }));
        }

        #[test]
        fn valid_frames_survive_any_split(seq in any::<u64>(), args in proptest::collection::vec(any::<u8>(), 0..300), cut in 0usize..400) {
            let mut out = Vec::new();
            encode_job(&mut out, seq, 1, 2, &args);
            let cut = cut.min(out.len());
            // A prefix is either incomplete or, if whole, the same frame.
            match split_frame(&out[..cut], u64::MAX).unwrap() {
                None => prop_assert!(cut < out.len()),
                Some((body, _)) => prop_assert_eq!(
                    ToWorker::decode(&out[body]).unwrap(),
                    ToWorker::Job { seq, func: 1, trampoline: 2, args: &args, route: Route::Pipe }
                ),
            }
        }
    }

    #[test]
    fn job_and_cancel_round_trip() {
        let mut out = Vec::new();
        encode_job(&mut out, 7, 11, 13, b"args");
        encode_cancel(&mut out, 9);
        let (body, used) = split_frame(&out, 1 << 20).unwrap().unwrap();
        assert_eq!(
            ToWorker::decode(&out[body]).unwrap(),
            ToWorker::Job {
                seq: 7,
                func: 11,
                trampoline: 13,
                args: b"args",
                route: Route::Pipe,
            }
        );
        let rest = &out[used..];
        let (body, used2) = split_frame(rest, 1 << 20).unwrap().unwrap();
        assert_eq!(
            ToWorker::decode(&rest[body]).unwrap(),
            ToWorker::Cancel { seq: 9 }
        );
        assert_eq!(used2, rest.len());
    }

    #[test]
    fn a_prebuilt_job_frame_matches_encode_job() {
        let mut direct = Vec::new();
        encode_job(&mut direct, 42, 3, 4, b"xyz");
        let mut built = Vec::new();
        begin_job(&mut built, 3, 4);
        built.extend_from_slice(b"xyz");
        end_frame(&mut built, 0);
        set_job_seq(&mut built, 42, Route::Pipe);
        assert_eq!(built, direct);
        // The same frame, answered on the reply stream, then in the ring.
        for (seq, route) in [(43, Route::Reply), (44, Route::Ring)] {
            set_job_seq(&mut built, seq, route);
            let (body, _) = split_frame(&built, 1 << 20).unwrap().unwrap();
            assert_eq!(
                ToWorker::decode(&built[body]).unwrap(),
                ToWorker::Job {
                    seq,
                    func: 3,
                    trampoline: 4,
                    args: b"xyz",
                    route,
                }
            );
        }
    }

    #[test]
    fn ring_entries_and_doorbells_round_trip() {
        let mut out = Vec::new();
        encode_on_pipe(&mut out, 77);
        out.extend_from_slice(&DOORBELL);
        let (body, used) = split_frame(&out, 64).unwrap().unwrap();
        assert_eq!(
            FromWorker::decode(&out[body]).unwrap(),
            FromWorker::OnPipe { seq: 77 }
        );
        let (body, _) = split_frame(&out[used..], 64).unwrap().unwrap();
        assert_eq!(
            FromWorker::decode(&out[used..][body]).unwrap(),
            FromWorker::Doorbell
        );
        assert!(check_from_worker_tag(&out[used..]).is_ok());
    }

    #[test]
    fn result_round_trip() {
        let mut out = Vec::new();
        begin_result(&mut out, 5, Status::Ok);
        out.extend_from_slice(b"payload");
        finish_result(&mut out, 6, 8, 99);
        let (body, _) = split_frame(&out, 1 << 20).unwrap().unwrap();
        assert_eq!(
            FromWorker::decode(&out[body]).unwrap(),
            FromWorker::Result {
                seq: 5,
                next: 6,
                seen: 8,
                nanos: 99,
                status: Status::Ok,
                payload: b"payload"
            }
        );
    }

    #[test]
    fn a_misaligned_stream_is_refused_from_its_header() {
        let mut out = vec![0u8]; // one stray byte
        let mut frame = Vec::new();
        begin_result(&mut frame, 1, Status::Ok);
        finish_result(&mut frame, 0, 1, 0);
        out.extend_from_slice(&frame);
        assert_eq!(
            split_frame(&out, 1 << 20).unwrap(),
            None,
            "looks like a partial frame"
        );
        assert!(check_from_worker_tag(&out).is_err());
        assert!(check_from_worker_tag(&frame).is_ok());
        assert!(check_from_worker_tag(&frame[..3]).is_ok());
    }

    #[test]
    fn oversized_length_is_refused_before_reading_the_body() {
        let buf = 1000u32.to_le_bytes();
        assert_eq!(
            split_frame(&buf, 999),
            Err(FrameError::TooLarge {
                len: 1000,
                max: 999
            })
        );
    }

    #[test]
    fn partial_frames_need_more_bytes() {
        let mut out = Vec::new();
        encode_cancel(&mut out, 1);
        for cut in 0..out.len() {
            assert_eq!(split_frame(&out[..cut], 100).unwrap(), None);
        }
        assert_eq!(missing_bytes(&out[..6]), Some(out.len() - 6));
    }

    #[test]
    fn garbage_bodies_are_errors_not_panics() {
        for body in [
            &[][..],
            &[99][..],
            &[TAG_JOB, 1, 2][..],
            &[TAG_RESULT; 5][..],
        ] {
            assert!(ToWorker::decode(body).is_err() || FromWorker::decode(body).is_err());
        }
        let mut bad_status = vec![TAG_RESULT];
        bad_status.extend_from_slice(&[0; 32]);
        bad_status.push(200);
        assert_eq!(
            FromWorker::decode(&bad_status),
            Err(FrameError::Malformed("unknown status"))
        );
    }
}
