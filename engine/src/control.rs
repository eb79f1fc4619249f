//! The control channel as an async message channel: [`sluice_proto::codec`] framing over the
//! link's control channel (a QUIC stream, or the control connection of the TCP transport).
//!
//! Writes never block the task that reads. Outgoing frames go to a writer task that owns the
//! send half; the owner of [`Control`] keeps reading. Without this, two peers that each write
//! more than the other's flow-control window before reading (a manifest of a million entries one
//! way, the receiver's Have messages for them the other way) would wait for each other forever.
//! The queue is bounded by what the protocol produces per manifest entry and per block asked
//! about (one `Pieces` per block at most), not by payload sizes; a peer that stops reading its
//! side can still make it grow that far.
//! A receiver bounds it: past [`BACKLOG_LIMIT`] bytes not yet written it stops reading the
//! sender's requests ([`Control::over_backlog`]) until the peer has read enough, so a sender that
//! asks and never reads cannot make it grow further.
//! [`Control::sync`] waits until everything queued so far has been handed to the transport, for the
//! moments that matter (before closing the connection).

use bytes::Bytes;
use sluice_proto::codec::{encode_message, FrameDecoder};
use sluice_proto::message::Message;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Notify};

use crate::error::{Error, Result};
use crate::transport::{ControlChannel, ControlRx};

/// Bytes queued for the peer but not yet taken by the transport past which the receiver stops
/// reading requests, by default (`--max-control-queue`): far above what an honest exchange holds (a `Have` answer is ~2 KiB), and a
/// bound on what a sender that never reads can make the receiver hold.
pub const BACKLOG_LIMIT: usize = 8 << 20;

enum Cmd {
    Data(Vec<u8>),
    Sync(oneshot::Sender<()>),
    Finish,
}

/// Both halves of the control stream.
#[derive(Debug)]
pub struct Control {
    writer: mpsc::UnboundedSender<Cmd>,
    recv: Box<dyn ControlRx>,
    dec: FrameDecoder,
    out: Vec<u8>,
    peer: String,
    /// Bytes handed to the writer task and not yet written.
    backlog: Arc<AtomicUsize>,
    /// Signalled when the backlog falls below the limit.
    drained: Arc<Notify>,
    /// The backlog limit ([`BACKLOG_LIMIT`] unless [`Control::limit_backlog`] set another).
    limit: Arc<AtomicUsize>,
    /// A message read and given back ([`Control::unread`]), returned by the next `recv`.
    unread: Option<Message>,
    /// Turns [`Control::flush_unless`] let pass without writing.
    held_turns: u32,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cmd::Data(_) => "Data",
            Cmd::Sync(_) => "Sync",
            Cmd::Finish => "Finish",
        })
    }
}

impl Control {
    /// Wraps the stream halves; must be called inside the tokio runtime (it spawns the writer).
    pub(crate) fn new((mut send, recv): ControlChannel, peer: String) -> Self {
        let (writer, mut cmds) = mpsc::unbounded_channel::<Cmd>();
        let backlog = Arc::new(AtomicUsize::new(0));
        let drained = Arc::new(Notify::new());
        let limit = Arc::new(AtomicUsize::new(BACKLOG_LIMIT));
        let (left, signal, most) = (backlog.clone(), drained.clone(), limit.clone());
        tokio::spawn(async move {
            while let Some(cmd) = cmds.recv().await {
                match cmd {
                    Cmd::Data(bytes) => {
                        let len = bytes.len();
                        if send.write(&mut [Bytes::from(bytes)]).await.is_err() {
                            // The connection is gone; the reader side reports why.
                            return;
                        }
                        if left.fetch_sub(len, Ordering::Relaxed) - len
                            < most.load(Ordering::Relaxed)
                        {
                            signal.notify_one();
                        }
                    }
                    Cmd::Sync(done) => {
                        let _ = done.send(());
                    }
                    Cmd::Finish => send.finish().await,
                }
            }
        });
        Self {
            writer,
            recv,
            dec: FrameDecoder::new(),
            out: Vec::new(),
            peer,
            backlog,
            drained,
            limit,
            unread: None,
            held_turns: 0,
        }
    }

    /// Gives back a message `recv` returned: the next `recv` returns it again.
    pub fn unread(&mut self, msg: Message) {
        self.unread = Some(msg);
    }

