#!/usr/bin/env bash
# bench/db.sh — moving a PostgreSQL database on loopback: `sluice db copy` against
# `pg_dump -Fd -jN` + `pg_restore -jN`, `pg_dump -Fc | pg_restore` and `pgcopydb clone`, in one run,
# between two throwaway clusters on this host; then Sluice killed with SIGKILL half way and run
# again, to count what the interruption cost.
#
#   bench/db.sh [--scale 100] [--wide-mb 1000] [--jobs 2] [--only sluice,dir,pipe,pgcopydb,kill]
#               [--no-build] [--baseline PATH]
#
# --baseline PATH: also run another build of sluice (e.g. the last release) right after this
# one, on the same clusters, as the row "sluice baseline".
# Data: `pgbench -i -s SCALE` plus a table `wide` (bigint key, 128 bytes of bytea that do not
# compress, jsonb with a compressible note) of about WIDE_MB MB.
# Both clusters run with fsync off and the same settings for every tool. Each line: wall time,
# the tool's own CPU seconds per GB of table (user + system, from /usr/bin/time; the servers' CPU
# is not counted for anyone), its peak RSS, and the ratio of its time to Sluice's. Needs root (the
# clusters run as nobody), PostgreSQL's server and client, pgbench and pgcopydb.
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=100 WIDE_MB=1000 JOBS=2 ONLY=sluice,dir,pipe,pgcopydb,kill BUILD=1 BASELINE=
while [ $# -gt 0 ]; do
    case $1 in
        --scale) SCALE=$2; shift ;;
        --wide-mb) WIDE_MB=$2; shift ;;
        --jobs) JOBS=$2; shift ;;
        --only) ONLY=$2; shift ;;
        --no-build) BUILD=0 ;;
        --baseline) BASELINE=$2; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
wants() { [[ ",$ONLY," == *",$1,"* ]]; }
[ "$BUILD" = 1 ] && cargo build --release --quiet -p sluice-cli
SLUICE=$PWD/target/release/sluice
WORK=$(mktemp -d /tmp/sluice-db-bench.XXXX)
# shellcheck source=bench/dbdata.sh
. bench/dbdata.sh
dbdata_init "$WORK"
for c in a b; do
    as_pg "$BIN/pg_ctl" -D "$WORK/$c/data" -l "$WORK/$c/log" -w -o \
        "-F -k $WORK/$c -p 5432 -c listen_addresses='' -c shared_buffers=256MB -c max_wal_size=8GB -c checkpoint_timeout=30min -c max_connections=60" \
        start >/dev/null
done
A="host=$WORK/a port=5432 user=postgres"
B="host=$WORK/b port=5432 user=postgres"
psql -d "$A dbname=postgres" -c "CREATE DATABASE src"
dbdata_load "$A dbname=src" "$SCALE" "$WIDE_MB"
# The first tool must not pay for the load (hint bits, dirty pages) or for the target's first WAL.
dbdata_settle "$A dbname=src" "$B dbname=postgres"
BYTES=$(dbdata_bytes "$A dbname=src" sum)
LARGEST=$(dbdata_bytes "$A dbname=src" max)
GB=$(echo "$BYTES / 1000000000" | bc -l)
printf 'tables: %.2f GB on disk (largest %.2f GB); jobs %s\n' "$GB" "$(echo "$LARGEST / 1000000000" | bc -l)" "$JOBS"

fresh() {
    psql -d "$B dbname=postgres" -c "DROP DATABASE IF EXISTS dst" -c "CREATE DATABASE dst"
    rm -rf "$WORK/dump"
}
# Same row count in every table of dst as of src, or the run does not count.
check() { dbdata_same "$A dbname=src" "$B dbname=dst" || { echo "$1: row counts differ" >&2; return 1; }; }
declare -A WALL
report() { # name, time files...
    local name=$1; shift
    local wall=0 cpu=0 rss=0
    for f in "$@"; do
        read -r e u s m < "$f"
        wall=$(echo "$wall + $e" | bc -l); cpu=$(echo "$cpu + $u + $s" | bc -l)
        [ "$m" -gt "$rss" ] && rss=$m
    done
    WALL[$name]=$wall
    printf '%-34s %8.1f s  %7.2f CPU s/GB  %7.1f MiB peak RSS\n' "$name" "$wall" \
        "$(echo "$cpu / $GB" | bc -l)" "$(echo "$rss / 1024" | bc -l)"
}
T() { /usr/bin/time -f "%e %U %S %M" -o "$1" "${@:2}"; }

