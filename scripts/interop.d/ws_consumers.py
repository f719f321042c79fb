"""ccxt.pro's kraken and python-kraken-sdk's SpotOrderBookClient against a Kraken v2 server.

    ws_consumers.py --consumer ccxt|sdk --url ws://127.0.0.1:PORT/v2 --source NAME --mode live|replay
                    --symbols A,B --depths 10,25 --duration SECS --results DIR

Both libraries fetch pair data over Kraken's REST API, which is unreachable offline; this script
reads the pairs from the server's own `instrument` channel and hands them over (ccxt:
`set_markets`; the SDK: the `Market` object its order book client asks for decimals). Nothing
else in either library is changed: each builds its books with its own code, and after every book
message the script records the book the library holds, recomputes Kraken's checksum from it and
compares it with the frame's, and keeps a sample of instants to compare with `book --at` later.

Mode `live` runs for --duration seconds, reconnecting as the library does after a dropped
connection. Mode `replay` runs until the server closes a connection with code 1000 and the reason
"end of recording", when no book frame arrived for --idle seconds (the record ended without saying
so), or after --duration. A connection the replay server drops before that (it drops one where
the record of a subscribed symbol has a gap, as Kraken drops a connection) is recorded with the
Kraken timestamp of its last book frame, and the consumer reconnects and goes on, the SDK by itself,
ccxt by watching again; the report checks each drop against the coverage gaps of `query`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
import traceback
from decimal import Decimal

from common import Result, at_precision, ccxt_market, fetch_instruments, iso_to_micros, kraken_checksum, pick_samples, sample


class Tracker:
    """What one client instance (one connection, one depth) received and held."""

    def __init__(self, consumer: str, source: str, depth: int, precisions: dict[str, tuple[int, int]]):
        self.result = Result(consumer, f"{source}, depth {depth}", "ws")
        self.depth = depth
        self.precisions = precisions
        self.timeline: list[dict] = []
        self.pending: dict[str, dict] = {}
        self.snapshot_no: dict[str, int] = {}
        self.book_messages = 0
        self.snapshots = 0
        self.script_ok = 0
        self.script_failed = 0
        self.script_failures: list[str] = []
        self.own_ok = 0
        self.own_failed = 0
        self.own_unchecked = 0
        self.connections = 0
        self.max_ts: int | None = None
        self.out_of_order = 0
        self.old_snapshots = 0
        self.max_lag_us = 0
        self.last_event: dict[str, str] = {}
        self.unasked_snapshots = 0
        self.symbol_ts: dict[str, int] = {}
        self.rewinds = 0
        self.max_rewind_us = 0
        self.first_book_at: float | None = None
        self.last_book_at: float | None = None
        self.close_info: str | None = None
        self.stopped_early = False
        # The end of the record seen (a close with code 1000, "end of recording").
        self.ended = False
        # Connections closed any other way: {"last_us": the Kraken timestamp of the last book frame
        # received on it (None: none), "before_us": the last book frame on any earlier one, "how"}.
        self.drops: list[dict] = []
        self.last_us_any: int | None = None
        # The SDK's sockets seen: id -> [socket, last book frame's timestamp on it, reported].
        self.sockets: dict[int, list] = {}
        # The frames themselves, read by the script: each message applied whole (then truncated to
        # the depth) must give the frame's checksum; applied level by level with the side truncated
        # after each level (from the same correct book) it must too, on Kraken.
        self.truth: dict[str, dict[str, dict[Decimal, Decimal]]] = {}
        self.frame_updates = 0
        self.frame_bad = 0
        self.per_level_bad = 0
        dump_dir = os.environ.get("INTEROP_FRAMES")  # debugging: every frame received, one JSON line each
        self.dump = open(os.path.join(dump_dir, f"{consumer.split()[0]}-{source}-d{depth}.ndjson".replace(" ", "_").replace("/", "")), "w") if dump_dir else None

    # Every decoded frame, before the library handles it.
    def raw(self, msg: object) -> None:
        if self.dump is not None:
            self.dump.write(json.dumps(msg) + "\n")
        if not isinstance(msg, dict):
            return
        channel = msg.get("channel")
        if channel == "status":
            self.connections += 1
            if self.max_ts is not None:
                self.last_us_any = self.max_ts
            self.max_ts = None
            self.last_event = {}
            return
        if msg.get("method") == "subscribe":
            result = msg.get("result") or {}
            if msg.get("success") and result.get("channel") == "book":
                self.last_event[result.get("symbol")] = "ack"
            elif msg.get("success") is False:
                self.result.note(f"subscription refused: {str(msg.get('error'))[:120]}")
            return
        if channel != "book" or not msg.get("data"):
            return
        data = msg["data"][0]
        symbol = data.get("symbol")
        kind = msg.get("type")
        if kind == "snapshot" and self.last_event.get(symbol) != "ack":
            self.unasked_snapshots += 1
        self.check_frame(symbol, kind, data)
        self.last_event[symbol] = kind
        stamp = data.get("timestamp")
        if stamp:
            us = iso_to_micros(stamp)
            last = self.symbol_ts.get(symbol)
            if kind == "snapshot" and last is not None and us < last:
                self.rewinds += 1
                self.max_rewind_us = max(self.max_rewind_us, last - us)
            self.symbol_ts[symbol] = us
            if self.max_ts is not None and us < self.max_ts:
                if kind == "snapshot":
                    # A snapshot carries the time of its book's last change (as Kraken's do): a
                    # symbol subscribed after others started is stamped before their latest frame.
                    self.old_snapshots += 1
                else:
                    self.out_of_order += 1
                    self.max_lag_us = max(self.max_ts - us, self.max_lag_us)
            self.max_ts = us if self.max_ts is None else max(self.max_ts, us)
        now = time.monotonic()
        self.first_book_at = self.first_book_at or now
        self.last_book_at = now

    def connection_closed(self, code: int | None, reason: str, last_us: int | None) -> None:
        """A connection ended: with the end of the record, or as a drop (`code` None: no close
        frame). `last_us`: the Kraken timestamp of its last book frame."""
        if self.ended:
            return
        if code == 1000 and reason == "end of recording":
            self.ended = True
            self.close_info = "the server closed the connection: code 1000, reason 'end of recording'"
            return
        how = "no close frame" if code in (None, 1006) else f"close code {code}" + (f", reason {reason!r}" if reason else "")
        self.drops.append({"last_us": last_us, "before_us": self.last_us_any, "how": how})

    def check_frame(self, symbol: str, kind: str, data: dict) -> None:
        if symbol not in self.precisions:
            return
        pp, qp = self.precisions[symbol]
        levels = {
            side: [(at_precision(lv["price"], pp), at_precision(lv["qty"], qp)) for lv in data.get(key) or []]
            for side, key in (("bid", "bids"), ("ask", "asks"))
        }

        def top(book: dict[Decimal, Decimal], side: str) -> list[tuple[Decimal, Decimal]]:
            return sorted(book.items(), key=lambda kv: -kv[0] if side == "bid" else kv[0])[: self.depth]

        if kind == "snapshot":
            self.truth[symbol] = {side: dict(levels[side]) for side in ("bid", "ask")}
            return
        book = self.truth.get(symbol)
        if book is None:
            return
        self.frame_updates += 1
        want = int(data.get("checksum", -1))
        per_level = {}
        for side in ("bid", "ask"):
            stepwise = dict(book[side])
            for price, qty in levels[side]:
                if qty == 0:
                    stepwise.pop(price, None)
                else:
                    stepwise[price] = qty
                stepwise = dict(top(stepwise, side))
            per_level[side] = stepwise
            for price, qty in levels[side]:
                if qty == 0:
                    book[side].pop(price, None)
                else:
                    book[side][price] = qty
            book[side] = dict(top(book[side], side))
        if kraken_checksum(top(book["ask"], "ask"), top(book["bid"], "bid"), pp, qp) != want:
            self.frame_bad += 1
        elif per_level["bid"] != book["bid"] or per_level["ask"] != book["ask"]:
            self.per_level_bad += 1  # a level lost: a checksum failure if in the top 10, else a silent one

    def observe(self, msg: dict, bids: list[tuple[Decimal, Decimal]], asks: list[tuple[Decimal, Decimal]], own: bool | None) -> None:
        """The book the library holds right after handling book message `msg`; `own` is the
        library's own checksum verdict (None: it did not check this message)."""
        data = msg["data"][0]
        symbol = data["symbol"]
        kind = msg.get("type")
        self.book_messages += 1
        if kind == "snapshot":
            self.snapshots += 1
            self.snapshot_no[symbol] = self.snapshot_no.get(symbol, 0) + 1
        if own is None:
            self.own_unchecked += 1
        elif own:
            self.own_ok += 1
        else:
            self.own_failed += 1
        pp, qp = self.precisions[symbol]
        mine = kraken_checksum(asks, bids, pp, qp)
        if mine == int(data.get("checksum", -1)):
            self.script_ok += 1
        else:
            self.script_failed += 1
            if len(self.script_failures) < 5:
                self.script_failures.append(f"{symbol} {kind} {data.get('timestamp')}: held {mine}, frame {data.get('checksum')}")
        stamp = data.get("timestamp")
        if not stamp:
            return
        us = iso_to_micros(stamp)
        prev = self.pending.get(symbol)
        if prev is not None and us > prev["us"]:
            # Nothing else of this symbol at prev's instant can follow: its book is final there.
            self.timeline.append(prev)
        obs = sample(symbol, stamp, bids, asks, self.depth, "")
        obs["us"] = us
        obs["snapshot_no"] = self.snapshot_no.get(symbol, 0)
        self.pending[symbol] = obs

    def finish(self, own_label: str, name: str, results: str) -> None:
        r = self.result
        r.data["received"] = self.book_messages
        r.data["own_checksums"] = (
            {"ok": self.own_ok, "failed": self.own_failed, "unchecked": self.own_unchecked} if own_label else None
        )
        r.data["own_checksum_note"] = own_label
        r.data["script_checksums"] = {"ok": self.script_ok, "failed": self.script_failed, "first_failures": self.script_failures}
        for obs in self.timeline:
            obs.pop("us", None)
        r.data["samples"] = pick_samples(self.timeline, per_symbol=6, extra=4)
        r.data["connections"] = self.connections
        r.data["out_of_order"] = self.out_of_order
        r.data["old_snapshots"] = self.old_snapshots
        r.data["max_lag_s"] = self.max_lag_us / 1e6
        r.data["unasked_snapshots"] = self.unasked_snapshots
        r.data["close_info"] = self.close_info
        r.data["ended"] = self.ended
        r.data["drops"] = self.drops
        r.data["rewinds"] = self.rewinds
        r.data["stopped_early"] = self.stopped_early
        r.data["frames"] = {"updates": self.frame_updates, "bad": self.frame_bad, "per_level_bad": self.per_level_bad}
        r.note(
            f"the frames themselves: {self.frame_updates - self.frame_bad}/{self.frame_updates} updates verify applied whole; "
            f"applied level by level with truncation after each level, {self.per_level_bad} lose a level"
            + (f" ({100 * self.per_level_bad / max(1, self.frame_updates):.1f}%)" if self.per_level_bad else "")
        )
        if self.rewinds:
            r.note(f"{self.rewinds} snapshot(s) older than the symbol's previous frame on the same connection (up to {self.max_rewind_us / 1e6:.3f} s back): a resubscription started over in the past")
        if self.own_failed and "sdk" in r.data["consumer"].lower():
            r.note("after each failure the SDK unsubscribes, pauses its whole connection for 3 s, and subscribes again")
        r.note(f"{self.connections} connection(s), {self.snapshots} snapshots")
        if self.unasked_snapshots:
            r.note(f"{self.unasked_snapshots} snapshot(s) arrived without a subscription asking for them")
        if self.out_of_order:
            r.note(f"{self.out_of_order} updates older than a frame already received on the connection (up to {self.max_lag_us / 1e6:.3f} s)")
        if self.old_snapshots:
            r.note(f"{self.old_snapshots} snapshots stamped before the latest frame received (a snapshot carries its book's last change)")
        if self.drops:
            hows = sorted({d["how"] for d in self.drops})
            r.note(f"{len(self.drops)} connection(s) dropped by the server ({', '.join(hows)}); the consumer reconnected after each")
        if self.close_info:
            r.note(self.close_info)
        r.check("book messages received", self.book_messages > 0, f"{self.book_messages}")
        r.write(results, name)


