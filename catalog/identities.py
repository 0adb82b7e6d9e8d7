"""Speaker tools on face identity: cluster utterances by their `identity` embedding, write an
`identity_cluster` column, report identity clusters that appear in two splits (leakage).

    python -m catalog identities --store S [--threshold 0.5] [--dataset lrs2] [--write]

Why: a corpus's speaker id is often a proxy (LRS2's is the programme folder, LRS3's one TED
talk), so "speaker-disjoint" splits can still put one face in train and test. The embeddings
(features/identity.py: dlib's face-recognition ResNet, the mean over sampled frames) say who is
on screen whatever the folder says.

Clustering (linear in utterances x clusters, so a whole LRS2 catalog fits): utterances in
catalog order join the nearest cluster whose centroid (the running mean of its members) is
within `threshold` (Euclidean), else found a new cluster; then every utterance is assigned once
more to its nearest final centroid within `threshold` (undoing early, order-dependent choices)
and clusters are numbered 0, 1, ... in catalog order of their first utterance. One pass per
dataset: an identity cluster never spans datasets.

Threshold (DEFAULT_THRESHOLD = 0.5): dlib's convention is 0.6 between two single images. Means
over frames are steadier than single images: on the shared real clips (6 speakers, spk03 twice)
the two spk03 recordings lie 0.12 apart, every other pair 0.610 .. 1.0, while single frames of one
clip lie 0.40 apart on average (spk04) and single frames of spk04 and spk06 0.57 at the closest. 0.5
sits between the two groups with a margin on either side; 0.6 (dlib's) also gives 6 clusters
here, with 0.010 to spare.

Writing (`write=True`): the cluster of each utterance goes into a columns-only sidecar per shard
(`shards/<dataset>/identities/<shard>.json`, as the sync pass writes `sync`), so every later
catalog build keeps the column, and into the current utterances table at once (a new catalog
generation, every other column kept). Utterances without an identity get null. Run it again
after extracting more utterances: the numbering is recomputed for the whole dataset.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa

from catalog.build import read_table, write_table
from catalog.layout import tar_path
from catalog.sidecar import write_sidecar
from catalog.tars import iter_samples
from features.identity import decode as decode_identity

FIELD = "identity"
COLUMN = "identity_cluster"
SIDECAR = "identities"  # columns-only sidecars (no tar)
VERSION = "identity-clusters-1"
DEFAULT_THRESHOLD = 0.5


def read_identities(store: Path, rows: list[dict]) -> dict[tuple[str, str], dict]:
    """(dataset, utt_id) -> decoded identity member, for the rows whose identity is 'ok'; each
    shard's identity tar is read once, front to back."""
    by_shard: dict[tuple[str, int], dict[str, dict]] = defaultdict(dict)
    for r in rows:
        if r.get(f"field_{FIELD}") == "ok":
            by_shard[(r["dataset"], int(r["shard_id"]))][r["key"]] = r
    out = {}
    for (dataset, shard_id), wanted in sorted(by_shard.items()):
        for sample in iter_samples(tar_path(store, dataset, FIELD, shard_id)):
            row = wanted.get(sample["__key__"])
            if row is not None and f"{FIELD}.json" in sample:
                out[(dataset, row["utt_id"])] = decode_identity(sample[f"{FIELD}.json"])
    return out


