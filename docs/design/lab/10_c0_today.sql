-- Candidate 0: today's layout (migrations 0001..0004), rebuilt by INSERT ... SELECT in seq order
-- so that it is built the same way as the other candidates.
DROP SCHEMA IF EXISTS c0 CASCADE;
CREATE SCHEMA c0;
CREATE TABLE c0.kraken_orderbook_messages (LIKE public.kraken_orderbook_messages);
CREATE TABLE c0.kraken_orderbook_entries (LIKE public.kraken_orderbook_entries);
SELECT create_hypertable('c0.kraken_orderbook_messages', 'timestamp', chunk_time_interval => interval '1 day');
SELECT create_hypertable('c0.kraken_orderbook_entries', 'timestamp', chunk_time_interval => interval '1 day');
CREATE INDEX ON c0.kraken_orderbook_messages (symbol, "timestamp" DESC);
CREATE INDEX ON c0.kraken_orderbook_messages (symbol, "timestamp" DESC) WHERE message_type = 'snapshot';
CREATE INDEX ON c0.kraken_orderbook_messages (collector, seq);
CREATE INDEX ON c0.kraken_orderbook_entries (symbol, "timestamp" DESC);
\timing on
INSERT INTO c0.kraken_orderbook_messages SELECT * FROM public.kraken_orderbook_messages ORDER BY collector, seq;
INSERT INTO c0.kraken_orderbook_entries SELECT * FROM public.kraken_orderbook_entries ORDER BY collector, seq, ordinal;
\timing off
VACUUM ANALYZE c0.kraken_orderbook_messages;
VACUUM ANALYZE c0.kraken_orderbook_entries;
