"""Every representation: lengths on the shared timebase, what each is worth, and adding a field
to an existing store without rewriting anything else."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from catalog.layout import table_path
from catalog.lookup import read_members
from features import hubert, parsing
from features.fbank import log_fbank
from features.fields import FIELDS
from features.landmarks import LIPS, mouth_opening
from tests.conftest import extract_here, tiny_hubert, tone

ALL = ["audio", "rgb", "landmarks", "mel", "parsing", "tdmm", "hubert", "whisper", "lip", "fbank"]


def run_extract(dataset: str, root: Path, store: Path, *extra: str) -> dict:
    """The extraction job in this process, without Ray (tests/conftest.py: extract_here)."""
    extract_here("--dataset", dataset, "--root", root, "--store", store, "--shard-size", "4", *extra).ok()
    return json.loads((store / "extract_report.json").read_text())


def decoded(store: Path, row: dict, fields: list[str]) -> dict:
    out = {}
    for f, (name, data) in read_members(store, row, fields).items():
        assert not name.endswith("error.json"), (row["utt_id"], f, data[:300])
        out[f] = FIELDS[f].decode(data)
    return out


@pytest.fixture(scope="module")
def hubert_dir(tmp_path_factory) -> Path:
    return tiny_hubert(tmp_path_factory.mktemp("hubert") / "tiny")


def test_fbank_rows_and_band():
    audio = np.zeros(640 * 40, np.float32)
    audio[:16000] = tone(1.0, 3000.0)
    fb = log_fbank(audio)
    assert fb.shape == (160, 26)
    loud, quiet = fb[:90].mean(0), fb[110:].mean(0)
    assert np.argmax(loud - quiet) >= 14  # 3 kHz sits in the upper half of 26 HTK bands to 8 kHz


def test_hubert_tiny_model_rate_and_chunk_alignment(hubert_dir, monkeypatch):
    audio = np.zeros(640 * 100, np.float32)  # 4 s
    feats = hubert.hubert_features(audio, str(hubert_dir))
    assert feats.shape == (200, 16)
    click = audio.copy()
    click[int(2.3 * 16000): int(2.3 * 16000) + 200] = 0.8
    monkeypatch.setattr(hubert, "CHUNK", 320 * 40)  # chunk borders every 0.8 s: 2.3 s is inside one
    base = hubert.hubert_features(audio, str(hubert_dir), layer=0)
    moved = hubert.hubert_features(click, str(hubert_dir), layer=0)
    frame = int(np.argmax(np.abs(moved - base).sum(1)))
    assert abs(frame - 2.3 * 50) <= 2


def test_hubert_load_error_names_the_model_and_the_fix(tmp_path):
    with pytest.raises(hubert.HubertLoadError) as err:
        hubert.load_model(str(tmp_path / "no-such-model"))
    assert "no-such-model" in str(err.value) and "--hubert-model" in str(err.value)


# real_store: tests/conftest.py (the real clips with every field, one store for the session)


def test_real_clips_have_every_field_with_design_lengths(real_store):
    rows = pq.read_table(table_path(real_store, "utterances")).to_pylist()
    assert len(rows) == 7
    expected_frames = {"spk01/a": 152, "spk04/a": 166, "spk02/a": 125, "spk03/b": 200}  # README rule
    for row in rows:
        assert row["status"] == "ok", row
        assert all(row[f"field_{f}"] == "ok" for f in ALL + ["meta"]), row
        assert row["detection_rate"] >= 0.99, row
        assert row["n_frames"] == expected_frames.get(row["utt_id"], row["n_frames"])
        n = row["n_frames"]
        d = decoded(real_store, row, ALL)
        assert d["rgb"].shape == (n, 96, 96, 3) and d["lip"].shape == (n, 96, 96)
        assert d["parsing"].shape == (n, 96, 96) and d["parsing"].dtype == np.uint8
        assert d["landmarks"].shape == (n, 478, 3)
        assert d["tdmm"].shape == (n, 7 + 64)
        assert d["mel"].shape[1] == 1 + 640 * n // 200  # 80 Hz
        assert d["hubert"].shape == (2 * n, 16)  # 50 Hz, the tiny model's width
        assert d["whisper"].shape == (2 * n, 16)  # 50 Hz, 2 rows per frame exactly
        assert d["fbank"].shape == (4 * n, 26)  # 100 Hz
        assert d["audio"].shape == (640 * n,)
    speakers = pq.read_table(table_path(real_store, "speakers")).to_pylist()
    assert {s["speaker_id"]: s["n_utterances"] for s in speakers}["spk03"] == 2


def test_parsing_lips_lie_inside_the_landmark_mouth(real_store):
    import cv2

    inside_frames = total = 0
    for row in pq.read_table(table_path(real_store, "utterances")).to_pylist():
        d = decoded(real_store, row, ["parsing", "landmarks"])
        for labels, lm in zip(d["parsing"], d["landmarks"].astype(np.float32)):
            region = np.zeros((96, 96), np.uint8)
            cv2.fillPoly(region, [cv2.convexHull(np.round(lm[LIPS, :2]).astype(np.int32))], 1)
            region = cv2.dilate(region, np.ones((3, 3), np.uint8))
            lips = np.isin(labels, [parsing.MOUTH, parsing.U_LIP, parsing.L_LIP])
            inside_frames += lips.any() and (region[lips] == 1).mean() >= 0.99
            total += 1
    assert inside_frames / total >= 0.95


@pytest.fixture(scope="module")
def synth_store(tmp_path_factory) -> tuple[Path, Path]:
    from pipelines.synthetic import generate_corpus

    root = tmp_path_factory.mktemp("synth")
    generate_corpus(root, n_speakers=3, n_utterances=3, min_seconds=3.0, max_seconds=4.0, seed=5,
                    progress=False)
    store = tmp_path_factory.mktemp("synth_store")
    run_extract("folder", root, store, "--fields", "audio", "landmarks", "mel", "meta")
    return root, store


@pytest.fixture(scope="module")
def synth_parsing(synth_store, tmp_path_factory) -> tuple[Path, Path, dict[str, str], dict[str, bytes]]:
    """One synthetic clip per speaker (3 of the 9) in its own store: landmarks, parsing and meta in
    one pass, then parsing redone from the stored landmarks (the video tracked again for its
    selfie masks, ~10 ms a frame: adding parsing to all 9 clips cost ~20-40 s). Returns the root,
    the store, the tar hashes and the one-pass parsing members before the redo."""
    root, _ = synth_store
    sub = tmp_path_factory.mktemp("synth_three")
    for speaker in sorted(p for p in root.iterdir() if p.is_dir()):
        first = sorted(speaker.glob("*.mp4"))[0]
        (sub / speaker.name).mkdir()
        for f in speaker.glob(f"{first.stem}.*"):
            (sub / speaker.name / f.name).symlink_to(f)
    store = tmp_path_factory.mktemp("synth_parsing_store")
    run_extract("folder", sub, store, "--fields", "landmarks", "parsing", "meta")
    before = sha_all(store)
    one_pass = {r["utt_id"]: read_members(store, r, ["parsing"])["parsing"][1] for r in ok_rows(store)}
    run_extract("folder", sub, store, "--fields", "parsing", "--overwrite")  # from the stored landmarks
    return sub, store, before, one_pass


def test_parsing_from_stored_landmarks_tracks_again_and_stores_the_one_pass_bytes(synth_parsing):
    _, store, before, one_pass = synth_parsing
    after = sha_all(store)
    assert after.keys() == before.keys()
    assert {k: after[k] for k in before if k.split("/")[2] != "parsing"} == \
           {k: v for k, v in before.items() if k.split("/")[2] != "parsing"}  # nothing else rewritten
    rows = ok_rows(store)
    assert len(rows) == 3 and all(r["field_parsing"] == "ok" for r in rows), rows
    for row in rows:  # the re-track's masks fit the stored landmarks: the same bytes as one pass
        name, data = read_members(store, row, ["parsing"])["parsing"]
        assert name.endswith(FIELDS["parsing"].ext) and data == one_pass[row["utt_id"]], row["utt_id"]
    assert json.loads((store / "store.json").read_text())["fields"]["parsing"]["version"] == parsing.VERSION


def test_a_segmenter_that_cannot_load_fails_parsing_for_the_job_and_stores_no_map(synth_parsing, tmp_path,
                                                                                  monkeypatch):
    from catalog.plan import read_plan, shards_of
    from features import segmentation
    from pipelines.worker import extract_shard

    store = tmp_path / "store"
    shutil.copytree(synth_parsing[1], store, symlinks=True)
    monkeypatch.setattr(segmentation, "load", lambda: (None, "ModuleNotFoundError: no module named 'mediapipe'"))
    (shard_id, rows), = shards_of(read_plan(store)).items()
    result = extract_shard(str(store), "folder", shard_id, rows, ["parsing"], overwrite=True)
    assert "mediapipe" in result["unavailable"]["parsing"]
    for row in rows:  # an error member for each, none a mesh-only map under mesh-selfie-2
        (name, data), = read_members(store, row, ["parsing"]).values()
        error = json.loads(data)
        assert name.endswith("error.json") and error["job_level"] and error["stage"] == "model", error
        assert "selfie segmentation cannot load" in error["reason"]


def ok_rows(store: Path) -> list[dict]:
    return [r for r in pq.read_table(table_path(store, "utterances")).to_pylist() if r["status"] == "ok"]


def truth(root: Path, row: dict) -> np.ndarray:
    return np.array(json.loads((root / f"{row['utt_id']}.json").read_text())["mouth_open"])


def sha_all(store: Path) -> dict[str, str]:
    return {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(store.glob("shards/**/*.tar"))}


def test_adding_fields_rewrites_nothing_else_and_loader_sees_them(synth_store):
    root, store = synth_store
    before = sha_all(store)
    run_extract("folder", root, store, "--fields", "tdmm", "fbank")  # parsing: see synth_parsing
    after = sha_all(store)
    assert {k: after[k] for k in before} == before
    new = {k for k in after if k not in before}
    assert {k.split("/")[2] for k in new} == {"tdmm", "fbank"}
    from training.data import load_utterances
    utts = load_utterances(store, ["mel", "tdmm"], ["train", "val", "test"])
    assert len(utts) == 9 and all(u.data["tdmm"].shape[1] == 71 for u in utts)
    report = json.loads((store / "models" / "tdmm-mesh-pca-1.json").read_text())
    assert report["expression_components"] == 64
    assert report["heldout_mean_error_share_of_iod"] < 0.02


def test_parsing_mouth_area_and_tdmm_expression_follow_the_truth(synth_store, synth_parsing):
    root, store = synth_store
    sub, parsing_store = synth_parsing[:2]
    area_corr = []
    for row in ok_rows(parsing_store):
        labels = decoded(parsing_store, row, ["parsing"])["parsing"]
        gt = truth(sub, row)[: row["n_frames"]]
        area = (labels == parsing.MOUTH).sum((1, 2)) + 0.0
        area_corr.append(np.corrcoef(area[: len(gt)], gt)[0, 1])
    assert len(area_corr) == 3 and np.mean(area_corr) >= 0.8, area_corr
    rows = ok_rows(store)
    expr = []
    for row in rows:
        gt = truth(root, row)[: row["n_frames"]]
        expr.append((decoded(store, row, ["tdmm"])["tdmm"][: len(gt), 7:].astype(np.float64), gt))
    # a linear read-out of the expression coefficients, fitted on some utterances, tested on others
    fit_x = np.concatenate([x for x, _ in expr[::2]])
    fit_y = np.concatenate([y for _, y in expr[::2]])
    w, *_ = np.linalg.lstsq(np.c_[fit_x, np.ones(len(fit_x))], fit_y, rcond=None)
    for x, y in expr[1::2]:
        assert np.corrcoef(np.c_[x, np.ones(len(x))] @ w, y)[0, 1] >= 0.8
    # and the opening measured on the stored landmarks agrees too
    lm = decoded(store, rows[0], ["landmarks"])["landmarks"]
    assert np.corrcoef(mouth_opening(lm)[: len(truth(root, rows[0]))], truth(root, rows[0]))[0, 1] > 0.7
