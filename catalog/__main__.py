"""Catalog queries: python -m catalog summary --store PATH [--json]."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from catalog.summary import format_summary, summarize


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m catalog", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("summary", help="counts, splits, fields and errors of a store",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("--store", required=True, type=Path, help="feature store folder")
    s.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = p.parse_args(argv)
    try:
        summary = summarize(args.store)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
