#!/usr/bin/env bash
# bench/fairness.sh — how Sluice shares a bottleneck (shared/tools/wan-emu), the three figures of
# issue 9's politeness item, in one run:
#   1. two Sluice transfers started together on one link: each one's rate, and min ÷ max;
#   2. one Sluice transfer beside one TCP cubic flow (iperf3): the share each gets;
#   3. the queueing delay Sluice adds at a loss-free bottleneck: ping's RTT during a transfer
#      against the base RTT.
# Sluice runs `sluice bench` (memory → network → verify → discard), so disks play no part.
#
#   bench/fairness.sh [--rate-mbit 200] [--rtt-ms 100] [--loss 0] [--seconds 40] [--no-build]
#                     [--only two,cubic,delay]
set -euo pipefail
SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
RATE=200 RTT=100 LOSS=0 SECS=40 BUILD=1 ONLY=two,cubic,delay
while [ $# -gt 0 ]; do
    case $1 in
        --rate-mbit) RATE=$2; shift 2 ;;
        --rtt-ms) RTT=$2; shift 2 ;;
        --loss) LOSS=$2; shift 2 ;;
        --seconds) SECS=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --only) ONLY=$2; shift 2 ;;
        *) sed -n '2,12p' "$0" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces)" >&2; exit 2; }
command -v iperf3 >/dev/null && command -v ping >/dev/null || { echo "needs iperf3 and ping (apt-get install iperf3 iputils-ping)" >&2; exit 2; }
SHARED=${SHARED:-$REPO/../shared}
WAN=$SHARED/tools/wan-emu/wan
SLUICE=${SLUICE:-$REPO/target/release/sluice}
[ "$BUILD" = 1 ] && (cd "$REPO" && cargo build --release -p sluice-cli >&2)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sluice-fair.XXXXXX")
LINK=sluicefair
# shellcheck source=bench/wanlink.sh
. "$SCRIPT_DIR/wanlink.sh"
wanlink_setup "$WORK" "$LINK"
"$WAN" up "$LINK" --delay-ms $((RTT / 2)) --loss "$LOSS" --rate-mbit "$RATE" --max-seconds $((SECS * 6 + 300)) >/dev/null
ON_A() { "$WAN" exec "$LINK" a "$@"; }
ON_B() { "$WAN" exec "$LINK" b "$@"; }

# serve PORT: a `sluice bench --serve` on side b; prints its ticket.
serve() {
    local port=$1 out="$WORK/serve$1.out"
    rm -f "$out" # not to read the last run's ticket before the redirection truncates it
    ON_B "$SLUICE" bench --serve --listen "10.201.0.2:$port" >"$out" 2>"$WORK/serve$port.err" &
    for _ in $(seq 1 200); do [ -s "$out" ] && break; sleep 0.05; done
    head -n 1 "$out"
}
# The summary's mean rate in Mbit/s from a `sluice bench --json` output file.
mbit() { grep '"summary"' "$1" | sed -E 's/.*"mb_per_s":([0-9.]+).*/\1/' | awk '{printf "%.1f", $1 * 8}'; }

echo "Link: $RATE Mbit/s, $RTT ms RTT, loss $LOSS, wan-emu default 50 ms queue; each run $SECS s." >&2
want() { case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
r1=nan r2=nan r3=nan rc=nan r4=nan base=nan loaded=nan
# 1. Two Sluice transfers together.
if want two; then
t1=$(serve 7000); t2=$(serve 7001)
ON_A "$SLUICE" bench --json --time "$SECS" "$t1" >"$WORK/s1.json" 2>"$WORK/s1.err" &
p1=$!
ON_A "$SLUICE" bench --json --time "$SECS" "$t2" >"$WORK/s2.json" 2>"$WORK/s2.err" &
p2=$!
wait $p1 $p2 || true
r1=$(mbit "$WORK/s1.json"); r2=$(mbit "$WORK/s2.json")
pkill -f "$SLUICE bench --serve" 2>/dev/null || true
fi

# 2. Sluice beside TCP cubic.
if want cubic; then
ON_B iperf3 -s -1 -p 5201 >/dev/null 2>&1 &
sleep 0.5
t3=$(serve 7002)
ON_A iperf3 -c 10.201.0.2 -p 5201 -C cubic -t "$SECS" -J >"$WORK/iperf.json" 2>"$WORK/iperf.err" &
pi=$!
ON_A "$SLUICE" bench --json --time "$SECS" "$t3" >"$WORK/s3.json" 2>"$WORK/s3.err" &
ps=$!
wait $pi $ps || true
rc=$(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print('%.1f' % (d['end']['sum_received']['bits_per_second']/1e6))" "$WORK/iperf.json" 2>/dev/null || echo nan)
r3=$(mbit "$WORK/s3.json")
pkill -f "$SLUICE bench --serve" 2>/dev/null || true
fi

# 3. Queueing delay: ping alone, then ping during a Sluice transfer (its second half, past
# start-up).
if want delay; then
base=$(ON_A ping -q -c 20 -i 0.2 10.201.0.2 | sed -nE 's/.*= [0-9.]+\/([0-9.]+)\/.*/\1/p')
t4=$(serve 7003)
ON_A "$SLUICE" bench --json --time "$SECS" "$t4" >"$WORK/s4.json" 2>"$WORK/s4.err" &
ps=$!
sleep $((SECS / 2))
loaded=$(ON_A ping -q -c $((SECS * 2)) -i 0.2 10.201.0.2 | sed -nE 's/.*= [0-9.]+\/([0-9.]+)\/.*/\1/p')
wait $ps || true
r4=$(mbit "$WORK/s4.json")
fi

echo "Command: \`bench/fairness.sh --rate-mbit $RATE --rtt-ms $RTT --loss $LOSS --seconds $SECS --only $ONLY\`"
echo
echo "| case | figure | target |"
echo "|---|---|---|"
want two && awk -v a="$r1" -v b="$r2" 'BEGIN {lo = a < b ? a : b; hi = a < b ? b : a; printf "| two Sluice transfers | %s and %s Mbit/s, min ÷ max %.2f | within 30 %% (≥ 0.70) |\n", a, b, (hi > 0 ? lo / hi : 0)}'
want cubic && awk -v s="$r3" -v c="$rc" -v r="$RATE" 'BEGIN {printf "| Sluice beside TCP cubic | Sluice %s, cubic %s Mbit/s: cubic has %.0f %% of the link | cubic ≥ 33 %% |\n", s, c, 100 * c / r}'
want delay && awk -v b="$base" -v l="$loaded" -v s="$r4" -v rtt="$RTT" 'BEGIN {printf "| queueing delay added (loss-free) | ping %.1f ms alone, %.1f ms during a transfer at %s Mbit/s: +%.1f ms, %.0f %% of the base RTT | < 50 %% |\n", b, l, s, l - b, 100 * (l - b) / b}'
true
