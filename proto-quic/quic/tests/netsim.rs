//! Congestion control over the simulated bottleneck ([`sluice_quic::netsim`]): real quinn
//! connections, virtual time. Each test prints its wall time, which is what it costs CI.

use std::time::{Duration, Instant};

use sluice_quic::netsim::{self, Flow, Link, Report, Scenario, Stop};
use sluice_quic::tls::{Congestion, TransportTuning, PACKET_THRESHOLD};

const MS: Duration = Duration::from_millis(1);
const MIB: u64 = 1 << 20;

/// `congestion` with the engine's ACK and stream-count settings ([`TransportTuning::default`])
/// and one `window` for the stream, the connection and the send buffer alike: the quinn BBR
/// and cubic baselines the Sluice tests are measured against.
fn tuning(congestion: Congestion, window: u64) -> TransportTuning {
    TransportTuning {
        stream_window: window,
        connection_window: window,
        send_window: window,
        congestion,
        ..TransportTuning::default()
    }
}

/// The engine's non-loopback setting: Sluice's controller, gap-safe 768 KiB stream windows,
/// 64 MiB connection and send windows. The engine opens up to 64 streams as the
/// bandwidth-delay product grows, so the receiver allows 64 (the flows open 32).
fn sluice_tuning() -> TransportTuning {
    TransportTuning {
        max_uni_streams: 64,
        ..TransportTuning::default()
    }
}

/// A Sluice flow of `bytes` over 32 streams from `start`: a 768 KiB stream window moves at
/// most 63 Mbit/s at 100 ms RTT, so one stream alone could not fill a 200 Mbit/s link.
fn sluice_flow(bytes: u64, start: Duration) -> Flow {
    Flow {
        tuning: sluice_tuning(),
        bytes,
        streams: 32,
        start,
    }
}

/// A symmetric path: `rate_bps` and `one_way` delay each way, wan-emu's 50 ms queue.
fn path(rate_bps: u64, one_way: Duration, loss: f64) -> (Link, Link) {
    let link = Link {
        loss,
        ..Link::new(rate_bps, one_way)
    };
    (link.clone(), link)
}

fn scenario(forward: Link, back: Link, flows: Vec<Flow>, limit: Duration) -> Scenario {
    Scenario {
        forward,
        back,
        flows,
        seed: 1,
        limit,
        mtu: 1452,
        timer_granularity: Duration::ZERO,
    }
}

/// `scenario` with quinn's timers on a 1 ms wheel, as the engine's tokio runtime fires them:
/// the Sluice tests measure the sender the engine runs, bursts included.
fn sluice_scenario(forward: Link, back: Link, flows: Vec<Flow>, limit: Duration) -> Scenario {
    Scenario {
        timer_granularity: MS,
        ..scenario(forward, back, flows, limit)
    }
}

/// One Sluice flow of `bytes` over `forward` / `back` (30 s at most), run under `name`; the
/// flow must end without an error.
fn one_sluice_flow(name: &str, forward: Link, back: Link, bytes: u64) -> Report {
    let s = sluice_scenario(
        forward,
        back,
        vec![sluice_flow(bytes, Duration::ZERO)],
        Duration::from_secs(30),
    );
    let report = run(name, &s);
    assert_eq!(report.flows[0].error, None, "{name}");
    report
}

/// Each flow's goodput over `[from, to)` as a share of `rate_bps`.
fn shares(report: &Report, rate_bps: u64, from: Duration, to: Duration) -> Vec<f64> {
    report
        .flows
        .iter()
        .map(|f| f.goodput_bps(from, to) / rate_bps as f64)
        .collect()
}

/// Prints each flow's share of the link per `step`, so a failing fairness test shows how the
/// shares moved, not only where they ended.
fn print_shares(report: &Report, rate_bps: u64, step: Duration) {
    let mut t = Duration::ZERO;
    while t < report.end {
        let s = shares(report, rate_bps, t, t + step);
        eprintln!("    {:>5.0} s: {s:.2?}", t.as_secs_f64());
        t += step;
    }
}

/// Runs `s`, printing the wall time under `name` and a summary of each flow.
fn run(name: &str, s: &Scenario) -> Report {
    let t = Instant::now();
    let report = netsim::run(s).expect("scenario runs");
    eprintln!(
        "{name}: {:.2} s wall, {:.2} s virtual, {} steps, stop {:?}; forward: {} datagrams, \
         {} queue drops, {} random losses, queue delay max {:?} mean {:?}",
        t.elapsed().as_secs_f64(),
        report.end.as_secs_f64(),
        report.steps,
        report.stop,
        report.forward.datagrams,
        report.forward.queue_drops,
        report.forward.loss_drops,
        report.forward.max_queue_delay,
        report.forward.mean_queue_delay,
    );
    for (i, f) in report.flows.iter().enumerate() {
        eprintln!(
            "  flow {i}: {} B delivered, finished {:?}, error {:?}, {} B sent, {} packets \
             ({} lost, {} congestion events), RTT min {:?} max {:?}",
            f.delivered,
            f.finished,
            f.error,
            f.udp_tx_bytes,
            f.sent_packets,
            f.lost_packets,
            f.congestion_events,
            f.min_rtt,
            f.max_rtt,
        );
    }
    report
}

