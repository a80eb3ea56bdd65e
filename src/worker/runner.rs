//! The worker's job loop.
//!
//! Jobs run one at a time, in the order they arrive. Before going idle, and
//! every few microseconds while busy, the worker drains its input without
//! blocking, so it learns of cancellations and new jobs before it names the
//! job it starts next in the result frame it then writes (see [`crate::wire`]
//! for why that makes cancellation exact).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;

use rustix::event::PollFlags;

use crate::func_ref;
use crate::panic_info;
use crate::pipe_io;
use crate::region::{self, Region};
use crate::ring::{Ring, SLOT_BYTES};
use crate::wire::{self, FrameError, Route, Status, ToWorker};

use super::Spec;

/// More than a result frame's header and its payload's own header take.
const RESULT_HEADER_ROOM: usize = 64;

/// Runs the worker until the parent closes the job pipe. Returns the exit code.
pub(super) fn serve(spec: Spec) -> i32 {
    let mut runner = match Runner::adopt(&spec) {
        Ok(runner) => runner,
        Err(e) => {
            eprintln!("procpool worker {}: {e}", std::process::id());
            return 4;
        }
    };
    if !super::greet(&mut runner.out, spec.identity) {
        let _ = runner.output.write_all(&runner.out);
        return 2;
    }
    if runner.output.write_all(&runner.out).is_err() {
        return 0;
    }
    match runner.run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("procpool worker {}: {e}", std::process::id());
            4
        }
    }
}

/// The descriptors `spec` names, inherited from the parent, taken over.
struct Inherited {
    input: OwnedFd,
    output: File,
    reply: Option<File>,
    lifeline: Option<OwnedFd>,
    ring: Option<Ring>,
    job_region: Option<Region>,
    result_region: Option<Region>,
}

impl Inherited {
    fn take(spec: &Spec) -> io::Result<Inherited> {
        // SAFETY: the parent passed these descriptors to this process for our
        // use alone (their close-on-exec flag was cleared only for this
        // child), and each is taken over once, here.
        let owned = |fd: i32| (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) });
        let (input, output) = (owned(spec.input), owned(spec.output));
        let (Some(input), Some(output)) = (input, output) else {
            return Err(io::Error::other("no job or result pipe"));
        };
        let taken = Inherited {
            input,
            output: File::from(output),
            reply: owned(spec.reply).map(File::from),
            // None: the caller watches its lifeline itself (stdio mode).
            lifeline: owned(spec.lifeline),
            ring: owned(spec.ring).map(Ring::open).transpose()?,
            job_region: owned(spec.job_region)
                .map(|fd| Region::open(fd, spec.max_frame))
                .transpose()?,
            result_region: owned(spec.result_region)
                .map(|fd| Region::open(fd, spec.max_frame))
                .transpose()?,
        };
        // They were inherited across exec; processes this worker's tasks
        // start must not inherit them in turn (a grandchild holding the result
        // pipe would hide this worker's death from the parent).
        let fds = [
            spec.input,
            spec.output,
            spec.reply,
            spec.lifeline,
            spec.ring,
            spec.job_region,
            spec.result_region,
        ];
        for fd in fds {
            if fd >= 0 {
                // SAFETY: owned by `taken`, which outlives this loop.
                let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                let _ = rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC);
            }
        }
        Ok(taken)
    }
}

/// The result region, and when it is free again.
struct ResultRegion {
    region: Region,
    /// The ring entry that announced the frame it holds: the region is free
    /// once the parent has consumed that entry (and so read the frame).
    entry: Option<u64>,
}

impl ResultRegion {
    fn is_free(&self, ring: &Ring) -> bool {
        self.entry.is_none_or(|i| ring.is_consumed(i))
    }

    /// Puts result frame `out` of job `seq` here and announces it in the
    /// ring; `false` when the region is busy or cannot hold it.
    fn publish(&mut self, ring: &Ring, out: &[u8], seq: u64) -> io::Result<bool> {
        if !self.is_free(ring) || self.region.put(out).is_err() {
            return Ok(false);
        }
        let mut entry = Vec::with_capacity(32);
        wire::encode_result_in_region(&mut entry, seq, out.len() as u64);
        self.entry = Some(ring.publish(&entry)?);
        Ok(true)
    }

    /// A result went elsewhere: see [`Region::note_unused`].
    fn note_unused(&mut self, ring: &Ring) {
        if self.is_free(ring) {
            self.region.note_unused();
        }
    }
}

