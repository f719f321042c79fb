"""Shared pieces of scripts/interop: Kraken's checksum, exact books, the `book --at` oracle, result files.

Every consumer step writes one JSON result per table row (consumer, source) into the results
directory; `report.py` compares the sampled books with `krakenbook book SYMBOL --at T --json` and
prints the table. Nothing here uses a float for a price or a quantity: consumers that hold floats
are converted by rounding to the pair's precision, and that conversion is named in the notes.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import zlib
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Iterable

Level = tuple[Decimal, Decimal]


def ccxt_market(symbol: str, price_step: float, amount_step: float) -> dict:
    """A spot market as ccxt's Kraken client wants it from `set_markets`: `symbol` ("BTC/USD"),
    its price and quantity increments."""
    base, quote = symbol.split("/")
    return {
        "id": symbol.replace("/", ""),
        "symbol": symbol,
        "base": base,
        "quote": quote,
        "baseId": base,
        "quoteId": quote,
        "type": "spot",
        "spot": True,
        "margin": False,
        "swap": False,
        "future": False,
        "option": False,
        "contract": False,
        "active": True,
        "precision": {"price": price_step, "amount": amount_step},
        "limits": {},
        "info": {"wsname": symbol, "altname": symbol.replace("/", "")},
    }


def kraken_checksum(asks: Iterable[Level], bids: Iterable[Level], price_prec: int, qty_prec: int) -> int:
    """Kraken's v2 book checksum: the top ten asks (best first) then the top ten bids, each
    price and quantity written at the pair's precision, the decimal point removed, leading zeros
    stripped, all concatenated; CRC32 of that text."""
    parts: list[str] = []
    for side in (list(asks)[:10], list(bids)[:10]):
        for price, qty in side:
            for value, prec in ((price, price_prec), (qty, qty_prec)):
                text = f"{value:.{prec}f}".replace(".", "").lstrip("0")
                parts.append(text)
    return zlib.crc32("".join(parts).encode())


def at_precision(value: float | str | Decimal, prec: int) -> Decimal:
    """A consumer's number (a float for ccxt and hftbacktest) as the exact decimal it stands for
    at the pair's precision."""
    return Decimal(repr(value) if isinstance(value, float) else str(value)).quantize(Decimal(1).scaleb(-prec))


def micros_to_iso(us: int) -> str:
    """Microseconds since the epoch as RFC 3339 with six decimals (Kraken's timestamp form)."""
    secs, frac = divmod(int(us), 1_000_000)
    return datetime.fromtimestamp(secs, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:06d}Z"