/// The path on which quinn's BBR with 32 MiB windows failed on wan-emu: 200 Mbit/s, 100 ms
/// RTT, a 50 ms drop-tail queue, `loss` each way, 256 MiB over 8 streams, at most 30 s.
fn regression_scenario(tuning: TransportTuning, loss: f64) -> Scenario {
    let (forward, back) = path(200_000_000, 50 * MS, loss);
    scenario(
        forward,
        back,
        vec![Flow {
            tuning,
            bytes: 256 * MIB,
            streams: 8,
            start: Duration::ZERO,
        }],
        Duration::from_secs(30),
    )
}

#[test]
fn same_seed_same_report() {
    let (forward, back) = path(50_000_000, 10 * MS, 0.01);
    let flow = |start| Flow {
        tuning: tuning(Congestion::Bbr, 8 * MIB),
        bytes: 4 * MIB,
        streams: 4,
        start,
    };
    let mut s = scenario(
        forward,
        back,
        vec![flow(Duration::ZERO), flow(200 * MS)],
        Duration::from_secs(10),
    );
    let first = run("same_seed_same_report (1)", &s);
    let second = run("same_seed_same_report (2)", &s);
    assert_eq!(first.stop, Stop::AllDone);
    assert!(first.forward.loss_drops > 0, "the seed must matter");
    assert_eq!(first, second);
    s.seed = 2;
    let other = run("same_seed_same_report (seed 2)", &s);
    assert_ne!(
        first.forward, other.forward,
        "another seed loses other packets"
    );
}

#[test]
fn lossless_link_runs_near_line_rate() {
    let rate = 50_000_000;
    let (forward, back) = path(rate, 10 * MS, 0.0);
    let bytes = 16 * MIB;
    let s = scenario(
        forward,
        back,
        vec![Flow {
            tuning: tuning(Congestion::Cubic, 8 * MIB),
            bytes,
            streams: 4,
            start: Duration::ZERO,
        }],
        Duration::from_secs(20),
    );
    let report = run("lossless_link_runs_near_line_rate", &s);
    let flow = &report.flows[0];
    assert_eq!(flow.error, None);
    assert_eq!(flow.delivered, bytes);
    let secs = flow.duration().expect("finished").as_secs_f64();
    let goodput = bytes as f64 * 8.0 / secs;
    assert!(
        goodput >= 0.8 * rate as f64,
        "{:.1} Mbit/s is under 80 % of the link",
        goodput / 1e6
    );
    // The RTT is the two delays plus a full data packet's and an ACK's serialization.
    assert!(
        flow.min_rtt >= 20 * MS && flow.min_rtt <= 21 * MS,
        "min RTT {:?}",
        flow.min_rtt
    );
    assert_eq!(report.forward.loss_drops, 0);
}

/// quinn's BBR with 32 MiB windows over `regression_scenario`: the receiver's reassembler
/// gives up ("too many gaps in stream buffer") when one stream holds more than 1,024 separate
/// pieces. On wan-emu it died at 1 % loss after ~6 s. Here, where timing is free of noise, the
/// largest count (measured with an instrumented copy of quinn-proto) stays at 709–779 pieces
/// at 0 % loss and 873–941 at 1 % (seeds 1–7), and the 256 MiB arrive in 12–13 s; at 2 % one
/// seed in seven dies; at 3 % BBR's start-up overshoot passes the limit within 2.5 s for every
/// seed tried, so that is the loss this test uses. One stream carries nearly all the data (the
/// writer fills streams in the order quinn reports them writable, and the first one takes
/// whatever window the connection frees), so the eight streams gap like one. With quinn's
/// packet threshold of 3, as when it failed: with `PACKET_THRESHOLD` (256) the same flow
/// finished in 12.9 s.
#[test]
fn bbr_with_32_mib_windows_dies_of_too_many_gaps() {
    let mut tuning = tuning(Congestion::Bbr, 32 * MIB);
    tuning.packet_threshold = 3;
    let s = regression_scenario(tuning, 0.03);
    let report = run("bbr_with_32_mib_windows_dies_of_too_many_gaps", &s);
    let flow = &report.flows[0];
    let error = flow.error.as_deref().unwrap_or("");
    assert!(
        error.contains("too many gaps"),
        "expected quinn's reassembler to give up; got {:?} after {} B delivered",
        flow.error,
        flow.delivered
    );
}

