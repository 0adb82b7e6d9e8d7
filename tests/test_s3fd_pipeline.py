"""run_pipeline's rules (training.sync.s3fd_pipeline) on small inputs, and a random S3FD on a real clip."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from features.errors import ModelUnavailable
from training.sync import s3fd_pipeline as P

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "corpus" / "real"


def faces(boxes_by_frame: dict[int, list], n: int) -> list[np.ndarray]:
    return [np.array([[*b, 0.95] for b in boxes_by_frame.get(t, [])]).reshape(-1, 5) for t in range(n)]


def test_iou_and_nms():
    assert P.iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert P.iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], float)
    assert P.nms(boxes, np.array([0.9, 0.95, 0.5]), 0.3).tolist() == [1, 2]


def test_tracker_bridges_frame_gaps_up_to_25_and_interpolates():
    box = [100, 100, 250, 250]  # the rule: next face frame - last face frame <= 25 (24 missed)
    dets = {t: [box] for t in range(150) if not 40 <= t < 64}
    dets[64] = [[110, 100, 260, 250]]
    [t] = P.tracks_from_detections(faces(dets, 150), [(0, 150)])
    assert (t.start, t.end) == (0, 150)
    assert t.boxes[52, 0] == pytest.approx(100 + 10 * 13 / 25)  # linear between frames 39 and 64


def test_tracker_splits_after_a_26_frame_gap_and_drops_short_small_tracks():
    box = [100, 100, 250, 250]
    dets = {t: [box] for t in range(300) if not 120 <= t < 145}  # 144 -> 145 is 26 frames: two tracks
    assert [(t.start, len(t.frames)) for t in P.tracks_from_detections(faces(dets, 300), [(0, 300)])] \
        == [(0, 120), (145, 155)]
    short = {t: [box] for t in range(100)}  # 100 faces: not more than min_track
    assert P.tracks_from_detections(faces(short, 100), [(0, 100)]) == []
    small = {t: [[0, 0, 99, 99]] for t in range(150)}  # mean size not above min_face_size
    assert P.tracks_from_detections(faces(small, 150), [(0, 150)]) == []
    moved = {t: [box if t < 75 else [400, 400, 550, 550]] for t in range(150)}  # IoU 0: no joining
    assert P.tracks_from_detections(faces(moved, 150), [(0, 150)]) == []


def test_shots_split_and_short_shots_skipped():
    split = P.ShotSplitter()
    for t in range(140):
        split.add(np.full((64, 64, 3), 20 if t < 30 else 230, np.uint8))
    assert split.shots() == [(0, 30), (30, 140)]
    box = [10, 10, 200, 200]
    tracks = P.tracks_from_detections(faces({t: [box] for t in range(140)}, 140), split.shots())
    assert [(t.start, t.end) for t in tracks] == [(30, 140)]  # the 30-frame shot is skipped


def test_crops_follow_smoothed_boxes():
    t = P.Track(np.arange(3, 20), np.tile([20.0, 20.0, 60.0, 60.0], (17, 1)))
    frames = [np.full((100, 100, 3), i, np.uint8) for i in range(25)]
    [crops] = P.track_crops(iter(frames), [t])
    assert crops.shape == (17, 224, 224, 3) and crops[0, 112, 112, 0] == 3 and crops[-1, 112, 112, 0] == 19
    assert len(P.track_audio(np.zeros(16000), t)) == 17 * 640


def test_weights_missing_fail_fast_and_layouts_match(tmp_path):
    import torch

    with pytest.raises(ModelUnavailable, match="s3fd-weights"):
        P.load_detector(tmp_path / "absent.pth")
    torch.manual_seed(0)
    state = {k: torch.randn(shape, dtype=torch.float16) for k, shape in P.s3fd_shapes().items()}
    assert len(P.to_reference_layout(state)) == len(state)  # every tensor mapped, none twice
    torch.save(state, tmp_path / "w.pth")  # face-alignment's layout, as s3fd-619a316812.pth
    net = P.load_detector(tmp_path / "w.pth")
    assert torch.equal(net.fc6.weight, state["fc6.weight"].float())
    (tmp_path / "bad.pth").write_bytes(b"not a state dict")
    with pytest.raises(ModelUnavailable, match="do not load"):
        P.load_detector(tmp_path / "bad.pth")


@pytest.mark.skipif(not REAL.is_dir(), reason=f"{REAL} (real clips) is absent")
def test_random_s3fd_finds_stable_boxes_on_a_real_clip():
    import torch

    from training.sync.video import _stream

    torch.set_num_threads(1)
    frames = list(_stream(REAL / "spk03" / "b.mp4", 6))
    net = P.calibrated_random_detector(frames[:2])
    dets = P.detect_batch(net, frames)
    assert all(len(d) >= 1 for d in dets)
    assert all(d[:, 4].min() > P.CONF_TH for d in dets)
    assert all(P.iou(a[0, :4], b[0, :4]) > P.IOU_THRES for a, b in zip(dets, dets[1:]))  # trackable
    assert dets[0][0, 2] - dets[0][0, 0] > P.MIN_FACE_SIZE


def test_cli_takes_crop_s3fd_with_local_weights():
    from training.sync.score import build_parser, scorer_config

    args = build_parser().parse_args(["clips/", "--crop", "s3fd", "--io", "reference", "--s3fd-weights", "s3fd.pth"])
    config = scorer_config(args)
    assert args.crop == ["s3fd"] and config["s3fd_weights"].endswith("s3fd.pth")


def test_cli_fails_fast_without_s3fd_weights(tmp_path, capsys):
    from training.sync.score import main

    (tmp_path / "a.mp4").write_bytes(b"")
    from training.sync.syncnet import save_random_weights

    w = save_random_weights(tmp_path / "S.model")
    assert main([str(tmp_path), "--syncnet-weights", str(w), "--crop", "s3fd"]) != 0
    assert "s3fd-weights" in capsys.readouterr().err
