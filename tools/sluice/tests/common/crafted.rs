//! A crafted sender: the engine's own transport, driven by hand, to say what no honest sender
//! says (a path twice, requests it never reads the answers to, half a block).

use std::sync::Arc;
use std::time::Duration;

use sluice_engine::transport::{self, ControlChannel, Link};
use sluice_engine::Config;
use sluice_proto::codec::{encode_message, FrameDecoder};
use sluice_proto::message::{Entry, EntryKind, Message};
use sluice_proto::session::SenderSession;
use sluice_proto::ticket::Ticket;

/// A file entry of `size` bytes.
pub fn file_entry(id: u32, path: &str, size: u64) -> Message {
    Message::Entry(Entry {
        id,
        kind: EntryKind::File,
        path: path.into(),
        mode: 0o644,
        mtime_sec: 0,
        mtime_nsec: 0,
        size,
        link_target: String::new(),
        version: [0; 16],
        owner: Default::default(),
    })
}

/// A connection to the receiver of `ticket` over this thread's transport, its control channel
/// open, its Hello (the right secret, 1 MiB blocks) sent.
pub struct Crafted {
    pub rt: tokio::runtime::Runtime,
    pub link: Arc<dyn Link>,
    pub control: ControlChannel,
    pub ticket: Ticket,
}

impl Crafted {
    pub fn connect(ticket: &str) -> Self {
        Self::connect_with_flags(ticket, 0)
    }

    /// [`Crafted::connect`] with these Hello flags (`HELLO_DELETE`, …).
    pub fn connect_with_flags(ticket: &str, flags: u8) -> Self {
        let ticket: Ticket = ticket.parse().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (link, control) = rt.block_on(async {
            let config = Config {
                transport: super::transport(),
                idle_timeout: Duration::from_secs(30),
                ..Config::default()
            };
            let link = transport::connect(&config, &ticket).await.unwrap();
            let control = link.open_control().await.unwrap();
            (link, control)
        });
        let mut c = Self {
            rt,
            link,
            control,
            ticket,
        };
        let hello = SenderSession::hello(c.ticket.secret, 1 << 20, flags);
        c.send(&[hello]);
        c
    }

    /// Writes `messages` on the control channel.
    pub fn send(&mut self, messages: &[Message]) {
        let mut wire = Vec::new();
        for m in messages {
            encode_message(m, &mut wire);
        }
        let send = &mut self.control.0;
        self.rt.block_on(send.write(&mut [wire.into()])).unwrap();
    }

    /// Reads the receiver's messages for at most `limit`, until it closes; returns the last.
    pub fn last_answer(&mut self, limit: Duration) -> Option<Message> {
        self.answers(limit).pop()
    }

    /// Reads the receiver's messages for at most `limit`, until it closes.
    pub fn answers(&mut self, limit: Duration) -> Vec<Message> {
        let recv = &mut self.control.1;
        self.rt.block_on(async {
            let mut dec = FrameDecoder::new();
            let mut all = Vec::new();
            let deadline = tokio::time::Instant::now() + limit;
            while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, recv.recv()).await {
                dec.push(&chunk);
                while let Ok(Some(m)) = dec.next_message() {
                    all.push(m);
                }
            }
            all
        })
    }

    /// Keeps the connection's tasks (keep-alives, pings) running for `d`.
    pub fn idle(&self, d: Duration) {
        self.rt.block_on(async move { tokio::time::sleep(d).await });
    }

    pub fn close(self) {
        self.rt.block_on(self.link.close(0, b""));
    }
}

impl Crafted {
    /// Opens a data lane and sends the header of block 0 of file `file` (`len` bytes), and
    /// nothing more.
    pub fn block_header(&mut self, file: u32, len: u32) {
        self.part_of_block(file, len, 0);
    }

    /// Opens a data lane and sends the header of block 0 of file 0 (`len` bytes) and only
    /// `part` bytes of its payload, then nothing more.
    pub fn half_block(&mut self, len: u32, part: usize) {
        self.part_of_block(0, len, part);
    }

    /// Opens a data lane and sends block 0 of file 0 (`len` bytes) as a spliced block whose
    /// payload is `payload`, then nothing more.
    pub fn spliced_block(&mut self, len: u32, payload: &[u8]) {
        use sluice_proto::message::BlockHeader;
        let link = self.link.clone();
        let payload = payload.to_vec();
        self.rt.block_on(async move {
            let mut lane = link.open_lane().await.unwrap().expect("a lane");
            let header = sluice_proto::codec::encode_block_header(&BlockHeader {
                file: 0,
                offset: 0,
                len,
                hash: [7; 32],
                patch: false,
                packed: payload.len() as u32,
                zero: false,
                moved: false,
                early: false,
                spliced: true,
            });
            let mut wire = header.to_vec();
            wire.extend(payload);
            lane.write(&mut [wire.into()]).await.unwrap();
            std::mem::forget(lane);
        });
    }

    /// The header of block 0 of file `file` (`len` bytes) and the first `part` bytes of its
    /// payload on a lane of its own, which stays open, the block unfinished, for as long as the
    /// link lives.
    fn part_of_block(&mut self, file: u32, len: u32, part: usize) {
        use sluice_proto::message::BlockHeader;
        let link = self.link.clone();
        self.rt.block_on(async move {
            let mut lane = link.open_lane().await.unwrap().expect("a lane");
            let header = sluice_proto::codec::encode_block_header(&BlockHeader {
                file,
                offset: 0,
                len,
                hash: [7; 32],
                patch: false,
                packed: 0,
                zero: false,
                moved: false,
                early: false,
                spliced: false,
            });
            let mut wire = header.to_vec();
            wire.extend(std::iter::repeat_n(0x5a, part));
            lane.write(&mut [wire.into()]).await.unwrap();
            std::mem::forget(lane);
        });
    }
}
