"""Prints the range to replay and export: FROM TO (RFC 3339, microseconds).

FROM is the first instant at which every symbol has a book (the latest of the symbols' first
messages), so the replay server and the exports start from a verified book of each; TO is just
after the last message of any symbol (exclusive bound). Input: `krakenbook query --coverage --json`.
"""

import json
import sys

from common import iso_to_micros, micros_to_iso


def main() -> int:
    coverage = json.load(open(sys.argv[1]))["coverage"]
    wanted = set(sys.argv[2].split(","))
    rows = [c for c in coverage if c.get("symbol") in wanted]
    missing = wanted - {c["symbol"] for c in rows}
    if missing:
        print(f"range.py: nothing recorded for {sorted(missing)}", file=sys.stderr)
        return 1
    start = max(iso_to_micros(c["first"]) for c in rows)
    end = max(iso_to_micros(c["last"]) for c in rows) + 1
    print(micros_to_iso(start), micros_to_iso(end))
    return 0


if __name__ == "__main__":
    sys.exit(main())
