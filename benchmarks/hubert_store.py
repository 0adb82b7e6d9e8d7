"""A copy of a store with the hubert field added by a tiny random HuBERT, for benchmarks.

    python -m benchmarks.hubert_store --store demo_out/store --out /tmp/hstore [--hubert-model DIR]

The demo store has no hubert field: the demo skips it where the real weights cannot be
downloaded. The hubert combos (hubert_rgb, hubert_parsing, hubert_landmarks, hubert_tdmm) still
need one to be measured, so this copies the store under --out and adds the field the way a user
adds a field to an existing store: `pipelines/extract.py --fields hubert` on the same corpus
and plan (complete shards are kept, only the hubert tars are written, from the stored audio, and
the catalog is rebuilt). The model is a randomly initialised HuBERT of the real architecture
(features.hubert.save_tiny_random_model), with rows of the real model's size (1024) unless told
otherwise: its features are real model outputs of the real extraction code, but they carry no
speech information. For loader and step benchmarks only, never for results.

A store that already has the field is returned as it is. The copy hard-links the field tars
(extraction never rewrites a tar in place: a new one is written aside and renamed; everything
else is copied), so it costs little disk. Re-running with the same --out reuses a finished copy
and finishes an interrupted one. Progress goes to stderr; the copy's path to stdout.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from catalog.build import read_table
from catalog.layout import read_store_json
from catalog.plan import read_plan
from catalog.splits import assign_split_column
from features.hubert import save_tiny_random_model
from pipelines.adapters import list_utterances

REPO = Path(__file__).resolve().parents[1]

ROW_SIZE = 1024  # hidden size of facebook/hubert-large-ls960-ft: rows as large as the real field's
DERIVED_ROOTS = ("folder", "synthetic")  # adapters whose utt_id is the video path under the root


class HubertStoreError(RuntimeError):
    """The hubert field could not be added; the message names the store and the cause."""


def log(message: str) -> None:
    print(f"[hubert_store] {message}", file=sys.stderr, flush=True)


def has_hubert(store: Path) -> bool:
    """Whether the store holds hubert tars (store/shards/<dataset>/hubert/*.tar)."""
    return any(Path(store).glob("shards/*/hubert/*.tar"))


def store_with_hubert(store: Path, workdir: Path, model: str | None = None, *, root: Path | None = None,
                      hidden_size: int = ROW_SIZE, workers: int | None = None) -> Path:
    """`store` if it has the hubert field, else a copy under `workdir` with it added.

    `model`: a HuBERT hub id or local directory for --hubert-model (default: a randomly
    initialised HuBERT of `hidden_size`, saved under `workdir`). `root`: the corpus root, needed
    only for datasets other than folder/synthetic (theirs is read off the plan's video paths):
    extract.py lists the corpus to match it with the plan, though hubert reads only the stored
    audio. Raises HubertStoreError naming the store when the field cannot be added.
    """
    store = Path(store).resolve()
    if has_hubert(store):
        log(f"{store} already has the hubert field: using it as it is")
        return store
    plan = _plan(store)
    roots = {ds: _corpus_root(store, ds, [r for r in plan if r["dataset"] == ds], root)
             for ds in sorted({r["dataset"] for r in plan})}
    _check_split(store)
    workdir = Path(workdir).resolve()
    copy = workdir / store.name
    if copy == store:
        raise HubertStoreError(f"{store}: the work folder {workdir} holds the store itself; choose another")
    started = time.perf_counter()
    if copy.exists():
        _check_copy(store, copy, plan)
        log(f"reusing the copy {copy}")
    else:
        _copy_store(store, copy)
        log(f"copied {store} -> {copy} (tars hard-linked where possible) in {time.perf_counter() - started:.1f} s")
    if model is None:
        model_dir = workdir / f"tiny-random-hubert-{hidden_size}"
        if not (model_dir / "config.json").is_file():
            save_tiny_random_model(model_dir, hidden_size=hidden_size)
            log(f"saved a randomly initialised HuBERT (hidden size {hidden_size}) to {model_dir}")
        model = str(model_dir)
    recorded = read_store_json(copy).get("hubert", {}).get("model")
    if recorded is not None and recorded != model:
        raise HubertStoreError(f"{store}: the copy {copy} holds hubert features of {recorded!r}, not {model!r}; "
                               "remove it or choose another work folder")
    if _hubert_problems(copy) is None:
        log(f"{copy} already has the hubert field for every ok utterance")
        return copy
    for dataset, corpus in roots.items():
        _extract(store, copy, dataset, corpus, model, workers or min(os.cpu_count() or 1, _n_shards(plan, dataset)))
    problem = _hubert_problems(copy)
    if problem:
        raise HubertStoreError(f"{store}: the hubert field was not added to the copy {copy}: {problem}")
    log(f"done in {time.perf_counter() - started:.1f} s: {copy}")
    return copy


def _plan(store: Path) -> list[dict]:
    if not (store / "store.json").is_file():
        raise HubertStoreError(f"{store}: not a feature store (no store.json)")
    plan = read_plan(store)
    if not plan:
        raise HubertStoreError(f"{store}: no catalog with planned utterances (catalog/utterances.parquet)")
    return plan


def _corpus_root(store: Path, dataset: str, rows: list[dict], root: Path | None) -> Path:
    """The corpus root of `dataset`, checked: its videos are the plan's, no more, no fewer.

    extract.py plans from a listing of the root: an utterance it has not seen would become a new
    shard without the other fields, and the synthetic adapter generates a corpus into an empty root.
    """
    if root is None:
        if dataset not in DERIVED_ROOTS:
            raise HubertStoreError(f"{store}: dataset {dataset!r} needs its corpus root (--root)")
        roots = set()
        for r in rows:
            video, parts = Path(r["video_path"] or ""), len(Path(r["utt_id"]).parts)
            if r.get("start_s") is not None or len(video.parts) <= parts or \
                    video.with_suffix("").parts[-parts:] != Path(r["utt_id"]).parts:
                raise HubertStoreError(f"{store}: cannot tell the corpus root of {dataset!r} from "
                                       f"{r['video_path']!r} (utterance {r['utt_id']!r}); pass --root")
            roots.add(video.parents[parts - 1])
        if len(roots) != 1:
            raise HubertStoreError(f"{store}: the {dataset!r} videos lie under {len(roots)} roots: "
                                   f"{sorted(map(str, roots))[:3]}")
        root = roots.pop()
    root = Path(root).resolve()
    missing = [r["video_path"] for r in rows if r["video_path"] and not Path(r["video_path"]).exists()]
    if missing or not root.is_dir():
        raise HubertStoreError(f"{store}: the corpus of {dataset!r} is not at {root} "
                               f"({len(missing)} of {len(rows)} planned videos missing, e.g. "
                               f"{(missing or [str(root)])[0]}); extract.py lists it before adding a field")
    listed = {u.utt_id for u in list_utterances(dataset, root)}
    planned = {r["utt_id"] for r in rows}
    if listed != planned:
        raise HubertStoreError(f"{store}: the corpus at {root} lists {len(listed - planned)} utterances the "
                               f"plan lacks and lacks {len(planned - listed)} planned ones (e.g. "
                               f"{sorted(listed ^ planned)[:3]}); extraction would change the plan")
    return root


def _check_split(store: Path) -> None:
    """extract.py rebuilds the catalog with its default split: it must be the store's."""
    t = read_table(store, "utterances")
    if assign_split_column(t["dataset"].to_pylist(), t["speaker_id"].to_pylist()) != t["split"].to_pylist():
        raise HubertStoreError(f"{store}: its split is not extract.py's default (--val 0.1 --test 0.1 "
                               "--split-seed 0); a rebuilt catalog would move speakers between splits")


def _copy_store(store: Path, copy: Path) -> None:
    """Copy into a partial folder renamed when complete: tars hard-linked (else copied), the rest copied."""
    def link_or_copy(src: str, dst: str) -> str:
        if src.endswith(".tar"):
            try:
                os.link(src, dst)
                return dst
            except OSError:  # another file system, or links not allowed
                pass
        return shutil.copy2(src, dst)

    partial = copy.with_name(copy.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted copy of ours
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(store, partial, copy_function=link_or_copy, ignore=shutil.ignore_patterns("*.tmp*"))
    partial.rename(copy)


def _check_copy(store: Path, copy: Path, plan: list[dict]) -> None:
    if not (copy / "store.json").is_file() or \
            [(r["dataset"], r["utt_id"], r["shard_id"]) for r in read_plan(copy)] != \
            [(r["dataset"], r["utt_id"], r["shard_id"]) for r in plan]:
        raise HubertStoreError(f"{store}: {copy} exists and is not a copy of it; remove it or choose "
                               "another work folder")


def _n_shards(plan: list[dict], dataset: str) -> int:
    return len({r["shard_id"] for r in plan if r["dataset"] == dataset})


def _extract(store: Path, copy: Path, dataset: str, root: Path, model: str, workers: int) -> None:
    """pipelines/extract.py --fields hubert on the copy, with a private local Ray; its output to stderr."""
    cmd = [sys.executable, str(REPO / "pipelines" / "extract.py"), "--dataset", dataset, "--root", str(root),
           "--store", str(copy), "--fields", "hubert", "--hubert-model", model, "--workers", str(workers)]
    log(f"extracting hubert for {dataset!r} ({workers} workers): {' '.join(cmd[1:])}")
    started = time.perf_counter()
    proc = subprocess.run(cmd, env={**os.environ, "RAY_ADDRESS": ""}, stdout=sys.stderr, cwd=REPO)
    if proc.returncode != 0:
        raise HubertStoreError(f"{store}: pipelines/extract.py --fields hubert exited {proc.returncode} on the "
                               f"copy {copy} (its output above says why)")
    log(f"extracted hubert for {dataset!r} in {time.perf_counter() - started:.1f} s")


def _hubert_problems(copy: Path) -> str | None:
    """None when every utterance whose other fields are ok has an ok hubert member; else why not."""
    t = read_table(copy, "utterances")
    if "field_hubert" not in t.column_names:
        return "the catalog has no hubert column"
    others = [c for c in t.column_names if c.startswith("field_") and c != "field_hubert"]
    rows = t.select(["utt_id", "field_hubert", *others]).to_pylist()
    bad = [r for r in rows if r["field_hubert"] != "ok" and all(r[c] == "ok" for c in others)]
    if not bad:
        return None
    errors = [e for e in read_table(copy, "errors").to_pylist() if e["field"] == "hubert"]
    why = f"{errors[0]['utt_id']}: [{errors[0]['stage']}] {errors[0]['reason']}" if errors else bad[0]["field_hubert"]
    return f"{len(bad)} of {len(rows)} utterances without an ok hubert member (e.g. {why})"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, type=Path, help="the store (left untouched)")
    p.add_argument("--out", required=True, type=Path, help="work folder: the copy goes to OUT/<store name>")
    p.add_argument("--hubert-model", default=None,
                   help="HuBERT hub id or local directory (default: a randomly initialised HuBERT "
                        "saved under --out)")
    p.add_argument("--hidden-size", type=int, default=ROW_SIZE,
                   help="row size of the random HuBERT's features (default: %(default)s, the real model's)")
    p.add_argument("--root", type=Path, default=None,
                   help="corpus root (default: read off the plan's video paths, folder/synthetic datasets)")
    p.add_argument("--workers", type=int, default=None,
                   help="extraction workers (default: one per CPU, at most one per shard)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        path = store_with_hubert(args.store, args.out, args.hubert_model, root=args.root,
                                 hidden_size=args.hidden_size, workers=args.workers)
    except (HubertStoreError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
