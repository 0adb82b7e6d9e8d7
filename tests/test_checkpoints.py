"""Checkpoints are data: a crafted pickle is refused by every loader and its payload never runs.

The payload is harmless: unpickled, it creates a marker file (pathlib.Path.touch). Each entry
point that loads a UniSync checkpoint is called on it in-process and must raise the clear
refusal AND leave no marker; a control load with weights_only=False proves the payload is real.
"""
from __future__ import annotations

import pathlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from training.model import UniSync
from training.runtime import (CheckpointError, convert, load_checkpoint, main as runtime_main,
                              model_config, read_checkpoint, save_checkpoint)


class Payload:
    """Unpickled, this calls pathlib.Path.touch(marker): what a crafted checkpoint's code would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def tiny_model(combo: str = "mel_landmarks") -> UniSync:
    torch.manual_seed(0)
    return UniSync(combo, width=0.125)


@pytest.fixture
def crafted(tmp_path) -> tuple[Path, Path]:
    """A checkpoint that looks like fit.py's (model, config, args) with a payload in its args."""
    marker = tmp_path / "payload_ran"
    model = tiny_model()
    path = tmp_path / "crafted.pt"
    torch.save({"model": model.state_dict(), "config": model_config(model), "step": 1,
                "optimizer": {"state": {}, "param_groups": []}, "args": {"x": Payload(marker)}}, path)
    assert not marker.exists()
    return path, marker


def assert_refused(exc_info, path: Path) -> None:
    msg = str(exc_info.value)
    assert str(path) in msg and "refused" in msg and "training.runtime convert" in msg, msg


def test_read_and_load_checkpoint_refuse_the_payload(crafted):
    path, marker = crafted
    for loader in (read_checkpoint, load_checkpoint):
        with pytest.raises(CheckpointError) as e:
            loader(path)
        assert_refused(e, path)
        assert "getattr" in str(e.value)  # torch's reason: the global the pickle asked for
        assert not marker.exists(), loader.__name__