/// Publishes the result frame `out` of job `seq` in the ring: in a slot when
/// it fits, in the result region when it is large and the region is free,
/// else on the pipe; the last two are announced by a slot naming the job.
/// Rings the doorbell if the parent is about to sleep. `could_write`: the
/// job ran long enough to have made a system call.
fn publish(
    ring: &Ring,
    pipe: &mut Output,
    results: Option<&mut ResultRegion>,
    (out, seq): (&[u8], u64),
    could_write: bool,
) -> io::Result<()> {
    // A task that wrote to the parent's pipe itself: its result follows
    // those bytes on the pipe, where the parent's reader finds them first and
    // fails this job, as without a ring. A task too quick for any system call
    // cannot have written, and is spared the check (a system call itself).
    let foreign = could_write && ring.pipe_has_foreign_bytes(pipe.file.as_fd(), pipe.written);
    let large = out.len() >= region::USE_FROM && !foreign;
    let in_region = match results {
        // (A busy region, or one that cannot grow, leaves it to the pipe.)
        Some(results) if large => results.publish(ring, out, seq)?,
        // Left unused by this result: its memory may go back.
        Some(results) => {
            results.note_unused(ring);
            false
        }
        None => false,
    };
    if in_region {
        // Announced already.
    } else if out.len() <= SLOT_BYTES && !foreign {
        ring.publish(out)?;
    } else {
        // Whole on the pipe before the entry appears: the parent that sees
        // the entry finds the frame complete.
        pipe.write_all(out)?;
        let mut entry = Vec::with_capacity(16);
        wire::encode_on_pipe(&mut entry, seq);
        ring.publish(&entry)?;
    }
    if ring.must_wake() {
        pipe.write_all(&wire::DOORBELL)?;
    }
    Ok(())
}

/// Half the quickest of a few trivial system calls: a task that ran for less
/// made none (the margin covers clock changes and the clock's own cost).
fn quickest_system_call_nanos() -> u64 {
    let quickest = (0..32)
        .map(|_| {
            let start = std::time::Instant::now();
            std::hint::black_box(rustix::process::getppid());
            start.elapsed().as_nanos() as u64
        })
        .min()
        .unwrap_or(0);
    quickest / 2
}

/// The result pipe, counting what this worker writes to it (for
/// [`Ring::pipe_has_foreign_bytes`]).
struct Output {
    file: File,
    written: u64,
}

impl Write for Output {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        // Whole (a task may have made the pipe non-blocking).
        pipe_io::write_all(&self.file, bytes)?;
        self.written += bytes.len() as u64;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Ends this process as soon as the parent's end of the lifeline closes, which
/// happens when the parent exits for any reason, SIGKILL included, even while
/// a task is running.
fn watch_lifeline(lifeline: OwnedFd) {
    super::exit_when(move || {
        let mut byte = [0u8; 1];
        // Returns at end of file or an error: the parent is gone.
        while let Err(rustix::io::Errno::INTR) | Ok(1..) = rustix::io::read(&lifeline, &mut byte) {}
    });
}

/// A job received but not started: its argument bytes stay in `inbuf`.
struct JobRef {
    seq: u64,
    /// Where the result goes.
    route: Route,
    func: u64,
    trampoline: u64,
    frame_start: usize,
    /// Where the argument bytes are: in `inbuf`, or (`in_region`) in the
    /// job region.
    args: Range<usize>,
    in_region: bool,
}

struct Runner {
    input: OwnedFd,
    output: Output,
    /// Where direct jobs' results go, if the launcher gave this worker one.
    reply: Option<File>,
    /// Where the queue's jobs' results go, if the launcher gave this worker
    /// one (see [`crate::ring`]).
    ring: Option<Ring>,
    /// Where large job frames arrive, and large results of the queue's jobs
    /// go, if the launcher gave this worker regions (see [`crate::region`]).
    job_region: Option<Region>,
    result_region: Option<ResultRegion>,
    /// Bytes read from the parent; `..parsed` holds whole frames.
    inbuf: Vec<u8>,
    parsed: usize,
    jobs: VecDeque<JobRef>,
    /// Highest job sequence number read so far.
    seen: u64,
    max_frame: u64,
    /// The result frame being built.
    out: Vec<u8>,
    /// Release `inbuf` / `out` memory once large frames stop coming.
    in_keeper: crate::buffer::Keeper,
    out_keeper: crate::buffer::Keeper,
    /// When the input was last drained between two jobs.
    last_drain: std::time::Instant,
    /// A job that ran for less made no system call (see `publish`).
    syscall_nanos: u64,
}

/// The [`JobRef`] of a decoded `JOB` message whose body ends at `body_end`
/// (in `inbuf`, or in the job region when `in_region`).
fn job_ref(
    message: ToWorker<'_>,
    frame_start: usize,
    body_end: usize,
    in_region: bool,
) -> Result<JobRef, FrameError> {
    match message {
        ToWorker::Job {
            seq,
            func,
            trampoline,
            args,
            route,
        } => Ok(JobRef {
            seq,
            route,
            func,
            trampoline,
            frame_start,
            args: body_end - args.len()..body_end,
            in_region,
        }),
        _ => Err(FrameError::Malformed("not a job")),
    }
}

/// How often a busy worker looks for new frames between jobs.
const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_micros(20);

impl Runner {
    /// Takes over what the parent passed in `spec`, starts watching the
    /// lifeline and installs the panic hook: a worker ready for its
    /// handshake.
    fn adopt(spec: &Spec) -> io::Result<Runner> {
        let inherited = Inherited::take(spec)?;
        if let Some(lifeline) = inherited.lifeline {
            watch_lifeline(lifeline);
        }
        super::OUTPUT_FD.store(spec.output, Ordering::Relaxed);
        panic_info::install(true);
        Ok(Runner {
            input: inherited.input,
            output: Output {
                file: inherited.output,
                written: 0,
            },
            reply: inherited.reply,
            ring: inherited.ring,
            job_region: inherited.job_region,
            result_region: inherited.result_region.map(|region| ResultRegion {
                region,
                entry: None,
            }),
            inbuf: Vec::with_capacity(64 * 1024),
            parsed: 0,
            jobs: VecDeque::new(),
            seen: 0,
            max_frame: spec.max_frame,
            out: Vec::with_capacity(4096),
            in_keeper: Default::default(),
            out_keeper: Default::default(),
            last_drain: std::time::Instant::now(),
            syscall_nanos: quickest_system_call_nanos(),
        })
    }

