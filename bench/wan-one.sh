#!/usr/bin/env bash
# bench/wan-one.sh — one `sluice send` to a `sluice recv` (into an empty directory) across an
# emulated link (shared/tools/wan-emu), for a link the grid of bench/wan.sh does not cover: a
# slow rate, a shallow queue, an asymmetric return path. Prints the send's wall time, the
# goodput as a share of the link rate, and the emulator's counters for the forward direction.
# Runs as root; everything happens in network namespaces this script creates and removes.
#
#   bench/wan-one.sh FILE RTT_MS LOSS [--rate-mbit 200] [--wan "--queue-ms 10 ..."]
#                    [--timeout 300] [-- SEND_ARGS...]
#
#   bench/wan-one.sh /var/tmp/f64m 50 0 --rate-mbit 20 --wan "--queue-ms 10"
#
# SLUICE names the binary (default: target/release/sluice, not built here). The run starts cold
# (a cache directory of its own). --wan passes flags to `wan up` as they are (see
# shared/tools/wan-emu/README.md: --queue-ms, --ba-rate-mbit, --loss-burst, --jitter-ms, ...).
set -euo pipefail
SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
SHARED=${SHARED:-$(cd "$REPO/../shared" && pwd)}
WAN=$SHARED/tools/wan-emu/wan
SLUICE=${SLUICE:-$REPO/target/release/sluice}
[ $# -ge 3 ] || { sed -n '8,9p' "$0" >&2; exit 2; }
FILE=$1 RTT=$2 LOSS=$3
shift 3
RATE=200 WAN_ARGS="" TIMEOUT=300
while [ $# -gt 0 ]; do
    case "$1" in
        --rate-mbit) RATE=$2; shift 2 ;;
        --wan) WAN_ARGS=$2; shift 2 ;;
        --timeout) TIMEOUT=$2; shift 2 ;;
        --) shift; break ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -f "$FILE" ] || { echo "no file $FILE" >&2; exit 2; }
[ -x "$SLUICE" ] || { echo "no sluice binary at $SLUICE (cargo build --release -p sluice-cli)" >&2; exit 2; }

WORK=$(mktemp -d /var/tmp/sluice-wan-one.XXXXXX)
LINK=w1
# shellcheck source=bench/wanlink.sh
. "$SCRIPT_DIR/wanlink.sh"
wanlink_setup "$WORK" "$LINK"
# shellcheck disable=SC2086
"$WAN" up "$LINK" --delay-ms $((RTT / 2)) --rate-mbit "$RATE" --loss "$LOSS" $WAN_ARGS >/dev/null
mkdir -p "$WORK/dest"
"$WAN" exec "$LINK" b "$SLUICE" recv "$WORK/dest" --listen 10.201.0.2:7000 --json \
    >"$WORK/recv.json" 2>"$WORK/recv.err" &
RECV=$!
TICKET=""
for _ in $(seq 100); do
    TICKET=$(grep -o '"ticket":"[^"]*"' "$WORK/recv.json" | head -1 | cut -d'"' -f4 || true)
    [ -n "$TICKET" ] && break
    sleep 0.1
done
[ -n "$TICKET" ] || { echo "the receiver printed no ticket: $(cat "$WORK/recv.err")" >&2; kill "$RECV"; exit 1; }
START=$(date +%s.%N)
RC=0
timeout "$TIMEOUT" "$WAN" exec "$LINK" a "$SLUICE" send "$FILE" "$TICKET" "$@" >/dev/null 2>"$WORK/send.err" || RC=$?
END=$(date +%s.%N)
wait "$RECV" || true
COUNTERS=$("$WAN" down "$LINK" | grep 'a->b' | grep -oE '(fwd_pkts|loss_drops|queue_drops|kernel_drops)=[0-9]+' | tr '\n' ' ')
SIZE=$(stat -c %s "$FILE")
python3 - "$SIZE" "$START" "$END" "$RATE" "$RC" "$COUNTERS" <<'PY'
import sys
size, start, end, rate, rc, counters = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5], sys.argv[6]
secs = end - start
print(f"exit {rc}: {secs:.2f} s, {size * 8 / secs / (rate * 1e6) * 100:.1f} % of {rate:g} Mbit/s; {counters.strip()}")
PY
[ "$RC" = 0 ] || sed 's/\x1b\[[0-9;]*m//g' "$WORK/send.err" >&2
