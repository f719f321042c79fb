-- krakenbook schema, version 5: each collector's state, as it last published it.
--
-- One row per collector identity, upserted every few seconds by the running collector (and once
-- more, with running = false, when it stops gracefully), read by `krakenbook serve`'s health
-- view. A crashed or killed collector leaves its last row behind: readers judge it by its age
-- (updated_at is the database's clock at the upsert, so the collector's clock does not matter).
-- What each connection last received is already in krakenbook_connections (updated with every
-- batch); this row adds what only the running process knows.
--   started_at:        when the process started (its clock);
--   updated_at:        the database's now() at the last upsert;
--   running:           false once the collector stopped gracefully;
--   frames:            frames received since the process started;
--   last_frame_at:     the collector's clock when its frame count was last seen growing
--                      (resolution: the publishing interval);
--   last_verified_at:  receive time of the latest verified book message of any symbol;
--   connections_open:  exchange connections open now;
--   symbols:           symbols asked for;
--   streams_live:      streams (connection x symbol) whose book is verified now;
--   mismatches:        checksum mismatches since the process started;
--   reconnects:        connections lost since the process started;
--   lag_records, lag_seconds: how far the database is behind the journal;
--   problem:           what /health reports, or null when healthy;
--   detail:            per symbol: [{"symbol","streams_verified","mismatches",
--                      "seconds_since_verified","gap_seconds"}].
CREATE TABLE IF NOT EXISTS krakenbook_collector_state (
    collector        text PRIMARY KEY,
    host             text NOT NULL,
    pid              integer NOT NULL,
    version          text NOT NULL,
    started_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    running          boolean NOT NULL,
    frames           bigint NOT NULL,
    last_frame_at    timestamptz,
    last_verified_at timestamptz,
    connections_open integer NOT NULL,
    symbols          integer NOT NULL,
    streams_live     integer NOT NULL,
    mismatches       bigint NOT NULL,
    reconnects       bigint NOT NULL,
    lag_records      bigint NOT NULL,
    lag_seconds      double precision NOT NULL,
    problem          text,
    detail           jsonb NOT NULL
);