def cluster(embeddings: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """(n,) int cluster labels, 0.. in order of first member (leader clustering on running
    centroids, then one reassignment to the nearest final centroid; see the module doc)."""
    x = np.asarray(embeddings, np.float64)
    n = len(x)
    if n == 0:
        return np.zeros(0, np.int64)
    sums, counts = np.zeros((0, x.shape[1])), np.zeros(0)
    labels = np.empty(n, np.int64)
    for i, e in enumerate(x):
        if len(counts):
            d = np.linalg.norm(sums / counts[:, None] - e, axis=1)
            k = int(np.argmin(d))
            if d[k] < threshold:
                labels[i] = k
                sums[k] += e
                counts[k] += 1
                continue
        labels[i] = len(counts)
        sums, counts = np.vstack([sums, e]), np.append(counts, 1.0)
    centroids = sums / counts[:, None]
    d = np.linalg.norm(x[:, None, :] - centroids[None], axis=2) if n * len(centroids) <= 1 << 22 else None
    for i in range(n):  # reassignment: the nearest final centroid within the threshold
        row = d[i] if d is not None else np.linalg.norm(centroids - x[i], axis=1)
        k = int(np.argmin(row))
        if row[k] < threshold:
            labels[i] = k
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(first)  # renumber by first appearance
    relabel = np.empty(labels.max() + 1, np.int64)
    relabel[np.unique(labels)[order]] = np.arange(len(order))
    return relabel[labels]


def nearest(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each embedding's nearest other one: (index, distance); for small sets (reports, tests)."""
    x = np.asarray(embeddings, np.float64)
    d = np.linalg.norm(x[:, None] - x[None], axis=2)
    np.fill_diagonal(d, np.inf)
    return d.argmin(1), d.min(1)


def identities(store: Path, threshold: float = DEFAULT_THRESHOLD, dataset: str | None = None,
               write: bool = False, by: str = "auto", examples: int = 10) -> dict:
    """Cluster the store's utterances by identity; the report (JSON-ready), and with `write` the
    `identity_cluster` column (see the module doc). Leakage is counted over `by`: "official"
    (official_split), "speaker" (the speaker-disjoint split) or "auto" (official where the
    corpus has lists, as `catalog overlap`)."""
    store = Path(store)
    table = read_table(store, "utterances")
    if f"field_{FIELD}" not in table.column_names:
        raise FileNotFoundError(f"{store}: no {FIELD!r} field in the catalog; extract it first "
                                f"(pipelines/extract.py --fields {FIELD})")
    rows = [r for r in table.select([c for c in ("dataset", "utt_id", "key", "shard_id", "index_in_shard",
                                                 "speaker_id", "split", "official_split", f"field_{FIELD}")
                                     if c in table.column_names]).to_pylist()
            if dataset is None or r["dataset"] == dataset]
    found = read_identities(store, rows)
    if by == "auto":
        by = "official" if any(r.get("official_split") for r in rows) else "speaker"
    split = {"official": "official_split", "speaker": "split"}[by]
    labels: dict[tuple[str, str], int] = {}
    report = {"store": str(store), "threshold": threshold, "by": split, "datasets": {}, "leaking_clusters": 0}
    for ds in sorted({r["dataset"] for r in rows}):
        mine = [r for r in rows if r["dataset"] == ds and (ds, r["utt_id"]) in found]
        emb = np.array([found[(ds, r["utt_id"])]["embedding"] for r in mine]).reshape(len(mine), -1)
        cl = cluster(emb, threshold)
        labels.update({(ds, r["utt_id"]): int(c) for r, c in zip(mine, cl)})
        report["datasets"][ds] = _dataset_report(mine, cl, split, examples)
        report["leaking_clusters"] += report["datasets"][ds]["leaking_clusters"]
    report["n_clusters"] = sum(d["n_clusters"] for d in report["datasets"].values())
    report["written"] = bool(write)
    if write:
        _write(store, table, labels, threshold, dataset)
    return report


def _dataset_report(rows: list[dict], labels: np.ndarray, column: str, examples: int) -> dict:
    members: dict[int, list[dict]] = defaultdict(list)
    for r, c in zip(rows, labels):
        members[int(c)].append(r)
    leaks = []
    for c, rs in sorted(members.items()):
        splits = sorted({r[column] for r in rs if r.get(column)})
        if len(splits) > 1:
            leaks.append({"cluster": c, "splits": {s: sum(r[column] == s for r in rs) for s in splits},
                          "speakers": sorted({r["speaker_id"] for r in rs})[:examples]})
    speakers = defaultdict(set)
    for r, c in zip(rows, labels):
        speakers[r["speaker_id"]].add(int(c))
    return {"utterances": len(rows), "n_clusters": len(members),
            "clusters_with_several_speakers": sum(len({r["speaker_id"] for r in rs}) > 1 for rs in members.values()),
            "speakers_in_several_clusters": sum(len(c) > 1 for c in speakers.values()),
            "leaking_clusters": len(leaks), "leaks": leaks[:examples]}


def _write(store: Path, table: pa.Table, labels: dict[tuple[str, str], int], threshold: float,
           dataset: str | None) -> None:
    datasets, utt_ids = table["dataset"].to_pylist(), table["utt_id"].to_pylist()
    shards, index = table["shard_id"].to_pylist(), table["index_in_shard"].to_pylist()
    per_shard: dict[tuple[str, int], list[tuple[int, str]]] = defaultdict(list)
    for ds, u, s, i in zip(datasets, utt_ids, shards, index):
        if dataset is None or ds == dataset:
            per_shard[(ds, int(s))].append((int(i), u))
    for (ds, s), members in sorted(per_shard.items()):
        entries = [{"utt_id": u, "status": "ok" if (ds, u) in labels else "skipped",
                    "columns": {COLUMN: labels.get((ds, u))}} for _, u in sorted(members)]
        write_sidecar(store, ds, SIDECAR, s, f"{VERSION}:{threshold}", entries)
    old = table[COLUMN].to_pylist() if COLUMN in table.column_names else [None] * table.num_rows
    new = [labels.get((ds, u)) if dataset is None or ds == dataset else o
           for ds, u, o in zip(datasets, utt_ids, old)]
    column = pa.array(new, pa.int32())
    table = (table.set_column(table.column_names.index(COLUMN), COLUMN, column) if COLUMN in table.column_names
             else table.append_column(COLUMN, column))
    write_table(store, "utterances", table)


def format_identities(r: dict) -> str:
    lines = [f"{r['n_clusters']} identity clusters (threshold {r['threshold']}), "
             f"{r['leaking_clusters']} appearing in more than one split ({r['by']})"
             + (f"; column {COLUMN} written" if r["written"] else "")]
    for ds, d in r["datasets"].items():
        lines.append(f"  {ds}: {d['utterances']} utterances with an identity, {d['n_clusters']} clusters, "
                     f"{d['clusters_with_several_speakers']} spanning several speaker ids, "
                     f"{d['speakers_in_several_clusters']} speaker ids in several clusters, "
                     f"{d['leaking_clusters']} leaking")
        for leak in d["leaks"]:
            splits = ", ".join(f"{s} {n}" for s, n in leak["splits"].items())
            lines.append(f"    cluster {leak['cluster']}: {splits} (speakers {', '.join(leak['speakers'])})")
    return "\n".join(lines)
