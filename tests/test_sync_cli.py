"""training/sync/score.py end to end: CSV, JSON, plots, named protocols and scorer, crops that re-score
to the same numbers, clear errors. Random SyncNet weights: the numbers mean nothing, the
plumbing and the arithmetic must hold."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from training.sync.score import main
from training.sync.syncnet import save_random_weights


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_random_weights(tmp_path_factory.mktemp("w") / "syncnet_v2.model", seed=1)


def run(args: list[str]) -> int:
    torch.set_num_threads(1)
    return main([*map(str, args), "--workers", "1", "--threads", "1"])


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_score_cli_on_synthetic_clips(tmp_path, weights, capsys):
    from pipelines.synthetic import generate_corpus

    clips = generate_corpus(tmp_path / "clips", n_speakers=1, n_utterances=1, min_seconds=1.6,
                            max_seconds=1.8, seed=3, progress=False)
    (tmp_path / "clips" / "broken.mp4").write_text("not a video")
    out, plots, crops = tmp_path / "out", tmp_path / "plots", tmp_path / "crops"
    rc = run([tmp_path / "clips", "--syncnet-weights", weights, "--crop", "mesh",
              "--max-seconds", "1.2", "--out", out, "--plots", plots, "--save-crops", crops])
    assert rc == 1  # the broken file fails; the others are scored
    rows = read_csv(out / "scores.csv")
    assert [(r["protocol"], bool(r["error"])) for r in rows] == [("mesh", True), ("mesh", False)]
    ok = [r for r in rows if not r["error"]]
    assert all(r["scorer"] == "syncnet" and r["scorer_version"].startswith("syncnet_python-v2+") for r in ok)
    assert all(int(r["frames_scored"]) == 25 for r in ok)  # 30 frames -> 25 windows (min_length - 5)
    assert "broken.mp4" in rows[0]["video"] and rows[0]["error"]
    report = json.loads((out / "scores.json").read_text())
    assert [(m["protocol"], m["videos"], m["scored"]) for m in report["means"]] == [("mesh", 2, 1)]
    scored = [r for r in report["rows"] if not r["error"]]
    assert all(len(r["mean_dist"]) == 31 and len(r["framewise_confidence"]) == 25 for r in scored)
    assert [q.name for q in plots.glob("*.png")] == [f"{clips[0].stem}.syncnet.mesh.png"]  # the stem, no path
    assert "LSE-D" in capsys.readouterr().out
    # the saved pipeline crops score to the same figures under protocol `none`
    [saved] = list(crops.glob("*.mkv"))
    assert run([saved, "--syncnet-weights", weights, "--crop", "none", "--out", tmp_path / "again"]) == 0
    [again] = read_csv(tmp_path / "again" / "scores.csv")
    [pipeline] = ok
    assert (again["offset"], again["lse_d"], again["lse_c"], again["frames_scored"]) == \
        (pipeline["offset"], pipeline["lse_d"], pipeline["lse_c"], pipeline["frames_scored"])


def test_plot_names_are_stems_with_a_hash_only_where_two_collide():
    from training.sync.plots import plot_stems

    stems = plot_stems(["/data/spk1/clip.mp4", "/data/spk2/clip.mp4", "/data/other take.mp4",
                        "/data/spk1/clip.mp4"])
    assert stems["/data/other take.mp4"] == "other_take"
    a, b = stems["/data/spk1/clip.mp4"], stems["/data/spk2/clip.mp4"]
    assert a != b and a.startswith("clip-") and b.startswith("clip-") and len(a) == len("clip-") + 6
    assert plot_stems(["/data/spk1/clip.mp4"]) == {"/data/spk1/clip.mp4": "clip"}


def test_score_cli_errors(tmp_path, weights, capsys):
    (tmp_path / "clip.mp4").write_bytes(b"")
    assert main([str(tmp_path), "--syncnet-weights", str(tmp_path / "absent.model")]) == 2
    assert "cannot be downloaded" in capsys.readouterr().err
    assert main([str(tmp_path / "nothing_here")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main([str(tmp_path), "--scorer", "unisync"]) == 2
    assert "--checkpoint" in capsys.readouterr().err


def test_real_clips_in_all_three_protocols(real_corpus, tmp_path, weights):
    clip = real_corpus / "spk05" / "a.mp4"
    out, crops = tmp_path / "out", tmp_path / "crops"
    assert run([clip, "--syncnet-weights", weights, "--crop", "mesh", "frame", "none",
                "--max-seconds", "1.0", "--out", out, "--save-crops", crops, "--plots", tmp_path / "p"]) == 1
    rows = {r["protocol"]: r for r in read_csv(out / "scores.csv")}
    assert not rows["mesh"]["error"] and not rows["frame"]["error"]
    assert "needs 224 x 224 frames" in rows["none"]["error"]  # a 524 px clip is not a crop
    assert int(rows["frame"]["frames_scored"]) == 20
    assert run([crops, "--syncnet-weights", weights, "--crop", "none", "--out", tmp_path / "none"]) == 0
    [none] = read_csv(tmp_path / "none" / "scores.csv")
    assert none["lse_d"] == rows["mesh"]["lse_d"] and none["offset"] == rows["mesh"]["offset"]
