//! The result ring: small results published in memory shared with the parent.
//!
//! Writing every result to the pipe costs the worker a system call and the
//! parent a wake-up per task, most of a small task's price. Holding results
//! back to write them in batches would be cheap, but not exact: a result
//! still held when the worker dies is lost, the job it answered is then
//! blamed for the crash and run again. So a worker publishes each result the
//! moment its job ends, into a ring of fixed-size slots in a shared mapping
//! that outlives the worker; the parent reads the ring whenever it looks, and
//! the pipe only rings a doorbell when the parent said it is about to sleep.
//!
//! The rules that keep it exact (see also [`crate::wire`]):
//!
//! - Only jobs the parent sent as `JOB_RING` answer here, in the order they
//!   ran. A result too large for a slot goes to the pipe first and is then
//!   announced by an `ON_PIPE` entry naming its job, so the ring alone orders
//!   all results.
//! - The parent never has more such jobs unanswered than the ring has slots,
//!   so a well-behaved worker never finds it full.
//! - Sleeping: the parent sets `waiting`, then looks at `head` once more; the
//!   worker stores `head`, then looks at `waiting`. Both with sequentially
//!   consistent ordering, so one of them always sees the other (no lost
//!   wake-up).
//! - Everything a worker wrote is untrusted: the parent copies a slot out
//!   before decoding it, checks the counters, and decodes the copy like any
//!   frame from the pipe.
//! - A task that writes to the parent's pipe itself (which the pipe-only
//!   protocol blames exactly: its bytes stand before its result) must not
//!   get its result past those bytes through the ring. So the worker counts
//!   what it writes to the pipe, the parent what it reads, and after a job
//!   that ran long enough to have made a system call, the worker compares
//!   both with what the pipe holds (`FIONREAD`); bytes it did not write send
//!   that job's result through the pipe, behind them. Bytes no entry
//!   explains fail the first job not yet answered.
//!
//! The mapping is a sealed `memfd` on Linux (the worker cannot shrink it under
//! the parent, which would make the parent's reads fault) and an unlinked
//! POSIX shared memory object elsewhere. Workers on other machines, and
//! Windows workers, have no ring: their results use the pipe.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// Bytes per slot: a result frame of up to this size is published inline.
pub(crate) const SLOT_BYTES: usize = 128;
/// The counters, each on a cache line of its own; slots start after them.
const HEADER_BYTES: usize = 256;

const _: () = assert!(std::mem::size_of::<Header>() <= HEADER_BYTES);
/// `pipe_read` while the parent may be reading the pipe.
const READING: u64 = u64::MAX;

/// The mapping's first bytes.
#[repr(C)]
struct Header {
    /// Entries published (the worker's).
    head: AtomicU64,
    _pad1: [u8; 56],
    /// Entries consumed (the parent's).
    tail: AtomicU64,
    _pad2: [u8; 56],
    /// 1 while the parent may sleep until the pipe wakes it.
    waiting: AtomicU32,
    /// Number of slots, set by the parent before the worker starts.
    slots: u32,
    _pad3: [u8; 56],
    /// Bytes the parent has read from the result pipe so far, or `READING`
    /// (the parent's; see [`Ring::pipe_has_foreign_bytes`]).
    pipe_read: AtomicU64,
}

/// One side's mapping of a worker's result ring.
pub(crate) struct Ring {
    fd: OwnedFd,
    map: NonNull<u8>,
    len: usize,
    slots: u64,
}

// SAFETY: the mapping is plain shared memory; the header is only touched
// through atomics, and the slots are written by one side (the worker) and read
// by copying (the parent), as the counters allow.
unsafe impl Send for Ring {}
// SAFETY: as above; `&Ring` exposes nothing that is not atomic or copied.
unsafe impl Sync for Ring {}

impl Ring {
    /// Creates a ring with room for `slots` results (the parent's side).
    pub(crate) fn create(slots: usize) -> io::Result<Ring> {
        let slots = u32::try_from(slots.max(1)).map_err(|_| io::Error::other("too many slots"))?;
        let page = rustix::param::page_size();
        let len = (HEADER_BYTES + slots as usize * SLOT_BYTES).div_ceil(page) * page;
        let fd = shared_memory(len as u64)?;
        let ring = Ring::map(fd, len, slots as u64)?;
        // SAFETY: the mapping is at least `HEADER_BYTES` long and page
        // aligned; no worker has it yet.
        unsafe { (*ring.map.as_ptr().cast::<Header>()).slots = slots };
        Ok(ring)
    }

