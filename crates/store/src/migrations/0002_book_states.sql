-- krakenbook schema, version 2: verified book states.
--
-- The collector journals the whole verified book of a symbol every so many updates (and Kraken's
-- snapshots are states too). Rebuilding the book at an instant starts from the nearest state or
-- snapshot before it on the same connection, so it never replays more than that many messages,
-- however long ago the subscription began. Levels are exact decimal strings, best first:
-- [["62802.5","0.02987767"], ...].
CREATE TABLE IF NOT EXISTS kraken_book_states (
    "timestamp"     timestamptz NOT NULL,
    received_at     timestamptz NOT NULL,
    collector       text NOT NULL,
    seq             bigint NOT NULL,
    conn_id         bigint NOT NULL,
    symbol          text NOT NULL,
    depth           integer NOT NULL,
    price_precision smallint NOT NULL,
    qty_precision   smallint NOT NULL,
    checksum        bigint NOT NULL,
    bids            jsonb NOT NULL,
    asks            jsonb NOT NULL
);
SELECT create_hypertable('kraken_book_states', 'timestamp',
    chunk_time_interval => current_setting('krakenbook.chunk_interval')::interval,
    if_not_exists => TRUE);
CREATE INDEX IF NOT EXISTS kraken_book_states_symbol_time_idx
    ON kraken_book_states (symbol, "timestamp" DESC);
