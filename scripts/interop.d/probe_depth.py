"""A book subscription deeper than the record, sent to the replay server by hand.

    probe_depth.py --url ws://127.0.0.1:PORT/v2 --symbol BTC/USD --depth 100 --recorded 25 --results DIR

Kraken refuses a depth it does not serve with an error ack (`Subscription depth not supported`, as
the simulator does); a replay server holding a depth-25 record cannot serve depth 100, so it must
refuse it the same way rather than ack it and serve 25 levels. Writes one result (kind "probe").
"""

from __future__ import annotations

import argparse
import asyncio
import json

from common import Result


async def probe(url: str, symbol: str, depth: int, timeout: float = 15.0) -> dict:
    import websockets  # a dependency of python-kraken-sdk, pinned in the lock file

    seen: dict = {"ack": None, "snapshot_levels": None}
    async with websockets.connect(url, open_timeout=timeout, max_size=None) as ws:
        await ws.send(json.dumps({"method": "subscribe", "params": {"channel": "book", "symbol": [symbol], "depth": depth}, "req_id": 7}))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            try:
                msg = json.loads(await asyncio.wait_for(ws.recv(), timeout=max(0.1, deadline - loop.time())))
            except asyncio.TimeoutError:
                break
            if msg.get("method") == "subscribe":
                seen["ack"] = msg
                if msg.get("success") is False:
                    break
            elif msg.get("channel") == "book" and msg.get("type") == "snapshot":
                data = msg["data"][0]
                seen["snapshot_levels"] = max(len(data.get("bids") or []), len(data.get("asks") or []))
                break
    return seen


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--symbol", required=True)
    ap.add_argument("--depth", type=int, required=True)
    ap.add_argument("--recorded", type=int, required=True)
    ap.add_argument("--source", default="replay server")
    ap.add_argument("--results", required=True)
    args = ap.parse_args()
    r = Result("a raw WebSocket client (this script)", f"{args.source}: book depth {args.depth} on a depth-{args.recorded} record", "probe")
    try:
        seen = asyncio.run(probe(args.url, args.symbol, args.depth))
    except Exception as exc:  # noqa: BLE001: the probe's failure is its row
        r.check("probe ran", False, f"{type(exc).__name__}: {exc}")
        r.write(args.results, "probe-depth")
        return 1
    ack = seen["ack"] or {}
    r.data["received"] = 1 if ack else 0
    if ack.get("success") is False:
        error = str(ack.get("error", ""))
        r.check("refused with Kraken's error ack", "depth" in error.lower(), f"error ack: {error!r}")
    elif ack:
        r.check(
            "refused with Kraken's error ack",
            False,
            f"acked success at depth {ack.get('result', {}).get('depth')}, snapshot with {seen['snapshot_levels']} levels a side",
        )
    else:
        r.check("refused with Kraken's error ack", False, "no ack at all")
    r.write(args.results, "probe-depth")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