    fn run(&mut self) -> io::Result<()> {
        // Whoever made the pipe, `fill` wants it blocking (a remote worker's
        // standard input may come non-blocking from its launcher).
        let flags = rustix::fs::fcntl_getfl(&self.input)?;
        rustix::fs::fcntl_setfl(&self.input, flags - rustix::fs::OFlags::NONBLOCK)?;
        loop {
            // Also while busy: a long backlog must not keep every argument
            // ever received.
            self.compact();
            if self.jobs.is_empty() {
                if !self.fill(true)? {
                    return Ok(()); // the parent closed the job pipe: we are done
                }
                continue;
            }
            let job = self.jobs.pop_front().expect("not empty");
            let (nanos, ended, direct) = self.execute(&job)?;
            let open = self.catch_up(direct, ended)?;
            self.send_result(&job, nanos)?;
            if !open && self.jobs.is_empty() {
                return Ok(());
            }
        }
    }

    /// Where what a task sends "to the parent" goes (the protocol-fault test
    /// hooks): a direct job's caller reads only the reply stream, until
    /// `execute` points it back at the result pipe. Returns whether `job` is
    /// direct.
    fn route_task_output(&self, job: &JobRef) -> bool {
        match &self.reply {
            Some(reply) if job.route == Route::Reply => {
                super::OUTPUT_FD.store(reply.as_raw_fd(), Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }

    /// Runs `job`, leaving its result frame (all but the fields
    /// `finish_result` fills) in `out`. Returns its run time in nanoseconds,
    /// when it ended, and whether it is a direct job.
    fn execute(&mut self, job: &JobRef) -> io::Result<(u64, std::time::Instant, bool)> {
        self.out.clear();
        // Results are often about as large as arguments: reserving that much
        // up front (untouched memory costs nothing), and room for the result's
        // header, spares a large result a chain of reallocations and copies.
        crate::buffer::reserve(&mut self.out, job.args.len() + RESULT_HEADER_ROOM);
        wire::begin_result(&mut self.out, job.seq, Status::Ok);
        let args = match (&self.job_region, job.in_region) {
            (Some(region), true) => {
                &region.get(job.args.end as u64).map_err(io::Error::other)?[job.args.clone()]
            }
            _ => &self.inbuf[job.args.clone()],
        };
        let direct = self.route_task_output(job);
        let started = std::time::Instant::now();
        // SAFETY: the handshake established that parent and worker run the
        // same build, and the parent named both offsets with `FnRef::new`.
        unsafe {
            func_ref::run_job(
                job.func,
                job.trampoline,
                args,
                &mut self.out,
                self.max_frame,
            )
        };
        let ended = std::time::Instant::now();
        if direct {
            super::OUTPUT_FD.store(self.output.file.as_raw_fd(), Ordering::Relaxed);
        }
        Ok((
            ended.duration_since(started).as_nanos() as u64,
            ended,
            direct,
        ))
    }

    /// Learns of cancellations and new jobs before the result names the next
    /// one: always before going idle, otherwise at most every
    /// `DRAIN_INTERVAL` (a read that finds nothing costs more than a small
    /// job). A CANCEL left unread for that long at worst makes the worker
    /// start a cancelled job, which the result names, so the parent kills
    /// it: still exact, only dearer. A direct job needs no drain: its caller
    /// holds the worker alone, so nothing else can have arrived. Returns
    /// `false` once the job pipe is closed.
    fn catch_up(&mut self, direct: bool, ended: std::time::Instant) -> io::Result<bool> {
        if direct {
            Ok(true)
        } else if self.jobs.is_empty() || ended.duration_since(self.last_drain) >= DRAIN_INTERVAL {
            self.last_drain = ended;
            self.fill(false)
        } else {
            Ok(true)
        }
    }

    /// Completes the result frame in `out` and sends it the way `job` asks:
    /// on the reply stream, through the result ring, or on the result pipe.
    fn send_result(&mut self, job: &JobRef, nanos: u64) -> io::Result<()> {
        let next = self.jobs.front().map_or(0, |j| j.seq);
        wire::finish_result(&mut self.out, next, self.seen, nanos);
        match (&mut self.reply, &self.ring, job.route) {
            (Some(reply), ring, Route::Reply) => {
                pipe_io::write_all(&*reply, &self.out)?;
                if let (Some(results), Some(ring)) = (&mut self.result_region, ring) {
                    results.note_unused(ring);
                }
            }
            (_, Some(ring), Route::Ring) => {
                let could_write = nanos >= self.syscall_nanos;
                let results = self.result_region.as_mut();
                let out = (&self.out[..], job.seq);
                publish(ring, &mut self.output, results, out, could_write)?
            }
            _ => self.output.write_all(&self.out)?,
        }
        let used = self.out.len();
        self.out_keeper.after_use(&mut self.out, used);
        Ok(())
    }

    /// Reads what is available (waiting for something first when `block`).
    /// Returns `false` at end of file.
    ///
    /// The job pipe blocks: an idle worker sleeps in `read` itself, one system
    /// call per job as in a bare pipe ping-pong, and returns after the first
    /// read that completes a job (the drain after it catches anything that
    /// followed). A drain without blocking asks `poll` first and reads only
    /// what it says is there.
    fn fill(&mut self, block: bool) -> io::Result<bool> {
        loop {
            if !block && !pipe_io::readable_now(&self.input)? {
                return Ok(true);
            }
            let want = wire::missing_bytes(&self.inbuf[self.parsed..])
                .filter(|&n| n as u64 <= self.max_frame)
                .unwrap_or(0)
                .max(64 * 1024);
            crate::buffer::reserve(&mut self.inbuf, want);
            let room = self.inbuf.capacity() - self.inbuf.len();
            match rustix::io::read(&self.input, rustix::buffer::spare_capacity(&mut self.inbuf)) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.parse().map_err(|e| io::Error::other(e.to_string()))?;
                    // Less than there was room for: the pipe is empty now.
                    if (block && !self.jobs.is_empty()) || (!block && n < room) {
                        return Ok(true);
                    }
                }
                // Made non-blocking behind our back (by a task, say): wait
                // in `poll` instead.
                Err(rustix::io::Errno::AGAIN) if block => {
                    pipe_io::ready(&self.input, PollFlags::IN, None)?;
                }
                Err(rustix::io::Errno::AGAIN) => return Ok(true),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Takes every complete frame out of `inbuf`.
    fn parse(&mut self) -> Result<(), FrameError> {
        while let Some((body, used)) =
            wire::split_frame(&self.inbuf[self.parsed..], self.max_frame)?
        {
            let frame_start = self.parsed;
            let body = frame_start + body.start..frame_start + body.end;
            match ToWorker::decode(&self.inbuf[body.clone()])? {
                job @ ToWorker::Job { .. } => {
                    let job = job_ref(job, frame_start, body.end, false)?;
                    self.push_job(job);
                }
                ToWorker::Cancel { seq } => self.jobs.retain(|j| j.seq != seq),
                ToWorker::InRegion { len } => {
                    let job = self.job_from_region(len, frame_start)?;
                    self.push_job(job);
                }
            }
            self.parsed += used;
        }
        Ok(())
    }

    fn push_job(&mut self, job: JobRef) {
        self.seen = self.seen.max(job.seq);
        self.jobs.push_back(job);
    }

    /// The job whose frame the job region holds (its first `len` bytes), for
    /// the notice at `frame_start` of `inbuf`.
    fn job_from_region(&self, len: u64, frame_start: usize) -> Result<JobRef, FrameError> {
        let region = (self.job_region.as_ref()).ok_or(FrameError::Malformed("no job region"))?;
        // The parent writes the region again only after its last job ran.
        if self.jobs.iter().any(|j| j.in_region) {
            return Err(FrameError::Malformed("a second job in the job region"));
        }
        let bytes = (region.get(len)).map_err(|_| FrameError::Malformed("job region overrun"))?;
        match wire::split_frame(bytes, self.max_frame)? {
            Some((body, used)) if used == bytes.len() => {
                let job = ToWorker::decode(&bytes[body.clone()])?;
                job_ref(job, frame_start, body.end, true)
            }
            _ => Err(FrameError::Malformed("the job region holds no whole frame")),
        }
    }

    /// Drops consumed bytes from the front of `inbuf` when that is cheap.
    fn compact(&mut self) {
        let keep_from = self.jobs.front().map_or(self.parsed, |j| j.frame_start);
        if keep_from == 0 || (keep_from < self.inbuf.len() / 2 && !self.jobs.is_empty()) {
            return;
        }
        self.inbuf.drain(..keep_from);
        self.parsed -= keep_from;
        for job in &mut self.jobs {
            job.frame_start -= keep_from;
            // (A job region's arguments stay where they are.)
            if !job.in_region {
                job.args = job.args.start - keep_from..job.args.end - keep_from;
            }
        }
        self.in_keeper.after_use(&mut self.inbuf, keep_from);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn runner(max_frame: u64) -> Runner {
        let null = || OwnedFd::from(File::open("/dev/null").unwrap());
        Runner {
            input: null(),
            output: Output {
                file: File::open("/dev/null").unwrap(),
                written: 0,
            },
            reply: None,
            ring: None,
            job_region: None,
            result_region: None,
            inbuf: Vec::new(),
            parsed: 0,
            jobs: VecDeque::new(),
            seen: 0,
            max_frame,
            out: Vec::new(),
            in_keeper: Default::default(),
            out_keeper: Default::default(),
            last_drain: std::time::Instant::now(),
            syscall_nanos: 0,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Arbitrary input is either parsed into jobs whose argument ranges lie
        /// inside the buffer, or refused with an error; never a panic.
        #[test]
        fn the_worker_decoder_survives_arbitrary_bytes(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..8),
        ) {
            let mut r = runner(256);
            for chunk in chunks {
                r.inbuf.extend_from_slice(&chunk);
                if r.parse().is_err() {
                    break;
                }
                for job in &r.jobs {
                    prop_assert!(job.args.end <= r.inbuf.len() && job.frame_start < job.args.start);
                }
                r.compact();
                prop_assert!(r.parsed <= r.inbuf.len());
            }
        }
    }

    #[test]
    fn compaction_keeps_pending_jobs_intact() {
        let mut r = runner(1 << 20);
        for seq in 1..=3u64 {
            wire::encode_job(&mut r.inbuf, seq, 0, 0, &[seq as u8; 100]);
        }
        r.parse().unwrap();
        r.jobs.pop_front();
        r.jobs.pop_front();
        // Two of three frames consumed: more than half the buffer, so it moves.
        r.compact();
        let job = r.jobs.front().unwrap();
        assert_eq!(job.seq, 3);
        assert_eq!(job.frame_start, 0);
        assert_eq!(&r.inbuf[job.args.clone()], &[3u8; 100][..]);
    }

    #[cfg(all(target_os = "linux", not(procpool_portable)))]
    #[test]
    fn compaction_leaves_a_region_jobs_arguments_alone() {
        let max = 1 << 20;
        let mut parent = Region::create(max, true).unwrap();
        let fd = parent.fd().try_clone_to_owned().unwrap();
        let mut r = runner(max);
        r.job_region = Some(Region::open(fd, max).unwrap());
        // A small job on the pipe, then a large one in the region.
        wire::encode_job(&mut r.inbuf, 1, 0, 0, &[1u8; 100]);
        let mut large = Vec::new();
        wire::encode_job(&mut large, 2, 0, 0, &[2u8; 300_000]);
        parent.put(&large).unwrap();
        wire::encode_job_in_region(&mut r.inbuf, large.len() as u64);
        r.parse().unwrap();
        r.jobs.pop_front(); // the small one ran
        r.compact();
        let job = r.jobs.front().unwrap();
        assert!(job.in_region);
        let region = r.job_region.as_ref().unwrap();
        let args = &region.get(job.args.end as u64).unwrap()[job.args.clone()];
        assert_eq!(args, &[2u8; 300_000][..]);
    }
}
