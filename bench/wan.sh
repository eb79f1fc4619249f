#!/usr/bin/env bash
# bench/wan.sh — Sluice and its peers across an emulated long, lossy link (shared/tools/wan-emu):
# goodput as a share of the link rate, bytes that crossed the bottleneck, and the emulator's
# queue drops, for a grid of round-trip times and loss rates, peers in the same run. Runs as
# root; everything happens in network namespaces this script creates and removes.
#
#   bench/wan.sh [--size 1G] [--rate-mbit 200] [--rtts 50,100,300] [--losses 0,0.001,0.01,0.05,0.1]
#                [--peers sluice-tcp,scp,rsync,qcp] [--peer-rtts 100] [--peer-losses 0,0.01] [--peer-ccs cubic,bbr]
#                [--extra] [--warm] [--timeout 300] [--sluice-args "..."] [--data random|log] [--no-build]
#
# Every scenario starts Sluice cold: a fresh cache directory, so no figures of an earlier run
# to the same address (`~/.cache/sluice/paths`) are used. --warm runs Sluice a second time on
# each grid link, starting from what the first run measured (careful resume), as a repeated
# transfer between the same two hosts does.
# --data log sends a web-server access log (bench/genlog.py) instead of random bytes: Sluice
# runs with its default --compress auto and again with --compress off, scp with -C and rsync
# with -z.
# --extra adds bursty loss (1 %, mean burst 10 frames), a shallow 10 ms queue (1 % loss), an
# asymmetric link (the return path at a tenth of the rate), and jitter of ±5 and ±20 ms (frames
# never overtake each other) and ±5 ms that reorders, each at 100 ms RTT; Sluice over
# `--transport tcp` runs the reordering one too.
# scp and rsync run twice, with TCP cubic and with TCP BBR (set in side a's namespace); qcp uses
# its BBR and is given the link's rate and RTT. sluice-tcp is Sluice's TCP transport
# (`--transport tcp`, which asks the kernel for BBR). A run past --timeout is "did not finish".
set -euo pipefail
SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
SIZE=1G RATE=200 RTTS=50,100,300 LOSSES=0,0.001,0.01,0.05,0.1 PEERS=sluice-tcp,scp,rsync,qcp
PEER_RTTS=100 PEER_LOSSES=0,0.01 PEER_CCS=cubic,bbr EXTRA=0 WARM=0 TIMEOUT=300 BUILD=1 SLUICE_ARGS="" DATA=random
while [ $# -gt 0 ]; do
    case $1 in
        --size) SIZE=$2; shift 2 ;;
        --rate-mbit) RATE=$2; shift 2 ;;
        --rtts) RTTS=$2; shift 2 ;;
        --losses) LOSSES=$2; shift 2 ;;
        --peers) PEERS=$2; shift 2 ;;
        --peer-rtts) PEER_RTTS=$2; shift 2 ;;
        --peer-losses) PEER_LOSSES=$2; shift 2 ;;
        --peer-ccs) PEER_CCS=$2; shift 2 ;;
        --extra) EXTRA=1; shift ;;
        --warm) WARM=1; shift ;;
        --timeout) TIMEOUT=$2; shift 2 ;;
        --sluice-args) SLUICE_ARGS=$2; shift 2 ;;
        --data) DATA=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        *) sed -n '2,21p' "$0" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces, sshd)" >&2; exit 2; }
SHARED=${SHARED:-$REPO/../shared}
WAN=$SHARED/tools/wan-emu/wan
SLUICE=${SLUICE:-$REPO/target/release/sluice}
QCP=${QCP:-$SCRIPT_DIR/.tools/bin/qcp}
[ "$BUILD" = 1 ] && (cd "$REPO" && cargo build --release -p sluice-cli >&2)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sluice-wan.XXXXXX")
LINK=sluicebench
# shellcheck source=bench/wanlink.sh
. "$SCRIPT_DIR/wanlink.sh"
wanlink_setup "$WORK" "$LINK"
BYTES=$(numfmt --from=iec "$SIZE")
case $DATA in
    random) head -c "$BYTES" /dev/urandom > "$WORK/data.bin" ;;
    log)
        # 64 MiB pieces, each from its own seed (Python makes ~3.5 MB/s).
        for ((i = 0; i * (64 << 20) < BYTES; i++)); do python3 "$SCRIPT_DIR/genlog.py" $((64 << 20)) "$i"; done |
            head -c "$BYTES" > "$WORK/data.bin" ;;
    *) echo "--data random or log, not $DATA" >&2; exit 2 ;;
