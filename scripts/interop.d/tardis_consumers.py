"""Books rebuilt from krakenbook's incremental export by tardis-format consumers.

    tardis_consumers.py --consumer nautilus|hftbacktest|reference --context RUN/context.json --results DIR

- nautilus: nautilus_trader's `TardisCSVDataLoader(price_precision, size_precision,
  instrument_id).load_deltas(file)` on each symbol's file, every delta applied to a nautilus
  `OrderBook` (L2_MBP) with `apply_delta`.
- hftbacktest: `hftbacktest.data.utils.tardis.convert([file])` on each symbol's file (it mixes
  every row of a file into one book, so one file per symbol), then the events run through
  hftbacktest's own backtester (`HashMapMarketDepthBacktest`), its depth read with `snapshot()`.
- reference: this script's own reading of tardis's documented rule on the multi-symbol CSV (0
  deletes a level, anything else sets it, a snapshot row after an update row starts a new book),
  with exact decimals: what any careful consumer would build.

At sampled instants (spread over each symbol's record, plus just after every snapshot that is not
the file's first: a reconnect) the consumer's whole book is recorded; report.py compares it with
`book --at`. An instant is only sampled where the file's next row of that symbol is later (and for
hftbacktest, received later), so the consumer's book there is the book after that message.
"""

from __future__ import annotations

import argparse
import csv
import json
import traceback
from decimal import Decimal
from importlib.metadata import version
from pathlib import Path

