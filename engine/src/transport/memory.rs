//! What the last transfer to a host measured of the path: its bottleneck rate and round trip,
//! kept in a small file per user, so that the next QUIC connection to that host starts from
//! half of that rate (`RateConfig::resume`, careful resume) instead of from a few packets. On a
//! 300 ms path start-up otherwise takes ten round trips, three seconds, to fill the link. The
//! kernel keeps such figures per destination for TCP too (`ip tcp_metrics`).
//!
//! The file (`$XDG_CACHE_HOME/sluice/paths`, else `~/.cache/sluice/paths`) holds one line per
//! host: its address, the rate in bytes per second, the round trip in microseconds and when it
//! was measured (Unix seconds). Figures older than [`KEEP_FOR`] are not used; a line that does
//! not parse is skipped; anything that cannot be read or written is left alone: the transfer
//! starts up as if nothing was kept.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_quic::congestion::PathFigures;

/// How long a host's figures are used.
pub const KEEP_FOR: Duration = Duration::from_secs(24 * 3600);

/// The most hosts the file holds (the oldest go first).
const MOST_HOSTS: usize = 256;

/// The most of the file that is read.
const MOST_BYTES: u64 = 64 << 10;

/// The most a line may say, beyond which it is taken as damaged: a rate of 100 GB/s (800
/// Gbit/s) and a round trip of a minute. Larger figures would make a first window of exabytes.
const MOST_RATE: f64 = 1e11;
const MOST_RTT: Duration = Duration::from_secs(60);

/// Rounds past start-up a connection must have measured for its figures to be kept.
pub const MIN_ROUNDS: u32 = 8;

const HEADER: &str = "# sluice: each host's last measured path: address, bytes per second, round trip in microseconds, Unix time\n";

/// The file for this user: `$XDG_CACHE_HOME/sluice/paths`, else `$HOME/.cache/sluice/paths`;
/// `None` without either.
pub fn default_file() -> Option<PathBuf> {
    // A relative XDG_CACHE_HOME is to be ignored (the XDG base directory specification).
    let dir = match std::env::var_os("XDG_CACHE_HOME").filter(|d| Path::new(d).is_absolute()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").filter(|h| !h.is_empty())?).join(".cache"),
    };
    Some(dir.join("sluice").join("paths"))
}

/// One line of the file.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Entry {
    ip: IpAddr,
    rate: f64,
    rtt: Duration,
    at: u64,
}

fn parse(line: &str) -> Option<Entry> {
    let mut f = line.split_ascii_whitespace();
    let entry = Entry {
        ip: f.next()?.parse().ok()?,
        rate: f
            .next()?
            .parse()
            .ok()
            .filter(|r: &f64| *r > 0.0 && *r <= MOST_RATE)?,
        rtt: Duration::from_micros(f.next()?.parse().ok().filter(|&us: &u64| us > 0)?),
        at: f.next()?.parse().ok()?,
    };
    (f.next().is_none() && entry.rtt <= MOST_RTT).then_some(entry)
}

