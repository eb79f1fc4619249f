#!/usr/bin/env bash
# bench/db-wan.sh — moving a PostgreSQL database over an emulated long, lossy link (wan-emu):
# `sluice db send` on side a → `sluice db recv` on side b, against `pg_dump -Fc | socat` →
# `socat | pg_restore` (the dump crossing the link on one TCP connection), the directory
# format as its manual has it for speed (`pg_dump -Fd -jN` on side a, the dump carried across by
# `tar | socat` → `socat | tar`, `pg_restore -jN` on side b: three steps, one after the other)
# and `pgcopydb clone` run at the target's side, reading the source across the link. TCP uses BBR in both
# namespaces (the stronger of the kernel's choices on a lossy path).
#
#   bench/db-wan.sh [--scale 20] [--wide-mb 200] [--jobs 2] [--rtt-ms 50] [--loss 0.005]
#                   [--rate-mbit 200] [--timeout 600] [--only sluice,pipe,dir,pgcopydb] [--no-build]
#
# The source cluster runs inside side a, listening on 10.201.0.1 (for pgcopydb) and on a Unix
# socket (for Sluice's sender and pg_dump, which run next to it); the target cluster on the
# host, reached from side b by its Unix socket. Only the tools' own traffic crosses the link.
# Each line: wall time, goodput as a share of the link, the emulator's queue drops. Needs root.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
SCALE=20 WIDE_MB=200 JOBS=2 RTT=50 LOSS=0.005 RATE=200 TIMEOUT=600 ONLY=sluice,pipe,dir,pgcopydb BUILD=1
while [ $# -gt 0 ]; do
    case $1 in
        --scale) SCALE=$2; shift ;;
        --wide-mb) WIDE_MB=$2; shift ;;
        --jobs) JOBS=$2; shift ;;
        --rtt-ms) RTT=$2; shift ;;
        --loss) LOSS=$2; shift ;;
        --rate-mbit) RATE=$2; shift ;;
        --timeout) TIMEOUT=$2; shift ;;
        --only) ONLY=$2; shift ;;
        --no-build) BUILD=0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
wants() { [[ ",$ONLY," == *",$1,"* ]]; }
SHARED=${SHARED:-$REPO/../shared}
WAN=$SHARED/tools/wan-emu/wan
LINK=sdb
[ "$BUILD" = 1 ] && cargo build --release --quiet -p sluice-cli
SLUICE=$REPO/target/release/sluice
WORK=$(mktemp -d /tmp/sluice-dbwan.XXXX)
# shellcheck source=bench/wanlink.sh
. "$REPO/bench/wanlink.sh"
wanlink_setup "$WORK/emu" "$LINK"
# shellcheck source=bench/dbdata.sh
. "$REPO/bench/dbdata.sh"
DBDATA_ON_EXIT=wanlink_cleanup
dbdata_init "$WORK"

"$WAN" up "$LINK" --delay-ms $((RTT / 2)) --loss "$LOSS" --rate-mbit "$RATE" --max-seconds 7200 >/dev/null
for side in a b; do "$WAN" exec "$LINK" "$side" sysctl -qw net.ipv4.tcp_congestion_control=bbr; done

for c in a b; do echo "host all all 10.201.0.0/24 trust" >> "$WORK/$c/data/pg_hba.conf"; done
OPTS="-F -p 5432 -c shared_buffers=256MB -c max_wal_size=8GB -c max_connections=60"
"$WAN" exec "$LINK" a setpriv --reuid=65534 --regid=65534 --clear-groups -- "$BIN/pg_ctl" \
    -D "$WORK/a/data" -l "$WORK/a/log" -w -o "$OPTS -k $WORK/a -c listen_addresses=10.201.0.1" start >/dev/null
as_pg "$BIN/pg_ctl" -D "$WORK/b/data" -l "$WORK/b/log" -w -o "$OPTS -k $WORK/b -c listen_addresses=''" start >/dev/null
A="host=$WORK/a port=5432 user=postgres"
B="host=$WORK/b port=5432 user=postgres"
psql -d "$A dbname=postgres" -c "CREATE DATABASE src"
dbdata_load "$A dbname=src" "$SCALE" "$WIDE_MB"
dbdata_settle "$A dbname=src" "$B dbname=postgres"
BYTES=$(dbdata_bytes "$A dbname=src" sum)
printf 'tables: %.2f GB; link %s Mbit/s, %s ms RTT, %s loss; jobs %s\n' \
    "$(echo "$BYTES / 1000000000" | bc -l)" "$RATE" "$RTT" "$LOSS" "$JOBS"

fresh() { psql -d "$B dbname=postgres" -c "DROP DATABASE IF EXISTS dst" -c "CREATE DATABASE dst"; }
check() { dbdata_same "$A dbname=src" "$B dbname=dst"; }
declare -A WALL
line() { # name, seconds, status
    local share
    share=$(echo "100 * $BYTES * 8 / ($2 * $RATE * 1000000)" | bc -l)
    WALL[$1]=$2
    printf '%-30s %8.1f s  %5.1f %% of the link (table bytes / time)  %s\n' "$1" "$2" "$share" "$3"
}
run_timed() { # name, command...
    local name=$1; shift
    local t0 t1 status=ok
    t0=$(date +%s.%N)
    timeout "$TIMEOUT" "$@" >"$WORK/$name.out" 2>&1 || status="FAILED or did not finish in ${TIMEOUT} s"
    t1=$(date +%s.%N)
    [ "$status" = ok ] && { check || status="row counts differ"; }
    line "$name" "$(echo "$t1 - $t0" | bc -l)" "$status"
}

