//! The control stream as an async message channel: [`sluice_proto::codec`] framing over a quinn
//! bidirectional stream.

use sluice_proto::codec::{encode_message, FrameDecoder};
use sluice_proto::message::Message;

use crate::error::{Error, Result};

/// Both halves of the control stream.
#[derive(Debug)]
pub struct Control {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    dec: FrameDecoder,
    out: Vec<u8>,
    peer: String,
}

impl Control {
    pub(crate) fn new(send: quinn::SendStream, recv: quinn::RecvStream, peer: String) -> Self {
        Self {
            send,
            recv,
            dec: FrameDecoder::new(),
            out: Vec::new(),
            peer,
        }
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

    /// Sends everything queued.
    pub async fn flush(&mut self) -> Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let r = self.send.write_all(&self.out).await;
        self.out.clear();
        r.map_err(|e| self.conn_err(e))
    }

    /// Sends one message.
    pub async fn send(&mut self, msg: &Message) -> Result<()> {
        self.queue(msg);
        self.flush().await
    }

    /// Receives the next message; `None` when the peer finished the stream cleanly.
    /// Cancel-safe: no bytes are lost if the future is dropped.
    pub async fn recv(&mut self) -> Result<Option<Message>> {
        loop {
            if let Some(m) = self.dec.next_message()? {
                return Ok(Some(m));
            }
            match self.recv.read_chunk(64 * 1024, true).await {
                Ok(Some(chunk)) => self.dec.push(&chunk.bytes),
                Ok(None) if self.dec.pending() == 0 => return Ok(None),
                Ok(None) => return Err(self.conn_err("control stream ended inside a message")),
                Err(e) => return Err(self.conn_err(e)),
            }
        }
    }

    /// Finishes our half of the stream.
    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }
}
