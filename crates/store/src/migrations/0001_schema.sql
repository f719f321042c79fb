-- krakenbook schema, version 1: order book messages and their levels (hypertables), feed events,
-- and the writers' checkpoints.
--
-- Runs on an empty database, and equally on one made by the original tool's
-- setup_timescale_tables.sql, which it converts in place keeping every row: the new columns are
-- added (null in old rows), symbol and raw_message become nullable, price and quantity lose their
-- NUMERIC(20,8) rounding, and both primary keys go (the entries key merged distinct level changes).
-- The chunk interval comes from the session setting krakenbook.chunk_interval.

-- Messages: one row per received frame except heartbeats.
CREATE TABLE IF NOT EXISTS kraken_orderbook_messages (
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
ALTER TABLE kraken_orderbook_messages ADD COLUMN IF NOT EXISTS collector text;
ALTER TABLE kraken_orderbook_messages ADD COLUMN IF NOT EXISTS seq bigint;
ALTER TABLE kraken_orderbook_messages ADD COLUMN IF NOT EXISTS conn_id bigint;
ALTER TABLE kraken_orderbook_messages ADD COLUMN IF NOT EXISTS conn_seq bigint;
ALTER TABLE kraken_orderbook_messages ADD COLUMN IF NOT EXISTS checksum_ok boolean;
ALTER TABLE kraken_orderbook_messages ADD COLUMN IF NOT EXISTS raw_text text;
ALTER TABLE kraken_orderbook_messages ADD COLUMN IF NOT EXISTS raw_bytes bytea;
ALTER TABLE kraken_orderbook_messages ADD COLUMN IF NOT EXISTS best_bid_price numeric;
ALTER TABLE kraken_orderbook_messages ADD COLUMN IF NOT EXISTS best_bid_qty numeric;
ALTER TABLE kraken_orderbook_messages ADD COLUMN IF NOT EXISTS best_ask_price numeric;
ALTER TABLE kraken_orderbook_messages ADD COLUMN IF NOT EXISTS best_ask_qty numeric;

-- Levels: one row per level of a book frame, in wire order (ordinal) within its message.
CREATE TABLE IF NOT EXISTS kraken_orderbook_entries (
    "timestamp"  timestamptz NOT NULL,
    received_at  timestamptz,
    symbol       text NOT NULL,
    side         text NOT NULL CHECK (side IN ('bid', 'ask')),
    price        numeric NOT NULL,
    quantity     numeric NOT NULL,
    message_type text NOT NULL,
    checksum     bigint,
    collector    text,
    seq          bigint,
    ordinal      smallint
);
ALTER TABLE kraken_orderbook_entries ADD COLUMN IF NOT EXISTS received_at timestamptz;
ALTER TABLE kraken_orderbook_entries ADD COLUMN IF NOT EXISTS collector text;
ALTER TABLE kraken_orderbook_entries ADD COLUMN IF NOT EXISTS seq bigint;
ALTER TABLE kraken_orderbook_entries ADD COLUMN IF NOT EXISTS ordinal smallint;

-- The original tool's keys: (timestamp, symbol, id) made symbol mandatory, and
-- (timestamp, symbol, side, price) with ON CONFLICT overwrote real level changes.
DO $$
DECLARE
    t text;
    c text;
BEGIN
    FOREACH t IN ARRAY ARRAY['kraken_orderbook_messages', 'kraken_orderbook_entries'] LOOP
        FOR c IN SELECT conname FROM pg_constraint WHERE conrelid = t::regclass AND contype = 'p' LOOP
            EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', t, c);
        END LOOP;
    END LOOP;
END
$$;
ALTER TABLE kraken_orderbook_messages ALTER COLUMN symbol DROP NOT NULL;
ALTER TABLE kraken_orderbook_messages ALTER COLUMN raw_message DROP NOT NULL;

-- NUMERIC(20,8) rounded quantities such as 0.000051004 and capped prices: unconstrained numeric
-- keeps every digit and the scale as sent. Only altered when constrained (no rewrite either way).
DO $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM pg_attribute
        WHERE attrelid = 'kraken_orderbook_entries'::regclass
          AND attname IN ('price', 'quantity') AND atttypmod <> -1
    ) THEN
        ALTER TABLE kraken_orderbook_entries
            ALTER COLUMN price TYPE numeric,
            ALTER COLUMN quantity TYPE numeric;
    END IF;
END
$$;

SELECT create_hypertable('kraken_orderbook_messages', 'timestamp',
    chunk_time_interval => current_setting('krakenbook.chunk_interval')::interval,
    if_not_exists => TRUE, migrate_data => TRUE);
SELECT create_hypertable('kraken_orderbook_entries', 'timestamp',
    chunk_time_interval => current_setting('krakenbook.chunk_interval')::interval,
    if_not_exists => TRUE, migrate_data => TRUE);
-- For tables that already were hypertables: new chunks get the configured interval.
SELECT set_chunk_time_interval('kraken_orderbook_messages',
    current_setting('krakenbook.chunk_interval')::interval);
SELECT set_chunk_time_interval('kraken_orderbook_entries',
    current_setting('krakenbook.chunk_interval')::interval);

CREATE INDEX IF NOT EXISTS kraken_orderbook_messages_symbol_time_idx
    ON kraken_orderbook_messages (symbol, "timestamp" DESC);
-- The latest snapshot of a symbol before an instant: where a book at that instant starts.
CREATE INDEX IF NOT EXISTS kraken_orderbook_messages_snapshot_idx
    ON kraken_orderbook_messages (symbol, "timestamp" DESC) WHERE message_type = 'snapshot';
-- The received order: (collector, seq).
CREATE INDEX IF NOT EXISTS kraken_orderbook_messages_order_idx
    ON kraken_orderbook_messages (collector, seq);
CREATE INDEX IF NOT EXISTS kraken_orderbook_entries_symbol_time_idx
    ON kraken_orderbook_entries (symbol, "timestamp" DESC);

-- Feed events: connections, subscriptions, checksum mismatches and resyncs. A plain table: a few
-- rows per connection or gap, where a key on (collector, seq) is worth more than chunking.
CREATE TABLE IF NOT EXISTS kraken_feed_events (
    "time"    timestamptz NOT NULL,
    collector text NOT NULL,
    seq       bigint NOT NULL,
    conn_id   bigint,
    event     text NOT NULL,
    symbol    text,
    gap_start timestamptz,
    detail    text,
    PRIMARY KEY (collector, seq)
);
CREATE INDEX IF NOT EXISTS kraken_feed_events_symbol_time_idx
    ON kraken_feed_events (symbol, "time" DESC);
CREATE INDEX IF NOT EXISTS kraken_feed_events_time_idx
    ON kraken_feed_events ("time" DESC);

-- One row per collector: the seq of the last record committed (null: none yet).
CREATE TABLE IF NOT EXISTS krakenbook_checkpoints (
    collector  text PRIMARY KEY,
    seq        bigint,
    updated_at timestamptz NOT NULL DEFAULT now()
);
