//! Bytes waiting to be written to a worker, in order.
//!
//! Small frames are copied together so that many ready jobs go out in one
//! write; a large frame is queued by reference (it is shared with the
//! in-flight record that keeps it for a possible resend), so its bytes are
//! never copied in the parent.

use std::collections::VecDeque;
use std::sync::Arc;

use super::job::Frame;

enum Piece {
    Copied(Vec<u8>),
    Shared(Arc<Vec<u8>>),
}

impl Piece {
    fn bytes(&self) -> &[u8] {
        match self {
            Piece::Copied(v) => v,
            Piece::Shared(v) => v,
        }
    }
}

#[derive(Default)]
pub(crate) struct Outbox {
    pieces: VecDeque<Piece>,
    /// Bytes of the front piece already written.
    written: usize,
}

impl Outbox {
    pub(crate) fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// Queues a whole frame: small ones are copied, large ones shared.
    pub(crate) fn push_frame(&mut self, frame: &Frame) {
        match frame {
            Frame::Large(shared) => self.pieces.push_back(Piece::Shared(shared.clone())),
            small => self.small_buffer().extend_from_slice(small.bytes()),
        }
    }

    /// The buffer small frames are appended to (encode straight into it).
    pub(crate) fn small_buffer(&mut self) -> &mut Vec<u8> {
        if !matches!(self.pieces.back(), Some(Piece::Copied(_))) {
            self.pieces.push_back(Piece::Copied(Vec::new()));
        }
        match self.pieces.back_mut() {
            Some(Piece::Copied(v)) => v,
            _ => unreachable!("just pushed"),
        }
    }

    /// The next bytes to write.
    pub(crate) fn front(&self) -> &[u8] {
        self.pieces
            .front()
            .map_or(&[][..], |p| &p.bytes()[self.written..])
    }

    /// `n` bytes of [`front`](Self::front) were written.
    pub(crate) fn advance(&mut self, n: usize) {
        self.written += n;
        if let Some(front) = self.pieces.front() {
            if self.written == front.bytes().len() {
                self.pieces.pop_front();
                self.written = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_across_copied_and_shared_frames() {
        let mut o = Outbox::default();
        let small = Frame::new(vec![1u8; 10]);
        let big = Frame::new(vec![2u8; Frame::SHARE_ABOVE + 1]);
        o.push_frame(&small);
        o.push_frame(&small);
        o.push_frame(&big);
        o.small_buffer().extend_from_slice(&[3, 3]);
        let mut all = Vec::new();
        while !o.is_empty() {
            let chunk = o.front().len().min(7000);
            all.extend_from_slice(&o.front()[..chunk]);
            o.advance(chunk);
        }
        let mut expected = vec![1u8; 20];
        expected.extend(vec![2u8; Frame::SHARE_ABOVE + 1]);
        expected.extend([3, 3]);
        assert_eq!(all, expected);
        match &big {
            Frame::Large(shared) => {
                assert_eq!(Arc::strong_count(shared), 1, "written frames are released")
            }
            _ => panic!("a large frame is shared"),
        }
    }
}
