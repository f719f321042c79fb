-- krakenbook schema, version 8: cheaper compatibility views, and the order index summarized as it
-- fills.
--
-- The views themselves are (re)created by `migrate` after the migrations (crates/store/src/
-- layout.rs); this migration adds what they call, so that a query on them plans few nodes (each
-- subquery in a view is planned with every query that names the view: the LIMIT queries of the
-- original README spent longer planning than running) and costs little per row:
-- - krakenbook_collector_name(id): a collector's name without a subquery. Its body is an array
--   of the names, written again by a trigger whenever krakenbook_collectors changes, so the
--   planner inlines it into an array subscript (plans that inlined it are invalidated when it is
--   replaced);
-- - krakenbook_frame(...): a book row's frame as jsonb, rebuilt in one PL/pgSQL call (planned as
--   a function call; two aggregate subqueries before);
-- - krakenbook_ordinals(n) / krakenbook_raw_ordinals(raw): 1..n as an array, for the rows the
--   entries view's inline array 1..256 does not cover (more than 256 levels, or levels in raw
--   only). The entries view unnests that array in a lateral subquery's select list (a
--   ProjectSet: no tuplestore per message, where a function scan in FROM built one);
-- - the two partial indexes on rows whose levels are in raw only go: the entries view reads those
--   rows in the same join as the others, not through a branch of their own.
-- - the received-order index (BRIN) summarizes page ranges as they fill (autosummarize).
-- What must always hold: krakenbook_frame returns, for every row, what the view's rendering
-- returned before (jsonb equal and equal as text); krakenbook_collector_name(id) is the name of
-- collector id (null for 0 and for ids not registered).

-- The name of every collector, inlined: written by krakenbook_define_collector_name.
CREATE FUNCTION krakenbook_collector_name(id smallint) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN (SELECT c.name FROM krakenbook_collectors c WHERE c.id = krakenbook_collector_name.id);

-- (Re)writes krakenbook_collector_name from krakenbook_collectors: an array literal indexed by id
-- while ids stay small (the planner reads the body on every query that inlines it), a lookup
-- otherwise. Runs as its owner (who owns the function it replaces), with the migration's
-- search_path.
CREATE FUNCTION krakenbook_define_collector_name() RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $f$
DECLARE
    schema_name text := (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                          WHERE c.oid = 'krakenbook_collectors'::regclass);
    top integer;
    low integer;
    names text[];
BEGIN
    -- Serializes concurrent rewrites (krakenbook_collector_id holds this lock already).
    LOCK TABLE krakenbook_collectors IN SHARE ROW EXCLUSIVE MODE;
    SELECT coalesce(max(c.id), 0), coalesce(min(c.id), 1) INTO top, low FROM krakenbook_collectors c;
    IF top <= 1024 AND low >= 1 THEN
        SELECT coalesce(array_agg(c.name ORDER BY g.i), '{}') INTO names
          FROM generate_series(1, top) g(i)
          LEFT JOIN krakenbook_collectors c ON c.id = g.i;
        EXECUTE format(
            'CREATE OR REPLACE FUNCTION %I.krakenbook_collector_name(id smallint) RETURNS text
                 LANGUAGE sql STABLE PARALLEL SAFE RETURN (%L::text[])[id]',
            schema_name, names);
    ELSE
        EXECUTE format(
            'CREATE OR REPLACE FUNCTION %I.krakenbook_collector_name(id smallint) RETURNS text
                 LANGUAGE sql STABLE PARALLEL SAFE
                 RETURN (SELECT c.name FROM %I.krakenbook_collectors c
                          WHERE c.id = krakenbook_collector_name.id)',
            schema_name, schema_name);
    END IF;
END
$f$;

CREATE FUNCTION krakenbook_collectors_changed() RETURNS trigger
    LANGUAGE plpgsql AS $f$
BEGIN
    PERFORM krakenbook_define_collector_name();
    RETURN NULL;
END
$f$;