fn read(file: &Path) -> Vec<Entry> {
    use std::io::Read;
    let mut text = String::new();
    let read = std::fs::File::open(file).and_then(|f| f.take(MOST_BYTES).read_to_string(&mut text));
    if read.is_err() {
        return Vec::new();
    }
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(parse)
        .collect()
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The figures kept for `ip`, if measured within [`KEEP_FOR`] of `now`.
pub fn recall(file: &Path, ip: IpAddr, now: SystemTime) -> Option<PathFigures> {
    let now = unix(now);
    let ip = ip.to_canonical();
    read(file)
        .into_iter()
        .filter(|e| e.ip == ip && e.at <= now && now - e.at < KEEP_FOR.as_secs())
        .max_by_key(|e| e.at)
        .map(|e| PathFigures {
            rate: e.rate,
            rtt: e.rtt,
            rounds: 0,
        })
}

/// Keeps `figures` for `ip`, measured at `now`, in place of what the file held for it.
pub fn remember(
    file: &Path,
    ip: IpAddr,
    figures: PathFigures,
    now: SystemTime,
) -> std::io::Result<()> {
    let ip = ip.to_canonical();
    let mut entries: Vec<Entry> = read(file).into_iter().filter(|e| e.ip != ip).collect();
    entries.push(Entry {
        ip,
        rate: figures.rate,
        rtt: figures.rtt,
        at: unix(now),
    });
    entries.sort_by_key(|e| std::cmp::Reverse(e.at));
    entries.truncate(MOST_HOSTS);
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mut text = String::from(HEADER);
    for e in &entries {
        text.push_str(&format!(
            "{} {:.0} {} {}\n",
            e.ip,
            e.rate,
            e.rtt.as_micros(),
            e.at
        ));
    }
    // Whole or not at all: written beside, then renamed over.
    let tmp = dir.join(format!(".paths.{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        std::fs::rename(&tmp, file)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(rate: f64, ms: u64) -> PathFigures {
        PathFigures {
            rate,
            rtt: Duration::from_millis(ms),
            rounds: 9,
        }
    }

    /// Figures come back for their host only, the latest in place of the one before, not once
    /// they are older than a day; lines that do not parse are skipped; the file is private.
    #[test]
    fn a_hosts_figures_come_back_for_a_day() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cache/sluice/paths");
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let t = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(recall(&file, a, t), None, "nothing kept yet");
        remember(&file, a, figures(25e6, 300), t).unwrap();
        remember(&file, b, figures(1e6, 20), t).unwrap();
        remember(&file, a, figures(12e6, 290), t + Duration::from_secs(60)).unwrap();
        let later = t + Duration::from_secs(3600);
        let got = recall(&file, a, later).unwrap();
        assert_eq!((got.rate, got.rtt), (12e6, Duration::from_millis(290)));
        // The same host seen through a dual-stack socket.
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(recall(&file, mapped, later), Some(got));
        assert_eq!(recall(&file, b, later).unwrap().rate, 1e6);
        assert_eq!(recall(&file, "192.0.2.8".parse().unwrap(), later), None);
        assert_eq!(
            recall(&file, a, t + KEEP_FOR + Duration::from_secs(61)),
            None
        );
        assert_eq!(
            recall(&file, a, t - Duration::from_secs(1)),
            None,
            "from the future"
        );
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        std::fs::write(
            &file,
            format!(
                "{text}garbage\n192.0.2.9 -5 100 {at}\n192.0.2.9 5 0 {at}\n\
                 192.0.2.9 5 100 {at} x\n192.0.2.9 1e300 100 {at}\n192.0.2.9 NaN 100 {at}\n\
                 192.0.2.9 inf 100 {at}\n192.0.2.9 5 99000000000 {at}\n192.0.2.10 5 100 {at}\n",
                at = unix(t)
            ),
        )
        .unwrap();
        assert_eq!(recall(&file, a, later), Some(got));
        assert_eq!(recall(&file, "192.0.2.9".parse().unwrap(), later), None);
        // The same line with sane figures, as fresh, is taken.
        assert_eq!(
            recall(&file, "192.0.2.10".parse().unwrap(), later).map(|f| f.rate),
            Some(5.0)
        );
    }

    /// The file keeps the latest hosts only, and an unwritable place is an error the caller
    /// can ignore, not a panic.
    #[test]
    fn the_file_stays_small() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("paths");
        let t = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        for i in 0..300u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            remember(
                &file,
                ip,
                figures(1e6, 50),
                t + Duration::from_secs(i.into()),
            )
            .unwrap();
        }
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(text.lines().count(), MOST_HOSTS + 1);
        assert!(recall(
            &file,
            "10.0.0.0".parse().unwrap(),
            t + Duration::from_secs(400)
        )
        .is_none());
        assert!(recall(
            &file,
            "10.0.1.43".parse().unwrap(),
            t + Duration::from_secs(400)
        )
        .is_some());
        let blocked = dir.path().join("paths/under/a/file");
        assert!(remember(&blocked, "10.0.0.1".parse().unwrap(), figures(1e6, 50), t).is_err());
    }
}