def pair_precisions(instruments: dict[str, dict], symbols: list[str]) -> dict[str, tuple[int, int]]:
    missing = [s for s in symbols if s not in instruments]
    if missing:
        raise SystemExit(f"the server's instrument channel does not list {missing}")
    return {s: (int(instruments[s]["price_precision"]), int(instruments[s]["qty_precision"])) for s in symbols}


# ---------------------------------------------------------------------------------------------
# python-kraken-sdk


async def run_sdk(args, instruments: dict[str, dict]) -> list[Tracker]:
    from importlib.metadata import version

    from kraken.spot import SpotOrderBookClient

    label = f"python-kraken-sdk {version('python-kraken-sdk')} SpotOrderBookClient"
    precisions = pair_precisions(instruments, args.symbols)
    base_url = args.url[: -len("/v2")] if args.url.endswith("/v2") else args.url

    class OfflineMarket:
        """Stands in for the SDK's REST `Market`: the decimals its checksum needs, from the
        server's instrument channel."""

        def get_asset_pairs(self, pair: str | list[str] | None = None, **_kw) -> dict:
            names = [pair] if isinstance(pair, str) else list(pair or precisions)
            return {n: {"pair_decimals": precisions[n][0], "lot_decimals": precisions[n][1], "wsname": n} for n in names}

    trackers: list[Tracker] = []
    clients = []
    for depth in args.depths:
        tracker = Tracker(label, args.source, depth, precisions)
        trackers.append(tracker)

        class Client(SpotOrderBookClient):
            WS_URL = base_url  # the SDK appends "/v2"

            async def on_message(self, message, _t=tracker):  # observe, then the SDK's own handling
                _t.raw(message)
                sock = getattr(getattr(self, "_pub_conn", None), "socket", None)
                if sock is not None:
                    entry = _t.sockets.setdefault(id(sock), [sock, None, False])
                    entry[1] = _t.max_ts
                await super().on_message(message)

            async def on_book_update(self, pair: str, message: dict, _t=tracker) -> None:
                if "error" in message:  # the SDK's own report of a checksum failure; counted below
                    return
                book = self.get(pair=pair)
                if book is None:
                    return
                bids = [(Decimal(p), Decimal(v[0])) for p, v in book["bid"].items()]
                asks = [(Decimal(p), Decimal(v[0])) for p, v in book["ask"].items()]
                own = None if message.get("type") == "snapshot" else bool(book["valid"])
                _t.observe(message, bids, asks, own)

        client = Client(depth=depth)
        client._SpotOrderBookClient__market = OfflineMarket()  # noqa: SLF001: the REST seam, see the module doc
        clients.append((client, tracker))

    for client, _ in clients:
        await client.start()
        await client.add_book(pairs=args.symbols)

    await supervise(args, [t for _, t in clients], lambda i: sdk_closed(clients[i][1]))
    for client, _ in clients:
        try:
            await asyncio.wait_for(client.close(), timeout=10)
        except Exception as exc:  # noqa: BLE001: closing is best effort, the result is written anyway
            logging.debug("closing the SDK client: %s", exc)
    for _, t in clients:
        if t.connections > 1:
            t.result.note("the SDK reconnected and resubscribed by itself after each drop")
    return trackers