def iso_to_micros(text: str) -> int:
    """Kraken's `2026-08-16T23:37:04.316445Z` as microseconds since the epoch, exactly."""
    date, _, frac = text.rstrip("Z").partition(".")
    secs = int(datetime.strptime(date, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp())
    return secs * 1_000_000 + int((frac + "000000")[:6])


def levels_json(levels: Iterable[Level]) -> list[list[str]]:
    return [[str(p), str(q)] for p, q in levels]


def sample(symbol: str, at: str, bids: Iterable[Level], asks: Iterable[Level], depth: int, why: str) -> dict:
    """One book a consumer held at instant `at` (Kraken's clock), to compare with `book --at`:
    the consumer's whole book against the oracle's top `depth` levels."""
    return {
        "symbol": symbol,
        "at": at,
        "depth": depth,
        "why": why,
        "bids": levels_json(bids),
        "asks": levels_json(asks),
    }


def pick_samples(timeline: list[dict], per_symbol: int, extra: int) -> list[dict]:
    """Chooses the instants to compare from a consumer's observations (each a `sample` dict with a
    `snapshot_no` field, in arrival order, already final at their instant): `per_symbol` spread
    evenly over each symbol's record, plus the first observation after each new snapshot (a
    reconnect or a resubscription: where exports and servers went wrong before), at most `extra`."""
    out: list[dict] = []
    by_symbol: dict[str, list[dict]] = {}
    for obs in timeline:
        by_symbol.setdefault(obs["symbol"], []).append(obs)
    for obs_list in by_symbol.values():
        chosen: dict[int, dict] = {}
        n = len(obs_list)
        for k in range(per_symbol):
            if n:
                i = min(n - 1, (k * n) // per_symbol + n // (2 * per_symbol))
                chosen.setdefault(i, dict(obs_list[i], why="spread"))
        seen_snapshot = None
        taken = 0
        for i, obs in enumerate(obs_list):
            if obs.get("snapshot_no") != seen_snapshot:
                if seen_snapshot is not None and taken < extra:
                    chosen.setdefault(i, dict(obs, why="first after a new snapshot"))
                    taken += 1
                seen_snapshot = obs.get("snapshot_no")
        out.extend(chosen[i] for i in sorted(chosen))
    for obs in out:
        obs.pop("snapshot_no", None)
    return out


class Result:
    """One row of the table: what one consumer got from one source."""

    def __init__(self, consumer: str, source: str, kind: str):
        self.data: dict = {
            "consumer": consumer,
            "source": source,
            "kind": kind,  # "ws", "export-book" (books compared), "export-read" (reading checks)
            "received": 0,  # messages or rows
            "received_unit": "messages",
            "own_checksums": None,  # {"ok": n, "failed": n} when the consumer verifies itself
            "own_checksum_note": "",
            "script_checksums": None,  # {"ok": n, "failed": n, "first_failures": [...]}
            "checks": [],  # [{"what": str, "ok": bool, "detail": str}]
            "samples": [],
            "errors": [],
            "notes": [],
        }

    def check(self, what: str, ok: bool, detail: str = "") -> None:
        self.data["checks"].append({"what": what, "ok": bool(ok), "detail": detail})

    def note(self, text: str) -> None:
        if text not in self.data["notes"]:
            self.data["notes"].append(text)

    def error(self, text: str) -> None:
        self.data["errors"].append(text)

    def write(self, results_dir: str | Path, name: str) -> None:
        path = Path(results_dir) / f"{name}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(path)


class Oracle:
    """`krakenbook book SYMBOL --at T --depth N --json`, the project's own answer, cached."""

    def __init__(self, binary: str, database_url: str, depth: int, cache_file: str | None = None):
        self.binary = binary
        self.env = dict(os.environ, DATABASE_URL=database_url, KRAKENBOOK_LOG="error")
        self.depth = depth
        self.cache: dict[str, dict] = {}
        self.cache_file = cache_file
        if cache_file and os.path.exists(cache_file):
            self.cache = json.loads(Path(cache_file).read_text())

    def book(self, symbol: str, at: str) -> dict:
        key = f"{symbol}@{at}"
        if key in self.cache:
            return self.cache[key]
        proc = subprocess.run(
            [self.binary, "book", symbol, "--at", at, "--depth", str(self.depth), "--json"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        answer: dict = {"exit": proc.returncode}
        try:
            answer["json"] = json.loads(proc.stdout) if proc.stdout.strip() else None
        except json.JSONDecodeError:
            answer["json"] = None
        if answer["json"] is None:
            answer["stderr"] = proc.stderr.strip()[-400:]
        self.cache[key] = answer
        return answer

    def save(self) -> None:
        if self.cache_file:
            Path(self.cache_file).write_text(json.dumps(self.cache))


def oracle_levels(side: list[dict] | None) -> list[Level]:
    return [(Decimal(level["price"]), Decimal(level["qty"])) for level in side or []]


def describe_difference(mine: list[Level], theirs: list[Level], side: str) -> str:
    """The first difference between two sides, short."""
    if len(mine) != len(theirs):
        extra = [f"{p} {q}" for p, q in mine if (p, q) not in set(theirs)][:2]
        missing = [f"{p} {q}" for p, q in theirs if (p, q) not in set(mine)][:2]
        return f"{side}: {len(mine)} levels vs {len(theirs)}; extra {extra}, missing {missing}"
    for i, (a, b) in enumerate(zip(mine, theirs)):
        if a != b:
            return f"{side}[{i}]: {a[0]} {a[1]} vs {b[0]} {b[1]}"
    return ""


async def fetch_instruments(url: str, timeout: float = 20.0) -> dict[str, dict]:
    """The pairs a server announces on its `instrument` channel (what Kraken's REST asset pairs
    would give a client offline): {symbol: {"price_precision", "qty_precision", "price_increment",
    "qty_increment", "base", "quote", ...}}."""
    import websockets  # a dependency of python-kraken-sdk, pinned in the lock file

    async with websockets.connect(url, open_timeout=timeout, max_size=None) as ws:
        await ws.send(json.dumps({"method": "subscribe", "params": {"channel": "instrument"}, "req_id": 1}))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            raw = await asyncio.wait_for(ws.recv(), timeout=max(0.1, deadline - loop.time()))
            msg = json.loads(raw)
            if msg.get("channel") == "instrument" and msg.get("type") == "snapshot":
                pairs = msg.get("data", {}).get("pairs", [])
                return {p["symbol"]: p for p in pairs}
            if msg.get("method") == "subscribe" and msg.get("success") is False:
                raise RuntimeError(f"instrument subscription refused: {msg.get('error')}")
    raise TimeoutError(f"no instrument snapshot from {url} within {timeout} s")
