//! The ring of reusable block buffers that bounds the data path's memory.
//!
//! A [`BufferPool`] owns a fixed number of equally sized heap buffers, kept in a lock-free
//! [`ArrayQueue`]. A stage takes one as a [`Buffer`] (blocking for threads, `await`ing for the
//! network task), fills it, and hands it on; whoever holds it last drops it and it goes back to
//! the pool. [`Buffer::freeze`] turns a filled buffer into a [`Bytes`] whose drop returns the
//! buffer, so quinn can hold the payload until it is acknowledged without a copy.
//!
//! Invariant: at most `limit` buffers exist, so the data path never holds more than
//! `limit × size` bytes of payload, whatever the size of the files. A pool starts with a limit
//! and maps each buffer the first time it is needed; a sender raises the limit
//! ([`BufferPool::raise_limit`]) as the measured bandwidth-delay product asks, never past the
//! ceiling its configuration set.
//!
//! Buffers start on a 4 KiB boundary and their sizes are rounded up to 4 KiB, so they can be
//! handed to `O_DIRECT` reads and writes as they are.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use memmap2::MmapMut;
use tokio::sync::Notify;

/// Alignment of every buffer: what `O_DIRECT` asks of memory, offsets and lengths.
pub const ALIGN: usize = 4096;

/// A fixed set of reusable buffers.
pub struct BufferPool {
    free: ArrayQueue<MmapMut>,
    size: usize,
    /// Buffers mapped so far, and the most that may be (`free`'s capacity is the ceiling).
    made: AtomicUsize,
    limit: AtomicUsize,
    /// Wakes threads blocked in [`BufferPool::take_blocking`].
    lock: Mutex<()>,
    cond: Condvar,
    /// Threads in [`BufferPool::take_blocking`]: a returned buffer wakes the condition variable
    /// (a system call) only when one may be waiting on it.
    blocked: AtomicUsize,
    /// Wakes tasks waiting in [`BufferPool::take`].
    notify: Notify,
}

impl fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferPool")
            .field("free", &self.free.len())
            .field("made", &self.made.load(Ordering::Relaxed))
            .field("limit", &self.limit.load(Ordering::Relaxed))
            .field("ceiling", &self.free.capacity())
            .field("size", &self.size)
            .finish()
    }
}

impl BufferPool {
    /// A pool of `count` buffers of `size` bytes each.
    ///
    /// Each buffer is an anonymous memory mapping: page-aligned, and backed by memory only when
    /// a block first lands in it. (A zeroed heap allocation with 4 KiB alignment is zeroed by
    /// writing, page by page: 64 MiB cost ~40 ms on the network thread before the first byte
    /// moved, on each side.) The first is mapped here, so that a pool that cannot map any fails
    /// at once; the others when first taken.
    pub fn new(count: usize, size: usize) -> std::io::Result<Arc<Self>> {
        Self::growable(count, count, size)
    }

    /// A pool of `count` buffers of `size` bytes each that [`BufferPool::raise_limit`] may
    /// grow to `ceiling` buffers.
    pub fn growable(count: usize, ceiling: usize, size: usize) -> std::io::Result<Arc<Self>> {
        let count = count.max(1);
        let ceiling = ceiling.max(count);
        let free = ArrayQueue::new(ceiling);
        let pool = Self {
            free,
            size,
            made: AtomicUsize::new(1),
            limit: AtomicUsize::new(count),
            lock: Mutex::new(()),
            cond: Condvar::new(),
            blocked: AtomicUsize::new(0),
            notify: Notify::new(),
        };
        let _ = pool.free.push(pool.map()?);
        Ok(Arc::new(pool))
    }

    fn map(&self) -> std::io::Result<MmapMut> {
        MmapMut::map_anon(self.size.div_ceil(ALIGN).max(1) * ALIGN)
    }

