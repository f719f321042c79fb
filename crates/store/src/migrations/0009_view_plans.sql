-- krakenbook schema, version 9: plans on the compatibility views that the planner sizes right
-- and makes quickly (issue 13: the original README's queries within 2× of the older layout).
--
-- The views themselves are (re)created by `migrate` after the migrations (crates/store/src/
-- layout.rs); this migration adds what they call:
-- - krakenbook_serial(): NULL, as the book rows' conn_seq in kraken_orderbook_messages, and
--   PARALLEL UNSAFE, which keeps every query on that view serial. PostgreSQL decides whether a
--   query may run in parallel from every function its views name, before it inlines them (this
--   one becomes the constant NULL: nothing runs per row). Why serial: TimescaleDB 2.19 expands a
--   hypertable under a UNION ALL after the UNION ALL was sized, so the view is planned at 2 rows
--   whatever the tables hold, and the parallel plans chosen on that estimate send every row
--   through a Gather to the leader (COUNT(*): 32-34 ms against 5.3-5.9 ms serial on 125,000
--   messages).
--   An operator who wants parallel plans on the view back runs
--   `ALTER FUNCTION krakenbook_serial() PARALLEL SAFE` (migrate never redefines it);
-- - krakenbook_level_ordinals(levels, raw): 1..n, the ordinals of a message's levels, for the
--   rows the entries view's inline array 1..256 does not cover (more than 256 levels, or levels
--   in raw only). PL/pgSQL, so the planner sees one function call where the SQL functions of
--   schema 8 (krakenbook_ordinals, krakenbook_raw_ordinals, kept but no longer used by the
--   views) were inlined into every query on the view;
-- - krakenbook_raw_level(raw, k, key): level k's price or qty of a frame held whole, for the rows
--   whose levels are in raw only (none from Kraken), likewise one call where the view spelled
--   the jsonb path out twice.
-- What must always hold: the views return what they returned at schema 8, row for row and as
-- text; krakenbook_level_ordinals(levels, raw) is 1..(levels in the row), bids first.

CREATE FUNCTION krakenbook_serial() RETURNS bigint
    LANGUAGE sql STABLE PARALLEL UNSAFE
    RETURN NULL::bigint;

CREATE FUNCTION krakenbook_level_ordinals(levels bigint[], raw jsonb) RETURNS integer[]
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $f$
BEGIN
    IF levels IS NOT NULL THEN
        RETURN ARRAY(SELECT generate_series(1, cardinality(levels) / 2));
    END IF;
    RETURN ARRAY(SELECT generate_series(1,
        jsonb_array_length(coalesce(raw -> 'data' -> 0 -> 'bids', '[]'))
        + jsonb_array_length(coalesce(raw -> 'data' -> 0 -> 'asks', '[]'))));
END
$f$;

CREATE FUNCTION krakenbook_raw_level(raw jsonb, k integer, key text) RETURNS numeric
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $f$
BEGIN
    RETURN ((coalesce(raw -> 'data' -> 0 -> 'bids', '[]')
             || coalesce(raw -> 'data' -> 0 -> 'asks', '[]')) -> (k - 1) ->> key)::numeric;
END
$f$;
