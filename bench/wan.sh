#!/usr/bin/env bash
# bench/wan.sh — Sluice over an emulated long, lossy link (shared/tools/wan-emu): cubic, BBR and
# BBR capped near the bandwidth-delay product, time and bytes on the wire. Runs as root;
# everything happens in network namespaces this script creates and removes.
#
#   bench/wan.sh [--size 64M] [--delay-ms 50] [--loss 0.01] [--rate-mbit 200] [--no-build]
set -euo pipefail
SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
SIZE=64M DELAY=50 LOSS=0.01 RATE=200 BUILD=1
while [ $# -gt 0 ]; do
    case $1 in
        --size) SIZE=$2; shift 2 ;;
        --delay-ms) DELAY=$2; shift 2 ;;
        --loss) LOSS=$2; shift 2 ;;
        --rate-mbit) RATE=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        *) echo "usage: $0 [--size 64M] [--delay-ms 50] [--loss 0.01] [--rate-mbit 200] [--no-build]" >&2; exit 2 ;;
    esac
done
SHARED=${SHARED:-$REPO/../shared}
WAN=$SHARED/tools/wan-emu/wan
SLUICE=${SLUICE:-$REPO/target/release/sluice}
[ "$BUILD" = 1 ] && (cd "$REPO" && cargo build --release -p sluice-cli >&2)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sluice-wan.XXXXXX")
if [ -z "${WAN_EMU_BIN:-}" ]; then
    cargo build --release --locked --manifest-path "$SHARED/tools/wan-emu/Cargo.toml" \
        --target-dir "$WORK/wan-target" >&2
    export WAN_EMU_BIN=$WORK/wan-target/release/wan-emu
fi
LINK=sluicebench
cleanup() { "$WAN" down "$LINK" >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT
head -c "$(numfmt --from=iec "$SIZE")" /dev/urandom > "$WORK/data.bin"

echo "Command: \`bench/wan.sh --size $SIZE --delay-ms $DELAY --loss $LOSS --rate-mbit $RATE\`  "
echo "Link: ${RATE} Mbit/s, RTT $((2 * DELAY)) ms, loss $LOSS each way; kernel $(uname -r); $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "| congestion | seconds | Mbit/s | UDP bytes sent+received | result |"
echo "|---|---:|---:|---:|---|"
for cc in cubic bbr bbr-capped; do
    "$WAN" up "$LINK" --delay-ms "$DELAY" --loss "$LOSS" --rate-mbit "$RATE" --max-seconds 300 >/dev/null
    rm -rf "$WORK/dest"
    "$WAN" exec "$LINK" b "$SLUICE" recv "$WORK/dest" --listen 10.201.0.2:7000 \
        --advertise 10.201.0.2:7000 >"$WORK/recv.out" 2>"$WORK/recv.err" &
    for _ in $(seq 1 100); do [ -s "$WORK/recv.out" ] && break; sleep 0.05; done
    ticket=$(head -n 1 "$WORK/recv.out")
    start=$(date +%s.%N)
    if timeout 120 "$WAN" exec "$LINK" a "$SLUICE" --json send --congestion "$cc" "$WORK/data.bin" "$ticket" \
        >"$WORK/send.json" 2>"$WORK/send.err"; then
        end=$(date +%s.%N)
        secs=$(echo "$end - $start" | bc -l)
        bytes=$(stat -c %s "$WORK/data.bin")
        wire=$(tail -n 1 "$WORK/send.json" | sed 's/.*"wire_bytes":\([0-9]*\).*/\1/')
        printf '| %s | %.1f | %.1f | %s | verified |\n' "$cc" "$secs" "$(echo "$bytes * 8 / $secs / 1000000" | bc -l)" "$wire"
    else
        printf '| %s | > 120 | — | — | did not finish in 120 s |\n' "$cc"
    fi
    "$WAN" down "$LINK" >/dev/null 2>&1 || true
    wait 2>/dev/null || true
done
