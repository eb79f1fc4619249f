//! A cap on quinn's BBR window near the measured bandwidth-delay product.
//!
//! Measured on wan-emu (200 Mbit/s, 100 ms RTT, 50 ms drop-tail queue): with quinn 0.11's BBR a
//! 64 MiB send put 132 MB on the wire at 0 % loss — about half its packets were lost at the
//! queue and sent again. quinn paces at 1.25 × the congestion window per smoothed RTT, and BBR's
//! window is twice the bandwidth-delay product, so it is paced at ~2.5 × the bottleneck rate.
//! [`CappedBbr`] keeps BBR (it ignores random loss, which is why we use it) and limits its
//! window to what the path delivers: `gain × delivery rate × min RTT`, with BBR's own startup
//! gain until the delivery rate stops growing, then 1.5. Measured (64 MiB, 200 Mbit/s, 100 ms
//! RTT): plain BBR 3.99 s / 141 MB on the wire at 0 % loss and 4.09 s / 155 MB at 1 %; capped at
//! 1.5, 4.57–5.92 s / 69–78 MB and 4.66 s / 75 MB (at 1.25 the window starved: 10.7–16.0 s at
//! 0 % loss; at 2.0, 4.26 s / 93 MB and 5.10 s / 88 MB). Offered as `--congestion bbr-capped`,
//! not the default: it halves the bytes but costs 15–45 % in time.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{BbrConfig, Controller, ControllerFactory};
use quinn_proto::RttEstimator;

/// Rounds (of one minimum RTT each) over which the highest delivery rate is kept.
const RATE_ROUNDS: usize = 10;
/// Window gain while the delivery rate still grows (BBR's startup gain).
const STARTUP_GAIN: f64 = 2.89;
/// Window gain once the pipe is full: half a bandwidth-delay product may queue (1.25 starved
/// the window on wan-emu, see the module notes).
const STEADY_GAIN: f64 = 1.5;
/// Rounds without 25 % growth of the delivery rate after which the pipe counts as full.
const FULL_AFTER: u32 = 3;

/// Delivery-rate bookkeeping behind the cap; pure arithmetic, so it is tested on its own.
#[derive(Debug, Clone, Default)]
pub struct WindowCap {
    round_start: Option<Instant>,
    round_bytes: u64,
    /// Bytes per second delivered in each of the last rounds.
    rates: VecDeque<f64>,
    best: f64,
    flat_rounds: u32,
    full: bool,
}

impl WindowCap {
    /// `bytes` were acknowledged at `now`; `min_rtt` is the path's minimum RTT so far.
    pub fn on_ack(&mut self, now: Instant, bytes: u64, min_rtt: Duration) {
        let start = *self.round_start.get_or_insert(now);
        self.round_bytes += bytes;
        let elapsed = now.saturating_duration_since(start);
        if elapsed < min_rtt.max(Duration::from_micros(100)) {
            return;
        }
        let rate = self.round_bytes as f64 / elapsed.as_secs_f64();
        self.rates.push_back(rate);
        if self.rates.len() > RATE_ROUNDS {
            self.rates.pop_front();
        }
        let max = self.max_rate();
        if max >= 1.25 * self.best {
            self.best = max;
            self.flat_rounds = 0;
        } else {
            self.flat_rounds += 1;
            if self.flat_rounds >= FULL_AFTER {
                self.full = true;
            }
        }
        self.round_start = Some(now);
        self.round_bytes = 0;
    }

    fn max_rate(&self) -> f64 {
        self.rates.iter().copied().fold(0.0, f64::max)
    }

    /// The most bytes in flight the path supports, or `None` before a first round is measured.
    pub fn cap(&self, min_rtt: Duration, floor: u64) -> Option<u64> {
        if self.rates.is_empty() || min_rtt.is_zero() {
            return None;
        }
        let gain = if self.full { STEADY_GAIN } else { STARTUP_GAIN };
        let bdp = self.max_rate() * min_rtt.as_secs_f64();
        Some(((gain * bdp) as u64).max(floor))
    }
}

