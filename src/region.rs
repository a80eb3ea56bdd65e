//! Large frames in shared memory: one frame at a time each way between the
//! parent and a local worker.
//!
//! Through a pipe, a frame of many megabytes crosses in pieces the size of
//! the pipe's buffer: a wake-up and two copies for each, from one CPU's cache
//! to the other's. So a local worker also gets two shared memory files at
//! launch, one per direction. The writer puts a large frame at the start of
//! its file and sends only a small notice naming its length (`JOB_IN_REGION`
//! on the job pipe, a `RESULT_IN_REGION` entry in the result ring, see
//! [`crate::wire`]); the reader decodes the frame where it lies. The notice
//! travels where the frame would have, so the order of jobs and results, and
//! with it exact cancellation and blame, is the pipe's and the ring's.
//!
//! The rules:
//!
//! - One frame at a time in each direction. The parent writes the job region
//!   again only once the job it carried has left the worker (answered or
//!   skipped); the worker writes the result region again only once the
//!   parent has consumed the ring entry that announced the last one. While a
//!   region is busy, a frame takes the pipe as before.
//! - The files are memfds sealed against shrinking, so a reader that checked
//!   a length against the file's size can never fault on it, whatever the
//!   other side does to the file afterwards. A side that maps a region maps
//!   the largest frame it may carry once (the pool's frame limit, at most
//!   [`MAX_MAPPED`]; larger frames take the pipe), so a file that grows is
//!   never mapped again.
//! - What a worker wrote is untrusted, like its pipe bytes: the parent does
//!   not map the result region at all, but reads the announced length out of
//!   the file into a buffer of its own (a task's stray thread may still be
//!   writing the memory, and a decoder must not read bytes that change under
//!   it), then splits and decodes the frame like one from the pipe.
//! - Memory: the writer keeps the pages while large frames keep coming
//!   (faulting in fresh memory costs more than the copy itself), and punches
//!   them out after [`PATIENCE`] jobs without one; reads then see zeros.
//!
//! Only the Linux backend has regions: elsewhere a worker could shrink a
//! shared memory object under the parent's reads, so frames of every size
//! take the pipe there (and from remote and Windows workers).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

/// Frames at least this large go through a region when it is free; smaller
/// ones cross the pipe in one piece, which is as cheap.
pub(crate) const USE_FROM: usize = 256 * 1024;

/// The most address space a mapping reserves.
pub(crate) const MAX_MAPPED: u64 = 256 << 20;

/// Jobs in a row without a region frame after which its memory is given
/// back.
pub(crate) const PATIENCE: u32 = 8;

/// The file grows in steps of this much (fewer `ftruncate` calls for frames
/// of slowly rising sizes).
const GROW_STEP: u64 = 2 << 20;

/// One side's mapping of a region.
pub(crate) struct Region {
    fd: OwnedFd,
    /// `None` on a side that only reads through [`Region::read_into`].
    map: Option<NonNull<u8>>,
    /// The longest frame the region carries (the bytes mapped, if mapped).
    reserved: usize,
    /// Jobs since the writer last put a frame here.
    unused: u32,
}

// SAFETY: the mapping is plain shared memory, reached only through `&self`
// reads (`get`) and `&mut self` writes (`put`), so this process never writes
// it from two threads at once.
unsafe impl Send for Region {}
// SAFETY: as above; `&Region` only reads.
unsafe impl Sync for Region {}

impl Region {
    /// Creates an empty region for frames of up to `max_frame` body bytes
    /// (the parent's side), mapped if `mapped`.
    #[cfg(all(target_os = "linux", not(procpool_portable)))]
    pub(crate) fn create(max_frame: u64, mapped: bool) -> io::Result<Region> {
        use rustix::fs::{MemfdFlags, SealFlags};
        let fd = rustix::fs::memfd_create(
            "procpool-frames",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        // Growing stays allowed (the writer grows it); shrinking, which would
        // fault the other side's reads, never is.
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::SEAL)?;
        Region::with_fd(fd, max_frame, mapped)
    }

