-- krakenbook schema, version 7: the catalog of the cold tier (`krakenbook archive`).
--
-- One row per archived part: a chunk of krakenbook_book (its time range) whose rows, with the
-- rows of krakenbook_other, kraken_book_states and kraken_feed_events of the same range, were
-- written as Parquet files to `location`, read back and verified, and then dropped from the
-- database, all in the transaction that inserted this row. So a range is either archived (a row
-- here, its rows gone from the tables) or untouched (no row, its rows in the tables).
--   chunk:        the book table's chunk (TimescaleDB's chunk table name): a chunk made again
--                 later for the same range (a late row) is archived as a part of its own;
--   range_start, range_end: the chunk's range, [start, end), on Kraken's clock;
--   location:     the archive's root (an absolute directory or an object-store URL);
--   files, bytes: the part's files and their total size;
--   messages:     book messages (krakenbook_book rows) archived;
--   state:        'archived' (the only state a row is ever written in);
--   manifest:     every file: [{"dataset", "symbol", "path", "rows", "bytes", "digest"}].
-- `krakenbook import` refuses records that fall in an archived range; readers mount the parts
-- they need (temporary tables and views, see crates/archive).
CREATE TABLE krakenbook_archive (
    chunk       text PRIMARY KEY,
    range_start timestamptz NOT NULL,
    range_end   timestamptz NOT NULL,
    location    text NOT NULL,
    files       integer NOT NULL,
    messages    bigint NOT NULL,
    bytes       bigint NOT NULL,
    archived_at timestamptz NOT NULL DEFAULT now(),
    state       text NOT NULL DEFAULT 'archived' CHECK (state IN ('archived')),
    manifest    jsonb NOT NULL,
    CHECK (range_start < range_end)
);
CREATE INDEX krakenbook_archive_range_idx ON krakenbook_archive (range_start, range_end);
