//! Data lanes on the sending side: blocks from a reader go out on whichever lane is free, and
//! the lanes grow with the path. Shared by the file sender and `sluice bench`.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::config::GAP_SAFE_STREAM_WINDOW;
use crate::error::Result;
use crate::progress::Progress;
use crate::transport::{self, Kind, Link};

/// A block ready to go on the wire.
pub(crate) struct Block {
    pub(crate) header: Bytes,
    pub(crate) payload: Bytes,
    /// Payload bytes it carries (more than `payload.len()` when packed).
    pub(crate) carries: u64,
}

/// Blocks waiting in the queue from the reader to the data streams.
pub(crate) fn queued(q: &mpsc::Sender<Block>) -> usize {
    q.max_capacity() - q.capacity()
}

/// What the data streams share: blocks from the reader go out on whichever stream is free.
pub(crate) struct Lanes {
    pub(crate) link: Arc<dyn Link>,
    pub(crate) blocks: Arc<tokio::sync::Mutex<mpsc::Receiver<Block>>>,
    pub(crate) progress: Arc<Progress>,
    /// The receiver's per-stream flow-control window, as this side's configuration sets it.
    pub(crate) stream_window: u64,
    /// The queue of blocks waiting for a stream (without keeping it open).
    pub(crate) queue: mpsc::WeakSender<Block>,
}

impl Lanes {
    /// Streams that keep the path full: each stream holds at most its window of unread bytes,
    /// and a stream with a lost packet waits two round trips or more for the repair (more when
    /// losses come in bursts), so six windows' worth of streams per congestion window in flight.
    /// With three, 1 % loss in bursts of 10 on wan-emu (200 Mbit/s, 100 ms) left the sender
    /// blocked by flow control and its measured rate sank round after round (31 % of the link).
    ///
    /// Also, off loopback, four more than `open` while blocks wait for a stream (a quarter of
    /// the queue or more): every stream is then held by flow control, waiting for a lost
    /// packet's repair, and a window sized from the congestion window is too few. Under loss in
    /// bursts (wan-emu, 1 %, bursts of 10 frames, 100 ms) the sender otherwise kept its first 8
    /// streams with 56 blocks queued, and its measured rate sank with what they could carry.
    /// With the trigger at half the queue, 1 GiB at 100 ms and 1 % random loss gave 60.3, 78.0
    /// and 89.4 % of the link (36 streams, 28 blocks waiting, no block finished for 5 s); at a
    /// quarter, 83.7, 86.4 and 90.3 %, with no stall.
    ///
    /// Over TCP the first lanes stay: each is a TCP connection with its own congestion window,
    /// and more of them would only take more than a fair share of the bottleneck.
    pub(crate) fn wanted(&self, open: usize) -> usize {
        if self.link.kind() == Kind::Tcp {
            return open;
        }
        let cwnd = self.link.path().cwnd;
        let by_window = (cwnd.saturating_mul(6) / self.stream_window.max(1) + 1) as usize;
        let waiting = self
            .queue
            .upgrade()
            .is_some_and(|q| 4 * queued(&q) >= q.max_capacity());
        if waiting && self.stream_window <= GAP_SAFE_STREAM_WINDOW {
            by_window.max(open + 4)
        } else {
            by_window
        }
    }

    /// Opens lanes up to what the path wants now ([`Lanes::wanted`]), kept within
    /// `first..=max`; `open` counts the lanes opened so far.
    pub(crate) fn grow(
        &self,
        open: &mut usize,
        first: usize,
        max: usize,
        set: &mut tokio::task::JoinSet<Result<()>>,
    ) {
        if *open >= max {
            return;
        }
        let want = if *open < first {
            first
        } else {
            self.wanted(*open).clamp(first, max)
        };
        while *open < want {
            self.spawn(set);
            *open += 1;
        }
    }

    /// One more data stream taking blocks until the reader is done.
    pub(crate) fn spawn(&self, set: &mut tokio::task::JoinSet<Result<()>>) {
        let link = self.link.clone();
        let rx = self.blocks.clone();
        let progress = self.progress.clone();
        let conn_err = transport::conn_error(self.link.peer());
        set.spawn(async move {
            let Some(mut stream) = link.open_lane().await? else {
                tracing::debug!("the receiver allows no more lanes");
                return Ok(());
            };
            loop {
                let next = rx.lock().await.recv().await;
                let Some(block) = next else { break };
                let n = block.carries;
                let mut chunks = [block.header, block.payload];
                stream.write(&mut chunks).await.map_err(|e| conn_err(&e))?;
                progress.add_sent(n);
            }
            stream.finish().await;
            Ok(())
        });
    }
}
