"""Catalog queries over a feature store.

    python -m catalog summary  --store S              counts, splits, fields, errors
    python -m catalog speakers --store S [--dataset lrs2] [--split test] [--limit 20]
    python -m catalog splits   --store S [--val 0.1 --test 0.1 --seed 0 [--write]]
    python -m catalog overlap  --store S [--by auto|official|speaker] [--fail-on-overlap]
    python -m catalog sql      --store S "SELECT count(*) FROM utterances WHERE n_frames >= 50" [--csv]
    python -m catalog verify   --store S [--dataset lrs2] [--fields rgb mel] [--deep]
    python -m catalog identities --store S [--threshold 0.5] [--by auto|official|speaker] [--write]

Every command takes --json. The same functions are importable: catalog.summary.summarize,
catalog.queries.{speakers,splits,overlap}, catalog.sql.run_sql, catalog.verify.verify.

SQL views: utterances, speakers, shards, fields, errors (DuckDB over the Parquet tables), e.g.

    SELECT speaker_id, count(*) AS n, sum(duration_s) / 3600 AS hours FROM utterances
    WHERE split = 'train' AND status = 'ok' GROUP BY speaker_id ORDER BY hours DESC
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from catalog.lock import StoreLocked
from features.cli import HelpFormatter

FMT = HelpFormatter


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
    s.add_argument("--by", choices=["auto", "official", "speaker"], default="auto",
                   help="official split lists, the computed speaker-disjoint split, or auto: official "
                        "where the corpus has lists (lrs2, lrs3), else speaker")
    s.add_argument("--dataset", default=None, help="only this dataset")
    s.add_argument("--fail-on-overlap", action="store_true", help="exit 1 when any two splits share a speaker")

    s = command("sql", "run SQL (DuckDB) over the catalog tables: utterances, speakers, shards, fields, errors")
    s.add_argument("query", help="one SQL statement, e.g. \"SELECT split, count(*) FROM utterances GROUP BY split\"")
    s.add_argument("--csv", action="store_true", help="print CSV instead of a text table")
    s.add_argument("--threads", type=int, default=None, help="DuckDB threads (unset: DuckDB's default)")

    s = command("verify", "check every tar of every field against the catalog (exit 1 on any problem)")
    s.add_argument("--dataset", default=None, help="only this dataset")
    s.add_argument("--fields", nargs="+", default=None, help="only these fields (unset: every field in store.json)")
    s.add_argument("--deep", action="store_true",
                   help="parse every tar member by member, also tars whose SHA-256 matches the catalog")

    s = command("identities", "cluster utterances by face identity (the identity field), report clusters "
                              "in two splits; --write stores the identity_cluster column")
    s.add_argument("--threshold", type=float, default=None,
                   help="Euclidean distance between identity embeddings below which utterances join a "
                        "cluster (unset: catalog.identities.DEFAULT_THRESHOLD, 0.5; dlib's single-image "
                        "convention is 0.6)")
    s.add_argument("--dataset", default=None, help="only this dataset")
    s.add_argument("--by", choices=["auto", "official", "speaker"], default="auto",
                   help="the splits leakage is counted over, as for overlap")
    s.add_argument("--write", action="store_true", help="write the identity_cluster column into the catalog")
    s.add_argument("--fail-on-leak", action="store_true", help="exit 1 when an identity cluster is in two splits")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        result, text, code = _run(args)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StoreLocked as exc:  # splits --write while another job writes the store
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # SQL errors included
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        print(json.dumps(result, indent=2, default=str) if args.json else text)
        sys.stdout.flush()
    except BrokenPipeError:  # `... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
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

        if args.write:  # a writer: one per store at a time (catalog/lock.py)
            from catalog.lock import store_lock

            with store_lock(args.store):
                r = splits(args.store, args.val, args.test, args.seed, args.dataset, args.write)
        else:
            r = splits(args.store, args.val, args.test, args.seed, args.dataset, args.write)
        return r, format_splits(r), 0
    if args.command == "overlap":
        from catalog.queries import format_overlap, overlap

        r = overlap(args.store, args.by, args.dataset)
        return r, format_overlap(r), 1 if args.fail_on_overlap and r["overlapping_pairs"] else 0
    if args.command == "sql":
        from catalog.sql import format_rows, run_sql, to_csv

        table = run_sql(args.store, args.query, args.threads)
        rows = table.to_pylist()
        text = to_csv(table) if args.csv else (format_rows(rows) + "\n" if rows else "") + f"({len(rows)} rows)"
        return rows, text, 0
    if args.command == "verify":
        from catalog.verify import format_verify, verify

        r = verify(args.store, args.dataset, args.fields, deep=args.deep)
        return r, format_verify(r), 0 if r["ok"] else 1
    if args.command == "identities":
        from catalog.identities import DEFAULT_THRESHOLD, format_identities, identities

        threshold = DEFAULT_THRESHOLD if args.threshold is None else args.threshold
        if args.write:  # a writer: one per store at a time (catalog/lock.py)
            from catalog.lock import store_lock

            with store_lock(args.store):
                r = identities(args.store, threshold, args.dataset, True, args.by)
        else:
            r = identities(args.store, threshold, args.dataset, False, args.by)
        return r, format_identities(r), 1 if args.fail_on_leak and r["leaking_clusters"] else 0
    raise AssertionError(args.command)


if __name__ == "__main__":
    raise SystemExit(main())