/// The simulator against wan-emu's measurements of plain BBR (`proto-quic/quic/src/cap.rs`): a
/// 64 MiB send at 200 Mbit/s, 100 ms RTT, 50 ms queue, 1 % loss took 4.09 s and put 155 MB on
/// the wire there, as BBR paces well above the bottleneck and loses about half its packets at
/// the queue. Here it must also finish, and send at least 1.5 times what it delivers.
#[test]
fn bbr_overruns_a_short_queue_as_on_wan_emu() {
    let mut s = regression_scenario(tuning(Congestion::Bbr, 32 * MIB), 0.01);
    s.flows[0].bytes = 64 * MIB;
    let report = run("bbr_overruns_a_short_queue_as_on_wan_emu", &s);
    let flow = &report.flows[0];
    assert_eq!(flow.error, None);
    let secs = flow.duration().expect("finished").as_secs_f64();
    assert!((3.0..6.0).contains(&secs), "{secs:.2} s");
    let wire = flow.udp_tx_bytes as f64 / flow.delivered as f64;
    assert!(
        wire >= 1.5,
        "only {wire:.2} bytes on the wire per byte delivered"
    );
    assert!(report.forward.queue_drops > report.forward.datagrams / 4);
}

/// Two cubic flows with the same RTT share the bottleneck: 18 s after the second one starts,
/// neither gets less than a third of the link, and together they fill it. With quinn's
/// default acknowledgements (every second packet). With the engine's ACK-frequency setting
/// (every 16 packets, 25 ms) the late flow was still held to ~21 % (against 74 %) after 38 s:
/// its sparser ACKs slow its window growth.
#[test]
fn two_cubic_flows_share_the_link() {
    let rate = 50_000_000;
    let (forward, back) = path(rate, 10 * MS, 0.0);
    let flow = |start| Flow {
        tuning: TransportTuning {
            ack_eliciting_threshold: 0,
            ..tuning(Congestion::Cubic, 8 * MIB)
        },
        bytes: 1 << 30,
        streams: 4,
        start,
    };
    let end = Duration::from_secs(40);
    let s = scenario(
        forward,
        back,
        vec![flow(Duration::ZERO), flow(Duration::from_secs(2))],
        end,
    );
    let report = run("two_cubic_flows_share_the_link", &s);
    let from = Duration::from_secs(20);
    let shares: Vec<f64> = report
        .flows
        .iter()
        .map(|f| f.goodput_bps(from, end) / rate as f64)
        .collect();
    eprintln!("  shares of the link from {from:?} to {end:?}: {shares:.2?}");
    assert!(report.flows.iter().all(|f| f.error.is_none()));
    assert!(shares.iter().all(|&s| s > 1.0 / 3.0), "shares {shares:.2?}");
    assert!(shares.iter().sum::<f64>() > 0.9, "shares {shares:.2?}");
}

/// Goodput ceiling as a share of the link's rate: a full 1,452-byte datagram carries about
/// 1,419 bytes of stream data (QUIC short header, STREAM frame header, AEAD tag) and occupies
/// 1,452 + 42 bytes of the bottleneck (`netsim::FRAME_OVERHEAD`); 1,419 / 1,494 ≈ 0.95.
/// Measured: a lossless Sluice flow runs at 0.947–0.949 of the link once started.
const PAYLOAD_SHARE: f64 = 0.949;

/// Where quinn's BBR with 32 MiB windows dies (`bbr_with_32_mib_windows_dies_of_too_many_gaps`,
/// the "before"), the engine's default tuning moves the 256 MiB: the 768 KiB stream windows
/// cap every stream's reassembly buffer far below quinn's 1,024-piece limit, and Sluice's
/// controller does not overrun the 50 ms queue, so it re-sends little more than random loss
/// takes. Measured (bytes on the wire ÷ payload, finish time): 1.024 and 12.15 s at 0 %,
/// 1.056 and 15.26 s at 3 %. The 2.4 % at 0 % is QUIC's packet and frame headers, so at 3 %
/// the sender re-sends exactly what was lost (1.024 / 0.97 = 1.056).
#[test]
fn sluice_finishes_where_bbr_died() {
    // Finish-time bounds ~10 % above the measured 12.15 s and 15.26 s.
    for (loss, max_secs) in [(0.0, 13.3), (0.03, 16.8)] {
        let mut s = regression_scenario(sluice_tuning(), loss);
        s.flows[0].streams = 32;
        s.timer_granularity = MS;
        let report = run(&format!("sluice_finishes_where_bbr_died ({loss})"), &s);
        let flow = &report.flows[0];
        assert_eq!(flow.error, None, "at {loss} loss");
        assert_eq!(flow.delivered, s.flows[0].bytes, "at {loss} loss");
        let secs = flow.duration().expect("finished").as_secs_f64();
        assert!(secs <= max_secs, "{secs:.2} s at {loss} loss");
        let wire = flow.udp_tx_bytes as f64 / flow.delivered as f64;
        let bound = 1.0 / (1.0 - loss) + 0.04;
        assert!(
            wire < bound,
            "{wire:.3} bytes on the wire per byte delivered at {loss} loss (bound {bound:.3})"
        );
    }
}

