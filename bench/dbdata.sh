# shellcheck shell=bash
# bench/dbdata.sh — what bench/db.sh and bench/db-wan.sh share: throwaway PostgreSQL clusters run
# as nobody, the benchmark's data, and the check that a copy arrived. Sourced; needs root.
#
#   dbdata_init WORK             BIN (newest PostgreSQL), psql (quiet, stop on error), as_pg;
#                                initdb of clusters WORK/a and WORK/b (started by the caller),
#                                stopped, then DBDATA_ON_EXIT run (if set) and WORK removed, on exit
#   dbdata_load URL SCALE WIDE   `pgbench -i -s SCALE` and a table `wide` of about WIDE MB
#                                (bigint key, 128 bytes of bytea that do not compress, a jsonb
#                                with a compressible note) into the database at URL
#   dbdata_bytes URL sum|max     the tables' bytes on disk, in all or of the largest
#   dbdata_same SRC DST          the same row count in every table of both, or fails
#   dbdata_settle SRC DST_ADMIN  leaves both clusters as every tool after the first finds them:
#                                the source's rows frozen and written out, and the target
#                                holding WAL segments to recycle (a new cluster creates and
#                                zero-fills each segment it first writes: 2 GB of WAL was
#                                ~15 s more for whichever tool ran first)

dbdata_init() {
    DBDATA_WORK=$1
    BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    chmod 755 "$DBDATA_WORK"
    for c in a b; do
        mkdir -p "$DBDATA_WORK/$c"
        chown 65534:65534 "$DBDATA_WORK/$c"
        as_pg "$BIN/initdb" -D "$DBDATA_WORK/$c/data" -A trust -U postgres -E UTF8 --no-sync >/dev/null
    done
    trap dbdata_cleanup EXIT
}

as_pg() { setpriv --reuid=65534 --regid=65534 --clear-groups -- "$@"; }
psql() { command "$BIN/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }

dbdata_cleanup() {
    for c in a b; do
        [ -d "$DBDATA_WORK/$c/data" ] && as_pg "$BIN/pg_ctl" -D "$DBDATA_WORK/$c/data" -m immediate stop >/dev/null 2>&1 || true
    done
    if [ -n "${DBDATA_ON_EXIT:-}" ]; then "$DBDATA_ON_EXIT"; fi
    rm -rf "$DBDATA_WORK"
}

dbdata_load() {
    echo "loading: pgbench -i -s $2 and $3 MB of wide rows" >&2
    "$BIN/pgbench" -i -q -s "$2" -d "$1" 2>/dev/null
    psql -d "$1" -c "CREATE TABLE wide (id bigint PRIMARY KEY, b bytea, j jsonb);
        INSERT INTO wide SELECT i, decode(md5(i::text) || md5((-i)::text) || md5((i * 3)::text)
                || md5((i * 5)::text) || md5((i * 11)::text) || md5((i * 13)::text)
                || md5((i * 17)::text) || md5((i * 19)::text), 'hex'),
            jsonb_build_object('i', i, 'tags', jsonb_build_array('x' || i % 97, i % 13),
                               'note', repeat(md5((i * 7)::text), 24))
        FROM generate_series(1, $(($3 * 1000000 / 1400))) i;" -c "VACUUM ANALYZE"
}

dbdata_bytes() {
    psql -tA -d "$1" -c "SELECT $2(pg_table_size(oid)) FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace"
}

dbdata_same() {
    local q="SELECT string_agg(c, ',' ORDER BY c) FROM (SELECT relname || '=' || (xpath('/row/n/text()', query_to_xml('SELECT count(*) AS n FROM public.' || quote_ident(relname), false, true, '')))[1]::text AS c FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace) t"
    [ "$(psql -tA -d "$1" -c "$q")" = "$(psql -tA -d "$2" -c "$q")" ]
}

dbdata_settle() {
    echo "settling: freezing the source, giving the target WAL segments to recycle" >&2
    psql -d "$1" -c "VACUUM (FREEZE, ANALYZE)" -c "CHECKPOINT"
    local bytes
    bytes=$(psql -tA -d "$1" -c "SELECT sum(pg_table_size(oid)) FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace")
    psql -d "$2" -c "SET client_min_messages = warning" -c "DROP TABLE IF EXISTS sluice_warm" \
        -c "CREATE TABLE sluice_warm AS SELECT g, repeat('w', 900) AS p FROM generate_series(1, $((bytes / 1000 + 1))) g" \
        -c "DROP TABLE sluice_warm" -c "CHECKPOINT"
    sync
}
