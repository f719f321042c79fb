"""The table: every consumer's result, its sampled books compared with `krakenbook book --at`.

    report.py --context RUN/context.json --results DIR --markdown OUT.md --database-url URL

Prints Markdown (the table, then every failure with what it means, then the notes) and writes it
to OUT.md. Exit status 1 when any consumer disagrees, 0 when all agree.

A sampled book is compared with `book SYMBOL --at T --depth 25 --json`: the consumer's whole book
against the oracle's top N levels (N the consumer's depth). Where `book --at` says T is in a gap
(exit 1, or a `gap`, or an unverified checksum) the sample is not compared and counted as such;
where it answers a verified book at an instant that `query --coverage` lists inside a gap, that is
counted as a krakenbook failure (a reader that does not see the gap).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

from common import Oracle, describe_difference, iso_to_micros, oracle_levels

ORDER = [
    "ccxt-simulator-d10", "ccxt-simulator-d25", "sdk-simulator-d10", "sdk-simulator-d25",
    "ccxt-replay-d10", "ccxt-replay-d25", "sdk-replay-d10", "sdk-replay-d25",
    "pandas", "polars", "duckdb", "reference", "nautilus", "hftbacktest",
]


def load_rows(results: Path) -> list[tuple[str, dict]]:
    found = {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("*.json"))}
    names = [n for n in ORDER if n in found] + sorted(n for n in found if n not in ORDER)
    return [(n, found[n]) for n in names]


def coverage_gaps(path: Path) -> dict[str, list[tuple[int, int]]]:
    try:
        cov = json.loads(path.read_text())["coverage"]
    except (OSError, ValueError, KeyError):
        return {}
    out: dict[str, list[tuple[int, int]]] = {}
    for c in cov:
        spans = []
        for g in c.get("gaps", []):
            if isinstance(g, dict):  # {"start", "end" (null while open), "cause", ...}
                end = g.get("end")
                spans.append((iso_to_micros(g["start"]), iso_to_micros(end) if end else 1 << 62))
            else:  # an older krakenbook: [start, end]
                spans.append((iso_to_micros(g[0]), iso_to_micros(g[1])))
        out[c["symbol"]] = spans
        if c.get("open_gap"):
            out[c["symbol"]].append((iso_to_micros(c["open_gap"]), 1 << 62))
    return out


def judge_sample(s: dict, answer: dict, gaps: dict[str, list[tuple[int, int]]]) -> tuple[str, str]:
    """("equal" | "differs" | "gap" | "reader-in-gap" | "oracle-error", detail)."""
    j = answer.get("json")
    if j is None:
        return "oracle-error", f"book --at {s['at']} {s['symbol']}: exit {answer.get('exit')}: {answer.get('stderr', '')[:200]}"
    if answer.get("exit") != 0 or j.get("gap") or j.get("checksum_ok") is False:
        if j.get("started_from") == "snapshot" and j.get("started_at") == s["at"] == j.get("last_message_at"):
            return "gap-at-snapshot", (
                f"{s['symbol']} {s['at']}: book --at calls this instant a gap ({json.dumps(j.get('gap'))}), yet the book it "
                f"rebuilds starts from a verified snapshot stamped exactly {s['at']}"
            )
        return "gap", f"{s['symbol']} {s['at']}: book --at reports a gap ({json.dumps(j.get('gap'))[:160]})"
    at = iso_to_micros(s["at"])
    in_gap = next(((a, b) for a, b in gaps.get(s["symbol"], []) if a < at < b), None)
    depth = int(s["depth"])
    ob, oa = oracle_levels(j.get("bids"))[:depth], oracle_levels(j.get("asks"))[:depth]
    mb = [(Decimal(p), Decimal(q)) for p, q in s["bids"]]
    ma = [(Decimal(p), Decimal(q)) for p, q in s["asks"]]
    if in_gap:
        return "reader-in-gap", (
            f"{s['symbol']} {s['at']}: book --at answered a verified book (exit 0, gap null) inside the gap "
            f"{s['at'][:11]}… listed by query --coverage"
        )
    if mb == ob and ma == oa:
        return "equal", ""
    why = describe_difference(mb, ob, "bids") or describe_difference(ma, oa, "asks")
    return "differs", f"{s['symbol']} {s['at']} ({s.get('why')}): {why}"


# What each kind of disagreement means, keyed by a short name; printed once under the table.
MEANINGS = {
    "level-order": (
        "Level order (issue 10, item 4): a message inserts a level before the deletion that makes room for it (the "
        "simulator now and then, the replay server often: it sends levels in price order). "
        "A client that applies the levels in order and truncates its side to the subscribed depth after each one "
        "(python-kraken-sdk, as Kraken's checksum guide allows) drops the last level at the insert and is one short "
        "after the deletion: a checksum failure when the lost level is in the top 10, a silently wrong book when it "
        "is deeper (depth 25). Real Kraken sends the deletion first."
    ),
    "unasked-snapshot": (
        "Unasked snapshots (item 5): across a collector reconnect the replay server sends a new snapshot in the "
        "middle of a subscription. ccxt resets its book on any snapshot and copes; the SDK merges it into the book "
        "it holds (stale levels stay) and fails. Kraken would close the connection instead."
    ),
    "time-order": (
        "Time order: an update older than a frame already received on its connection (the replay server merges "
        "a connection's symbols in recorded time, so none may go back; the live simulator only past 1 s). A "
        "snapshot stamped earlier is not counted: it carries its book's last change, as Kraken's do."
    ),
    "end-of-record": (
        "End of the record (item 5): the consumer, reconnecting after every drop, never got the close with code "
        "1000 and reason \"end of recording\" that ends the record; a client cannot tell the end from a silent feed."
    ),
    "drop-not-at-gap": (
        "A drop where the record has no gap: the replay server closes a connection (like a lost connection, no close "
        "frame) only where a subscribed symbol's record has a gap (query --coverage); this one came where none starts."
    ),
    "no-clear": (
        "Exports (item 3): a consumer of the incremental export holds a book other than book --at's. The file must "
        "write the book as snapshot rows wherever coverage starts (after reset deletions), an amount-0 row for every "
        "held level where a gap starts, and no update outside the coverage: nautilus_trader's loader never clears "
        "its book, hftbacktest clears only down to a snapshot's deepest price."
    ),
    "gap-at-snapshot": (
        "Clocks of a gap's end: book --at treats the instant of the verified snapshot that ends a reconnect gap (its "
        "Kraken timestamp) as still inside the gap, because the gap ends at the snapshot's receive time a few ms "
        "later. Coverage is meant to be on Kraken's clock; a consumer holding that very snapshot disagrees."
    ),
    "deeper": (
        "Depth beyond the record (item 5): the replay server acks a book subscription deeper than the record "
        "and serves the recorded depth; Kraken (and the simulator) refuse an unsupported depth with an error ack."
    ),
    "reader-in-gap": "Downtime read as a verified book (item 1): book --at answered exit 0 inside a gap that query --coverage lists.",
    "ccxt-checksum": (
        "Not krakenbook: ccxt 4.5.90's own Kraken checksum option (watchOrderBook.checksum) raises "
        "AttributeError ('float' object has no attribute 'split') on the first book message, because ccxt parses "
        "prices into floats before its checksum code splits them as text. The script turns it off and verifies "
        "ccxt's books itself."
    ),
    "other": "Not explained by a known issue: investigate (logs and results in target/interop/run/).",
}


# Meanings of what is noted but not counted as a failure: a third party's own bug.
NOT_OURS = {"ccxt-checksum"}


def fmt_checksums(c: dict | None, note: str = "") -> str:
    if c is None:
        return "—"
    checked = c.get("ok", 0) + c.get("failed", 0)
    if checked == 0 and c.get("unchecked"):
        return "not checked"
    text = f"{c.get('ok', 0)}/{checked} ok"
    if c.get("failed"):
        text += f", **{c['failed']} failed**"
    return text


class Report:
    """Collects the failures of both tables and the meanings they need."""

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.meanings: list[str] = []
        self.any_fail = False

    def meaning(self, key: str) -> None:
        if key not in self.meanings:
            self.meanings.append(key)

    def row(self, label: str, items: list[tuple[str, str]]) -> bool:
        """Records one row's failures (text, meaning); True when it has none. At most five lines
        a row are listed, then a count."""
        for _, key in items:
            self.meaning(key)
        for text, _ in items[:5]:
            self.failures.append(f"- {label}: {text}")
        if len(items) > 5:
            self.failures.append(f"- {label}: … and {len(items) - 5} more like these (see the results in target/interop/run/results/)")
        self.any_fail |= bool(items)
        return not items


def consumer_row(r: dict, oracle: Oracle, gaps: dict, rep: Report) -> str:
    items: list[tuple[str, str]] = []
    consumer = r["consumer"].lower()
    differ = "level-order" if "sdk" in consumer else "no-clear" if ("nautilus" in consumer or "hftbacktest" in consumer) else "other"
    for c in r.get("checks", []):
        if not c["ok"]:
            items.append((f"{c['what']}: {c['detail']}", "other"))
    for e in r.get("errors", []):
        items.append((f"error: {e}", "other"))
    counts = dict.fromkeys(("equal", "differs", "gap", "gap-empty", "gap-at-snapshot", "reader-in-gap", "oracle-error"), 0)
    export = r.get("kind") == "export-book"
    at_snapshot: list[str] = []
    for s in r.get("samples", []):
        verdict, detail = judge_sample(s, oracle.book(s["symbol"], s["at"]), gaps)
        if verdict == "gap" and export:
            # An export's consumer holds an empty book in a gap, never a stale one.
            if s["bids"] or s["asks"]:
                verdict, detail = "differs", f"{s['symbol']} {s['at']}: holds {len(s['bids'])} bids and {len(s['asks'])} asks inside a gap ({detail})"
            else:
                verdict = "gap-empty"
        counts[verdict] += 1
        if verdict == "differs":
            items.append((detail, differ))
        elif verdict == "gap-at-snapshot":
            at_snapshot.append(detail)
        elif verdict == "reader-in-gap":
            items.append((detail, verdict))
        elif verdict == "oracle-error":
            items.append((detail, "other"))
    if at_snapshot:  # one line: they all say the same
        items.insert(0, (f"{len(at_snapshot)} sampled instant(s) called a gap by book --at, e.g. {at_snapshot[0]}", "gap-at-snapshot"))
    if r.get("kind") == "ws":
        why = "level-order" if "sdk" in consumer else "other"
        own = r.get("own_checksums")
        if own and own.get("failed"):
            items.append((f"its own checksum check failed {own['failed']} time(s)", why))
        sc = r.get("script_checksums") or {}
        if sc.get("failed"):
            items.append((f"its book disagreed with the frame's checksum {sc['failed']} time(s), first: {'; '.join(sc.get('first_failures', [])[:2])}", why))
        if "ccxt" in consumer and any("checksum option" in n for n in r.get("notes", [])):
            rep.meaning("ccxt-checksum")
    if r.get("kind") in ("ws", "export-book") and counts["equal"] + counts["differs"] == 0:
        items.append(("no sampled book could be compared", "other"))
    if not r.get("received"):
        items.append(("received nothing", "other"))

    compared = counts["equal"] + counts["differs"] + counts["reader-in-gap"] + counts["gap-at-snapshot"]
    if r.get("samples"):
        books = f"{counts['equal']}/{compared} equal"
        if counts["differs"]:
            books += f", **{counts['differs']} differ**"
        if counts["reader-in-gap"]:
            books += f", **{counts['reader-in-gap']} answered inside a gap**"
        if counts["gap-at-snapshot"]:
            books += f", **{counts['gap-at-snapshot']} called a gap at a snapshot's own instant**"
        if counts["gap"]:
            books += f" ({counts['gap']} in the collector's gaps)"
        if counts["gap-empty"]:
            books += f", {counts['gap-empty']} in gaps: empty, as it must be"
    else:
        books = "—"
    if r.get("kind") == "export-read":
        n = len(r.get("checks", []))
        bad = sum(1 for c in r.get("checks", []) if not c["ok"])
        own_col = "—"
        script_col = f"{n - bad}/{n} reading checks ok" + (f", **{bad} failed**" if bad else "")
    else:
        own_col = fmt_checksums(r.get("own_checksums"))
        if r.get("kind") == "ws" and "ccxt" in consumer and own_col == "not checked":
            own_col = "unusable (the option raises in ccxt)"
        script_col = fmt_checksums(r.get("script_checksums"))
    ok = rep.row(f"**{r['consumer']}** / {r['source']}", items)
    received = f"{r.get('received', 0):,} {r.get('received_unit', '')}".strip()
    return f"| {r['consumer']} | {r['source']} | {received} | {own_col} | {script_col} | {books} | {'ok' if ok else '**disagrees**'} |"


def judge_drops(r: dict, gaps: dict[str, list[tuple[int, int]]], symbols: list[str]) -> tuple[int, list[str]]:
    """The connections the server dropped before the end of the record: (how many start a gap of
    a subscribed symbol, a description of each that does not). A drop is where a gap starts when
    the gap starts at or after the connection's last book frame (Kraken's clock), within 1 s of
    it (5 s of the last frame of an earlier connection when this one got none)."""
    starts = sorted(a for s in symbols for a, _ in gaps.get(s, []))
    matched, unmatched = 0, []
    for d in r.get("drops", []):
        last, slack = d.get("last_us"), 1_000_000
        if last is None:
            last, slack = d.get("before_us"), 5_000_000
        if last is not None and any(last - 1000 <= a <= last + slack for a in starts):
            matched += 1
        else:
            at = f"last book frame {last}" if last is not None else "no book frame before it"
            unmatched.append(f"a connection dropped ({d.get('how')}; {at} µs) where no coverage gap starts")
    return matched, unmatched


def server_row(r: dict, rep: Report, gaps: dict[str, list[tuple[int, int]]], symbols: list[str]) -> str:
    """What a server sent, as one consumer's connection saw it (the frames, not the consumer)."""
    items: list[tuple[str, str]] = []
    f = r.get("frames") or {}
    updates, bad, lost = f.get("updates", 0), f.get("bad", 0), f.get("per_level_bad", 0)
    replay = "replay" in r["source"]
    if bad:
        items.append((f"{bad} update(s) whose checksum does not match the book they make", "other"))
    if lost:
        items.append((f"{lost} of {updates} updates make a client that truncates after each level lose a level", "level-order"))
    lag = r.get("max_lag_s", 0.0)
    order = f"{r.get('out_of_order', 0)} updates back, up to {lag:.3f} s" if r.get("out_of_order") else "updates in order"
    if r.get("old_snapshots"):
        order += f"; {r['old_snapshots']} snapshot(s) stamped earlier (their book's last change)"
    # The replay server serves a connection's symbols merged in recorded time: no update may go
    # back. The live simulator stamps each pair on its own: small inversions are allowed there.
    if (replay and r.get("out_of_order")) or lag > 1.0:
        items.append((f"{r['out_of_order']} update(s) older than a frame already received on the connection, up to {lag:.3f} s", "time-order"))
    unasked = r.get("unasked_snapshots", 0)
    if unasked and replay:
        items.append((f"{unasked} snapshot(s) mid-subscription that no subscription asked for", "unasked-snapshot"))
    end = "—"
    if replay:
        close = r.get("close_info") or ""
        matched, unmatched = judge_drops(r, gaps, symbols)
        items += [(u, "drop-not-at-gap") for u in unmatched]
        if r.get("stopped_early"):
            end = "not reached (the consumer was stopped first)"
            items.append(("end of the record: not reached before the consumer's time ran out", "end-of-record"))
        elif r.get("ended"):
            end = "close 1000 \"end of recording\""
        else:
            end = close or "not seen"
            items.append((f"end of the record: {close or 'not seen'} (wanted: close code 1000, reason \"end of recording\")", "end-of-record"))
        drops = len(r.get("drops", []))
        if drops:
            end += f", after {drops} drop(s)" + (f" ({matched} where a coverage gap starts)" if matched else "")
    who = r["consumer"].split(" (")[0]
    ok = rep.row(f"**{r['source']}** (seen by {who})", items)
    server, _, depth = r["source"].rpartition(", ")
    lost_text = f"**{lost} ({100 * lost / max(1, updates):.1f}%)**" if lost else "0"
    return (
        f"| {server} | {depth.replace('depth ', '')} | {who} | {updates:,} | {updates - bad}/{updates} | {lost_text} | {order} | "
        f"{unasked} | {end} | {'ok' if ok else '**disagrees**'} |"
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--context", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--markdown", required=True)
    ap.add_argument("--database-url", required=True)
    args = ap.parse_args()
    ctx = json.loads(Path(args.context).read_text())
    run = Path(args.context).parent
    rows = load_rows(Path(args.results))
    gaps = coverage_gaps(run / "coverage.json")
    oracle = Oracle(ctx["krakenbook"], args.database_url, 25, str(run / "oracle-cache.json"))
    wanted = sorted({(s["symbol"], s["at"]) for _, r in rows for s in r.get("samples", [])})
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda k: oracle.book(*k), wanted))
    oracle.save()

    rep = Report()
    consumers = [
        "| consumer | source | received | checksums: consumer's own | checksums: recomputed from the consumer's book | books = `book --at` | result |",
        "|---|---|---|---|---|---|---|",
    ]
    consumers += [consumer_row(r, oracle, gaps, rep) for _, r in rows if r.get("kind") != "probe"]
    servers = [
        "| server | depth | seen by | book updates | checksums (each update applied whole) | updates a per-level-truncating client loses a level in | time order | unasked snapshots | end of the record | result |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    symbols = [s for s in ctx["symbols"].split(",") if s]
    servers += [server_row(r, rep, gaps, symbols) for _, r in rows if r.get("kind") == "ws" and r.get("frames")]
    probes = []
    for _, r in rows:
        if r.get("kind") == "probe":
            bad = [(f"{c['what']}: {c['detail']}", "deeper") for c in r.get("checks", []) if not c["ok"]]
            rep.row(f"**{r['source']}**", bad)
            details = "; ".join(c["detail"] for c in r.get("checks", []))
            probes.append(f"- {r['source']}: {details} — {'ok' if not bad else '**disagrees**'}")

    commit = subprocess.run(["git", "-C", str(Path(__file__).resolve().parents[2]), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    version = subprocess.run([ctx["krakenbook"], "--version"], capture_output=True, text=True).stdout.strip()
    n_gaps = sum(len(v) for v in gaps.values())
    out = "\n".join(
        [
            f"{version or 'krakenbook'} ({ctx['krakenbook']}; worktree at {commit or '?'}); simulator pairs {ctx['pairs']} (symbol:price precision:qty precision), each connection dropped with",
            f"probability {ctx['drop_rate']} per update; the collector recorded at depth {ctx['collect_depth']} for {ctx['collect_secs']} s "
            f"(exit status {ctx['collect_status']}, {n_gaps} gap(s) in its record); replay and exports over {ctx['from']} .. {ctx['to']}.",
            "",
            "What each consumer got:",
            "",
            *consumers,
            "",
            "What the servers sent, as each consumer's connection received it (checked by this script):",
            "",
            *servers,
            *(["", "Probes:", "", *probes] if probes else []),
        ]
    )
    ours = [m for m in rep.meanings if m not in NOT_OURS]
    theirs = [m for m in rep.meanings if m in NOT_OURS]
    if ours:
        out += "\n\nWhat the disagreements mean:\n\n" + "\n".join(f"- {MEANINGS[m]}" for m in ours)
    if theirs:
        out += "\n\nNot krakenbook's (noted, not counted as a failure):\n\n" + "\n".join(f"- {MEANINGS[m]}" for m in theirs)
    if rep.failures:
        out += "\n\nDisagreements:\n\n" + "\n".join(rep.failures)
    notes = [f"- {r['consumer']} / {r['source']}: {n}" for _, r in rows for n in r.get("notes", [])]
    if notes:
        out += "\n\nNotes:\n\n" + "\n".join(notes)
    out += "\n"
    Path(args.markdown).write_text(out)
    print(out)
    return 1 if rep.any_fail else 0


if __name__ == "__main__":
    sys.exit(main())