from common import Result, micros_to_iso, sample


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def choose_instants(rows: list[dict], symbol: str, spread: int = 8, extra: int = 6, by_local: bool = False) -> list[tuple[int, str]]:
    """(timestamp µs, why) of the instants to sample for `symbol`: ends of row groups (rows of one
    message share a timestamp) followed by a later row of that symbol."""
    sym_rows = [r for r in rows if r["symbol"] == symbol]
    ends: list[tuple[int, bool]] = []  # (timestamp, group started a new snapshot)
    prev_snapshot = False
    new_snapshot_group = False
    for i, r in enumerate(sym_rows):
        ts = int(r["timestamp"])
        snap = r["is_snapshot"].lower() == "true"
        if snap and not prev_snapshot and i > 0:
            new_snapshot_group = True
        prev_snapshot = snap
        nxt = sym_rows[i + 1] if i + 1 < len(sym_rows) else None
        if nxt is None:
            continue
        if int(nxt["timestamp"]) > ts and (not by_local or int(nxt["local_timestamp"]) > int(r["local_timestamp"])):
            ends.append((ts, new_snapshot_group))
            new_snapshot_group = False
    chosen: dict[int, str] = {}
    n = len(ends)
    for k in range(spread):
        if n:
            chosen.setdefault(ends[min(n - 1, (k * n) // spread + n // (2 * spread))][0], "spread")
    taken = 0
    for ts, after_snapshot in ends:
        if after_snapshot and taken < extra:
            chosen.setdefault(ts, "first after a snapshot that is not the file's first")
            taken += 1
    return sorted(chosen.items())


def per_symbol_files(ctx: dict) -> dict[str, Path]:
    folder = Path(ctx["exports"]) / "per-symbol"
    files = {}
    for symbol in ctx["symbols"].split(","):
        candidates = [p for p in folder.iterdir() if p.suffix == ".csv" and symbol_in_name(symbol, p.name)]
        if len(candidates) == 1:
            files[symbol] = candidates[0]
        elif candidates:
            raise SystemExit(f"several files for {symbol} in {folder}: {[c.name for c in candidates]}")
    return files


def symbol_in_name(symbol: str, name: str) -> bool:
    base, quote = symbol.split("/")
    return any(f"{base}{sep}{quote}" in name for sep in ("-", "_", "", "%2F"))


def precisions_of(ctx: dict) -> tuple[dict[str, tuple[int, int]], str]:
    """Each pair's precisions: from the JSON the export writes beside its files when it writes one
    (any of {symbol: {...}}, [{"symbol": ...}, ...] or one {"symbol": ..., ...} per file, with
    price_precision and qty_precision or size_precision), else the simulator's settings (what
    its instrument channel announced)."""
    symbols = ctx["symbols"].split(",")
    found: dict[str, tuple[int, int]] = {}
    names = []

    def take(symbol: str | None, entry: object) -> None:
        if symbol in symbols and isinstance(entry, dict) and "price_precision" in entry:
            qty = entry.get("qty_precision", entry.get("size_precision", entry.get("amount_precision")))
            if qty is not None:
                found[symbol] = (int(entry["price_precision"]), int(qty))

    for p in sorted(Path(ctx["exports"]).rglob("*.json")):
        try:
            raw = json.loads(p.read_text())
        except ValueError:
            continue
        before = len(found)
        entries = raw if isinstance(raw, list) else raw.get("symbols", raw.get("pairs", [raw])) if isinstance(raw, dict) else []
        if isinstance(entries, dict):
            entries = [dict(v, symbol=k) for k, v in entries.items() if isinstance(v, dict)]
        for entry in entries:
            if isinstance(entry, dict):
                take(entry.get("symbol"), entry)
        if isinstance(raw, dict):
            for k, v in raw.items():
                take(k, v)
        if len(found) > before:
            names.append(p.name)
    if len(found) == len(symbols):
        return found, f"precisions from the export's {', '.join(names)}"
    raw = json.loads(Path(ctx["precisions"]).read_text())
    return {s: (v["price_precision"], v["qty_precision"]) for s, v in raw.items()}, "precisions from the simulator's settings (the export wrote no precision JSON)"


# ---------------------------------------------------------------------------------------------


def run_reference(ctx: dict, results: str) -> None:
    r = Result("tardis rule, exact decimals (this script)", "incremental CSV, all symbols in one file", "export-book")
    r.data["received_unit"] = "rows"
    rows = read_rows(Path(ctx["exports"]) / "incremental_book_L2.csv")
    r.data["received"] = len(rows)
    wanted = {s: dict(choose_instants(rows, s)) for s in ctx["symbols"].split(",")}
    books: dict[str, dict[str, dict[Decimal, Decimal]]] = {}
    last_snapshot: dict[str, bool] = {}
    samples = []
    for i, row in enumerate(rows):
        s = row["symbol"]
        snap = row["is_snapshot"].lower() == "true"
        if snap and not last_snapshot.get(s, False):
            books[s] = {"bid": {}, "ask": {}}
        last_snapshot[s] = snap
        book = books.setdefault(s, {"bid": {}, "ask": {}})
        price, amount = Decimal(row["price"]), Decimal(row["amount"])
        side = book[row["side"]]
        if amount == 0:
            side.pop(price, None)
        else:
            side[price] = amount
        ts = int(row["timestamp"])
        if ts in wanted.get(s, {}):
            nxt = next((rows[j] for j in range(i + 1, len(rows)) if rows[j]["symbol"] == s), None)
            if nxt is not None and int(nxt["timestamp"]) > ts:
                bids = sorted(book["bid"].items(), key=lambda kv: -kv[0])
                asks = sorted(book["ask"].items())
                samples.append(sample(s, micros_to_iso(ts), bids, asks, 25, wanted[s].pop(ts)))
    r.data["samples"] = samples
    r.write(results, "reference")


def run_nautilus(ctx: dict, results: str) -> None:
    from nautilus_trader.adapters.tardis.loaders import TardisCSVDataLoader
    from nautilus_trader.model.book import OrderBook
    from nautilus_trader.model.enums import BookType
    from nautilus_trader.model.identifiers import InstrumentId

    r = Result(f"nautilus_trader {version('nautilus_trader')} TardisCSVDataLoader + OrderBook", "incremental CSV, one file per symbol", "export-book")
    r.data["received_unit"] = "deltas"
    precisions, how = precisions_of(ctx)
    r.note(how)
    r.note(f"per-symbol files: {ctx['per_symbol_mode']}")
    files = per_symbol_files(ctx)
    samples = []
    total = 0
    for symbol, path in sorted(files.items()):
        pp, qp = precisions[symbol]
        instrument = InstrumentId.from_str(f"{symbol}.KRAKEN")
        loader = TardisCSVDataLoader(price_precision=pp, size_precision=qp, instrument_id=instrument)
        deltas = loader.load_deltas(path)
        total += len(deltas)
        rows = read_rows(path)
        wanted = dict(choose_instants(rows, symbol))
        book = OrderBook(instrument, BookType.L2_MBP)
        for i, delta in enumerate(deltas):
            book.apply_delta(delta)
            ts_us = delta.ts_event // 1000
            if ts_us in wanted and i + 1 < len(deltas) and deltas[i + 1].ts_event > delta.ts_event:
                bids = [(lv.price.as_decimal(), sum((o.size.as_decimal() for o in lv.orders()), Decimal(0))) for lv in book.bids()]
                asks = [(lv.price.as_decimal(), sum((o.size.as_decimal() for o in lv.orders()), Decimal(0))) for lv in book.asks()]
                samples.append(sample(symbol, micros_to_iso(ts_us), bids, asks, 25, wanted.pop(ts_us)))
        clears = sum(1 for d in deltas if int(d.action) == 4 or str(d.action).endswith("CLEAR"))
        r.note(f"{symbol}: {len(rows)} rows, {len(deltas)} deltas ({clears} CLEAR)")
    missing = set(ctx["symbols"].split(",")) - set(files)
    if missing:
        r.check("a file for every symbol", False, f"none for {sorted(missing)}")
    r.data["received"] = total
    r.data["samples"] = samples
    r.write(results, "nautilus")


def run_hftbacktest(ctx: dict, results: str) -> None:
    from hftbacktest import BacktestAsset, HashMapMarketDepthBacktest
    from hftbacktest.data.utils import tardis
    from hftbacktest.types import BUY_EVENT, LOCAL_EVENT, SELL_EVENT

    r = Result(f"hftbacktest {version('hftbacktest')} tardis.convert + HashMapMarketDepthBacktest", "incremental CSV, one file per symbol", "export-book")
    r.data["received_unit"] = "events"
    precisions, how = precisions_of(ctx)
    r.note(how)
    r.note(f"per-symbol files: {ctx['per_symbol_mode']}")
    files = per_symbol_files(ctx)
    samples = []
    total = 0
    for symbol, path in sorted(files.items()):
        pp, qp = precisions[symbol]
        tick, lot = 10.0**-pp, 10.0**-qp
        data = tardis.convert([str(path)])
        total += len(data)
        rows = read_rows(path)
        wanted = choose_instants(rows, symbol, by_local=True)
        # The local receive time (as hftbacktest corrected it) of each sampled message.
        local_events = data[(data["ev"] & LOCAL_EVENT) != 0]
        targets = []
        for ts_us, why in wanted:
            hits = local_events["local_ts"][local_events["exch_ts"] == ts_us * 1000]
            if len(hits):
                targets.append((int(hits.max()), ts_us, why))
        asset = (
            BacktestAsset()
            .data([data])
            .linear_asset(1.0)
            .constant_order_latency(0, 0)
            .power_prob_queue_model(2.0)
            .no_partial_fill_exchange()
            .trading_value_fee_model(0.0, 0.0)
            .tick_size(tick)
            .lot_size(lot)
        )
        hbt = HashMapMarketDepthBacktest([asset])
        try:
            hbt.elapse(1)  # starts the clock at the first event (before that it reads as i64::MAX)
            for local_ts, ts_us, why in sorted(targets):
                # Local times are whole microseconds: half a microsecond past the message's receive
                # time includes it and nothing received later.
                step = local_ts + 500 - hbt.current_timestamp
                if step > 0:
                    hbt.elapse(step)
                snap = hbt.depth(0).snapshot()
                bids, asks = [], []
                for ev in snap:
                    level = (Decimal(repr(float(ev["px"]))).quantize(Decimal(1).scaleb(-pp)), Decimal(repr(float(ev["qty"]))).quantize(Decimal(1).scaleb(-qp)))
                    if ev["ev"] & BUY_EVENT == BUY_EVENT:
                        bids.append(level)
                    elif ev["ev"] & SELL_EVENT == SELL_EVENT:
                        asks.append(level)
                hbt.depth(0).snapshot_free(snap)
                bids.sort(key=lambda lv: -lv[0])
                asks.sort(key=lambda lv: lv[0])
                samples.append(sample(symbol, micros_to_iso(ts_us), bids, asks, 25, why))
        finally:
            hbt.close()
        r.note(f"{symbol}: {len(rows)} rows, {len(data)} events")
    r.note("prices and quantities are float64 in hftbacktest: rounded to the pair's precision before comparing")
    missing = set(ctx["symbols"].split(",")) - set(files)
    if missing:
        r.check("a file for every symbol", False, f"none for {sorted(missing)}")
    r.data["received"] = total
    r.data["samples"] = samples
    r.write(results, "hftbacktest")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--consumer", choices=["nautilus", "hftbacktest", "reference"], required=True)
    ap.add_argument("--context", required=True)
    ap.add_argument("--results", required=True)
    args = ap.parse_args()
    ctx = json.loads(Path(args.context).read_text())
    fn = {"nautilus": run_nautilus, "hftbacktest": run_hftbacktest, "reference": run_reference}[args.consumer]
    try:
        fn(ctx, args.results)
    except Exception as exc:  # noqa: BLE001: the failure is this consumer's row
        traceback.print_exc()
        r = Result(args.consumer, "incremental CSV", "export-book")
        r.error(f"{type(exc).__name__}: {str(exc)[:300]}")
        r.check("consumer ran", False, traceback.format_exc()[-600:])
        r.write(args.results, args.consumer)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