def sdk_closed(tracker: Tracker) -> None:
    """Reports each of the SDK's connections that has closed since the last call: with the close
    frame's code and reason, or without one (the SDK reconnects by itself after either)."""
    for entry in tracker.sockets.values():
        sock, last_us, reported = entry
        if reported or getattr(getattr(sock, "state", None), "name", None) != "CLOSED":
            continue
        entry[2] = True
        # websockets keeps the close frame received on its protocol object (None: none came).
        rcvd = getattr(getattr(sock, "protocol", None), "close_rcvd", None) or getattr(sock, "close_rcvd", None)
        tracker.connection_closed(rcvd.code if rcvd else None, rcvd.reason if rcvd else "", last_us)


# ---------------------------------------------------------------------------------------------
# ccxt


async def run_ccxt(args, instruments: dict[str, dict]) -> list[Tracker]:
    import ccxt
    import ccxt.pro as ccxtpro

    label = f"ccxt {ccxt.__version__} (ccxt.pro kraken, WebSocket v2)"
    precisions = pair_precisions(instruments, args.symbols)
    markets = []
    for symbol in args.symbols:
        inst = instruments[symbol]
        pp, qp = precisions[symbol]
        markets.append(
            ccxt_market(
                symbol,
                float(inst.get("price_increment") or 10**-pp),
                float(inst.get("qty_increment") or 10**-qp),
            )
        )

    from aiohttp import WSMsgType

    stop = asyncio.Event()
    trackers: list[Tracker] = []
    exchanges = []
    for depth in args.depths:
        tracker = Tracker(label, args.source, depth, precisions)
        trackers.append(tracker)

        class Kraken(ccxtpro.kraken):
            checksum_broken: str | None = None

            def client(self, url, _t=tracker):
                # Each new connection's close frame (code and reason) is kept for on_close.
                c = super().client(url)
                if not getattr(c, "_interop_watched", False):
                    c._interop_watched = True
                    handle = c.handle_message

                    def keep_close(message, _c=c, _handle=handle):
                        if message.type == WSMsgType.CLOSE:
                            _c._interop_close = (message.data, message.extra or "")
                        return _handle(message)

                    c.handle_message = keep_close
                return c

            def on_close(self, client, error, _t=tracker):
                if not stop.is_set() and not getattr(client, "_interop_reported", False):
                    client._interop_reported = True
                    code, reason = getattr(client, "_interop_close", (error, ""))
                    _t.connection_closed(code if isinstance(code, int) else None, str(reason or ""), _t.max_ts)
                return super().on_close(client, error)

            def handle_message(self, client, message, _t=tracker):
                _t.raw(message)
                return super().handle_message(client, message)

            def handle_order_book(self, client, message, _t=tracker):
                symbol = message["data"][0]["symbol"]
                checking = self.options["watchOrderBook"].get("checksum") is True
                try:
                    super().handle_order_book(client, message)
                except Exception as exc:  # noqa: BLE001: ccxt's own checksum code; see the note it leaves
                    if not checking:
                        raise
                    # ccxt's checksum code itself failed: say so, verify without it from here on.
                    self.checksum_broken = f"{type(exc).__name__}: {exc}"
                    self.options["watchOrderBook"]["checksum"] = False
                    checking = False
                book = self.orderbooks.get(symbol)
                if book is None:  # ccxt dropped the book: its checksum disagreed
                    _t.observe(message, [], [], False)
                    return
                bids = [(at_precision(p, precisions[symbol][0]), at_precision(q, precisions[symbol][1])) for p, q in book["bids"]]
                asks = [(at_precision(p, precisions[symbol][0]), at_precision(q, precisions[symbol][1])) for p, q in book["asks"]]
                _t.observe(message, bids, asks, True if checking else None)

        ex = Kraken({"enableRateLimit": False})
        ex.urls["api"]["ws"]["publicV2"] = args.url
        ex.urls["api"]["ws"]["public"] = args.url
        ex.options["watchOrderBook"]["checksum"] = True
        ex.set_markets(markets)
        exchanges.append((ex, tracker))

    async def watch(ex, tracker: Tracker, symbol: str) -> None:
        from ccxt.base.errors import ChecksumError, NetworkError

        while not stop.is_set():
            try:
                await ex.watch_order_book(symbol, limit=tracker.depth)
            except ChecksumError:
                continue  # ccxt unsubscribed the book; watching again resubscribes it
            except NetworkError:
                if tracker.ended:
                    return
                await asyncio.sleep(0.5)  # watch again: ccxt reconnects and resubscribes
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001: reported in the row
                tracker.result.error(f"{symbol}: {type(exc).__name__}: {str(exc)[:200]}")
                await asyncio.sleep(1.0)

    tasks = [asyncio.create_task(watch(ex, t, s)) for ex, t in exchanges for s in args.symbols]

    await supervise(args, [t for _, t in exchanges], lambda i: None)
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for ex, t in exchanges:
        if ex.checksum_broken:
            t.own_unchecked += t.own_ok + t.own_failed
            t.own_ok = t.own_failed = 0
            t.result.note(f"ccxt's own checksum option (watchOrderBook.checksum) fails in ccxt itself: {ex.checksum_broken}; the script verifies instead")
        try:
            await asyncio.wait_for(ex.close(), timeout=10)
        except Exception as exc:  # noqa: BLE001
            logging.debug("closing ccxt: %s", exc)
    return trackers