    /// Regions need a file the other side cannot shrink: Linux only.
    #[cfg(not(all(target_os = "linux", not(procpool_portable))))]
    pub(crate) fn create(_max_frame: u64, _mapped: bool) -> io::Result<Region> {
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Maps a region whose descriptor the parent passed (the worker's side).
    pub(crate) fn open(fd: OwnedFd, max_frame: u64) -> io::Result<Region> {
        Region::with_fd(fd, max_frame, true)
    }

    fn with_fd(fd: OwnedFd, max_frame: u64, mapped: bool) -> io::Result<Region> {
        let page = rustix::param::page_size() as u64;
        let longest = (max_frame + crate::wire::LEN_PREFIX as u64).min(MAX_MAPPED);
        let reserved = usize::try_from(longest.next_multiple_of(page))
            .map_err(|_| io::Error::other("region too large"))?;
        let map = if mapped {
            Some(map_shared(&fd, reserved)?)
        } else {
            None
        };
        Ok(Region {
            fd,
            map,
            reserved,
            unused: 0,
        })
    }

    /// The descriptor the other side inherits.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Whether a frame of `len` bytes fits the mapping.
    fn fits(&self, len: usize) -> bool {
        len <= self.reserved
    }

    fn file_size(&self) -> io::Result<u64> {
        Ok(rustix::fs::fstat(&self.fd)?.st_size as u64)
    }

    /// The writer: puts `frame` at the start of the region, growing the file
    /// as needed, and returns the copy (to fill in a field). The region must
    /// be free (see the module's rules).
    pub(crate) fn put(&mut self, frame: &[u8]) -> io::Result<&mut [u8]> {
        if !self.fits(frame.len()) {
            return Err(io::Error::other("frame larger than the region"));
        }
        let len = frame.len() as u64;
        // Asked each time: the other side may have grown the file, and a
        // smaller size given to `ftruncate` would be refused by the seal.
        if self.file_size()? < len {
            let grown = len.next_multiple_of(GROW_STEP).min(self.reserved as u64);
            rustix::fs::ftruncate(&self.fd, grown)?;
        }
        self.unused = 0;
        let map = self
            .map
            .ok_or_else(|| io::Error::other("region not mapped"))?;
        // SAFETY: the file holds at least `len` bytes (checked or grown just
        // above, and it cannot shrink), all inside the mapping (`fits`); the
        // other side reads them only after the notice that follows.
        let dest = unsafe { std::slice::from_raw_parts_mut(map.as_ptr(), frame.len()) };
        dest.copy_from_slice(frame);
        Ok(dest)
    }

    /// The worker, reading what the parent put: the region's first `len`
    /// bytes, once checked to lie within the file and the mapping.
    pub(crate) fn get(&self, len: u64) -> Result<&[u8], String> {
        let size = self.file_size().map_err(|e| e.to_string())?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l as u64 <= size && self.fits(l));
        let (Some(len), Some(map)) = (len, self.map) else {
            return Err(format!("a frame announced beyond a region of {size} bytes"));
        };
        // SAFETY: the file holds these bytes and cannot shrink (sealed), so
        // no access faults; they lie inside the mapping (`fits`). Only the
        // parent, trusted, writes them, and not until this worker is done
        // with them (the module's rules); anything else writing them is a
        // task of this very process, which can corrupt its memory anyway.
        Ok(unsafe { std::slice::from_raw_parts(map.as_ptr(), len) })
    }

    /// The parent, reading what a worker put: copies the region's first
    /// `len` bytes into `buf` (replacing its contents) through the file, so
    /// bytes a worker changes meanwhile can make the copy garbage, which
    /// decoding refuses, but never change under a reader.
    pub(crate) fn read_into(&self, len: u64, buf: &mut Vec<u8>) -> Result<(), String> {
        let len = usize::try_from(len).ok().filter(|&l| self.fits(l));
        let Some(len) = len else {
            return Err("a frame announced beyond the region's limit".into());
        };
        buf.clear();
        crate::buffer::reserve(buf, len);
        while buf.len() < len {
            let at = buf.len();
            let spare = &mut buf.spare_capacity_mut()[..len - at];
            match rustix::io::pread(&self.fd, spare, at as u64) {
                Ok((filled, _)) if !filled.is_empty() => {
                    let n = filled.len();
                    // SAFETY: `pread` initialised the first `n` spare bytes.
                    unsafe { buf.set_len(at + n) }
                }
                Ok(_) => return Err("a frame announced beyond the region's end".into()),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    }

    /// The writer, after a job that put no frame here while the region was
    /// free: gives the memory back after [`PATIENCE`] such jobs in a row.
    pub(crate) fn note_unused(&mut self) {
        self.unused = self.unused.saturating_add(1);
        if self.unused == PATIENCE {
            self.release();
        }
    }

    /// Gives the file's pages back; its size stays, and reads see zeros.
    #[cfg(target_os = "linux")]
    fn release(&mut self) {
        use rustix::fs::FallocateFlags;
        if let Ok(size @ 1..) = self.file_size() {
            let mode = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            let _ = rustix::fs::fallocate(&self.fd, mode, 0, size);
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn release(&mut self) {}
}

/// A shared mapping of `len` bytes of `fd` (which may be shorter: only the
/// bytes the file holds are ever touched).
fn map_shared(fd: &OwnedFd, len: usize) -> io::Result<NonNull<u8>> {
    use rustix::mm::{MapFlags, ProtFlags};
    // Address space only: no memory is committed for it.
    #[cfg(target_os = "linux")]
    let flags = MapFlags::SHARED | MapFlags::NORESERVE;
    #[cfg(not(target_os = "linux"))]
    let flags = MapFlags::SHARED;
    // SAFETY: a fresh shared mapping of `fd`; nothing else in this process
    // refers to that address range. Pages past the file's end are never
    // touched (every access is checked against the file's size first).
    let ptr = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            flags,
            fd,
            0,
        )?
    };
    NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap gave null"))
}

impl Drop for Region {
    fn drop(&mut self) {
        if let Some(map) = self.map {
            // SAFETY: `map` and `reserved` are the mapping made in `with_fd`,
            // unmapped once, here; no reference into it outlives `self`.
            let _ = unsafe { rustix::mm::munmap(map.as_ptr().cast(), self.reserved) };
        }
    }
}

#[cfg(all(test, target_os = "linux", not(procpool_portable)))]
mod tests {
    use super::*;

    fn pair(max: u64) -> (Region, Region) {
        let writer = Region::create(max, true).unwrap();
        let fd = writer.fd().try_clone_to_owned().unwrap();
        (writer, Region::open(fd, max).unwrap())
    }

    #[test]
    fn a_frame_put_by_one_side_is_read_by_the_other() {
        let (mut writer, reader) = pair(8 << 20);
        let frame: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
        writer.put(&frame).unwrap()[0] = 42;
        let got = reader.get(frame.len() as u64).unwrap();
        assert_eq!(got[0], 42);
        assert_eq!(&got[1..], &frame[1..]);
        // A smaller frame after a larger one: the file does not shrink.
        writer.put(b"small").unwrap();
        assert_eq!(reader.get(5).unwrap(), b"small");
    }

    #[test]
    fn a_length_beyond_the_file_or_the_limit_is_refused() {
        let (mut writer, reader) = pair(1 << 20);
        writer.put(&[1; 1000]).unwrap();
        // Within the file (which grew by a whole step), not past it.
        assert!(reader.get(GROW_STEP.min(reader.reserved as u64)).is_ok());
        assert!(reader.get(reader.reserved as u64 + 1).is_err());
        assert!(reader.get(u64::MAX).is_err());
        assert!(
            writer.put(&vec![0; (2 << 20) + 1]).is_err(),
            "over the limit"
        );
        // The parent's reading through the file checks the same.
        let mut buf = Vec::new();
        assert!(writer.read_into(u64::MAX, &mut buf).is_err());
        assert!(writer
            .read_into(reader.reserved as u64 + 1, &mut buf)
            .is_err());
        writer.read_into(1000, &mut buf).unwrap();
        assert_eq!(buf, [1; 1000]);
    }

    #[test]
    fn the_other_side_cannot_shrink_the_file() {
        let (mut writer, reader) = pair(4 << 20);
        writer.put(&[7; 4096]).unwrap();
        assert!(rustix::fs::ftruncate(reader.fd(), 0).is_err());
        // It may grow it; the writer still puts frames.
        rustix::fs::ftruncate(reader.fd(), 3 << 20).unwrap();
        writer.put(&[9; 8192]).unwrap();
        assert_eq!(reader.get(8192).unwrap(), &[9; 8192][..]);
    }

    #[test]
    fn memory_is_given_back_after_jobs_without_frames() {
        let (mut writer, reader) = pair(4 << 20);
        writer.put(&[5; 1 << 20]).unwrap();
        for _ in 0..PATIENCE - 1 {
            writer.note_unused();
        }
        assert_eq!(reader.get(1).unwrap(), &[5]);
        writer.note_unused();
        let blocks = rustix::fs::fstat(reader.fd()).unwrap().st_blocks;
        assert_eq!(blocks, 0, "no pages left");
        assert_eq!(reader.get(1).unwrap(), &[0], "punched out: zeros");
    }
}