    /// Lets the pool hold up to `count` buffers (never fewer than now, never more than its
    /// ceiling). Returns the limit now in force.
    pub fn raise_limit(&self, count: usize) -> usize {
        let count = count.min(self.free.capacity());
        let before = self.limit.fetch_max(count, Ordering::AcqRel);
        if count > before {
            self.notify.notify_waiters();
            let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.cond.notify_all();
        }
        before.max(count)
    }

    /// The most buffers the pool may hold now.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Acquire)
    }

    /// The size of each buffer.
    pub fn buffer_size(&self) -> usize {
        self.size
    }

    /// Buffers currently free.
    pub fn available(&self) -> usize {
        let unmapped = self
            .limit
            .load(Ordering::Acquire)
            .saturating_sub(self.made.load(Ordering::Acquire));
        self.free.len() + unmapped
    }

    /// Takes a buffer if one is free, or maps a new one while the limit allows.
    pub fn try_take(self: &Arc<Self>) -> Option<Buffer> {
        let data = match self.free.pop() {
            Some(data) => data,
            None => self.map_one()?,
        };
        Some(Buffer {
            data: Some(data),
            len: self.size,
            pool: self.clone(),
        })
    }

    /// Maps one more buffer if fewer than the limit exist. A mapping the kernel refuses counts
    /// as none free: the ring works with the buffers it has.
    fn map_one(&self) -> Option<MmapMut> {
        let limit = self.limit.load(Ordering::Acquire);
        self.made
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |m| {
                (m < limit).then_some(m + 1)
            })
            .ok()?;
        match self.map() {
            Ok(data) => Some(data),
            Err(e) => {
                self.made.fetch_sub(1, Ordering::AcqRel);
                tracing::debug!("mapping one more ring buffer failed: {e}");
                None
            }
        }
    }

    /// Takes a buffer, blocking the calling thread until one is returned.
    pub fn take_blocking(self: &Arc<Self>) -> Buffer {
        loop {
            if let Some(b) = self.try_take() {
                return b;
            }
            // Blocks this thread holds back may be what frees a buffer.
            if crate::burst::holding() {
                crate::burst::hand_over_held();
                continue;
            }
            self.blocked.fetch_add(1, Ordering::SeqCst);
            let guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(b) = self.try_take() {
                self.blocked.fetch_sub(1, Ordering::SeqCst);
                return b;
            }
            // The timeout covers a return that raced between the check and the wait.
            let _ = self.cond.wait_timeout(guard, Duration::from_millis(5));
            self.blocked.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Takes a buffer, waiting asynchronously until one is returned.
    pub async fn take(self: &Arc<Self>) -> Buffer {
        loop {
            if let Some(b) = self.try_take() {
                return b;
            }
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(b) = self.try_take() {
                return b;
            }
            notified.await;
        }
    }

    fn give_back(&self, data: MmapMut) {
        // Cannot fail: only buffers this pool made come back, and at most its ceiling exist.
        let _ = self.free.push(data);
        self.notify.notify_one();
        // A thread that counted itself after this load finds the buffer in its own check.
        if self.blocked.load(Ordering::SeqCst) > 0 {
            let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.cond.notify_one();
        }
    }
}

/// One buffer taken from a [`BufferPool`]; returned to it on drop.
pub struct Buffer {
    data: Option<MmapMut>,
    /// The usable length (the pool's buffer size; the pages may hold a little more).
    len: usize,
    pool: Arc<BufferPool>,
}

impl fmt::Debug for Buffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Buffer({} bytes)", self.len())
    }
}

impl Buffer {
    /// The buffer's full capacity.
    pub fn len(&self) -> usize {
        if self.data.is_some() {
            self.len
        } else {
            0
        }
    }

