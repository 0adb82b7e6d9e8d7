"""Aligned high-resolution crops (features/aligned.py) and the face quality columns
(features/quality.py), on variants of a real clip: rotated, mirrored, upscaled, blurred, doubled."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from catalog.layout import table_path
from catalog.lookup import read_sample
from catalog.verify import verify
from features import aligned
from features.landmarks import decode as decode_landmarks
from features.media import VideoStream
from tests.conftest import extract_here, write_video

FRAMES = 25  # 1 s of each variant
ROTATION = 30.0  # degrees, counter-clockwise as displayed


def test_template_mask_and_affine_agree():
    side, angle, centre = 300.0, np.radians(20.0), np.array([400.0, 250.0])
    t = np.array(list(aligned.TEMPLATE.values())) - 0.5
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = centre + side * t @ rot.T  # the template placed by a known similarity
    params = aligned._placement(np.concatenate([points, np.zeros((len(t), 1))], 1)[None])[0]
    assert np.allclose(params, [*centre, angle, side])
    m = aligned.affine(*params, 256)
    assert np.allclose(points @ m[:, :2].T + m[:, 2], (t + 0.5) * 256)
    mask = aligned.mouth_mask(256)
    assert mask.shape == (256, 256) and set(np.unique(mask)) == {0, 255}
    assert mask[int(0.70 * 256), 128] and mask[int(0.92 * 256), 128]  # mouth centre, chin
    assert not mask[:int(0.54 * 256)].any()  # nothing at or above the nose tip
    assert np.array_equal(aligned.mouth_mask(512)[::2, ::2] > 0, mask > 0) or \
        np.mean((aligned.mouth_mask(512)[::2, ::2] > 0) != (mask > 0)) < 0.01


def _variants(clip: Path, root: Path) -> None:
    import cv2

    frames = []
    for t, frame in enumerate(VideoStream(str(clip), None, None)):
        if t == FRAMES:
            break
        frames.append(cv2.resize(frame, (360, 360), interpolation=cv2.INTER_AREA))
    base = np.stack(frames)
    rot = cv2.getRotationMatrix2D((180, 180), ROTATION, 1.0)
    made = {
        "base": base,
        "rot30": np.stack([cv2.warpAffine(f, rot, (360, 360), borderMode=cv2.BORDER_REFLECT) for f in base]),
        "flip": base[:, :, ::-1],
        "up2x": np.stack([cv2.resize(f, (720, 720), interpolation=cv2.INTER_CUBIC) for f in base]),
        "blur": np.stack([cv2.GaussianBlur(f, (0, 0), 3.0) for f in base]),
        "two": np.concatenate([base, base[:, :, ::-1]], axis=2),
    }
    for name, video in made.items():
        (root / name).mkdir(parents=True)
        write_video(root / name / "a.mp4", video)


@pytest.fixture(scope="module")
def variant_store(real_corpus, tmp_path_factory) -> Path:
    root, store = tmp_path_factory.mktemp("variants"), tmp_path_factory.mktemp("variant_store")
    _variants(real_corpus / "spk02" / "a.mp4", root)
    extract_here("--dataset", "folder", "--root", root, "--store", store, "--fields", "landmarks", "aligned256",
                 "meta").ok()
    return store


def _rows(store: Path) -> dict[str, dict]:
    return {r["utt_id"].split("/")[0]: r for r in pq.read_table(table_path(store, "utterances")).to_pylist()}


def _eye_angles(store: Path, row: dict, field: str = "aligned256") -> np.ndarray:
    """Degrees of the outer-eye-corner line in each crop, from the stored landmarks carried into it."""
    size = int(field[len("aligned"):])
    members = read_sample(store, row, field)
    matrices = aligned.decode_affine(members[f"{field}_affine.npy"])
    landmarks = decode_landmarks(read_sample(store, row, "landmarks")["landmarks.npy"])
    boxes = json.loads(read_sample(store, row, "meta")["json"])["crop_boxes"]
    points = aligned.to_crop(landmarks, boxes, matrices)
    assert aligned.decode(members[f"{field}.jpgs"], 0, 2).shape == (2, size, size, 3)
    d = points[:, 263] - points[:, 33]
    return np.degrees(np.arctan2(d[:, 1], d[:, 0]))


def test_a_rotated_head_comes_out_upright(variant_store):
    rows = _rows(variant_store)
    for name in ("base", "rot30"):
        assert rows[name]["field_aligned256"] == "ok", rows[name]
        angles = _eye_angles(variant_store, rows[name])
        assert len(angles) == rows[name]["n_frames"] == FRAMES
        assert np.abs(angles).max() < 2.0, (name, angles)  # level within 2 degrees in every frame
    # the mesh's head pose sees the rotation: the roll grows by 30 degrees
    rot, base = rows["rot30"], rows["base"]
    assert abs(rot["roll"] - base["roll"] - ROTATION) < 3, (rot["roll"], base["roll"])
    assert abs(rot["yaw"] - base["yaw"]) < 3 and abs(rot["pitch"] - base["pitch"]) < 3  # the roll alone


def test_quality_columns_follow_the_variants(variant_store):
    rows = _rows(variant_store)
    base = rows["base"]
    assert base["faces_max"] == 1 and base["one_face_share"] == 1.0
    assert rows["two"]["faces_max"] == 2 and rows["two"]["one_face_share"] == 0.0
    assert abs(base["yaw"]) > 8  # spk02 looks off to one side: the mirror must flip it
    assert rows["flip"]["yaw"] * base["yaw"] < 0 and abs(rows["flip"]["yaw"] + base["yaw"]) < 4
    assert abs(rows["flip"]["roll"] + base["roll"]) < 3 and abs(rows["flip"]["pitch"] - base["pitch"]) < 3
    assert 1.9 < rows["up2x"]["aligned_face_size"] / base["aligned_face_size"] < 2.1
    assert abs(rows["rot30"]["aligned_face_size"] / base["aligned_face_size"] - 1) < 0.05  # rolls don't grow it
    assert rows["blur"]["sharpness"] < 0.5 * base["sharpness"], (rows["blur"]["sharpness"], base["sharpness"])


def _hashes(store: Path) -> dict[str, str]:
    return {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(store.glob("shards/**/*.tar"))}


def test_adding_aligned512_touches_no_other_tar_and_verify_covers_it(variant_store, tmp_path):
    root = Path(pq.read_table(table_path(variant_store, "utterances"))["video_path"][0].as_py()).parents[1]
    before = _hashes(variant_store)
    extract_here("--dataset", "folder", "--root", root, "--store", variant_store, "--fields", "aligned512").ok()
    after = _hashes(variant_store)
    assert {k: after[k] for k in before} == before
    assert {k.split("/")[2] for k in after if k not in before} == {"aligned512"}
    rows = _rows(variant_store)
    assert np.abs(_eye_angles(variant_store, rows["rot30"], "aligned512")).max() < 2.0
    report = verify(variant_store)
    assert report["ok"], report["problems"]
    info = json.loads((variant_store / "store.json").read_text())
    assert info["fields"]["aligned512"]["ext"] == "aligned512.jpgs"
    tar = next(variant_store.glob("shards/folder/aligned512/*.tar"))
    data = bytearray(tar.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in an aligned512 tar
    tar.write_bytes(bytes(data))
    problems = verify(variant_store)["problems"]
    assert problems and all(p["field"] == "aligned512" for p in problems), problems


def test_real_clips_aligned_crops_are_level_and_the_mask_holds_the_lips(real_store):
    """On the session's "all" store (the aligned crops at the default --crop-size): every clip's
    eyes level in every frame, and the template's mouth mask holding every lip point."""
    from features.landmarks import LIPS

    info = json.loads((real_store / "store.json").read_text())
    assert "aligned256" in info["fields"] and "aligned512" not in info["fields"]
    mask = aligned.mouth_mask(256)
    for row in pq.read_table(table_path(real_store, "utterances")).to_pylist():
        assert row["field_aligned256"] == "ok" and row["faces_max"] == 1, row
        assert np.abs(_eye_angles(real_store, row)).max() < 3.0, row["utt_id"]
        members = read_sample(real_store, row, "aligned256")
        landmarks = decode_landmarks(read_sample(real_store, row, "landmarks")["landmarks.npy"])
        boxes = json.loads(read_sample(real_store, row, "meta")["json"])["crop_boxes"]
        lips = aligned.to_crop(landmarks, boxes, aligned.decode_affine(members["aligned256_affine.npy"]))[:, LIPS]
        x, y = np.clip(np.round(lips).astype(int), 0, 255).T
        assert (mask[y, x] > 0).mean() >= 0.99, row["utt_id"]
        own = aligned.frame_mouth_mask(aligned.to_crop(landmarks, boxes, aligned.decode_affine(
            members["aligned256_affine.npy"]))[0], 256)  # the first frame's own mask holds its lips
        assert (own[y[:, 0], x[:, 0]] > 0).mean() >= 0.99, row["utt_id"]