/// No path kills a Sluice flow: 20 and 200 Mbit/s × 10, 100 and 300 ms RTT × no loss, 5 %,
/// 10 % and 2 % in bursts of 10 × a 10 ms and a 50 ms queue, 48 flows, each its own run. The
/// transfers are short (8 MiB at 20 Mbit/s, 32 MiB at 200) but long enough to leave start-up
/// at every RTT, which is where windows are largest and quinn's reassembler was overrun. The
/// 48 runs cost 4–9 s of wall time; each finishes within 12 s of virtual time (the slowest: 20
/// Mbit/s, 100 ms RTT, 10 ms queue, 5 % loss, 11.4 s). Only survival is asserted: goodput on
/// some of these paths is still poor (0.26 of the link at 200 Mbit/s, 10 ms RTT, 5 % loss).
#[test]
fn never_dies_on_any_path() {
    let t = Instant::now();
    let mut failures = Vec::new();
    let mut runs = 0;
    for rate in [20_000_000u64, 200_000_000] {
        let bytes = if rate < 100_000_000 {
            8 * MIB
        } else {
            32 * MIB
        };
        for one_way in [5u32, 50, 150] {
            for (loss, loss_burst) in [(0.0, None), (0.05, None), (0.10, None), (0.02, Some(10.0))]
            {
                for queue_ms in [10u32, 50] {
                    let link = Link {
                        loss,
                        loss_burst,
                        queue: queue_ms * MS,
                        ..Link::new(rate, one_way * MS)
                    };
                    let s = sluice_scenario(
                        link.clone(),
                        link,
                        vec![sluice_flow(bytes, Duration::ZERO)],
                        Duration::from_secs(60),
                    );
                    let report = netsim::run(&s).expect("scenario runs");
                    runs += 1;
                    let f = &report.flows[0];
                    let case = format!(
                        "{} Mbit/s, {} ms RTT, loss {loss} (burst {loss_burst:?}), {queue_ms} ms \
                         queue",
                        rate / 1_000_000,
                        2 * one_way
                    );
                    eprintln!(
                        "  {case}: finished {:?}, error {:?}, {:.3} wire ÷ payload, {} queue \
                         drops",
                        f.duration(),
                        f.error,
                        f.udp_tx_bytes as f64 / f.delivered.max(1) as f64,
                        report.forward.queue_drops
                    );
                    if f.error.is_some() || f.delivered != bytes {
                        failures.push(format!(
                            "{case}: {} of {bytes} B, error {:?}, stop {:?}",
                            f.delivered, f.error, report.stop
                        ));
                    }
                }
            }
        }
    }
    eprintln!(
        "never_dies_on_any_path: {runs} runs, {:.2} s wall",
        t.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Random loss is not congestion: at 200 Mbit/s and 100 ms RTT, Sluice's goodput after
/// start-up (3 s from the start to the last byte of 128 MiB) stays near the ceiling, which is
/// `PAYLOAD_SHARE × (1 − loss)`: 0.940 of the link at 1 %, 0.902 at 5 %. Measured: 0.919 and
/// 0.854 of the link; the thresholds are ~5 % below.
#[test]
fn random_loss_keeps_the_link_full() {
    let rate = 200_000_000;
    for (loss, min_share) in [(0.01, 0.87), (0.05, 0.80)] {
        let (forward, back) = path(rate, 50 * MS, loss);
        let name = format!("random_loss_keeps_the_link_full ({loss})");
        let report = one_sluice_flow(&name, forward, back, 128 * MIB);
        let flow = &report.flows[0];
        let end = flow.finished.expect("finished");
        let share = flow.goodput_bps(Duration::from_secs(3), end) / rate as f64;
        eprintln!(
            "  {share:.3} of the link from 3 s, {:.3} of the ceiling",
            share / (PAYLOAD_SHARE * (1.0 - loss))
        );
        assert!(
            share >= min_share,
            "{share:.3} of the link at {loss} loss, expected at least {min_share}"
        );
    }
}

/// A path of a few dozen packets (20 Mbit/s, 10 ms RTT, a 10 ms queue: 34 packets from end to
/// end) gets few ACKs per round and no fresh RTT sample in most: their losses are the queue's,
/// not random bursts to be counted as delivered. When they were, the model's rate climbed to 7×
/// the link and 9.6 bytes crossed per payload byte. Measured now: 1.133 bytes on the wire and
/// 0.85 of the link at 0 % (what is left is the probing round of such thin rounds, which doubles
/// the window and overruns a queue this short; see `congestion.rs`).
#[test]
fn a_path_of_a_few_dozen_packets_is_not_overrun() {
    let rate = 20_000_000;
    for loss in [0.0, 0.01] {
        let (mut forward, mut back) = path(rate, 5 * MS, loss);
        forward.queue = 10 * MS;
        back.queue = 10 * MS;
        let name = format!("a_path_of_a_few_dozen_packets ({loss})");
        let report = one_sluice_flow(&name, forward, back, 16 * MIB);
        let flow = &report.flows[0];
        let end = flow.finished.expect("finished");
        let share = flow.goodput_bps(Duration::ZERO, end) / rate as f64;
        let wire = flow.udp_tx_bytes as f64 / flow.delivered as f64;
        eprintln!("  {share:.3} of the link, {wire:.3} bytes on the wire per byte at {loss}");
        assert!(
            wire < 1.2 + loss,
            "{wire:.3} bytes on the wire per byte at {loss} loss"
        );
        assert!(share >= 0.75, "{share:.3} of the link at {loss} loss");
    }
}

/// A queue far shorter than the path (10 ms at 50 ms RTT, 20 Mbit/s: 17 packets against 86 in
/// flight), and a slow long path (5 Mbit/s, 300 ms, 1 % loss): the queue's overflow is not
/// random loss. Taken for it (the loss estimate was a median of whole rounds' losses), the
/// estimate climbed round by round to 33 % with no loss on the path, the window grew with it,
/// and 1.48 bytes crossed the bottleneck per byte delivered (1.14 on the slow path; wan-emu
/// agreed: 20,925 queue drops for 47,115 packets forwarded). Losses are now judged by the queue
/// the packets sent next to them met.
#[test]
fn a_shallow_queue_s_overflow_is_not_random_loss() {
    for (rate, one_way, queue_ms, loss, mib, max_wire, min_share) in [
        (20_000_000, 25 * MS, 10, 0.0, 32, 1.12, 0.80),
        (5_000_000, 150 * MS, 50, 0.01, 8, 1.12, 0.80),
    ] {
        let (mut forward, mut back) = path(rate, one_way, loss);
        forward.queue = queue_ms * MS;
        back.queue = queue_ms * MS;
        let name = format!("a_shallow_queue ({rate} bit/s, {one_way:?}, {queue_ms} ms, {loss})");
        let report = one_sluice_flow(&name, forward, back, mib * MIB);
        let flow = &report.flows[0];
        let end = flow.finished.expect("finished");
        let share = flow.goodput_bps(Duration::ZERO, end) / rate as f64;
        let wire = flow.udp_tx_bytes as f64 / flow.delivered as f64;
        eprintln!("  {share:.3} of the link, {wire:.3} bytes on the wire per byte");
        assert!(
            wire < max_wire,
            "{name}: {wire:.3} bytes on the wire per byte"
        );
        assert!(share >= min_share, "{name}: {share:.3} of the link");
    }
}

/// The smaller of two flows' shares over the larger.
fn min_over_max(s: &[f64]) -> f64 {
    s[0].min(s[1]) / s[0].max(s[1])
}

/// The shares of [`two_sluice_flows`]: together they keep the link full, and every 5 s window
/// has them within 30 % of each other (issue 9's fairness target).
fn assert_shared_every_window(late: &[f64], windows: &[(Duration, Vec<f64>)]) {
    assert!(late.iter().sum::<f64>() >= 0.9, "shares {late:.3?}");
    for (t, s) in windows {
        let fairness = min_over_max(s);
        assert!(
            fairness >= 0.7,
            "shares {s:.2?} from {t:?} to {:?}: min/max {fairness:.2}",
            *t + Duration::from_secs(5)
        );
    }
}

/// Two Sluice flows through one bottleneck, the second `later` after the first, for `end`,
/// with `seed`; returns their shares over `[settled, end)` and over each 5 s window of it.
fn two_sluice_flows(
    name: &str,
    rate: u64,
    one_way: Duration,
    later: Duration,
    settled: Duration,
    end: Duration,
    seed: u64,
) -> (Vec<f64>, Vec<(Duration, Vec<f64>)>) {
    let (forward, back) = path(rate, one_way, 0.0);
    let mut s = sluice_scenario(
        forward,
        back,
        vec![
            sluice_flow(1 << 40, Duration::ZERO),
            sluice_flow(1 << 40, later),
        ],
        end,
    );
    s.seed = seed;
    let report = run(&format!("{name} (seed {seed})"), &s);
    let step = Duration::from_secs(5);
    print_shares(&report, rate, step);
    assert!(report.flows.iter().all(|f| f.error.is_none()));
    let late = shares(&report, rate, settled, end);
    let fairness = min_over_max(&late);
    eprintln!("  shares from {settled:?} to {end:?}: {late:.3?}, min/max {fairness:.2}");
    let mut windows = Vec::new();
    let mut t = settled;
    while t < end {
        windows.push((t, shares(&report, rate, t, t + step)));
        t += step;
    }
    (late, windows)
}

/// 200 Mbit/s, 100 ms RTT, the second flow 5 s after the first.
///
/// Before the queued-packets term and the settling round of `congestion.rs`, the shares swung
/// with a period of ~40 s between about 0.22 / 0.73 and 0.7 / 0.25 of the link: nothing moved
/// shares towards each other. Now (measured): every 5 s window from 15 s on within 0.74–1.0,
/// 0.494 and 0.453 of the link over 40–150 s.
#[test]
fn two_sluice_flows_share_the_link() {
    let (late, windows) = two_sluice_flows(
        "two_sluice_flows_share_the_link",
        200_000_000,
        50 * MS,
        Duration::from_secs(5),
        Duration::from_secs(15),
        Duration::from_secs(150),
        1,
    );
    assert_shared_every_window(&late, &windows);
}

/// A shorter path, 50 Mbit/s at 20 ms RTT, the second flow 2 s later: before, the shares stayed
/// at 0.73 / 0.18 for 150 s.
#[test]
fn two_sluice_flows_share_a_short_path() {
    let (late, windows) = two_sluice_flows(
        "two_sluice_flows_share_a_short_path",
        50_000_000,
        10 * MS,
        Duration::from_secs(2),
        Duration::from_secs(15),
        Duration::from_secs(60),
        1,
    );
    assert_shared_every_window(&late, &windows);
}

/// A long path, 200 Mbit/s at 300 ms RTT, the second flow 10 s later, with three seeds: over
/// 45–150 s each seed's shares are within 30 % of each other and fill the link.
///
/// Here convergence is slow and its course depends on the seed (which flow's packets a probe's
/// overflow drops), so single 5 s windows are not asserted. Measured over seeds 1–13 (2026-12-05,
/// with and without start-up's doubled first window, which changed nothing beyond the seed's
/// spread): min/max over 45–150 s 0.77–0.98, mean 0.89 both ways; the last 5 s window below
/// 0.7 ended at 35–130 s, median 55–60 s. (Seed 1 alone, once asserted window by window from
/// 45 s, passed by luck: 8 of the 13 seeds had a window below 0.7 after 45 s.) The settling
/// round holds back 50 ms of a flow's rate here (a sixth of the round); when it held back half
/// the round, seed 1's shares were 0.555 / 0.384 over 40–150 s.
#[test]
fn two_sluice_flows_share_a_long_path() {
    for seed in 1..=3 {
        let (late, _) = two_sluice_flows(
            "two_sluice_flows_share_a_long_path",
            200_000_000,
            150 * MS,
            Duration::from_secs(10),
            Duration::from_secs(45),
            Duration::from_secs(150),
            seed,
        );
        let fairness = min_over_max(&late);
        assert!(
            late.iter().sum::<f64>() >= 0.9,
            "seed {seed}: shares {late:.3?}"
        );
        assert!(
            fairness >= 0.7,
            "seed {seed}: shares {late:.3?} over 45–150 s, min/max {fairness:.2}"
        );
    }
}

/// A loss-based flow (quinn's cubic, standing in for TCP's) and a Sluice flow on the same
/// 200 Mbit/s, 100 ms bottleneck, each starting first: cubic keeps at least a third of the link
/// over 40–60 s, and together they fill it. The cubic flow has the same windows and streams as
/// the Sluice flow, so only the controller and the ACKs differ; it asks for quinn's default
/// ACKs (every second packet, as TCP), which cubic needs to grow its window at the normal pace
/// (see `two_cubic_flows_share_the_link`).
///
/// Measured over 40–60 s, cubic first: cubic 0.912, Sluice 0.037; Sluice first: cubic 0.916,
/// Sluice 0.033. Sluice yields far more than its share: cubic keeps the queue full (mean queue
/// delay 30–35 ms, above a quarter of the base RTT), Sluice reads that as a standing queue and
/// cuts its rate again and again, down to about its 32-packet floor window (3.7 Mbit/s at
/// 100 ms). That is not asserted here: this test guards cubic's share.
#[test]
fn sluice_leaves_cubic_a_third() {
    let rate = 200_000_000;
    let cubic = |start| Flow {
        tuning: TransportTuning {
            congestion: Congestion::Cubic,
            ack_eliciting_threshold: 0,
            ..sluice_tuning()
        },
        ..sluice_flow(1 << 40, start)
    };
    let later = Duration::from_secs(5);
    let end = Duration::from_secs(60);
    for cubic_first in [true, false] {
        let (flows, cubic_index) = if cubic_first {
            (vec![cubic(Duration::ZERO), sluice_flow(1 << 40, later)], 0)
        } else {
            (vec![sluice_flow(1 << 40, Duration::ZERO), cubic(later)], 1)
        };
        let (forward, back) = path(rate, 50 * MS, 0.0);
        let s = sluice_scenario(forward, back, flows, end);
        let name = format!("sluice_leaves_cubic_a_third (cubic first: {cubic_first})");
        let report = run(&name, &s);
        print_shares(&report, rate, Duration::from_secs(5));
        assert!(report.flows.iter().all(|f| f.error.is_none()));
        let from = Duration::from_secs(40);
        let late = shares(&report, rate, from, end);
        eprintln!("  shares from {from:?} to {end:?}: {late:.3?} (cubic is flow {cubic_index})");
        assert!(late[cubic_index] >= 1.0 / 3.0, "shares {late:.3?}");
        assert!(late.iter().sum::<f64>() >= 0.9, "shares {late:.3?}");
    }
}

/// Sluice paces at the rate it measures instead of filling the queue: on a lossless
/// 200 Mbit/s, 100 ms RTT path, a 256 MiB transfer (12 s: start-up and a dozen probe cycles)
/// keeps the mean queueing delay under a quarter of the base RTT — the standing queue the
/// controller backs off for, and half of the half-RTT budget — with wan-emu's 50 ms queue and
/// with a 200 ms one. Measured: mean 16.4 ms, max 37.1 ms (start-up's overshoot) with either
/// queue; so with the deep queue the max also stays under half the base RTT and nothing is
/// dropped, as the controller, not the queue's size, bounds the delay.
#[test]
fn queueing_delay_stays_under_half_the_base_rtt() {
    let base_rtt = 100 * MS;
    for queue_ms in [50u32, 200] {
        let (mut forward, back) = path(200_000_000, base_rtt / 2, 0.0);
        forward.queue = queue_ms * MS;
        let name = format!("queueing_delay_stays_under_half_the_base_rtt ({queue_ms} ms queue)");
        let report = one_sluice_flow(&name, forward, back, 256 * MIB);
        assert!(report.flows[0].finished.is_some());
        let fwd = &report.forward;
        assert!(
            fwd.mean_queue_delay < base_rtt / 4,
            "mean queue delay {:?} with a {queue_ms} ms queue",
            fwd.mean_queue_delay
        );
        if queue_ms > 50 {
            assert!(
                fwd.max_queue_delay < base_rtt / 2,
                "max queue delay {:?} with a {queue_ms} ms queue",
                fwd.max_queue_delay
            );
            assert_eq!(fwd.queue_drops, 0);
        }
    }
}

/// `--congestion bbr-capped` on a path of a few hundred microseconds (loopback's kind): the
/// cap's floor of 16 packets never reached the 16 packets after which the peer acknowledges, so
/// every round waited for its 25 ms ACK timer (a 1 GiB loopback copy ran over 60 s). With a
/// floor of twice the ACK count (at least 32) the 64 MiB cross at most of the link's rate, also
/// when the user asks for ACKs every 64 packets.
#[test]
fn bbr_capped_is_not_held_by_the_ack_timer_on_a_short_path() {
    for ack_every in [16, 64] {
        bbr_capped_on_a_short_path(ack_every);
    }
}

fn bbr_capped_on_a_short_path(ack_every: u32) {
    let rate = 1_000_000_000;
    let (forward, back) = path(rate, Duration::from_micros(50), 0.0);
    let bytes = 64 * MIB;
    let s = scenario(
        forward,
        back,
        vec![Flow {
            tuning: TransportTuning {
                ack_eliciting_threshold: ack_every,
                ..tuning(Congestion::BbrCapped, 8 * MIB)
            },
            bytes,
            streams: 4,
            start: Duration::ZERO,
        }],
        Duration::from_secs(10),
    );
    let report = run(
        "bbr_capped_is_not_held_by_the_ack_timer_on_a_short_path",
        &s,
    );
    let flow = &report.flows[0];
    assert_eq!(flow.error, None);
    assert_eq!(
        flow.delivered, bytes,
        "did not finish in 10 s of virtual time"
    );
    let secs = flow.duration().expect("finished").as_secs_f64();
    let goodput = bytes as f64 * 8.0 / secs;
    assert!(
        goodput >= 0.5 * rate as f64,
        "ACKs every {ack_every}: {:.1} Mbit/s is under half the link",
        goodput / 1e6
    );
}

/// Start-up doubles the window every round from the first one. The first rounds carried the
/// handshake and little else, and the rate they measured capped the window at its first size
/// for a second round: one round trip lost, 0.3 s at 300 ms (wan-emu's trace: 32, then 31,
/// then 60 packets per round). Measured here at 200 Mbit/s and 300 ms RTT, 80 % of the link in
/// a round trip was first reached 3.78 s after the start with the cap (bytes delivered in the
/// rounds after the handshake's: 34 K, 35 K, 54 K, 137 K, ...), 3.48 s now (34 K, 70 K, 119 K,
/// 230 K, ...).
#[test]
fn start_up_doubles_from_its_first_window() {
    let rate = 200_000_000;
    let (forward, back) = path(rate, 150 * MS, 0.0);
    let report = one_sluice_flow("start_up_doubles", forward, back, 64 * MIB);
    let flow = &report.flows[0];
    let rtt = 300 * MS;
    let mut t = Duration::ZERO;
    let full = loop {
        if flow.goodput_bps(t, t + rtt) >= 0.8 * rate as f64 {
            break t + rtt;
        }
        t += 10 * MS;
        assert!(t < Duration::from_secs(10), "never at 80 % of the link");
    };
    let rounds: Vec<u64> = (1..=6)
        .map(|i| {
            flow.delivered_at(i * rtt + 300 * MS) - flow.delivered_at((i - 1) * rtt + 300 * MS)
        })
        .collect();
    eprintln!("  80 % of the link in a round trip by {full:?}; bytes per round {rounds:?}");
    assert!(
        full <= Duration::from_millis(3600),
        "80 % of the link only by {full:?}"
    );
}

/// Jitter where a packet never overtakes the one before it (wan-emu's `--jitter-ms` without
/// `--reorder`, as behind a link-layer retransmission): under load most packets take close to
/// the longest delay, so a loaded round's RTT is above the base RTT measured while the flow was
/// thin. A window sized for the base RTT alone let out less than the rate every round, and the
/// rate fell round after round. Here, 200 Mbit/s and 100 ms RTT: with ±20 ms the 128 MiB had
/// not arrived after 30 s (wan-emu: 256 MiB not there after 120 s), with ±5 ms 0.879 of the
/// link from 3 s on. The window now covers the jitter its rounds show: 0.519 and 0.931; then
/// start-up and the standing-queue rule also stopped taking jitter for a queue: 0.760 and
/// 0.951.
#[test]
fn jitter_does_not_shrink_the_rate() {
    let rate = 200_000_000;
    for (jitter, min_share) in [(5 * MS, 0.9), (20 * MS, 0.65)] {
        let (mut forward, mut back) = path(rate, 50 * MS, 0.0);
        forward.jitter = jitter;
        back.jitter = jitter;
        let name = format!("jitter_does_not_shrink_the_rate (±{jitter:?})");
        let report = one_sluice_flow(&name, forward, back, 128 * MIB);
        let flow = &report.flows[0];
        let end = flow.finished.expect("finished");
        let share = flow.goodput_bps(Duration::from_secs(3), end) / rate as f64;
        eprintln!("  {share:.3} of the link from 3 s on");
        assert!(share >= min_share, "{share:.3} of the link at ±{jitter:?}");
    }
}

/// Jitter that lets packets overtake each other (wan-emu's `--jitter-ms 1 --reorder`): at
/// 200 Mbit/s a packet may be passed by a dozen others. With quinn's packet threshold of 3 most
/// were declared lost and sent again, and the losses held the rate down: 0.118 of the link from
/// 3 s on, 1.63 bytes sent per byte delivered. With `PACKET_THRESHOLD` (256) the reordering is
/// only reordering.
#[test]
fn reordering_is_not_loss() {
    let rate = 200_000_000;
    let (mut forward, mut back) = path(rate, 25 * MS, 0.0);
    for link in [&mut forward, &mut back] {
        link.jitter = MS;
        link.reorder = true;
    }
    let report = one_sluice_flow("reordering_is_not_loss", forward, back, 128 * MIB);
    let flow = &report.flows[0];
    let end = flow.finished.expect("finished");
    let share = flow.goodput_bps(Duration::from_secs(3), end) / rate as f64;
    let wire = flow.udp_tx_bytes as f64 / flow.delivered as f64;
    eprintln!("  packet threshold {PACKET_THRESHOLD}: {share:.3} of the link from 3 s on, {wire:.3} bytes sent per byte");
    assert!(share >= 0.85, "{share:.3} of the link");
    assert!(wire <= 1.05, "{wire:.3} bytes sent per byte delivered");
}

/// The time from the start until `flow` first delivered 80 % of `rate_bps` over a round trip.
fn time_to_fill(flow: &netsim::FlowReport, rate_bps: u64, rtt: Duration) -> Duration {
    let mut t = Duration::ZERO;
    loop {
        if flow.goodput_bps(t, t + rtt) >= 0.8 * rate_bps as f64 {
            return t + rtt;
        }
        t += 10 * MS;
        assert!(t < Duration::from_secs(20), "never at 80 % of the link");
    }
}

/// A connection that starts from what the last one to the same host measured (careful
/// resume): at 200 Mbit/s and 300 ms RTT it fills the link rounds sooner than a fresh start-up
/// (`start_up_doubles_from_its_first_window`: 3.48 s); figures five times what the path
/// carries now cost one overrun of the queue, and the flow goes on at the path's rate.
#[test]
fn a_start_from_the_last_figures_fills_a_long_path_sooner() {
    let rate = 200_000_000;
    let rtt = 300 * MS;
    let mut took = Vec::new();
    for (figures, what) in [(25e6, "the path's figures"), (125e6, "five times the path")] {
        let (forward, back) = path(rate, 150 * MS, 0.0);
        let mut flow = sluice_flow(96 * MIB, Duration::ZERO);
        flow.tuning.rate.resume = Some(sluice_quic::congestion::PathFigures {
            rate: figures,
            rtt,
            rounds: 0,
        });
        let s = sluice_scenario(forward, back, vec![flow], Duration::from_secs(30));
        let report = run(&format!("a_start_from_the_last_figures ({what})"), &s);
        let flow = &report.flows[0];
        assert_eq!(flow.error, None, "{what}");
        let full = time_to_fill(flow, rate, rtt);
        let wire = flow.udp_tx_bytes as f64 / flow.delivered as f64;
        let end = flow.finished.expect("finished");
        let share = flow.goodput_bps(Duration::from_secs(3), end) / rate as f64;
        eprintln!("  {what}: 80 % of the link by {full:?}, {wire:.3} bytes sent per byte, {share:.3} of the link from 3 s on");
        took.push((full, wire, share));
    }
    let (fresh_fill, _, _) = (Duration::from_millis(3480), 0.0, 0.0);
    assert!(took[0].0 <= fresh_fill / 2, "{took:?}");
    assert!(took[0].1 <= 1.08, "{took:?}");
    assert!(took[1].1 <= 1.3, "{took:?}");
    assert!(took[1].2 >= 0.85, "{took:?}");
}
