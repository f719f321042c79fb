-- krakenbook schema, version 4: per-connection liveness.
--
-- One row per connection of a collector, updated in the same transaction as every batch that
-- holds a frame of that connection (heartbeats included, which are not stored as messages), so
-- that the database knows each connection's last frame even after a crash: where a stream's
-- coverage ends when its connection was lost without a word.
--   first_seq, first_received_at: the connection's first frame stored;
--   last_seq, last_received_at:   its last frame stored (the receive time of that frame);
--   last_frame_timestamp:         the latest Kraken timestamp among its frames (book data
--                                 timestamps, acks' time_out), null when none carried one.
CREATE TABLE IF NOT EXISTS krakenbook_connections (
    collector            text NOT NULL,
    conn_id              bigint NOT NULL,
    first_seq            bigint NOT NULL,
    last_seq             bigint NOT NULL,
    first_received_at    timestamptz NOT NULL,
    last_received_at     timestamptz NOT NULL,
    last_frame_timestamp timestamptz,
    PRIMARY KEY (collector, conn_id)
);

-- Connections recorded before this table existed: from their stored messages (heartbeats were
-- not stored then, so the last frame known is the last stored message).
INSERT INTO krakenbook_connections (collector, conn_id, first_seq, last_seq, first_received_at,
                                    last_received_at, last_frame_timestamp)
SELECT collector, conn_id, min(seq), max(seq),
       (array_agg(received_at ORDER BY seq))[1],
       (array_agg(received_at ORDER BY seq DESC))[1],
       max("timestamp") FILTER (WHERE message_type <> 'malformed')
  FROM kraken_orderbook_messages
 WHERE collector IS NOT NULL AND conn_id IS NOT NULL AND seq IS NOT NULL
 GROUP BY collector, conn_id
ON CONFLICT (collector, conn_id) DO NOTHING;