def test_resume_refuses_the_payload(crafted, tmp_path, capsys):
    """fit.py --resume on a crafted checkpoint.pt: exit 2 with the refusal, the payload never runs."""
    from tests.test_training import make_store
    from training.fit import main as fit_main, read_resume

    path, marker = crafted
    with pytest.raises(CheckpointError) as e:
        read_resume(path)
    assert_refused(e, path)
    out = tmp_path / "run"
    out.mkdir()
    path.rename(out / "checkpoint.pt")
    store = make_store(tmp_path / "store", utts_per_speaker=2, n_frames=40, broken=False)
    rc = fit_main(["--combo", "mel_landmarks", "--store", str(store), "--out", str(out), "--width", "0.125",
                   "--steps", "2", "--resume", "--workers", "0", "--threads", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "refused" in err and str(out / "checkpoint.pt") in err, err
    assert not marker.exists()


def test_sync_entry_points_refuse_the_payload(crafted, tmp_path, capsys):
    """SyncLoss.from_checkpoint, the unisync scorer (score.py, and sync_pass's per-worker loader)."""
    from training.sync.loss import SyncLoss
    from training.sync.score import main as score_main
    from training.sync.scorers import make_scorer
    from training.sync.sync_pass import get_scorer

    path, marker = crafted
    loaders = {"SyncLoss.from_checkpoint": lambda: SyncLoss.from_checkpoint(path),
               "make_scorer unisync": lambda: make_scorer("unisync", path),
               "sync_pass get_scorer": lambda: get_scorer(f"unisync:{path}")}
    for name, load in loaders.items():
        with pytest.raises(CheckpointError) as e:
            load()
        assert_refused(e, path)
        assert not marker.exists(), name
    video = tmp_path / "a.mp4"
    video.write_bytes(b"")  # score.py loads the scorer before it reads any video
    rc = score_main([str(video), "--scorer", "unisync", "--checkpoint", str(path), "--workers", "1",
                     "--out", str(tmp_path / "scores")])
    err = capsys.readouterr().err
    assert rc == 2 and "refused" in err and str(path) in err, err
    assert not marker.exists()


def test_evaluate_and_syncnet_loaders_refuse_the_payload(crafted, capsys):
    from training.evaluate import main as evaluate_main
    from training.sync.syncnet import WeightsError, load_syncnet

    path, marker = crafted
    assert evaluate_main(["--checkpoint", str(path), "--store", str(path.parent)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "refused" in err and "Traceback" not in err
    with pytest.raises(WeightsError):
        load_syncnet(path)
    assert not marker.exists()


def test_the_payload_is_real_and_convert_runs_it_only_when_asked(crafted, tmp_path, capsys):
    """Control: the same file unpickled with weights_only=False does run its payload, so the tests
    above can fail; `convert` (the explicit, trusted-file path) runs it once and writes a safe file."""
    path, marker = crafted
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    safe = tmp_path / "safe.pt"
    assert runtime_main(["convert", str(path), str(safe)]) == 0
    assert marker.exists() and "wrote" in capsys.readouterr().out
    marker.unlink()
    model, ckpt = load_checkpoint(safe)
    assert not marker.exists() and ckpt["args"] == {"x": None}  # Path.touch returned None
    for k, v in tiny_model().state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_a_saved_checkpoint_round_trips_with_weights_only(tmp_path):
    """save_checkpoint after a real optimiser step: torch.load(weights_only=True) gives the same
    weights, optimiser state and loader state; Paths and numpy scalars become plain values."""
    model = tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for p in model.parameters():  # one real Adam step: moments and step counts in the state
        p.grad = torch.randn_like(p)
    opt.step()
    rng = np.random.default_rng(7)
    rng.integers(0, 10, 3)
    extra = {"rank_states": [{"sampler": {"rng": rng.bit_generator.state, "drawn": np.int64(12)},
                              "buffer": {"buffered": [["fake", 3]]}}],
             "torch_rng": torch.get_rng_state(), "best_acc": np.float32(0.5)}
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, model, opt, 1, {"store": tmp_path / "store", "steps": 2}, extra)
    raw = torch.load(path, weights_only=True)
    assert raw["args"] == {"store": str(tmp_path / "store"), "steps": 2}
    assert raw["rank_states"][0]["sampler"]["drawn"] == 12 and type(raw["best_acc"]) is float
    again = np.random.default_rng()
    again.bit_generator.state = raw["rank_states"][0]["sampler"]["rng"]
    assert again.integers(0, 1 << 30, 5).tolist() == rng.integers(0, 1 << 30, 5).tolist()
    assert torch.equal(raw["torch_rng"], extra["torch_rng"])
    loaded, ckpt = load_checkpoint(path)
    for k, t in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], t), k
    opt2 = torch.optim.Adam(loaded.parameters(), lr=1e-3)
    opt2.load_state_dict(ckpt["optimizer"])
    for s1, s2 in zip(opt.state_dict()["state"].values(), opt2.state_dict()["state"].values()):
        assert all(torch.equal(s1[k], s2[k]) for k in s1)
    with pytest.raises(TypeError, match=r"extra\['bad'\]"):  # fit.py never writes code into a checkpoint
        save_checkpoint(path, model, opt, 1, {}, {"bad": object()})


def test_a_file_that_is_not_a_unisync_checkpoint_is_named(tmp_path):
    from training.sync.loss import SyncLoss
    from training.sync.syncnet import save_random_weights

    syncnet = save_random_weights(tmp_path / "syncnet_v2.model")
    for load in (load_checkpoint, SyncLoss.from_checkpoint):
        with pytest.raises(CheckpointError, match="bare state dict") as e:
            load(syncnet)
        assert str(syncnet) in str(e.value) and "syncnet" in str(e.value).lower()
    no_config = tmp_path / "no_config.pt"
    torch.save({"model": OrderedDict(tiny_model().state_dict()), "step": 3}, no_config)
    with pytest.raises(CheckpointError, match="no 'config' key") as e:
        load_checkpoint(no_config)
    assert str(no_config) in str(e.value)
    wrong = tmp_path / "wrong.pt"
    torch.save({"model": tiny_model().state_dict(), "config": model_config(UniSync("mel_landmarks", 0.25))}, wrong)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(wrong)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    truncated = tmp_path / "truncated.pt"
    torch.save(tiny_model().state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    for bad in (garbage, truncated):
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(bad)
        assert str(bad) in str(e.value)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "absent.pt")


def test_convert_makes_a_trusted_legacy_checkpoint_loadable(tmp_path):
    """A trusted file with numpy scalars and Paths (refused as it is) converts to a safe one."""
    model = tiny_model()
    legacy = tmp_path / "legacy.pt"
    torch.save({"model": model.state_dict(), "config": model_config(model), "step": np.int64(5),
                "args": {"store": Path("/data/store"), "lr": np.float64(1e-3)}}, legacy)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(legacy)
    safe = convert(legacy, tmp_path / "safe.pt")
    assert safe["step"] == 5 and safe["args"] == {"store": "/data/store", "lr": 1e-3}
    loaded, _ = load_checkpoint(tmp_path / "safe.pt")
    for k, t in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], t), k
