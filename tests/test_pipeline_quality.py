"""Sync survives the pipeline: stored landmarks and stored audio stay aligned."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from catalog.layout import table_path
from catalog.lookup import read_members
from features.fields import FIELDS
from features.landmarks import mouth_opening
from tests.conftest import extract_here

pytestmark = pytest.mark.slow
SLICE = ["audio", "rgb", "landmarks", "mel", "meta"]


def run_extract(dataset: str, root: Path, store: Path, *extra: str) -> dict:
    """The extraction job in this process, without Ray (tests/conftest.py: extract_here)."""
    extract_here("--dataset", dataset, "--root", root, "--store", store, "--shard-size", "4", *extra).ok()
    return json.loads((store / "extract_report.json").read_text())


def stored(store: Path, row: dict, fields: list[str] = SLICE) -> dict:
    return {f: FIELDS[f].decode(b) if f in FIELDS else json.loads(b)
            for f, (_, b) in read_members(store, row, fields).items()}


def check_lengths(row: dict, data: dict) -> None:
    n = row["n_frames"]
    assert data["audio"].shape == (640 * n,)
    assert data["rgb"].shape == (n, 96, 96, 3)
    assert data["landmarks"].shape == (n, 478, 3) and data["landmarks"].dtype == np.float16
    assert data["mel"].shape == (80, 1 + 640 * n // 200) and data["mel"].dtype == np.float16
    assert data["meta"]["n_frames"] == n and len(data["meta"]["crop_boxes"]) == n


def best_lag(mouth: np.ndarray, loudness: np.ndarray, max_lag: int = 8) -> int:
    """The lag (frames) at which the loudness best follows the mouth: loudness[t + lag] ~ mouth[t]."""
    m = (mouth - mouth.mean()) / (mouth.std() + 1e-9)
    a = (loudness - loudness.mean()) / (loudness.std() + 1e-9)
    scores = {}
    for lag in range(-max_lag, max_lag + 1):
        x, y = (m[: len(m) - lag], a[lag:]) if lag >= 0 else (m[-lag:], a[: len(a) + lag])
        scores[lag] = float(np.mean(x * y))
    return max(scores, key=scores.get)


def crop_mouth_darkness(crops: np.ndarray) -> np.ndarray:
    """Per frame, how dark the template's mouth box is (an open mouth shows its dark inside)."""
    s = crops.shape[1]
    return 255.0 - crops[:, int(0.62 * s):int(0.80 * s), int(0.38 * s):int(0.62 * s)].mean(axis=(1, 2, 3))


def test_sync_survives_the_pipeline(tmp_path):
    from pipelines.synthetic import generate_corpus

    root = tmp_path / "variants"
    variants = {"base": {}, "fps30": {"fps": 30.0}, "uneven": {"uneven_timing": True},
                "shift3": {"audio_shift_frames": 3}, "shiftm4": {"audio_shift_frames": -4}}
    for name, kwargs in variants.items():
        generate_corpus(root / name, n_speakers=2, n_utterances=1, min_seconds=4.0, max_seconds=5.0,
                        seed=7, progress=False, **kwargs)
    store = tmp_path / "store"
    run_extract("folder", root, store, "--fields", *SLICE, "aligned256")
    expected = {"base": 0, "fps30": 0, "uneven": 0, "shift3": 3, "shiftm4": -4}
    rows = pq.read_table(table_path(store, "utterances")).to_pylist()
    assert len(rows) == 10 and all(r["status"] == "ok" for r in rows)
    for row in rows:
        variant = row["utt_id"].split("/")[0]
        data = stored(store, row)
        check_lengths(row, data)
        n = row["n_frames"]
        loudness = np.sqrt((data["audio"].reshape(n, 640) ** 2).mean(axis=1))
        lag = best_lag(mouth_opening(data["landmarks"]), loudness)
        assert abs(lag - expected[variant]) <= 1, (row["utt_id"], lag)
        crops = stored(store, row, ["aligned256"])["aligned256"]  # the upright 256 px crops, by their pixels
        lag = best_lag(crop_mouth_darkness(crops), loudness)
        assert crops.shape == (n, 256, 256, 3) and abs(lag - expected[variant]) <= 1, (row["utt_id"], "aligned256", lag)
