"""The whisper field with a randomly initialised tiny Whisper of the real architecture: exactly 2
rows per video frame, layer selection, utterances past the encoder's 30-s window, a fast clear
failure without weights, adding the field to an existing store, verify, and the per-frame windows
of LatentSync and MuseTalk."""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from catalog.whisper_windows import RULES, frame_window, frame_windows
from features import whisper
from tests.conftest import extract_here, noise_frames, tiny_whisper, tone, write_video


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return str(tiny_whisper(tmp_path_factory.mktemp("whisper") / "tiny"))


def test_rows_are_exactly_two_per_frame_and_layers_are_the_encoders(model):
    import torch

    for n_samples in (640, 640 * 100, 640 * 100 + 639):  # one frame, 4 s, 4 s and a partial frame
        feats = whisper.whisper_features(np.zeros(n_samples, np.float32), model)
        assert feats.shape == (2 * (n_samples // 640), 16) and feats.dtype == np.float32
    audio = tone(4.0, 300.0)
    every = whisper.whisper_features(audio, model, "all")
    assert every.shape == (200, 3, 16)  # embedding + 2 blocks
    assert np.array_equal(whisper.whisper_features(audio, model, -1), every[:, -1])
    assert np.array_equal(whisper.whisper_features(audio, model, 1), every[:, 1])
    encoder, extractor, _, _ = whisper.load_model(model)  # the padding's rows are dropped, no shift
    mel = extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
    with torch.inference_mode():
        direct = encoder(mel, output_hidden_states=True).hidden_states
    assert direct[0].shape[1] == 1500
    assert np.allclose(every[:, 0], direct[0][0, :200].numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="hidden states 0..2"):
        whisper.whisper_features(audio, model, 3)
    assert whisper.parse_layer("all") == "all" and whisper.parse_layer("-1") == -1


def test_longer_than_the_30s_window_is_cut_with_context(model):
    assert whisper.passes(1500, 1500) == [(0, 0, 1500)]  # 30 s: one pass
    assert whisper.passes(2000, 1500) == [(0, 0, 1450), (1400, 1450, 550)]
    assert whisper.passes(4500, 1500) == [(0, 0, 1450), (1400, 1450, 1400), (2800, 2850, 1400),
                                          (4200, 4250, 250)]
    rng = np.random.default_rng(0)
    audio = rng.normal(0, 0.05, 640 * 925).astype(np.float32)  # 37 s, 925 frames
    feats = whisper.whisper_features(audio, model)
    assert feats.shape == (1850, 16)
    first = whisper.whisper_features(audio[: 30 * 16000], model)  # the first pass alone
    assert np.array_equal(feats[:1450], first[:1450])
    click = audio.copy()
    at = int(33.3 * 16000)  # inside the second pass
    click[at: at + 400] = 0.9
    moved = whisper.whisper_features(click, model, 0)  # the embedding: local, so the click is one spot
    base = whisper.whisper_features(audio, model, 0)
    assert abs(int(np.argmax(np.abs(moved - base).sum(1))) - 33.3 * 50) <= 2


def test_missing_weights_fail_at_once_with_the_fix(model, monkeypatch, tmp_path):
    from transformers import WhisperModel  # noqa: F401  (imported before the clock starts)

    with pytest.raises(whisper.WhisperLoadError, match="not a directory") as err:
        whisper.load_model(str(tmp_path / "no-such-model"))
    assert "--whisper-model" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(whisper.WhisperLoadError, match="no config.json"):
        whisper.load_model(str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: nothing to fall back on
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    whisper.load_model.cache_clear()
    whisper._FAILED.clear()
    started = time.perf_counter()
    with pytest.raises(whisper.WhisperLoadError, match="not reachable") as err:
        whisper.load_model(whisper.DEFAULT_MODEL, "cpu")
    assert "huggingface-cli download openai/whisper-tiny" in str(err.value)
    with pytest.raises(whisper.WhisperLoadError):  # a second call in the worker: no new attempt
        whisper.load_model(whisper.DEFAULT_MODEL, "cpu")
    assert time.perf_counter() - started < 10
    whisper.load_model.cache_clear()
    whisper._FAILED.clear()


def latentsync_window(feats: np.ndarray, t: int) -> np.ndarray:
    """LatentSync's Audio2Feature.get_sliced_feature (audio_feat_length [2, 2], fps 25), in numpy."""
    center = int(t * 50 / 25)
    rows = [feats[min(max(0, i), len(feats) - 1)] for i in range(center - 4, center + 6)]
    return np.concatenate([r.reshape(-1, feats.shape[-1]) for r in rows])


def musetalk_windows(feats: np.ndarray, n_samples: int) -> np.ndarray:
    """MuseTalk's AudioProcessor.get_whisper_chunk (padding 2, 2; fps 25), in numpy."""
    n_frames, actual = int(n_samples / 16000 * 25), int(n_samples / 16000 * 50)
    f = feats[:actual]
    f = np.concatenate([np.zeros_like(f[:4]), f, np.zeros_like(f[:12])])
    return np.stack([f[2 * t: 2 * t + 10].reshape(-1, feats.shape[-1]) for t in range(n_frames)])


def test_windows_match_latentsync_and_musetalk_code():
    rng = np.random.default_rng(1)
    for feats in (rng.normal(size=(40, 5, 8)).astype(np.float16), rng.normal(size=(40, 8)).astype(np.float32)):
        lat = frame_windows(feats, "latentsync")
        assert lat.shape == (20, 10 * (feats.size // 40 // 8), 8) and lat.dtype == feats.dtype
        assert all(np.array_equal(lat[t], latentsync_window(feats, t)) for t in range(20))
        assert np.array_equal(frame_window(feats, 0, "latentsync"), latentsync_window(feats, 0))
        assert np.array_equal(frame_windows(feats, "musetalk"), musetalk_windows(feats, 640 * 20))
    assert RULES["latentsync"].offsets.tolist() == list(range(-4, 6))


def tars(store: Path) -> dict[str, str]:
    return {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(store.glob("shards/**/*.tar"))}


def test_adding_whisper_to_a_store_touches_no_other_tar_and_verifies(model, tmp_path):
    from catalog.build import read_table
    from catalog.layout import read_store_json, tar_path
    from catalog.verify import verify
    from catalog.store import open_store

    root, store = tmp_path / "corpus", tmp_path / "store"
    for i, seconds in enumerate((1.6, 2.0, 2.4)):
        (root / f"spk{i}").mkdir(parents=True)
        write_video(root / f"spk{i}" / "a.mp4", noise_frames(int(25 * seconds), 32, i), audio=tone(seconds, 200 + 100 * i))
    common = ("--dataset", "folder", "--root", root, "--store", store, "--shard-size", "2")
    extract_here(*common, "--fields", "audio", "mel").ok()
    before = tars(store)
    extract_here(*common, "--fields", "whisper", "--whisper-model", model, "--whisper-layer", "all").ok()
    after = tars(store)
    assert {k: after[k] for k in before} == before, "no other tar rewritten"
    assert {k.split("/")[2] for k in after if k not in before} == {"whisper"}
    info = read_store_json(store)
    assert info["whisper"] == {"model": model, "layer": "all"}
    assert info["fields"]["whisper"]["rate"] == 50 and info["fields"]["whisper"]["layer"] == "all"
    rows = read_table(store, "utterances").to_pylist()
    assert len(rows) == 3 and all(r["field_whisper"] == "ok" for r in rows)
    for u in open_store(store).utterances(["whisper"]):
        n = u["row"]["n_frames"]
        assert u["whisper"].shape == (2 * n, 3, 16) and u["whisper"].dtype == np.float16
        assert frame_windows(u["whisper"], "musetalk").shape == (n, 30, 16)
    assert verify(store)["ok"]
    copy = tmp_path / "damaged"
    shutil.copytree(store, copy)
    tar = tar_path(copy, "folder", "whisper", 0)
    tar.write_bytes(tar.read_bytes()[:-2048])
    problems = verify(copy)["problems"]
    assert problems and {p["field"] for p in problems} == {"whisper"}, problems
    assert json.loads((store / "extract_report.json").read_text())