    /// Whether more than the limit's bytes wait for the peer to read them.
    pub fn over_backlog(&self) -> bool {
        self.backlog.load(Ordering::Relaxed) >= self.limit.load(Ordering::Relaxed)
    }

    /// Sets the backlog limit ([`Control::over_backlog`]).
    pub fn limit_backlog(&self, bytes: usize) {
        self.limit.store(bytes.max(1), Ordering::Relaxed);
    }

    /// Resolves once the backlog has fallen below [`BACKLOG_LIMIT`] (perhaps at once).
    pub fn drained(&self) -> impl std::future::Future<Output = ()> + 'static {
        let drained = self.drained.clone();
        async move { drained.notified().await }
    }

    fn conn_err(&self, e: impl std::fmt::Display) -> Error {
        Error::Connection {
            peer: self.peer.clone(),
            detail: e.to_string(),
        }
    }

    /// Queues a message without sending; [`Control::flush`] sends everything queued.
    pub fn queue(&mut self, msg: &Message) {
        encode_message(msg, &mut self.out);
    }

    /// Whether [`Control::recv`] has a message (or a decoding error) in hand, without reading.
    pub fn ready(&self) -> bool {
        self.unread.is_some() || self.dec.has_frame()
    }

    /// Hands what was queued to the writer task, unless `busy`: more work is already waiting in
    /// this turn (so its answers can share the write and the packet), and neither what is
    /// queued nor the turns held back reached [`Control::COALESCE`]. Answers wait for no timer:
    /// a caller passes `busy` only when it will come back here without sleeping.
    pub async fn flush_unless(&mut self, busy: bool) -> Result<()> {
        if busy && self.out.len() < Self::COALESCE.0 && self.held_turns < Self::COALESCE.1 {
            self.held_turns += 1;
            return Ok(());
        }
        self.held_turns = 0;
        self.flush().await
    }

    /// Queued bytes and turns past which [`Control::flush_unless`] writes even while busy.
    const COALESCE: (usize, u32) = (16 << 10, 64);

    /// Hands everything queued to the writer task; does not wait for it to be written.
    pub async fn flush(&mut self) -> Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let bytes = std::mem::take(&mut self.out);
        self.backlog.fetch_add(bytes.len(), Ordering::Relaxed);
        self.writer
            .send(Cmd::Data(bytes))
            .map_err(|_| self.conn_err("control stream closed"))?;
        // Let the writer task run now: measured on tokio's current-thread runtime, without this
        // the woken writer could wait for the runtime's next timer (25-45 ms per exchange, ~70 ms
        // of every transfer's start).
        tokio::task::yield_now().await;
        Ok(())
    }

    /// Sends one message (see [`Control::flush`]).
    pub async fn send(&mut self, msg: &Message) -> Result<()> {
        self.queue(msg);
        self.flush().await
    }

    /// Waits until everything sent so far has been handed to the transport.
    pub async fn sync(&mut self) -> Result<()> {
        self.flush().await?;
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(Cmd::Sync(tx))
            .map_err(|_| self.conn_err("control stream closed"))?;
        rx.await.map_err(|_| self.conn_err("control stream closed"))
    }

    /// Receives the next message; `None` when the peer finished the stream cleanly.
    /// Cancel-safe: no bytes are lost if the future is dropped.
    pub async fn recv(&mut self) -> Result<Option<Message>> {
        if let Some(m) = self.unread.take() {
            return Ok(Some(m));
        }
        loop {
            if let Some(m) = self.dec.next_message()? {
                return Ok(Some(m));
            }
            match self.recv.recv().await {
                Ok(Some(chunk)) => self.dec.push(&chunk),
                Ok(None) if self.dec.pending() == 0 => return Ok(None),
                Ok(None) => return Err(self.conn_err("control stream ended inside a message")),
                Err(e) => return Err(self.conn_err(e)),
            }
        }
    }

    /// Finishes our half of the stream once everything queued is written.
    pub fn finish(&mut self) {
        let bytes = std::mem::take(&mut self.out);
        if !bytes.is_empty() {
            self.backlog.fetch_add(bytes.len(), Ordering::Relaxed);
            let _ = self.writer.send(Cmd::Data(bytes));
        }
        let _ = self.writer.send(Cmd::Finish);
    }
}
