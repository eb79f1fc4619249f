-- Every kind of column `sluice db` must carry exactly: the issue's list, and the awkward cases
-- of names and sizes. Loaded into a throwaway cluster by tools/sluice/tests/db.rs.
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive AS integer CHECK (VALUE > 0);
CREATE TABLE kinds (
    id bigint PRIMARY KEY,
    small smallint,
    n numeric,
    t text,
    j jsonb,
    arr integer[],
    moods mood[],
    b bytea,
    ts timestamptz,
    d date,
    m mood,
    p positive,
    f float8,
    u uuid,
    gen bigint GENERATED ALWAYS AS (id * 2) STORED
);
INSERT INTO kinds (id, small, n, t, j, arr, moods, b, ts, d, m, p, f, u)
SELECT i, (i % 30000)::smallint,
       CASE WHEN i % 17 = 0 THEN 'NaN'::numeric ELSE i * 1.000001 END,
       CASE WHEN i % 11 = 0 THEN NULL ELSE 'grüße ✓ 東京 ' || i || E'\ttab\nnewline\\back' END,
       jsonb_build_object('i', i, 'nested', jsonb_build_array(i, 'x', NULL)),
       ARRAY[i, i + 1, NULL],
       ARRAY['sad', 'happy']::mood[],
       decode(md5(i::text), 'hex'),
       CASE WHEN i = 1 THEN 'infinity'::timestamptz WHEN i = 2 THEN '-infinity'::timestamptz
            ELSE '2024-03-10 01:59:59.123456+05:30'::timestamptz + i * interval '1 minute' END,
       CASE WHEN i = 3 THEN 'infinity'::date ELSE '2000-02-29'::date + i END,
       (ARRAY['sad', 'ok', 'happy']::mood[])[1 + i % 3],
       1 + i % 1000,
       CASE WHEN i = 4 THEN 'NaN'::float8 WHEN i = 5 THEN '-Infinity'::float8 ELSE i / 7.0 END,
       md5(i::text)::uuid
FROM generate_series(1, 20000) i;
-- Large TOASTed values.
CREATE TABLE blobs (id int PRIMARY KEY, big bytea, doc text);
INSERT INTO blobs
SELECT i, decode(repeat(md5(i::text), 40000), 'hex'), repeat('lorem ipsum ' || i, 50000)
FROM generate_series(1, 12) i;
-- No primary key, and a quoted name with spaces and capitals.
CREATE SCHEMA "Odd Schema";
CREATE TABLE "Odd Schema"."Mixed Case ""Table""" ("Some Col" text, "x y" int);
INSERT INTO "Odd Schema"."Mixed Case ""Table"""
SELECT 'row ' || i, i FROM generate_series(1, 30000) i;
INSERT INTO "Odd Schema"."Mixed Case ""Table""" VALUES (NULL, NULL), ('', 0);
-- One row; no rows.
CREATE TABLE one_row (k text PRIMARY KEY, v int);
INSERT INTO one_row VALUES ('only', 1);
CREATE TABLE empty (id serial PRIMARY KEY, v text);
-- A partitioned table.
CREATE TABLE events (id bigint, at date NOT NULL, what text, PRIMARY KEY (id, at))
    PARTITION BY RANGE (at);
CREATE TABLE events_2023 PARTITION OF events FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
INSERT INTO events
SELECT i, '2023-01-01'::date + (i % 700), 'event ' || i FROM generate_series(1, 10000) i;
-- Sequences in use, an index, a foreign key and a view that must come after the rows.
CREATE TABLE orders (id serial PRIMARY KEY, kind_id bigint REFERENCES kinds (id), note text);
INSERT INTO orders (kind_id, note) SELECT i, 'order ' || i FROM generate_series(1, 5000) i;
CREATE INDEX orders_note ON orders (note);
CREATE VIEW happy_kinds AS SELECT id FROM kinds WHERE m = 'happy';
-- A materialized view: its rows come from a refresh, which pg_dump leaves to its post-data.
CREATE MATERIALIZED VIEW mood_counts AS SELECT m, count(*) AS n FROM kinds GROUP BY m;
CREATE UNIQUE INDEX mood_counts_m ON mood_counts (m);
CREATE MATERIALIZED VIEW happy_count AS SELECT n FROM mood_counts WHERE m = 'happy';
-- Rows without columns; columns that name other objects by number in binary form.
CREATE TABLE no_columns ();
INSERT INTO no_columns DEFAULT VALUES;
INSERT INTO no_columns DEFAULT VALUES;
CREATE TABLE refs (id int PRIMARY KEY, r regclass, t regtype, rs regclass[]);
INSERT INTO refs VALUES (1, 'kinds', 'mood', ARRAY['orders', 'kinds']::regclass[]);
-- Indexes and key constraints built as soon as their table's rows are in, under odd names; an
-- index the table is clustered on, and one with a comment (which must wait for the index).
CREATE UNIQUE INDEX "Odd ""Index"" x" ON "Odd Schema"."Mixed Case ""Table""" ("x y", "Some Col");
ALTER TABLE "Odd Schema"."Mixed Case ""Table""" ADD CONSTRAINT "odd unique" UNIQUE ("Some Col", "x y");
ALTER TABLE orders CLUSTER ON orders_note;
COMMENT ON INDEX orders_note IS 'notes, for the clerks';
