"""A client of the served model: send the last N bars of each symbol of a CSV file, print the answer.

    python examples/post_bars.py examples/data/GOOG_1d.csv --bars 150 [--url http://127.0.0.1:8080]

The body is what any client sends: ``{"instances": [{"symbol", "timestamp", "open", "high", "low", "close",
"volume"}, ...]}``, oldest bar first; the answer has one prediction and one position per symbol, for its
last bar, and the version that made them. Standard library only.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import urllib.error
import urllib.request
from collections import defaultdict


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--bars", type=int, default=150, help="bars per symbol (at least the feature warm-up)")
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--model", default="tideline")
    args = ap.parse_args()
    by_symbol: dict[str, list[dict]] = defaultdict(list)
    with open(args.csv, newline="") as f:
        for row in csv.DictReader(f):
            bar = {"symbol": row["symbol"], "timestamp": row["timestamp"]}
            bar.update({k: float(row[k]) for k in ("open", "high", "low", "close", "volume")})
            by_symbol[row["symbol"]].append(bar)
    body = {"instances": [b for bars in by_symbol.values() for b in bars[-args.bars:]]}
    req = urllib.request.Request(f"{args.url}/v1/models/{args.model}:predict", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            print(r.read().decode())
    except urllib.error.HTTPError as e:
        print(f"error {e.code}: {e.read().decode()}", file=sys.stderr)
        return 1
    except urllib.error.URLError as e:
        print(f"error: cannot reach {args.url}: {e.reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