    /// True if the buffer has no capacity (never, for a pool of non-empty buffers).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The buffer's bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self.data.as_deref() {
            Some(bytes) => &bytes[..self.len],
            None => &[],
        }
    }

    /// The buffer's bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let len = self.len;
        match self.data.as_deref_mut() {
            Some(bytes) => &mut bytes[..len],
            None => &mut [],
        }
    }

    /// Turns the first `len` bytes into a [`Bytes`] that returns the buffer to its pool when the
    /// last clone is dropped. A short fill (at most a sixteenth of the buffer: a small file, a
    /// file's last block) is copied out instead and the buffer returns at once: held until the
    /// peer acknowledges it, one 4 KiB file would take a whole buffer of the ring for a round
    /// trip, and a tree of small files would wait on acknowledgements, not on the disk or the
    /// link.
    pub fn freeze(self, len: usize) -> Bytes {
        let len = len.min(self.len());
        if len <= self.len() / 16 {
            return Bytes::copy_from_slice(&self.as_slice()[..len]);
        }
        Bytes::from_owner(Filled { buf: self, len })
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if let Some(data) = self.data.take() {
            self.pool.give_back(data);
        }
    }
}

struct Filled {
    buf: Buffer,
    len: usize,
}

impl AsRef<[u8]> for Filled {
    fn as_ref(&self) -> &[u8] {
        &self.buf.as_slice()[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_when_bytes_drop() {
        let pool = BufferPool::new(2, 16).unwrap();
        let mut a = pool.take_blocking();
        a.as_mut_slice()[..3].copy_from_slice(b"abc");
        let bytes = a.freeze(3);
        let clone = bytes.clone();
        let _b = pool.take_blocking();
        assert!(pool.try_take().is_none());
        assert_eq!(&clone[..], b"abc");
        drop(bytes);
        assert!(pool.try_take().is_none());
        drop(clone);
        assert!(pool.try_take().is_some());
    }

    #[test]
    fn a_short_fill_is_copied_and_its_buffer_returns_at_once() {
        let pool = BufferPool::new(1, 4096).unwrap();
        let mut a = pool.take_blocking();
        a.as_mut_slice()[..5].copy_from_slice(b"small");
        let bytes = a.freeze(5);
        assert_eq!(&bytes[..], b"small");
        assert!(pool.try_take().is_some(), "the buffer waits for nothing");
    }

    #[test]
    fn buffers_are_page_aligned() {
        let pool = BufferPool::new(3, 5000).unwrap();
        let mut b = pool.take_blocking();
        assert_eq!(b.len(), 5000);
        assert_eq!(b.as_mut_slice().as_ptr() as usize % ALIGN, 0);
    }

    #[test]
    fn a_raised_limit_maps_more_buffers_up_to_the_ceiling() {
        let pool = BufferPool::growable(2, 3, 4096).unwrap();
        let held: Vec<Buffer> = (0..2).map(|_| pool.take_blocking()).collect();
        assert!(
            pool.try_take().is_none(),
            "two buffers until the limit is raised"
        );
        assert_eq!(pool.raise_limit(10), 3, "the ceiling bounds the limit");
        let third = pool.try_take().expect("a third buffer after the raise");
        assert!(pool.try_take().is_none(), "never more than the ceiling");
        assert_eq!(pool.raise_limit(1), 3, "a limit never falls");
        drop(held);
        drop(third);
        assert_eq!(pool.available(), 3);
    }

    #[test]
    fn a_waiting_taker_wakes_when_the_limit_rises() {
        let pool = BufferPool::growable(1, 2, 8).unwrap();
        let _held = pool.take_blocking();
        let p2 = pool.clone();
        let t = std::thread::spawn(move || p2.take_blocking().len());
        std::thread::sleep(Duration::from_millis(20));
        pool.raise_limit(2);
        assert_eq!(t.join().unwrap(), 8);
    }

    #[test]
    fn blocked_taker_wakes_on_return() {
        let pool = BufferPool::new(1, 8).unwrap();
        let held = pool.take_blocking();
        let p2 = pool.clone();
        let t = std::thread::spawn(move || p2.take_blocking().len());
        std::thread::sleep(Duration::from_millis(20));
        drop(held);
        assert_eq!(t.join().unwrap(), 8);
    }
}