esac
want_peer() { [[ ",$PEERS," == *",$1,"* ]]; }
PEERS=${PEERS:-none}
in_list() { [[ ",$2," == *",$1,"* ]]; }

# A one-connection-at-a-time sshd for side b, keys made here.
SSHD_DIR=$WORK/ssh
mkdir -p "$SSHD_DIR" /run/sshd && chmod 700 "$SSHD_DIR"
ssh-keygen -q -t ed25519 -N '' -f "$SSHD_DIR/host" && ssh-keygen -q -t ed25519 -N '' -f "$SSHD_DIR/client"
cp "$SSHD_DIR/client.pub" "$SSHD_DIR/authorized_keys"
cat > "$SSHD_DIR/sshd_config" <<EOF
Port 2222
ListenAddress 10.201.0.2
HostKey $SSHD_DIR/host
PidFile $SSHD_DIR/sshd.pid
AuthorizedKeysFile $SSHD_DIR/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
cat > "$SSHD_DIR/ssh_config" <<EOF
Host peer
    HostName 10.201.0.2
    Port 2222
    User root
    IdentityFile $SSHD_DIR/client
    IdentitiesOnly yes
    BatchMode yes
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
    LogLevel ERROR
    Ciphers aes128-gcm@openssh.com
EOF
SSH="ssh -F $SSHD_DIR/ssh_config"

# link_up ONE_WAY_MS LOSS [wan-emu flags...]
link_up() {
    local delay=$1 loss=$2; shift 2
    # The emulator stops forwarding after --max-seconds: long enough for Sluice and every peer.
    "$WAN" up "$LINK" --delay-ms "$delay" --loss "$loss" --rate-mbit "$RATE" --max-seconds $((TIMEOUT * 8 + 600)) "$@" >/dev/null
    rm -rf "$WORK/dest" "$WORK/cache" && mkdir -p "$WORK/dest" "$WORK/cache"
}

# Prints "bytes queue_drops kernel_drops" of the a->b direction so far; bytes are the frames
# that entered the link: forwarded ones plus those lost on the way (at the mean frame size).
# Bytes print with %.0f: mawk's %d stops at 2^31 - 1, which the counters pass after 2 GB (a
# 2 GiB run, or a 1 GiB run after another tool's on the same link), and the wire column then
# read 1.000 or less.
link_counters() {
    local line
    line=$("$WAN" stats "$LINK" 2>&1 | grep 'a->b' | tail -n 1 || true)
    if [ -z "$line" ]; then echo "0 0 0"; return; fi
    sed -E 's/.*fwd_pkts=([0-9]+).*fwd_bytes=([0-9]+).*loss_drops=([0-9]+).*queue_drops=([0-9]+).*kernel_drops=([0-9]+).*/\1 \2 \3 \4 \5/' <<<"$line" |
        awk '{ printf "%.0f %d %d\n", $2 + ($1 > 0 ? $3 * $2 / $1 : 0), $4, $5 }'
}

# row NAME SECONDS|"" NOTE: one table line from the emulator's counters.
row() {
    local name=$1 secs=$2 note=$3 fwd queue kdrops
    read -r fwd queue kdrops < <(link_counters)
    fwd=$((fwd - BASE[0])) queue=$((queue - BASE[1])) kdrops=$((kdrops - BASE[2]))
    if [ -n "$secs" ]; then
        printf '| %s | %s | %s | %.1f | %.1f %% | %.3f | %s | %s | %s |\n' "$SCEN" "$name" "$note" "$secs" \
            "$(echo "$BYTES * 8 / $secs / ($RATE * 1000000) * 100" | bc -l)" \
            "$(echo "$fwd / $BYTES" | bc -l)" "$queue" "$kdrops" "verified"
    else
        printf '| %s | %s | %s | > %s | — | — | %s | %s | did not finish |\n' "$SCEN" "$name" "$note" "$TIMEOUT" "$queue" "$kdrops"
    fi
}

now() { date +%s.%N; }
# The counters before a tool starts: each row shows what that tool alone did.
mark() { read -ra BASE < <(link_counters); }