if wants sluice; then
    fresh
    T "$WORK/t1" "$SLUICE" db copy "$A dbname=src" "$B dbname=dst" --jobs "$JOBS" 2>"$WORK/sluice.log" \
        || { cat "$WORK/sluice.log" >&2; exit 1; }
    check sluice
    report "sluice db copy" "$WORK/t1"
    tail -1 "$WORK/sluice.log"
    if [ -n "$BASELINE" ]; then
        fresh
        T "$WORK/t1" "$BASELINE" db copy "$A dbname=src" "$B dbname=dst" --jobs "$JOBS" 2>"$WORK/sluice.log" \
            || { cat "$WORK/sluice.log" >&2; exit 1; }
        check baseline
        report "sluice baseline" "$WORK/t1"
    fi
fi
if wants dir; then
    fresh
    T "$WORK/t1" "$BIN/pg_dump" -Fd -j "$JOBS" -f "$WORK/dump" -d "$A dbname=src"
    T "$WORK/t2" "$BIN/pg_restore" -j "$JOBS" -d "$B dbname=dst" "$WORK/dump"
    check dir
    report "pg_dump -Fd -j$JOBS + pg_restore -j$JOBS" "$WORK/t1" "$WORK/t2"
fi
if wants pipe; then
    fresh
    T "$WORK/t1" bash -c "'$BIN/pg_dump' -Fc -d '$A dbname=src' | '$BIN/pg_restore' -d '$B dbname=dst'"
    check pipe
    report "pg_dump -Fc | pg_restore" "$WORK/t1"
fi
if wants pgcopydb; then
    fresh
    mkdir -p "$WORK/pgcopydb"
    T "$WORK/t1" pgcopydb clone --source "$A dbname=src" --target "$B dbname=dst" \
        --table-jobs "$JOBS" --index-jobs "$JOBS" --dir "$WORK/pgcopydb" >"$WORK/pgcopydb.log" 2>&1 \
        || { tail -20 "$WORK/pgcopydb.log" >&2; exit 1; }
    check pgcopydb
    report "pgcopydb clone" "$WORK/t1"
fi
if [ -n "${WALL[sluice db copy]:-}" ]; then
    for k in "${!WALL[@]}"; do
        [ "$k" = "sluice db copy" ] || printf 'sluice takes %.2f× the time of %s\n' \
            "$(echo "${WALL[sluice db copy]} / ${WALL[$k]}" | bc -l)" "$k"
    done
fi
if wants kill; then
    # Kill Sluice (both ends: one process) with SIGKILL once 40 % of the table bytes are
    # committed, right after a progress line, then run it again.
    fresh
    "$SLUICE" --json db copy "$A dbname=src" "$B dbname=dst" --jobs "$JOBS" >"$WORK/k1.json" 2>/dev/null &
    pid=$!
    sent=0
    while kill -0 "$pid" 2>/dev/null; do
        line=$(tail -1 "$WORK/k1.json" 2>/dev/null || true)
        s=$(echo "$line" | sed -n 's/.*"bytes_sent":\([0-9]*\).*/\1/p')
        if [ -n "$s" ] && [ "$s" -gt $((BYTES * 2 / 5)) ]; then sent=$s; kill -9 "$pid"; break; fi
        sleep 0.05
    done
    wait "$pid" 2>/dev/null || true
    if [ "$sent" = 0 ]; then
        echo "kill: the copy ended before 40 % was sent; use a larger --scale" >&2
        exit 0
    fi
    committed=$(psql -tA -d "$B dbname=dst" -c "SELECT coalesce(sum(bytes), 0) FROM _sluice.units")
    "$SLUICE" --json db copy "$A dbname=src" "$B dbname=dst" --jobs "$JOBS" >"$WORK/k2.json" 2>/dev/null
    check kill
    lost=$((sent - committed))
    printf 'killed at %.0f MB sent, %.0f MB committed: %.0f MB re-sent (%.1f%% of the largest table; at most 2 × %s ranges in flight)\n' \
        "$(echo "$sent / 1000000" | bc -l)" "$(echo "$committed / 1000000" | bc -l)" \
        "$(echo "$lost / 1000000" | bc -l)" "$(echo "100 * $lost / $LARGEST" | bc -l)" "$JOBS"
    grep '"event":"summary"' "$WORK/k2.json"
fi
