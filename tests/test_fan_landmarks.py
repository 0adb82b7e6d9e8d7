"""landmarks68_fan: face-alignment's 2D-FAN-4 on our face track, with a randomly initialised FAN(4)
of the real architecture saved to a local file (the published weights are never downloaded here,
so nothing below says anything about accuracy: only shapes, geometry, decoding and the store)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from catalog import open_store
from catalog.verify import verify
from features import landmarks_fan
from features.errors import ModelUnavailable
from features.face import CROP_SIZE
from features.fields import Options, Sources
from tests.conftest import extract_here


@pytest.fixture(scope="module")
def fan_weights(tmp_path_factory) -> Path:
    from face_alignment.models import FAN

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("fan") / "random-2dfan4.pth"
    torch.save(FAN(landmarks_fan.N_MODULES).state_dict(), path)
    return path


def test_decoding_is_face_alignments(monkeypatch):
    """Our numpy decoding equals the package's get_preds_fromhm + transform_np (their Python
    source: the numba-compiled ones take ~30 s to compile), peaks on the border included."""
    from face_alignment import utils as fa

    monkeypatch.setattr(fa, "transform_np", fa.transform_np.py_func)
    rng = np.random.default_rng(0)
    hm = rng.random((2, 68, 64, 64), dtype=np.float32)
    hm[0, 0, 0, 5] = hm[0, 1, 63, 63] = hm[1, 2, 30, 0] = 2.0  # peaks where no sub-pixel shift applies
    center, scale = np.array([301.7, 222.4]), 1.37
    idx = hm.reshape(2, 68, -1).argmax(-1)
    _, want = fa._get_preds_fromhm.py_func(hm, idx, center, scale)
    got = landmarks_fan.decode_heatmaps(hm, center, scale)
    assert got.shape == (2, 68, 2)
    np.testing.assert_array_equal(got, want)


def test_missing_or_wrong_weights_fail_the_field_only(tmp_path):
    bogus = tmp_path / "not-fan.pth"
    torch.save({"weight": torch.zeros(3)}, bogus)
    for weights, words in ((None, "--fan-weights PATH"), (str(tmp_path / "absent.pth"), "no 2DFAN-4 weights file"),
                           (str(bogus), "is not 2DFAN-4 weights")):
        with pytest.raises(ModelUnavailable, match=words):
            landmarks_fan.load_fan(weights)
        sources = Sources({}, tracker=lambda: None, options=Options(fan_weights=weights),
                          wanted=["rgb", "landmarks68_fan"])
        assert sources._dlib_makers() == []  # left out of the tracking pass, which goes on for rgb
        assert isinstance(sources._errors["landmarks68_fan"], ModelUnavailable)


def _sha_all(store: Path) -> dict[str, str]:
    return {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(store.glob("shards/**/*.tar"))}


def test_adding_the_fan_field_rewrites_nothing_else(tmp_path, fan_weights):
    from pipelines.synthetic import generate_corpus

    root, store = tmp_path / "corpus", tmp_path / "store"
    generate_corpus(root, n_speakers=1, n_utterances=1, min_seconds=0.2, max_seconds=0.2, seed=3, progress=False)
    common = ("--dataset", "folder", "--root", root, "--store", store, "--shard-size", "4")
    extract_here(*common, "--fields", "landmarks", "meta").ok()
    before = _sha_all(store)
    extract_here(*common, "--fields", "landmarks68_fan", "meta", "--fan-weights", fan_weights).ok()
    after = _sha_all(store)
    assert {k: after[k] for k in before} == before
    assert {k.split("/")[2] for k in after if k not in before} == {"landmarks68_fan"}
    utt = next(open_store(store).utterances(["landmarks68_fan", "landmarks"]))
    points = utt["landmarks68_fan"]
    assert points.dtype == np.float16 and points.shape == (utt["n_frames"], 68, 2)
    # random weights put the peaks anywhere in FAN's own 256 px input window, which is wider than
    # our 96 px crop (its box is FAN_BOX of our square, and FAN crops 200/195 of twice the box side):
    # every point lies in that window, in crop pixels; trained weights are needed for "on the face"
    box = landmarks_fan.FAN_BOX * CROP_SIZE
    half = landmarks_fan.SCALE_FACTOR * 2 * box / landmarks_fan.REFERENCE_SCALE / 2
    centre = np.array([CROP_SIZE / 2, CROP_SIZE / 2 - box * landmarks_fan.CENTER_Y_OFFSET])
    assert (np.abs(points.astype(np.float32) - centre) <= half + 2).all()
    assert np.isfinite(points.astype(np.float32)).all() and len(np.unique(points.reshape(-1, 2), axis=0)) > 1
    info = json.loads((store / "store.json").read_text())
    assert info["landmarks68_fan"] == {"model": str(fan_weights.resolve()), "layer": None}
    assert info["fields"]["landmarks68_fan"]["ext"] == "landmarks68_fan.npy"
    checked = verify(store)
    assert checked["ok"] and "landmarks68_fan" in checked["fields"], checked["problems"]