# ---------------------------------------------------------------------------------------------


async def supervise(args, trackers: list[Tracker], closed) -> None:
    """Waits for the end of the run (see the module doc); `closed(i)` reports the connections of
    consumer i that closed since it was last called."""
    start = time.monotonic()
    while True:
        await asyncio.sleep(0.2)
        now = time.monotonic()
        if now - start > args.duration:
            if args.mode == "replay":
                for t in trackers:
                    if not t.close_info:
                        t.stopped_early = True
                        t.result.note(f"still receiving after {args.duration:.0f} s: stopped before the end of the record")
            return
        if args.mode != "replay":
            for i in range(len(trackers)):
                closed(i)
            continue
        done = True
        for i, t in enumerate(trackers):
            if t.close_info:
                continue
            closed(i)  # reports the connections closed since the last look
            if t.ended:
                continue
            if t.last_book_at is not None and now - t.last_book_at > args.idle:
                t.close_info = f"no book frame for {args.idle:.0f} s and no close: the end of the record was not announced"
                continue
            if t.last_book_at is None and now - start > args.idle * 3:
                t.close_info = "no book frame at all"
                continue
            done = False
        if done:
            return


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--consumer", choices=["ccxt", "sdk"], required=True)
    ap.add_argument("--url", required=True)
    ap.add_argument("--source", required=True)
    ap.add_argument("--mode", choices=["live", "replay"], required=True)
    ap.add_argument("--symbols", required=True)
    ap.add_argument("--depths", default="10,25")
    ap.add_argument("--duration", type=float, default=45)
    ap.add_argument("--idle", type=float, default=8)
    ap.add_argument("--results", required=True)
    ap.add_argument("--name", required=True)
    args = ap.parse_args()
    args.symbols = [s for s in args.symbols.split(",") if s]
    args.depths = [int(d) for d in args.depths.split(",") if d]
    logging.basicConfig(level=os.environ.get("INTEROP_LOG", "CRITICAL"))

    async def run() -> list[Tracker]:
        instruments = await fetch_instruments(args.url)
        if args.consumer == "sdk":
            return await run_sdk(args, instruments)
        return await run_ccxt(args, instruments)

    try:
        trackers = asyncio.run(run())
    except Exception as exc:  # noqa: BLE001: one failed consumer is a row, not a crash of the run
        for depth in args.depths:
            r = Result(args.consumer, f"{args.source}, depth {depth}", "ws")
            r.error(f"{type(exc).__name__}: {exc}")
            r.check("consumer ran", False, traceback.format_exc()[-600:])
            r.write(args.results, f"{args.name}-d{depth}")
        traceback.print_exc()
        return 1
    own_label = "SDK's own checksum check" if args.consumer == "sdk" else "ccxt watchOrderBook.checksum"
    for t in trackers:
        t.finish(own_label, f"{args.name}-d{t.depth}", args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