# run_sluice [NAME EXTRA_ARGS]
run_sluice() {
    local name=${1:-sluice} args=${2:-}
    # The old ticket file goes first, or the loop below may read it before it is truncated.
    rm -rf "$WORK/dest" "$WORK/recv.out" && mkdir -p "$WORK/dest"
    "$WAN" exec "$LINK" b "$SLUICE" recv "$WORK/dest" --listen 10.201.0.2:7000 \
        >"$WORK/recv.out" 2>"$WORK/recv.err" &
    local t0 t1 ticket=""
    for _ in $(seq 1 200); do [ -s "$WORK/recv.out" ] && break; sleep 0.05; done
    ticket=$(head -n 1 "$WORK/recv.out")
    if [ -z "$ticket" ]; then
        row "$name" "" "receiver printed no ticket: $(tail -n 1 "$WORK/recv.err" | cut -c1-60)"
        pkill -f "$SLUICE recv" 2>/dev/null || true
        wait 2>/dev/null || true
        return
    fi
    mark
    t0=$(now)
    # shellcheck disable=SC2086
    if XDG_CACHE_HOME="$WORK/cache" timeout "$TIMEOUT" "$WAN" exec "$LINK" a "$SLUICE" --json send $SLUICE_ARGS $args "$WORK/data.bin" "$ticket" \
        >"$WORK/send.json" 2>"$WORK/send.err"; then
        t1=$(now)
        cmp -s "$WORK/data.bin" "$WORK/dest/data.bin" || { echo "sluice: content differs" >&2; exit 1; }
        local path
        path=$(tail -n 1 "$WORK/send.json" | sed -E 's/.*"path":\{([^}]*)\}.*/\1/')
        local lost rtt
        lost=$(sed -E 's/.*"loss":([0-9.e-]+).*/\1/' <<<"$path")
        rtt=$(sed -E 's/.*"rtt_ms":([0-9.]+).*/\1/' <<<"$path")
        row "$name" "$(echo "$t1 - $t0" | bc -l)" "$(printf 'RTT %.0f ms, %.2f %% lost' "$rtt" "$(echo "$lost * 100" | bc -l)")"
    else
        row "$name" "" "$(tail -n 1 "$WORK/send.err" | cut -c1-80)"
    fi
    # Both ends' warnings (stalls, errors) for the record, on stderr.
    grep -h -E "WARN|ERROR|error" "$WORK/send.err" "$WORK/recv.err" 2>/dev/null | sed "s/^/[$SCEN, $name] /" >&2 || true
    pkill -f "$SLUICE recv" 2>/dev/null || true
    wait 2>/dev/null || true
}

# run_ssh NAME CC CMD...: a fresh sshd in b, CMD from a with TCP congestion control CC.
run_ssh() {
    local name=$1 cc=$2; shift 2
    "$WAN" exec "$LINK" a sysctl -qw net.ipv4.tcp_congestion_control="$cc"
    "$WAN" exec "$LINK" b sysctl -qw net.ipv4.tcp_congestion_control="$cc"
    rm -rf "$WORK/dest" && mkdir -p "$WORK/dest"
    "$WAN" exec "$LINK" b /usr/sbin/sshd -D -e -f "$SSHD_DIR/sshd_config" >"$WORK/sshd.log" 2>&1 &
    for _ in $(seq 1 100); do "$WAN" exec "$LINK" a bash -c 'exec 3<>/dev/tcp/10.201.0.2/2222' 2>/dev/null && break; sleep 0.1; done
    local t0 t1
    mark
    t0=$(now)
    if timeout "$TIMEOUT" "$WAN" exec "$LINK" a "$@" >"$WORK/peer.out" 2>&1; then
        t1=$(now)
        cmp -s "$WORK/data.bin" "$WORK/dest/data.bin" || { row "$name" "" "content differs"; return; }
        row "$name" "$(echo "$t1 - $t0" | bc -l)" "TCP $cc"
    else
        row "$name" "" "TCP $cc"
    fi
    pkill -f "sshd -D -e -f $SSHD_DIR" 2>/dev/null || true
    wait 2>/dev/null || true
}