CREATE TRIGGER krakenbook_collectors_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON krakenbook_collectors
    FOR EACH STATEMENT EXECUTE FUNCTION krakenbook_collectors_changed();

SELECT krakenbook_define_collector_name();

-- A book row's frame, as the messages view shows it when raw is null: what jsonb_build_object
-- made of the row before (keys channel, type, data: [{symbol, bids, asks, checksum, timestamp}],
-- each level {price, qty} from dec64, a missing value null), built as text and parsed once.
CREATE FUNCTION krakenbook_frame(kind "char", symbol text, levels bigint[], n_bids smallint,
                                 checksum integer, ts timestamptz) RETURNS jsonb
    LANGUAGE plpgsql STABLE PARALLEL SAFE COST 25 AS $f$
DECLARE
    n integer := coalesce(cardinality(levels) / 2, 0);
    bids text[] := '{}';
    asks text[] := '{}';
BEGIN
    FOR i IN 1 .. n_bids LOOP
        bids := array_append(bids,
            '{"price":' || coalesce(krakenbook_dec(levels[2 * i - 1])::text, 'null')
            || ',"qty":' || coalesce(krakenbook_dec(levels[2 * i])::text, 'null') || '}');
    END LOOP;
    FOR i IN n_bids + 1 .. n LOOP
        asks := array_append(asks,
            '{"price":' || coalesce(krakenbook_dec(levels[2 * i - 1])::text, 'null')
            || ',"qty":' || coalesce(krakenbook_dec(levels[2 * i])::text, 'null') || '}');
    END LOOP;
    RETURN ('{"channel":"book","type":"'
            || CASE kind WHEN 's' THEN 'snapshot' ELSE 'update' END
            || '","data":[{"symbol":' || coalesce(to_json(symbol)::text, 'null')
            || ',"bids":[' || array_to_string(bids, ',')
            || '],"asks":[' || array_to_string(asks, ',')
            || '],"checksum":' || coalesce((checksum::bigint & 4294967295)::text, 'null')
            || ',"timestamp":' || coalesce(to_json(krakenbook_kraken_ts(ts))::text, 'null')
            || '}]}')::jsonb;
END
$f$;

-- 1..n (the entries view inlines 1..256).
CREATE FUNCTION krakenbook_ordinals(n integer) RETURNS integer[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN ARRAY(SELECT generate_series(1, n));

-- 1..(levels in a frame held whole), for a row whose levels do not fit dec64.
CREATE FUNCTION krakenbook_raw_ordinals(raw jsonb) RETURNS integer[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN krakenbook_ordinals(jsonb_array_length(coalesce(raw -> 'data' -> 0 -> 'bids', '[]'))
                               + jsonb_array_length(coalesce(raw -> 'data' -> 0 -> 'asks', '[]')));

DROP INDEX krakenbook_book_raw_levels_time_idx;
DROP INDEX krakenbook_book_raw_levels_symbol_idx;

-- The received-order index summarizes each page range as soon as the writer moves past it
-- (autovacuum does it within autovacuum_naptime, a minute by default), instead of at the
-- chunk's next vacuum: a range not summarized matches every seq, so `replay --verify` read all
-- of a freshly written day for each window. New chunks copy the option from the hypertable's
-- index; existing chunks' indexes are set here.
ALTER INDEX krakenbook_book_order_idx SET (autosummarize = on);
DO $do$
DECLARE
    idx text;
BEGIN
    FOR idx IN
        SELECT format('%I.%I', c.schema_name, ci.index_name)
          FROM _timescaledb_catalog.chunk_index ci
          JOIN _timescaledb_catalog.chunk c ON c.id = ci.chunk_id
         WHERE ci.hypertable_index_name = 'krakenbook_book_order_idx'
           AND to_regclass(format('%I.%I', c.schema_name, ci.index_name)) IS NOT NULL
    LOOP
        EXECUTE format('ALTER INDEX %s SET (autosummarize = on)', idx);
    END LOOP;
END
$do$;
