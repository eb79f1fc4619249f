//! Memory-to-memory throughput over QUIC: the network path alone, without disks or hashing.
//!
//! Comparable to quinn's own `bulk` benchmark: one connection on loopback, `streams`
//! unidirectional streams, the same TLS and transport settings as a real transfer. The sender
//! writes one shared block again and again (a refcount, no copy); the receiver takes chunks
//! from quinn and drops them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_proto::tls::{self, Identity};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::net;

/// What a memory-to-memory run measured.
#[derive(Debug, Clone, Copy)]
pub struct MemResult {
    /// Payload bytes received.
    pub bytes: u64,
    /// From the first stream opened to the last byte received.
    pub elapsed: Duration,
}

/// Sends `bytes` bytes from memory to memory over loopback QUIC.
pub fn run(bytes: u64, config: &Config) -> Result<MemResult> {
    let identity = Identity::generate()?;
    let tuning = config.transport_to(Some(std::net::Ipv4Addr::LOCALHOST.into()));
    let server = tls::server_config(&identity, &tuning)?;
    let client = tls::client_config(identity.fingerprint(), &tuning)?;
    let rt = net::runtime()?;
    let endpoint = {
        let _g = rt.enter();
        net::endpoint(
            net::udp_socket("127.0.0.1:0".parse().expect("literal"), config)?,
            Some(server),
            None,
        )?
    };
    let addr = endpoint
        .local_addr()
        .map_err(Error::io("reading bound address"))?;
    let streams = config.streams.max(1) as u64;
    let block = Bytes::from(vec![0x5a; config.block_size as usize]);
    let sender = std::thread::Builder::new()
        .name("sluice-net-send".into())
        .spawn({
            let config = config.clone();
            move || send(addr, client, &config, bytes, streams, block)
        })
        .map_err(Error::io("starting sender thread"))?;
    let received = rt.block_on(async {
        let conn = endpoint
            .accept()
            .await
            .ok_or_else(|| crate::transport::conn_error(addr)(&"no connection"))?
            .await
            .map_err(|e| crate::transport::conn_error(addr)(&e))?;
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..streams {
            let mut s = conn
                .accept_uni()
                .await
                .map_err(|e| crate::transport::conn_error(addr)(&e))?;
            tasks.spawn(async move {
                let mut n = 0u64;
                while let Some(chunk) = s
                    .read_chunk(usize::MAX, false)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    n += chunk.bytes.len() as u64;
                }
                Ok::<u64, String>(n)
            });
        }
        let mut total = 0;
        while let Some(r) = tasks.join_next().await {
            total += r
                .map_err(|e| crate::transport::conn_error(addr)(&e))?
                .map_err(|e| crate::transport::conn_error(addr)(&e))?;
        }
        let elapsed = start.elapsed();
        conn.close(0u32.into(), b"");
        // Let the close reach the sender so it does not wait for its idle timeout.
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        Ok::<_, Error>(MemResult {
            bytes: total,
            elapsed,
        })
    })?;
    sender
        .join()
        .map_err(|_| Error::io("sender thread")(std::io::Error::other("panicked")))??;
    Ok(received)
}

fn send(
    addr: SocketAddr,
    client: quinn::ClientConfig,
    config: &Config,
    bytes: u64,
    streams: u64,
    block: Bytes,
) -> Result<()> {
    let rt = net::runtime()?;
    rt.block_on(async {
        let endpoint = net::endpoint(
            net::udp_socket(net::any_addr_for(addr), config)?,
            None,
            config.transport_to(Some(addr.ip())).datagram_size,
        )?;
        let err = crate::transport::conn_error(addr);
        let conn = endpoint
            .connect_with(client, addr, tls::SERVER_NAME)
            .map_err(|e| err(&e))?
            .await
            .map_err(|e| err(&e))?;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..streams {
            let share = bytes / streams + u64::from(i < bytes % streams);
            let mut s = conn.open_uni().await.map_err(|e| err(&e))?;
            let block = block.clone();
            tasks.spawn(async move {
                let mut left = share;
                while left > 0 {
                    let n = left.min(block.len() as u64) as usize;
                    s.write_chunk(block.slice(..n))
                        .await
                        .map_err(|e| e.to_string())?;
                    left -= n as u64;
                }
                s.finish().map_err(|e| e.to_string())?;
                s.stopped().await.map_err(|e| e.to_string())?;
                Ok::<(), String>(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.map_err(|e| err(&e))?.map_err(|e| err(&e))?;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
        Ok(())
    })
}
