#!/usr/bin/env bash
# bench/db.sh — moving a PostgreSQL database on loopback: `sluice db copy` against
# `pg_dump -Fd -jN` + `pg_restore -jN`, `pg_dump -Fc | pg_restore` and `pgcopydb clone`, in one run,
# between two throwaway clusters on this host; then Sluice killed with SIGKILL half way and run
# again, to count what the interruption cost.
#
#   bench/db.sh [--scale 100] [--wide-mb 1000] [--jobs 2] [--only sluice,dir,pipe,pgcopydb,kill]
#               [--no-build]
#
# Data: `pgbench -i -s SCALE` plus a table `wide` (bigint key, 128 bytes of bytea that do not
# compress, jsonb with a compressible note) of about WIDE_MB MB.
# Both clusters run with fsync off and the same settings for every tool. Each line: wall time,
# the tool's own CPU seconds per GB of table (user + system, from /usr/bin/time; the servers' CPU
# is not counted for anyone), its peak RSS, and the ratio of its time to Sluice's. Needs root (the
# clusters run as nobody), PostgreSQL's server and client, pgbench and pgcopydb.
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=100 WIDE_MB=1000 JOBS=2 ONLY=sluice,dir,pipe,pgcopydb,kill BUILD=1
while [ $# -gt 0 ]; do
    case $1 in
        --scale) SCALE=$2; shift ;;
        --wide-mb) WIDE_MB=$2; shift ;;
        --jobs) JOBS=$2; shift ;;
        --only) ONLY=$2; shift ;;
        --no-build) BUILD=0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
wants() { [[ ",$ONLY," == *",$1,"* ]]; }
[ "$BUILD" = 1 ] && cargo build --release --quiet -p sluice-cli
SLUICE=$PWD/target/release/sluice
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
WORK=$(mktemp -d /tmp/sluice-db-bench.XXXX)
chmod 755 "$WORK"
as_pg() { setpriv --reuid=65534 --regid=65534 --clear-groups -- "$@"; }
cleanup() {
    for c in a b; do
        [ -d "$WORK/$c/data" ] && as_pg "$BIN/pg_ctl" -D "$WORK/$c/data" -m immediate stop >/dev/null 2>&1 || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

for c in a b; do
    mkdir -p "$WORK/$c"
    chown 65534:65534 "$WORK/$c"
    as_pg "$BIN/initdb" -D "$WORK/$c/data" -A trust -U postgres -E UTF8 --no-sync >/dev/null
    as_pg "$BIN/pg_ctl" -D "$WORK/$c/data" -l "$WORK/$c/log" -w -o \
        "-F -k $WORK/$c -p 5432 -c listen_addresses='' -c shared_buffers=256MB -c max_wal_size=8GB -c checkpoint_timeout=30min -c max_connections=60" \
        start >/dev/null
done
A="host=$WORK/a port=5432 user=postgres"
B="host=$WORK/b port=5432 user=postgres"
psql() { command "$BIN/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }
psql -d "$A dbname=postgres" -c "CREATE DATABASE src"
echo "loading: pgbench -i -s $SCALE and $WIDE_MB MB of wide rows" >&2
"$BIN/pgbench" -i -q -s "$SCALE" -d "$A dbname=src" 2>/dev/null
ROWS=$((WIDE_MB * 1000000 / 1400))
psql -d "$A dbname=src" -c "CREATE TABLE wide (id bigint PRIMARY KEY, b bytea, j jsonb);
    INSERT INTO wide SELECT i, decode(md5(i::text) || md5((-i)::text) || md5((i * 3)::text)
            || md5((i * 5)::text) || md5((i * 11)::text) || md5((i * 13)::text)
            || md5((i * 17)::text) || md5((i * 19)::text), 'hex'),
        jsonb_build_object('i', i, 'tags', jsonb_build_array('x' || i % 97, i % 13),
                           'note', repeat(md5((i * 7)::text), 24))
    FROM generate_series(1, $ROWS) i;" -c "VACUUM ANALYZE"
BYTES=$(psql -tA -d "$A dbname=src" -c "SELECT sum(pg_table_size(oid)) FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace")
LARGEST=$(psql -tA -d "$A dbname=src" -c "SELECT max(pg_table_size(oid)) FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace")
GB=$(echo "$BYTES / 1000000000" | bc -l)
printf 'tables: %.2f GB on disk (largest %.2f GB); jobs %s\n' "$GB" "$(echo "$LARGEST / 1000000000" | bc -l)" "$JOBS"

fresh() {
    psql -d "$B dbname=postgres" -c "DROP DATABASE IF EXISTS dst" -c "CREATE DATABASE dst"
    rm -rf "$WORK/dump"
}
# Same row count in every table of dst as of src, or the run does not count.
check() {
    local q="SELECT string_agg(c, ',' ORDER BY c) FROM (SELECT relname || '=' || (xpath('/row/n/text()', query_to_xml('SELECT count(*) AS n FROM public.' || quote_ident(relname), false, true, '')))[1]::text AS c FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace) t"
    [ "$(psql -tA -d "$A dbname=src" -c "$q")" = "$(psql -tA -d "$B dbname=dst" -c "$q")" ] \
        || { echo "$1: row counts differ" >&2; return 1; }
}
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
    committed=$(psql -tA -d "$B dbname=dst" -c "SELECT coalesce(sum(bytes), 0) FROM _sluice.units")
    "$SLUICE" --json db copy "$A dbname=src" "$B dbname=dst" --jobs "$JOBS" >"$WORK/k2.json" 2>/dev/null
    check kill
    lost=$((sent - committed))
    printf 'killed at %.0f MB sent, %.0f MB committed: %.0f MB re-sent (%.1f%% of the largest table; at most 2 × %s ranges in flight)\n' \
        "$(echo "$sent / 1000000" | bc -l)" "$(echo "$committed / 1000000" | bc -l)" \
        "$(echo "$lost / 1000000" | bc -l)" "$(echo "100 * $lost / $LARGEST" | bc -l)" "$JOBS"
    grep '"event":"summary"' "$WORK/k2.json"
fi
