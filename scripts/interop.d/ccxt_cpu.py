"""ccxt beside krakenbook on the same feed, for `krakenbook-bench collect --beside-ccxt PYTHON`.

The original tool's engine: ccxt.pro's Kraken client (WebSocket v2) keeping every book with
watch_order_book, nothing else (no storage, no journal; ccxt's own checksum option is off, as it
raises inside ccxt on the first message: see scripts/interop). It counts the book messages ccxt
handled and the times its connection was lost, and rewrites both to --count-file every 200 ms
("HANDLED LOST"), so that the bench can divide the process's CPU over its measuring window by the
messages handled in it, and refuse a window in which ccxt fell behind (lost its connection). It
exits when its parent (the bench) is gone.

    python ccxt_cpu.py --url ws://127.0.0.1:PORT/v2 --symbols AAA/USD,AAA/EUR --depth 1000 \
        --count-file /tmp/ccxt.count
"""

import argparse
import asyncio
import os
import sys

from common import ccxt_market


async def run(args: argparse.Namespace) -> None:
    import ccxt.pro as ccxtpro

    handled = 0
    lost = 0
    parent = os.getppid()

    class Kraken(ccxtpro.kraken):
        def handle_order_book(self, client, message):
            nonlocal handled
            super().handle_order_book(client, message)
            handled += 1

    symbols = args.symbols.split(",")
    ex = Kraken({"enableRateLimit": False})
    ex.urls["api"]["ws"]["publicV2"] = args.url
    ex.urls["api"]["ws"]["public"] = args.url
    ex.options["watchOrderBook"]["checksum"] = False
    ex.set_markets([ccxt_market(s, 1e-8, 1e-8) for s in symbols])

    async def watch(symbol: str) -> None:
        while True:
            try:
                await ex.watch_order_book(symbol, limit=args.depth)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001: a reconnect; count it, say it, watch again
                nonlocal lost
                lost += 1
                print(f"ccxt_cpu: {symbol}: {type(exc).__name__}: {str(exc)[:200]}", file=sys.stderr)
                await asyncio.sleep(0.5)

    async def report() -> None:
        tmp = args.count_file + ".tmp"
        while os.getppid() == parent:
            with open(tmp, "w") as f:
                f.write(f"{handled} {lost}\n")
            os.replace(tmp, args.count_file)
            await asyncio.sleep(0.2)
        os._exit(0)

    await asyncio.gather(report(), *(watch(s) for s in symbols))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--symbols", required=True)
    p.add_argument("--depth", type=int, required=True)
    p.add_argument("--count-file", required=True)
    args = p.parse_args()
    try:
        import ccxt.pro  # noqa: F401: checked before anything starts
    except ImportError as exc:
        print(f"ccxt_cpu: ccxt is not installed for {sys.executable} ({exc}): python3 -m venv V && V/bin/pip install ccxt==4.5.90", file=sys.stderr)
        return 2
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