if wants sluice; then
    fresh
    "$WAN" exec "$LINK" b "$SLUICE" db recv "$B dbname=dst" --listen 10.201.0.2:7000 --advertise 10.201.0.2:7000 >"$WORK/ticket" 2>"$WORK/recv.log" &
    for _ in $(seq 100); do [ -s "$WORK/ticket" ] && break; sleep 0.1; done
    run_timed sluice "$WAN" exec "$LINK" a "$SLUICE" db send "$A dbname=src" "$(head -1 "$WORK/ticket")" --jobs "$JOBS"
    wait || true
    tail -1 "$WORK/sluice.out"
fi
if wants pipe; then
    fresh
    t0=$(date +%s.%N)
    "$WAN" exec "$LINK" b timeout "$TIMEOUT" bash -c \
        "socat -u TCP-LISTEN:7001,reuseaddr STDOUT | '$BIN/pg_restore' -d '$B dbname=dst'" >"$WORK/restore.log" 2>&1 &
    restore=$!
    for _ in $(seq 100); do
        "$WAN" exec "$LINK" b ss -ltn 2>/dev/null | grep -q ':7001 ' && break
        sleep 0.1
    done
    status=ok
    "$WAN" exec "$LINK" a timeout "$TIMEOUT" bash -c \
        "'$BIN/pg_dump' -Fc -d '$A dbname=src' | socat -u STDIN TCP:10.201.0.2:7001" || status=FAILED
    wait "$restore" || status="FAILED: $(tail -2 "$WORK/restore.log")"
    t1=$(date +%s.%N)
    [ "$status" = ok ] && { check || status="row counts differ"; }
    line "pg_dump -Fc | pg_restore" "$(echo "$t1 - $t0" | bc -l)" "$status"
fi
if wants dir; then
    fresh
    rm -rf "$WORK/dump-a" "$WORK/dump-b"
    mkdir -p "$WORK/dump-b"
    t0=$(date +%s.%N)
    status=ok
    "$WAN" exec "$LINK" a timeout "$TIMEOUT" "$BIN/pg_dump" -Fd -j "$JOBS" -f "$WORK/dump-a" \
        -d "$A dbname=src" >"$WORK/dump.log" 2>&1 || status="FAILED: pg_dump"
    t_dump=$(date +%s.%N)
    "$WAN" exec "$LINK" b timeout "$TIMEOUT" bash -c \
        "socat -u TCP-LISTEN:7002,reuseaddr STDOUT | tar -x -C '$WORK/dump-b'" >"$WORK/untar.log" 2>&1 &
    untar=$!
    for _ in $(seq 100); do
        "$WAN" exec "$LINK" b ss -ltn 2>/dev/null | grep -q ':7002 ' && break
        sleep 0.1
    done
    "$WAN" exec "$LINK" a timeout "$TIMEOUT" bash -c \
        "tar -c -C '$WORK/dump-a' . | socat -u STDIN TCP:10.201.0.2:7002" || status="FAILED: tar | socat"
    wait "$untar" || status="FAILED: socat | tar"
    t_carry=$(date +%s.%N)
    "$WAN" exec "$LINK" b timeout "$TIMEOUT" "$BIN/pg_restore" -j "$JOBS" -d "$B dbname=dst" \
        "$WORK/dump-b" >"$WORK/restore-dir.log" 2>&1 || status="FAILED: $(tail -2 "$WORK/restore-dir.log")"
    t1=$(date +%s.%N)
    [ "$status" = ok ] && { check || status="row counts differ"; }
    line "pg_dump -Fd -j$JOBS + pg_restore -j$JOBS" "$(echo "$t1 - $t0" | bc -l)" "$status"
    printf '  (dump %.1f s, %s across the link in %.1f s, restore %.1f s)\n' \
        "$(echo "$t_dump - $t0" | bc -l)" "$(du -sh "$WORK/dump-a" | cut -f1)" \
        "$(echo "$t_carry - $t_dump" | bc -l)" "$(echo "$t1 - $t_carry" | bc -l)"
    rm -rf "$WORK/dump-a" "$WORK/dump-b"
fi
if wants pgcopydb; then
    fresh
    mkdir -p "$WORK/pgcopydb"
    run_timed "pgcopydb clone" "$WAN" exec "$LINK" b pgcopydb clone \
        --source "host=10.201.0.1 port=5432 user=postgres dbname=src" --target "$B dbname=dst" \
        --table-jobs "$JOBS" --index-jobs "$JOBS" --dir "$WORK/pgcopydb"
fi
if [ -n "${WALL[sluice]:-}" ]; then
    for k in "${!WALL[@]}"; do
        [ "$k" = sluice ] || printf '%s takes %.2f× the time of sluice\n' "$k" \
            "$(echo "${WALL[$k]} / ${WALL[sluice]}" | bc -l)"
    done
fi
echo "emulator: $("$WAN" stats "$LINK" 2>&1 | tail -1)"
