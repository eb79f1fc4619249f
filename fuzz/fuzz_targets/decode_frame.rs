//! Feeds arbitrary bytes to the control-frame decoder, the block-header decoder, the unit-lane
//! frame decoders (`sluice db`), the spliced-block payload decoder and both sessions (the receiver's, and the sender's of a three-file manifest past its Welcome): none may
//! panic, and every decoded message must re-encode to the bytes it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_proto::codec::{decode_block_header, encode_message, FrameDecoder, BLOCK_HEADER_LEN};
use sluice_proto::message::Message;
use sluice_proto::session::{ReceiverSession, SenderSession};
use sluice_proto::unit;

fuzz_target!(|data: &[u8]| {
    if let Some(h) = data.first_chunk::<BLOCK_HEADER_LEN>() {
        let _ = decode_block_header(h);
    }
    // A spliced block's payload: whatever decodes covers the block exactly.
    if let Some((len, payload)) = data.split_first_chunk::<2>() {
        let block_len = u32::from(u16::from_le_bytes(*len));
        if let Ok((runs, at)) = sluice_proto::splice::decode(payload, block_len) {
            assert!(at <= payload.len());
            let mut out = vec![0u8; block_len as usize];
            let _ = sluice_proto::splice::assemble(&runs, &payload[at..], &mut out, |_, buf| {
                buf.fill(0);
                Ok::<(), ()>(())
            });
        }
    }
    if let Some(p) = data.first_chunk::<{ unit::OPEN_PREFIX }>() {
        if let Ok((_, len)) = unit::decode_open_prefix(p) {
            assert!(len <= sluice_proto::codec::MAX_STRING_LEN);
            let _ = unit::decode_meta(&data[unit::OPEN_PREFIX..][..len.min(data.len() - unit::OPEN_PREFIX)]);
        }
    }
    if let Some(p) = data.first_chunk::<{ unit::CLOSE_PREFIX }>() {
        if let Ok((_, len)) = unit::decode_close_prefix(p) {
            assert!(len <= unit::MAX_TRAILER);
        }
    }
    let mut dec = FrameDecoder::new();
    let mut session = ReceiverSession::new([0; 32]);
    let mut sender = SenderSession::new(vec![Some(0), Some(5 << 20), None], 1 << 20);
    let _ = sender.on_message(Message::Welcome {
        version: sluice_proto::PROTOCOL_VERSION,
    });
    for piece in data.chunks(7) {
        dec.push(piece);
        loop {
            match dec.next_message() {
                Ok(Some(msg)) => {
                    let mut again = Vec::new();
                    encode_message(&msg, &mut again);
                    let mut d2 = FrameDecoder::new();
                    d2.push(&again);
                    assert_eq!(d2.next_message().ok().flatten().as_ref(), Some(&msg));
                    let _ = sender.on_message(msg.clone());
                    let _ = session.on_message(msg);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
