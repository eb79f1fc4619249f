//! The ticket a receiver prints and a sender is given: where to connect, which certificate to
//! trust, and the one-time secret that proves the sender was handed the ticket.
//!
//! Text form: `sluice1-<fingerprint: 64 hex>-<secret: 64 hex>@<address>`, one token with no
//! spaces, e.g. `sluice1-9f…-3a…@127.0.0.1:40123` or `…@[::1]:40123`. The fingerprint is the
//! BLAKE3 hash of the receiver's DER certificate (see `sluice_quic::tls`).

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

const PREFIX: &str = "sluice1-";

/// A parsed ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// The receiver's UDP address.
    pub addr: SocketAddr,
    /// BLAKE3 of the receiver's certificate (DER).
    pub fingerprint: [u8; 32],
    /// The one-time secret.
    pub secret: [u8; 32],
}

/// Why a ticket could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    /// The ticket did not have the `sluice1-FP-SECRET@ADDR` shape.
    #[error("not a sluice ticket (expected sluice1-<64 hex>-<64 hex>@<host:port>)")]
    Shape,
    /// The address part did not parse.
    #[error("ticket address {0:?} is not IP:PORT")]
    Address(String),
}

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}{}-{}@{}",
            hex(&self.fingerprint),
            hex(&self.secret),
            self.addr
        )
    }
}

impl FromStr for Ticket {
    type Err = TicketError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.trim().strip_prefix(PREFIX).ok_or(TicketError::Shape)?;
        let (keys, addr) = rest.split_once('@').ok_or(TicketError::Shape)?;
        let (fp, secret) = keys.split_once('-').ok_or(TicketError::Shape)?;
        Ok(Self {
            addr: addr
                .parse()
                .map_err(|_| TicketError::Address(addr.to_owned()))?,
            fingerprint: unhex(fp).ok_or(TicketError::Shape)?,
            secret: unhex(secret).ok_or(TicketError::Shape)?,
        })
    }
}

/// Lower-case hex of a 32-byte value.
pub fn hex(bytes: &[u8; 32]) -> String {
    blake3::Hash::from_bytes(*bytes).to_hex().to_string()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    blake3::Hash::from_hex(s).ok().map(|h| *h.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_v4_and_v6() {
        for addr in ["127.0.0.1:4433", "[::1]:9"] {
            let t = Ticket {
                addr: addr.parse().unwrap(),
                fingerprint: [0xab; 32],
                secret: [0x01; 32],
            };
            let text = t.to_string();
            assert!(!text.contains(' '));
            assert_eq!(text.parse::<Ticket>().unwrap(), t);
        }
    }

    #[test]
    fn malformed_tickets_are_refused() {
        assert_eq!("hello".parse::<Ticket>(), Err(TicketError::Shape));
        let good = Ticket {
            addr: "127.0.0.1:1".parse().unwrap(),
            fingerprint: [1; 32],
            secret: [2; 32],
        }
        .to_string();
        assert_eq!(
            good.replace("127.0.0.1:1", "nowhere").parse::<Ticket>(),
            Err(TicketError::Address("nowhere".into()))
        );
        assert!(good[..good.len() - 20].parse::<Ticket>().is_err());
    }
}
