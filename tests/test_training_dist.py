"""fit.py under torchrun (2 CPU processes, gloo), resumed; the ablation grid; the loader benchmark.

All on the tiny fake store of test_training.py (6 speakers, 18 utterances, 5 shards).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_training import make_store
from training.runtime import read_checkpoint


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("store"))


def torchrun(*args: str, nproc: int = 2, timeout: int = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           str(REPO / "training" / "fit.py"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the venv's editable install carries the code
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def test_torchrun_two_ranks_own_shards_and_resume(store, tmp_path):
    out = tmp_path / "ddp"
    common = ["--combo", "mel_landmarks", "--store", str(store), "--out", str(out), "--width", "0.25",
              "--lr", "1e-3", "--batch-size", "16", "--eval-every", "3", "--eval-pairs", "64",
              "--log-every", "1", "--offset-windows", "0", "--no-progress", "--threads", "1"]
    torchrun(*common, "--steps", "3")
    ranks = json.loads((out / "ranks.json").read_text())
    assert len(ranks) == 2
    own = [{tuple(s) for s in r["shards"]} for r in ranks]
    assert own[0] and own[1] and not own[0] & own[1]  # the 2 train shards: one per rank
    assert all(r["utterances"] > 0 for r in ranks)
    # a rank whose shards hold one speaker borrows another shard's audio for cross negatives
    for r in ranks:
        assert r["speakers"] >= 2 or r["foreign_audio_utterances"] > 0
    ckpt = read_checkpoint(out / "checkpoint.pt")
    assert ckpt["step"] == 3 and ckpt["world"] == 2 and len(ckpt["rank_states"]) == 2
    assert ckpt["rank_states"][0]["sampler"] != ckpt["rank_states"][1]["sampler"]
    assert all(s["sampler"]["drawn"] == 3 * 16 for s in ckpt["rank_states"])

    torchrun(*common, "--steps", "6", "--resume")
    ckpt = read_checkpoint(out / "checkpoint.pt")
    assert ckpt["step"] == 6 and all(s["sampler"]["drawn"] == 6 * 16 for s in ckpt["rank_states"])
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # continued at step 4, nothing repeated
    final = json.loads((out / "final.json").read_text())
    assert final["world_size"] == 2 and final["steps"] == 6 and final["resumed_from"] == 3


def test_ablation_grid_writes_both_tables(store, tmp_path):
    from training.ablate import main
    out = tmp_path / "grid"
    argv = ["--store", str(store), "--out", str(out), "--combos", "mel_landmarks", "mel_tdmm",
            "--ablation-audio", "mel", "--ratios", "0", "0.2", "--margin-grid", "0,0", "0.1,0.3",
            "--seeds", "0", "--steps", "2", "--minutes", "0", "--batch-size", "8", "--eval-every", "0",
            "--eval-pairs", "32", "--threads", "1"]
    assert main(argv) == 0
    report = json.loads((out / "ablation.json").read_text())
    # Table IV: 2 combos; Table V on mel_landmarks: ratio 0 and margins (0, 0) are new runs,
    # ratio 0.2 and margins (0.1, 0.3) are Table IV's default run
    assert len(report["runs"]) == 4
    assert {r["combo"] for r in report["table_iv"]} == {"mel_landmarks", "mel_tdmm"}
    assert {r["ratio"] for r in report["table_v_ratio"]} == {0.0, 0.2}
    assert {r["margins"] for r in report["table_v_margin"]} == {"0,0", "0.1,0.3"}
    md = (out / "ablation.md").read_text()
    assert "Table IV" in md and "Table V" in md and "Max Acc." in md and "Cross-speaker" in md
    assert main(argv) == 0  # a second call reuses every run
    assert all(r["reused"] for r in json.loads((out / "ablation.json").read_text())["runs"])


def test_loader_benchmark_reads_only_the_combo_fields(store, tmp_path):
    from benchmarks.loader import main  # the repository root is on pytest's pythonpath
    path = tmp_path / "bench.json"
    assert main(["--store", str(store), "--combos", "mel_landmarks", "hubert_rgb", "--windows", "128",
                 "--repeats", "1", "--json", str(path)]) == 0  # every path once (0, 1, 2 workers, ceiling)
    report = json.loads(path.read_text())
    by = {r["combo"]: r for r in report["results"]}
    lm = by["mel_landmarks"]["bytes_read"]
    assert lm["rgb"] == lm["hubert"] == lm["parsing"] == lm["tdmm"] == 0
    assert lm["mel"] > 0 and lm["landmarks"] > 0
    for combo, r in by.items():  # every byte of the combo's tars, at most the tar padding short
        for f, need in r["bytes_needed"].items():
            assert 0.95 * need <= r["bytes_read"][f] <= need, (combo, f)
    assert by["hubert_rgb"]["bytes_read"]["mel"] == 0
    assert all(r["windows_per_s_per_core"] > 0 for r in by.values())
