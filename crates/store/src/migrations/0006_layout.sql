-- krakenbook schema, version 6: one row per book message (issue 13's layout, docs/design/storage.md).
--
-- What it does, in one transaction:
-- - the tables of versions 1-5 that held every message and every level are renamed
--   krakenbook_legacy_messages / krakenbook_legacy_entries (their rows are moved into the new
--   tables by `migrate`, one chunk per transaction, then the legacy tables are dropped);
-- - krakenbook_book holds each book message once: its levels in one bigint[] of dec64 values
--   (mantissa * 32 + scale: every digit and the scale as sent), its frame NOT stored when the view
--   below rebuilds it byte-for-byte-equal as jsonb (raw is null then), further copies of the same
--   message received on this collector's other connections packed in dups (64 bits a copy);
-- - krakenbook_other holds every other frame whole (acks, status, malformed frames, book frames the
--   book table cannot hold), in the columns kraken_orderbook_messages always had;
-- - kraken_orderbook_messages and kraken_orderbook_entries become views with the columns and
--   types they had, so the original README's queries run unchanged;
-- - krakenbook_copies is a view with one row per received copy (first copies and dups): what a
--   stream (one connection of one collector) received.
-- What must always hold: a row's levels, kind, symbol, checksum and timestamp rebuild the frame's
-- jsonb exactly, or raw holds the frame; nothing a reader needs is only in raw except for rows
-- whose levels do not fit dec64 (levels null, raw holds them).

CREATE TABLE krakenbook_collectors (
    id   smallint PRIMARY KEY,
    name text NOT NULL UNIQUE
);

-- The id of a collector, registered on first use (id 0 is never given: it stands for rows of the
-- original tool that have no collector).
CREATE FUNCTION krakenbook_collector_id(collector_name text) RETURNS smallint
    LANGUAGE plpgsql AS $f$
DECLARE
    found smallint;
BEGIN
    SELECT id INTO found FROM krakenbook_collectors WHERE name = collector_name;
    IF found IS NOT NULL THEN
        RETURN found;
    END IF;
    LOCK TABLE krakenbook_collectors IN SHARE ROW EXCLUSIVE MODE;
    SELECT id INTO found FROM krakenbook_collectors WHERE name = collector_name;
    IF found IS NOT NULL THEN
        RETURN found;
    END IF;
    INSERT INTO krakenbook_collectors (id, name)
    SELECT coalesce(max(id), 0) + 1, collector_name FROM krakenbook_collectors
    RETURNING id INTO found;
    RETURN found;
END
$f$;

-- dec64 to numeric: the mantissa times 10^-scale written with exactly that scale (numeric
-- multiplication adds the scales, so 150 * 0.01 = 1.50).
CREATE FUNCTION krakenbook_dec(v bigint) RETURNS numeric
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN (v >> 5)::numeric * ('{1,0.1,0.01,0.001,0.0001,0.00001,0.000001,0.0000001,0.00000001,0.000000001,0.0000000001,0.00000000001,0.000000000001,0.0000000000001,0.00000000000001,0.000000000000001,0.0000000000000001,0.00000000000000001,0.000000000000000001,0.0000000000000000001,0.00000000000000000001,0.000000000000000000001,0.0000000000000000000001,0.00000000000000000000001,0.000000000000000000000001,0.0000000000000000000000001,0.00000000000000000000000001,0.000000000000000000000000001,0.0000000000000000000000000001,0.00000000000000000000000000001,0.000000000000000000000000000001,0.0000000000000000000000000000001}'::numeric[])[(v & 31)::int + 1];

-- numeric to dec64 (null when it does not fit: more than 31 decimals or a mantissa of 2^58 or more).
CREATE FUNCTION krakenbook_to_dec(x numeric) RETURNS bigint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN CASE WHEN x >= 0 AND scale(x) <= 31 AND x * 10::numeric ^ scale(x) < 288230376151711744
                THEN (x * 10::numeric ^ scale(x))::bigint * 32 + scale(x) END;

-- Kraken's timestamp text: microseconds, UTC, a Z.
CREATE FUNCTION krakenbook_kraken_ts(t timestamptz) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"');

-- A packed further copy (see krakenbook_book.dup): its connection, seq, receive time, verdict.
CREATE FUNCTION krakenbook_dup_conn(conn_id bigint, d bigint) RETURNS bigint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE RETURN conn_id + (d >> 48);
CREATE FUNCTION krakenbook_dup_seq(seq bigint, d bigint) RETURNS bigint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE RETURN seq + ((d << 16) >> 42);
CREATE FUNCTION krakenbook_dup_received(received_at timestamptz, d bigint) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN received_at + ((d << 40) >> 40) * interval '1 microsecond';
CREATE FUNCTION krakenbook_dup_ok(d bigint) RETURNS boolean
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN CASE (d >> 24) & 3 WHEN 1 THEN true WHEN 2 THEN false END;

ALTER TABLE kraken_orderbook_messages RENAME TO krakenbook_legacy_messages;
ALTER TABLE kraken_orderbook_entries RENAME TO krakenbook_legacy_entries;

-- Book messages: one row per message (its first copy on this collector), wire order kept.
--   timestamp:    Kraken's timestamp of the message (the receive time when it carries none);
--   received_at:  when the first copy was read from its socket;
--   seq, conn_id: the first copy's journal seq and connection;
--   checksum:     Kraken's CRC32, its 32 bits as an integer (the views show it unsigned);
--   n_bids:       levels[1 .. 2*n_bids] are bids, the rest asks;
--   kind:         's' snapshot, 'u' update;
--   checksum_ok:  the collector's verdict on the first copy;
--   levels:       dec64 price, qty, price, qty, ... in wire order; null when a value does not fit
--                 dec64 (raw holds the frame then);
--   raw:          the frame, only when the views' rendering of the row would not equal it;
--   dup, dups:    further copies on this collector's other connections, 64 bits each: connection
--                 minus conn_id (16 bits, signed), seq minus seq (22 bits, signed), verdict (2 bits:
--                 0 none, 1 ok, 2 mismatch), receive time minus received_at in microseconds
--                 (24 bits, signed). The first further copy is `dup` (a scalar costs 8 bytes, an
--                 array 33), any others are `dups`. A copy that does not fit is a row of its own.
CREATE TABLE krakenbook_book (
    "timestamp"   timestamptz NOT NULL,
    received_at   timestamptz NOT NULL,
    seq           bigint      NOT NULL,
    conn_id       bigint      NOT NULL,
    dup           bigint,
    checksum      integer,
    collector_id  smallint    NOT NULL,
    n_bids        smallint    NOT NULL,
    kind          "char"      NOT NULL CHECK (kind IN ('s', 'u')),
    checksum_ok   boolean,
    symbol        text        NOT NULL,
    levels        bigint[],
    raw           jsonb,
    dups          bigint[],
    CHECK (levels IS NOT NULL OR raw IS NOT NULL),
    CHECK (dups IS NULL OR dup IS NOT NULL)
);
SELECT create_hypertable('krakenbook_book', 'timestamp',
    chunk_time_interval => current_setting('krakenbook.chunk_interval')::interval,
    create_default_indexes => false);
-- Ascending indexes: rows arrive in time order, so each key lands at the right edge (a descending
-- index splits its pages in half; a backward scan serves ORDER BY ... DESC just as well).
CREATE INDEX krakenbook_book_time_idx ON krakenbook_book ("timestamp");
CREATE INDEX krakenbook_book_symbol_time_idx ON krakenbook_book (symbol, "timestamp");
CREATE INDEX krakenbook_book_snapshot_idx ON krakenbook_book (symbol, "timestamp")
    WHERE kind = 's';
-- The README's "latest snapshot" query filters on the view's message_type expression.
CREATE INDEX krakenbook_book_snapshot_view_idx ON krakenbook_book (symbol, "timestamp")
    WHERE CASE kind WHEN 's' THEN 'snapshot' ELSE 'update' END = 'snapshot';
-- Rows whose values do not fit dec64 (levels in raw only; none from Kraken): the entries view
-- reads them in time order through these (empty) indexes.
CREATE INDEX krakenbook_book_raw_levels_time_idx ON krakenbook_book ("timestamp")
    WHERE levels IS NULL;
CREATE INDEX krakenbook_book_raw_levels_symbol_idx ON krakenbook_book (symbol, "timestamp")
    WHERE levels IS NULL;
-- The received order: a block-range index (a btree on (collector, seq) costs 30 bytes a message).
CREATE INDEX krakenbook_book_order_idx ON krakenbook_book
    USING brin (collector_id, seq int8_minmax_multi_ops) WITH (pages_per_range = 32);

-- Every other frame, whole.
CREATE TABLE krakenbook_other (
    "timestamp"    timestamptz NOT NULL,
    received_at    timestamptz NOT NULL,
    collector      text,
    seq            bigint,
    conn_id        bigint,
    conn_seq       bigint,
    channel        text NOT NULL,
    message_type   text NOT NULL,
    symbol         text,
    checksum       bigint,
    checksum_ok    boolean,
    raw_message    jsonb,
    raw_text       text,
    raw_bytes      bytea,
    best_bid_price numeric,
    best_bid_qty   numeric,
    best_ask_price numeric,
    best_ask_qty   numeric
);
SELECT create_hypertable('krakenbook_other', 'timestamp',
    chunk_time_interval => current_setting('krakenbook.chunk_interval')::interval,
    create_default_indexes => false);
CREATE INDEX krakenbook_other_time_idx ON krakenbook_other ("timestamp");
CREATE INDEX krakenbook_other_symbol_time_idx ON krakenbook_other (symbol, "timestamp");
CREATE INDEX krakenbook_other_order_idx ON krakenbook_other (collector, seq);

-- What is left to move from the legacy tables, one row per legacy chunk (see `migrate`).
CREATE TABLE krakenbook_layout_migration (
    range_start timestamptz PRIMARY KEY,
    range_end   timestamptz NOT NULL,
    state       text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'moved')),
    messages    bigint,
    levels      bigint,
    moved_at    timestamptz
);
INSERT INTO krakenbook_layout_migration (range_start, range_end)
SELECT range_start, range_end FROM timescaledb_information.chunks
 WHERE hypertable_name = 'krakenbook_legacy_messages'
ON CONFLICT DO NOTHING;
