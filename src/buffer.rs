//! When to give back a large I/O buffer.
//!
//! Touching fresh memory is expensive (a page fault per 4 KiB), so a buffer
//! that just carried a large frame is kept while large frames keep coming, and
//! released once several small frames in a row show it is no longer needed.

/// Buffers up to this size are always kept.
const KEEP: usize = 1 << 20;
/// Consecutive small uses after which a large buffer is released.
const PATIENCE: u32 = 8;

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
