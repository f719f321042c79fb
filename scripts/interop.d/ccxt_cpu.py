"""ccxt beside krakenbook on the same feed, for `krakenbook-bench collect --beside-ccxt PYTHON`.

The original tool's engine: ccxt.pro's Kraken client (WebSocket v2) keeping every book with
watch_order_book, nothing else (no storage, no journal; ccxt's own checksum option is off, as it
raises inside ccxt on the first message: see scripts/interop). It counts the book messages ccxt
handled and rewrites that count to --count-file every 200 ms, so that the bench can divide the
process's CPU over its measuring window by the messages handled in it.

    python ccxt_cpu.py --url ws://127.0.0.1:PORT/v2 --symbols AAA/USD,AAA/EUR --depth 1000 \
        --count-file /tmp/ccxt.count
"""

import argparse
import asyncio
import os
import sys


def markets(symbols: list[str]) -> list[dict]:
    out = []
    for symbol in symbols:
        base, quote = symbol.split("/")
        out.append(
            {
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
                "precision": {"price": 1e-8, "amount": 1e-8},
                "limits": {},
                "info": {"wsname": symbol, "altname": symbol.replace("/", "")},
            }
        )
    return out


async def run(args: argparse.Namespace) -> None:
    import ccxt.pro as ccxtpro

    handled = 0

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
    ex.set_markets(markets(symbols))

    async def watch(symbol: str) -> None:
        while True:
            try:
                await ex.watch_order_book(symbol, limit=args.depth)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001: a reconnect; say it and watch again
                print(f"ccxt_cpu: {symbol}: {type(exc).__name__}: {str(exc)[:200]}", file=sys.stderr)
                await asyncio.sleep(0.5)

    async def report() -> None:
        tmp = args.count_file + ".tmp"
        while True:
            with open(tmp, "w") as f:
                f.write(f"{handled}\n")
            os.replace(tmp, args.count_file)
            await asyncio.sleep(0.2)

    await asyncio.gather(report(), *(watch(s) for s in symbols))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--symbols", required=True)
    p.add_argument("--depth", type=int, required=True)
    p.add_argument("--count-file", required=True)
    args = p.parse_args()
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
