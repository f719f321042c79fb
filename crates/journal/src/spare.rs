//! Frame buffers handed back by the journal thread once their records are written, for the
//! feed to copy the next frames into.
//!
//! Why: the feed thread copies every frame it journals into a new `Vec` and the journal thread
//! frees it after writing the record; glibc's allocator then serves the feed's next copy from
//! its shared bins, not its per-thread cache (the frees happen on another thread): 4–6% of the
//! collector's CPU over a whole market (`perf`, `_int_malloc` under the frame copy). With
//! [`SpareBuffers`] the journal thread keeps the buffers of the records it wrote and the feed
//! takes one for its next copy.
//!
//! What must hold:
//! - a buffer taken holds exactly the frame copied into it (cleared first), so a record never
//!   carries a byte of an earlier frame;
//! - memory stays bounded: at most [`SpareBuffers::MAX_BUFFERS`] buffers of at most
//!   [`SpareBuffers::MAX_CAPACITY`] bytes are kept, and a frame is never copied into a buffer
//!   more than twice its size (plus 256 bytes): the queue's byte bound, which counts a frame's
//!   length, holds within that factor.

use std::sync::Mutex;

/// Spare frame buffers (see the module doc). Shared by the journal thread (which gives) and the
/// feed (which takes).
#[derive(Debug, Default)]
pub struct SpareBuffers {
    pool: Mutex<Vec<Vec<u8>>>,
}

impl SpareBuffers {
    /// The most buffers kept.
    pub const MAX_BUFFERS: usize = 256;
    /// The largest buffer kept (a larger one, a snapshot's, is freed).
    pub const MAX_CAPACITY: usize = 4096;

    /// Keeps `buffers` for later copies, as many as there is room for; the others are freed.
    pub fn give(&self, buffers: impl IntoIterator<Item = Vec<u8>>) {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        for buffer in buffers {
            if pool.len() >= Self::MAX_BUFFERS {
                break;
            }
            if (1..=Self::MAX_CAPACITY).contains(&buffer.capacity()) {
                pool.push(buffer);
            }
        }
    }

    /// `bytes` in a buffer of their own: a spare one when the last kept fits them (at most
    /// twice their length and 256 bytes more), else a new one of their exact length.
    pub fn copy_of(&self, bytes: &[u8]) -> Vec<u8> {
        let spare = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match spare {
            Some(mut buffer)
                if buffer.capacity() >= bytes.len()
                    && buffer.capacity() <= 2 * bytes.len() + 256 =>
            {
                buffer.clear();
                buffer.extend_from_slice(bytes);
                buffer
            }
            // One that does not fit is freed: the pool follows the frames' sizes.
            _ => bytes.to_vec(),
        }
    }

    /// How many buffers are kept (tests).
    pub fn len(&self) -> usize {
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy holds exactly its frame, whatever buffer it got; buffers that do not fit the
    /// frame, too large ones and those past the bound are not used or kept.
    #[test]
    fn a_copy_holds_exactly_its_frame_and_the_pool_stays_bounded() {
        let spare = SpareBuffers::default();
        assert_eq!(spare.copy_of(b"first frame"), b"first frame");
        // A used buffer full of another frame's bytes, longer than the next frame.
        let mut old = Vec::with_capacity(300);
        old.extend_from_slice(&[b'x'; 300]);
        spare.give([old]);
        let copy = spare.copy_of(&[b'a'; 200]);
        assert_eq!(copy, vec![b'a'; 200]);
        assert_eq!(copy.capacity(), 300, "the spare buffer was used");
        assert!(spare.is_empty());
        // Too small, or more than twice the frame and 256 bytes: not used, and freed.
        spare.give([Vec::with_capacity(100)]);
        assert_eq!(spare.copy_of(&[b'b'; 150]), vec![b'b'; 150]);
        assert!(spare.is_empty());
        spare.give([Vec::with_capacity(4000)]);
        let small = spare.copy_of(b"tiny");
        assert_eq!((small.as_slice(), small.capacity()), (&b"tiny"[..], 4));
        // Empty and too large buffers are not kept; at most MAX_BUFFERS are.
        spare.give([
            Vec::new(),
            Vec::with_capacity(SpareBuffers::MAX_CAPACITY + 1),
        ]);
        assert!(spare.is_empty());
        spare.give((0..SpareBuffers::MAX_BUFFERS + 10).map(|_| Vec::with_capacity(64)));
        assert_eq!(spare.len(), SpareBuffers::MAX_BUFFERS);
    }
}
