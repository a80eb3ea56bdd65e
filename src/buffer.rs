//! Large I/O buffers: when to give one back, and how to make one cheap.
//!
//! Touching fresh memory is expensive (a page fault per 4 KiB), so a buffer
//! that just carried a large frame is kept while large frames keep coming, and
//! released once several small frames in a row show it is no longer needed.
//! And a buffer grown for a large frame asks Linux for huge pages
//! ([`reserve`]): a fault per 2 MiB instead of per 4 KiB, four times faster
//! to fill on the machine the benchmarks run on.

/// Buffers up to this size are always kept.
const KEEP: usize = 1 << 20;
/// Consecutive small uses after which a large buffer is released.
const PATIENCE: u32 = 8;

/// Buffers from this size on are backed by huge pages where the system
/// offers them.
const HUGE: usize = 4 << 20;

/// `buf.reserve(additional)`, asking for huge pages when that grew `buf` to a
/// large buffer.
pub(crate) fn reserve(buf: &mut Vec<u8>, additional: usize) {
    let before = buf.capacity();
    buf.reserve(additional);
    if buf.capacity() != before && buf.capacity() >= HUGE {
        advise_huge_pages(buf);
    }
}

/// A writer that grows its buffer through [`reserve`], for encoding values of
/// any size.
pub(crate) struct Growing<'a>(pub(crate) &'a mut Vec<u8>);

impl std::io::Write for Growing<'_> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.write_all(bytes).map(|()| bytes.len())
    }

    // Encoders write a few bytes at a time: the common case is one compare.
    #[inline]
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.0.capacity() - self.0.len() < bytes.len() {
            reserve(self.0, bytes.len());
        }
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Asks for huge pages behind `buf`'s capacity (with transparent huge pages
/// in `madvise` mode, the usual default, memory gets them only when asked).
/// The range is widened to whole 4 KiB pages, not narrowed to 2 MiB ones: a
/// large allocation is a mapping of its own, and advising all of it keeps it
/// one mapping, which the allocator can still grow in place (`mremap` refuses
/// a range that a partial advice split in parts).
#[cfg(target_os = "linux")]
fn advise_huge_pages(buf: &mut Vec<u8>) {
    let page = rustix::param::page_size();
    let start = buf.as_mut_ptr() as usize;
    let first = start & !(page - 1);
    let end = (start + buf.capacity()).next_multiple_of(page);
    // SAFETY: the pages hold `buf`'s allocation and, at its edges, at most
    // the allocator's own bookkeeping of the same mapping; MADV_HUGEPAGE
    // changes how memory is backed, never its contents. Failure (no THP
    // support) is harmless.
    let _ = unsafe {
        rustix::mm::madvise(
            first as *mut _,
            end - first,
            rustix::mm::Advice::LinuxHugepage,
        )
    };
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_: &mut Vec<u8>) {}

#[derive(Debug, Default)]
pub(crate) struct Keeper {
    small_uses: u32,
}

impl Keeper {
    /// Call after each use of `buf` that needed `used` bytes; may shrink it.
    pub(crate) fn after_use(&mut self, buf: &mut Vec<u8>, used: usize) {
        if buf.capacity() <= KEEP {
            return;
        }
        if used > buf.capacity() / 4 {
            self.small_uses = 0;
            return;
        }
        self.small_uses += 1;
        if self.small_uses >= PATIENCE && buf.len() <= KEEP {
            buf.shrink_to(KEEP.max(buf.len()));
            self.small_uses = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growing_writes_every_byte() {
        use std::io::Write;
        let mut buf = Vec::new();
        let mut w = Growing(&mut buf);
        w.write_all(b"abc").unwrap();
        w.write_all(&[7; HUGE]).unwrap();
        assert_eq!(buf.len(), 3 + HUGE);
        assert_eq!(&buf[..3], b"abc");
        assert!(buf[3..].iter().all(|&b| b == 7));
    }

    /// The mapping holding `addr` and its kernel flags (`VmFlags` of
    /// `/proc/self/smaps`).
    #[cfg(target_os = "linux")]
    fn mapping_of(addr: usize) -> (std::ops::Range<usize>, String) {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = None;
        for line in smaps.lines() {
            let range = line.split(' ').next().unwrap_or("");
            if let Some((lo, hi)) = range.split_once('-') {
                if let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                {
                    inside = (lo..hi).contains(&addr).then_some(lo..hi);
                    continue;
                }
            }
            if let (Some(range), Some(flags)) = (&inside, line.strip_prefix("VmFlags:")) {
                return (range.clone(), flags.to_string());
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_large_buffer_asks_for_huge_pages_and_stays_one_mapping() {
        if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
            eprintln!("skipped: this kernel has no transparent huge pages");
            return;
        }
        let mut buf: Vec<u8> = Vec::new();
        reserve(&mut buf, 8 << 20);
        let start = buf.as_ptr() as usize;
        let (range, flags) = mapping_of(start);
        assert!(
            flags.split_whitespace().any(|f| f == "hg"),
            "flags: {flags}"
        );
        // Advised whole, not split in parts (which would stop `mremap`).
        assert!(range.contains(&(start + buf.capacity() - 1)), "{range:x?}");
    }

    #[test]
    fn keeps_a_big_buffer_while_big_frames_come_then_releases_it() {
        let mut k = Keeper::default();
        let mut buf: Vec<u8> = Vec::with_capacity(64 << 20);
        for _ in 0..20 {
            k.after_use(&mut buf, 60 << 20);
        }
        assert!(buf.capacity() >= 64 << 20);
        for _ in 0..PATIENCE {
            k.after_use(&mut buf, 100);
        }
        assert!(buf.capacity() <= KEEP);
    }
}
