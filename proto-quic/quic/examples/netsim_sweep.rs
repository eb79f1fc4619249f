//! Runs Sluice's congestion controllers over the simulated bottleneck (`sluice_quic::netsim`)
//! for a grid of paths and prints goodput as a share of the link, bytes on the wire and queue
//! drops: the quick way to see what a change to `congestion.rs` does before wan-emu.
//!
//! `cargo run --release -p sluice-quic --example netsim_sweep -- [sluice|bbr|cubic|bbr-capped]
//!  [MiB] [rate-Mbit] [one-way-ms ...] [--loss 0,0.01,0.05] [--queue-ms 50] [--burst N] [--flows N] [--streams N]
//!  [--jitter-ms N [--reorder]]
//!  [--stream-window-kib N] [--window-mib N] [--packet-threshold N]`

use std::time::Duration;

use sluice_quic::netsim::{self, Flow, Link, Scenario};
use sluice_quic::tls::{Congestion, TransportTuning};

fn main() {
    // `SLUICE_LOG=sluice_quic::congestion=trace` prints the controller's rounds; `TIMELINE=1`
    // the first flow's in-order goodput per 300 ms (its first 6 s and last 3 s).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("SLUICE_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut congestion = Congestion::Sluice;
    let mut mib = 128u64;
    let mut rate_mbit = 200u64;
    let mut delays = Vec::new();
    let mut losses = vec![0.0, 0.001, 0.01, 0.05, 0.1];
    let mut queue_ms = 50u64;
    let mut burst = None;
    let mut jitter_ms = 0u64;
    let mut reorder = false;
    let mut flows = 1usize;
    let mut streams = 32usize;
    let mut stream_window = TransportTuning::default().stream_window;
    let mut window = TransportTuning::default().connection_window;
    let mut packet_threshold = TransportTuning::default().packet_threshold;
    let mut it = args.iter();
    let mut positional = 0;
    while let Some(a) = it.next() {
        match a.as_str() {
            "sluice" => congestion = Congestion::Sluice,
            "bbr" => congestion = Congestion::Bbr,
            "cubic" => congestion = Congestion::Cubic,
            "bbr-capped" => congestion = Congestion::BbrCapped,
            "--loss" => {
                losses = it
                    .next()
                    .expect("--loss LIST")
                    .split(',')
                    .map(|s| s.parse().expect("a loss rate"))
                    .collect()
            }
            "--queue-ms" => queue_ms = it.next().expect("--queue-ms N").parse().expect("ms"),
            "--jitter-ms" => jitter_ms = it.next().expect("--jitter-ms N").parse().expect("ms"),
            "--reorder" => reorder = true,
            "--burst" => burst = Some(it.next().expect("--burst N").parse().expect("frames")),
            "--flows" => flows = it.next().expect("--flows N").parse().expect("count"),
            "--streams" => streams = it.next().expect("--streams N").parse().expect("count"),
            "--stream-window-kib" => {
                stream_window = it
                    .next()
                    .expect("--stream-window-kib N")
                    .parse::<u64>()
                    .expect("KiB")
                    << 10
            }
            "--packet-threshold" => {
                packet_threshold = it
                    .next()
                    .expect("--packet-threshold N")
                    .parse()
                    .expect("packets")
            }
            "--window-mib" => {
                window = it
                    .next()
                    .expect("--window-mib N")
                    .parse::<u64>()
                    .expect("MiB")
                    << 20
            }
            n => {
                let v: u64 = n.parse().expect("a number");
                match positional {
                    0 => mib = v,
                    1 => rate_mbit = v,
                    _ => delays.push(v),
                }
                positional += 1;
            }
        }
    }
    if delays.is_empty() {
        delays = vec![25, 50, 150];
    }
    println!(
        "| RTT ms | loss | goodput % of link | after 3 s | wire ÷ payload | queue drops | time s |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for &d in &delays {
        for &loss in &losses {
            let link = Link {
                loss,
                loss_burst: burst,
                queue: Duration::from_millis(queue_ms),
                jitter: Duration::from_millis(jitter_ms),
                reorder,
                ..Link::new(rate_mbit * 1_000_000, Duration::from_millis(d))
            };
            let tuning = TransportTuning {
                congestion,
                max_uni_streams: streams as u32,
                stream_window,
                connection_window: window,
                send_window: window,
                packet_threshold,
                ..TransportTuning::default()
            };
            let s = Scenario {
                forward: link.clone(),
                back: link,
                flows: (0..flows)
                    .map(|_| Flow {
                        tuning: tuning.clone(),
                        bytes: mib << 20,
                        streams,
                        start: Duration::ZERO,
                    })
                    .collect(),
                seed: 1,
                limit: Duration::from_secs(240),
                mtu: 1452,
                timer_granularity: Duration::from_millis(1),
            };
            let r = netsim::run(&s).expect("scenario runs");
            if flows > 1 {
                // Each flow's share of the link per 5 s, and min ÷ max over the whole run.
                let step = Duration::from_secs(5);
                let mut t = Duration::ZERO;
                while t < r.end {
                    let s: Vec<f64> = r
                        .flows
                        .iter()
                        .map(|f| f.goodput_bps(t, t + step) / (rate_mbit as f64 * 1e6))
                        .collect();
                    eprintln!("  {:>5.0} s: {s:.2?}", t.as_secs_f64());
                    t += step;
                }
            }
            if std::env::var_os("TIMELINE").is_some() {
                let f = &r.flows[0];
                let step = Duration::from_millis(300);
                let mut t = Duration::ZERO;
                let end = f.finished.unwrap_or(r.end);
                let mut line = String::new();
                while t < end {
                    let g = f.goodput_bps(t, (t + step).min(end)) / (rate_mbit as f64 * 1e6);
                    line += &format!("{:.0} ", 100.0 * g);
                    t += step;
                    if t > Duration::from_secs(6) && end > t + Duration::from_secs(3) {
                        line += "… ";
                        t = end - Duration::from_secs(3);
                    }
                }
                eprintln!(
                    "timeline (per 300 ms, % of link): {line} end {:.2} s",
                    end.as_secs_f64()
                );
            }
            for f in &r.flows {
                let secs = f.duration().map_or(f64::NAN, |t| t.as_secs_f64());
                let goodput = f.delivered as f64 * 8.0 / secs / (rate_mbit as f64 * 1e6);
                let end = f.finished.unwrap_or(r.end);
                let from = f.start + Duration::from_secs(3);
                let steady = f.goodput_bps(from, end) / (rate_mbit as f64 * 1e6);
                println!(
                    "| {} | {} | {:.1}{} | {:.1} | {:.3} | {} | {:.1} |",
                    2 * d,
                    loss,
                    100.0 * goodput,
                    f.error
                        .as_deref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default(),
                    100.0 * steady,
                    f.udp_tx_bytes as f64 / f.delivered.max(1) as f64,
                    r.forward.queue_drops,
                    secs
                );
            }
        }
    }
}