run_peers() {
    local rtt_ms=$1
    local z_scp="" z_rsync=""
    [ "$DATA" = log ] && z_scp=-C z_rsync=-z
    want_peer sluice-tcp && run_sluice "sluice --transport tcp" "--transport tcp"
    for cc in ${PEER_CCS//,/ }; do
        # shellcheck disable=SC2086
        want_peer scp && run_ssh "scp $z_scp" "$cc" scp $z_scp -F "$SSHD_DIR/ssh_config" "$WORK/data.bin" "peer:$WORK/dest/"
        # shellcheck disable=SC2086
        want_peer rsync && run_ssh "rsync $z_rsync" "$cc" rsync $z_rsync -e "$SSH" "$WORK/data.bin" "peer:$WORK/dest/"
    done
    if want_peer qcp; then
        if [ -x "$QCP" ]; then
            local bps=$((RATE * 1000000 / 8))
            run_ssh qcp bbr "$QCP" --ssh-config "$SSHD_DIR/ssh_config" -S "-F $SSHD_DIR/ssh_config" \
                --remote-qcp-binary "$QCP" --congestion bbr --rx "$bps" --tx "$bps" --rtt "$rtt_ms" \
                "$WORK/data.bin" "peer:$WORK/dest/data.bin"
        else
            printf '| %s | qcp | not installed (`cargo install qcp --root bench/.tools`) | — | — | — | — | — | — |\n' "$SCEN"
        fi
    fi
}

echo "Command: \`bench/wan.sh --size $SIZE --rate-mbit $RATE --rtts $RTTS --losses $LOSSES --peers $PEERS --peer-rtts $PEER_RTTS --peer-losses $PEER_LOSSES --peer-ccs $PEER_CCS --data $DATA$([ "$EXTRA" = 1 ] && echo ' --extra')$([ "$WARM" = 1 ] && echo ' --warm')\`  "
echo "Link: ${RATE} Mbit/s each way, 50 ms drop-tail queue unless said; loss each way; kernel $(uname -r); $(git -C "$REPO" rev-parse --short HEAD); $(date -u '+%Y-%m-%d %H:%M UTC')  "
echo "Goodput: file bytes × 8 ÷ wall time of the whole command (connection and verification included) ÷ link rate. Wire: bytes of the frames a→b that left the bottleneck (those lost after it included) ÷ file bytes."
echo
echo "| path | tool | note | seconds | goodput, % of link | wire ÷ payload | queue drops | emulator overload drops | result |"
echo "|---|---|---|---:|---:|---:|---:|---:|---|"
IFS=, read -ra rtts <<<"$RTTS"
IFS=, read -ra losses <<<"$LOSSES"
for rtt in "${rtts[@]}"; do
    for loss in "${losses[@]}"; do
        SCEN="${rtt} ms, ${loss} loss"
        link_up $((rtt / 2)) "$loss"
        run_sluice
        [ "$WARM" = 1 ] && run_sluice "sluice, second run"
        [ "$DATA" = log ] && run_sluice "sluice --compress off" "--compress off"
        if in_list "$rtt" "$PEER_RTTS" && in_list "$loss" "$PEER_LOSSES"; then
            run_peers "$rtt"
        fi
        "$WAN" down "$LINK" >/dev/null 2>&1 || true
    done
done
if [ "$EXTRA" = 1 ]; then
    SCEN="100 ms, 1 % loss in bursts of 10"; link_up 50 0.01 --loss-burst 10; run_sluice
    "$WAN" down "$LINK" >/dev/null 2>&1 || true
    SCEN="100 ms, 1 % loss, 10 ms queue"; link_up 50 0.01 --queue-ms 10; run_sluice
    "$WAN" down "$LINK" >/dev/null 2>&1 || true
    SCEN="100 ms, return path at a tenth"; link_up 50 0 --ba-rate-mbit $((RATE / 10)); run_sluice
    "$WAN" down "$LINK" >/dev/null 2>&1 || true
    for j in 5 20; do
        SCEN="100 ms, jitter ±$j ms"; link_up 50 0 --jitter-ms "$j"; run_sluice
        "$WAN" down "$LINK" >/dev/null 2>&1 || true
    done
    SCEN="100 ms, jitter ±5 ms, reordering"; link_up 50 0 --jitter-ms 5 --reorder
    run_sluice; run_sluice "sluice --transport tcp" "--transport tcp"
    "$WAN" down "$LINK" >/dev/null 2>&1 || true
fi
