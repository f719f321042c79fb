"""pandas (+ pyarrow), polars and DuckDB reading krakenbook's exports.

    frames.py --context RUN/context.json --results DIR

For each library, one row: it reads the incremental export as CSV, CSV.zst and Parquet and the
snapshots export as CSV and Parquet, the way the README tells users to (prices and amounts as text
from CSV, as decimals from Parquet), and the script checks what it got against the files read
independently with Python's csv module: the same number of rows, every price and amount the exact
decimal of the file's text (no float anywhere), every timestamp the same microsecond and inside
the exported range. pandas's row also carries sampled books of the snapshots export, compared with
`book --at` by report.py.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import traceback
from decimal import Decimal
from importlib.metadata import version
from pathlib import Path

import zstandard

from common import Result, iso_to_micros, micros_to_iso, sample

INC = "incremental_book_L2"
SNAP = "book_snapshot_25"


class Truth:
    """A CSV export read with the csv module: the text of every cell."""

    def __init__(self, path: Path):
        with open(path, newline="") as f:
            reader = csv.reader(f)
            self.header = next(reader)
            self.rows = list(reader)
        self.col = {name: i for i, name in enumerate(self.header)}

    def column(self, name: str) -> list[str]:
        i = self.col[name]
        return [r[i] for r in self.rows]


def decimal_columns(header: list[str]) -> list[str]:
    return [h for h in header if h in ("price", "amount") or h.endswith(".price") or h.endswith(".amount")]


def as_decimal_list(values) -> list[Decimal | None]:
    out = []
    for v in values:
        if v is None or (isinstance(v, float) and v != v) or v == "":
            out.append(None)
        elif isinstance(v, float):
            raise TypeError(f"a float: {v!r}")
        else:
            out.append(Decimal(str(v)))
    return out


def compare_decimals(r: Result, what: str, got: list, truth: list[str]) -> None:
    try:
        values = as_decimal_list(got)
    except TypeError as exc:
        r.check(what, False, f"read as float, not exact ({exc})")
        return
    want = [Decimal(t) if t != "" else None for t in truth]
    bad = [(i, g, w) for i, (g, w) in enumerate(zip(values, want)) if g != w]
    if len(values) != len(want):
        r.check(what, False, f"{len(values)} values, file has {len(want)}")
    elif bad:
        i, g, w = bad[0]
        r.check(what, False, f"{len(bad)} differ, first at row {i}: {g} vs {w}")
    else:
        r.check(what, True, f"{len(values)} exact")


def compare_ints(r: Result, what: str, got: list, truth: list[str], lo: int, hi: int, check_range: bool) -> None:
    want = [int(t) for t in truth]
    got = [int(g) for g in got]
    bad = [i for i, (g, w) in enumerate(zip(got, want)) if g != w]
    if len(got) != len(want) or bad:
        first = bad[0] if bad else None
        r.check(what, False, f"{len(got)} values vs {len(want)}; first difference at row {first}")
        return
    if check_range:
        outside = [w for w in want if not lo <= w < hi]
        if outside:
            r.check(what, False, f"{len(outside)} outside [{micros_to_iso(lo)}, {micros_to_iso(hi)}), e.g. {micros_to_iso(outside[0])}")
            return
    r.check(what, True, f"{len(want)} equal")


def check_frame(r: Result, label: str, truth: Truth, columns: dict[str, list], lo: int, hi: int) -> None:
    """`columns`: what the library read, as Python lists (decimals as Decimal or str, times as
    integer microseconds)."""
    n = len(next(iter(columns.values()))) if columns else 0
    r.check(f"{label}: rows", n == len(truth.rows), f"{n} read, file has {len(truth.rows)}")
    for name in decimal_columns(truth.header):
        if name in columns:
            compare_decimals(r, f"{label}: {name}", columns[name], truth.column(name))
    for name in ("timestamp", "local_timestamp"):
        if name in columns:
            compare_ints(r, f"{label}: {name}", columns[name], truth.column(name), lo, hi, name == "timestamp")
    for name in ("symbol", "side", "is_snapshot"):
        if name in columns:
            got = [str(v).lower() for v in columns[name]]
            want = [v.lower() for v in truth.column(name)]
            r.check(f"{label}: {name}", got == want, "equal" if got == want else "differs")


def zst_text(path: Path) -> str:
    with open(path, "rb") as f:
        return zstandard.ZstdDecompressor().stream_reader(f).read().decode()


# ---------------------------------------------------------------------------------------------


def run_pandas(ex: Path, truths: dict[str, Truth], lo: int, hi: int, results: str, precisions: dict) -> None:
    import pandas as pd

    r = Result(f"pandas {version('pandas')} + pyarrow {version('pyarrow')}", "exports", "export-read")
    r.data["received_unit"] = "rows"
    text_cols = lambda t: {c: str for c in decimal_columns(t.header)}  # noqa: E731

    def cols_of(df) -> dict[str, list]:
        out = {}
        for c in df.columns:
            s = df[c]
            if str(s.dtype).startswith("datetime64"):
                out[c] = (s.astype("int64") // (1000 if "ns" in str(s.dtype) else 1)).tolist()
                if "[us" not in str(s.dtype):
                    r.note(f"pandas read {c} as {s.dtype}")
                if "UTC" not in str(s.dtype):
                    r.check(f"{c} is UTC", False, str(s.dtype))
            else:
                out[c] = [None if (isinstance(v, float) and v != v) else v for v in s.tolist()]
        return out

    total = 0
    for kind in (INC, SNAP):
        t = truths[kind]
        df = pd.read_csv(ex / f"{kind}.csv", dtype=text_cols(t), keep_default_na=False)
        check_frame(r, f"{kind}.csv", t, cols_of(df), lo, hi)
        total += len(df)
        df = pd.read_parquet(ex / f"{kind}.parquet")
        check_frame(r, f"{kind}.parquet", t, cols_of(df), lo, hi)
        total += len(df)
        if kind == SNAP:
            r.data["samples"] = snapshot_samples(df, precisions)
            stamps = [int(v) for v in t.column("timestamp")]
            off = [v for v in stamps if v % 1_000_000]
            r.check("snapshot instants are whole seconds (--interval 1s)", not off, f"{len(off)} are not, e.g. {micros_to_iso(off[0])}" if off else f"{len(stamps)} instants")
    t = truths[INC]
    df = pd.read_csv(ex / f"{INC}.csv.zst", dtype=text_cols(t), keep_default_na=False)
    check_frame(r, f"{INC}.csv.zst", t, cols_of(df), lo, hi)
    total += len(df)
    r.data["received"] = total
    r.note("CSV read with dtype=str for prices and amounts (the README's call); Parquet decimals arrive as decimal.Decimal")
    r.write(results, "pandas")


def snapshot_samples(df, precisions: dict) -> list[dict]:
    """A few rows per symbol of the snapshots export as books, to compare with `book --at`."""
    out = []
    for symbol, rows in df.groupby("symbol", sort=True):
        n = len(rows)
        picks = sorted({0, n // 4, n // 2, (3 * n) // 4, n - 1}) if n else []
        for i in picks:
            row = rows.iloc[i]
            at = int(row["timestamp"].value // 1000) if hasattr(row["timestamp"], "value") else int(row["timestamp"])
            sides = {}
            for side in ("bids", "asks"):
                levels = []
                for k in range(25):
                    p, q = row.get(f"{side}[{k}].price"), row.get(f"{side}[{k}].amount")
                    if p is None or (isinstance(p, float) and p != p):
                        break
                    levels.append((Decimal(str(p)), Decimal(str(q))))
                sides[side] = levels
            out.append(sample(symbol, micros_to_iso(at), sides["bids"], sides["asks"], 25, "snapshots export row"))
    return out


def run_polars(ex: Path, truths: dict[str, Truth], lo: int, hi: int, results: str) -> None:
    import polars as pl

    r = Result(f"polars {version('polars')}", "exports", "export-read")
    r.data["received_unit"] = "rows"

    def cols_of(df) -> dict[str, list]:
        out = {}
        for c in df.columns:
            s = df[c]
            if s.dtype == pl.Datetime or isinstance(s.dtype, pl.Datetime):
                if getattr(s.dtype, "time_zone", None) != "UTC":
                    r.check(f"{c} is UTC", False, str(s.dtype))
                out[c] = s.dt.epoch("us").to_list()
            elif s.dtype == pl.Float64 or s.dtype == pl.Float32:
                out[c] = [float(v) if v is not None else None for v in s.to_list()]
            else:
                out[c] = s.to_list()
        return out

    total = 0
    for kind in (INC, SNAP):
        t = truths[kind]
        overrides = {c: pl.String for c in decimal_columns(t.header)}
        df = pl.read_csv(ex / f"{kind}.csv", schema_overrides=overrides)
        check_frame(r, f"{kind}.csv", t, cols_of(df), lo, hi)
        total += df.height
        df = pl.read_parquet(ex / f"{kind}.parquet")
        check_frame(r, f"{kind}.parquet", t, cols_of(df), lo, hi)
        if kind == INC:
            r.note(f"Parquet price dtype: {df.schema['price']}")
        total += df.height
    t = truths[INC]
    overrides = {c: pl.String for c in decimal_columns(t.header)}
    try:
        df = pl.read_csv(ex / f"{INC}.csv.zst", schema_overrides=overrides)
        how = "pl.read_csv on the .csv.zst file"
    except Exception as exc:  # noqa: BLE001: polars may not decompress zstd; then say so and read it through zstandard
        df = pl.read_csv(io.StringIO(zst_text(ex / f"{INC}.csv.zst")), schema_overrides=overrides)
        how = f"polars could not read .csv.zst itself ({type(exc).__name__}); decompressed with zstandard first"
    r.note(how)
    check_frame(r, f"{INC}.csv.zst", t, cols_of(df), lo, hi)
    total += df.height
    r.data["received"] = total
    r.write(results, "polars")


def run_duckdb(ex: Path, truths: dict[str, Truth], lo: int, hi: int, results: str) -> None:
    import duckdb

    r = Result(f"DuckDB {version('duckdb')}", "exports", "export-read")
    r.data["received_unit"] = "rows"
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")

    def cols_of(rel_sql: str, header: list[str]) -> dict[str, list]:
        desc = con.execute(f"DESCRIBE SELECT * FROM {rel_sql}").fetchall()
        types = {row[0]: row[1] for row in desc}
        select = []
        for name in header:
            q = f'"{name}"'
            if types.get(name, "").startswith("TIMESTAMP"):
                if "TIME ZONE" not in types[name]:
                    r.check(f"{name} is UTC", False, types[name])
                select.append(f"epoch_us({q}) AS {q}")
            else:
                select.append(q)
        rows = con.execute(f"SELECT {', '.join(select)} FROM {rel_sql}").fetchall()
        return {name: [row[i] for row in rows] for i, name in enumerate(header)}

    total = 0
    for kind in (INC, SNAP):
        t = truths[kind]
        types = ", ".join(f"'{c}': 'VARCHAR'" for c in decimal_columns(t.header))
        csv_sql = f"read_csv('{ex / (kind + '.csv')}', header = true, types = {{{types}}})"
        cols = cols_of(csv_sql, t.header)
        check_frame(r, f"{kind}.csv", t, cols, lo, hi)
        total += len(cols[t.header[0]])
        pq_sql = f"read_parquet('{ex / (kind + '.parquet')}')"
        cols = cols_of(pq_sql, t.header)
        check_frame(r, f"{kind}.parquet", t, cols, lo, hi)
        total += len(cols[t.header[0]])
        if kind == INC:
            desc = dict((row[0], row[1]) for row in con.execute(f"DESCRIBE SELECT * FROM {pq_sql}").fetchall())
            r.note(f"Parquet price type: {desc.get('price')}, timestamp: {desc.get('timestamp')}")
    t = truths[INC]
    types = ", ".join(f"'{c}': 'VARCHAR'" for c in decimal_columns(t.header))
    cols = cols_of(f"read_csv('{ex / (INC + '.csv.zst')}', header = true, types = {{{types}}})", t.header)
    check_frame(r, f"{INC}.csv.zst", t, cols, lo, hi)
    total += len(cols[t.header[0]])
    r.data["received"] = total
    r.write(results, "duckdb")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--context", required=True)
    ap.add_argument("--results", required=True)
    args = ap.parse_args()
    ctx = json.loads(Path(args.context).read_text())
    ex = Path(ctx["exports"])
    lo, hi = iso_to_micros(ctx["from"]), iso_to_micros(ctx["to"])
    precisions = json.loads(Path(ctx["precisions"]).read_text())
    status = 0
    try:
        truths = {kind: Truth(ex / f"{kind}.csv") for kind in (INC, SNAP)}
    except Exception as exc:  # noqa: BLE001
        for name, label in (("pandas", "pandas"), ("polars", "polars"), ("duckdb", "DuckDB")):
            r = Result(label, "exports", "export-read")
            r.check("the CSV exports exist and parse", False, f"{type(exc).__name__}: {exc}")
            r.write(args.results, name)
        return 1
    for name, fn in (
        ("pandas", lambda: run_pandas(ex, truths, lo, hi, args.results, precisions)),
        ("polars", lambda: run_polars(ex, truths, lo, hi, args.results)),
        ("duckdb", lambda: run_duckdb(ex, truths, lo, hi, args.results)),
    ):
        try:
            fn()
        except Exception as exc:  # noqa: BLE001: one library failing is its row, not the run
            traceback.print_exc()
            r = Result(name, "exports", "export-read")
            r.error(f"{type(exc).__name__}: {str(exc)[:300]}")
            r.check("read the exports", False, traceback.format_exc()[-500:])
            r.write(args.results, name)
            status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
