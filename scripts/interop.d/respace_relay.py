"""A WebSocket relay that passes a client's frames to an exchange as they are and the exchange's
frames back written otherwise, values untouched: with a space after every `,` and `:` outside
their strings (Python json.dumps' default separators; MODE `space`, the default), or with every
object's members sorted by key, compact (as a Go map sends them; MODE `sort`). An exchange that
writes its JSON otherwise than Kraken.

Usage: PYTHON respace_relay.py UPSTREAM_URL PORT [space|sort]   (PYTHON with aiohttp, e.g. ccxt's venv)
  krakenbook simulate --pairs 20 --rate 100 --listen 127.0.0.1:8795 &
  PYTHON scripts/interop.d/respace_relay.py ws://127.0.0.1:8795/v2 8796 &
  krakenbook collect --url ws://127.0.0.1:8796/v2 --all --depth 100 --database-url URL ...
then `krakenbook-bench storage --database-url URL` (README, "Storage at rest").
"""
import asyncio, json, sys
import aiohttp
from aiohttp import web

UPSTREAM = sys.argv[1]
PORT = int(sys.argv[2])
MODE = sys.argv[3] if len(sys.argv) > 3 else "space"

def respace(t: str) -> str:
    out = []
    in_str = False
    esc = False
    for ch in t:
        out.append(ch)
        if in_str:
            if esc:
                esc = False
            elif ch == '\\':
                esc = True
            elif ch == '"':
                in_str = False
        else:
            if ch == '"':
                in_str = True
            elif ch in ',:':
                out.append(' ')
    return ''.join(out)

class RawNum(str):
    """A number's text as received."""


def emit_sorted(v):
    if isinstance(v, dict):
        return "{" + ",".join(json.dumps(k) + ":" + emit_sorted(v[k]) for k in sorted(v)) + "}"
    if isinstance(v, list):
        return "[" + ",".join(emit_sorted(x) for x in v) + "]"
    if isinstance(v, RawNum):
        return str(v)
    return json.dumps(v)


def rewrite(t: str) -> str:
    if MODE == "sort":
        return emit_sorted(json.loads(t, parse_float=RawNum, parse_int=RawNum))
    return respace(t)


async def handler(request):
    ws = web.WebSocketResponse(max_msg_size=0)
    await ws.prepare(request)
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(UPSTREAM, max_msg_size=0) as up:
            async def down():
                async for m in up:
                    if m.type == aiohttp.WSMsgType.TEXT:
                        await ws.send_str(rewrite(m.data))
                    else:
                        break
                await ws.close()
            t = asyncio.create_task(down())
            async for m in ws:
                if m.type == aiohttp.WSMsgType.TEXT:
                    await up.send_str(m.data)
                else:
                    break
            t.cancel()
    return ws

app = web.Application()
app.router.add_get('/{tail:.*}', handler)
web.run_app(app, host='127.0.0.1', port=PORT, print=None)