    /// Maps the ring the parent passed to this worker.
    pub(crate) fn open(fd: OwnedFd) -> io::Result<Ring> {
        let len = rustix::fs::fstat(&fd)?.st_size as usize;
        if len < HEADER_BYTES {
            return Err(io::Error::other("result ring too small"));
        }
        let mut ring = Ring::map(fd, len, 0)?;
        let slots = ring.header_slots() as u64;
        if slots == 0 || HEADER_BYTES as u64 + slots * SLOT_BYTES as u64 > len as u64 {
            return Err(io::Error::other("result ring header is inconsistent"));
        }
        ring.slots = slots;
        Ok(ring)
    }

    fn map(fd: OwnedFd, len: usize, slots: u64) -> io::Result<Ring> {
        use rustix::mm::{MapFlags, ProtFlags};
        // SAFETY: a fresh shared mapping of `len` bytes of `fd`, which is at
        // least that long (and, on Linux, sealed against shrinking); nothing
        // else in this process refers to that address range.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )?
        };
        let map = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(Ring {
            fd,
            map,
            len,
            slots,
        })
    }

    /// The descriptor a worker inherits.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The number of slots.
    pub(crate) fn slots(&self) -> u64 {
        self.slots
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping starts with a `Header` (page aligned, long
        // enough) and lives as long as `self`.
        unsafe { &*self.map.as_ptr().cast::<Header>() }
    }

    fn header_slots(&self) -> u32 {
        // SAFETY: as in `header`; read once when the worker maps the ring.
        unsafe { std::ptr::read_volatile(&(*self.map.as_ptr().cast::<Header>()).slots) }
    }

    fn slot_ptr(&self, index: u64) -> *mut u8 {
        let offset = HEADER_BYTES + (index % self.slots) as usize * SLOT_BYTES;
        // SAFETY: `offset + SLOT_BYTES <= len`, checked when the ring was
        // created or opened.
        unsafe { self.map.as_ptr().add(offset) }
    }

    // ----- the worker's side -----

    /// Publishes one whole frame of at most [`SLOT_BYTES`]; returns its
    /// index. `Err` when the ring is full, which a parent that keeps its rules
    /// never allows.
    pub(crate) fn publish(&self, frame: &[u8]) -> io::Result<u64> {
        assert!(frame.len() <= SLOT_BYTES, "a ring entry fits its slot");
        let h = self.header();
        let head = h.head.load(Ordering::Relaxed);
        if head.wrapping_sub(h.tail.load(Ordering::Acquire)) >= self.slots {
            return Err(io::Error::other("the result ring is full"));
        }
        // SAFETY: slot `head` is free (the parent consumed it, as `tail`
        // says) and only this worker writes slots.
        unsafe { std::ptr::copy_nonoverlapping(frame.as_ptr(), self.slot_ptr(head), frame.len()) };
        h.head.store(head + 1, Ordering::SeqCst);
        Ok(head)
    }

    /// Whether the parent has consumed entry `index` (and so is done with
    /// everything it announced).
    pub(crate) fn is_consumed(&self, index: u64) -> bool {
        self.header().tail.load(Ordering::Acquire) > index
    }

    /// Whether the result pipe may hold bytes this worker did not write,
    /// given the `written` bytes it did: a task wrote to the parent's pipe.
    /// Compares the parent's count of bytes read with what the pipe holds;
    /// when the parent may be reading at that moment, says `true` (the
    /// pipe is then the safe way, and as cheap: a reading parent is a
    /// sleeping one, which the worker would wake through the pipe anyway).
    /// Only Linux tells what a pipe holds from its write end; elsewhere this
    /// says `false`.
    pub(crate) fn pipe_has_foreign_bytes(&self, pipe: BorrowedFd<'_>, written: u64) -> bool {
        if !cfg!(target_os = "linux") {
            return false;
        }
        let h = self.header();
        let before = h.pipe_read.load(Ordering::SeqCst);
        if before == READING {
            return true;
        }
        let Ok(held) = rustix::io::ioctl_fionread(pipe) else {
            return true;
        };
        // Unchanged: the parent read nothing between the two loads, so
        // `held` is what it left unread of everything written.
        h.pipe_read.load(Ordering::SeqCst) != before || before + held > written
    }

    /// After publishing: `true` when the parent is asleep and must be woken
    /// through the pipe (it is then no longer marked as waiting).
    pub(crate) fn must_wake(&self) -> bool {
        let h = self.header();
        fence(Ordering::SeqCst);
        h.waiting.load(Ordering::SeqCst) == 1 && h.waiting.swap(0, Ordering::SeqCst) == 1
    }

    // ----- the parent's side -----

    /// Entries published and not yet consumed, as `(first, end)` sequence
    /// numbers; `Err` when the worker's counter makes no sense.
    pub(crate) fn pending(&self) -> Result<(u64, u64), &'static str> {
        let h = self.header();
        let tail = h.tail.load(Ordering::Relaxed);
        let head = h.head.load(Ordering::Acquire);
        match head.wrapping_sub(tail) {
            n if n <= self.slots => Ok((tail, head)),
            _ => Err("the worker's result ring counter is out of range"),
        }
    }

    /// A copy of entry `index` (between `pending`'s bounds): the 8-byte words
    /// that hold the frame its length prefix announces, the rest zeroed.
    pub(crate) fn read(&self, index: u64) -> [u8; SLOT_BYTES] {
        const WORD: usize = std::mem::size_of::<u64>();
        let src = self.slot_ptr(index).cast::<u64>();
        // SAFETY (both reads): the slot lies inside the mapping and is
        // 8-aligned (the mapping is page aligned, slots `SLOT_BYTES` apart);
        // the worker no longer writes it (it published it). A worker breaking
        // that rule can only make this copy garbage, which decoding refuses.
        let first = unsafe { src.read_volatile() }.to_ne_bytes();
        let prefix: [u8; 4] = first[..crate::wire::LEN_PREFIX]
            .try_into()
            .expect("4 bytes");
        let frame = crate::wire::LEN_PREFIX + u32::from_le_bytes(prefix) as usize;
        let mut bytes = [0u8; SLOT_BYTES];
        bytes[..WORD].copy_from_slice(&first);
        // Word by word (a volatile byte array would be copied byte by byte),
        // and only the words the frame covers.
        let words = frame.div_ceil(WORD).min(SLOT_BYTES / WORD);
        for i in 1..words {
            // SAFETY: as above; `i` < the slot's words.
            let word = unsafe { src.add(i).read_volatile() };
            bytes[i * WORD..][..WORD].copy_from_slice(&word.to_ne_bytes());
        }
        bytes
    }

    /// The parent is about to read the result pipe (until `set_pipe_read`).
    pub(crate) fn pipe_reading(&self) {
        self.header().pipe_read.store(READING, Ordering::SeqCst);
    }

    /// The parent has read `bytes` from the result pipe in all, and is not
    /// reading it now.
    pub(crate) fn set_pipe_read(&self, bytes: u64) {
        self.header().pipe_read.store(bytes, Ordering::SeqCst);
    }

    /// Entries up to `end` (exclusive) are consumed: their slots are free.
    pub(crate) fn consumed(&self, end: u64) {
        self.header().tail.store(end, Ordering::Release);
    }

    /// Before sleeping: marks the parent as waiting, unless entries are
    /// already pending (`false`: look at them first; not marked).
    pub(crate) fn arm(&self) -> bool {
        let h = self.header();
        h.waiting.store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if h.head.load(Ordering::SeqCst) != h.tail.load(Ordering::Relaxed) {
            h.waiting.store(0, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Awake again: the worker need not ring the doorbell.
    pub(crate) fn disarm(&self) {
        self.header().waiting.store(0, Ordering::Relaxed);
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: `map` and `len` are the mapping made in `map`, unmapped
        // once, here; no reference into it outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.map.as_ptr().cast(), self.len) };
    }
}

/// A shared memory file of `len` bytes, close-on-exec.
#[cfg(all(target_os = "linux", not(procpool_portable)))]
fn shared_memory(len: u64) -> io::Result<OwnedFd> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create(
        "procpool-results",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    rustix::fs::ftruncate(&fd, len)?;
    // The worker gets a writable descriptor; the seals keep it from changing
    // the size (a shrunk file would fault the parent's reads).
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
    Ok(fd)
}

/// A shared memory file of `len` bytes, close-on-exec: a POSIX shared memory
/// object, unlinked at once so that only its descriptors keep it.
#[cfg(not(all(target_os = "linux", not(procpool_portable))))]
fn shared_memory(len: u64) -> io::Result<OwnedFd> {
    use rustix::fs::Mode;
    use rustix::shm::OFlags;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    loop {
        // Short: macOS allows 31 bytes.
        let name = format!(
            "/pp{}.{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let flags = OFlags::CREATE | OFlags::EXCL | OFlags::RDWR;
        match rustix::shm::open(name.as_str(), flags, Mode::RUSR | Mode::WUSR) {
            Ok(fd) => {
                let _ = rustix::shm::unlink(name.as_str());
                rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)?;
                rustix::fs::ftruncate(&fd, len)?;
                return Ok(fd);
            }
            // Left over from an earlier process with our pid: another name.
            Err(rustix::io::Errno::EXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker_view(parent: &Ring) -> Ring {
        let fd = parent.fd().try_clone_to_owned().unwrap();
        Ring::open(fd).unwrap()
    }

    #[test]
    fn entries_cross_in_order_and_free_their_slots() {
        let parent = Ring::create(4).unwrap();
        let worker = worker_view(&parent);
        assert_eq!(worker.slots(), 4);
        for round in 0..3u8 {
            for i in 0..4u8 {
                worker.publish(&[round, i, 7]).unwrap();
            }
            assert!(worker.publish(&[9]).is_err(), "full after 4");
            let (first, end) = parent.pending().unwrap();
            assert_eq!(end - first, 4);
            for (k, index) in (first..end).enumerate() {
                assert_eq!(&parent.read(index)[..3], &[round, k as u8, 7]);
            }
            parent.consumed(end);
        }
    }

    #[test]
    fn the_doorbell_rings_only_for_a_parent_about_to_sleep() {
        let parent = Ring::create(2).unwrap();
        let worker = worker_view(&parent);
        worker.publish(&[1]).unwrap();
        assert!(!worker.must_wake(), "the parent is awake");
        assert!(!parent.arm(), "an entry is pending: do not sleep");
        parent.consumed(1);
        assert!(parent.arm());
        worker.publish(&[2]).unwrap();
        assert!(worker.must_wake());
        assert!(!worker.must_wake(), "woken once");
        parent.disarm();
    }

    #[test]
    fn a_read_copies_the_frame_and_not_an_older_entry_behind_it() {
        let parent = Ring::create(1).unwrap();
        let worker = worker_view(&parent);
        worker.publish(&[0xAB; SLOT_BYTES]).unwrap();
        parent.consumed(1);
        let mut frame = 9u32.to_le_bytes().to_vec();
        frame.extend_from_slice(b"123456789");
        worker.publish(&frame).unwrap();
        let copy = parent.read(1);
        assert_eq!(&copy[..frame.len()], &frame[..]);
        assert!(copy[16..].iter().all(|&b| b == 0), "past the frame's words");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn bytes_on_the_pipe_that_the_worker_did_not_write_are_seen() {
        use std::io::{Read, Write};
        let parent = Ring::create(1).unwrap();
        let worker = worker_view(&parent);
        let (read_end, write_end) = rustix::pipe::pipe().unwrap();
        let (mut rx, mut tx) = (
            std::fs::File::from(read_end),
            std::fs::File::from(write_end),
        );
        parent.set_pipe_read(0);
        tx.write_all(b"mine!").unwrap();
        assert!(!worker.pipe_has_foreign_bytes(tx.as_fd(), 5));
        tx.write_all(b"xyz").unwrap(); // a task's
        assert!(worker.pipe_has_foreign_bytes(tx.as_fd(), 5));
        // Read by the parent, they still show in its count.
        let mut buf = [0; 8];
        rx.read_exact(&mut buf).unwrap();
        parent.set_pipe_read(8);
        assert!(worker.pipe_has_foreign_bytes(tx.as_fd(), 5));
        assert!(!worker.pipe_has_foreign_bytes(tx.as_fd(), 8));
        // While the parent reads, nothing is certain: say so.
        parent.pipe_reading();
        assert!(worker.pipe_has_foreign_bytes(tx.as_fd(), 8));
    }

    #[test]
    fn a_corrupt_counter_is_refused() {
        let parent = Ring::create(2).unwrap();
        parent.header().head.store(1000, Ordering::SeqCst);
        assert!(parent.pending().is_err());
    }

    #[cfg(all(target_os = "linux", not(procpool_portable)))]
    #[test]
    fn the_worker_cannot_shrink_the_shared_file() {
        let parent = Ring::create(2).unwrap();
        assert!(rustix::fs::ftruncate(parent.fd(), 0).is_err());
    }
}