/// quinn's BBR with its window capped by [`WindowCap`].
#[allow(missing_debug_implementations)] // quinn's controllers are not Debug
pub struct CappedBbr {
    inner: Box<dyn Controller>,
    cap: WindowCap,
    min_rtt: Duration,
    mtu: u64,
    /// The fewest packets the cap allows.
    floor_packets: u64,
}

impl Controller for CappedBbr {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
        self.min_rtt = rtt.min();
        self.cap.on_ack(now, bytes, self.min_rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.inner
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.mtu = new_mtu.into();
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        let window = self.inner.window();
        match self.cap.cap(self.min_rtt, self.floor_packets * self.mtu) {
            Some(cap) => window.min(cap),
            None => window,
        }
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Self {
            inner: self.inner.clone_box(),
            cap: self.cap.clone(),
            min_rtt: self.min_rtt,
            mtu: self.mtu,
            floor_packets: self.floor_packets,
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// Builds [`CappedBbr`] controllers from a [`BbrConfig`].
#[derive(Debug)]
pub struct CappedBbrConfig {
    /// quinn's BBR under the cap.
    pub bbr: Arc<BbrConfig>,
    /// The packets after which the peer acknowledges at once (`--ack-every`; 0: quinn's
    /// default of 2). The cap never goes below the sluice controller's floor for that count
    /// (`congestion::floor_packets`: 32 packets, or twice the count). The peer is
    /// asked to acknowledge every 16 packets, or after 25 ms: a floor of 16 (what the cap had)
    /// held every round for that timer where the round trip is far shorter, which on loopback
    /// meant ~10 MB/s (a 1 GiB copy did not finish in 60 s).
    pub ack_every: u32,
}

impl ControllerFactory for CappedBbrConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        let threshold = if self.ack_every == 0 {
            2
        } else {
            u64::from(self.ack_every)
        };
        Box::new(CappedBbr {
            inner: self.bbr.clone().build(now, current_mtu),
            cap: WindowCap::default(),
            min_rtt: Duration::ZERO,
            mtu: current_mtu.into(),
            floor_packets: crate::congestion::floor_packets(threshold),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Acks of `bytes` every millisecond for `ms` milliseconds, from `t`.
    fn feed(c: &mut WindowCap, t: &mut Instant, ms: u64, bytes: u64, rtt: Duration) {
        for _ in 0..ms {
            *t += Duration::from_millis(1);
            c.on_ack(*t, bytes, rtt);
        }
    }

    #[test]
    fn settles_at_half_above_the_bandwidth_delay_product() {
        let rtt = Duration::from_millis(100);
        let mut c = WindowCap::default();
        let mut t = Instant::now();
        assert_eq!(c.cap(rtt, 1), None, "nothing measured yet");
        // A steady 25 MB/s (200 Mbit/s): BDP 2.5 MB.
        feed(&mut c, &mut t, 150, 25_000, rtt);
        let startup = c.cap(rtt, 1).unwrap();
        assert!(startup > 2 * 2_500_000, "startup gain: {startup}");
        feed(&mut c, &mut t, 1_000, 25_000, rtt);
        let steady = c.cap(rtt, 1).unwrap();
        assert!(
            (3_600_000..3_900_000).contains(&steady),
            "steady cap {steady}"
        );
    }

    #[test]
    fn a_growing_rate_keeps_the_startup_gain_and_the_floor_holds() {
        let rtt = Duration::from_millis(50);
        let mut c = WindowCap::default();
        let mut t = Instant::now();
        let mut per_ms = 1_000;
        for _ in 0..6 {
            feed(&mut c, &mut t, 50, per_ms, rtt);
            per_ms *= 2;
        }
        // One more ack closes the last round.
        feed(&mut c, &mut t, 1, per_ms / 2, rtt);
        let bdp = (per_ms / 2) as f64 * 1_000.0 * 0.05;
        let cap = c.cap(rtt, 1).unwrap() as f64;
        assert!(
            cap > 2.5 * bdp,
            "still starting up: cap {cap}, bdp {bdp}, {c:?}"
        );
        assert_eq!(c.cap(rtt, u64::MAX), Some(u64::MAX));
    }
}
