"""Catalog queries over a feature store.

    python -m catalog summary  --store S              counts, splits, fields, errors
    python -m catalog speakers --store S [--dataset lrs2] [--split test] [--limit 20]
    python -m catalog splits   --store S [--val 0.1 --test 0.1 --seed 0 [--write]]
    python -m catalog overlap  --store S [--by official|speaker] [--fail-on-overlap]
    python -m catalog query    --store S "dataset == 'lrs2' and n_frames >= 50" [--table utterances]
    python -m catalog verify   --store S [--dataset lrs2] [--fields rgb mel]

Every command takes --json. The same functions are importable: catalog.summary.summarize,
catalog.queries.{speakers,splits,overlap}, catalog.query.run_query, catalog.verify.verify.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from catalog.layout import TABLES

FMT = argparse.ArgumentDefaultsHelpFormatter


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m catalog", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help, description=help, formatter_class=FMT)
        s.add_argument("--store", required=True, type=Path, help="feature store folder")
        s.add_argument("--json", action="store_true", help="print JSON instead of text")
        return s

    command("summary", "counts, splits, fields and errors of a store")

    s = command("speakers", "speakers with utterance counts, duration, split and official splits")
    s.add_argument("--dataset", default=None, help="only this dataset")
    s.add_argument("--split", default=None, help="only speakers of this speaker-disjoint split")
    s.add_argument("--official-split", default=None, help="only speakers with utterances in this official split")
    s.add_argument("--sort", default="n_utterances", help="column to sort by (numbers descending)")
    s.add_argument("--limit", type=int, default=None, help="at most this many rows")

    s = command("splits", "official and speaker-disjoint splits: speakers, utterances, hours per split")
    s.add_argument("--dataset", default=None, help="only this dataset")
    s.add_argument("--val", type=float, default=None, help="recompute the split: share of speakers in val (0.1 if unset)")
    s.add_argument("--test", type=float, default=None, help="recompute the split: share of speakers in test (0.1 if unset)")
    s.add_argument("--seed", type=int, default=None, help="recompute the split: seed of the speaker order (0 if unset)")
    s.add_argument("--write", action="store_true", help="store the recomputed split in the catalog")

    s = command("overlap", "speakers shared between any two splits")
    s.add_argument("--by", choices=["official", "speaker"], default="official",
                   help="official split lists or the computed speaker-disjoint split")
    s.add_argument("--dataset", default=None, help="only this dataset")
    s.add_argument("--fail-on-overlap", action="store_true", help="exit 1 when any two splits share a speaker")

    s = command("query", "filter a catalog table with a small expression language (see catalog/query.py)")
    s.add_argument("where", nargs="?", default=None,
                   help="filter, e.g. \"dataset == 'lrs2' and official_split in ('val', 'test')\"")
    s.add_argument("--table", choices=TABLES, default="utterances", help="catalog table")
    s.add_argument("--columns", nargs="+", default=None, help="columns to show (unset: all)")
    s.add_argument("--order-by", nargs="+", default=None, help="sort columns")
    s.add_argument("--desc", action="store_true", help="sort descending")
    s.add_argument("--limit", type=int, default=None, help="at most this many rows")
    s.add_argument("--group-by", nargs="+", default=None, help="count rows (and sum duration_s) per group")
    s.add_argument("--count", action="store_true", help="print only the number of matching rows")

    s = command("verify", "check every tar of every field against the catalog (exit 1 on any problem)")
    s.add_argument("--dataset", default=None, help="only this dataset")
    s.add_argument("--fields", nargs="+", default=None, help="only these fields (unset: every field in store.json)")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        result, text, code = _run(args)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # QueryError included
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, default=str) if args.json else text)
    return code


def _run(args):
    if args.command == "summary":
        from catalog.summary import format_summary, summarize

        r = summarize(args.store)
        return r, format_summary(r), 0
    if args.command == "speakers":
        from catalog.queries import format_speakers, speakers

        r = speakers(args.store, args.dataset, args.split, args.official_split, args.sort, args.limit)
        return r, format_speakers(r), 0
    if args.command == "splits":
        from catalog.queries import format_splits, splits

        r = splits(args.store, args.val, args.test, args.seed, args.dataset, args.write)
        return r, format_splits(r), 0
    if args.command == "overlap":
        from catalog.queries import format_overlap, overlap

        r = overlap(args.store, args.by, args.dataset)
        return r, format_overlap(r), 1 if args.fail_on_overlap and r["overlapping_pairs"] else 0
    if args.command == "query":
        from catalog.build import read_table
        from catalog.query import format_rows, run_query

        table = run_query(read_table(args.store, args.table), args.where, args.columns, args.order_by,
                          args.desc, None if args.count else args.limit, args.group_by)
        if args.count:
            return {"count": table.num_rows}, str(table.num_rows), 0
        rows = table.to_pylist()
        return rows, format_rows(rows) + f"\n({len(rows)} rows)", 0
    if args.command == "verify":
        from catalog.verify import format_verify, verify

        r = verify(args.store, args.dataset, args.fields)
        return r, format_verify(r), 0 if r["ok"] else 1
    raise AssertionError(args.command)


if __name__ == "__main__":
    raise SystemExit(main())
